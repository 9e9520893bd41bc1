"""The complexity curve on the parent run (no Ray): MLflow metrics ``curve/<metric>`` with step = the knob's value,
equal to summary.csv step for step; a re-analysis leaves one point per step; a changed curve moves to curve2/."""

from __future__ import annotations

import time

import mlflow
import pandas as pd
import pytest
from mlflow.entities import Metric

from analysis import SkippedTrialsWarning, analyze
from record import TAG_CURVE_PREFIX
from tests.analysis.test_analysis import SWEEP_ID, WIDTHS, write_sweep
from tests.conftest import new_store


def history(client: mlflow.MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.fixture
def analysed(tmp_path):
    client = mlflow.MlflowClient(new_store(tmp_path))
    exp = client.create_experiment("synthetic", artifact_location=(tmp_path / "artifacts").as_uri())
    ids = write_sweep(client, exp, SWEEP_ID, int(time.time() * 1000))
    with pytest.warns(SkippedTrialsWarning):
        analyze(SWEEP_ID, client.tracking_uri, tmp_path / "out")
    return client, ids, tmp_path


def test_the_parent_carries_the_curve_equal_to_summary_csv(analysed):
    client, ids, tmp = analysed
    summary = pd.read_csv(tmp / "out" / "summary.csv").set_index("C")
    parent = ids["parent"]
    for metric, column in (("train_error", "final_train_error"), ("test_error", "final_test_error"),
                           ("generalization_gap", "final_gap")):
        mean, half = summary[f"{column}_mean"], summary[f"{column}_ci95"]
        assert history(client, parent, f"curve/{metric}") == [(c, pytest.approx(mean[c], abs=1e-12)) for c in WIDTHS]
        assert history(client, parent, f"curve/{metric}_low") == [
            (c, pytest.approx(mean[c] - half[c], abs=1e-12)) for c in WIDTHS]
        assert history(client, parent, f"curve/{metric}_high") == [
            (c, pytest.approx(mean[c] + half[c], abs=1e-12)) for c in WIDTHS]
    assert client.get_run(parent).data.tags[TAG_CURVE_PREFIX] == "curve/"


def test_a_second_analysis_leaves_one_point_per_step_and_a_changed_curve_moves_to_a_new_prefix(analysed):
    client, ids, tmp = analysed
    parent = ids["parent"]
    before = history(client, parent, "curve/test_error")
    with pytest.warns(SkippedTrialsWarning):
        analyze(SWEEP_ID, client.tracking_uri, tmp / "again")
    assert history(client, parent, "curve/test_error") == before and len(before) == len(WIDTHS)
    # The failed run of C=4 seed 3 is logged again as a finished run: C=4's mean test error changes.
    run = client.create_run(client.get_run(parent).info.experiment_id, run_name="C=4 seed=3", tags={
        **{k: v for k, v in client.get_run(ids[(4, 0)]).data.tags.items() if not k.startswith("mlflow.")},
        "seed": "3"})
    client.log_batch(run.info.run_id, metrics=[Metric("test_error", 0.9, 0, 50), Metric("train_error", 0.0, 0, 50),
                                              Metric("generalization_gap", 0.9, 0, 50)], synchronous=True)
    for key, value in client.get_run(ids[(4, 0)]).data.params.items():
        client.log_param(run.info.run_id, key, "3" if key == "seed" else value)
    client.set_terminated(run.info.run_id, "FINISHED")
    with pytest.warns(SkippedTrialsWarning):
        analyze(SWEEP_ID, client.tracking_uri, tmp / "third")
    assert history(client, parent, "curve/test_error") == before  # never a second point at a step
    moved = history(client, parent, "curve2/test_error")
    assert [c for c, _ in moved] == list(WIDTHS) and moved[1][1] != before[1][1]
    assert client.get_run(parent).data.tags[TAG_CURVE_PREFIX] == "curve2/"
