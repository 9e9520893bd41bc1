"""``analyze``: load a sweep, aggregate it, write figures and summaries, and attach them to the parent run."""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis.aggregate import Aggregates, aggregate
from analysis.load import SkippedTrial, SweepData, load_sweep, make_client
from analysis.plots import plot_complexity, plot_curves, plot_heatmap
from analysis.report import trend_sentences, write_summary_csv, write_summary_md
from sweep.mlflow_ui import set_findings
from sweep.names import ANALYSIS_ARTIFACT_DIR

#: Files :func:`analyze` writes, in this order.
OUTPUT_FILES = (
    "curves.png", "curves.pdf", "complexity.png", "complexity.pdf", "heatmap.png", "heatmap.pdf",
    "summary.csv", "summary.md", "trials.csv", "curves.csv",
)


@dataclass
class AnalysisResult:
    """What :func:`analyze` produced.

    files: output name (e.g. ``"curves.png"``) -> path under ``out_dir``. summary: per-C table
    (:func:`analysis.aggregate.summarize`). threshold: interpolation threshold C or None. artifact_uri: where
    the files were logged on the parent run (None when not logged). figures: ``curves``, ``complexity``,
    ``heatmap`` -> the saved Figure (Agg canvas, for inspection).
    """

    sweep_id: str
    parent_run_id: str
    out_dir: Path
    files: dict[str, Path]
    summary: pd.DataFrame
    threshold: int | None
    sentences: list[str]
    skipped: list[SkippedTrial]
    artifact_uri: str | None
    figures: dict[str, Figure] = field(repr=False)
    data: SweepData = field(repr=False)
    aggregates: Aggregates = field(repr=False)

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
    log_artifacts: bool = True,
) -> AnalysisResult:
    """Analyse one sweep and write :data:`OUTPUT_FILES` to ``out_dir``.

    sweep_id: the sweep's ``sweep_id`` tag, or None for the most recently started sweep (all experiments).
    tracking_uri: MLflow tracking URI (None: MLflow's default). With ``log_artifacts`` the files are also
    logged on the sweep's parent run under ``analysis/`` (:data:`sweep.names.ANALYSIS_ARTIFACT_DIR`).
    Raises LookupError (one line) when the sweep does not exist or has no finished trial; failed trials are
    skipped with a :class:`analysis.load.SkippedTrialsWarning`.
    """
    out_dir = Path(out_dir)
    client = make_client(tracking_uri)
    data = load_sweep(sweep_id, client=client)
    failed_per_C = Counter(t.C for t in data.skipped if t.status == "FAILED" and t.C is not None)
    agg = aggregate(data.metrics, dict(failed_per_C), data.param_counts())
    sentences = trend_sentences(agg.summary, agg.threshold, data.skipped)

    out_dir.mkdir(parents=True, exist_ok=True)
    counts = data.param_counts()
    name = data.sweep_id
    figures = {
        "curves": plot_curves(
            agg.curves, protocol=data.protocol, param_counts=counts, out_dir=out_dir,
            title=f"Sweep {name}: train (solid) and test (dashed) error\nmean over seeds, shaded: 95% CI",
        ),
        "complexity": plot_complexity(agg.summary, agg.threshold, out_dir=out_dir,
                        title=f"Sweep {name}: final errors against model width"),
        "heatmap": plot_heatmap(agg.curves, protocol=data.protocol, param_counts=counts, out_dir=out_dir,
                     title=f"Sweep {name}: mean test error over width and training time"),
    }
    write_summary_csv(agg.summary, out_dir / "summary.csv")
    agg.trials.to_csv(out_dir / "trials.csv", index=False)
    agg.curves.to_csv(out_dir / "curves.csv", index=False)
    runs = data.runs
    header = {
        "experiment": data.experiment_name,
        "parent run": data.parent.info.run_id,
        "protocol": str(data.protocol),
        "budget": ", ".join(sorted(set(runs["budget"].dropna()))) if "budget" in runs else "?",
        "trials analysed": str(len(runs)),
        "trials skipped": str(len(data.skipped)),
    }
    write_summary_md(agg.summary, sentences, out_dir / "summary.md", sweep_id=name, header=header,
                     skipped=data.skipped)
    files = {f: out_dir / f for f in OUTPUT_FILES}

    artifact_uri = None
    if log_artifacts:
        # Stage exactly our files, so whatever else lives in out_dir is never uploaded.
        with tempfile.TemporaryDirectory(prefix="sweep-analysis-") as stage:
            for path in files.values():
                shutil.copy2(path, Path(stage) / path.name)
            run_id = data.parent.info.run_id
            client.log_artifacts(run_id, stage, ANALYSIS_ARTIFACT_DIR)
        set_findings(client, data.parent.info.run_id, name, sentences)  # the parent's Description in the UI
        artifact_uri = f"{data.parent.info.artifact_uri.rstrip('/')}/{ANALYSIS_ARTIFACT_DIR}"
    return AnalysisResult(
        sweep_id=name, parent_run_id=data.parent.info.run_id, out_dir=out_dir, files=files,
        summary=agg.summary, threshold=agg.threshold, sentences=sentences, skipped=data.skipped,
        artifact_uri=artifact_uri, figures=figures, data=data, aggregates=agg,
    )
