"""An experiment: variants (EB, WORM, sweeps) x seeds, outputs and tables.

Every variant of a seed starts from the same initial weights and sees the
same data order, so EB Train and WORM are compared pair by pair, as in the
paper's Tables II and III; ``experiment.sweep_ratios`` gives Table I.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from wormjax import _validate
from wormjax.pipeline import checkpoint as ckpt_lib
from wormjax.pipeline import config_checks
from wormjax.pipeline import plots
from wormjax.pipeline import report
from wormjax import search as search_lib
from wormjax.pipeline import tables as tables_lib
from wormjax.pipeline import workdir as workdir_lib
from wormjax.pipeline import distributed
from wormjax.pipeline import interrupt
from wormjax.pipeline import run as run_lib
from wormjax.pipeline import state as state_lib
from wormjax.pipeline import steps as steps_lib

__all__ = ["variants_from_config", "validate_config", "run_experiment"]

_VARIANT_NAMES = {"none": "eb", "worm": "worm", "always": "always", "greedy": "greedy"}


def _csv(text) -> list[str]:
    if isinstance(text, (list, tuple)):
        return [str(t).strip() for t in text if str(t).strip()]
    return [t.strip() for t in str(text or "").split(",") if t.strip()]


def variants_from_config(config) -> list[run_lib.Variant]:
    """The experiment's arms, from ``config.search`` and ``config.experiment``."""
    exp, srch = config.experiment, config.search
    ratios = _csv(exp.sweep_ratios)
    if ratios:
        out = []
        for text in ratios:
            r = _validate.closed_interval("experiment.sweep_ratios entry", float(text),
                                          0.0, 1.0)
            out.append(run_lib.Variant(f"always_r{text}", "always", r, srch.placement))
        return out
    schedules = _csv(exp.schedules) or [srch.schedule]
    placements = _csv(exp.placements) or [srch.placement]
    out = []
    for schedule in schedules:
        _validate.one_of("schedule", schedule, search_lib.SCHEDULES)
        for placement in placements:
            _validate.one_of("truncation placement", placement, state_lib.PLACEMENTS)
            if schedule == "none" and placement != placements[0]:
                continue  # EB Train never truncates: placement is moot
            name = _VARIANT_NAMES[schedule]
            if len(placements) > 1 and schedule != "none":
                name = f"{name}_{placement}"
            out.append(run_lib.Variant(name, schedule, srch.truncation_ratio, placement))
    return out


def validate_config(config) -> list[run_lib.Variant]:
    """Checks every field (``config_checks``) before any data is read or compiled."""
    task_cls = _task_class(config)
    task_cls.validate_config(config)
    # The recipe's cross-field rules (step fractions against the schedule).
    state_lib.validate_optim_config(config.optim)
    variants = variants_from_config(config)
    for v in variants:  # EarlyBirdConfig validates p, l, s, delta, r
        run_lib._search_config(config, v)
    return variants


def _build_resources(config, task, parallel) -> run_lib.RunResources:
    variables = parallel.replicate(task.init_variables(config.seed))
    layout = task.selector(variables["params"])
    total_steps = (config.search.max_epochs + config.retrain.max_epochs) * \
        task.steps_per_epoch
    counter = steps_lib.CompileCounter()
    placements = sorted({v.placement for v in variants_from_config(config)})
    txs, steps = {}, {}
    for placement in placements:
        txs[placement] = state_lib.make_optimizer(
            config.optim, task.selector, total_steps=total_steps, placement=placement)
        steps[placement] = steps_lib.make_steps(task.forward, txs[placement], counter)
    flops = task.forward_flops_per_example(variables)
    train_flops = task.train_forward_flops_per_example(variables, flops)
    num_params = int(sum(np.prod(x.shape) for x in
                         jax.tree_util.tree_leaves(variables["params"])))
    res = run_lib.RunResources(task=task, config=config, counter=counter, txs=txs,
                               steps=steps, layout=layout, flops_per_example=flops,
                               train_flops_per_example=train_flops,
                               num_params=num_params, parallel=parallel)
    res.compile_seconds = _warm_up(res, variables)
    return res


