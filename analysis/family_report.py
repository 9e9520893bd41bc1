"""The analysis of any model family from its declared metrics (:mod:`models.family`): no metric key is
written here.

Used by :func:`analysis.run.analyze` for every family but the ResNet (whose error-based analysis, with
interpolation thresholds, is :mod:`analysis.aggregate` / :mod:`analysis.plots` / :mod:`analysis.report`).
Writes the same files:

* ``complexity.png/.pdf``: one panel per entry of the family's ``complexity_panels``; each metric's final
  value (mean over seeds, 95% t-interval as error bars) against the x axis (the knob by default, log2 scale);
  every other varying axis splits lines (never pooled). Panel titles say which direction is better.
* ``curves.png/.pdf``: the family's ``curve_metrics`` (train solid, test dashed) against step, one colour per
  knob value, mean over seeds with a 95% band; one panel per combination of the other axes.
* ``heatmap.png/.pdf``: mean test curve metric over (knob value, step).
* ``summary.csv`` (one row per grid point: n_seeds, ``final_<metric>_mean`` / ``_ci95`` for every metric),
  ``summary.md`` (findings and that table), ``trials.csv`` (final values per run), ``curves.csv``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.aggregate import curves, mean_ci
from analysis.load import SkippedTrial, SweepData
from analysis.plots import c_colours, new_figure, save_figure
from analysis.report import hardware_lines


def _rest(axes: Sequence[str], x: str) -> list[str]:
    return [a for a in axes if a != x]


def final_values(data: SweepData, metric_names: Sequence[str]) -> pd.DataFrame:
    """One row per run: run_id, the axes, seed, final_step, and ``final_<m>`` = the value of metric m at the
    run's last logged step of m (NaN when it never logged m)."""
    keys = ["run_id", *data.axes, "seed"]
    rows = []
    for key, frame in data.metrics.groupby(keys, sort=False):
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        row["final_step"] = int(frame["step"].max())
        for m in metric_names:
            series = frame[frame["metric"] == m].sort_values("step")
            row[f"final_{m}"] = float(series["value"].iloc[-1]) if len(series) else math.nan
        rows.append(row)
    return pd.DataFrame(rows).sort_values([*data.axes, "seed"], kind="stable").reset_index(drop=True)


def summarize(trials: pd.DataFrame, axes: Sequence[str], metric_names: Sequence[str]) -> pd.DataFrame:
    """One row per grid point: the axes, n_seeds, ``final_<m>_mean`` and ``final_<m>_ci95`` (t-interval
    half-width; NaN with one seed) for every metric."""
    rows = []
    for key, frame in trials.groupby(list(axes), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(axes, key, strict=True))
        row["n_seeds"] = len(frame)
        for m in metric_names:
            interval = mean_ci(frame[f"final_{m}"])
            row[f"final_{m}_mean"], row[f"final_{m}_ci95"] = interval.mean, interval.half_width
        rows.append(row)
    return pd.DataFrame(rows)


def _label(family: Any, m: str) -> str:
    info = family.metric(m)
    unit = f", {info.unit}" if info.unit else ""
    return f"{m} ({'higher' if info.higher_is_better else 'lower'} is better{unit})"


def _combos(frame: pd.DataFrame, axes: Sequence[str]) -> list[tuple]:
    if not axes:
        return [()]
    return sorted({tuple(r) for r in frame[list(axes)].itertuples(index=False)}, key=str)


def _select(frame: pd.DataFrame, axes: Sequence[str], values: Sequence[object]) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    for a, v in zip(axes, values, strict=True):
        mask &= (frame[a] == v).to_numpy()
    return frame[mask]


def _text(axes: Sequence[str], values: Sequence[object]) -> str:
    return " ".join(f"{a}={v}" for a, v in zip(axes, values, strict=True))


