"""The Ray Tune trainable: a plain function that trains one trial's pack of seeds, logs to MLflow and reports.

Ray and MLflow meet the trainer here and nowhere else. Every trial, of a grid or a search alike, makes its
MLflow runs when it first starts (:func:`sweep.tracking.find_or_create_trial_runs`), so a restarted or
restored trial continues its own runs.

torch is imported inside the functions that use it, which run on the workers: the driver imports this module
only to hand Tune :func:`train_group`, and torch's import (~2.5 s of CPU) would lengthen every sweep's start.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
from mlflow import MlflowClient
from ray import tune

from models.digits import DigitsArrays
from models.family import Family, Trainer
from models.records import Evaluation
from record import TAG_CODE_PATH, TAG_GRID_POINT, TAG_SEED, TAG_TUNE_TRIAL, sweep_runs, tag_equals
from record.colours import configuration_hex_colour
from sweep import mlflow_ui
from sweep.plan import TrialGroup, trial_group
from sweep.provenance import machine_tags
from sweep.tracking import TrialRunLogger, find_or_create_trial_runs

CHECKPOINT_FILE = "trainer.pt"
# Between checkpoints, results go to Tune at most this often: each report costs ~6 ms of the trial (5% of
# hw2's trial time at one per evaluation, bench/overhead.py), and the progress line reads them every 5 s.
REPORT_EVERY_S = 1.0


def checkpoint_interval(n_evaluations: int, checkpoint_every: int | None) -> int:
    """Evaluations between checkpoints; by default at most a tenth of a trial is lost to a crash."""
    return checkpoint_every or max(1, math.ceil(n_evaluations / 10))


def train_group(config: dict[str, Any], digits: DigitsArrays | None = None, family: Family | None = None) -> None:
    """Ray Tune function trainable. ``config``: ``group`` (a ``TrialGroup.to_dict()``), ``point`` (a searcher's
    sampled values, empty for a grid), ``sweep`` (ids and what the runs' descriptions need), ``tracking_uri``,
    ``cpus``, ``checkpoint_every``, ``report_every_evaluation``. ``digits``: :func:`models.digits.digits_arrays`
    (bound with ``tune.with_parameters``, so workers need not import scikit-learn). ``family``: the sweep's
    family object, bound the same way so that a family registered only in the driver process trains here."""
    import torch  # on the worker: see the module's docstring

    for name in ("ray.train", "ray.tune"):  # Tune logs every checkpoint at INFO; one sweep makes hundreds
        logging.getLogger(name).setLevel(logging.WARNING)
    group = trial_group(config, family)
    family = family or group.family
    done = finished_elsewhere(config, group, family)
    if done is not None:
        tune.report(done)
        return
    run_ids = open_runs(config, group, family)
    # Ray gives each trial `cpus` CPUs; more torch threads than that only fight over them.
    torch.set_num_threads(max(1, int(config["cpus"])))
    train_config = replace(group.config, device="cuda" if ray.get_gpu_ids() else "cpu")
    trainer = family.trainer(train_config, group.seeds, digits)
    # the validation split is held out only where something selects on it (searches and scheduled grids)
    validation = tuple(m.name for m in family.validation_metrics) if getattr(train_config, "val_fraction", 0) else ()
    metric_names = (*family.metric_names, *validation)
    logger = TrialRunLogger(config["tracking_uri"], run_ids, metric_names=metric_names)
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
                 tags={**machine_tags(train_config.device), TAG_CODE_PATH: family.code_path(train_config)})
    _train(trainer, logger, family, group, run_ids, metric_names, config)


def open_runs(config: dict[str, Any], group: TrialGroup, family: Family) -> dict[int, str]:
    """This trial's runs, found (a restart) or made now, one per seed; a new run is described for the UI and
    gets the trial's ``run_tags`` (a refine search's order and reason)."""
    info = config["sweep"]
    client = MlflowClient(config["tracking_uri"])
    # pack_size: how many seeds this trial trains together, as the plan chose it (the machine's cost table or
    # the spec's pack_size); a member's numbers do not depend on it beyond float rounding.
    params = {seed: {**family.member_params(group.config, seed, info["split_hash"]), "pack_size": len(group.seeds)}
              for seed in group.seeds}
    trial = tune.get_context().get_trial_id()
    names = {seed: group.run_name(seed, info.get("name_axes")) for seed in group.seeds}
    run_ids, created = find_or_create_trial_runs(
        client, info["experiment_id"], info["sweep_id"], info["parent_run_id"], trial, names, params,
        group.grid_point, family.knob, tags=config.get("run_tags", {}))
    colour = configuration_hex_colour(trial_index(trial)) if info.get("colour_by_configuration") else None
    for seed in created:
        mlflow_ui.decorate_child(client, run_ids[seed], params[seed], info["source"], info["knob_values"],
                                 family.knob, colour=colour)
    return run_ids


def trial_index(trial_id: str) -> int:
    """A Tune trial's place in its experiment: the counter its id ends with (``9f3a2_00004`` -> 4)."""
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else sum(map(ord, trial_id))


