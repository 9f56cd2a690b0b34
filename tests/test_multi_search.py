"""Several prune ratios searched over one training (the Early-Bird code's p = 0.3/0.5/0.7)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wormjax
from wormjax import multi_search

RATIOS = (0.3, 0.5, 0.7)


def _settling_trajectory(num_entries=40, epochs=12, seed=0):
    """Representative magnitudes that start noisy and settle epoch by epoch."""
    rng = np.random.default_rng(seed)
    target = rng.uniform(0.1, 1.0, num_entries)
    out = []
    for epoch in range(epochs):
        noise = rng.normal(0.0, 0.6 / (1 + epoch) ** 2, num_entries)
        out.append([jnp.asarray(target + noise, jnp.float32)])
    return out


def _alone(config, trajectory):
    """One single-ratio search, stopped at its ticket as the pipeline stops it."""
    search = wormjax.early_bird(config)
    state = search.init(trajectory[0][0].shape[0])
    for rep in trajectory:
        state = search.update(state, rep)
        if bool(state.converged):
            break
    return state


def test_each_ratio_equals_its_search_alone():
    trajectory = _settling_trajectory()
    shared = wormjax.EarlyBirdConfig(schedule="none", window=3, stop_distance=0.05)
    search = wormjax.early_bird_multi(shared, prune_ratios=RATIOS)
    states = search.init(40)
    for rep in trajectory:
        states = search.update(states, rep)
    ticket_epochs = []
    for i in range(len(RATIOS)):
        alone = _alone(search.config.ratio_config(i), trajectory)
        mine = wormjax.multi_ratio_state(states, i)
        for name, a, b in zip(alone._fields, alone, mine):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
        ticket_epochs.append(int(mine.ticket_epoch))
    # The trajectory settles, so every detector stops; the test would not
    # exercise freezing if none did.
    assert all(e >= 2 for e in ticket_epochs), ticket_epochs
    assert bool(wormjax.multi_all_converged(states))


def test_stopped_detector_is_frozen_while_others_go_on():
    shared = wormjax.EarlyBirdConfig(schedule="none", window=2, stop_distance=0.1)
    search = wormjax.early_bird_multi(shared, prune_ratios=(0.25, 0.5))
    # Entries 0..7 ascending: the same ordering twice stops both at epoch 1;
    # then entry order changes so a new push would change the masks.
    steady = [jnp.arange(1.0, 9.0)]
    states = search.update(search.update(search.init(8), steady), steady)
    assert np.asarray(states.converged).tolist() == [True, True]
    shuffled = [jnp.asarray([8.0, 7, 6, 5, 4, 3, 2, 1])]
    after = search.update(states, shuffled)
    for a, b in zip(states, after):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_update_compiles_once_for_all_ratios():
    traces = []
    shared = wormjax.EarlyBirdConfig(schedule="none", window=3)
    multi = multi_search.MultiRatioConfig(shared, RATIOS)

    @jax.jit
    def update(states, rep):
        traces.append(1)
        return multi_search.update(states, rep, multi)

    states = multi_search.init(40, multi)
    for rep in _settling_trajectory(epochs=4):
        states = update(states, rep)
    assert len(traces) == 1


def test_truncation_follows_primary_and_stops_with_it():
    shared = wormjax.EarlyBirdConfig(schedule="always", window=2, stop_distance=0.1,
                                     truncation_ratio=0.01)
    search = wormjax.early_bird_multi(shared, prune_ratios=(0.25, 0.5),
                                      primary_ratio=0.5)
    rep = [jnp.arange(1.0, 9.0)]
    states = search.update(search.init(8), rep)
    trunc = search.truncation(states)
    assert bool(trunc.active) and float(trunc.ratio) == pytest.approx(0.01)
    # The primary p = 0.5 of 8: thr = sorted[4], entries <= thr pruned (five).
    assert np.asarray(trunc.keep).tolist() == [False] * 5 + [True] * 3
    states = search.update(states, rep)  # same mask again: both stop
    assert not bool(search.truncation(states).active)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prune_ratios=()), "at least one"),
    (dict(prune_ratios=(0.5, 0.5)), "distinct"),
    (dict(prune_ratios=(0.3, 1.2)), "prune_ratios entry"),
    (dict(prune_ratios=(0.3, 0.5)), "primary_ratio"),
    (dict(prune_ratios=(0.3, 0.5), primary_ratio=0.7), "not one of"),
])
def test_bad_configs_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        wormjax.early_bird_multi(wormjax.EarlyBirdConfig(schedule="worm"), **kwargs)


def test_one_ratio_or_no_truncation_needs_no_primary():
    one = wormjax.early_bird_multi(wormjax.EarlyBirdConfig(schedule="worm"),
                                   prune_ratios=(0.3,))
    assert one.config.primary_ratio == 0.3
    eb = wormjax.early_bird_multi(wormjax.EarlyBirdConfig(schedule="none"),
                                  prune_ratios=RATIOS)
    assert eb.config.primary_index == 0
