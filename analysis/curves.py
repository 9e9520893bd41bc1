"""The figures over training time: the family's (train, test) curve pair against the step (``curves``), and the
test curve as colour over knob value and step (``heatmap``). The knob is the colour (curves) or the row
(heatmap); every combination of the other varying axes gets its own panel."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.aggregate import combo_text, default_family, line_axes, varying
from analysis.figures import (
    Context,
    _grid,
    _panel_protocol,
    _select,
    c_label,
    figure,
    new_figure,
    panel_keys,
    rate_axis,
    save_figure,
    step_label,
)
from models.family import Family
from record.colours import knob_colours

TRAIN_STYLE, TEST_STYLE = "-", "--"


def plot_curves(
    curves: pd.DataFrame,
    *,
    protocol: str | None = None,
    param_counts: dict[int, int] | None = None,
    title: str = "Train and test error during training",
    axes: Sequence[str] = ("C",),
    knob: str = "C",
    out_dir: Path | None = None,
    family: Family | None = None,
) -> Figure:
    """The family's train (solid) and test (dashed) curve metric against step, one colour per knob value: mean
    over seeds, shaded 95% CI; one panel per value combination of the other varying axes (titled ``lr=0.05``).

    curves: :func:`analysis.aggregate.curves` (columns the axes, metric, step, n, mean, low, high). The data
    lines are labelled ``C=<C> train`` / ``C=<C> test``; the legend (outside the top-right panel) uses proxies
    (one entry per knob value, the two styles, the band). Panels share the y axis; a rate's stops at 0 and 1.
    """
    family = default_family(family)
    train_metric, test_metric = family.curve_metrics
    panel_axes = varying(curves, line_axes(axes, knob))
    keys = panel_keys(curves, panel_axes)
    ncols = min(len(keys), 3)
    fig = new_figure(9.0 if ncols == 1 else 4.6 * ncols + 2.2,
                     5.2 if len(keys) == 1 else 3.6 * math.ceil(len(keys) / ncols) + 0.8)
    panels = _grid(fig, len(keys))
    widths = sorted(curves[knob].unique())
    colours = knob_colours(widths)
    rates = rate_axis(family.curve_metrics, family)
    top = float(np.nanmax(curves[["high", "mean"]].to_numpy(dtype=float), initial=0.0))
    for ax, key in zip(panels, keys, strict=True):
        sub = _select(curves, panel_axes, key)
        for c in widths:
            for metric, style, name in ((train_metric, TRAIN_STYLE, "train"), (test_metric, TEST_STYLE, "test")):
                d = sub[(sub[knob] == c) & (sub["metric"] == metric)].sort_values("step")
                if d.empty:
                    continue
                ax.plot(d["step"], d["mean"], linestyle=style, color=colours[c], linewidth=1.6,
                        label=f"{knob}={c} {name}")
                ax.fill_between(d["step"], d["low"], d["high"], color=colours[c], alpha=0.18, linewidth=0)
        ax.set_xlabel(step_label(_panel_protocol(panel_axes, key, protocol), family))
        if rates:
            ax.set_ylim(0.0, min(1.0, top * 1.05) if top > 0 else 1.0)
        if not sub.empty:
            ax.set_xlim(float(sub["step"].min()), float(sub["step"].max()))
        ax.grid(True, alpha=0.3)
        if key:
            ax.set_title(combo_text(panel_axes, key), fontsize=10)
    ylabel = next(p.ylabel for p in family.complexity_panels if train_metric in p.metrics)
    for ax in panels[::ncols]:
        ax.set_ylabel(ylabel)
    fig.suptitle(title)  # the figure's title, so a long one never runs into the legend
    handles = [Line2D([], [], color=colours[c], linewidth=3, label=c_label(c, param_counts, knob=knob))
               for c in widths]
    handles += [
        Line2D([], [], color="0.3", linestyle=TRAIN_STYLE, label=train_metric.replace("_", " ")),
        Line2D([], [], color="0.3", linestyle=TEST_STYLE, label=test_metric.replace("_", " ")),
        Line2D([], [], color="0.3", alpha=0.25, linewidth=6, label="95% CI over seeds"),
    ]
    # An axes legend outside the axes: constrained layout keeps it clear of the data and of the title.
    panels[ncols - 1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                             fontsize=9, title=f"{family.knob_meaning} {knob}", title_fontsize=9)
    if out_dir is not None:
        save_figure(fig, out_dir, "curves")
    return fig


def plot_heatmap(
    curves: pd.DataFrame,
    *,
    protocol: str | None = None,
    param_counts: dict[int, int] | None = None,
    title: str = "Mean test error over width and training time",
    axes: Sequence[str] = ("C",),
    knob: str = "C",
    out_dir: Path | None = None,
    family: Family | None = None,
) -> Figure:
    """The family's test curve metric (mean over seeds) as colour, the knob on the y axis (one row per value),
    step on the x axis; one panel per value combination of the other varying axes (stacked, one colour scale).
    Cells span half-way to the neighbouring steps. Darker is worse in the metric's direction."""
    family = default_family(family)
    metric = family.metric(family.curve_metrics[1])
    d = curves[curves["metric"] == metric.name]
    panel_axes = varying(d, line_axes(axes, knob))
    keys = panel_keys(d, panel_axes)
    values_all = d["mean"].to_numpy(dtype=float)
    low = 0.0 if metric.unit == "" else float(np.nanmin(values_all, initial=0.0))
    high = max(float(np.nanmax(values_all, initial=0.0)), low + 1e-9)
    fig = new_figure(9.0, 1.2 + (0.6 + 0.45 * d[knob].nunique()) * len(keys))
    panels = list(fig.subplots(len(keys), 1, squeeze=False, sharex=len(keys) > 1).ravel())
    cmap = "magma" if metric.higher_is_better else "magma_r"
    mesh = None
    for ax, key in zip(panels, keys, strict=True):
        grid = _select(d, panel_axes, key).pivot(index=knob, columns="step", values="mean").sort_index()
        steps = grid.columns.to_numpy(dtype=float)
        if len(steps) > 1:
            mid = (steps[1:] + steps[:-1]) / 2
            edges = np.concatenate([[steps[0] - (mid[0] - steps[0])], mid, [steps[-1] + (steps[-1] - mid[-1])]])
        else:
            edges = np.array([steps[0] - 0.5, steps[0] + 0.5])
        mesh = ax.pcolormesh(edges, np.arange(len(grid) + 1), np.ma.masked_invalid(grid.to_numpy(dtype=float)),
                             cmap=cmap, vmin=low, vmax=high, rasterized=True)
        ax.set_yticks(np.arange(len(grid)) + 0.5)
        ax.set_yticklabels([c_label(int(c), param_counts, knob=knob) for c in grid.index], fontsize=9)
        ax.set_ylabel(family.knob_meaning)
        if key:
            ax.set_title(combo_text(panel_axes, key), fontsize=10)
    for ax, key in zip(panels, keys, strict=True):  # a protocol axis changes what a step is
        if "protocol" in panel_axes or ax is panels[-1]:
            ax.set_xlabel(step_label(_panel_protocol(panel_axes, key, protocol), family))
    fig.suptitle(title)
    assert mesh is not None
    unit = "rate, 0–1" if metric.unit == "" else metric.unit
    fig.colorbar(mesh, ax=panels).set_label(f"mean {metric.name.replace('_', ' ')} ({unit})")
    if out_dir is not None:
        save_figure(fig, out_dir, "heatmap")
    return fig


@figure("curves")
def curves_figure(ctx: Context) -> Figure | None:
    if ctx.sampled_search:  # one panel per sampled configuration says less than search.png
        return None
    train, test = ctx.family.curve_metrics
    return plot_curves(ctx.agg.curves, protocol=ctx.data.protocol, param_counts=ctx.data.param_counts(),
                       axes=ctx.data.axes, knob=ctx.data.knob, family=ctx.family,
                       title=f"{ctx.title}: {train} (solid) and {test} (dashed)\nmean over seeds, shaded: 95% CI")


@figure("heatmap")
def heatmap_figure(ctx: Context) -> Figure | None:
    summary = ctx.agg.summary
    if ctx.sampled_search or summary[summary["n_seeds"] > 0][ctx.data.knob].nunique() < 2:
        return None  # its rows are the knob's values
    test = ctx.family.curve_metrics[1]
    return plot_heatmap(ctx.agg.curves, protocol=ctx.data.protocol, param_counts=ctx.data.param_counts(),
                        axes=ctx.data.axes, knob=ctx.data.knob, family=ctx.family,
                        title=f"{ctx.title}: mean {test} over {ctx.family.knob_meaning} and training time")
