"""Every compiled program of an experiment, built once in one place and frozen.

Train, masked train and eval per truncation placement; the Early-Bird update
per search config (the public ``early_bird(config).update``); the prune step.
``warm_up`` compiles them all before the timed phases, so that the first
variant's search time holds no compilation. Structured pruning's compact model
is known only once a ticket is drawn: its steps are built by ``compact``.

The warm-up runs nothing. It lowers each jitted program on abstract arguments
(``jax.ShapeDtypeStruct``) and compiles it: ``jitted.lower(*specs).compile()``
leaves the executable in the same cache a later call of ``jitted`` consults, so
the real call neither traces nor compiles again (checked in jax 0.10.2 by the
backend-compile events; ``tests/test_warm_up.py`` keeps checking it). A spec
matches the real argument in shape, dtype, weak type and sharding (state
replicated, batches sharded along ``data``, as ``DataParallel`` places them),
or the real call would compile a second executable.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from wormjax import costs as costs_lib
from wormjax import multi_search
from wormjax import pruning
from wormjax import quirks
from wormjax import search as search_lib
from wormjax.pipeline import recalibration
from wormjax.pipeline import state as state_lib
from wormjax.pipeline import steps as steps_lib
from wormjax.pipeline import variants as variants_lib
from wormjax.pipeline.task import Task

__all__ = ["Costs", "Programs", "build_programs", "warm_up"]


@dataclasses.dataclass(frozen=True)
class Costs:
    """The dense model's costs, for the FLOP accounting of every run."""

    flops_per_example: float  # dense forward, at the longest input (text: bucket)
    # Dense forward FLOPs per trained example, averaged over an epoch's batch
    # shapes (text: length buckets); None means flops_per_example.
    train_flops_per_example: float | None
    num_params: int


@dataclasses.dataclass(frozen=True)
class Programs:
    """The compiled programs and what they are built from (read-only)."""

    counter: steps_lib.CompileCounter
    layout: Any  # the ticket layout (representative leaves) of the dense model
    txs: Mapping[str, Any]  # placement -> optimizer
    steps: Mapping[str, steps_lib.StepFns]  # placement -> dense model's steps
    searches: Mapping[search_lib.EarlyBirdConfig, search_lib.EarlyBirdSearch]
    # search config -> its public ``update``, jitted once more around a trace counter
    eb_updates: Mapping[search_lib.EarlyBirdConfig, Callable]
    prune: Callable  # (params, keep_flat) -> (pruning.Pruned, nonzero count)
    recalibrate: Callable  # fresh BatchNorm statistics of the dense model
    costs: Costs
    # bool [N] of the entries whose mask differences count; None: all (the
    # paper). Set by search.authors_qk_mask_bug (``wormjax.quirks``).
    counted: Any = None
    # search.prune_ratios: shared search config -> its multi-ratio search, and
    # its update jitted once more around the trace counter.
    multis: Mapping[search_lib.EarlyBirdConfig, multi_search.MultiRatioSearch] = (
        dataclasses.field(default_factory=dict))
    multi_updates: Mapping[search_lib.EarlyBirdConfig, Callable] = dataclasses.field(
        default_factory=dict)

    def eb_update(self, search_config, eb, params):
        """The epoch-end Early-Bird update of ``search_config`` on ``params``."""
        # ``counted`` (search.authors_qk_mask_bug) is an argument: one compile.
        return self.eb_updates[search_config](eb, self.layout.representative(params),
                                              self.counted)

    def multi_update(self, search_config, eb, params):
        """The epoch-end update of every detector of ``search_config``'s ratios."""
        return self.multi_updates[search_config](eb, self.layout.representative(params))

    def compile_counts(self) -> dict[str, int]:
        """Compilations so far, by program name."""
        counts = dict(self.counter.counts)
        counts.setdefault("eb_update", 0)
        return counts


def _counted_update(search, counter) -> Callable:
    # The public update (``early_bird(...)`` or ``early_bird_multi(...)``),
    # inlined in a jit of its own so that the counter sees each compilation
    # (one per input shape), as it does for every other program. ``counted``
    # (the one-ratio search's optional argument) passes through.
    def update(eb, representative, *counted):
        counter.hit("eb_update")
        return search.update(eb, representative, *counted)
    return jax.jit(update)


def _prune_program(config, task, layout, counter) -> Callable:
    # The ratio is static (reference pruning counts entries per tensor): one
    # compilation per ratio an experiment prunes at.
    def prune(params, keep_flat, prune_ratio):
        counter.hit("prune")
        out = pruning.prune(
            config.pruning.mode, params, layout=layout, keep_flat=keep_flat,
            prune_ratio=prune_ratio,
            persistent_reference_mask=task.persistent_reference_mask)
        nonzero = sum(jnp.count_nonzero(x) for x in jax.tree_util.tree_leaves(out.params))
        return out, nonzero
    return jax.jit(prune, static_argnums=2)


