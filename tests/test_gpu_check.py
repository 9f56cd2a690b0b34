"""The prepared GPU check runs its stages end to end on a CPU (``dry-run``)."""

import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_gpu_check_dry_run_completes_every_stage(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "dry-run",
                           str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    stages = (out / "stages.txt").read_text().splitlines()
    assert [s.split()[0] for s in stages] == ["tests", "bench", "vgg11_pair"], stages
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Everything comes back in at most 8 files, none in subfolders (device limits).
    files = sorted(os.listdir(out))
    assert len(files) <= 8 and all((out / f).is_file() for f in files), files
    assert {"bench_results.md", "vgg11_summary.json", "device.txt"} <= set(files)
