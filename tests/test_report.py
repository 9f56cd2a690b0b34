"""Run outputs: metrics log, TensorBoard mirror, figures, tables and the summary file."""

import glob
import json
import os
import struct
import sys
import warnings

import numpy as np
import pytest

from wormjax.pipeline import plots
from wormjax.pipeline import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _epoch(variant="worm", seed=0, phase="search", epoch=0, d_max=None, d_avg=None,
           loss=1.0, steps=10, active=False):
    return {"kind": "epoch", "variant": variant, "seed": seed, "phase": phase, "epoch": epoch,
            "d_max": d_max, "d_avg": d_avg, "dists": None, "truncation_active": active,
            "ratio": 3e-3 if active else 1.0, "train_loss": loss, "train_accuracy": 0.5,
            "eval_accuracy": 0.6, "eval_loss": 1.1, "epoch_time": 2.0, "steps": steps}


def _fake_run(variant, seed, n_search=8, n_retrain=3, window=3, log_every=5):
    """Epoch and step records shaped like a real search + retrain run."""
    rng = np.random.default_rng(seed)
    recs = []
    for e in range(n_search):
        full = e >= window - 1
        d_max = 0.5 / (e + 1) + 0.01 * rng.random() if full else 1.0
        last = e == n_search - 1  # the ticket epoch: found before training
        recs.append(_epoch(variant, seed, "search", e, d_max, d_max / 2,
                           None if last else 2.0 / (e + 1), 0 if last else 10, e > 4))
        for s in range(0, 0 if last else 10, log_every):
            recs.append({"kind": "step", "variant": variant, "seed": seed, "phase": "search",
                         "step": e * 10 + s, "epoch": e, "loss": 2.0 / (e + 1 + s / 10),
                         "accuracy": 0.5})
    for e in range(n_retrain):
        recs.append(_epoch(variant, seed, "retrain", e, loss=1.0 / (e + 1)))
        for s in range(0, 10, log_every):
            recs.append({"kind": "step", "variant": variant, "seed": seed, "phase": "retrain",
                         "step": e * 10 + s, "epoch": e, "loss": 1.0 / (e + 1), "accuracy": 0.7})
    return recs


# --- metrics.jsonl ------------------------------------------------------------


def test_jsonl_appends_resumes_and_converts_numpy(tmp_path):
    with report.MetricsWriter(str(tmp_path), "worm", 3, tensorboard=False) as w:
        w.write({"kind": "epoch", "epoch": 0, "d_max": np.float32(0.25)})
        w.write({"kind": "step", "step": 5, "loss": np.array(1.5)})
    # Flushed per write: a second writer (a resumed run) appends, never truncates.
    with report.MetricsWriter(str(tmp_path), "worm", 3, tensorboard=False) as w:
        w.write({"kind": "epoch", "epoch": 1, "variant": "other"})
    recs = report.read_records(str(tmp_path / "metrics.jsonl"))
    assert [r.get("epoch") for r in recs] == [0, None, 1]
    assert recs[0]["d_max"] == 0.25 and recs[1]["loss"] == 1.5
    assert recs[0]["variant"] == "worm" and recs[0]["seed"] == 3
    assert recs[2]["variant"] == "other"  # an explicit field wins over the writer's
    assert len(report.read_records(str(tmp_path / "metrics.jsonl"), kind="step")) == 1


def test_truncated_last_line_is_skipped_and_resume_starts_a_new_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with report.MetricsWriter(str(tmp_path), "eb", 0, tensorboard=False) as w:
        w.write({"kind": "epoch", "epoch": 0})
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"kind": "epoch", "epo')  # a crash mid-write
    with pytest.warns(UserWarning, match="unreadable"):
        assert len(report.read_records(str(path))) == 1
    with report.MetricsWriter(str(tmp_path), "eb", 0, tensorboard=False) as w:
        w.write({"kind": "epoch", "epoch": 1})
    with pytest.warns(UserWarning, match=r"\[2\]"):
        recs = report.read_records(str(path))
    assert [r["epoch"] for r in recs] == [0, 1]


def _event_tags(directory):
    """Scalar tags in TFRecord event files, parsed with tensorboardX's own protos."""
    from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
    tags = {}
    for name in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        data = open(name, "rb").read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 16 + length
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append((event.step, value.simple_value))
    return tags


