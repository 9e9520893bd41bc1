"""Shared fixtures: one real local Ray for the in-process sweep tests, and helpers to read MLflow."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest
from mlflow import MlflowClient

from sweep import cli, driver

# Plans come from the ResNet's pack-cost table: the tests read its defaults, never a table measured on this
# machine (models/resnet/pack_cost.py), so every machine plans the same trials. The packed model's C kernels
# (models/resnet/native.py) are built into the same fresh folder, once per test session; Ray workers inherit it.
_CACHE = tempfile.mkdtemp(prefix="complexity-sweep-tests-")
os.environ["COMPLEXITY_SWEEP_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_local():
    """A real, fresh local Ray (never an existing cluster), shared by in-process sweeps."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


T = TypeVar("T")

_EMPTY_STORE: list[Path] = []


def new_store(folder: Path) -> str:
    """``folder/mlflow.db`` as a copy of an empty sqlite store, made once per test session; its URI.

    MLflow creates a new store's schema (its migrations) in ~2 s of CPU; the tests that use this only need a
    store, not its creation. A new store's creation is still exercised where it is the point: every CLI run in
    its own process (tests/sweep/test_faults.py's two sweeps on one new file, test_ui.py).

    Also for a sweep run in another process while this one polls the store: an ``MlflowClient`` on a store
    being created runs MLflow's migrations a second time, outside the driver's lock, and breaks its creation."""
    if not _EMPTY_STORE:
        from sweep.tracking import init_store

        template = Path(tempfile.mkdtemp(prefix="empty-mlflow-store-"))
        atexit.register(shutil.rmtree, template, ignore_errors=True)
        init_store(f"sqlite:///{template}/mlflow.db")
        _EMPTY_STORE.append(template / "mlflow.db")
    db = folder / "mlflow.db"
    assert not db.exists(), f"{db} exists already"
    shutil.copyfile(_EMPTY_STORE[0], db)
    return f"sqlite:///{db}"


def in_background(compute: Callable[[], T]) -> Future[T]:
    """``compute()`` started now in a thread of this process; ``.result()`` waits for its value.

    For a test's reference values (its trainer run alone), computed while the sweep they check runs in other
    processes: on 2 cores a one-trial-at-a-time sweep leaves most of one core idle. The values are the same
    wherever the thread runs (the same kernels on the same inputs, one torch thread)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reference")
    future = pool.submit(compute)
    pool.shutdown(wait=False)
    return future


@pytest.fixture(scope="session")
def ray_address(ray_local) -> str:
    """The address of the tests' local Ray (``ray_local``), for a CLI process to connect to (``--address``)
    instead of starting and stopping a Ray of its own (~10 s on 2 cores)."""
    import ray

    return ray.get_runtime_context().gcs_address


def trial_runs(sweep: driver.Sweep) -> list:
    """Every child run of ``sweep``, newest first."""
    from record import sweep_runs

    return sweep_runs(MlflowClient(sweep.tracking_uri), sweep.experiment_id, sweep.sweep_id)


def run_sweep(folder: Path, *args: str) -> driver.Sweep:
    """``sweep run ARGS`` in-process against a sqlite store in ``folder`` (a copy of an empty one,
    :func:`new_store`, unless it exists); returns the sweep just made."""
    uri = f"sqlite:///{folder}/mlflow.db" if (folder / "mlflow.db").exists() else new_store(folder)
    before = os.getcwd()
    os.chdir(folder)
    try:
        cli.main(["run", *args, "--tracking-uri", uri, "--storage", str(folder / "ray_results")])
    finally:
        os.chdir(before)
    return driver.load_sweep(None, uri)


def histories(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def wait_for(predicate, timeout_s: float, what: str):
    """Poll ``predicate`` every 0.5 s until it returns something truthy (returned); AssertionError after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def kill_worker_when_logged(uri: str, metric: str, min_steps: int,
                            before_kill: Callable[[], dict] | None = None) -> tuple[threading.Thread, dict]:
    """Start a thread that SIGKILLs the Ray worker of the first trial run of the latest sweep in ``uri`` to
    have logged ``min_steps`` values of ``metric``. Returns (thread, killed): ``killed`` gets ``pid`` (the
    worker's, from the run's ``ray.worker_pid`` tag), ``steps_before`` (values logged when it was killed)
    and whatever ``before_kill()`` returns, called just before the kill."""
    from record import TAG_WORKER_PID
    from sweep import driver

    killed: dict = {}

    def progressed_run():
        try:
            runs = trial_runs(driver.load_sweep(None, uri))
        except Exception:  # the sweep or its runs do not exist yet
            return None
        return next((r for r in runs if TAG_WORKER_PID in r.data.tags
                     and len(client.get_metric_history(r.info.run_id, metric)) >= min_steps), None)

    def killer() -> None:
        run = wait_for(progressed_run, 300, f"a trial to log {min_steps} values of {metric}")
        killed.update(before_kill() if before_kill else {})
        killed["pid"] = int(run.data.tags[TAG_WORKER_PID])
        killed["steps_before"] = len(client.get_metric_history(run.info.run_id, metric))
        os.kill(killed["pid"], signal.SIGKILL)

    client = MlflowClient(uri)
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    return thread, killed


