"""Helpers for tests/test_cluster.py: a two-node Ray cluster and an MLflow server on one machine.

Everything here is owned by the test that starts it and is stopped by process id, never by name:

* :class:`LocalRayCluster` starts a head and a second node with ``ray start --block`` as two process
  groups, each with its own ``--temp-dir`` (so ``ray_current_cluster`` lands there, not in
  ``/tmp/ray`` where other people's ``ray.init()`` would find it) and with every port chosen free up
  front (two raylets share one IP here, so Ray's fixed defaults such as the dashboard agent's 52365 would
  collide). Stopping sends SIGTERM to each ``ray start`` process (it tears its node down), then SIGKILL
  to whatever is left in its process group or names its temp dir on the command line.
* :class:`MlflowServer` runs ``mlflow server`` on 127.0.0.1 with a sqlite backend and a local artifact
  store, and waits for ``GET /health``.
* :func:`ray_env` is the environment for every Ray process and driver of a test: token auth disabled the
  same way everywhere (a head turns token auth on by itself when ``~/.ray/auth_token`` exists, and a
  driver without the token then cannot connect), no inherited ``RAY_ADDRESS`` or MLflow URI, no usage
  stats, and no drain wait on shutdown.

Never call ``ray stop``: it stops every Ray process on the machine, other people's included.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: ray, mlflow and sweep live next to its python


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ray_env(**extra: str) -> dict[str, str]:
    """The environment for this test's Ray nodes, drivers and CLI runs."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        PYTHONUNBUFFERED="1",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    env.update(extra)
    return env


# -- processes ---------------------------------------------------------------------------------------

def pids_mentioning(text: str) -> list[int]:
    """Ids of live processes whose command line contains ``text`` (a unique temp dir of ours)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next((ln for ln in (entry / "status").read_text().splitlines()
                          if ln.startswith("State:")), "")
        except OSError:
            continue
        if text in cmdline and "zombie" not in state:
            found.append(int(entry.name))
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(proc: subprocess.Popen, grace_s: float = 20.0, also: str | None = None) -> None:
    """SIGTERM the group leader, wait, then SIGKILL its process group and any process naming ``also``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    for pid in pids_mentioning(also) if also else []:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        _group_alive(proc.pid) or (also and pids_mentioning(also))
    ):
        time.sleep(0.2)


# -- Ray -----------------------------------------------------------------------------------------------

@dataclass
class RayNode:
    name: str
    temp_dir: Path
    log: Path
    proc: subprocess.Popen

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class LocalRayCluster:
    """A head and ``n_workers`` more nodes (1 CPU, 0 GPUs each) on this machine, started by ``ray start``.

    ``root`` must be a short path: Ray puts unix sockets under ``<temp-dir>/session_<date>_<pid>/sockets``
    and a socket path may not exceed 107 bytes, which pytest's ``tmp_path`` easily does.
    """

    root: Path
    n_workers: int = 1
    env: dict[str, str] = field(default_factory=ray_env)
    nodes: list[RayNode] = field(default_factory=list)
    gcs_port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def _start(self, name: str, head: bool) -> RayNode:
        temp_dir = self.root / name
        log = self.root / f"{name}.log"
        ports = [
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            "--min-worker-port=0", "--max-worker-port=0",  # OS-chosen worker ports: no shared range
        ]
        if head:
            self.gcs_port = free_port()
            role = [
                "--head", f"--port={self.gcs_port}",
                "--include-dashboard=false", "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}",
            ]
        else:
            role = [f"--address={self.address}"]
        cmd = [
            str(BIN / "ray"), "start", "--block", *role, *ports,
            "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
            f"--temp-dir={temp_dir}", "--disable-usage-stats", "--log-style=record",
        ]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                    cwd=self.root, start_new_session=True)
        node = RayNode(name, temp_dir, log, proc)
        self.nodes.append(node)
        return node

    def _wait_started(self, node: RayNode, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while "Ray runtime started" not in node.log_text():
            if node.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`ray start` for {node.name} did not come up:\n{node.log_text()[-4000:]}")
            time.sleep(0.3)

    def start(self) -> LocalRayCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self._wait_started(self._start("head", head=True))
        workers = [self._start(f"worker{i}", head=False) for i in range(self.n_workers)]
        for node in workers:
            self._wait_started(node)
        deadline = time.monotonic() + 60
        while len(self.alive_nodes()) < 1 + self.n_workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.alive_nodes()} of {1 + self.n_workers} nodes joined")
            time.sleep(1)
        return self

    def alive_nodes(self) -> list[dict]:
        """``ray.nodes()`` of the live nodes, asked from a throwaway driver (this process stays Ray-free)."""
        code = (
            "import json, ray\n"
            f"ray.init(address={self.address!r}, logging_level='ERROR', log_to_driver=False)\n"
            "print('NODES=' + json.dumps([n for n in ray.nodes() if n['Alive']]))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], env=self.env, cwd=self.root,
                             capture_output=True, text=True, timeout=120)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("NODES=")), None)
        if out.returncode != 0 or line is None:
            raise RuntimeError(f"could not list nodes (exit {out.returncode}):\n{out.stderr[-4000:]}")
        return json.loads(line.removeprefix("NODES="))

    def node_ids(self) -> set[str]:
        return {n["NodeID"] for n in self.alive_nodes()}

    def stop(self) -> None:
        # Workers first, so the head does not wait on them; each node's own SIGTERM handler tears it down.
        for node in reversed(self.nodes):
            stop_group(node.proc, also=str(node.temp_dir))

    def leftovers(self) -> list[int]:
        return [pid for node in self.nodes for pid in pids_mentioning(str(node.temp_dir))]

    def logs(self, limit: int = 3000) -> str:
        return "\n".join(f"--- {n.name} ---\n{n.log_text()[-limit:]}" for n in self.nodes)


