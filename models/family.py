"""The model-family interface and registry: everything ``sweep/`` and ``analysis/`` know about a model.

A family is one object, an instance of a :class:`Family` subclass, that declares:

* its name (``model.family`` in a spec), its complexity knob (``C``, ``K``) and what the knob means;
* its spec: a pydantic class derived from :class:`models.spec.CommonSpec` with its own keys and validation,
  and which of them are grid axes (:attr:`Family.axis_keys`, knob first, in spec order);
* its metrics (:class:`MetricInfo`) and how the analysis reads them: the per-trial quantities summarised over
  seeds (:class:`Quantity`), the panels of the complexity figure (:class:`Panel`), the (train, test) curve
  pair, the gap metric, and the threshold rule (:class:`ThresholdRule`: the ResNet's interpolation threshold);
* its trial config (a frozen dataclass: everything that defines a trial except the seed), parameter count and
  relative cost; how S members (one per seed) are trained together (:meth:`Family.trainer`) and what is saved
  per member.

No Ray, no MLflow, no torch at import time: the CLI validates a spec through the registry before anything
heavy is imported. A family object must be picklable: the driver ships it to Ray workers by value, so a family
registered only in the driver process trains on workers too. Families are registered with :func:`register`;
the built-in ones when :mod:`models` is imported.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol


@dataclass(frozen=True)
class MetricInfo:
    """One metric a family's records hold: its key, what it means, its unit ("" for rates) and whether a
    higher value is better (log-likelihoods) or a lower one (errors, losses)."""

    name: str
    meaning: str
    unit: str
    higher_is_better: bool
    label: str = ""  # a short name in sentences ("training error"); the key with spaces when empty

    @property
    def words(self) -> str:
        return self.label or self.name.replace("_", " ")


@dataclass(frozen=True)
class Quantity:
    """A number per trial that the analysis summarises over seeds: the value of ``metric`` at the trial's last
    step (``final``) or its best value over steps (``best``, an oracle: the step is picked on the metric
    itself). ``column`` names it in the tables (``final_train_error``)."""

    column: str
    metric: str
    kind: Literal["final", "best"]
    description: str
    label: str = ""  # in a figure's legend; the description when empty
    note: str = ""  # a paragraph summary.md prints under its table when this column is shown

    @property
    def legend(self) -> str:
        return self.label or self.description


@dataclass(frozen=True)
class Panel:
    """One panel of the complexity figure: the final values of ``metrics`` against the knob, on one y axis."""

    metrics: tuple[str, ...]
    ylabel: str


@dataclass(frozen=True)
class ThresholdRule:
    """The knob value from which every larger one has a mean final ``metric`` below ``below`` (for the ResNet,
    train error below 1%: the interpolation threshold, where the net first fits its training half)."""

    metric: str
    below: float
    name: str = "interpolation threshold"


class TrialConfig(Protocol):
    """What a family's config dataclass provides to the sweep."""

    budget: int
    split_seed: int
    device: str
    dtype: str

    @property
    def eval_interval(self) -> int: ...

    def eval_steps(self) -> list[int]: ...

    def axis_value(self, axis: str) -> object: ...


