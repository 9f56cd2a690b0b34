"""Structured pruning of any Flax CNN: channel graph, compact network, honest costs."""

from wormjax.surgery.nnx_compact import compact_nnx
from wormjax.surgery.rebuild import Compact
from wormjax.surgery.rebuild import channel_plan
from wormjax.surgery.rebuild import compact
from wormjax.surgery.rebuild import eval_kwargs
from wormjax.surgery.rebuild import from_plan
from wormjax.surgery.rebuild import register_narrower
from wormjax.surgery.rebuild import silenced
from wormjax.surgery.graph import UnsupportedOpError
from wormjax.surgery.plan import Plan
