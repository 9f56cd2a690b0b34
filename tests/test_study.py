"""The study runner's statistics, results file and report (issue: reproduction study)."""

import json
import math
import os
import textwrap

import pytest

from wormjax.study import __main__ as study_cli
from wormjax.study import figures
from wormjax.study import plan as plan_lib
from wormjax.study import report as report_lib
from wormjax.study import results as results_lib
from wormjax.study import stats
from wormjax.study import tables

from conftest import REPO


def test_sign_test_exact_on_literal_differences():
    # 3 positive, 1 negative, 1 tie: m = 4, P(X <= 1) = 5/16, two-sided 10/16.
    assert stats.sign_test([1.0, 2.0, 3.0, -1.0, 0.0]) == (3, 1, 1, 0.625)
    assert stats.sign_test([0.5] * 5)[3] == pytest.approx(2 / 32)
    assert stats.sign_test([0.0, 0.0]) == (0, 0, 2, None)
    # Balanced signs can never exceed p = 1.
    assert stats.sign_test([1.0, -1.0])[3] == 1.0


def test_paired_t_interval_on_literal_numbers():
    a = {0: 1.0, 1: 2.0, 2: 3.0, 7: 9.0}  # seed 7 has no partner: dropped
    b = {0: 2.0, 1: 4.0, 2: 5.0, 5: 1.0}
    cmp_ = stats.paired(a, b)
    assert cmp_.differences == (1.0, 2.0, 2.0) and cmp_.n == 3
    assert cmp_.mean == pytest.approx(5 / 3)
    # sd = sqrt(1/3); t_{0.975, 2} = 4.302653; half width = t * sd / sqrt(3).
    half = 4.302653 * math.sqrt(1 / 3) / math.sqrt(3)
    assert cmp_.ci_low == pytest.approx(5 / 3 - half, abs=1e-5)
    assert cmp_.ci_high == pytest.approx(5 / 3 + half, abs=1e-5)
    assert (cmp_.positives, cmp_.negatives, cmp_.ties) == (3, 0, 0)
    assert cmp_.sign_p == pytest.approx(0.25)
    assert "[+0.23, +3.10]" in cmp_.format(".2f")


def test_paired_single_pair_has_no_interval_and_none_values_drop():
    cmp_ = stats.paired({0: 1.0, 1: None}, {0: 0.5, 1: 2.0})
    assert cmp_.n == 1 and cmp_.ci_low is None and cmp_.format(".1f") == "-0.5"
    with pytest.raises(ValueError, match="confidence"):
        stats.paired({}, {}, confidence=1.5)


def test_summarize_shows_n_and_never_a_bare_mean():
    assert stats.summarize([0.5, 0.7, None]).format(".1f", 100, "%") == \
        "60.0% ± 14.1% (n=2)"
    assert stats.summarize([0.5]).format(".2f") == "0.50 (n=1)"
    assert stats.summarize([]).format() == "-"


def test_elbow_finds_the_slope_change():
    ys = [1.0, 0.8, 0.6, 0.4, 0.2, 0.18, 0.16, 0.14]
    assert stats.elbow(range(8), ys) == (4.0, 0.2)
    assert stats.elbow([0, 1, 2], [1, 0, 0]) is None


