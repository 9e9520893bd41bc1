"""bench/ceiling.py's FLOP count (no timings are asserted anywhere: those are benchmarks, not tests)."""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from ceiling import packed_products  # noqa: E402

from models.resnet.packed import PackedResNet  # noqa: E402


def test_flop_count_by_hand_at_c64():
    # 2 block convs x 3 products of 2 * 256 * 256 * 128, stem 2 x 2 * 64 * 9 * 2048, fc 3 x 2 * 10 * 64 * 128.
    expected = 6 * 2 * 256 * 256 * 128 + 2 * 2 * 64 * 9 * 2048 + 3 * 2 * 10 * 64 * 128
    assert sum(p.flops for p in packed_products(64)) == expected == 105_873_408


def test_flop_count_matches_what_torch_multiplies_in_a_packed_update():
    # torch's own counter sees every mm/bmm/baddbmm/addmm the update runs, forward and backward; the counted
    # products must be all of it but the stem's (C x 9) @ (9 x 9) and (9 x 1) statistics products.
    C, S, N = 16, 3, 128
    model = PackedResNet(C, S)
    model.native_kernels = False  # the products on ATen, where the counter sees them (the C kernels do the same)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x, y = torch.rand(N, 1, 8, 8), torch.randint(0, 10, (S, N))
    inputs = model.stem_inputs(x, per_image=True).select(torch.stack([torch.randperm(N) for _ in range(S)]))
    with FlopCounterMode(display=False) as counter:
        loss = F.cross_entropy(model(inputs).transpose(1, 2), y, reduction="none").mean(dim=1).sum()
        loss.backward()
    stats = S * (2 * C * 9 * 9 + 2 * C * 9 * 1) * 2  # forward + the weight gradient (the moments are constants)
    counted = S * sum(p.flops for p in packed_products(C, N))
    assert counted <= counter.get_total_flops() <= counted + stats
