"""``summary.csv`` and ``summary.md``: the per-C table, skipped trials, and sentences stating the trend.

Every number in the sentences comes from the summary table (see :func:`analysis.aggregate.summarize`);
nothing about the expected outcome is written here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.aggregate import INTERPOLATION_TOL, QUANTITIES, seed_range_text
from analysis.load import SkippedTrial

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


def _from_to(verb: str, a: float, b: float, c0: int, c1: int) -> str:
    if verb == "stays":
        return f"stays near {a:.2f} from C={c0} to C={c1} ({a:.2f} → {b:.2f})"
    return f"{verb} from {a:.2f} at C={c0} to {b:.2f} at C={c1}"


def trend_sentences(
    summary: pd.DataFrame, threshold: int | None, skipped: Sequence[SkippedTrial] = ()
) -> list[str]:
    """Sentences stating the trend of final train/test error and gap over C, the interpolation threshold and
    what early stopping would gain, with the measured numbers (means over seeds, ± 95% half-widths)."""
    s = summary[summary["n_seeds"] > 0].sort_values("C").reset_index(drop=True)
    if s.empty:
        return ["No trial finished, so there is nothing to summarise."]
    tr, te = s["final_train_error_mean"].tolist(), s["final_test_error_mean"].tolist()
    gap, gap_ci = s["final_gap_mean"].tolist(), s["final_gap_ci95"].tolist()
    widths = [int(c) for c in s["C"]]
    seeds = s["n_seeds"]
    seed_text = seed_range_text(seeds.min(), seeds.max())
    out: list[str] = []
    if len(s) == 1:
        train, test = _pm(tr[0], s["final_train_error_ci95"][0]), _pm(te[0], s["final_test_error_ci95"][0])
        out.append(
            f"Only C={widths[0]} was analysed ({seed_text}): final training error {train}, "
            f"final test error {test}, gap {_pm(gap[0], gap_ci[0])}."
        )
    else:
        c0, c1 = widths[0], widths[-1]
        out.append(
            f"Final training error {_from_to(_change(tr), tr[0], tr[-1], c0, c1)}, and final test error "
            f"{_from_to(_change(te), te[0], te[-1], c0, c1)} (means over {seed_text})."
        )
        hi, lo = max(range(len(s)), key=lambda i: gap[i]), min(range(len(s)), key=lambda i: gap[i])
        ends = f"; it is {gap[0]:.2f} at C={c0} and {gap[-1]:.2f} at C={c1}"
        if {hi, lo} == {0, len(s) - 1}:  # the ends are the extremes already named
            ends = ""
        out.append(
            f"The generalization gap (test − train error) is largest at C={widths[hi]} "
            f"({_pm(gap[hi], gap_ci[hi])}) and smallest at C={widths[lo]} ({_pm(gap[lo], gap_ci[lo])}){ends}."
        )
    if threshold is not None:
        row = s[s["C"] == threshold].iloc[0]
        params = "" if pd.isna(row["param_count"]) else f" ({int(row['param_count']):,} parameters)"
        out.append(
            f"Mean final training error first falls below {INTERPOLATION_TOL:.0%} at C={threshold}{params}, "
            f"the interpolation threshold; there the final test error is "
            f"{_pm(row['final_test_error_mean'], row['final_test_error_ci95'])}."
        )
    else:
        i = min(range(len(s)), key=lambda k: tr[k])
        out.append(
            f"No width reaches a mean final training error below {INTERPOLATION_TOL:.0%} "
            f"(lowest: {tr[i]:.2f} at C={widths[i]}), so this sweep shows no interpolation threshold."
        )
    gain = (s["final_test_error_mean"] - s["best_test_error_mean"]).tolist()
    j = max(range(len(s)), key=lambda k: gain[k])
    if gain[j] < _SAME:
        out.append(
            f"Early stopping at the best step would lower the mean test error by less than {_SAME} "
            "at every C."
        )
    else:
        out.append(
            f"Stopping each run at its best step would lower the mean test error by at most {gain[j]:.3f}, "
            f"at C={widths[j]} ({te[j]:.3f} → {s['best_test_error_mean'][j]:.3f})."
        )
    failed = [t for t in skipped if t.status == "FAILED"]
    if failed:
        out.append(f"{len(failed)} trial(s) failed and are left out of these numbers (listed below).")
    return out


def write_summary_csv(summary: pd.DataFrame, path: Path) -> Path:
    """The per-C summary table as CSV (full precision; an empty cell is NaN, e.g. the CI of a single seed)."""
    summary.to_csv(path, index=False)
    return path


def _markdown_table(summary: pd.DataFrame) -> list[str]:
    names = [QUANTITIES[q] for q in QUANTITIES]
    lines = [
        "| C | parameters | seeds | failed | " + " | ".join(names) + " |",
        "|---:|---:|---:|---:|" + "---:|" * len(names),
    ]
    for _, r in summary.iterrows():
        params = "?" if pd.isna(r["param_count"]) else f"{int(r['param_count']):,}"
        cells = [_pm(r[f"{q}_mean"], r[f"{q}_ci95"], 3) for q in QUANTITIES]
        first = f"| {int(r['C'])} | {params} | {int(r['n_seeds'])} | {int(r['n_failed'])} | "
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
) -> Path:
    """A Markdown report: header facts, findings, the per-C table (mean ± 95% half-width), skipped trials."""
    lines = [f"# Sweep `{sweep_id}`: error against model width", ""]
    lines += [f"- {k}: {v}" for k, v in (header or {}).items()]
    lines += ["", "## Findings", ""] + [f"- {s}" for s in sentences]
    lines += [
        "", "## Per width", "",
        "Errors are misclassification rates (0–1) at the last logged step, mean over seeds ± the half-width "
        "of the 95% Student t-interval (no interval with one seed). The gap is test error minus train error; "
        "the best-step test error is each run's minimum test error over steps (what early stopping would "
        "give).",
        "",
    ]
    lines += _markdown_table(summary)
    if skipped:
        lines += ["", "## Skipped trials", ""] + [f"- {t.describe()}" for t in skipped]
    # Plain artifact paths, not relative links: inside MLflow's artifact viewer a relative link resolves
    # against the UI's own URL and 404s; the files sit next to this one, under the parent run's analysis/.
    lines += ["", "## Figures", "", "Next to this file; on the sweep's parent run in MLflow under the artifact "
              "folder `analysis/`:", ""] + [f"- `analysis/{f}`" for f in figures]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
