"""Figures of one sweep, drawn on matplotlib's Agg canvas (no pyplot, no GUI, no global figure state).

Every function returns the :class:`~matplotlib.figure.Figure` (so its artists can be inspected) and, given
``out_dir``, saves it there as ``<name>.png`` (at :data:`DPI`) and ``<name>.pdf``. Colours encode C in
order (small C dark, large C light) wherever C is the colour.

Axes of the grid are never pooled. In the complexity figure the x axis is one axis (the knob C by default);
the first other varying axis splits lines (one colour per value, legend ``lr=0.05``), and every combination
of the further ones gets its own panel. Curves and heatmap plot against the training step, so the knob is
their colour (curves) or row (heatmap) and every combination of the other varying axes gets its own panel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import ScaledTranslation

from analysis.aggregate import INTERPOLATION_TOL, combo_text, line_axes, seed_range_text, value_text, varying

DPI = 150
ERROR_LABEL = "error rate (fraction misclassified, 0–1)"
STEP_LABELS = {"handout": "SGD update", "epochs": "epoch"}
TRAIN_STYLE, TEST_STYLE = "-", "--"
#: (metric, linestyle, label suffix) of the lines in curves.png.
SERIES = (("train_error", TRAIN_STYLE, "train"), ("test_error", TEST_STYLE, "test"))
#: Columns of the summary plotted by :func:`plot_complexity` and their series labels.
COMPLEXITY_SERIES: dict[str, str] = {
    "final_train_error": "final train error",
    "final_test_error": "final test error",
    "final_gap": "gap (test − train error)",
}


#: How an axis is named on a figure's x axis (the knob's label is built with its parameter counts).
AXIS_LABELS = {
    "lr": "SGD step size lr",
    "budget": "training budget (updates or epochs)",
    "batch_size": "minibatch size",
    "eval_every": "evaluation interval (steps)",
    "label_noise": "label noise (fraction of training labels replaced)",
    "K": "mixture components K",
}
#: (marker, linestyle) per complexity series when colour encodes a line split.
SERIES_STYLES = (("o", "-"), ("s", "--"), ("^", ":"))
SINGLE_COLOURS = ("tab:blue", "tab:orange", "tab:green")
#: Sideways offset (points) between neighbouring lines of the complexity figure.
DODGE_PT = 5.0


def split_plan(frame: pd.DataFrame, axes: Sequence[str], x: str) -> tuple[str | None, list[str]]:
    """(line axis, panel axes) for a figure whose x axis is ``x``: of the other axes that vary in ``frame``,
    the first splits lines and the rest split panels."""
    others = varying(frame, line_axes(axes, x))
    return (others[0] if others else None), others[1:]


def panel_keys(frame: pd.DataFrame, panel_axes: Sequence[str]) -> list[tuple]:
    """Sorted value combinations of ``panel_axes`` present in ``frame`` (``[()]`` for no panel axis)."""
    if not panel_axes:
        return [()]
    combos = frame[list(panel_axes)].drop_duplicates().itertuples(index=False, name=None)
    return sorted(combos)


def _select(frame: pd.DataFrame, axes: Sequence[str], values: Sequence[object]) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    for a, v in zip(axes, values, strict=True):
        mask &= (frame[a] == v).to_numpy()
    return frame[mask]


def _grid(fig: Figure, n: int, ncols_max: int = 3, **kw: object) -> list:
    """``n`` subplots in rows of at most ``ncols_max``, sharing the y axis (errors compare across panels)."""
    ncols = min(n, ncols_max)
    nrows = math.ceil(n / ncols)
    axs = fig.subplots(nrows, ncols, squeeze=False, sharey=True, **kw)
    flat = list(axs.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return flat[:n]


def line_colours(axis: str | None, values: Sequence[object], knob: str = "C") -> dict[object, object]:
    """One colour per line value: viridis order for the knob (as in the curves), tab10 otherwise."""
    if axis == knob:
        return c_colours([int(v) for v in values])  # type: ignore[return-value]
    cmap = colormaps["tab10"]
    return {v: cmap(i % 10) for i, v in enumerate(values)}


def _panel_protocol(panel_axes: Sequence[str], key: Sequence[object], protocol: str | None) -> str | None:
    """The protocol of one panel when ``protocol`` is a panel axis, else the sweep's ``protocol``."""
    return str(dict(zip(panel_axes, key, strict=True))["protocol"]) if "protocol" in panel_axes else protocol


