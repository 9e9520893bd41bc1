"""The analysis package against a real sqlite MLflow store holding a synthetic sweep (no mocks of MLflow).

The synthetic sweep follows sweep/names.py: a parent run (tags sweep_id, sweep.role=parent) and one child run
per (C, seed) for C in {1, 4} and seeds 0..2 (tags sweep_id, sweep.role=trial, mlflow.parentRunId, C, seed;
the trial params), metrics at steps 10..50 written with log_batch, plus one FAILED child with failure_reason.
Metric values are closed-form functions of (C, seed, step) so the expected numbers are computed here
independently of the code under test.
"""

from __future__ import annotations

import math
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

from analysis import analyze, load_sweep, mean_ci, plot_complexity, trend_sentences
from analysis.aggregate import summarize
from analysis.load import SkippedTrialsWarning
from sweep.names import (
    ANALYSIS_ARTIFACT_DIR,
    METRICS,
    ROLE_PARENT,
    ROLE_TRIAL,
    TAG_FAILURE,
    TAG_NODE_ID,
    TAG_PARENT_RUN,
    TAG_PRESET,
    TAG_ROLE,
    TAG_SWEEP_ID,
    TRIAL_PARAMS,
)

SWEEP_ID = "synthetic-20260101-000000-abcd"
OLD_SWEEP_ID = "older-20250101-000000-0000"
WIDTHS = (1, 4)
SEEDS = (0, 1, 2)
STEPS = (10, 20, 30, 40, 50)
PARAM_COUNTS = {1: 53, 4: 398}
FAILED = {"C": 4, "seed": 3, "reason": "minibatch loss became nan at step 31"}
RELOGGED = {"C": 1, "seed": 0, "step": 30, "metric": "test_loss", "value": 9.5}


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
            "generalization_gap": te - tr, "minibatch_loss": 2 * tr + 0.1}


def _trial_params(c: int, seed: int) -> list[Param]:
    values = {"C": c, "seed": seed, "protocol": "handout", "budget": 50, "lr": 0.1, "batch_size": 128,
              "eval_every": 10, "split_seed": 0, "split_hash": "deadbeef", "model_family": "resnet",
              "param_count": PARAM_COUNTS.get(c, 0), "dtype": "float32"}
    assert set(values) == set(TRIAL_PARAMS)
    return [Param(k, str(v)) for k, v in values.items()]


def write_sweep(client: mlflow.MlflowClient, experiment_id: str, sweep_id: str, start_ms: int,
                widths=WIDTHS, with_failure: bool = True) -> dict:
    """Parent + children exactly as the writer lays them out; returns {"parent": id, (C, seed): id}."""
    parent = client.create_run(experiment_id, run_name=sweep_id, start_time=start_ms,
                               tags={TAG_SWEEP_ID: sweep_id, TAG_ROLE: ROLE_PARENT, TAG_PRESET: "synthetic"})
    ids: dict = {"parent": parent.info.run_id}
    trials = [(c, s) for c in widths for s in SEEDS]
    if with_failure:
        trials.append((FAILED["C"], FAILED["seed"]))
    for i, (c, seed) in enumerate(trials):
        tags = {TAG_SWEEP_ID: sweep_id, TAG_ROLE: ROLE_TRIAL, TAG_PARENT_RUN: parent.info.run_id,
                "C": str(c), "seed": str(seed)}
        run = client.create_run(experiment_id, run_name=f"C={c} seed={seed}", start_time=start_ms + 1 + i,
                                tags=tags)
        rid = run.info.run_id
        failed = with_failure and (c, seed) == (FAILED["C"], FAILED["seed"])
        steps = [s for s in STEPS if not failed or s <= 30]
        metrics = [Metric(k, v, start_ms + step, step) for step in steps
                   for k, v in metric_values(c, seed, step).items()]
        client.log_batch(rid, metrics=metrics, params=_trial_params(c, seed),
                         tags=[RunTag(TAG_NODE_ID, "node-0")], synchronous=True)
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
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    art = (tmp / "artifacts").as_uri()
    now = int(time.time() * 1000)
    old_exp = client.create_experiment("older", artifact_location=art + "/older")
    write_sweep(client, old_exp, OLD_SWEEP_ID, now - 3_600_000, widths=(2,), with_failure=False)
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
    # t_{0.975, 2} * s / sqrt(3) = 4.302653 * 0.1 / 1.7320508
    assert iv.half_width == pytest.approx(0.248414, abs=1e-6)
    assert (iv.low, iv.high) == pytest.approx((0.2 - 0.248414, 0.2 + 0.248414), abs=1e-6)
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
            iv = mean_ci(logged)
            assert summary.loc[c, f"{quantity}_mean"] == pytest.approx(iv.mean, abs=1e-12)
            assert summary.loc[c, f"{quantity}_ci95"] == pytest.approx(iv.half_width, abs=1e-12)
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
