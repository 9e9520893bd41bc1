"""The plan: what one Ray trial trains (a grid point and a pack of seeds), and a grid expanded into trials."""

from __future__ import annotations

import heapq
import numbers
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from itertools import pairwise
from typing import Any

from models.family import Family, get_family
from models.spec import CommonSpec
from record import short_point

#: (config, pack size) -> one member's cost in that pack (:meth:`models.family.Family.pack_cost`)
PackCost = Callable[[Any, int], float]


@dataclass(frozen=True)
class TrialGroup:
    """One Ray Tune trial: a grid point (everything but the seed) and the seeds it trains together.

    With ``pack: auto`` the seeds of a grid point are packed into one computation (at most ``pack_size`` per
    trial); with ``pack: off`` every seed is its own trial.
    """

    config: Any  # the family's config dataclass (TrainConfig for the ResNet)
    seeds: tuple[int, ...]
    axes: tuple[str, ...]  # the sweep's axes (CommonSpec.axes): what names this grid point
    family_name: str

    @property
    def family(self) -> Family:
        return get_family(self.family_name)

    @property
    def grid_point(self) -> str:
        """The grid point's name, the ``grid_point`` tag: ``C=4 lr=0.05`` (see :func:`grid_point`)."""
        return grid_point(self.config, self.axes)

    @property
    def label(self) -> str:
        """Ray Tune's name for this trial: ``C=4 lr=0.05 seed=1``, or ``... seeds=0,1,2`` for a pack."""
        seeds = ",".join(map(str, self.seeds))
        return f"{short_point(self.grid_point)} {'seed' if len(self.seeds) == 1 else 'seeds'}={seeds}"

    def run_name(self, seed: int, axes: Sequence[str] | None = None) -> str:
        """One member's MLflow run name: the values of ``axes`` (default: every axis) with floats to 3 significant
        digits, then the seed (``C=4 lr=0.00226 batch_size=32 seed=1``); the exact values are its params and
        ``grid_point`` tag."""
        point = self.grid_point if axes is None else grid_point(self.config, tuple(axes))
        return " ".join([*([short_point(point)] if point else []), f"seed={seed}"])

    def with_values(self, values: dict[str, Any]) -> TrialGroup:
        """This group with ``values`` (a searcher's sampled point: key -> value) in its config."""
        return replace(self, config=replace(self.config, **plain(values))) if values else self

    def to_dict(self) -> dict[str, object]:
        return {"config": asdict(self.config), "seeds": list(self.seeds), "axes": list(self.axes),
                "family": self.family_name}

    @classmethod
    def from_dict(cls, d: dict, family: Family | None = None) -> TrialGroup:
        """``family``: the family object when the caller has it (a Ray worker gets it from the driver, so a
        family registered only there works); else looked up by name."""
        family = family or get_family(d["family"])
        return cls(config=family.config_from_dict(d["config"]), seeds=tuple(d["seeds"]), axes=tuple(d["axes"]),
                   family_name=d["family"])


def trial_group(config: dict[str, Any], family: Family | None = None) -> TrialGroup:
    """The grid point and seeds of a Ray trial from its Tune config (:func:`sweep.driver.build_tuner`'s
    ``param_space``): its ``group``, with a searcher's sampled ``point`` applied."""
    return TrialGroup.from_dict(config["group"], family=family).with_values(config.get("point", {}))


def plain(values: dict[str, Any]) -> dict[str, Any]:
    """Tune hands numpy scalars for randint; configs, params and names want plain numbers."""
    return {k: (int(v) if isinstance(v, numbers.Integral) else float(v) if isinstance(v, numbers.Real) else v)
            for k, v in values.items()}


def grid_point(config: Any, axes: tuple[str, ...]) -> str:
    """``<axis>=<value>`` for every axis in order, space-separated, values as Python's ``str()`` prints them
    (``C=4 lr=0.05 label_noise=0.2``): a run's name without its seed, unique within a sweep because grid
    lists hold distinct values."""
    return " ".join(f"{axis}={config.axis_value(axis)}" for axis in axes)


def name_axes(spec: CommonSpec) -> tuple[str, ...]:
    """The axes a run's name shows: every axis, except in a sampled search a knob that takes one value (the
    same in every run, so it would only push the searched values out of the runs table's narrow name column)."""
    knob = spec.family.knob
    if spec.search.space and knob not in spec.search.space and len(spec.values(knob)) == 1:
        return tuple(a for a in spec.axes if a != knob)
    return tuple(spec.axes)


def base_group(spec: CommonSpec) -> TrialGroup:
    """The spec's own values of every key and all its seeds: what a searcher's samples are applied to."""
    return TrialGroup(config=spec.configs()[0], seeds=tuple(spec.seed_list), axes=spec.axes,
                      family_name=spec.family.name)


