"""MLflow at the edge: the sweep's parent run, one child run per trial, batched metric logging.

The driver owns every run id (it creates the child runs before any trial starts and hands their ids to the
trials), so a restarted trial or a resumed sweep continues the SAME run instead of opening a second one.
"""

from __future__ import annotations

import os
import random
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException

from sweep.filters import tag_equals
from sweep.names import (
    METRICS,
    ROLE_PARENT,
    ROLE_TRIAL,
    TAG_FAILURE,
    TAG_GRID_POINT,
    TAG_NODE_ID,
    TAG_PACK_SEEDS,
    TAG_PARENT_RUN,
    TAG_ROLE,
    TAG_SWEEP_ID,
    TAG_WORKER_PID,
)
from sweep.records import Evaluation

T = TypeVar("T")
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
TAG_CREATE_TOKEN = "sweep.create_token"  # one per run, so a retried create_run can find the first attempt
DIVERGED = "diverged"  # how the trainer's reason for a member whose loss became NaN/inf starts


def _transient(exc: MlflowException) -> bool:
    return "locked" in str(exc) or "busy" in str(exc) or exc.get_http_status_code() >= 500


def _backoff(attempt: int) -> None:
    time.sleep(0.05 * 2**attempt * (1 + random.random()))


def with_retry(fn: Callable[..., T], *args: Any, attempts: int = 8, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, retried when it lost a race for a busy sqlite file or hit a transient
    HTTP error. Only for idempotent calls (reads, status updates, tags, metric batches: MLflow skips a
    metric row that is already there with the same key, step, timestamp and value), where a call that
    committed and then reported an error may simply be done again. Runs are created with
    :func:`create_run_once`."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except MlflowException as exc:
            if not _transient(exc) or attempt == attempts - 1:
                raise
        _backoff(attempt)
    raise AssertionError("unreachable")


def create_run_once(client: MlflowClient, experiment_id: str, run_name: str, tags: dict[str, str],
                    attempts: int = 8) -> Run:
    """``client.create_run`` that never makes two runs.

    create_run is not idempotent: sqlite can report "database is locked" (or a server a 5xx) after the
    insert committed, and a plain retry then inserts a second run. The run carries a token made here
    (tag ``sweep.create_token``); after a transient error the experiment is searched for that token, and
    the call is retried only if no run has it. (MLflow already gives every sqlite session a 20 s busy
    timeout, so this path is rare.)
    """
    token = secrets.token_hex(8)
    tags = {**tags, TAG_CREATE_TOKEN: token}
    for attempt in range(attempts):
        try:
            return client.create_run(experiment_id, run_name=run_name, tags=tags)
        except MlflowException as exc:
            if not _transient(exc) or attempt == attempts - 1:
                raise
        found = with_retry(client.search_runs, [experiment_id], tag_equals(TAG_CREATE_TOKEN, token),
                           max_results=1)
        if found:
            return found[0]
        _backoff(attempt)
    raise AssertionError("unreachable")


def init_store(uri: str) -> None:
    """Create the store's schema under a file lock: two sweeps starting on one new sqlite file would
    otherwise race through MLflow's migrations."""
    if not uri.startswith("sqlite:///"):
        return
    import fcntl

    with open(uri.removeprefix("sqlite:///") + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_experiment(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another sweep created it a moment ago
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any], tags: dict[str, str] | None = None
               ) -> None:
    with_retry(client.log_batch, run_id, params=[Param(k, str(v)) for k, v in params.items()],
               tags=[RunTag(k, v) for k, v in (tags or {}).items()], synchronous=True)


def create_parent_run(client: MlflowClient, experiment_id: str, sweep_id: str, tags: dict[str, str]) -> str:
    run = create_run_once(client, experiment_id, sweep_id, {TAG_SWEEP_ID: sweep_id, TAG_ROLE: ROLE_PARENT, **tags})
    return run.info.run_id


def pack_text(seeds: Iterable[int]) -> str:
    """The ``pack_seeds`` tag: the seeds of one packed computation, ``0,1,2``."""
    return ",".join(str(s) for s in seeds)


def create_trial_run(client: MlflowClient, experiment_id: str, sweep_id: str, parent_run_id: str,
                     name: str, params: dict[str, Any], grid_point: str, knob: str = "C",
                     pack_seeds: Iterable[int] = ()) -> str:
    """A child run for one member, left SCHEDULED until its trial starts.

    name: ``<grid point> seed=<seed>``; params: :data:`sweep.names.TRIAL_PARAMS`; grid_point: the name
    without its seed part, tagged ``grid_point`` (the trial's identity together with the ``seed`` tag).
    knob: the family's knob, tagged with the run's value (``C=4``, ``K=10``). pack_seeds: the seeds trained
    together with this one (tag ``pack_seeds``).
    """
    run = create_run_once(client, experiment_id, name, {
        TAG_SWEEP_ID: sweep_id, TAG_ROLE: ROLE_TRIAL, TAG_PARENT_RUN: parent_run_id,
        knob: str(params[knob]), "seed": str(params["seed"]), TAG_GRID_POINT: grid_point,
        TAG_PACK_SEEDS: pack_text(pack_seeds)})
    run_id = run.info.run_id
    log_params(client, run_id, params)
    with_retry(client.update_run, run_id, status="SCHEDULED")
    return run_id


def find_or_create_trial_runs(client: MlflowClient, experiment_id: str, sweep_id: str, parent_run_id: str,
                              trial_id: str, names: dict[int, str], params: dict[int, dict[str, Any]],
                              grid_point: str, knob: str = "C") -> tuple[dict[int, str], set[int]]:
    """A search sweep's runs of one Ray trial, made when it first starts: (seed -> run id, seeds made now).

    Keyed (sweep id, Tune trial id, seed): a restarted or resumed trial finds the runs it made (tag
    ``tune_trial_id``) and makes only those still missing, never a second one. Only one worker runs a trial
    at a time, so no two processes make the same trial's runs at once.
    """
    from sweep.filters import and_
    from sweep.search import TAG_TUNE_TRIAL

    query = and_(tag_equals(TAG_SWEEP_ID, sweep_id), tag_equals(TAG_TUNE_TRIAL, trial_id))
    found = with_retry(client.search_runs, [experiment_id], query, max_results=1000)
    run_ids = {int(r.data.tags["seed"]): r.info.run_id for r in found}
    created = set()
    for seed, name in names.items():
        if seed in run_ids:
            continue
        run = create_run_once(client, experiment_id, name, {
            TAG_SWEEP_ID: sweep_id, TAG_ROLE: ROLE_TRIAL, TAG_PARENT_RUN: parent_run_id, TAG_TUNE_TRIAL: trial_id,
            knob: str(params[seed][knob]), "seed": str(seed), TAG_GRID_POINT: grid_point,
            TAG_PACK_SEEDS: pack_text(names)})
        run_ids[seed] = run.info.run_id
        log_params(client, run_ids[seed], params[seed])
        created.add(seed)
    return {seed: run_ids[seed] for seed in names}, created


class TrialRunLogger:
    """Logs one Ray trial's members, each to its own MLflow run, in batches.

    Records are buffered and sent with one ``log_batch`` per run at most every ``flush_seconds`` (and at
    every checkpoint and at the end), so logging costs a few requests per trial, never one per metric.

    Restart rules (a trial's worker can die at any moment, and Tune restarts it from its last checkpoint,
    or from scratch when it had none):
      * steps: the trial replays deterministically, so steps logged since that checkpoint (or since the
        start) may already be in the run. On EVERY start the logger reads the histories of the keys each
        run already has and never logs a (metric, step) pair that is there: every step appears once.
      * ended members: a member that diverged stays FAILED with its reason. A run that is FAILED with a
        ``diverged`` reason, or whose seed the checkpoint lists as diverged (the checkpoint is
        authoritative), is never reopened, logged to or ended again. Every other run is set RUNNING (a
        failure reason left by the driver on a resumed sweep is removed with it).
    """

    def __init__(self, tracking_uri: str, run_ids: dict[int, str], flush_seconds: float = 5.0,
                 metric_names: tuple[str, ...] = METRICS) -> None:
        """``metric_names``: the family's metric keys (read back on resume); the ResNet's by default."""
        self.client = MlflowClient(tracking_uri)
        self.metric_names = tuple(metric_names)
        self.run_ids = run_ids
        self.flush_seconds = flush_seconds
        self._buffer: dict[int, list[Metric]] = {seed: [] for seed in run_ids}
        self._logged: dict[int, set[tuple[str, int]]] = {seed: set() for seed in run_ids}
        self._ended: set[int] = set()  # seeds whose run this trial must not touch again
        self._last_flush = time.monotonic()
        self.seconds_logging = 0.0

    def _send(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One tracking call, retried, its time counted in ``seconds_logging``."""
        start = time.perf_counter()
        try:
            return with_retry(fn, *args, **kwargs)
        finally:
            self.seconds_logging += time.perf_counter() - start

    def start(self, node_id: str, diverged: dict[int, tuple[int, str]] | None = None,
              tags: dict[str, str] | None = None) -> None:
        """Open this trial's runs. ``diverged``: the trainer's {seed: (step, reason)} from its checkpoint
        (empty on a fresh start); ``tags``: set on every run opened (the machine that trains it,
        :func:`sweep.provenance.machine_tags`), besides the Ray node id and worker pid."""
        diverged = diverged or {}
        for seed, run_id in self.run_ids.items():
            run = self._send(self.client.get_run, run_id)
            for key in self.metric_names:
                if key in run.data.metrics:  # a run that never logged a key has no history to read
                    history = self._send(self.client.get_metric_history, run_id, key)
                    self._logged[seed].update((key, m.step) for m in history)
            reason = run.data.tags.get(TAG_FAILURE, "")
            if run.info.status == "FAILED" and reason.startswith(DIVERGED):
                self._ended.add(seed)
                continue
            if seed in diverged:  # ended in the checkpoint, but the run was not closed before the crash
                self.flush()
                self.end(seed, "FAILED", diverged[seed][1])
                continue
            if reason:
                self._send(self.client.delete_tag, run_id, TAG_FAILURE)
            self._send(self.client.update_run, run_id, status="RUNNING")
            run_tags = {TAG_NODE_ID: node_id, TAG_WORKER_PID: str(os.getpid()), **(tags or {})}
            self._send(self.client.log_batch, run_id, tags=[RunTag(k, v) for k, v in run_tags.items()])

    def ended(self, seed: int) -> bool:
        """Whether ``seed``'s run is closed for good (it diverged, now or before a restart)."""
        return seed in self._ended

    def add(self, evaluation: Evaluation) -> None:
        now = int(time.time() * 1000)
        for record in evaluation.records:
            if record.seed in self._ended:
                continue
            for key, value in record.metrics().items():
                if (key, record.step) not in self._logged[record.seed]:
                    self._buffer[record.seed].append(Metric(key, value, now, record.step))
        for seed, (_, reason) in evaluation.diverged.items():
            if seed not in self._ended:
                self.flush()
                self.end(seed, "FAILED", reason)
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        for seed, metrics in self._buffer.items():
            for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
                chunk = metrics[i : i + MAX_METRICS_PER_BATCH]
                self._send(self.client.log_batch, self.run_ids[seed], metrics=chunk, synchronous=True)
            self._logged[seed].update((m.key, m.step) for m in metrics)
            metrics.clear()
        self._last_flush = time.monotonic()

    def log_weights(self, seed: int, path: Path) -> None:
        if seed not in self._ended:
            self._send(self.client.log_artifact, self.run_ids[seed], str(path))

    def end(self, seed: int, status: str, failure_reason: str | None = None) -> None:
        """End ``seed``'s run with ``status``; a FAILED end closes it for the rest of this trial (and, with
        a ``diverged`` reason, for every restart). No-op for a run already closed for good."""
        if seed in self._ended:
            return
        run_id = self.run_ids[seed]
        if failure_reason:
            self._send(self.client.set_tag, run_id, TAG_FAILURE, failure_reason)
        self._send(self.client.set_terminated, run_id, status)
        if status == "FAILED":
            self._ended.add(seed)


def end_unfinished_runs(client: MlflowClient, run_ids: Iterable[str], reason: str) -> list[str]:
    """Mark every run that is not FINISHED/FAILED/KILLED as FAILED with ``reason``; returns those run ids."""
    ended = []
    for run_id in run_ids:
        if with_retry(client.get_run, run_id).info.status in ("RUNNING", "SCHEDULED"):
            with_retry(client.set_tag, run_id, TAG_FAILURE, reason)
            with_retry(client.set_terminated, run_id, "FAILED")
            ended.append(run_id)
    return ended


__all__ = ["TrialRunLogger", "create_parent_run", "create_run_once", "create_trial_run", "end_unfinished_runs",
           "ensure_experiment", "with_retry"]
