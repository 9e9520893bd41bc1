"""``analyze``: one path for every family. Load a sweep, aggregate its seeds, draw every registered figure,
write the tables and summary.md, and put the results on the sweep's parent run (artifacts and description)."""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient

# The figure modules register their figures in analysis.figures.FIGURES when imported.
from analysis import complexity, curves, refinement, search  # noqa: F401
from analysis.aggregate import Aggregates, aggregate
from analysis.curve import log_curve
from analysis.figures import FIGURES, Context, save_figure
from analysis.load import SkippedTrial, SweepData, load_sweep
from analysis.report import hardware_lines, trend_sentences, write_summary_md
from record import ANALYSIS_ARTIFACT_DIR, TAG_NOTE, read_spec, short_value, with_retry

#: Tables :func:`analyze` writes besides the figures (``search.csv`` for a search or a scheduled grid).
TABLES = ("summary.csv", "summary.md", "trials.csv", "curves.csv")


class AxisError(ValueError):
    """``--x`` names no numeric axis of the sweep (one line listing the allowed axes)."""


def check_x(x: str | None, data: SweepData) -> str:
    """The x axis of the complexity figure: ``x``, or the knob when None. Raises :class:`AxisError` for an
    axis the sweep does not have or one whose values are not numbers (``protocol``)."""
    if x is None:
        return data.knob
    if x in data.numeric_axes:
        return x
    why = "is not a numeric axis" if x in data.axes else "is not an axis"
    raise AxisError(f"--x {x} {why} of sweep {data.sweep_id}; allowed: {', '.join(data.numeric_axes)}")


@dataclass
class AnalysisResult:
    """What :func:`analyze` produced: ``files`` (name -> path under ``out_dir``), ``summary`` (one row per grid
    point), ``thresholds`` (the family's threshold per line, keyed by the values of the non-knob axes),
    ``sentences`` (the findings), ``figures`` (name -> the saved Figure, for inspection), ``artifact_uri`` (where
    the files were logged on the parent run; None when not logged)."""

    sweep_id: str
    parent_run_id: str
    out_dir: Path
    files: dict[str, Path]
    summary: pd.DataFrame
    thresholds: dict[tuple, int | None]
    sentences: list[str]
    skipped: list[SkippedTrial]
    artifact_uri: str | None
    figures: dict[str, Figure] = field(repr=False)
    data: SweepData = field(repr=False)
    aggregates: Aggregates = field(repr=False)
    x: str = "C"

    @property
    def family(self) -> str:
        return self.data.family.name

    @property
    def threshold(self) -> int | None:
        """The single line's threshold (see :attr:`analysis.aggregate.Aggregates.threshold`)."""
        return self.aggregates.threshold

    @property
    def failed(self) -> list[SkippedTrial]:
        return [t for t in self.skipped if t.status == "FAILED"]

    def __str__(self) -> str:
        """A few lines for a terminal: findings, skipped trials, where the files are."""
        lines = [f"Sweep {self.sweep_id} (parent run {self.parent_run_id})"]
        lines += [f"  {s}" for s in self.sentences]
        lines += [f"  skipped: {t.describe()}" for t in self.skipped]
        lines.append(f"Files in {self.out_dir}: {', '.join(self.files)}")
        if self.artifact_uri:
            lines.append(f"Logged on the parent run as artifacts: {self.artifact_uri}")
        return "\n".join(lines)