def _warm_up(res: run_lib.RunResources, variables) -> float:
    """Compiles every step once on throwaway copies, outside the timed phases.

    Without this the first variant's search time would include compilation
    and the paired comparison would be unfair to it.
    """
    start = time.perf_counter()
    task, config = res.task, res.config
    if hasattr(task, "warmup_batches"):  # one batch per shape (text length buckets)
        shapes = task.warmup_batches()
        batches, eval_batches = shapes["train"], shapes["eval"]
    else:
        batches = [next(iter(task.train_batches(config.seed, 0)))]
        eval_batches = [next(iter(task.eval_batches()))]
    _log_compiling(res, len(batches), len(eval_batches))
    batches = [res.parallel.put_batch(b) for b in batches]
    eval_batches = [res.parallel.put_batch(b) for b in eval_batches]
    # Retraining steps through the parameter mask in mask mode, and in reference
    # mode when the task keeps the reference mask (BERT).
    masked = config.pruning.mode == "mask" or task.persistent_reference_mask
    place = res.parallel.replicate
    inactive = place(steps_lib.inactive_truncation(res.layout.num_entries))
    for placement, fns in res.steps.items():
        # A copy: the steps donate their state, which would delete `variables`.
        copy = jax.tree_util.tree_map(jnp.copy, variables)
        state = res.parallel.replicate(
            state_lib.create_train_state(copy, res.txs[placement], config.seed))
        ones = place(jax.tree_util.tree_map(
            lambda p: jnp.ones(p.shape, jnp.float32), state.params))
        acc = place(steps_lib.zero_metrics())
        for batch in batches:
            state, acc = fns.train(state, batch, inactive, acc)
            if masked:
                state, acc = fns.train_masked(state, batch, inactive, acc, ones)
        acc = place(steps_lib.zero_metrics())
        for eval_batch in eval_batches:
            acc = fns.eval(state.params, state.batch_stats, eval_batch, acc)
        jax.block_until_ready(acc)
    for variant in variants_from_config(config):
        search_config = run_lib._search_config(config, variant)
        update = res.eb_update_fn(search_config)
        eb = res.parallel.replicate(search_lib.init(res.layout.num_entries,
                                                    search_config))
        jax.block_until_ready(update(eb, variables["params"]))
    if config.pruning.mode != "structured":  # structured compiles per ticket
        eb = update(eb, variables["params"])
        jax.block_until_ready(res.prune_fn(variables["params"], eb.newest_mask))
    seconds = time.perf_counter() - start
    logging.info("compiled in %.1f s: %s", seconds, dict(res.counter.counts))
    return seconds


def _log_compiling(res: run_lib.RunResources, train_shapes: int, eval_shapes: int) -> None:
    """Says what the silent warm-up is doing, since it can take minutes."""
    config = res.config
    masked = config.pruning.mode == "mask" or res.task.persistent_reference_mask
    count = len(res.steps) * (train_shapes * (2 if masked else 1) + eval_shapes)
    count += len({run_lib._search_config(config, v) for v in variants_from_config(config)})
    count += config.pruning.mode != "structured"  # the prune step
    cache = jax.config.jax_compilation_cache_dir
    logging.info(
        "compiling %d step programs: on a first run this can take a minute or two; %s",
        count, f"later runs load the slow ones from the persistent cache at {cache}"
        if cache else "the persistent compilation cache is off, so every run compiles")


TASKS = config_checks.TASKS


def _task_class(config):
    """The task class named by ``config.task`` (imported on demand)."""
    kind = _validate.one_of("task", config.get("task", "image"), TASKS)
    if kind == "image":
        from wormjax.pipeline import image_task  # noqa: PLC0415
        return image_task.ImageTask
    from wormjax.pipeline import text_task  # noqa: PLC0415
    return text_task.TextTask


def _make_task(config):
    return _task_class(config)(config)


def _log_record(writer: report.MetricsWriter, record: dict) -> None:
    writer.write(record)
    if record["kind"] == "epoch":
        logging.info("%s seed %d: %s", record["variant"], record["seed"],
                     report.epoch_line(record))


