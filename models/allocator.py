"""glibc's malloc told to keep freed memory for reuse, so that a training process stops paying page faults for
its large temporaries on every update.

Why: PyTorch's CPU tensors come from malloc, and glibc hands freed memory back to the kernel on its own rules:
blocks above a threshold (128 KB at first, then raised to the largest freed so far, at most 32 MB) are mapped
and unmapped per call, and a heap whose free top exceeds twice that threshold is trimmed. A packed C=64 update
allocates some 20 MB of temporaries (the Winograd products, their gradients, the block's activations) and frees
them at its end, so every update mapped fresh pages again, which the kernel zero-fills on first touch: about 300
page faults per update at C=64, S=7 (measured with ``resource.getrusage``, docs/benchmarks.md). Fixed
thresholds (below) keep the freed memory in the heap: the next update reuses the same pages, no faults. No
well-kept library sets these (jemalloc or tcmalloc would, but only preloaded before the process starts), and
``mallopt`` is glibc's documented interface for it: two calls through ctypes.

What it costs: up to :data:`TRIM_THRESHOLD` of freed memory stays with the process instead of going back to the
system, and blocks up to :data:`MMAP_THRESHOLD` come from the heap. Numbers do not change: PyTorch aligns every
tensor to 64 bytes wherever its memory comes from.
"""

from __future__ import annotations

import ctypes
import functools
import sys

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # blocks below this come from the heap: glibc's largest allowed on 64-bit
TRIM_THRESHOLD = 256 << 20  # the heap keeps up to this much free memory at its top


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc malloc's thresholds for this process (once); True where they were set, False where the C library
    is not glibc (macOS, musl), which then keeps its own behaviour."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)  # the symbols the process already has: its C library's
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False  # not glibc: musl's mallopt accepts these calls and does nothing
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                      TRIM_THRESHOLD))
