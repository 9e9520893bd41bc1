"""Seed statistics per grid point: the family's quantities (final and best-step values), curves over steps,
and the threshold the family declares (the ResNet's interpolation threshold).

A grid point is one value of every axis of the sweep (``C``, and ``lr``, ``label_noise``, ... where they
vary); statistics are taken over the seeds of one grid point and never pooled across an axis. Which numbers
are summarised is the family's declaration (:attr:`models.family.Family.quantities`): nothing here names a
metric.

Intervals are two-sided Student t-intervals over seeds: ``mean ± t_{(1+conf)/2, n-1} * s / sqrt(n)`` with
``s`` the sample standard deviation (ddof=1). With fewer than two seeds the half-width is NaN (undefined).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

from models.family import Family, Quantity, ThresholdRule, get_family
from record import short_value

CONFIDENCE = 0.95


def default_family(family: Family | None) -> Family:
    """``family``, or the ResNet when a caller (a notebook, a test) analyses a frame without naming one."""
    return family or get_family("resnet")


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with the half-width of its t confidence interval (NaN when n < 2)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def t_half_width(std: ArrayLike, n: ArrayLike, confidence: float = CONFIDENCE) -> np.ndarray:
    """Half-width ``t_{(1+confidence)/2, n-1} * std / sqrt(n)``; NaN where n < 2. Shapes broadcast."""
    std_a = np.asarray(std, dtype=float)
    n_a = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        dof = np.where(n_a >= 2, n_a - 1, np.nan)
        return stats.t.ppf(0.5 + confidence / 2, dof) * std_a / np.sqrt(n_a)


def mean_ci(values: ArrayLike, confidence: float = CONFIDENCE) -> Interval:
    """Mean and t-interval half-width of the finite entries of ``values`` (shape (n,))."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Interval(math.nan, math.nan, 0)
    std = float(np.std(v, ddof=1)) if v.size > 1 else math.nan
    return Interval(float(v.mean()), float(t_half_width(std, v.size, confidence)), int(v.size))


def per_trial(metrics: pd.DataFrame, axes: Sequence[str] = ("C",), family: Family | None = None) -> pd.DataFrame:
    """One row per run from the tidy metric frame (see :class:`analysis.load.SweepData`).

    Columns: run_id, the ``axes``, seed, final_step (the run's last logged step), then every quantity of the
    family whose metric the run logged: ``final`` ones the value at the metric's last logged step, ``best`` ones
    its best value over steps in the metric's direction (an oracle: the step is picked on the metric itself),
    with ``<column>_step`` the first step reaching it. Sorted by the axes, then seed.
    """
    family = default_family(family)
    keys = ["run_id", *axes, "seed"]
    wide = metrics.pivot_table(index=[*keys, "step"], columns="metric", values="value", aggfunc="last")
    present = [q for q in family.quantities if q.metric in wide.columns]
    rows = []
    for key, g in wide.groupby(level=keys, sort=False):
        g = g.droplevel(keys).sort_index()
        row = dict(zip(keys, key, strict=True))
        row["final_step"] = int(g.index[-1]) if len(g) else -1
        for q in present:
            row.update(_quantity(g[q.metric].dropna(), q, family))
        rows.append(row)
    return pd.DataFrame(rows).sort_values([*axes, "seed"], kind="stable").reset_index(drop=True)


def _quantity(series: pd.Series, q: Quantity, family: Family) -> dict[str, float]:
    """One run's value of quantity ``q`` from the metric's history ``series`` (indexed by step)."""
    if not len(series):
        return {q.column: math.nan, **({f"{q.column}_step": -1} if q.kind == "best" else {})}
    if q.kind == "final":
        return {q.column: float(series.iloc[-1])}
    step = series.idxmax() if family.metric(q.metric).higher_is_better else series.idxmin()
    return {q.column: float(series[step]), f"{q.column}_step": int(step)}


def quantities(frame: pd.DataFrame, family: Family | None = None) -> dict[str, str]:
    """The family's quantities ``frame`` (per-trial or summary) holds: column -> description."""
    cols = set(frame.columns)
    return {q.column: q.description for q in default_family(family).quantities
            if q.column in cols or f"{q.column}_mean" in cols}


