"""The driver: a sweep's Ray, its MLflow parent run, and the one Ray Tune Tuner that runs (or resumes) its trials.

spec -> plan of trials -> Ray Tune -> family trainer -> metric records -> MLflow -> analysis. The trials make
their own MLflow runs when they start (:mod:`sweep.trainable`); :mod:`sweep.finish` ends the sweep.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

import ray
import yaml
from mlflow import MlflowClient
from pydantic import ValidationError
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from models.digits import digits_arrays, split_hash
from models.family import get_family
from models.spec import CommonSpec
from record import (
    SPEC_ARTIFACT,
    TAG_AXES,
    TAG_FAMILY,
    TAG_KNOB,
    TAG_PRESET,
    TAG_SWEEP_ID,
    TAG_TUNE_PATH,
    find_parent_run,
    read_spec,
    with_retry,
)
from sweep import mlflow_ui, tracking
from sweep.callbacks import EndStoppedTrials, Progress
from sweep.plan import name_axes, trial_group
from sweep.preflight import SweepError
from sweep.provenance import library_tags
from sweep.search import knob_values, scheduler, tune_search
from sweep.spec_check import one_line
from sweep.trainable import train_group


@dataclass
class Sweep:
    """Everything the driver knows about one sweep once its parent run exists."""

    spec: CommonSpec
    sweep_id: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    tune_path: str  # Ray Tune's experiment folder: a local path, or a URI such as s3://bucket/prefix/<id>
    source: str = ""


# -- Ray -------------------------------------------------------------------------------------------------

class _DropTokenNotice(logging.Filter):
    """Drops Ray's notice that token authentication is on (printed on every local start, though nothing is wrong
    and nothing is to be done); its warning that authentication is *off* still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def quiet_token_notice() -> None:
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _DropTokenNotice) for f in logger.filters):
        logger.addFilter(_DropTokenNotice())


def connect_ray(address: str) -> bool:
    """``ray.init`` at ``address`` ("local": a fresh Ray on this machine, without its dashboard, which costs
    seconds of start-up on a laptop); nothing when the host program already chose a cluster. True when this call
    connected (the caller then shuts Ray down), False when the host program had."""
    # Checkpointing every tenth of a trial makes Tune snapshot often; that is intended, not a bottleneck here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return False
    quiet_token_notice()
    local = address == "local"
    # A new local Ray starts one idle worker per CPU for its first driver and holds ray.init until they are up
    # (ray-project/ray#40131). Tune's trial actors never use them (Tune gives its actors a runtime env of their
    # own, and Ray then starts workers for it), so they only cost the start: ~2 s to the first update on 2 cores.
    system_config = {"prestart_worker_first_driver": False} if local else None
    try:
        ray.init(address=address, include_dashboard=False if local else None, logging_level=logging.WARNING,
                 log_to_driver=True, _system_config=system_config)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise SweepError(f"cannot connect to Ray at {address!r}: {str(exc).splitlines()[0]}") from None
    return True


def check_cluster(spec: CommonSpec, may_autoscale: bool) -> None:
    """After connecting: a trial must fit on one node and GPUs must exist (Tune would wait forever otherwise),
    unless the cluster's autoscaler may add larger or GPU nodes."""
    if may_autoscale:
        return
    largest = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)
    if spec.resources.cpu > largest:
        raise SweepError(f"resources.cpu={spec.resources.cpu:g} is more than any node of the Ray cluster has "
                         f"(largest: {largest:g} CPUs): a trial could never start; use resources.cpu <= "
                         f"{largest:g}, or --gpus-may-autoscale if the autoscaler adds larger nodes")
    if spec.resources.gpu > 0 and ray.cluster_resources().get("GPU", 0) == 0:
        raise SweepError(f"resources.gpu={spec.resources.gpu} requested but the Ray cluster has no GPU; "
                         "use resources.gpu=0, or --gpus-may-autoscale if its autoscaler adds GPU workers")


