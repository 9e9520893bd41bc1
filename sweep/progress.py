"""What the user sees while a sweep runs: trials done / running / pending and an ETA, every few seconds."""

from __future__ import annotations

import sys
import time
from typing import Any

from ray import tune


class Progress(tune.Callback):
    """Prints one line at most every ``every_s`` seconds and when a trial ends.

    The ETA extrapolates elapsed time by the fraction of all trials' steps done so far.
    """

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s = every_s
        self.started = time.monotonic()
        self.last = 0.0
        self.progress: dict[str, float] = {}

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any) -> None:
        self.progress[trial.trial_id] = float(result.get("progress", 0.0))
        if time.monotonic() - self.last >= self.every_s:
            self._print(trials)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.progress[trial.trial_id] = 1.0
        self._print(trials)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.progress[trial.trial_id] = 1.0
        self._print(trials)

    def _print(self, trials: list[Any]) -> None:
        self.last = time.monotonic()
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        running = sum(t.status == "RUNNING" for t in trials)
        pending = len(trials) - done - running
        fraction = sum(self.progress.get(t.trial_id, 0.0) for t in trials) / max(1, len(trials))
        elapsed = self.last - self.started
        eta = f"{elapsed * (1 - fraction) / fraction:.0f}s" if fraction > 0 else "?"
        print(f"[sweep] trials: {done} done, {running} running, {pending} pending | "
              f"{100 * fraction:.0f}% | elapsed {elapsed:.0f}s | ETA {eta}", file=sys.stderr, flush=True)
