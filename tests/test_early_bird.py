"""The search window, stop rule, trigger and schedules (docs/algorithm.md 2-3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wormjax
from wormjax import search as eb


def _mask(bits):
    return jnp.asarray([b == "1" for b in bits])


def _run(config, bit_masks):
    state = eb.init(len(bit_masks[0]), config)
    states = []
    for bits in bit_masks:
        state = eb.update_with_mask(state, _mask(bits), config)
        states.append(state)
    return states


def test_distances_are_newest_vs_each_older_and_one_until_full():
    cfg = wormjax.EarlyBirdConfig(window=3, stop_distance=0.1, schedule="none")
    s = _run(cfg, ["0000000000", "1100000000", "1111000000", "1111110000"])
    np.testing.assert_allclose(s[0].dists, [1.0, 1.0])
    np.testing.assert_allclose(s[1].dists, [1.0, 1.0])  # 2 of 3: not full yet
    # full: window = [m0, m1, m2]; newest m2 vs m0 (4 differ), vs m1 (2 differ)
    np.testing.assert_allclose(s[2].dists, [0.4, 0.2])
    # FIFO: m0 left; newest m3 vs m1 (4), vs m2 (2) -- not consecutive pairs
    np.testing.assert_allclose(s[3].dists, [0.4, 0.2])
    assert float(s[3].d_max) == pytest.approx(0.4)
    assert float(s[3].d_avg) == pytest.approx(0.3)
    assert int(s[3].num_pushed) == 4 and int(s[3].epoch) == 4


def test_stop_at_d_max_equal_to_s_and_ticket_epoch():
    # 10 entries, one flip each epoch -> distances of exactly 0.1 = s.
    cfg = wormjax.EarlyBirdConfig(window=2, stop_distance=0.1, schedule="none")
    s = _run(cfg, ["1111100000", "1111100000", "1111100001"])
    assert not bool(s[0].converged)  # window not full: distances are 1.0
    assert bool(s[1].converged) and int(s[1].ticket_epoch) == 1
    # sticky, and the ticket epoch does not move
    assert bool(s[2].converged) and int(s[2].ticket_epoch) == 1


def test_stop_uses_less_or_equal_with_exact_tie():
    cfg = wormjax.EarlyBirdConfig(window=2, stop_distance=0.2, schedule="none")
    s = _run(cfg, ["1111100000", "0111100001"])  # distance 2/10 == s
    assert bool(s[1].converged)
    cfg = wormjax.EarlyBirdConfig(window=2, stop_distance=0.19, schedule="none")
    s = _run(cfg, ["1111100000", "0111100001"])
    assert not bool(s[1].converged) and int(s[1].ticket_epoch) == -1


def test_stop_needs_every_older_mask_within_s():
    cfg = wormjax.EarlyBirdConfig(window=3, stop_distance=0.1, schedule="none")
    s = _run(cfg, ["0000000000", "1111111110", "1111111111"])
    # newest vs m1 = 0.1, vs m0 = 1.0 -> not converged
    assert not bool(s[2].converged)
    assert float(s[2].d_max) == pytest.approx(1.0)


def test_worm_trigger_strictly_below_s_plus_delta_and_stays_on():
    cfg = wormjax.EarlyBirdConfig(window=2, stop_distance=0.1,
                                  trigger_margin=0.1, schedule="worm")
    assert cfg.trigger_threshold == pytest.approx(0.2)
    s = _run(cfg, ["1111100000", "0111100001"])  # d = 0.2 == s + delta
    assert float(s[1].d_avg) == pytest.approx(0.2)
    assert not bool(s[1].active)
    cfg20 = wormjax.EarlyBirdConfig(window=2, stop_distance=0.1,
                                    trigger_margin=0.1, schedule="worm")
    s = _run(cfg20, ["11111111110000000000",
                     "01111111110000000001"])  # d = 0.1: stops, no trigger
    assert bool(s[1].converged) and not bool(s[1].active)  # stop wins
    m = ["11111111110000000000",
         "00111111110000000011",
         "00011111110000000111"]
    s = _run(wormjax.EarlyBirdConfig(window=3, stop_distance=0.1,
                                     trigger_margin=0.1, schedule="worm"), m)
    # window full at update 2: d = [6/20, 2/20], d_avg = 0.2 -> not < 0.2
    assert not bool(s[2].active) and not bool(s[2].converged)
    m2 = m + ["00011111110000000111", "00011111110000000111"]
    s = _run(wormjax.EarlyBirdConfig(window=3, stop_distance=0.05,
                                     trigger_margin=0.1, schedule="worm"), m2)
    # update 3: newest == m2, vs m1 2/20 -> d = [0.1, 0.0], d_avg .05 < .15
    assert bool(s[3].active) and not bool(s[3].converged)
    assert float(s[3].ratio) == pytest.approx(3e-3)
    # update 4: d = [0, 0] -> converged; active stays on
    assert bool(s[4].converged) and bool(s[4].active)
    assert int(s[4].ticket_epoch) == 4


def test_trigger_stays_on_when_distance_rises_again():
    cfg = wormjax.EarlyBirdConfig(window=2, stop_distance=0.05,
                                  trigger_margin=0.1, schedule="worm")
    s = _run(cfg, ["1111100000", "1111100001", "0000011111"])
    assert bool(s[1].active)  # d = 0.1 < 0.15
    assert float(s[2].d_avg) > 0.5 and bool(s[2].active)


SCRIPT = ["1111100000", "1111100000", "1110100001", "1110100001"]


@pytest.mark.parametrize("schedule, actives, ratios", [
    ("none", [False] * 4, [1.0] * 4),
    ("worm", [False, False, True, True], [3e-3] * 4),
    ("always", [True] * 4, [3e-3] * 4),
    ("greedy", [True] * 4, [1.0, 1.0, 0.2, 0.1]),
])
def test_schedules_over_a_scripted_mask_sequence(schedule, actives, ratios):
    cfg = wormjax.EarlyBirdConfig(window=3, stop_distance=0.01,
                                  trigger_margin=0.3, schedule=schedule)
    init = eb.init(10, cfg)
    assert bool(init.active) == (schedule in ("always", "greedy"))
    s = _run(cfg, SCRIPT)
    # full at update 2: m2 vs m0, m1 = [.2, .2]; update 3: m3 vs m1, m2 = [.2, 0]
    assert [bool(x.active) for x in s] == actives
    np.testing.assert_allclose([float(x.ratio) for x in s], ratios, rtol=1e-6)


def test_unconverged_search_keeps_newest_mask():
    cfg = wormjax.EarlyBirdConfig(window=2, stop_distance=0.05, schedule="none")
    s = _run(cfg, ["1100", "0011", "1100"])
    assert not bool(s[-1].converged) and int(s[-1].ticket_epoch) == -1
    np.testing.assert_array_equal(s[-1].newest_mask, _mask("1100"))


def test_update_from_parameters_and_no_retrace():
    search = wormjax.early_bird(window=2, stop_distance=0.1, schedule="worm")
    traces = []
    update = jax.jit(lambda st, rep: (traces.append(1),
                                      eb.update(st, rep, search.config))[1])
    state = search.init(6)
    for scale in (1.0, 2.0, -3.0):
        rep = [scale * jnp.array([0.1, 0.5, 0.2, 0.9]), jnp.array([0.3, 0.05])]
        state = update(state, rep)
        state = state._replace(active=~state.active)  # values change only
    assert len(traces) == 1
    np.testing.assert_array_equal(
        state.newest_mask, [False, True, False, True, False, False])
    with pytest.raises(ValueError, match="initialised for 6"):
        search.update(search.init(6), [jnp.ones(7)])


def test_state_is_a_jittable_pytree_with_fixed_shapes():
    search = wormjax.early_bird(window=4)
    s0 = search.init(8)
    s1 = search.update(s0, [jnp.arange(8.0)])
    shapes0 = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), s0)
    shapes1 = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), s1)
    assert shapes0 == shapes1
    assert s0.masks.shape == (4, 8) and s0.dists.shape == (3,)


@pytest.mark.parametrize("kwargs, name", [
    (dict(prune_ratio=0.0), "prune_ratio"),
    (dict(prune_ratio=1.0), "prune_ratio"),
    (dict(truncation_ratio=-0.1), "truncation_ratio"),
    (dict(truncation_ratio=1.5), "truncation_ratio"),
    (dict(window=1), "window"),
    (dict(window=2.5), "window"),
    (dict(stop_distance=0.0), "stop_distance"),
    (dict(stop_distance=-1.0), "stop_distance"),
    (dict(trigger_margin=-0.01), "trigger_margin"),
    (dict(schedule="sometimes"), "schedule"),
])
def test_bad_config_is_rejected_with_the_value(kwargs, name):
    with pytest.raises(ValueError, match=name) as err:
        wormjax.EarlyBirdConfig(**kwargs)
    assert repr(list(kwargs.values())[0]) in str(err.value)


def test_unknown_schedule_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="'none', 'worm', 'always', 'greedy'"):
        wormjax.early_bird(schedule="eager")


def _differing(num_entries, counts):
    """Older masks (oldest first) that differ from an all-False newest mask in
    ``counts[i]`` entries each, then the newest: a literal window."""
    older = []
    for count in counts:
        m = np.zeros(num_entries, bool)
        m[:count] = True
        older.append(jnp.asarray(m))
    return older + [jnp.zeros(num_entries, bool)]


def _push(config, masks_in_order):
    state = eb.init(masks_in_order[0].shape[0], config)
    for m in masks_in_order:
        state = eb.update_with_mask(state, m, config)
    return state


@pytest.mark.parametrize("num_entries, count", [(60, 6), (4800, 480), (10, 1)])
def test_stop_tie_d_max_equal_to_s_is_decided_exactly(num_entries, count):
    # float32 count * (1/N) is 0.10000000894 for 6/60: above s as a float.
    cfg = wormjax.EarlyBirdConfig(window=5, stop_distance=0.1, trigger_margin=0.05,
                                  schedule="worm")
    s = _push(cfg, _differing(num_entries, [count] * 4))
    assert cfg.max_stop_count(num_entries) == count
    np.testing.assert_array_equal(s.counts, [count] * 4)
    assert bool(s.converged) and int(s.ticket_epoch) == 4
    assert not bool(s.active)  # the stop wins; WORM is not triggered
    assert float(s.d_max) == pytest.approx(0.1)
    # one more differing entry is above s
    s = _push(cfg, _differing(num_entries, [count + 1] + [count] * 3))
    assert not bool(s.converged) and int(s.ticket_epoch) == -1


def test_trigger_tie_d_avg_equal_to_s_plus_delta_is_decided_exactly():
    cfg = wormjax.EarlyBirdConfig(window=5, stop_distance=0.1, trigger_margin=0.05,
                                  schedule="worm")
    # distances [0, 0, 0.04, 0.56]: d_avg is exactly 0.15 = s + delta (strict: no)
    s = _push(cfg, _differing(50, [0, 0, 2, 28]))
    np.testing.assert_allclose(s.dists, [0.0, 0.0, 0.04, 0.56], rtol=1e-6)
    assert cfg.max_trigger_count(50) == 29  # sum < 0.15 * 4 * 50 = 30
    assert not bool(s.active) and not bool(s.converged)
    # one differing entry fewer: d_avg = 29/200 < 0.15 -> triggers
    s = _push(cfg, _differing(50, [0, 0, 2, 27]))
    assert bool(s.active) and not bool(s.converged)
    assert float(s.d_avg) == pytest.approx(29 / 200)


def test_bounds_use_the_decimal_values_not_the_binary_doubles():
    # 0.1 + 0.2 as doubles is 0.30000000000000004; as decimals it is 3/10.
    cfg = wormjax.EarlyBirdConfig(window=2, stop_distance=0.1, trigger_margin=0.2)
    assert cfg.max_trigger_count(10) == 2  # sum < 3
    assert cfg.max_stop_count(10) == 1
    # 0.7 * 10 is 7.000000000000001 in doubles; floor(7/10 * 10) = 7
    assert wormjax.EarlyBirdConfig(stop_distance=0.7).max_stop_count(10) == 7
    # s + delta above 1 is capped at the largest possible sum
    assert wormjax.EarlyBirdConfig(window=3, stop_distance=0.9,
                                   trigger_margin=0.5).max_trigger_count(10) == 20


def test_greedy_ratio_is_d_avg_from_the_counts():
    cfg = wormjax.EarlyBirdConfig(window=5, stop_distance=0.01, schedule="greedy")
    s = _push(cfg, _differing(50, [0, 0, 2, 28]))
    assert float(s.ratio) == pytest.approx(0.15) and float(s.d_avg) == pytest.approx(0.15)


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_non_finite_representative_never_converges_and_is_flagged(bad):
    search = wormjax.early_bird(window=2, stop_distance=0.5, trigger_margin=0.5,
                                schedule="worm")
    state = search.init(4)
    state = search.update(state, [jnp.array([1.0, 2.0, 3.0, 4.0])])
    assert not bool(state.nonfinite)
    poisoned = jnp.array([1.0, 2.0, 3.0, bad])
    state = search.update(state, [poisoned])
    assert bool(state.nonfinite)
    assert not bool(state.converged) and not bool(state.active)
    # sticky: finite magnitudes again do not make it converge
    clean = [jnp.array([1.0, 2.0, 3.0, 4.0])]
    state = search.update(search.update(state, clean), clean)
    assert bool(state.nonfinite) and not bool(state.converged)
    assert int(state.ticket_epoch) == -1
    # the same masks from finite values converge
    fine = search.update(search.update(search.init(4), clean), clean)
    assert bool(fine.converged) and not bool(fine.nonfinite)


def test_all_nan_representatives_are_not_a_ticket():
    # Every magnitude NaN gives a keep-nothing mask that never changes; it must
    # not read as a converged ticket with 0 entries kept.
    search = wormjax.early_bird(window=2, stop_distance=0.1, schedule="none")
    state = search.init(6)
    for _ in range(3):
        state = search.update(state, [jnp.full((6,), jnp.nan)])
    assert int(jnp.sum(state.newest_mask)) == 0 and int(state.counts[0]) == 0
    assert bool(state.nonfinite) and not bool(state.converged)


def test_too_many_entries_for_int32_counts_is_rejected():
    with pytest.raises(ValueError, match="int32"):
        eb.init(2**30, wormjax.EarlyBirdConfig(window=5))