def concurrent_slots(spec: CommonSpec) -> int:
    """How many trials the connected Ray cluster can run at once with the spec's resources per trial."""
    available = ray.cluster_resources()
    slots = available.get("CPU", 0) / spec.resources.cpu
    if spec.resources.gpu > 0 and available.get("GPU", 0) > 0:
        slots = min(slots, available["GPU"] / spec.resources.gpu)
    if spec.max_concurrent_trials:
        slots = min(slots, spec.max_concurrent_trials)
    return max(1, int(slots))


# -- the sweep's MLflow parent ------------------------------------------------------------------------------

def new_sweep_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def create_sweep(spec: CommonSpec, source: str, tracking_uri: str, storage: str) -> Sweep:
    """The experiment and the sweep's parent run: tags (axes, knob, family, Ray Tune's folder, versions),
    the resolved spec as ``sweep.``-prefixed params and as the ``spec.yaml`` artifact, its UI decorations."""
    tracking.init_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment_id = tracking.ensure_experiment(client, spec.tracking.experiment or spec.name)
    sweep_id = new_sweep_id(spec.name)
    tune_path = f"{storage.rstrip('/')}/{sweep_id}"
    family = spec.family
    resolved = spec.model_dump(mode="json")
    parent = tracking.create_parent_run(client, experiment_id, sweep_id, {
        TAG_PRESET: source, TAG_TUNE_PATH: tune_path, TAG_AXES: json.dumps(list(spec.axes)),
        TAG_KNOB: family.knob, TAG_FAMILY: family.name, **library_tags()})
    tracking.log_params(client, parent, mlflow_ui.parent_params(spec))
    with_retry(client.log_text, parent, yaml.safe_dump(resolved, sort_keys=False), SPEC_ARTIFACT)
    mlflow_ui.decorate_experiment(client, experiment_id, family.name,
                                  spec.search.algorithm if spec.search.space else None)
    mlflow_ui.decorate_parent(client, parent, sweep_id, source, split_hash(spec.split_seed), spec.split_seed)
    return Sweep(spec, sweep_id, tracking_uri, experiment_id, parent, tune_path, source=source)


def load_sweep(sweep_id: str | None, tracking_uri: str) -> Sweep:
    """A recorded sweep (the latest one if ``sweep_id`` is None), with the spec it ran (its ``spec.yaml``)."""
    client = MlflowClient(tracking_uri)
    try:
        parent = find_parent_run(client, sweep_id)
        spec = read_spec(client, parent)
    except LookupError as exc:
        raise SweepError(str(exc)) from None
    except ValidationError as exc:  # a sweep made before a rule was added (name pattern, distinct grid values)
        why = one_line(exc, get_family(parent.data.tags.get(TAG_FAMILY, "resnet")))
        raise SweepError(f"sweep {parent.data.tags[TAG_SWEEP_ID]}'s spec.yaml is no longer valid: {why}") from None
    tags = parent.data.tags
    return Sweep(spec, tags[TAG_SWEEP_ID], tracking_uri, parent.info.experiment_id, parent.info.run_id,
                 tags[TAG_TUNE_PATH], source=tags.get(TAG_PRESET, ""))


def check_resumable(sweep: Sweep) -> None:
    """Refuse, before anything is written, a sweep that already FINISHED or whose Ray Tune state is gone."""
    status = with_retry(MlflowClient(sweep.tracking_uri).get_run, sweep.parent_run_id).info.status
    if status == "FINISHED":
        raise SweepError(f"sweep {sweep.sweep_id} already FINISHED; nothing to resume "
                         f"(sweep analyze {sweep.sweep_id} shows its results)")
    if not tune.Tuner.can_restore(sweep.tune_path):
        raise SweepError(f"no Ray Tune state at {sweep.tune_path} to resume sweep {sweep.sweep_id}")


def reopen_parent(sweep: Sweep) -> None:
    with_retry(MlflowClient(sweep.tracking_uri).update_run, sweep.parent_run_id, status="RUNNING")


# -- Ray Tune ----------------------------------------------------------------------------------------------

