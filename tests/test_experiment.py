"""The real entry point end to end on a tiny model and the bundled digits."""

import json
import os
import subprocess
import sys

import pytest

from conftest import set_fields
from configs import quickstart
from wormjax.pipeline import checkpoint as ckpt_lib
from wormjax.pipeline import experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING_KEYS = ("times", "wall_time_this_invocation", "compile_seconds", "epoch_time")


def tiny_config(**overrides):
    c = quickstart.get_config()
    c.model.width = 0.0625
    c.data.train_limit = 256
    c.data.eval_limit = 128
    c.optim.eval_batch_size = 64
    c.search.window = 2
    c.search.max_epochs = 3
    c.search.stop_distance = 0.02
    c.search.trigger_margin = 0.5  # so WORM triggers inside three epochs
    c.retrain.max_epochs = 2
    c.retrain.target = 1.5  # never reached: both retraining epochs always run
    c.log_every_steps = 4
    c.progress_bar = False
    return set_fields(c, overrides)


def _strip_timing(obj):
    if isinstance(obj, dict):
        return {k: _strip_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_strip_timing(v) for v in obj]
    return obj


def _run_summaries(workdir):
    return [_strip_timing(json.load(open(os.path.join(workdir, name, "summary.json"))))
            for name in ("eb_seed0", "worm_seed0")]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("reference"))
    payload = experiment.run_experiment(tiny_config(), workdir, print_fn=lambda s: None)
    return workdir, payload


