"""``search.algorithm: refine``: the next width by hand-worked cases (no Ray), then on real Ray and MLflow: a
toy family whose curve is a closed form (the bend must be found with fewer trials than the integer grid), the
Bernoulli mixture, and a SIGKILLed driver then ``sweep resume``."""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import pytest
from mlflow import MlflowClient

from models import get_family
from models.family import MetricInfo, Panel, ThresholdRule
from models.records import Evaluation, MetricRecord
from models.spec import PositiveInt
from record import TAG_REFINE_ORDER, TAG_REFINE_REASON
from sweep.refine import Curve, Measured, next_value
from tests.conftest import resume, run_sweep, run_then_kill_driver, trial_runs
from tests.sweep.test_families import ToyConfig, ToyFamily, ToyModelSpec, ToySpec, ToyTrainer, registered

RESNET = get_family("resnet")


def measured(test: float, train: float, half: float = 0.01) -> Measured:
    return Measured(test, half, train, half)


# -- the choice, by hand (no Ray) -------------------------------------------------------------------------------

def test_the_threshold_bracket_comes_first_and_is_split_at_its_geometric_mean():
    curve = Curve("C", measured={1: measured(0.8, 0.7), 4: measured(0.3, 0.2), 16: measured(0.1, 0.005),
                                 64: measured(0.05, 0.0)})
    # train error crosses 1% between C=4 and C=16: sqrt(4 * 16) = 8
    value, why = next_value(curve, RESNET)
    assert value == 8 and "interpolation threshold's bracket" in why


def test_an_inner_test_error_peak_comes_before_a_larger_change_elsewhere():
    # no threshold bracket (every width fits), a test-error peak at C=16 (an inner maximum)
    curve = Curve("C", measured={1: measured(0.25, 0.0), 4: measured(0.2, 0.0), 16: measured(0.3, 0.0),
                                 64: measured(0.1, 0.0)})
    value, why = next_value(curve, RESNET)
    # the two intervals next to C=16: (4, 16) changes 0.1 and (16, 64) 0.2 over intervals of 0.02: the larger
    assert value == 32 and "maximum at C=16" in why
    assert next_value(Curve("C", measured={**curve.measured}, pending={"t": 32}), RESNET)[0] == 8


def test_an_interval_is_left_when_its_means_differ_less_than_their_intervals_or_it_holds_no_integer():
    flat = Curve("C", measured={1: measured(0.50, 0.9, 0.05), 8: measured(0.52, 0.9, 0.05),
                                9: measured(0.1, 0.9, 0.05)})
    # (1, 8): 0.02 apart with intervals of 0.05 each: resolved; (8, 9): no integer between
    assert next_value(flat, RESNET) is None
    # the largest change relative to its intervals when there is no bracket and no inner peak
    steep = Curve("C", measured={1: measured(0.9, 0.9), 4: measured(0.6, 0.9), 64: measured(0.0, 0.9)})
    value, why = next_value(steep, RESNET)
    assert value == 16 and "between C=4 and 64" in why


# -- a toy family with a closed-form curve (through Ray and MLflow) ------------------------------------------------
THRESHOLD_AT = 37  # train error 0.3 below W=37, 0 from there on
PEAK_AT = 20  # test error peaks there


def toy_errors(W: int, seed: int) -> tuple[float, float]:
    """(train_error, test_error) of the toy at width W: a step at THRESHOLD_AT and a peak at PEAK_AT."""
    train = 0.3 if W < THRESHOLD_AT else 0.0
    test = 0.4 - abs(W - PEAK_AT) / 200 + seed / 10_000
    return train + seed / 10_000, test


@dataclass(frozen=True)
class BendConfig(ToyConfig):
    budget: int = 2

    @property
    def eval_interval(self) -> int:
        return self.eval_every or 1


class BendTrainer(ToyTrainer):
    def run(self) -> Iterator[Evaluation]:
        for step in self.config.eval_steps():
            if step > self.step:
                self.step = step
                values = {s: toy_errors(self.config.W, s) for s in self.seeds}
                yield Evaluation(step, [MetricRecord(s, step, {"train_error": tr, "test_error": te,
                                                                "gap": te - tr}) for s, (tr, te) in values.items()])


class BendModelSpec(ToyModelSpec):
    family: Literal["bend"] = "bend"  # type: ignore[assignment]  # the toy's model keys under another name


class BendSpec(ToySpec):
    family_name = "bend"
    model: BendModelSpec
    budget: PositiveInt = 2


