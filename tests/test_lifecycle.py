"""A run's life on disk: stops inside an epoch, corrupt checkpoints, the lock, the workdir."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from test_experiment import REPO, _strip_timing, tiny_config
from wormjax.pipeline import checkpoint as ckpt_lib
from wormjax.pipeline import experiment
from wormjax.pipeline import report
from wormjax.pipeline import workdir as workdir_lib
from wormjax.pipeline import interrupt

RUN = "worm_seed0"


def one_arm(**overrides):
    return tiny_config(**{"experiment.schedules": "worm", **overrides})


def _quiet(config, workdir):
    return experiment.run_experiment(config, workdir, print_fn=lambda s: None)


def _ckpt_dir(workdir):
    return os.path.join(workdir, RUN, "checkpoints")


def _steps(workdir):
    return sorted(int(n) for n in os.listdir(_ckpt_dir(workdir)) if n.isdigit())


def _final_digests(workdir):
    """The sha256 of every array of the run's newest checkpoint, from its metadata."""
    path = os.path.join(_ckpt_dir(workdir), str(_steps(workdir)[-1]), "meta", "metadata")
    return json.load(open(path))[ckpt_lib.DIGESTS_KEY]


def _records(workdir):
    return [_strip_timing(r) for r in
            report.read_records(os.path.join(workdir, "metrics.jsonl"))]


def _summary(workdir):
    return _strip_timing(json.load(open(os.path.join(workdir, RUN, "summary.json"))))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("reference"))
    payload = _quiet(one_arm(), workdir)
    return workdir, payload


def _sigint_at_step(monkeypatch, step_checks):
    """Sends this process a real SIGINT when the loop asks for the n-th time."""
    real = interrupt.stop_requested
    calls = []

    def hooked():
        calls.append(1)
        if len(calls) in step_checks:
            os.kill(os.getpid(), signal.SIGINT)
        return real()

    monkeypatch.setattr(interrupt, "stop_requested", hooked)


def test_checkpoints_are_numbered_by_training_step(reference):
    workdir, payload = reference
    steps_per_epoch = payload["steps_per_epoch"]
    run = payload["runs"][0]
    assert _steps(workdir)[-1] == run["examples_trained"] // 32
    assert _steps(workdir)[-1] == steps_per_epoch * (3 + 2)  # every epoch ran


def test_stops_inside_epochs_resume_to_identical_results(reference, tmp_path,
                                                        monkeypatch):
    ref_dir, ref = reference
    workdir = str(tmp_path / "stopped")
    steps = ref["steps_per_epoch"]  # 8: one stop check before each step
    # Search epoch 1 before its step 3; then retraining epoch 0 before its step 5
    # (the resumed run's checks restart at 1 and begin with epoch 1's step 3).
    # Each invocation also asks once before the run starts: the leading 1.
    # The handler in place before (Python's default; SIG_IGN where the tests
    # run as a background job) is the one put back.
    before = signal.getsignal(signal.SIGINT)
    for checks in ({1 + steps + 4}, {1 + (steps - 3) + steps + 6}):
        _sigint_at_step(monkeypatch, checks)
        with interrupt.handle_signals(), pytest.raises(interrupt.Interrupted) as err:
            _quiet(one_arm(), workdir)
        assert err.value.signum == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) is before
    assert _steps(workdir)[-1] == 3 * steps + 5  # the second stop's own checkpoint
    meta = json.load(open(os.path.join(_ckpt_dir(workdir), str(3 * steps + 5), "meta",
                                       "metadata")))
    assert (meta["phase"], meta["epoch"], meta["step_in_epoch"]) == ("retrain", 0, 5)
    monkeypatch.undo()
    payload = _quiet(one_arm(), workdir)
    assert _summary(workdir) == _summary(ref_dir)
    assert _final_digests(workdir) == _final_digests(ref_dir)
    # The replayed steps are not logged twice, and the resumed masked step is
    # placed like a fresh one: each step kind still compiles once.
    assert _records(workdir) == _records(ref_dir)
    assert payload["compile_counts"] == ref["compile_counts"]


