"""``analyze``: load a sweep, aggregate it, write figures and summaries, and attach them to the parent run."""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from analysis.aggregate import Aggregates, aggregate
from analysis.load import SkippedTrial, SweepData, find_parent_run, load_sweep, make_client
from analysis.plots import plot_complexity, plot_curves, plot_heatmap
from analysis.report import hardware_lines, trend_sentences, write_summary_csv, write_summary_md
from analysis.search import SEARCH_FILES, analyze_search
from sweep.mlflow_ui import set_findings
from sweep.names import ANALYSIS_ARTIFACT_DIR, TAG_FAMILY, TAG_SWEEP_ID

#: Files :func:`analyze` writes, in this order.
OUTPUT_FILES = (
    "curves.png", "curves.pdf", "complexity.png", "complexity.pdf", "heatmap.png", "heatmap.pdf",
    "summary.csv", "summary.md", "trials.csv", "curves.csv",
)


class AxisError(ValueError):
    """``--x`` names no numeric axis of the sweep (one line listing the allowed axes)."""


def check_x(x: str | None, data: SweepData) -> str:
    """The x axis of the complexity figure: ``x``, or the knob when None. Raises :class:`AxisError` for an
    axis the sweep does not have or one whose values are not numbers (``protocol``)."""
    if x is None:
        return data.knob
    allowed = data.numeric_axes
    if x in allowed:
        return x
    why = "is not a numeric axis" if x in data.axes else "is not an axis"
    raise AxisError(f"--x {x} {why} of sweep {data.sweep_id}; allowed: {', '.join(allowed)}")


@dataclass
class AnalysisResult:
    """What :func:`analyze` produced.

    files: output name (e.g. ``"curves.png"``) -> path under ``out_dir``. summary: one row per grid point
    (:func:`analysis.aggregate.summarize`). thresholds: interpolation threshold (width or None) per line, keyed
    by the values of the non-knob axes (``()`` for a sweep over the knob alone). x: the complexity figure's x
    axis. artifact_uri: where
    the files were logged on the parent run (None when not logged). figures: ``curves``, ``complexity``,
    ``heatmap`` -> the saved Figure (Agg canvas, for inspection).
    """

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
    aggregates: Aggregates | None = field(repr=False)  # None for a family other than the ResNet
    x: str = "C"
    family: str = "resnet"

    @property
    def threshold(self) -> int | None:
        """The single line's threshold (see :attr:`analysis.aggregate.Aggregates.threshold`); None for a family
        other than the ResNet."""
        return self.aggregates.threshold if self.aggregates is not None else None

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


