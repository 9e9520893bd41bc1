"""Names shared by the writer (sweep/) and the reader (analysis/) of the MLflow record.

MLflow layout of one sweep:
  * experiment: the spec's ``tracking.experiment``, else the sweep's ``name``;
  * one parent run named ``<sweep_id>`` with tags ``sweep_id``, ``sweep.role=parent``, ``preset``,
    ``git_commit``, ``host`` and library versions; params = the resolved spec; artifact ``spec.yaml``;
    analysis outputs under the artifact folder ``analysis/``;
  * one child run per (grid point, seed) named ``C=4 seed=1`` with tags ``sweep_id``, ``sweep.role=trial``,
    ``mlflow.parentRunId``, ``C``, ``seed``, ``ray.node_id``; params ``C``, ``seed``, ``protocol``, ``budget``,
    ``lr``, ``batch_size``, ``eval_every``, ``split_seed``, ``split_hash``, ``model_family``,
    ``param_count``, ``dtype``; metrics :data:`METRICS` with ``step`` = update (handout) or epoch (epochs);
    a diverged trial ends FAILED with tag ``failure_reason``.
"""

# The metric keys a trial logs, in the trainer's MetricRecord field names.
METRICS = ("train_error", "test_error", "train_loss", "test_loss", "generalization_gap", "minibatch_loss")

TAG_SWEEP_ID = "sweep_id"
TAG_ROLE = "sweep.role"
ROLE_PARENT = "parent"
ROLE_TRIAL = "trial"
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_NODE_ID = "ray.node_id"
TAG_WORKER_PID = "ray.worker_pid"
TAG_FAILURE = "failure_reason"
TAG_PRESET = "preset"
TAG_TUNE_PATH = "tune_path"
ANALYSIS_ARTIFACT_DIR = "analysis"
TRIAL_PARAMS = (
    "C", "seed", "protocol", "budget", "lr", "batch_size", "eval_every", "split_seed", "split_hash",
    "model_family", "param_count", "dtype",
)

__all__ = [
    "METRICS", "TAG_SWEEP_ID", "TAG_ROLE", "ROLE_PARENT", "ROLE_TRIAL", "TAG_PARENT_RUN", "TAG_NODE_ID",
    "TAG_WORKER_PID", "TAG_FAILURE", "TAG_PRESET", "TAG_TUNE_PATH", "ANALYSIS_ARTIFACT_DIR", "TRIAL_PARAMS",
]
