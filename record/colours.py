"""Run colours, one definition for the figures and for the runs in MLflow's UI (the run tag ``mlflow.runColor``):
a knob value's from viridis, dark to light as the knob grows (the pale yellow end left out); a sampled search's
configurations, whose knob is usually one value, one categorical colour each."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_hex


def knob_colours(values: Sequence[int]) -> dict[int, tuple[float, float, float, float]]:
    """One colour per knob value from viridis (dark to light as it grows; the pale yellow end is left out): the
    figures' colours, and the runs' colours in MLflow's UI."""
    cmap = colormaps["viridis"]
    ws = sorted(set(int(c) for c in values))
    pos = np.linspace(0.0, 0.85, len(ws)) if len(ws) > 1 else [0.35]
    return {c: cmap(float(p)) for c, p in zip(ws, pos, strict=True)}


def knob_hex_colours(values: Sequence[int]) -> dict[int, str]:
    """:func:`knob_colours` as ``#rrggbb`` (MLflow's ``mlflow.runColor`` tag)."""
    return {c: to_hex(rgba) for c, rgba in knob_colours(values).items()}


def configuration_hex_colour(index: int) -> str:
    """The colour of a search's ``index``-th configuration (0, 1, ...): tab10's ten, then tab20's lighter ten,
    then round again. Neighbouring configurations, the ones a reader compares first, differ most."""
    palette = [*colormaps["tab10"].colors, *colormaps["tab20"].colors[1::2]]
    return to_hex(palette[index % len(palette)])