def table_quantities(summary: pd.DataFrame, family: Family | None = None) -> dict[str, str]:
    """:func:`quantities` of a summary less any whose means equal an earlier one's in every row: a table
    column that only repeats another (the train error on the true labels, without label noise) is left out."""
    shown: dict[str, str] = {}
    for q, description in quantities(summary, family).items():
        if not any(summary[f"{q}_mean"].equals(summary[f"{o}_mean"]) for o in shown):
            shown[q] = description
    return shown


def summarize(
    trials: pd.DataFrame,
    failed: dict[tuple, int] | dict[int, int] | None = None,
    param_counts: dict[int, int] | None = None,
    axes: Sequence[str] = ("C",),
    knob: str = "C",
    family: Family | None = None,
) -> pd.DataFrame:
    """Per-grid-point table from :func:`per_trial`: the ``axes``, param_count (from the ``knob`` value),
    n_seeds, n_failed, then ``<q>_mean`` and ``<q>_ci95`` (95% t half-width, NaN for one seed) for every
    quantity of the family in ``trials``; one row per grid point, sorted by the axes.

    failed: grid point (tuple of axis values in ``axes`` order; a bare value for a one-axis sweep) -> number
    of failed seeds. A grid point that appears only there gets a row with n_seeds = 0 and NaN statistics.
    """
    axes = list(axes)
    param_counts = param_counts or {}
    failed_points = {(k if isinstance(k, tuple) else (k,)): int(n) for k, n in (failed or {}).items()}
    qs = quantities(trials, family)
    groups = {k if isinstance(k, tuple) else (k,): g for k, g in trials.groupby(axes, sort=False)}
    rows = []
    for point in set(groups) | set(failed_points):
        sub = groups.get(point, trials.iloc[0:0])
        row: dict[str, object] = dict(zip(axes, point, strict=True))
        knob_value = row.get(knob)
        row.update({
            "param_count": param_counts.get(int(knob_value)) if isinstance(knob_value, int | np.integer) else None,
            "n_seeds": int(len(sub)), "n_failed": failed_points.get(point, 0),
        })
        for q in qs:
            iv = mean_ci(sub[q]) if len(sub) else Interval(math.nan, math.nan, 0)
            row[f"{q}_mean"], row[f"{q}_ci95"] = iv.mean, iv.half_width
        rows.append(row)
    out = pd.DataFrame(rows).sort_values(axes, kind="stable").reset_index(drop=True)
    out["param_count"] = out["param_count"].astype("Int64")
    return out


def curves(
    metrics: pd.DataFrame,
    metric_names: Sequence[str] = ("train_error", "test_error"),
    confidence: float = CONFIDENCE,
    axes: Sequence[str] = ("C",),
) -> pd.DataFrame:
    """Mean over seeds per (grid point, metric, step): columns the ``axes``, metric, step, n, mean, ci95
    (half-width, NaN for one seed), low, high; sorted by the axes, metric, step. Steps where only some seeds
    logged use those seeds."""
    sub = metrics[metrics["metric"].isin(metric_names)]
    g = sub.groupby([*axes, "metric", "step"], sort=True)["value"]
    out = g.agg(n="count", mean="mean", std="std").reset_index()
    out["ci95"] = t_half_width(out["std"].to_numpy(), out["n"].to_numpy(), confidence)
    out["low"] = out["mean"] - out["ci95"]
    out["high"] = out["mean"] + out["ci95"]
    return out.drop(columns="std")


def seed_range_text(low: int, high: int) -> str:
    """``1 seed``, ``5 seeds`` or ``4–5 seeds`` (for titles and sentences)."""
    if low == high:
        return f"{low} seed" if low == 1 else f"{low} seeds"
    return f"{low}–{high} seeds"


