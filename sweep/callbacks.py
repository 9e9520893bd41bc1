"""Ray Tune callbacks of a sweep, run in the driver: the progress line, and the end of trials a scheduler
stopped."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from mlflow import MlflowClient
from ray import tune

from record import (
    TAG_NOTE,
    TAG_STOPPED_AT,
    TAG_STOPPED_EARLY,
    TAG_TUNE_TRIAL,
    marked_name,
    sweep_runs,
    tag_equals,
    with_retry,
)
from sweep.plan import trial_group
from sweep.tracking import end_run


class Progress(tune.Callback):
    """Prints one line at most every ``every_s`` seconds and when a trial ends.

    Progress = the mean over all trials of each trial's fraction of its steps done. The ETA is measured,
    never guessed: it extrapolates the rate of progress since the first result that reported progress > 0
    (Ray's start, imports and data loading before it say nothing about the rate), and is shown only once
    that rate has been measured over at least ``min_measured_s`` seconds. Before that the line says
    ``ETA measuring``. (Extrapolating the elapsed time by the first tiny fraction, as before, promised
    6909 s for a sweep that took 100 s.)
    """

    def __init__(self, every_s: float = 5.0, min_measured_s: float = 15.0,
                 clock: Callable[[], float] = time.monotonic, stream: TextIO | None = None) -> None:
        self.every_s = every_s
        self.min_measured_s = min_measured_s
        self.clock = clock
        self.stream = stream
        self.started = clock()
        self.last = float("-inf")
        self.progress: dict[str, float] = {}
        self.first: tuple[float, float] | None = None  # (time, overall fraction) at the first progress > 0

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any) -> None:
        self.progress[trial.trial_id] = float(result.get("progress", 0.0))
        if self.first is None and self.progress[trial.trial_id] > 0:
            self.first = (self.clock(), self.fraction(trials))
        if self.clock() - self.last >= self.every_s:
            self._print(trials)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.progress[trial.trial_id] = 1.0
        self._print(trials)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.progress[trial.trial_id] = 1.0
        self._print(trials)

    def fraction(self, trials: list[Any]) -> float:
        """Mean over ``trials`` of each one's progress (0 to 1); a trial with no result yet counts 0."""
        return sum(self.progress.get(t.trial_id, 0.0) for t in trials) / max(1, len(trials))

    def eta_s(self, trials: list[Any]) -> float | None:
        """Seconds left at the rate measured since the first progress, or None while not yet measured."""
        now, fraction = self.clock(), self.fraction(trials)
        if fraction >= 1.0:
            return 0.0
        if self.first is None:
            if fraction > 0:
                self.first = (now, fraction)
            return None
        t0, f0 = self.first
        if now - t0 < self.min_measured_s or fraction <= f0:
            return None
        return (now - t0) * (1.0 - fraction) / (fraction - f0)

    def line(self, trials: list[Any]) -> str:
        self.last = self.clock()
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        running = sum(t.status == "RUNNING" for t in trials)
        pending = len(trials) - done - running
        fraction = self.fraction(trials)
        eta = self.eta_s(trials)
        eta_text = "measuring" if eta is None else f"{eta:.0f}s"
        return (f"[sweep] trials: {done} done, {running} running, {pending} pending | "
                f"{100 * fraction:.0f}% | elapsed {self.last - self.started:.0f}s | ETA {eta_text}")

    def _print(self, trials: list[Any]) -> None:
        print(self.line(trials), file=self.stream or sys.stderr, flush=True)


class EndStoppedTrials(tune.Callback):
    """Tags and ends (FINISHED) the runs of every trial the scheduler stopped before its budget.

    When ASHA stops a trial, its next ``tune.report`` raises ``SystemExit`` and its worker may die within
    milliseconds, so the trainable cannot be trusted to end its own runs. Tune calls ``on_trial_complete`` in
    the driver for a stopped trial as for a finished one (both end TERMINATED); what tells them apart is the last
    reported ``step`` below the trial's budget. Such a trial's runs end FINISHED, tagged ``stopped_early=true``
    and ``stopped_at_step`` (its last reported step, whose metrics the trainable flushed before reporting),
    their names led by ``stopped@<step>`` and their descriptions saying so. A
    trial stopped at its last report trained its budget and ended its runs itself.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, sweep_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.sweep_id = sweep_id

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        step = last.get("step")
        if step is None or step >= trial_group(trial.config).config.budget or not last.get("live_members"):
            return  # finished its budget (the trainable ended its runs), or every member diverged
        if last.get("reused_from"):
            return  # it trained nothing: the finished runs it reported are ended already
        client = MlflowClient(self.tracking_uri)
        tags = {TAG_STOPPED_EARLY: "true", TAG_STOPPED_AT: str(int(step))}
        for run in sweep_runs(client, self.experiment_id, self.sweep_id, tag_equals(TAG_TUNE_TRIAL, trial.trial_id)):
            if run.info.status in ("RUNNING", "SCHEDULED"):  # not a diverged member, already FAILED
                note = run.data.tags.get(TAG_NOTE, "")
                end_run(client, run.info.run_id, "FINISHED",
                        {**tags, TAG_NOTE: f"{note}\n\n**Stopped early** by the scheduler at step {int(step)}."})
                # the mark leads the name, so the runs table shows it without a column added
                with_retry(client.update_run, run.info.run_id,
                           name=marked_name(run.info.run_name, stopped_at=int(step)))
