"""search.prune_ratios end to end: one shared search, one pruned-and-retrained arm per ratio."""

import json
import os

import pytest

import test_experiment
from wormjax.pipeline import checkpoint as ckpt_lib
from wormjax.pipeline import experiment

RATIOS = (0.3, 0.7)
# Not the arm's own: its name and the shared search it came from.
_ARM_KEYS = ("variant", "shared_search")


def _config(**overrides):
    # s = 0.1 over four epochs: p = 0.3 stops early, p = 0.7 later or never.
    return test_experiment.tiny_config(**{
        "experiment.schedules": "none", "search.max_epochs": 4,
        "search.stop_distance": 0.1, "data.train_limit": 128, **overrides})


def _multi_config(**overrides):
    return _config(**{"search.prune_ratios": ",".join(map(str, RATIOS)), **overrides})


def _summary(workdir, name):
    with open(os.path.join(workdir, name, "summary.json"), encoding="utf-8") as f:
        return test_experiment._strip_timing(json.load(f))  # pylint: disable=protected-access


def _as_single(summary):
    out = {k: v for k, v in summary.items() if k not in _ARM_KEYS}
    out["trajectory"] = [{k: v for k, v in r.items() if k != "variant"}
                         for r in summary["trajectory"]]
    return out


def _run(config, workdir):
    return experiment.run_experiment(config, str(workdir), print_fn=lambda s: None)


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("multi")
    return str(workdir), _run(_multi_config(), workdir)


def test_each_arm_equals_a_search_of_its_ratio_alone(multi_run, tmp_path):
    workdir, payload = multi_run
    assert [r["variant"] for r in payload["runs"]] == ["eb_p0.3", "eb_p0.7"]
    assert [r["prune_ratio"] for r in payload["runs"]] == list(RATIOS)
    epochs = [r["ticket_epoch"] for r in payload["runs"]]
    assert epochs[0] < epochs[1]  # training went on after the first ticket
    for p in RATIOS:
        _run(_config(**{"search.prune_ratio": p}), tmp_path / str(p))
        alone = _summary(str(tmp_path / str(p)), "eb_seed0")
        arm = _summary(workdir, f"eb_p{p:g}_seed0")
        # Masks (via the pruned counts), distances, ticket epochs, accuracies, FLOPs.
        assert _as_single(arm) == _as_single(alone)


def test_tickets_are_saved_where_each_ratio_stopped(multi_run):
    workdir, payload = multi_run
    shared = payload["runs"][0]["shared_search"]
    assert shared["prune_ratios"] == list(RATIOS)
    for run in payload["runs"]:
        name = f"EB-{run['prune_ratio']:g}-{run['ticket_epoch']}"
        folder = os.path.join(workdir, "eb_seed0", "tickets", name)
        assert ckpt_lib.RunCheckpointer(folder).latest_step() == (
            run["ticket_epoch"] * 128 // 32)
    # The shared search's records carry every ratio's distances.
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    search = [r for r in records if r.get("kind") == "epoch" and r["variant"] == "eb"]
    assert search and all([d["prune_ratio"] for d in r["prune_ratios"]] == list(RATIOS)
                          for r in search)
    # One compiled update for every ratio; one prune program per ratio.
    assert payload["compile_counts"]["eb_update"] == 1
    assert payload["compile_counts"]["prune"] == len(RATIOS)


def test_killed_twice_resumes_to_the_same_summaries(multi_run, tmp_path, monkeypatch):
    ref_dir, _ = multi_run
    workdir = str(tmp_path / "killed")
    real_save = ckpt_lib.RunCheckpointer.save
    for kill_at in (3, 4):  # inside the search after a ticket; then in an arm
        saves = []

        def save_then_die(self, step, tree, meta, saves=saves, kill_at=kill_at):
            real_save(self, step, tree, meta)
            saves.append(step)
            if len(saves) == kill_at:
                raise KeyboardInterrupt("simulated kill")

        monkeypatch.setattr(ckpt_lib.RunCheckpointer, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            _run(_multi_config(), workdir)
    monkeypatch.setattr(ckpt_lib.RunCheckpointer, "save", real_save)
    _run(_multi_config(), workdir)
    for p in RATIOS:
        name = f"eb_p{p:g}_seed0"
        assert _summary(workdir, name) == _summary(ref_dir, name)


def test_worm_follows_the_primary_ratio(tmp_path):
    config = _multi_config(**{"experiment.schedules": "worm", "search.primary_ratio": 0.7,
                              "search.trigger_margin": 0.9})
    payload = _run(config, tmp_path)
    assert [r["variant"] for r in payload["runs"]] == ["worm_p0.3", "worm_p0.7"]
    primary = _summary(str(tmp_path), "worm_p0.7_seed0")["trajectory"]
    with open(os.path.join(tmp_path, "metrics.jsonl"), encoding="utf-8") as f:
        shared = [json.loads(line) for line in f]
    shared = [r for r in shared if r.get("kind") == "epoch" and r["variant"] == "worm"]
    # The top-level distances are the primary's; truncation fired on its trigger.
    assert [r["d_max"] for r in shared] == [r["d_max"] for r in primary[:len(shared)]]
    assert any(r["truncation_active"] for r in shared)


@pytest.mark.parametrize("overrides, message", [
    ({"search.prune_ratios": "0.3,x"}, "entry 'x' is not a number"),
    ({"search.prune_ratios": "0.3,1.5"}, "prune_ratios entry"),
    ({"search.prune_ratios": "0.3,0.3"}, "distinct"),
    ({"search.prune_ratios": "0.3,0.5", "experiment.schedules": "none,worm"},
     "primary_ratio"),
    ({"search.prune_ratios": "0.3,0.5", "search.primary_ratio": 0.7}, "not one of"),
    ({"search.primary_ratio": 0.5}, "which is empty"),
    ({"search.primary_ratio": 1.5}, "search.primary_ratio"),
])
def test_bad_ratio_configs_fail_before_any_work(tmp_path, overrides, message):
    workdir = tmp_path / "never"
    with pytest.raises(ValueError, match=message):
        _run(_config(**overrides), workdir)
    assert not workdir.exists()


def test_nan_in_the_shared_search_names_the_checkpoint_to_resume(tmp_path, monkeypatch):
    from wormjax.pipeline import loop
    from wormjax.pipeline import steps as steps_lib

    real_read, reads = steps_lib.read_metrics, []

    def poisoned(acc):
        reads.append(1)
        out = real_read(acc)
        return dict(out, loss=float("nan")) if len(reads) >= 3 else out

    monkeypatch.setattr(steps_lib, "read_metrics", poisoned)
    with pytest.raises(loop.NonFiniteLossError, match="newest checkpoint is step 4"):
        _run(_multi_config(), tmp_path)
