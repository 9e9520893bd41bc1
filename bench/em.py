"""Benchmark: milliseconds per EM iteration per mixture at K = 80 on the binarized digits' training half.

    .venv/bin/python bench/em.py              # a few seconds
    .venv/bin/python bench/em.py --iterations 50 --repeats 10

Compares :class:`models.bernoulli_mixture.BernoulliMixtureEM` packing S = 1, 8, 32 seeds into one
computation with a plain per-seed numpy implementation of the same EM written here independently (numpy +
scipy.special.logsumexp, one mixture at a time), measured in the same run, and checks that the two agree
on the training log-likelihood after a few iterations. One thread everywhere (set before numpy is
imported), float64, data: 898 x 64 images, pixel >= 8 -> 1, split by numpy default_rng(0).permutation.
The load average is printed alongside: other processes on a small machine move these numbers a lot.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.special import logsumexp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.mixture.em import BernoulliMixtureEM  # noqa: E402

K = 80
PACKS = (1, 8, 32)
EPS = 1e-6


def training_half() -> np.ndarray:
    """(898, 64) float64 in {0,1}: the handout's training half of the digits, pixel >= 8 -> 1."""
    from sklearn.datasets import load_digits

    data = load_digits().data
    return (data[np.random.default_rng(0).permutation(len(data))[:898]] >= 8).astype(np.float64)


class NumpyEM:
    """One mixture, the textbook way: x (n, D), p (K, D), pi (K,), each step a handful of numpy calls."""

    def __init__(self, x: np.ndarray, K: int, seed: int) -> None:
        self.x = x
        self.p = np.random.default_rng(seed).uniform(0.25, 0.75, size=(K, x.shape[1]))
        self.pi = np.full(K, 1.0 / K)

    def loglik(self) -> float:
        """Mean log-likelihood per image, nats."""
        return float(logsumexp(self._log_joint(), axis=1).mean())

    def _log_joint(self) -> np.ndarray:
        with np.errstate(divide="ignore"):  # pi_k = 0 -> -inf, which logsumexp handles
            return self.x @ np.log(self.p).T + (1.0 - self.x) @ np.log(1.0 - self.p).T + np.log(self.pi)

    def step(self) -> None:
        joint = self._log_joint()
        eta = np.exp(joint - logsumexp(joint, axis=1, keepdims=True))  # (n, K)
        N = eta.sum(axis=0)
        safe = np.where(N > 0, N, 1.0)[:, None]
        self.p = np.clip(np.where(N[:, None] > 0, eta.T @ self.x / safe, self.p), EPS, 1.0 - EPS)
        self.pi = N / len(self.x)


def time_numpy(x: np.ndarray, seeds: list[int], iterations: int) -> float:
    """ms per iteration per mixture, one mixture after another (after a one-iteration warm-up each)."""
    models = [NumpyEM(x, K, s) for s in seeds]
    for m in models:
        m.step()
    start = time.perf_counter()
    for m in models:
        for _ in range(iterations):
            m.step()
    return 1000.0 * (time.perf_counter() - start) / (iterations * len(seeds))


def time_packed(em: BernoulliMixtureEM, iterations: int) -> float:
    """ms per iteration per member of ``em``, its S members packed."""
    start = time.perf_counter()
    for _ in range(iterations):
        em.step()
    return 1000.0 * (time.perf_counter() - start) / (iterations * len(em.seeds))


def measure(x_np: np.ndarray, iterations: int, repeats: int) -> dict[str, float]:
    """Best of ``repeats`` rounds, each round timing every implementation once, interleaved so they see the
    same load; the minimum is the least-disturbed measurement."""
    x = torch.from_numpy(x_np)
    packed = {S: BernoulliMixtureEM(K, list(range(S)), x) for S in PACKS}
    for em in packed.values():
        em.step()  # warm-up
    best: dict[str, float] = {}
    for _ in range(repeats):
        rounds = {"numpy": time_numpy(x_np, [0, 1, 2, 3], iterations)}
        rounds |= {f"S={S}": time_packed(em, iterations) for S, em in packed.items()}
        best = {k: min(v, best.get(k, v)) for k, v in rounds.items()}
    return best


def agreement(x: np.ndarray, seeds: list[int], iterations: int) -> float:
    """Largest |difference| in mean training log-likelihood (nats per image) after ``iterations``."""
    em = BernoulliMixtureEM(K, seeds, torch.from_numpy(x))
    ref = [NumpyEM(x, K, s) for s in seeds]
    for _ in range(iterations):
        em.step()
        for m in ref:
            m.step()
    ours = em.step()  # the log-likelihood of the parameters after `iterations` steps
    return max(abs(float(ours[i]) - m.loglik()) for i, m in enumerate(ref))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20, help="timed EM iterations per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; the best of them is reported")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    x_np = training_half()
    diff = agreement(x_np, [0, 1, 2], 5)
    print(f"agreement after 5 iterations, seeds 0-2: max |train loglik difference| = {diff:.2e} nats/image")
    if diff > 1e-9:
        raise SystemExit("the packed EM and the numpy EM disagree")
    load_before = os.getloadavg()[0]
    best = measure(x_np, args.iterations, args.repeats)
    print(f"\nK = {K}, n = {x_np.shape[0]}, D = {x_np.shape[1]}, float64, 1 thread, best of {args.repeats} rounds "
          f"of {args.iterations} iterations, load average {load_before:.2f} -> {os.getloadavg()[0]:.2f}\n")
    print("| implementation | ms per EM iteration per mixture | numpy / this |")
    print("|---|---|---|")
    print(f"| numpy + scipy logsumexp, one mixture at a time | {best['numpy']:.3f} | 1.00 |")
    for S in PACKS:
        ms = best[f"S={S}"]
        print(f"| BernoulliMixtureEM, S = {S} packed | {ms:.3f} | {best['numpy'] / ms:.2f} |")


if __name__ == "__main__":
    main()
