"""The analysis package against real sqlite MLflow stores holding synthetic sweeps (no mocks of MLflow).

The synthetic sweeps follow the trial-identity contract (sweep/names.py and issue 12): a parent run (tags
sweep_id, sweep.role=parent, sweep.axes = JSON list of the axes, sweep.knob) and one child run per
(grid point, seed) named ``C=4 lr=0.05 seed=1`` (tags sweep_id, sweep.role=trial, mlflow.parentRunId, C,
seed, grid_point; every axis value and trial param as a param), metrics at steps 10..50 written with
log_batch. The first store holds a C-only sweep with one FAILED child and an older sweep written before the
axes tags existed; the second holds multi-axis sweeps. Metric values are closed-form functions of
(grid point, seed, step), so the expected numbers are computed here independently of the code under test
(statistics.stdev and a literal t quantile, never the code's mean_ci).
"""

from __future__ import annotations

import json
import math
import statistics
import time
import warnings
from pathlib import Path

import matplotlib.image as mpimg
import mlflow
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from mlflow.entities import Metric, Param, RunTag

from analysis import (
    AxisError,
    analyze,
    interpolation_threshold,
    load_sweep,
    mean_ci,
    plot_complexity,
    thresholds,
    trend_sentences,
)
from analysis.aggregate import summarize
from analysis.load import SkippedTrialsWarning
from models import get_family
from record import (
    ANALYSIS_ARTIFACT_DIR,
    ROLE_PARENT,
    ROLE_TRIAL,
    SPEC_ARTIFACT,
    TAG_AXES,
    TAG_BLAS,
    TAG_CODE_PATH,
    TAG_CPU,
    TAG_CPU_CAPABILITY,
    TAG_FAILURE,
    TAG_KNOB,
    TAG_NODE_ID,
    TAG_PARENT_RUN,
    TAG_PRESET,
    TAG_ROLE,
    TAG_SWEEP_ID,
)
from sweep.cli import main as sweep_main
from tests.conftest import new_store

METRICS = get_family("resnet").metric_names
SWEEP_ID = "synthetic-20260101-000000-abcd"
OLD_SWEEP_ID = "older-20250101-000000-0000"
WIDTHS = (1, 4)
SEEDS = (0, 1, 2)
STEPS = (10, 20, 30, 40, 50)
PARAM_COUNTS = {1: 53, 4: 398}
FAILED = {"C": 4, "seed": 3, "reason": "minibatch loss became nan at step 31"}
RELOGGED = {"C": 1, "seed": 0, "step": 30, "metric": "test_loss", "value": 9.5}
OTHER_MACHINE = (4, 2)  # this trial ran with torch's AVX2 kernels, the others with AVX512


def machine_tags(c: int, seed: int) -> list[RunTag]:
    capability = "AVX2" if (c, seed) == OTHER_MACHINE else "AVX512"
    return [RunTag(TAG_CPU, "Test Xeon"), RunTag(TAG_CPU_CAPABILITY, capability), RunTag(TAG_BLAS, "mkl 2024.2"),
            RunTag(TAG_CODE_PATH, "aten + packed_kernels.c")]


def sim_train(c: int, seed: int, step: int) -> float:
    """C=1 stays high (0.70 + 0.01 seed at step 50); C=4 reaches 0.002 * seed (interpolates)."""
    if c == 1:
        return 0.9 - 0.004 * step + 0.01 * seed
    return max(0.0, 0.5 - 0.01 * step) + 0.002 * seed


def sim_test(c: int, seed: int, step: int) -> float:
    """C=1: train + 0.05 + 0.005 seed (best at the end); C=4: U-shaped, best at step 30 = 0.10 + 0.01 seed."""
    if c == 1:
        return sim_train(c, seed, step) + 0.05 + 0.005 * seed
    return 0.1 + 0.0001 * (step - 30) ** 2 + 0.01 * seed


def metric_values(c: int, seed: int, step: int) -> dict[str, float]:
    tr, te = sim_train(c, seed, step), sim_test(c, seed, step)
    return {"train_error": tr, "test_error": te, "train_loss": 2 * tr, "test_loss": 2 * te,
            "generalization_gap": te - tr, "minibatch_loss": 2 * tr + 0.1, "train_error_clean": tr}


#: Two-sided 97.5% Student t quantiles (scipy.stats.t.ppf(0.975, dof), written down as literals so the
#: expected intervals do not come from the code under test).
T975 = {1: 12.706204736174704, 2: 4.302652729911275}


def hand_ci(values: list[float]) -> tuple[float, float]:
    """(mean, 95% t half-width) worked out with the standard library and the literal quantile above."""
    n = len(values)
    return statistics.fmean(values), T975[n - 1] * statistics.stdev(values) / math.sqrt(n)


def _trial_params(c: int, seed: int, point: dict | None = None) -> list[Param]:
    values = {"C": c, "seed": seed, "protocol": "handout", "budget": 50, "lr": 0.1, "batch_size": 128,
              "eval_every": 10, "split_seed": 0, "split_hash": "deadbeef", "model_family": "resnet",
              "param_count": PARAM_COUNTS.get(c, 0), "dtype": "float32", "label_noise": 0.0, "n_flipped_labels": 0}
    values.update({"label_noise": 0.0, "n_flipped_labels": 0})
    values.update(point or {})
    if "label_noise" in (point or {}):
        values["n_flipped_labels"] = round(values["label_noise"] * 898)
    return [Param(k, str(v)) for k, v in values.items()]


