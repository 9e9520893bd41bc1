"""Helpers for tests/sweep/test_cluster.py: a two-node Ray cluster and an MLflow server on one machine.

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
import copy
import json
import os
import shutil
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

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: ray, mlflow and sweep live next to its python


_HANDED_OUT: set[int] = set()


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free now, none handed out before by this process: the sockets stay bound until all
    ``n`` are chosen (asked one at a time, the OS may give the same free port twice, and Ray refuses a port
    shared by two of its components)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < n:
            s = stack.enter_context(socket.socket())
            s.bind((host, 0))
            port = s.getsockname()[1]
            if port not in _HANDED_OUT:
                ports.append(port)
                _HANDED_OUT.add(port)
        return ports


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


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
    started_node_ids: set[str] = field(default_factory=set)  # ray.nodes() once all had joined

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def _start(self, name: str, head: bool) -> RayNode:
        temp_dir = self.root / name
        log = self.root / f"{name}.log"
        free = iter(free_ports(8))
        ports = [
            f"--node-manager-port={next(free)}",
            f"--object-manager-port={next(free)}",
            f"--dashboard-agent-listen-port={next(free)}",
            f"--dashboard-agent-grpc-port={next(free)}",
            f"--runtime-env-agent-port={next(free)}",
            f"--metrics-export-port={next(free)}",
            "--min-worker-port=0", "--max-worker-port=0",  # OS-chosen worker ports: no shared range
        ]
        if head:
            self.gcs_port = next(free)
            role = [
                "--head", f"--port={self.gcs_port}",
                "--include-dashboard=false", "--dashboard-host=127.0.0.1", f"--dashboard-port={next(free)}",
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
        while len(nodes := self.alive_nodes()) < 1 + self.n_workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(nodes)} of {1 + self.n_workers} nodes joined:\n{self.logs()}")
            time.sleep(1)
        self.started_node_ids = {n["NodeID"] for n in nodes}
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

def http_ok(url: str, timeout_s: float = 2) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status == 200
    except OSError:
        return False


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

    def launch(self) -> MlflowServer:
        """Start the server in the background; :meth:`wait_ready` waits for it."""
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
        return self

    def wait_ready(self, timeout_s: float = 120) -> MlflowServer:
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout_s
        while not http_ok(f"{self.uri}/health"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = self.log.read_text(errors="replace")[-4000:]
                self.stop()
                raise RuntimeError(f"mlflow server did not answer /health:\n{text}")
            time.sleep(0.5)
        return self

    def start(self) -> MlflowServer:
        return self.launch().wait_ready()

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


# -- `ray up` with the local provider, isolated in namespaces ------------------------------------------

HEAD_IP, WORKER_IP = "127.0.0.1", "127.0.0.2"
PRIVATE_IP = "10.77.0.1"  # the head's "private IP" in the test's network namespace (`hostname -I`)


def local_provider_config(aws: dict, ssh_key: Path, venv_bin: Path, cluster_name: str) -> dict:
    """cluster.yaml turned into its on-premises variant (the recipe in its header) for one machine.

    Head 127.0.0.1 and worker 127.0.0.2 are the same machine here, which changes three things:
    the worker must not run `ray stop` (it would stop the head), it needs ports of its own, and each node
    gets one CPU so that the four smoke trials must use both. Setup installs nothing (this checkout's venv
    is already there); it puts the venv on PATH in ~/.bashrc the way cluster.yaml's setup does. No NFS
    share of ray_results either: both nodes already see one filesystem.
    """
    config = copy.deepcopy(aws)
    for key in ("available_node_types", "head_node_type"):
        config.pop(key, None)
    config.update(
        cluster_name=cluster_name,
        max_workers=1,
        provider={"type": "local", "head_ip": HEAD_IP, "worker_ips": [WORKER_IP]},
        auth={"ssh_user": "root", "ssh_private_key": str(ssh_key)},
        setup_commands=[
            f"grep -q '{venv_bin}' ~/.bashrc || echo 'export PATH={venv_bin}:$PATH' >> ~/.bashrc",
            "grep -q RAY_AUTH_MODE ~/.bashrc || echo 'export RAY_AUTH_MODE=disabled' >> ~/.bashrc",
        ],
        head_setup_commands=[],
        worker_setup_commands=[],
    )
    head = []
    for cmd in aws["head_start_ray_commands"]:
        if "ray start --head" in cmd:
            cmd = cmd.replace("ray start --head", "ray start --head --num-cpus=1 --num-gpus=0")
        head.append(cmd)
    assert any("--num-cpus=1" in c for c in head), "cluster.yaml has no `ray start --head` command"
    config["head_start_ray_commands"] = head
    config["worker_start_ray_commands"] = [
        f"ulimit -n 65536; ray start --address=$RAY_HEAD_IP:6379 --node-ip-address={WORKER_IP} "
        "--num-cpus=1 --num-gpus=0 --object-manager-port=8077 --dashboard-agent-listen-port=52366 "
        "--min-worker-port=20002 --max-worker-port=29999 --disable-usage-stats"
    ]
    return config


NAMESPACE_TOOLS = ("/usr/sbin/sshd", "/usr/bin/ssh-keygen", "/usr/bin/rsync", "/usr/bin/unshare", "/usr/sbin/ip")


def ray_up_prerequisites() -> str | None:
    """Why the `ray up` test cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (its own sshd for root, namespaces)"
    missing = [t for t in NAMESPACE_TOOLS if not Path(t).exists()]
    if missing:
        return f"missing {', '.join(missing)}: run scripts/cluster_test_setup.sh"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--net", "--mount", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create PID/network/mount namespaces here: {probe.stderr.strip()}"
    return None