def step_label(protocol: str | None) -> str:
    """x label for ``step``: ``SGD update`` (handout protocol), ``epoch`` (epochs protocol), else ``step``."""
    fallback = "step (updates or epochs: protocols differ)" if protocol else "step"
    return STEP_LABELS.get(protocol or "", fallback)


def c_colours(widths: Sequence[int]) -> dict[int, tuple[float, float, float, float]]:
    """One colour per C from viridis (dark to light as C grows; the pale yellow end is left out)."""
    cmap = colormaps["viridis"]
    ws = sorted(set(int(c) for c in widths))
    pos = np.linspace(0.0, 0.85, len(ws)) if len(ws) > 1 else [0.35]
    return {c: cmap(float(p)) for c, p in zip(ws, pos, strict=True)}


def c_label(c: int, param_counts: dict[int, int] | None = None, sep: str = " ") -> str:
    """``C=4 (398 params)`` (or ``C=4`` without a count); ``sep="\\n"`` gives the two-line tick form."""
    p = (param_counts or {}).get(int(c))
    if p is None:
        return f"C={c}"
    return f"C={c}\n{p:,} params" if sep == "\n" else f"C={c} ({p:,} params)"


def new_figure(width: float, height: float) -> Figure:
    """A figure on an Agg canvas with constrained layout (nothing overlaps)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out_dir: Path, name: str, dpi: int = DPI) -> list[Path]:
    """Write ``out_dir/name.png`` (``dpi`` dots per inch) and ``out_dir/name.pdf``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=dpi)
    fig.savefig(paths[1], metadata={"CreationDate": None})
    return paths


def plot_curves(
    curves: pd.DataFrame,
    *,
    protocol: str | None = None,
    param_counts: dict[int, int] | None = None,
    title: str = "Train and test error during training",
    axes: Sequence[str] = ("C",),
    knob: str = "C",
    out_dir: Path | None = None,
) -> Figure:
    """Train (solid) and test (dashed) error against step, one colour per knob value (C): mean over seeds,
    shaded 95% CI; one panel per value combination of the other varying axes (titled ``lr=0.05``, ...).

    curves: :func:`analysis.aggregate.curves` (columns the axes, metric, step, n, mean, low, high). The data
    lines are labelled ``C=<C> train`` / ``C=<C> test``; the legend (outside the top-right panel) uses
    proxies (one entry per C, the two styles, the band). Panels share the error axis. Saved as
    ``curves.png``/``.pdf``.
    """
    panel_axes = varying(curves, line_axes(axes, knob))
    keys = panel_keys(curves, panel_axes)
    ncols = min(len(keys), 3)
    nrows = math.ceil(len(keys) / ncols)
    fig = new_figure(9.0 if ncols == 1 else 4.6 * ncols + 2.2, 5.2 if len(keys) == 1 else 3.6 * nrows + 0.8)
    panels = _grid(fig, len(keys))
    widths = sorted(curves[knob].unique())
    colours = c_colours(widths)
    top = float(np.nanmax(curves["high"].to_numpy(dtype=float), initial=0.0))
    top = max(top, float(np.nanmax(curves["mean"].to_numpy(dtype=float), initial=0.0)))
    for ax, key in zip(panels, keys, strict=True):
        sub = _select(curves, panel_axes, key)
        for c in widths:
            for metric, style, name in SERIES:
                d = sub[(sub[knob] == c) & (sub["metric"] == metric)].sort_values("step")
                if d.empty:
                    continue
                ax.plot(d["step"], d["mean"], linestyle=style, color=colours[c], linewidth=1.6,
                        label=f"{knob}={c} {name}")
                ax.fill_between(d["step"], d["low"], d["high"], color=colours[c], alpha=0.18, linewidth=0)
        ax.set_xlabel(step_label(_panel_protocol(panel_axes, key, protocol)))
        ax.set_ylim(0.0, min(1.0, top * 1.05) if top > 0 else 1.0)
        if not sub.empty:
            ax.set_xlim(float(sub["step"].min()), float(sub["step"].max()))
        ax.grid(True, alpha=0.3)
        if key:
            ax.set_title(combo_text(panel_axes, key), fontsize=10)
    for ax in panels[:: ncols]:
        ax.set_ylabel(ERROR_LABEL)
    fig.suptitle(title)  # the figure's title, so a long one never runs into the legend
    label = (lambda c: c_label(c, param_counts)) if knob == "C" else (lambda c: f"{knob}={c}")
    handles = [Line2D([], [], color=colours[c], linewidth=3, label=label(c)) for c in widths]
    handles += [
        Line2D([], [], color="0.3", linestyle=TRAIN_STYLE, label="train error"),
        Line2D([], [], color="0.3", linestyle=TEST_STYLE, label="test error"),
        Line2D([], [], color="0.3", alpha=0.25, linewidth=6, label="95% CI over seeds"),
    ]
    # An axes legend outside the axes: constrained layout keeps it clear of the data and of the title.
    panels[ncols - 1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                             fontsize=9, title="width C" if knob == "C" else knob, title_fontsize=9)
    if out_dir is not None:
        save_figure(fig, out_dir, "curves")
    return fig


