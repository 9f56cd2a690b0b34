"""Study plans: `python -m wormjax.study run <name>` (see wormjax/study)."""
