"""What trainers produce and tracking consumes: plain data, no torch import (so tracking needs no trainer).

A family's trainer yields an :class:`Evaluation` at every evaluation step; each holds one
:class:`MetricRecord` per live member. ``record.metrics()`` is the dict of metric key -> float logged to
MLflow at ``record.step`` (the keys are the family's :attr:`models.family.Family.metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MetricRecord:
    """One evaluation of one member: ``values`` maps the family's metric keys to floats.

    ``record.test_loglik`` reads ``values["test_loglik"]`` (attribute access, as the ResNet's record has)."""

    seed: int
    step: int
    values: dict[str, float]

    def metrics(self) -> dict[str, float]:
        return dict(self.values)

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values")
        if values is not None and name in values:
            return values[name]
        raise AttributeError(name)


@dataclass
class Evaluation:
    """What a trainer's ``run()`` yields at each evaluation step: records of the members still training, and
    the members whose training stopped (diverged) since the last evaluation (seed -> (step, reason)).

    ``records`` hold anything with ``seed``, ``step`` and ``metrics()``: a :class:`MetricRecord`, or the
    ResNet trainer's typed record."""

    step: int
    records: list[Any]
    diverged: dict[int, tuple[int, str]] = field(default_factory=dict)
