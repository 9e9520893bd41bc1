"""Read one sweep back from MLflow into a tidy table.

The layout is the contract in :mod:`sweep.names`: one parent run per sweep (tags ``sweep_id``,
``sweep.role=parent``, ``sweep.axes`` = JSON list of the grid axes in spec order, ``sweep.knob`` = the model's
complexity knob) and one child run per (grid point, seed) trial (tags ``sweep_id``, ``sweep.role=trial``,
``C``, ``seed``, ``grid_point``; every axis value is a param) whose metrics are logged with ``step`` = SGD
update (handout protocol) or epoch (epochs protocol).

A trial's identity is (the value of every axis, seed). Sweeps written before the axes tag existed are read
as having the axes ``C`` plus every known grid param (:data:`AXIS_ORDER`) whose logged value differs between
their trials, so an old ``lr`` grid is split by ``lr`` rather than pooled.

Only the public :class:`mlflow.MlflowClient` API is used, so any tracking URI works (sqlite, file store,
tracking server).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import mlflow
import pandas as pd
from mlflow.entities import Run, ViewType

from sweep.filters import FilterError, and_, tag_equals
from sweep.names import (
    HARDWARE_IDENTITY,
    METRICS,
    ROLE_PARENT,
    ROLE_TRIAL,
    TAG_AXES,
    TAG_FAILURE,
    TAG_KNOB,
    TAG_ROLE,
    TAG_SWEEP_ID,
    TRIAL_PARAMS,
)

#: Axes in the order the spec lists them, with the type of their values (params are logged as strings).
#: ``K`` is the EM family's knob. An axis not listed here is read as int, else float, else str.
AXIS_TYPES: dict[str, type] = {
    "C": int, "K": int, "protocol": str, "budget": int, "lr": float, "batch_size": int, "eval_every": int,
    "label_noise": float,
}
AXIS_ORDER = tuple(AXIS_TYPES)
_PAGE = 1000  # runs per search_runs page (MLflow's default maximum)

AxisValue = int | float | str
#: A trial's identity: (value of every axis, in axis order; seed).
Identity = tuple[tuple[AxisValue, ...], int]


def metric_columns(axes: Sequence[str]) -> tuple[str, ...]:
    """Columns of :attr:`SweepData.metrics` for a sweep over ``axes``: run_id, the axes, seed, step, metric,
    value (one row per (run, metric, step))."""
    return ("run_id", *axes, "seed", "step", "metric", "value")


#: Columns of :attr:`SweepData.metrics` for a sweep whose only axis is C.
METRIC_COLUMNS = metric_columns(["C"])


def parse_axis_value(axis: str, raw: str | None) -> AxisValue | None:
    """The logged string ``raw`` of ``axis`` as its type (``"4"`` -> 4, ``"0.05"`` -> 0.05); None if missing
    or unparsable. Unknown axes: int if it parses as one, else a finite float, else the string."""
    if raw is None:
        return None
    kind = AXIS_TYPES.get(axis)
    text = str(raw).strip()
    if kind is str:
        return text
    try:
        number = float(text)
    except ValueError:
        return None if kind is not None else text
    if not math.isfinite(number):
        return None if kind is not None else text
    if kind is int or (kind is None and number.is_integer() and "." not in text and "e" not in text.lower()):
        return int(number) if number.is_integer() else None
    return number


def point_text(axes: Sequence[str], values: Sequence[AxisValue | None]) -> str:
    """``C=4 lr=0.05``: the grid-point name of the contract (values printed with ``str()``)."""
    return " ".join(f"{a}={v}" for a, v in zip(axes, values, strict=True))


class SkippedTrialsWarning(UserWarning):
    """Some trials of the sweep were left out of the analysis (failed, unfinished or duplicated)."""


class NoTrialsError(LookupError):
    """The sweep exists but has no finished trial to analyse."""


@dataclass(frozen=True)
class SkippedTrial:
    """A child run left out of the analysis.

    status: the MLflow run status (``FAILED``, ``RUNNING``, ``KILLED``, ... or ``FINISHED`` for a duplicate).
    reason: the run's ``failure_reason`` tag, or why it was skipped.
    """

    run_id: str
    C: int | None
    seed: int | None
    status: str
    reason: str
    #: (axis, value) of every axis of the sweep, in axis order (value None when the run did not log it).
    point: tuple[tuple[str, AxisValue | None], ...] = ()

    def describe(self) -> str:
        """One line such as ``C=4 lr=0.05 seed=2 FAILED: minibatch loss became nan at step 31 (run 1a2b3c4d)``."""
        where = " ".join(f"{a}={v}" for a, v in self.point) if self.point else f"C={self.C}"
        return f"{where} seed={self.seed} {self.status}: {self.reason} (run {self.run_id[:8]})"


@dataclass
class SweepData:
    """One sweep as read from MLflow.

    axes: the grid axes in spec order (``["C"]``, ``["C", "lr"]``, ...), the knob first. knob: the model's
      complexity knob (``C`` for the ResNet).
    metrics: tidy frame with columns ``run_id`` (str), one column per axis (C, budget, batch_size,
      eval_every: int; lr, label_noise: float; protocol: str), ``seed`` (int), ``step`` (int, SGD update or
      epoch), ``metric`` (str, e.g. ``test_error``), ``value`` (float; errors are rates in [0, 1], losses are
      nats); every (run_id, metric, step) appears exactly once, sorted by the axes, seed, metric, step.
    runs: one row per included (finished) trial: ``run_id``, ``run_name``, the axes (typed as above),
      ``seed``, ``status``, ``start_time`` (ms since the epoch), the other trial params of
      :data:`sweep.names.TRIAL_PARAMS` that were logged (as strings), and the tags of
      :data:`sweep.names.HARDWARE_IDENTITY` (None where a run has none).
    skipped: trials left out (failed, unfinished, or superseded duplicates of a (grid point, seed)).
    """

    sweep_id: str
    parent: Run
    experiment_name: str
    tracking_uri: str
    metrics: pd.DataFrame
    runs: pd.DataFrame
    skipped: list[SkippedTrial] = field(default_factory=list)
    axes: list[str] = field(default_factory=lambda: ["C"])
    knob: str = "C"

    @property
    def numeric_axes(self) -> list[str]:
        """The axes whose values are numbers (every axis but ``protocol`` and other string axes)."""
        return [a for a in self.axes if pd.api.types.is_numeric_dtype(self.runs[a])]

    @property
    def failed(self) -> list[SkippedTrial]:
        """The skipped trials whose run status is FAILED."""
        return [s for s in self.skipped if s.status == "FAILED"]

    @property
    def protocol(self) -> str | None:
        """The trials' ``protocol`` param; ``"mixed"`` if they differ; None if it was not logged."""
        if "protocol" not in self.runs or self.runs["protocol"].isna().all():
            return None
        values = set(self.runs["protocol"].dropna())
        return values.pop() if len(values) == 1 else "mixed"

    def param_counts(self) -> dict[int, int]:
        """Knob value -> trainable parameter count, from the logged ``param_count`` param, else (ResNet's
        ``C`` only) from the model."""
        out: dict[int, int] = {}
        knob = self.knob
        if "param_count" in self.runs:
            for c, p in zip(self.runs[knob], self.runs["param_count"], strict=True):
                if isinstance(p, str) and p.isdigit() and int(p) > 0:
                    out[int(c)] = int(p)
        missing = sorted(set(self.runs[knob]) - set(out))
        if missing and knob == "C":
            from models import parameter_count

            out.update({int(c): parameter_count(int(c)) for c in missing})
        return out


