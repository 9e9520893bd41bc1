"""The Ray Tune trainable: a plain function that trains one TrialGroup, logs to MLflow and reports.

Ray and MLflow meet the trainer here and nowhere else.
"""

from __future__ import annotations

import logging
import math
import numbers
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from models.family import Family, Trainer
from sweep.data import DigitsArrays
from sweep.plan import TrialGroup
from sweep.provenance import machine_tags
from sweep.records import Evaluation
from sweep.tracking import TrialRunLogger

CHECKPOINT_FILE = "trainer.pt"
# Between checkpoints, results go to Tune at most this often: each report costs ~6 ms of the trial (5% of
# hw2's trial time at one per evaluation, bench/overhead.py), and the progress line reads them every 5 s.
REPORT_EVERY_S = 1.0


def checkpoint_interval(n_evaluations: int, checkpoint_every: int | None) -> int:
    """Evaluations between checkpoints; by default at most a tenth of a trial is lost to a crash."""
    return checkpoint_every or max(1, math.ceil(n_evaluations / 10))


def _report_metrics(trainer: Trainer, evaluation: Evaluation, logger: TrialRunLogger,
                    metric_names: tuple[str, ...] = ("train_error", "test_error", "generalization_gap")
                    ) -> dict[str, Any]:
    records = evaluation.records
    metrics: dict[str, Any] = {"step": evaluation.step, "progress": evaluation.step / trainer.config.budget,
                               "live_members": len(records), "seconds_logging": logger.seconds_logging,
                               "ms_per_update": trainer.ms_per_update}
    for key in metric_names:  # the mean over live members of each of the family's metrics
        values = [r.metrics()[key] for r in records]
        metrics[key] = sum(values) / len(values) if values else float("nan")
    return metrics


def plain_values(point: dict[str, Any]) -> dict[str, Any]:
    """Tune hands numpy scalars for randint; params and names want plain numbers."""
    return {k: (int(v) if isinstance(v, numbers.Integral) else float(v) if isinstance(v, numbers.Real) else v)
            for k, v in point.items()}


def search_group(config: dict[str, Any], family: Family) -> TrialGroup:
    """A search trial's group: the base group (the spec's values, all seeds) with its sampled ``point`` values."""
    base = TrialGroup.from_dict(config["search"]["group"], family=family)
    return replace(base, config=replace(base.config, **plain_values(config["point"])))


def _search_runs(config: dict[str, Any], family: Family) -> tuple[TrialGroup, dict[int, str]]:
    """A search trial's group (the base config with the sampled ``point`` values) and its runs, found or made
    now (:func:`sweep.tracking.find_or_create_trial_runs`)."""
    from mlflow import MlflowClient

    from sweep import mlflow_ui
    from sweep.tracking import find_or_create_trial_runs

    info = config["search"]
    group = search_group(config, family)
    client = MlflowClient(config["tracking_uri"])
    params = {seed: group.member_params(seed, info["split_hash"], family) for seed in group.seeds}
    run_ids, created = find_or_create_trial_runs(
        client, info["experiment_id"], info["sweep_id"], info["parent_run_id"], tune.get_context().get_trial_id(),
        {seed: group.run_name(seed) for seed in group.seeds}, params, group.grid_point, family.knob)
    for seed in created:
        run_id = run_ids[seed]
        mlflow_ui.decorate_child(client, run_id, params[seed], info["source"], info["widths"], family.knob)
    return group, run_ids


def train_config_has_val(config: Any) -> bool:
    """Whether the trial holds out a validation split (search sweeps and sweeps with a scheduler)."""
    return bool(getattr(config, "val_fraction", 0.0))


def _finished_elsewhere(config: dict[str, Any], group: TrialGroup, metric_names: tuple[str, ...]
                        ) -> dict[str, Any] | None:
    """A search trial whose configuration already has a complete FINISHED set of runs under another Tune trial:
    what that set reported last (mean over seeds), else None.

    After a driver SIGKILL, Ray re-suggests under new trial ids the configurations it had started after its
    last experiment-state save; one that finished meanwhile must not train (and count) twice. Training is
    deterministic per (configuration, seed), so the finished set's numbers are what this trial would get.
    """
    from mlflow import MlflowClient

    from sweep.filters import and_, tag_equals
    from sweep.names import TAG_GRID_POINT, TAG_SWEEP_ID
    from sweep.search import TAG_TUNE_TRIAL
    from sweep.tracking import with_retry

    info = config["search"]
    client = MlflowClient(config["tracking_uri"])
    query = and_(tag_equals(TAG_SWEEP_ID, info["sweep_id"]), tag_equals(TAG_GRID_POINT, group.grid_point))
    me = tune.get_context().get_trial_id()
    sets: dict[str, list[Any]] = {}
    for run in with_retry(client.search_runs, [info["experiment_id"]], query, max_results=1000):
        trial = run.data.tags.get(TAG_TUNE_TRIAL)
        if trial and trial != me and run.info.status == "FINISHED":
            sets.setdefault(trial, []).append(run)
    for trial, runs in sets.items():
        if sorted(int(r.data.tags["seed"]) for r in runs) != sorted(group.seeds):
            continue
        step = min(max(m.step for m in client.get_metric_history(r.info.run_id, info["metric"])) for r in runs)
        metrics = {key: sum(r.data.metrics[key] for r in runs) / len(runs)
                   for key in metric_names if all(key in r.data.metrics for r in runs)}
        return {**metrics, "step": step, "progress": step / group.config.budget, "live_members": len(runs),
                "reused_from": trial}
    return None


