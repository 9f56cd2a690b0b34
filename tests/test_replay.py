"""wormjax.replay and the scan: the Early-Bird rule over recorded magnitudes."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import test_experiment
import wormjax
from wormjax.pipeline import experiment
from wormjax.pipeline import magnitudes_log
from wormjax.study import scan as scan_lib


def _stepwise(magnitudes, config):
    search = wormjax.early_bird(config)
    eb, out = search.init(magnitudes.shape[1]), []
    for mag in magnitudes:
        eb = search.update(eb, [jnp.asarray(mag)])
        out.append((float(eb.d_max), bool(eb.converged), bool(eb.active)))
    return out


def test_replay_equals_the_search_update_step_by_step():
    rng = np.random.default_rng(0)
    base = rng.uniform(size=64)
    # Magnitudes that settle: the noise shrinks update by update.
    mags = np.stack([base + rng.normal(scale=0.3 / (t + 1) ** 2, size=64)
                     for t in range(10)]).astype(np.float32)
    config = wormjax.EarlyBirdConfig(prune_ratio=0.5, window=3, stop_distance=0.05,
                                     trigger_margin=0.1)
    trace = wormjax.replay(mags, config)
    want = _stepwise(mags, config)
    assert [float(d) for d in trace.d_max] == [w[0] for w in want]
    assert list(trace.converged) == [w[1] for w in want]
    assert list(trace.triggered) == [w[2] for w in want]
    assert 0 <= trace.trigger_update < trace.stop_update  # this sequence does both


def test_trigger_and_stop_on_literal_masks():
    # p = 0.5 of 10 entries: thr = sort(m)[5] = 6 and keep m > 6, entries 0-3
    # in a; b swaps entries 3 and 9, so the masks differ on 2 of 10 (0.2).
    a = [10, 9, 8, 7, 1, 2, 3, 4, 5, 6]
    b = [10, 9, 8, 6, 1, 2, 3, 4, 5, 7]
    mags = np.array([a, a, b, b, b], np.float32)
    trace = wormjax.replay(mags, wormjax.EarlyBirdConfig(
        prune_ratio=0.5, window=3, stop_distance=0.05, trigger_margin=0.1))
    # Update 2 fills the window [a, a, b]: d = (0.2, 0.2), no trigger (0.2 is
    # not < s + delta = 0.15). Update 3, [a, b, b]: d = (0.2, 0); d_avg 0.1
    # triggers, d_max 0.2 > s does not stop. Update 4, [b, b, b]: stop.
    np.testing.assert_allclose(trace.d_max, [1, 1, 0.2, 0.2, 0.0])
    np.testing.assert_allclose(trace.d_avg, [1, 1, 0.2, 0.1, 0.0])
    assert (trace.trigger_update, trace.stop_update) == (3, 4)
    assert list(trace.triggered) == [False, False, False, True, True]


def test_bad_shape_is_refused():
    with pytest.raises(ValueError, match="updates, entries"):
        wormjax.replay(np.ones(5), wormjax.EarlyBirdConfig())


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("recorded"))
    config = test_experiment.tiny_config(**{"search.record_magnitudes": True,
                                            "retrain.max_epochs": 1})
    payload = experiment.run_experiment(config, workdir, print_fn=lambda s: None)
    return workdir, config, payload


def _search_records(workdir, name):
    with open(os.path.join(workdir, name, "summary.json"), encoding="utf-8") as f:
        return [r for r in json.load(f)["trajectory"] if r["phase"] == "search"]


def test_eb_recording_predicts_when_the_worm_run_triggered(recorded):
    workdir, config, _ = recorded
    eb_mags, counted = magnitudes_log.load(os.path.join(workdir, "eb_seed0"))
    assert counted is None  # BatchNorm scales, not query/key kernels
    srch = config.search
    trace = wormjax.replay(eb_mags, wormjax.EarlyBirdConfig(
        prune_ratio=srch.prune_ratio, window=srch.window,
        stop_distance=srch.stop_distance, trigger_margin=srch.trigger_margin))
    eb = _search_records(workdir, "eb_seed0")
    assert [float(d) for d in trace.d_max] == [r["d_max"] for r in eb][:len(trace.d_max)]
    worm = _search_records(workdir, "worm_seed0")
    fired = [r["epoch"] for r in worm if r["truncation_active"]]
    assert fired and trace.trigger_update == fired[0]
    # The two runs are one training until the trigger: the same magnitudes.
    worm_mags, _ = magnitudes_log.load(os.path.join(workdir, "worm_seed0"))
    np.testing.assert_array_equal(worm_mags[:fired[0] + 1], eb_mags[:fired[0] + 1])
    # After it the truncation changes training: compared over updates both hold.
    both = min(len(worm_mags), len(eb_mags))
    assert both > fired[0] + 1
    assert not np.array_equal(worm_mags[fired[0] + 1:both], eb_mags[fired[0] + 1:both])


def test_scan_cli_prints_the_grid(recorded, capsys, tmp_path):
    workdir, _, _ = recorded
    out_json = str(tmp_path / "rows.json")
    assert scan_lib.main([os.path.join(workdir, "eb_seed0"), "--window", "2",
                          "--stop_distance", "0.02,0.5", "--trigger_margin", "0.5",
                          "--json", out_json]) == 0
    text = capsys.readouterr().out
    assert "| p | window | s | delta |" in text
    rows = json.load(open(out_json, encoding="utf-8"))
    assert [r["stop_distance"] for r in rows] == [0.02, 0.5]
    assert rows[1]["stop_update"] == 1  # s = 0.5: the first full window stops


def test_scan_without_a_recording_says_how_to_make_one(tmp_path, capsys):
    assert scan_lib.main([str(tmp_path)]) == 2
    assert "record_magnitudes=True" in capsys.readouterr().err



@pytest.mark.parametrize("flags, message", [
    (["--window", "3,x"], "--window='3,x': give comma-separated integers"),
    (["--stop_distance", ""], "--stop_distance is empty"),
    (["--window", "1"], "window must be an integer >= 2, got 1"),
])
def test_scan_names_a_bad_flag_before_reading_anything(tmp_path, capsys, flags, message):
    # tmp_path holds no recording: the flag's error comes first.
    assert scan_lib.main([str(tmp_path)] + flags) == 2
    err = capsys.readouterr().err
    assert message in err and "record_magnitudes" not in err


def test_movement_on_literal_magnitudes():
    from wormjax.study import movement as movement_lib  # noqa: PLC0415
    # p = 0.5 of 4 entries at update 0, the EB rule: thr = sort(m)[2] = 9 and
    # keep m > 9, so entry 0 is kept and entries 1-3 are pruned.
    mags = np.array([[10, 9, 1, 2], [11, 7, 1.5, 2]], np.float32)
    row = movement_lib.movement(mags, 0, 1, 0.5)
    # Kept |change| 1; pruned 2, 0.5 and 0 -> 2.5 / 3.
    assert row == pytest.approx({"pruned": 2.5 / 3, "kept": 1.0, "ratio": 2.5 / 3})
    with pytest.raises(ValueError, match=r"need 0 <= start < stop < 2"):
        movement_lib.movement(mags, 1, 1, 0.5)


def test_movement_cli_compares_eb_and_worm(recorded, capsys, tmp_path):
    from wormjax.study import movement as movement_lib  # noqa: PLC0415
    workdir, _, _ = recorded
    worm = _search_records(workdir, "worm_seed0")
    fired = next(r["epoch"] for r in worm if r["truncation_active"])
    runs = [os.path.join(workdir, n) for n in ("eb_seed0", "worm_seed0")]
    rows_path = str(tmp_path / "rows.json")
    assert movement_lib.main(runs + ["--start", str(fired), "--stop",
                                     str(fired + 1), "--json", rows_path]) == 0
    out = capsys.readouterr().out
    rows = json.load(open(rows_path, encoding="utf-8"))
    assert [r["run"] for r in rows] == ["eb_seed0", "worm_seed0"]
    assert rows[1]["ratio"] < rows[0]["ratio"]
    eb_row, worm_row = [line for line in out.splitlines()
                        if line.startswith(("| eb_seed0", "| worm_seed0"))]
    ratio = lambda line: float(line.split("|")[5])  # noqa: E731
    # SGD here: truncation after the trigger slows the to-be-pruned entries.
    assert ratio(worm_row) < ratio(eb_row)
    assert eb_row.endswith("| 0.00000 |")  # the first run against itself
    assert movement_lib.main(runs[:1] + ["--start", "0", "--stop", "99"]) == 2
    assert "need 0 <= start < stop" in capsys.readouterr().err