def make_client(tracking_uri: str | None) -> mlflow.MlflowClient:
    """A client for ``tracking_uri`` (None: MLflow's current/default tracking URI)."""
    return mlflow.MlflowClient(tracking_uri)


def _experiment_ids(client: mlflow.MlflowClient) -> list[str]:
    ids: list[str] = []
    token = None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=_PAGE, page_token=token)
        ids.extend(e.experiment_id for e in page)
        token = page.token
        if not token:
            return ids


def search_all_runs(
    client: mlflow.MlflowClient,
    experiment_ids: Sequence[str],
    filter_string: str,
    order_by: list[str] | None = None,
    limit: int | None = None,
) -> Iterator[Run]:
    """Every run matching ``filter_string`` (all pages), newest first unless ``order_by`` says otherwise."""
    if not experiment_ids:
        return
    token = None
    seen = 0
    while True:
        page = client.search_runs(
            list(experiment_ids), filter_string, max_results=_PAGE if limit is None else min(_PAGE, limit),
            order_by=order_by or ["attributes.start_time DESC"], page_token=token,
        )
        for run in page:
            yield run
            seen += 1
            if limit is not None and seen >= limit:
                return
        token = page.token
        if not token:
            return


def _parents_filter(sweep_id: str | None = None) -> str:
    try:
        return and_(tag_equals(TAG_ROLE, ROLE_PARENT), "" if sweep_id is None else tag_equals(TAG_SWEEP_ID, sweep_id))
    except FilterError as exc:
        raise LookupError(f"no sweep can have id {sweep_id!r}: {exc}") from None


def list_sweep_ids(client: mlflow.MlflowClient, limit: int = 5) -> list[str]:
    """Sweep ids of the ``limit`` most recently started parent runs across all experiments, newest first."""
    runs = search_all_runs(client, _experiment_ids(client), _parents_filter(), limit=limit)
    return [r.data.tags.get(TAG_SWEEP_ID, r.info.run_name or r.info.run_id) for r in runs]


