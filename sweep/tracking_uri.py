"""Which MLflow store a sweep uses, and whether it can be reached: checks that need no MLflow import.

The CLI runs these before Ray starts or MLflow (seconds to import) is loaded, so bad input fails at once.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path


class TrackingError(RuntimeError):
    """The tracking store cannot be used; one-line message."""


def resolve_tracking_uri(flag: str | None, spec_uri: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the spec's ``tracking.uri``, else ``mlflow.db`` here.

    A relative sqlite path is made absolute, because Ray trials run in other working folders.
    """
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI") or spec_uri or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    elif "://" not in uri:
        uri = str(Path(uri).resolve())  # a plain folder is a file store
    return uri


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any trial starts, when the store at ``uri`` cannot be reached or created."""
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
