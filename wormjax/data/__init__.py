"""Input pipelines: CIFAR-10, the offline digits demo, GLUE."""
