"""``search.algorithm: refine``: the knob's values chosen where the complexity curve is least resolved.

A Ray Tune :class:`~ray.tune.search.Searcher` (so it runs on a cluster like any search): it starts from the
grid's values of the knob and, each time a value's seeds have finished, picks the next integer value inside the
interval between two measured neighbours that most needs one, in this order of priority:

1. the bracket of the family's threshold (the ResNet's interpolation threshold: train error crossing 1%);
2. the intervals next to the maximum of the watched metric (the family's test curve metric: the test-error peak
   of double descent; the mixture's best test log-likelihood);
3. the interval whose seed means differ most relative to their seed intervals (95% t half-widths).

An interval is refined only while it is wider than one integer and its means differ by more than their
intervals (in the watched metric or the threshold's); the search stops when ``num_samples`` values have run or
no interval qualifies. The next value is the integer nearest the interval's geometric mean (the knob's axis is
log2). This is the shape of python-adaptive's ``Learner1D`` (the interval with the largest loss next) on Tune's
suggest/complete cycle, with integer points and seed intervals; ``adaptive`` itself works on real x, drives its
own loop and knows no seeds, so it is not used.

Each value's seeds train packed in one trial; its runs carry tags ``refine.order`` and ``refine.reason``. The
choice looks at test metrics: the study is descriptive (where does this curve bend), not model selection.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass, field
from typing import Any

from ray.tune.search import Searcher
from scipy import stats

from models.family import Family
from models.spec import CommonSpec
from record import TAG_REFINE_ORDER, TAG_REFINE_REASON


@dataclass
class Measured:
    """One knob value's outcome: mean and 95% t half-width over seeds of the watched metric and of the threshold
    metric (NaN half-width with one seed; NaN means for a value whose trial failed)."""

    watched: float
    watched_half: float
    threshold: float = math.nan
    threshold_half: float = math.nan


def half_width(std: float, n: int) -> float:
    """95% two-sided Student t half-width of a mean of ``n`` values with sample std ``std``; NaN for n < 2."""
    if n < 2 or not math.isfinite(std):
        return math.nan
    return float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


@dataclass
class Curve:
    """What the searcher knows: measured values, values being trained, and why each was chosen."""

    knob: str
    measured: dict[int, Measured] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)  # Tune trial id -> knob value
    order: list[tuple[int, str]] = field(default_factory=list)  # (knob value, reason), in the order chosen

    def known(self) -> set[int]:
        return set(self.measured) | set(self.pending.values())


def _changes(a: Measured, b: Measured, threshold: bool) -> float:
    """How much an interval's means differ relative to their intervals (> 1: more than the intervals), the larger
    of the watched metric's and the threshold metric's; a metric with one seed (no interval) counts a difference
    as resolved."""
    def ratio(x: float, y: float, hx: float, hy: float) -> float:
        if not (math.isfinite(x) and math.isfinite(y)):
            return 0.0
        unc = (hx if math.isfinite(hx) else 0.0) + (hy if math.isfinite(hy) else 0.0)
        diff = abs(y - x)
        return diff / unc if unc > 0 else (math.inf if diff > 0 else 0.0)

    watched = ratio(a.watched, b.watched, a.watched_half, b.watched_half)
    crossing = ratio(a.threshold, b.threshold, a.threshold_half, b.threshold_half) if threshold else 0.0
    return max(watched, crossing)


def _inside(a: int, b: int, taken: set[int]) -> int | None:
    """The integer strictly between ``a`` and ``b``, not taken, nearest their geometric mean (the knob's axis is
    log2); None when there is none."""
    centre = math.sqrt(a * b)
    free = [w for w in range(a + 1, b) if w not in taken]
    return min(free, key=lambda w: (abs(w - centre), w)) if free else None


def _bracket(curve: Curve, points: list[int], family: Family) -> tuple[int, int] | None:
    """The interval of measured values where the family's threshold falls: the value from which every larger one
    is below it, and the measured value before it (None without a rule, or when no crossing is measured)."""
    rule = family.threshold
    if rule is None:
        return None
    m = curve.measured
    tail = [w for w in points if all(m[v].threshold < rule.below for v in points if v >= w)]
    if not tail or tail[0] == points[0]:
        return None
    return points[points.index(tail[0]) - 1], tail[0]


def next_value(curve: Curve, family: Family) -> tuple[int, str] | None:
    """The next knob value and why, or None when no interval needs one (see the module docstring)."""
    m = curve.measured
    points = sorted(w for w, v in m.items() if math.isfinite(v.watched))
    if len(points) < 2:
        return None
    rule, watched, knob = family.threshold, family.curve_metrics[1], family.knob
    bracket = _bracket(curve, points, family)
    peak = max(points, key=lambda w: m[w].watched)
    if peak in (points[0], points[-1]):
        peak = None  # a maximum at an end is no peak: the curve is monotone there, the largest change leads
    best: tuple[tuple[int, float], int, str] | None = None
    for a, b in zip(points[:-1], points[1:], strict=True):
        value = _inside(a, b, curve.known())
        if value is None or any(a < p < b for p in curve.pending.values()):
            continue
        score = _changes(m[a], m[b], rule is not None)
        if score <= 1 and (a, b) != bracket:
            continue  # the means differ by less than their intervals: resolved enough
        tier = 2 if (a, b) == bracket else 1 if peak is not None and peak in (a, b) else 0
        if best is not None and (tier, score) <= best[0]:
            continue
        if tier == 2:
            assert rule is not None
            why = (f"the {rule.name}'s bracket: {rule.metric} {m[a].threshold:.3g} at {knob}={a}, "
                   f"{m[b].threshold:.3g} at {knob}={b}")
        elif tier == 1:
            why = f"next to the {watched} maximum at {knob}={peak} ({m[peak].watched:.3g})"
        else:
            why = (f"{watched} {m[a].watched:.3g} -> {m[b].watched:.3g} between {knob}={a} and {b}, "
                   f"{score:.1f}x its seed intervals")
        best = ((tier, score), value, why)
    return None if best is None else (best[1], best[2])


class RefineSearcher(Searcher):
    """Tune's searcher for ``search.algorithm: refine`` (module docstring). ``limit``: knob values in all
    (``search.num_samples``); ``max_concurrent``: values trained at once."""

    def __init__(self, spec: CommonSpec, max_concurrent: int = 1) -> None:
        super().__init__(metric=None, mode=None)
        self.family = spec.family
        self.start = [int(v) for v in spec.values(self.family.knob)]
        self.limit = spec.search.num_samples
        self.max_concurrent = max(1, max_concurrent)
        self.curve = Curve(self.family.knob)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the knob and metrics come from the family; nothing to take from Tune's config

    def suggest(self, trial_id: str) -> dict | str | None:
        curve = self.curve
        if len(curve.order) >= self.limit:
            return Searcher.FINISHED
        if len(curve.pending) >= self.max_concurrent:
            return None
        untried = [w for w in self.start if w not in curve.known()]
        if untried:
            choice = (untried[0], "a starting value (the grid's)")
        else:
            choice = next_value(curve, self.family)
            if choice is None:
                return None if curve.pending else Searcher.FINISHED
        value, reason = choice
        curve.pending[trial_id] = value
        curve.order.append((value, reason))
        return {"point": {self.family.knob: value},
                "run_tags": {TAG_REFINE_ORDER: str(len(curve.order)), TAG_REFINE_REASON: reason}}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        value = self.curve.pending.pop(trial_id, None)
        if value is None:
            return
        self.curve.measured[value] = self._measured(result if not error else None)

    def _measured(self, result: dict | None) -> Measured:
        if not result or not result.get("live_members"):
            return Measured(math.nan, math.nan)
        n = int(result["live_members"])
        watched = self.family.curve_metrics[1]
        out = Measured(float(result[watched]), half_width(float(result.get(f"{watched}_std", math.nan)), n))
        rule = self.family.threshold
        if rule is not None and rule.metric in result:
            out.threshold = float(result[rule.metric])
            out.threshold_half = half_width(float(result.get(f"{rule.metric}_std", math.nan)), n)
        return out

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.curve, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.curve = pickle.load(f)  # noqa: S301 - the searcher's own state file in the sweep's Tune folder
