"""The paper-format result tables built from run summaries (wormjax.pipeline.tables)."""

from wormjax.pipeline import tables


def _summary(variant, schedule, seed, ticket, pre, post, after1, restore, total,
             converged=True, r=3e-3, target=("absolute", 0.9), **extra):
    return {"variant": variant, "schedule": schedule, "seed": seed, "truncation_ratio": r,
            "converged": converged, "ticket_epoch": ticket, "stop_distance": 0.1,
            "trigger_threshold": 0.15, "pre_prune_accuracy": pre,
            "post_prune_accuracy": post, "retrain_accuracy_after_one_epoch": after1,
            "restore_epochs": restore,
            "restore_target": {"kind": target[0], "value": target[1], "accuracy": 0.9},
            "pruning_mode": "structured",
            "times": {"search": 1.0, "prune": 0.1, "retrain": 2.0, "total": total},
            "flops": {}, "params": {}, **extra}


def _row(table, label):
    """The cells of the row named ``label``, over every block of a wrapped table."""
    lines = [l for l in table.splitlines() if l.startswith(f"| {label} ")]
    assert lines, f"no row {label!r} in\n{table}"
    cells = [c.strip() for c in lines[0].strip("|").split("|")]
    for line in lines[1:]:  # a continuation block repeats the first cell
        cells += [c.strip() for c in line.strip("|").split("|")][1:]
    return cells


def _header(table):
    return _row(table, table.splitlines()[0].strip("| ").split(" ")[0])


def test_comparison_table_mean_std_and_not_reached():
    runs = [_summary("eb", "none", 0, 6, 0.80, 0.20, 0.85, 3, 260),
            _summary("eb", "none", 1, 7, 0.82, 0.22, 0.86, None, 264, converged=False),
            _summary("eb", "none", 2, 7, 0.84, 0.24, 0.87, 5, 268),
            _summary("worm", "worm", 0, 5, 0.8067, 0.30, 0.8267, None, 262)]
    table = tables.comparison_table(runs, max_retrain_epochs=10)
    assert _header(table) == ["Algorithm", "EB Train", "WORM"]
    # ticket 6,7,7: mean 6.667, sample std sqrt(1/3) = 0.577; acc .80,.82,.84: 82 +- 2;
    # restore 3 and 5 (the None run excluded): 4 +- sqrt(2); time 264 +- 4.
    assert [_row(table, name)[1:] for name in (
        "Ticket Search Epoch Count", "Pre-Pruned Acc.", "Post-Prune Acc.",
        "Retrain Acc. after One Epoch", "90% Restore Epochs", "Total Wall Time",
        "Converged")] == [
        ["6.7 ± 0.6", "5"], ["82.00 ± 2.00%", "80.67%"], ["22.00 ± 2.00%", "30.00%"],
        ["86.00 ± 1.00%", "82.67%"], ["4.0 ± 1.4 (1/3 >10)", ">10"],
        ["264.0 ± 4.0 s", "262.0 s"], ["2/3", "1/1"]]
    assert "did not" in table  # the exclusion is stated
    assert "varies between identical runs" in table
    assert ">max" in tables.comparison_table(runs[3:])
    assert "did not" not in tables.comparison_table(runs[:1])


def test_comparison_table_headers_and_labels():
    runs = [_summary("worm", "worm", 0, 5, .8, .3, .8, 1, 10, target=("relative", 0.95)),
            _summary("greedy_r", "greedy", 0, 5, .8, .3, None, 1, 10,
                     target=("relative", 0.95)),
            _summary("eb_a", "none", 0, 5, .8, .3, .8, 1, 10, target=("relative", 0.95)),
            _summary("eb_b", "none", 0, 5, .8, .3, .8, 1, 10, target=("relative", 0.95))]
    table = tables.comparison_table(runs)
    assert "Restore Epochs (>=0.95 x pre)" in table
    assert _header(table) == ["Algorithm", "WORM", "greedy_r", "EB Train (eb_a)",
                              "EB Train (eb_b)"]
    # no after-one-epoch accuracy for greedy_r
    assert _row(table, "Retrain Acc. after One Epoch")[2] == "-"
    assert "mixed targets" in tables.comparison_table(runs[:1] + [_summary(
        "eb", "none", 0, 5, .8, .3, .8, 1, 10)])


