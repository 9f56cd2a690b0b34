"""The ``Task`` protocol: everything the paper pipeline asks of a task, and nothing more.

A task wires one data set to one model: it builds the model and its initial
variables, hands out batches, and names the representative selector. The run
loop, the compiled programs and the summary only ever use the members below, so
a new task (another data set, another model family) implements exactly these.
``ImageTask`` (CNNs on CIFAR-10 / digits) and ``TextTask`` (BERT on GLUE) do.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, NamedTuple, Protocol, Sequence, runtime_checkable

from wormjax.pipeline import divergence

__all__ = ["ForwardFlops", "Task", "CompactableTask", "SplitMembers"]

Batch = Mapping[str, Any]  # host numpy arrays, one fixed shape per bucket
BatchSpec = Mapping[str, Any]  # the same keys as jax.ShapeDtypeStruct (no data)


class ForwardFlops(NamedTuple):
    """Eval-forward FLOPs per example, from XLA's cost analysis (``wormjax.costs``)."""

    longest: float  # at the longest input the task pads to (text: its last bucket)
    train: float  # averaged over an epoch's training batches (text: per bucket length)
    by_length: Mapping[int, float]  # text: per train bucket length; images: empty


@runtime_checkable
class Task(Protocol):
    """What the pipeline uses of a task (``pipeline.experiment`` builds one from the config)."""

    kind: str  # "image" or "text"
    name: str  # the data set, as the summary names it
    # Retraining keeps the reference mode's per-layer mask (BERT: the authors' code did).
    persistent_reference_mask: bool
    model: Any  # the flax module the steps apply
    selector: Any  # params -> TicketLayout: which entries form the ticket
    batch_size: int
    eval_batch_size: int
    steps_per_epoch: int  # the same in every epoch

    @property
    def num_train_examples(self) -> int:
        """Examples in the training split (after ``data.train_limit``)."""

    @property
    def num_eval_examples(self) -> int:
        """Examples in the evaluation split (after ``data.eval_limit``)."""

    @property
    def num_classes(self) -> int:
        """The classifier's outputs."""

    @property
    def chance_accuracy(self) -> float | None:
        """Eval accuracy of always predicting the most frequent class (divergence)."""

    @staticmethod
    def validate_config(config) -> None:
        """Checks ``config`` for this task before any data is read.

        Args:
          config: the experiment ConfigDict.

        Raises:
          ValueError: naming the bad field, its value and what is allowed.
        """

    def init_variables(self, seed: int) -> dict:
        """``{"params": ..., "batch_stats": ...}`` as fresh device arrays for ``seed``."""

    def forward(self, variables, batch: Batch, train: bool, rng, model=None):
        """``(logits, batch_stats)``; ``model`` replaces the task's own (compact model)."""

    def train_batches(self, seed: int, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """The shuffled batches of ``epoch`` (order from (seed, epoch)), skipping ``start_step``."""

    def eval_batches(self) -> Iterator[Batch]:
        """Every evaluation example once."""

    def batch_specs(self) -> dict[str, Sequence[BatchSpec]]:
        """``{"train": [...], "eval": [...]}``: every batch shape the steps see.

        Each is a dict of ``jax.ShapeDtypeStruct`` (global shape, no sharding)
        matching the host batches exactly; the warm-up compiles from these, so a
        wrong dtype or a missing bucket means a compilation inside a timed phase.
        """

    def forward_flops(self, variables, model=None) -> ForwardFlops:
        """Eval-forward FLOPs per example of ``model`` (default: the task's own)."""


@runtime_checkable
class CompactableTask(Task, Protocol):
    """A task whose model structured pruning can narrow (the CNNs)."""

    input_shape: tuple[int, ...]  # one input example, batch axis first: (1, H, W, C)

    def compact_model(self, channels: Sequence[int]):
        """The task's model narrowed to explicit per-BatchNorm channel counts."""


class SplitMembers:
    """The ``Task`` members a task derives from its two splits alone.

    A task sets ``train_split`` and ``eval_split`` (sized, with ``labels``).
    """

    train_split: Any
    eval_split: Any

    @property
    def num_train_examples(self) -> int:
        """Examples in the training split (after ``data.train_limit``)."""
        return len(self.train_split)

    @property
    def num_eval_examples(self) -> int:
        """Examples in the evaluation split (after ``data.eval_limit``)."""
        return len(self.eval_split)

    @property
    def chance_accuracy(self) -> float | None:
        """Eval accuracy of always predicting the most frequent class (divergence)."""
        return divergence.chance_accuracy(self.eval_split.labels)
