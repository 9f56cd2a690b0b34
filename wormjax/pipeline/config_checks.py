"""Every experiment config field's check: type and range or choices, by dotted name.

``FIELDS`` holds one check per field of ``configs/base.py`` and ``TEXT_FIELDS``
one per field that only ``configs/bert_base.py`` adds. A config holding a field
in neither table is refused with the nearest known spelling, so a typo never
becomes a silently ignored new field. A new config field needs one line here;
``tests/test_bad_inputs.py`` fails for a base-config field without one.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Iterator

import ml_collections

from wormjax import _validate
from wormjax import models
from wormjax import search as search_lib
from wormjax.data import glue as glue_lib
from wormjax.data import images as images_lib
from wormjax.data import pipeline
from wormjax.pipeline import state as state_lib
from wormjax.pipeline import variants as variants_lib

__all__ = ["TASKS", "FIELDS", "TEXT_FIELDS", "known_fields", "flatten",
           "unknown_field_message", "check_config"]

TASKS = ("image", "text")
# A check gets the dotted field name, its value and the whole config (for the
# few ranges that depend on another field) and raises ValueError naming the field.
Check = Callable[[str, Any, Any], None]


def _kind(config) -> str:
    return config.get("task", "image")


def _integer(low: int) -> Check:
    return lambda name, value, config: _validate.at_least(name, value, low)


def _choice(*allowed: str, text: tuple[str, ...] | None = None) -> Check:
    """One of ``allowed``; text tasks allow ``text`` instead when given."""
    def check(name, value, config):
        choices = text if text is not None and _kind(config) == "text" else allowed
        _validate.one_of(name, value, choices)
    return check


def _interval(rule: Callable, low: float, high: float) -> Check:
    return lambda name, value, config: rule(name, value, low, high)


def _boolean(name, value, config) -> None:
    _validate.boolean(name, value)


def _string(name, value, config) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")


def _non_negative(name, value, config) -> None:
    _validate.non_negative(name, value)


def _csv_entries(name: str, value) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    _string(name, value, None)
    return [v.strip() for v in value.split(",") if v.strip()]


def _csv_of(allowed: tuple[str, ...]) -> Check:
    """A comma-separated list ("" for none) of entries from ``allowed``."""
    def check(name, value, config):
        for entry in _csv_entries(name, value):
            _validate.one_of(f"{name} entry", entry, allowed)
    return check


def _ratios(name, value, config) -> None:
    """A comma-separated list of truncation ratios in [0, 1]."""
    for entry in _csv_entries(name, value):
        try:
            ratio = float(entry)
        except ValueError:
            raise ValueError(f"{name} entry {entry!r} is not a number; allowed: "
                             "comma-separated ratios in [0, 1], e.g. '1,0.5,0.1'") from None
        _validate.closed_interval(f"{name} entry", ratio, 0.0, 1.0)


def _data_name(name, value, config) -> None:
    if _kind(config) != "text":
        _validate.one_of(name, value, images_lib.DATASET_NAMES)
        return
    try:
        glue_lib.glue_task_name(value)
    except ValueError:
        raise ValueError(f"unknown {name} {value!r}; allowed: "
                         f"{', '.join(map(repr, glue_lib.GLUE_TASKS))}") from None


def _dataset_classes(config) -> int:
    """The data set's class count, known without loading it; 2 when unknown."""
    data_name = config.data.get("name")
    try:
        if _kind(config) == "text":
            return glue_lib.num_labels(data_name)
        return images_lib.NUM_CLASSES[data_name]
    except (KeyError, ValueError, TypeError):  # a bad data.name, reported on its own
        return 2


def _num_classes(name, value, config) -> None:
    need = _dataset_classes(config)
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if not (is_int and (value == 0 or value >= need)):
        raise ValueError(f"{name} must be 0 (the data set's {need} classes) or an integer "
                         f">= {need}, got {value!r}")


def _pretrained(name, value, config) -> None:
    _string(name, value, config)
    if value and _kind(config) == "text":
        raise ValueError(f"{name}={value!r} is for image tasks; a text task's weights come "
                         "from model.checkpoint; allowed: ''")


def _checkpoint(name, value, config) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"{name}={value!r}: give a Hugging Face BERT checkpoint folder (config.json, "
            "model.safetensors or pytorch_model.bin, vocab.txt or tokenizer.json) or a "
            "Hub id such as 'bert-base-uncased'")


