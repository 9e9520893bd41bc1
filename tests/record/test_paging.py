"""Every search of the record pages through all results: a store holding more than one page (1,000 runs) of one
sweep, real sqlite, no Ray. Before, three searches stopped at 1,000 runs and two at 10,000."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from record import (
    PAGE,
    ROLE_PARENT,
    ROLE_TRIAL,
    TAG_GRID_POINT,
    TAG_PARENT_RUN,
    TAG_ROLE,
    TAG_SEED,
    TAG_SWEEP_ID,
    find_parent_run,
    sweep_runs,
    tag_equals,
)
from tests.conftest import new_store

SWEEP = "paging-20260101-000000-0001"
N_RUNS = PAGE + 7


@pytest.fixture(scope="module")
def large_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[MlflowClient, str, str]:
    """One sweep of ``N_RUNS`` FINISHED runs, made once for this module's tests (they only read it; writing
    1,007 runs costs ~30 s): run i is ``C=i+1``, logs ``val_error`` 1/(i+1) at step 50 and ``budget`` 50;
    the odd ones also log ``test_error`` and the tag ``odd=yes``. Returns (client, experiment id, parent id)."""
    client = MlflowClient(new_store(tmp_path_factory.mktemp("paging")))
    experiment = client.create_experiment("paging")
    parent = client.create_run(experiment, run_name=SWEEP, tags={TAG_SWEEP_ID: SWEEP, TAG_ROLE: ROLE_PARENT,
                                                                    "sweep.axes": '["C"]', "sweep.knob": "C"})
    now = int(time.time() * 1000)
    for i in range(N_RUNS):
        run = client.create_run(experiment, run_name=f"C={i + 1} seed=0", start_time=now + i, tags={
            TAG_SWEEP_ID: SWEEP, TAG_ROLE: ROLE_TRIAL, TAG_PARENT_RUN: parent.info.run_id, TAG_SEED: "0",
            TAG_GRID_POINT: f"C={i + 1}", "C": str(i + 1)})
        odd = i % 2 == 1
        client.log_batch(run.info.run_id, metrics=[Metric("val_error", 1.0 / (i + 1), now, 50),
                                                   *([Metric("test_error", 0.5, now, 10)] if odd else [])],
                         params=[Param("budget", "50")], tags=[RunTag("odd", "yes")] if odd else [],
                         synchronous=True)
        client.set_terminated(run.info.run_id, "FINISHED")
    return client, experiment, parent.info.run_id


def test_a_sweep_with_more_runs_than_one_page_is_read_whole(large_sweep):
    client, experiment, parent_id = large_sweep
    runs = sweep_runs(client, experiment, SWEEP)
    assert len(runs) == N_RUNS and len({r.info.run_id for r in runs}) == N_RUNS  # no page read twice
    assert [r.info.start_time for r in runs] == sorted((r.info.start_time for r in runs), reverse=True)
    assert len(sweep_runs(client, experiment, SWEEP, tag_equals("odd", "yes"))) == N_RUNS // 2  # a narrowed search
    assert find_parent_run(client).info.run_id == parent_id  # the latest sweep among > PAGE runs


def test_the_analysis_reads_every_run_of_a_large_sweep(large_sweep):
    """The reader's own searches (its configurations table) go through the same pager."""
    from analysis.search import configurations

    client, _, parent_id = large_sweep
    table = configurations(client, client.get_run(parent_id), {"metric": "val_error", "mode": "min", "space": {}})
    assert len(table) == N_RUNS and table["C"].max() == N_RUNS
