"""The C kernels of :mod:`models.resnet.packed` (``packed_kernels.c``, and ``update_kernels.c``, which includes it and
adds the narrow widths' whole update), compiled once per machine and loaded.

Why compiled here and not shipped: ``-march=native`` is what makes the loops use the machine's vector width,
so the shared library belongs to one kind of CPU; it is built at first use with the system C compiler (``$CC``,
else ``cc``; about a second) into ``$COMPLEXITY_SWEEP_CACHE/native/`` (default ``~/.cache/complexity-sweep``),
named by a hash of the source, the compiler's version and the CPU, so other machines sharing a home folder
and later edits of the source each get their own. A lock keeps concurrent Ray workers from building it twice.

Without a C compiler, or with ``COMPLEXITY_SWEEP_NATIVE=0``, :func:`library` is None and the packed model
runs the same computation on ATen ops (slower, same numbers to float rounding: tests/models/test_packed_kernels.py).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

from filelock import FileLock

from models.resnet.pack_cost import CACHE_ENV, cpu_model

NATIVE_ENV = "COMPLEXITY_SWEEP_NATIVE"
SOURCE = Path(__file__).with_name("update_kernels.c")  # the one file compiled: it includes packed_kernels.c
SOURCES = (Path(__file__).with_name("packed_kernels.c"), SOURCE)  # what the built library depends on
_I, _D, _P = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p
# name -> argument types (the same for each dtype suffix: _f32, _f64)
SIGNATURES = {
    "stem_pool_forward": [_I] * 4 + [_P] * 5,
    "stem_pool_backward": [_I] * 4 + [_P] * 6,
    "winograd_weight": [_I] * 2 + [_P] * 2,
    "winograd_weight_backward": [_I] * 2 + [_P] * 2,
    "winograd_input": [_I] * 5 + [_P] * 2 + [_I],
    "winograd_output": [_I] * 5 + [_P] * 2 + [_I],
    "bn_relu_forward": [_I, _I, _D, _D] + [_P] * 8,
    "bn_relu_backward": [_I] * 2 + [_P] * 9,
    "block_tail_forward": [_I, _I, _D, _D] + [_P] * 9,
    "block_tail_backward": [_I] * 2 + [_P] * 11,
    "bn_relu_eval": [_I, _I, _D] + [_P] * 6,
    "block_tail_eval": [_I, _I, _D] + [_P] * 7,
    "sgd_update": [_I] * 5 + [_D] * 3 + [_P] * 26,
}
RETURNS_STATUS = {"sgd_update"}  # 0, or -1 where the kernel could not allocate its scratch memory

# Widths whose SGD update runs as one C call (PackedResNet.sgd_update, update_kernels.c) rather than as forward,
# autograd and the optimizer's step: where the latter's fixed costs are much of the update. Per update of a pack of
# 8 (AMD EPYC, docs/benchmarks.md), autograd -> one call: C=8 2.61 -> 0.97 ms, C=16 3.36 -> 2.57, C=32 7.01 -> 7.93
# (the products, plain loops here, lose to the BLAS's from there on), C=64 16.3 -> 27.5.
ONE_CALL_MAX_C = 16

FLAGS = ("-O3", "-march=native", "-std=c11", "-shared", "-fPIC")
LIBS = ("-lm",)


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC") or "cc")


def _library_path(cc: str) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    text = "\n".join([*(source.read_text() for source in SOURCES), version, cpu_model(), *FLAGS, *LIBS])
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "complexity-sweep")
    return root / "native" / f"packed_kernels-{key}.so"


def _build(cc: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.exists():
            return
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            command = [cc, *FLAGS, "-o", str(built), str(SOURCE), *LIBS]
            subprocess.run(command, check=True, capture_output=True, text=True)
            os.replace(built, target)  # atomic: a reader never sees half a library


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None where there is none (disabled, no compiler, build failed: warned)."""
    if os.environ.get(NATIVE_ENV, "1") == "0":
        return None
    cc = _compiler()
    if cc is None:
        return None
    try:
        target = _library_path(cc)
        if not target.exists():
            _build(cc, target)
        library = ctypes.CDLL(str(target))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or error
        warnings.warn(f"the packed model's C kernels did not build ({detail}); using ATen ops", stacklevel=2)
        return None
    for name, argtypes in SIGNATURES.items():
        for suffix in ("f32", "f64"):
            function = getattr(library, f"{name}_{suffix}")
            function.argtypes = argtypes
            function.restype = ctypes.c_int if name in RETURNS_STATUS else None
    return library
