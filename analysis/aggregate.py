"""Seed statistics per grid point: final and best-step errors, error curves, and the interpolation threshold.

A grid point is one value of every axis of the sweep (``C``, and ``lr``, ``label_noise``, ... where they
vary); statistics are taken over the seeds of one grid point and never pooled across an axis.

Intervals are two-sided Student t-intervals over seeds: ``mean ± t_{(1+conf)/2, n-1} * s / sqrt(n)`` with
``s`` the sample standard deviation (ddof=1). With fewer than two seeds the half-width is NaN (undefined).
All errors are misclassification rates in [0, 1]; the gap is test error minus train error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

CONFIDENCE = 0.95
#: Mean final train error below which a width counts as interpolating (fits the training half).
INTERPOLATION_TOL = 0.01
#: Per-trial quantities summarised per grid point: column name -> description.
QUANTITIES: dict[str, str] = {
    "final_train_error": "final train error",
    "final_test_error": "final test error",
    "final_gap": "final generalization gap (test - train error)",
    "best_test_error": "oracle best-step test error (step picked on the test set)",
}
#: Summarised too when the runs logged ``train_error_clean`` (train error against the true labels).
CLEAN_QUANTITY = ("final_train_error_clean", "final train error on the true labels")
CURVE_METRICS = ("train_error", "test_error")


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


def per_trial(metrics: pd.DataFrame, axes: Sequence[str] = ("C",)) -> pd.DataFrame:
    """One row per run from the tidy metric frame (see :class:`analysis.load.SweepData`).

    Columns: run_id, the ``axes``, seed, final_step (last logged step of test_error), final_train_error,
    final_test_error, final_gap (the logged ``generalization_gap`` at the final step, else test - train),
    best_test_error (min of test_error over steps: an oracle, the step is picked on the test set),
    best_step (first step reaching it), and final_train_error_clean when ``train_error_clean`` was logged.
    Sorted by the axes, then seed.
    """
    keys = ["run_id", *axes, "seed"]
    wide = metrics.pivot_table(index=[*keys, "step"], columns="metric", values="value", aggfunc="last")
    clean = "train_error_clean" in wide.columns
    rows = []
    for key, g in wide.groupby(level=keys, sort=False):
        g = g.droplevel(keys).sort_index()

        def series(name: str, g: pd.DataFrame = g) -> pd.Series:
            return g[name].dropna() if name in g else pd.Series(dtype=float)

        test, train, gap = series("test_error"), series("train_error"), series("generalization_gap")
        final_step = int(test.index[-1]) if len(test) else (int(g.index[-1]) if len(g) else -1)
        final_train = float(train.iloc[-1]) if len(train) else math.nan
        final_test = float(test.iloc[-1]) if len(test) else math.nan
        row = dict(zip(keys, key, strict=True))
        row.update({
            "final_step": final_step,
            "final_train_error": final_train,
            "final_test_error": final_test,
            "final_gap": float(gap.iloc[-1]) if len(gap) else final_test - final_train,
            "best_test_error": float(test.min()) if len(test) else math.nan,
            "best_step": int(test.idxmin()) if len(test) else -1,
        })
        if clean:
            train_clean = series("train_error_clean")
            row[CLEAN_QUANTITY[0]] = float(train_clean.iloc[-1]) if len(train_clean) else math.nan
        rows.append(row)
    return pd.DataFrame(rows).sort_values([*axes, "seed"], kind="stable").reset_index(drop=True)


def quantities(frame: pd.DataFrame) -> dict[str, str]:
    """:data:`QUANTITIES`, plus the clean train error when ``frame`` (per-trial or summary) has it."""
    q = dict(QUANTITIES)
    name, text = CLEAN_QUANTITY
    if name in frame.columns or f"{name}_mean" in frame.columns:
        q[name] = text
    return q


def summarize(
    trials: pd.DataFrame,
    failed: dict[tuple, int] | dict[int, int] | None = None,
    param_counts: dict[int, int] | None = None,
    axes: Sequence[str] = ("C",),
    knob: str = "C",
) -> pd.DataFrame:
    """Per-grid-point table from :func:`per_trial`: the ``axes``, param_count (from the ``knob`` value),
    n_seeds, n_failed, then ``<q>_mean`` and ``<q>_ci95`` (95% t half-width, NaN for one seed) for every
    ``q`` in :func:`quantities`; one row per grid point, sorted by the axes.

    failed: grid point (tuple of axis values in ``axes`` order; a bare value for a one-axis sweep) -> number
    of failed seeds. A grid point that appears only there gets a row with n_seeds = 0 and NaN statistics.
    """
    axes = list(axes)
    param_counts = param_counts or {}
    failed_points = {(k if isinstance(k, tuple) else (k,)): int(n) for k, n in (failed or {}).items()}
    qs = quantities(trials)
    groups = {k if isinstance(k, tuple) else (k,): g for k, g in trials.groupby(axes, sort=False)}
    points = set(groups) | set(failed_points)
    rows = []
    for point in points:
        sub = groups.get(point, trials.iloc[0:0])
        row: dict[str, object] = dict(zip(axes, point, strict=True))
        knob_value = row.get(knob)
        row.update({
            "param_count": param_counts.get(int(knob_value)) if isinstance(knob_value, int | np.integer) else None,
            "n_seeds": int(len(sub)), "n_failed": failed_points.get(point, 0),
        })
        for q in qs:
            iv = mean_ci(sub[q]) if len(sub) else Interval(math.nan, math.nan, 0)
            row[f"{q}_mean"] = iv.mean
            row[f"{q}_ci95"] = iv.half_width
        rows.append(row)
    out = pd.DataFrame(rows).sort_values(axes, kind="stable").reset_index(drop=True)
    out["param_count"] = out["param_count"].astype("Int64")
    return out


def curves(
    metrics: pd.DataFrame,
    metric_names: Sequence[str] = CURVE_METRICS,
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


def interpolation_threshold(summary: pd.DataFrame, tol: float = INTERPOLATION_TOL, knob: str = "C") -> int | None:
    """The interpolation threshold of ONE line (rows that differ only in ``knob``): the smallest width from
    which every width at least as wide has a mean final train error below ``tol`` (default 1%); None when
    the widest width does not. Widths without a finished seed (NaN mean) are ignored.

    A width below ``tol`` followed by a wider one at or above it is not a threshold: the net does not yet
    interpolate reliably there. The train error is the one against the labels trained on (with label noise,
    the noisy ones: interpolating means fitting them, as in Nakkiran et al. 2019).
    """
    s = summary[[knob, "final_train_error_mean"]].dropna().sort_values(knob)
    threshold = None
    for width, err in zip(reversed(s[knob].tolist()), reversed(s["final_train_error_mean"].tolist()), strict=True):
        if not err < tol:
            break
        threshold = int(width)
    return threshold


def line_axes(axes: Sequence[str], x: str) -> list[str]:
    """The axes other than ``x``, in axis order: the first splits lines, the rest split panels."""
    return [a for a in axes if a != x]


def value_text(axis: str, value: object) -> str:
    """``lr=0.05``: an axis value as the run names print it (``str()``, numpy scalars as Python ones)."""
    if isinstance(value, np.generic):
        value = value.item()
    return f"{axis}={value}"


def combo_text(axes: Sequence[str], values: Sequence[object]) -> str:
    """``lr=0.05, label_noise=0.2`` (empty for no axes)."""
    return ", ".join(value_text(a, v) for a, v in zip(axes, values, strict=True))


def varying(frame: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """The ``axes`` that take more than one value in ``frame``, in axis order."""
    return [a for a in axes if a in frame.columns and frame[a].nunique(dropna=False) > 1]



def thresholds(
    summary: pd.DataFrame, axes: Sequence[str] = ("C",), knob: str = "C", tol: float = INTERPOLATION_TOL
) -> dict[tuple, int | None]:
    """:func:`interpolation_threshold` per line: key = values of the non-knob axes (in axis order; ``()``
    for a sweep over the knob alone), value = the threshold width or None."""
    others = line_axes(axes, knob)
    if not others:
        return {(): interpolation_threshold(summary, tol, knob)}
    out: dict[tuple, int | None] = {}
    for key, g in summary.groupby(others, sort=True):
        out[key if isinstance(key, tuple) else (key,)] = interpolation_threshold(g, tol, knob)
    return out


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
) -> Aggregates:
    """Per-trial finals, per-grid-point summary, mean/CI curves and per-line interpolation thresholds of a
    tidy metric frame with one column per axis in ``axes``."""
    axes = list(axes)
    trials = per_trial(metrics, axes)
    summary = summarize(trials, failed, param_counts, axes, knob)
    return Aggregates(trials, summary, curves(metrics, axes=axes), thresholds(summary, axes, knob), axes, knob)
