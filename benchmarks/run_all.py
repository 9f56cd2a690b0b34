"""Runs every benchmark in one process and writes ``results.md`` and ``results.json``.

  python -m benchmarks.run_all --size small --out benchmarks/results/
  python -m benchmarks.run_all --size large --only train_step,torch

Benches run in a fixed order: ``train_step`` first, so that later benches (EB update
share, pipeline ratio, roofline) reuse its step times. A bench that fails is recorded
with its error and the others still run; both files are rewritten after every bench,
so an interrupted run keeps what it finished. Any ``benchmarks/bench_*.py`` module
that exposes ``run(size) -> {"name", "rows", "notes"}`` joins in after the built-in ones.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import os
import time
import traceback

from benchmarks import common
from benchmarks import machine
from benchmarks import output

# Built-in order (the step cache is filled first); other bench_*.py modules follow.
ORDER = ("train_step", "torch", "worm_overhead", "eb_update", "input_pipeline",
         "compile", "roofline", "conv_layers", "xla_flags")


def discover() -> list[str]:
    """Bench names in run order: the built-in ones, then any other bench_*.py."""
    here = os.path.dirname(os.path.abspath(__file__))
    found = sorted(os.path.basename(p)[len("bench_"):-len(".py")]
                   for p in glob.glob(os.path.join(here, "bench_*.py")))
    return [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]


def run_one(name: str, size: str) -> dict:
    """Runs ``benchmarks.bench_<name>.run(size)``; a failure becomes a result with notes."""
    start = time.perf_counter()
    try:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        run = getattr(module, "run", None)
        if not callable(run):
            res = {"name": name, "rows": [],
                   "notes": [f"SKIPPED: benchmarks/bench_{name}.py has no run(size) "
                             "function (run it on its own)."]}
        else:
            res = dict(run(size))
            res.setdefault("name", name)
            res.setdefault("rows", [])
            res.setdefault("notes", [])
    except Exception as err:  # noqa: BLE001 - one bench must not stop the others
        res = {"name": name, "rows": [],
               "notes": [f"FAILED: {type(err).__name__}: {err}"[:500]],
               "error": traceback.format_exc()}
    res["seconds"] = time.perf_counter() - start
    return res


def render(results: list[dict], size: str, env: dict, started: str) -> str:
    """The whole markdown report."""
    pk = env["packages"]
    lines = [
        f"# wormjax benchmarks ({size} mode)", "",
        f"- Machine: {env['machine']} ({env['device_kind']}, backend {env['backend']}); "
        f"{env['os']}",
        f"- Versions: python {env['python']}, jax {pk['jax']}, jaxlib {pk['jaxlib']}, "
        f"flax {pk['flax']}, optax {pk['optax']}, numpy {pk['numpy']}, torch "
        f"{pk['torch']}, transformers {pk['transformers']}",
        f"- XLA_FLAGS: '{env['xla_flags']}'; load average at start {env['load_average']}; "
        f"cores busy with other processes at start {env.get('others_busy_cores')}",
        f"- Started {started}; peak host RSS of the whole run "
        f"{machine.peak_rss_mb():,.0f} MiB",
        f"- Command: python -m benchmarks.run_all --size {size}",
        "",
    ]
    warning = machine.contention_note(env)
    if warning:
        lines += [f"**{warning}**", ""]
    for res in results:
        lines.append(output.to_markdown(res).rstrip())
        lines += ["", f"_({res['name']}: {res['seconds']:.0f} s)_", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=common.SIZES, default="small")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"),
                        help="folder for results.md and results.json")
    parser.add_argument("--only", default="",
                        help="comma-separated bench names (default: all), e.g. torch,compile")
    args = parser.parse_args()
    names = discover()
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            parser.error(f"unknown bench(es) {unknown}; available: {names}")
        names = [n for n in names if n in wanted]
    env = machine.environment()
    started = env["timestamp"]
    results = []
    for name in names:
        print(f"[run_all] {name} ({args.size}) ...", flush=True)
        res = run_one(name, args.size)
        results.append(res)
        print(output.to_markdown(res), flush=True)
        print(f"[run_all] {name} done in {res['seconds']:.0f} s", flush=True)
        output.write_json(os.path.join(args.out, "results.json"),
                          {"size": args.size, "environment": env, "results": results})
        with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
            f.write(render(results, args.size, env, started))
    failed = [r["name"] for r in results if "error" in r]
    print(f"[run_all] wrote {args.out}/results.md and results.json"
          + (f"; FAILED: {failed}" if failed else ""))


if __name__ == "__main__":
    main()