def interpolation_threshold(summary: pd.DataFrame, tol: float = 0.01, knob: str = "C",
                            column: str = "final_train_error_mean") -> int | None:
    """The threshold of ONE line (rows that differ only in ``knob``): the smallest knob value from which every
    larger one has a mean ``column`` below ``tol`` (the ResNet's rule: final train error below 1%); None when
    the largest does not. Values without a finished seed (NaN mean) are ignored.

    A value below ``tol`` followed by a larger one at or above it is not a threshold: the model does not yet
    interpolate reliably there. The ResNet's train error is against the labels trained on (with label noise,
    the noisy ones: interpolating means fitting them, as in Nakkiran et al. 2019).
    """
    s = summary[[knob, column]].dropna().sort_values(knob)
    threshold = None
    for width, value in zip(reversed(s[knob].tolist()), reversed(s[column].tolist()), strict=True):
        if not value < tol:
            break
        threshold = int(width)
    return threshold


def line_axes(axes: Sequence[str], x: str) -> list[str]:
    """The axes other than ``x``, in axis order: the first splits lines, the rest split panels."""
    return [a for a in axes if a != x]


def value_text(axis: str, value: object) -> str:
    """``lr=0.05``: an axis value as the run names print it (:func:`record.short_value`: floats to 3 significant
    digits; summary.csv keeps the exact values)."""
    return f"{axis}={short_value(value)}"


def combo_text(axes: Sequence[str], values: Sequence[object]) -> str:
    """``lr=0.05, label_noise=0.2`` (empty for no axes)."""
    return ", ".join(value_text(a, v) for a, v in zip(axes, values, strict=True))


def varying(frame: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """The ``axes`` that take more than one value in ``frame``, in axis order."""
    return [a for a in axes if a in frame.columns and frame[a].nunique(dropna=False) > 1]



def thresholds(
    summary: pd.DataFrame, axes: Sequence[str] = ("C",), knob: str = "C", rule: ThresholdRule | None = None,
    family: Family | None = None,
) -> dict[tuple, int | None]:
    """:func:`interpolation_threshold` per line under the family's rule (the ResNet's by default): key = values
    of the non-knob axes (in axis order; ``()`` for a sweep over the knob alone), value = the threshold or None.
    Empty for a family without a threshold rule."""
    family = default_family(family)
    rule = rule or family.threshold
    if rule is None:
        return {}
    column = f"{family.final_column(rule.metric)}_mean"
    others = line_axes(axes, knob)
    if not others:
        return {(): interpolation_threshold(summary, rule.below, knob, column)}
    return {(key if isinstance(key, tuple) else (key,)): interpolation_threshold(g, rule.below, knob, column)
            for key, g in summary.groupby(others, sort=True)}


@dataclass
class Aggregates:
    """Everything computed from one sweep's tidy metrics.

    trials: :func:`per_trial`; summary: :func:`summarize` (one row per grid point); curves: :func:`curves`
    (train and test error, per grid point); thresholds: :func:`thresholds` (per combination of the non-knob
    axes); axes, knob: as in :class:`analysis.load.SweepData`.
    """

    trials: pd.DataFrame
    summary: pd.DataFrame
    curves: pd.DataFrame
    thresholds: dict[tuple, int | None]
    axes: list[str] = field(default_factory=lambda: ["C"])
    knob: str = "C"

    @property
    def threshold(self) -> int | None:
        """The threshold of a sweep with a single line (no other varying axis). Raises ValueError when there
        are several lines: use :attr:`thresholds`."""
        if len(self.thresholds) != 1:
            raise ValueError(f"{len(self.thresholds)} lines, one threshold each: use .thresholds")
        return next(iter(self.thresholds.values()))


def aggregate(
    metrics: pd.DataFrame,
    failed: dict[tuple, int] | dict[int, int] | None = None,
    param_counts: dict[int, int] | None = None,
    axes: Sequence[str] = ("C",),
    knob: str = "C",
    family: Family | None = None,
) -> Aggregates:
    """Per-trial quantities, per-grid-point summary, mean/CI curves of the family's curve metrics and per-line
    thresholds of a tidy metric frame with one column per axis in ``axes``."""
    family = default_family(family)
    axes = list(axes)
    trials = per_trial(metrics, axes, family)
    summary = summarize(trials, failed, param_counts, axes, knob, family)
    return Aggregates(trials, summary, curves(metrics, family.curve_metrics, axes=axes),
                      thresholds(summary, axes, knob, family=family), axes, knob)
