"""sweep/tracking.py against a real sqlite store, no Ray: what a trial's logger does across restarts, and run
creation that a "database is locked" after the commit cannot duplicate."""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from sweep import tracking


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
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("locked")
    flaky = LockedAfterCommit(client)
    run_id = tracking.create_parent_run(flaky, experiment, "s-1", {"preset": "smoke"})
    runs = client.search_runs([experiment])
    assert [r.info.run_id for r in runs] == [run_id]
    assert runs[0].data.tags["sweep_id"] == "s-1" and runs[0].info.run_name == "s-1"


def test_create_retries_when_the_insert_did_not_commit(tmp_path):
    """The other half: a lock error BEFORE the commit is retried, and still gives exactly one run."""
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
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
