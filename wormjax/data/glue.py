"""GLUE SST-2, MRPC and RTE: loading from original TSV folders or tfds, and their metrics.

Labels follow GLUE/tfds: SST-2 1 = positive, MRPC 1 = equivalent (the `Quality` column),
RTE 0 = entailment and 1 = not_entailment. Tokenise with `wormjax.data.text.encode_texts`.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Any, Mapping

import numpy as np

GLUE_TASKS = ("sst2", "mrpc", "rte")
GLUE_SPLITS = ("train", "dev")  # "validation" is accepted as an alias of "dev".
GLUE_SOURCES = ("local", "tfds")


@dataclasses.dataclass(frozen=True)
class _TaskSpec:
    folder: str  # folder name in the GLUE distribution
    tfds_name: str
    tsv_columns: tuple[str, str | None, str]  # text_a, text_b, label
    tfds_columns: tuple[str, str | None]  # text_a, text_b
    label_names: tuple[str, ...]
    label_map: Mapping[str, int] | None  # label text -> id; None: the column holds ints


_SPECS = {
    "sst2": _TaskSpec("SST-2", "glue/sst2", ("sentence", None, "label"), ("sentence", None),
                      ("negative", "positive"), None),
    "mrpc": _TaskSpec("MRPC", "glue/mrpc", ("#1 String", "#2 String", "Quality"),
                      ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), None),
    "rte": _TaskSpec("RTE", "glue/rte", ("sentence1", "sentence2", "label"),
                     ("sentence1", "sentence2"), ("entailment", "not_entailment"),
                     {"entailment": 0, "not_entailment": 1}),
}


@dataclasses.dataclass(frozen=True)
class GlueExamples:
    """One split of a GLUE task: raw sentence (pairs) and int32 labels."""

    task: str
    split: str
    text_a: tuple[str, ...]
    text_b: tuple[str, ...] | None  # None for single-sentence tasks (SST-2)
    labels: np.ndarray  # int32 [N]
    label_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.text_a)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def glue_task_name(task: str) -> str:
    """Normalises a task name ("SST-2", "sst2", "MRPC", ...) to one of GLUE_TASKS.

    Args:
      task: task name in any common spelling.
    Returns:
      "sst2", "mrpc" or "rte".
    """
    name = str(task).lower().replace("-", "").replace("_", "")
    if name not in _SPECS:
        raise ValueError(f"unknown GLUE task {task!r}; allowed: {list(GLUE_TASKS)}")
    return name


def num_labels(task: str) -> int:
    """The number of classes of a GLUE task, known without reading any file.

    Args:
      task: task name in any spelling ``glue_task_name`` accepts.
    Returns:
      2 for SST-2, MRPC and RTE.
    """
    return len(_SPECS[glue_task_name(task)].label_names)


def _split_name(split: str) -> str:
    name = {"validation": "dev"}.get(str(split).lower(), str(split).lower())
    if name not in GLUE_SPLITS:
        raise ValueError(f"unknown GLUE split {split!r}; allowed: {list(GLUE_SPLITS)} "
                         "('validation' is an alias of 'dev')")
    return name


def _label_id(spec: _TaskSpec, text: str, where: str) -> int:
    value = text.strip()
    if spec.label_map is not None:
        if value not in spec.label_map:
            raise ValueError(f"{where}: label {text!r} not in {sorted(spec.label_map)}")
        return spec.label_map[value]
    if value not in ("0", "1"):
        raise ValueError(f"{where}: label {text!r} is not 0 or 1")
    return int(value)


def _load_tsv(task: str, spec: _TaskSpec, split: str, data_dir: str | None) -> GlueExamples:
    if data_dir is None:
        raise ValueError("source='local' needs data_dir, the folder holding "
                         f"{spec.folder}/{split}.tsv (set data.dir in the config)")
    path = os.path.join(data_dir, spec.folder, f"{split}.tsv")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GLUE file {path} does not exist; data_dir must hold the "
                                f"original GLUE folders ({spec.folder}/train.tsv, dev.tsv)")
    # utf-8-sig drops MRPC's byte-order mark; QUOTE_NONE because GLUE sentences contain
    # unbalanced double quotes that csv would otherwise join across lines.
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = rows[0], rows[1:]
    try:
        cols = [None if c is None else header.index(c) for c in spec.tsv_columns]
    except ValueError:
        raise ValueError(f"{path}: header {header} lacks one of {spec.tsv_columns}") from None
    text_a, text_b, labels = [], [], []
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise ValueError(f"{path}:{line}: {len(row)} fields, header has {len(header)}")
        text_a.append(row[cols[0]])
        if cols[1] is not None:
            text_b.append(row[cols[1]])
        labels.append(_label_id(spec, row[cols[2]], f"{path}:{line}"))
    return GlueExamples(task, split, tuple(text_a), tuple(text_b) if cols[1] is not None else None,
                        np.asarray(labels, np.int32), spec.label_names)


def _tfds_error(spec: _TaskSpec, split: str, data_dir: str | None, exc: Exception) -> RuntimeError:
    where = data_dir or "the default tfds data_dir (~/tensorflow_datasets)"
    return RuntimeError(
        f"tfds data set {spec.tfds_name} (split {split}) is not prepared in {where} and could "
        f"not be prepared here ({type(exc).__name__}: {exc}). Either read the original GLUE "
        f"TSV files with source='local' and data.dir set to a folder holding "
        f"{spec.folder}/train.tsv and {spec.folder}/dev.tsv, or prepare it with internet "
        f"access: `tfds build {spec.tfds_name} --file_format=array_record` (then copy the "
        "tfds data_dir to this machine).")


def _load_tfds(task: str, spec: _TaskSpec, split: str, data_dir: str | None) -> GlueExamples:
    tfds_split = "validation" if split == "dev" else "train"
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
        import tensorflow_datasets.text.glue  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import
    except ImportError as exc:
        raise _tfds_error(spec, split, data_dir, exc) from exc
    try:
        source = tfds.data_source(spec.tfds_name, split=tfds_split, data_dir=data_dir,
                                  download=False)
    except Exception:  # noqa: BLE001 - not prepared (tfds raises several types here).
        try:
            builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
            # Random access needs array_record; preparing needs internet for the download.
            builder.download_and_prepare(file_format="array_record")
            source = tfds.data_source(spec.tfds_name, split=tfds_split, data_dir=data_dir,
                                      download=False)
        except Exception as exc:  # noqa: BLE001
            raise _tfds_error(spec, split, data_dir, exc) from exc

    def text(value: Any) -> str:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    records = [source[i] for i in range(len(source))]
    col_a, col_b = spec.tfds_columns
    return GlueExamples(
        task, split, tuple(text(r[col_a]) for r in records),
        None if col_b is None else tuple(text(r[col_b]) for r in records),
        np.asarray([int(r["label"]) for r in records], np.int32), spec.label_names)


def load_glue(task: str, split: str = "train", source: str = "local",
              data_dir: str | None = None) -> GlueExamples:
    """Loads one split of GLUE SST-2, MRPC or RTE.

    Args:
      task: "sst2", "mrpc" or "rte" (also "SST-2" etc.).
      split: "train" or "dev" (alias "validation"; GLUE test labels are private).
      source: "local" for original GLUE TSV folders, "tfds" for `tfds.data_source`.
      data_dir: local: folder holding SST-2/, MRPC/, RTE/; tfds: optional tfds data_dir.
    Returns:
      GlueExamples with text_a, text_b (None for SST-2) and int32 labels.
    """
    name = glue_task_name(task)
    split = _split_name(split)
    if source not in GLUE_SOURCES:
        raise ValueError(f"unknown GLUE source {source!r}; allowed: {list(GLUE_SOURCES)}")
    loader = _load_tsv if source == "local" else _load_tfds
    return loader(name, _SPECS[name], split, None if data_dir is None else os.fspath(data_dir))


def _flat(predictions, labels, mask):
    predictions, labels = np.asarray(predictions), np.asarray(labels).reshape(-1)
    if predictions.ndim == 2:  # logits [N, C]
        predictions = predictions.argmax(-1)
    predictions = predictions.reshape(-1)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} differ")
    keep = np.ones(labels.shape, bool) if mask is None else np.asarray(mask).reshape(-1) > 0
    return predictions[keep], labels[keep]


def accuracy(predictions, labels, mask=None) -> float:
    """Fraction of correct predictions among rows with mask > 0.

    Args:
      predictions: class ids [N] or logits [N, C].
      labels: class ids [N].
      mask: optional weights [N]; rows with mask 0 (batch padding) are skipped.
    Returns:
      Accuracy in [0, 1]; 0.0 when no row counts.
    """
    pred, true = _flat(predictions, labels, mask)
    return float(np.mean(pred == true)) if true.size else 0.0


def f1_score(predictions, labels, mask=None, positive: int = 1) -> float:
    """F1 of the positive class, 2TP / (2TP + FP + FN), as GLUE reports for MRPC.

    Args:
      predictions: class ids [N] or logits [N, C].
      labels: class ids [N].
      mask: optional weights [N]; rows with mask 0 are skipped.
      positive: the positive class id.
    Returns:
      F1 in [0, 1]; 0.0 when there are no true or predicted positives.
    """
    pred, true = _flat(predictions, labels, mask)
    tp = int(np.sum((pred == positive) & (true == positive)))
    fp = int(np.sum((pred == positive) & (true != positive)))
    fn = int(np.sum((pred != positive) & (true == positive)))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def glue_metrics(task: str, predictions, labels, mask=None) -> dict[str, float]:
    """The metrics a paper reports for the task: accuracy, plus F1 for MRPC.

    Args:
      task: GLUE task name.
      predictions: class ids [N] or logits [N, C].
      labels: class ids [N].
      mask: optional weights [N].
    Returns:
      {"accuracy": ...} and, for MRPC, "f1".
    """
    out = {"accuracy": accuracy(predictions, labels, mask)}
    if glue_task_name(task) == "mrpc":
        out["f1"] = f1_score(predictions, labels, mask)
    return out
