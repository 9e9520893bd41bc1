"""Model families (issue 13): the interface, the Bernoulli mixture through the whole sweep path, and a third
toy family defined in this file and registered through the public interface only.

Fast tests run anywhere; the ones using ``ray_local`` start Ray and MLflow (run them under the heavy lock).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import pytest
import torch
from mlflow import MlflowClient
from pydantic import Field

from models import family_names, get_family, register
from models.digits import digits_arrays, split_indices
from models.family import Family, MetricInfo, Panel
from models.mixture.em import BernoulliMixtureEM
from models.mixture.family import MixtureConfig, mixture_data
from models.records import Evaluation, MetricRecord
from models.spec import CommonSpec, PositiveInt, Strict
from record import TAG_AXES, TAG_FAMILY, TAG_GRID_POINT, TAG_KNOB, TAG_WORKER_PID
from sweep import cli, driver
from sweep.plan import plan_trials
from sweep.spec import SpecError, load_spec
from tests.conftest import (
    histories,
    in_background,
    resume,
    run_sweep,
    run_sweep_killing_a_worker,
    run_then_kill_driver,
    trial_runs,
)
from tests.numerics import assert_same_em_records, em_tol
from tests.sweep.test_cli import no_compute, run_cli  # noqa: F401  (no_compute is a fixture)

MIXTURE_METRICS = ("train_loglik", "test_loglik", "loglik_gap", "train_error", "test_error", "bic")


# -- a third family, defined here and registered through models.family only ---------------------------------

@dataclass(frozen=True)
class ToyConfig:
    """W: the toy knob. The toy "trains" by a closed form, so every expected value is a formula."""

    W: int
    budget: int = 6
    eval_every: int | None = None
    split_seed: int = 0
    device: str = "cpu"
    dtype: str = "float64"

    @property
    def eval_interval(self) -> int:
        return self.eval_every or 2

    def axis_value(self, axis: str) -> object:
        return self.eval_interval if axis == "eval_every" else getattr(self, axis)

    def eval_steps(self) -> list[int]:
        steps = list(range(self.eval_interval, self.budget + 1, self.eval_interval))
        return steps if steps[-1] == self.budget else [*steps, self.budget]


def toy_scores(W: int, seed: int, step: int) -> tuple[float, float]:
    """(fit, held_out) of the toy after ``step`` steps: fit -> 1 as W * step grows; held_out pays 0.01 * W."""
    fit = 1.0 - 1.0 / (1.0 + W * step) + seed / 1000.0
    return fit, fit - 0.01 * W


class ToyTrainer:
    def __init__(self, config: ToyConfig, seeds: Sequence[int]) -> None:
        self.config, self.seeds, self.step, self.diverged = config, list(seeds), 0, {}

    ms_per_update = 0.0

    def run(self) -> Iterator[Evaluation]:
        for step in self.config.eval_steps():
            if step <= self.step:
                continue
            self.step = step
            records = []
            for seed in self.seeds:
                fit, held = toy_scores(self.config.W, seed, step)
                records.append(MetricRecord(seed, step, {"fit": fit, "held_out": held, "fit_gap": fit - held}))
            yield Evaluation(step, records)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]


class ToyModelSpec(Strict):
    family: Literal["toy"] = "toy"
    W: PositiveInt | list[PositiveInt]


class ToySpec(CommonSpec):
    family_name = "toy"
    model: ToyModelSpec
    budget: PositiveInt = 6
    eval_every: PositiveInt | None = None
    dtype: Literal["float64"] = "float64"
    shrink: float = Field(0.5, gt=0, description="a key only the toy family owns")


class ToyFamily(Family):
    name = "toy"
    display_name = "Toy"
    knob = "W"
    knob_meaning = "toy width"
    metrics = (MetricInfo("fit", "toy training score", "", True), MetricInfo("held_out", "toy test score", "", True),
               MetricInfo("fit_gap", "fit - held_out", "", False))
    complexity_panels = (Panel(("fit", "held_out"), "toy score"), Panel(("fit_gap",), "toy gap"))
    curve_metrics = ("fit", "held_out")
    gap_metric = "fit_gap"
    table_metrics = (("fit", "fit"), ("held_out", "held_out"))
    budget_unit = "toy step"
    axis_keys = {"W": "model.W"}
    spec_class = ToySpec
    config_class, trainer_class = ToyConfig, ToyTrainer  # what a closed-form toy that subclasses this swaps

    def make_config(self, values: dict[str, Any], spec: Any) -> ToyConfig:
        return self.config_class(**values, budget=spec.budget, eval_every=spec.eval_every,
                                 split_seed=spec.split_seed)

    def config_from_dict(self, d: dict[str, Any]) -> ToyConfig:
        return self.config_class(**d)

    def param_count(self, config: ToyConfig) -> int:
        return 3 * config.W

    def relative_cost(self, config: ToyConfig) -> float:
        return float(config.W)

    def member_params(self, config: ToyConfig, seed: int, split_hash: str) -> dict[str, Any]:
        return {"W": config.W, "seed": seed, "budget": config.budget, "eval_every": config.eval_interval,
                "split_seed": config.split_seed, "split_hash": split_hash, "model_family": self.name,
                "param_count": self.param_count(config), "dtype": config.dtype}

    def trainer(self, config: ToyConfig, seeds: Sequence[int], arrays: Any = None) -> ToyTrainer:
        return self.trainer_class(config, seeds)

    def export(self, trainer: ToyTrainer, seed: int) -> dict[str, Any]:
        return {"family": self.name, "config": asdict(trainer.config), "seed": seed, "step": trainer.step}


def registered(family: Family, *modules: Any) -> Iterator[Family]:
    """Register ``family`` for one test; Ray workers get it, and the test ``modules`` that define it, by value
    (test modules are not importable there)."""
    import cloudpickle
    from ray import cloudpickle as ray_cloudpickle

    from models import family as registry

    modules = (sys.modules[__name__], *modules)
    for pickler in (cloudpickle, ray_cloudpickle):
        for module in modules:
            pickler.register_pickle_by_value(module)
    yield register(family)
    registry._REGISTRY.pop(family.name, None)
    for pickler in (cloudpickle, ray_cloudpickle):
        for module in modules:
            pickler.unregister_pickle_by_value(module)


@pytest.fixture
def toy_family():
    yield from registered(ToyFamily())


# -- spec validation: one line, exit 2, before Ray ----------------------------------------------------------

BAD = [
    (["--set", "model.K=0"], ["'model.K'", "greater than 0", "1..898"]),
    (["--set", "model.K=[1,-2]"], ["'model.K[1]'", "greater than 0"]),
    (["--set", "model.K=899"], ["'model.K'", "less than or equal to 898", "training half"]),
    (["--set", "data.binarize_threshold=0"], ["'data.binarize_threshold'", "1..16"]),
    (["--set", "data.binarize_threshold=17"], ["'data.binarize_threshold'", "1..16"]),
    (["--set", "model.eps=0"], ["'model.eps'", "(0, 0.5)"]),
    (["--set", "model.eps=0.5"], ["'model.eps'", "(0, 0.5)"]),
    (["--set", "model.eps=-1e-3"], ["'model.eps'"]),
    (["--set", "lr=0.1"], ["'lr' belongs to family resnet", "not bernoulli_mixture"]),
    (["--set", "protocol=epochs"], ["'protocol' belongs to family resnet"]),
    (["--set", "model.C=4"], ["'model.C' belongs to family resnet", "under model: family, K, eps"]),
    (["--set", "data.label_noise=0.1"], ["'data.label_noise' belongs to family resnet"]),
    (["--set", "model.family=gmm"], ["unknown model.family 'gmm'", "known families: resnet, bernoulli_mixture"]),
    (["--set", "budget=0"], ["'budget'", "greater than 0"]),
    (["--set", "eval_every=101"], ["eval_every 101 is larger than the budget 100"]),
]
BAD_RESNET = [
    (["--set", "model.K=4"], ["'model.K' belongs to family bernoulli_mixture", "not resnet"]),
    (["--set", "data.binarize_threshold=8"], ["'data.binarize_threshold' belongs to family bernoulli_mixture"]),
    (["--set", "model.eps=0.1"], ["'model.eps' belongs to family bernoulli_mixture"]),
]


@pytest.mark.parametrize(("args", "expected"), [(["run", "em", *a], e) for a, e in BAD]
                         + [(["run", "smoke", *a], e) for a, e in BAD_RESNET])
def test_bad_mixture_input_is_one_line_and_exit_2_before_ray(args, expected, no_compute, capsys):  # noqa: F811
    code, err = run_cli(args, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("sweep: error: "), err
    for part in expected:
        assert part in err, (part, err)


def test_unknown_family_lists_the_registered_ones_including_a_new_one(toy_family):
    with pytest.raises(SpecError) as info:
        load_spec("em", ["model.family=nope"])
    assert str(info.value) == "unknown model.family 'nope'; known families: resnet, bernoulli_mixture, toy"
    assert family_names() == ["resnet", "bernoulli_mixture", "toy"]


# -- the em preset and the plan ----------------------------------------------------------------------------

def test_em_preset_is_the_issues_grid():
    spec, resolved = load_spec("em")
    assert spec.model.K == [1, 2, 3, 5, 10, 20, 40, 80] and spec.seed_list == [0, 1, 2, 3, 4]
    assert (spec.budget, spec.dtype, spec.model.eps, spec.data.binarize_threshold) == (100, "float64", 1e-6, 8)
    assert spec.axes == ("K",) and resolved["model"]["family"] == "bernoulli_mixture"
    configs = spec.configs()
    assert [c.K for c in configs] == [1, 2, 3, 5, 10, 20, 40, 80]
    assert all(c.eval_steps() == list(range(1, 101)) for c in configs)  # evaluated after every iteration
    groups = plan_trials(spec, slots=1)
    assert sorted((g.config.K, g.seeds) for g in groups) == [(k, (0, 1, 2, 3, 4)) for k in spec.model.K]
    assert [g.config.K for g in groups] == [80, 40, 20, 10, 5, 3, 2, 1]  # most expensive first
    group = next(g for g in groups if g.config.K == 10)
    params = group.family.member_params(group.config, 3, "abc")
    assert group.run_name(3) == "K=10 seed=3" and group.grid_point == "K=10"
    assert params["param_count"] == 10 * 64 + 9 and params["model_family"] == "bernoulli_mixture"
    assert (params["K"], params["seed"], params["eps"], params["binarize_threshold"]) == (10, 3, 1e-6, 8)


def test_a_list_of_thresholds_is_an_axis_after_K():
    spec, _ = load_spec("em", ["data.binarize_threshold=[4,8]", "model.K=[2,3]"])
    assert spec.axes == ("K", "binarize_threshold")
    assert [g.run_name(0) for g in plan_trials(spec, slots=1) if 0 in g.seeds] == [
        "K=3 binarize_threshold=4 seed=0", "K=3 binarize_threshold=8 seed=0",
        "K=2 binarize_threshold=4 seed=0", "K=2 binarize_threshold=8 seed=0"]


# -- the mixture's data and trainer -------------------------------------------------------------------------

def test_mixture_data_is_the_split_binarized_at_the_threshold():
    images, labels = digits_arrays()
    from sklearn.datasets import load_digits

    raw = load_digits().images.reshape(-1, 64)  # pixels 0..16 as scikit-learn ships them
    train_idx, test_idx = split_indices(3)
    for threshold in (1, 8, 16):
        x_train, y_train, x_test, y_test = mixture_data(3, threshold)
        assert x_train.shape == (898, 64) and x_test.shape == (899, 64) and x_train.dtype == torch.float64
        assert torch.equal(x_train, torch.from_numpy((raw[train_idx] >= threshold).astype("float64")))
        assert torch.equal(x_test, torch.from_numpy((raw[test_idx] >= threshold).astype("float64")))
        assert y_train.tolist() == labels[train_idx].tolist() and y_test.tolist() == labels[test_idx].tolist()


def em_reference(K: int, seeds: list[int], budget: int, threshold: int = 8, every: int = 1) -> dict:
    """{(seed, step): metrics} from BernoulliMixtureEM driven directly, one member at a time."""
    x_train, y_train, x_test, y_test = mixture_data(0, threshold)
    out = {}
    for seed in seeds:
        em = BernoulliMixtureEM(K, [seed], x_train)
        for step in range(1, budget + 1):
            em.step()
            if step % every == 0 or step == budget:
                (row,) = em.evaluate(x_train, y_train, x_test, y_test)
                out[(seed, step)] = {k: row[k] for k in MIXTURE_METRICS}
    return out


def test_mixture_trainer_records_are_the_em_class_run_directly():
    family = get_family("bernoulli_mixture")
    trainer = family.trainer(MixtureConfig(K=5, budget=12, eval_every=5), [0, 3])
    got = {(r.seed, r.step): r.metrics() for e in trainer.run() for r in e.records}
    expected = em_reference(5, [0, 3], 12, every=5)
    assert sorted(got) == sorted(expected) == [(s, t) for s in (0, 3) for t in (5, 10, 12)]
    for key, metrics in expected.items():  # two members packed against each alone: within float64 rounding
        assert_same_em_records(got[key], metrics, 898, 899, iterations=key[1])
    exported = family.export(trainer, 3)
    assert exported["family"] == "bernoulli_mixture" and exported["iteration"] == 12
    assert exported["p"].shape == (5, 64) and float(exported["pi"].sum()) == pytest.approx(1.0, abs=1e-12)
    assert family.weights_name(trainer.config, 3) == "model_K5_seed3.pt"


def test_mixture_trainer_resumes_bit_for_bit_from_its_state_dict():
    family = get_family("bernoulli_mixture")
    config = MixtureConfig(K=4, budget=10, eval_every=2)
    whole = [r.metrics() for e in family.trainer(config, [1]).run() for r in e.records]
    first = family.trainer(config, [1])
    head = []
    for evaluation in first.run():
        head += [r.metrics() for r in evaluation.records]
        if evaluation.step == 4:
            break
    state = first.state_dict()
    second = family.trainer(config, [1])
    second.load_state_dict(state)
    tail = [r.metrics() for e in second.run() for r in e.records]
    assert head + tail == whole  # exact: same float64 operations in the same order
    with pytest.raises(ValueError, match="another configuration"):
        family.trainer(MixtureConfig(K=4, budget=10, eval_every=2, eps=1e-3), [1]).load_state_dict(state)


# -- through Ray and MLflow (heavy) ---------------------------------------------------------------------------

EM_SMOKE = ["--set", "model.K=[2,5]", "--set", "seeds=2", "--set", "budget=15", "--set", "name=em-smoke"]


def test_em_smoke_sweep_through_ray_and_mlflow(ray_local, tmp_path):
    sweep = run_sweep(tmp_path, "em", *EM_SMOKE)
    client = MlflowClient(sweep.tracking_uri)
    parent = client.get_run(sweep.parent_run_id)
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert (tags[TAG_FAMILY], tags[TAG_KNOB], json.loads(tags[TAG_AXES])) == ("bernoulli_mixture", "K", ["K"])
    runs = {r.info.run_name: r for r in trial_runs(sweep)}
    assert sorted(runs) == ["K=2 seed=0", "K=2 seed=1", "K=5 seed=0", "K=5 seed=1"]
    expected = {K: em_reference(K, [0, 1], 15) for K in (2, 5)}
    for name, run in runs.items():
        K, seed = int(name.split()[0][2:]), int(name.split("seed=")[1])
        assert run.info.status == "FINISHED"
        assert run.data.tags[TAG_GRID_POINT] == f"K={K}" and run.data.tags["K"] == str(K)
        assert run.data.params["model_family"] == "bernoulli_mixture"
        assert run.data.params["param_count"] == str(64 * K + K - 1)
        assert run.data.tags["width"] == f"K=0{K}" and "log2_K" not in run.data.metrics
        assert run.data.tags["mlflow.note.content"].startswith(f"Bernoulli mixture K={K} ({64 * K + K - 1} params)")
        logged = {key: dict(histories(client, run.info.run_id, key)) for key in MIXTURE_METRICS}
        for key, history in logged.items():
            assert sorted(history) == list(range(1, 16)), key  # every iteration, each once
        for step in range(1, 16):  # packed in the trial, alone in the reference: within float64 rounding
            assert_same_em_records({k: h[step] for k, h in logged.items()}, expected[K][(seed, step)], 898, 899, step)
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == [f"model_K{K}_seed{seed}.pt"]
        saved = torch.load(client.download_artifacts(run.info.run_id, f"model_K{K}_seed{seed}.pt"))
        assert (saved["family"], saved["K"], saved["seed"], saved["iteration"]) == ("bernoulli_mixture", K, seed, 15)
    logged = {a.path for a in client.list_artifacts(sweep.parent_run_id, "analysis")}
    assert {"analysis/complexity.png", "analysis/curves.png", "analysis/heatmap.png", "analysis/summary.md",
            "analysis/summary.csv"} <= logged

    from analysis import analyze

    result = analyze(sweep.sweep_id, sweep.tracking_uri, tmp_path / "again", log_artifacts=False)
    row = result.summary.set_index("K").loc[5]
    finals = [expected[5][(s, 15)] for s in (0, 1)]
    for m in ("train_loglik", "test_loglik", "loglik_gap", "test_error"):
        tol = 1 / 899 if m.endswith("error") else em_tol(15)  # see tests.numerics.assert_same_em_records
        assert row[f"final_{m}_mean"] == pytest.approx(sum(f[m] for f in finals) / 2, abs=tol)
    panels = result.figures["complexity"].axes
    assert len(panels) == 3  # log-likelihoods; their gap, on an axis of its own (nats, not -25 to -17); errors
    assert [ax.get_ylabel() for ax in panels] == [
        "mean log-likelihood per image (nats)", "train − test log-likelihood (nats)",
        "error rate, the mixture as a classifier (0–1)"]
    assert [c.get_label() for c in panels[1].containers] == ["final loglik_gap"]
    for ax in panels:  # each panel scaled by its own data (the lines' offset transform escapes autoscaling)
        low, high = ax.get_ylim()
        values = [y for c in ax.containers for y in c.lines[0].get_ydata()]
        assert values and low <= min(values) and max(values) <= high, (ax.get_ylabel(), low, high, values)
    text = (tmp_path / "again" / "summary.md").read_text()
    assert "higher is better" in text and "train_loglik - test_loglik" in text


def em_alone(K: int, budget: int, every: int) -> list[dict[str, float]]:
    """Seed 0's records of the mixture trainer run alone, uninterrupted (no Ray, no MLflow), one torch thread."""
    torch.set_num_threads(1)
    trainer = get_family("bernoulli_mixture").trainer(MixtureConfig(K=K, budget=budget, eval_every=every), [0])
    return [e.records[0].metrics() for e in trainer.run()]


