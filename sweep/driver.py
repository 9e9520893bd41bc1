"""The driver: preflight checks, MLflow parent and child runs, the Ray Tune grid, and the end of a sweep.

config -> plan of trials -> Ray Tune -> trainer -> metric records -> MLflow -> analysis.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sweep.filters import FilterError, and_, tag_equals
from sweep.names import (
    ROLE_PARENT,
    ROLE_TRIAL,
    TAG_AXES,
    TAG_FAILURE,
    TAG_FAMILY,
    TAG_GRID_POINT,
    TAG_KNOB,
    TAG_PRESET,
    TAG_ROLE,
    TAG_SWEEP_ID,
    TAG_TUNE_PATH,
)
from sweep.plan import TrialGroup, plan_trials
from sweep.spec import SpecError, SweepSpec, load_yaml, validate

SPEC_ARTIFACT = "spec.yaml"


class SweepError(RuntimeError):
    """A sweep that cannot start or continue; its message is one line (the CLI exits 2)."""


@dataclass
class Sweep:
    """Everything the driver knows about one sweep once its runs exist."""

    spec: SweepSpec
    sweep_id: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    tune_path: str  # Ray Tune's experiment folder: a local path, or a URI such as s3://bucket/prefix/<id>
    trials: list[dict[str, Any]] = field(default_factory=list)  # {"group": ..., "run_ids": {seed: id}}
    source: str = ""

    @property
    def searched(self) -> bool:
        """Whether configurations are sampled (random or optuna): runs are then made when trials start."""
        return self.spec.search.algorithm != "grid"


# -- preflight: no Ray start, no MLflow write ----------------------------------------------------------

def resolve_address(flag: str | None) -> str:
    """--address, else RAY_ADDRESS, else "local": a fresh Ray on this machine, never someone else's."""
    return flag or os.environ.get("RAY_ADDRESS") or "local"


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    if address in ("local", "auto"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"Ray address {address!r} is malformed: expected host:port, ray://host:port, "
                         "'auto' or 'local'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise SweepError(f"Ray address {address} is unreachable ({exc.strerror or exc}); start the cluster "
                         "or pass another --address") from None


def check_local_gpus(spec: SweepSpec, address: str) -> None:
    if spec.resources.gpu <= 0 or address != "local":
        return
    import torch

    if torch.cuda.device_count() == 0:
        raise SweepError(f"resources.gpu={spec.resources.gpu} requested but this machine has no GPU "
                         "(torch sees 0 CUDA devices); use resources.gpu=0 or a cluster with GPUs")


def local_ray_cpus() -> float:
    """The CPUs ``ray.init(address="local")`` gives its one node: Ray's own count (cgroup-aware), else the
    machine's."""
    try:
        from ray._private.utils import get_num_cpus  # private, hence the fallback

        return float(get_num_cpus())
    except Exception:  # noqa: BLE001 - any change in Ray's internals: fall back to the plain count
        return float(os.cpu_count() or 1)


def check_local_cpus(spec: SweepSpec, address: str) -> None:
    """Before a local Ray starts: a trial asking for more CPUs than this machine has would wait forever."""
    if address != "local":
        return
    cpus = local_ray_cpus()
    if spec.resources.cpu > cpus:
        raise SweepError(f"resources.cpu={spec.resources.cpu:g} is more than the {cpus:g} CPUs of this machine "
                         f"(a local Ray): a trial could never start; use resources.cpu <= {cpus:g}")


def check_node_cpus(spec: SweepSpec, may_autoscale: bool) -> None:
    """After connecting: a trial must fit on one node (Tune waits forever otherwise), unless the cluster's
    autoscaler may add larger nodes."""
    import ray

    if may_autoscale:
        return
    largest = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)
    if spec.resources.cpu > largest:
        raise SweepError(f"resources.cpu={spec.resources.cpu:g} is more than any node of the Ray cluster has "
                         f"(largest: {largest:g} CPUs): a trial could never start; use resources.cpu <= "
                         f"{largest:g}, or --gpus-may-autoscale if the autoscaler adds larger nodes")


