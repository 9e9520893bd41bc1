"""Shared fixtures: one real local Ray for the in-process sweep tests, and helpers to read MLflow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sweep import cli, driver


@pytest.fixture(scope="session")
def ray_local():
    """A real, fresh local Ray (never an existing cluster), shared by in-process sweeps."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def run_sweep(folder: Path, *args: str) -> driver.Sweep:
    """``sweep run ARGS`` in-process against a sqlite store in ``folder``; returns the sweep just made."""
    uri = f"sqlite:///{folder}/mlflow.db"
    before = os.getcwd()
    os.chdir(folder)
    try:
        cli.main(["run", *args, "--tracking-uri", uri, "--storage", str(folder / "ray_results")])
    finally:
        os.chdir(before)
    return driver.load_sweep(None, uri)


def histories(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
