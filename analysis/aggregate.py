"""Seed statistics per width C: final and best-step errors, error curves, and the interpolation threshold.

Intervals are two-sided Student t-intervals over seeds: ``mean ± t_{(1+conf)/2, n-1} * s / sqrt(n)`` with
``s`` the sample standard deviation (ddof=1). With fewer than two seeds the half-width is NaN (undefined).
All errors are misclassification rates in [0, 1]; the gap is test error minus train error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

CONFIDENCE = 0.95
#: Mean final train error below which a width counts as interpolating (fits the training half).
INTERPOLATION_TOL = 0.01
#: Per-trial quantities summarised per C: column name -> description.
QUANTITIES: dict[str, str] = {
    "final_train_error": "final train error",
    "final_test_error": "final test error",
    "final_gap": "final generalization gap (test - train error)",
    "best_test_error": "best-step test error (min over steps)",
}
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


def per_trial(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per run from the tidy metric frame (see :class:`analysis.load.SweepData`).

    Columns: run_id, C, seed, final_step (last logged step of test_error), final_train_error,
    final_test_error, final_gap (the logged ``generalization_gap`` at the final step, else test - train),
    best_test_error (min of test_error over steps), best_step (first step reaching it). Sorted by C, seed.
    """
    wide = metrics.pivot_table(index=["run_id", "C", "seed", "step"], columns="metric", values="value",
                               aggfunc="last")
    rows = []
    for (run_id, c, seed), g in wide.groupby(level=["run_id", "C", "seed"], sort=False):
        g = g.droplevel(["run_id", "C", "seed"]).sort_index()
        test = g["test_error"].dropna() if "test_error" in g else pd.Series(dtype=float)
        train = g["train_error"].dropna() if "train_error" in g else pd.Series(dtype=float)
        final_step = int(test.index[-1]) if len(test) else (int(g.index[-1]) if len(g) else -1)
        gap = g["generalization_gap"].dropna() if "generalization_gap" in g else pd.Series(dtype=float)
        final_train = float(train.iloc[-1]) if len(train) else math.nan
        final_test = float(test.iloc[-1]) if len(test) else math.nan
        rows.append({
            "run_id": run_id, "C": int(c), "seed": int(seed), "final_step": final_step,
            "final_train_error": final_train,
            "final_test_error": final_test,
            "final_gap": float(gap.iloc[-1]) if len(gap) else final_test - final_train,
            "best_test_error": float(test.min()) if len(test) else math.nan,
            "best_step": int(test.idxmin()) if len(test) else -1,
        })
    return pd.DataFrame(rows).sort_values(["C", "seed"], kind="stable").reset_index(drop=True)


def summarize(
    trials: pd.DataFrame,
    failed_per_C: dict[int, int] | None = None,
    param_counts: dict[int, int] | None = None,
) -> pd.DataFrame:
    """Per-C table from :func:`per_trial`: C, param_count, n_seeds, n_failed, then ``<q>_mean`` and
    ``<q>_ci95`` (95% t half-width, NaN for one seed) for every ``q`` in :data:`QUANTITIES`, one row per C
    (ascending).

    A C that appears only in ``failed_per_C`` gets a row with n_seeds = 0 and NaN statistics.
    """
    failed_per_C = failed_per_C or {}
    param_counts = param_counts or {}
    widths = sorted(set(trials["C"].astype(int)) | set(failed_per_C))
    rows = []
    for c in widths:
        sub = trials[trials["C"] == c]
        row: dict[str, float | int | None] = {
            "C": c, "param_count": param_counts.get(c), "n_seeds": int(len(sub)),
            "n_failed": int(failed_per_C.get(c, 0)),
        }
        for q in QUANTITIES:
            iv = mean_ci(sub[q]) if len(sub) else Interval(math.nan, math.nan, 0)
            row[f"{q}_mean"] = iv.mean
            row[f"{q}_ci95"] = iv.half_width
        rows.append(row)
    out = pd.DataFrame(rows)
    out["param_count"] = out["param_count"].astype("Int64")
    return out


def curves(
    metrics: pd.DataFrame, metric_names: Sequence[str] = CURVE_METRICS, confidence: float = CONFIDENCE
) -> pd.DataFrame:
    """Mean over seeds per (C, metric, step): columns C, metric, step, n, mean, ci95 (half-width, NaN for one
    seed), low, high; sorted by C, metric, step. Steps where only some seeds logged use those seeds."""
    sub = metrics[metrics["metric"].isin(metric_names)]
    g = sub.groupby(["C", "metric", "step"], sort=True)["value"]
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


def interpolation_threshold(summary: pd.DataFrame, tol: float = INTERPOLATION_TOL) -> int | None:
    """The smallest C whose mean final train error is below ``tol`` (default 1%), or None."""
    hits = summary.loc[summary["final_train_error_mean"] < tol, "C"]
    return int(hits.min()) if len(hits) else None


@dataclass
class Aggregates:
    """Everything computed from one sweep's tidy metrics.

    trials: :func:`per_trial`; summary: :func:`summarize`; curves: :func:`curves` (train and test error);
    threshold: :func:`interpolation_threshold`.
    """

    trials: pd.DataFrame
    summary: pd.DataFrame
    curves: pd.DataFrame
    threshold: int | None


def aggregate(
    metrics: pd.DataFrame,
    failed_per_C: dict[int, int] | None = None,
    param_counts: dict[int, int] | None = None,
) -> Aggregates:
    """Per-trial finals, per-C summary, mean/CI curves and interpolation threshold of a tidy metric frame."""
    trials = per_trial(metrics)
    summary = summarize(trials, failed_per_C, param_counts)
    return Aggregates(trials, summary, curves(metrics), interpolation_threshold(summary))
