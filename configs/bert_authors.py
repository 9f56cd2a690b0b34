"""BERT on GLUE with the WORM authors' own fine-tuning recipe and mask bug.

  python launch.py --config=configs/bert_authors.py --config.data.dir=/path/to/glue \
    --config.data.name=rte --config.experiment.schedules=none,worm

A fresh AdamW (lr 5e-5, linear decay to 0 within each epoch) every epoch,
batch 8, and the authors' Q/K mask bug (docs/algorithm.md section 8). Compare
with ``bert_<task>_<eb|worm>.py``, the paper's settings with our recipe.
"""

from configs import bert_base


def get_config():
    return bert_base.get_config("rte", "worm", recipe="authors")