def train_group(config: dict[str, Any], digits: DigitsArrays | None = None, family: Family | None = None) -> None:
    """Ray Tune function trainable. ``config``: trial {group: TrialGroup.to_dict(), run_ids: {seed: id}},
    tracking_uri, cpus, checkpoint_every. ``digits``: :func:`sweep.data.digits_arrays` (bound with
    ``tune.with_parameters``, so workers need not import scikit-learn); loaded here when None. ``family``:
    the sweep's :class:`models.family.Family` object, bound the same way so that a family registered only
    in the driver process trains here too; looked up by the group's family name when None."""
    # Tune logs every checkpoint at INFO; one sweep makes hundreds.
    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if "search" in config:  # a search sweep: the trial's configuration was sampled, its runs are made now
        family = family or TrialGroup.from_dict(config["search"]["group"]).family
        names = (*family.metric_names, *(m.name for m in family.validation_metrics))
        done = _finished_elsewhere(config, search_group(config, family), names)
        if done is not None:
            tune.report(done)
            return
        group, run_ids = _search_runs(config, family)
    else:
        group = TrialGroup.from_dict(config["trial"]["group"], family=family)
        family = family or group.family
        run_ids = {int(seed): run_id for seed, run_id in config["trial"]["run_ids"].items()}
    # Ray gives each trial `cpus` CPUs; more torch threads than that only fight over them.
    torch.set_num_threads(max(1, int(config["cpus"])))
    train_config = replace(group.config, device="cuda" if ray.get_gpu_ids() else "cpu")
    trainer = family.trainer(train_config, group.seeds, digits)
    validation = tuple(m.name for m in family.validation_metrics) if train_config_has_val(train_config) else ()
    metric_names = (*family.metric_names, *validation)
    logger = TrialRunLogger(config["tracking_uri"], run_ids, metric_names=metric_names)
    # A scheduler compares trials at its rungs: every evaluation goes to Tune, not one a second.
    report_all = bool(config.get("report_every_evaluation"))

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved = torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=False)
        if saved["run_ids"] != run_ids:
            raise RuntimeError(f"checkpoint belongs to MLflow runs {saved['run_ids']}, not {run_ids}")
        trainer.load_state_dict(saved["trainer"])
    # On every start, with or without a checkpoint: a worker that died before its first checkpoint already
    # logged steps (the logger flushes every few seconds), and the checkpoint's diverged members stay ended.
    logger.start(ray.get_runtime_context().get_node_id(), diverged=trainer.diverged,
                 tags=machine_tags(train_config.device))

    eval_steps = group.config.eval_steps()
    position = {step: i for i, step in enumerate(eval_steps, start=1)}  # absolute, so resumes keep cadence
    every = checkpoint_interval(len(eval_steps), config.get("checkpoint_every"))
    # Cheap marks for bench/overhead.py: when this trial's training began (unix s), when the trainer last
    # handed over an evaluation (its last update, plus that evaluation), and the seconds spent inside the
    # trainer (updates and evaluations), and in Tune's reports and checkpoints (those before this report);
    # with seconds_logging (MLflow), that is where the rest of a trial goes.
    timing = {"training_started_unix": time.time(), "seconds_in_trainer": 0.0, "seconds_reporting": 0.0}
    evaluations = trainer.run()
    last_report = time.monotonic()
    done = False
    while True:
        entered = time.perf_counter()
        evaluation = next(evaluations, None)
        timing["seconds_in_trainer"] += time.perf_counter() - entered
        if evaluation is None:
            break
        timing["yielded_unix"] = time.time()
        logger.add(evaluation)
        metrics = {**_report_metrics(trainer, evaluation, logger, metric_names), **timing}
        finished = trainer.step >= group.config.budget or not evaluation.records
        if finished:
            # Before the last report: a scheduler may stop the trial at it, and Ray then leaves this function
            # inside tune.report, so a trial that trained its whole budget ends its runs here, with weights.
            _finish_members(trainer, logger, family, group)
            done = True
        elif position.get(evaluation.step, 0) % every:
            if report_all or time.monotonic() - last_report >= REPORT_EVERY_S:
                if report_all:  # a scheduler may stop the trial at this report: its steps are in MLflow first
                    logger.flush()
                reporting = time.perf_counter()
                tune.report(metrics)
                timing["seconds_reporting"] += time.perf_counter() - reporting
                last_report = time.monotonic()
            continue
        logger.flush()  # everything up to a checkpoint is in MLflow before the checkpoint exists
        reporting = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"trainer": trainer.state_dict(), "run_ids": run_ids}, Path(folder) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        timing["seconds_reporting"] += time.perf_counter() - reporting
        last_report = time.monotonic()
    if not done:  # restored from a checkpoint taken at the budget: nothing left to train, the runs to end
        _finish_members(trainer, logger, family, group)


def _finish_members(trainer: Trainer, logger: TrialRunLogger, family: Family, group: TrialGroup) -> None:
    """Flush, save every live member's weights and end its run FINISHED (diverged ones ended FAILED already)."""
    logger.flush()
    with tempfile.TemporaryDirectory() as folder:
        for seed in trainer.seeds:
            if seed in trainer.diverged or logger.ended(seed):
                continue
            path = Path(folder) / family.weights_name(group.config, seed)  # model_C4_seed1.pt, model_K10_seed0.pt
            torch.save(family.export(trainer, seed), path)
            logger.log_weights(seed, path)
            logger.end(seed, "FINISHED")
