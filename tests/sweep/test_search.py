"""Search sweeps (issue 14) on real Ray and a real MLflow sqlite store, tiny budgets; and the validation split.

Expected values are worked out from the MLflow record independently of the driver (the best configuration is
recomputed from each run's final val_error), or are properties (distinct samples, steps below the budget).
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from models import digits
from models.digits import N_TRAIN, split_indices
from models.resnet.config import TrainConfig
from models.resnet.data import load_digits_split, val_positions
from sweep import driver, finish
from sweep.plan import base_group
from tests.conftest import histories, kill_driver_when, new_store, run_sweep, trial_runs

LR = "search.space={lr: {loguniform: [0.001, 1]}}"


def by_trial(sweep: driver.Sweep) -> dict[str, list]:
    """Tune trial id -> its runs (one per seed)."""
    out: dict[str, list] = defaultdict(list)
    for run in trial_runs(sweep):
        out[run.data.tags["tune_trial_id"]].append(run)
    return out


def final(client: MlflowClient, run, key: str) -> tuple[int, float]:
    return histories(client, run.info.run_id, key)[-1]


# -- the validation split (no Ray) ---------------------------------------------------------------------

def test_validation_split_is_held_out_of_the_training_half_only():
    n_val = round(0.2 * N_TRAIN)
    d = load_digits_split(split_seed=3, n_val=n_val)
    images, labels = digits.digits_arrays()
    train_idx, test_idx = split_indices(3)
    held = train_idx[val_positions(3, n_val)]
    assert d.x_val.shape == (n_val, 1, 8, 8) and len(d.y_train) == N_TRAIN - n_val == 718
    assert np.array_equal(d.y_val.numpy(), labels[held])
    assert np.array_equal(d.x_val.numpy(), images[held].astype(np.float32))
    # the training images are the rest of the training half, in split order; the test half is untouched
    kept = [i for i in train_idx if i not in set(held)]
    assert np.array_equal(d.y_train.numpy(), labels[kept])
    assert np.array_equal(d.y_test.numpy(), labels[test_idx])
    assert len(set(held)) == n_val and not set(held) & set(test_idx)
    # drawn by split_seed alone: another split seed holds out other images
    assert not np.array_equal(val_positions(3, n_val), val_positions(4, n_val))


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.3])
def test_validation_labels_are_the_true_ones_and_noise_goes_to_the_labels_trained_on(noise):
    """Issue 27 item 6: a perfect classifier (the true labels) scores val_error 0 at every noise level, so
    selection cannot reward a low noise level; round(noise x 718) of the 718 labels trained on are flipped, and
    that is the count a run logs (n_flipped_labels)."""
    n_val = round(0.2 * N_TRAIN)
    d = load_digits_split(split_seed=0, label_noise=noise, n_val=n_val)
    images, labels = digits.digits_arrays()
    train_idx, _ = split_indices(0)
    held = train_idx[val_positions(0, n_val)]
    assert np.array_equal(d.y_val.numpy(), labels[held])  # a perfect classifier's val_error: 0
    flipped = int((d.y_train != d.y_train_clean).sum())
    assert flipped == d.n_flipped == round(noise * 718)  # 0, 72 (71.8), 215 (215.4)
    assert TrainConfig(C=1, label_noise=noise, val_fraction=0.2).n_flipped_labels == flipped
    assert TrainConfig(C=1, label_noise=noise).n_flipped_labels == round(noise * 898)  # grids: the whole half


def test_grids_have_no_validation_split():
    d = load_digits_split(split_seed=0)
    assert d.x_val is None and len(d.y_train) == N_TRAIN
    assert TrainConfig(C=1).n_train == N_TRAIN and TrainConfig(C=1, val_fraction=0.2).n_train == 718


def test_trainer_logs_val_metrics_only_with_a_split():
    from models.resnet.trainer import Trainer

    plain = next(Trainer(TrainConfig(C=1, budget=5, eval_every=5), [0]).run()).records[0].metrics()
    split = next(Trainer(TrainConfig(C=1, budget=5, eval_every=5, val_fraction=0.2), [0]).run()).records[0]
    assert "val_error" not in plain
    assert 0 <= split.val_error <= 1 and split.val_loss > 0
    # val_error counts mistakes on the 180 held-out images: a multiple of 1/180
    assert abs(split.val_error * 180 - round(split.val_error * 180)) < 1e-9


# -- real Ray, real MLflow -------------------------------------------------------------------------------

def test_random_search_six_samples(ray_local, tmp_path):
    sweep = run_sweep(tmp_path, "smoke", "--no-analyze", "--set", "model.C=1", "--set", "budget=20",
                      "--set", "search.algorithm=random", "--set", "search.num_samples=6", "--set", LR)
    client = MlflowClient(sweep.tracking_uri)
    trials = by_trial(sweep)
    assert len(trials) == 6
    lrs = set()
    mean_val = {}
    for runs in trials.values():
        assert sorted(int(r.data.params["seed"]) for r in runs) == [0, 1]  # both seeds packed in one trial
        (lr,) = {r.data.params["lr"] for r in runs}
        lrs.add(lr)
        assert 0.001 <= float(lr) <= 1
        for r in runs:
            assert r.info.status == "FINISHED"
            # the fixed C is left out of a search's names, lr to 3 significant digits; the best marked below
            assert r.info.run_name.removeprefix("★ ") == f"lr={float(lr):.3g} seed={r.data.params['seed']}"
            assert r.data.params["val_fraction"] == "0.2"
            assert [s for s, _ in histories(client, r.info.run_id, "val_error")] == [10, 20]
        mean_val[lr] = np.mean([final(client, r, "val_error")[1] for r in runs])
    assert len(lrs) == 6  # six distinct configurations
    parent = client.get_run(sweep.parent_run_id)
    assert json.loads(parent.data.tags["sweep.axes"]) == ["C", "lr"]
    best = json.loads(parent.data.tags["best_config"])  # the grid point: every axis, the fixed knob included
    assert best["C"] == 1 and set(best) == {"C", "lr"} and parent.data.params["best.lr"] == str(best["lr"])
    assert mean_val[str(best["lr"])] == min(mean_val.values())  # selected on validation error alone
    best_runs = {r.info.run_id for r in trials[next(t for t, rs in trials.items()
                                                      if rs[0].data.params["lr"] == str(best["lr"]))]}
    assert set(json.loads(parent.data.tags["best_run_ids"])) == best_runs
    marked = {r.info.run_id for rs in trials.values() for r in rs
              if client.get_run(r.info.run_id).info.run_name.startswith("★ ")}
    assert marked == best_runs

    from analysis import analyze

    result = analyze(sweep.sweep_id, sweep.tracking_uri, tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "search.csv")
    assert len(table) == 6 and list(table["order"]) == [1, 2, 3, 4, 5, 6]
    assert sorted(table["lr"]) == sorted(float(v) for v in lrs)
    assert "search" in result.figures and (tmp_path / "out" / "search.png").stat().st_size > 0
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "## Search" in summary and f"lr={best['lr']:.3g}, val_error {min(mean_val.values()):.3f}" in summary


def test_asha_stops_the_worse_trial(ray_local, tmp_path):
    """Grid order, one trial at a time: lr=0.5 reaches rung 30 first; lr=1e-6 (barely moves from its
    initialisation) is then below the rung's cutoff and must be stopped there."""
    sweep = run_sweep(tmp_path, "smoke", "--no-analyze", "--set", "model.C=4", "--set", "budget=60",
                      "--set", "lr=[0.5,0.000001]", "--set", "max_concurrent_trials=1",
                      "--set", "search.scheduler=asha", "--set", "search.grace_period=30",
                      "--set", "search.reduction_factor=2")
    client = MlflowClient(sweep.tracking_uri)
    runs = trial_runs(sweep)
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)  # none FAILED
    stopped = [r for r in runs if r.data.tags.get("stopped_early") == "true"]
    assert {r.data.params["lr"] for r in stopped} == {"1e-06"}
    for r in stopped:
        steps = [s for s, _ in histories(client, r.info.run_id, "val_error")]
        assert steps[-1] == int(r.data.tags["stopped_at_step"]) == 30 < 60
    for r in runs:
        if r not in stopped:
            assert [s for s, _ in histories(client, r.info.run_id, "val_error")][-1] == 60
    assert json.loads(client.get_run(sweep.parent_run_id).data.tags["best_config"]) == {"C": 4, "lr": 0.5}
    # issue 26: both are visible in the runs table's name column, and the stopped runs' descriptions say so
    assert sorted(r.info.run_name for r in runs) == [
        "stopped@30 C=4 lr=1e-06 seed=0", "stopped@30 C=4 lr=1e-06 seed=1", "★ C=4 lr=0.5 seed=0",
        "★ C=4 lr=0.5 seed=1"]
    assert all("Stopped early" in r.data.tags["mlflow.note.content"] for r in stopped)