def test_killed_mixture_trial_resumes_with_every_iteration_once(ray_local, tmp_path):
    """Issue 6's rules for the mixture: SIGKILL the worker after some evaluations reached MLflow; the trial
    continues the same run from its checkpoint and every step appears once, with the uninterrupted values."""
    budget, every, K = 1500, 10, 400
    (tmp_path / "long.yaml").write_text(
        f"name: emlong\nmodel: {{family: bernoulli_mixture, K: {K}}}\nseeds: [0]\nbudget: {budget}\n"
        f"eval_every: {every}\ncheckpoint_every: 6\npack: 'off'\n")
    expected = in_background(lambda: em_alone(K, budget, every))  # while the sweep runs
    sweep, killed = run_sweep_killing_a_worker(tmp_path, str(tmp_path / "long.yaml"), "train_loglik", 15)
    uri = sweep.tracking_uri
    client = MlflowClient(uri)
    runs = trial_runs(sweep)
    assert len(runs) == 1
    run = client.get_run(runs[0].info.run_id)
    assert run.info.status == "FINISHED" and int(run.data.tags[TAG_WORKER_PID]) != killed["pid"]
    steps = list(range(every, budget + 1, every))
    assert killed["steps_before"] < len(steps)
    for key in MIXTURE_METRICS:
        history = histories(client, run.info.run_id, key)
        assert [s for s, _ in history] == steps, key
        assert [v for _, v in history] == [m[key] for m in expected.result()], key


