"""The first-run experience: 80-column tables, file modes, records, quiet logs."""

import io
import os
import sys
import types

import pytest

from test_tables import _summary
from wormjax.pipeline import report
from wormjax.pipeline import tables
from wormjax.pipeline import loop
from wormjax.pipeline import run as run_lib
from wormjax.pipeline import summary as summary_lib


def _lines(text):
    return text.splitlines()


def _two_arm(seeds):
    return [_summary(v, sched, s, 4 + s, 0.9861, 0.0975, 0.9666, None if s else 1,
                     1234.56 + s, converged=bool(s % 2))
            for v, sched in (("eb", "none"), ("worm", "worm")) for s in range(seeds)]


def _six_arm_sweep(seeds):
    ratios = (1, 0.5, 0.1, 0.05, 0.01, 0.005)
    return [_summary(f"always_r{r}", "always", s, 10 + s, 0.8067, 0.2234, 0.8267,
                     None if s == 1 else 12, 98765.4 + s, r=r, target=("relative", 0.98))
            for r in ratios for s in range(seeds)]


@pytest.mark.parametrize("seeds", [1, 3])
def test_printed_tables_fit_in_80_columns(seeds):
    texts = [tables.comparison_table(_two_arm(seeds), 10, num_classes=10),
             tables.comparison_table(_six_arm_sweep(seeds), 10, num_classes=10),
             tables.sweep_table(_six_arm_sweep(seeds), 10),
             tables.glue_table([dict(r, task=t) for r in _two_arm(seeds)
                                for t in ("sst2", "mrpc", "rte")], {"sst2": 0.935})]
    for text in texts:
        assert max(len(line) for line in _lines(text)) <= 80, text
    # Nothing is lost when a table continues in a second block: every variant and r.
    assert all(f"always_r{r}" in texts[1] for r in (1, 0.5, 0.1, 0.05, 0.01, 0.005))
    labels = [l.split("|")[1].strip() for l in _lines(texts[2])
              if l.startswith("| ") and not l.startswith("| r ")]
    expected = ["1", "0.5", "0.1", "0.05", "0.01", "0.005"]
    assert labels and labels == expected * (len(labels) // len(expected))


def test_layout_does_not_depend_on_wall_time_magnitude():
    short, long = _two_arm(1), _two_arm(1)
    for run in short:
        run["times"]["total"] = 2.26
    for run in long:
        run["times"]["total"] = 2345.6
    widths = lambda t: [len(l) for l in _lines(t)]  # noqa: E731
    assert widths(tables.comparison_table(short)) == widths(tables.comparison_table(long))
    assert "2.3 s" in tables.comparison_table(short)


def test_summary_and_config_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        report.write_summary(str(tmp_path / "summary.json"), {"a": 1})
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "summary.json").st_mode & 0o777 == 0o640
    report.write_summary(str(tmp_path / "summary.json"), {"a": 2})
    assert os.stat(tmp_path / "summary.json").st_mode & 0o777 == 0o666 & ~old
    assert os.listdir(tmp_path) == ["summary.json"]  # no temporary file left


def test_record_ratio_is_the_multiplier_in_effect_and_f1_only_when_given():
    variant = run_lib.Variant("worm", "worm", 3e-3)
    eb = types.SimpleNamespace(d_max=0.2, d_avg=0.1, dists=[0.2], active=False, ratio=3e-3)
    off = summary_lib.epoch_record(variant, 0, "search", 1, eb=eb,
                                evaluation={"accuracy": 0.5, "loss": 1.0})
    assert off["ratio"] == 1.0 and not off["truncation_active"]
    assert "eval_f1" not in off
    eb.active = True
    on = summary_lib.epoch_record(variant, 0, "search", 2, eb=eb,
                               evaluation={"accuracy": 0.5, "loss": 1.0, "f1": 0.4})
    assert on["ratio"] == 3e-3 and on["eval_f1"] == 0.4


def test_num_classes_of_cnn_and_bert_heads():
    from wormjax.pipeline import image_task, text_task  # noqa: PLC0415

    cnn = types.SimpleNamespace(model=types.SimpleNamespace(num_classes=10))
    bert = types.SimpleNamespace(model=types.SimpleNamespace(num_labels=2))
    assert image_task.ImageTask.num_classes.fget(cnn) == 10
    assert text_task.TextTask.num_classes.fget(bert) == 2


def test_progress_bar_off_when_stderr_is_not_a_terminal(monkeypatch):
    piped = io.StringIO()  # isatty() is False, like a log file
    monkeypatch.setattr(sys, "stderr", piped)
    step = lambda state, batch, acc: (state, acc)  # noqa: E731
    loop.train_epoch(step, None, [0, 1, 2], num_steps=3, log_every=0, progress=True,
                     put_fn=lambda b: b)
    assert piped.getvalue() == ""


@pytest.mark.slow
def test_quick_start_log_is_quiet_and_fits_a_terminal(tmp_path):
    import subprocess  # noqa: PLC0415

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, MPLCONFIGDIR=str(tmp_path / "mpl"))  # a fresh font cache
    cmd = [sys.executable, "launch.py", "--config=configs/quickstart.py",
           f"--jax_cache_dir={tmp_path / 'xla'}", f"--workdir={tmp_path / 'w'}",
           "--config.model.width=0.0625", "--config.data.train_limit=128",
           "--config.data.eval_limit=64", "--config.search.window=2",
           "--config.search.max_epochs=2", "--config.retrain.max_epochs=1"]
    out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600,
                         env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "compiling 6 step programs" in out.stderr and "compiled in" in out.stderr
    for noise in ("Unable to initialize backend", "font cache", "\r"):
        assert noise not in out.stderr, out.stderr[-3000:]
    assert max(len(line) for line in out.stdout.splitlines()[:-1]) <= 80, out.stdout
    mode = os.stat(tmp_path / "w" / "summary.json").st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
