"""BERT tokenisation from a checkpoint's own files, and length-bucketed text batches.

Each example is padded to the smallest bucket length that fits it, and every batch of a
bucket has the same shape [batch_size, bucket_len], so a jitted step compiles at most
once per bucket. Batch order is a pure function of (seed, epoch).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Sequence

import numpy as np
import tokenizers
from tokenizers import normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from wormjax.data import images
from wormjax.models import weight_files

_CLS, _SEP, _PAD, _UNK = "[CLS]", "[SEP]", "[PAD]", "[UNK]"
# The subsets of train_limit / eval_limit do not depend on the run's seed, so every
# seed of an experiment trains and evaluates on the same examples. The training
# subset is class-balanced; an evaluation subset is a plain random sample, so
# that its accuracy estimates the whole split's.
_SUBSET_SEED = 20240617


def _vocab_is_cased(vocab_path: str) -> bool:
    with open(vocab_path, encoding="utf-8") as f:
        tokens = [line.rstrip("\n") for line in f]
    return any(t != t.lower() for t in tokens if not (t.startswith("[") and t.endswith("]")))


def checkpoint_lowercase(checkpoint_dir: str) -> bool:
    """Says whether a checkpoint's tokenizer lowercases its input.

    Args:
      checkpoint_dir: Hugging Face checkpoint folder.
    Returns:
      tokenizer_config.json's do_lower_case if given, else config.json's, else True
      unless vocab.txt holds upper-case tokens (a cased vocabulary).
    """
    for name in ("tokenizer_config.json", "config.json"):
        path = os.path.join(checkpoint_dir, name)
        if os.path.isfile(path):
            value = weight_files.read_json(path, f"a Hugging Face {name}").get(
                "do_lower_case")
            if value is not None:
                return bool(value)
    vocab = os.path.join(checkpoint_dir, "vocab.txt")
    return not (os.path.isfile(vocab) and _vocab_is_cased(vocab))


def load_tokenizer(checkpoint_dir: str, *, lowercase: bool | None = None) -> tokenizers.Tokenizer:
    """Loads a checkpoint's BERT tokenizer with its padding and truncation switched off.

    Args:
      checkpoint_dir: folder with tokenizer.json, or vocab.txt for a WordPiece tokenizer.
      lowercase: None uses tokenizer.json as is (else vocab.txt with
        `checkpoint_lowercase`); a bool builds from vocab.txt with that casing.
    Returns:
      A `tokenizers.Tokenizer`; `encode_texts` adds [CLS]/[SEP] and truncates itself.
    """
    path = os.path.join(checkpoint_dir, "tokenizer.json")
    if os.path.isfile(path) and lowercase is None:
        try:
            tok = tokenizers.Tokenizer.from_file(path)
        except Exception as err:  # noqa: BLE001 - tokenizers raises bare Exception
            raise ValueError(f"{path}: not a readable tokenizer.json ({err}); expected a "
                             "Hugging Face tokenizers file (or remove it to build the "
                             "tokenizer from vocab.txt)") from None
    else:
        vocab = os.path.join(checkpoint_dir, "vocab.txt")
        if not os.path.isfile(vocab):
            raise FileNotFoundError(f"{checkpoint_dir} has neither tokenizer.json nor vocab.txt")
        if lowercase is None:
            lowercase = checkpoint_lowercase(checkpoint_dir)
        strip_accents = None
        config_path = os.path.join(checkpoint_dir, "tokenizer_config.json")
        if os.path.isfile(config_path):
            strip_accents = weight_files.read_json(
                config_path, "a Hugging Face tokenizer_config.json").get("strip_accents")
        tok = tokenizers.Tokenizer(WordPiece.from_file(vocab, unk_token=_UNK))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents,
            lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.BertProcessing(
            (_SEP, tok.token_to_id(_SEP)), (_CLS, tok.token_to_id(_CLS)))
    # tokenizer.json files often fix padding/truncation (MiniLM pads to 128); bucketing
    # needs the raw lengths.
    tok.no_padding()
    tok.no_truncation()
    return tok


@dataclasses.dataclass(frozen=True)
class EncodedText:
    """Tokenised examples, unpadded: one int32 array per example, with [CLS]/[SEP]."""

    input_ids: tuple[np.ndarray, ...]
    token_type_ids: tuple[np.ndarray, ...]
    labels: np.ndarray  # int32 [N]; -1 where unknown
    max_seq_len: int
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        """int32 [N]: each example's token count, special tokens included."""
        return np.array([len(x) for x in self.input_ids], np.int32)