def test_rewind_rewrites_metrics_and_tensorboard_without_replayed_records(tmp_path):
    with report.MetricsWriter(str(tmp_path), "eb", 0) as other:
        other.write({"kind": "epoch", "phase": "search", "epoch": 0})
    with report.MetricsWriter(str(tmp_path), "worm", 0) as writer:
        for epoch in range(3):
            writer.write({"kind": "epoch", "phase": "search", "epoch": epoch,
                          "train_loss": float(epoch)})
    with report.MetricsWriter(str(tmp_path), "worm", 0) as writer:
        writer.rewind(1)
        writer.write({"kind": "epoch", "phase": "search", "epoch": 1, "train_loss": 1.0})
    records = report.read_records(str(tmp_path / "metrics.jsonl"))
    assert [(r["variant"], r["epoch"]) for r in records] == [
        ("eb", 0), ("worm", 0), ("worm", 1)]
    pytest.importorskip("tensorboardX")
    assert _scalar_steps(writer.tensorboard_dir, "search/train_loss") == [0, 1]


def _scalar_steps(logdir, tag):
    """The steps of ``tag`` in every event file of ``logdir`` (TFRecord framing)."""
    from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel

    steps = []
    for name in sorted(os.listdir(logdir)):
        data = open(os.path.join(logdir, name), "rb").read()
        at = 0
        while at < len(data):
            length = int.from_bytes(data[at:at + 8], "little")
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4  # length, its crc, the record, its crc
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return steps


def _flip_bytes(path):
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    open(path, "wb").write(bytes(data))


def _array_files(step_dir):
    return [os.path.join(root, name) for root, _, names in os.walk(step_dir)
            if os.sep + "d" in root for name in names]


def _truncate(path):
    os.truncate(path, os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage", ["flip", "truncate", "manifest", "meta"])
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_used(
        reference, tmp_path, damage, capfd):
    ref_dir, ref = reference
    workdir = str(tmp_path / damage)
    shutil.copytree(ref_dir, workdir)
    newest = _steps(workdir)[-1]
    step_dir = os.path.join(_ckpt_dir(workdir), str(newest))
    if damage == "flip":  # orbax reads these back silently: only the digests see it
        for path in _array_files(os.path.join(step_dir, "state")):
            _flip_bytes(path)
    elif damage == "truncate":
        for path in _array_files(os.path.join(step_dir, "state")):
            _truncate(path)
    elif damage == "manifest":
        os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))
    else:
        os.remove(os.path.join(step_dir, "meta", "metadata"))
    assert os.path.exists(os.path.join(step_dir, ckpt_lib.FILES_NAME))  # sealed
    capfd.readouterr()
    payload = _quiet(one_arm(), workdir)
    # Found by the file digests, before orbax's threads read the damaged files.
    assert "Event loop is closed" not in capfd.readouterr().err
    aside = [n for n in os.listdir(_ckpt_dir(workdir)) if ".corrupt-" in n]
    assert len(aside) == 1 and aside[0].startswith(f"{newest}.corrupt-")
    assert _steps(workdir)[-1] == newest  # the last epoch was trained again
    assert _strip_timing(payload["runs"]) == _strip_timing(ref["runs"])
    assert _final_digests(workdir) == _final_digests(ref_dir)
    assert _records(workdir) == _records(ref_dir)


