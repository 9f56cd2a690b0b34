"""Tests for the Flax BERT encoder: config validation, shapes, masks, naming, dropout."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from wormjax.models.bert import (QUERY_KEY_KERNEL_REGEX, VALUE_KERNEL_REGEX, BertConfig,
                                 BertForSequenceClassification, BertModel)

TINY = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=24, max_position_embeddings=12)


def _ids(batch=2, length=7, seed=0):
    return jax.random.randint(jax.random.key(seed), (batch, length), 1, TINY.vocab_size)


@pytest.fixture(scope="module")
def classifier():
    model = BertForSequenceClassification(TINY, num_labels=3)
    return model, model.init(jax.random.key(0), _ids())


def test_config_from_hf_dict_and_json(tmp_path):
    hf = {"model_type": "bert", "hidden_size": 16, "num_attention_heads": 2,
          "num_hidden_layers": 1, "intermediate_size": 8, "vocab_size": 10,
          "hidden_act": "gelu_new", "architectures": ["BertModel"], "use_cache": True}
    cfg = BertConfig.from_hf_config(hf)
    assert (cfg.hidden_size, cfg.head_dim, cfg.hidden_act) == (16, 8, "gelu_new")
    (tmp_path / "config.json").write_text(json.dumps(hf))
    assert BertConfig.from_json(str(tmp_path / "config.json")) == cfg


@pytest.mark.parametrize("kwargs, match", [
    ({"hidden_size": 10, "num_attention_heads": 4}, "divisible"),
    ({"hidden_act": "swish"}, "hidden_act"),
    ({"hidden_dropout_prob": 1.0}, "hidden_dropout_prob"),
    ({"num_hidden_layers": 0}, "num_hidden_layers"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BertConfig(**kwargs)


def test_config_rejects_other_architectures():
    with pytest.raises(ValueError, match="model_type"):
        BertConfig.from_hf_config({"model_type": "roberta"})
    with pytest.raises(ValueError, match="position_embedding_type"):
        BertConfig.from_hf_config({"position_embedding_type": "relative_key"})


def test_forward_shapes_and_param_dtype(classifier):
    model, variables = classifier
    logits = model.apply(variables, _ids())
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    hidden, pooled = BertModel(TINY).apply({"params": variables["params"]["bert"]}, _ids())
    assert hidden.shape == (2, 7, 16) and pooled.shape == (2, 16)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))


def test_bfloat16_compute_keeps_float32_params(classifier):
    _, variables = classifier
    model = BertForSequenceClassification(TINY, num_labels=3, dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.float32
               for x in jax.tree.leaves(model.init(jax.random.key(0), _ids())))
    logits = model.apply(variables, _ids())
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))


def test_padding_does_not_change_real_tokens(classifier):
    _, variables = classifier
    encoder = BertModel(TINY)
    bert_vars = {"params": variables["params"]["bert"]}
    short = _ids(1, 5)
    # Random junk in the padded positions must be invisible to the real ones.
    padded = jnp.concatenate([short, _ids(1, 4, seed=3)], axis=1)
    mask = jnp.array([[1] * 5 + [0] * 4])
    h_short, p_short = encoder.apply(bert_vars, short)
    h_pad, p_pad = encoder.apply(bert_vars, padded, mask)
    np.testing.assert_allclose(h_pad[:, :5], h_short, atol=1e-5)
    np.testing.assert_allclose(p_pad, p_short, atol=1e-5)


def test_all_padding_row_is_finite(classifier):
    model, variables = classifier
    logits = model.apply(variables, _ids(), jnp.zeros((2, 7), jnp.int32))
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_token_types_matter(classifier):
    model, variables = classifier
    ids = _ids()
    a = model.apply(variables, ids, None, jnp.zeros_like(ids))
    b = model.apply(variables, ids, None, jnp.ones_like(ids))
    assert not np.allclose(a, b)


def test_too_long_sequence_is_rejected(classifier):
    model, variables = classifier
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.apply(variables, _ids(1, TINY.max_position_embeddings + 1))


def test_path_regexes_select_exactly_query_key_and_value(classifier):
    _, variables = classifier
    paths = list(traverse_util.flatten_dict(variables["params"], sep="/"))
    qk = [p for p in paths if re.search(QUERY_KEY_KERNEL_REGEX, p)]
    v = [p for p in paths if re.search(VALUE_KERNEL_REGEX, p)]
    expected_qk = [f"bert/encoder/layer_{i}/attention/self/{n}/kernel"
                   for i in range(TINY.num_hidden_layers) for n in ("query", "key")]
    assert sorted(qk) == sorted(expected_qk)
    assert sorted(v) == [f"bert/encoder/layer_{i}/attention/self/value/kernel"
                         for i in range(TINY.num_hidden_layers)]
    # No other module may carry these names, or path rules would catch it.
    for path in paths:
        names = path.split("/")[:-1]
        if {"query", "key", "value"} & set(names):
            assert names[-2:-1] == ["self"], path
    assert variables["params"]["bert"]["encoder"]["layer_0"]["attention"]["self"]["query"][
        "kernel"].shape == (16, 16)


def test_dropout_is_deterministic_given_rng(classifier):
    model, variables = classifier
    ids = _ids()
    eval_a = model.apply(variables, ids)
    eval_b = model.apply(variables, ids, rngs={"dropout": jax.random.key(9)})
    np.testing.assert_array_equal(eval_a, eval_b)

    def train(seed):
        return model.apply(variables, ids, deterministic=False,
                           rngs={"dropout": jax.random.key(seed)})

    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
    assert not np.allclose(train(1), eval_a)
