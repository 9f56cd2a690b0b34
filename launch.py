"""Runs a wormjax experiment: ``python launch.py --config=configs/X.py``.

Any config field can be overridden (``--config.search.max_epochs=3``). Re-running
with the same ``--workdir`` resumes an interrupted run; a workdir holding a
different config is refused.
"""

import logging
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

# Configs import the shared base as ``configs.base``.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_JAX_CACHE = flags.DEFINE_string(
    "jax_cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "wormjax", "xla"),
    "JAX's persistent compilation cache: a re-run, resume, extra seed or sweep arm "
    "with the same shapes loads its compiled steps instead of compiling again "
    "(empty: off).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output folder (checkpoints, metrics, plots, summary.json); "
    "default: runs/<config name>.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax  # noqa: PLC0415 - after flag parsing

    from wormjax import experiment  # noqa: PLC0415

    if _JAX_CACHE.value:
        jax.config.update("jax_compilation_cache_dir", _JAX_CACHE.value)

    logging.getLogger().setLevel(logging.INFO)
    # orbax reports every checkpoint operation through absl at INFO.
    logging.getLogger("absl").setLevel(logging.WARNING)
    config = _CONFIG.value
    config_name = os.path.basename(
        config_flags.get_config_filename(flags.FLAGS["config"]))
    workdir = _WORKDIR.value or os.path.join("runs", os.path.splitext(config_name)[0])
    try:
        experiment.run_experiment(config, workdir)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        logging.error("%s", err)
        sys.exit(f"wormjax: {err}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
