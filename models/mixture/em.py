"""A mixture of K multivariate Bernoullis fitted by EM (CS 446 hw2, problem 1).

Pure PyTorch: knows nothing of Ray or MLflow. K, the number of components, is the model-complexity knob.

Model, for binary vectors x in {0,1}^D:

    P(x | p, pi) = sum_k pi_k prod_d p_kd^x_d (1 - p_kd)^(1 - x_d)

EM exactly as the handout writes it:
  * E-step: log P(x_i | p_k) = sum_d x_id log p_kd + (1 - x_id) log(1 - p_kd); add log pi_k; logsumexp over k
    gives the image's log-likelihood, and eta_ik = exp(log pi_k + log P(x_i | p_k) - logsumexp) its
    responsibilities.
  * M-step: N_k = sum_i eta_ik, p_k = sum_i eta_ik x_i / N_k, pi_k = N_k / n, then p clamped to
    [eps, 1 - eps] (see :func:`m_step` for why that keeps EM monotone).

S members (one per seed) are fitted as ONE batched computation: parameters ``p`` (S, K, D) and ``pi``
(S, K); the images are shared by all members. Each member starts from its own seed's generator and no
operation mixes members, so a member's numbers do not depend on what it is packed with (tested to 1e-12).
Log-likelihoods are in nats.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.mixture.family import DEFAULT_EPS, DEFAULT_THRESHOLD, parameter_count
from models.mixture.family import NAME as FAMILY

INIT_LOW, INIT_HIGH = 0.25, 0.75


# -- data and bookkeeping ---------------------------------------------------------------------------------
def binarize(pixels: Tensor | np.ndarray, threshold: int = DEFAULT_THRESHOLD) -> Tensor:
    """Digits pixels (values 0..16, any shape, e.g. (N, 64) or (N, 8, 8)) -> same shape, 1.0 where
    ``pixel >= threshold`` else 0.0, float64. Flatten images to (N, D) before fitting."""
    if not 1 <= threshold <= 16:
        raise ValueError(f"threshold must be in 1..16 (digits pixels are 0..16), got {threshold!r}")
    values = torch.as_tensor(pixels)
    return (values >= threshold).to(torch.float64)


def initial_parameters(K: int, D: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One member's starting point, float64: pi (K,) uniform, p (K, D) ~ U(0.25, 0.75) drawn from
    ``numpy.random.default_rng(seed)`` alone (so it does not depend on other members or global RNGs)."""
    p = np.random.default_rng(seed).uniform(INIT_LOW, INIT_HIGH, size=(K, D))
    return np.full(K, 1.0 / K), p


def _check(K: Any, eps: Any, seeds: Sequence[Any]) -> None:
    """scikit-learn-style parameter validation: one clear ValueError per bad value."""
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 1:
        raise ValueError(f"K (number of mixture components) must be an integer >= 1, got {K!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or not 0.0 < eps < 0.5:
        raise ValueError(f"eps (p is kept in [eps, 1 - eps]) must be a number in (0, 0.5), got {eps!r}")
    if len(seeds) == 0:
        raise ValueError("seeds must hold at least one seed (one mixture is fitted per seed)")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"every seed must be a non-negative integer, got {s!r}")


