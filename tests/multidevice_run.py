"""Runs the tiny test experiment on forced CPU devices (called by test_distributed).

usage: multidevice_run.py WORKDIR MESH_DATA [INTERRUPT_AFTER_SAVES]
XLA_FLAGS=--xla_force_host_platform_device_count=N must be set by the caller.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from test_experiment import tiny_config  # noqa: E402

from wormjax.pipeline import checkpoint as ckpt_lib  # noqa: E402
from wormjax.pipeline import experiment  # noqa: E402


def main():
    workdir, mesh_data = sys.argv[1], int(sys.argv[2])
    interrupt_after = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    if interrupt_after:
        real_save, saves = ckpt_lib.RunCheckpointer.save, []

        def save_then_exit(self, step, tree, meta):
            real_save(self, step, tree, meta)
            saves.append(step)
            if len(saves) == interrupt_after:
                os._exit(3)  # a hard stop, like a killed process

        ckpt_lib.RunCheckpointer.save = save_then_exit
    # Two search epochs at a small learning rate: float rounding differs
    # between device counts (other reduction orders) and training amplifies
    # it, so the comparison stays where it is still rounding-sized.
    config = tiny_config(**{"mesh.data": mesh_data, "search.max_epochs": 2,
                            "retrain.max_epochs": 1, "optim.learning_rate": 1e-3})
    experiment.run_experiment(config, workdir, print_fn=lambda s: None)


if __name__ == "__main__":
    main()
