"""The spec's ``search:`` block mapped onto Ray Tune's own pieces: one entry per algorithm.

Every algorithm gives the same thing, a :class:`TuneSearch`: what varies between the trials of
``param_space`` (``group``: the grid point and seeds a trial starts from; ``point``: the values a searcher
samples into it), Tune's ``search_alg`` and ``num_samples``. The one Tuner of :mod:`sweep.driver` takes it as it
is. Adding an algorithm is one function and one entry of :data:`ALGORITHMS` (and its name in
:class:`models.spec.SearchSpec`).

A sampled configuration is one Ray trial training every seed packed; it reports the mean over its live seeds
of each metric, and the searcher and the scheduler read ``search.metric`` (a validation metric) from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from models.spec import CommonSpec
from sweep.plan import base_group, plan_trials
from sweep.refine import RefineSearcher
from sweep.spec_check import distribution


@dataclass(frozen=True)
class TuneSearch:
    """What a search is in Ray Tune's terms.

    ``group``: a ``TrialGroup.to_dict()``, or ``tune.grid_search`` over several (a grid's planned trials);
    ``point``: key -> a ``tune.*`` distribution or ``tune.grid_search`` (empty for a grid); ``search_alg``: a
    Tune Searcher, or None for Tune's default (every grid point, in order); ``num_samples``: Tune's."""

    group: Any
    point: dict[str, Any]
    search_alg: Any
    num_samples: int


def grid(spec: CommonSpec, slots: int) -> TuneSearch:
    """Every grid point, its seeds packed as :func:`sweep.plan.plan_trials` plans them for ``slots``."""
    return TuneSearch(tune.grid_search([g.to_dict() for g in plan_trials(spec, slots)]), {}, None, 1)


def random(spec: CommonSpec, slots: int) -> TuneSearch:
    """Tune's BasicVariantGenerator, seeded by ``search.seed``: ``num_samples`` draws from the space times every
    grid point (a grid list next to a space multiplies, as Tune does)."""
    generator = BasicVariantGenerator(random_state=spec.search.seed, max_concurrent=slots)
    return TuneSearch(base_group(spec).to_dict(), tune_space(spec), generator, spec.search.num_samples)


def optuna_tpe(spec: CommonSpec, slots: int) -> TuneSearch:
    """Optuna's TPE sampler (seeded) through Tune's OptunaSearch, at most ``slots`` trials at once."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=spec.search.seed))
    return TuneSearch(base_group(spec).to_dict(), tune_space(spec), ConcurrencyLimiter(searcher, max_concurrent=slots),
                      spec.search.num_samples)


def refine(spec: CommonSpec, slots: int) -> TuneSearch:
    """The knob's values one after another where the complexity curve bends (:mod:`sweep.refine`), each with
    all its seeds packed, at most ``slots`` at once."""
    return TuneSearch(base_group(spec).to_dict(), {}, RefineSearcher(spec, slots), spec.search.num_samples)


#: ``search.algorithm`` -> how it maps onto Ray Tune.
ALGORITHMS: dict[str, Callable[[CommonSpec, int], TuneSearch]] = {
    "grid": grid, "random": random, "optuna": optuna_tpe, "refine": refine,
}


def tune_search(spec: CommonSpec, slots: int) -> TuneSearch:
    return ALGORITHMS[spec.search.algorithm](spec, slots)


def tune_space(spec: CommonSpec) -> dict[str, Any]:
    """The sampled part of ``param_space``: searched key -> a ``tune.*`` distribution; every grid axis (a list)
    -> ``tune.grid_search`` (Tune multiplies: every grid value x ``num_samples``)."""
    space: dict[str, Any] = {}
    for key in spec.search.space:
        name, args = distribution(spec, key)
        space[key] = tune.choice(args) if name == "choice" else getattr(tune, name)(*args)
    for axis in spec.axes:
        if axis not in space and len(spec.values(axis)) > 1:
            space[axis] = tune.grid_search(spec.values(axis))
    return space


def knob_values(spec: CommonSpec) -> list[Any]:
    """Every value the knob can take in this sweep (for the UI's width colours): the grid's, every integer
    between the grid's ends for a refine search, the values a searched knob can draw."""
    knob = spec.family.knob
    if spec.search.algorithm == "refine":
        start = spec.values(knob)
        return list(range(min(start), max(start) + 1))
    if knob not in spec.search.space:
        return spec.values(knob)
    name, args = distribution(spec, knob)
    return sorted(args) if name == "choice" else list(range(args[0], args[1]))


def max_t(spec: CommonSpec) -> int:
    """ASHA's ``max_t`` in protocol steps: above every budget, so a full-length trial is never the scheduler's
    to stop for being long (a trial stopped at ``max_t`` ends like an early-stopped one)."""
    return 2 * max(spec.values("budget")) + 1


def scheduler(spec: CommonSpec) -> Any:
    """``ASHAScheduler`` over the protocol's steps (the reported ``step``), or None (FIFO)."""
    if spec.search.scheduler != "asha":
        return None
    return ASHAScheduler(time_attr="step", max_t=max_t(spec), grace_period=spec.search.grace_period,
                         reduction_factor=spec.search.reduction_factor)


__all__ = ["ALGORITHMS", "TuneSearch", "knob_values", "max_t", "scheduler", "tune_search", "tune_space"]