def find_parent_run(client: mlflow.MlflowClient, sweep_id: str | None = None) -> Run:
    """The parent run of ``sweep_id``, or of the most recently started sweep when ``sweep_id`` is None.

    Raises LookupError (one line, listing a few known sweep ids) when there is no such sweep.
    """
    uri = client.tracking_uri
    experiment_ids = _experiment_ids(client)
    limit = None if sweep_id else 1
    parents = list(search_all_runs(client, experiment_ids, _parents_filter(sweep_id), limit=limit))
    if parents:
        if len(parents) > 1:
            warnings.warn(
                f"{len(parents)} parent runs carry sweep_id {sweep_id!r}; using the newest, "
                f"{parents[0].info.run_id}", SkippedTrialsWarning, stacklevel=2,
            )
        return parents[0]
    known = list_sweep_ids(client, limit=5)
    if not known:
        raise LookupError(f"no sweep is recorded at {uri} (no run has tag {TAG_ROLE}={ROLE_PARENT})")
    raise LookupError(f"no sweep with id {sweep_id!r} at {uri}; recent sweep ids: {', '.join(known)}")


def _int_or_none(*candidates: str | None) -> int | None:
    for c in candidates:
        try:
            return int(str(c))
        except (TypeError, ValueError):
            continue
    return None


def _history(client: mlflow.MlflowClient, run_id: str, key: str) -> list[tuple[int, float, int]]:
    """(step, value, timestamp) of every logged point. ``MlflowClient.get_metric_history`` follows the store's
    page tokens itself, so this is the full history, however long."""
    return [(int(m.step), float(m.value), int(m.timestamp)) for m in client.get_metric_history(run_id, key)]


def _metric_frame(
    client: mlflow.MlflowClient,
    trials: Iterable[tuple[Run, tuple[AxisValue, ...], int]],
    metrics: Sequence[str] | None,
    axes: Sequence[str],
) -> pd.DataFrame:
    """Tidy (run_id, *axes, seed, step, metric, value) frame of the trials' full metric histories."""
    rows: list[tuple[object, ...]] = []
    for run, values, seed in trials:
        keys = sorted(run.data.metrics) if metrics is None else [k for k in metrics if k in run.data.metrics]
        for key in keys:
            history = _history(client, run.info.run_id, key)
            rows.extend((run.info.run_id, *values, seed, s, key, v, t) for s, v, t in history)
    frame = pd.DataFrame(rows, columns=[*metric_columns(axes), "timestamp"])
    # A trial restored from a checkpoint may log a step again: keep the value logged last.
    frame = frame.sort_values(["run_id", "metric", "step", "timestamp"], kind="stable")
    frame = frame.drop_duplicates(["run_id", "metric", "step"], keep="last").drop(columns="timestamp")
    frame = _typed(frame.astype({"run_id": str, "seed": int, "step": int, "metric": str, "value": float}), axes)
    order = [*axes, "seed", "run_id", "metric", "step"]
    return frame.sort_values(order, kind="stable").reset_index(drop=True)


def sweep_axes(parent: Run, children: Sequence[Run]) -> tuple[list[str], str]:
    """(axes, knob) of a sweep: the parent's ``sweep.axes`` (JSON list) and ``sweep.knob`` tags.

    Without the tags (sweeps recorded before them): knob ``C``, axes ``C`` plus every param of
    :data:`AXIS_ORDER` whose logged value differs between the children, in that order. Raises LookupError
    (one line) for a ``sweep.axes`` tag that is not a JSON list of names.
    """
    tags = parent.data.tags
    raw = tags.get(TAG_AXES)
    if raw is not None:
        try:
            axes = json.loads(raw)
        except json.JSONDecodeError:
            axes = None
        if not isinstance(axes, list) or not axes or not all(isinstance(a, str) and a for a in axes):
            raise LookupError(f"parent run {parent.info.run_id}: tag {TAG_AXES}={raw!r} is not a JSON list of axis "
                              "names")
        knob = tags.get(TAG_KNOB, axes[0])
        if knob not in axes:
            axes = [knob, *axes]
        return list(dict.fromkeys(axes)), knob
    knob = tags.get(TAG_KNOB, "C")
    axes = [knob]
    for name in AXIS_ORDER:
        if name == knob:
            continue
        values = {r.data.params[name] for r in children if name in r.data.params}
        if len(values) > 1:
            axes.append(name)
    return axes, knob


def _axis_value(run: Run, axis: str) -> AxisValue | None:
    """The run's value of ``axis``: its param, else its tag (``C`` is also a tag)."""
    params, tags = run.data.params, run.data.tags
    return parse_axis_value(axis, params.get(axis, tags.get(axis)))


