"""Representative parameters are chosen once, by path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wormjax


def _cnn_params():
    # Insertion, sorted and natural order all differ here on purpose.
    return {
        "conv0": {"kernel": jnp.ones((3, 3, 3, 2))},
        "bn0": {"scale": jnp.ones(2), "bias": jnp.zeros(2)},
        "block10": {"bn": {"scale": jnp.ones(3), "bias": jnp.zeros(3)}},
        "block2": {"BatchNorm_0": {"scale": jnp.ones(5), "bias": jnp.zeros(5)}},
        "ln": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
        "head": {"kernel": jnp.ones((5, 3))},
    }


def test_batchnorm_selector_in_natural_path_order_with_bias_companions():
    layout = wormjax.batchnorm_selector()(_cnn_params())
    assert layout.paths == ("block2/BatchNorm_0/scale", "block10/bn/scale",
                            "bn0/scale")
    assert [e.offset for e in layout.entries] == [0, 5, 8]
    assert layout.num_entries == 10
    assert layout.entries[1].companions == ("block10/bn/bias",)


def test_layout_does_not_depend_on_dict_order_or_jit():
    params = _cnn_params()
    reordered = dict(reversed(list(params.items())))
    through_jit = jax.jit(lambda p: p)(params)
    layouts = {wormjax.batchnorm_selector()(p) for p in
               (params, reordered, through_jit)}
    assert len(layouts) == 1


def test_representative_is_a_list_in_layout_order():
    params = _cnn_params()
    params["block2"]["BatchNorm_0"]["scale"] = jnp.arange(5.0)
    rep = wormjax.batchnorm_selector()(params).representative(params)
    assert [r.shape for r in rep] == [(5,), (3,), (2,)]
    np.testing.assert_array_equal(rep[0], jnp.arange(5.0))


def test_layout_from_shape_structs_matches_arrays():
    params = _cnn_params()
    shapes = jax.eval_shape(lambda: params)
    assert wormjax.batchnorm_selector()(shapes) == wormjax.batchnorm_selector()(params)


def test_attention_selector_query_key_and_optional_value():
    params = {"layer_0": {"attention": {
        "query": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)},
        "key": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)},
        "value": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)},
    }}}
    qk = wormjax.attention_selector()(params)
    assert qk.paths == ("layer_0/attention/key/kernel",
                        "layer_0/attention/query/kernel")
    assert qk.num_entries == 32 and all(not e.companions for e in qk.entries)
    qkv = wormjax.attention_selector(include_value=True)(params)
    assert qkv.num_entries == 48


def test_split_round_trip_and_bad_length():
    layout = wormjax.batchnorm_selector()(_cnn_params())
    flat = jnp.arange(10) % 2 == 0
    parts = layout.split(flat)
    np.testing.assert_array_equal(parts["block10/bn/scale"], [False, True, False])
    with pytest.raises(ValueError, match=r"\(10,\)"):
        layout.split(jnp.ones(9, bool))


def test_representative_of_another_model_is_rejected():
    layout = wormjax.batchnorm_selector()(_cnn_params())
    with pytest.raises(ValueError, match="different model"):
        layout.representative({"bn0": {"scale": jnp.ones(2)}})


def test_invalid_pattern_is_rejected():
    with pytest.raises(ValueError, match="invalid selector pattern"):
        wormjax.path_selector("(unclosed")