def test_pipeline_outputs_and_metrics(reference_run):
    workdir, payload = reference_run
    for name in ("summary.json", "metrics.jsonl", "mask_distance.png",
                 "loss_curves.png", "config.json"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    eb, worm = (r for r in payload["runs"])
    assert eb["schedule"] == "none" and worm["schedule"] == "worm"
    for run in payload["runs"]:
        assert 0.0 <= run["pre_prune_accuracy"] <= 1.0
        assert run["post_prune_accuracy"] is not None
        assert run["restore_epochs"] is None  # target 1.5 is unreachable
        flops = run["flops"]  # images: one batch shape, so the mean is the figure
        assert flops["dense_train_forward_per_example"] == flops["dense_forward_per_example"]
        assert flops["training_flops_spent"] == pytest.approx(
            3 * flops["dense_forward_per_example"] * run["examples_trained"])
        assert run["params"]["pruned"] < run["params"]["dense"]
    # One compilation per step kind over the whole experiment.
    counts = payload["compile_counts"]
    assert counts["train_step"] == 1 and counts["eval_step"] == 1
    assert counts["train_step_masked"] == 1 and counts["prune"] == 1
    assert counts["eb_update"] == 2  # one per search config (none, worm)
    assert "EB Train" in payload["tables"]["comparison"]


def test_same_initialisation_for_eb_and_worm_until_the_trigger(reference_run):
    workdir, _ = reference_run
    eb, worm = _run_summaries(workdir)
    first_eb, first_worm = eb["trajectory"][0], worm["trajectory"][0]
    assert first_eb["train_loss"] == first_worm["train_loss"]
    assert first_eb["d_max"] == first_worm["d_max"]
    triggered = [r["truncation_active"] for r in worm["trajectory"]
                 if r["phase"] == "search"]
    assert any(triggered) and not any(r["truncation_active"] for r in eb["trajectory"])


def test_rerun_of_a_finished_workdir_is_a_no_op(reference_run):
    workdir, payload = reference_run
    again = experiment.run_experiment(tiny_config(), workdir, print_fn=lambda s: None)
    assert _strip_timing(again["runs"]) == _strip_timing(payload["runs"])


def test_interrupted_run_resumes_to_the_same_summary(reference_run, tmp_path,
                                                     monkeypatch):
    ref_dir, _ = reference_run
    workdir = str(tmp_path / "interrupted")
    real_save = ckpt_lib.RunCheckpointer.save
    saves = []

    def save_then_die(self, step, tree, meta):
        real_save(self, step, tree, meta)
        saves.append(step)
        if len(saves) == 2:  # after the second epoch's checkpoint
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(ckpt_lib.RunCheckpointer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        experiment.run_experiment(tiny_config(), workdir, print_fn=lambda s: None)
    monkeypatch.setattr(ckpt_lib.RunCheckpointer, "save", real_save)
    experiment.run_experiment(tiny_config(), workdir, print_fn=lambda s: None)
    assert _run_summaries(workdir) == _run_summaries(ref_dir)


def test_workdir_of_another_config_is_refused_and_untouched(reference_run):
    workdir, _ = reference_run
    before = open(os.path.join(workdir, "config.json")).read()
    with pytest.raises(ValueError, match="search.prune_ratio"):
        experiment.run_experiment(tiny_config(**{"search.prune_ratio": 0.3}), workdir)
    assert open(os.path.join(workdir, "config.json")).read() == before


@pytest.mark.parametrize("key, value, message", [
    ("model.name", "vgg19", "model.name"),
    ("data.name", "imagenet", "data.name"),
    ("search.schedule", "sometimes", "schedule"),
    ("experiment.schedules", "none,eventually", "schedule"),
    ("pruning.mode", "random", "pruning.mode"),
    ("search.prune_ratio", 1.2, "prune_ratio"),
    ("search.truncation_ratio", -1.0, "truncation_ratio"),
    ("search.window", 1, "window"),
    ("retrain.target_kind", "sometimes", "retrain.target_kind"),
    ("optim.name", "lion", "optim.name"),
])
def test_bad_config_fails_before_any_work(tmp_path, key, value, message):
    with pytest.raises(ValueError, match=message):
        experiment.run_experiment(tiny_config(**{key: value}), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "config.json")


def test_missing_cifar_says_both_ways_to_get_it(tmp_path):
    config = tiny_config(**{"data.name": "cifar10", "data.dir": str(tmp_path / "no")})
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        experiment.run_experiment(config, str(tmp_path / "w"))
    assert "tfds" in str(err.value) or "tarball" in str(err.value)


@pytest.mark.slow
def test_launch_entry_point_with_overrides(tmp_path):
    cmd = [sys.executable, "launch.py", "--config=configs/quickstart.py", "--jax_cache_dir=",
           f"--workdir={tmp_path}", "--config.model.width=0.0625",
           "--config.data.train_limit=128", "--config.data.eval_limit=64",
           "--config.search.window=2", "--config.search.max_epochs=2",
           "--config.retrain.max_epochs=1", "--config.progress_bar=False"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Ticket Search Epoch Count" in out.stdout
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["config"]["search"]["max_epochs"] == 2
    assert summary["environment"]["devices"]["count"] == 1
    bad = subprocess.run(cmd[:3] + [f"--workdir={tmp_path}/bad",
                                    "--config.search.prune_ratio=0"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "prune_ratio" in bad.stderr


@pytest.mark.slow
def test_launch_splits_batches_over_host_devices(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cmd = [sys.executable, "launch.py", "--config=configs/quickstart.py", "--jax_cache_dir=",
           "--config.model.width=0.0625", "--config.data.train_limit=128",
           "--config.data.eval_limit=64", "--config.search.window=2",
           "--config.search.max_epochs=2", "--config.retrain.max_epochs=1",
           "--config.optim.eval_batch_size=64", "--config.experiment.schedules=worm",
           "--config.progress_bar=False"]
    out = subprocess.run(cmd + [f"--workdir={tmp_path}/two", "--host_devices=2"], cwd=REPO,
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.load(open(tmp_path / "two" / "summary.json"))
    assert summary["environment"]["devices"]["count"] == 2
    for value, message in (("0", "--host_devices must be >= 1, got 0"),
                           ("2", "both set the host device count")):
        bad_env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4")
        bad = subprocess.run(cmd + [f"--workdir={tmp_path}/bad", f"--host_devices={value}"],
                             cwd=REPO, capture_output=True, text=True, timeout=600,
                             env=bad_env if value == "2" else env)
        assert bad.returncode != 0 and message in bad.stderr, bad.stderr[-2000:]
        assert not os.path.exists(tmp_path / "bad")


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
        reference_run, tmp_path, monkeypatch):
    from wormjax.pipeline import loop
    from wormjax.pipeline import steps as steps_lib

    ref_dir, _ = reference_run
    workdir = str(tmp_path / "nan")
    real_read = steps_lib.read_metrics
    reads = []

    def poisoned(acc):
        out = real_read(acc)
        reads.append(1)
        if len(reads) == 5:  # inside the second search epoch
            out = dict(out, loss=float("nan"))
        return out

    monkeypatch.setattr(steps_lib, "read_metrics", poisoned)
    with pytest.raises(loop.NonFiniteLossError, match="newest checkpoint is step 8"):
        experiment.run_experiment(tiny_config(), workdir, print_fn=lambda s: None)
    monkeypatch.setattr(steps_lib, "read_metrics", real_read)
    ckpt_dir = os.path.join(workdir, "eb_seed0", "checkpoints")
    # Epoch 0's checkpoint (numbered by its training step) survives.
    assert [n for n in os.listdir(ckpt_dir) if n.isdigit()] == ["8"]
    experiment.run_experiment(tiny_config(), workdir, print_fn=lambda s: None)
    assert _run_summaries(workdir) == _run_summaries(ref_dir)


def test_corrupt_checkpoint_is_set_aside_for_the_previous_one(reference_run, tmp_path):
    import shutil

    ref_dir, _ = reference_run
    workdir = str(tmp_path / "corrupt")
    shutil.copytree(ref_dir, workdir)
    ckpt_dir = os.path.join(workdir, "eb_seed0", "checkpoints")
    latest = max(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
    for root, _, files in os.walk(os.path.join(ckpt_dir, str(latest), "state")):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    experiment.run_experiment(tiny_config(), workdir, print_fn=lambda s: None)
    assert any(n.startswith(f"{latest}.corrupt-") for n in os.listdir(ckpt_dir))
    assert _run_summaries(workdir) == _run_summaries(ref_dir)


@pytest.mark.parametrize("overrides, table", [
    ({"model.name": "cifar_resnet18", "pruning.mode": "reference",
      "experiment.sweep_ratios": "1,0.01"}, "sweep"),
    ({"model.name": "tv_vgg11_bn", "experiment.schedules": "greedy",
      "data.eval_split": "train"}, "comparison"),
])
def test_other_models_pruning_modes_and_schedules(tmp_path, overrides, table):
    config = tiny_config(**{"search.max_epochs": 1, "retrain.max_epochs": 1,
                            "data.train_limit": 64, **overrides})
    payload = experiment.run_experiment(config, str(tmp_path), print_fn=lambda s: None)
    assert table in payload["tables"]
    for run in payload["runs"]:
        assert run["pruning_mode"] == config.pruning.mode
        assert run["eval_split"] == config.data.eval_split
    if config.pruning.mode == "reference":
        # Per-tensor 50%: about half of every conv/dense kernel is zero.
        assert run["params"]["pruned"] < 0.6 * run["params"]["dense"]
        assert [r["schedule"] for r in payload["runs"]] == ["always", "always"]


def test_structured_pruning_retrains_and_saves_the_compact_model(tmp_path):
    from wormjax import structured

    config = tiny_config(**{"pruning.mode": "structured", "experiment.schedules": "worm",
                            "search.max_epochs": 2, "retrain.max_epochs": 1})
    workdir = str(tmp_path / "s")
    payload = experiment.run_experiment(config, workdir, print_fn=lambda s: None)
    run = payload["runs"][0]
    assert run["params"]["pruned"] < run["params"]["dense"]
    assert run["flops"]["pruned_forward_per_example"] < \
        run["flops"]["dense_forward_per_example"]
    kept, total = run["structured"]["bn_channels"]
    assert kept < total
    model, variables = structured.load_compact(
        os.path.join(workdir, "worm_seed0", "compact_model"))
    assert list(model.channels) == run["structured"]["channels"]
    assert structured.count_params(variables) == run["params"]["pruned"]
    # A second invocation resumes the finished run from its compact checkpoint.
    again = experiment.run_experiment(config, workdir, print_fn=lambda s: None)
    assert _strip_timing(again["runs"]) == _strip_timing(payload["runs"])