def plot_complexity(summary: pd.DataFrame, family: Any, axes: Sequence[str], x: str, out_dir: Path,
                    title: str) -> Figure:
    panels = family.complexity_panels
    fig = new_figure(5.2 * len(panels), 4.2)
    rest = _rest(axes, x)
    for i, metric_names in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for m in metric_names:
            for combo in _combos(summary, rest):
                part = _select(summary, rest, combo).sort_values(x)
                label = m if not rest else f"{m} {_text(rest, combo)}"
                ax.errorbar(part[x], part[f"final_{m}_mean"], yerr=part[f"final_{m}_ci95"].fillna(0.0),
                            marker="o", capsize=3, label=label)
        values = summary[x].to_numpy(dtype=float)
        if np.all(values > 0) and len(set(values)) > 1:
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(set(values)), [str(v) for v in sorted(set(summary[x]))])
        ax.set_xlabel(f"{x} ({family.knob_meaning})" if x == family.knob else x)
        ax.set_title("; ".join(_label(family, m) for m in metric_names), fontsize=8)
        if family.metric(metric_names[0]).unit:
            ax.set_ylabel(family.metric(metric_names[0]).unit)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, out_dir, "complexity")
    return fig


def plot_curves(curve_frame: pd.DataFrame, family: Any, axes: Sequence[str], out_dir: Path, title: str) -> Figure:
    knob = family.knob
    rest = _rest(axes, knob)
    combos = _combos(curve_frame, rest)
    fig = new_figure(5.5 * len(combos), 4.2)
    colours = c_colours(sorted(set(curve_frame[knob])))
    train_m, test_m = family.curve_metrics
    for i, combo in enumerate(combos):
        ax = fig.add_subplot(1, len(combos), i + 1)
        part = _select(curve_frame, rest, combo)
        for k in sorted(set(part[knob])):
            for m, style, word in ((train_m, "-", "train"), (test_m, "--", "test")):
                d = part[(part[knob] == k) & (part["metric"] == m)].sort_values("step")
                if d.empty:
                    continue
                ax.plot(d["step"], d["mean"], style, color=colours[k], label=f"{knob}={k} {word}")
                band = d["ci95"].fillna(0.0)
                ax.fill_between(d["step"], d["mean"] - band, d["mean"] + band, color=colours[k], alpha=0.15)
        ax.set_xlabel(family.budget_unit)
        ax.set_ylabel(f"{train_m} (solid), {test_m} (dashed)")
        ax.set_title(_text(rest, combo) or f"{train_m} / {test_m}", fontsize=9)
        ax.grid(alpha=0.3)
        if i == len(combos) - 1:
            ax.legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, out_dir, "curves")
    return fig