def _pruning_mode(name, value, config) -> None:
    modes = ("mask", "reference") + (() if _kind(config) == "text" else ("structured",))
    _validate.one_of(name, value, modes)


def _retrain_target(name, value, config) -> None:
    absolute = config.retrain.get("target_kind") == "absolute"
    _validate.half_open_interval(name, value, 0.0, 1.0 if absolute else 10.0)


def _authors_qk_bug(name, value, config) -> None:
    _boolean(name, value, config)
    if value and config.search.get("include_value", False):
        raise ValueError(f"{name}=True reproduces a query/key mask; it cannot be "
                         "combined with search.include_value=True (Q+K+V)")


def _prune_ratios(name, value, config) -> None:
    # Entries, distinctness and the primary ratio: variants.prune_ratios and
    # multi_config (validate_config builds the latter for every arm).
    if variants_lib.prune_ratios(config) and config.search.get("authors_qk_mask_bug"):
        raise ValueError(f"{name}={value!r} cannot be combined with "
                         "search.authors_qk_mask_bug=True (one ratio only)")


def _mesh_data(name, value, config) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not (
            value == -1 or value >= 1):
        raise ValueError(f"{name} must be -1 (every device) or an integer >= 1, "
                         f"got {value!r}")


def _recalibrate_batches(name, value, config) -> None:
    _validate.at_least(name, value, 0)
    if value and _kind(config) == "text":
        raise ValueError(f"{name} is for BatchNorm networks; BERT has LayerNorm only, "
                         f"so allowed: 0; got {value!r}")


FIELDS: dict[str, Check] = {
    "task": _choice(*TASKS),
    "seed": _integer(0),
    "log_every_steps": _integer(0),
    "progress_bar": _boolean,
    "model.name": _choice(*models.CNN_MODELS, text=("bert",)),
    # A channel multiplier: 16 already makes VGG-11's widest layer 8192 channels.
    "model.width": _interval(_validate.half_open_interval, 0.0, 16.0),
    "model.num_classes": _num_classes,
    "model.dtype": _choice(*models.DTYPES),
    "model.pretrained": _pretrained,
    "model.replace_head": _boolean,
    "model.bn_scale_init": lambda name, value, config: models.check_bn_scale_init(value),
    "data.name": _data_name,
    "data.source": _choice(*images_lib.SOURCES, text=glue_lib.GLUE_SOURCES),
    "data.dir": _string,
    "data.normalization": _choice(*pipeline.NORMALIZE_SCHEMES),
    "data.augment": _boolean,
    "data.train_limit": _integer(0),
    "data.eval_limit": _integer(0),
    "data.eval_split": _choice("test", "train"),
    "data.prefetch": _integer(1),
    "optim.name": _choice("sgd", "adamw"),
    "optim.learning_rate": _interval(_validate.half_open_interval, 0.0, 10.0),
    "optim.momentum": _interval(_validate.closed_open_interval, 0.0, 1.0),
    "optim.weight_decay": _interval(_validate.closed_open_interval, 0.0, 1.0),
    "optim.warmup_steps": _integer(0),
    "optim.grad_clip_norm": _non_negative,
    "optim.batch_size": _integer(1),
    "optim.eval_batch_size": _integer(1),
    "optim.sparsity": _interval(_validate.closed_interval, 0.0, 1.0),
    "optim.schedule": _choice(*state_lib.LR_SCHEDULES),
    "optim.step_fractions": lambda name, value, config: state_lib.parse_step_fractions(value),
    "optim.step_factor": _interval(_validate.half_open_interval, 0.0, 1.0),
    "optim.decay_norm_and_bias": _boolean,
    "optim.reset_each_epoch": _boolean,
    "search.schedule": _choice(*search_lib.SCHEDULES),
    "search.prune_ratio": _interval(_validate.open_interval, 0.0, 1.0),
    "search.prune_ratios": _prune_ratios,
    "search.primary_ratio": _interval(_validate.closed_open_interval, 0.0, 1.0),
    "search.window": _integer(2),
    "search.stop_distance": _interval(_validate.half_open_interval, 0.0, 1.0),
    "search.trigger_margin": _interval(_validate.closed_interval, 0.0, 1.0),
    "search.truncation_ratio": _interval(_validate.closed_interval, 0.0, 1.0),
    "search.placement": _choice(*state_lib.PLACEMENTS),
    "search.max_epochs": _integer(1),
    "search.record_magnitudes": _boolean,
    "pruning.mode": _pruning_mode,
    "pruning.min_channels": _integer(1),
    "pruning.channel_multiple": _integer(1),
    "pruning.recalibrate_bn_batches": _recalibrate_batches,
    "retrain.max_epochs": _integer(1),
    "retrain.target_kind": _choice("absolute", "relative"),
    "retrain.target": _retrain_target,
    "experiment.schedules": _csv_of(search_lib.SCHEDULES),
    "experiment.placements": _csv_of(state_lib.PLACEMENTS),
    "experiment.sweep_ratios": _ratios,
    "experiment.num_seeds": _integer(1),
    "mesh.data": _mesh_data,
    "mesh.distributed": _choice("auto", "on", "off"),
    "checkpoint.max_to_keep": _integer(1),
}

