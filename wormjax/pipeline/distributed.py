"""Data-parallel placement: one mesh axis over every device of every host.

Parameters, optimizer and Early-Bird state are replicated; each batch is
sharded along the ``data`` axis. The train step is an ordinary ``jax.jit``
over global arrays, so XLA's SPMD partitioner inserts the gradient all-reduce
and computes BatchNorm statistics over the whole global batch (a cross-replica
mean), exactly as one device would on the same global batch. The Early-Bird
mask is computed from replicated parameters and so is identical everywhere.

Several hosts use JAX's multi-controller runtime: every host runs the same
command, ``jax.distributed.initialize()`` reads the coordinator address,
process count and process id from the environment (or a cluster manager such
as SLURM), and each host feeds its own slice of every global batch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["DataParallel", "maybe_initialize_distributed", "make_data_parallel",
           "check_divisible"]

DATA_AXIS = "data"
_COORDINATOR_VARS = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")


def maybe_initialize_distributed(mode: str = "auto") -> bool:
    """Starts the multi-controller runtime when asked to or when it is configured.

    Args:
      mode: "auto" (initialise when a coordinator address is in the
        environment), "on" (always; a cluster manager supplies the rest) or
        "off".

    Returns:
      True when this process is part of a multi-host run.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"mesh.distributed must be 'auto', 'on' or 'off', got {mode!r}")
    wanted = mode == "on" or (mode == "auto" and any(os.environ.get(v)
                                                     for v in _COORDINATOR_VARS))
    if wanted and not jax.distributed.is_initialized():
        jax.distributed.initialize()
        logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
                     jax.process_index(), jax.process_count(),
                     jax.local_device_count(), jax.device_count())
    return jax.process_count() > 1


def check_divisible(name: str, batch_size: int, num_devices: int) -> None:
    """A global batch must split evenly over the data axis."""
    if batch_size % num_devices:
        lower = batch_size - batch_size % num_devices
        upper = lower + num_devices
        options = ", ".join(str(b) for b in (lower, upper) if b > 0)
        raise ValueError(
            f"{name}={batch_size} does not divide over {num_devices} devices; use a "
            f"multiple of {num_devices} (e.g. {options}) or set mesh.data to a "
            f"divisor of {batch_size}")


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """Where state and batches live."""

    mesh: Mesh
    replicated: NamedSharding
    batch: NamedSharding

    @property
    def num_devices(self) -> int:
        """Devices on the data-parallel mesh, over every host."""
        return self.mesh.devices.size

    def replicate(self, tree) -> Any:
        """Copies a host or single-device pytree onto every device."""
        return jax.device_put(tree, self.replicated)

    def put_batch(self, batch) -> Any:
        """A host batch as a global array sharded along ``data``.

        In a multi-host run every host builds the same global batch (the order
        depends on the seed only) and contributes the rows of its own devices.
        """
        if jax.process_count() == 1:
            return jax.device_put(batch, self.batch)
        index, count = jax.process_index(), jax.process_count()

        def local(x):
            rows = x.shape[0] // count
            return jax.make_array_from_process_local_data(
                self.batch, np.asarray(x[index * rows:(index + 1) * rows]), x.shape)

        return jax.tree_util.tree_map(local, batch)


def make_data_parallel(num_devices: int = -1) -> DataParallel:
    """A one-axis mesh over ``num_devices`` devices (-1: all of them).

    Raises:
      ValueError: more devices asked for than exist, or a non-positive count.
    """
    devices = jax.devices()
    if num_devices == -1:
        num_devices = len(devices)
    if not isinstance(num_devices, int) or not 1 <= num_devices <= len(devices):
        raise ValueError(
            f"mesh.data must be -1 (all) or in 1..{len(devices)} (devices here), got "
            f"{num_devices!r}")
    if jax.process_count() > 1 and num_devices != len(devices):
        raise ValueError("a multi-host run uses every device: set mesh.data=-1")
    mesh = Mesh(np.asarray(devices[:num_devices]), (DATA_AXIS,))
    return DataParallel(mesh, NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS)))