def _check_binary(x: Tensor, name: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (n images, D pixels), got shape {tuple(x.shape)}")
    if not bool(((x == 0) | (x == 1)).all()):
        raise ValueError(f"{name} must hold only 0 and 1 (use binarize() on the pixels first)")


# -- the two EM steps, for S members at once ---------------------------------------------------------------
def log_component_likelihood(x: Tensor, p: Tensor, pi: Tensor | None = None) -> Tensor:
    """log P(x_i | p_k) = sum_d x_id log p_kd + (1 - x_id) log(1 - p_kd), in nats, plus log pi_k if ``pi``
    is given (the E-step's log joint).

    x: (n, D) in {0,1}, shared by all members; p: (S, K, D) in (0, 1); pi: (S, K) or None. Returns (S, n, K).

    Computed through the identity x log p + (1 - x) log(1 - p) = x (log p - log(1 - p)) + log(1 - p): per
    member ONE matrix product [x, 1] (n, D + 1) @ [log p - log(1 - p), sum_d log(1 - p_kd) + log pi_k]^T
    (D + 1, K). Half the multiply-adds of the term-by-term [x, 1 - x] @ [log p, log(1 - p)]^T (~15% of an EM
    iteration at K = 80), and log pi rides along as a column of ones instead of a pass over the (S, n, K)
    result. The price is cancellation between terms of size up to |log eps| ~ 14: on the digits at K = 80
    with most p at a bound, 1.6e-13 nats per image off the term-by-term form (tested to 1e-12 against the
    handout's formulas evaluated loop by loop). The S products are one batched matmul of S identically shaped
    GEMMs (not one wide GEMM over all S*K columns), so a member's arithmetic is the same whatever it is packed
    with.
    """
    S, K, _ = p.shape
    log_q = torch.log1p(-p)  # log(1 - p): (S, K, D)
    bias = log_q.sum(dim=2, keepdim=True)  # sum_d log(1 - p_kd): (S, K, 1)
    if pi is not None:
        bias = bias + torch.log(pi).unsqueeze(2)
    features = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)  # (n, D + 1)
    weights = torch.cat([torch.log(p) - log_q, bias], dim=2)  # (S, K, D + 1)
    return torch.bmm(features.expand(S, *features.shape), weights.transpose(1, 2))  # (S, n, K)


def e_step(x: Tensor, p: Tensor, pi: Tensor) -> tuple[Tensor, Tensor]:
    """Responsibilities and log-likelihoods of every image under every member.

    x: (n, D) in {0,1}; p: (S, K, D); pi: (S, K), rows summing to 1 (entries may be exactly 0).
    Returns eta (S, n, K), rows summing to 1, and the per-image log-likelihood log P(x_i | p, pi) (S, n), nats.

    logsumexp written out, so one exp serves both outputs: with a_ik = log pi_k + log P(x_i | p_k) and
    m_i = max_k a_ik, loglik_i = m_i + log sum_k exp(a_ik - m_i) and eta_ik = exp(a_ik - m_i) / sum_j exp(a_ij - m_i).
    A component with pi_k = 0 has log pi_k = -inf, so a_ik = -inf (log P(x_i | p_k) is finite because p is in
    [eps, 1 - eps]) and exp(-inf - m_i) = 0: its eta is exactly 0, never NaN. m_i is finite because at
    least one pi_k > 0 (they sum to 1).
    """
    joint = log_component_likelihood(x, p, pi)  # (S, n, K)
    top = joint.amax(dim=2, keepdim=True)  # (S, n, 1)
    weights = joint.sub_(top).exp_()  # in place: exp(a_ik - m_i), (S, n, K)
    total = weights.sum(dim=2, keepdim=True)
    loglik = (top + torch.log(total)).squeeze(2)  # (S, n)
    return weights.div_(total), loglik


def m_step(x: Tensor, eta: Tensor, p: Tensor, eps: float = DEFAULT_EPS) -> tuple[Tensor, Tensor]:
    """New parameters from responsibilities: p_k = sum_i eta_ik x_i / N_k, pi_k = N_k / n, N_k = sum_i eta_ik.

    x: (n, D); eta: (S, n, K); p: (S, K, D), the current means (kept by a component whose N_k is 0).
    Returns p (S, K, D) clamped to [eps, 1 - eps] and pi (S, K).

    Why clamping keeps EM monotone: the M-step maximizes the expected complete-data log-likelihood Q, which
    separates into one term per coordinate, a_kd log p_kd + b_kd log(1 - p_kd) with a_kd = sum_i eta_ik x_id
    and b_kd = sum_i eta_ik (1 - x_id), both >= 0. That is concave in p_kd with its unconstrained maximum at
    a/(a + b) = the closed form, so over the box [eps, 1 - eps] the maximizer is the closed form clamped to
    the box. The clamped M-step is therefore still an exact maximization of Q over the (box-constrained)
    parameter space, and the usual EM argument (log-likelihood >= Q + entropy, with equality at the old
    parameters) gives a log-likelihood that never decreases. pi is unconstrained, so pi_k = N_k / n is exact.

    A component whose N_k underflows to 0 holds no image: Q does not depend on its p_k, so keeping p_k is as
    good as any value (no 0/0 = NaN), and pi_k = 0 exactly.
    """
    S, n, K = eta.shape
    N = eta.sum(dim=1)  # (S, K)
    # sum_i eta_ik x_i: (S, K, D), one same-shaped GEMM per member (see log_component_likelihood)
    weighted = torch.bmm(eta.transpose(1, 2), x.expand(S, *x.shape))
    empty = (N == 0).unsqueeze(2)
    safe_N = torch.where(empty, torch.ones_like(N.unsqueeze(2)), N.unsqueeze(2))
    p_new = torch.where(empty, p, weighted / safe_N).clamp(eps, 1.0 - eps)
    return p_new, N / n


