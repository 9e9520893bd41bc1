"""Reading a complexity sweep back from MLflow: tidy histories, seed statistics, figures and a summary.

Entry point: :func:`analyze` (used by ``sweep analyze``). One path for every model family, configured by the
family's declarations. Needs MLflow, pandas, scipy and matplotlib, not Ray.
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
from analysis.complexity import plot_complexity
from analysis.curves import plot_curves, plot_heatmap
from analysis.figures import FIGURES, Context, figure
from analysis.load import NoTrialsError, SkippedTrial, SkippedTrialsWarning, SweepData, load_sweep
from analysis.report import trend_sentences
from analysis.run import AnalysisResult, AxisError, analyze

__all__ = [
    "FIGURES", "Aggregates", "AnalysisResult", "AxisError", "Context", "Interval", "NoTrialsError", "SkippedTrial",
    "SkippedTrialsWarning", "SweepData", "aggregate", "analyze", "curves", "figure", "interpolation_threshold",
    "load_sweep", "mean_ci", "per_trial", "plot_complexity", "plot_curves", "plot_heatmap", "thresholds",
    "trend_sentences",
]
