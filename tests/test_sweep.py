"""`sweep run` end to end on real Ray and a real MLflow sqlite store."""

from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient

from sweep import driver
from sweep.data import split_hash
from sweep.names import METRICS, TAG_NODE_ID, TAG_PARENT_RUN, TAG_SWEEP_ID
from sweep.trainer import TrainConfig, Trainer
from tests.conftest import histories, run_sweep

SMOKE_STEPS = [10, 20, 30, 40, 50]


@pytest.fixture(scope="module")
def smoke(ray_local, tmp_path_factory):
    folder = tmp_path_factory.mktemp("smoke")
    sweep = run_sweep(folder, "smoke", "--no-analyze")
    return folder, sweep, MlflowClient(sweep.tracking_uri)


def children(sweep: driver.Sweep) -> dict[tuple[int, int], object]:
    return {(int(r.data.params["C"]), int(r.data.params["seed"])): r for r in driver.trial_runs(sweep)}


def test_smoke_makes_one_parent_and_four_finished_children(smoke):
    _, sweep, client = smoke
    parent = client.get_run(sweep.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == sweep.sweep_id
    assert parent.data.tags[TAG_SWEEP_ID] == sweep.sweep_id
    assert {"torch_version", "ray_version", "mlflow_version", "host", "preset"} <= set(parent.data.tags)
    assert parent.data.params["model.C"] == "[1, 4]" and parent.data.params["budget"] == "50"
    assert [a.path for a in client.list_artifacts(sweep.parent_run_id)] == ["spec.yaml"]
    runs = children(sweep)
    assert sorted(runs) == [(1, 0), (1, 1), (4, 0), (4, 1)]
    for (C, seed), run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.info.run_name == f"C={C} seed={seed}"
        assert run.data.tags[TAG_PARENT_RUN] == sweep.parent_run_id
        assert run.data.tags[TAG_NODE_ID]
        assert run.data.params["split_hash"] == split_hash(0)
        assert run.data.params["protocol"] == "handout" and run.data.params["eval_every"] == "10"
        for key in METRICS:
            assert [step for step, _ in histories(client, run.info.run_id, key)] == SMOKE_STEPS, key
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
        assert artifacts == [f"model_C{C}_seed{seed}.pt"]


def test_final_weights_load_into_a_resnet(smoke):
    from models import ResNet

    _, sweep, client = smoke
    run = children(sweep)[(4, 1)]
    path = client.download_artifacts(run.info.run_id, "model_C4_seed1.pt")
    net = ResNet(4)
    net.load_state_dict(torch.load(path))
    assert int(net.stem[1].num_batches_tracked) == 50


def test_logged_metrics_equal_the_trainers_records(smoke):
    """Packed by seed (the default), through Ray and MLflow, value for value."""
    _, sweep, client = smoke
    torch.set_num_threads(1)
    runs = children(sweep)
    for C in (1, 4):
        trainer = Trainer(TrainConfig(C=C, budget=50, eval_every=10), seeds=[0, 1])
        for evaluation in trainer.run():
            for record in evaluation.records:
                run_id = runs[(C, record.seed)].info.run_id
                for key, value in record.metrics().items():
                    assert dict(histories(client, run_id, key))[record.step] == value, (C, record, key)


def test_user_yaml_with_overrides_and_two_sweeps_apart(smoke, tmp_path):
    folder, first, client = smoke
    spec = folder / "mine.yaml"
    spec.write_text("name: mine\nmodel: {C: 8}\nseeds: [5]\nbudget: 30\neval_every: 15\n")
    second = run_sweep(folder, str(spec), "--set", "model.C=[2]", "--set", "seeds=[3, 4]",
                       "--set", "pack=off", "--no-analyze")
    assert second.sweep_id != first.sweep_id and second.sweep_id.startswith("mine-")
    runs = children(second)
    assert sorted(runs) == [(2, 3), (2, 4)]
    assert sorted(children(first)) == [(1, 0), (1, 1), (4, 0), (4, 1)]  # untouched
    torch.set_num_threads(1)
    for (_, seed), run in runs.items():
        assert run.data.tags[TAG_SWEEP_ID] == second.sweep_id and run.info.status == "FINISHED"
        records = [e.records[0] for e in Trainer(TrainConfig(C=2, budget=30, eval_every=15), [seed]).run()]
        assert [s for s, _ in histories(client, run.info.run_id, "test_error")] == [15, 30]
        assert [v for _, v in histories(client, run.info.run_id, "test_error")] == [r.test_error for r in records]


def test_analyze_a_real_smoke_sweep(smoke, tmp_path):
    """`sweep analyze` on the sweep just run: figures hold a series per C, numbers equal MLflow's."""
    from analysis import analyze

    _, sweep, client = smoke
    result = analyze(sweep.sweep_id, sweep.tracking_uri, tmp_path / "out")
    logged = {a.path for a in client.list_artifacts(sweep.parent_run_id, "analysis")}
    assert {"analysis/complexity.png", "analysis/curves.png", "analysis/heatmap.png", "analysis/summary.md",
            "analysis/summary.csv", "analysis/complexity.pdf"} <= logged
    runs = children(sweep)
    for _, row in result.summary.iterrows():
        finals = [runs[(int(row["C"]), seed)].data.metrics for seed in (0, 1)]
        assert row["n_seeds"] == 2
        assert row["final_train_error_mean"] == pytest.approx(sum(m["train_error"] for m in finals) / 2, abs=1e-12)
        assert row["final_test_error_mean"] == pytest.approx(sum(m["test_error"] for m in finals) / 2, abs=1e-12)
    lines = {ln.get_label(): ln for ln in result.figures["curves"].axes[0].get_lines()}
    for C in (1, 4):
        train, test = lines[f"C={C} train"], lines[f"C={C} test"]
        assert train.get_linestyle() == "-" and test.get_linestyle() == "--"
        assert list(train.get_xdata()) == SMOKE_STEPS
        per_seed = [dict(histories(client, runs[(C, seed)].info.run_id, "train_error")) for seed in (0, 1)]
        expected = [(per_seed[0][step] + per_seed[1][step]) / 2 for step in SMOKE_STEPS]
        assert list(train.get_ydata()) == pytest.approx(expected, abs=1e-12)


def test_cpu_request_larger_than_any_node(ray_local, tmp_path, capsys):
    """On a connected cluster (here the tests' 2-CPU local Ray, reached as "auto") a trial asking for more
    CPUs than the largest node has would wait forever: one line, exit 2, and no run in MLflow."""
    import ray

    from sweep import cli

    cpus = max(n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]) + 1
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "smoke", "--set", f"resources.cpu={cpus:g}", "--tracking-uri", uri,
                  "--storage", str(tmp_path / "ray_results"), "--address", "auto"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert exit_info.value.code == 2 and len(errors) == 1  # (MLflow's INFO lines about its schema aside)
    assert errors[0].startswith("sweep: error: resources.cpu=") and "is more than any node" in errors[0]
    if (tmp_path / "mlflow.db").exists():  # the warm-up, overlapping Ray's start, may set up the schema
        client = MlflowClient(uri)
        assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
