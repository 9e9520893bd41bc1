"""Fault tolerance: a killed trial, a killed driver, a diverging trial, two sweeps on one sqlite store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from models import get_family
from models.resnet.config import TrainConfig
from models.resnet.trainer import Trainer
from record import TAG_FAILURE, TAG_WORKER_PID
from sweep import driver
from tests.conftest import (
    histories,
    in_background,
    resume,
    run_sweep,
    run_sweep_killing_a_worker,
    run_then_kill_driver,
    trial_runs,
)

METRICS = get_family("resnet").metric_names

LONG = "name: long\nmodel: {{C: {C}}}\nseeds: [0]\nbudget: 1500\neval_every: 25\ncheckpoint_every: 6\npack: 'off'\n"
# Widths above models.resnet.native.ONE_CALL_MAX_C update through autograd, ~2 ms per update on the development
# machines: 1,500 updates make a trial long enough to be killed in its middle (at C <= 16 it would take ~1 s).
LONG_C, LONG_CS = 24, (20, 24)
LONG_STEPS = list(range(25, 1501, 25))


def uninterrupted(C: int, seed: int = 0, budget: int = 1500) -> list[dict[str, float]]:
    torch.set_num_threads(1)
    trainer = Trainer(TrainConfig(C=C, budget=budget, eval_every=25), [seed])
    return [e.records[0].metrics() for e in trainer.run()]


def assert_complete_and_identical(client: MlflowClient, run_id: str, expected: list[dict[str, float]],
                                  budget: int = 1500) -> None:
    """Every step exactly once, and every value equal to ``expected``, an uninterrupted run's
    (:func:`uninterrupted`)."""
    for key in METRICS:
        history = histories(client, run_id, key)
        assert [s for s, _ in history] == list(range(25, budget + 1, 25)), key
        assert [v for _, v in history] == [m[key] for m in expected], key


def logged_steps(client: MlflowClient, run) -> int:
    return len(client.get_metric_history(run.info.run_id, "train_error"))


def test_killed_trial_resumes_same_run_from_checkpoint(ray_local, tmp_path):
    (tmp_path / "long.yaml").write_text(LONG.format(C=LONG_C))
    expected = in_background(lambda: uninterrupted(LONG_C))  # while the sweep runs
    sweep, killed = run_sweep_killing_a_worker(tmp_path, str(tmp_path / "long.yaml"), "train_error", 15)
    client = MlflowClient(sweep.tracking_uri)
    runs = trial_runs(sweep)
    assert len(runs) == 1, "a restarted trial must continue its run, not open a second one"
    run = client.get_run(runs[0].info.run_id)
    assert run.info.status == "FINISHED"
    assert int(run.data.tags[TAG_WORKER_PID]) != killed["pid"]  # it really ran again, in a new worker
    assert killed["steps_before"] < len(LONG_STEPS)
    assert_complete_and_identical(client, run.info.run_id, expected.result())


def test_killed_driver_then_resume_finishes_the_sweep(tmp_path):
    (tmp_path / "long.yaml").write_text(LONG.format(C=list(LONG_CS)) + "max_concurrent_trials: 1\n")
    expected = in_background(lambda: {C: uninterrupted(C) for C in LONG_CS})  # while the sweep runs
    uri, env = run_then_kill_driver(tmp_path, "long.yaml", "train_error", 15)
    client = MlflowClient(uri)
    sweep = driver.load_sweep(None, uri)
    statuses = sorted(r.info.status for r in trial_runs(sweep))
    assert statuses != ["FINISHED", "FINISHED"], "the kill came too late to test anything"
    assert client.get_run(sweep.parent_run_id).info.status == "RUNNING"

    resumed = resume(tmp_path, sweep.sweep_id, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert client.get_run(sweep.parent_run_id).info.status == "FINISHED"
    runs = trial_runs(sweep)
    assert sorted(int(r.data.params["C"]) for r in runs) == list(LONG_CS)
    for run in runs:
        assert run.info.status == "FINISHED"
        assert_complete_and_identical(client, run.info.run_id, expected.result()[int(run.data.params["C"])])
    # Tune's experiment state, saved every few seconds, may point to any earlier checkpoint when the driver is
    # killed: a sweep deletes none (with two kept, a resume failed on a deleted one). 60 evaluations, every 6th.
    trials = sorted(Path(sweep.tune_path).glob("trial_*"))
    assert len(trials) == 2
    for trial in trials:
        assert sorted(p.name for p in trial.glob("checkpoint_*")) == [f"checkpoint_{i:06d}" for i in range(10)]


def test_trial_killed_before_its_first_checkpoint_logs_each_step_once(ray_local, tmp_path):
    """The logger flushes every 5 s, long before the first checkpoint (here: only the last evaluation); a
    worker killed in between is restarted from scratch by Tune and replays steps already in its run."""
    # Long enough (tens of seconds) that the 5 s flush happens well before the trial ends.
    budget = 6000
    (tmp_path / "long.yaml").write_text(LONG.format(C=LONG_C).replace("checkpoint_every: 6", "checkpoint_every: 1000")
                                        .replace("budget: 1500", f"budget: {budget}"))

    expected = in_background(lambda: uninterrupted(LONG_C, budget=budget))  # while the sweep runs

    def checkpoints() -> dict:
        return {"checkpoints": sorted(p.name for p in (tmp_path / "ray_results").glob("*/trial_*/checkpoint_*"))}

    sweep, killed = run_sweep_killing_a_worker(tmp_path, str(tmp_path / "long.yaml"), "train_error", 1,
                                               before_kill=checkpoints)
    assert killed["checkpoints"] == [], "a checkpoint existed: this is the other test's case"
    assert 0 < int(killed["steps_before"]) < budget // 25
    client = MlflowClient(sweep.tracking_uri)
    [run] = trial_runs(sweep)
    assert run.info.status == "FINISHED"
    assert int(run.data.tags[TAG_WORKER_PID]) != killed["pid"]
    assert_complete_and_identical(client, run.info.run_id, expected.result(), budget=budget)


def smoke_records(C: int, lr: float) -> list[dict[str, float]]:
    """The smoke preset's records for one (C, lr) and seed 0, from the trainer alone (no Ray, no MLflow)."""
    torch.set_num_threads(1)
    return [e.records[0].metrics() for e in Trainer(TrainConfig(C=C, budget=50, eval_every=10, lr=lr), [0]).run()
            if e.records]