def classifier_errors(eta_train: Tensor, y_train: Tensor, eta_eval: Tensor, y_eval: Tensor) -> Tensor:
    """The mixture read as a classifier, misclassification rate in [0, 1] per member: (S,).

    Component k's label is the class with the largest training responsibility sum_{i: y_i = c} eta_ik
    (ties: the smallest label); an image gets the label of its most responsible component (ties: the
    smallest k). eta_train (S, n, K) with labels y_train (n,) int; eta_eval (S, m, K) with y_eval (m,).
    """
    n_classes = int(max(int(y_train.max()), int(y_eval.max()))) + 1
    one_hot = torch.nn.functional.one_hot(y_train, n_classes).to(eta_train.dtype)  # (n, C)
    mass = eta_train.transpose(1, 2) @ one_hot  # (S, K, C): responsibility mass per label
    component_label = mass.argmax(dim=2)  # (S, K)
    predicted = component_label.gather(1, eta_eval.argmax(dim=2))  # (S, m)
    # Counted in integers, so an error rate is exactly mistakes / m.
    return (predicted != y_eval).sum(dim=1).double() / y_eval.numel()


# -- S members fitted together -----------------------------------------------------------------------------
def _data_hash(x: Tensor) -> str:
    """12 hex digits identifying the training images, so a checkpoint refuses other data."""
    return hashlib.sha256(x.detach().cpu().to(torch.uint8).numpy().tobytes()).hexdigest()[:12]


