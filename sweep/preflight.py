"""Before anything is written: which MLflow store and which Ray a sweep uses, and whether they can serve it.

The CLI runs the first checks before Ray starts or MLflow (seconds to import each) is loaded, so bad input
fails at once; the checks after :func:`connect_ray` ask the cluster itself.
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from models.spec import CommonSpec


class SweepError(RuntimeError):
    """A sweep that cannot start or continue; its message is one line (the CLI exits 2)."""


class TrackingError(RuntimeError):
    """The tracking store cannot be used; one-line message."""


def resolve_tracking_uri(flag: str | None, spec_uri: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the spec's ``tracking.uri``, else ``mlflow.db`` here.

    A relative sqlite path is made absolute, because Ray trials run in other working folders.
    """
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI") or spec_uri or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    elif uri.startswith("file:") and not uri.startswith("file://"):
        # file:./mlruns and file:mlruns are relative paths (RFC 8089's local form); MLflow would take the
        # whole string for a folder name. file:///abs is left as it is.
        uri = Path(uri.removeprefix("file:")).resolve().as_uri()
    elif "://" not in uri and not uri.startswith(("sqlite:", "file:")):
        uri = str(Path(uri).resolve())  # a plain folder is a file store
    return uri


def check_form(uri: str) -> None:
    """Refuse, before Ray starts, URIs MLflow would misread or refuse later: ``sqlite://rel.db`` (two slashes:
    "rel.db" is taken for a host, and the error comes when the first run is written), ``file://host/...``,
    and a file store (a folder, ``file:``) unless ``MLFLOW_ALLOW_FILE_STORE`` is true."""
    if uri.startswith("sqlite:") and not uri.startswith("sqlite:///"):
        raise TrackingError(f"tracking URI {uri} is malformed: a sqlite URI has three slashes before a relative "
                            "path (sqlite:///mlflow.db) and four before an absolute one (sqlite:////abs/mlflow.db)")
    if uri.startswith("file://") and not uri.startswith("file:///"):
        raise TrackingError(f"tracking URI {uri} is malformed: use file:///abs/folder, file:./folder or a plain "
                            "folder path")
    if (uri.startswith("file:") or "://" not in uri) and not file_store_allowed():
        # MLflow 3 refuses its file store unless told otherwise; without this check the refusal would come
        # from the first trial, after Ray started.
        raise TrackingError(f"tracking URI {uri} is an MLflow file store, which MLflow 3 refuses unless "
                            "MLFLOW_ALLOW_FILE_STORE=true is set; use sqlite:///mlflow.db or set it")


def file_store_allowed() -> bool:
    """MLflow's own switch (``MLFLOW_ALLOW_FILE_STORE``, read as MLflow reads booleans)."""
    return os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("true", "1")


def local_store_path(uri: str) -> Path | None:
    """The file (sqlite) or folder (file store) that holds the local store at ``uri``; None for a server."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("file:///"):
        return Path(urllib.parse.unquote(uri.removeprefix("file://")))
    if "://" not in uri:
        return Path(uri)
    return None


def check_exists(uri: str) -> None:
    """For commands that only read a sweep (``resume``, ``analyze``): the store must already exist, because
    opening a sqlite file or a file store that is not there creates an empty one."""
    check_form(uri)
    path = local_store_path(uri)
    if path is not None and not path.exists():
        kind = "file" if uri.startswith("sqlite:") else "folder"
        raise TrackingError(f"no MLflow store at {uri} (the {kind} {path} does not exist); pass the store the "
                            "sweep was run with as --tracking-uri or MLFLOW_TRACKING_URI")


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any trial starts, when the store at ``uri`` cannot be reached or created."""
    check_form(uri)
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
                if resp.status != 200:
                    raise TrackingError(f"tracking server {uri} answered /health with HTTP {resp.status}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"tracking URI {uri} is unreachable ({reason}); start the server "
                                "or pass another --tracking-uri") from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise TrackingError(f"tracking URI {uri}: folder {folder} does not exist")
    elif (path := local_store_path(uri)) is not None and not path.parent.is_dir():
        raise TrackingError(f"tracking URI {uri}: folder {path.parent} does not exist")


# -- Ray -------------------------------------------------------------------------------------------------

def resolve_address(flag: str | None) -> str:
    """--address, else RAY_ADDRESS, else "local": a fresh Ray on this machine, never someone else's."""
    return flag or os.environ.get("RAY_ADDRESS") or "local"


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    if address in ("local", "auto"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"Ray address {address!r} is malformed: expected host:port, ray://host:port, "
                         "'auto' or 'local'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise SweepError(f"Ray address {address} is unreachable ({exc.strerror or exc}); start the cluster "
                         "or pass another --address") from None


def check_local_gpus(spec: CommonSpec, address: str) -> None:
    if spec.resources.gpu <= 0 or address != "local":
        return
    import torch  # only when GPUs are asked for: torch's import (~1.5 s) is not the CLI's to pay otherwise

    if torch.cuda.device_count() == 0:
        raise SweepError(f"resources.gpu={spec.resources.gpu} requested but this machine has no GPU "
                         "(torch sees 0 CUDA devices); use resources.gpu=0 or a cluster with GPUs")


def local_ray_cpus() -> float:
    """The CPUs ``ray.init(address="local")`` gives its one node: Ray's own count (cgroup-aware), else the
    machine's."""
    try:
        # Ray's own count, cgroup-aware; imported here, as Ray costs ~1 s to import and the CLI's first checks
        # must not pay it. Private, hence the fallback.
        from ray._private.utils import get_num_cpus

        return float(get_num_cpus())
    except Exception:  # noqa: BLE001 - any change in Ray's internals: fall back to the plain count
        return float(os.cpu_count() or 1)


def check_local_cpus(spec: CommonSpec, address: str) -> None:
    """Before a local Ray starts: a trial asking for more CPUs than this machine has would wait forever."""
    if address != "local":
        return
    cpus = local_ray_cpus()
    if spec.resources.cpu > cpus:
        raise SweepError(f"resources.cpu={spec.resources.cpu:g} is more than the {cpus:g} CPUs of this machine "
                         f"(a local Ray): a trial could never start; use resources.cpu <= {cpus:g}")
