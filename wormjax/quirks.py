"""The WORM authors' BERT mask bug, as an explicit and testable switch.

The authors' code built the flat Q/K mask of each epoch by writing, per
encoder layer, the query kernel's mask and then the key kernel's mask at the
*same* offset, advancing the offset by one kernel's size per layer
(docs/algorithm.md section 8). So the first half of their flat mask holds the
key masks, the second half is always 0, and every Hamming distance counts the
key entries only while still dividing by the full length: distances reflect K
alone and are halved, and the stop ``d <= s`` acts as ``d_K <= 2s``.

The per-layer masks themselves come from the paper's global magnitude rule
over Q and K together; only their assembly was wrong. The bug therefore
changes *which differences count*, nothing else, and wormjax reproduces it
exactly with the search's ``counted`` argument::

    counted = wormjax.quirks.authors_qk_counted(layout)
    eb = search.update(eb, layout.representative(params), counted)

The ticket, the truncation and the pruning keep using the true mask: the
authors' pruning did not use it (per-layer L1 on every dense layer), and
their WORM-BERT never ran, so nothing they computed depends on it.
``authors_flat_mask`` is the literal statement of what they built, for tests.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["authors_qk_counted", "authors_flat_mask"]

_QUERY = re.compile(r"(^|/)query(/|$)")
_KEY = re.compile(r"(^|/)key(/|$)")


def _layers(layout) -> list[tuple[object, object]]:
    """``(query entry, key entry)`` per encoder layer, in layer order."""
    queries = [e for e in layout.entries if _QUERY.search(e.path)]
    keys = [e for e in layout.entries if _KEY.search(e.path)]
    others = [e.path for e in layout.entries if e not in queries and e not in keys]
    if others or not queries or len(queries) != len(keys):
        raise ValueError(
            "search.authors_qk_mask_bug needs a representative of query and key "
            f"kernels only (attention_selector without value); this layout has "
            f"{len(queries)} query, {len(keys)} key and other leaves {others}")
    pairs = []
    for q in queries:
        k_path = _QUERY.sub(lambda m: f"{m.group(1)}key{m.group(2)}", q.path)
        match = [k for k in keys if k.path == k_path]
        if not match or match[0].size != q.size:
            raise ValueError(
                f"query kernel {q.path!r} has no key kernel {k_path!r} of the same "
                "size; the authors' mask assumed one per layer")
        pairs.append((q, match[0]))
    return pairs


def authors_qk_counted(layout) -> np.ndarray:
    """bool [N]: True on the key-kernel entries, the only ones the bug compared.

    Raises:
      ValueError: if the layout is not query and key kernels, one pair per layer.
    """
    counted = np.zeros((layout.num_entries,), np.bool_)
    for _, key in _layers(layout):
        counted[key.offset:key.offset + key.size] = True
    return counted


def authors_flat_mask(layout, flat_mask) -> np.ndarray:
    """The flat mask exactly as the authors' code assembled it (for tests).

    Per layer, the query mask and then the key mask are written at one offset,
    which then advances by one kernel's size; the rest stays 0.
    """
    flat_mask = np.asarray(flat_mask)
    out = np.zeros((layout.num_entries,), np.bool_)
    offset = 0
    for query, key in _layers(layout):
        for entry in (query, key):  # the key overwrites the query's slice
            out[offset:offset + entry.size] = flat_mask[entry.offset:
                                                        entry.offset + entry.size]
        offset += query.size
    return out
