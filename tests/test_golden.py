"""Golden numbers: tiny seeded runs of every task kind and pruning mode, pinned.

Written before the pipeline redesign (issue 14) so that every step of it can show
that the pipeline's behaviour did not change: the same config gives the same
accuracies, epochs, mask distances, ticket, parameter counts and FLOPs. Every
count, decision and name must match exactly; floats to a relative 1e-4, because
XLA's CPU code rounds the last bits differently on another processor family (the
numbers were pinned on an Intel Xeon; an AMD EPYC differs from the 5th or 7th digit of
a loss). Bit-for-bit repeatability on one machine is checked by the resume tests
(``test_lifecycle``: a killed and resumed run equals an uninterrupted one).
Wall times are left out.

The numbers live in ``tests/golden/summary_numbers.json``. To re-pin after a change
that means to change a number (say why in the commit):
``WORMJAX_WRITE_GOLDEN=1 python -m pytest -q tests/test_golden.py``.
Reference pruning runs on the text task (its default) and mask and structured
pruning on the image task (the quick start's model and data): each mode and each
task kind once, at the least compile time.
"""

import json
import os
import pprint

import pytest

import test_experiment
import test_text_task
from wormjax.pipeline import experiment

_RUN_KEYS = ("task", "variant", "schedule", "placement", "seed", "truncation_ratio",
             "converged", "ticket_epoch", "trigger_threshold", "pre_prune_accuracy",
             "post_prune_accuracy", "post_prune_accuracy_before_recalibration",
             "retrain_accuracy_after_one_epoch", "restore_epochs", "diverged",
             "restore_target", "pruning_mode", "flops", "params", "examples_trained")
_RECORD_KEYS = ("phase", "epoch", "d_max", "d_avg", "dists", "truncation_active",
                "ratio", "train_loss", "train_accuracy", "eval_accuracy", "eval_loss",
                "eval_f1", "steps")


def _numbers(payload) -> list[dict]:
    """The behaviour of each run of an experiment: no wall times, no paths."""
    out = []
    for run, full in zip(payload["runs"], _trajectories(payload)):
        numbers = {k: run.get(k) for k in _RUN_KEYS}
        if run.get("structured"):
            numbers["structured"] = run["structured"]
        numbers["trajectory"] = [{k: r.get(k) for k in _RECORD_KEYS} for r in full]
        out.append(numbers)
    return out


def _trajectories(payload):
    # The experiment summary drops each run's trajectory; the run's own keeps it.
    workdir = payload["_workdir"]
    return [json.load(open(os.path.join(workdir, f"{r['variant']}_seed{r['seed']}",
                                        "summary.json")))["trajectory"]
            for r in payload["runs"]]


def _run(config, workdir) -> list[dict]:
    payload = experiment.run_experiment(config, str(workdir), print_fn=lambda s: None)
    payload["_workdir"] = str(workdir)
    numbers = _numbers(payload)
    if os.environ.get("WORMJAX_PRINT_GOLDEN"):
        pprint.pprint(numbers, width=100, sort_dicts=False)
    return numbers


# The quick start itself (its model, data and search settings), shortened: EB and
# WORM from one initialisation, mask pruning.
def _image_mask():
    return test_experiment.tiny_config()


def _image_structured():
    return test_experiment.tiny_config(**{
        "pruning.mode": "structured", "experiment.schedules": "worm",
        "search.max_epochs": 2, "retrain.max_epochs": 1, "data.train_limit": 64})


_GOLDEN_FILE = os.path.join(os.path.dirname(__file__), "golden", "summary_numbers.json")


def _check(name: str, numbers: list[dict]) -> None:
    """Compares with the pinned numbers, exactly; WORMJAX_WRITE_GOLDEN=1 re-pins."""
    pinned = json.load(open(_GOLDEN_FILE)) if os.path.exists(_GOLDEN_FILE) else {}
    if os.environ.get("WORMJAX_WRITE_GOLDEN"):
        pinned[name] = numbers
        os.makedirs(os.path.dirname(_GOLDEN_FILE), exist_ok=True)
        with open(_GOLDEN_FILE, "w") as f:
            json.dump(pinned, f, indent=1, sort_keys=True)
            f.write("\n")
    # Through JSON, as pinned: tuples become lists.
    differences = _differences(json.loads(json.dumps(numbers)), pinned[name])
    assert not differences, pprint.pformat(differences)


def _differences(got, want, path="") -> list[str]:
    """Where ``got`` departs from ``want``: exact but for floats (rel 1e-4)."""
    if isinstance(want, float) and isinstance(got, (int, float)) \
            and not isinstance(got, bool):
        return [] if got == pytest.approx(want, rel=1e-4, abs=1e-9) else [
            f"{path}: {got!r} != {want!r}"]
    if isinstance(want, dict) and isinstance(got, dict):
        if set(got) != set(want):
            return [f"{path}: keys {sorted(set(got) ^ set(want))} differ"]
        return [d for k in want for d in _differences(got[k], want[k], f"{path}.{k}")]
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{path}: length {len(got)} != {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want))
                for d in _differences(g, w, f"{path}[{i}]")]
    return [] if got == want and type(got) is type(want) else [
        f"{path}: {got!r} != {want!r}"]


@pytest.mark.parametrize("name, make_config", [
    ("image_mask", _image_mask), ("image_structured", _image_structured)])
def test_image_runs_give_the_pinned_numbers(tmp_path, name, make_config):
    _check(name, _run(make_config(), tmp_path / name))


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden_text")
    return {"checkpoint": test_text_task._write_checkpoint(root / "tiny_bert"),
            "glue": test_text_task._write_rte(root / "glue", num_train=64, num_dev=24)}


def test_text_run_gives_the_pinned_numbers(tmp_path, text_files):
    # BERT's own pruning mode (reference, its mask kept while retraining), WORM only,
    # one length bucket: the text path at the least compile time.
    config = test_text_task.tiny_config(text_files, **{
        "experiment.schedules": "worm", "experiment.placements": "gradient",
        "data.bucket_min_len": test_text_task.BUCKETS[-1]})
    _check("text_reference", _run(config, tmp_path / "text"))