def check_cluster_gpus(spec: SweepSpec, gpus_may_autoscale: bool) -> None:
    import ray

    if spec.resources.gpu <= 0 or gpus_may_autoscale:
        return
    if ray.cluster_resources().get("GPU", 0) == 0:
        raise SweepError(f"resources.gpu={spec.resources.gpu} requested but the Ray cluster has no GPU; "
                         "use resources.gpu=0, or --gpus-may-autoscale if its autoscaler adds GPU workers")


def connect_ray(address: str) -> None:
    import ray

    # Checkpointing every tenth of a trial makes Tune snapshot often; that is intended, not a bottleneck here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():  # a host program (or a test) already chose the cluster
        return

    try:
        ray.init(address=address, include_dashboard=False if address == "local" else None,
                 logging_level=logging.WARNING, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise SweepError(f"cannot connect to Ray at {address!r}: {str(exc).splitlines()[0]}") from None


# -- MLflow runs ----------------------------------------------------------------------------------------

def new_sweep_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def concurrent_slots(spec: SweepSpec) -> int:
    """How many trials the connected Ray cluster can run at once with the spec's resources per trial."""
    import ray

    available = ray.cluster_resources()
    slots = available.get("CPU", 0) / spec.resources.cpu
    if spec.resources.gpu > 0 and available.get("GPU", 0) > 0:
        slots = min(slots, available["GPU"] / spec.resources.gpu)
    if spec.max_concurrent_trials:
        slots = min(slots, spec.max_concurrent_trials)
    return max(1, int(slots))


def create_sweep(spec: SweepSpec, source: str, tracking_uri: str, storage: str, slots: int = 1) -> Sweep:
    """Create the experiment, the parent run and one SCHEDULED child run per (grid point, seed).

    The parent is tagged with the grid's axes (``sweep.axes``, JSON) and knob (``sweep.knob``); each child is
    named by its grid point and seed (``C=4 lr=0.05 seed=1``, see :mod:`sweep.names`).
    ``slots``: trials the cluster runs at once, used to split expensive packed grid points (plan_trials).
    """
    from mlflow import MlflowClient

    from sweep import mlflow_ui, tracking
    from sweep.data import split_hash
    from sweep.provenance import library_tags

    tracking.init_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment_id = tracking.ensure_experiment(client, spec.tracking.experiment or spec.name)
    sweep_id = new_sweep_id(spec.name)
    tune_path = f"{storage.rstrip('/')}/{sweep_id}"
    family = spec.family
    resolved = spec.model_dump(mode="json")
    parent = tracking.create_parent_run(client, experiment_id, sweep_id, {
        TAG_PRESET: source, TAG_TUNE_PATH: tune_path, TAG_AXES: json.dumps(list(spec.axes)),
        TAG_KNOB: family.knob, TAG_FAMILY: family.name,
        **library_tags()})
    tracking.log_params(client, parent, mlflow_ui.parent_params(resolved))
    client.log_text(parent, yaml.safe_dump(resolved, sort_keys=False), SPEC_ARTIFACT)

    sweep = Sweep(spec, sweep_id, tracking_uri, experiment_id, parent, tune_path, source=source)
    digest = split_hash(spec.split_seed)
    if sweep.searched:
        # Configurations are sampled: each trial makes its runs when it starts (sweep.trainable). The base
        # group holds the spec's values of every key and all seeds, packed into one trial.
        from sweep.plan import TrialGroup

        base = TrialGroup(config=spec.configs()[0], seeds=tuple(spec.seed_list), axes=spec.axes,
                          family_name=family.name)
        sweep.trials.append({"group": base.to_dict(), "run_ids": {}})
        mlflow_ui.decorate_experiment(client, experiment_id, spec.model.family)
        mlflow_ui.decorate_parent(client, parent, sweep_id, source, 0, digest, spec.split_seed)
        return sweep
    groups = plan_trials(spec, slots)
    widths = sorted({g.config.axis_value(family.knob) for g in groups})  # the knob's values
    for group in groups:
        run_ids = {}
        for seed in group.seeds:
            params = group.member_params(seed, digest, family)
            run_ids[seed] = tracking.create_trial_run(client, experiment_id, sweep_id, parent, group.run_name(seed),
                                                      params, group.grid_point, family.knob, group.seeds)
            mlflow_ui.decorate_child(client, run_ids[seed], params, source, widths, family.knob)
        sweep.trials.append({"group": group.to_dict(), "run_ids": run_ids})
    mlflow_ui.decorate_experiment(client, experiment_id, spec.model.family)
    mlflow_ui.decorate_parent(client, parent, sweep_id, source, sum(len(g.seeds) for g in groups), digest,
                              spec.split_seed)
    return sweep


def load_sweep(sweep_id: str | None, tracking_uri: str) -> Sweep:
    """Find a sweep's parent run (the latest one if ``sweep_id`` is None) and rebuild its :class:`Sweep`."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    try:
        query = and_(tag_equals(TAG_ROLE, ROLE_PARENT), tag_equals(TAG_SWEEP_ID, sweep_id) if sweep_id else "")
    except FilterError as exc:
        raise SweepError(f"no sweep can have id {sweep_id!r}: {exc}") from None
    parents = client.search_runs(experiments, query, order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise SweepError(f"no sweep {sweep_id!r} in {tracking_uri}" if sweep_id
                         else f"no sweep found in {tracking_uri}")
    parent = parents[0]
    text = Path(client.download_artifacts(parent.info.run_id, SPEC_ARTIFACT)).read_text()
    try:
        spec = validate(load_yaml(text))
    except SpecError as exc:  # e.g. a sweep made before a rule was added (name pattern, distinct grid values)
        raise SweepError(f"sweep {parent.data.tags[TAG_SWEEP_ID]}'s spec.yaml is no longer valid: {exc}") from None
    return Sweep(spec, parent.data.tags[TAG_SWEEP_ID], tracking_uri, parent.info.experiment_id,
                 parent.info.run_id, parent.data.tags[TAG_TUNE_PATH], source=parent.data.tags.get(TAG_PRESET, ""))


def check_resumable(sweep: Sweep) -> None:
    """Refuse, before anything is written, a sweep that already FINISHED or whose Ray Tune state is gone."""
    from mlflow import MlflowClient
    from ray import tune

    from sweep.tracking import with_retry

    status = with_retry(MlflowClient(sweep.tracking_uri).get_run, sweep.parent_run_id).info.status
    if status == "FINISHED":
        raise SweepError(f"sweep {sweep.sweep_id} already FINISHED; nothing to resume "
                         f"(sweep analyze {sweep.sweep_id} shows its results)")
    if not tune.Tuner.can_restore(sweep.tune_path):
        raise SweepError(f"no Ray Tune state at {sweep.tune_path} to resume sweep {sweep.sweep_id}")


def trial_runs(sweep: Sweep) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(sweep.tracking_uri)
    query = and_(tag_equals(TAG_SWEEP_ID, sweep.sweep_id), tag_equals(TAG_ROLE, ROLE_TRIAL))
    return list(client.search_runs([sweep.experiment_id], query, max_results=10000))


# -- Ray Tune -----------------------------------------------------------------------------------------

def _trainable(spec: SweepSpec) -> Any:
    from ray import tune

    from sweep.data import digits_arrays
    from sweep.trainable import train_group

    # The data set goes into Ray's object store once, instead of every worker importing scikit-learn; the
    # family object travels by value, so a family registered only in this process trains on workers too.
    trainable = tune.with_parameters(train_group, digits=digits_arrays(), family=spec.family)
    return tune.with_resources(trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def _run_config(sweep: Sweep) -> Any:
    from ray import tune

    from sweep.progress import Progress
    from sweep.search_callback import EndStoppedTrials

    callbacks = [Progress()]
    if sweep.spec.search.active:
        callbacks.append(EndStoppedTrials(sweep.tracking_uri, sweep.experiment_id, sweep.sweep_id))
    return tune.RunConfig(
        name=sweep.sweep_id, storage_path=sweep.tune_path.rsplit("/", 1)[0], verbose=0,
        failure_config=tune.FailureConfig(max_failures=sweep.spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2), callbacks=callbacks,
    )


def _search_tuner(sweep: Sweep, slots: int) -> Any:
    """The Tuner of a search sweep, or of a grid with a scheduler: Ray Tune's searcher and scheduler, the
    searched keys as ``tune.*`` distributions under ``point``, the validation metric as Tune's metric."""
    from ray import tune

    from sweep import search
    from sweep.data import split_hash

    spec = sweep.spec
    common = {"tracking_uri": sweep.tracking_uri, "cpus": spec.resources.cpu,
              "checkpoint_every": spec.checkpoint_every, "report_every_evaluation": True}
    if sweep.searched:
        info = {"group": sweep.trials[0]["group"], "sweep_id": sweep.sweep_id, "experiment_id": sweep.experiment_id,
                "parent_run_id": sweep.parent_run_id, "source": sweep.source,
                "split_hash": split_hash(spec.split_seed), "widths": search.knob_values(spec),
                "metric": spec.search.metric}
        param_space = {"search": info, "point": search.tune_space(spec), **common}
        num_samples = spec.search.num_samples
        search_alg = search.searcher(spec, slots)
    else:  # a grid with a scheduler: the grid's trials, stopped by ASHA
        param_space = {"trial": tune.grid_search(sweep.trials), **common}
        num_samples, search_alg = 1, None
    return tune.Tuner(
        _trainable(spec), param_space=param_space, run_config=_run_config(sweep),
        tune_config=tune.TuneConfig(
            metric=spec.search.metric, mode=spec.search.mode, num_samples=num_samples, search_alg=search_alg,
            scheduler=search.scheduler(spec),
            max_concurrent_trials=None if sweep.searched else spec.max_concurrent_trials,  # the searcher limits
            # Reuse a finished trial's worker (imports and data loaded) unless a scheduler can stop trials: a
            # stopped trial's actor must not be reused (an open Ray bug with ASHA and function trainables).
            reuse_actors=spec.search.scheduler == "fifo",
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
        ),
    )


def run_tuner(sweep: Sweep, restore: bool = False, slots: int = 1) -> Any:
    """Run (or, with ``restore``, finish) the sweep's trials on Ray Tune; returns the ResultGrid. ``slots``:
    trials run at once (a searcher's concurrency)."""
    from ray import tune

    if sweep.spec.search.active and not restore:
        return _search_tuner(sweep, slots).fit()
    if restore:
        if not tune.Tuner.can_restore(sweep.tune_path):
            raise SweepError(f"no Ray Tune state at {sweep.tune_path} to resume sweep {sweep.sweep_id}")
        tuner = tune.Tuner.restore(sweep.tune_path, trainable=_trainable(sweep.spec),
                                   resume_unfinished=True, resume_errored=True)
    else:
        param_space = {
            "trial": tune.grid_search(sweep.trials),
            "tracking_uri": sweep.tracking_uri,
            "cpus": sweep.spec.resources.cpu,
            "checkpoint_every": sweep.spec.checkpoint_every,
        }
        tuner = tune.Tuner(
            _trainable(sweep.spec), param_space=param_space, run_config=_run_config(sweep),
            tune_config=tune.TuneConfig(
                max_concurrent_trials=sweep.spec.max_concurrent_trials,
                # Every trial asks for the same resources, so a finished trial's worker process (torch,
                # MLflow and the data already imported and loaded: ~10 s of CPU) takes the next one.
                reuse_actors=True,
                trial_name_creator=lambda t: TrialGroup.from_dict(t.config["trial"]["group"]).label,
                trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
            ),
        )
    return tuner.fit()


def finish_sweep(sweep: Sweep, results: Any) -> list[dict[str, Any]]:
    """End every run: trials Tune gave up on and runs left open become FAILED; the parent FINISHED.

    Returns one row per member: grid point, the knob's value (under the knob's name, ``C`` or ``K``), seed,
    the final value of each of the family's table metrics, status, failure reason.
    """
    from mlflow import MlflowClient

    from sweep import tracking
    from sweep.mlflow_ui import TAG_LOGGING_SHARE
    from sweep.search_callback import trial_run_ids

    client = MlflowClient(sweep.tracking_uri)
    family = sweep.spec.family
    knob = family.knob
    runless: list[dict[str, Any]] = []  # trials that failed before making a run: rows of their own
    for result in results:
        if result.error is not None:
            reason = f"trial failed after {sweep.spec.max_failures} retries: {error_summary(result.error)}"
            run_ids = trial_run_ids(client, sweep.experiment_id, sweep.sweep_id, _trial_id(result), result.config)
            tracking.end_unfinished_runs(client, run_ids, reason[:4000])
            if not run_ids:
                group = trial_group(sweep, result.config)
                runless.append({"grid_point": group.grid_point, knob: group.config.axis_value(knob),
                                "seed": ",".join(map(str, group.seeds)),
                                **{key: float("nan") for key, _ in family.table_metrics},
                                "status": "FAILED", "failure_reason": reason})
    if sweep.searched:
        end_superseded_runs(sweep, results)
    runs = trial_runs(sweep)
    tracking.end_unfinished_runs(client, [r.info.run_id for r in runs], "trial did not finish")
    if sweep.spec.search.active:
        record_best(sweep)
    runs = trial_runs(sweep)
    rows = sorted(
        ({"grid_point": r.data.tags.get(TAG_GRID_POINT, f"{knob}={r.data.params[knob]}"),
          knob: int(r.data.params[knob]), "seed": int(r.data.params["seed"]),
          **{key: r.data.metrics.get(key, float("nan")) for key, _ in family.table_metrics},
          "status": r.info.status, "failure_reason": r.data.tags.get(TAG_FAILURE, "")} for r in runs),
        key=lambda row: (row[knob], row["grid_point"], row["seed"]),
    ) + runless
    n_failed = sum(row["status"] != "FINISHED" for row in rows)
    share = logging_share(results)
    # A tag, not a metric: a parent metric would get a chart of its own among the trials' metrics.
    share_tag = {} if share is None else {TAG_LOGGING_SHARE: f"{share:.4f}"}
    tracking.log_params(client, sweep.parent_run_id, {}, tags={"n_trials": str(len(rows)),
                                                               "n_failed": str(n_failed), **share_tag})
    tracking.with_retry(client.set_terminated, sweep.parent_run_id, "FINISHED")
    return rows


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def error_summary(error: BaseException) -> str:
    """A trial's error as plain text: its cause's last line (``ValueError: C, budget and lr must be positive``),
    without the terminal colour codes Ray puts around the remote frame's name."""
    lines = [line.strip() for line in _ANSI.sub("", str(error)).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def trial_group(sweep: Sweep, config: dict[str, Any]) -> TrialGroup:
    """The grid point and seeds of a Tune trial, from its config: a grid trial's group, or a search trial's
    base group with its sampled values."""
    from sweep.trainable import search_group

    if "trial" in config:
        return TrialGroup.from_dict(config["trial"]["group"], family=sweep.spec.family)
    return search_group(config, sweep.spec.family)


def _trial_id(result: Any) -> str:
    """The Tune trial whose runs hold a result: its own, or the one whose finished runs it reused."""
    metrics = result.metrics or {}
    return str(metrics.get("reused_from") or _own_trial_id(result))


def _own_trial_id(result: Any) -> str:
    """A result's Tune trial id: from its metrics, else (a trial that failed before reporting) from its folder,
    named ``trial_<id>`` by the Tuner."""
    metrics = result.metrics or {}
    if metrics.get("trial_id"):
        return str(metrics["trial_id"])
    return Path(str(result.path)).name.removeprefix("trial_") if result.path else ""


def end_superseded_runs(sweep: Sweep, results: Any) -> list[str]:
    """A search sweep's runs of Tune trials that are not in the results: the first runs of configurations Ray
    re-suggested under new trial ids after a driver restart. They end KILLED, tagged ``superseded`` with a
    reason, so nothing stays RUNNING and the analysis (FINISHED runs only) counts each configuration once."""
    from mlflow import MlflowClient

    from sweep import tracking
    from sweep.search import TAG_SUPERSEDED, TAG_TUNE_TRIAL

    client = MlflowClient(sweep.tracking_uri)
    live = {_own_trial_id(r) for r in results}
    ended = []
    for run in trial_runs(sweep):
        trial = run.data.tags.get(TAG_TUNE_TRIAL)
        if trial and trial not in live and run.info.status in ("RUNNING", "SCHEDULED"):
            reason = (f"superseded: Tune trial {trial} was lost with the driver; its configuration was "
                      "suggested again under another trial id after `sweep resume`")
            tracking.log_params(client, run.info.run_id, {}, tags={TAG_SUPERSEDED: "true", TAG_FAILURE: reason})
            tracking.with_retry(client.set_terminated, run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
    return ended


def record_best(sweep: Sweep) -> None:
    """On the parent run, the best configuration (:func:`analysis.search.best_configuration`: per grid point,
    over all its FINISHED seeds, among those that ran the budget): tag ``best_config`` (JSON of every axis
    value), params ``best.<axis>``, tag ``best_run_ids`` (JSON list) and ``best.<metric>`` (mean over seeds).
    The same function writes summary.md's Search section and marks search.png, so the three agree."""
    from mlflow import MlflowClient

    from analysis.load import sweep_axes
    from analysis.search import best_configuration, configurations, search_settings
    from sweep import tracking
    from sweep.search import TAG_BEST_CONFIG

    client = MlflowClient(sweep.tracking_uri)
    parent = tracking.with_retry(client.get_run, sweep.parent_run_id)
    settings = search_settings(parent)
    frame = configurations(client, parent, settings) if settings else None
    if frame is None or frame.empty:
        return
    best = best_configuration(frame, settings)
    axes, _ = sweep_axes(parent, [])
    config = {axis: best[axis].item() if hasattr(best[axis], "item") else best[axis] for axis in axes}
    metric = settings["metric"]
    tracking.log_params(client, sweep.parent_run_id, {f"best.{k}": v for k, v in config.items()},
                        tags={TAG_BEST_CONFIG: json.dumps(config), "best_run_ids": json.dumps(list(best["run_ids"])),
                              f"best.{metric}": f"{best['metric']:.6g}"})


def logging_share(results: Any) -> float | None:
    """Fraction of the trials' wall time spent in MLflow calls (the issue's budget: under 5%)."""
    logging_s = total_s = 0.0
    for result in results:
        metrics = result.metrics or {}
        if "seconds_logging" in metrics and metrics.get("time_total_s"):
            logging_s += metrics["seconds_logging"]
            total_s += metrics["time_total_s"]
    return logging_s / total_s if total_s else None


def reopen_parent(sweep: Sweep) -> None:
    from mlflow import MlflowClient

    from sweep.tracking import with_retry

    client = MlflowClient(sweep.tracking_uri)
    with_retry(client.update_run, sweep.parent_run_id, status="RUNNING")
