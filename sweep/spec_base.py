"""The keys every sweep spec has, whatever its model family: pydantic, no torch, no family registry.

A family's spec class derives from :class:`CommonSpec` and adds its own ``model:`` section (with
``family: Literal[<name>]`` and its knob), its ``data:`` section, ``budget``, ``eval_every``, ``dtype`` (with
the family's defaults) and any other key it owns; :attr:`CommonSpec.family_name` names the family, whose
``axis_keys`` say which keys are grid axes (:meth:`CommonSpec.axes`).
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

PositiveInt = Annotated[int, Field(gt=0, strict=True)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeInt = Annotated[int, Field(ge=0, strict=True)]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
NAME_MAX_LENGTH = 100


class SpecError(ValueError):
    """A sweep spec, preset, override or file that cannot be used; its message is one line."""


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

    @field_validator("pack", mode="before")
    @classmethod
    def _yaml_off_is_false(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false and `on` as true.
        return {False: "off", True: "auto"}.get(v, v) if isinstance(v, bool) else v

    _seed_grid = field_validator("seeds")(grid_list)

    @property
    def family(self) -> Any:
        """The :class:`models.family.Family` this spec belongs to."""
        from models.family import get_family

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
        has more than one value. A trial is identified by its value on each."""
        knob, *rest = self.family.axis_keys
        return (knob, *(axis for axis in rest if len(self.values(axis)) > 1))

    def configs(self) -> list[Any]:
        """Every grid point except the seed, in a stable order: the knob varies slowest, then the other axes
        in the family's axis order, each list in the order the spec gives it."""
        family = self.family
        names = list(family.axis_keys)
        points = itertools.product(*(self.values(a) for a in names))
        return [family.make_config(dict(zip(names, point, strict=True)), self) for point in points]