class BendFamily(ToyFamily):
    """The toy family's machinery with the closed-form curve above: a threshold and a test-error peak."""

    name, display_name = "bend", "Bend"
    metrics = (MetricInfo("train_error", "toy train error", "", False),
               MetricInfo("test_error", "toy test error", "", False), MetricInfo("gap", "test - train", "", False))
    complexity_panels = (Panel(("train_error", "test_error", "gap"), "toy error"),)
    curve_metrics, gap_metric = ("train_error", "test_error"), "gap"
    threshold = ThresholdRule("train_error", 0.01)
    table_metrics = (("train_error", "train_error"), ("test_error", "test_error"))
    spec_class, config_class, trainer_class = BendSpec, BendConfig, BendTrainer

    def param_count(self, config: ToyConfig) -> int:
        return config.W


@pytest.fixture
def bend_family():
    yield from registered(BendFamily(), sys.modules[__name__])


def test_refine_finds_the_bend_of_a_closed_form_curve_with_fewer_trials_than_the_integer_grid(
        ray_local, tmp_path, bend_family):
    (tmp_path / "bend.yaml").write_text("name: bend\nmodel: {family: bend, W: [1, 64]}\nseeds: 2\n"
                                        "search: {algorithm: refine, num_samples: 16}\n")
    sweep = run_sweep(tmp_path, str(tmp_path / "bend.yaml"))
    runs = trial_runs(sweep)
    assert all(r.info.status == "FINISHED" for r in runs)
    by_width: dict[int, list] = defaultdict(list)
    for r in runs:
        by_width[int(r.data.params["W"])].append(r)
    assert all(len(v) == 2 for v in by_width.values())  # both seeds of every width, one trial each
    widths = sorted(by_width)
    assert len(widths) <= 16 < 64  # the integer grid from 1 to 64 would be 64 widths
    # the bend is found exactly: the threshold's bracket is refined down to adjacent integers
    assert {THRESHOLD_AT - 1, THRESHOLD_AT} <= set(widths)
    orders = sorted(int(r.data.tags[TAG_REFINE_ORDER]) for r in runs if r.data.tags["seed"] == "0")
    assert orders == list(range(1, len(widths) + 1))
    assert all(r.data.tags[TAG_REFINE_REASON] for r in runs)
    summary = (tmp_path / "sweep_results" / sweep.sweep_id / "summary.md").read_text()
    assert f"The interpolation threshold is W={THRESHOLD_AT}: W={THRESHOLD_AT - 1} is at or above 1%" in summary
    assert "The choice looked at test metrics" in summary and "not model selection" in summary
    assert "the full integer grid from W=1 to W=64 would have cost 64 x 2 = 128 runs" in summary


def test_refine_on_the_mixture_with_a_small_budget(ray_local, tmp_path):
    sweep = run_sweep(tmp_path, "em", "--set", "model.K=[1,20]", "--set", "seeds=2", "--set", "budget=4",
                      "--set", "search.algorithm=refine", "--set", "search.num_samples=4", "--set", "name=em-refine")
    runs = trial_runs(sweep)
    widths = sorted({int(r.data.params["K"]) for r in runs})
    # the starting values, then at most num_samples in all: it stops early once the means differ by less than
    # their seed intervals (wide with two seeds: 12.7 standard errors)
    assert 3 <= len(widths) <= 4 and widths[0] == 1 and widths[-1] == 20
    assert all(r.info.status == "FINISHED" and r.data.tags[TAG_REFINE_REASON] for r in runs)
    summary = (tmp_path / "sweep_results" / sweep.sweep_id / "summary.md").read_text()
    assert "## Refinement" in summary and "test_loglik" in summary
    assert "threshold" not in summary.split("## Refinement")[1].split("##")[0]  # the mixture declares none


def test_a_killed_driver_then_resume_finishes_a_refine_search_without_training_a_width_twice(tmp_path, ray_address):
    """The resume connects to the tests' Ray (a resume on a fresh Ray of its own: test_faults.py)."""
    (tmp_path / "long.yaml").write_text(
        "name: longrefine\nmodel: {C: [17, 24]}\nseeds: [0]\nbudget: 1500\neval_every: 25\ncheckpoint_every: 6\n"
        "search: {algorithm: refine, num_samples: 4}\n")
    uri, env = run_then_kill_driver(tmp_path, "long.yaml", "train_error", 15)
    from sweep import driver

    sweep = driver.load_sweep(None, uri)
    resumed = resume(tmp_path, sweep.sweep_id, env, ray_address)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client = MlflowClient(uri)
    assert client.get_run(sweep.parent_run_id).info.status == "FINISHED"
    finished: dict[int, list] = defaultdict(list)
    for r in trial_runs(sweep):
        if r.info.status == "FINISHED":
            finished[int(r.data.params["C"])].append(r)
        else:  # a width re-suggested after the restart: its first run, ended with a reason
            assert r.info.status == "KILLED" and r.data.tags["failure_reason"].startswith("superseded")
    assert all(len(v) == 1 for v in finished.values())  # no width trained (and counted) twice
    assert 2 <= len(finished) <= 4 and {17, 24} <= set(finished)
    assert not math.isnan(finished[17][0].data.metrics["test_error"])
