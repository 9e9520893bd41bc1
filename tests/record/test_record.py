"""MLflow filter strings (sweep/filters.py) against a real sqlite store: every writable value matches itself."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from record import (
    ROLE_PARENT,
    ROLE_TRIAL,
    TAG_ROLE,
    TAG_SWEEP_ID,
    FilterError,
    and_,
    find_parent_run,
    quote_value,
    tag_equals,
)
from sweep import driver
from tests.conftest import new_store, trial_runs

# Values a filter must find exactly (quotes of either kind, SQL wildcards, backslashes, spaces, unicode).
TRICKY = ["plain", "it's", 'say "hi"', "50%_done", "a\\b", "semi;colon AND x", "ünï", "dot.ted", "x = 'y'"]


@pytest.fixture
def client(tmp_path):
    return MlflowClient(new_store(tmp_path))


def test_each_tricky_value_finds_exactly_its_run(client):
    experiment = client.create_experiment("filters")
    ids = {v: client.create_run(experiment, tags={"sweep.key": v, "other": "1"}).info.run_id for v in TRICKY}
    for value, run_id in ids.items():
        found = client.search_runs([experiment], and_(tag_equals("sweep.key", value), tag_equals("other", "1")))
        assert [r.info.run_id for r in found] == [run_id], value


def test_unwritable_values_are_refused():
    for value in ("both ' and \"", "ends in \\"):
        with pytest.raises(FilterError):
            quote_value(value)
    assert and_("", tag_equals("a", "b"), "") == "tags.`a` = 'b'"


def test_driver_and_analysis_find_a_sweep_whose_id_has_a_quote(client):
    """Today's hand-built filters: the driver's is a parse error, the analysis refuses the id outright."""
    experiment = client.create_experiment("quoted")
    sweep_id = "it's-20260101-000000-abcd"
    parent = client.create_run(experiment, tags={TAG_SWEEP_ID: sweep_id, TAG_ROLE: ROLE_PARENT}).info.run_id
    child = client.create_run(experiment, tags={TAG_SWEEP_ID: sweep_id, TAG_ROLE: ROLE_TRIAL}).info.run_id
    client.create_run(experiment, tags={TAG_SWEEP_ID: "other", TAG_ROLE: ROLE_TRIAL})
    assert find_parent_run(client, sweep_id).info.run_id == parent
    sweep = driver.Sweep(spec=None, sweep_id=sweep_id, tracking_uri=client.tracking_uri,  # type: ignore[arg-type]
                         experiment_id=experiment, parent_run_id=parent, tune_path="unused")
    assert [r.info.run_id for r in trial_runs(sweep)] == [child]