def plan_trials(spec: CommonSpec, slots: int = 1, pack_cost: PackCost | None = None) -> list[TrialGroup]:
    """Expand the grid into Ray trials.

    ``pack: off``: one trial per (grid point, seed). ``pack_size``: the seeds of each grid point in packs of
    at most that many. ``pack: auto`` without ``pack_size``: packs sized by ``pack_cost(config, size)``, one
    member's whole run in a pack of ``size`` (by default the family's :meth:`models.family.Family.pack_cost`;
    for the ResNet this machine's measured cost table). Per grid point, the number of packs is the one with the
    shortest estimated sweep over ``slots`` concurrent trials, max(its longest pack, all work / slots) with the
    other grid points in their cheapest pack size: one wide C is split so that it does not run on one core
    while the others idle, but not so far that the extra work costs more than the split gains. On a tie, the
    cheaper members, then the fewer packs (each trial has a fixed cost). With more than one slot, seeds then
    move between the packs of one grid point while that shortens the whole schedule (:func:`_balance`).

    Trials come out most expensive first: Ray Tune starts grid trials in order, so the sweep is then a
    longest-processing-time-first schedule and no long trial starts last, alone on an otherwise idle cluster.
    """
    seeds = spec.seed_list
    n = len(seeds)
    family = spec.family
    cost = _memo(pack_cost or family.pack_cost)
    configs = spec.configs()
    cheapest = [n * min(cost(c, size) for size in range(1, n + 1)) for c in configs]
    slots = max(1, slots)
    sizes: list[list[int]] = []  # per grid point, its packs' sizes
    for i, config in enumerate(configs):
        if spec.pack == "off":
            chunks = n
        elif spec.pack_size:
            chunks = -(-n // spec.pack_size)
        else:
            others = sum(cheapest) - cheapest[i]

            def key(k: int, config: Any = config, others: float = others) -> tuple[float, float, int]:
                size = -(-n // k)
                work = n * cost(config, size)
                # rounded: equal estimates must tie, whatever the float sums
                return round(max(size * cost(config, size), (others + work) / slots), 6), round(work, 6), k

            chunks = min(range(1, n + 1), key=key)
        size = -(-n // chunks)
        sizes.append([min(size, n - j) for j in range(0, n, size)])
    if spec.pack == "auto" and not spec.pack_size and slots > 1:
        sizes = _balance(configs, sizes, slots, cost)
    groups = []
    for config, pack_sizes in zip(configs, sizes, strict=True):
        bounds = [sum(pack_sizes[:j]) for j in range(len(pack_sizes) + 1)]
        groups += [TrialGroup(config=config, seeds=tuple(seeds[a:b]), axes=spec.axes, family_name=family.name)
                   for a, b in pairwise(bounds)]
    return _longest_first(groups, cost)


def _memo(cost: PackCost) -> PackCost:
    """``cost`` remembered per (config, size): the balancing asks for the same few thousands of times."""
    known: dict[tuple[int, int], float] = {}

    def remembered(config: Any, size: int) -> float:
        key = (id(config), size)  # by identity: a family's config need not hash; the plan holds each for its life
        if key not in known:
            known[key] = cost(config, size)
        return known[key]

    return remembered


def _pack_time(cost: PackCost, config: Any, size: int) -> float:
    """A pack's estimated time: its size x one member's cost in it."""
    return size * cost(config, size)


def _longest_first(groups: list[TrialGroup], cost: PackCost) -> list[TrialGroup]:
    """Most expensive trial first (:func:`_pack_time`); stable, so grid order on ties."""
    return sorted(groups, key=lambda g: -_pack_time(cost, g.config, len(g.seeds)))


def makespan(trials: list[tuple[Any, int]], slots: int, cost: PackCost) -> float:
    """When the last of ``trials`` (config, pack size) ends, started longest first each on the first free slot of
    ``slots``, as Ray Tune starts a grid's trials in order: estimated by ``cost``."""
    ends = [0.0] * slots
    for time in sorted((_pack_time(cost, config, size) for config, size in trials), reverse=True):
        heapq.heapreplace(ends, ends[0] + time)
    return max(ends)


# At most this many schedules estimated per plan, however large the plan: each is a sort of all its trials, and
# the plan is made at the sweep's start (hw2 --set seeds=10 on 2 CPUs settles after 6).
MAX_SCHEDULES = 2000


def _balance(configs: list[Any], sizes: list[list[int]], slots: int, cost: PackCost) -> list[list[int]]:
    """Per grid point, pack sizes that give a shorter :func:`makespan`: one seed moved at a time between two packs
    of one grid point, the move that shortens the schedule most, until none does (or :data:`MAX_SCHEDULES`).

    Why: packs of equal size leave slots idle when the trials do not share out evenly. ``hw2 --set seeds=10`` on
    2 CPUs is C=64 in two packs of 5 and the three narrow widths in one pack of 10 each: one slot ran a C=64
    pack and two narrow packs while the other, after its C=64 pack and one narrow pack, idled its last 17 s
    (docs/benchmarks.md). C=64 as packs of 7 and 3 ends both slots near the same time.
    """
    def span(plan: list[list[int]]) -> float:
        # rounded: equal estimates must tie, whatever the float sums
        return round(makespan([(c, s) for c, packs in zip(configs, plan, strict=True) for s in packs], slots, cost), 6)

    best, left = span(sizes), MAX_SCHEDULES - 1
    while left > 0:
        candidates = [(i, moved) for i, packs in enumerate(sizes) for moved in _one_seed_moved(packs)][:left]
        if not candidates:
            return sizes
        left -= len(candidates)
        shortest, i, moved = min(((span([*sizes[:i], moved, *sizes[i + 1:]]), i, moved) for i, moved in candidates),
                                 key=lambda m: m[0])
        if shortest >= best:
            return sizes
        best, sizes = shortest, [*sizes[:i], moved, *sizes[i + 1:]]
    return sizes


def _one_seed_moved(packs: list[int]) -> list[list[int]]:
    """Every distinct way to move one seed from one pack of ``packs`` (sizes, largest first) to another: the new
    sizes, largest first; a pack is never emptied."""
    out = []
    for a, b in sorted({(x, y) for x in packs for y in packs if x > 1}):
        if a == b and packs.count(a) < 2:
            continue
        moved = list(packs)
        moved.remove(a)
        moved.remove(b)
        out.append(sorted([*moved, a - 1, b + 1], reverse=True))
    return out
