"""``summary.csv`` and ``summary.md``: the per-grid-point table, skipped trials, and sentences stating the trend.

One report for every family, configured by its declarations (:mod:`models.family`): the (train, test) curve
pair's trend, the gap metric's extremes, the best-step oracle of each ``best`` quantity, the threshold rule,
and any other panel metric's trend and best value. Every number in the sentences comes from the summary table
(:func:`analysis.aggregate.summarize`); nothing about the expected outcome is written here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.aggregate import (
    combo_text,
    default_family,
    line_axes,
    seed_range_text,
    table_quantities,
    value_text,
    varying,
)
from analysis.load import SkippedTrial
from models.family import Family
from record import HARDWARE_IDENTITY

_SAME = 0.005  # means closer than this count as unchanged in the sentences


def _pm(mean: float, half: float, digits: int = 2) -> str:
    """``0.70 ± 0.05``, or ``0.70`` (one seed: no interval), or ``n/a``."""
    if pd.isna(mean):
        return "n/a"
    mean = float(mean)
    return f"{mean:.{digits}f}" if pd.isna(half) else f"{mean:.{digits}f} ± {float(half):.{digits}f}"


def _change(values: Sequence[float]) -> str:
    """Verb phrase for a series along x: falls / rises (monotonically or not) / stays."""
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


def _series(s: pd.DataFrame, family: Family, metric: str) -> tuple[list[float], list[float]]:
    column = family.final_column(metric)
    return s[f"{column}_mean"].tolist(), s[f"{column}_ci95"].tolist()


def _along(s: pd.DataFrame, x: str, seed_text: str, family: Family) -> list[str]:
    """The sentences of one line (rows sorted by ``x``, at least one): the curve pair's trend, the gap's
    extremes, the oracles, and the other panel metrics' trends."""
    train, test = (family.metric(m) for m in family.curve_metrics)
    (tr, tr_ci), (te, te_ci) = _series(s, family, train.name), _series(s, family, test.name)
    at = [value_text(x, v) for v in s[x]]
    if len(s) == 1:
        gap = ""
        if family.gap_metric:
            mean, half = (v[0] for v in _series(s, family, family.gap_metric))
            gap = f", {family.metric(family.gap_metric).words} {_pm(mean, half)}"
        out = [f"Only {at[0]} was analysed ({seed_text}): final {train.words} {_pm(tr[0], tr_ci[0])}, "
               f"final {test.words} {_pm(te[0], te_ci[0])}{gap}."]
    else:
        out = [f"Final {train.words} {_from_to(_change(tr), tr[0], tr[-1], at[0], at[-1])}, and final {test.words} "
               f"{_from_to(_change(te), te[0], te[-1], at[0], at[-1])} (means over {seed_text})."]
        if family.gap_metric:
            out.append(_gap_sentence(s, family, at))
    out += [_oracle_sentence(s, q.metric, q.column, family, at) for q in family.quantities if q.kind == "best"
            and f"{q.column}_mean" in s]
    covered = {*family.curve_metrics, family.gap_metric}
    for metric in (m for panel in family.complexity_panels for m in panel.metrics if m not in covered):
        values, _ = _series(s, family, metric)
        info = family.metric(metric)
        best = max(range(len(s)), key=lambda k: values[k] if info.higher_is_better else -values[k])
        out.append(f"Final {info.words} {_from_to(_change(values), values[0], values[-1], at[0], at[-1])}; best "
                   f"({'highest' if info.higher_is_better else 'lowest'}) {values[best]:.4g} at {at[best]}.")
    return out


def _gap_sentence(s: pd.DataFrame, family: Family, at: list[str]) -> str:
    gap, gap_ci = _series(s, family, family.gap_metric)
    words = family.metric(family.gap_metric).words
    hi, lo = max(range(len(s)), key=lambda i: gap[i]), min(range(len(s)), key=lambda i: gap[i])
    if gap[hi] - gap[lo] < _SAME:  # no largest or smallest to name
        return f"The {words} {_from_to('stays', gap[0], gap[-1], at[0], at[-1])}."
    ends = "" if {hi, lo} == {0, len(s) - 1} else f"; it is {gap[0]:.2f} at {at[0]} and {gap[-1]:.2f} at {at[-1]}"
    return (f"The {words} is largest at {at[hi]} ({_pm(gap[hi], gap_ci[hi])}) and smallest at {at[lo]} "
            f"({_pm(gap[lo], gap_ci[lo])}){ends}.")


