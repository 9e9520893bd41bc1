"""What defines a trial except its seed: plain Python, no torch.

The CLI and the driver validate specs and plan trials with these before anything heavy is imported, so
a sweep's preflight stays fast and torch's import can overlap Ray's start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from models.digits import N_TRAIN
from models.family import evaluation_steps

Protocol = Literal["handout", "epochs"]
PROTOCOLS: tuple[str, ...] = ("handout", "epochs")
DEFAULT_EVAL_EVERY = {"handout": 25, "epochs": 10}


def n_flipped_labels(label_noise: float, n_train: int = N_TRAIN) -> int:
    """Labels replaced at noise level ``label_noise`` among the ``n_train`` images trained on:
    ``round(label_noise * n_train)`` (Python's round, half to even); 898 without a validation split."""
    return round(label_noise * n_train)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a trial except its seed.

    C: ResNet width (> 0). protocol: ``handout`` or ``epochs``. budget: updates (handout) or epochs.
    lr: SGD step size. batch_size: images per minibatch (<= 898). eval_every: steps between evaluations,
    None for the protocol's default. split_seed: which 50/50 split of digits. device: torch device string.
    dtype: ``float32`` or ``float64``.
    """

    C: int
    protocol: Protocol = "handout"
    budget: int = 4000
    lr: float = 0.1
    batch_size: int = 128
    eval_every: int | None = None
    split_seed: int = 0
    label_noise: float = 0.0
    device: str = "cpu"
    dtype: str = "float32"
    val_fraction: float = 0.0  # 0: no validation split (grids); else the share of the training half held out

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction <= 0.5:
            raise ValueError(f"val_fraction must be in [0, 0.5], got {self.val_fraction}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.C <= 0 or self.budget <= 0 or self.lr <= 0:
            raise ValueError("C, budget and lr must be positive")
        if not 0 < self.batch_size <= self.n_train:
            raise ValueError(f"batch_size must be in 1..{self.n_train}, got {self.batch_size}")
        if not 0 < self.eval_interval <= self.budget:
            raise ValueError(f"eval_every must be in 1..budget ({self.budget}), got {self.eval_every}")
        if not 0 <= self.label_noise < 1:  # also refuses NaN
            raise ValueError(f"label_noise must be a fraction in [0, 1), got {self.label_noise}")

    @property
    def n_val(self) -> int:
        """Training-half images held out for validation: ``round(val_fraction * 898)`` (0 without a split)."""
        return round(self.val_fraction * N_TRAIN)

    @property
    def n_train(self) -> int:
        """Images trained on: the 898 of the training half less the validation split."""
        return N_TRAIN - self.n_val

    @property
    def n_flipped_labels(self) -> int:
        """How many of the labels trained on label noise replaces: ``round(label_noise * n_train)`` (the
        validation split's labels are never replaced)."""
        return n_flipped_labels(self.label_noise, self.n_train)

    def axis_value(self, axis: str) -> object:
        """The value of grid axis ``axis`` (one of the ResNet family's axes) for this config, as logged."""
        return self.eval_interval if axis == "eval_every" else getattr(self, axis)

    @property
    def eval_interval(self) -> int:
        return self.eval_every or DEFAULT_EVAL_EVERY[self.protocol]

    @property
    def updates_per_step(self) -> int:
        return 1 if self.protocol == "handout" else self.n_train // self.batch_size

    def eval_steps(self) -> list[int]:
        """Steps at which records are produced: every ``eval_interval`` steps, and the last step."""
        return evaluation_steps(self.eval_interval, self.budget)
