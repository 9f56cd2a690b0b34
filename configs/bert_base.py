"""Shared BERT / GLUE defaults: the paper's section VI (Tables IV-VI).

A pretrained BERT with a sentence-classification head is fine-tuned on one
GLUE task while the Early-Bird search watches the query and key kernels
(s = 0.01, p = 0.5, l = 3; WORM: delta = 0.005, r = 3e-3). The task configs
``bert_<task>_<eb|worm>.py`` call ``get_config(task, schedule)``; any field can
be overridden on the command line, e.g. ``--config.data.max_seq_len=64``.
"""

import ml_collections

from configs import base
from wormjax.models import hf_import


def default_checkpoint() -> str:
    """The offline all-MiniLM-L6-v2 folder when installed, else the paper's BERT id."""
    return hf_import.minilm_checkpoint_dir() or "bert-base-uncased"


def get_config(task: str, schedule: str, recipe: str = "ours"
               ) -> ml_collections.ConfigDict:
    """The config of ``task`` (sst2 | mrpc | rte) with a truncation ``schedule``.

    ``recipe`` "ours" is AdamW with warm-up and linear decay over the whole run;
    "authors" is what the WORM authors' code did (see ``authors_recipe``).
    """
    if recipe not in ("ours", "authors"):
        raise ValueError(f"recipe must be 'ours' or 'authors', got {recipe!r}")
    c = base.get_config()
    c.task = "text"
    c.log_every_steps = 20

    c.model.name = "bert"  # informational: the architecture is the checkpoint's config.json
    # Folder with config.json, model.safetensors (or pytorch_model.bin) and vocab.txt /
    # tokenizer.json, or a Hub id downloaded when the Hub is reachable.
    c.model.checkpoint = default_checkpoint()
    c.model.num_classes = 0  # 0: the GLUE task's label count (2)
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 | float16

    c.data.name = task  # sst2 | mrpc | rte
    c.data.source = "local"  # local (original GLUE TSV folders) | tfds
    c.data.dir = ""  # local: folder holding SST-2/, MRPC/, RTE/; tfds: optional data_dir
    c.data.max_seq_len = 128  # tokens incl. [CLS]/[SEP]; pairs truncate longest-first
    c.data.bucket_min_len = 32  # length buckets 32, 64, ..., max_seq_len: one compile each
    c.data.eval_split = "test"  # test (GLUE dev, as the paper's tables) | train (authors)

    c.optim.name = "adamw"
    c.optim.learning_rate = 2e-5  # BERT fine-tuning peak rate
    c.optim.weight_decay = 0.01
    c.optim.decay_norm_and_bias = True  # decay LayerNorm and biases too, as always so far
    c.optim.warmup_steps = 0  # used when warmup_fraction is 0
    c.optim.warmup_fraction = 0.1  # of all steps (search + retrain max epochs)
    c.optim.grad_clip_norm = 1.0
    c.optim.batch_size = 32
    c.optim.eval_batch_size = 64

    c.search.schedule = schedule
    c.search.window = 3  # l
    c.search.stop_distance = 0.01  # s: lower than CNNs because the model is pretrained
    c.search.trigger_margin = 0.005  # delta: WORM triggers once d_avg < 0.015
    c.search.truncation_ratio = 3e-3  # r
    c.search.include_value = False  # value kernels in the ticket too (paper's Table IV)
    c.search.max_epochs = 10
    # The authors' Q/K mask bug (docs/algorithm.md section 8): only the key
    # kernels' differences count, over the full length. Off: the paper's rule.
    c.search.authors_qk_mask_bug = False

    # The authors' BERT code: per-tensor 50% pruning of every dense kernel and bias,
    # kept as a persistent mask while retraining. "mask" prunes only the ticket's Q/K.
    c.pruning.mode = "reference"

    c.retrain.max_epochs = 3
    c.retrain.target_kind = "relative"
    c.retrain.target = 0.99  # 99% of the pre-prune accuracy
    return authors_recipe(c) if recipe == "authors" else c


def authors_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The WORM authors' BERT fine-tuning (docs/algorithm.md section 8), in place.

    A new HF Trainer per epoch: AdamW lr 5e-5, no weight decay, no warm-up, a
    linear decay to 0 within each epoch, optimizer state reset every epoch;
    batch 8; gradient clipping 1.0; their Q/K mask bug on. Not reproduced: their
    seed re-set per construction (likely the same data order every epoch) and
    max length 512 (set ``data.max_seq_len`` if it fits).
    """
    c.optim.learning_rate = 5e-5
    c.optim.weight_decay = 0.0
    c.optim.warmup_steps = 0
    c.optim.warmup_fraction = 0.0
    c.optim.grad_clip_norm = 1.0
    c.optim.batch_size = 8
    c.optim.schedule = "warmup_linear"
    c.optim.reset_each_epoch = True
    c.search.authors_qk_mask_bug = True
    return c
