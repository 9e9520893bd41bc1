"""``sweep compare``: the complexity curves of several sweeps of one family and knob on one figure, with a table.

Each sweep is one colour; its lines (one per value of its other varying axes) carry the family's complexity
panels (train, test, gap for the ResNet) as today, with its threshold marked in its colour. What differs between
the sweeps' specs (protocol, budget, label noise, ...) names them in the legend: different protocols, budgets or
noise levels are what a comparison is for. Sweeps of different families or knobs are refused.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from mlflow import MlflowClient

from analysis.aggregate import Aggregates, aggregate, combo_text, line_axes, table_quantities, varying
from analysis.complexity import SERIES_STYLES, _limits, _x_scale
from analysis.figures import new_figure, save_figure
from analysis.load import SweepData, load_sweep
from record import find_parent_run, read_spec

#: Spec keys that say nothing about what a sweep measured, or that the figure shows itself (its x axis: the
#: knob's values), left out of the legend's differences.
NOT_COMPARED = ("name", "tracking", "resources", "max_concurrent_trials", "max_failures", "checkpoint_every",
                "pack", "pack_size", "eval_every", "search.num_samples", "search.seed")


class CompareError(ValueError):
    """Sweeps that cannot share a figure (one line)."""


@dataclass
class Compared:
    """One sweep of a comparison: its data, aggregates, and the label that tells it apart."""

    data: SweepData
    agg: Aggregates
    label: str


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def labels(client: MlflowClient, sweeps: list[SweepData]) -> list[str]:
    """Each sweep's id, then the spec keys whose values differ between the sweeps (``protocol=epochs``)."""
    flats = []
    for data in sweeps:
        spec = read_spec(client, data.parent).model_dump(mode="json")
        knob_key = data.family.axis_keys[data.knob]
        flats.append({k: v for k, v in _flat(spec).items()
                      if k != knob_key and k not in NOT_COMPARED and k.split(".")[0] not in NOT_COMPARED})
    keys = sorted({k for f in flats for k in f})
    differ = [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1]
    return [data.sweep_id + (": " + ", ".join(f"{k}={f.get(k)}" for k in differ) if differ else "")
            for data, f in zip(sweeps, flats, strict=True)]


def load(sweep_ids: list[str], tracking_uri: str | None) -> list[Compared]:
    """Every sweep loaded and aggregated; :class:`CompareError` for fewer than two or mixed families/knobs."""
    if len(sweep_ids) < 2:
        raise CompareError(f"sweep compare needs at least two sweep ids, got {len(sweep_ids)}")
    client = MlflowClient(tracking_uri)
    for sweep_id in sweep_ids:
        find_parent_run(client, sweep_id)  # LookupError (one line) for an unknown id, before any loading
    sweeps = [load_sweep(sweep_id, client=client) for sweep_id in sweep_ids]
    kinds = Counter((d.family.name, d.knob) for d in sweeps)
    if len(kinds) > 1:
        found = ", ".join(f"{d.sweep_id} ({d.family.name}, knob {d.knob})" for d in sweeps)
        raise CompareError(f"sweeps of different families or knobs cannot share a complexity figure: {found}")
    out = []
    for data, label in zip(sweeps, labels(client, sweeps), strict=True):
        failed = Counter(tuple(v for _, v in t.point) for t in data.failed)
        agg = aggregate(data.metrics, dict(failed), data.param_counts(), data.axes, data.knob, data.family)
        out.append(Compared(data, agg, label))
    return out


def table(compared: list[Compared]) -> pd.DataFrame:
    """One row per sweep and grid point: sweep_id, label, the axes, n_seeds, each quantity's mean and ci95."""
    frames = [c.agg.summary.assign(sweep_id=c.data.sweep_id, label=c.label) for c in compared]
    out = pd.concat(frames, ignore_index=True)
    first = ["sweep_id", "label"]
    return out[first + [c for c in out.columns if c not in first]]


