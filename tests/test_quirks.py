"""The authors' Q/K mask bug: our `counted` search equals what their code computed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wormjax
from wormjax import quirks
from wormjax import search as search_lib


def _params(num_layers=3, width=4, value=False):
    rng = np.random.default_rng(0)
    layers = {}
    for i in range(num_layers):
        names = ("query", "key", "value") if value else ("query", "key")
        layers[f"layer_{i}"] = {"attention": {"self": {
            n: {"kernel": jnp.asarray(rng.normal(size=(width, width)), jnp.float32),
                "bias": jnp.zeros((width,), jnp.float32)} for n in names}}}
    return {"encoder": layers}


def _layout(**kwargs):
    return wormjax.attention_selector(include_value=kwargs.pop("include_value", False)
                                      )(_params(**kwargs))


def test_counted_marks_exactly_the_key_kernels():
    layout = _layout()
    counted = quirks.authors_qk_counted(layout)
    assert counted.sum() == layout.num_entries // 2
    for entry in layout.entries:
        part = counted[entry.offset:entry.offset + entry.size]
        assert part.all() if "/key/" in entry.path else not part.any()


def test_literal_assembly_first_half_keys_second_half_zero():
    layout = _layout()
    mask = np.random.default_rng(1).random(layout.num_entries) < 0.5
    flat = quirks.authors_flat_mask(layout, mask)
    half = layout.num_entries // 2
    assert not flat[half:].any()
    keys = [e for e in layout.entries if "/key/" in e.path]
    np.testing.assert_array_equal(
        flat[:half], np.concatenate([mask[e.offset:e.offset + e.size] for e in keys]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_with_counted_equals_the_authors_distances_and_stop(seed):
    layout = _layout()
    n = layout.num_entries
    counted = quirks.authors_qk_counted(layout)
    cfg = wormjax.EarlyBirdConfig(prune_ratio=0.5, window=3, stop_distance=0.1,
                                  trigger_margin=0.05)
    rng = np.random.default_rng(seed)
    base = rng.random(n) < 0.5
    state = search_lib.init(n, cfg)
    history, expected = [], False
    for epoch in range(4):
        flips = rng.random(n) < (0.2 / (epoch + 1))  # settling masks
        mask = base ^ flips
        history.append(quirks.authors_flat_mask(layout, mask))
        state = search_lib.update_with_mask(state, jnp.asarray(mask), cfg,
                                            counted=jnp.asarray(counted))
        if epoch >= 2:
            # What their code computed: Hamming distance / N of the buggy masks.
            theirs = [np.mean(history[-1] != older) for older in history[-3:-1]]
            np.testing.assert_allclose(np.asarray(state.dists), theirs, rtol=0, atol=1e-7)
            expected = expected or max(theirs) <= 0.1  # stays stopped
            assert bool(state.converged) == expected
    # The true mask is still the ticket: nothing else is touched.
    np.testing.assert_array_equal(np.asarray(state.newest_mask), mask)


def test_jitted_update_takes_counted_without_retracing():
    layout = _layout()
    search = wormjax.early_bird(wormjax.EarlyBirdConfig(window=3))
    params = _params()
    eb = search.init(layout.num_entries)
    a = jnp.asarray(quirks.authors_qk_counted(layout))
    eb1 = search.update(eb, layout.representative(params), a)
    eb2 = search.update(eb1, layout.representative(params), ~a)
    assert search.update._cache_size() == 1
    plain = search.update(eb, layout.representative(params))
    np.testing.assert_array_equal(np.asarray(plain.newest_mask),
                                  np.asarray(eb1.newest_mask))
    assert eb2.num_pushed == 2


def test_value_kernels_in_the_layout_are_refused_with_the_reason():
    layout = _layout(include_value=True, value=True)
    with pytest.raises(ValueError, match="query and key kernels only"):
        quirks.authors_qk_counted(layout)


def test_default_search_is_unchanged_when_counted_is_all_true():
    layout = _layout()
    n = layout.num_entries
    cfg = wormjax.EarlyBirdConfig(window=3)
    rng = np.random.default_rng(3)
    s1 = s2 = search_lib.init(n, cfg)
    for _ in range(3):
        m = jnp.asarray(rng.random(n) < 0.5)
        s1 = search_lib.update_with_mask(s1, m, cfg)
        s2 = search_lib.update_with_mask(s2, m, cfg, counted=jnp.ones((n,), bool))
    for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_authors_recipe_config_states_their_settings():
    from configs import bert_base
    c = bert_base.get_config("rte", "worm", recipe="authors")
    assert (c.optim.learning_rate, c.optim.batch_size, c.optim.weight_decay) == (5e-5, 8, 0.0)
    assert c.optim.reset_each_epoch and c.search.authors_qk_mask_bug
    assert c.optim.warmup_fraction == 0.0 and c.optim.warmup_steps == 0
    ours = bert_base.get_config("rte", "worm")
    assert not ours.optim.reset_each_epoch and not ours.search.authors_qk_mask_bug
    with pytest.raises(ValueError, match="recipe must be 'ours' or 'authors', got 'theirs'"):
        bert_base.get_config("rte", "worm", recipe="theirs")