def run_experiment(config, workdir: str, *, print_fn=print) -> dict:
    """Runs (or resumes) every variant x seed of ``config`` in ``workdir``.

    Holds ``<workdir>/.lock`` throughout, so a second run on the same workdir
    is refused at once.

    Returns:
      The experiment summary, also written to ``<workdir>/summary.json``.

    Raises:
      ValueError: a bad config or workdir, before any work.
      workdir.WorkdirInUseError: another process runs in ``workdir``.
      interrupt.Interrupted: a stop was requested (after checkpointing).
    """
    variants = validate_config(config)
    with workdir_lib.locked(workdir_lib.prepare(workdir)):
        return _run_locked(config, workdir, variants, print_fn)


def _stop_if_requested(where: str) -> None:
    if interrupt.stop_requested():
        raise interrupt.Interrupted(interrupt.signal_number(), where)


def _run_locked(config, workdir: str, variants, print_fn) -> dict:
    distributed.maybe_initialize_distributed(config.mesh.distributed)
    parallel = distributed.make_data_parallel(config.mesh.data)
    distributed.check_divisible("optim.batch_size", config.optim.batch_size,
                                parallel.num_devices)
    distributed.check_divisible("optim.eval_batch_size", config.optim.eval_batch_size,
                                parallel.num_devices)
    config_dict = json.loads(config.to_json_best_effort())
    resumed = ckpt_lib.check_workdir_config(workdir, config_dict)
    logging.info("%s experiment in %s", "resuming" if resumed else "starting", workdir)
    seeds = [config.seed + offset for offset in range(config.experiment.num_seeds)]
    # Before compiling: a corrupt newest checkpoint is found (and set aside) now,
    # not after the warm-up. Digests are checked again at the restore itself.
    for seed in seeds:
        for variant in variants:
            ckpt_lib.set_aside_unreadable(
                os.path.join(workdir, f"{variant.name}_seed{seed}", "checkpoints"))
    started = time.perf_counter()
    task = _make_task(config)
    res = _build_resources(config, task, parallel)
    # Only now is this the workdir's run: a start that failed before poisons nothing.
    ckpt_lib.record_workdir_config(workdir, config_dict)
    summaries = []
    for seed in seeds:
        for variant in variants:
            _stop_if_requested(f"before {variant.name} seed {seed}")
            run_dir = os.path.join(workdir, f"{variant.name}_seed{seed}")
            # Opened before the run so its set-up cost stays out of the timings.
            with report.MetricsWriter(workdir, variant.name, seed) as writer:
                res.log = functools.partial(_log_record, writer)
                res.rewind_log = writer.rewind
                run_summary = run_lib.run_variant(res, variant, seed, run_dir)
            report.write_summary(os.path.join(run_dir, "summary.json"), run_summary)
            summaries.append(run_summary)

    tables = {"comparison": tables_lib.comparison_table(
        summaries, max_retrain_epochs=config.retrain.max_epochs,
        num_classes=run_lib._num_classes(task))}
    if task.kind == "text":  # the paper's Tables IV-VI
        tables["glue"] = tables_lib.glue_table(summaries)
    if any(s["schedule"] == "always" for s in summaries):
        tables["sweep"] = tables_lib.sweep_table(
            summaries, max_retrain_epochs=config.retrain.max_epochs)
    records = [r for s in summaries for r in s["trajectory"]]
    plots.plot_mask_distance(records, os.path.join(workdir, "mask_distance.png"),
                             config.search.stop_distance,
                             config.search.stop_distance + config.search.trigger_margin)
    plots.plot_loss_curves(records, os.path.join(workdir, "loss_curves.png"))
    payload = {
        "config": config_dict,
        "environment": report.environment_info(),
        "compile_counts": dict(res.counter.counts),
        "compile_seconds": res.compile_seconds,
        "devices": {"data_parallel": parallel.num_devices,
                    "processes": jax.process_count()},
        "steps_per_epoch": task.steps_per_epoch,
        "train_examples": task.num_train_examples,
        "eval_examples": task.num_eval_examples,
        "wall_time_this_invocation": time.perf_counter() - started,
        "runs": [{k: v for k, v in s.items() if k != "trajectory"} for s in summaries],
        "tables": tables,
    }
    report.write_summary(os.path.join(workdir, "summary.json"), payload)
    for name, table in tables.items():
        print_fn(table)
    print_fn(f"compilations: {dict(res.counter.counts)}; outputs in {workdir}")
    return payload
