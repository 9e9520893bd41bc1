"""The MLflow record of a sweep: what its writer (``sweep``) and its reader (``analysis``) share.

Layout of one sweep:

* experiment: the spec's ``tracking.experiment``, else the sweep's ``name``;
* one **parent run** named ``<sweep_id>`` (``<name>-<date>-<time>-<4 hex>``) with tags ``sweep_id``,
  ``sweep.role=parent``, ``preset``, ``git_commit``, ``host``, library versions, ``sweep.axes`` (JSON list of
  the axes, knob first), ``sweep.knob`` (``C``, ``K``), ``sweep.family``, ``tune_path``, and at the end
  ``n_trials``, ``n_failed``; params = the resolved spec, each key prefixed ``sweep.``; artifact ``spec.yaml``;
  after analysis the artifacts under ``analysis/`` and the complexity curve as metrics ``curve/...``;
* one **child run** per (grid point, seed), made when its Ray trial first starts, named by every axis value
  then the seed (``C=4 lr=0.05 seed=1``). Tags ``sweep_id``, ``sweep.role=trial``, ``mlflow.parentRunId``,
  ``tune_trial_id``, the knob (``C=4``), ``seed``, ``grid_point`` (the name without the seed), ``pack_seeds``
  (the seeds trained with it in one packed computation), ``ray.node_id``, ``ray.worker_pid`` and the machine
  that trained it (``hw.*``, library versions); params: the family's ``member_params``; metrics: the family's
  with ``step`` = its budget unit (update, epoch, EM iteration). A trial's identity is (every axis value,
  seed). A diverged member ends FAILED with ``failure_reason``; one the scheduler stopped ends FINISHED with
  ``stopped_early``.

Also here: MLflow filter strings built in one place, the retry of calls that lost a race for a busy sqlite
file, and paging through every result of a search.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from models.family import get_family
from models.spec import CommonSpec, load_yaml

# -- runs and their roles --------------------------------------------------------------------------------
TAG_SWEEP_ID = "sweep_id"
TAG_ROLE = "sweep.role"
ROLE_PARENT = "parent"
ROLE_TRIAL = "trial"
TAG_PARENT_RUN = "mlflow.parentRunId"

# -- the parent ------------------------------------------------------------------------------------------
TAG_PRESET = "preset"
TAG_TUNE_PATH = "tune_path"  # Ray Tune's folder for this sweep, which `sweep resume` restores
TAG_AXES = "sweep.axes"
TAG_KNOB = "sweep.knob"
TAG_FAMILY = "sweep.family"
TAG_N_TRIALS = "n_trials"
TAG_N_FAILED = "n_failed"
TAG_LOGGING_SHARE = "sweep.logging_share"  # a tag, not a metric: it must not get a chart among trial metrics
TAG_BEST_CONFIG = "best_config"
TAG_BEST_RUN_IDS = "best_run_ids"
PARENT_PARAM_PREFIX = "sweep."  # the resolved spec as params: sweep.model.C = [1, 2, 4, 64]
SPEC_ARTIFACT = "spec.yaml"
ANALYSIS_ARTIFACT_DIR = "analysis"
CURVE_PREFIX = "curve/"  # the complexity curve on the parent: curve/test_error at step = the knob's value
TAG_CURVE_PREFIX = "sweep.curve_prefix"  # which prefix holds the current curve (curve2/ after it changed)

# -- a trial's runs --------------------------------------------------------------------------------------
TAG_TUNE_TRIAL = "tune_trial_id"  # the Ray Tune trial that made the run
TAG_GRID_POINT = "grid_point"
TAG_SEED = "seed"
TAG_PACK_SEEDS = "pack_seeds"  # the seeds trained together in one packed computation with this run's: "0,1,2"
TAG_NODE_ID = "ray.node_id"
TAG_WORKER_PID = "ray.worker_pid"
TAG_FAILURE = "failure_reason"
TAG_STOPPED_EARLY = "stopped_early"
TAG_STOPPED_AT = "stopped_at_step"
TAG_SUPERSEDED = "superseded"  # a re-suggested configuration's first runs, ended by the driver
TAG_CREATE_TOKEN = "sweep.create_token"  # one per run, so a retried create_run can find the first attempt
TAG_REFINE_ORDER = "refine.order"  # a refine search's: the knob value's place in the order chosen (1, 2, ...)
TAG_REFINE_REASON = "refine.reason"  # why the refine search chose it
DIVERGED = "diverged"  # how the reason of a member whose loss became NaN/inf starts

# -- the machine that trained a run (sweep.provenance.machine_tags) ------------------------------------
TAG_CPU = "hw.cpu"  # the CPU's model name, as the OS reports it
TAG_CPU_CAPABILITY = "hw.cpu_capability"  # torch's kernel set: DEFAULT, AVX2, AVX512, ...
TAG_BLAS = "hw.blas"  # "mkl 2024.2", "openblas", ...
TAG_TORCH_THREADS = "hw.torch_threads"
TAG_GPU = "hw.gpu"  # device name; only on a GPU trial
TAG_CUDA = "hw.cuda"
TAG_CUDNN = "hw.cudnn"
TAG_MKL_INSTRUCTIONS = "hw.mkl_instructions"  # MKL_ENABLE_INSTRUCTIONS, when set: MKL's kernel choice
TAG_CODE_PATH = "hw.code_path"  # the family's implementation in that process (models.family.Family.code_path)
#: Tags whose values must agree for two runs' numbers to be comparable bit for bit (the analysis notes a grid
#: point whose seeds differ in one of them).
HARDWARE_IDENTITY = (TAG_CPU, TAG_CPU_CAPABILITY, TAG_BLAS, TAG_GPU, TAG_CODE_PATH)

# -- what MLflow's UI reads (found in its JS bundle, mlflow/server/js/build) -------------------------------
TAG_NOTE = "mlflow.note.content"  # a run's or experiment's Description (Markdown)
TAG_RUN_COLOR = "mlflow.runColor"  # a run's colour in the runs table and every chart
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # custom_model_development: the runs table, not the GenAI view
TAG_WIDTH = "width"  # the grouping tag: "C=04", "K=05", zero-padded so that the groups sort by the knob


# -- run names ------------------------------------------------------------------------------------------
BEST_MARK = "★ "  # leads the names of the best configuration's runs (a search or scheduled grid)
STOPPED_MARK = "stopped@{step} "  # leads the names of runs the scheduler stopped early


def short_value(value: object) -> str:
    """An axis value as names and legends print it: a float to 3 significant digits (``0.00226``, ``0.05``,
    ``1e-06``; a whole one as Python prints it, ``0.0``), anything else as ``str()``. The exact value stays in the
    run's params and ``grid_point`` tag."""
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.3g}"
    return str(value)


