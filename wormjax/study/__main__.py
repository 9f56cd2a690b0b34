"""``python -m wormjax.study {list,run,report} STUDY``: run and report a study.

- ``list``: every unit (experiment x seed) and whether the results hold it;
- ``run``: runs the units the results do not hold yet, one at a time, each
  resumable in its own workdir, and merges each finished unit into
  ``docs/results/<study>.json`` at once (commit it after each chunk);
- ``report``: regenerates ``docs/results/<study>.md`` and the figures under
  ``docs/figures/`` from the results JSON alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from wormjax.study import plan as plan_lib
from wormjax.study import report as report_lib
from wormjax.study import results as results_lib


def _units(study, only, seeds):
    wanted = set(only or [e.name for e in study.experiments])
    for name in wanted:
        study.experiment(name)  # names a typo'd experiment before any work
    for e in study.experiments:
        if e.name in wanted:
            for seed in e.seeds:
                if seeds is None or seed in seeds:
                    yield e, seed


def _expected_variants(config) -> set[str]:
    from wormjax.pipeline import variants  # noqa: PLC0415 - imports JAX
    return set(variants.arm_names(config))


def run_unit(study, experiment, seed: int, config, workroot: str) -> list[dict]:
    """Runs (or resumes) one experiment x seed with its built config; returns its rows."""
    from wormjax.pipeline import experiment as experiment_lib  # noqa: PLC0415 - imports JAX

    workdir = os.path.join(workroot, study.name, experiment.name, f"seed{seed}")
    payload = experiment_lib.run_experiment(config, workdir, print_fn=print)
    settings = {"config": experiment.config, "overrides": dict(experiment.overrides),
                "seed": seed}
    rows = []
    for run in payload["runs"]:
        path = os.path.join(workdir, f"{run['variant']}_seed{run['seed']}",
                            "summary.json")
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
        rows.append(results_lib.run_entry(
            summary, experiment=experiment.name, protocol=experiment.protocol,
            settings=settings, machine=payload.get("environment", {})))
    return rows


def main(argv=None) -> int:
    """Runs the CLI on ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m wormjax.study",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("list", "run", "report"))
    parser.add_argument("study", help="a plan name under studies/ or a .py path")
    parser.add_argument("--root", default=os.getcwd(),
                        help="repository root holding studies/, configs/, docs/")
    parser.add_argument("--only", default="", help="comma-separated experiments")
    parser.add_argument("--seeds", default="", help="comma-separated seeds")
    parser.add_argument("--workroot", default=os.path.join("runs", "studies"),
                        help="where each unit's workdir goes")
    parser.add_argument("--max_units", type=int, default=0,
                        help="run: stop after this many units (0: all)")
    parser.add_argument("--max_minutes", type=float, default=0.0,
                        help="run: start no new unit after this many minutes (0: none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        seeds = {int(s) for s in args.seeds.split(",") if s.strip()} or None
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if args.max_units < 0 or args.max_minutes < 0:
        parser.error("--max_units and --max_minutes must be >= 0")
    try:
        study = plan_lib.load_study(args.study, args.root)
        results_path = os.path.join(args.root, "docs", "results", f"{study.name}.json")
        data = results_lib.load(results_path, study.name)
        only = [s.strip() for s in args.only.split(",") if s.strip()]
        units = list(_units(study, only, seeds))
        if seeds is not None and not units and args.command != "report":
            planned = sorted({s for e in study.experiments
                              if not only or e.name in only for s in e.seeds})
            raise ValueError(f"--seeds {args.seeds} matches no planned seed; "
                             f"the selected experiments have seeds {planned}")
        if args.command == "report":
            written = report_lib.write_report(study, data, args.root)
            print("\n".join(written))
            return 0
        done = results_lib.units_done(data)
        started, ran = time.monotonic(), 0
        for experiment, seed in units:
            config = plan_lib.experiment_config(experiment, seed, args.root)
            have = done.get((experiment.name, seed), set())
            complete = _expected_variants(config) <= have
            if args.command == "list":
                print(f"{experiment.name} seed {seed}: "
                      f"{'done' if complete else 'to run'}")
                continue
            if complete:
                continue
            if args.max_units and ran >= args.max_units:
                break
            if args.max_minutes and time.monotonic() - started > 60 * args.max_minutes:
                break
            logging.info("study %s: %s seed %d", study.name, experiment.name, seed)
            rows = run_unit(study, experiment, seed, config, args.workroot)
            data = results_lib.merge(data, rows)
            results_lib.save(results_path, data)
            ran += 1
        if args.command == "run":
            print(f"ran {ran} unit(s); results in {results_path}")
    except ValueError as err:
        print(f"wormjax.study: {err}", file=sys.stderr)
        return 2
    return 0


def _main_piped() -> int:
    try:
        code = main()
        sys.stdout.flush()  # inside the try: a closed pipe fails here, not at exit
        return code
    except BrokenPipeError:
        # `study list bert_glue | head` closes the pipe early. Point stdout at
        # /dev/null so that Python's exit-time flush does not raise again, and
        # exit as a pipe-killed program does (128 + SIGPIPE).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(_main_piped())
