"""wormjax benchmark suite; ``python -m benchmarks.run_all --size small`` runs all of it."""