def short_point(grid_point: str) -> str:
    """A ``grid_point`` tag (``C=4 lr=0.0022637229697395483 batch_size=32``) with its floats shortened
    (``C=4 lr=0.00226 batch_size=32``): the first part of a run's name."""
    def one(pair: str) -> str:
        axis, _, value = pair.partition("=")
        try:
            number: object = int(value)
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                return pair
        return f"{axis}={short_value(number)}"

    return " ".join(one(pair) for pair in grid_point.split(" ") if pair)


def marked_name(name: str, *, best: bool = False, stopped_at: int | None = None) -> str:
    """``name`` with the marks that lead it replaced: ``★ `` for the best configuration's runs, ``stopped@150 ``
    for runs a scheduler stopped at step 150. The runs table shows a name's start however narrow its column."""
    return (BEST_MARK if best else "") + ("" if stopped_at is None else STOPPED_MARK.format(step=stopped_at)) + \
        unmarked_name(name)


def unmarked_name(name: str) -> str:
    """A run's name without the marks of :func:`marked_name`."""
    name = name.removeprefix(BEST_MARK)
    if name.startswith("stopped@"):
        head, _, rest = name.partition(" ")
        if head.removeprefix("stopped@").isdigit():
            name = rest
    return name


# -- filter strings ----------------------------------------------------------------------------------------
class FilterError(ValueError):
    """A key or value that no MLflow filter string can express; one-line message."""


def quote_key(key: str) -> str:
    """``key`` between backquotes: a key with a dot (``sweep.role``) is otherwise read as ``tags.sweep``."""
    if not key or "`" in key:
        raise FilterError(f"MLflow filter key {key!r} is empty or contains a backquote")
    return f"`{key}`"


def quote_value(value: str) -> str:
    """``value`` as an MLflow string literal: ``'value'``, or ``"value"`` when it contains a single quote.

    MLflow's parser strips a value's outer quotes without unescaping anything (``'it''s'`` is ``it''s``), so a
    value with both kinds of quote, or ending in a backslash, cannot be written and is refused here instead of
    becoming a filter that silently matches something else."""
    if value.endswith("\\"):
        raise FilterError(f"MLflow filter value {value!r} ends with a backslash")
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise FilterError(f"MLflow filter value {value!r} contains both kinds of quote")


def tag_equals(key: str, value: str) -> str:
    """``tags.`key` = 'value'``: runs whose tag ``key`` is exactly ``value``."""
    return f"tags.{quote_key(key)} = {quote_value(value)}"


def and_(*clauses: str) -> str:
    """The clauses joined with AND (empty clauses dropped); ``""`` matches every run."""
    return " AND ".join(c for c in clauses if c)


def trials_of(sweep_id: str) -> str:
    """The filter of one sweep's child runs."""
    return and_(tag_equals(TAG_SWEEP_ID, sweep_id), tag_equals(TAG_ROLE, ROLE_TRIAL))


# -- calls that may lose a race for a busy store -----------------------------------------------------------
T = TypeVar("T")