def finished_elsewhere(config: dict[str, Any], group: TrialGroup, family: Family) -> dict[str, Any] | None:
    """The last report of a complete FINISHED set of runs of this grid point and these seeds made by another
    Tune trial (mean over seeds), else None.

    After a driver SIGKILL, Ray re-suggests under new trial ids the configurations a searcher had started after
    its last experiment-state save; one that finished meanwhile must not train (and count) twice. Training is
    deterministic per (configuration, seed) on one machine, so the finished set's numbers are this trial's.
    """
    info = config["sweep"]
    client = MlflowClient(config["tracking_uri"])
    me = tune.get_context().get_trial_id()
    sets: dict[str, list[Any]] = {}
    same_point = tag_equals(TAG_GRID_POINT, group.grid_point)
    for run in sweep_runs(client, info["experiment_id"], info["sweep_id"], same_point):
        trial = run.data.tags.get(TAG_TUNE_TRIAL)
        if trial and trial != me and run.info.status == "FINISHED":
            sets.setdefault(trial, []).append(run)
    names = (*family.metric_names, *(m.name for m in family.validation_metrics))
    for trial, runs in sets.items():
        if sorted(int(r.data.tags[TAG_SEED]) for r in runs) != sorted(group.seeds):
            continue
        key = next(k for k in names if all(k in r.data.metrics for r in runs))
        step = min(_last_step(client, r, key) for r in runs)
        metrics = _mean_and_std({key: [r.data.metrics[key] for r in runs] for key in names
                                 if all(key in r.data.metrics for r in runs)})
        return {**metrics, "step": step, "progress": step / group.config.budget, "live_members": len(runs),
                "reused_from": trial}
    return None


def _last_step(client: MlflowClient, run: Any, key: str) -> int:
    """The last step a run logged ``key`` at."""
    return max(m.step for m in client.get_metric_history(run.info.run_id, key))


def _report_metrics(trainer: Trainer, evaluation: Evaluation, logger: TrialRunLogger,
                    metric_names: tuple[str, ...]) -> dict[str, Any]:
    """What goes to Tune: the step, progress, and the mean and std over live members of each of the family's
    metrics."""
    records = evaluation.records
    metrics: dict[str, Any] = {"step": evaluation.step, "progress": evaluation.step / trainer.config.budget,
                               "live_members": len(records), "seconds_logging": logger.seconds_logging,
                               "ms_per_update": trainer.ms_per_update}
    return {**metrics, **_mean_and_std({key: [r.metrics()[key] for r in records] for key in metric_names})}


def _mean_and_std(values: dict[str, list[float]]) -> dict[str, float]:
    """``key`` -> the mean over members, ``key_std`` -> their sample standard deviation (NaN for fewer than two):
    what a searcher reads of a trial (a refine search's seed intervals come from the std)."""
    out: dict[str, float] = {}
    for key, v in values.items():
        mean = sum(v) / len(v) if v else float("nan")
        out[key] = mean
        out[f"{key}_std"] = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else float("nan")
    return out


def _train(trainer: Trainer, logger: TrialRunLogger, family: Family, group: TrialGroup, run_ids: dict[int, str],
           metric_names: tuple[str, ...], config: dict[str, Any]) -> None:
    """Train to the budget, logging every evaluation, reporting to Tune and checkpointing on its cadence.

    Marks for bench/overhead.py ride along in every report: when this trial's training began (unix s), when the
    trainer last handed over an evaluation, and the seconds spent inside the trainer and in Tune's reports and
    checkpoints; with ``seconds_logging`` (MLflow), that is where the rest of a trial goes."""
    import torch  # see the module's docstring

    eval_steps = group.config.eval_steps()
    position = {step: i for i, step in enumerate(eval_steps, start=1)}  # absolute, so resumes keep cadence
    every = checkpoint_interval(len(eval_steps), config.get("checkpoint_every"))
    report_all = bool(config.get("report_every_evaluation"))  # a scheduler compares trials at its rungs
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
        if trainer.step >= group.config.budget or not evaluation.records:
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
    import torch  # see the module's docstring

    logger.flush()
    with tempfile.TemporaryDirectory() as folder:
        for seed in trainer.seeds:
            if seed in trainer.diverged or logger.ended(seed):
                continue
            path = Path(folder) / family.weights_name(group.config, seed)  # model_C4_seed1.pt, model_K10_seed0.pt
            torch.save(family.export(trainer, seed), path)
            logger.log_weights(seed, path)
            logger.end(seed, "FINISHED")
