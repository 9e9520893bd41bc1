"""Figures of one sweep, drawn on matplotlib's Agg canvas (no pyplot, no GUI, no global figure state).

Every function returns the :class:`~matplotlib.figure.Figure` (so its artists can be inspected) and, given
``out_dir``, saves it there as ``<name>.png`` (at :data:`DPI`) and ``<name>.pdf``. Colours encode C in
order (small C dark, large C light) and are the same in every figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.aggregate import seed_range_text

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
    out_dir: Path | None = None,
) -> Figure:
    """Train (solid) and test (dashed) error against step, one colour per C: mean over seeds, shaded 95% CI.

    curves: :func:`analysis.aggregate.curves` (columns C, metric, step, n, mean, low, high). The data lines
    are labelled ``C=<C> train`` / ``C=<C> test``; the legend uses proxies (one entry per C, the two styles,
    the band).
    Saved as ``curves.png``/``.pdf``.
    """
    fig = new_figure(9.0, 5.2)
    ax = fig.add_subplot()
    widths = sorted(curves["C"].unique())
    colours = c_colours(widths)
    for c in widths:
        for metric, style, name in SERIES:
            d = curves[(curves["C"] == c) & (curves["metric"] == metric)].sort_values("step")
            if d.empty:
                continue
            ax.plot(d["step"], d["mean"], linestyle=style, color=colours[c], linewidth=1.6,
                    label=f"C={c} {name}")
            ax.fill_between(d["step"], d["low"], d["high"], color=colours[c], alpha=0.18, linewidth=0)
    ax.set_xlabel(step_label(protocol))
    ax.set_ylabel(ERROR_LABEL)
    top = float(np.nanmax(curves["high"].to_numpy(dtype=float), initial=0.0))
    top = max(top, float(np.nanmax(curves["mean"].to_numpy(dtype=float), initial=0.0)))
    ax.set_ylim(0.0, min(1.0, top * 1.05) if top > 0 else 1.0)
    ax.set_xlim(float(curves["step"].min()), float(curves["step"].max()))
    ax.grid(True, alpha=0.3)
    fig.suptitle(title)  # the figure's title, so a long one never runs into the legend
    handles = [Line2D([], [], color=colours[c], linewidth=3, label=c_label(c, param_counts)) for c in widths]
    handles += [
        Line2D([], [], color="0.3", linestyle=TRAIN_STYLE, label="train error"),
        Line2D([], [], color="0.3", linestyle=TEST_STYLE, label="test error"),
        Line2D([], [], color="0.3", alpha=0.25, linewidth=6, label="95% CI over seeds"),
    ]
    # An axes legend outside the axes: constrained layout keeps it clear of the data and of the title.
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=9,
              title="width C", title_fontsize=9)
    if out_dir is not None:
        save_figure(fig, out_dir, "curves")
    return fig


def plot_complexity(
    summary: pd.DataFrame,
    threshold: int | None = None,
    *,
    title: str = "Final errors against model width",
    out_dir: Path | None = None,
) -> Figure:
    """Final train error, final test error and their gap against C (log2 axis), mean ± 95% CI error bars.

    summary: :func:`analysis.aggregate.summarize`. Tick labels give C and its parameter count. A dotted
    vertical line (gid ``threshold``) marks the interpolation threshold when there is one. The three series
    are the axes' ErrorbarContainers, labelled as in :data:`COMPLEXITY_SERIES`. Saved as ``complexity.png``.
    """
    fig = new_figure(8.0, 5.0)
    ax = fig.add_subplot()
    s = summary[summary["n_seeds"] > 0].sort_values("C")
    x = s["C"].to_numpy(dtype=float)
    ax.axhline(0.0, color="0.6", linewidth=0.8, label="_zero")
    for (q, label), (marker, colour, style) in zip(
        COMPLEXITY_SERIES.items(),
        (("o", "tab:blue", "-"), ("s", "tab:orange", "--"), ("^", "tab:green", ":")),
        strict=True,
    ):
        yerr = np.nan_to_num(s[f"{q}_ci95"].to_numpy(dtype=float), nan=0.0)
        ax.errorbar(x, s[f"{q}_mean"].to_numpy(dtype=float), yerr=yerr, marker=marker, color=colour,
                    linestyle=style, capsize=4, linewidth=1.6, markersize=6, label=label)
    if threshold is not None:
        ax.axvline(threshold, color="0.25", linestyle=(0, (2, 2)), linewidth=1.2, gid="threshold",
                   label=f"interpolation threshold (C={threshold}: train error < 1%)")
    # Errors lie in [0, 1] and the gap in [-1, 1]; a t-interval from 2-3 seeds can reach past that, so the
    # axis stops a little beyond those limits (the exact intervals are in summary.csv).
    means = s[[f"{q}_mean" for q in COMPLEXITY_SERIES]].to_numpy(dtype=float)
    halves = np.nan_to_num(s[[f"{q}_ci95" for q in COMPLEXITY_SERIES]].to_numpy(dtype=float))
    low, high = float(np.nanmin(means - halves, initial=0.0)), float(np.nanmax(means + halves, initial=0.0))
    ax.set_ylim(max(-1.05, min(0.0, low) - 0.03), min(1.05, max(high, 0.05) + 0.03))
    ax.set_xscale("log", base=2)
    ax.set_xticks(x)
    counts = {int(c): int(p) for c, p in zip(s["C"], s["param_count"], strict=True) if not pd.isna(p)}
    ax.set_xticklabels([c_label(int(c), counts, sep="\n") for c in s["C"]], fontsize=8)
    ax.minorticks_off()
    if len(x) > 1:
        ax.set_xlim(x.min() / 1.4, x.max() * 1.4)
    ax.set_xlabel("model width C (log2 scale) and trainable parameter count")
    ax.set_ylabel(ERROR_LABEL)
    ax.grid(True, alpha=0.3)
    n = s["n_seeds"]
    bars = "bars: 95% t-interval" + ("; none with 1 seed" if n.min() < 2 else "")
    ax.set_title(f"{title}\n(mean over {seed_range_text(n.min(), n.max())}; {bars})")
    ax.legend(loc="best", fontsize=9)
    if out_dir is not None:
        save_figure(fig, out_dir, "complexity")
    return fig


def plot_heatmap(
    curves: pd.DataFrame,
    *,
    protocol: str | None = None,
    param_counts: dict[int, int] | None = None,
    title: str = "Mean test error over width and training time",
    out_dir: Path | None = None,
) -> Figure:
    """Mean test error (over seeds) as colour, C on the y axis (one row per C), step on the x axis.

    curves: :func:`analysis.aggregate.curves`. Cells span half-way to the neighbouring steps. Saved as
    ``heatmap.png``/``.pdf``.
    """
    d = curves[curves["metric"] == "test_error"]
    grid = d.pivot(index="C", columns="step", values="mean").sort_index()
    steps = grid.columns.to_numpy(dtype=float)
    if len(steps) > 1:
        mid = (steps[1:] + steps[:-1]) / 2
        edges = np.concatenate([[steps[0] - (mid[0] - steps[0])], mid, [steps[-1] + (steps[-1] - mid[-1])]])
    else:
        edges = np.array([steps[0] - 0.5, steps[0] + 0.5])
    fig = new_figure(9.0, 1.8 + 0.45 * len(grid))
    ax = fig.add_subplot()
    values = np.ma.masked_invalid(grid.to_numpy(dtype=float))
    mesh = ax.pcolormesh(edges, np.arange(len(grid) + 1), values, cmap="magma_r", vmin=0.0, rasterized=True,
                         vmax=max(float(values.max()) if values.count() else 1.0, 1e-9))
    ax.set_yticks(np.arange(len(grid)) + 0.5)
    ax.set_yticklabels([c_label(int(c), param_counts) for c in grid.index], fontsize=9)
    ax.set_xlabel(step_label(protocol))
    ax.set_ylabel("model width")
    ax.set_title(title)
    cbar = fig.colorbar(mesh, ax=ax)
    cbar.set_label("mean test error (rate, 0–1)")
    if out_dir is not None:
        save_figure(fig, out_dir, "heatmap")
    return fig
