"""The Bernoulli-mixture family (CS 446 hw2, problem 1): K components fitted by EM, K is the knob.

Spec keys: ``model.family: bernoulli_mixture``, ``model.K`` (an integer in 1..898 or a list = an axis),
``model.eps`` (p is kept in [eps, 1 - eps], 0 < eps < 0.5; default 1e-6), ``data.binarize_threshold``
(pixel >= threshold is 1, of 0..16; 1..16, default 8; a list = an axis), ``budget`` (EM iterations, default
100), ``eval_every`` (iterations, default 1), ``dtype`` (float64 by default). Data: the same 50/50 digits
split as the ResNet (``split_seed``), 8x8 images flattened to D = 64 binary pixels.

The math is :mod:`models.mixture.em`; this file declares the family and wires the math to it. No torch import
at module level: the CLI validates specs through it before anything heavy is imported.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from models.digits import N_TRAIN, digits_arrays, split_indices
from models.family import Family, MetricInfo, Panel, evaluation_steps
from models.records import Evaluation, MetricRecord
from models.spec import CommonSpec, PositiveInt, Strict, as_list, grid_list

NAME = "bernoulli_mixture"
DEFAULT_EPS = 1e-6
DEFAULT_THRESHOLD = 8
DEFAULT_BUDGET = 100
D = 64
_LIST = "a non-empty list of distinct ones"



def parameter_count(K: int, D: int = D) -> int:
    """Free parameters of a K-component mixture on {0,1}^D: K*D Bernoulli means plus K - 1 mixing weights
    (they sum to 1)."""
    return K * D + K - 1


ComponentCount = Annotated[int, Field(gt=0, le=N_TRAIN, strict=True)]
Threshold = Annotated[int, Field(ge=1, le=16, strict=True)]


@dataclass(frozen=True)
class MixtureConfig:
    """Everything that defines a mixture trial except its seed.

    K: components (1..898). budget: EM iterations. eval_every: iterations between evaluations (None: 1).
    split_seed: which 50/50 split. binarize_threshold: pixel (0..16) >= threshold is 1. eps: p in
    [eps, 1 - eps]. device, dtype: where EM runs (float64 by default).
    """

    K: int
    budget: int = DEFAULT_BUDGET
    eval_every: int | None = None
    split_seed: int = 0
    binarize_threshold: int = DEFAULT_THRESHOLD
    eps: float = DEFAULT_EPS
    device: str = "cpu"
    dtype: str = "float64"

    def __post_init__(self) -> None:
        if not 0 < self.K <= N_TRAIN:
            raise ValueError(f"K must be in 1..{N_TRAIN} (the training half), got {self.K}")
        if self.budget <= 0 or not 0 < self.eval_interval <= self.budget:
            raise ValueError(f"budget must be > 0 and eval_every in 1..budget, got {self.budget}, {self.eval_every}")
        if not 1 <= self.binarize_threshold <= 16:
            raise ValueError(f"binarize_threshold must be in 1..16, got {self.binarize_threshold}")
        if not 0 < self.eps < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {self.eps}")

    @property
    def eval_interval(self) -> int:
        return self.eval_every or 1

    def axis_value(self, axis: str) -> object:
        return self.eval_interval if axis == "eval_every" else getattr(self, axis)

    def eval_steps(self) -> list[int]:
        """Iterations at which records are produced: every ``eval_interval``, and the last one."""
        return evaluation_steps(self.eval_interval, self.budget)


class MixtureModelSpec(Strict):
    family: Literal["bernoulli_mixture"] = NAME
    K: ComponentCount | list[ComponentCount] = Field(description="mixture components; the complexity knob")
    eps: float = Field(DEFAULT_EPS, gt=0, lt=0.5, allow_inf_nan=False,
                       description="p is kept in [eps, 1 - eps] so test log-likelihoods stay finite")

    _K_grid = field_validator("K")(grid_list)


class MixtureDataSpec(Strict):
    binarize_threshold: Threshold | list[Threshold] = Field(
        DEFAULT_THRESHOLD, description="a pixel (0..16) is 1 when >= this; a list = an axis")

    _t_grid = field_validator("binarize_threshold")(grid_list)


class MixtureSpec(CommonSpec):
    """A Bernoulli-mixture sweep over K (then budget, eval_every, data.binarize_threshold when lists)."""

    family_name = NAME

    model: MixtureModelSpec
    data: MixtureDataSpec = MixtureDataSpec()
    budget: PositiveInt | list[PositiveInt] = Field(DEFAULT_BUDGET, description="EM iterations")
    eval_every: PositiveInt | list[PositiveInt] | None = Field(None, description="EM iterations; default 1")
    dtype: Literal["float32", "float64"] = "float64"

    _grids = field_validator("budget", "eval_every")(grid_list)

    @model_validator(mode="after")
    def _eval_fits_budget(self) -> MixtureSpec:
        for budget, every in itertools.product(as_list(self.budget), as_list(self.eval_every)):
            if (every or 1) > budget:
                raise ValueError(f"eval_every {every} is larger than the budget {budget} (EM iterations)")
        return self


def mixture_data(split_seed: int, threshold: int, arrays: Any = None) -> tuple[Any, Any, Any, Any]:
    """(x_train (898, 64), y_train (898,), x_test (899, 64), y_test (899,)): the digits split ``split_seed``
    (the ResNet's split), each pixel (0..16) binarized as ``pixel >= threshold``; x float64 in {0, 1}."""
    import torch  # here, as below: the CLI imports this module to check specs and must not pay for torch

    from models.mixture.em import binarize  # imports torch: not for the CLI's spec check

    images, labels = arrays if arrays is not None else digits_arrays()
    pixels = np.rint(images.reshape(len(images), -1) * 16.0)  # digits_arrays holds pixel / 16, exactly
    x = binarize(pixels, threshold)
    train_idx, test_idx = split_indices(split_seed)
    y = torch.from_numpy(np.array(labels, dtype=np.int64))  # a copy: the object store hands out read-only arrays
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


class MixtureTrainer:
    """S mixtures (one per seed) of one :class:`MixtureConfig` fitted as one batched EM computation.

    ``step`` counts EM iterations; ``run()`` yields an Evaluation with one record per seed (the family's
    metrics) after every ``eval_interval`` iterations. EM cannot diverge (p is clamped, pi never NaN), so
    ``diverged`` stays empty.
    """

    def __init__(self, config: MixtureConfig, seeds: Sequence[int], arrays: Any = None) -> None:
        import torch  # see mixture_data

        from models.mixture.em import BernoulliMixtureEM

        self.config = config
        self.seeds = [int(s) for s in seeds]
        self.x_train, self.y_train, self.x_test, self.y_test = mixture_data(
            config.split_seed, config.binarize_threshold, arrays)
        self.em = BernoulliMixtureEM(config.K, self.seeds, self.x_train, eps=config.eps,
                                     dtype=getattr(torch, config.dtype), device=config.device)
        self.diverged: dict[int, tuple[int, str]] = {}
        self.train_seconds = 0.0

    @property
    def step(self) -> int:
        return self.em.iteration

    @property
    def ms_per_update(self) -> float:
        """Wall-clock EM time (evaluations excluded) per iteration per member, in milliseconds."""
        return 1000.0 * self.train_seconds / max(1, self.step * len(self.seeds))

    def run(self) -> Iterator[Evaluation]:
        import torch  # see mixture_data

        names = MIXTURE.metric_names
        for eval_step in self.config.eval_steps():
            if eval_step <= self.step:
                continue
            start = time.perf_counter()
            while self.em.iteration < eval_step:
                self.em.step()
            if self.em.device.type == "cuda":
                torch.cuda.synchronize(self.em.device)
            self.train_seconds += time.perf_counter() - start
            rows = self.em.evaluate(self.x_train, self.y_train, self.x_test, self.y_test)
            yield Evaluation(step=self.step, records=[
                MetricRecord(seed=row["seed"], step=self.step, values={k: float(row[k]) for k in names})
                for row in rows])

    def state_dict(self) -> dict[str, Any]:
        """EM's exact state (p, pi, iteration, identity) plus the config and the training time so far."""
        return {"config": asdict(self.config), "em": self.em.state_dict(), "train_seconds": self.train_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != asdict(self.config):
            raise ValueError("checkpoint belongs to another configuration")
        self.em.load_state_dict(state["em"])
        self.train_seconds = state["train_seconds"]


class MixtureFamily(Family):
    name = NAME
    display_name = "Bernoulli mixture"
    knob = "K"
    knob_meaning = "number of mixture components"
    metrics = (
        MetricInfo("train_loglik", "mean log-likelihood per training image", "nats", True, "training log-likelihood"),
        MetricInfo("test_loglik", "mean log-likelihood per test image", "nats", True, "test log-likelihood"),
        MetricInfo("loglik_gap", "train_loglik - test_loglik", "nats", False,
                   "log-likelihood gap (train − test)"),
        MetricInfo("train_error", "misclassification rate on the training half, mixture read as a classifier "
                   "(each component labelled by the majority true label of its responsibilities)", "", False),
        MetricInfo("test_error", "misclassification rate on the test half, mixture read as a classifier", "",
                   False),
        MetricInfo("bic", "-2 * total training log-likelihood + (64K + K - 1) * ln(898)", "nats", False),
    )
    complexity_panels = (
        Panel(("train_loglik", "test_loglik"), "mean log-likelihood per image (nats)"),
        Panel(("loglik_gap",), "train − test log-likelihood (nats)"),
        Panel(("train_error", "test_error"), "error rate, the mixture as a classifier (0–1)"),
    )
    curve_metrics = ("train_loglik", "test_loglik")
    gap_metric = "loglik_gap"
    table_metrics = (("train_loglik", "train_loglik"), ("test_loglik", "test_loglik"), ("loglik_gap", "gap"))
    budget_unit = "EM iteration"
    axis_keys = {"K": "model.K", "budget": "budget", "eval_every": "eval_every",
                 "binarize_threshold": "data.binarize_threshold"}
    spec_class = MixtureSpec
    allowed = {
        "model.K": f"an integer in 1..{N_TRAIN} (at most the training half's images) or {_LIST}",
        "model.eps": "a number in (0, 0.5): p is kept in [eps, 1 - eps]",
        "data.binarize_threshold": f"an integer in 1..16 (pixels are 0..16) or {_LIST}",
        "budget": f"EM iterations, an integer > 0 or {_LIST}",
        "eval_every": f"EM iterations in 1..budget, {_LIST}, or null for every iteration",
    }

    def make_config(self, values: dict[str, Any], spec: Any) -> MixtureConfig:
        return MixtureConfig(**values, split_seed=spec.split_seed, eps=spec.model.eps, dtype=spec.dtype)

    def config_from_dict(self, d: dict[str, Any]) -> MixtureConfig:
        return MixtureConfig(**d)

    def param_count(self, config: MixtureConfig) -> int:
        return parameter_count(config.K)

    def relative_cost(self, config: MixtureConfig) -> float:
        """EM iterations times K: the E-step's GEMM is (n x D) by (D x K)."""
        return config.budget * (1.0 + config.K)

    def member_params(self, config: MixtureConfig, seed: int, split_hash: str) -> dict[str, Any]:
        c = config
        return {
            "K": c.K, "seed": seed, "budget": c.budget, "eval_every": c.eval_interval, "split_seed": c.split_seed,
            "split_hash": split_hash, "model_family": self.name, "param_count": self.param_count(c),
            "dtype": c.dtype, "eps": c.eps, "binarize_threshold": c.binarize_threshold,
        }

    def describe(self, params: dict[str, Any]) -> str:
        """E.g. ``Bernoulli mixture K=10 (649 params), seed 0, 100 EM iterations, pixels >= 8, eps 1e-06``."""
        return (f"Bernoulli mixture K={params['K']} ({params['param_count']} params), seed {params['seed']}, "
                f"{params['budget']} EM iterations, pixels >= {params['binarize_threshold']}, eps {params['eps']}")

    def trainer(self, config: MixtureConfig, seeds: Sequence[int], arrays: Any = None) -> MixtureTrainer:
        return MixtureTrainer(config, seeds, arrays)

    def export(self, trainer: MixtureTrainer, seed: int) -> dict[str, Any]:
        """:meth:`BernoulliMixtureEM.export` (family, K, D, eps, seed, iteration, p (K, 64), pi (K,)) plus the
        trial config."""
        return {**trainer.em.export(seed), "config": asdict(trainer.config)}


MIXTURE = MixtureFamily()
__all__ = ["MIXTURE", "MixtureConfig", "MixtureFamily", "MixtureSpec", "MixtureTrainer", "mixture_data"]
