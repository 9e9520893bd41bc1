"""Reading a complexity sweep back from MLflow: tidy histories, seed statistics, figures and a summary.

Entry point: :func:`analyze` (used by ``sweep analyze``). Needs MLflow, pandas, scipy and matplotlib, not Ray.
"""

from analysis.aggregate import (
    Aggregates,
    Interval,
    aggregate,
    curves,
    interpolation_threshold,
    mean_ci,
    per_trial,
    thresholds,
)
from analysis.load import NoTrialsError, SkippedTrial, SkippedTrialsWarning, SweepData, load_sweep
from analysis.plots import plot_complexity, plot_curves, plot_heatmap
from analysis.report import trend_sentences
from analysis.run import OUTPUT_FILES, AnalysisResult, AxisError, analyze

__all__ = [
    "Aggregates", "AnalysisResult", "AxisError", "Interval", "NoTrialsError", "OUTPUT_FILES", "SkippedTrial",
    "SkippedTrialsWarning", "SweepData", "aggregate", "analyze", "curves", "interpolation_threshold",
    "load_sweep", "mean_ci", "per_trial", "plot_complexity", "plot_curves", "plot_heatmap", "thresholds",
    "trend_sentences",
]
