"""The model-family interface and registry: what ``sweep/`` and ``analysis/`` need to know about a model.

A family is one object (an instance of a :class:`Family` subclass) that declares:

* its name (``model.family`` in a spec), its complexity knob (``C``, ``K``) and what the knob means;
* its spec: a pydantic class derived from :class:`sweep.spec_base.CommonSpec` holding its own keys, with
  validation, and which of them are grid axes (:attr:`Family.axes`, knob first, spec order);
* its metrics (:class:`MetricInfo`: name, meaning, unit, direction) and which of them the analysis draws;
* its default budget, budget unit, evaluation cadence and dtype (as its spec's defaults);
* its trial config (a frozen dataclass: everything that defines a trial except the seed), parameter count and
  relative cost;
* how S members (one per seed) are trained together (:meth:`Family.trainer`) and what is saved per member.

No Ray, no MLflow, no torch at import time: the CLI validates a spec through the registry before anything
heavy is imported. Families are registered with :func:`register`; the built-in ones (``resnet``,
``bernoulli_mixture``) when :mod:`models` is imported. A family object must be picklable: the driver ships it
to Ray workers by value (``tune.with_parameters``), so a family registered only in the driver process works.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol


@dataclass(frozen=True)
class MetricInfo:
    """One metric a family's records hold: its key, what it means, its unit ("" for rates) and whether a
    higher value is better (log-likelihoods) or a lower one (errors, losses)."""

    name: str
    meaning: str
    unit: str
    higher_is_better: bool


class TrialConfig(Protocol):
    """What a family's config dataclass provides to the sweep (see ``sweep.config.TrainConfig``)."""

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

    ``run()`` continues from ``step`` to the budget, yielding a :class:`sweep.records.Evaluation` at every
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


class Family:
    """Base class of a model family; subclass it, fill the class attributes, implement the methods marked
    so, and :func:`register` an instance. See README "How to add a model family in one file"."""

    name: ClassVar[str]
    display_name: ClassVar[str]  # "ResNet", "Bernoulli mixture"
    knob: ClassVar[str]  # the complexity knob: first axis, a key under ``model:``
    knob_meaning: ClassVar[str]  # "ResNet width", "number of mixture components"
    metrics: ClassVar[tuple[MetricInfo, ...]]
    #: Metrics measured on a validation split held out of training, logged only by search sweeps and
    #: sweeps with a scheduler (issue 14); the only metrics a search may select on. A family without any
    #: cannot be searched.
    validation_metrics: ClassVar[tuple[MetricInfo, ...]] = ()
    #: Panels of the complexity figure: each a tuple of metric keys drawn against the knob.
    complexity_panels: ClassVar[tuple[tuple[str, ...], ...]]
    #: (train metric, test metric) drawn over steps in curves.png; the test one also in heatmap.png.
    curve_metrics: ClassVar[tuple[str, str]]
    #: (metric, column title) of the table ``sweep run`` prints at the end.
    table_metrics: ClassVar[tuple[tuple[str, str], ...]]
    budget_unit: ClassVar[str]  # what one step is: "update", "epoch", "EM iteration"
    #: Which report ``sweep analyze`` writes: ``"generic"`` (every declared metric, panels as declared) or
    #: ``"classifier_errors"`` (train/test error and gap with per-line interpolation thresholds and the
    #: best-step oracle; needs the metrics train_error, test_error, generalization_gap).
    report: ClassVar[str] = "generic"
    #: Grid axes in spec order, knob first, each mapped to its dotted spec key (``model.C``, ``lr``).
    axis_keys: ClassVar[dict[str, str]]
    spec_class: ClassVar[type]  # a sweep.spec_base.CommonSpec subclass with this family's keys
    #: One-line "allowed" texts of this family's keys for error messages (dotted key -> text).
    allowed: ClassVar[dict[str, str]] = {}

    @property
    def axes(self) -> tuple[str, ...]:
        return tuple(self.axis_keys)

    def metric(self, name: str) -> MetricInfo:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"family {self.name} has no metric {name!r}; metrics: {', '.join(self.metric_names)}")

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    # -- to implement -------------------------------------------------------------------------------------
    def make_config(self, values: dict[str, Any], spec: Any) -> Any:
        """One grid point's config: ``values`` = axis -> value (every axis), ``spec`` the validated spec
        (for the non-axis keys)."""
        raise NotImplementedError

    def config_from_dict(self, d: dict[str, Any]) -> Any:
        """Inverse of ``dataclasses.asdict(config)`` (the trial's config travels to Ray as a dict)."""
        raise NotImplementedError

    def param_count(self, config: Any) -> int:
        raise NotImplementedError

    def relative_cost(self, config: Any) -> float:
        """Rough cost of one member's whole run, any unit consistent within the family (plan ordering)."""
        raise NotImplementedError

    def member_params(self, config: Any, seed: int, split_hash: str) -> dict[str, Any]:
        """Every hyperparameter of one member as logged on its MLflow run: must hold the knob, ``seed``,
        every axis, ``budget``, ``eval_every``, ``split_seed``, ``split_hash``, ``model_family``,
        ``param_count`` and ``dtype``."""
        raise NotImplementedError

    def describe(self, params: dict[str, Any]) -> str:
        """One line for the MLflow child run's description, from :meth:`member_params`."""
        return (f"{self.display_name} {self.knob}={params[self.knob]} ({params['param_count']} params), "
                f"seed {params['seed']}, {params['budget']} {self.budget_unit}s")

    def trainer(self, config: Any, seeds: Sequence[int], arrays: Any = None) -> Trainer:
        """A trainer of ``seeds`` on ``config``; ``arrays``: ``sweep.data.digits_arrays()`` when the caller
        has it (Ray workers get it from the object store)."""
        raise NotImplementedError

    def export(self, trainer: Any, seed: int) -> Any:
        """What is saved (``torch.save``) as one finished member's weights file."""
        raise NotImplementedError

    def weights_name(self, config: Any, seed: int) -> str:
        """``model_C4_seed1.pt``, ``model_K10_seed0.pt``."""
        return f"model_{self.knob}{config.axis_value(self.knob)}_seed{seed}.pt"


_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Make ``family`` usable as ``model.family: <family.name>``; returns it. Registering another object
    under a taken name replaces it (a test module re-imported, a family redefined in a notebook)."""
    for attr in ("name", "knob", "metrics", "axis_keys", "spec_class", "curve_metrics", "complexity_panels"):
        if not hasattr(family, attr):
            raise TypeError(f"family {family!r} lacks {attr!r}")
    if next(iter(family.axis_keys)) != family.knob:
        raise ValueError(f"family {family.name}: the knob {family.knob!r} must be the first axis")
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


__all__ = ["Family", "MetricInfo", "Trainer", "TrialConfig", "family_names", "get_family", "register"]
