"""What ``sweep analyze`` adds for a search sweep (issue 14): ``search.png`` and a ``## Search`` section.

One row per configuration (a Ray trial: its runs share the ``tune_trial_id`` tag; only FINISHED runs count, so
a re-suggested configuration's ended first runs never count twice), with its searched values, its start
order, the mean over its seeds of the search metric (a validation metric) at its last step, whether the
scheduler stopped it, and the same mean of ``test_error`` (for the record; selection never reads it).

``search.png``: (1) the metric against trial start order, with the best so far; (2) one scatter per searched
key, sampled value against the final metric (log x axis for loguniform keys); (3) with ASHA, how many trials
reached each rung (``grace_period * reduction_factor**k`` steps below ``max_t``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from analysis.aggregate import mean_ci
from analysis.load import parse_axis_value, search_all_runs, sweep_axes
from sweep.filters import and_, tag_equals
from sweep.names import ROLE_TRIAL, TAG_GRID_POINT, TAG_ROLE, TAG_SWEEP_ID

TAG_TUNE_TRIAL = "tune_trial_id"
TAG_STOPPED_EARLY = "stopped_early"


def search_settings(parent: Any) -> dict[str, Any] | None:
    """The parent's search block (from its ``sweep.search.*`` params), or None for a grid without scheduler."""
    p = parent.data.params
    algorithm = p.get("sweep.search.algorithm", "grid")
    scheduler = p.get("sweep.search.scheduler", "fifo")
    if algorithm == "grid" and scheduler == "fifo":
        return None
    space: dict[str, tuple[str, Any]] = {}
    for key, value in p.items():
        parts = key.split(".")
        if key.startswith("sweep.search.space.") and len(parts) == 5:
            space[parts[3]] = (parts[4], value)
    return {"algorithm": algorithm, "scheduler": scheduler, "space": space,
            "metric": p.get("sweep.search.metric", "val_error"), "mode": p.get("sweep.search.mode", "min"),
            "grace_period": int(p.get("sweep.search.grace_period", 1)),
            "reduction_factor": float(p.get("sweep.search.reduction_factor", 3))}


def configurations(client: Any, parent: Any, settings: dict[str, Any]) -> pd.DataFrame:
    """One row per configuration, i.e. per grid point (the values of every axis, sampled or listed): its
    FINISHED runs over all its seeds, whatever Tune trials trained them (a scheduled grid may split a grid
    point's seeds into several packs; a search may sample one configuration twice, each seed then counted
    once). Columns: grid_point, trial (the first Tune trial id, else the grid point), start_time, order
    (1 = first started), each axis, metric (mean over seeds of each seed's value at its last step),
    metric_ci (95% half width over seeds), test_error (the same mean, for the record), last_step (the
    smallest over seeds), budget, stopped_early (a seed stopped by the scheduler), ran_budget (every seed
    reached the budget), n_seeds, run_ids."""
    sweep_id = parent.data.tags[TAG_SWEEP_ID]
    children = list(search_all_runs(client, [parent.info.experiment_id],
                                    and_(tag_equals(TAG_SWEEP_ID, sweep_id), tag_equals(TAG_ROLE, ROLE_TRIAL))))
    axes, _ = sweep_axes(parent, children)
    metric = settings["metric"]
    groups: dict[str, dict[str, Any]] = {}
    for run in sorted(children, key=lambda r: r.info.start_time):
        if run.info.status == "FINISHED" and metric in run.data.metrics:
            point = run.data.tags.get(TAG_GRID_POINT, run.info.run_id)
            groups.setdefault(point, {}).setdefault(run.data.tags.get("seed", run.info.run_id), run)
    rows = []
    for point, by_seed in groups.items():
        members = list(by_seed.values())
        first = members[0]
        steps = [max(m.step for m in client.get_metric_history(r.info.run_id, metric)) for r in members]
        budget = int(first.data.params.get("budget", 0))
        values = [r.data.metrics[metric] for r in members]
        rows.append({
            "grid_point": point, "trial": first.data.tags.get(TAG_TUNE_TRIAL, point),
            "start_time": min(r.info.start_time for r in members),
            **{a: parse_axis_value(a, first.data.params.get(a, first.data.tags.get(a))) for a in axes},
            "metric": float(np.mean(values)), "metric_ci": mean_ci(values).half_width,
            "test_error": float(np.mean([r.data.metrics.get("test_error", float("nan")) for r in members])),
            "last_step": min(steps), "budget": budget,
            "stopped_early": any(r.data.tags.get(TAG_STOPPED_EARLY) == "true" for r in members),
            "ran_budget": min(steps) >= budget, "n_seeds": len(members),
            "run_ids": sorted(r.info.run_id for r in members),
        })
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame = frame.sort_values("start_time", kind="stable").reset_index(drop=True)
    frame.insert(2, "order", range(1, len(frame) + 1))
    return frame


