"""`Problem`: the one shape of every validation error and warning, anchored at a wire path."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One error or warning, anchored at a wire path such as `spec.training.steps`."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message