def _trainable(spec: CommonSpec) -> Any:
    # The data set goes into Ray's object store once, instead of every worker importing scikit-learn; the
    # family object travels by value, so a family registered only in this process trains on workers too.
    trainable = tune.with_parameters(train_group, digits=digits_arrays(), family=spec.family)
    return tune.with_resources(trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def quiet_tune_loggers() -> None:
    """Tune adds its CSV, JSON and TensorBoard logger callbacks unless told not to; the sweep passes the first
    two itself (build_tuner), so the third, and its printed TensorBoard command, are left out."""
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"


def build_tuner(sweep: Sweep, slots: int) -> tune.Tuner:
    """The sweep's one Tuner, whatever its search: the algorithm's :class:`sweep.search.TuneSearch` (the grid's
    planned trials, or a searcher's samples), the scheduler, Tune's metric when something selects on it."""
    spec = sweep.spec
    search = tune_search(spec, slots)
    info = {"sweep_id": sweep.sweep_id, "experiment_id": sweep.experiment_id, "parent_run_id": sweep.parent_run_id,
            "source": sweep.source, "split_hash": split_hash(spec.split_seed), "knob_values": knob_values(spec),
            # a sampled search's runs are told apart by configuration (their knob is usually one value)
            "colour_by_configuration": bool(spec.search.space), "name_axes": list(name_axes(spec))}
    param_space = {"group": search.group, "point": search.point, "sweep": info, "tracking_uri": sweep.tracking_uri,
                   "cpus": spec.resources.cpu, "checkpoint_every": spec.checkpoint_every,
                   # a searcher or a scheduler compares trials: every evaluation goes to Tune, not one a second
                   "report_every_evaluation": spec.search.selects}
    selects = spec.search.selects
    run_config = tune.RunConfig(
        name=sweep.sweep_id, storage_path=sweep.tune_path.rsplit("/", 1)[0], verbose=0,
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        # Every checkpoint is kept (about ten per trial by default): with num_to_keep, Tune deletes an old
        # checkpoint before its next experiment-state snapshot, which may still point to it, and a driver killed
        # in between can never be resumed (ray-project/ray#27790; it failed our CI that way).
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        # Tune's result files (result.json, progress.csv) without its TensorBoard logger, whose printed
        # `tensorboard --logdir` command fails (TensorBoard is not installed); see quiet_tune_loggers().
        callbacks=[Progress(), EndStoppedTrials(sweep.tracking_uri, sweep.experiment_id, sweep.sweep_id),
                   CSVLoggerCallback(), JsonLoggerCallback()])
    tune_config = tune.TuneConfig(
        metric=spec.search.metric if selects else None, mode=spec.search.mode if selects else None,
        num_samples=search.num_samples, search_alg=search.search_alg, scheduler=scheduler(spec),
        # a searcher limits its own concurrency; a grid's trials are limited here
        max_concurrent_trials=spec.max_concurrent_trials if search.search_alg is None else None,
        # Every trial asks for the same resources, so a finished trial's worker (torch, MLflow and the data
        # loaded: ~10 s of CPU) takes the next one; not under a scheduler, whose stopped trials' actors must not
        # be reused (an open Ray bug with ASHA and function trainables).
        reuse_actors=spec.search.scheduler == "fifo",
        trial_name_creator=lambda t: trial_group(t.config, spec.family).label,
        trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
    )
    quiet_tune_loggers()
    return tune.Tuner(_trainable(spec), param_space=param_space, run_config=run_config, tune_config=tune_config)


def run_tuner(sweep: Sweep, slots: int = 1, restore: bool = False) -> Any:
    """Run (or, with ``restore``, finish) the sweep's trials; returns Ray Tune's ResultGrid. ``slots``: trials
    the cluster runs at once (the grid's packing, a searcher's concurrency)."""
    if not restore:
        return build_tuner(sweep, slots).fit()
    if not tune.Tuner.can_restore(sweep.tune_path):
        raise SweepError(f"no Ray Tune state at {sweep.tune_path} to resume sweep {sweep.sweep_id}")
    quiet_tune_loggers()
    tuner = tune.Tuner.restore(sweep.tune_path, trainable=_trainable(sweep.spec), resume_unfinished=True,
                               resume_errored=True)
    return tuner.fit()