@contextlib.contextmanager
def local_ray_cluster(n_workers: int = 1) -> Iterator[LocalRayCluster]:
    root = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: see LocalRayCluster
    cluster = LocalRayCluster(root, n_workers=n_workers)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


# -- MLflow ----------------------------------------------------------------------------------------

@dataclass
class MlflowServer:
    root: Path
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.root / "mlflow-server.log"

    def start(self, timeout_s: float = 90) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cmd = [
            str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1",
        ]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=ray_env(),
                                         cwd=self.root, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = self.log.read_text(errors="replace")[-4000:]
                self.stop()
                raise RuntimeError(f"mlflow server did not answer /health:\n{text}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, grace_s=10)


@contextlib.contextmanager
def mlflow_server(root: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(root)
    try:
        yield server.start()
    finally:
        server.stop()


# -- a stand-in for `sweep run` ------------------------------------------------------------------------

# A trivial Ray Tune job with the CLI's MLflow contract (one parent run, one child per trial tagged with
# the node that ran it, metrics at steps 10..50): it checks the cluster and server plumbing without the
# project's CLI. Run as ``python -c TUNE_JOB ADDRESS TRACKING_URI``.
TUNE_JOB = r'''
import sys, time
import mlflow, ray
from ray import tune

address, uri = sys.argv[1], sys.argv[2]
ray.init(address=address, logging_level="ERROR")
mlflow.set_tracking_uri(uri)
mlflow.set_experiment("harness")
with mlflow.start_run(run_name="parent", tags={"sweep.role": "parent"}) as parent:
    parent_id = parent.info.run_id

def trainable(config):
    mlflow.set_tracking_uri(uri)
    node = ray.get_runtime_context().get_node_id()
    client = mlflow.MlflowClient()
    run = client.create_run(client.get_experiment_by_name("harness").experiment_id,
                            run_name=f"trial {config['i']}",
                            tags={"mlflow.parentRunId": parent_id, "sweep.role": "trial", "ray.node_id": node})
    for step in range(10, 51, 10):
        time.sleep(0.3)
        client.log_metric(run.info.run_id, "train_error", 1.0 / step, step=step)
        tune.report({"step": step, "node": node})
    client.set_terminated(run.info.run_id, "FINISHED")

tuner = tune.Tuner(tune.with_resources(trainable, {"cpu": 1}),
                   param_space={"i": tune.grid_search([0, 1, 2, 3])},
                   run_config=tune.RunConfig(storage_path=sys.argv[3], verbose=0))
results = tuner.fit()
assert not results.errors, results.errors
mlflow.MlflowClient().set_terminated(parent_id, "FINISHED")
print("NODES_USED=" + ",".join(sorted({r.metrics["node"] for r in results})))
'''