def plot(compared: list[Compared], title: str) -> Figure:
    """The family's complexity panels against the knob, one colour per sweep (module docstring)."""
    family, knob = compared[0].data.family, compared[0].data.knob
    panels = family.complexity_panels
    fig = new_figure(9.3, 5.6 + 0.3 * len(compared))
    axes = list(fig.subplots(1, len(panels), squeeze=False)[0])
    cmap = colormaps["tab10"]
    handles = []
    for i, c in enumerate(compared):
        colour = cmap(i % 10)
        s = c.agg.summary[c.agg.summary["n_seeds"] > 0]
        others = varying(s, line_axes(c.data.axes, knob))
        groups = [((), s)] if not others else [((k if isinstance(k, tuple) else (k,)), g)
                                               for k, g in s.groupby(others, sort=True)]
        for n, (key, g) in enumerate(groups):
            g = g.sort_values(knob)
            for ax, panel in zip(axes, panels, strict=True):
                for metric, (marker, style) in zip(panel.metrics, SERIES_STYLES, strict=False):
                    column = family.final_column(metric)
                    ax.errorbar(g[knob].to_numpy(dtype=float), g[f"{column}_mean"].to_numpy(dtype=float),
                                yerr=np.nan_to_num(g[f"{column}_ci95"].to_numpy(dtype=float)), color=colour,
                                marker=marker, linestyle=style, capsize=3, linewidth=1.3, markersize=5,
                                alpha=1.0 if n == 0 else 0.6)
                t = c.agg.thresholds.get(key if others else ())
                if family.threshold and t is not None:
                    ax.axvline(t, color=colour, linestyle=(0, (2, 2)), linewidth=1.1, gid="threshold")
            where = f" ({combo_text(others, key)})" if others else ""
            handles.append(Line2D([], [], color=colour, linewidth=3, alpha=1.0 if n == 0 else 0.6,
                                  label=f"{c.label}{where}"))
    counts = {k: v for c in compared for k, v in c.data.param_counts().items()}
    values = np.unique(np.concatenate([c.agg.summary[knob].to_numpy(dtype=float) for c in compared]))
    every = pd.concat([c.agg.summary[c.agg.summary["n_seeds"] > 0] for c in compared], ignore_index=True)
    for ax, panel in zip(axes, panels, strict=True):
        ax.set_xlabel(_x_scale(ax, values, knob, knob, counts, family))
        ax.set_ylabel(panel.ylabel)
        limits = _limits(every, panel, family)
        if limits:
            ax.axhline(0.0, color="0.6", linewidth=0.8)
            ax.set_ylim(*limits)
        ax.grid(True, alpha=0.3)
    for panel in panels:
        handles += [Line2D([], [], color="0.3", marker=m, linestyle=st, label=family.final_quantity(metric).legend)
                    for metric, (m, st) in zip(panel.metrics, SERIES_STYLES, strict=False)]
    if family.threshold:
        handles.append(Line2D([], [], color="0.3", linestyle=(0, (2, 2)), label=family.threshold.name))
    # Below the panels, one sweep a line: its label says what differs, and may be long.
    fig.legend(handles=handles, loc="outside lower center", ncols=1, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def write(compared: list[Compared], out_dir: Path) -> dict[str, Path]:
    """compare.png/.pdf, compare.csv and compare.md into ``out_dir``; returns name -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = table(compared)
    frame.to_csv(out_dir / "compare.csv", index=False)
    family = compared[0].data.family
    shown = table_quantities(frame, family)
    quantities = [q for q in family.quantities if q.column in shown]
    axes = [a for a in dict.fromkeys(a for c in compared for a in c.data.axes)]
    lines = ["# Compared sweeps", "", *[f"- {c.label}" for c in compared], "",
             "Means over seeds ± the half-width of the 95% Student t-interval, at each run's last step.", "",
             "| sweep | " + " | ".join(axes) + " | seeds | " + " | ".join(q.description for q in quantities) + " |",
             "|---|" + "---:|" * (len(axes) + 1 + len(quantities))]
    for _, r in frame.iterrows():
        cells = [str(r.get(a, "")) if pd.notna(r.get(a)) else "" for a in axes]
        stats = [f"{r[f'{q.column}_mean']:.3f}" + ("" if pd.isna(r[f"{q.column}_ci95"]) else
                                                  f" ± {r[f'{q.column}_ci95']:.3f}") for q in quantities]
        lines.append(f"| {r['sweep_id']} | " + " | ".join(cells) + f" | {int(r['n_seeds'])} | " + " | ".join(stats)
                     + " |")
    (out_dir / "compare.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    fig = plot(compared, f"{len(compared)} sweeps of the {family.display_name}: final values against the knob\n"
                         "(mean over seeds, bars: 95% t-interval)")
    paths = save_figure(fig, out_dir, "compare")
    return {p.name: p for p in [*paths, out_dir / "compare.csv", out_dir / "compare.md"]}


def default_folder(sweep_ids: list[str]) -> str:
    """``compare-<short ids>``: each id's last four characters (its random part)."""
    return "compare-" + "-".join(s[-4:] for s in sweep_ids)