def log_spec(client: mlflow.MlflowClient, parent_id: str, sweep_id: str) -> None:
    """The parent's spec.yaml, as every sweep has one (what the analysis reads of it: a grid, no search)."""
    client.log_text(parent_id, f"name: {sweep_id.split('-')[0]}\nmodel: {{C: [1, 4]}}\nseeds: 3\n", SPEC_ARTIFACT)


def write_sweep(client: mlflow.MlflowClient, experiment_id: str, sweep_id: str, start_ms: int,
                widths=WIDTHS, with_failure: bool = True, old_style: bool = False) -> dict:
    """Parent + children exactly as the writer lays them out (``old_style``: the layout before the
    sweep.axes tag); returns {"parent": id, (C, seed): id}."""
    tags = {TAG_SWEEP_ID: sweep_id, TAG_ROLE: ROLE_PARENT, TAG_PRESET: "synthetic"}
    if not old_style:
        tags.update({TAG_AXES: json.dumps(["C"]), TAG_KNOB: "C"})
    parent = client.create_run(experiment_id, run_name=sweep_id, start_time=start_ms, tags=tags)
    log_spec(client, parent.info.run_id, sweep_id)
    ids: dict = {"parent": parent.info.run_id}
    trials = [(c, s) for c in widths for s in SEEDS]
    if with_failure:
        trials.append((FAILED["C"], FAILED["seed"]))
    for i, (c, seed) in enumerate(trials):
        tags = {TAG_SWEEP_ID: sweep_id, TAG_ROLE: ROLE_TRIAL, TAG_PARENT_RUN: parent.info.run_id,
                "C": str(c), "seed": str(seed)}
        if not old_style:
            tags["grid_point"] = f"C={c}"
        run = client.create_run(experiment_id, run_name=f"C={c} seed={seed}", start_time=start_ms + 1 + i,
                                tags=tags)
        rid = run.info.run_id
        failed = with_failure and (c, seed) == (FAILED["C"], FAILED["seed"])
        steps = [s for s in STEPS if not failed or s <= 30]
        metrics = [Metric(k, v, start_ms + step, step) for step in steps
                   for k, v in metric_values(c, seed, step).items()]
        client.log_batch(rid, metrics=metrics, params=_trial_params(c, seed),
                         tags=[RunTag(TAG_NODE_ID, "node-0"), *machine_tags(c, seed)], synchronous=True)
        if failed:
            client.set_tag(rid, TAG_FAILURE, FAILED["reason"])
            client.set_terminated(rid, "FAILED")
            continue
        if (c, seed) == (RELOGGED["C"], RELOGGED["seed"]):  # a resumed trial logging a step a second time
            client.log_batch(rid, metrics=[Metric(RELOGGED["metric"], RELOGGED["value"], start_ms + 10_000,
                                                  RELOGGED["step"])], synchronous=True)
        client.set_terminated(rid, "FINISHED")
        ids[(c, seed)] = rid
    client.set_terminated(parent.info.run_id, "FINISHED")
    return ids


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One sqlite store with an older sweep (its own experiment) and the synthetic sweep; analysed once."""
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = new_store(tmp)
    client = mlflow.MlflowClient(uri)
    art = (tmp / "artifacts").as_uri()
    now = int(time.time() * 1000)
    old_exp = client.create_experiment("older", artifact_location=art + "/older")
    write_sweep(client, old_exp, OLD_SWEEP_ID, now - 3_600_000, widths=(2,), with_failure=False, old_style=True)
    exp = client.create_experiment("synthetic", artifact_location=art + "/synthetic")
    ids = write_sweep(client, exp, SWEEP_ID, now)
    out = tmp / "out"
    with pytest.warns(SkippedTrialsWarning) as record:
        result = analyze(SWEEP_ID, uri, out)
    return {"uri": uri, "client": client, "ids": ids, "result": result, "warnings": record, "out": out}


# -- loading ------------------------------------------------------------------------------------------

def test_every_step_exactly_once_per_run_and_metric(store: dict) -> None:
    df = store["result"].data.metrics
    assert list(df.columns) == ["run_id", "C", "seed", "step", "metric", "value"]
    assert set(df["metric"]) == set(METRICS)
    assert len(set(df["run_id"])) == len(WIDTHS) * len(SEEDS)
    assert not df.duplicated(["run_id", "metric", "step"]).any()
    for _, g in df.groupby(["run_id", "metric"]):
        assert sorted(g["step"]) == list(STEPS)
    # Every value is what was logged; the re-logged step keeps the value logged last.
    relogged = tuple(RELOGGED[k] for k in ("C", "seed", "step", "metric"))
    for row in df.itertuples():
        expected = metric_values(row.C, row.seed, row.step)[row.metric]
        if (row.C, row.seed, row.step, row.metric) == relogged:
            expected = RELOGGED["value"]
        assert row.value == pytest.approx(expected, abs=1e-12)


def test_full_history_when_mlflow_paginates(store: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real paginated read against the same sqlite store: pages of 2 points instead of 25000.
    monkeypatch.setattr("mlflow.tracking._tracking_service.client.GET_METRIC_HISTORY_MAX_RESULTS", 2)
    with pytest.warns(SkippedTrialsWarning):
        data = load_sweep(SWEEP_ID, store["uri"])
    pd.testing.assert_frame_equal(data.metrics, store["result"].data.metrics)


def test_failed_trial_skipped_with_warning(store: dict) -> None:
    messages = [str(w.message) for w in store["warnings"] if issubclass(w.category, SkippedTrialsWarning)]
    assert len(messages) == 1
    assert f"C={FAILED['C']} seed={FAILED['seed']}" in messages[0] and FAILED["reason"] in messages[0]
    result = store["result"]
    assert [(t.C, t.seed, t.status, t.reason) for t in result.failed] == [
        (FAILED["C"], FAILED["seed"], "FAILED", FAILED["reason"])]
    assert FAILED["seed"] not in set(result.data.metrics["seed"])
    md = (store["out"] / "summary.md").read_text()
    assert FAILED["reason"] in md
    row = result.summary.set_index("C").loc[FAILED["C"]]
    assert (row["n_seeds"], row["n_failed"]) == (len(SEEDS), 1)


def test_latest_sweep_is_found_across_experiments(store: dict) -> None:
    with pytest.warns(SkippedTrialsWarning):
        data = load_sweep(None, store["uri"])
    assert data.sweep_id == SWEEP_ID and data.parent.info.run_id == store["ids"]["parent"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the older sweep has no failed trial
        old = load_sweep(OLD_SWEEP_ID, store["uri"])
    assert set(old.metrics["C"]) == {2}


def test_unknown_sweep_raises_lookup_error_listing_known_ids(store: dict, tmp_path: Path) -> None:
    with pytest.raises(LookupError) as err:
        analyze("no-such-sweep", store["uri"], tmp_path)
    message = str(err.value)
    assert "\n" not in message and "no-such-sweep" in message
    assert SWEEP_ID in message and OLD_SWEEP_ID in message
    assert not any(tmp_path.iterdir())


# -- aggregation ----------------------------------------------------------------------------------------

def test_mean_ci_matches_hand_worked_case() -> None:
    iv = mean_ci([0.1, 0.2, 0.3])
    assert iv.n == 3
    assert iv.mean == pytest.approx(0.2, abs=1e-12)
    # s = sqrt(((-0.1)^2 + 0 + 0.1^2) / 2) = 0.1; t_{0.975, 2} * s / sqrt(3) = 4.302652729911275 * 0.1 / 1.7320508
    assert iv.half_width == pytest.approx(0.24841377, abs=1e-7)
    assert (iv.low, iv.high) == pytest.approx((0.2 - 0.24841377, 0.2 + 0.24841377), abs=1e-7)
    # Two values 0.2, 0.4: s = 0.1414214, t_{0.975, 1} = 12.706204736174704: half-width 1.2706205.
    assert mean_ci([0.2, 0.4]).half_width == pytest.approx(12.706204736174704 * math.sqrt(0.02) / math.sqrt(2))
    one = mean_ci([0.3])
    assert one.mean == 0.3 and one.n == 1 and math.isnan(one.half_width)
    assert mean_ci([]).n == 0 and math.isnan(mean_ci([]).mean)


def test_summary_equals_final_metrics_logged_in_mlflow(store: dict) -> None:
    client, ids = store["client"], store["ids"]
    summary = store["result"].summary.set_index("C")
    for c in WIDTHS:
        runs = [client.get_run(ids[(c, s)]) for s in SEEDS]
        for quantity, key in (("final_train_error", "train_error"), ("final_test_error", "test_error"),
                              ("final_gap", "generalization_gap")):
            logged = [r.data.metrics[key] for r in runs]
            mean, half = hand_ci(logged)
            assert summary.loc[c, f"{quantity}_mean"] == pytest.approx(mean, abs=1e-12)
            assert summary.loc[c, f"{quantity}_ci95"] == pytest.approx(half, rel=1e-9)
        best = [min(m.value for m in client.get_metric_history(ids[(c, s)], "test_error")) for s in SEEDS]
        assert summary.loc[c, "best_test_error_mean"] == pytest.approx(np.mean(best), abs=1e-12)
        assert summary.loc[c, "param_count"] == PARAM_COUNTS[c]
    # Hand-worked: C=4 best-step test errors are 0.10, 0.11, 0.12 (step 30): 0.11 ± 4.302653 * 0.01 / sqrt 3.
    assert summary.loc[4, "best_test_error_mean"] == pytest.approx(0.11, abs=1e-12)
    assert summary.loc[4, "best_test_error_ci95"] == pytest.approx(0.0248414, abs=1e-6)
    assert store["result"].threshold == 4
    csv = pd.read_csv(store["out"] / "summary.csv").set_index("C")
    for c in WIDTHS:
        assert csv.loc[c, "final_test_error_mean"] == pytest.approx(summary.loc[c, "final_test_error_mean"])


def test_single_seed_gives_nan_interval_and_still_plots() -> None:
    trials = pd.DataFrame({"run_id": ["a", "b", "c"], "C": [1, 2, 2], "seed": [0, 0, 1],
                           "final_train_error": [0.5, 0.2, 0.0], "final_test_error": [0.6, 0.3, 0.1],
                           "final_gap": [0.1, 0.1, 0.1], "best_test_error": [0.55, 0.3, 0.1]})
    summary = summarize(trials)
    assert math.isnan(summary.loc[0, "final_train_error_ci95"]) and summary.loc[0, "n_seeds"] == 1
    fig = plot_complexity(summary, None)
    assert len(fig.axes[0].containers) == 3
    assert not [ln for ln in fig.axes[0].get_lines() if ln.get_gid() == "threshold"]


# -- figures -----------------------------------------------------------------------------------------------

def _mean_over_seeds(fn, c: int) -> list[float]:
    return [float(np.mean([fn(c, s, step) for s in SEEDS])) for step in STEPS]


def test_curves_figure_has_solid_train_and_dashed_test_line_per_c(store: dict) -> None:
    fig = store["result"].figures["curves"]
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {f"C={c} {k}" for c in WIDTHS for k in ("train", "test")}
    colours = set()
    for c in WIDTHS:
        train, test = lines[f"C={c} train"], lines[f"C={c} test"]
        assert train.get_linestyle() == "-" and test.get_linestyle() == "--"
        assert train.get_color() == test.get_color()
        colours.add(tuple(np.round(train.get_color(), 6)))
        assert list(train.get_xdata()) == list(STEPS)
        np.testing.assert_allclose(train.get_ydata(), _mean_over_seeds(sim_train, c), atol=1e-12)
        np.testing.assert_allclose(test.get_ydata(), _mean_over_seeds(sim_test, c), atol=1e-12)
    assert len(colours) == len(WIDTHS)
    assert len(ax.collections) == 2 * len(WIDTHS)  # one CI band per line
    assert ax.get_xlabel() == "SGD update" and "0–1" in ax.get_ylabel() and SWEEP_ID in fig.get_suptitle()
    legend = ax.get_legend()
    assert legend is not None and len(legend.get_texts()) == len(WIDTHS) + 3


def test_complexity_figure_has_three_errorbar_series_and_threshold(store: dict) -> None:
    fig = store["result"].figures["complexity"]
    ax = fig.axes[0]
    summary = store["result"].summary.set_index("C")
    containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    labels = ["final train error", "final test error", "gap (test − train error)"]
    assert [c.get_label() for c in containers] == labels
    for container, q in zip(containers, ("final_train_error", "final_test_error", "final_gap"), strict=True):
        line, _, (bars,) = container.lines
        assert list(line.get_xdata()) == list(WIDTHS)
        np.testing.assert_allclose(line.get_ydata(), summary.loc[list(WIDTHS), f"{q}_mean"], atol=1e-12)
        half = [abs(seg[1][1] - seg[0][1]) / 2 for seg in bars.get_segments()]
        np.testing.assert_allclose(half, summary.loc[list(WIDTHS), f"{q}_ci95"], atol=1e-12)
    marker = [ln for ln in ax.get_lines() if ln.get_gid() == "threshold"]
    assert len(marker) == 1 and list(marker[0].get_xdata()) == [4, 4]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["C=1\n53 params", "C=4\n398 params"]


def test_heatmap_holds_mean_test_error(store: dict) -> None:
    ax = store["result"].figures["heatmap"].axes[0]
    values = np.asarray(ax.collections[0].get_array()).reshape(len(WIDTHS), len(STEPS))
    expected = [_mean_over_seeds(sim_test, c) for c in WIDTHS]
    np.testing.assert_allclose(values, expected, atol=1e-12)


def test_files_written_at_150_dpi_and_logged_on_parent(store: dict) -> None:
    result, client = store["result"], store["client"]
    for name in ("curves", "complexity", "heatmap"):
        png, pdf = store["out"] / f"{name}.png", store["out"] / f"{name}.pdf"
        assert pdf.stat().st_size > 1000 and pdf.read_bytes().startswith(b"%PDF")
        try:
            from PIL import Image

            with Image.open(png) as im:
                assert round(im.info["dpi"][0]) >= 150
        except ImportError:  # pragma: no cover - Pillow ships with matplotlib
            assert mpimg.imread(png).shape[1] >= 150 * 5
    assert set(result.files) >= {"summary.csv", "summary.md"}
    assert all(p.exists() for p in result.files.values())
    logged = {Path(f.path).name for f in client.list_artifacts(store["ids"]["parent"], ANALYSIS_ARTIFACT_DIR)}
    assert logged == set(result.files)


def test_a_column_repeating_another_is_left_out_of_the_table(store: dict) -> None:
    """Without label noise the train error on the true labels is the train error: no second column of it
    (the grid store, with noise, shows it: test_further_axis_makes_panels_and_curves_and_heatmap_split)."""
    md = (store["out"] / "summary.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| C |"))
    assert "final train error |" in header and "on the true labels" not in md


# -- report ---------------------------------------------------------------------------------------------

def test_sentences_state_measured_numbers(store: dict) -> None:
    sentences = store["result"].sentences
    text = " ".join(sentences)
    # C=1 final train error: mean of 0.70, 0.71, 0.72; C=4: mean of 0, 0.002, 0.004.
    assert "falls monotonically from 0.71 at C=1 to 0.00 at C=4" in text
    assert "at C=4" in text and "interpolation threshold" in text
    md = (store["out"] / "summary.md").read_text()
    assert all(s in md for s in sentences)


def test_sentences_follow_the_data_not_a_template() -> None:
    summary = pd.DataFrame({
        "C": [2, 8, 32], "param_count": [132, 1362, 19242], "n_seeds": [3, 3, 3], "n_failed": [0, 0, 0],
        "final_train_error_mean": [0.30, 0.35, 0.40], "final_train_error_ci95": [0.01] * 3,
        "final_test_error_mean": [0.50, 0.45, 0.42], "final_test_error_ci95": [0.02] * 3,
        "final_gap_mean": [0.20, 0.10, 0.02], "final_gap_ci95": [0.03] * 3,
        "best_test_error_mean": [0.40, 0.45, 0.42], "best_test_error_ci95": [0.02] * 3,
    })
    text = " ".join(trend_sentences(summary, None))
    assert "rises monotonically from 0.30 at C=2 to 0.40 at C=32" in text
    assert "largest at C=2 (0.20 ± 0.03)" in text and "smallest at C=32" in text
    assert "no interpolation threshold" in text and "0.30 at C=2" in text
    assert "at most 0.100, at C=2" in text


# -- every axis is first-class (issue 12) --------------------------------------------------------------------

GRID_SWEEP = "grid-20260102-000000-0001"  # C {1, 4} x lr {0.05, 0.1} x seeds {0, 1}
DUP_SWEEP = "dup-20260102-000000-0002"  # the same, plus a second FINISHED run of C=4 lr=0.05 seed=1
PANEL_SWEEP = "panel-20260102-000000-0003"  # C {1, 4} x lr {0.05, 0.1} x label_noise {0.0, 0.2} x seeds {0, 1}
OLD_LR_SWEEP = "oldlr-20250102-000000-0004"  # C x lr grid written without sweep.axes (before the contract)
PROTO_SWEEP = "proto-20260102-000000-0005"  # C {1, 4} x protocol {handout, epochs}, one seed
GRID_SEEDS = (0, 1)
LRS = (0.05, 0.1)
NOISES = (0.0, 0.2)


def grid_values(point: dict, seed: int, step: int) -> dict[str, float]:
    """:func:`metric_values` shifted by the other axes: lr=0.05 adds 0.02 to both errors (so C=4 stays above 1%
    train error there: no threshold on that line), label noise f adds 0.25 f to the train error on the
    (noisy) labels it is measured against, and the clean train error is the unshifted one."""
    base = metric_values(point["C"], seed, step)
    shift = 0.4 * (0.1 - point.get("lr", 0.1))
    noise = 0.25 * point.get("label_noise", 0.0)
    tr, te = base["train_error"] + shift + noise, base["test_error"] + shift
    out = {"train_error": tr, "test_error": te, "generalization_gap": te - tr, "train_loss": 2 * tr,
           "test_loss": 2 * te, "minibatch_loss": 2 * tr + 0.1}
    if "label_noise" in point:
        out["train_error_clean"] = base["train_error"] + shift
    return out


def final_values(point: dict, key: str) -> list[float]:
    """The logged final-step value of ``key`` for each seed of a grid point (computed from the closed form)."""
    return [grid_values(point, s, STEPS[-1])[key] for s in GRID_SEEDS]


def write_grid_sweep(client: mlflow.MlflowClient, experiment_id: str, sweep_id: str, start_ms: int,
                     axes: list[str], points: list[dict], seeds=GRID_SEEDS, tagged: bool = True,
                     repeat: tuple[dict, int] | None = None) -> dict:
    """A sweep over ``points`` (dicts axis -> value, every axis of ``axes``) laid out per the contract; with
    ``tagged=False`` the parent carries no sweep.axes/sweep.knob (an old sweep). ``repeat`` = (point, seed)
    gets a second, later FINISHED run (a true duplicate: same identity) whose values are shifted by 0.5.
    Returns {"parent": id, run name: id of its newest run, ("first", run name): id of its first run}."""
    tags = {TAG_SWEEP_ID: sweep_id, TAG_ROLE: ROLE_PARENT}
    if tagged:
        tags.update({TAG_AXES: json.dumps(axes), TAG_KNOB: "C"})
    parent = client.create_run(experiment_id, run_name=sweep_id, start_time=start_ms, tags=tags)
    log_spec(client, parent.info.run_id, sweep_id)
    ids: dict = {"parent": parent.info.run_id}
    trials = [(pt, s) for pt in points for s in seeds] + ([repeat] if repeat else [])
    for i, (pt, seed) in enumerate(trials):
        grid_point = " ".join(f"{a}={pt[a]}" for a in axes)
        name = f"{grid_point} seed={seed}"
        run = client.create_run(experiment_id, run_name=name, start_time=start_ms + 1 + i, tags={
            TAG_SWEEP_ID: sweep_id, TAG_ROLE: ROLE_TRIAL, TAG_PARENT_RUN: parent.info.run_id,
            "C": str(pt["C"]), "seed": str(seed), "grid_point": grid_point})
        values = grid_values(pt, seed, 0)  # the metric keys this run logs
        offset = 0.5 if repeat and i == len(trials) - 1 else 0.0  # the repeat logged different numbers
        metrics = [Metric(k, v + offset, start_ms + step, step) for step in STEPS
                   for k, v in grid_values(pt, seed, step).items() if k in values]
        client.log_batch(run.info.run_id, metrics=metrics, params=_trial_params(pt["C"], seed, pt),
                         synchronous=True)
        client.set_terminated(run.info.run_id, "FINISHED")
        ids[name] = run.info.run_id  # a repeat overwrites the first run's id
        ids.setdefault(("first", name), run.info.run_id)
    client.set_terminated(parent.info.run_id, "FINISHED")
    return ids


GRID_POINTS = [{"C": c, "lr": lr} for c in WIDTHS for lr in LRS]
PANEL_POINTS = [{"C": c, "lr": lr, "label_noise": f} for c in WIDTHS for lr in LRS for f in NOISES]


@pytest.fixture(scope="module")
def grid_store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("grid")
    uri = new_store(tmp)
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("grid", artifact_location=(tmp / "artifacts").as_uri())
    now = int(time.time() * 1000)
    out = {"uri": uri, "client": client, "tmp": tmp}
    out[OLD_LR_SWEEP] = write_grid_sweep(client, exp, OLD_LR_SWEEP, now - 50_000, ["C", "lr"], GRID_POINTS,
                                         tagged=False)
    out[DUP_SWEEP] = write_grid_sweep(client, exp, DUP_SWEEP, now - 40_000, ["C", "lr"], GRID_POINTS,
                                      repeat=({"C": 4, "lr": 0.05}, 1))
    out[PANEL_SWEEP] = write_grid_sweep(client, exp, PANEL_SWEEP, now - 30_000, ["C", "lr", "label_noise"],
                                        PANEL_POINTS)
    out[PROTO_SWEEP] = write_grid_sweep(client, exp, PROTO_SWEEP, now - 20_000, ["C", "protocol"],
                                        [{"C": c, "protocol": p} for c in WIDTHS for p in ("handout", "epochs")],
                                        seeds=(0,))
    out[GRID_SWEEP] = write_grid_sweep(client, exp, GRID_SWEEP, now, ["C", "lr"], GRID_POINTS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may be skipped in a sweep without failures or repeats
        out["result"] = analyze(GRID_SWEEP, uri, tmp / "out", log_artifacts=False)
    return out


def _containers(ax) -> dict[str, ErrorbarContainer]:
    return {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}


def test_grid_sweep_keeps_every_run_and_splits_by_lr(grid_store: dict) -> None:
    result = grid_store["result"]
    assert result.skipped == [] and result.data.axes == ["C", "lr"] and result.x == "C"
    runs = result.data.runs
    assert len(runs) == len(GRID_POINTS) * len(GRID_SEEDS)
    assert runs["C"].dtype.kind == "i" and runs["lr"].dtype.kind == "f"
    metrics = result.data.metrics
    assert list(metrics.columns) == ["run_id", "C", "lr", "seed", "step", "metric", "value"]
    csv = pd.read_csv(grid_store["tmp"] / "out" / "summary.csv")
    assert len(csv) == 4 and {"C", "lr"} <= set(csv.columns)
    assert sorted(zip(csv["C"], csv["lr"], strict=True)) == sorted((p["C"], p["lr"]) for p in GRID_POINTS)
    for pt in GRID_POINTS:
        row = csv[(csv["C"] == pt["C"]) & (csv["lr"] == pt["lr"])].iloc[0]
        mean, half = hand_ci(final_values(pt, "test_error"))
        assert row["n_seeds"] == 2 and row["final_test_error_mean"] == pytest.approx(mean, abs=1e-12)
        assert row["final_test_error_ci95"] == pytest.approx(half, rel=1e-9)


def test_complexity_figure_has_one_line_per_lr_for_each_metric(grid_store: dict) -> None:
    fig = grid_store["result"].figures["complexity"]
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 1
    ax = visible[0]
    containers = _containers(ax)
    series = {"final train error": "train_error", "final test error": "test_error",
              "gap (test − train error)": "generalization_gap"}
    assert set(containers) == {f"{label}, lr={lr}" for label in series for lr in LRS}
    for label, key in series.items():
        for lr in LRS:
            line = containers[f"{label}, lr={lr}"].lines[0]
            assert list(line.get_xdata()) == list(WIDTHS)
            expected = [statistics.fmean(final_values({"C": c, "lr": lr}, key)) for c in WIDTHS]
            np.testing.assert_allclose(line.get_ydata(), expected, atol=1e-12)
        colours = {tuple(containers[f"{label}, lr={lr}"].lines[0].get_color()) for lr in LRS}
        assert len(colours) == len(LRS)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "lr=0.05" in legend and "lr=0.1" in legend
    # Per-line thresholds: lr=0.1 reaches 0.000-0.002 train error at C=4; lr=0.05 stays at 0.02-0.022.
    assert grid_store["result"].thresholds == {(0.05,): None, (0.1,): 4}
    markers = [ln for ln in ax.get_lines() if ln.get_gid() == "threshold"]
    assert len(markers) == 1 and list(markers[0].get_xdata()) == [4, 4] and "lr=0.1" in markers[0].get_label()
    text = " ".join(grid_store["result"].sentences)
    assert "For lr=0.05: final training error" in text and "For lr=0.1: final training error" in text
    assert "For lr=0.1: mean final training error is below 1% at C=4" in text


def test_true_duplicate_is_superseded_and_the_newer_run_kept(grid_store: dict) -> None:
    ids = grid_store[DUP_SWEEP]
    with pytest.warns(SkippedTrialsWarning, match="C=4 lr=0.05 seed=1 FINISHED: superseded"):
        data = load_sweep(DUP_SWEEP, grid_store["uri"])
    assert len(data.skipped) == 1
    name = "C=4 lr=0.05 seed=1"
    assert data.skipped[0].run_id == ids[("first", name)] != ids[name]
    assert dict(data.skipped[0].point) == {"C": 4, "lr": 0.05}
    assert len(data.runs) == len(GRID_POINTS) * len(GRID_SEEDS)
    kept = data.metrics[(data.metrics["run_id"] == ids[name]) & (data.metrics["metric"] == "test_error")]
    assert kept["value"].iloc[-1] == pytest.approx(grid_values({"C": 4, "lr": 0.05}, 1, 50)["test_error"] + 0.5)


def test_further_axis_makes_panels_and_curves_and_heatmap_split(grid_store: dict, tmp_path: Path) -> None:
    result = analyze(PANEL_SWEEP, grid_store["uri"], tmp_path, log_artifacts=False)
    assert result.data.axes == ["C", "lr", "label_noise"]
    assert len(result.summary) == len(PANEL_POINTS)
    assert {"C", "lr", "label_noise", "final_train_error_clean_mean"} <= set(result.summary.columns)
    fig = result.figures["complexity"]
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["label_noise=0.0", "label_noise=0.2"]
    for ax, f in zip(panels, NOISES, strict=True):
        line = _containers(ax)["final train error, lr=0.1"].lines[0]
        expected = [statistics.fmean(final_values({"C": c, "lr": 0.1, "label_noise": f}, "train_error"))
                    for c in WIDTHS]
        np.testing.assert_allclose(line.get_ydata(), expected, atol=1e-12)
        assert set(_containers(ax)) == {f"{q}, lr={lr}" for q in ("final train error", "final test error",
                                                                  "gap (test − train error)") for lr in LRS}
    # Thresholds per (lr, label_noise): only lr=0.1 without noise reaches < 1% at C=4.
    assert result.thresholds == {(0.05, 0.0): None, (0.05, 0.2): None, (0.1, 0.0): 4, (0.1, 0.2): None}
    clean = result.summary.set_index(["C", "lr", "label_noise"]).loc[(4, 0.1, 0.2), "final_train_error_clean_mean"]
    assert clean == pytest.approx(statistics.fmean(final_values({"C": 4, "lr": 0.1, "label_noise": 0.2},
                                                                "train_error_clean")))
    curve_panels = [ax for ax in result.figures["curves"].axes if ax.get_visible()]
    assert sorted(ax.get_title() for ax in curve_panels) == sorted(
        f"lr={lr}, label_noise={f}" for lr in LRS for f in NOISES)
    point = {"C": 4, "lr": 0.1, "label_noise": 0.2}
    panel = [ax for ax in curve_panels if ax.get_title() == "lr=0.1, label_noise=0.2"][0]
    line = [ln for ln in panel.get_lines() if ln.get_label() == "C=4 train"][0]
    expected = [statistics.fmean(grid_values(point, s, step)["train_error"] for s in GRID_SEEDS) for step in STEPS]
    np.testing.assert_allclose(line.get_ydata(), expected, atol=1e-12)
    heat = [ax for ax in result.figures["heatmap"].axes if ax.get_title()]
    assert len(heat) == len(LRS) * len(NOISES)
    cells = [ax for ax in heat if ax.get_title() == "lr=0.1, label_noise=0.2"][0].collections[0].get_array()
    expected = [[statistics.fmean(grid_values({**point, "C": c}, s, step)["test_error"] for s in GRID_SEEDS)
                 for step in STEPS] for c in WIDTHS]
    np.testing.assert_allclose(np.asarray(cells).reshape(len(WIDTHS), len(STEPS)), expected, atol=1e-12)
    md = (tmp_path / "summary.md").read_text()
    assert "| C | lr | label_noise | parameters |" in md and "on the true labels" in md
    assert "For lr=0.05, label_noise=0.2: final training error" in " ".join(result.sentences)


def test_x_lr_puts_lr_on_the_axis_and_c_on_the_lines(grid_store: dict, tmp_path: Path) -> None:
    result = analyze(GRID_SWEEP, grid_store["uri"], tmp_path / "a", x="lr", log_artifacts=False)
    ax = [a for a in result.figures["complexity"].axes if a.get_visible()][0]
    containers = _containers(ax)
    assert set(containers) == {f"{q}, C={c}" for q in ("final train error", "final test error",
                                                       "gap (test − train error)") for c in WIDTHS}
    line = containers["final test error, C=4"].lines[0]
    assert list(line.get_xdata()) == list(LRS)
    expected = [statistics.fmean(final_values({"C": 4, "lr": lr}, "test_error")) for lr in LRS]
    np.testing.assert_allclose(line.get_ydata(), expected, atol=1e-12)
    assert ax.get_xscale() == "linear" and "lr" in ax.get_xlabel()  # 0.05..0.1 spans 2x: linear
    assert not [ln for ln in ax.get_lines() if ln.get_gid() == "threshold"]
    assert "For C=4: final training error" in " ".join(result.sentences)
    # The command line: exit 0 and the files written.
    sweep_main(["analyze", GRID_SWEEP, "--tracking-uri", grid_store["uri"], "--out", str(tmp_path / "b"),
                "--x", "lr"])
    assert (tmp_path / "b" / "complexity.png").exists()


@pytest.mark.parametrize(("sweep_id", "x", "words"), [
    (PROTO_SWEEP, "protocol", ["--x protocol is not a numeric axis", "allowed: C"]),
    (GRID_SWEEP, "batch_size", ["--x batch_size is not an axis", "allowed: C, lr"]),
])
def test_bad_x_is_one_line_and_exit_2(grid_store: dict, tmp_path: Path, capsys, sweep_id, x, words) -> None:
    with pytest.raises(SystemExit) as exc:
        sweep_main(["analyze", sweep_id, "--tracking-uri", grid_store["uri"], "--out", str(tmp_path / "o"),
                    "--x", x])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and all(w in err for w in words), err
    assert not (tmp_path / "o").exists()
    with pytest.raises(AxisError):
        analyze(sweep_id, grid_store["uri"], tmp_path / "o", x=x, log_artifacts=False)


def test_old_sweep_without_axes_tag_still_analyses_and_infers_its_grid(grid_store: dict, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no run may be taken for a duplicate of another lr
        result = analyze(OLD_LR_SWEEP, grid_store["uri"], tmp_path, log_artifacts=False)
    assert result.data.axes == ["C", "lr"] and result.skipped == [] and len(result.summary) == 4


def test_threshold_is_where_every_wider_width_stays_below_one_percent() -> None:
    # C=2 dips below 1% but C=4 is above it again: the threshold is C=8, not C=2.
    line = pd.DataFrame({"C": [1, 2, 4, 8, 16], "final_train_error_mean": [0.5, 0.005, 0.02, 0.0, 0.009]})
    assert interpolation_threshold(line) == 8
    assert interpolation_threshold(line.iloc[:3]) is None  # the widest (C=4) is above 1%
    # A width whose every seed failed (NaN) says nothing either way.
    gap = pd.DataFrame({"C": [1, 2, 4], "final_train_error_mean": [0.5, 0.001, math.nan]})
    assert interpolation_threshold(gap) == 2
    two = pd.DataFrame({"C": [1, 2, 4, 1, 2, 4], "lr": [0.05] * 3 + [0.1] * 3,
                        "final_train_error_mean": [0.3, 0.0, 0.0, 0.3, 0.2, 0.1]})
    assert thresholds(two, ["C", "lr"]) == {(0.05,): 2, (0.1,): None}


def test_x_axis_is_log_when_positive_values_span_more_than_tenfold() -> None:
    rows = []
    for lr in (0.001, 0.01, 0.1):
        rows.append({"C": 4, "lr": lr, "param_count": 398, "n_seeds": 1, "n_failed": 0,
                     **{f"{q}_{k}": (0.1 if k == "mean" else math.nan) for q in
                        ("final_train_error", "final_test_error", "final_gap", "best_test_error")
                        for k in ("mean", "ci95")}})
    fig = plot_complexity(pd.DataFrame(rows), None, axes=["C", "lr"], x="lr")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == ["0.001", "0.01", "0.1"]


def test_report_names_the_oracle_and_what_the_intervals_cover(store: dict) -> None:
    md = (store["out"] / "summary.md").read_text()
    assert "optimistic" in md and "oracle" in md and "what early stopping would give" not in md.replace(
        "not what early stopping would give", "")
    assert "one fixed train/test split" in md and "sampling error" in md
    assert any("optimistic oracle" in s for s in store["result"].sentences)


def test_protocol_axis_splits_panels_with_their_own_step_unit(grid_store: dict, tmp_path: Path) -> None:
    result = analyze(PROTO_SWEEP, grid_store["uri"], tmp_path, log_artifacts=False)
    assert len(result.summary) == 4 and result.summary["protocol"].tolist() == ["epochs", "handout"] * 2
    panels = [ax for ax in result.figures["curves"].axes if ax.get_visible()]
    assert [(ax.get_title(), ax.get_xlabel()) for ax in panels] == [
        ("protocol=epochs", "epoch"), ("protocol=handout", "SGD update")]
    ax = [a for a in result.figures["complexity"].axes if a.get_visible()][0]  # protocol: lines, not panels
    assert "final test error, protocol=handout" in _containers(ax)


def test_parent_description_is_the_findings_and_summary_md_has_no_relative_links(store: dict) -> None:
    """Issue 16 items 2 and 7: the parent's Description in the MLflow UI (``mlflow.note.content``) lists
    the report's findings; summary.md names figures by artifact path instead of relative links, which
    404 inside MLflow's artifact viewer."""
    import re

    result = store["result"]
    note = store["client"].get_run(result.parent_run_id).data.tags["mlflow.note.content"]
    assert result.sentences and all(f"- {s}" in note for s in result.sentences)
    assert SWEEP_ID in note
    md = (store["out"] / "summary.md").read_text()
    assert re.findall(r"\]\((?!https?://)[^)]*\)", md) == []  # no [text](relative) link or image
    for figure in ("curves.png", "complexity.png", "heatmap.png"):
        assert f"`analysis/{figure}`" in md