TEXT_FIELDS: dict[str, Check] = {
    "model.checkpoint": _checkpoint,
    "data.max_seq_len": _integer(3),
    "data.bucket_min_len": _integer(1),
    "optim.warmup_fraction": _interval(_validate.closed_interval, 0.0, 1.0),
    "search.include_value": _boolean,
    "search.authors_qk_mask_bug": _authors_qk_bug,
}


def known_fields(kind: str) -> dict[str, Check]:
    """The fields a config of task ``kind`` holds, with their checks.

    Args:
      kind: "image" or "text".
    Returns:
      Dotted field name -> check.
    """
    return {**FIELDS, **TEXT_FIELDS} if kind == "text" else dict(FIELDS)


def flatten(config, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yields (dotted name, value) for every leaf of a (nested) ConfigDict.

    Args:
      config: a ConfigDict (or dict) whose sub-dicts are field groups.
      prefix: prepended to every name ("optim." for the leaves of config.optim).
    Returns:
      An iterator of ("optim.momentum", 0.9)-style pairs, in the config's order.
    """
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, (ml_collections.ConfigDict, dict)):
            yield from flatten(value, name + ".")
        else:
            yield name, value


def unknown_field_message(name: str, known) -> str:
    """Says that ``name`` is no config field, with its nearest spelling among ``known``.

    Args:
      name: the dotted name that was given, e.g. "optim.momentom".
      known: the valid dotted names.
    Returns:
      One line, e.g. "unknown config field optim.momentom; did you mean optim.momentum?".
    """
    known = sorted(known)
    group, _, leaf = name.rpartition(".")
    groups = sorted({k.rpartition(".")[0] for k in known})
    if group not in groups:  # a misspelled group: correct it first, then the leaf
        close_group = difflib.get_close_matches(group, [g for g in groups if g], n=1)
        group = close_group[0] if close_group else group
    siblings = [k for k in known if k.rpartition(".")[0] == group]
    # 0.7: a one- or two-letter slip matches, an unrelated word of similar length not.
    close = difflib.get_close_matches(leaf, [k.rpartition(".")[2] for k in siblings],
                                      n=1, cutoff=0.7)
    if close:
        return (f"unknown config field {name}; did you mean "
                f"{group + '.' if group else ''}{close[0]}?")
    if group and siblings:
        return (f"unknown config field {name}; fields of {group}: "
                f"{', '.join(k.rpartition('.')[2] for k in siblings)}")
    tops = ", ".join(sorted({k.split(".")[0] for k in known}))
    return f"unknown config field {name}; top-level fields and groups: {tops}"


def check_config(config) -> None:
    """Checks every field of an experiment config; nothing is read or compiled.

    Args:
      config: the experiment ConfigDict (derived from configs/base.py or bert_base.py).

    Raises:
      ValueError: one line listing every unknown, missing or bad field, each with
        its dotted name and what is allowed.
    """
    kind = _validate.one_of("task", _kind(config), TASKS)
    known = known_fields(kind)
    leaves = dict(flatten(config))
    problems = [unknown_field_message(name, known) for name in leaves if name not in known]
    for name, check in known.items():
        if name not in leaves:
            problems.append(f"config field {name} is missing (experiment configs derive "
                            "from configs/base.py or configs/bert_base.py)")
            continue
        try:
            check(name, leaves[name], config)
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise ValueError("; ".join(problems))
