"""``summary.csv`` and ``summary.md``: the per-grid-point table, skipped trials, and sentences stating the trend.

Every number in the sentences comes from the summary table (see :func:`analysis.aggregate.summarize`);
nothing about the expected outcome is written here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.aggregate import (
    INTERPOLATION_TOL,
    combo_text,
    line_axes,
    quantities,
    seed_range_text,
    value_text,
    varying,
)
from analysis.load import SkippedTrial
from sweep.names import HARDWARE_IDENTITY

_SAME = 0.005  # mean errors closer than this count as unchanged in the sentences


def _pm(mean: float, half: float, digits: int = 2) -> str:
    """``0.70 ± 0.05``, or ``0.70`` (one seed: no interval), or ``n/a``."""
    if pd.isna(mean):
        return "n/a"
    mean = float(mean)
    return f"{mean:.{digits}f}" if pd.isna(half) else f"{mean:.{digits}f} ± {float(half):.{digits}f}"


def _change(values: Sequence[float]) -> str:
    """Verb phrase for a series over increasing C: falls / rises (monotonically or not) / stays."""
    first, last = values[0], values[-1]
    steps = [b - a for a, b in zip(values[:-1], values[1:], strict=True)]
    if abs(last - first) < _SAME:
        return "stays"
    if last < first:
        return "falls monotonically" if all(d <= _SAME for d in steps) else "falls, though not monotonically,"
    return "rises monotonically" if all(d >= -_SAME for d in steps) else "rises, though not monotonically,"


def _from_to(verb: str, a: float, b: float, at0: str, at1: str) -> str:
    if verb == "stays":
        return f"stays near {a:.2f} from {at0} to {at1} ({a:.2f} → {b:.2f})"
    return f"{verb} from {a:.2f} at {at0} to {b:.2f} at {at1}"


def _prefixed(prefix: str, sentence: str) -> str:
    """``For lr=0.05: final training error ...`` (the sentence's first letter lower-cased after the prefix)."""
    return sentence if not prefix else f"{prefix}{sentence[0].lower()}{sentence[1:]}"


def _along(s: pd.DataFrame, x: str, seed_text: str) -> list[str]:
    """Trend, gap and oracle sentences for the rows of one line (sorted by ``x``, at least one row)."""
    tr, te = s["final_train_error_mean"].tolist(), s["final_test_error_mean"].tolist()
    gap, gap_ci = s["final_gap_mean"].tolist(), s["final_gap_ci95"].tolist()
    at = [value_text(x, v) for v in s[x]]
    out: list[str] = []
    if len(s) == 1:
        train, test = _pm(tr[0], s["final_train_error_ci95"].iloc[0]), _pm(te[0], s["final_test_error_ci95"].iloc[0])
        out.append(
            f"Only {at[0]} was analysed ({seed_text}): final training error {train}, "
            f"final test error {test}, gap {_pm(gap[0], gap_ci[0])}."
        )
    else:
        out.append(
            f"Final training error {_from_to(_change(tr), tr[0], tr[-1], at[0], at[-1])}, and final test error "
            f"{_from_to(_change(te), te[0], te[-1], at[0], at[-1])} (means over {seed_text})."
        )
        hi, lo = max(range(len(s)), key=lambda i: gap[i]), min(range(len(s)), key=lambda i: gap[i])
        ends = f"; it is {gap[0]:.2f} at {at[0]} and {gap[-1]:.2f} at {at[-1]}"
        if {hi, lo} == {0, len(s) - 1}:  # the ends are the extremes already named
            ends = ""
        if gap[hi] - gap[lo] < _SAME:  # no largest or smallest to name
            stays = _from_to("stays", gap[0], gap[-1], at[0], at[-1])
            out.append(f"The generalization gap (test − train error) {stays}.")
        else:
            out.append(
                f"The generalization gap (test − train error) is largest at {at[hi]} "
                f"({_pm(gap[hi], gap_ci[hi])}) and smallest at {at[lo]} ({_pm(gap[lo], gap_ci[lo])}){ends}."
            )
    best = s["best_test_error_mean"].tolist()
    gain = [a - b for a, b in zip(te, best, strict=True)]
    j = max(range(len(s)), key=lambda k: gain[k])
    if gain[j] < _SAME:
        out.append(
            f"Picking each run's best step on the test set (an optimistic oracle, not early stopping) would "
            f"lower the mean test error by less than {_SAME} everywhere."
        )
    else:
        out.append(
            f"Picking each run's best step on the test set (an optimistic oracle, not early stopping: the step "
            f"is chosen on the set it is scored on) would lower the mean test error by at most {gain[j]:.3f}, "
            f"at {at[j]} ({te[j]:.3f} → {best[j]:.3f})."
        )
    return out


def _threshold_sentence(s: pd.DataFrame, threshold: int | None, knob: str) -> str:
    """The interpolation-threshold sentence for the rows of one line over the knob."""
    if threshold is not None:
        row = s[s[knob] == threshold].iloc[0]
        params = "" if pd.isna(row["param_count"]) else f" ({int(row['param_count']):,} parameters)"
        return (
            f"Mean final training error is below {INTERPOLATION_TOL:.0%} at {knob}={threshold}{params} and at "
            f"every wider width: the interpolation threshold; there the final test error is "
            f"{_pm(row['final_test_error_mean'], row['final_test_error_ci95'])}."
        )
    tr = s["final_train_error_mean"].tolist()
    i = min(range(len(s)), key=lambda k: tr[k])
    return (
        f"No width has a mean final training error below {INTERPOLATION_TOL:.0%} together with every wider "
        f"width (lowest: {tr[i]:.2f} at {knob}={s[knob].iloc[i]}), so this line shows no interpolation "
        "threshold."
    )


def trend_sentences(
    summary: pd.DataFrame,
    thresholds: dict[tuple, int | None] | int | None = None,
    skipped: Sequence[SkippedTrial] = (),
    *,
    axes: Sequence[str] = ("C",),
    knob: str = "C",
    x: str | None = None,
) -> list[str]:
    """Sentences stating, per line, the trend of final train/test error and gap along ``x`` (default the
    knob), the interpolation threshold of each line over the knob and what the oracle best step would gain,
    with the measured numbers (means over seeds, ± 95% half-widths).

    A line is one value combination of the varying axes other than ``x``; its sentences start ``For
    lr=0.05: ...`` (no prefix when no other axis varies). thresholds: :func:`analysis.aggregate.thresholds`
    (or one width or None for a one-line sweep).
    """
    x = x or knob
    if not isinstance(thresholds, dict):
        thresholds = {(): thresholds}
    s = summary[summary["n_seeds"] > 0].sort_values([a for a in axes if a in summary.columns])
    if s.empty:
        return ["No trial finished, so there is nothing to summarise."]
    seeds = s["n_seeds"]
    seed_text = seed_range_text(seeds.min(), seeds.max())
    group_axes = varying(s, line_axes(axes, x))
    knob_others = line_axes(axes, knob)
    out: list[str] = []
    groups = [((), s)] if not group_axes else [
        (k if isinstance(k, tuple) else (k,), g) for k, g in s.groupby(group_axes, sort=True)]
    for key, g in groups:
        prefix = f"For {combo_text(group_axes, key)}: " if group_axes else ""
        g = g.sort_values(x).reset_index(drop=True)
        out += [_prefixed(prefix, t) for t in _along(g, x, seed_text)]
        if x == knob:
            line_key = tuple(g[a].iloc[0] for a in knob_others if a in g.columns)
            out.append(_prefixed(prefix, _threshold_sentence(g, thresholds.get(line_key), knob)))
    if x != knob and s[knob].nunique() > 1:
        line_group = varying(s, knob_others)
        for key, g in ([((), s)] if not line_group else s.groupby(line_group, sort=True)):
            key = key if isinstance(key, tuple) else (key,)
            prefix = f"For {combo_text(line_group, key)}: " if line_group else ""
            line_key = tuple(g[a].iloc[0] for a in knob_others if a in g.columns)
            out.append(_prefixed(prefix, _threshold_sentence(g.sort_values(knob), thresholds.get(line_key), knob)))
    failed = [t for t in skipped if t.status == "FAILED"]
    if failed:
        out.append(f"{len(failed)} trial(s) failed and are left out of these numbers (listed below).")
    return out


def hardware_lines(runs: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """Markdown lines on the machines that trained the analysed runs (tags :data:`sweep.names.HARDWARE_IDENTITY`):
    one line per distinct machine, and a warning for every grid point whose seeds ran on different ones, since
    their numbers are then not comparable bit for bit. Empty when no run carries the tags."""
    tags = [t for t in HARDWARE_IDENTITY if t in runs.columns]
    if not tags or runs[tags].isna().all().all():
        return []
    described = runs[tags].fillna("-").astype(str).agg(" | ".join, axis=1)
    lines = ["", "## Hardware", "", f"Machines that trained these runs ({' | '.join(tags)}):", ""]
    lines += [f"- {machine}: {n} run(s)" for machine, n in described.value_counts().sort_index().items()]
    for point, machines in described.groupby([runs[a] for a in axes], sort=True):
        if machines.nunique() > 1:
            where = combo_text(axes, point if isinstance(point, tuple) else (point,))
            lines.append(f"- **Note:** the seeds of {where} ran on {machines.nunique()} different machines; their "
                         "numbers are not comparable bit for bit (rounding differs between CPU types and BLAS builds).")
    return lines


def write_summary_csv(summary: pd.DataFrame, path: Path) -> Path:
    """The per-grid-point summary table as CSV (one row per grid point, one column per axis; full precision;
    an empty cell is NaN, e.g. the CI of a single seed)."""
    summary.to_csv(path, index=False)
    return path


def _markdown_table(summary: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    qs = quantities(summary)
    names = list(qs.values())
    lines = [
        "| " + " | ".join(axes) + " | parameters | seeds | failed | " + " | ".join(names) + " |",
        "|" + "---:|" * (len(axes) + 3 + len(names)),
    ]
    for _, r in summary.iterrows():
        params = "?" if pd.isna(r["param_count"]) else f"{int(r['param_count']):,}"
        cells = [_pm(r[f"{q}_mean"], r[f"{q}_ci95"], 3) for q in qs]
        point = " | ".join(str(value_text(a, r[a]).split("=", 1)[1]) for a in axes)
        first = f"| {point} | {params} | {int(r['n_seeds'])} | {int(r['n_failed'])} | "
        lines.append(first + " | ".join(cells) + " |")
    return lines


def write_summary_md(
    summary: pd.DataFrame,
    sentences: Sequence[str],
    path: Path,
    *,
    sweep_id: str,
    header: dict[str, str] | None = None,
    skipped: Sequence[SkippedTrial] = (),
    figures: Sequence[str] = ("curves.png", "complexity.png", "heatmap.png"),
    axes: Sequence[str] = ("C",),
    x: str = "C",
    hardware: Sequence[str] = (),
) -> Path:
    """A Markdown report: header facts, findings, the per-grid-point table (mean ± 95% half-width, one column
    per axis), what the intervals cover, skipped trials, the machines (``hardware``: :func:`hardware_lines`)."""
    subject = "model width" if x == "C" else x
    lines = [f"# Sweep `{sweep_id}`: error against {subject}", ""]
    lines += [f"- {k}: {v}" for k, v in (header or {}).items()]
    lines += ["", "## Findings", ""] + [f"- {s}" for s in sentences]
    lines += [
        "", "## Per grid point", "",
        "One row per grid point (a value of every axis: " + ", ".join(axes) + "); nothing is pooled across an "
        "axis. Errors are misclassification rates (0–1) at the last logged step, mean over seeds ± the "
        "half-width of the 95% Student t-interval (no interval with one seed). The gap is test error minus "
        "train error. The oracle best-step test error is each run's minimum test error over steps: the step "
        "is picked on the test set itself, so it is an optimistic bound, not what early stopping would give "
        "(that needs a step chosen on held-out data other than the test set).",
        "",
        "**What the intervals cover:** the variation between seeds (initial weights and minibatch order) on "
        "one fixed train/test split (`split_seed`). They do not include the test set's sampling error (a "
        "different split, or new test images, would move every number) and are not intervals for the error "
        "on new data.",
        "",
    ]
    if "final_train_error_clean_mean" in summary.columns:
        lines += [
            "With label noise, the train error is measured against the labels the model was trained on (a "
            "fraction replaced by a wrong class), and the interpolation threshold refers to it; the train error "
            "on the true labels is the column so named.",
            "",
        ]
    lines += _markdown_table(summary, axes)
    if skipped:
        lines += ["", "## Skipped trials", ""] + [f"- {t.describe()}" for t in skipped]
    lines += list(hardware)
    # Plain artifact paths, not relative links: inside MLflow's artifact viewer a relative link resolves
    # against the UI's own URL and 404s; the files sit next to this one, under the parent run's analysis/.
    lines += ["", "## Figures", "", "Next to this file; on the sweep's parent run in MLflow under the artifact "
              "folder `analysis/`:", ""] + [f"- `analysis/{f}`" for f in figures]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