def test_elbow_table_refits_without_the_first_full_window():
    run = _fake_run("vgg", "worm", 0, 10, 0.9, 0.1, 0.8)
    # A first-window spike, a plateau, a steep fall to epoch 7, then flat.
    d_max = {2: 0.5, 3: 0.3, 4: 0.29, 5: 0.28, 6: 0.2, 7: 0.12, 8: 0.115,
             9: 0.11, 10: 0.105}
    for t in run["trajectory"]:
        if t["phase"] == "search" and t["epoch"] in d_max:
            t["d_max"] = d_max[t["epoch"]]
    row = [line for line in tables.elbow_table([run]).splitlines()
           if line.startswith("| worm")][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    # All points: the spike wins (epoch 3); without it: the bend at epoch 7.
    assert cells[2:6] == ["3", "0.300", "7", "0.120"]
    assert cells[6:] == ["3", "10"]  # trigger (fake: from epoch 3), ticket


def _fake_run(experiment, variant, seed, ticket, pre, post, one):
    traj = [{"phase": "search", "epoch": e, "d_max": 1.0 if e < 2 else 0.3 / e,
             "d_avg": 1.0 if e < 2 else 0.2 / e,
             "truncation_active": variant == "worm" and e >= 3, "ratio": 0.003,
             "train_loss": 2.0 / (e + 1), "eval_accuracy": 0.5, "eval_f1": None,
             "epoch_time": 1.0} for e in range(ticket + 1)]
    # As the pipeline writes it: the update that draws the ticket trains nothing.
    traj[-1].update(train_loss=None, eval_accuracy=None, epoch_time=0.0)
    traj += [{"phase": "retrain", "epoch": 0, "d_max": None, "d_avg": None,
              "truncation_active": False, "ratio": 1.0, "train_loss": 0.5,
              "eval_accuracy": one, "eval_f1": None, "epoch_time": 1.0}]
    summary = {"variant": variant, "seed": seed, "converged": True,
               "ticket_epoch": ticket, "pre_prune_accuracy": pre,
               "post_prune_accuracy": post, "retrain_accuracy_after_one_epoch": one,
               "restore_epochs": 1, "stop_distance": 0.1,
               "trigger_threshold": 0.15 if variant == "worm" else None,
               "times": {"total": 10.0 + seed}, "flops": {"training_flops_spent": 3e12},
               "trajectory": traj}
    return results_lib.run_entry(summary, experiment=experiment, protocol="fake",
                                 settings={"seed": seed}, machine={"cpu": "test CPU"})


def _write_fake_study(root):
    os.makedirs(os.path.join(root, "studies"))
    with open(os.path.join(root, "studies", "fake.py"), "w") as f:
        f.write(textwrap.dedent("""
            from wormjax.study import Study, StudyExperiment
            def get_study():
                return Study(name="fake", description="A fake study.", experiments=[
                    StudyExperiment("vgg", "configs/quickstart.py", seeds=(0, 1, 2),
                                    protocol="fake")])
        """))


def test_report_regenerates_from_the_json_alone(tmp_path):
    root = str(tmp_path)
    _write_fake_study(root)
    study = plan_lib.load_study("fake", root)
    runs = [_fake_run("vgg", "eb", s, 6 + s, 0.9, 0.1, 0.8) for s in range(3)]
    runs += [_fake_run("vgg", "worm", s, 5 + s, 0.88, 0.3, 0.85) for s in range(3)]
    path = os.path.join(root, "docs", "results", "fake.json")
    results_lib.save(path, results_lib.merge(results_lib.load(path, "fake"), runs))
    assert study_cli.main(["report", "fake", "--root", root]) == 0
    md = open(os.path.join(root, "docs", "results", "fake.md")).read()
    # Search epochs: EB 6,7,8 vs WORM 5,6,7 -> every pair -1, sign test p = 0.25.
    assert "| search epochs | 7.0 ± 1.0 (n=3) | 6.0 ± 1.0 (n=3) |" in md
    assert "-1.0 [-1.0, -1.0] (n=3) | 0/3/0, p=0.250 |" in md
    # Post-prune accuracy: EB 10%, WORM 30% in every seed, so +20 points each.
    assert "| post-prune acc | 10.00% ± 0.00% (n=3) | 30.00% ± 0.00% (n=3) | " \
           "+20.00% [+20.00%, +20.00%] (n=3) | 3/0/0, p=0.250 |" in md
    for name in ("fake_vgg_distance.png", "fake_vgg_loss.png"):
        assert os.path.getsize(os.path.join(root, "docs", "figures", name)) < 200_000
        assert f"../figures/{name}" in md
    # The same JSON gives the same Markdown.
    study_cli.main(["report", "fake", "--root", root])
    assert open(os.path.join(root, "docs", "results", "fake.md")).read() == md


def test_loss_points_keep_search_and_retraining_apart():
    # Tickets at updates 6 and 7: the update that draws the ticket trains
    # nothing, so the seeds train 6 and 7 search epochs, then retrain.
    early, late = (_fake_run("sst2", "eb", s, 6 + s, .9, .8, .85) for s in range(2))
    (search0, retrain0), (search1, retrain1) = map(figures.loss_points, (early, late))
    assert sorted(search0) == list(range(6)) and sorted(retrain0) == [6]
    assert sorted(search1) == list(range(7)) and sorted(retrain1) == [7]
    # Epoch 6 is seed 0's retraining and seed 1's search: they sit in
    # different series, so the figure never averages the two.
    assert 6 in retrain0 and 6 in search1 and 6 not in search0
    assert search0[2] == pytest.approx(2.0 / 3) and retrain0[6] == 0.5


def test_tables_show_gain_f1_truncated_epochs_and_prune_retrain_time():
    runs = []
    for s in range(3):
        eb = _fake_run("rte", "eb", s, 6 + s, 0.9, 0.1, 0.8)
        worm = _fake_run("rte", "worm", s, 5 + s, 0.88, 0.3, 0.85)
        for run, f1 in ((eb, (0.70, 0.40, 0.60)), (worm, (0.72, 0.50, 0.66))):
            run["summary"].update(pre_prune_f1=f1[0], post_prune_f1=f1[1],
                                  retrain_f1_after_one_epoch=f1[2],
                                  times={"prune": 1.0, "retrain": 4.0 + s,
                                         "total": 20.0})
        runs += [eb, worm]
    table = tables.arms_table(runs)
    # Prune drop = pre-prune - post-prune: 0.9 - 0.1 and 0.88 - 0.3.
    assert "| 80.00 pts ± 0.00 pts (n=3) |" in table and "| 58.00 pts ± 0.00 pts (n=3) |" in table
    # Gain = after one retrain epoch - pre-prune: 0.8 - 0.9 and 0.85 - 0.88.
    assert "-10.00 pts ± 0.00 pts (n=3)" in table
    assert "-3.00 pts ± 0.00 pts (n=3)" in table
    # WORM trains with truncation from search epoch 3 up to the ticket's
    # update (5, 6, 7), which trains nothing: 2, 3, 4 epochs; EB never truncates.
    assert "3.0 ± 1.0 (n=3)" in table and "0.0 ± 0.0 (n=3)" in table
    assert "70.00% ± 0.00% (n=3)" in table and "66.00% ± 0.00% (n=3)" in table
    assert "6s ± 1s (n=3)" in table  # prune 1 s + retrain 4, 5, 6 s
    paired = tables.paired_table(runs, "eb", "worm")
    assert "| gain after 1 retrain epoch |" in paired
    assert "+7.00 pts [+7.00 pts, +7.00 pts] (n=3) | 3/0/0, p=0.250 |" in paired
    assert "+10.00% [+10.00%, +10.00%] (n=3)" in paired  # post-prune F1
    # CNN results without F1 leave the F1 columns out.
    assert "F1" not in tables.arms_table([_fake_run("vgg", "eb", 0, 6, .9, .1, .8)])
    # Every fake run restored after one epoch except one EB seed's.
    runs[0]["summary"]["restore_epochs"] = None
    table = tables.arms_table(runs)
    assert table.splitlines()[2].startswith("| eb | 0,1,2 | 3/3 | 2/3 | ")
    assert "| 1.0 ± 0.0 (n=2) |" in table.splitlines()[2]
    assert "flagged" not in table  # no run was flagged diverged
    runs[3]["summary"]["diverged"] = True  # worm, seed 1
    flagged = tables.arms_table(runs)
    assert "| restored | flagged |" in flagged
    assert flagged.splitlines()[3].startswith("| worm | 0,1,2 | 3/3 | 3/3 | seed 1 | ")
    assert flagged.splitlines()[2].startswith("| eb | 0,1,2 | 3/3 | 2/3 | - | ")
    runs[3]["summary"]["diverged"] = False
    assert "near chance" not in flagged  # no run judged against chance yet
    # Every EB seed ends (80%) within two points of a 79% chance; WORM ends at
    # 85%, above it. Neither was flagged diverged.
    for run in runs:
        run["summary"]["chance_accuracy"] = 0.79
    near = tables.arms_table(runs)
    assert "| restored | ends near chance |" in near and "flagged" not in near
    assert near.splitlines()[2].startswith("| eb | 0,1,2 | 3/3 | 2/3 | seed 0,seed 1,seed 2 | ")
    assert near.splitlines()[3].startswith("| worm | 0,1,2 | 3/3 | 3/3 | - | ")
    runs[0]["summary"]["chance_accuracy"] = 0.70  # 80% is 10 points above it
    assert tables.arms_table(runs).splitlines()[2].startswith(
        "| eb | 0,1,2 | 3/3 | 2/3 | seed 1,seed 2 | ")
    for run in runs:
        run["summary"]["chance_accuracy"] = None
    # All on one machine: no time cell is marked.
    assert "†" not in table and "†" not in paired
    # A seed from another machine marks the time cells, and only those.
    runs[-1] = dict(runs[-1], machine={"cpu": "other CPU"})
    mixed = tables.arms_table(runs)
    worm_row = next(line for line in mixed.splitlines() if line.startswith("| worm |"))
    assert worm_row.count("†") == 2  # prune + retrain time, wall time total
    assert "eb |" in mixed and next(line for line in mixed.splitlines()
                                    if line.startswith("| eb |")).count("†") == 0
    assert "ran on different machines" in mixed
    mixed_pairs = tables.paired_table(runs, "eb", "worm")
    assert next(line for line in mixed_pairs.splitlines()
                if line.startswith("| wall time total |")).count("†") == 2
    assert "†" not in next(line for line in mixed_pairs.splitlines()
                           if line.startswith("| search epochs |"))


def test_results_file_round_trips_and_refuses_another_study(tmp_path):
    path = str(tmp_path / "a.json")
    entry = _fake_run("vgg", "eb", 0, 4, 0.9, float("nan"), 0.8)
    assert entry["summary"]["post_prune_accuracy"] is None  # JSON has no NaN
    # Nor infinity, also inside tuples (a diverged loss read back from JSON).
    inf = _fake_run("vgg", "worm", 0, 4, 0.9, float("inf"), 0.8)
    inf["summary"]["times"] = {"total": float("-inf"), "pair": (1.0, float("inf"))}
    inf = results_lib.run_entry(inf["summary"] | {"trajectory": inf["trajectory"]},
                                experiment="vgg", protocol="fake", settings={},
                                machine={})
    assert inf["summary"]["post_prune_accuracy"] is None
    assert inf["summary"]["times"] == {"total": None, "pair": [1.0, None]}
    results_lib.save(str(tmp_path / "inf.json"),
                     results_lib.merge(results_lib.load(str(tmp_path / "inf.json"), "i"),
                                       [inf]))
    results_lib.save(path, results_lib.merge(results_lib.load(path, "a"), [entry]))
    data = results_lib.load(path, "a")
    assert results_lib.units_done(data) == {("vgg", 0): {"eb"}}
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    with pytest.raises(ValueError, match="not 'b'"):
        results_lib.load(path, "b")
    with open(path, "w") as f:
        f.write("{broken")
    with pytest.raises(ValueError, match="unreadable"):
        results_lib.load(path, "a")


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="a b", config="c.py"), "letters"),
    (dict(name="x", config="c.py", overrides={"seed": 3}), "per seed"),
    (dict(name="x", config="c.py", seeds=(1, 1)), "distinct"),
    (dict(name="x", config="c.py", seeds=(0, 1.5)), "distinct integers"),
    (dict(name="x", config="c.py", seeds="012"), "distinct integers"),
])
def test_bad_plans_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_lib.StudyExperiment(**kwargs)


