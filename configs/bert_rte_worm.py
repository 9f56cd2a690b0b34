"""BERT on GLUE RTE, WORM (truncation once d_avg < s + delta): the paper's section VI settings.

  python launch.py --config=configs/bert_rte_worm.py --config.data.dir=/path/to/glue

data.dir holds RTE/train.tsv and RTE/dev.tsv (or use --config.data.source=tfds).
The checkpoint defaults to the installed all-MiniLM-L6-v2, else bert-base-uncased.
"""

from configs import bert_base


def get_config():
    return bert_base.get_config("rte", "worm")