def test_a_trial_asha_stops_at_its_last_report_ends_finished_with_its_weights(ray_local, tmp_path):
    """Issue 27 item 1: the rung at 45 falls between the last evaluation before the budget (40) and the budget
    (50), so ASHA decides on C=1 (one trial at a time, after C=16) at its final report. A trial that trained its
    whole budget ends FINISHED with its weights whatever the scheduler does there (before: FAILED, no weights,
    exit 1)."""
    sweep = run_sweep(tmp_path, "smoke", "--no-analyze", "--set", "search.scheduler=asha",
                      "--set", "search.grace_period=45", "--set", "max_concurrent_trials=1", "--set", "model.C=[1,16]")
    client = MlflowClient(sweep.tracking_uri)
    runs = trial_runs(sweep)
    assert len(runs) == 4
    for r in runs:
        assert r.info.status == "FINISHED", (r.info.run_name, r.data.tags.get("failure_reason"))
        assert "stopped_early" not in r.data.tags  # it trained its budget
        assert [s for s, _ in histories(client, r.info.run_id, "val_error")][-1] == 50
        C, seed = r.data.params["C"], r.data.params["seed"]
        assert [a.path for a in client.list_artifacts(r.info.run_id)] == [f"model_C{C}_seed{seed}.pt"]
    assert client.get_run(sweep.parent_run_id).data.tags["n_failed"] == "0"


