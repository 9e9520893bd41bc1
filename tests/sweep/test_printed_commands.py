"""Issue 18: every command `sweep run` prints at its end runs as printed, from a plain shell (no venv
activated) in the project folder."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
PLAIN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}


def printed_commands(stdout: str) -> list[str]:
    """The indented lines after the sweep's table whose first word is a program (sweep, mlflow)."""
    tail = stdout[stdout.index("Open the MLflow UI:"):]
    lines = [ln.strip() for ln in tail.splitlines() if ln.startswith("  ")]
    return [ln for ln in lines if Path(ln.split()[0]).name in ("sweep", "mlflow")]


def test_every_printed_command_runs_as_printed(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    proc = subprocess.run([str(BIN / "sweep"), "run", "smoke", "--set", "budget=20", "--tracking-uri", uri,
                           "--storage", str(tmp_path / "ray_results"), "--out", str(tmp_path / "out")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    commands = printed_commands(proc.stdout)
    programs = sorted(Path(shlex.split(c)[0]).name for c in commands)
    assert programs == ["mlflow", "sweep"], proc.stdout[-2000:]
    # Run from the project folder, the venv not activated: bare `mlflow`/`sweep` would not be found there.
    assert shutil.which("sweep", path=PLAIN_ENV["PATH"]) is None
    made = []
    try:
        for line in commands:
            words = shlex.split(line)
            if words[1] == "ui":  # it would start a server: check that it parses as printed
                line += " --help"
            if words[1] == "analyze":
                made.append(REPO / "sweep_results" / words[2])
            ran = subprocess.run(["bash", "-c", line], cwd=REPO, env=PLAIN_ENV, capture_output=True, text=True,
                                 timeout=600)
            assert ran.returncode == 0, f"{line!r} exited {ran.returncode}: {ran.stderr[-2000:]}"
            if words[1] == "analyze":
                assert "complexity.png" in ran.stdout
    finally:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)
