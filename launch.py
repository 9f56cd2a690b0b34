"""Runs a wormjax experiment: ``python launch.py --config=configs/X.py``.

Any config field can be overridden (``--config.search.max_epochs=3``). Re-running
with the same ``--workdir`` resumes an interrupted run; a workdir holding a
different config is refused. Ctrl-C (or SIGTERM) ends the current step,
checkpoints and prints the command that resumes; a second Ctrl-C stops at once.
"""

import ast
import importlib.util
import logging
import os
import shlex
import sys
from typing import NoReturn

from absl import app
from absl import flags
from ml_collections import config_flags

_ROOT = os.path.dirname(os.path.abspath(__file__))

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


def available_configs(folder: str = os.path.join(_ROOT, "configs")) -> list[str]:
    """The config files of ``folder`` that ``--config`` can load (get_config() needs
    no arguments), found by parsing, not importing, them."""
    names = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not name.endswith(".py") or name.startswith("_"):
            continue
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                tree = ast.parse(f.read())
        except (OSError, SyntaxError, ValueError):
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == "get_config" and len(
                    node.args.args) == len(node.args.defaults):
                names.append(os.path.join(os.path.basename(folder), name))
    return names


def _config_value(argv) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _unknown_override(argv, value: str) -> str | None:
    """The first ``--config.<field>`` override naming no field of the config, explained."""
    from wormjax.pipeline import config_checks  # noqa: PLC0415 - only on this error path

    path, _, arg = value.partition(":")  # config_flags' "file:argument" form
    spec = importlib.util.spec_from_file_location("_wormjax_launch_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    names = [name for name, _ in config_checks.flatten(config)]
    groups = {name.rsplit(".", 1)[0] for name in names if "." in name}
    for arg_text in argv:
        if arg_text.startswith("--config."):
            field = arg_text[len("--config."):].split("=", 1)[0]
            if field not in names and field not in groups:
                return config_checks.unknown_field_message(field, names)
    return None


def _usage_exit(message: str) -> NoReturn:
    print(f"wormjax: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv):
    """absl's flag parsing, with one-line errors for a missing config file and for an
    override of a field the config does not have (absl would print a traceback)."""
    value = _config_value(argv)
    if value is not None and not os.path.isfile(value.partition(":")[0]):
        _usage_exit(f"config file {value.partition(':')[0]} does not exist; available "
                    f"configs: {', '.join(available_configs())}")
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError):  # ml_collections: no such field
        message = _unknown_override(argv, value) if value else None
        if message is None:
            raise
    except Exception as err:  # pylint: disable=broad-except - the user's config code
        where = f" (line {err.lineno})" if isinstance(err, SyntaxError) else ""
        message = (f"config file {value.partition(':')[0] if value else '?'} failed to "
                   f"load{where}: {type(err).__name__}: {err}")
    _usage_exit(message)


def resume_command(workdir: str) -> str:
    """This invocation's command line, with ``--workdir`` spelled out."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg.startswith(("--workdir=", "-workdir=")):
            skip = False
        elif arg in ("--workdir", "-workdir"):
            skip = True  # its value follows
        else:
            args.append(arg)
    return shlex.join(["python", sys.argv[0], *args, f"--workdir={workdir}"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    set_host_devices(_HOST_DEVICES.value)
    import jax  # noqa: PLC0415 - after flag parsing and XLA_FLAGS

    from wormjax.pipeline import experiment  # noqa: PLC0415
    from wormjax.pipeline import interrupt  # noqa: PLC0415

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
        with interrupt.handle_signals():
            experiment.run_experiment(config, workdir)
    except interrupt.Interrupted as err:
        print(f"wormjax: {err}; resume with: {resume_command(workdir)}", file=sys.stderr)
        sys.exit(interrupt.exit_code(err.signum))
    except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint of this point
        print("wormjax: stopped at once; resume from the last checkpoint with: "
              f"{resume_command(workdir)}", file=sys.stderr)
        sys.exit(interrupt.exit_code(2))
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        sys.exit(f"wormjax: {err}")  # once, as the last line: no log copy above it


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=parse_flags)