def _oracle_sentence(s: pd.DataFrame, metric: str, column: str, family: Family, at: list[str]) -> str:
    """What picking each run's best step of ``metric`` would gain: an oracle, since the step is picked on the
    very set it is scored on."""
    info = family.metric(metric)
    final, _ = _series(s, family, metric)
    best = s[f"{column}_mean"].tolist()
    gain = [abs(a - b) for a, b in zip(final, best, strict=True)]
    j = max(range(len(s)), key=lambda k: gain[k])
    verb = "raise" if info.higher_is_better else "lower"
    if gain[j] < _SAME:
        return (f"Picking each run's best step on the test set (an optimistic oracle, not early stopping) would "
                f"{verb} the mean {info.words} by less than {_SAME} everywhere.")
    return (f"Picking each run's best step on the test set (an optimistic oracle, not early stopping: the step is "
            f"chosen on the set it is scored on) would {verb} the mean {info.words} by at most {gain[j]:.3f}, at "
            f"{at[j]} ({final[j]:.3f} → {best[j]:.3f}).")


def _threshold_sentence(s: pd.DataFrame, threshold: int | None, knob: str, family: Family) -> str:
    """The family's threshold sentence for the rows of one line over the knob."""
    rule = family.threshold
    assert rule is not None
    metric = family.metric(rule.metric)
    column = f"{family.final_column(rule.metric)}_mean"
    if threshold is not None:
        row = s[s[knob] == threshold].iloc[0]
        params = "" if pd.isna(row["param_count"]) else f" ({int(row['param_count']):,} parameters)"
        test = family.final_column(family.curve_metrics[1])
        return (f"Mean final {metric.words} is below {rule.below:.0%} at {knob}={threshold}{params} and at every "
                f"larger {knob}: the {rule.name}; there the final {family.metric(family.curve_metrics[1]).words} is "
                f"{_pm(row[f'{test}_mean'], row[f'{test}_ci95'])}.")
    values = s[column].tolist()
    i = min(range(len(s)), key=lambda k: values[k])
    return (f"No {knob} has a mean final {metric.words} below {rule.below:.0%} together with every larger one "
            f"(lowest: {values[i]:.2f} at {knob}={s[knob].iloc[i]}), so this line shows no {rule.name}.")


def trend_sentences(summary: pd.DataFrame, thresholds: dict[tuple, int | None] | int | None = None,
                    skipped: Sequence[SkippedTrial] = (), *, axes: Sequence[str] = ("C",), knob: str = "C",
                    x: str | None = None, family: Family | None = None) -> list[str]:
    """Sentences stating, per line, the trends along ``x`` (default the knob) with the measured numbers (means
    over seeds, ± 95% half-widths), the family's threshold of each line over the knob and what the oracle best
    step would gain. A line is one value combination of the varying axes other than ``x``; its sentences start
    ``For lr=0.05: ...`` (no prefix when no other axis varies)."""
    family = default_family(family)
    x = x or knob
    if not isinstance(thresholds, dict):
        thresholds = {(): thresholds}
    s = summary[summary["n_seeds"] > 0].sort_values([a for a in axes if a in summary.columns])
    if s.empty:
        return ["No trial finished, so there is nothing to summarise."]
    seed_text = seed_range_text(s["n_seeds"].min(), s["n_seeds"].max())
    knob_others = line_axes(axes, knob)
    out: list[str] = []
    for prefix, g in _lines(s, varying(s, line_axes(axes, x))):
        g = g.sort_values(x).reset_index(drop=True)
        out += [_prefixed(prefix, t) for t in _along(g, x, seed_text, family)]
        if x == knob and family.threshold:
            line_key = tuple(g[a].iloc[0] for a in knob_others if a in g.columns)
            out.append(_prefixed(prefix, _threshold_sentence(g, thresholds.get(line_key), knob, family)))
    if x != knob and s[knob].nunique() > 1 and family.threshold:
        for prefix, g in _lines(s, varying(s, knob_others)):
            line_key = tuple(g[a].iloc[0] for a in knob_others if a in g.columns)
            out.append(_prefixed(prefix, _threshold_sentence(g.sort_values(knob), thresholds.get(line_key), knob,
                                                             family)))
    failed = [t for t in skipped if t.status == "FAILED"]
    if failed:
        out.append(f"{len(failed)} trial(s) failed and are left out of these numbers (listed below).")
    return out


