"""Read one sweep back from MLflow into tidy tables (the layout is :mod:`record`'s).

A trial's identity is (the value of every axis, seed). Sweeps written before the ``sweep.axes`` tag existed
are read as having the knob plus every axis of their family whose logged value differs between their trials,
so an old ``lr`` grid is split by ``lr`` rather than pooled. Only the public :class:`mlflow.MlflowClient` API is
used, so any tracking URI works (sqlite, file store, tracking server).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run

from models.family import Family, get_family
from record import (
    HARDWARE_IDENTITY,
    TAG_AXES,
    TAG_FAILURE,
    TAG_FAMILY,
    TAG_KNOB,
    TAG_REFINE_ORDER,
    TAG_REFINE_REASON,
    TAG_SEED,
    TAG_SWEEP_ID,
    find_parent_run,
    search_all_runs,
    trials_of,
)

REFINE_TAGS = (TAG_REFINE_ORDER, TAG_REFINE_REASON)
AxisValue = int | float | str
#: A trial's identity: (value of every axis, in axis order; seed).
Identity = tuple[tuple[AxisValue, ...], int]


def metric_columns(axes: Sequence[str]) -> tuple[str, ...]:
    """Columns of :attr:`SweepData.metrics` for a sweep over ``axes``: run_id, the axes, seed, step, metric,
    value (one row per (run, metric, step))."""
    return ("run_id", *axes, "seed", "step", "metric", "value")


def parse_axis_value(raw: str | None) -> AxisValue | None:
    """A logged param as the value it was (params are strings): ``"4"`` -> 4, ``"0.05"`` -> 0.05, ``"handout"``
    -> ``"handout"``; None when missing. An axis's column is made one type by :func:`_typed` (an ``lr`` of 1
    among 0.5 is 1.0)."""
    if raw is None:
        return None
    text = str(raw).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    if number.is_integer() and "." not in text and "e" not in text.lower():
        return int(number)
    return number


class SkippedTrialsWarning(UserWarning):
    """Some trials of the sweep were left out of the analysis (failed, unfinished or duplicated)."""


class NoTrialsError(LookupError):
    """The sweep exists but has no finished trial to analyse."""


@dataclass(frozen=True)
class SkippedTrial:
    """A child run left out of the analysis.

    status: the MLflow run status (``FAILED``, ``RUNNING``, ``KILLED``, ... or ``FINISHED`` for a duplicate).
    reason: the run's ``failure_reason`` tag, or why it was skipped. point: (axis, value) of every axis of the
    sweep, in axis order (value None when the run did not log it).
    """

    run_id: str
    seed: int | None
    status: str
    reason: str
    point: tuple[tuple[str, AxisValue | None], ...] = ()

    @property
    def C(self) -> AxisValue | None:  # noqa: N802 - the knob's value, named as the ResNet's tests and docs do
        return self.point[0][1] if self.point else None

    def describe(self) -> str:
        """One line such as ``C=4 lr=0.05 seed=2 FAILED: minibatch loss became nan at step 31 (run 1a2b3c4d)``."""
        where = " ".join(f"{a}={v}" for a, v in self.point)
        return f"{where} seed={self.seed} {self.status}: {self.reason} (run {self.run_id[:8]})"


@dataclass
class SweepData:
    """One sweep as read from MLflow.

    axes: the axes in spec order, the knob first. metrics: tidy frame, columns ``run_id``, one per axis, ``seed``,
    ``step`` (the family's budget unit), ``metric``, ``value``; every (run_id, metric, step) once, sorted by the
    axes, seed, metric, step. runs: one row per included (finished) trial: ``run_id``, ``run_name``, the axes,
    ``seed``, ``status``, ``start_time`` (ms since the epoch), its other params (as logged, strings) and the tags
    of :data:`record.HARDWARE_IDENTITY` and a refine search's order and reason (None where a run has none).
    skipped: trials left out (failed, unfinished, or superseded duplicates of a (grid point, seed)).
    """

    sweep_id: str
    parent: Run
    experiment_name: str
    tracking_uri: str
    metrics: pd.DataFrame
    runs: pd.DataFrame
    family: Family
    skipped: list[SkippedTrial] = field(default_factory=list)
    axes: list[str] = field(default_factory=lambda: ["C"])

    @property
    def knob(self) -> str:
        return self.family.knob

    @property
    def numeric_axes(self) -> list[str]:
        """The axes whose values are numbers (every axis but ``protocol`` and other string axes)."""
        return [a for a in self.axes if pd.api.types.is_numeric_dtype(self.runs[a])]

    @property
    def failed(self) -> list[SkippedTrial]:
        return [s for s in self.skipped if s.status == "FAILED"]

    @property
    def protocol(self) -> str | None:
        """The trials' ``protocol`` param; ``"mixed"`` if they differ; None if it was not logged."""
        if "protocol" not in self.runs or self.runs["protocol"].isna().all():
            return None
        values = set(self.runs["protocol"].dropna())
        return values.pop() if len(values) == 1 else "mixed"

    def param_counts(self) -> dict[int, int]:
        """Knob value -> trainable parameter count, from the runs' ``param_count`` param."""
        if "param_count" not in self.runs:
            return {}
        return {int(k): int(p) for k, p in zip(self.runs[self.knob], self.runs["param_count"], strict=True)
                if isinstance(p, str) and p.isdigit()}


def sweep_family(parent: Run) -> Family:
    """The family of a sweep (its ``sweep.family`` tag; sweeps made before families are the ResNet's)."""
    name = parent.data.tags.get(TAG_FAMILY, "resnet")
    try:
        return get_family(name)
    except KeyError as exc:
        raise LookupError(f"sweep {parent.data.tags.get(TAG_SWEEP_ID)} is of family {name!r}, which is not "
                          f"registered in this process ({exc.args[0]})") from None


def sweep_axes(parent: Run, children: Sequence[Run]) -> list[str]:
    """The axes of a sweep: the parent's ``sweep.axes`` (JSON list), the knob first. Without the tag (sweeps
    recorded before it): the knob plus every axis of the family whose logged value differs between the children.
    LookupError (one line) for a tag that is not a JSON list of names."""
    family = sweep_family(parent)
    knob = parent.data.tags.get(TAG_KNOB, family.knob)
    raw = parent.data.tags.get(TAG_AXES)
    if raw is None:
        return [knob, *(a for a in family.axes if a != knob
                        and len({r.data.params[a] for r in children if a in r.data.params}) > 1)]
    try:
        axes = json.loads(raw)
    except json.JSONDecodeError:
        axes = None
    if not isinstance(axes, list) or not axes or not all(isinstance(a, str) and a for a in axes):
        raise LookupError(f"parent run {parent.info.run_id}: tag {TAG_AXES}={raw!r} is not a JSON list of axis names")
    return list(dict.fromkeys([knob, *axes]))


def load_sweep(sweep_id: str | None = None, tracking_uri: str | None = None, *,
               metrics: Sequence[str] | None = None, client: MlflowClient | None = None) -> SweepData:
    """Load one sweep: its parent run, its axes, and the full metric histories of its finished trials.

    sweep_id: the ``sweep_id`` tag; None picks the most recently started sweep across all experiments.
    metrics: metric keys to load (None: the family's metrics). Trials that did not finish (FAILED, KILLED,
    RUNNING, ...) are skipped with one :class:`SkippedTrialsWarning` naming them and listed in
    ``SweepData.skipped``; of two finished runs with one identity the newer is kept. Raises LookupError for an
    unknown sweep and :class:`NoTrialsError` (a LookupError) when no trial finished.
    """
    client = client or MlflowClient(tracking_uri)
    parent = find_parent_run(client, sweep_id)
    sweep_id = parent.data.tags[TAG_SWEEP_ID]
    family = sweep_family(parent)
    children = list(search_all_runs(client, [parent.info.experiment_id], trials_of(sweep_id)))
    axes = sweep_axes(parent, children)
    kept, skipped = _pick_trials(children, axes)
    if skipped:
        warnings.warn(f"sweep {sweep_id}: skipped {len(skipped)} trial(s): "
                      + "; ".join(s.describe() for s in skipped), SkippedTrialsWarning, stacklevel=2)
    if not kept:
        raise NoTrialsError(f"sweep {sweep_id} has no finished trial ({len(children)} trial run(s), "
                            f"{len(skipped)} skipped)")
    trials = [(kept[k], k[0], k[1]) for k in sorted(kept, key=lambda k: (tuple(map(_sort_key, k[0])), k[1]))]
    run_rows = [{"run_id": run.info.run_id, "run_name": run.info.run_name, **dict(zip(axes, values, strict=True)),
                 "seed": seed, "status": run.info.status, "start_time": run.info.start_time,
                 **{p: v for p, v in run.data.params.items() if p not in axes and p != "seed"},
                 **{tag: run.data.tags.get(tag) for tag in (*HARDWARE_IDENTITY, *REFINE_TAGS)}}
                for run, values, seed in trials]
    experiment = client.get_experiment(parent.info.experiment_id)
    return SweepData(
        sweep_id=sweep_id, parent=parent, family=family, axes=axes, skipped=skipped,
        experiment_name=experiment.name if experiment else parent.info.experiment_id,
        tracking_uri=client.tracking_uri, runs=_typed(pd.DataFrame(run_rows), axes),
        metrics=_metric_frame(client, trials, family.metric_names if metrics is None else metrics, axes),
    )


def _pick_trials(children: Iterable[Run], axes: Sequence[str]) -> tuple[dict[Identity, Run], list[SkippedTrial]]:
    """The finished run of every identity (newest first: a newer duplicate supersedes), and those skipped."""
    kept: dict[Identity, Run] = {}
    skipped: list[SkippedTrial] = []
    for run in children:  # newest first
        values = tuple(parse_axis_value(run.data.params.get(a, run.data.tags.get(a))) for a in axes)
        raw_seed = run.data.tags.get(TAG_SEED, run.data.params.get("seed"))
        seed = int(raw_seed) if raw_seed is not None and str(raw_seed).isdigit() else None
        point = tuple(zip(axes, values, strict=True))
        status = run.info.status
        missing = [a for a, v in point if v is None] + ([] if seed is not None else ["seed"])
        if status != "FINISHED" or missing:
            reason = run.data.tags.get(TAG_FAILURE) or (
                f"run status {status}" if status != "FINISHED" else f"no {'/'.join(missing)} param or tag")
            skipped.append(SkippedTrial(run.info.run_id, seed, status, reason, point))
        elif (values, seed) in kept:
            newer = kept[(values, seed)].info.run_id
            skipped.append(SkippedTrial(run.info.run_id, seed, status, f"superseded by newer run {newer}", point))
        else:
            kept[(values, seed)] = run  # type: ignore[index]
    skipped.sort(key=lambda s: (tuple(_sort_key(v) for _, v in s.point), s.seed if s.seed is not None else -1))
    return kept, skipped


def _metric_frame(client: MlflowClient, trials: Iterable[tuple[Run, tuple[AxisValue, ...], int]],
                  metrics: Sequence[str], axes: Sequence[str]) -> pd.DataFrame:
    """Tidy (run_id, *axes, seed, step, metric, value) frame of the trials' full metric histories.
    ``MlflowClient.get_metric_history`` follows the store's page tokens itself, so a history is whole."""
    rows: list[tuple[object, ...]] = []
    for run, values, seed in trials:
        for key in (k for k in metrics if k in run.data.metrics):
            rows.extend((run.info.run_id, *values, seed, int(m.step), key, float(m.value), int(m.timestamp))
                        for m in client.get_metric_history(run.info.run_id, key))
    frame = pd.DataFrame(rows, columns=[*metric_columns(axes), "timestamp"])
    # A trial restored from a checkpoint may log a step again: keep the value logged last.
    frame = frame.sort_values(["run_id", "metric", "step", "timestamp"], kind="stable")
    frame = frame.drop_duplicates(["run_id", "metric", "step"], keep="last").drop(columns="timestamp")
    frame = _typed(frame.astype({"run_id": str, "seed": int, "step": int, "metric": str, "value": float}), axes)
    return frame.sort_values([*axes, "seed", "run_id", "metric", "step"], kind="stable").reset_index(drop=True)


def _sort_key(value: AxisValue | None) -> tuple[int, float, str]:
    """Numbers in numeric order, then strings, then missing values (values of one axis share a type)."""
    if value is None:
        return (2, 0.0, "")
    if isinstance(value, str):
        return (1, 0.0, value)
    return (0, float(value), "")


def _typed(frame: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """Axis columns as int64 / float64 / str (object) so numeric axes compare and sort as numbers."""
    for a in axes:
        values = frame[a].tolist()
        if all(isinstance(v, int) for v in values):
            frame[a] = frame[a].astype("int64")
        elif all(isinstance(v, int | float) for v in values):
            frame[a] = frame[a].astype("float64")
        else:
            frame[a] = frame[a].astype(str)
    return frame
