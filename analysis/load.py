"""Read one sweep back from MLflow into a tidy table.

The layout is the contract in :mod:`sweep.names`: one parent run per sweep (tags ``sweep_id`` and
``sweep.role=parent``) and one child run per (C, seed) trial (tags ``sweep_id``, ``sweep.role=trial``, ``C``,
``seed``) whose metrics are logged with ``step`` = SGD update (handout protocol) or epoch (epochs protocol).

Only the public :class:`mlflow.MlflowClient` API is used, so any tracking URI works (sqlite, file store,
tracking server).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import mlflow
import pandas as pd
from mlflow.entities import Run, ViewType

from sweep.filters import FilterError, and_, tag_equals
from sweep.names import (
    METRICS,
    ROLE_PARENT,
    ROLE_TRIAL,
    TAG_FAILURE,
    TAG_ROLE,
    TAG_SWEEP_ID,
    TRIAL_PARAMS,
)

#: Columns of :attr:`SweepData.metrics`, one row per (run, metric, step).
METRIC_COLUMNS = ("run_id", "C", "seed", "step", "metric", "value")
_PAGE = 1000  # runs per search_runs page (MLflow's default maximum)


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

    def describe(self) -> str:
        """One line such as ``C=4 seed=2 FAILED: minibatch loss became nan at step 31 (run 1a2b3c4d)``."""
        return f"C={self.C} seed={self.seed} {self.status}: {self.reason} (run {self.run_id[:8]})"


@dataclass
class SweepData:
    """One sweep as read from MLflow.

    metrics: tidy frame with columns ``run_id`` (str), ``C`` (int), ``seed`` (int), ``step`` (int, SGD update
      or epoch), ``metric`` (str, e.g. ``test_error``), ``value`` (float; errors are rates in [0, 1], losses
      are nats); every (run_id, metric, step) appears exactly once, sorted by C, seed, metric, step.
    runs: one row per included (finished) trial: ``run_id``, ``run_name``, ``C``, ``seed``, ``status``,
      ``start_time`` (ms since the epoch) and the trial params of :data:`sweep.names.TRIAL_PARAMS` that were
      logged (as strings).
    skipped: trials left out (failed, unfinished, or superseded duplicates of a (C, seed)).
    """

    sweep_id: str
    parent: Run
    experiment_name: str
    tracking_uri: str
    metrics: pd.DataFrame
    runs: pd.DataFrame
    skipped: list[SkippedTrial] = field(default_factory=list)

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
        """C -> trainable parameter count, from the logged ``param_count`` param, else from the model."""
        out: dict[int, int] = {}
        if "param_count" in self.runs:
            for c, p in zip(self.runs["C"], self.runs["param_count"], strict=True):
                if isinstance(p, str) and p.isdigit() and int(p) > 0:
                    out[int(c)] = int(p)
        missing = sorted(set(self.runs["C"]) - set(out))
        if missing:
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


def _search_runs(
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
    runs = _search_runs(client, _experiment_ids(client), _parents_filter(), limit=limit)
    return [r.data.tags.get(TAG_SWEEP_ID, r.info.run_name or r.info.run_id) for r in runs]


def find_parent_run(client: mlflow.MlflowClient, sweep_id: str | None = None) -> Run:
    """The parent run of ``sweep_id``, or of the most recently started sweep when ``sweep_id`` is None.

    Raises LookupError (one line, listing a few known sweep ids) when there is no such sweep.
    """
    uri = client.tracking_uri
    experiment_ids = _experiment_ids(client)
    limit = None if sweep_id else 1
    parents = list(_search_runs(client, experiment_ids, _parents_filter(sweep_id), limit=limit))
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
    client: mlflow.MlflowClient, trials: Iterable[tuple[Run, int, int]], metrics: Sequence[str] | None
) -> pd.DataFrame:
    rows: list[tuple[str, int, int, int, str, float, int]] = []
    for run, c, seed in trials:
        keys = sorted(run.data.metrics) if metrics is None else [k for k in metrics if k in run.data.metrics]
        for key in keys:
            history = _history(client, run.info.run_id, key)
            rows.extend((run.info.run_id, c, seed, s, key, v, t) for s, v, t in history)
    frame = pd.DataFrame(rows, columns=[*METRIC_COLUMNS, "timestamp"])
    # A trial restored from a checkpoint may log a step again: keep the value logged last.
    frame = frame.sort_values(["run_id", "metric", "step", "timestamp"], kind="stable")
    frame = frame.drop_duplicates(["run_id", "metric", "step"], keep="last").drop(columns="timestamp")
    frame = frame.astype({"run_id": str, "C": int, "seed": int, "step": int, "metric": str, "value": float})
    return frame.sort_values(["C", "seed", "run_id", "metric", "step"], kind="stable").reset_index(drop=True)


def load_sweep(
    sweep_id: str | None = None,
    tracking_uri: str | None = None,
    *,
    metrics: Sequence[str] | None = METRICS,
    client: mlflow.MlflowClient | None = None,
) -> SweepData:
    """Load one sweep: its parent run, and the full metric histories of its finished trials.

    sweep_id: the ``sweep_id`` tag; None picks the most recently started sweep across all experiments.
    tracking_uri: any MLflow tracking URI (None: MLflow's default). metrics: metric keys to load (None: every
    key each run logged). Trials that did not finish (FAILED, KILLED, RUNNING, ...) are skipped with one
    :class:`SkippedTrialsWarning` naming them (C, seed, failure_reason) and listed in ``SweepData.skipped``;
    if two finished runs share a (C, seed), the newer one is kept. Raises LookupError for an unknown sweep and
    :class:`NoTrialsError` (a LookupError) when no trial finished.
    """
    client = client or make_client(tracking_uri)
    parent = find_parent_run(client, sweep_id)
    sweep_id = parent.data.tags.get(TAG_SWEEP_ID, sweep_id)
    assert sweep_id is not None
    children_filter = and_(tag_equals(TAG_SWEEP_ID, sweep_id), tag_equals(TAG_ROLE, ROLE_TRIAL))
    children = list(_search_runs(client, _experiment_ids(client), children_filter))

    kept: dict[tuple[int, int], Run] = {}
    skipped: list[SkippedTrial] = []
    for run in children:  # newest first
        tags, params = run.data.tags, run.data.params
        c = _int_or_none(tags.get("C"), params.get("C"))
        seed = _int_or_none(tags.get("seed"), params.get("seed"))
        status = run.info.status
        if status != "FINISHED" or c is None or seed is None:
            reason = tags.get(TAG_FAILURE) or (
                f"run status {status}" if status != "FINISHED" else "no C/seed tag or param"
            )
            skipped.append(SkippedTrial(run.info.run_id, c, seed, status, reason))
        elif (c, seed) in kept:
            newer = kept[(c, seed)].info.run_id
            skipped.append(SkippedTrial(run.info.run_id, c, seed, status, f"superseded by newer run {newer}"))
        else:
            kept[(c, seed)] = run
    skipped.sort(key=lambda s: (s.C if s.C is not None else -1, s.seed if s.seed is not None else -1))
    if skipped:
        warnings.warn(
            f"sweep {sweep_id}: skipped {len(skipped)} trial(s): " + "; ".join(s.describe() for s in skipped),
            SkippedTrialsWarning, stacklevel=2,
        )
    if not kept:
        raise NoTrialsError(
            f"sweep {sweep_id} has no finished trial ({len(children)} trial run(s), {len(skipped)} skipped)"
        )

    trials = [(kept[k], *k) for k in sorted(kept)]
    run_rows = []
    for run, c, seed in trials:
        row = {"run_id": run.info.run_id, "run_name": run.info.run_name, "C": c, "seed": seed,
               "status": run.info.status, "start_time": run.info.start_time}
        row.update({p: run.data.params.get(p) for p in TRIAL_PARAMS if p not in ("C", "seed")})
        run_rows.append(row)
    experiment = client.get_experiment(parent.info.experiment_id)
    return SweepData(
        sweep_id=sweep_id,
        parent=parent,
        experiment_name=experiment.name if experiment else parent.info.experiment_id,
        tracking_uri=client.tracking_uri,
        metrics=_metric_frame(client, trials, metrics),
        runs=pd.DataFrame(run_rows),
        skipped=skipped,
    )