def test_killed_mixture_driver_then_resume_finishes_the_sweep(tmp_path, ray_address):
    """Issue 6's rules for the mixture, the driver's side: SIGKILL `sweep run` (and its Ray) mid-sweep, then
    `sweep resume` finishes it; each run FINISHED with every iteration once and the uninterrupted values. The
    resume connects to the tests' Ray (a resume on a fresh Ray of its own: test_faults.py)."""
    budget, every = 1500, 10
    (tmp_path / "long.yaml").write_text(
        f"name: emdriver\nmodel: {{family: bernoulli_mixture, K: [300, 400]}}\nseeds: [0]\nbudget: {budget}\n"
        f"eval_every: {every}\ncheckpoint_every: 6\nmax_concurrent_trials: 1\n")
    expected = in_background(lambda: {K: em_alone(K, budget, every) for K in (300, 400)})  # while the sweep runs
    uri, env = run_then_kill_driver(tmp_path, "long.yaml", "train_loglik", 15)
    client = MlflowClient(uri)
    sweep = driver.load_sweep(None, uri)
    assert sorted(r.info.status for r in trial_runs(sweep)) != ["FINISHED", "FINISHED"], "killed too late"
    resumed = resume(tmp_path, sweep.sweep_id, env, ray_address)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert client.get_run(sweep.parent_run_id).info.status == "FINISHED"
    runs = {int(r.data.params["K"]): r for r in trial_runs(sweep)}
    assert sorted(runs) == [300, 400]
    for K, run in runs.items():
        assert run.info.status == "FINISHED"
        for key in ("train_loglik", "test_loglik", "test_error"):
            history = histories(client, run.info.run_id, key)
            assert [s for s, _ in history] == list(range(every, budget + 1, every)), (K, key)
            assert [v for _, v in history] == [m[key] for m in expected.result()[K]], (K, key)