class BernoulliMixtureEM:
    """S Bernoulli mixtures of K components (one per seed) fitted by EM to the same training images.

    Args:
        K: number of components, an integer in 1..n.
        seeds: one non-negative integer per member; member s starts from :func:`initial_parameters`.
        x_train: (n, D) training images in {0,1} (see :func:`binarize`); moved to ``device``/``dtype``.
        eps: p is kept in [eps, 1 - eps], 0 < eps < 0.5 (keeps test log-likelihoods finite).
        dtype, device: where the computation runs; float64 by default.

    Attributes: ``p`` (S, K, D), ``pi`` (S, K), ``iteration`` (EM iterations done).

    Usage::

        em = BernoulliMixtureEM(10, seeds=[0, 1, 2], x_train=binarize(pixels).reshape(-1, 64))
        for _ in range(100):
            em.step()
        records = em.evaluate(x_train, y_train, x_test, y_test)  # one dict per seed
    """

    def __init__(
        self,
        K: int,
        seeds: Sequence[int],
        x_train: Tensor,
        eps: float = DEFAULT_EPS,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ) -> None:
        _check(K, eps, seeds)
        x = torch.as_tensor(x_train)
        _check_binary(x, "x_train")
        n, D = x.shape
        if n < K:
            raise ValueError(f"K = {K} components is more than the {n} training images")
        self.K, self.D, self.n, self.eps = int(K), int(D), int(n), float(eps)
        self.seeds = [int(s) for s in seeds]
        self.dtype, self.device = dtype, torch.device(device)
        self.x_train = x.to(device=self.device, dtype=dtype)
        self.data_hash = _data_hash(x)
        starts = [initial_parameters(self.K, self.D, s) for s in self.seeds]
        self.pi = torch.from_numpy(np.stack([pi for pi, _ in starts])).to(device=self.device, dtype=dtype)
        self.p = torch.from_numpy(np.stack([p for _, p in starts])).to(device=self.device, dtype=dtype)
        self.iteration = 0

    @staticmethod
    def parameter_count(K: int, D: int = 64) -> int:
        """K*D + K - 1 (see :func:`parameter_count`)."""
        return parameter_count(K, D)

    @torch.no_grad()
    def step(self) -> Tensor:
        """One EM iteration (E-step then M-step) for every member.

        Returns (S,) the mean training log-likelihood per image (nats) at the parameters BEFORE this update,
        which the E-step computes anyway.
        """
        eta, loglik = e_step(self.x_train, self.p, self.pi)
        self.p, self.pi = m_step(self.x_train, eta, self.p, self.eps)
        self.iteration += 1
        return loglik.mean(dim=1)

    @torch.no_grad()
    def evaluate(self, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor) -> list[dict[str, Any]]:
        """Metrics of every member at the current parameters: one dict per seed, in ``seeds`` order.

        x_*: (n, D) / (m, D) images in {0,1}; y_*: (n,) / (m,) integer labels (used only to name components).
        Keys: ``seed``, ``iteration`` and the family's metrics (:mod:`models.mixture.family`): ``train_loglik``,
        ``test_loglik``, ``loglik_gap``, ``train_error``, ``test_error``, ``bic`` (log-likelihoods are means per
        image in nats;
        ``bic`` uses the total training log-likelihood and n = len(x_train)).
        """
        xs = [torch.as_tensor(a).to(device=self.device, dtype=self.dtype) for a in (x_train, x_test)]
        ys = [torch.as_tensor(a).to(device=self.device, dtype=torch.int64) for a in (y_train, y_test)]
        for a, name in zip(xs, ("x_train", "x_test"), strict=True):
            _check_binary(a, name)
            if a.shape[1] != self.D:
                raise ValueError(f"{name} has {a.shape[1]} pixels per image, the mixture has D = {self.D}")
        (eta_tr, ll_tr), (eta_te, ll_te) = (e_step(a, self.p, self.pi) for a in xs)
        train_error = classifier_errors(eta_tr, ys[0], eta_tr, ys[0]).tolist()
        test_error = classifier_errors(eta_tr, ys[0], eta_te, ys[1]).tolist()
        n = xs[0].shape[0]
        bic = (-2.0 * ll_tr.sum(dim=1) + parameter_count(self.K, self.D) * math.log(n)).tolist()
        train_ll, test_ll = ll_tr.mean(dim=1).tolist(), ll_te.mean(dim=1).tolist()
        return [
            {
                "seed": seed,
                "iteration": self.iteration,
                "train_loglik": train_ll[i],
                "test_loglik": test_ll[i],
                "loglik_gap": train_ll[i] - test_ll[i],
                "train_error": train_error[i],
                "test_error": test_error[i],
                "bic": bic[i],
            }
            for i, seed in enumerate(self.seeds)
        ]

    # -- checkpointing and export ------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {"K": self.K, "D": self.D, "n": self.n, "eps": self.eps, "seeds": list(self.seeds),
                "dtype": str(self.dtype).removeprefix("torch."), "data_hash": self.data_hash}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit for bit: p, pi (CPU copies), the iteration count, and what the
        run is (K, D, n, eps, seeds, dtype, data hash) so another configuration's checkpoint is refused."""
        return {**self._identity(), "family": FAMILY, "iteration": self.iteration,
                "p": self.p.detach().cpu().clone(), "pi": self.pi.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; ValueError if it belongs to another configuration or data."""
        mine = self._identity()
        theirs = {k: state.get(k) for k in mine}
        if state.get("family") != FAMILY or theirs != mine:
            diff = sorted(k for k in mine if theirs[k] != mine[k]) or ["family"]
            raise ValueError(f"checkpoint belongs to another configuration (differs in {', '.join(diff)})")
        self.p = state["p"].to(device=self.device, dtype=self.dtype).clone()
        self.pi = state["pi"].to(device=self.device, dtype=self.dtype).clone()
        self.iteration = int(state["iteration"])

    def export(self, seed: int) -> dict[str, Any]:
        """One member as a self-describing dict (the saved "weights"): family, K, D, eps, seed, iteration,
        p (K, D) and pi (K,) as CPU tensors."""
        if seed not in self.seeds:
            raise ValueError(f"seed {seed!r} is not one of this fit's seeds {self.seeds}")
        i = self.seeds.index(seed)
        return {"family": FAMILY, "K": self.K, "D": self.D, "eps": self.eps, "seed": seed,
                "iteration": self.iteration, "p": self.p[i].detach().cpu().clone(),
                "pi": self.pi[i].detach().cpu().clone()}
