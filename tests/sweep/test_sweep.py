"""`sweep run` end to end on real Ray and a real MLflow sqlite store."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from mlflow import MlflowClient

from models import get_family
from models.digits import split_hash
from models.resnet.config import TrainConfig
from models.resnet.native import ONE_CALL_MAX_C
from models.resnet.trainer import Trainer
from record import (
    TAG_AXES,
    TAG_GRID_POINT,
    TAG_KNOB,
    TAG_NODE_ID,
    TAG_PARENT_RUN,
    TAG_SWEEP_ID,
)
from sweep import driver
from tests.conftest import histories, run_sweep, trial_runs

SMOKE_STEPS = [10, 20, 30, 40, 50]
METRICS = get_family("resnet").metric_names
#: The params every ResNet run carries (docs/mlflow.md): every config field plus the split, family and counts.
TRIAL_PARAMS = ("C", "seed", "protocol", "budget", "lr", "batch_size", "eval_every", "split_seed", "split_hash",
                "model_family", "param_count", "dtype", "label_noise", "n_flipped_labels")


@pytest.fixture(scope="module")
def smoke(ray_local, tmp_path_factory):
    folder = tmp_path_factory.mktemp("smoke")
    sweep = run_sweep(folder, "smoke", "--no-analyze")
    return folder, sweep, MlflowClient(sweep.tracking_uri)


def children(sweep: driver.Sweep) -> dict[tuple[int, int], object]:
    return {(int(r.data.params["C"]), int(r.data.params["seed"])): r for r in trial_runs(sweep)}


def pack_of(run) -> list[int]:
    """The seeds a run was trained with in one packed computation (its ``pack_seeds`` tag)."""
    return [int(seed) for seed in run.data.tags["pack_seeds"].split(",")]


def test_smoke_makes_one_parent_and_four_finished_children(smoke):
    _, sweep, client = smoke
    parent = client.get_run(sweep.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == sweep.sweep_id
    assert parent.data.tags[TAG_SWEEP_ID] == sweep.sweep_id
    assert {"torch_version", "ray_version", "mlflow_version", "host", "preset"} <= set(parent.data.tags)
    assert parent.data.params["sweep.model.C"] == "[1, 4]" and parent.data.params["sweep.budget"] == "50"
    assert [a.path for a in client.list_artifacts(sweep.parent_run_id)] == ["spec.yaml"]
    assert json.loads(parent.data.tags[TAG_AXES]) == ["C"] and parent.data.tags[TAG_KNOB] == "C"
    runs = children(sweep)
    assert sorted(runs) == [(1, 0), (1, 1), (4, 0), (4, 1)]
    for (C, seed), run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.info.run_name == f"C={C} seed={seed}"  # C the only axis: the names of before
        assert run.data.tags[TAG_GRID_POINT] == f"C={C}"
        assert run.data.tags[TAG_PARENT_RUN] == sweep.parent_run_id
        assert set(TRIAL_PARAMS) <= set(run.data.params)
        assert (run.data.params["label_noise"], run.data.params["n_flipped_labels"]) == ("0.0", "0")
        assert run.data.tags[TAG_NODE_ID]
        assert run.data.params["split_hash"] == split_hash(0)
        assert run.data.params["protocol"] == "handout" and run.data.params["eval_every"] == "10"
        for key in METRICS:
            assert [step for step, _ in histories(client, run.info.run_id, key)] == SMOKE_STEPS, key
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
        assert artifacts == [f"model_C{C}_seed{seed}.pt"]


def test_every_child_records_the_machine_that_trained_it(smoke):
    """Tags a person reads in the UI, with the values this very machine has (the workers run here): worked out
    here from /proc/cpuinfo and torch, not from sweep.provenance."""
    import platform
    import re
    from pathlib import Path

    import mlflow
    import ray

    _, sweep, _ = smoke
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    cpu = model.group(1).strip() if model else platform.processor()
    blas = "mkl" if torch.backends.mkl.is_available() else None
    for run in trial_runs(sweep):
        tags = run.data.tags
        assert tags["hw.cpu"] == cpu
        assert tags["hw.cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        if blas:  # with the MKL build torch pins here: its name and version, e.g. "mkl 2024.2"
            assert re.fullmatch(r"mkl \d{4}\.\d+", tags["hw.blas"]), tags["hw.blas"]
            assert tags["hw.blas"].split()[1] in torch.__config__.show()
        assert tags["hw.torch_threads"] == "1"  # resources.cpu = 1
        assert (tags["torch_version"], tags["ray_version"], tags["mlflow_version"]) == (
            torch.__version__, ray.__version__, mlflow.__version__)
        assert "hw.gpu" not in tags and "hw.cuda" not in tags  # a CPU trial
        assert tags["pack_seeds"] == "0,1"  # the smoke preset packs a grid point's two seeds
        # the packed stem's C kernel is built wherever a C compiler is (this suite's machines have gcc), and
        # narrow widths update in one C call
        one_call = " + update_kernels.c" if int(run.data.params["C"]) <= ONE_CALL_MAX_C else ""
        assert tags["hw.code_path"] == ("aten + packed_kernels.c" + one_call if shutil.which("cc") else "aten")


def test_every_child_records_its_pack_size(smoke):
    """The pack size the plan chose is a param of each run: the number of seeds in its pack."""
    _, sweep, _ = smoke
    for run in trial_runs(sweep):
        assert run.data.params["pack_size"] == str(len(pack_of(run)))


def test_final_weights_load_into_a_resnet(smoke):
    from models.resnet.model import ResNet

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
        pack = pack_of(runs[(C, 0)])  # the trial's pack: the same computation, so the same bits
        assert pack == pack_of(runs[(C, 1)]) == [0, 1]
        trainer = Trainer(TrainConfig(C=C, budget=50, eval_every=10), seeds=pack)
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


def test_every_axis_names_its_runs(smoke):
    """C x lr x 2 seeds with label noise (issue 12): 8 runs, 8 names, each grid point's values reached the
    trainer (its logged numbers are the Trainer's for that lr and noise), nothing pooled or skipped."""
    folder, _, client = smoke
    sweep = run_sweep(folder, "smoke", "--set", "lr=[0.05,0.1]", "--set", "data.label_noise=0.1",
                      "--set", "budget=20", "--no-analyze")
    parent = client.get_run(sweep.parent_run_id)
    assert json.loads(parent.data.tags[TAG_AXES]) == ["C", "lr"] and parent.data.tags[TAG_KNOB] == "C"
    runs = {r.info.run_name: r for r in trial_runs(sweep)}
    assert sorted(runs) == sorted(f"C={C} lr={lr} seed={s}" for C in (1, 4) for lr in ("0.05", "0.1") for s in (0, 1))
    for name, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags[TAG_GRID_POINT] == name.rsplit(" seed=", 1)[0]
        assert run.data.params["lr"] == name.split("lr=")[1].split()[0]
        assert (run.data.params["label_noise"], run.data.params["n_flipped_labels"]) == ("0.1", "90")  # 89.8
    torch.set_num_threads(1)
    # The trainer run again on the same pack as the sweep's trial (its pack_seeds tag): the same kernels on the
    # same inputs, so the same bits (a pack of another size would be another computation).
    run = runs["C=4 lr=0.05 seed=1"]
    trainer = Trainer(TrainConfig(C=4, budget=20, eval_every=10, lr=0.05, label_noise=0.1), seeds=pack_of(run))
    records = [r for e in trainer.run() for r in e.records if r.seed == 1]
    run_id = run.info.run_id
    for key in ("train_error", "train_error_clean", "test_error", "minibatch_loss"):
        assert histories(client, run_id, key) == [(r.step, getattr(r, key)) for r in records], key

    # The analysis of the real sweep keeps all 8 runs and splits by lr (issue 12's acceptance).
    import warnings

    import pandas as pd
    from matplotlib.container import ErrorbarContainer

    from analysis import analyze

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a run skipped as "superseded" warns: nothing may be skipped here
        result = analyze(sweep.sweep_id, sweep.tracking_uri, folder / "grid-analysis")
    assert result.skipped == []
    summary = pd.read_csv(folder / "grid-analysis" / "summary.csv")
    assert len(summary) == 4 and {"C", "lr"} <= set(summary.columns)
    assert sorted(zip(summary["C"], summary["lr"], strict=True)) == [(1, 0.05), (1, 0.1), (4, 0.05), (4, 0.1)]
    row = summary[(summary["C"] == 4) & (summary["lr"] == 0.05)].iloc[0]
    finals = [runs[f"C=4 lr=0.05 seed={s}"].data.metrics["test_error"] for s in (0, 1)]
    assert row["final_test_error_mean"] == pytest.approx(sum(finals) / 2, abs=1e-12)
    ax = [a for a in result.figures["complexity"].axes if a.get_visible()][0]
    labels = {c.get_label() for c in ax.containers if isinstance(c, ErrorbarContainer)}
    assert labels == {f"{q}, lr={lr}" for q in ("final train error", "final test error", "gap (test − train error)")
                      for lr in (0.05, 0.1)}


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
    assert ray.is_initialized()  # the host program (this test session) had connected: its connection stays
    if (tmp_path / "mlflow.db").exists():  # the warm-up, overlapping Ray's start, may set up the schema
        client = MlflowClient(uri)
        assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


IDLE_WORKERS_OF_A_NEW_LOCAL_RAY = """
import os, ray
from sweep.driver import connect_ray

assert connect_ray("local")
raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
idle = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat, cmdline = open(f"/proc/{pid}/stat").read(), open(f"/proc/{pid}/cmdline").read()
    except OSError:
        continue
    idle += int(stat.rsplit(")", 1)[1].split()[1]) == raylet and cmdline.startswith("ray::IDLE")
print(idle)
"""


def test_a_new_local_ray_starts_no_idle_workers(tmp_path):
    """The Ray a sweep starts for itself prestarts no idle workers for its driver (Ray's default, one per CPU,
    with ray.init waiting for them): Tune's trial actors get workers of their own, so those would only slow the
    start. Counted among the raylet's children right after connecting, in a process of its own."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", IDLE_WORKERS_OF_A_NEW_LOCAL_RAY], cwd=tmp_path, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0"]
