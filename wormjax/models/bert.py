"""BERT encoder and sequence classifier in flax.linen, laid out like Hugging Face BERT.

Parameter paths mirror the Hugging Face module tree so that checkpoint import is a
rename plus a transpose, e.g. ``bert/encoder/layer_3/attention/self/query/kernel``.
The self-attention projections are the only modules named ``query``, ``key`` and
``value``: WORM's representative parameters are selected by the regexes
``QUERY_KEY_KERNEL_REGEX`` and ``VALUE_KERNEL_REGEX`` on '/'-joined paths.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

QUERY_KEY_KERNEL_REGEX = r"(^|/)(query|key)/kernel$"
VALUE_KERNEL_REGEX = r"(^|/)value/kernel$"

# "gelu" in Hugging Face configs is the exact erf form; the tanh approximation has
# several spellings across transformers versions.
_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Static BERT architecture hyper-parameters (names as in Hugging Face config.json)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    pad_token_id: int = 0
    classifier_dropout: float | None = None  # None: use hidden_dropout_prob, as HF does.

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BertConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"BertConfig.hidden_size={self.hidden_size} must be divisible by "
                f"num_attention_heads={self.num_attention_heads}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"BertConfig.hidden_act={self.hidden_act!r} is not supported; "
                             f"allowed: {sorted(_ACTIVATIONS)}")
        probs = {"hidden_dropout_prob": self.hidden_dropout_prob,
                 "attention_probs_dropout_prob": self.attention_probs_dropout_prob}
        if self.classifier_dropout is not None:
            probs["classifier_dropout"] = self.classifier_dropout
        for name, value in probs.items():
            if not 0.0 <= value < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1), got {value!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"BertConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any]) -> "BertConfig":
        """Builds a config from a Hugging Face ``config.json`` dict, ignoring unrelated keys.

        Args:
          hf: the parsed config.json of a BERT checkpoint.
        Returns:
          The matching BertConfig.
        """
        model_type = hf.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"config model_type={model_type!r} is not supported; allowed: 'bert'")
        position_type = hf.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"position_embedding_type={position_type!r} is not supported; "
                             "allowed: 'absolute'")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in hf.items() if k in fields}
        if "hidden_act" in kwargs and not isinstance(kwargs["hidden_act"], str):
            raise ValueError(f"hidden_act must be a name, got {kwargs['hidden_act']!r}")
        if kwargs.get("pad_token_id") is None:
            kwargs.pop("pad_token_id", None)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str) -> "BertConfig":
        """Reads a Hugging Face ``config.json`` file.

        Args:
          path: path of the JSON file.
        Returns:
          The matching BertConfig.
        """
        with open(path, encoding="utf-8") as f:
            return cls.from_hf_config(json.load(f))


def _dense(config: BertConfig, features: int, name: str, dtype: Any) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name,
                    kernel_init=nn.initializers.normal(config.initializer_range))


class _BertBlock(nn.Module):
    """The two fields of every BERT block: the model config and the compute dtype."""

    config: BertConfig
    dtype: Any = jnp.float32

    def dense(self, features: int, name: str) -> nn.Dense:
        """A Dense with BERT's initialisation, float32 parameters and this dtype."""
        return _dense(self.config, features, name, self.dtype)

    def layer_norm(self) -> nn.LayerNorm:
        """The block's post-LayerNorm (named as in Hugging Face's checkpoints)."""
        return nn.LayerNorm(epsilon=self.config.layer_norm_eps, dtype=self.dtype,
                            name="LayerNorm")