def test_toy_family_from_a_test_file_runs_through_sweep_run_and_analyze(ray_local, tmp_path, toy_family, capsys):
    (tmp_path / "toy.yaml").write_text("name: toy\nmodel: {family: toy, W: [1, 3]}\nseeds: 2\nbudget: 6\n")
    sweep = run_sweep(tmp_path, str(tmp_path / "toy.yaml"), "--no-analyze")
    client = MlflowClient(sweep.tracking_uri)
    parent = client.get_run(sweep.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags[TAG_FAMILY] == "toy"
    runs = {r.info.run_name: r for r in trial_runs(sweep)}
    assert sorted(runs) == ["W=1 seed=0", "W=1 seed=1", "W=3 seed=0", "W=3 seed=1"]
    for name, run in runs.items():
        W, seed = int(name.split()[0][2:]), int(name.split("seed=")[1])
        assert run.info.status == "FINISHED" and run.data.params["param_count"] == str(3 * W)
        assert histories(client, run.info.run_id, "fit") == [(s, toy_scores(W, seed, s)[0]) for s in (2, 4, 6)]
        assert histories(client, run.info.run_id, "held_out") == [(s, toy_scores(W, seed, s)[1]) for s in (2, 4, 6)]
    capsys.readouterr()
    cli.main(["analyze", sweep.sweep_id, "--tracking-uri", sweep.tracking_uri, "--out", str(tmp_path / "out")])
    assert f"Sweep {sweep.sweep_id}" in capsys.readouterr().out
    logged = {a.path for a in client.list_artifacts(sweep.parent_run_id, "analysis")}
    assert {"analysis/complexity.png", "analysis/summary.md"} <= logged
    summary = (tmp_path / "out" / "summary.md").read_text()
    # held_out at step 6: W=1 -> 1 - 1/7 - 0.01 (+ seed / 1000), W=3 -> 1 - 1/19 - 0.03: it rises with W
    low, high = (1 - 1 / 7 - 0.01 + 0.0005), (1 - 1 / 19 - 0.03 + 0.0005)  # means over seeds 0 and 1
    assert f"final held out rises monotonically from {low:.2f} at W=1 to {high:.2f} at W=3" in summary
    assert "`held_out`: toy test score, higher is better" in summary  # the family's metrics, declared