def analyze(sweep_id: str | None, tracking_uri: str | None, out_dir: Path, *, x: str | None = None,
            log_artifacts: bool = True) -> AnalysisResult:
    """Analyse one sweep and write its figures and tables to ``out_dir``.

    sweep_id: the sweep's ``sweep_id`` tag, or None for the most recently started sweep. x: the complexity
    figure's x axis and the axis the trend sentences run along (default: the knob); any numeric axis. Every
    other varying axis splits lines and panels (never pooled). With ``log_artifacts`` the files are logged on the
    parent run under ``analysis/`` and the findings become its description. Raises LookupError (one line) when
    the sweep does not exist or has no finished trial, and :class:`AxisError` for a bad ``x``, before anything is
    written; failed trials are skipped with a :class:`analysis.load.SkippedTrialsWarning`. The complexity curve
    goes on the parent run as metrics too (:mod:`analysis.curve`).
    """
    out_dir = Path(out_dir)
    client = MlflowClient(tracking_uri)
    data = load_sweep(sweep_id, client=client)
    x = check_x(x, data)
    family, axes, knob = data.family, data.axes, data.knob
    failed = Counter(tuple(v for _, v in t.point) for t in data.failed if all(v is not None for _, v in t.point))
    agg = aggregate(data.metrics, dict(failed), data.param_counts(), axes, knob, family)
    spec = read_spec(client, data.parent)
    # A sampled search whose knob is one value is a search, not a width study: no complexity trends to state.
    sampled = bool(spec.search.space) and data.runs[knob].nunique() < 2
    sentences = [] if sampled else trend_sentences(agg.summary, agg.thresholds, data.skipped, axes=axes, knob=knob,
                                                   x=x, family=family)
    ctx = Context(data, agg, x, sampled_search=sampled)
    sections: list[str] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.search.selects:  # a search or a scheduled grid: its configurations and their best
        ctx.search_settings = search.search_settings(spec)
        ctx.configurations = search.configurations(client, data.parent, ctx.search_settings)
        if not ctx.configurations.empty:
            ctx.configurations.to_csv(out_dir / "search.csv", index=False)
            sections = search.search_section(ctx.configurations, ctx.search_settings)
            sentences = [search.best_sentence(ctx.configurations, ctx.search_settings), *sentences]
            if sampled:
                sentences.append(search.configurations_sentence(ctx.configurations, ctx.search_settings, knob,
                                                                data.runs[knob].iloc[0]))
    if spec.search.algorithm == "refine":
        sections += refinement.refinement_section(data, agg, len(spec.seed_list))
    figures = {name: fig for name, draw in FIGURES.items() if (fig := draw(ctx)) is not None}
    files: dict[str, Path] = {}
    for name, fig in figures.items():
        files.update({p.name: p for p in save_figure(fig, out_dir, name)})
    agg.summary.to_csv(out_dir / "summary.csv", index=False)
    agg.trials.to_csv(out_dir / "trials.csv", index=False)
    agg.curves.to_csv(out_dir / "curves.csv", index=False)
    title = (f"{family.display_name}, {spec.search.algorithm} search over {', '.join(spec.search.space)}"
             if sampled else None)
    write_summary_md(agg.summary, sentences, out_dir / "summary.md", sweep_id=data.sweep_id, header=_header(data, x),
                     title=title,
                     skipped=data.skipped, figures=[f"{name}.png" for name in figures], axes=axes, x=x,
                     hardware=hardware_lines(data.runs, axes), sections=sections, family=family)
    files.update({name: out_dir / name for name in TABLES})
    if (out_dir / "search.csv").exists() and ctx.configurations is not None:
        files["search.csv"] = out_dir / "search.csv"
    artifact_uri = None
    if log_artifacts:
        artifact_uri = _log(client, data, files, sentences, list(figures))
        log_curve(client, data.parent, agg.summary, axes, family)
    return AnalysisResult(sweep_id=data.sweep_id, parent_run_id=data.parent.info.run_id, out_dir=out_dir,
                          files=files, summary=agg.summary, thresholds=agg.thresholds, sentences=sentences,
                          skipped=data.skipped, artifact_uri=artifact_uri, figures=figures, data=data,
                          aggregates=agg, x=x)


def _header(data: SweepData, x: str) -> dict[str, str]:
    runs = data.runs
    return {
        "experiment": data.experiment_name, "parent run": data.parent.info.run_id, "family": data.family.name,
        "axes": ", ".join(f"{a} ({', '.join(short_value(v) for v in sorted(runs[a].unique()))})" for a in data.axes),
        "x axis": x, "protocol": str(data.protocol),
        "budget": ", ".join(sorted({str(b) for b in runs["budget"].dropna()})) if "budget" in runs else "?",
        "trials analysed": str(len(runs)), "trials skipped": str(len(data.skipped)),
    }


def findings_note(sweep_id: str, sentences: list[str], figures: list[str]) -> str:
    """The parent's description after analysis: the findings as a Markdown list, and where the figures are."""
    lines = [f"**Findings of sweep `{sweep_id}`** (from `analysis/summary.md`):", ""]
    lines += [f"- {s}" for s in sentences]
    lines += ["", "Figures: artifacts " + ", ".join(f"`analysis/{name}.png`" for name in figures) + "."]
    return "\n".join(lines)


def _log(client: MlflowClient, data: SweepData, files: dict[str, Path], sentences: list[str],
         figures: list[str]) -> str:
    """Log ``files`` on the sweep's parent run under ``analysis/`` and put the findings in its description;
    returns the artifact folder's URI."""
    # Stage exactly our files, so whatever else lives in out_dir is never uploaded.
    with tempfile.TemporaryDirectory(prefix="sweep-analysis-") as stage:
        for path in files.values():
            shutil.copy2(path, Path(stage) / path.name)
        with_retry(client.log_artifacts, data.parent.info.run_id, stage, ANALYSIS_ARTIFACT_DIR)
    with_retry(client.set_tag, data.parent.info.run_id, TAG_NOTE, findings_note(data.sweep_id, sentences, figures))
    return f"{data.parent.info.artifact_uri.rstrip('/')}/{ANALYSIS_ARTIFACT_DIR}"


__all__ = ["AnalysisResult", "AxisError", "TABLES", "analyze", "check_x", "findings_note"]
