"""glibc's malloc keeps freed memory for reuse once a trainer has told it to (models/allocator.py)."""

import resource

import pytest
import torch

from models.allocator import keep_freed_memory

MB = 1 << 20


def _faults_of_a_round(blocks: int, size: int) -> int:
    """Minor page faults while ``blocks`` tensors of ``size`` bytes are allocated, written and freed together."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.empty(size // 4, dtype=torch.float32).fill_(1.0) for _ in range(blocks)]
    del tensors
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_tensors_are_reused_without_page_faults():
    if not keep_freed_memory():
        pytest.skip("the C library is not glibc: its malloc keeps its own rules")
    # 80 MB freed at once: above anything glibc's own adaptive thresholds keep (a free heap top of at most 64 MB,
    # blocks of 32 MB and more mapped per call), so without the fixed thresholds every round faults its 20,480
    # pages again (20,475 and 20,449 in the two rounds after a first, measured without them); with them, once
    # the heap has grown to hold a round (two rounds here: a heap that cannot grow in place maps some blocks apart
    # at first), every round reuses the same pages.
    for _ in range(2):
        _faults_of_a_round(10, 8 * MB)
    pages = 10 * 8 * MB // resource.getpagesize()
    faults = [_faults_of_a_round(10, 8 * MB) for _ in range(3)]
    # a quarter: a round now and then places one block (2,048 pages) apart, never the whole round again
    assert max(faults) < pages // 4, f"{faults} page faults per round of {pages} pages"
