"""The driver-side end of trials a scheduler stopped (issue 14): a ``tune.Callback``.

When ASHA stops a trial, the trial's next ``tune.report`` raises ``SystemExit`` and its worker may die within
milliseconds, so the trainable cannot be trusted to end its own runs. Tune calls ``on_trial_complete`` in the
driver for a stopped trial as for a finished one (both end TERMINATED); what tells them apart is the last
reported ``step`` below the trial's budget. Such a trial's runs end FINISHED, tagged ``stopped_early=true``
and ``stopped_at_step`` (its last reported step, whose metrics the trainable flushed before reporting).
"""

from __future__ import annotations

from typing import Any

from ray import tune

TAG_STOPPED_AT = "stopped_at_step"


def trial_budget(config: dict[str, Any]) -> int:
    """The planned budget (protocol steps) of a trial, from its Tune config (search or grid)."""
    group = config["search"]["group"] if "search" in config else config["trial"]["group"]
    return int(config.get("point", {}).get("budget", group["config"]["budget"]))


def trial_run_ids(client: Any, experiment_id: str, sweep_id: str, trial_id: str, config: dict[str, Any]) -> list[str]:
    """The MLflow runs of one Tune trial: a grid trial's from its config, a search trial's by its trial id."""
    from sweep.filters import and_, tag_equals
    from sweep.names import TAG_SWEEP_ID
    from sweep.search import TAG_TUNE_TRIAL
    from sweep.tracking import with_retry

    if "trial" in config:
        return list(config["trial"]["run_ids"].values())
    query = and_(tag_equals(TAG_SWEEP_ID, sweep_id), tag_equals(TAG_TUNE_TRIAL, trial_id))
    return [r.info.run_id for r in with_retry(client.search_runs, [experiment_id], query, max_results=1000)]


class EndStoppedTrials(tune.Callback):
    """Tags and ends (FINISHED) the runs of every trial the scheduler stopped before its budget."""

    def __init__(self, tracking_uri: str, experiment_id: str, sweep_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.sweep_id = sweep_id

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        from mlflow import MlflowClient

        from sweep.search import TAG_STOPPED_EARLY
        from sweep.tracking import log_params, with_retry

        last = trial.last_result or {}
        step = last.get("step")
        if step is None or step >= trial_budget(trial.config) or not last.get("live_members"):
            return  # finished its budget (the trainable ended its runs), or every member diverged
        if last.get("reused_from"):
            return  # it trained nothing: the finished runs it reported are ended already
        client = MlflowClient(self.tracking_uri)
        for run_id in trial_run_ids(client, self.experiment_id, self.sweep_id, trial.trial_id, trial.config):
            run = with_retry(client.get_run, run_id)
            if run.info.status not in ("RUNNING", "SCHEDULED"):
                continue  # a diverged member, already FAILED
            log_params(client, run_id, {}, tags={TAG_STOPPED_EARLY: "true", TAG_STOPPED_AT: str(int(step))})
            with_retry(client.set_terminated, run_id, "FINISHED")
