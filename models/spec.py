"""The keys every sweep spec has, whatever its model family: pydantic, no torch.

A family's spec class derives from :class:`CommonSpec` and adds its own ``model:`` section (with
``family: Literal[<name>]`` and its knob), its ``data:`` section, ``budget``, ``eval_every``, ``dtype`` (with
the family's defaults) and any other key it owns; :attr:`CommonSpec.family_name` names the family, whose
``axis_keys`` say which keys are grid axes (:meth:`CommonSpec.axes`). Spec files are YAML, read by
:func:`load_yaml`.
"""

from __future__ import annotations

import itertools
import re
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.family import Family, get_family

PositiveInt = Annotated[int, Field(gt=0, strict=True)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeInt = Annotated[int, Field(ge=0, strict=True)]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
NAME_MAX_LENGTH = 100


class SpecError(ValueError):
    """A sweep spec, preset, override or file that cannot be used; its message is one line."""


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader reading numbers in scientific notation without a dot (``1e-3``) as floats.

    PyYAML implements YAML 1.1, whose float pattern needs a dot (``1.0e-3``), so ``1e-3`` would be the string
    "1e-3"; YAML 1.2 (and a user) reads it as a number. The resolver below is YAML 1.2's float pattern; a second
    YAML library (ruamel.yaml) would bring that, at the price of two parsers for one regex.
    """


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                 |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                 |\.[0-9_]+(?:[eE][-+][0-9]+)?
                 |[-+]?\.(?:inf|Inf|INF)
                 |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """``text`` parsed with :class:`SpecLoader` (safe, scientific notation read as numbers)."""
    return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - SpecLoader is a SafeLoader


class Strict(BaseModel):
    """A spec section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def grid_list(v: Any) -> Any:
    """A grid list must name at least one value and no value twice (each value is one trial identity)."""
    if isinstance(v, list):
        if not v:
            raise ValueError("an empty list is no grid: give at least one value")
        seen: list[Any] = []
        for item in v:
            if item in seen:
                raise ValueError(f"the value {item!r} is repeated: grid values must be distinct")
            seen.append(item)
    return v


def as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list) else [v]


class ResourcesSpec(Strict):
    cpu: float = Field(1.0, gt=0, allow_inf_nan=False, description="CPUs per trial; torch uses this many threads")
    gpu: float = Field(0.0, ge=0, allow_inf_nan=False, description="GPUs per trial; 0.25 puts four trials on one GPU")


class TrackingSpec(Strict):
    uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///mlflow.db here")
    experiment: str | None = Field(None, description="MLflow experiment; default: the sweep's name")


DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")


class SearchSpec(Strict):
    """How configurations are chosen: ``grid`` (every grid point, the default), ``random`` (Ray Tune's
    BasicVariantGenerator: ``num_samples`` draws from ``space``, times every grid point), ``optuna`` (Ray Tune's
    OptunaSearch, TPE) or ``refine`` (the knob's values chosen one after another where the complexity curve is
    least resolved, starting from the grid's; at most ``num_samples`` values in all); ``scheduler``: ``fifo``
    (every trial runs to its budget) or ``asha`` (Ray Tune's ASHAScheduler over the protocol's steps). Checked
    against the family in :func:`sweep.spec_check.check_search` (one line each)."""

    algorithm: Literal["grid", "random", "optuna", "refine"] = "grid"
    num_samples: int = Field(1, strict=True, description="configurations sampled (random: per grid point; "
                                                         "refine: knob values in all, the grid's included)")
    space: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                             description="key -> {loguniform|uniform|randint|choice: [...]}")
    metric: str = "val_error"
    mode: Literal["min", "max"] = "min"
    scheduler: Literal["fifo", "asha"] = "fifo"
    grace_period: PositiveInt = Field(1, description="ASHA: protocol steps before a trial can be stopped")
    reduction_factor: float = Field(3.0, gt=1, allow_inf_nan=False, description="ASHA: keep 1/this per rung")
    seed: NonNegativeInt = Field(0, description="the searcher's random seed (random and optuna)")

    @property
    def active(self) -> bool:
        """Whether this block does anything: configurations are chosen by an algorithm or trials can be stopped."""
        return self.algorithm != "grid" or self.scheduler != "fifo"

    @property
    def selects(self) -> bool:
        """Whether configurations are compared on a validation metric (random, optuna, a scheduler): then a
        validation split is held out of the training half, and a best configuration is chosen. A refine search
        describes the complexity curve on the training and test halves and selects nothing."""
        return self.algorithm in ("random", "optuna") or self.scheduler != "fifo"


class CommonSpec(Strict):
    """Keys shared by every family. Subclasses add ``model`` (required), ``data``, ``budget``,
    ``eval_every``, ``dtype`` and their own keys."""

    family_name: ClassVar[str] = ""

    name: str = Field(min_length=1, max_length=NAME_MAX_LENGTH, pattern=NAME_PATTERN)
    seeds: PositiveInt | list[NonNegativeInt] = Field(description="a count n meaning seeds 0..n-1, or an explicit list")
    split_seed: NonNegativeInt = 0
    pack: Literal["auto", "off"] = "auto"
    pack_size: PositiveInt | None = Field(None, description="most seeds packed into one Ray trial")
    resources: ResourcesSpec = ResourcesSpec()
    max_concurrent_trials: PositiveInt | None = None
    max_failures: NonNegativeInt = 3
    checkpoint_every: PositiveInt | None = Field(None, description="evaluations between checkpoints")
    tracking: TrackingSpec = TrackingSpec()
    search: SearchSpec = SearchSpec()

    @field_validator("pack", mode="before")
    @classmethod
    def _yaml_off_is_false(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false and `on` as true.
        return {False: "off", True: "auto"}.get(v, v) if isinstance(v, bool) else v

    _seed_grid = field_validator("seeds")(grid_list)

    @property
    def family(self) -> Family:
        """The :class:`models.family.Family` this spec belongs to."""
        return get_family(self.family_name)

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def values(self, axis: str) -> list[Any]:
        """The values the spec gives grid axis ``axis`` (one of the family's ``axis_keys``), as a list."""
        keys = self.family.axis_keys
        if axis not in keys:
            raise KeyError(f"{axis!r} is not a grid axis; axes are {', '.join(keys)}")
        node: Any = self
        for part in keys[axis].split("."):
            node = getattr(node, part)
        return as_list(node)

    @property
    def axes(self) -> tuple[str, ...]:
        """The grid's axes in spec order: the family's knob always, then every other axis of the family that
        has more than one value or is searched (``search.space``). A trial is identified by its value on each."""
        knob, *rest = self.family.axis_keys
        return (knob, *(axis for axis in rest if len(self.values(axis)) > 1 or axis in self.search.space))

    def configs(self) -> list[Any]:
        """Every grid point except the seed, in a stable order: the knob varies slowest, then the other axes
        in the family's axis order, each list in the order the spec gives it."""
        family = self.family
        names = list(family.axis_keys)
        points = itertools.product(*(self.values(a) for a in names))
        return [family.make_config(dict(zip(names, point, strict=True)), self) for point in points]