def best_configuration(frame: pd.DataFrame, settings: dict[str, Any]) -> pd.Series:
    """The row of :func:`configurations` with the best mean ``metric`` over its seeds, among the configurations
    whose every seed ran the budget (a stopped one was scored earlier in training), among all when none did.
    What the parent run records, summary.md states and search.png marks."""
    pool = frame[frame["ran_budget"]] if frame["ran_budget"].any() else frame
    return pool.loc[pool["metric"].idxmin() if settings["mode"] == "min" else pool["metric"].idxmax()]


def rungs(settings: dict[str, Any], budget: int) -> list[int]:
    """ASHA's milestones in steps: grace_period * reduction_factor**k up to the budget."""
    out, t = [], float(settings["grace_period"])
    while t <= budget:
        out.append(int(t))
        t *= settings["reduction_factor"]
    return out


def plot_search(frame: pd.DataFrame, settings: dict[str, Any], out_dir: Path, title: str) -> Any:
    """Write ``search.png``/``.pdf``; returns the Figure."""
    from analysis.plots import new_figure, save_figure

    keys = [k for k in settings["space"] if k in frame]
    asha = settings["scheduler"] == "asha"
    n = 1 + len(keys) + int(asha)
    fig = new_figure(4.2 * n, 3.6)
    axes = fig.subplots(1, n, squeeze=False)[0]
    metric, better = settings["metric"], (np.minimum if settings["mode"] == "min" else np.maximum)
    full = frame[frame["ran_budget"]]
    stopped = frame[~frame["ran_budget"]]
    best = best_configuration(frame, settings)
    pool = full if len(full) else frame  # the configurations the best is chosen among
    ax = axes[0]
    ax.scatter(full["order"], full["metric"], color="tab:blue", label="ran its budget")
    if len(stopped):
        ax.scatter(stopped["order"], stopped["metric"], color="tab:gray", marker="x", label="stopped early")
    ax.step(pool["order"], better.accumulate(pool["metric"].to_numpy()), where="post", color="tab:red",
            label="best so far")
    ax.scatter([best["order"]], [best["metric"]], s=160, marker="*", color="tab:red", zorder=3,
               label="best configuration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (start order)")
    ax.set_ylabel(f"{metric} (mean over seeds, last step)")
    ax.set_title("search progress")
    ax.legend(fontsize=7)
    for ax, key in zip(axes[1 : 1 + len(keys)], keys, strict=True):
        ax.scatter(full[key], full["metric"], color="tab:blue")
        if len(stopped):
            ax.scatter(stopped[key], stopped["metric"], color="tab:gray", marker="x")
        ax.scatter([best[key]], [best["metric"]], s=160, marker="*", color="tab:red", zorder=3)
        if settings["space"][key][0] == "loguniform":
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} against {key}")
    if asha:
        ax = axes[-1]
        budget = int(frame["budget"].max())
        milestones = rungs(settings, budget)
        reached = [int((frame["last_step"] >= m).sum()) for m in milestones]
        ax.bar([str(m) for m in milestones], reached, color="tab:green")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("ASHA rung (step)")
        ax.set_ylabel("trials that reached it")
        ax.set_title(f"trials per rung (of {len(frame)})")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, out_dir, "search")
    return fig


def best_sentence(frame: pd.DataFrame, settings: dict[str, Any]) -> str:
    """The best configuration (:func:`best_configuration`), with its seed interval."""
    row = best_configuration(frame, settings)
    values = ", ".join(f"{k}={row[k]:g}" for k in settings["space"] if k in row)
    ci = "" if math.isnan(row["metric_ci"]) else f" ± {row['metric_ci']:.3f} (95% CI over {row['n_seeds']} seeds)"
    return (f"Best configuration ({settings['algorithm']} search, {len(frame)} configurations, "
            f"{int(frame['stopped_early'].sum())} stopped early): {values or row['grid_point']}, "
            f"{settings['metric']} {row['metric']:.3f}{ci}; its test_error {row['test_error']:.3f} "
            "(for the record: selection reads validation only).")


def analyze_search(client: Any, parent: Any, out_dir: Path) -> tuple[list[str], dict[str, Any]]:
    """For a search sweep: write ``search.png``, ``search.pdf`` and ``search.csv`` and return (sentences,
    figures); ([], {}) for a grid sweep."""
    settings = search_settings(parent)
    if settings is None:
        return [], {}
    frame = configurations(client, parent, settings)
    if frame.empty:
        return [], {}
    frame.to_csv(out_dir / "search.csv", index=False)
    fig = plot_search(frame, settings, out_dir, f"Sweep {parent.data.tags[TAG_SWEEP_ID]}: search")
    sentences = [best_sentence(frame, settings)]
    best = parent.data.tags.get("best_config")
    if best:
        sentences.append(f"The driver recorded best_config {json.dumps(json.loads(best))} on the parent run.")
    return sentences, {"search": fig}


SEARCH_FILES = ("search.png", "search.pdf", "search.csv")
__all__ = ["SEARCH_FILES", "analyze_search", "best_configuration", "best_sentence", "configurations", "rungs",
           "search_settings"]