#: More knob ticks than this get compact labels (``12`` over ``2.9k``) instead of ``C=12`` over ``2,902 params``.
CROWDED_TICKS = 7


def _short_count(p: int | None) -> str:
    """A parameter count in at most four characters: ``53``, ``808``, ``2.9k``, ``75k``; ``?`` when unknown."""
    if p is None:
        return "?"
    if p < 1000:
        return str(p)
    return f"{p / 1000:.1f}k" if p < 10_000 else f"{p // 1000}k"


def _x_scale(ax, values: np.ndarray, axis: str, knob: str, counts: dict[int, int]) -> str:
    """Scale, ticks and label of the complexity figure's x axis; returns the x label.

    The knob: log2 axis, ticks labelled with the value and its parameter count. Another axis: a log axis
    when all values are positive and span more than a factor of 10, else linear; ticks at the values.
    """
    values = np.unique(values)
    if axis == knob and (values > 0).all():
        ax.set_xscale("log", base=2)
        ax.set_xticks(values)
        if axis == "C" and len(values) > CROWDED_TICKS:  # full labels would overlap: value over short count
            ax.set_xticklabels([f"{int(c)}\n{_short_count(counts.get(int(c)))}" for c in values], fontsize=7)
        elif axis == "C":
            ax.set_xticklabels([c_label(int(c), counts, sep="\n") for c in values], fontsize=8)
        else:
            ax.set_xticklabels([f"{axis}={int(v)}" for v in values], fontsize=8)
        ax.minorticks_off()
        if len(values) > 1:
            ax.set_xlim(values.min() / 1.4, values.max() * 1.4)
        if axis == "C":
            return "model width C (log2 scale) and trainable parameter count" + (
                " (k = thousands)" if len(values) > CROWDED_TICKS else "")
        return f"{AXIS_LABELS.get(axis, axis)} (log2 scale)"
    name = AXIS_LABELS.get(axis, axis)
    if (values > 0).all() and len(values) > 1 and values.max() / values.min() > 10:
        ax.set_xscale("log")
        ax.set_xticks(values)
        ax.set_xticklabels([f"{v:g}" for v in values], fontsize=8)
        ax.minorticks_off()
        ax.set_xlim(values.min() / 1.4, values.max() * 1.4)
        return f"{name} (log scale)"
    ax.set_xticks(values)
    ax.set_xticklabels([f"{v:g}" for v in values], fontsize=8)
    if len(values) > 1:
        pad = 0.06 * (values.max() - values.min())
        ax.set_xlim(values.min() - pad, values.max() + pad)
    return name