def run_sweep_killing_a_worker(folder: Path, spec_file: str, metric: str, min_steps: int,
                               before_kill: Callable[[], dict] | None = None) -> tuple[driver.Sweep, dict]:
    """``sweep run SPEC_FILE --no-analyze`` in-process (:func:`run_sweep`) while the worker of its first trial
    is SIGKILLed once it has logged ``min_steps`` values of ``metric`` (:func:`kill_worker_when_logged`).
    Returns the sweep and what the kill recorded; fails if the kill never happened."""
    thread, killed = kill_worker_when_logged(f"sqlite:///{folder}/mlflow.db", metric, min_steps, before_kill)
    sweep = run_sweep(folder, spec_file, "--no-analyze")
    thread.join(timeout=10)
    assert killed.get("pid"), "the trial was never killed"
    return sweep, killed


def run_then_kill_driver(folder: Path, spec_file: str, metric: str, min_steps: int) -> tuple[str, dict]:
    """:func:`kill_driver_when` a trial has logged ``min_steps`` values of ``metric``."""

    def logged(sweep: driver.Sweep) -> bool:
        client = MlflowClient(sweep.tracking_uri)
        return any(len(client.get_metric_history(r.info.run_id, metric)) >= min_steps for r in trial_runs(sweep))

    return kill_driver_when(folder, spec_file, logged, f"a trial to log {min_steps} values of {metric}")


def kill_driver_when(folder: Path, spec_file: str, until: Callable[[driver.Sweep], bool], what: str
                     ) -> tuple[str, dict]:
    """``sweep run SPEC_FILE --no-analyze`` as its own process (a fresh local Ray) in ``folder`` with the store
    ``folder/mlflow.db``; SIGKILL it and its Ray once ``until(sweep)`` holds (polled; ``what`` names it in the
    time-out's message). Returns (tracking URI, environment for a later ``sweep resume``)."""
    uri = new_store(folder)  # created here: this process's polls must not race the driver through its creation
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "sweep.cli", "run", spec_file, "--no-analyze"], cwd=folder,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def ready() -> bool:
        try:
            sweep = driver.load_sweep(None, uri)
        except Exception:  # the sweep, or its spec.yaml, is not recorded yet
            return False
        return until(sweep)

    try:
        wait_for(ready, 300, what)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait(timeout=30)
    return uri, env


def resume(folder: Path, sweep_id: str, env: dict, address: str | None = None) -> subprocess.CompletedProcess:
    """``sweep resume SWEEP_ID --no-analyze`` as its own process in ``folder``: on a fresh local Ray of its own,
    or connected to the Ray at ``address`` (:func:`ray_address`)."""
    where = ["--address", address] if address else []
    return subprocess.run([sys.executable, "-m", "sweep.cli", "resume", sweep_id, "--no-analyze", *where],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=600)