@pytest.mark.parametrize("pairs", [[("eb", "worm", "greedy")], ["eb"], [("eb", "")]])
def test_bad_pairs_rejected(pairs):
    e = plan_lib.StudyExperiment("x", "c.py")
    with pytest.raises(ValueError, match="a pair must be two arm names"):
        plan_lib.Study("s", "d", [e], pairs=pairs)


def test_sign_test_refuses_non_finite_differences():
    with pytest.raises(ValueError, match="finite"):
        stats.sign_test([1.0, float("nan")])


def test_cross_pairs_compare_two_experiments_seed_by_seed():
    qk = plan_lib.StudyExperiment("rte_qk", "c.py", seeds=(0, 1, 2))
    qkv = plan_lib.StudyExperiment("rte_qkv", "c.py", seeds=(0, 1, 2))
    study = plan_lib.Study("s", "d", [qk, qkv],
                           cross_pairs=[("rte_qkv/eb", "rte_qk/eb")])
    runs = [_fake_run("rte_qkv", "eb", s, 4, 0.6, 0.5, 0.55) for s in range(3)]
    runs += [_fake_run("rte_qk", "eb", s, 3 + s, 0.62, 0.5, 0.55) for s in range(3)]
    runs += [_fake_run("rte_qk", "worm", s, 9, 0.1, 0.1, 0.1) for s in range(3)]
    md = report_lib.render(study, {"runs": runs}, {})
    section = md[md.index("## Across experiments"):]
    assert "Paired: rte_qk/eb vs rte_qkv/eb" in section
    # Search epochs 3, 4, 5 vs 4, 4, 4: differences -1, 0, +1; pre-prune +2 pts.
    assert "| search epochs | 4.0 ± 0.0 (n=3) | 4.0 ± 1.0 (n=3) |" in section
    assert "1/1/1, p=1.000" in section
    assert "+2.00% [+2.00%, +2.00%] (n=3)" in section
    assert "rte_qk/worm" not in section
    # Without a cross pair there is no such section.
    assert "Across" not in report_lib.render(plan_lib.Study("s", "d", [qk, qkv]),
                                             {"runs": runs}, {})
    for bad in ("rte_qk", "nope/eb", "rte_qk/"):
        with pytest.raises(ValueError, match="experiment/variant"):
            plan_lib.Study("s", "d", [qk, qkv], cross_pairs=[(bad, "rte_qk/eb")])