def load_sweep(
    sweep_id: str | None = None,
    tracking_uri: str | None = None,
    *,
    metrics: Sequence[str] | None = METRICS,
    client: mlflow.MlflowClient | None = None,
) -> SweepData:
    """Load one sweep: its parent run, its axes, and the full metric histories of its finished trials.

    sweep_id: the ``sweep_id`` tag; None picks the most recently started sweep across all experiments.
    tracking_uri: any MLflow tracking URI (None: MLflow's default). metrics: metric keys to load (None: every
    key each run logged; keys a run did not log are left out). Trials that did not finish (FAILED, KILLED,
    RUNNING, ...) are skipped with one :class:`SkippedTrialsWarning` naming them (grid point, seed,
    failure_reason) and listed in ``SweepData.skipped``; if two finished runs share an identity (every axis
    value and the seed), the newer one is kept. Raises LookupError for an unknown sweep and
    :class:`NoTrialsError` (a LookupError) when no trial finished.
    """
    client = client or make_client(tracking_uri)
    parent = find_parent_run(client, sweep_id)
    sweep_id = parent.data.tags.get(TAG_SWEEP_ID, sweep_id)
    assert sweep_id is not None
    children_filter = and_(tag_equals(TAG_SWEEP_ID, sweep_id), tag_equals(TAG_ROLE, ROLE_TRIAL))
    children = list(search_all_runs(client, _experiment_ids(client), children_filter))
    axes, knob = sweep_axes(parent, children)

    kept: dict[Identity, Run] = {}
    skipped: list[SkippedTrial] = []
    for run in children:  # newest first
        tags = run.data.tags
        values = tuple(_axis_value(run, a) for a in axes)
        c = _int_or_none(tags.get("C"), run.data.params.get("C"))
        seed = _int_or_none(tags.get("seed"), run.data.params.get("seed"))
        point = tuple(zip(axes, values, strict=True))
        status = run.info.status
        missing = [a for a, v in point if v is None] + ([] if seed is not None else ["seed"])
        if status != "FINISHED" or missing:
            reason = tags.get(TAG_FAILURE) or (
                f"run status {status}" if status != "FINISHED" else f"no {'/'.join(missing)} param or tag"
            )
            skipped.append(SkippedTrial(run.info.run_id, c, seed, status, reason, point))
            continue
        assert seed is not None
        identity = (values, seed)
        if identity in kept:
            newer = kept[identity].info.run_id
            skipped.append(SkippedTrial(run.info.run_id, c, seed, status, f"superseded by newer run {newer}",
                                        point))
        else:
            kept[identity] = run
    skipped.sort(key=lambda s: (tuple(_sort_key(v) for _, v in s.point), s.seed if s.seed is not None else -1))
    if skipped:
        warnings.warn(
            f"sweep {sweep_id}: skipped {len(skipped)} trial(s): " + "; ".join(s.describe() for s in skipped),
            SkippedTrialsWarning, stacklevel=2,
        )
    if not kept:
        raise NoTrialsError(
            f"sweep {sweep_id} has no finished trial ({len(children)} trial run(s), {len(skipped)} skipped)"
        )

    order = sorted(kept, key=lambda k: (tuple(_sort_key(v) for v in k[0]), k[1]))
    trials = [(kept[k], k[0], k[1]) for k in order]
    run_rows = []
    for run, values, seed in trials:
        row: dict[str, object] = {"run_id": run.info.run_id, "run_name": run.info.run_name,
                                  **dict(zip(axes, values, strict=True)), "seed": seed,
                                  "status": run.info.status, "start_time": run.info.start_time}
        row.update({p: run.data.params.get(p) for p in TRIAL_PARAMS
                    if p not in axes and p != "seed"})
        row.update({tag: run.data.tags.get(tag) for tag in HARDWARE_IDENTITY})
        run_rows.append(row)
    experiment = client.get_experiment(parent.info.experiment_id)
    return SweepData(
        sweep_id=sweep_id,
        parent=parent,
        experiment_name=experiment.name if experiment else parent.info.experiment_id,
        tracking_uri=client.tracking_uri,
        metrics=_metric_frame(client, trials, metrics, axes),
        runs=_typed(pd.DataFrame(run_rows), axes),
        skipped=skipped,
        axes=axes,
        knob=knob,
    )


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
        kind = AXIS_TYPES.get(a)
        values = frame[a].tolist()
        if kind is int or (kind is None and all(isinstance(v, int) for v in values)):
            frame[a] = frame[a].astype("int64")
        elif kind is float or (kind is None and all(isinstance(v, int | float) for v in values)):
            frame[a] = frame[a].astype("float64")
        else:
            frame[a] = frame[a].astype(str)
    return frame
