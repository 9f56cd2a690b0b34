"""Post-prune BatchNorm recalibration: the averaged per-batch statistics, exactly."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wormjax


class _Net(nn.Module):
    momentum: float = 0.9

    @nn.compact
    def __call__(self, x, train: bool):
        h = nn.Dense(4, use_bias=False, name="proj")(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                         name="norm")(h)
        return nn.Dense(2)(nn.relu(h))


def _setup(momentum):
    net = _Net(momentum)
    x = jnp.ones((8, 3))
    variables = net.init(jax.random.PRNGKey(0), x, train=False)
    calls = []

    @jax.jit
    def stats_fn(params, batch_stats, batch):
        calls.append(1)
        _, upd = net.apply({"params": params, "batch_stats": batch_stats}, batch,
                           train=True, mutable=["batch_stats"])
        return upd["batch_stats"]

    rng = np.random.default_rng(1)
    batches = [jnp.asarray(rng.normal(size=(8, 3)) * (i + 1), jnp.float32)
               for i in range(3)]
    return variables, stats_fn, batches, calls


@pytest.mark.parametrize("momentum", [0.9, 0.99])
def test_recalibrated_stats_are_the_mean_of_batch_stats(momentum):
    variables, stats_fn, batches, calls = _setup(momentum)
    out = wormjax.recalibrate_batch_stats(stats_fn, variables["params"],
                                          variables["batch_stats"], iter(batches), 3)
    kernel = np.asarray(variables["params"]["proj"]["kernel"])
    acts = [np.asarray(b) @ kernel for b in batches]
    # flax BatchNorm's batch variance is the biased one: E[h^2] - E[h]^2.
    mean = np.mean([a.mean(0) for a in acts], axis=0)
    var = np.mean([(a ** 2).mean(0) - a.mean(0) ** 2 for a in acts], axis=0)
    np.testing.assert_allclose(out["norm"]["mean"], mean, rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(out["norm"]["var"], var, rtol=2e-4, atol=1e-5)
    assert len(calls) == 1  # one compilation for the zeros and the ones passes
    # Order-free: the same batches reversed give the same statistics.
    rev = wormjax.recalibrate_batch_stats(stats_fn, variables["params"],
                                          variables["batch_stats"], batches[::-1], 3)
    np.testing.assert_allclose(rev["norm"]["var"], out["norm"]["var"], rtol=1e-5)


def test_only_the_first_batches_are_used_and_bad_counts_rejected():
    variables, stats_fn, batches, _ = _setup(0.9)
    two = wormjax.recalibrate_batch_stats(stats_fn, variables["params"],
                                          variables["batch_stats"], batches, 2)
    ref = wormjax.recalibrate_batch_stats(stats_fn, variables["params"],
                                          variables["batch_stats"], batches[:2], 2)
    np.testing.assert_array_equal(two["norm"]["mean"], ref["norm"]["mean"])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_batches"):
            wormjax.recalibrate_batch_stats(stats_fn, variables["params"],
                                            variables["batch_stats"], batches, bad)
    with pytest.raises(ValueError, match="asked for 5 batches; the data gave 3"):
        wormjax.recalibrate_batch_stats(stats_fn, variables["params"],
                                        variables["batch_stats"], batches, 5)


def test_frozen_statistics_refused():
    variables, stats_fn, batches, _ = _setup(1.0)
    with pytest.raises(ValueError, match="momentum 1"):
        wormjax.recalibrate_batch_stats(stats_fn, variables["params"],
                                        variables["batch_stats"], batches, 1)
