"""scikit-learn's digits as tensors, split 50/50 by a ``split_seed`` that is separate from training seeds."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from sweep.config import N_TRAIN, TrainConfig

N_DIGITS = 1797


@dataclass(frozen=True)
class Digits:
    """One train/test split, already on its device.

    x_train: (898, 1, 8, 8) pixels in [0, 1]; y_train: (898,) int64 labels 0..9; likewise the test half (899).
    split_hash: 12 hex characters identifying the split's indices, so a run can prove which split it used.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    split_seed: int
    split_hash: str


DigitsArrays = tuple[np.ndarray, np.ndarray]


@lru_cache(maxsize=1)
def digits_arrays() -> DigitsArrays:
    """All 1797 digits as scikit-learn ships them: images (1797, 1, 8, 8) float64 in [0, 1], labels (1797,)
    int64 in 0..9. Cached: scikit-learn's import alone takes seconds."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float64)  # pixel values are 0..16
    return images[:, None, :, :], bunch.target.astype(np.int64)


def split_indices(split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices into the 1797 digits: one permutation drawn from ``split_seed``, cut in half."""
    order = np.random.default_rng(split_seed).permutation(N_DIGITS)
    return order[:N_TRAIN], order[N_TRAIN:]


def split_hash(split_seed: int) -> str:
    train_idx, test_idx = split_indices(split_seed)
    digest = hashlib.sha256(train_idx.astype(np.int64).tobytes() + b"|" + test_idx.astype(np.int64).tobytes())
    return digest.hexdigest()[:12]


def load_digits_split(
    split_seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    arrays: DigitsArrays | None = None,
) -> Digits:
    """Split digits by ``split_seed`` and move both halves to ``device`` in ``dtype``.

    ``arrays``: the output of :func:`digits_arrays`, when the caller already has it (a Ray worker gets it
    from the object store); loaded here otherwise.
    """
    images, labels = arrays if arrays is not None else digits_arrays()
    train_idx, test_idx = split_indices(split_seed)

    def to(a: np.ndarray, dt: torch.dtype) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dt)

    return Digits(
        x_train=to(images[train_idx], dtype),
        y_train=to(labels[train_idx], torch.int64),
        x_test=to(images[test_idx], dtype),
        y_test=to(labels[test_idx], torch.int64),
        split_seed=split_seed,
        split_hash=split_hash(split_seed),
    )


def load_for_config(config: TrainConfig, arrays: DigitsArrays | None = None) -> Digits:
    """The split, device and dtype ``config`` names, as :func:`load_digits_split` loads them."""
    return load_digits_split(config.split_seed, config.device, getattr(torch, config.dtype), arrays)
