"""The distributed path: cluster.yaml, a two-node Ray cluster with a shared MLflow server, `ray up`.

* cluster.yaml passes Ray's own config validator (offline: no AWS call), and typos are rejected;
* ``test_smoke_sweep_on_two_nodes`` (part of ``make test``): a head and a second node started with
  ``ray start`` on this machine plus an ``mlflow server``; ``sweep run smoke`` through them must spread its
  trials over both nodes and record every run, complete, on the server;
* tests marked ``cluster`` (``make cluster-test``): a stand-in Tune job that checks the harness alone, and
  ``ray up`` / ``ray exec`` / ``ray down`` end to end with the ``local`` provider over ssh.

Never call ``ray stop`` here: it stops every Ray process on the machine. See tests/cluster_harness.py.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.cluster_harness import (
    BIN,
    REPO,
    TUNE_JOB,
    LocalRayCluster,
    MlflowServer,
    local_provider_config,
    pids_mentioning,
    ray_env,
    ray_up_prerequisites,
    run_ray_up_in_namespace,
)

CLUSTER_YAML = REPO / "cluster.yaml"


def load_cluster_yaml() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def ray_validate(config: dict) -> dict:
    """What `ray up` does before it talks to the cloud: fill defaults, merge commands, check the schema."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


# -- cluster.yaml ----------------------------------------------------------------------------------------

def test_cluster_yaml_passes_ray_validator():
    prepared = ray_validate(load_cluster_yaml())
    assert prepared["provider"]["type"] == "aws"
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["max_workers"] == 0
    gpu = [t for name, t in types.items() if name != prepared["head_node_type"]]
    assert len(gpu) == 1 and gpu[0]["min_workers"] == 0 and 1 <= gpu[0]["max_workers"] <= prepared["max_workers"]
    assert gpu[0]["resources"].get("GPU", 0) >= 1


@pytest.mark.parametrize("where", ["top", "node_type", "auth", "head_resources"])
def test_cluster_yaml_with_a_misspelled_key_is_rejected(where):
    config = load_cluster_yaml()
    if where == "top":
        config["head_start_ray_comands"] = config.pop("head_start_ray_commands")
    elif where == "node_type":
        config["available_node_types"]["gpu"]["min_worker"] = config["available_node_types"]["gpu"].pop(
            "min_workers")
    elif where == "auth":
        config["auth"]["ssh_usr"] = config["auth"].pop("ssh_user")
    else:
        head = config["available_node_types"][config["head_node_type"]]
        head["resource"] = head.pop("resources")
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(config)


def test_cluster_yaml_commands():
    text = CLUSTER_YAML.read_text()
    config = load_cluster_yaml()
    start = " ".join(config["head_start_ray_commands"])
    assert "mlflow server" in start
    assert "--backend-store-uri sqlite:////home/ubuntu/mlflow/mlflow.db" in start
    assert re.search(r"--host \"?\$\(hostname -I", start), "MLflow must listen on the head's private IP"
    assert '--gunicorn-opts "--bind 127.0.0.1:5000"' in start, "and on 127.0.0.1, for `ray attach -p 5000`"
    assert "0.0.0.0" not in start
    assert "--dashboard-host=127.0.0.1" in start
    for secret in ("aws_access_key_id", "aws_secret_access_key", "AKIA", "aws_session_token"):
        assert secret.lower() not in text.lower()
    # `ray` must be on PATH in a login shell, or `ray down` cannot run `ray stop` (and says nothing).
    assert any("bashrc" in cmd for cmd in config["setup_commands"])
    # Tune's storage (the CLI's default ./ray_results under `ray exec`) is shared: exported by the head,
    # mounted by every worker at the same path.
    assert any("/etc/exports" in cmd and "/home/ubuntu/ray_results" in cmd for cmd in config["head_setup_commands"])
    assert any("mount -t nfs" in cmd and "$RAY_HEAD_IP:/home/ubuntu/ray_results /home/ubuntu/ray_results" in cmd
               for cmd in config["worker_setup_commands"])