def test_chance_note_only_where_post_prune_accuracy_is_near_chance():
    runs = [_summary("eb", "none", 0, 4, 0.9861, 0.0975, 0.9666, 1, 2.25),
            _summary("worm", "worm", 0, 4, 0.9889, 0.52, 0.9526, 3, 2.99)]
    note = tables.comparison_table(runs, num_classes=10).split("WORM.")[0]
    assert "near chance (10.00% for 10 classes) for EB Train." in " ".join(note.split())
    assert "96.66% (EB Train)" in tables.comparison_table(runs, num_classes=10)
    assert "95.26%" not in tables.comparison_table(runs, num_classes=10).split("|")[-1]
    assert "chance" not in tables.comparison_table(runs)  # classes unknown
    # Binary: 52% is within 5 points of the 50% chance level, 9.75% is not above it.
    binary = tables.comparison_table(runs, num_classes=2)
    assert "for EB Train, WORM." in " ".join(binary.split())
    runs[0]["post_prune_accuracy"] = 0.6
    assert "chance" not in tables.comparison_table(runs[:1], num_classes=10)


def test_sweep_table_rows_by_ratio():
    runs = [_summary("a01", "always", 0, 5, .8, .21, .8, 3, 237, r=0.1),
            _summary("a01", "always", 1, 6, .8, .23, .8, 3, 239, r=0.1),
            _summary("eb", "none", 0, 7, .8, .22, .8, 1, 237),  # r=1 whatever it says
            _summary("a05", "always", 0, 6, .8, .20, .8, 2, 239, r=0.5),
            _summary("worm", "worm", 0, 5, .8, .5, .8, 2, 200)]
    table = tables.sweep_table(runs)
    lines = [l for l in table.splitlines() if l.startswith("| ")][1:]
    assert [l.split("|")[1].strip() for l in lines] == ["1", "0.5", "0.1"]
    assert _row(table, "0.1")[1:] == ["5.5 ± 0.7", "22.00 ± 1.41%", "3.0 ± 0.0",
                                      "238.0 ± 1.4 s", "2/2"]
    assert "200.0 s" not in table
    assert "restore target (90% Restore Epochs)" in " ".join(table.split())


def test_glue_table_columns_per_task_and_gain():
    runs = [_summary("eb", "none", 0, 4, 0.8933, 0.8635, 0.8876, 1, 770, task="sst2"),
            _summary("eb", "none", 0, 3, 0.80, 0.78, 0.82, 1, 40, task="mrpc"),
            _summary("eb", "none", 1, 3, 0.80, 0.77, 0.84, 1, 42, task="mrpc"),
            _summary("worm", "worm", 0, 4, 0.6534, 0.527, 0.6281, 1, 51)]
    table = tables.glue_table(runs, baselines={"sst2": 0.935})
    eb, worm = table.split("\n\n")
    assert [c.strip() for c in eb.splitlines()[0].split("|")[1:4]] == ["EB Train", "sst2",
                                                                       "mrpc"]
    # gains: .8876 - .8933 = -0.57%; mrpc +2% and +4% -> +3.00 +- 1.41%
    assert _row(eb, "Accuracy Gain after 1 Epoch")[1:] == ["-0.57%", "+3.00 ± 1.41%"]
    assert _row(eb, "SOTA Baseline")[1:] == ["93.50%", "-"]
    assert _row(eb, "Epochs to Prune")[1:] == ["4", "3.0 ± 0.0"]
    assert _row(eb, "Time to Prune and Re-train")[1:] == ["770.0 s", "41.0 ± 1.4 s"]
    assert _row(worm, "Accuracy Gain after 1 Epoch") == ["Accuracy Gain after 1 Epoch",
                                                         "-2.53%"]
    assert worm.splitlines()[0].split("|")[2].strip() == "all"