def _lines(s: pd.DataFrame, group_axes: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """(sentence prefix, rows) per value combination of ``group_axes``."""
    if not group_axes:
        return [("", s)]
    return [(f"For {combo_text(group_axes, k if isinstance(k, tuple) else (k,))}: ", g)
            for k, g in s.groupby(group_axes, sort=True)]


def hardware_lines(runs: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """Markdown lines on the machines that trained the analysed runs (tags :data:`record.HARDWARE_IDENTITY`):
    one line per distinct machine, and a note for every grid point whose seeds ran on different ones, since
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


def _markdown_table(summary: pd.DataFrame, axes: Sequence[str], family: Family) -> list[str]:
    """One row per grid point, a column per quantity that does not repeat another (:func:`table_quantities`)."""
    shown = table_quantities(summary, family)
    lines = ["| " + " | ".join(axes) + " | parameters | seeds | failed | " + " | ".join(shown.values()) + " |",
             "|" + "---:|" * (len(axes) + 3 + len(shown))]
    for _, r in summary.iterrows():
        params = "?" if pd.isna(r["param_count"]) else f"{int(r['param_count']):,}"
        point = " | ".join(value_text(a, r[a]).split("=", 1)[1] for a in axes)
        cells = [_pm(r[f"{q}_mean"], r[f"{q}_ci95"], 3) for q in shown]
        lines.append(f"| {point} | {params} | {int(r['n_seeds'])} | {int(r['n_failed'])} | " + " | ".join(cells) + " |")
    notes = [q.note for q in family.quantities if q.note and q.column in shown]
    return lines + [line for note in notes for line in ("", note)]


def write_summary_md(summary: pd.DataFrame, sentences: Sequence[str], path: Path, *, sweep_id: str,
                     header: dict[str, str] | None = None, skipped: Sequence[SkippedTrial] = (),
                     figures: Sequence[str] = ("curves.png", "complexity.png", "heatmap.png"),
                     axes: Sequence[str] = ("C",), x: str = "C", hardware: Sequence[str] = (),
                     sections: Sequence[str] = (), family: Family | None = None, title: str | None = None) -> Path:
    """A Markdown report: header facts, findings, the family's metrics, the per-grid-point table (mean ± 95%
    half-width, one column per axis), what the intervals cover, ``sections`` (a search's), skipped trials, the
    machines (``hardware``: :func:`hardware_lines`), and the figures by artifact path. ``title``: what follows
    the sweep id in the heading (default: the family's final values against ``x``)."""
    family = default_family(family)
    subject = family.knob_meaning if x == family.knob else x
    lines = [f"# Sweep `{sweep_id}`: {title or f'{family.display_name}, final values against {subject}'}", ""]
    lines += [f"- {k}: {v}" for k, v in (header or {}).items()]
    lines += ["", "## Findings", ""] + [f"- {s}" for s in sentences]
    lines += ["", "## Metrics", ""] + [
        f"- `{m.name}`: {m.meaning}{f' ({m.unit})' if m.unit else ''}, {'higher' if m.higher_is_better else 'lower'} "
        "is better" for m in family.metrics]
    best = [q for q in family.quantities if q.kind == "best"]
    oracle = (" The oracle best-step value is each run's best value over steps: the step is picked on the test set "
              "itself, so it is an optimistic bound, not what early stopping would give (that needs a step chosen on "
              "held-out data other than the test set).") if best else ""
    lines += [
        "", "## Per grid point", "",
        "One row per grid point (a value of every axis: " + ", ".join(axes) + "); nothing is pooled across an "
        "axis. Values are at the last logged step, mean over seeds ± the half-width of the 95% Student "
        "t-interval (no interval with one seed)." + oracle, "",
        "**What the intervals cover:** the variation between seeds (initial weights and minibatch order) on "
        "one fixed train/test split (`split_seed`). They do not include the test set's sampling error (a "
        "different split, or new test images, would move every number) and are not intervals for the error "
        "on new data.", "",
    ]
    lines += _markdown_table(summary, axes, family)
    lines += list(sections)
    if skipped:
        lines += ["", "## Skipped trials", ""] + [f"- {t.describe()}" for t in skipped]
    lines += list(hardware)
    # Plain artifact paths, not relative links: inside MLflow's artifact viewer a relative link resolves
    # against the UI's own URL and 404s; the files sit next to this one, under the parent run's analysis/.
    lines += ["", "## Figures", "", "Next to this file; on the sweep's parent run in MLflow under the artifact "
              "folder `analysis/`:", ""] + [f"- `analysis/{f}`" for f in figures]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
