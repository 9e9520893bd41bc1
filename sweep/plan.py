"""The plan: a validated spec expanded into Ray trials, each training one or more seeds of one config."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from models import parameter_count
from sweep.spec import SweepSpec
from sweep.trainer import TrainConfig


@dataclass(frozen=True)
class TrialGroup:
    """One Ray Tune trial: a grid point (everything but the seed) and the seeds it trains together.

    With ``pack: auto`` all seeds of a grid point are packed into one computation (at most ``pack_size``
    per trial); with ``pack: off`` every seed is its own trial.
    """

    config: TrainConfig
    seeds: tuple[int, ...]

    @property
    def label(self) -> str:
        seeds = ",".join(map(str, self.seeds))
        return f"C={self.config.C} seed={seeds}" if len(self.seeds) == 1 else f"C={self.config.C} seeds={seeds}"

    def member_params(self, seed: int, split_hash: str) -> dict[str, object]:
        """Every hyperparameter of one member, as logged on its MLflow run."""
        c = self.config
        return {
            "C": c.C, "seed": seed, "protocol": c.protocol, "budget": c.budget, "lr": c.lr,
            "batch_size": c.batch_size, "eval_every": c.eval_interval, "split_seed": c.split_seed,
            "split_hash": split_hash, "model_family": "resnet", "param_count": parameter_count(c.C),
            "dtype": c.dtype,
        }

    def to_dict(self) -> dict[str, object]:
        return {"config": asdict(self.config), "seeds": list(self.seeds)}

    @classmethod
    def from_dict(cls, d: dict) -> TrialGroup:
        return cls(config=TrainConfig(**d["config"]), seeds=tuple(d["seeds"]))


def run_name(C: int, seed: int) -> str:
    return f"C={C} seed={seed}"


def plan_trials(spec: SweepSpec) -> list[TrialGroup]:
    """Expand the grid; pack the seeds of each grid point unless ``pack: off``."""
    seeds = spec.seed_list
    size = 1 if spec.pack == "off" else (spec.pack_size or len(seeds))
    return [
        TrialGroup(config=config, seeds=tuple(seeds[i : i + size]))
        for config in spec.configs()
        for i in range(0, len(seeds), size)
    ]
