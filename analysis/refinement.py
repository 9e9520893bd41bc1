"""What ``sweep analyze`` adds for a refine search: the order in which the knob's values were chosen and why
(``refine.png``, a Refinement section in summary.md), where the threshold fell, and what the full integer grid
would have cost."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.aggregate import Aggregates
from analysis.figures import Context, figure, new_figure
from analysis.load import SweepData
from record import TAG_REFINE_ORDER, TAG_REFINE_REASON


def refine_order(data: SweepData) -> pd.DataFrame:
    """One row per knob value the refine search chose, in its order: order, the value, why it was chosen."""
    runs = data.runs
    if TAG_REFINE_ORDER not in runs or runs[TAG_REFINE_ORDER].isna().all():
        return pd.DataFrame(columns=["order", data.knob, "reason"])
    rows = runs.dropna(subset=[TAG_REFINE_ORDER]).drop_duplicates(data.knob)
    table = pd.DataFrame({"order": rows[TAG_REFINE_ORDER].astype(int), data.knob: rows[data.knob],
                          "reason": rows[TAG_REFINE_REASON]})
    return table.sort_values("order").reset_index(drop=True)


def threshold_text(agg: Aggregates, data: SweepData) -> str | None:
    """Where the family's threshold fell: an integer value when the measured value just below it is one less,
    else the closest measured pair; None without a rule."""
    rule = data.family.threshold
    if rule is None:
        return None
    knob = data.knob
    t = agg.thresholds.get(())
    measured = sorted(int(v) for v in agg.summary[knob])
    if t is None:
        return f"No measured {knob} reaches the {rule.name} ({rule.metric} below {rule.below:.0%} from there on)."
    below = [w for w in measured if w < t]
    if not below:
        return f"The {rule.name} is at or below the smallest {knob} measured, {knob}={t}."
    if below[-1] == t - 1:
        return (f"The {rule.name} is {knob}={t}: {knob}={t - 1} is at or above {rule.below:.0%}, {knob}={t} and "
                "every larger one below.")
    return f"The {rule.name} lies between {knob}={below[-1]} and {knob}={t}, the closest measured pair."


def refinement_section(data: SweepData, agg: Aggregates, seeds: int) -> list[str]:
    """summary.md's Refinement section (module docstring)."""
    table = refine_order(data)
    if table.empty:
        return []
    knob, watched = data.knob, data.family.curve_metrics[1]
    low, high = int(table[knob].min()), int(table[knob].max())
    full = (high - low + 1) * seeds
    lines = ["", "## Refinement", "",
             f"The values of {knob} were chosen one after another by `search.algorithm: refine`, each where the "
             "curve was least resolved. **The choice looked at test metrics** (the test curve, "
             f"`{watched}`): this is a descriptive study of where this curve bends, not model selection, and no "
             "number here estimates the error of a model chosen from it.", ""]
    text = threshold_text(agg, data)
    if text:
        lines += [f"- {text}"]
    lines += [f"- {len(table)} values of {knob} x {seeds} seeds = {len(table) * seeds} runs; the full integer grid "
              f"from {knob}={low} to {knob}={high} would have cost {high - low + 1} x {seeds} = {full} runs.", "",
              f"| order | {knob} | why chosen |", "|---:|---:|---|"]
    lines += [f"| {r.order} | {r[knob]} | {r.reason} |" for _, r in table.iterrows()]
    return lines


@figure("refine")
def refine_figure(ctx: Context) -> Figure | None:
    """The watched (test) metric and the threshold metric against the knob, each value labelled with the order
    the refine search chose it in (starting values as squares)."""
    table = refine_order(ctx.data)
    if table.empty:
        return None
    family, knob, s = ctx.family, ctx.data.knob, ctx.agg.summary.sort_values(ctx.data.knob)
    metrics = [family.curve_metrics[1], *([family.threshold.metric] if family.threshold else [])]
    fig = new_figure(9.0, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    order = dict(zip(table[knob], table["order"], strict=True))
    start = set(table[table["reason"].str.startswith("a starting value")][knob])
    for metric, colour in zip(metrics, ("tab:orange", "tab:blue"), strict=False):
        column = family.final_column(metric)
        xs, ys = s[knob].to_numpy(dtype=float), s[f"{column}_mean"].to_numpy(dtype=float)
        ax.errorbar(xs, ys, yerr=np.nan_to_num(s[f"{column}_ci95"].to_numpy(dtype=float)), color=colour,
                    capsize=3, linewidth=1.4, label=f"final {metric} (mean ± 95% CI over seeds)")
        for x, y in zip(xs, ys, strict=True):
            if math.isfinite(y):
                ax.plot([x], [y], marker="s" if int(x) in start else "o", color=colour, markersize=6)
                if metric == metrics[0]:  # the order, once per value
                    ax.annotate(str(order.get(int(x), "")), (x, y), textcoords="offset points", xytext=(4, 6),
                                fontsize=8, color="0.2")
    t = ctx.agg.thresholds.get(())
    if family.threshold and t is not None:
        ax.axvline(t, color="0.3", linestyle=(0, (2, 2)), label=f"{family.threshold.name}: {knob}={t}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(s[knob].to_numpy(dtype=float), [str(int(v)) for v in s[knob]], fontsize=7)
    ax.minorticks_off()
    ax.set_ylabel(next(p.ylabel for p in family.complexity_panels if metrics[0] in p.metrics))
    ax.set_xlabel(f"{family.knob_meaning} {knob} (log2); the number at a point: the order it was chosen in "
                  "(squares: the starting values)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"{ctx.title}: values of {knob} chosen by the refine search\n(it looked at test metrics: "
                 "a descriptive study)", fontsize=10)
    return fig
