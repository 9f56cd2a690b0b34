"""pruning.recalibrate_bn_batches through the real pipeline: mask and structured."""

import pytest

from wormjax.pipeline import experiment

from test_experiment import tiny_config


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mask", "structured"])
def test_recalibration_reports_both_post_prune_accuracies(tmp_path, mode):
    config = tiny_config(**{"pruning.mode": mode, "pruning.recalibrate_bn_batches": 3,
                            "retrain.max_epochs": 1})
    payload = experiment.run_experiment(config, str(tmp_path), print_fn=lambda *a: None)
    for run in payload["runs"]:
        stale = run["post_prune_accuracy_before_recalibration"]
        assert stale is not None and 0.0 <= stale <= 1.0
        assert 0.0 <= run["post_prune_accuracy"] <= 1.0
    counts = payload["compile_counts"]
    # Dense mask mode: one program serves both arms; structured: one per ticket.
    assert counts["recalibrate"] == (1 if mode == "mask" else len(payload["runs"]))


@pytest.mark.slow
def test_recalibration_changes_nothing_before_pruning(tmp_path):
    """Recalibration changes nothing before pruning and reports the stale figure."""
    off = tiny_config(**{"pruning.mode": "mask", "retrain.max_epochs": 1,
                         "experiment.schedules": "none"})
    on = tiny_config(**{"pruning.mode": "mask", "retrain.max_epochs": 1,
                        "experiment.schedules": "none",
                        "pruning.recalibrate_bn_batches": 4})
    a = experiment.run_experiment(off, str(tmp_path / "off"), print_fn=lambda *a: None)
    b = experiment.run_experiment(on, str(tmp_path / "on"), print_fn=lambda *a: None)
    ra, rb = a["runs"][0], b["runs"][0]
    # Same search (same seed, data order): the recalibration changes only what follows.
    assert ra["ticket_epoch"] == rb["ticket_epoch"]
    assert ra["pre_prune_accuracy"] == rb["pre_prune_accuracy"]
    assert rb["post_prune_accuracy_before_recalibration"] == ra["post_prune_accuracy"]
    assert ra["post_prune_accuracy_before_recalibration"] is None