def run_ray_up_in_namespace(workdir: Path, timeout_s: float) -> dict:
    """Run :func:`_ray_up_e2e` as PID 1's child in fresh PID, network and mount namespaces.

    Why namespaces: `ray up`/`ray down` run `ray stop`, which stops every Ray process it can see, and
    the launcher, the head and the worker all live on this one machine. In the namespaces, `ray stop`
    sees only this test's processes, the default Ray ports (6379, 8265, 5000...) are free, /tmp (where
    Ray writes ray_current_cluster) and the home directories are private, sshd can only be reached from
    inside, and when PID 1 exits the kernel kills whatever is left.
    """
    cmd = [
        "unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--mount", "--",
        "/bin/bash", "-c", '"$@" & wait $!', "bash",
        sys.executable, str(Path(__file__).resolve()), "ray-up-e2e", str(workdir),
    ]
    env = ray_env(RAY_UP_enable_autoscaler_v2="0")
    with open(workdir / "e2e.log", "wb") as log:
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout_s)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    result_file = workdir / "result.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    result["exit"] = rc
    return result


def _sh(cmd: list[str] | str, log, timeout_s: float, **kw) -> subprocess.CompletedProcess:
    if isinstance(cmd, str):
        kw["shell"] = True
    log.write(f"\n$ {cmd if isinstance(cmd, str) else ' '.join(cmd)}\n".encode())
    log.flush()
    return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s, **kw)


def _ray_processes() -> list[str]:
    """Ray processes visible here, matched the way `ray stop` matches them (names and command lines)."""
    from ray.autoscaler._private.constants import RAY_PROCESSES

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            zombie = "zombie" in (entry / "status").read_text()
        except OSError:
            continue
        if not zombie and any((keyword in comm) if by_name else (keyword in args)
                              for keyword, by_name in RAY_PROCESSES):
            found.append(f"{entry.name} {args[:120]}")
    return found


def _needed_under(target: Path) -> list[Path]:
    """Top-level folders of ``target`` that hold this checkout, its venv or the venv's interpreter."""
    needed = {Path(os.path.realpath(sys.executable)), REPO.resolve(), BIN.resolve()}
    tops = set()
    for path in needed:
        if path.is_relative_to(target) and path != target:
            tops.add(target / path.relative_to(target).parts[0])
    return sorted(tops)


