"""The global magnitude mask and the mask distance (docs/algorithm.md sections 1-2)."""

import math

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

import wormjax
from wormjax import masks


def _np(tree):
    return [np.asarray(x) for x in tree]


def test_distinct_values_prune_floor_np_plus_one():
    tree = [jnp.array([0.1, -0.5, 0.2, 0.9]), jnp.array([0.3, -0.05])]
    # sorted |x| = .05 .1 .2 .3 .5 .9; floor(6 * .5) = 3 -> thr = .3; keep > .3
    keep = _np(wormjax.global_magnitude_mask(tree, 0.5))
    np.testing.assert_array_equal(keep[0], [False, True, False, True])
    np.testing.assert_array_equal(keep[1], [False, False])
    assert sum(int((~k).sum()) for k in keep) == math.floor(6 * 0.5) + 1


def test_ties_at_threshold_are_all_pruned():
    tree = {"a": jnp.array([1.0, 2.0, 2.0, 2.0]), "b": jnp.array([3.0])}
    # sorted 1 2 2 2 3; floor(5 * .4) = 2 -> thr = 2: every 2 goes with the 1.
    keep = wormjax.global_magnitude_mask(tree, 0.4)
    np.testing.assert_array_equal(keep["a"], [False, False, False, False])
    np.testing.assert_array_equal(keep["b"], [True])


def test_all_equal_prunes_everything():
    keep = wormjax.global_magnitude_mask([jnp.ones(4)], 0.25)
    assert not np.asarray(keep[0]).any()


def test_threshold_is_global_across_leaves_of_different_sizes():
    small = jnp.array([0.01, 0.02])  # a whole layer of small scales
    big = jnp.arange(1.0, 9.0).reshape(2, 4)
    keep = wormjax.global_magnitude_mask({"small": small, "big": big}, 0.5)
    # 10 entries, floor(5) -> 5th smallest (0-based) = 4.0 -> keep > 4
    assert not np.asarray(keep["small"]).any()
    np.testing.assert_array_equal(
        keep["big"], [[False, False, False, False], [True, True, True, True]])
    assert keep["big"].shape == (2, 4) and keep["big"].dtype == jnp.bool_


def test_magnitude_uses_absolute_value():
    keep = wormjax.global_magnitude_mask([jnp.array([-4.0, 1.0, -2.0, 3.0])], 0.25)
    np.testing.assert_array_equal(keep[0], [True, False, False, True])


@pytest.mark.parametrize("p, expected_kept", [(0.01, 9), (0.99, 0), (0.1, 8),
                                              (0.9, 0)])
def test_prune_ratio_near_zero_and_one(p, expected_kept):
    tree = [jnp.arange(1.0, 11.0)]  # 10 distinct entries
    keep = np.asarray(wormjax.global_magnitude_mask(tree, p)[0])
    assert keep.sum() == expected_kept
    assert keep.sum() == 10 - (math.floor(10 * p) + 1)


def test_bf16_leaves_keep_their_order():
    tree = [jnp.array([0.5, 0.25, 2.0, 1.0], jnp.bfloat16)]
    np.testing.assert_array_equal(
        wormjax.global_magnitude_mask(tree, 0.5)[0], [False, False, True, False])


def test_nan_entries_are_never_kept_and_push_the_threshold_up():
    # sorted |x| = .5 1 3 4 inf nan; floor(6 * .5) = 3 -> thr = 4; keep > 4
    keep = masks.flat_magnitude_mask(jnp.array([1.0, jnp.nan, 3.0, 4.0, jnp.inf, 0.5]),
                                     0.5)
    np.testing.assert_array_equal(keep, [False, False, False, False, True, False])
    # enough NaNs that the threshold is NaN: nothing is kept
    many = jnp.array([1.0, jnp.nan, jnp.nan, jnp.nan, jnp.inf, 0.5])
    assert not bool(jnp.any(masks.flat_magnitude_mask(many, 0.5)))


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5, float("nan"), "half"])
def test_bad_prune_ratio_is_rejected(p):
    with pytest.raises(ValueError, match="prune_ratio"):
        wormjax.global_magnitude_mask([jnp.ones(4)], p)


def test_empty_tree_is_rejected():
    with pytest.raises(ValueError, match="no leaves"):
        wormjax.global_magnitude_mask({}, 0.5)


def test_distance_hand_computed():
    a = {"x": jnp.array([True, False, True]), "y": jnp.array([[True], [True]])}
    b = {"x": jnp.array([True, True, False]), "y": jnp.array([[True], [False]])}
    assert float(wormjax.mask_distance(a, b)) == pytest.approx(3 / 5)


def test_distance_of_different_sizes_is_rejected():
    with pytest.raises(ValueError, match="differ in size"):
        wormjax.mask_distance([jnp.ones(3, bool)], [jnp.ones(4, bool)])


def test_flatten_unflatten_round_trip():
    like = {"a": jnp.zeros((2, 3)), "b": jnp.zeros(4)}
    flat = jnp.arange(10) % 3 == 0
    tree = masks.unflatten_mask(flat, like)
    np.testing.assert_array_equal(masks.flatten_mask(tree), flat)
    with pytest.raises(ValueError, match="11 entries"):
        masks.unflatten_mask(jnp.ones(11, bool), like)


# XLA flushes subnormals to zero, so they are left out.
_vectors = hnp.arrays(np.float32, st.integers(2, 64),
                      elements=st.floats(-100, 100, width=32,
                                          allow_subnormal=False))


@hypothesis.settings(deadline=None, max_examples=40)
@hypothesis.given(values=_vectors, p=st.floats(0.01, 0.99))
def test_property_pruned_fraction(values, p):
    keep = np.asarray(wormjax.global_magnitude_mask([jnp.asarray(values)], p)[0])
    n = values.size
    pruned = n - keep.sum()
    assert pruned >= math.floor(n * p) + 1
    # Exactly floor(Np)+1 unless other entries tie with the threshold.
    mags = np.sort(np.abs(values))
    thr = mags[math.floor(n * p)]
    assert pruned == int((np.abs(values) <= thr).sum())


_mask_pairs = st.integers(1, 64).flatmap(
    lambda n: st.tuples(hnp.arrays(np.bool_, n), hnp.arrays(np.bool_, n)))


@hypothesis.settings(deadline=None, max_examples=40)
@hypothesis.given(pair=_mask_pairs)
def test_property_distance_metric(pair):
    a, b = pair
    d_ab = float(wormjax.mask_distance([jnp.asarray(a)], [jnp.asarray(b)]))
    d_ba = float(wormjax.mask_distance([jnp.asarray(b)], [jnp.asarray(a)]))
    assert d_ab == d_ba
    assert 0.0 <= d_ab <= 1.0
    assert (d_ab == 0.0) == bool(np.array_equal(a, b))
    assert d_ab == pytest.approx(np.mean(a != b))


@hypothesis.settings(deadline=None, max_examples=30)
@hypothesis.given(values=_vectors, data=st.data())
def test_property_kth_smallest_equals_sorting(values, data):
    mags = jnp.abs(jnp.asarray(values))
    k = data.draw(st.integers(0, values.size - 1))
    assert float(masks.kth_smallest(mags, k)) == float(jnp.sort(mags)[k])


def test_kth_smallest_with_ties_zeros_and_large_values():
    mags = jnp.array([0.0, 0.0, 3e38, 1e-30, 2.0, 2.0, 2.0, 0.5], jnp.float32)
    expected = np.sort(np.asarray(mags))
    for k in range(8):
        assert float(masks.kth_smallest(mags, k)) == expected[k]
