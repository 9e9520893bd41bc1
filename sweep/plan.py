"""The plan: a validated spec expanded into Ray trials, each training one or more seeds of one config."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sweep.config import TrainConfig
from sweep.names import KNOB
from sweep.spec import SweepSpec


@dataclass(frozen=True)
class TrialGroup:
    """One Ray Tune trial: a grid point (everything but the seed) and the seeds it trains together.

    With ``pack: auto`` all seeds of a grid point are packed into one computation (at most ``pack_size``
    per trial); with ``pack: off`` every seed is its own trial.
    """

    config: TrainConfig
    seeds: tuple[int, ...]
    axes: tuple[str, ...] = (KNOB,)  # the sweep's axes (SweepSpec.axes): what names this grid point

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

    def member_params(self, seed: int, split_hash: str) -> dict[str, object]:
        """Every hyperparameter of one member, as logged on its MLflow run (:data:`sweep.names.TRIAL_PARAMS`)."""
        from models import parameter_count  # torch: imported here so that planning needs none

        c = self.config
        return {
            "C": c.C, "seed": seed, "protocol": c.protocol, "budget": c.budget, "lr": c.lr,
            "batch_size": c.batch_size, "eval_every": c.eval_interval, "split_seed": c.split_seed,
            "split_hash": split_hash, "model_family": "resnet", "param_count": parameter_count(c.C),
            "dtype": c.dtype, "label_noise": c.label_noise, "n_flipped_labels": c.n_flipped_labels,
        }

    def to_dict(self) -> dict[str, object]:
        return {"config": asdict(self.config), "seeds": list(self.seeds), "axes": list(self.axes)}

    @classmethod
    def from_dict(cls, d: dict) -> TrialGroup:
        # Tune state written before axes existed has none: C was then the only name part.
        return cls(config=TrainConfig(**d["config"]), seeds=tuple(d["seeds"]), axes=tuple(d.get("axes", [KNOB])))


def grid_point(config: TrainConfig, axes: tuple[str, ...]) -> str:
    """``<axis>=<value>`` for every axis in order, space-separated, values as Python's ``str()`` prints them
    (``C=4 lr=0.05 label_noise=0.2``): a run's name without its seed, unique within a sweep because grid
    lists hold distinct values."""
    return " ".join(f"{axis}={config.axis_value(axis)}" for axis in axes)


def relative_cost(config: TrainConfig) -> float:
    """Rough CPU cost of one packed member's whole run, in units of one C=1 update.

    Packed updates cost about 0.09 ms + 0.0005 ms * C^2 per member on one core (issue 7's measurements),
    so a C=64 member costs ~21 C=1 members.
    """
    updates = config.budget * config.updates_per_step
    return updates * (1.0 + config.C**2 / 200.0)


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
    total = sum(relative_cost(c) for c in configs) * len(seeds)
    share = total / max(1, slots)
    groups = []
    for config in configs:
        if spec.pack == "off":
            chunks = len(seeds)
        elif spec.pack_size:
            chunks = -(-len(seeds) // spec.pack_size)
        else:
            chunks = min(len(seeds), max(1, round(relative_cost(config) * len(seeds) / share)))
        size = -(-len(seeds) // chunks)
        groups += [TrialGroup(config=config, seeds=tuple(seeds[i : i + size]), axes=axes)
                   for i in range(0, len(seeds), size)]
    return sorted(groups, key=lambda g: -relative_cost(g.config) * len(g.seeds))  # stable: grid order on ties