def test_the_best_configuration_is_a_grid_point_over_all_its_seeds(ray_local, tmp_path):
    """Issue 27 item 2: every seed its own trial (pack: off) under ASHA; the best is the grid point with the best
    mean val_error over ALL its seeds (recomputed here from the runs), with all its runs, and summary.md says
    the same (before: one seed's trial, one run). Two seeds tell the two apart: a trial's best is one run."""
    sweep = run_sweep(tmp_path, "smoke", "--set", "model.C=4", "--set", "lr=[0.3,0.6]", "--set", "seeds=2",
                      "--set", "pack=off", "--set", "search.scheduler=asha", "--set", "search.grace_period=60")
    client = MlflowClient(sweep.tracking_uri)
    by_lr: dict[str, list] = defaultdict(list)
    for r in trial_runs(sweep):
        assert r.info.status == "FINISHED"
        by_lr[r.data.params["lr"]].append(r)
    # The budget (50) is below the grace period: nothing is stopped, every seed ran its budget.
    means = {lr: np.mean([final(client, r, "val_error")[1] for r in runs]) for lr, runs in by_lr.items()}
    best_lr = min(means, key=means.get)
    parent = client.get_run(sweep.parent_run_id)
    assert json.loads(parent.data.tags["best_config"]) == {"C": 4, "lr": float(best_lr)}
    assert sorted(json.loads(parent.data.tags["best_run_ids"])) == sorted(r.info.run_id for r in by_lr[best_lr])
    assert float(parent.data.tags["best.val_error"]) == pytest.approx(means[best_lr], rel=1e-5)
    summary = (tmp_path / "sweep_results" / sweep.sweep_id / "summary.md").read_text()
    assert f"C=4 lr={best_lr}, val_error {means[best_lr]:.3f}" in summary


def test_a_trial_that_failed_before_making_runs_is_counted_with_its_plain_reason(tmp_path):
    """Issue 27 item 4, no Ray: a search trial that errored before it made any run is a FAILED row of the sweep's
    table and of n_trials/n_failed, and its reason is the error's last line without terminal colour codes."""
    from types import SimpleNamespace

    from sweep.spec import load_spec

    spec, _ = load_spec("smoke", ["model.C=2", "seeds=[0,1]", "search.algorithm=random", f"{LR}"])
    uri = new_store(tmp_path)
    sweep = driver.create_sweep(spec, "smoke", uri, str(tmp_path / "ray_results"))
    error = RuntimeError("\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=123, ip=127.0.0.1)\n"
                         "  File \"trainable.py\", line 1, in train_group\n"
                         "ValueError: C, budget and lr must be positive")
    config = {"group": base_group(spec).to_dict(), "point": {"lr": 0.25}}
    result = SimpleNamespace(error=error, config=config, metrics={}, path=str(tmp_path / "ray_results" / "trial_t9"))
    rows = finish.finish_sweep(sweep, [result])
    reason = "trial failed after 3 retries: ValueError: C, budget and lr must be positive"
    assert [(r["grid_point"], r["seed"], r["status"], r["failure_reason"]) for r in rows] == [
        ("C=2 lr=0.25", "0,1", "FAILED", reason)]
    tags = MlflowClient(uri).get_run(sweep.parent_run_id).data.tags
    assert (tags["n_trials"], tags["n_failed"]) == ("1", "1")


