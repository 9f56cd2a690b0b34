"""Divergence: non-finite values stop a run truthfully; chance accuracy is flagged."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_experiment import tiny_config
from wormjax.pipeline import checkpoint as ckpt_lib
from wormjax.pipeline import experiment
from wormjax.pipeline import tables
from wormjax.data import images as images_lib
from wormjax.pipeline import divergence
from wormjax.pipeline import image_task
from wormjax.pipeline import loop


def _meta(pre, post, retrain, target=None, restore=None):
    records = [{"phase": "search", "eval_accuracy": pre}]
    records += [{"phase": "retrain", "eval_accuracy": a} for a in retrain]
    return {"pre_prune_accuracy": pre, "post_prune_accuracy": post, "records": records,
            "target_accuracy": target, "restore_epochs": restore}


def test_chance_is_the_most_frequent_class_ignoring_unknown_labels():
    assert divergence.chance_accuracy([0, 1, 1, 2, -1, -1]) == pytest.approx(2 / 4)
    assert divergence.chance_accuracy(np.arange(10)) == pytest.approx(0.1)
    assert divergence.chance_accuracy([-1, -1]) is None


def test_pre_prune_at_chance_is_diverged_and_a_trivial_restore_is_not_counted():
    # relative target 0.98 x 0.10 = 0.098: met by a model at chance
    out = divergence.verdict(_meta(0.10, 0.10, [0.10], target=0.098, restore=1), 0.10)
    assert out["diverged"] and out["restore_epochs"] is None
    assert "pre-prune accuracy 0.1000" in out["diverged_reason"]
    assert "not counted" in out["diverged_reason"]
    assert out["chance_accuracy"] == 0.10
    # the margin is inclusive: chance + 0.02 is still chance; just above is not
    assert divergence.verdict(_meta(0.12, 0.1, [0.5]), 0.10)["diverged"]
    fine = divergence.verdict(_meta(0.1201, 0.1, [0.5], target=0.11, restore=1), 0.10)
    assert not fine["diverged"] and fine["diverged_reason"] is None
    assert fine["restore_epochs"] == 1


def test_retraining_that_collapses_is_diverged_one_that_has_not_risen_is_not():
    # pruning drops to chance and retraining has not recovered yet: not diverged
    # (restore_epochs None says it); this is the quick start's post-prune drop
    slow = divergence.verdict(_meta(0.80, 0.09, [0.09, 0.11]), 0.10)
    assert not slow["diverged"]
    # above chance at epoch 0, at chance at the end: collapsed
    out = divergence.verdict(_meta(0.80, 0.09, [0.40, 0.10]), 0.10)
    assert out["diverged"] and "retrained accuracy 0.1000, down from 0.4000" in (
        out["diverged_reason"])
    # above chance right after pruning, at chance after the only epoch: collapsed
    assert divergence.verdict(_meta(0.80, 0.50, [0.10]), 0.10)["diverged"]
    # a real target is still counted when retraining, not the search, diverged
    kept = divergence.verdict(_meta(0.80, 0.5, [0.9, 0.1], target=0.78, restore=1), 0.1)
    assert kept["diverged"] and kept["restore_epochs"] == 1


def test_without_labels_nothing_is_judged():
    out = divergence.verdict(_meta(0.0, 0.0, [0.0]), None)
    assert not out["diverged"] and out["chance_accuracy"] is None


def _summary(variant, schedule, diverged, r=3e-3, task=None):
    return {"variant": variant, "schedule": schedule, "truncation_ratio": r,
            "converged": True, "ticket_epoch": 3, "pre_prune_accuracy": 0.1,
            "post_prune_accuracy": 0.1, "retrain_accuracy_after_one_epoch": 0.1,
            "restore_epochs": None, "restore_target": {"kind": "absolute", "value": 0.9},
            "times": {"total": 1.0}, "diverged": diverged, "task": task}


def _first_cells(table):
    return {line.split("|")[1].strip() for line in table.splitlines()
            if line.startswith("| ")}


def _header_cells(table):
    # The comparison table has one column per arm: the labels are its header.
    return [c.strip() for c in table.splitlines()[0].strip("|").split("|")]


def test_tables_mark_diverged_runs_and_explain_the_mark():
    runs = [_summary("eb", "none", False), _summary("worm", "worm", True),
            _summary("worm", "worm", False)]
    table = tables.comparison_table(runs)
    assert _header_cells(table) == ["Algorithm", "EB Train", "WORM DIVERGED 1/2"]
    assert "DIVERGED: the trained or retrained accuracy is at chance" in table
    assert "DIVERGED" not in tables.comparison_table(runs[:1])
    sweep = tables.sweep_table([_summary("a", "always", True, r=0.1)])
    assert "0.1 DIVERGED" in _first_cells(sweep) and "see diverged_reason" in sweep
    glue = tables.glue_table([_summary("worm", "worm", True, task="rte")])
    assert "WORM DIVERGED" in _first_cells(glue) and "see diverged_reason" in glue


def test_huge_learning_rate_collapses_to_chance_and_is_flagged(tmp_path):
    # lr 9 (validation allows up to 10): every value stays finite and the model
    # predicts one class. Which class differs between CPU families, and the
    # 128 test digits hold 12 or 13 of each (9.4-10.2%), so the target is half
    # the pre-prune accuracy: any one-class model "restores" it in one epoch.
    workdir = str(tmp_path)
    config = tiny_config(**{"optim.learning_rate": 9.0, "retrain.target": 0.5,
                            "experiment.schedules": "none"})
    payload = experiment.run_experiment(config, workdir, print_fn=lambda s: None)
    labels = images_lib.load_digits32("test", limit=128).labels
    chance = np.bincount(labels).max() / labels.size
    with open(os.path.join(workdir, "eb_seed0", "summary.json")) as f:
        run = json.load(f)
    assert run["chance_accuracy"] == pytest.approx(chance)
    assert run["pre_prune_accuracy"] <= chance + divergence.CHANCE_MARGIN
    assert run["diverged"] is True
    assert run["diverged_reason"].startswith(
        f"the pre-prune accuracy {run['pre_prune_accuracy']:.4f}")
    # the relative target was met at once, but nothing was restored
    retrain = [r for r in run["trajectory"] if r["phase"] == "retrain"]
    assert retrain[0]["eval_accuracy"] >= run["restore_target"]["accuracy"]
    assert run["restore_epochs"] is None and "not counted" in run["diverged_reason"]
    table = payload["tables"]["comparison"]
    assert "EB Train DIVERGED" in _header_cells(table) and "see diverged_reason" in table
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f)["runs"][0]["diverged"] is True


def _latest_step(run_dir):
    ckpt = ckpt_lib.RunCheckpointer(os.path.join(run_dir, "checkpoints"))
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


@pytest.mark.parametrize("poisoned_epoch", [0, 1])
def test_non_finite_parameters_stop_before_the_checkpoint_with_the_truth(
        tmp_path, monkeypatch, poisoned_epoch):
    # The loss of the epoch stays finite; only the parameters blow up.
    real = loop.train_epoch
    calls = []

    def blow_up(step_fn, state, batches, **kwargs):
        out = real(step_fn, state, batches, **kwargs)
        calls.append(1)
        if len(calls) == poisoned_epoch + 1:
            out = out._replace(state=out.state.replace(params=jax.tree_util.tree_map(
                lambda x: x * jnp.inf, out.state.params)))
        return out

    monkeypatch.setattr(loop, "train_epoch", blow_up)
    config = tiny_config(**{"experiment.schedules": "none"})
    with pytest.raises(divergence.NonFiniteParamsError) as err:
        experiment.run_experiment(config, str(tmp_path), print_fn=lambda s: None)
    message = str(err.value)
    assert f"parameters are NaN or infinite after search epoch {poisoned_epoch}" in message
    latest = _latest_step(str(tmp_path / "eb_seed0"))
    if poisoned_epoch == 0:
        assert latest is None
        assert "No checkpoint was written yet, so there is nothing to resume from" in message
    else:  # epoch 0's checkpoint only (numbered by training step): none after it
        assert latest == 256 // 32  # tiny_config: 256 examples, batch 32
        assert f"newest checkpoint is step {latest}" in message
        assert "(search, before epoch 1)" in message
    assert "last good checkpoint" not in message


def test_non_finite_representatives_stop_the_search_at_that_epoch(tmp_path, monkeypatch):
    real = image_task.ImageTask.init_variables

    def nan_scales(self, seed):
        variables = real(self, seed)
        params = jax.tree_util.tree_map_with_path(
            lambda path, x: x * jnp.nan if "scale" in jax.tree_util.keystr(path) else x,
            variables["params"])
        return {**variables, "params": params}

    monkeypatch.setattr(image_task.ImageTask, "init_variables", nan_scales)
    config = tiny_config(**{"experiment.schedules": "none"})
    with pytest.raises(divergence.NonFiniteError) as err:
        experiment.run_experiment(config, str(tmp_path), print_fn=lambda s: None)
    message = str(err.value)
    assert "representative parameters" in message and "search epoch 0" in message
    assert "No checkpoint was written yet" in message
    assert _latest_step(str(tmp_path / "eb_seed0")) is None


def test_the_loss_error_is_a_non_finite_error_and_claims_no_checkpoint():
    assert issubclass(loop.NonFiniteLossError, divergence.NonFiniteError)
    acc = jnp.array([jnp.nan, 0.0, 1.0, 0.0, 0.0, 0.0])  # loss sum, correct, count...
    with pytest.raises(loop.NonFiniteLossError) as err:
        loop._checked(acc, "eb s0 search 2")
    assert "before this epoch's checkpoint" in str(err.value)
    assert "last good checkpoint" not in str(err.value)