def build_programs(config, task: Task, variants, variables) -> Programs:
    """Builds (does not yet compile) every program of an experiment.

    Args:
      config: the experiment ConfigDict.
      task: the experiment's task.
      variants: the experiment's arms (``variants.variants_from_config``).
      variables: the dense model's initial variables (shapes and costs).
    """
    layout = task.selector(variables["params"])
    total_steps = ((config.search.max_epochs + config.retrain.max_epochs)
                   * task.steps_per_epoch)
    if config.optim.get("reset_each_epoch", False):
        total_steps = task.steps_per_epoch  # a fresh schedule every epoch
    counted = (quirks.authors_qk_counted(layout)
               if config.search.get("authors_qk_mask_bug", False) else None)
    counter = steps_lib.CompileCounter()
    txs, steps = {}, {}
    for placement in sorted({v.placement for v in variants}):
        txs[placement] = state_lib.make_optimizer(
            config.optim, task.selector, total_steps=total_steps, placement=placement)
        steps[placement] = steps_lib.make_steps(task.forward, txs[placement], counter)
    searches, multis = {}, {}
    for variant in variants:
        search_config = variants_lib.search_config(config, variant)
        multi = variants_lib.multi_config(config, variant)
        if multi is None:
            searches.setdefault(search_config, search_lib.early_bird(search_config))
        else:
            multis.setdefault(search_config, multi_search.early_bird_multi(
                search_config, prune_ratios=multi.prune_ratios,
                primary_ratio=multi.primary_ratio))
    flops = task.forward_flops(variables)
    costs = Costs(flops_per_example=flops.longest, train_flops_per_example=flops.train,
                  num_params=costs_lib.count_params(variables))
    return Programs(counter=counter, layout=layout, txs=txs, steps=steps,
                    searches=searches,
                    eb_updates={c: _counted_update(s, counter) for c, s in searches.items()},
                    prune=_prune_program(config, task, layout, counter),
                    recalibrate=recalibration.stats_fn(task.forward, counter), costs=costs,
                    counted=counted, multis=multis,
                    multi_updates={c: _counted_update(m, counter)
                                   for c, m in multis.items()})


def _masked_retraining(config, task) -> bool:
    # Retraining steps through the parameter mask in mask mode, and in reference
    # mode when the task keeps the reference mask (BERT).
    return config.pruning.mode == "mask" or task.persistent_reference_mask


def warm_up(programs: Programs, config, task, parallel, variables) -> float:
    """Compiles every program from abstract shapes, outside the timed phases.

    Nothing runs: each program is lowered on ``jax.ShapeDtypeStruct``s, once
    per batch shape of the task (``task.batch_specs``: text has one per length
    bucket), and compiled. See the module docstring for why this is enough.

    Returns:
      The seconds it took.
    """
    start = time.perf_counter()
    specs = task.batch_specs()
    masked = _masked_retraining(config, task)
    _log_compiling(programs, config, masked, len(specs["train"]), len(specs["eval"]))
    replicated = functools.partial(_abstract, sharding=parallel.replicated)
    train_batches = [_abstract(b, parallel.batch) for b in specs["train"]]
    eval_batches = [_abstract(b, parallel.batch) for b in specs["eval"]]
    num_entries = programs.layout.num_entries
    inactive = replicated(jax.eval_shape(
        functools.partial(steps_lib.inactive_truncation, num_entries)))
    acc = replicated(jax.eval_shape(steps_lib.zero_metrics))
    params = replicated(variables["params"])
    # Retraining's parameter mask, as the prune program returns it.
    ones = jax.tree_util.tree_map(
        lambda p: jax.ShapeDtypeStruct(p.shape, jnp.float32, sharding=p.sharding), params)
    for placement, fns in programs.steps.items():
        state = replicated(jax.eval_shape(functools.partial(
            state_lib.create_train_state, tx=programs.txs[placement], seed=config.seed),
            variables))
        for batch in train_batches:
            fns.train.lower(state, batch, inactive, acc).compile()
            if masked:
                fns.train_masked.lower(state, batch, inactive, acc, ones).compile()
        for batch in eval_batches:
            fns.eval.lower(state.params, state.batch_stats, batch, acc).compile()
    for search_config, search in programs.searches.items():
        eb = replicated(jax.eval_shape(functools.partial(search.init, num_entries)))
        # ``counted`` is a host array (or None) in every call: passed as it is.
        programs.eb_updates[search_config].lower(
            eb, programs.layout.representative(params), programs.counted).compile()
    for search_config, multi in programs.multis.items():
        stacked = replicated(jax.eval_shape(functools.partial(multi.init, num_entries)))
        programs.multi_updates[search_config].lower(
            stacked, programs.layout.representative(params)).compile()
    if config.pruning.mode != "structured":  # structured compiles per ticket
        # The ticket is a search state's newest mask: bool [N].
        newest = jax.ShapeDtypeStruct((num_entries,), jnp.bool_,
                                      sharding=parallel.replicated)
        for ratio in variants_lib.prune_ratios(config) or (config.search.prune_ratio,):
            programs.prune.lower(params, newest, ratio).compile()
    seconds = time.perf_counter() - start
    logging.info("compiled in %.1f s: %s", seconds, programs.compile_counts())
    return seconds


def _abstract(tree, sharding):
    """``tree`` (arrays or specs) as specs placed on ``sharding``, weak types kept."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding,
                                       weak_type=getattr(x, "weak_type", False)), tree)


def _log_compiling(programs: Programs, config, masked: bool, train_shapes: int,
                   eval_shapes: int) -> None:
    """Says what the silent warm-up is doing, since it can take minutes."""
    count = len(programs.steps) * (train_shapes * (2 if masked else 1) + eval_shapes)
    count += len(programs.searches) + len(programs.multis)
    ratios = variants_lib.prune_ratios(config) or (None,)
    count += (config.pruning.mode != "structured") * len(ratios)  # the prune steps
    cache = jax.config.jax_compilation_cache_dir
    logging.info(
        "compiling %d step programs: on a first run this can take a minute or two; %s",
        count, f"later runs load the slow ones from the persistent cache at {cache}"
        if cache else "the persistent compilation cache is off, so every run compiles")
