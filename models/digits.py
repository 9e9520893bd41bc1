"""scikit-learn's digits and the one 50/50 split every family trains and tests on (../shared/HANDOUT.md).

``load_digits()`` ships inside scikit-learn (1797 images, 8x8, pixels 0..16, 10 classes; no download). One
permutation drawn from ``split_seed`` keeps its first 898 images for training and the other 899 for test; the
split is separate from any training seed and identified by :func:`split_hash`.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

N_DIGITS = 1797
N_TRAIN = 898  # the handout keeps the first half of one random permutation of the 1797 digits for training
N_TEST = N_DIGITS - N_TRAIN
N_CLASSES = 10


DigitsArrays = tuple[np.ndarray, np.ndarray]


@lru_cache(maxsize=1)
def digits_arrays() -> DigitsArrays:
    """All 1797 digits as scikit-learn ships them: images (1797, 1, 8, 8) float64 in [0, 1], labels (1797,)
    int64 in 0..9. Cached: scikit-learn's import alone takes seconds."""
    from sklearn.datasets import load_digits  # here: scikit-learn takes seconds to import, workers never need it

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
