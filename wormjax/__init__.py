"""wormjax: Early-Bird lottery tickets and WORM gradient truncation in JAX."""

from wormjax.compact_io import load_compact
from wormjax.compact_io import save_compact
from wormjax.masks import flatten_mask
from wormjax.masks import global_magnitude_mask
from wormjax.masks import mask_distance
from wormjax.masks import unflatten_mask
from wormjax.multi_search import MultiRatioConfig
from wormjax.multi_search import MultiRatioSearch
from wormjax.multi_search import early_bird_multi
from wormjax.multi_search import multi_all_converged
from wormjax.multi_search import multi_ratio_state
from wormjax.pruning import PRUNING_MODES
from wormjax.pruning import Pruned
from wormjax.pruning import apply_param_mask
from wormjax.pruning import per_tensor_mask
from wormjax.pruning import prune
from wormjax.pruning import ticket_param_mask
from wormjax.recalibrate import recalibrate_batch_stats
from wormjax.search_replay import ReplayTrace
from wormjax.search_replay import replay
from wormjax.search import EarlyBirdConfig
from wormjax.search import EarlyBirdSearch
from wormjax.search import EarlyBirdState
from wormjax.search import SCHEDULES
from wormjax.search import early_bird
from wormjax.search import init as early_bird_init
from wormjax.search import update as early_bird_update
from wormjax.selectors import BatchNormSelector
from wormjax.selectors import ParamSelector
from wormjax.selectors import TicketLayout
from wormjax.selectors import attention_selector
from wormjax.selectors import batchnorm_modules
from wormjax.selectors import batchnorm_selector
from wormjax.selectors import path_selector
from wormjax.sparsity import sparsity_penalty
from wormjax.structured import build_compact
from wormjax.structured import compact_channels
from wormjax.surgery import Compact
from wormjax.surgery import compact
from wormjax.surgery import compact_nnx
from wormjax.surgery import silenced
from wormjax.surgery.accounting import Cost
from wormjax.surgery.accounting import pruned_cost
from wormjax.truncation import WormTruncationState
from wormjax.truncation import set_truncation
from wormjax.truncation import truncation_from_eb_state
from wormjax.truncation import truncation_multipliers
from wormjax.truncation import worm_truncation

__version__ = "0.1.0"
