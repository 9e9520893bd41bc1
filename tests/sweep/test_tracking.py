"""sweep/tracking.py against a real sqlite store, no Ray: what a trial's logger does across restarts, run
creation that a "database is locked" after the commit cannot duplicate, and an experiment tag whose insert
loses a race with another sweep."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from models import get_family
from models.records import Evaluation, MetricRecord
from record import TAG_FAILURE
from sweep import mlflow_ui, tracking
from tests.conftest import new_store

REASON = "diverged: minibatch loss became nan at step 15"


METRICS = get_family("resnet").metric_names


def record(seed: int, step: int) -> MetricRecord:
    """A record whose every metric is step + seed / 10 (any value will do; the step is what is checked)."""
    return MetricRecord(seed, step, {name: step + seed / 10 for name in METRICS})


@pytest.fixture
def store(tmp_path):
    client = MlflowClient(new_store(tmp_path))
    experiment = client.create_experiment("t")
    run_ids = {}
    for seed in (0, 1):
        run_ids[seed] = client.create_run(experiment, run_name=f"seed={seed}").info.run_id
        client.update_run(run_ids[seed], status="SCHEDULED")
    return client, experiment, run_ids


def steps(client: MlflowClient, run_id: str, key: str = "train_error") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_restart_without_checkpoint_logs_no_step_twice(store):
    """A worker that dies after a flush and before its first checkpoint restarts from scratch (no
    checkpoint, nothing to restore) and replays steps 10 and 20: they must not be logged again."""
    client, _, run_ids = store
    first = tracking.TrialRunLogger(client.tracking_uri, run_ids, metric_names=METRICS)
    first.start("node-a", {})
    for step in (10, 20):
        first.add(Evaluation(step, [record(0, step), record(1, step)]))
    first.flush()  # the periodic flush; then the worker is killed

    second = tracking.TrialRunLogger(client.tracking_uri, run_ids, metric_names=METRICS)
    second.start("node-b", {})  # what the trainable does when Tune has no checkpoint to give it
    for step in (10, 20, 30):
        second.add(Evaluation(step, [record(0, step), record(1, step)]))
    second.flush()
    for run_id in run_ids.values():
        for key in ("train_error", "test_error", "minibatch_loss"):
            assert steps(client, run_id, key) == [10, 20, 30], key


@pytest.mark.parametrize("checkpoint_knows", [False, True], ids=["checkpoint-before", "checkpoint-after"])
def test_diverged_member_stays_failed_through_a_restart(store, checkpoint_knows):
    """Seed 1 diverges at step 15 and its run ends FAILED; the worker dies; the trial restarts from a
    checkpoint taken before the divergence (it replays it) or after it (the trainer knows it diverged).
    Either way the run stays FAILED with its reason, and the driver's end-of-sweep sweep leaves it alone."""
    client, _, run_ids = store
    first = tracking.TrialRunLogger(client.tracking_uri, run_ids, metric_names=METRICS)
    first.start("node-a", {})
    first.add(Evaluation(10, [record(0, 10), record(1, 10)]))
    first.add(Evaluation(20, [record(0, 20)], diverged={1: (15, REASON)}))
    first.flush()
    assert client.get_run(run_ids[1]).info.status == "FAILED"

    second = tracking.TrialRunLogger(client.tracking_uri, run_ids, metric_names=METRICS)
    second.start("node-b", {1: (15, REASON)} if checkpoint_knows else {})
    assert client.get_run(run_ids[1]).info.status == "FAILED"
    assert client.get_run(run_ids[0]).info.status == "RUNNING"
    if not checkpoint_knows:  # the replay diverges again at the same step
        second.add(Evaluation(10, [record(0, 10), record(1, 10)]))
        second.add(Evaluation(20, [record(0, 20)], diverged={1: (15, REASON)}))
    second.add(Evaluation(30, [record(0, 30)]))
    second.flush()
    second.end(0, "FINISHED")
    tracking.end_unfinished_runs(client, run_ids.values(), "trial did not finish")

    diverged = client.get_run(run_ids[1])
    assert diverged.info.status == "FAILED" and diverged.data.tags[TAG_FAILURE] == REASON
    assert steps(client, run_ids[1]) == [10]
    assert client.get_run(run_ids[0]).info.status == "FINISHED"
    assert steps(client, run_ids[0]) == [10, 20, 30]