def transient(exc: BaseException) -> bool:
    """A sqlite store another process holds ("database is locked"), a tracking server's 5xx, or a write of a key
    that another process wrote a moment earlier ("UNIQUE constraint failed"): MLflow sets a tag by reading, then
    inserting when the key was missing, so two sweeps starting on one store can both insert the experiment's
    tags, and the second insert fails; done again, it finds the key and updates it."""
    return isinstance(exc, MlflowException) and (
        "locked" in str(exc) or "busy" in str(exc) or "UNIQUE constraint failed" in str(exc)
        or exc.get_http_status_code() >= 500)


def retrying(attempts: int = 8) -> Retrying:
    """tenacity's loop over transient errors: backoff doubling from 50 ms (up to 5 s), plus up to 50 ms of jitter."""
    return Retrying(retry=retry_if_exception(transient), stop=stop_after_attempt(attempts),
                    wait=wait_exponential_jitter(multiplier=0.05, max=5.0, jitter=0.05), reraise=True)


def with_retry(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, retried on a transient error. Only for idempotent calls (reads, status updates,
    tags, metric batches: MLflow skips a metric row already there with the same key, step, timestamp and value),
    which a call that committed and then reported an error may simply do again."""
    for attempt in retrying():
        with attempt:
            return fn(*args, **kwargs)
    raise AssertionError("unreachable")


# -- reading ---------------------------------------------------------------------------------------------
PAGE = 1000  # runs per search_runs page (MLflow's default maximum)
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit


def experiment_ids(client: MlflowClient) -> list[str]:
    """Every active experiment, all pages."""
    ids: list[str] = []
    token = None
    while True:
        page = with_retry(client.search_experiments, view_type=ViewType.ACTIVE_ONLY, max_results=PAGE,
                          page_token=token)
        ids.extend(e.experiment_id for e in page)
        token = page.token
        if not token:
            return ids


def search_all_runs(client: MlflowClient, experiment_ids: Sequence[str], filter_string: str,
                    order_by: list[str] | None = None, limit: int | None = None) -> Iterator[Run]:
    """Every run matching ``filter_string``, following MLflow's page tokens (a single search stops at its
    ``max_results``), newest first unless ``order_by`` says otherwise; at most ``limit`` runs."""
    if not experiment_ids:
        return
    token = None
    seen = 0
    while True:
        page = with_retry(client.search_runs, list(experiment_ids), filter_string,
                          max_results=PAGE if limit is None else min(PAGE, limit),
                          order_by=order_by or ["attributes.start_time DESC"], page_token=token)
        for run in page:
            yield run
            seen += 1
            if limit is not None and seen >= limit:
                return
        token = page.token
        if not token:
            return


def sweep_runs(client: MlflowClient, experiment_id: str, sweep_id: str, *clauses: str) -> list[Run]:
    """Every child run of a sweep (further narrowed by ``clauses``), all pages, newest first."""
    return list(search_all_runs(client, [experiment_id], and_(trials_of(sweep_id), *clauses)))


def find_parent_run(client: MlflowClient, sweep_id: str | None = None) -> Run:
    """The parent run of ``sweep_id``, or of the most recently started sweep when it is None. LookupError (one
    line naming the id asked for and a few recorded ones) when there is no such sweep."""
    try:
        query = and_(tag_equals(TAG_ROLE, ROLE_PARENT), tag_equals(TAG_SWEEP_ID, sweep_id) if sweep_id else "")
    except FilterError as exc:
        raise LookupError(f"no sweep can have id {sweep_id!r}: {exc}") from None
    ids = experiment_ids(client)
    parents = list(search_all_runs(client, ids, query, limit=1))
    if parents:
        return parents[0]
    recent = [r.data.tags.get(TAG_SWEEP_ID, r.info.run_id)
              for r in search_all_runs(client, ids, tag_equals(TAG_ROLE, ROLE_PARENT), limit=5)]
    if recent:  # then a sweep id was asked for: without one, the latest of these would have been found
        raise LookupError(f"no sweep with id {sweep_id!r} at {client.tracking_uri}; recent sweep ids: "
                          f"{', '.join(recent)}")
    asked = f"no sweep {sweep_id!r}: " if sweep_id else ""
    raise LookupError(f"{asked}no sweep is recorded at {client.tracking_uri} (no run has tag "
                      f"{TAG_ROLE}={ROLE_PARENT})")


def read_spec(client: MlflowClient, parent: Run) -> CommonSpec:
    """A sweep's spec as it was run: the parent's ``spec.yaml`` artifact, validated by its family's spec class
    (the family named by the parent's ``sweep.family`` tag; sweeps made before families were the ResNet's).
    LookupError (one line) for a family not registered here."""
    name = parent.data.tags.get(TAG_FAMILY, "resnet")
    try:
        family = get_family(name)
    except KeyError as exc:
        raise LookupError(f"sweep {parent.data.tags.get(TAG_SWEEP_ID)} is of family {name!r}, which is not "
                          f"registered in this process ({exc.args[0]})") from None
    text = Path(with_retry(client.download_artifacts, parent.info.run_id, SPEC_ARTIFACT)).read_text()
    return family.spec_class.model_validate(load_yaml(text))
