"""The complexity figure: each panel of the family's final values against the knob (or another numeric axis),
mean ± 95% CI error bars, with the family's threshold (the ResNet's interpolation threshold) marked."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import ScaledTranslation

from analysis.aggregate import combo_text, default_family, line_axes, seed_range_text, value_text
from analysis.figures import (
    AXIS_LABELS,
    Context,
    _grid,
    _select,
    c_label,
    figure,
    line_colours,
    new_figure,
    panel_keys,
    rate_axis,
    save_figure,
    split_plan,
)
from models.family import Family, Panel

#: (marker, linestyle) per series of a panel when colour encodes a line split.
SERIES_STYLES = (("o", "-"), ("s", "--"), ("^", ":"))
SINGLE_COLOURS = ("tab:blue", "tab:orange", "tab:green")
#: Sideways offset (points) between neighbouring lines.
DODGE_PT = 5.0
#: More knob ticks than this get compact labels (``12`` over ``2.9k``) instead of ``C=12`` over ``2,902 params``.
CROWDED_TICKS = 7


def _short_count(p: int | None) -> str:
    """A parameter count in at most four characters: ``53``, ``808``, ``2.9k``, ``75k``; ``?`` when unknown."""
    if p is None:
        return "?"
    if p < 1000:
        return str(p)
    return f"{p / 1000:.1f}k" if p < 10_000 else f"{p // 1000}k"


def _x_scale(ax, values: np.ndarray, axis: str, knob: str, counts: dict[int, int], family: Family,
             compact: bool = False) -> str:
    """Scale, ticks and label of the x axis; returns the x label. The knob: log2 axis, ticks labelled with the
    value and its parameter count (``compact``, for panels side by side: the short form from three values on).
    Another axis: a log axis when all values are positive and span more than a factor of 10, else linear; ticks
    at the values."""
    values = np.unique(values)
    if axis == knob and (values > 0).all():
        ax.set_xscale("log", base=2)
        ax.set_xticks(values)
        crowded = len(values) > (2 if compact else CROWDED_TICKS)
        if crowded:  # full labels would overlap: value over short count
            ax.set_xticklabels([f"{int(c)}\n{_short_count(counts.get(int(c)))}" for c in values], fontsize=7)
        else:
            ax.set_xticklabels([c_label(int(c), counts, sep="\n", knob=knob) for c in values], fontsize=8)
        ax.minorticks_off()
        if len(values) > 1:
            ax.set_xlim(values.min() / 1.4, values.max() * 1.4)
        thousands = " (k = thousands)" if crowded and any(counts.get(int(c), 0) >= 1000 for c in values) else ""
        return f"{family.knob_meaning} {knob} (log2 scale) and trainable parameter count{thousands}"
    name = AXIS_LABELS.get(axis, axis)
    ax.set_xticks(values)
    ax.set_xticklabels([f"{v:g}" for v in values], fontsize=8)
    if (values > 0).all() and len(values) > 1 and values.max() / values.min() > 10:
        ax.set_xscale("log")
        ax.set_xticks(values)
        ax.set_xticklabels([f"{v:g}" for v in values], fontsize=8)
        ax.minorticks_off()
        ax.set_xlim(values.min() / 1.4, values.max() * 1.4)
        return f"{name} (log scale)"
    if len(values) > 1:
        pad = 0.06 * (values.max() - values.min())
        ax.set_xlim(values.min() - pad, values.max() + pad)
    return name


def _limits(s: pd.DataFrame, panel: Panel, family: Family) -> tuple[float, float]:
    """y limits of a panel, from its means and intervals. Set by hand because the lines are drawn with a
    sideways offset transform, which matplotlib's autoscaling does not follow. Rates lie in [0, 1] (a gap in
    [-1, 1]), and a t-interval from 2-3 seeds can reach past that, so their axis stops a little beyond those
    limits (the exact intervals are in summary.csv)."""
    columns = [family.final_column(m) for m in panel.metrics]
    means = s[[f"{c}_mean" for c in columns]].to_numpy(dtype=float)
    halves = np.nan_to_num(s[[f"{c}_ci95" for c in columns]].to_numpy(dtype=float))
    if rate_axis(panel.metrics, family):
        low, high = float(np.nanmin(means - halves, initial=0.0)), float(np.nanmax(means + halves, initial=0.0))
        return max(-1.05, min(0.0, low) - 0.03), min(1.05, max(high, 0.05) + 0.03)
    low, high = float(np.nanmin(means - halves)), float(np.nanmax(means + halves))
    pad = 0.06 * (high - low) if high > low else max(0.05, 0.05 * abs(high))
    return low - pad, high + pad


def plot_complexity(
    summary: pd.DataFrame,
    thresholds: dict[tuple, int | None] | int | None = None,
    *,
    axes: Sequence[str] = ("C",),
    knob: str = "C",
    x: str | None = None,
    title: str = "Final errors against model width",
    out_dir: Path | None = None,
    family: Family | None = None,
) -> Figure:
    """Each of the family's complexity panels (the ResNet's: final train error, test error and their gap) against
    ``x`` (default: the knob, on a log2 axis), mean ± 95% CI error bars.

    summary: :func:`analysis.aggregate.summarize`. thresholds: :func:`analysis.aggregate.thresholds` (or one
    value, or None, for a one-line sweep); drawn only when x is the knob, as a dotted vertical line per line
    (gid ``threshold``, the line's colour). The first other varying axis splits lines: one colour per value,
    the series by marker and line style, each ErrorbarContainer labelled ``final train error, lr=0.05``;
    without it the series are labelled with their quantity's legend. Every combination of further axes gets a
    row of panels, titled with it.
    """
    family = default_family(family)
    x = x or knob
    if not isinstance(thresholds, dict):
        thresholds = {(): thresholds} if thresholds is not None else {}
    s = summary[summary["n_seeds"] > 0].sort_values([a for a in axes if a in summary.columns])
    line_axis, panel_axes = split_plan(s, axes, x)
    keys = panel_keys(s, panel_axes)
    lines = sorted(s[line_axis].unique()) if line_axis else [None]
    colours = line_colours(line_axis, lines, knob)
    metric_panels = family.complexity_panels
    if len(metric_panels) == 1:  # one panel per combination, in rows of up to three
        ncols = min(len(keys), 3)
        fig = new_figure(9.5 if ncols == 1 else 4.8 * ncols + 2.4,
                         5.0 if len(keys) == 1 else 4.0 * math.ceil(len(keys) / ncols) + 0.9)
        grid = [[ax] for ax in _grid(fig, len(keys))]
    else:  # a row per combination, a column per metric panel
        ncols = len(metric_panels)
        fig = new_figure(3.6 * ncols + 2.4, 3.8 * len(keys) + 0.9)
        grid = [list(row) for row in fig.subplots(len(keys), ncols, squeeze=False, sharey="col")]
    counts = {int(c): int(p) for c, p in zip(s[knob], s["param_count"], strict=True) if not pd.isna(p)}
    cells = [(ax, key, panel) for key, row in zip(keys, grid, strict=True)
             for ax, panel in zip(row, metric_panels, strict=True)]
    for ax, key, panel in cells:
        _draw_panel(ax, fig, _select(s, panel_axes, key), panel, family, lines, line_axis, colours, x, knob, axes,
                    thresholds)
        ax.set_ylim(*_limits(s, panel, family))
        xlabel = _x_scale(ax, s[x].to_numpy(dtype=float), x, knob, counts, family, compact=len(metric_panels) > 1)
        ax.set_xlabel("" if len(metric_panels) > 1 else xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(True, alpha=0.3)
        if key:
            ax.set_title(combo_text(panel_axes, key), fontsize=10)
    n = s["n_seeds"]
    bars = "bars: 95% t-interval" + ("; none with 1 seed" if n.min() < 2 else "")
    fig.suptitle(f"{title}\n(mean over {seed_range_text(n.min(), n.max())}; {bars})")
    if len(metric_panels) > 1:  # one x label for the row: repeated under narrow panels they run into each other
        fig.supxlabel(xlabel, fontsize=10)
    # the top row's panels (single-panel families: a row of combinations; else the metric panels of the first)
    top_row = [c[0] for c in cells[:ncols]]
    _legend([c[0] for c in cells], top_row, line_axis, lines, colours, counts, knob, family, x, thresholds)
    if out_dir is not None:
        save_figure(fig, out_dir, "complexity")
    return fig


def _draw_panel(ax, fig: Figure, panel_rows: pd.DataFrame, panel: Panel, family: Family, lines: list,
                line_axis: str | None, colours: dict, x: str, knob: str, axes: Sequence[str],
                thresholds: dict[tuple, int | None]) -> None:
    """One subplot: the panel's series for every line, and each line's threshold when x is the knob."""
    ax.axhline(0.0, color="0.6", linewidth=0.8, label="_zero")
    quantities = [family.final_quantity(m) for m in panel.metrics]
    knob_others = line_axes(axes, knob)
    for i, value in enumerate(lines):
        # Lines sit a few points apart sideways so that their error bars do not hide each other; the offset is
        # a display transform, so the artists keep the exact x values.
        shift = ScaledTranslation((i - (len(lines) - 1) / 2) * DODGE_PT / 72, 0, fig.dpi_scale_trans)
        d = (panel_rows if line_axis is None else panel_rows[panel_rows[line_axis] == value]).sort_values(x)
        if d.empty:
            continue
        xs = d[x].to_numpy(dtype=float)
        for n, (q, (marker, style)) in enumerate(zip(quantities, SERIES_STYLES, strict=False)):
            colour = SINGLE_COLOURS[n] if line_axis is None else colours[value]
            name = q.legend if line_axis is None else f"{q.legend}, {value_text(line_axis, value)}"
            yerr = np.nan_to_num(d[f"{q.column}_ci95"].to_numpy(dtype=float), nan=0.0)
            ax.errorbar(xs, d[f"{q.column}_mean"].to_numpy(dtype=float), yerr=yerr, marker=marker, color=colour,
                        linestyle=style, capsize=4, linewidth=1.6, markersize=6, label=name,
                        transform=ax.transData + shift)
        rule = family.threshold
        t = thresholds.get(tuple(d[a].iloc[0] for a in knob_others if a in d.columns)) if x == knob else None
        if rule is not None and t is not None:
            where = "" if line_axis is None else f", {value_text(line_axis, value)}"
            ax.axvline(t, color="0.25" if line_axis is None else colours[value], linestyle=(0, (2, 2)),
                       linewidth=1.2, gid="threshold",
                       label=f"{rule.name}{where}: {knob}={t}\n({rule.metric.replace('_', ' ')} < {rule.below:.0%} "
                             "from here on)")


def _legend(panels: list, top_row: list, line_axis: str | None, lines: list, colours: dict, counts: dict[int, int],
            knob: str, family: Family, x: str, thresholds: dict[tuple, int | None]) -> None:
    """One legend, outside the top-right panel: the series (or, with a line split, the lines' colours and the
    series' styles) and the threshold markers."""
    legend_ax = top_row[-1]
    if line_axis is None and len(family.complexity_panels) > 1:  # panels side by side: a legend in each
        for ax in top_row:
            handles = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
            handles += [h for h in ax.get_lines() if h.get_gid() == "threshold"][:1]
            ax.legend(handles=handles, loc="best", fontsize=8)
        return
    if line_axis is None:
        series_axes = top_row if len(family.complexity_panels) > 1 else [legend_ax]
        handles = [c for ax in series_axes for c in ax.containers if isinstance(c, ErrorbarContainer)]
        for ax in panels:  # the threshold markers (one per panel at most)
            handles += [h for h in ax.get_lines() if h.get_gid() == "threshold"][:1]
    else:
        def line_name(v: object) -> str:
            return c_label(int(v), counts, knob=knob) if line_axis == knob else value_text(line_axis, v)

        handles = [Line2D([], [], color=colours[v], linewidth=3, label=line_name(v)) for v in lines]
        for panel in family.complexity_panels:
            handles += [Line2D([], [], color="0.3", marker=m, linestyle=st, label=family.final_quantity(metric).legend)
                        for metric, (m, st) in zip(panel.metrics, SERIES_STYLES, strict=False)]
        rule = family.threshold
        if rule is not None and x == knob and any(t is not None for t in thresholds.values()):
            below = f"{rule.metric.replace('_', ' ')} < {rule.below:.0%}"
            handles.append(Line2D([], [], color="0.3", linestyle=(0, (2, 2)),
                                  label=f"{rule.name}\n({below} from here on)"))
    legend_ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                     fontsize=9, title=line_axis, title_fontsize=9)


@figure("complexity")
def complexity_figure(ctx: Context) -> Figure | None:
    if not ctx.along_x():
        return None
    subject = f"{ctx.family.knob_meaning}" if ctx.x == ctx.data.knob else ctx.x
    return plot_complexity(ctx.agg.summary, ctx.agg.thresholds, axes=ctx.data.axes, knob=ctx.data.knob, x=ctx.x,
                           family=ctx.family, title=f"{ctx.title}: final values against {subject}")
