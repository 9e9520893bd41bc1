"""What ``sweep analyze`` adds for a search or a scheduled grid: ``search.png``, ``search.csv`` and a Search section.

One row per configuration, i.e. grid point, over all its FINISHED seeds (a re-suggested configuration's ended
first runs never count twice), with its values, start order, the mean over its seeds of the search metric (a
validation metric) at their last step, whether the scheduler stopped it, and the same mean of ``test_error``
(for the record; selection never reads it). The best configuration is chosen here, for the parent run
(:func:`sweep.finish.record_best`), summary.md and the figure alike.

``search.png``: (1) the metric against trial start order, with the best so far; (2) one scatter per searched
key, sampled value against the final metric (log x axis for loguniform keys); (3) with ASHA, how many trials
reached each rung (``grace_period * reduction_factor**k`` steps below ``max_t``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from analysis.aggregate import mean_ci
from analysis.figures import Context, figure, new_figure
from analysis.load import parse_axis_value, sweep_axes
from models.spec import CommonSpec
from record import (
    TAG_GRID_POINT,
    TAG_SEED,
    TAG_STOPPED_EARLY,
    TAG_SWEEP_ID,
    TAG_TUNE_TRIAL,
    search_all_runs,
    short_value,
    trials_of,
)


def search_settings(spec: CommonSpec) -> dict[str, Any]:
    """The spec's ``search:`` block as the analysis reads it: algorithm, scheduler, the searched keys with their
    distribution (key -> (name, arguments)), metric, mode, ASHA's grace period and reduction factor."""
    search = spec.search
    space = {key: next(iter(dist.items())) for key, dist in search.space.items()}
    return {"algorithm": search.algorithm, "scheduler": search.scheduler, "space": space, "metric": search.metric,
            "mode": search.mode, "grace_period": search.grace_period, "reduction_factor": search.reduction_factor}


def configurations(client: Any, parent: Any, settings: dict[str, Any]) -> pd.DataFrame:
    """One row per configuration, i.e. per grid point (the values of every axis, sampled or listed): its
    FINISHED runs over all its seeds, whatever Tune trials trained them (a scheduled grid may split a grid
    point's seeds into several packs; a search may sample one configuration twice, each seed then counted
    once). Columns: grid_point, trial (the first Tune trial id, else the grid point), start_time, order
    (1 = first started), each axis, metric (mean over seeds of each seed's value at its last step),
    metric_ci (95% half width over seeds), test_error (the same mean, for the record), last_step (the
    smallest over seeds), budget, stopped_early (a seed stopped by the scheduler), ran_budget (every seed
    reached the budget), n_seeds, run_ids."""
    children = list(search_all_runs(client, [parent.info.experiment_id], trials_of(parent.data.tags[TAG_SWEEP_ID])))
    axes = sweep_axes(parent, children)
    metric = settings["metric"]
    groups: dict[str, dict[str, Any]] = {}
    for run in sorted(children, key=lambda r: r.info.start_time):
        if run.info.status == "FINISHED" and metric in run.data.metrics:
            point = run.data.tags.get(TAG_GRID_POINT, run.info.run_id)
            groups.setdefault(point, {}).setdefault(run.data.tags.get(TAG_SEED, run.info.run_id), run)
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
            **{a: parse_axis_value(first.data.params.get(a, first.data.tags.get(a))) for a in axes},
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


def plot_search(frame: pd.DataFrame, settings: dict[str, Any], title: str) -> Any:
    """The search figure: (1) the metric against start order with the best so far and the best configuration
    starred; (2) one scatter per searched key, its value against the metric (log x axis for loguniform keys);
    (3) with ASHA, how many configurations reached each rung."""
    keys = [k for k in settings["space"] if k in frame]
    asha = settings["scheduler"] == "asha"
    n = 1 + len(keys) + int(asha)
    # Two panels a row: a row of four was 2,520 px wide, which MLflow's artifact viewer shrinks past reading.
    ncols = min(n, 2)
    fig = new_figure(4.6 * ncols, 3.8 * -(-n // ncols) + 0.4)
    axes = list(fig.subplots(-(-n // ncols), ncols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    axes = axes[:n]
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
    return fig


def best_sentence(frame: pd.DataFrame, settings: dict[str, Any]) -> str:
    """The best configuration (:func:`best_configuration`), with its seed interval."""
    row = best_configuration(frame, settings)
    values = ", ".join(f"{k}={short_value(row[k])}" for k in settings["space"] if k in row)
    ci = "" if math.isnan(row["metric_ci"]) else f" ± {row['metric_ci']:.3f} (95% CI over {row['n_seeds']} seeds)"
    return (f"Best configuration ({settings['algorithm']} search, {len(frame)} configurations, "
            f"{int(frame['stopped_early'].sum())} stopped early): {values or row['grid_point']}, "
            f"{settings['metric']} {row['metric']:.3f}{ci}; its test_error {row['test_error']:.3f} "
            "(for the record: selection reads validation only).")


def configurations_sentence(frame: pd.DataFrame, settings: dict[str, Any], knob: str, value: object) -> str:
    """What a sampled search at one knob value ran: how many configurations, how many the scheduler stopped, and
    where the rest of the story is."""
    stopped = int(frame["stopped_early"].sum())
    scheduler = f"; ASHA stopped {stopped} early (their runs' names start `stopped@<step>`)" \
        if settings["scheduler"] != "fifo" else ""
    return (f"{len(frame)} configurations of {', '.join(settings['space'])} at {knob}={short_value(value)}, each over "
            f"its seeds{scheduler}; the best configuration's runs are marked ★. Each configuration against "
            f"{settings['metric']}: `analysis/search.png` and `analysis/search.csv`.")


@figure("search")
def search_figure(ctx: Context) -> Any:
    """Drawn for a search or a scheduled grid (:attr:`Context.configurations`)."""
    if ctx.configurations is None or ctx.configurations.empty:
        return None
    return plot_search(ctx.configurations, ctx.search_settings, f"{ctx.title}: search")


def search_section(frame: pd.DataFrame, settings: dict[str, Any]) -> list[str]:
    """summary.md's Search section: the best configuration and how the figure reads."""
    return ["", "## Search", "", f"- {best_sentence(frame, settings)}", "",
            "`analysis/search.png`: the search metric against configuration start order with the best so far (the "
            "best configuration starred); each searched key against it (log axis for loguniform keys); with ASHA, "
            "configurations per rung. `analysis/search.csv`: one row per configuration."]
