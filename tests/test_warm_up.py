"""The warm-up compiles every program from abstract shapes; the timed phases compile none.

Counted by XLA's backend compilations (``jax.monitoring``), not by traces: a
spec whose sharding or weak type differed from the real argument's would let
the real call reuse the trace yet compile a second executable.
"""

import collections
import contextlib
import json
import os
import subprocess
import sys

import jax
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from test_experiment import tiny_config  # noqa: E402
from test_text_task import files  # noqa: E402,F401 - the module fixture
from test_text_task import tiny_config as tiny_text_config  # noqa: E402

from wormjax.pipeline import experiment  # noqa: E402
from wormjax.pipeline import image_task  # noqa: E402
from wormjax.pipeline import programs as programs_lib  # noqa: E402
from wormjax.pipeline import text_task  # noqa: E402

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
# The jitted programs by the name XLA compiles them under.
PROGRAMS = {"jit(plain)", "jit(masked)", "jit(eval_step)", "jit(update)", "jit(prune)"}


@contextlib.contextmanager
def backend_compiles():
    """Yields ``{"warm_up": [...], "after": [...]}``: what XLA compiled, by name."""
    seen = {"before": [], "warm_up": [], "after": []}
    phase = ["before"]

    def listener(event, duration, **kwargs):
        if event == BACKEND_COMPILE:
            seen[phase[0]].append(kwargs.get("fun_name"))

    real = programs_lib.warm_up

    def warm_up(*args, **kwargs):
        phase[0] = "warm_up"
        try:
            return real(*args, **kwargs)
        finally:
            phase[0] = "after"

    programs_lib.warm_up = warm_up
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
        programs_lib.warm_up = real


def _signature(batch) -> tuple:
    """A batch's (or spec's) keys, shapes and dtypes."""
    return tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in batch.items()))


@pytest.mark.parametrize("kind", ["image", "text"])
def test_batch_specs_are_exactly_the_shapes_of_the_real_batches(kind, files):  # noqa: F811
    task = (image_task.ImageTask(tiny_config()) if kind == "image"
            else text_task.TextTask(tiny_text_config(files)))
    specs = task.batch_specs()
    for split, batches in (("train", task.train_batches(0, 1)),
                           ("eval", task.eval_batches())):
        real = {_signature(b) for b in batches}
        assert real == {_signature(s) for s in specs[split]}, split


def _image_run(workdir, **overrides) -> dict:
    config = tiny_config(**{"search.max_epochs": 2, "retrain.max_epochs": 1, **overrides})
    with backend_compiles() as seen:
        experiment.run_experiment(config, workdir, print_fn=lambda s: None)
    return seen


def _check_image(seen):
    # The warm-up runs nothing: it compiles the programs and only them.
    assert collections.Counter(seen["warm_up"]) == {
        "jit(plain)": 1, "jit(masked)": 1, "jit(eval_step)": 1, "jit(prune)": 1,
        "jit(update)": 2}  # one per search config (none, worm)
    assert not PROGRAMS & set(seen["after"]), seen["after"]


def test_image_experiment_compiles_no_program_after_the_warm_up(tmp_path):
    _check_image(_image_run(str(tmp_path)))


def test_multi_ratio_search_compiles_no_program_after_the_warm_up(tmp_path):
    seen = _image_run(str(tmp_path), **{"search.prune_ratios": "0.3,0.7",
                                        "search.primary_ratio": 0.7})
    # One update for both ratios per search config; a prune program per ratio.
    assert collections.Counter(seen["warm_up"]) == {
        "jit(plain)": 1, "jit(masked)": 1, "jit(eval_step)": 1, "jit(prune)": 2,
        "jit(update)": 2}
    assert not PROGRAMS & set(seen["after"]), seen["after"]


def test_text_experiment_compiles_no_program_after_the_warm_up(files, tmp_path):  # noqa: F811
    # The authors' key-only counting passes a host array to the EB update.
    config = tiny_text_config(files, **{"experiment.placements": "gradient",
                                        "search.authors_qk_mask_bug": True})
    with backend_compiles() as seen:
        experiment.run_experiment(config, str(tmp_path), print_fn=lambda s: None)
    warmed = collections.Counter(seen["warm_up"])
    assert set(warmed) == PROGRAMS
    assert warmed["jit(plain)"] > 1  # one per length bucket
    assert not PROGRAMS & set(seen["after"]), seen["after"]


def test_two_devices_compile_no_program_after_the_warm_up(tmp_path):
    # Shardings matter on a real mesh: its own process, two forced CPU devices.
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, os.path.abspath(__file__), str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    _check_image(json.loads(out.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":  # the two-device run of the test above
    assert jax.device_count() == 2, jax.devices()
    print(json.dumps(_image_run(sys.argv[1], **{"mesh.data": 2})))
