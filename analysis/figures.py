"""Figures of one sweep, drawn on matplotlib's Agg canvas (no pyplot, no GUI, no global figure state): what they
share, and the registry :func:`analysis.run.analyze` draws from.

A figure is one function and one registration: ``@figure("name")`` on a function of a :class:`Context` that
returns a :class:`~matplotlib.figure.Figure` (or None when the sweep has nothing to show in it); ``analyze``
saves it as ``name.png`` (at :data:`DPI`) and ``name.pdf`` and lists it in summary.md. Colours encode the knob in
order (small dark, large light) wherever the knob is the colour.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.aggregate import Aggregates, line_axes, varying
from analysis.load import SweepData
from models.family import Family
from record.colours import knob_colours

DPI = 150
#: The widest figure in pixels: MLflow's artifact viewer shows about this much without shrinking the labels.
MAX_WIDTH_PX = 1400
STEP_LABELS = {"handout": "SGD update", "epochs": "epoch"}
#: How an axis is named on a figure's x axis (the knob's label is built with its parameter counts).
AXIS_LABELS = {
    "lr": "SGD step size lr",
    "budget": "training budget (updates or epochs)",
    "batch_size": "minibatch size",
    "eval_every": "evaluation interval (steps)",
    "label_noise": "label noise (fraction of training labels replaced)",
    "K": "mixture components K",
    "binarize_threshold": "binarization threshold (pixel value)",
}


@dataclass
class Context:
    """What a figure function may draw from: the sweep as read, its aggregates, the complexity figure's x axis,
    and (a search or scheduled grid) the table of configurations (:func:`analysis.search.configurations`)."""

    data: SweepData
    agg: Aggregates
    x: str
    configurations: pd.DataFrame | None = None
    search_settings: dict[str, Any] | None = None
    #: a sampled search (random, optuna) at one knob value: a search, whose figure is search.png, not a width study
    sampled_search: bool = False

    def along_x(self) -> bool:
        """Whether the complexity figure's x axis takes two values or more (else there is no curve to draw)."""
        summary = self.agg.summary
        return not self.sampled_search and summary[summary["n_seeds"] > 0][self.x].nunique() > 1

    @property
    def family(self) -> Family:
        return self.data.family

    @property
    def title(self) -> str:
        return f"Sweep {self.data.sweep_id}"


FigureFunction = Callable[[Context], Figure | None]
#: name -> figure function, in the order they are drawn and listed.
FIGURES: dict[str, FigureFunction] = {}


def figure(name: str) -> Callable[[FigureFunction], FigureFunction]:
    """Register a figure function under ``name`` (its files are ``name.png`` and ``name.pdf``)."""
    def register(fn: FigureFunction) -> FigureFunction:
        FIGURES[name] = fn
        return fn
    return register


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
        return knob_colours([int(v) for v in values])  # type: ignore[return-value]
    cmap = colormaps["tab10"]
    return {v: cmap(i % 10) for i, v in enumerate(values)}


def _panel_protocol(panel_axes: Sequence[str], key: Sequence[object], protocol: str | None) -> str | None:
    """The protocol of one panel when ``protocol`` is a panel axis, else the sweep's ``protocol``."""
    return str(dict(zip(panel_axes, key, strict=True))["protocol"]) if "protocol" in panel_axes else protocol


def step_label(protocol: str | None, family: Family | None = None) -> str:
    """x label for ``step``: ``SGD update`` (handout protocol), ``epoch`` (epochs protocol), else the family's
    budget unit (``EM iteration``), or ``step``."""
    if protocol in STEP_LABELS:
        return STEP_LABELS[protocol]
    if protocol:
        return "step (updates or epochs: protocols differ)"
    return family.budget_unit if family is not None else "step"


def c_label(c: int, param_counts: dict[int, int] | None = None, sep: str = " ", knob: str = "C") -> str:
    """``C=4 (398 params)`` (or ``C=4`` without a count); ``sep="\\n"`` gives the two-line tick form."""
    p = (param_counts or {}).get(int(c))
    if p is None:
        return f"{knob}={c}"
    return f"{knob}={c}\n{p:,} params" if sep == "\n" else f"{knob}={c} ({p:,} params)"


def new_figure(width: float, height: float) -> Figure:
    """A figure on an Agg canvas with constrained layout (nothing overlaps), at most :data:`MAX_WIDTH_PX` wide
    when saved (a wider request is drawn at that width)."""
    width = min(width, MAX_WIDTH_PX / DPI)
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


def rate_axis(metrics: Sequence[str], family: Family) -> bool:
    """Whether every metric is a rate in [0, 1] (unit "": errors), so an axis may stop at 0 and 1."""
    return all(family.metric(m).unit == "" for m in metrics)