def _ray_up_e2e(workdir: Path) -> dict:
    """Inside the namespaces: sshd, `ray up`, the smoke sweep via `ray exec`, `ray down`, checks."""
    result: dict = {"steps": {}}
    t0 = time.monotonic()

    def step(name: str) -> None:
        result["steps"][name] = round(time.monotonic() - t0, 1)
        (workdir / "result.json").write_text(json.dumps(result, indent=1))

    log = open(workdir / "steps.log", "wb")  # noqa: SIM115 - closed at the end of the scenario
    # Private mounts first, so nothing below leaks into the machine's /tmp, /root or /home.
    for name in ("tmp", "root", "home/ubuntu", "ssh"):
        (workdir / name).mkdir(parents=True, exist_ok=True)
    _sh("mount --make-rprivate /", log, 10, check=True)
    for target, source in (("/tmp", "tmp"), ("/root", "root"), ("/home", "home")):
        # What this test runs on must stay visible: the venv's interpreter may live in /root/.pyenv.
        for keep in _needed_under(Path(target)):
            inner = workdir / source / keep.relative_to(target)
            inner.mkdir(parents=True, exist_ok=True)
            _sh(["mount", "--bind", str(keep), str(inner)], log, 10, check=True)
        _sh(["mount", "--rbind", str(workdir / source), target], log, 10, check=True)
    os.chmod("/tmp", 0o1777)
    # Loopback, plus one private address for `hostname -I` (a veth pair: some kernels lack `dummy`).
    _sh(f"ip link set lo up && ip link add veth0 type veth peer name veth1 && ip addr add {PRIVATE_IP}/24"
        " dev veth0 && ip link set veth0 up && ip link set veth1 up", log, 10, check=True)
    Path("/root/.profile").write_text('[ -f ~/.bashrc ] && . ~/.bashrc\n')
    Path("/root/.bashrc").write_text("# test home for ray up\n")

    ssh = workdir / "ssh"
    key = ssh / "id_ed25519"
    _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "host_key")], log, 30, check=True)
    _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], log, 30, check=True)
    shutil.copy(f"{key}.pub", ssh / "authorized_keys")
    (ssh / "sshd_config").write_text("\n".join([
        f"ListenAddress {HEAD_IP}:22", f"ListenAddress {WORKER_IP}:22",
        f"HostKey {ssh / 'host_key'}", f"PidFile {ssh / 'sshd.pid'}",
        f"AuthorizedKeysFile {ssh / 'authorized_keys'}",
        "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "UsePAM no", "StrictModes no", "MaxStartups 100", "MaxSessions 100", "",
    ]))
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation dir (Debian's service makes it)
    with open(workdir / "sshd.log", "wb") as sshd_log:  # sshd needs its absolute path (it re-executes)
        sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(ssh / "sshd_config")],
                                stdout=sshd_log, stderr=subprocess.STDOUT)
    step("sshd")

    config_path = workdir / "cluster-local.yaml"
    aws = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config = local_provider_config(aws, key, BIN, f"cs-e2e-{os.getpid()}-{int(time.time()) % 100000}")
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    ray = str(BIN / "ray")
    env = dict(os.environ, HOME="/root", TMPDIR="/tmp")

    up = _sh([ray, "up", "-y", "--no-config-cache", str(config_path)], log, 600, env=env)
    result["ray_up_exit"] = up.returncode
    step("ray_up")

    # The head's autoscaler starts the worker over ssh; wait until both nodes are alive.
    count_nodes = ("python -c \"import ray; ray.init(address='auto', logging_level='ERROR'); "
                   "print('ALIVE', sum(n['Alive'] for n in ray.nodes()))\"")
    deadline = time.monotonic() + 240
    alive = 0
    while up.returncode == 0 and time.monotonic() < deadline:
        out = subprocess.run([ray, "exec", str(config_path), count_nodes], env=env, capture_output=True,
                             text=True, timeout=120)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("ALIVE")), "ALIVE 0")
        alive = int(line.split()[1])
        if alive >= 2:
            break
        time.sleep(5)
    result["alive_nodes"] = alive
    step("worker_joined")

    mlflow_uri = f"http://{PRIVATE_IP}:5000"
    deadline = time.monotonic() + 180
    while not http_ok(f"{mlflow_uri}/health") and time.monotonic() < deadline:
        time.sleep(1)
    result["mlflow_up"] = http_ok(f"{mlflow_uri}/health")
    result["mlflow_on_localhost"] = http_ok("http://127.0.0.1:5000/health")  # `ray attach -p 5000` goes there
    step("mlflow_up")

    if alive >= 2 and result["mlflow_up"]:
        sweep = ("cd /home/ubuntu && sweep run smoke --set pack=off --address auto --no-analyze "
                 "--tracking-uri http://$(hostname -I | awk '{print $1}'):5000")
        run = _sh([ray, "exec", str(config_path), sweep], log, 480, env=env)
        result["sweep_exit"] = run.returncode
        step("sweep")
        result["mlflow"] = _mlflow_summary(mlflow_uri)
        step("mlflow_checked")

    down = _sh([ray, "down", "-y", str(config_path)], log, 300, env=env)
    result["ray_down_exit"] = down.returncode
    deadline = time.monotonic() + 60
    while _ray_processes() and time.monotonic() < deadline:  # raylets need a moment after SIGTERM
        time.sleep(1)
    result["ray_left_after_down"] = _ray_processes()
    step("ray_down")

    pid_file = Path("/home/ubuntu/mlflow/server.pid")  # `ray down` leaves MLflow to the user on-prem
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
    sshd.terminate()
    sshd.wait(timeout=10)
    step("done")
    log.close()
    return result


def _mlflow_summary(uri: str) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    if experiment is None:
        return {}
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    return {
        "runs": [
            {"name": r.info.run_name, "status": r.info.status, "role": r.data.tags.get("sweep.role"),
             "node": r.data.tags.get("ray.node_id"),
             "steps": sorted(m.step for m in client.get_metric_history(r.info.run_id, "train_error"))}
            for r in runs
        ]
    }


if __name__ == "__main__" and sys.argv[1:2] == ["ray-up-e2e"]:
    _workdir = Path(sys.argv[2])
    try:
        _ray_up_e2e(_workdir)
    except Exception as exc:  # recorded for the test, which reads result.json
        _partial = json.loads((_workdir / "result.json").read_text()) if (_workdir / "result.json").exists() else {}
        _partial["error"] = f"{type(exc).__name__}: {exc}"
        (_workdir / "result.json").write_text(json.dumps(_partial, indent=1))
        raise