def test_list_into_a_closed_pipe_exits_quietly(tmp_path):
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "studies"))
    with open(os.path.join(root, "studies", "many.py"), "w") as f:
        # Far more than a pipe's 64 KiB buffer of lines, so the writer is
        # still writing when the reader has gone, however the two are scheduled.
        f.write(textwrap.dedent("""
            from wormjax.study import Study, StudyExperiment
            def get_study():
                return Study(name="many", description="many", experiments=[
                    StudyExperiment("a_rather_long_experiment_name", "configs/quickstart.py",
                                    seeds=range(3000))])
        """))
    os.symlink(os.path.join(REPO, "configs"), os.path.join(root, "configs"))
    # `list | head -1`: the reader goes away after the first line.
    proc = subprocess.Popen(
        [sys.executable, "-m", "wormjax.study", "list", "many", "--root", root],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 141, err
    assert first == b"a_rather_long_experiment_name seed 0: to run\n"
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_unknown_study_and_experiment_named(tmp_path, capsys):
    root = str(tmp_path)
    _write_fake_study(root)
    assert study_cli.main(["list", "nope", "--root", root]) == 2
    assert "known studies: fake" in capsys.readouterr().err
    assert study_cli.main(["list", "fake", "--root", root, "--only", "vggg"]) == 2
    assert "no experiment 'vggg'" in capsys.readouterr().err
    assert study_cli.main(["run", "fake", "--root", root, "--seeds", "7"]) == 2
    assert "--seeds 7 matches no planned seed; the selected experiments have " \
           "seeds [0, 1, 2]" in capsys.readouterr().err


@pytest.mark.slow
def test_run_then_skip_what_the_json_holds(tmp_path, capsys):
    root = str(tmp_path)
    os.symlink(os.path.join(REPO, "configs"), os.path.join(root, "configs"))
    os.makedirs(os.path.join(root, "studies"))
    with open(os.path.join(root, "studies", "tiny.py"), "w") as f:
        f.write(textwrap.dedent("""
            from wormjax.study import Study, StudyExperiment
            def get_study():
                return Study(name="tiny", description="tiny", experiments=[
                    StudyExperiment("digits", "configs/quickstart.py", seeds=(0,),
                        overrides={"search.max_epochs": 2, "retrain.max_epochs": 1,
                                   "search.window": 2, "data.train_limit": 200,
                                   "experiment.schedules": "none,worm",
                                   "progress_bar": False})])
        """))
    workroot = str(tmp_path / "work")
    args = ["--root", root, "--workroot", workroot]
    assert study_cli.main(["run", "tiny"] + args) == 0
    data = json.load(open(os.path.join(root, "docs", "results", "tiny.json")))
    assert sorted(r["variant"] for r in data["runs"]) == ["eb", "worm"]
    # Every row carries its per-epoch trajectory and the machine it ran on.
    assert all(r["trajectory"] and r["trajectory"][0]["phase"] == "search"
               for r in data["runs"])
    assert all(set(r["machine"]) == set(results_lib._MACHINE_FIELDS) for r in data["runs"])
    capsys.readouterr()
    assert study_cli.main(["run", "tiny"] + args) == 0
    assert "ran 0 unit(s)" in capsys.readouterr().out
    assert study_cli.main(["list", "tiny"] + args) == 0
    assert "digits seed 0: done" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(
    f[:-3] for f in os.listdir(os.path.join(REPO, "studies"))
    if f.endswith(".py") and not f.startswith("_")))
def test_committed_plans_build_valid_configs(name):
    from wormjax.pipeline import config_checks, variants  # noqa: PLC0415 - imports JAX
    study = plan_lib.load_study(name, str(REPO))
    arms = {}  # experiment -> its arm names
    for e in study.experiments:
        config = plan_lib.experiment_config(e, e.seeds[0], str(REPO))
        config_checks.check_config(config)
        arms[e.name] = set(variants.arm_names(config))
        assert arms[e.name]
    # Every pair the report draws names arms that exist: a typo would silently
    # drop its table.
    for pair in study.cross_pairs:
        for arm in pair:
            experiment, variant = plan_lib.split_arm(arm)
            assert variant in arms[experiment], arm
    for ref, cmp_ in study.pairs:
        assert any({ref, cmp_} <= mine for mine in arms.values()), (ref, cmp_)
