"""The training history artifact: per-epoch Keras metrics and notes on the run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainingHistory:
    """Per-epoch Keras metrics plus notes on the run (wall time, compute policy, ...)."""

    history: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return len(next(iter(self.history.values()), []))
