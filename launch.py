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
_HOST_DEVICES = flags.DEFINE_integer(
    "host_devices", 1,
    "CPU only: split each batch over this many host devices (XLA's "
    "--xla_force_host_platform_device_count) on the data-parallel mesh, so that "
    "more cores are busy than XLA:CPU's own threading keeps busy. Faster for some "
    "models and batch sizes, slower for others (docs/performance.md); 1: off.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output folder (checkpoints, metrics, plots, summary.json); "
    "default: runs/<config name>.")


def set_host_devices(count: int) -> None:
    """Asks XLA for ``count`` CPU devices; must run before JAX starts its backends.

    Args:
      count: >= 1; 1 leaves ``XLA_FLAGS`` as it is.

    Raises:
      app.UsageError: ``count`` < 1, or ``XLA_FLAGS`` already sets another count.
    """
    if count < 1:
        raise app.UsageError(f"--host_devices must be >= 1, got {count}")
    if count == 1:
        return
    flag = "--xla_force_host_platform_device_count"
    current = os.environ.get("XLA_FLAGS", "")
    if flag in current:
        raise app.UsageError(f"--host_devices={count} and XLA_FLAGS={current!r} both set "
                             "the host device count; use one of them")
    os.environ["XLA_FLAGS"] = f"{current} {flag}={count}".strip()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    set_host_devices(_HOST_DEVICES.value)
    import jax  # noqa: PLC0415 - after flag parsing and XLA_FLAGS

    from wormjax import experiment  # noqa: PLC0415

    if _JAX_CACHE.value:
        jax.config.update("jax_compilation_cache_dir", _JAX_CACHE.value)

    logging.getLogger().setLevel(logging.INFO)
    # orbax reports every checkpoint operation through absl at INFO.
    logging.getLogger("absl").setLevel(logging.WARNING)
    # JAX logs at INFO each platform it probes and lacks ("Unable to initialize
    # backend 'tpu'"); matplotlib warns once per machine that it builds its font
    # cache. Neither needs the user; a GPU is still found and used.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
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
