"""Search sweeps (issue 14): the ``search:`` block checked against its family, and turned into Ray Tune's own
pieces: ``tune.loguniform``/``uniform``/``randint``/``choice``, ``BasicVariantGenerator`` (random),
``OptunaSearch`` (TPE) behind a ``ConcurrencyLimiter``, ``ASHAScheduler``, and a driver-side
``tune.Callback`` that ends early-stopped trials' runs.

A searched configuration is one Ray trial training every seed packed; it reports the mean over its live
seeds of each metric, and the searcher and scheduler read ``search.metric`` (a validation metric) from it.
Nothing here imports Ray at module level (the CLI checks specs before Ray starts).
"""

from __future__ import annotations

import math
from typing import Any

from sweep.spec_base import DISTRIBUTIONS, CommonSpec, SpecError, as_list

TAG_TUNE_TRIAL = "tune_trial_id"  # the Ray Tune trial a search sweep's run belongs to
TAG_STOPPED_EARLY = "stopped_early"
TAG_BEST_CONFIG = "best_config"
TAG_SUPERSEDED = "superseded"  # a re-suggested configuration's first runs, ended by the driver
LOG_DISTRIBUTIONS = ("loguniform",)
INTEGER_KEYS = ("C", "K", "batch_size")  # keys a family's config holds as integers


def distribution(spec: CommonSpec, key: str) -> tuple[str, list[Any]]:
    """(name, arguments) of searched key ``key``: ``("loguniform", [1e-3, 1])``."""
    ((name, args),) = spec.search.space[key].items()
    return name, list(args)


def check(spec: CommonSpec) -> None:
    """Refuse a search block the family cannot run, one line each (SpecError), before Ray starts."""
    search = spec.search
    family = spec.family
    if search.space and search.algorithm == "grid":  # with or without a scheduler: a grid samples nothing
        raise SpecError("search.space is given but search.algorithm is grid, which never samples it: use "
                        "algorithm random or optuna, or give the values as a grid list")
    if not search.active:
        return
    if not family.validation_metrics:
        raise SpecError(f"family {family.name} logs no validation metric, so it cannot be searched or scheduled "
                        "(search.algorithm must be grid and search.scheduler fifo)")
    allowed_metrics = [m.name for m in family.validation_metrics]
    if search.metric not in allowed_metrics:
        raise SpecError(f"search.metric {search.metric!r} is not a validation metric of family {family.name}; "
                        f"allowed: {', '.join(allowed_metrics)} (selection never reads the test half)")
    if search.num_samples <= 0:
        raise SpecError(f"search.num_samples must be an integer > 0, got {search.num_samples}")
    if search.algorithm != "grid" and not search.space:
        raise SpecError(f"search.algorithm {search.algorithm} needs a search.space, e.g. "
                        "space: {lr: {loguniform: [0.001, 1]}}")
    if search.algorithm != "grid" and spec.pack == "off":
        raise SpecError(f"pack: off cannot go with search.algorithm {search.algorithm}: a sampled configuration "
                        "trains all its seeds in one trial, whose mean over seeds the searcher reads; use pack: auto")
    searchable = [a for a in family.axis_keys if a not in ("budget", "protocol", "eval_every")]
    for key, dist in search.space.items():
        if key not in searchable:
            raise SpecError(f"search.space key {key!r} is not a searchable key of family {family.name}; "
                            f"searchable: {', '.join(searchable)}")
        if len(as_list(spec.values(key))) > 1:
            raise SpecError(f"{key!r} is given both as a grid list and in search.space: give it in one place")
        if not isinstance(dist, dict) or len(dist) != 1:
            raise SpecError(f"search.space.{key} must name one distribution, e.g. {{loguniform: [0.001, 1]}}; "
                            f"distributions: {', '.join(DISTRIBUTIONS)}")
        ((name, args),) = dist.items()
        if name not in DISTRIBUTIONS:
            raise SpecError(f"unknown distribution {name!r} for search.space.{key}; "
                            f"distributions: {', '.join(DISTRIBUTIONS)}")
        if not isinstance(args, list) or not args:
            raise SpecError(f"search.space.{key}.{name} needs a list, e.g. [0.001, 1]")
        if key in INTEGER_KEYS and name in ("uniform", "loguniform"):
            raise SpecError(f"search.space.{key} takes integers: use randint or choice, not {name}")
        if name == "choice":
            if len(set(map(repr, args))) != len(args):
                raise SpecError(f"search.space.{key}.choice repeats a value: choices must be distinct")
            continue
        if len(args) != 2 or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
            raise SpecError(f"search.space.{key}.{name} needs [low, high] (two numbers), got {args!r}")
        low, high = args
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise SpecError(f"search.space.{key}.{name}: low {low} must be below high {high}")
        if name == "loguniform" and low <= 0:
            raise SpecError(f"search.space.{key}.loguniform: low {low} must be > 0 (a log scale)")
        if name == "randint" and not all(isinstance(a, int) for a in args):
            raise SpecError(f"search.space.{key}.randint needs integer bounds, got {args!r}")
    if search.algorithm == "optuna":
        grid = [a for a in spec.axes if a not in search.space and len(spec.values(a)) > 1]
        if grid:
            raise SpecError(f"search.algorithm optuna cannot take grid lists ({', '.join(grid)}): give one value, "
                            "or search it in search.space, or use algorithm random (it multiplies grids)")


