"""The paper pipeline: config -> experiment -> runs (search, prune, retrain) -> tables.

Built on the library at the top of ``wormjax`` (masks, search, truncation,
selectors, pruning, models, data); nothing in the library imports from here.
``experiment.run_experiment`` is the entry point that ``launch.py`` calls.
"""