def plot_heatmap(curve_frame: pd.DataFrame, family: Any, axes: Sequence[str], out_dir: Path, title: str) -> Figure:
    knob, test_m = family.knob, family.curve_metrics[1]
    d = curve_frame[curve_frame["metric"] == test_m]
    grid = d.pivot_table(index=knob, columns="step", values="mean", aggfunc="mean")  # pooled only for the picture
    fig = new_figure(7.0, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(grid.to_numpy(), aspect="auto", origin="lower", cmap="viridis",
                      extent=(float(grid.columns.min()), float(grid.columns.max()), -0.5, len(grid) - 0.5))
    ax.set_yticks(range(len(grid)), [f"{knob}={k}" for k in grid.index])
    ax.set_xlabel(family.budget_unit)
    fig.colorbar(image, ax=ax, label=_label(family, test_m))
    other = [a for a in axes if a != knob]
    ax.set_title(title + (f" (mean over {', '.join(other)})" if other else ""), fontsize=9)
    save_figure(fig, out_dir, "heatmap")
    return fig


def sentences(summary: pd.DataFrame, family: Any, axes: Sequence[str], x: str,
              skipped: Sequence[SkippedTrial]) -> list[str]:
    """Findings: for every metric drawn in the complexity figure, how its final mean moves along ``x`` and
    where it is best (the metric's direction); failed trials."""
    out = []
    rest = _rest(axes, x)
    for combo in _combos(summary, rest):
        part = _select(summary, rest, combo).sort_values(x)
        where = f" ({_text(rest, combo)})" if rest else ""
        for metric_names in family.complexity_panels:
            for m in metric_names:
                means = part[f"final_{m}_mean"].to_numpy(dtype=float)
                if not np.isfinite(means).any():
                    continue
                info = family.metric(m)
                best = int(np.nanargmax(means) if info.higher_is_better else np.nanargmin(means))
                first, last = means[0], means[-1]
                xs = part[x].tolist()
                trend = "rises" if last > first else "falls" if last < first else "stays"
                out.append(f"Final {m}{where} {trend} from {first:.4g} at {x}={xs[0]} to {last:.4g} at {x}={xs[-1]}; "
                           f"best ({'highest' if info.higher_is_better else 'lowest'}) {means[best]:.4g} at "
                           f"{x}={xs[best]}.")
    failed = [s for s in skipped if s.status == "FAILED"]
    if failed:
        out.append(f"{len(failed)} trial(s) failed and are left out: " + "; ".join(s.describe() for s in failed))
    return out


def write_summary_md(summary: pd.DataFrame, found: Sequence[str], path: Path, *, family: Any, sweep_id: str,
                     header: dict[str, str], axes: Sequence[str], skipped: Sequence[SkippedTrial],
                     hardware: Sequence[str] = ()) -> None:
    lines = [f"# Sweep {sweep_id}: {family.display_name}", ""]
    lines += [f"- **{k}**: {v}" for k, v in header.items()]
    lines += ["", "## Findings", ""] + [f"- {s}" for s in found]
    lines += ["", "## Metrics", ""]
    lines += [f"- `{m.name}`: {m.meaning}{f' ({m.unit})' if m.unit else ''}, "
              f"{'higher' if m.higher_is_better else 'lower'} is better" for m in family.metrics]
    lines += ["", "## Final values (mean ± 95% CI over seeds)", ""]
    shown = [m for panel in family.complexity_panels for m in panel]
    lines.append("| " + " | ".join([*axes, "seeds", *shown]) + " |")
    lines.append("|" + "---|" * (len(axes) + 1 + len(shown)))
    for _, row in summary.iterrows():
        # iterrows upcasts an int axis (K) to float in a row holding floats: print 1, not 1.0
        cells = [f"{row[a]:g}" if isinstance(row[a], float) else str(row[a]) for a in axes]
        cells.append(str(int(row["n_seeds"])))
        for m in shown:
            ci = row[f"final_{m}_ci95"]
            cells.append(f"{row[f'final_{m}_mean']:.4f}" + ("" if math.isnan(ci) else f" ± {ci:.4f}"))
        lines.append("| " + " | ".join(cells) + " |")
    if skipped:
        lines += ["", "## Skipped trials", ""] + [f"- {s.describe()}" for s in skipped]
    lines += list(hardware)
    lines += ["", "Figures: complexity.png, curves.png, heatmap.png."]
    path.write_text("\n".join(lines) + "\n")


def analyze_family(data: SweepData, family: Any, out_dir: Path, x: str) -> dict[str, Any]:
    """Write the files of :data:`analysis.run.OUTPUT_FILES` for ``data`` (a sweep of ``family``) into
    ``out_dir``; returns summary, trials, curves, sentences and figures."""
    names = family.metric_names
    trials = final_values(data, names)
    summary = summarize(trials, data.axes, names)
    curve_frame = curves(data.metrics, names, axes=data.axes)
    found = sentences(summary, family, data.axes, x, data.skipped)
    name = data.sweep_id
    figures = {
        "curves": plot_curves(curve_frame, family, data.axes, out_dir,
                              f"Sweep {name}: {family.curve_metrics[0]} (solid) and {family.curve_metrics[1]} "
                              "(dashed)\nmean over seeds, shaded: 95% CI"),
        "complexity": plot_complexity(summary, family, data.axes, x, out_dir,
                                      f"Sweep {name}: final values against {x}"),
        "heatmap": plot_heatmap(curve_frame, family, data.axes, out_dir,
                                f"Sweep {name}: mean {family.curve_metrics[1]}"),
    }
    summary.to_csv(out_dir / "summary.csv", index=False)
    trials.to_csv(out_dir / "trials.csv", index=False)
    curve_frame.to_csv(out_dir / "curves.csv", index=False)
    runs = data.runs
    header = {
        "experiment": data.experiment_name, "parent run": data.parent.info.run_id, "family": family.name,
        "axes": ", ".join(f"{a} ({', '.join(str(v) for v in sorted(runs[a].unique()))})" for a in data.axes),
        "x axis": x, "budget": ", ".join(sorted({str(b) for b in runs["budget"].dropna()})) if "budget" in runs
        else "?", "trials analysed": str(len(runs)), "trials skipped": str(len(data.skipped)),
    }
    write_summary_md(summary, found, out_dir / "summary.md", family=family, sweep_id=name, header=header,
                     axes=data.axes, skipped=data.skipped, hardware=hardware_lines(runs, data.axes))
    return {"summary": summary, "trials": trials, "curves": curve_frame, "sentences": found, "figures": figures}