def test_local_provider_variant_passes_ray_validator(tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("not a key")
    config = local_provider_config(load_cluster_yaml(), key, venv_bin=BIN, cluster_name="cs-validate")
    prepared = ray_validate(config)
    assert prepared["provider"] == {"type": "local", "head_ip": "127.0.0.1", "worker_ips": ["127.0.0.2"]}
    assert prepared["max_workers"] == 1


# -- two nodes on this machine -------------------------------------------------------------------------

@pytest.fixture
def two_nodes_and_server():
    """(cluster, server): head + one node, 1 CPU each, and an MLflow server; all stopped afterwards."""
    root = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: unix socket paths under it
    server = MlflowServer(root / "mlflow").launch()  # starts in the background while Ray comes up
    cluster = LocalRayCluster(root / "ray")
    try:
        cluster.start()
        server.wait_ready()
        yield cluster, server
    finally:
        cluster.stop()
        server.stop()
    leftovers = cluster.leftovers() + pids_mentioning(str(server.root))
    assert not leftovers, f"processes of this test still running: {leftovers}"
    shutil.rmtree(root, ignore_errors=True)


def _default_ray_address_file() -> str:
    """What a plain ``ray.init()`` on this machine would connect to (``/tmp/ray/ray_current_cluster``)."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    return path.read_text() if path.exists() else ""


def test_smoke_sweep_on_two_nodes(two_nodes_and_server, tmp_path):
    from mlflow import MlflowClient

    from record import ROLE_PARENT, ROLE_TRIAL, TAG_NODE_ID, TAG_PARENT_RUN, TAG_ROLE

    cluster, server = two_nodes_and_server
    nodes = cluster.started_node_ids
    assert len(nodes) == 2
    # Our head advertises itself in its own temp dir, not where a plain ray.init() looks.
    assert f":{cluster.gcs_port}" not in _default_ray_address_file()
    assert f":{cluster.gcs_port}" in (cluster.nodes[0].temp_dir / "ray_current_cluster").read_text()

    cmd = [str(BIN / "sweep"), "run", "smoke", "--set", "pack=off", "--address", cluster.address,
           "--tracking-uri", server.uri, "--no-analyze"]
    out = subprocess.run(cmd, cwd=tmp_path, env=ray_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (
        f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}\n{cluster.logs()}")

    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("smoke")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get(TAG_ROLE) == ROLE_PARENT]
    children = [r for r in runs if r.data.tags.get(TAG_ROLE) == ROLE_TRIAL]
    assert len(parents) == 1 and len(children) == 4, [r.info.run_name for r in runs]
    assert all(r.info.status == "FINISHED" for r in runs), {r.info.run_name: r.info.status for r in runs}
    assert {r.data.tags[TAG_PARENT_RUN] for r in children} == {parents[0].info.run_id}
    assert sorted((r.data.params["C"], r.data.params["seed"]) for r in children) == [
        ("1", "0"), ("1", "1"), ("4", "0"), ("4", "1")]

    used = {r.data.tags.get(TAG_NODE_ID) for r in children}
    assert used == nodes, f"trials ran on {used}, the cluster's nodes are {nodes}"

    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_error")]
        assert sorted(steps) == [10, 20, 30, 40, 50], (run.info.run_name, steps)


@pytest.mark.cluster
def test_harness_tune_job_on_two_nodes(two_nodes_and_server, tmp_path):
    """The harness without the project's CLI: a trivial Tune job must use both nodes and the server."""
    from mlflow import MlflowClient

    cluster, server = two_nodes_and_server
    out = subprocess.run([sys.executable, "-c", TUNE_JOB, cluster.address, server.uri, str(tmp_path / "tune")],
                         cwd=tmp_path, env=ray_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    used = next(ln for ln in out.stdout.splitlines() if ln.startswith("NODES_USED=")).split("=", 1)[1]
    assert set(used.split(",")) == cluster.started_node_ids
    client = MlflowClient(server.uri)
    runs = client.search_runs([client.get_experiment_by_name("harness").experiment_id])
    assert len(runs) == 5 and all(r.info.status == "FINISHED" for r in runs)


# -- ray up / ray exec / ray down ------------------------------------------------------------------------

@pytest.mark.cluster
def test_ray_up_local_provider_end_to_end():
    """cluster.yaml's on-premises variant: `ray up`, the smoke sweep via `ray exec`, `ray down`, nothing left.

    Head 127.0.0.1 and worker 127.0.0.2 are this machine, reached over ssh (a throwaway sshd and key);
    the whole scenario runs in its own PID, network and mount namespaces so that the `ray stop` inside
    `ray up`/`ray down` cannot touch anyone else's Ray (see run_ray_up_in_namespace).
    """
    if os.geteuid() != 0:
        pytest.skip("needs root (its own sshd for root, namespaces)")
    setup = subprocess.run(["bash", str(REPO / "scripts" / "cluster_test_setup.sh")],
                           capture_output=True, text=True, timeout=600)
    if setup.returncode != 0:
        # The script exists to make this test runnable; its failure is a failure, not a reason to skip.
        pytest.fail(f"scripts/cluster_test_setup.sh failed (exit {setup.returncode}): "
                    f"{setup.stderr.strip()[-500:]}")
    reason = ray_up_prerequisites()
    if reason:
        pytest.skip(reason)

    workdir = Path(tempfile.mkdtemp(prefix="cs-e2e-", dir="/var/tmp"))  # outside /tmp, which it replaces
    result = run_ray_up_in_namespace(workdir, timeout_s=900)
    steps_log = workdir / "steps.log"
    details = (f"{json.dumps(result, indent=1)[:6000]}\n--- {steps_log} ---\n"
               f"{steps_log.read_text(errors='replace')[-8000:] if steps_log.exists() else ''}")

    assert result.get("ray_up_exit") == 0, details
    assert result.get("alive_nodes") == 2, details
    assert result.get("mlflow_up"), details
    assert result.get("mlflow_on_localhost"), details
    assert result.get("sweep_exit") == 0, details
    runs = result["mlflow"]["runs"]
    parents = [r for r in runs if r["role"] == "parent"]
    children = [r for r in runs if r["role"] == "trial"]
    assert len(parents) == 1 and len(children) == 4, details
    assert all(r["status"] == "FINISHED" for r in runs), details
    assert all(r["steps"] == [10, 20, 30, 40, 50] for r in children), details
    assert len({r["node"] for r in children}) == 2, f"trials did not use both nodes\n{details}"
    assert result.get("ray_down_exit") == 0, details
    assert result.get("ray_left_after_down") == [], f"`ray down` left Ray running\n{details}"
    assert result.get("exit") == 0, details
    assert not pids_mentioning(str(workdir)), "processes of the scenario outlived its namespace"
    shutil.rmtree(workdir, ignore_errors=True)
