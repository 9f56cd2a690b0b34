"""wormjax.costs: parameter counts, XLA FLOPs and analytic MACs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wormjax import costs
from wormjax import models
from wormjax import structured


def test_count_params_counts_the_params_collection_only():
    variables = {"params": {"w": np.zeros((3, 4)), "b": np.zeros(4)},
                 "batch_stats": {"mean": np.zeros(100)}}
    assert costs.count_params(variables) == 16
    assert costs.count_params(variables["params"]) == 16
    assert costs.count_params({"w": jax.ShapeDtypeStruct((2, 5), jnp.float32)}) == 10


def test_xla_flops_of_a_matmul():
    a = jax.ShapeDtypeStruct((8, 16), jnp.float32)
    b = jax.ShapeDtypeStruct((16, 4), jnp.float32)
    flops = costs.xla_flops(jnp.matmul, a, b)
    if np.isnan(flops):
        pytest.skip("this backend reports no cost analysis")
    assert flops == pytest.approx(2 * 8 * 16 * 4, rel=0.05)
    # An already jitted function lowers through its own jit; per example divides by B.
    assert costs.xla_flops(jax.jit(jnp.matmul), a, b) == flops
    assert costs.flops_per_example(jnp.matmul, a, b) == flops / 16  # b leads with 16


def test_cnn_costs_agree_with_structured():
    model = models.create_cnn("cifar_vgg11", 10, 0.25)
    shape = (2, 16, 16, 3)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False))
    assert costs.count_params(variables) == structured.count_params(variables)
    assert costs.conv_dense_macs(model, shape) == structured.conv_dense_macs(model, shape)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    flops = costs.flops_per_example(lambda v, x: model.apply(v, x, train=False),
                                    variables, x)
    np.testing.assert_equal(flops, structured.forward_flops(model, variables, shape))