def drawable_values(spec: CommonSpec) -> list[tuple[str, Any, str]]:
    """(key, value, how it is drawn) for the values of ``search.space`` that decide whether every draw is valid:
    each choice; the lowest and the highest value an interval can give. Tune's uniform and loguniform draw
    from [low, high) and randint from low..high - 1, so the highest draw is the float just below ``high``, or
    ``high - 1``. A key's rules are bounds (> 0, < 1, <= the images trained on) and a type, so checking these
    values checks every draw (:func:`sweep.spec.validate` runs them through the spec's own rules)."""
    out: list[tuple[str, Any, str]] = []
    for key in spec.search.space:
        name, args = distribution(spec, key)
        where = f"search.space.{key}.{name}"
        if name == "choice":
            out += [(key, v, f"{where} can draw {v!r}") for v in args]
        elif name == "randint":
            out += [(key, args[0], f"{where} can draw {args[0]!r}"),
                    (key, args[1] - 1, f"{where} can draw {args[1] - 1!r} (its high {args[1]} is exclusive)")]
        else:
            out += [(key, float(args[0]), f"{where} can draw {args[0]!r}"),
                    (key, math.nextafter(float(args[1]), -math.inf), f"{where} can draw values just below {args[1]!r}")]
    return out


def knob_values(spec: CommonSpec) -> list[Any]:
    """Every value the knob can take in this sweep (for the UI's width colours)."""
    knob = spec.family.knob
    if knob not in spec.search.space:
        return spec.values(knob)
    name, args = distribution(spec, knob)
    return sorted(args) if name == "choice" else list(range(args[0], args[1]))


def tune_space(spec: CommonSpec) -> dict[str, Any]:
    """The sampled part of ``param_space``: searched key -> a ``tune.*`` distribution; for random search every
    grid axis (a list) -> ``tune.grid_search`` (Tune multiplies: every grid value x ``num_samples``)."""
    from ray import tune

    space: dict[str, Any] = {}
    for key in spec.search.space:
        name, args = distribution(spec, key)
        space[key] = tune.choice(args) if name == "choice" else getattr(tune, name)(*args)
    for axis in spec.axes:
        if axis not in space and len(spec.values(axis)) > 1:
            space[axis] = tune.grid_search(spec.values(axis))
    return space


def max_t(spec: CommonSpec) -> int:
    """ASHA's ``max_t`` in protocol steps: above every budget, so a full-length trial is never the scheduler's
    to stop (a trial stopped at ``max_t`` ends like an early-stopped one; issue 14's facts)."""
    return 2 * max(spec.values("budget")) + 1


def searcher(spec: CommonSpec, slots: int) -> Any:
    """Ray Tune's search algorithm for the spec: BasicVariantGenerator (random, seeded by ``search.seed``) or
    OptunaSearch (TPE, seeded) behind a ConcurrencyLimiter of ``slots``."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    search = spec.search
    if search.algorithm == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        algo = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=search.seed))
        return ConcurrencyLimiter(algo, max_concurrent=slots)
    return BasicVariantGenerator(random_state=search.seed, max_concurrent=slots)


def scheduler(spec: CommonSpec) -> Any:
    """``ASHAScheduler`` over the protocol's steps (the reported ``step``), or None (FIFO)."""
    if spec.search.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="step", max_t=max_t(spec), grace_period=spec.search.grace_period,
                         reduction_factor=spec.search.reduction_factor)


__all__ = ["LOG_DISTRIBUTIONS", "TAG_BEST_CONFIG", "TAG_STOPPED_EARLY", "TAG_SUPERSEDED", "TAG_TUNE_TRIAL", "check",
           "distribution", "drawable_values", "max_t", "scheduler", "searcher", "tune_space"]
