"""Names shared by the writer (sweep/) and the reader (analysis/) of the MLflow record.

MLflow layout of one sweep:
  * experiment: the spec's ``tracking.experiment``, else the sweep's ``name``;
  * one parent run named ``<sweep_id>`` with tags ``sweep_id``, ``sweep.role=parent``, ``preset``,
    ``git_commit``, ``host``, library versions, ``sweep.axes`` (JSON list of the grid's axis names, see
    below), ``sweep.knob`` (the model family's complexity knob, ``"C"`` for the ResNet, ``"K"`` for the
    Bernoulli mixture) and ``sweep.family`` (the family's name, :mod:`models.family`); params = the
    resolved spec, each key prefixed ``sweep.`` and None values left out (:mod:`sweep.mlflow_ui`);
    artifact ``spec.yaml``; analysis outputs under the artifact folder ``analysis/``;
  * one child run per (grid point, seed). Its name lists ``<axis>=<value>`` for every axis of
    ``sweep.axes`` in that order, then ``seed=<seed>``, space-separated, values printed with Python's
    ``str()`` (``C=4 lr=0.05 seed=1``; ``C=4 seed=1`` when C is the only axis). Tags ``sweep_id``,
    ``sweep.role=trial``, ``mlflow.parentRunId``, the knob (``C``; ``K`` for the mixture), ``seed``,
    ``grid_point`` (the name without the
    seed part: ``C=4 lr=0.05``), ``pack_seeds`` (the seeds trained with it in one packed computation),
    ``ray.node_id``, ``ray.worker_pid``, and the machine that trained it (``hw.*`` below, library versions).
    Params (ResNet) :data:`TRIAL_PARAMS`:
    every TrainConfig field (so every axis value) plus ``split_hash``, ``model_family``, ``param_count`` and
    ``n_flipped_labels``; another family logs its ``member_params``. Metrics (ResNet) :data:`METRICS` with
    ``step`` = update (handout) or epoch (epochs); another family logs its own metric keys, step = its
    budget unit (EM iteration for the mixture);
    a diverged trial ends FAILED with tag ``failure_reason``.

Axes (:func:`sweep.spec.SweepSpec.axes`): the knob ``C`` first, always, even with one value; then, in the
order of :data:`AXES`, every other hyperparameter the spec gives more than one value. A trial's identity is
(every axis value, seed): two runs of one sweep with the same name are the same trial (a restart), never
two grid points.
"""

# The metric keys a trial logs, in the trainer's MetricRecord field names.
# train_error/train_loss: against the labels trained on (noisy with label noise); train_error_clean: against
# the true training labels (equal to train_error when label_noise is 0).
METRICS = ("train_error", "test_error", "train_loss", "test_loss", "generalization_gap", "minibatch_loss",
           "train_error_clean")

KNOB = "C"  # the ResNet family's complexity knob: always the first axis
# Every other hyperparameter that may be a grid axis, in axis order (spec order); each is a TrainConfig field
# and a trial param of the same name.
AXES = ("protocol", "budget", "lr", "batch_size", "eval_every", "label_noise")

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
TAG_AXES = "sweep.axes"
TAG_KNOB = "sweep.knob"
TAG_FAMILY = "sweep.family"  # the model family's name (models.family), e.g. "resnet", "bernoulli_mixture"
TAG_GRID_POINT = "grid_point"
TAG_PACK_SEEDS = "pack_seeds"  # the seeds trained together in one packed computation with this run's: "0,1,2"
ANALYSIS_ARTIFACT_DIR = "analysis"
# The machine that trained a child run (sweep.provenance.machine_tags): tags set by its worker.
TAG_CPU = "hw.cpu"  # the CPU's model name, as the OS reports it
TAG_CPU_CAPABILITY = "hw.cpu_capability"  # torch's kernel set: DEFAULT, AVX2, AVX512, ...
TAG_BLAS = "hw.blas"  # "mkl 2024.2", "openblas", ...
TAG_TORCH_THREADS = "hw.torch_threads"
TAG_GPU = "hw.gpu"  # device name; only on a GPU trial
TAG_CUDA = "hw.cuda"
TAG_CUDNN = "hw.cudnn"
TAG_MKL_INSTRUCTIONS = "hw.mkl_instructions"  # MKL_ENABLE_INSTRUCTIONS, when set: MKL's kernel choice
#: Tags whose values must agree for two runs' numbers to be comparable bit for bit (the analysis notes a grid
#: point whose seeds differ in one of them).
HARDWARE_IDENTITY = (TAG_CPU, TAG_CPU_CAPABILITY, TAG_BLAS, TAG_GPU)
TRIAL_PARAMS = (
    "C", "seed", "protocol", "budget", "lr", "batch_size", "eval_every", "split_seed", "split_hash",
    "model_family", "param_count", "dtype", "label_noise", "n_flipped_labels",
)

__all__ = [
    "METRICS", "KNOB", "AXES", "TAG_AXES", "TAG_KNOB", "TAG_FAMILY", "TAG_GRID_POINT", "TAG_PACK_SEEDS", "TAG_SWEEP_ID",
    "TAG_ROLE",
    "ROLE_PARENT", "ROLE_TRIAL", "TAG_PARENT_RUN", "TAG_NODE_ID",
    "TAG_WORKER_PID", "TAG_FAILURE", "TAG_PRESET", "TAG_TUNE_PATH", "ANALYSIS_ARTIFACT_DIR", "TRIAL_PARAMS",
    "TAG_CPU", "TAG_CPU_CAPABILITY", "TAG_BLAS", "TAG_TORCH_THREADS", "TAG_GPU", "TAG_CUDA", "TAG_CUDNN",
    "TAG_MKL_INSTRUCTIONS", "HARDWARE_IDENTITY",
]