def test_tensorboard_event_file_has_phase_tags(tmp_path):
    with report.MetricsWriter(str(tmp_path), "worm", 1) as w:
        w.write(_epoch(epoch=4, d_max=0.2, d_avg=0.1, active=True))
        w.write({"kind": "step", "phase": "retrain", "step": 30, "epoch": 2, "loss": 0.5,
                 "accuracy": 0.75})
    directory = tmp_path / "tensorboard" / "worm_seed1"
    assert glob.glob(str(directory / "events.out.tfevents.*"))
    tags = _event_tags(str(directory))
    assert tags["search/d_max"] == [(4, pytest.approx(0.2))]
    assert tags["search/d_avg"] == [(4, pytest.approx(0.1))]
    assert tags["search/truncation_active"] == [(4, 1.0)]
    assert tags["search/eval_accuracy"] == [(4, pytest.approx(0.6))]
    assert tags["retrain/train/loss"] == [(30, 0.5)]


def test_missing_tensorboardx_warns_once_and_logs_jsonl(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import now raises ImportError
    monkeypatch.setattr(report, "_tensorboard_warned", False)
    with pytest.warns(UserWarning, match="tensorboardX"):
        w = report.MetricsWriter(str(tmp_path), "eb", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report.MetricsWriter(str(tmp_path), "eb", 1).close()
    w.write(_epoch(d_max=0.3))
    w.close()
    w.close()
    assert len(report.read_records(str(tmp_path / "metrics.jsonl"))) == 1
    assert not (tmp_path / "tensorboard").exists()


# --- figures --------------------------------------------------------------------


@pytest.mark.parametrize("variants,seeds", [(["worm"], [0]), (["eb", "worm"], [0]),
                                            (["eb", "worm"], [0, 1])])
def test_plots_write_png(tmp_path, variants, seeds):
    recs = [r for v in variants for s in seeds
            for r in _fake_run(v, s, n_search=7 + s + (v == "eb"))]
    for full_only in (False, True):
        out = plots.plot_mask_distance(recs, str(tmp_path / f"d{full_only}.png"), 0.1, 0.15,
                                       full_window_only=full_only)
        assert open(out, "rb").read(8) == PNG_MAGIC
    out = plots.plot_loss_curves(recs, str(tmp_path / "sub" / "loss.png"))
    assert open(out, "rb").read(8) == PNG_MAGIC


def test_plots_tolerate_empty_and_missing_data(tmp_path):
    retrain_only = [_epoch(phase="retrain", loss=None), {"kind": "other"}]
    no_steps = [r for r in _fake_run("eb", 0) if r["kind"] == "epoch"]  # epoch-loss fallback
    cases = [[], None, retrain_only, no_steps]
    for i, recs in enumerate(cases):
        for fn in (lambda r, p: plots.plot_mask_distance(r, p, None, None),
                   plots.plot_loss_curves):
            path = tmp_path / f"{i}_{id(fn)}.png"
            fn(recs, str(path))
            assert path.read_bytes()[:8] == PNG_MAGIC


def test_epoch_line():
    line = report.epoch_line(_epoch(epoch=3, d_max=0.142, d_avg=0.081, loss=0.512,
                                    active=True))
    assert line == ("search e3 loss 0.512 acc 50.0% eval 60.0% d_max 0.142 d_avg 0.081 "
                    "trunc on r=0.003 2.0s")
    record = {**_epoch(phase="retrain", epoch=0, loss=None), "train_accuracy": None}
    assert report.epoch_line(record) == "retrain e0 eval 60.0% trunc off 2.0s"
    assert report.epoch_line({"kind": "step", "phase": "search", "epoch": 1, "loss": 0.25,
                              "accuracy": 0.5}) == "search e1 loss 0.250 acc 50.0%"


# --- summary file -----------------------------------------------------------------


def test_write_summary_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "out" / "summary.json"
    report.write_summary(str(path), {"acc": np.float32(0.5), "n": np.int64(3),
                                     "env": {"python": "3"}})
    assert json.loads(path.read_text()) == {"acc": 0.5, "n": 3, "env": {"python": "3"}}
    before = path.read_text()
    with pytest.raises(TypeError):
        report.write_summary(str(path), {"bad": object()})
    monkeypatch.setattr(report.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("x")))
    with pytest.raises(OSError):
        report.write_summary(str(path), {"fine": 1})
    assert path.read_text() == before
    assert os.listdir(path.parent) == ["summary.json"]  # no temp files left


def test_environment_info(monkeypatch):
    real = report.importlib.metadata.version

    def version(name):
        if name == "optax":
            raise report.importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(report.importlib.metadata, "version", version)
    info = report.environment_info()
    assert set(info["packages"]) == {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
                                     "numpy"}
    assert info["packages"]["optax"] is None
    assert info["packages"]["numpy"] == np.__version__
    assert info["python"].count(".") == 2
    assert info["devices"]["count"] >= 1 and info["devices"]["platform"]
    json.dumps(info)