def test_checkpoint_diverged_member_whose_run_was_left_open_is_ended_with_its_reason(store):
    """The checkpoint is authoritative: a member it lists as diverged is ended FAILED on start, even if
    the worker died before the run was closed."""
    client, _, run_ids = store
    logger = tracking.TrialRunLogger(client.tracking_uri, run_ids, metric_names=METRICS)
    logger.start("node", {1: (15, REASON)})
    run = client.get_run(run_ids[1])
    assert run.info.status == "FAILED" and run.data.tags[TAG_FAILURE] == REASON
    assert logger.ended(1) and not logger.ended(0)


def test_reopened_run_loses_a_stale_failure_reason(store):
    """A run the driver ended FAILED ("trial did not finish") and that a resumed sweep trains again is
    reopened RUNNING without the old reason."""
    client, _, run_ids = store
    tracking.end_unfinished_runs(client, [run_ids[0]], "trial did not finish")
    tracking.TrialRunLogger(client.tracking_uri, run_ids, metric_names=METRICS).start("node", {})
    run = client.get_run(run_ids[0])
    assert run.info.status == "RUNNING" and TAG_FAILURE not in run.data.tags


class LockedAfterCommit:
    """A client whose first ``create_run`` commits the run and then reports what sqlite reports when a
    busy database outlasts its timeout (the error arrives after the insert is durable)."""

    def __init__(self, client: MlflowClient) -> None:
        self._client = client
        self.create_calls = 0

    def create_run(self, *args, **kwargs):
        self.create_calls += 1
        run = self._client.create_run(*args, **kwargs)
        if self.create_calls == 1:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return run

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_create_after_a_locked_commit_makes_one_run(tmp_path):
    client = MlflowClient(new_store(tmp_path))
    experiment = client.create_experiment("locked")
    flaky = LockedAfterCommit(client)
    run_id = tracking.create_parent_run(flaky, experiment, "s-1", {"preset": "smoke"})
    runs = client.search_runs([experiment])
    assert [r.info.run_id for r in runs] == [run_id]
    assert runs[0].data.tags["sweep_id"] == "s-1" and runs[0].info.run_name == "s-1"


def test_create_retries_when_the_insert_did_not_commit(tmp_path):
    """The other half: a lock error BEFORE the commit is retried, and still gives exactly one run."""
    client = MlflowClient(new_store(tmp_path))
    experiment = client.create_experiment("retry")

    class LockedBefore(LockedAfterCommit):
        def create_run(self, *args, **kwargs):
            self.create_calls += 1
            if self.create_calls == 1:
                raise MlflowException("(sqlite3.OperationalError) database is locked")
            return self._client.create_run(*args, **kwargs)

    flaky = LockedBefore(client)
    run = tracking.create_run_once(flaky, experiment, "r", {"k": "v"})
    assert flaky.create_calls == 2
    assert [r.info.run_id for r in client.search_runs([experiment])] == [run.info.run_id]


class LosesTheTagRace:
    """A client whose first ``set_experiment_tag`` loses the race two sweeps starting on one store can run: the
    other sweep's write of the tag lands first, then this one's insert of the same key fails in the store's own
    session, with the error sqlite gives (MLflow's set_experiment_tag reads, then inserts a missing key)."""

    def __init__(self, client: MlflowClient) -> None:
        self._client = client
        self.tag_calls = 0

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        self.tag_calls += 1
        if self.tag_calls == 1:
            from mlflow.store.tracking.dbmodels.models import SqlExperimentTag

            self._client.set_experiment_tag(experiment_id, key, "the other sweep's")
            with self._client._tracking_client.store.ManagedSessionMaker(read_only=False) as session:
                session.add(SqlExperimentTag(experiment_id=int(experiment_id), key=key, value=value))
        self._client.set_experiment_tag(experiment_id, key, value)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_an_experiment_tag_that_loses_an_insert_race_is_set_again(tmp_path):
    """Seen in `make test` with two `sweep run` on one new store: "UNIQUE constraint failed: experiment_tags.key,
    experiment_tags.experiment_id" ended one of them."""
    client = MlflowClient(new_store(tmp_path))
    experiment = client.create_experiment("race")
    racing = LosesTheTagRace(client)
    mlflow_ui.decorate_experiment(racing, experiment, "resnet")
    tags = client.get_experiment(experiment).tags
    assert tags[mlflow_ui.TAG_EXPERIMENT_KIND] == mlflow_ui.EXPERIMENT_KIND
    assert mlflow_ui.TAG_NOTE in tags and racing.tag_calls == 3  # the lost insert, its retry, the note
