"""scikit-learn's digits as tensors, split 50/50 by a ``split_seed`` that is separate from training seeds.

Label noise (``data.label_noise`` in a spec) replaces ``round(f * n)`` of the ``n`` labels trained on by a
uniformly drawn different class, before training; which images and which wrong labels are fixed by
``split_seed`` and ``f`` alone (:func:`noisy_labels`), so every width and seed of a sweep trains on the same
corrupted labels. The test half is never touched.

A validation split (searches and schedulers only: ``data.val_fraction``) holds ``round(val_fraction * 898)``
images of the training half out of training: which ones is fixed by ``split_seed`` and the count alone
(:func:`val_positions`), the same for every configuration and seed of a search. Its labels are the true ones:
label noise applies to what is trained on (the other ``n = 898 - n_val`` images), so a selection on validation
error does not reward a configuration for a low noise level. Without a split, nothing changes (n = 898).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from models.digits import N_CLASSES, N_TRAIN, DigitsArrays, digits_arrays, split_hash, split_indices
from models.resnet.config import TrainConfig, n_flipped_labels

_NOISE_STREAM = 0x1AB31  # tells the label-noise generator apart from any other stream drawn from split_seed
_VAL_STREAM = 0x7A11D  # likewise the validation split's


@dataclass(frozen=True)
class Digits:
    """One train/test split, already on its device.

    x_train: (898, 1, 8, 8) pixels in [0, 1]; y_train: (898,) int64 labels 0..9, the labels the model is
    trained on (with label noise: some replaced); y_train_clean: (898,) the true labels; likewise the test
    half (899), whose labels are always the true ones. split_hash: 12 hex characters identifying the
    split's indices, so a run can prove which split it used. label_noise: the fraction asked for;
    n_flipped: how many of y_train differ from y_train_clean.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    split_seed: int
    split_hash: str
    y_train_clean: Tensor
    label_noise: float = 0.0
    n_flipped: int = 0
    x_val: Tensor | None = None  # (n_val, 1, 8, 8) held out of training; None without a validation split
    y_val: Tensor | None = None  # (n_val,) their true labels (label noise applies to what is trained on)


def noisy_labels(labels: np.ndarray, split_seed: int, label_noise: float) -> tuple[np.ndarray, np.ndarray]:
    """The labels trained on with ``round(label_noise * n)`` of them replaced by a wrong class.

    labels: (n,) int labels 0..9 of the images trained on, in split order (the 898 of the training half, or
    fewer when a validation split is held out). Returns (noisy labels (n,), sorted positions that were
    flipped). The positions are a uniform sample without replacement; each new label is ``(old + k) % 10``
    with k uniform in 1..9, i.e. uniform over the nine other classes. Both come from a generator seeded by
    ``(split_seed, round(label_noise * 1e6))`` and nothing else: the same corruption for every width,
    training seed and pack of a sweep.
    """
    if not 0 <= label_noise < 1:
        raise ValueError(f"label_noise must be a fraction in [0, 1), got {label_noise}")
    if labels.ndim != 1 or not 0 < len(labels) <= N_TRAIN:
        raise ValueError(f"expected at most the {N_TRAIN} training labels, got shape {labels.shape}")
    n = n_flipped_labels(label_noise, len(labels))
    noisy = labels.copy()
    if n == 0:
        return noisy, np.empty(0, dtype=np.int64)
    rng = np.random.default_rng(np.random.SeedSequence([split_seed, round(label_noise * 1e6), _NOISE_STREAM]))
    flipped = np.sort(rng.choice(len(labels), size=n, replace=False))
    noisy[flipped] = (labels[flipped] + rng.integers(1, N_CLASSES, size=n)) % N_CLASSES
    return noisy, flipped


def val_positions(split_seed: int, n_val: int) -> np.ndarray:
    """Sorted positions (into the 898 of the training half, in split order) held out for validation: a uniform
    sample of ``n_val`` without replacement from a generator seeded by ``(split_seed, n_val)`` only."""
    rng = np.random.default_rng(np.random.SeedSequence([split_seed, n_val, _VAL_STREAM]))
    return np.sort(rng.choice(N_TRAIN, size=n_val, replace=False))


def load_digits_split(
    split_seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    arrays: DigitsArrays | None = None,
    label_noise: float = 0.0,
    n_val: int = 0,
) -> Digits:
    """Split digits by ``split_seed``, corrupt ``label_noise`` of the training labels (:func:`noisy_labels`)
    and move both halves to ``device`` in ``dtype``.

    ``arrays``: the output of :func:`digits_arrays`, when the caller already has it (a Ray worker gets it
    from the object store); loaded here otherwise.
    """
    images, labels = arrays if arrays is not None else digits_arrays()
    train_idx, test_idx = split_indices(split_seed)

    def to(a: np.ndarray, dt: torch.dtype) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dt)

    val: dict[str, Tensor] = {}
    if n_val:  # held out first, with their true labels; the noise goes to the images trained on
        held = val_positions(split_seed, n_val)
        keep = np.setdiff1d(np.arange(N_TRAIN), held)  # sorted: the training images keep their split order
        val = {"x_val": to(images[train_idx[held]], dtype), "y_val": to(labels[train_idx[held]], torch.int64)}
        train_idx = train_idx[keep]
    clean = labels[train_idx]
    noisy, flipped = noisy_labels(clean, split_seed, label_noise)

    return Digits(
        **val,
        x_train=to(images[train_idx], dtype),
        y_train=to(noisy, torch.int64),
        x_test=to(images[test_idx], dtype),
        y_test=to(labels[test_idx], torch.int64),
        split_seed=split_seed,
        split_hash=split_hash(split_seed),
        y_train_clean=to(clean, torch.int64),
        label_noise=label_noise,
        n_flipped=len(flipped),
    )


def load_for_config(config: TrainConfig, arrays: DigitsArrays | None = None) -> Digits:
    """The split, label noise, device and dtype ``config`` names, as :func:`load_digits_split` loads them."""
    return load_digits_split(config.split_seed, config.device, getattr(torch, config.dtype), arrays,
                             config.label_noise, getattr(config, "n_val", 0))