def test_optuna_four_samples(ray_local, tmp_path):
    sweep = run_sweep(tmp_path, "smoke", "--no-analyze", "--set", "model.C=1", "--set", "seeds=1",
                      "--set", "budget=20", "--set", "search.algorithm=optuna", "--set", "search.num_samples=4",
                      "--set", "search.space={lr: {loguniform: [0.001, 1]}, batch_size: {choice: [16, 64]}}")
    client = MlflowClient(sweep.tracking_uri)
    trials = by_trial(sweep)
    assert len(trials) == 4
    for (run,) in trials.values():
        assert run.info.status == "FINISHED"
        assert run.data.params["batch_size"] in ("16", "64")
        assert run.info.run_name.removeprefix("★ ") == (
            f"lr={float(run.data.params['lr']):.3g} batch_size={run.data.params['batch_size']} seed=0")
    parent = client.get_run(sweep.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert set(json.loads(parent.data.tags["best_config"])) == {"C", "lr", "batch_size"}


def _random_test_labels(arrays):
    """The digits with every test-half label (split seed 0) replaced by a random class."""
    images, labels = arrays
    labels = labels.copy()
    _, test_idx = split_indices(0)
    labels[test_idx] = np.random.default_rng(123).integers(0, 10, size=len(test_idx))
    return images, labels


def test_selection_is_blind_to_the_test_half(ray_local, tmp_path, monkeypatch):
    """The same random search with ASHA twice, the second with random test labels (handed to the trials via
    the data set the driver ships): same samples, same stops, same best; different test errors. Search seed 7
    draws lr 0.075, 0.49, 0.21: the third is below the first rung's cutoff (val error ~0.93 against ~0.92 and
    ~0.89 at step 10), so ASHA stops it there."""
    args = ["--no-analyze", "--set", "model.C=2", "--set", "budget=40", "--set", "max_concurrent_trials=1",
            "--set", "search.algorithm=random", "--set", "search.num_samples=3", "--set", "search.seed=7",
            "--set", LR, "--set", "search.scheduler=asha", "--set", "search.grace_period=10",
            "--set", "search.reduction_factor=2"]

    def outcome(sweep):
        client = MlflowClient(sweep.tracking_uri)
        steps, tests = {}, {}
        for r in trial_runs(sweep):
            key = (r.data.params["lr"], r.data.params["seed"])
            steps[key] = final(client, r, "val_error")[0]
            tests[key] = final(client, r, "test_error")[1]
        return steps, tests, client.get_run(sweep.parent_run_id).data.tags["best_config"]

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    steps_a, tests_a, best_a = outcome(run_sweep(tmp_path / "a", "smoke", *args))
    real = digits.digits_arrays()
    monkeypatch.setattr(driver, "digits_arrays", lambda: _random_test_labels(real))  # what the driver ships
    steps_b, tests_b, best_b = outcome(run_sweep(tmp_path / "b", "smoke", *args))
    assert len(steps_a) == 6  # 3 samples x 2 seeds
    assert steps_a == steps_b and best_a == best_b
    assert tests_a != tests_b  # the test labels did change what was logged
    assert min(steps_a.values()) < 40  # the scheduler did decide something


LONG_SEARCH = """name: longsearch
model: {C: 24}
seeds: [0]
budget: 1500
eval_every: 25
checkpoint_every: 6
max_concurrent_trials: 1
search: {algorithm: random, num_samples: 3, seed: 1, space: {lr: {loguniform: [0.01, 0.5]}}}
"""


def test_search_runs_are_made_once_per_trial_and_lost_trials_end_superseded(tmp_path):
    """No Ray: runs keyed (sweep, Tune trial, seed) are found again, not made twice; after a resume, runs of a
    trial id Tune no longer has (its configuration suggested again under a new id) end KILLED with a reason,
    and finished runs are left alone."""
    from types import SimpleNamespace

    from sweep.spec import load_spec
    from sweep.tracking import find_or_create_trial_runs

    spec, _ = load_spec("smoke", ["model.C=2", "seeds=[0,1]", "search.algorithm=random", f"{LR}"])
    uri = new_store(tmp_path)
    sweep = driver.create_sweep(spec, "smoke", uri, str(tmp_path / "ray_results"))
    client = MlflowClient(uri)
    params = {s: {"C": 2, "seed": s, "lr": 0.01} for s in (0, 1)}
    names = {s: f"C=2 lr=0.01 seed={s}" for s in (0, 1)}

    def make(trial: str) -> tuple[dict[int, str], set[int]]:
        return find_or_create_trial_runs(client, sweep.experiment_id, sweep.sweep_id, sweep.parent_run_id, trial,
                                         names, params, "C=2 lr=0.01", "C")

    first, made = make("t1")
    again, made_again = make("t1")
    assert made == {0, 1} and made_again == set() and again == first
    lost, _ = make("t2")
    assert set(lost.values()).isdisjoint(first.values())
    assert len(trial_runs(sweep)) == 4
    for run_id in first.values():
        client.set_terminated(run_id, "FINISHED")
    results = [SimpleNamespace(metrics={"trial_id": "t1"}, path=None),
               SimpleNamespace(metrics={}, path=str(tmp_path / "ray_results" / "trial_t3"))]
    ended = finish.end_superseded_runs(sweep, results)
    assert sorted(ended) == sorted(lost.values())
    for run_id in lost.values():
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and run.data.tags["superseded"] == "true"
        assert run.data.tags["failure_reason"].startswith("superseded")
    assert {client.get_run(r).info.status for r in first.values()} == {"FINISHED"}


def test_killed_driver_then_resume_finishes_the_search(tmp_path, ray_address):
    """SIGKILL the driver (and its Ray) while the second configuration trains, then `sweep resume`: the search
    ends with its three configurations, each with exactly one FINISHED run, nothing left RUNNING, and the
    analysis counting each configuration once. The resume connects to the tests' Ray (a resume on a fresh Ray
    of its own: test_faults.py)."""
    import subprocess
    import sys

    # No checkpoint before a trial's end: the interrupted trial restarts from scratch and must find its runs.
    (tmp_path / "long.yaml").write_text(LONG_SEARCH.replace("checkpoint_every: 6", "checkpoint_every: 1000"))

    def second_trial_under_way(sweep: driver.Sweep) -> bool:
        trials, client = by_trial(sweep), MlflowClient(sweep.tracking_uri)
        return len(trials) >= 2 and any(
            r.info.status == "RUNNING" and len(client.get_metric_history(r.info.run_id, "val_error")) >= 8
            for runs in trials.values() for r in runs)

    uri, env = kill_driver_when(tmp_path, "long.yaml", second_trial_under_way, "the second configuration to start")
    client = MlflowClient(uri)
    sweep = driver.load_sweep(None, uri)
    assert client.get_run(sweep.parent_run_id).info.status == "RUNNING"

    resumed = subprocess.run([sys.executable, "-m", "sweep.cli", "resume", sweep.sweep_id, "--address", ray_address],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert client.get_run(sweep.parent_run_id).info.status == "FINISHED"
    runs = trial_runs(sweep)
    assert not [r for r in runs if r.info.status in ("RUNNING", "SCHEDULED")]
    finished: dict[str, list] = defaultdict(list)
    for r in runs:
        if r.info.status == "FINISHED":
            finished[r.data.tags["grid_point"]].append(r)
        else:  # a configuration re-suggested after the restart: its first run, ended with a reason
            assert r.info.status == "KILLED" and r.data.tags["failure_reason"].startswith("superseded")
    assert len(finished) == 3 and all(len(v) == 1 for v in finished.values())
    for (run,) in finished.values():
        assert [s for s, _ in histories(client, run.info.run_id, "val_error")] == list(range(25, 1501, 25))
    table = pd.read_csv(tmp_path / "sweep_results" / sweep.sweep_id / "search.csv")
    assert sorted(table["grid_point"]) == sorted(finished)


def test_killed_search_worker_continues_its_own_runs_from_the_checkpoint(ray_local, tmp_path):
    """A SIGKILLed search trial worker: Tune restarts the trial from its checkpoint under the same trial id, it
    finds the runs it made (no second set), and every step is logged once with the values an uninterrupted
    trainer gives for the sampled configuration on the same validation split."""
    import torch

    from models.resnet.trainer import Trainer
    from tests.conftest import run_sweep_killing_a_worker

    (tmp_path / "long.yaml").write_text(LONG_SEARCH.replace("num_samples: 3", "num_samples: 1"))
    sweep, killed = run_sweep_killing_a_worker(tmp_path, str(tmp_path / "long.yaml"), "val_error", 15)
    client = MlflowClient(sweep.tracking_uri)
    [run] = trial_runs(sweep)  # one seed, one run: the restart found it
    assert run.info.status == "FINISHED" and int(run.data.tags["ray.worker_pid"]) != killed["pid"]
    assert killed["steps_before"] < 60
    torch.set_num_threads(1)
    config = TrainConfig(C=24, budget=1500, eval_every=25, lr=float(run.data.params["lr"]), val_fraction=0.2)
    expected = [e.records[0].metrics() for e in Trainer(config, [0]).run()]
    for key in ("val_error", "val_loss", "test_error", "train_loss"):
        history = histories(client, run.info.run_id, key)
        assert [s for s, _ in history] == list(range(25, 1501, 25)), key
        assert [v for _, v in history] == [m[key] for m in expected], key


def test_a_configuration_suggested_again_after_it_finished_is_not_trained_twice(tmp_path, monkeypatch):
    """No Ray: a trial whose configuration already has a complete FINISHED set of runs under another trial id
    reports that set's last numbers (mean over seeds) instead of training; its own id's runs, an incomplete
    set or another configuration do not count."""
    from types import SimpleNamespace

    from mlflow.entities import Metric

    from models import get_family
    from sweep import trainable
    from sweep.plan import TrialGroup
    from sweep.spec import load_spec
    from sweep.tracking import find_or_create_trial_runs

    spec, _ = load_spec("smoke", ["model.C=2", "seeds=[0,1]", "budget=20", "search.algorithm=random", LR])
    uri = new_store(tmp_path)
    sweep = driver.create_sweep(spec, "smoke", uri, str(tmp_path / "ray_results"))
    client = MlflowClient(uri)
    family = get_family("resnet")
    base = base_group(spec)
    group = base.with_values({"lr": 0.01})
    params = {s: family.member_params(group.config, s, "x") for s in (0, 1)}
    names = {s: group.run_name(s) for s in (0, 1)}
    run_ids, _ = find_or_create_trial_runs(client, sweep.experiment_id, sweep.sweep_id, sweep.parent_run_id, "t1",
                                           names, params, group.grid_point, "C")
    for seed, value in ((0, 0.25), (1, 0.75)):
        client.log_batch(run_ids[seed], metrics=[Metric("val_error", 0.9, 0, 10), Metric("val_error", value, 0, 20),
                                                 Metric("test_error", value / 2, 0, 20)])
    config = {"tracking_uri": uri, "sweep": {"sweep_id": sweep.sweep_id, "experiment_id": sweep.experiment_id}}

    def as_trial(trial_id: str, of: TrialGroup = group):
        monkeypatch.setattr(trainable.tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: trial_id))
        return trainable.finished_elsewhere(config, of, family)

    assert as_trial("t2") is None  # not FINISHED yet
    client.set_terminated(run_ids[0], "FINISHED")
    assert as_trial("t2") is None  # one seed of two: no complete set
    client.set_terminated(run_ids[1], "FINISHED")
    assert as_trial("t1") is None  # its own runs (a restarted trial) never count as another's
    done = as_trial("t2")
    stds = {"val_error_std": 0.25 * 2 ** 0.5, "test_error_std": 0.125 * 2 ** 0.5}  # of (0.25, 0.75), (0.125, 0.375)
    assert done == {"val_error": 0.5, "test_error": 0.25, **{k: pytest.approx(v) for k, v in stds.items()},
                    "step": 20, "progress": 1.0, "live_members": 2, "reused_from": "t1"}
    assert as_trial("t2", base.with_values({"lr": 0.02})) is None  # another configuration