def analyze(
    sweep_id: str | None,
    tracking_uri: str | None,
    out_dir: Path,
    *,
    x: str | None = None,
    log_artifacts: bool = True,
) -> AnalysisResult:
    """Analyse one sweep and write :data:`OUTPUT_FILES` to ``out_dir``.

    sweep_id: the sweep's ``sweep_id`` tag, or None for the most recently started sweep (all experiments).
    tracking_uri: MLflow tracking URI (None: MLflow's default). x: the complexity figure's x axis and the
    axis the trend sentences run along (default: the sweep's knob, C); any numeric axis of the sweep. Every
    other varying axis splits lines and panels (never pooled). With ``log_artifacts`` the files are also
    logged on the sweep's parent run under ``analysis/`` (:data:`sweep.names.ANALYSIS_ARTIFACT_DIR`).
    Raises LookupError (one line) when the sweep does not exist or has no finished trial, and
    :class:`AxisError` for a bad ``x``, before anything is written; failed trials are skipped with a
    :class:`analysis.load.SkippedTrialsWarning`.
    """
    out_dir = Path(out_dir)
    client = make_client(tracking_uri)
    parent = find_parent_run(client, sweep_id)
    family = sweep_family(parent)
    if family.report != "classifier_errors":
        return _analyze_family(family, parent.data.tags.get(TAG_SWEEP_ID, sweep_id), client, out_dir, x,
                               log_artifacts)
    data = load_sweep(sweep_id, client=client)
    x = check_x(x, data)
    axes, knob = data.axes, data.knob
    failed = Counter(tuple(v for _, v in t.point) for t in data.skipped
                     if t.status == "FAILED" and t.point and all(v is not None for _, v in t.point))
    counts = data.param_counts()
    agg = aggregate(data.metrics, dict(failed), counts, axes, knob)
    sentences = trend_sentences(agg.summary, agg.thresholds, data.skipped, axes=axes, knob=knob, x=x)

    out_dir.mkdir(parents=True, exist_ok=True)
    name = data.sweep_id
    subject = "model width" if x == knob else x
    figures = {
        "curves": plot_curves(
            agg.curves, protocol=data.protocol, param_counts=counts, axes=axes, knob=knob, out_dir=out_dir,
            title=f"Sweep {name}: train (solid) and test (dashed) error\nmean over seeds, shaded: 95% CI",
        ),
        "complexity": plot_complexity(agg.summary, agg.thresholds, axes=axes, knob=knob, x=x, out_dir=out_dir,
                                      title=f"Sweep {name}: final errors against {subject}"),
        "heatmap": plot_heatmap(agg.curves, protocol=data.protocol, param_counts=counts, axes=axes, knob=knob,
                                out_dir=out_dir, title=f"Sweep {name}: mean test error over width and training time"),
    }
    write_summary_csv(agg.summary, out_dir / "summary.csv")
    agg.trials.to_csv(out_dir / "trials.csv", index=False)
    agg.curves.to_csv(out_dir / "curves.csv", index=False)
    runs = data.runs
    header = {
        "experiment": data.experiment_name,
        "parent run": data.parent.info.run_id,
        "axes": ", ".join(f"{a} ({', '.join(str(v) for v in sorted(runs[a].unique()))})" for a in axes),
        "x axis": x,
        "protocol": str(data.protocol),
        "budget": ", ".join(sorted({str(b) for b in runs["budget"].dropna()})) if "budget" in runs else "?",
        "trials analysed": str(len(runs)),
        "trials skipped": str(len(data.skipped)),
    }
    write_summary_md(agg.summary, sentences, out_dir / "summary.md", sweep_id=name, header=header,
                     skipped=data.skipped, axes=axes, x=x, hardware=hardware_lines(runs, axes))
    files = {f: out_dir / f for f in OUTPUT_FILES}
    search_sentences, search_figures = analyze_search(client, data.parent, out_dir)
    if search_sentences:  # a search sweep (issue 14): search.png and a Search section
        figures.update(search_figures)
        files.update({f: out_dir / f for f in SEARCH_FILES})
        with open(out_dir / "summary.md", "a", encoding="utf-8") as md:
            md.write("\n## Search\n\n" + "".join(f"- {s}\n" for s in search_sentences)
                     + "\n`analysis/search.png`: the search metric against trial start order with the best so far; "
                     "each searched key against it (log axis for loguniform keys); with ASHA, trials per rung.\n")
        sentences = [*search_sentences, *sentences]
    artifact_uri = _log(client, data, files, sentences) if log_artifacts else None
    return AnalysisResult(
        sweep_id=name, parent_run_id=data.parent.info.run_id, out_dir=out_dir, files=files,
        summary=agg.summary, thresholds=agg.thresholds, sentences=sentences, skipped=data.skipped,
        artifact_uri=artifact_uri, figures=figures, data=data, aggregates=agg, x=x,
    )


def sweep_family(parent: Any) -> Any:
    """The :class:`models.family.Family` of a sweep: its parent's ``sweep.family`` tag (sweeps made before
    families existed are ResNet sweeps). LookupError (one line) for a family not registered here."""
    from models.family import get_family

    name = parent.data.tags.get(TAG_FAMILY, "resnet")
    try:
        return get_family(name)
    except KeyError as exc:
        raise LookupError(f"sweep {parent.data.tags.get(TAG_SWEEP_ID)} is of family {name!r}, which is not "
                          f"registered in this process ({exc.args[0]})") from None


def _analyze_family(family: Any, sweep_id: str | None, client: Any, out_dir: Path, x: str | None,
                    log_artifacts: bool) -> AnalysisResult:
    """:func:`analyze` for a family with the generic report: everything from the family's declared metrics
    (:mod:`analysis.family_report`)."""
    from analysis.family_report import analyze_family

    data = load_sweep(sweep_id, client=client, metrics=family.metric_names)
    x = check_x(x, data)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = analyze_family(data, family, out_dir, x)
    files = {f: out_dir / f for f in OUTPUT_FILES}
    artifact_uri = _log(client, data, files, out["sentences"]) if log_artifacts else None
    return AnalysisResult(
        sweep_id=data.sweep_id, parent_run_id=data.parent.info.run_id, out_dir=out_dir, files=files,
        summary=out["summary"], thresholds={}, sentences=out["sentences"], skipped=data.skipped,
        artifact_uri=artifact_uri, figures=out["figures"], data=data, aggregates=None, x=x, family=family.name,
    )


def _log(client: Any, data: SweepData, files: dict[str, Path], sentences: list[str]) -> str:
    """Log ``files`` on the sweep's parent run under ``analysis/`` and put the findings in its description;
    returns the artifact folder's URI."""
    name = data.sweep_id
    # Stage exactly our files, so whatever else lives in out_dir is never uploaded.
    with tempfile.TemporaryDirectory(prefix="sweep-analysis-") as stage:
        for path in files.values():
            shutil.copy2(path, Path(stage) / path.name)
        run_id = data.parent.info.run_id
        client.log_artifacts(run_id, stage, ANALYSIS_ARTIFACT_DIR)
    set_findings(client, data.parent.info.run_id, name, sentences)  # the parent's Description in the UI
    return f"{data.parent.info.artifact_uri.rstrip('/')}/{ANALYSIS_ARTIFACT_DIR}"
