"""An experiment: variants (EB, WORM, sweeps) x seeds, outputs and tables.

Every variant of a seed starts from the same initial weights and sees the
same data order, so EB Train and WORM are compared pair by pair, as in the
paper's Tables II and III; ``experiment.sweep_ratios`` gives Table I.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time

import jax

from wormjax import _validate
from wormjax.pipeline import checkpoint as ckpt_lib
from wormjax.pipeline import config_checks
from wormjax.pipeline import distributed
from wormjax.pipeline import interrupt
from wormjax.pipeline import multi_ratio
from wormjax.pipeline import plots
from wormjax.pipeline import programs as programs_lib
from wormjax.pipeline import report
from wormjax.pipeline import run as run_lib
from wormjax.pipeline import state as state_lib
from wormjax.pipeline import tables as tables_lib
from wormjax.pipeline import variants as variants_lib
from wormjax.pipeline import workdir as workdir_lib
from wormjax.pipeline.variants import variants_from_config

__all__ = ["variants_from_config", "validate_config", "run_experiment"]


def validate_config(config) -> list[variants_lib.Variant]:
    """Checks every field (``config_checks``) before any data is read or compiled."""
    task_cls = _task_class(config)
    task_cls.validate_config(config)
    # The recipe's cross-field rules (step fractions against the schedule).
    state_lib.validate_optim_config(config.optim)
    variants = variants_from_config(config)
    for v in variants:  # EarlyBirdConfig validates p, l, s, delta, r
        variants_lib.search_config(config, v)
        variants_lib.multi_config(config, v)  # several ratios: who drives truncation
    return variants


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


@contextlib.contextmanager
def _open_log(workdir: str, seed: int, name: str):
    """The ``RunLog`` of run ``name``, writing to the experiment's metrics files."""
    # Opened before the run so its set-up cost stays out of the timings.
    with report.MetricsWriter(workdir, name, seed) as writer:
        yield run_lib.RunLog(functools.partial(_log_record, writer), writer.rewind)


def _log_record(writer: report.MetricsWriter, record: dict) -> None:
    """Writes a record to ``metrics.jsonl``; an epoch's also goes to the log."""
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
    semantics = ckpt_lib.config_semantics(config_dict)
    if semantics:
        config_dict["semantics"] = semantics
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
    variables = parallel.replicate(task.init_variables(config.seed))
    programs = programs_lib.build_programs(config, task, variants, variables)
    compile_seconds = programs_lib.warm_up(programs, config, task, parallel, variables)
    # Only now is this the workdir's run: a start that failed before poisons nothing.
    ckpt_lib.record_workdir_config(workdir, config_dict)
    summaries = []
    for seed in seeds:
        for variant in variants:
            _stop_if_requested(f"before {variant.name} seed {seed}")
            open_log = functools.partial(_open_log, workdir, seed)
            if variants_lib.multi_config(config, variant) is not None:
                arms = multi_ratio.run_multi(task, config, programs, parallel, variant,
                                             seed, workdir, open_log)
            else:
                run_dir = os.path.join(workdir, f"{variant.name}_seed{seed}")
                with open_log(variant.name) as log:
                    arms = [(run_dir, run_lib.run_variant(
                        task, config, programs, parallel, variant, seed, run_dir, log))]
            for run_dir, run_summary in arms:
                report.write_summary(os.path.join(run_dir, "summary.json"), run_summary)
                summaries.append(run_summary)

    tables = {"comparison": tables_lib.comparison_table(
        summaries, max_retrain_epochs=config.retrain.max_epochs,
        num_classes=task.num_classes)}
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
        "compile_counts": programs.compile_counts(),
        "compile_seconds": compile_seconds,
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
    print_fn(f"compilations: {programs.compile_counts()}; outputs in {workdir}")
    return payload