# lr = 1e38 diverges on any machine, not by the luck of rounding: one update sends every parameter with a gradient
# to the edge of float32's range (3.4e38), and the next forward pass's products overflow
# (tests/models/test_resnet_trainer.py).
HUGE_LR = "1e38"


def test_diverging_trial_fails_alone(ray_local, tmp_path):
    """Two learning rates that both finish and one that diverges: each finished run holds its own lr's
    numbers, the diverged one fails alone, and the analysis keeps BOTH finished runs (same C and seed,
    different lr: different trials, never one "superseding" the other)."""
    sweep = run_sweep(tmp_path, "smoke", "--set", "model.C=[64]", "--set", "seeds=[0]",
                      "--set", f"lr=[0.05,0.1,{HUGE_LR}]", "--no-analyze")
    client = MlflowClient(sweep.tracking_uri)
    runs = {float(r.data.params["lr"]): r for r in trial_runs(sweep)}
    assert sorted(runs) == [0.05, 0.1, float(HUGE_LR)]
    for lr in (0.05, 0.1):
        assert runs[lr].info.status == "FINISHED", lr
        expected = smoke_records(64, lr)
        for key in ("test_error", "train_loss"):
            history = histories(client, runs[lr].info.run_id, key)
            assert [s for s, _ in history] == [10, 20, 30, 40, 50], (lr, key)
            assert [v for _, v in history] == pytest.approx([m[key] for m in expected], abs=1e-6), (lr, key)
    assert histories(client, runs[0.05].info.run_id, "train_loss") != histories(
        client, runs[0.1].info.run_id, "train_loss")
    failed = runs[float(HUGE_LR)]
    assert failed.info.status == "FAILED"
    assert failed.data.tags[TAG_FAILURE].startswith("diverged: minibatch loss became")
    assert client.get_run(sweep.parent_run_id).data.tags["n_failed"] == "1"

    from analysis import SkippedTrialsWarning, analyze

    with pytest.warns(SkippedTrialsWarning, match="diverged"):
        result = analyze(sweep.sweep_id, sweep.tracking_uri, tmp_path / "out")
    assert [(t.C, t.seed, t.status) for t in result.skipped] == [(64, 0, "FAILED")]
    assert sorted(result.data.runs["run_id"]) == sorted(runs[lr].info.run_id for lr in (0.05, 0.1))
    report = (tmp_path / "out" / "summary.md").read_text()
    assert "diverged: minibatch loss became" in report and "1 trial(s) failed" in report


def test_sweep_whose_every_trial_diverged_exits_0_with_the_table(ray_local, tmp_path, capsys):
    """Nothing finished, so nothing to plot: the sweep still ends normally (exit 0), with the table."""
    sweep = run_sweep(tmp_path, "smoke", "--set", "model.C=[64]", "--set", "seeds=[0]", "--set", f"lr={HUGE_LR}")
    out = capsys.readouterr().out
    assert "FAILED  (diverged: minibatch loss became" in out
    assert "nothing finished to plot" in out
    client = MlflowClient(sweep.tracking_uri)
    assert client.get_run(sweep.parent_run_id).info.status == "FINISHED"
    assert [r.info.status for r in trial_runs(sweep)] == ["FAILED"]


@pytest.mark.parametrize("n", [2])
def test_two_sweeps_share_one_sqlite_store(tmp_path, n):
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [subprocess.Popen([sys.executable, "-m", "sweep.cli", "run", "smoke", "--no-analyze"], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(n)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
        assert "database is locked" not in out
    uri = f"sqlite:///{Path(tmp_path) / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    parents = client.search_runs([experiment.experiment_id], "tags.`sweep.role` = 'parent'")
    assert len(parents) == n and len({p.data.tags["sweep_id"] for p in parents}) == n
    for parent in parents:
        assert parent.info.status == "FINISHED"
        sweep = driver.load_sweep(parent.data.tags["sweep_id"], uri)
        runs = trial_runs(sweep)
        assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
        for run in runs:
            assert [s for s, _ in histories(client, run.info.run_id, "train_error")] == [10, 20, 30, 40, 50]
