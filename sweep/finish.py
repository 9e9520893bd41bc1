"""The end of a sweep: every run ended, the best configuration recorded, the parent FINISHED, the end table.

Runs of trials Tune gave up on, of configurations a resumed search suggested again (superseded), and any
left open end FAILED or KILLED with a reason; a search or scheduled grid gets its best configuration on the
parent (:func:`analysis.search.best_configuration`, the function summary.md and search.png use too).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from analysis.search import best_configuration, configurations, search_settings
from record import (
    TAG_AXES,
    TAG_BEST_CONFIG,
    TAG_BEST_RUN_IDS,
    TAG_FAILURE,
    TAG_GRID_POINT,
    TAG_LOGGING_SHARE,
    TAG_N_FAILED,
    TAG_N_TRIALS,
    TAG_STOPPED_AT,
    TAG_STOPPED_EARLY,
    TAG_SUPERSEDED,
    TAG_TUNE_TRIAL,
    marked_name,
    short_point,
    sweep_runs,
    tag_equals,
    with_retry,
)
from sweep import tracking
from sweep.driver import Sweep
from sweep.plan import trial_group

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def finish_sweep(sweep: Sweep, results: Any) -> list[dict[str, Any]]:
    """End every run and the parent (FINISHED), record the best configuration and the counts.

    Returns one row per member: grid point, the knob's value (under the knob's name, ``C`` or ``K``), seed, the
    final value of each of the family's table metrics, status, failure reason; and one row per trial that
    failed before it made any run (its seeds joined: ``0,1``).
    """
    client = MlflowClient(sweep.tracking_uri)
    family = sweep.spec.family
    knob = family.knob
    runless: list[dict[str, Any]] = []
    for result in results:
        if result.error is None:
            continue
        reason = f"trial failed after {sweep.spec.max_failures} retries: {error_summary(result.error)}"
        runs = sweep_runs(client, sweep.experiment_id, sweep.sweep_id, tag_equals(TAG_TUNE_TRIAL, trial_id(result)))
        tracking.end_unfinished_runs(client, [r.info.run_id for r in runs], reason[:4000])
        if not runs:
            group = trial_group(result.config, family)
            runless.append({"grid_point": group.grid_point, knob: group.config.axis_value(knob),
                            "seed": ",".join(map(str, group.seeds)),
                            **{key: float("nan") for key, _ in family.table_metrics},
                            "status": "FAILED", "failure_reason": reason, "mark": ""})
    end_superseded_runs(sweep, results)
    runs = sweep_runs(client, sweep.experiment_id, sweep.sweep_id)
    tracking.end_unfinished_runs(client, [r.info.run_id for r in runs], "trial did not finish")
    best_runs = record_best(sweep) if sweep.spec.search.selects else set()
    rows = sorted(
        ({"grid_point": short_point(r.data.tags.get(TAG_GRID_POINT, f"{knob}={r.data.params[knob]}")),
          knob: int(r.data.params[knob]), "seed": int(r.data.params["seed"]),
          **{key: r.data.metrics.get(key, float("nan")) for key, _ in family.table_metrics},
          "status": r.info.status, "failure_reason": r.data.tags.get(TAG_FAILURE, ""), "mark": _mark(r, best_runs)}
         for r in sweep_runs(client, sweep.experiment_id, sweep.sweep_id)),
        key=lambda row: (row[knob], row["grid_point"], row["seed"]),
    ) + runless
    share = logging_share(results)
    # A tag, not a metric: a parent metric would get a chart of its own among the trials' metrics.
    tags = {TAG_N_TRIALS: str(len(rows)), TAG_N_FAILED: str(sum(row["status"] != "FINISHED" for row in rows)),
            **({} if share is None else {TAG_LOGGING_SHARE: f"{share:.4f}"})}
    tracking.end_run(client, sweep.parent_run_id, "FINISHED", tags)
    return rows


def _mark(run: Any, best_runs: set[str]) -> str:
    """What the end table adds after a run's status: stopped early (and where), the best configuration."""
    marks = [f"stopped early at step {run.data.tags[TAG_STOPPED_AT]}"] if run.data.tags.get(TAG_STOPPED_EARLY) else []
    return ", ".join([*marks, *(["★ best configuration"] if run.info.run_id in best_runs else [])])


