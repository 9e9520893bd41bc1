"""What a sweep looks like in the MLflow UI: descriptions, grouping tags, run colours, dataset inputs, links.

Everything here decorates runs the driver already created; nothing reads it back except the UI (and the
tests). MLflow 3.17's UI reads these keys (found in its JS bundle, ``mlflow/server/js/build``):

* experiment tag ``mlflow.experimentKind``: ``custom_model_development`` makes the experiment a model
  training experiment, so its page opens on the runs table instead of the GenAI overview;
* URL query ``workflowType=machine_learning`` on ``#/experiments/<id>/runs``: the sidebar's
  "Model training" switch (without it the UI uses the last choice stored in the browser, GenAI by default);
* run and experiment tag ``mlflow.note.content``: the Description (Markdown);
* run tag ``mlflow.runColor``: the run's colour in the runs table and every chart (the UI itself writes this
  tag when a user picks a colour, and reads it for every run it loads);
* run tags ``mlflow.source.git.commit`` (Version column), ``mlflow.user`` (User), ``mlflow.source.name`` and
  ``mlflow.source.type`` (Source); a dataset input fills the Dataset column.
"""

from __future__ import annotations

import functools
import getpass
from collections.abc import Sequence
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, RunTag

from models.digits import N_TEST, N_TRAIN
from models.family import get_family
from models.spec import CommonSpec
from record import (
    PARENT_PARAM_PREFIX,
    TAG_EXPERIMENT_KIND,
    TAG_NOTE,
    TAG_RUN_COLOR,
    TAG_WIDTH,
    with_retry,
)
from record.colours import knob_hex_colours
from sweep.provenance import git_commit

EXPERIMENT_KIND = "custom_model_development"
DATASET_NAME = "digits-8x8-split"
DATASET_CONTEXT = "train"  # MLflow's usual context value; the split's both halves are described by its name
UI_QUERY = "workflowType=machine_learning"
DEFAULT_UI = "http://127.0.0.1:5000"


def _family(name: str | None) -> Any:
    """The registered family ``name`` (None: the ResNet), or None for a name no longer registered."""
    try:
        return get_family(name or "resnet")
    except KeyError:
        return None


# -- names and texts (pure: no MLflow call) ----------------------------------------------------------------

def width_tag(C: int, widths: Sequence[int], knob: str = "C") -> str:
    """``C=04`` for C=4 in a sweep whose widest C has two digits: zero-padded to the largest knob value of
    the sweep (at least two digits), so that the UI's text sort of the group names is the numeric order of
    the knob. ``knob``: the family's knob (``K=05`` for the mixture)."""
    digits = max(2, *(len(str(int(c))) for c in widths))
    return f"{knob}={int(C):0{digits}d}"


def parent_params(spec: CommonSpec) -> dict[str, str]:
    """The resolved spec as parent-run params: ``sweep.``-prefixed dotted keys, None values dropped, and of the
    ``search.*`` block only the keys that act on this sweep (:func:`applicable_search_keys`).

    The prefix keeps the spec's lists (``sweep.model.C = [1, 2, 4, 64]``, ``sweep.seeds = 5``) apart from
    the children's per-run values (``C``, ``seed``) in the UI's column picker: one name per concept per role.
    """
    resolved = spec.model_dump(mode="json")
    resolved["search"] = {k: v for k, v in resolved["search"].items() if k in applicable_search_keys(spec)}
    if not resolved["search"]:
        resolved.pop("search")
    out: dict[str, str] = {}

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif v is not None:
                out[f"{PARENT_PARAM_PREFIX}{prefix}{k}"] = str(v)

    walk(resolved, "")
    return out


def applicable_search_keys(spec: CommonSpec) -> set[str]:
    """The ``search`` keys that do something in this sweep: none for a plain grid; the algorithm and its
    samples for a search, the space and seed for a sampled one, the metric where something selects on it, the
    ASHA settings under ASHA."""
    search = spec.search
    keys: set[str] = set()
    if search.algorithm != "grid":
        keys |= {"algorithm", "num_samples"}
    if search.space:
        keys |= {"space", "seed"}
    if search.selects:
        keys |= {"metric", "mode"}
    if search.scheduler != "fifo":
        keys |= {"scheduler", "grace_period", "reduction_factor"}
    return keys