class BertEmbeddings(_BertBlock):
    """Word + position + token-type embeddings, then LayerNorm and dropout."""

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic: bool):
        cfg = self.config
        if input_ids.shape[-1] > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {input_ids.shape[-1]} exceeds "
                             f"max_position_embeddings={cfg.max_position_embeddings}")
        init = nn.initializers.normal(cfg.initializer_range)

        def embed(num, name):
            return nn.Embed(num, cfg.hidden_size, embedding_init=init, dtype=self.dtype,
                            param_dtype=jnp.float32, name=name)

        positions = jnp.arange(input_ids.shape[-1])[None, :]
        x = (embed(cfg.vocab_size, "word_embeddings")(input_ids)
             + embed(cfg.max_position_embeddings, "position_embeddings")(positions)
             + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids))
        x = self.layer_norm()(x)
        return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class BertSelfAttention(_BertBlock):
    """Multi-head scaled dot-product attention with separate query/key/value projections."""

    @nn.compact
    def __call__(self, x_BLD, attention_mask_BL, deterministic: bool):
        cfg = self.config
        batch, length, _ = x_BLD.shape
        heads, head_dim = cfg.num_attention_heads, cfg.head_dim

        def project(name):
            y = self.dense(cfg.hidden_size, name)(x_BLD)
            return y.reshape(batch, length, heads, head_dim)

        q_BLHK, k_BLHK, v_BLHK = project("query"), project("key"), project("value")
        scores_BHLL = jnp.einsum("bqhk,bshk->bhqs", q_BLHK, k_BLHK) / math.sqrt(head_dim)
        # Softmax in float32 keeps bf16 runs stable. A `where` (rather than adding a large
        # negative bias) keeps all-padding rows finite: they become uniform, not NaN.
        scores_BHLL = scores_BHLL.astype(jnp.float32)
        keep_B11L = attention_mask_BL[:, None, None, :].astype(bool)
        scores_BHLL = jnp.where(keep_B11L, scores_BHLL, jnp.finfo(jnp.float32).min)
        probs_BHLL = jax.nn.softmax(scores_BHLL, axis=-1).astype(self.dtype)
        probs_BHLL = nn.Dropout(cfg.attention_probs_dropout_prob)(
            probs_BHLL, deterministic=deterministic)
        out_BLHK = jnp.einsum("bhqs,bshk->bqhk", probs_BHLL, v_BLHK)
        return out_BLHK.reshape(batch, length, cfg.hidden_size)


class BertAddNorm(_BertBlock):
    """Dense, dropout, residual add and post-LayerNorm (HF's BertSelfOutput / BertOutput)."""

    @nn.compact
    def __call__(self, x, residual, deterministic: bool):
        cfg = self.config
        x = self.dense(cfg.hidden_size, "dense")(x)
        x = nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)
        return self.layer_norm()(x + residual)


class BertAttention(_BertBlock):
    """Self-attention followed by its output projection and LayerNorm."""

    @nn.compact
    def __call__(self, x, attention_mask, deterministic: bool):
        y = BertSelfAttention(self.config, self.dtype, name="self")(
            x, attention_mask, deterministic)
        return BertAddNorm(self.config, self.dtype, name="output")(y, x, deterministic)


class BertIntermediate(_BertBlock):
    """Feed-forward expansion: dense to intermediate_size and the configured GELU."""

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        x = self.dense(cfg.intermediate_size, "dense")(x)
        return _ACTIVATIONS[cfg.hidden_act](x)


class BertLayer(_BertBlock):
    """One post-LN transformer layer: attention block, then feed-forward block."""

    @nn.compact
    def __call__(self, x, attention_mask, deterministic: bool):
        cfg = self.config
        x = BertAttention(cfg, self.dtype, name="attention")(x, attention_mask, deterministic)
        h = BertIntermediate(cfg, self.dtype, name="intermediate")(x)
        return BertAddNorm(cfg, self.dtype, name="output")(h, x, deterministic)


class BertEncoder(_BertBlock):
    """Stack of ``num_hidden_layers`` BertLayers named ``layer_0`` ... ``layer_{n-1}``."""

    @nn.compact
    def __call__(self, x, attention_mask, deterministic: bool):
        for i in range(self.config.num_hidden_layers):
            x = BertLayer(self.config, self.dtype, name=f"layer_{i}")(
                x, attention_mask, deterministic)
        return x


class BertPooler(_BertBlock):
    """Dense + tanh on the first ([CLS]) token."""

    @nn.compact
    def __call__(self, x_BLD):
        cls_BD = x_BLD[:, 0]
        return jnp.tanh(self.dense(self.config.hidden_size, "dense")(cls_BD))


class BertModel(_BertBlock):
    """BERT encoder; returns (last hidden state [B, L, D], pooled [CLS] [B, D] or None)."""

    add_pooling_layer: bool = True

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
                 deterministic: bool = True):
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = BertEmbeddings(self.config, self.dtype, name="embeddings")(
            input_ids, token_type_ids, deterministic)
        x = BertEncoder(self.config, self.dtype, name="encoder")(
            x, attention_mask, deterministic)
        if not self.add_pooling_layer:
            return x, None
        pooled = BertPooler(self.config, self.dtype, name="pooler")(x)
        return x, pooled


class BertForSequenceClassification(nn.Module):
    """BERT with dropout + Dense on the pooled [CLS] output; returns float32 logits [B, C]."""

    config: BertConfig
    num_labels: int = 2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
                 deterministic: bool = True):
        cfg = self.config
        _, pooled = BertModel(cfg, self.dtype, name="bert")(
            input_ids, attention_mask, token_type_ids, deterministic=deterministic)
        rate = cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout
        pooled = nn.Dropout(rate)(pooled, deterministic=deterministic)
        logits = _dense(cfg, self.num_labels, "classifier", self.dtype)(pooled)
        return logits.astype(jnp.float32)