def _truncate_pair(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Longest-first truncation of a pair to `budget` tokens, as `tokenizers` does it.

    The shorter side (the first on ties) keeps at most half the budget, rounded down; the
    longer side takes the rest; Hugging Face tokenizers produce exactly these lengths.
    """
    if len_a + len_b <= budget:
        return len_a, len_b
    if len_a > len_b:
        len_b = min(len_b, budget // 2)
        return min(len_a, budget - len_b), len_b
    len_a = min(len_a, budget // 2)
    return len_a, min(len_b, budget - len_a)


def encode_texts(tokenizer: tokenizers.Tokenizer, text_a: Sequence[str],
                 text_b: Sequence[str] | None = None, labels: Sequence[int] | None = None, *,
                 max_seq_len: int = 128) -> EncodedText:
    """Tokenises single sentences ([CLS] a [SEP]) or pairs ([CLS] a [SEP] b [SEP]).

    Args:
      tokenizer: from `load_tokenizer`.
      text_a: first sentences.
      text_b: second sentences for pair tasks, or None.
      labels: integer labels, or None (stored as -1).
      max_seq_len: total length cap including special tokens; pairs truncate longest-first.
    Returns:
      EncodedText with token_type_ids 0 for [CLS] a [SEP] and 1 for b [SEP].
    """
    if max_seq_len < 3:
        raise ValueError(f"max_seq_len must be >= 3, got {max_seq_len}")
    if text_b is not None and len(text_b) != len(text_a):
        raise ValueError(f"text_a has {len(text_a)} entries but text_b has {len(text_b)}")
    if labels is not None and len(labels) != len(text_a):
        raise ValueError(f"text_a has {len(text_a)} entries but labels has {len(labels)}")
    special = {t: tokenizer.token_to_id(t) for t in (_CLS, _SEP, _PAD)}
    if None in special.values():
        raise ValueError(f"tokenizer lacks special tokens: {special}")
    if tokenizer.padding or tokenizer.truncation:
        tokenizer = tokenizers.Tokenizer.from_str(tokenizer.to_str())
        tokenizer.no_padding()
        tokenizer.no_truncation()
    cls, sep = special[_CLS], special[_SEP]
    ids_a = [e.ids for e in tokenizer.encode_batch(list(text_a), add_special_tokens=False)]
    ids_b = (None if text_b is None else
             [e.ids for e in tokenizer.encode_batch(list(text_b), add_special_tokens=False)])
    input_ids, type_ids = [], []
    for i, a in enumerate(ids_a):
        if ids_b is None:
            ids = [cls] + a[:max_seq_len - 2] + [sep]
            types = [0] * len(ids)
        else:
            b = ids_b[i]
            len_a, len_b = _truncate_pair(len(a), len(b), max_seq_len - 3)
            ids = [cls] + a[:len_a] + [sep] + b[:len_b] + [sep]
            types = [0] * (len_a + 2) + [1] * (len_b + 1)
        input_ids.append(np.asarray(ids, np.int32))
        type_ids.append(np.asarray(types, np.int32))
    label_arr = (np.full(len(ids_a), -1, np.int32) if labels is None
                 else np.asarray(labels, np.int32))
    return EncodedText(tuple(input_ids), tuple(type_ids), label_arr, max_seq_len, special[_PAD])


def bucket_boundaries(max_seq_len: int, *, smallest: int = 32) -> tuple[int, ...]:
    """Doubling bucket lengths from `smallest` up to and including max_seq_len.

    Args:
      max_seq_len: the longest sequence length; always the last bucket.
      smallest: first bucket length.
    Returns:
      e.g. (32, 64, 128) for 128, (32, 64, 100) for 100, (16,) for 16.
    """
    if max_seq_len < 1 or smallest < 1:
        raise ValueError(f"max_seq_len and smallest must be >= 1, got {max_seq_len}, {smallest}")
    bounds, length = [], smallest
    while length < max_seq_len:
        bounds.append(length)
        length *= 2
    return tuple(bounds) + (max_seq_len,)


def text_batch_plan(encoded: EncodedText, batch_size: int, *, seed: int = 0, epoch: int = 0,
                    shuffle: bool = True, boundaries: Sequence[int] | None = None,
                    drop_remainder: bool = True) -> list[tuple[int, np.ndarray]]:
    """Lists an epoch's batches as (bucket_len, example indices; -1 marks padding rows).

    Args:
      encoded: tokenised examples.
      batch_size: rows per batch, the same for every bucket.
      seed: base seed; the order depends only on (seed, epoch).
      epoch: epoch number.
      shuffle: shuffle within buckets and the order of batches; else data order by bucket.
      boundaries: bucket lengths; default `bucket_boundaries(encoded.max_seq_len)`.
      drop_remainder: drop each bucket's partial last batch; else pad it with -1 rows.
    Returns:
      The list of batches in yield order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    bounds = np.asarray(bucket_boundaries(encoded.max_seq_len) if boundaries is None
                        else boundaries)
    if np.any(np.diff(bounds) <= 0) or bounds[0] < 1:
        raise ValueError(f"boundaries must be positive and increasing, got {tuple(bounds)}")
    lengths = encoded.lengths
    if len(lengths) and lengths.max() > bounds[-1]:
        raise ValueError(f"an example has {lengths.max()} tokens > last bucket {bounds[-1]}")
    bucket_of = np.searchsorted(bounds, lengths, side="left")
    rng = np.random.default_rng([seed, epoch])
    plan = []
    for b, bucket_len in enumerate(bounds):
        members = np.flatnonzero(bucket_of == b)
        if shuffle:
            members = rng.permutation(members)
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            if len(chunk) < batch_size:
                if drop_remainder:
                    break
                chunk = np.concatenate([chunk, np.full(batch_size - len(chunk), -1)])
            plan.append((int(bucket_len), chunk.astype(np.int64)))
    if shuffle:
        plan = [plan[i] for i in rng.permutation(len(plan))]
    return plan


def text_batches(encoded: EncodedText, batch_size: int, *, seed: int = 0, epoch: int = 0,
                 shuffle: bool = True, start_step: int = 0,
                 boundaries: Sequence[int] | None = None,
                 drop_remainder: bool | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yields fixed-shape padded batches for one epoch, bucketed by length.

    Args:
      encoded: tokenised examples.
      batch_size: rows per batch.
      seed: base seed; the order depends only on (seed, epoch).
      epoch: epoch number.
      shuffle: shuffled training order, or data order for evaluation.
      start_step: skip this many batches of the epoch (resuming mid-epoch).
      boundaries: bucket lengths; default `bucket_boundaries(encoded.max_seq_len)`.
      drop_remainder: default `shuffle`. True drops partial batches; False pads them and
        adds a float32 `mask` [B] (1 real, 0 padding) so each example counts exactly once.
    Returns:
      Iterator of dicts: input_ids, token_type_ids, attention_mask int32 [B, L_bucket],
      label int32 [B], and mask when drop_remainder is False.
    """
    drop = shuffle if drop_remainder is None else drop_remainder
    plan = text_batch_plan(encoded, batch_size, seed=seed, epoch=epoch, shuffle=shuffle,
                           boundaries=boundaries, drop_remainder=drop)
    if isinstance(start_step, bool) or not 0 <= int(start_step) <= len(plan):
        # A negative step would silently slice from the end of the epoch.
        raise ValueError(f"start_step must be in 0..{len(plan)} (this epoch's batches), "
                         f"got {start_step!r}")
    for bucket_len, rows in plan[start_step:]:
        ids = np.full((batch_size, bucket_len), encoded.pad_id, np.int32)
        types = np.zeros((batch_size, bucket_len), np.int32)
        attention = np.zeros((batch_size, bucket_len), np.int32)
        for r, i in enumerate(rows):
            if i >= 0:
                n = len(encoded.input_ids[i])
                ids[r, :n] = encoded.input_ids[i]
                types[r, :n] = encoded.token_type_ids[i]
                attention[r, :n] = 1
        real = rows >= 0
        batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": attention,
                 "label": np.where(real, encoded.labels[np.maximum(rows, 0)], 0).astype(np.int32)}
        if not drop:
            batch["mask"] = real.astype(np.float32)
        yield batch


def subset_indices(num_examples: int, limit: int, salt: int = 0) -> np.ndarray:
    """A deterministic subset of ``limit`` example indices, in data order.

    Args:
      num_examples: size of the split.
      limit: subset size; 0 (or >= num_examples) keeps every example.
      salt: distinguishes the train and evaluation subsets.

    Returns:
      Sorted int64 indices.
    """
    if not limit or limit >= num_examples:
        return np.arange(num_examples)
    rng = np.random.default_rng([_SUBSET_SEED, salt])
    return np.sort(rng.choice(num_examples, size=limit, replace=False))


def balanced_subset_indices(labels: np.ndarray, limit: int, salt: int = 0
                            ) -> np.ndarray:
    """A deterministic class-balanced subset of ``limit`` example indices, in data order.

    GLUE files are not in random order (SST-2's phrases come grouped), so the
    examples are first shuffled with a fixed, seed-independent generator and
    then taken round-robin over the classes, as ``data.train_limit`` does for
    images: class counts differ by at most one wherever every class has enough.

    Args:
      labels: int ``[N]`` labels of the split.
      limit: subset size; 0 (or >= N) keeps every example.
      salt: distinguishes the train and evaluation subsets.

    Returns:
      Sorted int64 indices.
    """
    labels = np.asarray(labels)
    if not limit or limit >= labels.shape[0]:
        return np.arange(labels.shape[0])
    order = np.random.default_rng([_SUBSET_SEED, salt]).permutation(labels.shape[0])
    picked = images.balanced_subset(labels[order], int(limit))
    return np.sort(order[picked]).astype(np.int64)


def encode_subset(tokenizer: tokenizers.Tokenizer, examples, indices: np.ndarray,
                  max_seq_len: int) -> EncodedText:
    """Tokenises the examples at ``indices`` of a split (``glue.GlueExamples``)."""
    pick = lambda texts: [texts[i] for i in indices]  # noqa: E731
    return encode_texts(
        tokenizer, pick(examples.text_a),
        None if examples.text_b is None else pick(examples.text_b),
        examples.labels[indices], max_seq_len=max_seq_len)