def plot_complexity(
    summary: pd.DataFrame,
    thresholds: dict[tuple, int | None] | int | None = None,
    *,
    axes: Sequence[str] = ("C",),
    knob: str = "C",
    x: str | None = None,
    title: str = "Final errors against model width",
    out_dir: Path | None = None,
) -> Figure:
    """Final train error, final test error and their gap against ``x`` (default: the knob, on a log2 axis),
    mean ± 95% CI error bars.

    summary: :func:`analysis.aggregate.summarize` (one row per grid point). thresholds:
    :func:`analysis.aggregate.thresholds` (or one width, or None, for a one-line sweep); drawn only when x is
    the knob, as a dotted vertical line per line (gid ``threshold``, the line's colour). The first other
    varying axis splits lines: one colour per value, the three series by marker and line style, each
    ErrorbarContainer labelled ``final train error, lr=0.05``; without it the three series are labelled as in
    :data:`COMPLEXITY_SERIES`. Every combination of further axes gets its own panel (subplot), titled with
    it. Saved as ``complexity.png``/``.pdf``.
    """
    x = x or knob
    if not isinstance(thresholds, dict):
        thresholds = {(): thresholds} if thresholds is not None else {}
    s = summary[summary["n_seeds"] > 0].sort_values([a for a in axes if a in summary.columns])
    line_axis, panel_axes = split_plan(s, axes, x)
    keys = panel_keys(s, panel_axes)
    lines = sorted(s[line_axis].unique()) if line_axis else [None]
    colours = line_colours(line_axis, lines, knob)
    ncols = min(len(keys), 3)
    fig = new_figure(9.5 if ncols == 1 else 4.8 * ncols + 2.4,
                     5.0 if len(keys) == 1 else 4.0 * math.ceil(len(keys) / ncols) + 0.9)
    panels = _grid(fig, len(keys))
    counts = {int(c): int(p) for c, p in zip(s[knob], s["param_count"], strict=True) if not pd.isna(p)}
    # Errors lie in [0, 1] and the gap in [-1, 1]; a t-interval from 2-3 seeds can reach past that, so the
    # axis stops a little beyond those limits (the exact intervals are in summary.csv).
    means = s[[f"{q}_mean" for q in COMPLEXITY_SERIES]].to_numpy(dtype=float)
    halves = np.nan_to_num(s[[f"{q}_ci95" for q in COMPLEXITY_SERIES]].to_numpy(dtype=float))
    low, high = float(np.nanmin(means - halves, initial=0.0)), float(np.nanmax(means + halves, initial=0.0))
    xlabel = ""
    knob_others = line_axes(axes, knob)
    for ax, key in zip(panels, keys, strict=True):
        panel = _select(s, panel_axes, key)
        ax.axhline(0.0, color="0.6", linewidth=0.8, label="_zero")
        for i, value in enumerate(lines):
            # Lines sit a few points apart sideways so that their error bars do not hide each other; the
            # offset is a display transform, so the artists keep the exact x values.
            shift = ScaledTranslation((i - (len(lines) - 1) / 2) * DODGE_PT / 72, 0, fig.dpi_scale_trans)
            d = panel if line_axis is None else panel[panel[line_axis] == value]
            d = d.sort_values(x)
            if d.empty:
                continue
            xs = d[x].to_numpy(dtype=float)
            for n, ((q, label), (marker, style)) in enumerate(zip(COMPLEXITY_SERIES.items(), SERIES_STYLES,
                                                                    strict=True)):
                colour = SINGLE_COLOURS[n] if line_axis is None else colours[value]
                name = label if line_axis is None else f"{label}, {value_text(line_axis, value)}"
                yerr = np.nan_to_num(d[f"{q}_ci95"].to_numpy(dtype=float), nan=0.0)
                ax.errorbar(xs, d[f"{q}_mean"].to_numpy(dtype=float), yerr=yerr, marker=marker, color=colour,
                            linestyle=style, capsize=4, linewidth=1.6, markersize=6, label=name,
                            transform=ax.transData + shift)
            if x == knob:
                line_key = tuple(d[a].iloc[0] for a in knob_others if a in d.columns)
                t = thresholds.get(line_key)
                if t is not None:
                    where = "" if line_axis is None else f", {value_text(line_axis, value)}"
                    ax.axvline(t, color="0.25" if line_axis is None else colours[value], linestyle=(0, (2, 2)),
                               linewidth=1.2, gid="threshold",
                               label=f"interpolation threshold{where}: {knob}={t}\n(train error < "
                                     f"{INTERPOLATION_TOL:.0%} from here on)")
        ax.set_ylim(max(-1.05, min(0.0, low) - 0.03), min(1.05, max(high, 0.05) + 0.03))
        xlabel = _x_scale(ax, s[x].to_numpy(dtype=float), x, knob, counts)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        if key:
            ax.set_title(combo_text(panel_axes, key), fontsize=10)
    for ax in panels[:: ncols]:
        ax.set_ylabel(ERROR_LABEL)
    n = s["n_seeds"]
    bars = "bars: 95% t-interval" + ("; none with 1 seed" if n.min() < 2 else "")
    fig.suptitle(f"{title}\n(mean over {seed_range_text(n.min(), n.max())}; {bars})")
    legend_ax = panels[ncols - 1]
    if line_axis is None:
        handles = [c for c in legend_ax.containers if isinstance(c, ErrorbarContainer)]
        for ax in panels:  # the threshold markers (one per panel at most)
            handles += [h for h in ax.get_lines() if h.get_gid() == "threshold"]
    else:
        def line_name(v: object) -> str:
            return c_label(int(v), counts) if line_axis == "C" == knob else value_text(line_axis, v)

        handles = [Line2D([], [], color=colours[v], linewidth=3, label=line_name(v)) for v in lines]
        handles += [Line2D([], [], color="0.3", marker=m, linestyle=st, label=lab)
                    for lab, (m, st) in zip(COMPLEXITY_SERIES.values(), SERIES_STYLES, strict=True)]
        if x == knob and any(t is not None for t in thresholds.values()):
            handles.append(Line2D([], [], color="0.3", linestyle=(0, (2, 2)),
                                  label=f"interpolation threshold\n(train error < {INTERPOLATION_TOL:.0%} "
                                        "from here on)"))
    legend_ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                     fontsize=9, title=line_axis, title_fontsize=9)
    if out_dir is not None:
        save_figure(fig, out_dir, "complexity")
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
) -> Figure:
    """Mean test error (over seeds) as colour, the knob (C) on the y axis (one row per width), step on the x
    axis; one panel per value combination of the other varying axes (stacked, one colour scale for all).

    curves: :func:`analysis.aggregate.curves`. Cells span half-way to the neighbouring steps. Saved as
    ``heatmap.png``/``.pdf``.
    """
    d = curves[curves["metric"] == "test_error"]
    panel_axes = varying(d, line_axes(axes, knob))
    keys = panel_keys(d, panel_axes)
    n_rows = d[knob].nunique()
    vmax = max(float(np.nanmax(d["mean"].to_numpy(dtype=float), initial=0.0)), 1e-9)
    fig = new_figure(9.0, 1.2 + (0.6 + 0.45 * n_rows) * len(keys))
    panels = list(fig.subplots(len(keys), 1, squeeze=False, sharex=len(keys) > 1).ravel())
    mesh = None
    for ax, key in zip(panels, keys, strict=True):
        grid = _select(d, panel_axes, key).pivot(index=knob, columns="step", values="mean").sort_index()
        steps = grid.columns.to_numpy(dtype=float)
        if len(steps) > 1:
            mid = (steps[1:] + steps[:-1]) / 2
            edges = np.concatenate([[steps[0] - (mid[0] - steps[0])], mid, [steps[-1] + (steps[-1] - mid[-1])]])
        else:
            edges = np.array([steps[0] - 0.5, steps[0] + 0.5])
        values = np.ma.masked_invalid(grid.to_numpy(dtype=float))
        mesh = ax.pcolormesh(edges, np.arange(len(grid) + 1), values, cmap="magma_r", vmin=0.0, vmax=vmax,
                             rasterized=True)
        ax.set_yticks(np.arange(len(grid)) + 0.5)
        labels = [c_label(int(c), param_counts) if knob == "C" else f"{knob}={c}" for c in grid.index]
        ax.set_yticklabels(labels, fontsize=9)
        ax.set_ylabel("model width")
        if key:
            ax.set_title(combo_text(panel_axes, key), fontsize=10)
    for ax, key in zip(panels, keys, strict=True):  # a protocol axis changes what a step is
        if "protocol" in panel_axes or ax is panels[-1]:
            ax.set_xlabel(step_label(_panel_protocol(panel_axes, key, protocol)))
    fig.suptitle(title)
    assert mesh is not None
    cbar = fig.colorbar(mesh, ax=panels)
    cbar.set_label("mean test error (rate, 0–1)")
    if out_dir is not None:
        save_figure(fig, out_dir, "heatmap")
    return fig
