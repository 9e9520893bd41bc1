"""The plan: a validated spec expanded into Ray trials, each training one or more seeds of one config."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from models.family import Family, get_family
from sweep.names import KNOB
from sweep.spec import SweepSpec


@dataclass(frozen=True)
class TrialGroup:
    """One Ray Tune trial: a grid point (everything but the seed) and the seeds it trains together.

    With ``pack: auto`` all seeds of a grid point are packed into one computation (at most ``pack_size``
    per trial); with ``pack: off`` every seed is its own trial.
    """

    config: Any  # the family's config dataclass (TrainConfig for the ResNet)
    seeds: tuple[int, ...]
    axes: tuple[str, ...] = (KNOB,)  # the sweep's axes (SweepSpec.axes): what names this grid point
    family_name: str = "resnet"

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
        return f"{self.grid_point} {'seed' if len(self.seeds) == 1 else 'seeds'}={seeds}"

    def run_name(self, seed: int) -> str:
        """One member's MLflow run name: the grid point, then ``seed=<seed>`` (``C=4 lr=0.05 seed=1``)."""
        return f"{self.grid_point} seed={seed}"

    def member_params(self, seed: int, split_hash: str, family: Family | None = None) -> dict[str, object]:
        """Every hyperparameter of one member, as logged on its MLflow run (the family's
        :meth:`~models.family.Family.member_params`; the ResNet's are :data:`sweep.names.TRIAL_PARAMS`)."""
        return (family or self.family).member_params(self.config, seed, split_hash)

    def to_dict(self) -> dict[str, object]:
        return {"config": asdict(self.config), "seeds": list(self.seeds), "axes": list(self.axes),
                "family": self.family_name}

    @classmethod
    def from_dict(cls, d: dict, family: Family | None = None) -> TrialGroup:
        """``family``: the family object when the caller has it (a Ray worker gets it from the driver, so a
        family registered only there works); else looked up by name. Tune state written before families
        existed is a ResNet's; before axes existed, C was the only name part."""
        name = d.get("family", "resnet")
        family = family or get_family(name)
        return cls(config=family.config_from_dict(d["config"]), seeds=tuple(d["seeds"]),
                   axes=tuple(d.get("axes", [family.knob])), family_name=name)


def grid_point(config: Any, axes: tuple[str, ...]) -> str:
    """``<axis>=<value>`` for every axis in order, space-separated, values as Python's ``str()`` prints them
    (``C=4 lr=0.05 label_noise=0.2``): a run's name without its seed, unique within a sweep because grid
    lists hold distinct values."""
    return " ".join(f"{axis}={config.axis_value(axis)}" for axis in axes)


def relative_cost(config: Any, family: Family | None = None) -> float:
    """Rough CPU cost of one member's whole run (the family's :meth:`~models.family.Family.relative_cost`;
    the ResNet's is in units of one C=1 update)."""
    return (family or get_family("resnet")).relative_cost(config)


def plan_trials(spec: SweepSpec, slots: int = 1) -> list[TrialGroup]:
    """Expand the grid into Ray trials.

    ``pack: off``: one trial per (grid point, seed). ``pack: auto``: the seeds of each grid point are packed
    together, at most ``pack_size`` per trial; without ``pack_size``, a grid point whose packed run would cost
    more than an even share of the sweep over ``slots`` concurrent trials is split into that many chunks, so
    one wide C does not run on one core while the others idle.

    Trials come out most expensive first: Ray Tune starts grid trials in order, so the sweep is then a
    longest-processing-time-first schedule and no long trial starts last, alone on an otherwise idle cluster.
    """
    seeds = spec.seed_list
    configs = spec.configs()
    axes = spec.axes
    family = spec.family

    def cost(config: Any) -> float:
        return family.relative_cost(config)

    total = sum(cost(c) for c in configs) * len(seeds)
    share = total / max(1, slots)
    groups = []
    for config in configs:
        if spec.pack == "off":
            chunks = len(seeds)
        elif spec.pack_size:
            chunks = -(-len(seeds) // spec.pack_size)
        else:
            chunks = min(len(seeds), max(1, round(cost(config) * len(seeds) / share)))
        size = -(-len(seeds) // chunks)
        groups += [TrialGroup(config=config, seeds=tuple(seeds[i : i + size]), axes=axes, family_name=family.name)
                   for i in range(0, len(seeds), size)]
    return sorted(groups, key=lambda g: -cost(g.config) * len(g.seeds))  # stable: grid order on ties
