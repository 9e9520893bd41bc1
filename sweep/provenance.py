"""What produced a run's numbers: the code (git commit), the libraries, and the machine's numeric stack.

The parent run gets :func:`library_tags` (where the sweep was launched); every child run gets
:func:`machine_tags` from the worker that trained it, since on a cluster that is another machine. Results
depend on the CPU's kernels: the same configuration and seed give the same bits on the same kind of
machine, and rounding-level differences elsewhere (other vector width, other BLAS build), which training can
amplify (see docs). These tags say which machine a number came from.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path

from record import (
    TAG_BLAS,
    TAG_CPU,
    TAG_CPU_CAPABILITY,
    TAG_CUDA,
    TAG_CUDNN,
    TAG_GPU,
    TAG_MKL_INSTRUCTIONS,
    TAG_TORCH_THREADS,
)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def version_tags() -> dict[str, str]:
    """torch, Ray and MLflow versions of this process's environment, read without importing them: the driver
    does not import torch (~2.5 s of CPU at its start), only the trial workers do."""
    return {f"{name}_version": version(name) for name in ("torch", "ray", "mlflow")}


def library_tags() -> dict[str, str]:
    """The parent run's: versions, host and git commit of the launching process."""
    tags = {**version_tags(), "host": socket.gethostname()}
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
    return tags


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name: Linux's /proc/cpuinfo ``model name`` (a VM may report a generic one), else
    what :func:`platform.processor` says. Read by hand: the standard library has no portable call for it,
    and a package that probes CPUID (py-cpuinfo) costs a second per process."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return (found.group(1).strip() if found else platform.processor()) or "unknown"


def blas() -> str:
    """torch's BLAS, from its build configuration: ``mkl 2024.2`` (with the version torch reports), else the
    name (``openblas``, ``accelerate``, ...)."""
    import torch  # a worker's question (machine_tags): see version_tags

    config = torch.__config__.show()
    name = re.search(r"BLAS_INFO=(\w+)", config)
    kind = name.group(1) if name else "unknown"
    version = re.search(r"Math Kernel Library Version ([\w.]+)", config) if kind == "mkl" else None
    return f"{kind} {version.group(1)}" if version else kind


def machine_tags(device: str = "cpu") -> dict[str, str]:
    """A child run's: the numeric stack of this process (call it in the worker, after setting torch's
    threads): CPU model, torch's CPU capability, BLAS, torch threads, the GPU with CUDA and cuDNN versions
    when ``device`` is a CUDA device, and the library versions."""
    import torch  # see version_tags

    tags = {TAG_CPU: cpu_model(), TAG_CPU_CAPABILITY: torch.backends.cpu.get_cpu_capability(), TAG_BLAS: blas(),
            TAG_TORCH_THREADS: str(torch.get_num_threads()), **version_tags()}
    if os.environ.get("MKL_ENABLE_INSTRUCTIONS"):
        tags[TAG_MKL_INSTRUCTIONS] = os.environ["MKL_ENABLE_INSTRUCTIONS"]
    if device.startswith("cuda"):
        tags[TAG_GPU] = torch.cuda.get_device_name(torch.device(device))
        tags[TAG_CUDA] = str(torch.version.cuda)
        tags[TAG_CUDNN] = str(torch.backends.cudnn.version())
    return tags
