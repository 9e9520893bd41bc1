"""MLflow at the edge, the writing side: the store and experiment, the sweep's parent run, each trial's runs
made when the trial first starts, batched metric logging, and run ends.

A trial's runs are keyed (sweep id, Tune trial id, seed): a restarted trial, or one a resumed sweep restores,
finds the runs it made and continues them; grids and searches make their runs the same way. Names of tags and
params are :mod:`record`'s.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException

from models.records import Evaluation
from record import (
    DIVERGED,
    MAX_METRICS_PER_BATCH,
    ROLE_PARENT,
    ROLE_TRIAL,
    TAG_CREATE_TOKEN,
    TAG_FAILURE,
    TAG_GRID_POINT,
    TAG_NODE_ID,
    TAG_PACK_SEEDS,
    TAG_PARENT_RUN,
    TAG_ROLE,
    TAG_SEED,
    TAG_SWEEP_ID,
    TAG_TUNE_TRIAL,
    TAG_WORKER_PID,
    retrying,
    sweep_runs,
    tag_equals,
    with_retry,
)

T = TypeVar("T")


def create_run_once(client: MlflowClient, experiment_id: str, run_name: str, tags: dict[str, str]) -> Run:
    """``client.create_run`` that never makes two runs.

    create_run is not idempotent: sqlite can report "database is locked" (or a server a 5xx) after the insert
    committed, and a plain retry then inserts a second run. The run carries a token made here (tag
    ``sweep.create_token``); before each retry the experiment is searched for that token, and the run that has
    it is returned instead of creating again. (MLflow gives every sqlite session a 20 s busy timeout, so this
    path is rare.) The token is deleted once the run exists.
    """
    token = secrets.token_hex(8)
    tags = {**tags, TAG_CREATE_TOKEN: token}
    run = None
    for attempt in retrying():
        with attempt:
            if attempt.retry_state.attempt_number > 1:
                found = with_retry(client.search_runs, [experiment_id], tag_equals(TAG_CREATE_TOKEN, token),
                                   max_results=1)
                run = found[0] if found else None
            run = run or client.create_run(experiment_id, run_name=run_name, tags=tags)
    assert run is not None
    with_retry(client.delete_tag, run.info.run_id, TAG_CREATE_TOKEN)  # its job is done; the UI would list it
    return run


def init_store(uri: str) -> None:
    """Create a sqlite store's schema under a file lock: two sweeps starting on one new file would otherwise
    race through MLflow's migrations."""
    if not uri.startswith("sqlite:///"):
        return
    with FileLock(uri.removeprefix("sqlite:///") + ".lock"):
        MlflowClient(uri).search_experiments(max_results=1)


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


def find_or_create_trial_runs(client: MlflowClient, experiment_id: str, sweep_id: str, parent_run_id: str,
                              trial_id: str, names: dict[int, str], params: dict[int, dict[str, Any]],
                              grid_point: str, knob: str, tags: dict[str, str] | None = None
                              ) -> tuple[dict[int, str], set[int]]:
    """One Ray trial's runs, made when it first starts: (seed -> run id, seeds made now).

    Keyed (sweep id, Tune trial id, seed): a restarted or resumed trial finds the runs it made (tag
    ``tune_trial_id``) and makes only those still missing, never a second one. Only one worker runs a trial at
    a time, so no two processes make the same trial's runs at once. ``names``/``params``: seed -> run name /
    the family's member params; ``knob``: the family's knob, tagged with the run's value (``C=4``); ``tags``:
    more tags for the runs made now.
    """
    found = sweep_runs(client, experiment_id, sweep_id, tag_equals(TAG_TUNE_TRIAL, trial_id))
    run_ids = {int(r.data.tags[TAG_SEED]): r.info.run_id for r in found}
    created = set()
    for seed, name in names.items():
        if seed in run_ids:
            continue
        run = create_run_once(client, experiment_id, name, {
            TAG_SWEEP_ID: sweep_id, TAG_ROLE: ROLE_TRIAL, TAG_PARENT_RUN: parent_run_id, TAG_TUNE_TRIAL: trial_id,
            knob: str(params[seed][knob]), TAG_SEED: str(seed), TAG_GRID_POINT: grid_point,
            TAG_PACK_SEEDS: pack_text(names), **(tags or {})})
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

    def __init__(self, tracking_uri: str, run_ids: dict[int, str], *, metric_names: tuple[str, ...],
                 flush_seconds: float = 5.0) -> None:
        """``metric_names``: the family's metric keys (read back on every start)."""
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
            end_run(client, run_id, "FAILED", {TAG_FAILURE: reason})
            ended.append(run_id)
    return ended


def end_run(client: MlflowClient, run_id: str, status: str, tags: dict[str, str]) -> None:
    """Set ``tags`` on a run and end it with ``status``."""
    log_params(client, run_id, {}, tags=tags)
    with_retry(client.set_terminated, run_id, status)
