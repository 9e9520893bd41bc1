"""The progress line's ETA (issue 16, item 9), driven by a fake clock and fake trials: no Ray started."""

from __future__ import annotations

import io
from dataclasses import dataclass

from sweep.callbacks import Progress


@dataclass
class FakeTrial:
    trial_id: str
    status: str = "PENDING"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def setup(n: int = 4) -> tuple[Progress, Clock, list[FakeTrial], io.StringIO]:
    clock, out = Clock(), io.StringIO()
    return Progress(every_s=5.0, min_measured_s=15.0, clock=clock, stream=out), clock, \
        [FakeTrial(f"t{i}") for i in range(n)], out


def test_no_eta_before_any_progress_nor_on_the_first_tiny_fraction():
    progress, clock, trials, out = setup()
    trials[0].status = "RUNNING"
    clock.t = 9.0  # Ray's start: nothing measured yet
    progress.on_trial_result(0, trials, trials[0], {"progress": 0.0})
    # The old code's first line: 25 of 4000 updates of one trial of four after 9 s -> ETA 5751 s.
    clock.t = 15.0
    progress.on_trial_result(1, trials, trials[0], {"progress": 25 / 4000})
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(line.endswith("ETA measuring") for line in lines), lines


def test_eta_is_the_rate_measured_since_the_first_progress():
    progress, clock, trials, out = setup()
    for t in trials:
        t.status = "RUNNING"
    clock.t = 10.0  # first progress at t=10 (trial 0 at 10%: overall 0.025); then all four at 10%
    for t in trials:
        progress.on_trial_result(0, trials, t, {"progress": 0.10})
    clock.t = 20.0  # 10 s measured: under min_measured_s (15 s), still no ETA
    progress.on_trial_result(1, trials, trials[0], {"progress": 0.30})
    assert out.getvalue().splitlines()[-1].endswith("ETA measuring")
    clock.t = 30.0  # 20 s measured; overall = (0.5 + 0.1 * 3) / 4 = 0.2, i.e. 0.1 in 20 s
    progress.on_trial_result(2, trials, trials[0], {"progress": 0.50})
    # by hand: 0.2 - 0.025 = 0.175 done in 20 s, 0.8 left: 20 * 0.8 / 0.175 = 91.4 s
    # (the old formula, elapsed * left / done, said 30 * 0.8 / 0.2 = 120 s)
    assert out.getvalue().splitlines()[-1] == (
        "[sweep] trials: 0 done, 4 running, 0 pending | 20% | elapsed 30s | ETA 91s")


def test_lines_are_rate_limited_but_trial_ends_always_print():
    progress, clock, trials, out = setup(2)
    trials[0].status = "RUNNING"
    progress.on_trial_result(0, trials, trials[0], {"progress": 0.1})
    clock.t = 1.0
    progress.on_trial_result(1, trials, trials[0], {"progress": 0.2})  # 1 s after the last line: silent
    assert len(out.getvalue().splitlines()) == 1
    trials[0].status = "TERMINATED"
    progress.on_trial_complete(2, trials, trials[0])
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("[sweep] trials: 1 done, 0 running, 1 pending | 50% |"), last