def test_many_widths_get_compact_tick_labels() -> None:
    """Twelve widths with two-line ``C=12 / 2,902 params`` labels overlapped (seen on the double-descent
    figure); beyond seven ticks the label is the width over a short count (counts from the README formula
    18C^2 + 25C + 10)."""
    widths = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    rows = [{"C": c, "param_count": 18 * c * c + 25 * c + 10, "n_seeds": 1, "n_failed": 0,
             **{f"{q}_{k}": (0.1 if k == "mean" else math.nan) for q in
                ("final_train_error", "final_test_error", "final_gap", "best_test_error") for k in ("mean", "ci95")}}
            for c in widths]
    ax = plot_complexity(pd.DataFrame(rows), None, axes=["C"], x="C").axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == "1\n53" and labels[4] == "6\n808" and labels[6] == "12\n2.9k" and labels[-1] == "64\n75k"
    few = plot_complexity(pd.DataFrame(rows[:4]), None, axes=["C"], x="C").axes[0]
    assert [t.get_text() for t in few.get_xticklabels()][1] == "C=2\n132 params"


def test_summary_names_the_machines_and_a_grid_point_whose_seeds_ran_on_different_ones(store: dict) -> None:
    text = (store["out"] / "summary.md").read_text()
    hardware = text[text.index("## Hardware"):]
    runs = len(WIDTHS) * len(SEEDS)
    assert "- Test Xeon | AVX512 | mkl 2024.2 | - | aten + packed_kernels.c: " + f"{runs - 1} run(s)" in hardware
    assert "- Test Xeon | AVX2 | mkl 2024.2 | - | aten + packed_kernels.c: 1 run(s)" in hardware
    notes = [line for line in hardware.splitlines() if line.startswith("- **Note:**")]
    assert notes == [f"- **Note:** the seeds of C={OTHER_MACHINE[0]} ran on 2 different machines; their numbers are "
                     "not comparable bit for bit (rounding differs between CPU types and BLAS builds)."]