def error_summary(error: BaseException) -> str:
    """A trial's error as plain text: its cause's last line (``ValueError: C, budget and lr must be positive``),
    without the terminal colour codes Ray puts around the remote frame's name."""
    lines = [line.strip() for line in _ANSI.sub("", str(error)).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def trial_id(result: Any) -> str:
    """The Tune trial whose runs hold a result: its own, or the one whose finished runs it reused."""
    metrics = result.metrics or {}
    return str(metrics.get("reused_from") or own_trial_id(result))


def own_trial_id(result: Any) -> str:
    """A result's Tune trial id: from its metrics, else (a trial that failed before reporting) from its folder,
    named ``trial_<id>`` by the Tuner."""
    metrics = result.metrics or {}
    if metrics.get("trial_id"):
        return str(metrics["trial_id"])
    return Path(str(result.path)).name.removeprefix("trial_") if result.path else ""


def end_superseded_runs(sweep: Sweep, results: Any) -> list[str]:
    """The runs of Tune trials that are not in the results: the first runs of configurations a searcher suggested
    again under new trial ids after a driver restart. They end KILLED, tagged ``superseded`` with a reason, so
    nothing stays RUNNING and the analysis (FINISHED runs only) counts each configuration once."""
    client = MlflowClient(sweep.tracking_uri)
    live = {own_trial_id(r) for r in results}
    ended = []
    for run in sweep_runs(client, sweep.experiment_id, sweep.sweep_id):
        trial = run.data.tags.get(TAG_TUNE_TRIAL)
        if trial and trial not in live and run.info.status in ("RUNNING", "SCHEDULED"):
            reason = (f"superseded: Tune trial {trial} was lost with the driver; its configuration was "
                      "suggested again under another trial id after `sweep resume`")
            tracking.end_run(client, run.info.run_id, "KILLED", {TAG_SUPERSEDED: "true", TAG_FAILURE: reason})
            ended.append(run.info.run_id)
    return ended


def record_best(sweep: Sweep) -> set[str]:
    """On the parent run, the best configuration (:func:`analysis.search.best_configuration`: per grid point,
    over all its FINISHED seeds, among those that ran the budget): tag ``best_config`` (JSON of every axis
    value), params ``best.<axis>``, tag ``best_run_ids`` (JSON list) and ``best.<metric>`` (mean over seeds).
    The same function writes summary.md's Search section and marks search.png, so the three agree. The best
    runs' names get the mark ``★`` (:func:`record.marked_name`), taken off runs a resumed sweep no longer
    finds best. Returns the best runs' ids."""
    client = MlflowClient(sweep.tracking_uri)
    parent = with_retry(client.get_run, sweep.parent_run_id)
    settings = search_settings(sweep.spec)
    frame = configurations(client, parent, settings)
    if frame.empty:
        return set()
    best = best_configuration(frame, settings)
    best_runs = set(best["run_ids"])
    for run in sweep_runs(client, sweep.experiment_id, sweep.sweep_id):
        stopped = run.data.tags.get(TAG_STOPPED_AT) if run.data.tags.get(TAG_STOPPED_EARLY) else None
        name = marked_name(run.info.run_name, best=run.info.run_id in best_runs,
                           stopped_at=None if stopped is None else int(stopped))
        if name != run.info.run_name:
            with_retry(client.update_run, run.info.run_id, name=name)
    config = {axis: best[axis].item() if hasattr(best[axis], "item") else best[axis]
              for axis in json.loads(parent.data.tags[TAG_AXES])}
    metric = settings["metric"]
    tracking.log_params(client, sweep.parent_run_id, {f"best.{k}": v for k, v in config.items()},
                        tags={TAG_BEST_CONFIG: json.dumps(config), TAG_BEST_RUN_IDS: json.dumps(list(best["run_ids"])),
                              f"best.{metric}": f"{best['metric']:.6g}"})
    return best_runs


def logging_share(results: Any) -> float | None:
    """Fraction of the trials' wall time spent in MLflow calls (a budget of 5%: docs/benchmarks.md)."""
    logging_s = total_s = 0.0
    for result in results:
        metrics = result.metrics or {}
        if "seconds_logging" in metrics and metrics.get("time_total_s"):
            logging_s += metrics["seconds_logging"]
            total_s += metrics["time_total_s"]
    return logging_s / total_s if total_s else None


__all__ = ["end_superseded_runs", "error_summary", "finish_sweep", "logging_share", "record_best", "trial_id"]