def experiment_note(family: str, search: str | None = None) -> str:
    """The experiment's description: what a run of it is. ``search``: the algorithm of a sampled search
    (random, optuna), whose runs differ by configuration rather than by width."""
    fam = _family(family)
    if search:
        return (
            f"Searches over training settings ({search}) of the "
            f"{'ResNet' if fam is None else fam.display_name} family on scikit-learn's 8x8 digits, split 50/50. "
            "Each top-level run is one search (named by its sweep id); the runs nested under it are its trials, "
            "one per sampled configuration and seed, named by the searched values to 3 significant digits "
            "(`lr=0.00226 batch_size=32 seed=1`; the exact values are params) and coloured by configuration.\n\n"
            "Names starting `★` are the best configuration's runs (chosen on the validation metric, over all its "
            "seeds); `stopped@<step>` marks runs the scheduler stopped early. Sort by the search metric's column "
            "or open the chart view; the parent's artifacts `analysis/` hold `search.png`, `search.csv` and "
            "`summary.md`."
        )
    if fam is None or fam.name == "resnet":
        return (
            "Model-complexity sweeps of the ResNet family (CS 446 hw2, problem 3) on scikit-learn's 8x8 digits, "
            "split 50/50. Each top-level run is one sweep (named by its sweep id); the runs nested under it are "
            "its trials, one per width C and seed, named like `C=4 seed=0`.\n\n"
            "Compare widths: group the runs by the tag `width` (Group by > Tags > width); "
            "the parent's artifacts `analysis/` hold the figures and `summary.md`."
        )
    k = fam.knob
    return (
        f"Model-complexity sweeps of the {fam.display_name} family on scikit-learn's 8x8 digits, split 50/50. "
        "Each top-level run is one sweep (named by its sweep id); the runs nested under it are its trials, "
        f"one per {fam.knob_meaning} {k} and seed, named like `{k}=5 seed=0`.\n\n"
        f"Compare values of {k}: group the runs by the tag `width` (Group by > Tags > width; values `{k}=05`); "
        "the parent's artifacts `analysis/` hold the figures and `summary.md`."
    )


def parent_note(sweep_id: str, source: str) -> str:
    """The parent's description until the analysis replaces it with the findings."""
    return (f"Sweep `{sweep_id}` (from `{source}`): its trial runs are nested below, each made when its Ray "
            f"trial starts. Findings appear here once `sweep analyze {sweep_id}` has run.")


def child_note(params: dict[str, Any]) -> str:
    """The family's one-line description of a member, e.g. ``ResNet C=4 (398 params), seed 0, handout
    protocol, 4000 updates, lr 0.1, batch size 128`` (:meth:`models.family.Family.describe`)."""
    name = str(params.get("model_family", "resnet"))
    fam = _family(name)
    return fam.describe(params) if fam is not None else f"{name} run, seed {params.get('seed')}"


def runs_url(experiment_id: str, tracking_uri: str) -> str:
    """The experiment's runs table in the model-training view: on the tracking server itself when the
    store is one (http[s]://), else on a local ``mlflow ui`` at its default address."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else DEFAULT_UI
    return f"{base}/#/experiments/{experiment_id}/runs?{UI_QUERY}"


@functools.lru_cache(maxsize=8)  # one git subprocess per sweep, not one per child run
def _source_tags(source: str) -> tuple[tuple[str, str], ...]:
    tags = {"mlflow.user": _user(), "mlflow.source.name": f"sweep run {source}", "mlflow.source.type": "LOCAL"}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tuple(tags.items())


def source_tags(source: str) -> dict[str, str]:
    """MLflow's own provenance tags: Version (git commit), User, Source columns."""
    return dict(_source_tags(source))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"


def split_dataset(split_hash: str, split_seed: int) -> Dataset:
    """The data split as an MLflow dataset: digest = the split's hash, so two runs on one split show the
    same ``name (digest)`` in the Dataset column."""
    return Dataset(
        name=DATASET_NAME, digest=split_hash, source_type="code",
        source=f'{{"loader": "sklearn.datasets.load_digits", "split_seed": {split_seed}, '
               f'"n_train": {N_TRAIN}, "n_test": {N_TEST}}}',
    )


# -- writes -----------------------------------------------------------------------------------------------

def decorate_experiment(client: MlflowClient, experiment_id: str, family: str, search: str | None = None) -> None:
    with_retry(client.set_experiment_tag, experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
    with_retry(client.set_experiment_tag, experiment_id, TAG_NOTE, experiment_note(family, search))


def decorate_parent(client: MlflowClient, run_id: str, sweep_id: str, source: str, split_hash: str,
                    split_seed: int) -> None:
    tags = {**source_tags(source), TAG_NOTE: parent_note(sweep_id, source)}
    with_retry(client.log_batch, run_id, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)
    with_retry(client.log_inputs, run_id, [_input(split_hash, split_seed)])


def decorate_child(client: MlflowClient, run_id: str, params: dict[str, Any], source: str,
                   widths: Sequence[int], knob: str = "C", colour: str | None = None) -> None:
    """Description, ``width`` tag, run colour, provenance tags and the dataset input. ``widths``: the sweep's
    knob values; ``knob``: the family's knob, a key of ``params``; ``colour``: the run's colour (a search's
    configuration's), else its knob value's. (The knob and parameter count are params, not metrics: a metric
    logged once gets a one-bar chart in every chart view.)"""
    C = int(params[knob])
    tags = {**source_tags(source), TAG_NOTE: child_note(params), TAG_WIDTH: width_tag(C, widths, knob),
            TAG_RUN_COLOR: colour or knob_hex_colours(widths)[C]}
    with_retry(client.log_batch, run_id, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)
    with_retry(client.log_inputs, run_id, [_input(str(params["split_hash"]), int(params["split_seed"]))])


def _input(split_hash: str, split_seed: int) -> DatasetInput:
    return DatasetInput(split_dataset(split_hash, split_seed), tags=[InputTag("mlflow.data.context",
                                                                               DATASET_CONTEXT)])