class Trainer(Protocol):
    """What the Ray trainable drives: S members (one per seed) of one config trained as one computation.

    ``run()`` continues from ``step`` to the budget, yielding a :class:`models.records.Evaluation` at every
    evaluation step; ``state_dict``/``load_state_dict`` continue bit for bit; ``diverged``: seed ->
    (step, reason) of members that stopped; ``ms_per_update``: training wall time per step per member.
    """

    config: Any
    seeds: list[int]
    step: int
    diverged: dict[int, tuple[int, str]]

    @property
    def ms_per_update(self) -> float: ...

    def run(self) -> Iterator[Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def evaluation_steps(interval: int, budget: int) -> list[int]:
    """Steps 1..budget at which a trial is evaluated: every ``interval`` steps, and the last step always (so a
    budget that is no multiple of the interval still ends on an evaluation)."""
    steps = list(range(interval, budget + 1, interval))
    if not steps or steps[-1] != budget:
        steps.append(budget)
    return steps


class Family(ABC):
    """Base class of a model family. A subclass sets the declarations below as class attributes and implements
    the abstract methods; an instance is :func:`register`-ed. See docs/families.md."""

    # -- declarations (class attributes in a subclass) ---------------------------------------------------
    name: str
    display_name: str  # "ResNet", "Bernoulli mixture"
    knob: str  # the complexity knob: first axis, a key under ``model:``
    knob_meaning: str  # "ResNet width", "number of mixture components"
    metrics: tuple[MetricInfo, ...]
    #: Grid axes in spec order, knob first, each mapped to its dotted spec key (``model.C``, ``lr``).
    axis_keys: dict[str, str]
    spec_class: type  # a models.spec.CommonSpec subclass with this family's keys
    budget_unit: str  # what one step is: "update", "epoch", "EM iteration"
    #: Panels of the complexity figure.
    complexity_panels: tuple[Panel, ...]
    #: (train metric, test metric) drawn over steps in curves.png; the test one also in heatmap.png.
    curve_metrics: tuple[str, str]
    #: (metric, column title) of the table ``sweep run`` prints at the end.
    table_metrics: tuple[tuple[str, str], ...]
    #: The metric that is test minus train (or train minus test) of the curve pair, for the gap sentence.
    gap_metric: str | None = None
    #: Metrics measured on a validation split held out of training, logged only by searches and scheduled grids:
    #: the only metrics a search may select on. A family without any cannot be searched.
    validation_metrics: tuple[MetricInfo, ...] = ()
    threshold: ThresholdRule | None = None
    #: One-line "allowed" texts of this family's keys for error messages (dotted key -> text).
    allowed: dict[str, str] = {}

    #: The declarations without a default, checked by :func:`register` (at registration, not at class creation:
    #: a family shipped to Ray workers by value is rebuilt as an empty class that gets its attributes after).
    REQUIRED = ("name", "display_name", "knob", "knob_meaning", "metrics", "axis_keys", "spec_class", "budget_unit",
                "complexity_panels", "curve_metrics", "table_metrics")

    # -- derived ------------------------------------------------------------------------------------------
    @property
    def axes(self) -> tuple[str, ...]:
        return tuple(self.axis_keys)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    def metric(self, name: str) -> MetricInfo:
        for m in (*self.metrics, *self.validation_metrics):
            if m.name == name:
                return m
        raise KeyError(f"family {self.name} has no metric {name!r}; metrics: {', '.join(self.metric_names)}")

    @property
    def quantities(self) -> tuple[Quantity, ...]:
        """What the analysis summarises per grid point: by default every metric's final value."""
        return tuple(Quantity(f"final_{m.name}", m.name, "final", f"final {m.name}") for m in self.metrics)

    def final_quantity(self, metric: str) -> Quantity:
        """The quantity of ``metric``'s final value (``final_gap`` for the ResNet's generalization_gap)."""
        return next(q for q in self.quantities if q.metric == metric and q.kind == "final")

    def final_column(self, metric: str) -> str:
        return self.final_quantity(metric).column

    def describe(self, params: dict[str, Any]) -> str:
        """One line for the MLflow child run's description, from :meth:`member_params`."""
        return (f"{self.display_name} {self.knob}={params[self.knob]} ({params['param_count']} params), "
                f"seed {params['seed']}, {params['budget']} {self.budget_unit}s")

    def weights_name(self, config: Any, seed: int) -> str:
        """``model_C4_seed1.pt``, ``model_K10_seed0.pt``."""
        return f"model_{self.knob}{config.axis_value(self.knob)}_seed{seed}.pt"

    # -- to implement -------------------------------------------------------------------------------------
    @abstractmethod
    def make_config(self, values: dict[str, Any], spec: Any) -> Any:
        """One grid point's config: ``values`` = axis -> value (every axis), ``spec`` the validated spec
        (for the non-axis keys)."""

    @abstractmethod
    def config_from_dict(self, d: dict[str, Any]) -> Any:
        """Inverse of ``dataclasses.asdict(config)`` (the trial's config travels to Ray as a dict)."""

    @abstractmethod
    def param_count(self, config: Any) -> int:
        """Trainable (free) parameters of one member."""

    @abstractmethod
    def relative_cost(self, config: Any) -> float:
        """Rough cost of one member's whole run, any unit consistent within the family (plan ordering)."""

    def pack_cost(self, config: Any, size: int) -> float:
        """Cost of one member's whole run when ``size`` members train as one pack, in :meth:`relative_cost`'s
        unit or any unit consistent within the family: the planner packs seeds by the size where it is least.
        Default: packing neither helps nor hurts, so the planner packs as large as the slots allow."""
        return self.relative_cost(config)

    def code_path(self, config: Any) -> str:
        """Which implementation computes this family's numbers in this process for ``config`` (on its device):
        runs on different paths agree to rounding, not bit for bit. Default: ATen ops only."""
        return "aten"

    @abstractmethod
    def member_params(self, config: Any, seed: int, split_hash: str) -> dict[str, Any]:
        """Every hyperparameter of one member as logged on its MLflow run: must hold the knob, ``seed``,
        every axis, ``budget``, ``eval_every``, ``split_seed``, ``split_hash``, ``model_family``,
        ``param_count`` and ``dtype``."""

    @abstractmethod
    def trainer(self, config: Any, seeds: Sequence[int], arrays: Any = None) -> Trainer:
        """A trainer of ``seeds`` on ``config``; ``arrays``: :func:`models.digits.digits_arrays` when the caller
        has it (Ray workers get it from the object store)."""

    @abstractmethod
    def export(self, trainer: Any, seed: int) -> Any:
        """What is saved (``torch.save``) as one finished member's weights file."""


_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Make ``family`` usable as ``model.family: <family.name>``; returns it. Registering another object
    under a taken name replaces it (a test module re-imported, a family redefined in a notebook)."""
    if not isinstance(family, Family):
        raise TypeError(f"{family!r} is not a models.family.Family")
    missing = [a for a in Family.REQUIRED if a not in dir(family)]
    if missing:
        raise TypeError(f"family class {type(family).__name__} does not declare {', '.join(missing)}")
    if next(iter(family.axis_keys)) != family.knob:
        raise TypeError(f"family {family.name}: the knob {family.knob!r} must be the first of axis_keys")
    _REGISTRY[family.name] = family
    return family


def family_names() -> list[str]:
    """Registered family names, in registration order (built-ins first)."""
    return list(_REGISTRY)


def get_family(name: str) -> Family:
    """The registered family ``name``; KeyError with a one-line message naming the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known families: {', '.join(_REGISTRY)}") from None


__all__ = ["Family", "MetricInfo", "Panel", "Quantity", "ThresholdRule", "Trainer", "TrialConfig",
           "evaluation_steps", "family_names", "get_family", "register"]