def test_max_to_keep_below_one_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="checkpoint.max_to_keep must be an integer >= 1"):
        _quiet(one_arm(**{"checkpoint.max_to_keep": 0}), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


def test_moved_data_set_still_resumes():
    old = ckpt_lib.config_fingerprint({"data": {"dir": "a.tar.gz", "source": "local"}})
    new = ckpt_lib.config_fingerprint({"data": {"dir": "extracted/", "source": "local"}})
    assert old == new
    assert ckpt_lib.config_fingerprint({"data": {"source": "tfds"}}) != \
        ckpt_lib.config_fingerprint({"data": {"source": "local"}})


def test_a_failed_start_does_not_claim_the_workdir(tmp_path):
    workdir = str(tmp_path / "w")
    bad = one_arm(**{"data.name": "cifar10", "data.dir": str(tmp_path / "nothing")})
    with pytest.raises((ValueError, FileNotFoundError)):
        _quiet(bad, workdir)
    assert not os.path.exists(os.path.join(workdir, "config.json"))
    # The corrected command is then not "a run of a different config".
    assert not ckpt_lib.check_workdir_config(workdir, {"data": {"name": "digits"}})


def test_unusable_workdirs_are_named_errors(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        workdir_lib.prepare(str(a_file))
    with pytest.raises(ValueError, match="lies under .*file, which is a file"):
        workdir_lib.prepare(str(a_file / "sub"))
    with pytest.raises(ValueError, match="is a file"):  # before any work
        _quiet(one_arm(), str(a_file))


def test_a_read_only_workdir_is_a_named_error(tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        if os.access(read_only, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(ValueError, match="not writable|cannot be created"):
            workdir_lib.prepare(str(read_only))
        with pytest.raises(ValueError, match="cannot be created"):
            workdir_lib.prepare(str(read_only / "new"))
    finally:
        read_only.chmod(0o700)


def test_a_second_run_on_a_locked_workdir_is_refused_at_once(tmp_path):
    workdir = workdir_lib.prepare(str(tmp_path / "w"))
    with workdir_lib.locked(workdir):
        with pytest.raises(workdir_lib.WorkdirInUseError, match=f"process {os.getpid()}"):
            _quiet(one_arm(), workdir)
    with workdir_lib.locked(workdir):  # released on exit: the next run may start
        pass


def test_a_dead_process_does_not_hold_the_lock(tmp_path):
    workdir = workdir_lib.prepare(str(tmp_path / "w"))
    code = ("import sys; from wormjax.pipeline import workdir as w\n"
            "with w.locked(sys.argv[1]):\n    print('held', flush=True)\n"
            "    import os; os._exit(9)\n")
    out = subprocess.run([sys.executable, "-c", code, workdir], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 9 and "held" in out.stdout
    with workdir_lib.locked(workdir):
        assert open(os.path.join(workdir, ".lock")).read().strip() == str(os.getpid())


@pytest.mark.slow
def test_sigint_through_launch_checkpoints_says_how_to_resume_and_resumes(tmp_path):
    args = ["launch.py", "--config=configs/quickstart.py", "--jax_cache_dir=",
            f"--workdir={tmp_path}", "--config.model.width=0.0625",
            "--config.data.train_limit=512", "--config.data.eval_limit=64",
            "--config.search.window=2", "--config.search.max_epochs=3",
            "--config.retrain.max_epochs=1", "--config.progress_bar=False",
            "--config.experiment.schedules=worm", "--config.log_every_steps=1"]
    child = subprocess.Popen([sys.executable] + args, cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while child.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and metrics.read_text().count('"kind": "step"') >= 2:
            child.send_signal(signal.SIGINT)
            break
        time.sleep(0.2)
    _, stderr = child.communicate(timeout=600)
    assert child.returncode == 130, stderr[-3000:]
    assert "resume with: python launch.py" in stderr and f"--workdir={tmp_path}" in stderr
    assert "Traceback" not in stderr
    assert _steps(str(tmp_path))  # the stop wrote its checkpoint
    done = subprocess.run([sys.executable] + args, cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed worm seed 0 from checkpoint" in done.stderr
    assert len(json.load(open(tmp_path / "summary.json"))["runs"]) == 1


def test_sigterm_becomes_a_stop_request_and_a_second_one_is_not_caught():
    previous = signal.getsignal(signal.SIGTERM)
    with interrupt.handle_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupt.stop_requested()
        assert interrupt.signal_number() == signal.SIGTERM
        # The next SIGTERM would reach the old handler: a stuck stop can be killed.
        assert signal.getsignal(signal.SIGTERM) == previous
    assert not interrupt.stop_requested()
    assert interrupt.exit_code(signal.SIGTERM) == 143
    assert interrupt.exit_code(signal.SIGINT) == 130


def test_a_workdir_from_before_a_meaning_changed_is_refused(tmp_path):
    # A text run with data.train_limit written before the subset became
    # class-balanced: the same flags now mean other training examples.
    text = {"task": "text", "data": {"name": "rte", "train_limit": 800}}
    assert ckpt_lib.config_semantics(text) == {"text_train_limit": "class-balanced"}
    workdir = str(tmp_path / "old")
    os.makedirs(workdir)
    ckpt_lib.record_workdir_config(workdir, text)  # what an old run recorded
    now = dict(text, semantics=ckpt_lib.config_semantics(text))
    with pytest.raises(ValueError, match=r"semantics.text_train_limit: '<absent>' -> "
                                         r"'class-balanced'"):
        ckpt_lib.check_workdir_config(workdir, now)
    # Runs the change did not touch carry no marker and resume as before.
    for untouched in ({"task": "text", "data": {"name": "rte", "train_limit": 0}},
                      {"task": "image", "data": {"name": "cifar10", "train_limit": 800}}):
        assert ckpt_lib.config_semantics(untouched) == {}
    new_dir = str(tmp_path / "new")
    os.makedirs(new_dir)
    ckpt_lib.record_workdir_config(new_dir, now)
    assert ckpt_lib.check_workdir_config(new_dir, now)
