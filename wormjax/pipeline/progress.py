"""Where a run stands: the typed, frozen progress record and its one JSON form.

A run's progress (phase, epoch, data position, records, ticket, accuracies,
times) is a value: each phase returns a new ``Progress`` made with
``dataclasses.replace``, and the checkpoint metadata is ``to_json()`` of it, so
a resumed run reads back exactly what an uninterrupted one holds.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from wormjax.pipeline import report

__all__ = ["PHASES", "Progress"]

# Prune happens between two checkpoints. "ticket": a drawn ticket not yet
# pruned, the state a multi-ratio search saves for each ratio's own arm.
PHASES = ("search", "ticket", "retrain", "done")


@dataclasses.dataclass(frozen=True)
class Progress:
    """A run's bookkeeping between two steps; all of it goes into checkpoints."""

    phase: str = "search"
    epoch: int = 0  # epochs done in the current phase
    data_epoch: int = 0  # epochs of data seen over both phases (the data order)
    step_in_epoch: int = 0  # > 0 only in a checkpoint written inside an epoch
    partial_seconds: float = 0.0  # the time that epoch ran before the stop
    logged: int = 0  # records written to metrics.jsonl (a resume rewinds to it)
    records: tuple = ()  # per-epoch records (dicts), both phases
    examples_trained: int = 0
    examples_retrain: int = 0
    times: dict = dataclasses.field(
        default_factory=lambda: {"search": 0.0, "prune": 0.0, "retrain": 0.0})
    ticket: dict | None = None  # {"epoch", "converged"} once the search ends
    # Multi-ratio search: str(ratio) -> {"epoch", "converged", "step"} of each
    # ticket saved so far (``multi_ratio``).
    tickets: dict | None = None
    pre_prune_accuracy: float | None = None
    post_prune_accuracy: float | None = None
    post_prune_accuracy_before_recalibration: float | None = None
    # F1 of the positive class where the task has two classes (MRPC's metric).
    pre_prune_f1: float | None = None
    post_prune_f1: float | None = None
    target_accuracy: float | None = None
    restore_epochs: int | None = None
    pruned_nonzero: int | None = None
    has_param_mask: bool = False
    structured: dict | None = None  # the compact model (structured pruning)

    def replace(self, **changes) -> "Progress":
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    def add_time(self, phase: str, seconds: float) -> "Progress":
        """A copy with ``seconds`` more spent in ``phase``."""
        return self.replace(times={**self.times, phase: self.times[phase] + seconds})

    def add_record(self, record: dict) -> "Progress":
        """A copy with one more per-epoch record."""
        return self.replace(records=self.records + (record,))

    def phase_records(self, phase: str) -> list[dict]:
        """The per-epoch records of ``phase``, in order."""
        return [r for r in self.records if r["phase"] == phase]

    def to_json(self) -> dict[str, Any]:
        """The JSON form (checkpoint metadata): plain dicts, lists and numbers."""
        out = dataclasses.asdict(self)
        out["records"] = list(self.records)
        return json.loads(report.to_json(out))

    @classmethod
    def from_json(cls, data: dict) -> "Progress":
        """Reads :meth:`to_json` back; keys it does not know (digests) are dropped."""
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in names}
        fields["records"] = tuple(fields.get("records", ()))
        return cls(**fields)
