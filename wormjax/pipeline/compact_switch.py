"""Structured pruning's switch to the compact model: its variables, steps and file.

The optimizer chain holds no shapes, so it is reused; the steps are compiled
again, once, for the narrower model.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax

from wormjax import structured
from wormjax.models import common as model_common
from wormjax.pipeline import recalibration
from wormjax.pipeline import report
from wormjax.pipeline import steps as steps_lib

__all__ = ["TrainedModel", "dense", "compact", "build_compact", "save_compact_model"]


class TrainedModel:
    """What the run trains: the flax module (None: the task's own) and its programs."""

    __slots__ = ("model", "steps", "recalibrate", "retrain_entries", "abstract")

    def __init__(self, model, steps, recalibrate, retrain_entries: int, abstract=None):
        self.model, self.steps, self.recalibrate = model, steps, recalibrate
        self.retrain_entries, self.abstract = retrain_entries, abstract


def dense(programs, placement: str) -> TrainedModel:
    """The task's dense model with the experiment's compiled steps."""
    return TrainedModel(None, programs.steps[placement], programs.recalibrate,
                        programs.layout.num_entries)


def compact(task, tx, counter, channels) -> TrainedModel:
    """The compact model keeping ``channels``, its steps and abstract variables."""
    model = task.compact_model(channels)
    forward = functools.partial(task.forward, model=model)
    abstract = model_common.abstract_variables(model, task.input_shape)
    return TrainedModel(model, steps_lib.make_steps(forward, tx, counter),
                        recalibration.stats_fn(forward, counter),
                        task.selector(abstract["params"]).num_entries, abstract)


def build_compact(task, state, layout, keep_flat, pruning_cfg):
    """A narrower copy holding only the ticket's channels.

    Returns:
      ``(variables, info)``: the compact variables (on the host) and the
      summary's ``structured`` entry, through JSON already so that it equals the
      one a resumed run reads back from the checkpoint (tuples become lists).
    """
    host = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    model, variables, info = structured.build_compact(
        task.model, host, layout, jax.device_get(keep_flat),
        min_channels=pruning_cfg.min_channels,
        channel_multiple=pruning_cfg.channel_multiple)
    entry = json.loads(report.to_json({
        "channels": info["channels"], "bn_channels": info["bn_channels"],
        "floored": info["floored"], "shortcut_rule": info["shortcut_rule"],
        "params_compact": info["params_compact"],
        "forward_flops_compact": task.forward_flops(variables, model).longest}))
    return variables, entry


def save_compact_model(workdir: str, model, state, extra_meta: dict[str, Any]) -> None:
    """Writes the retrained compact model, loadable alone (``load_compact``)."""
    variables = jax.device_get({"params": state.params,
                                "batch_stats": state.batch_stats})
    structured.save_compact(os.path.join(workdir, "compact_model"), model, variables,
                            extra_meta=extra_meta, overwrite=True)


