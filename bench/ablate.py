"""Upper bounds on what rewriting one part of the packed update can gain: the whole update against the same
update with that part taken out (same run, interleaved rounds, best of each).

    python bench/ablate.py [--C 64] [--S 8] [--rounds 15]

Taken out, one at a time: the stem and its max-pool + ReLU (the block reads a fixed pooled tensor instead),
the block's elementwise work (its BatchNorms, ReLUs and residual: the two convs and the average pool alone). Each
variant runs the model's own methods (C kernels where built) with one part replaced on the instance. What a
part's removal saves is the most any faster version of it can save; the 60% target needs the update at
ceiling / 0.6, so these bounds say which rewrites could reach it at all. The optimizer step is replaced by an
in-place multiply by one (the same passes over the weights, values unchanged) so that every round sees the
same weights.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.resnet.config import TrainConfig  # noqa: E402
from models.resnet.trainer import Trainer  # noqa: E402

VARIANTS = ("full update", "without stem + max-pool + ReLU", "without block BatchNorms + ReLUs + residual")


def ablate(C: int, S: int, rounds: int) -> dict[str, float]:
    """ms per member-update of each variant (best of ``rounds`` rounds of 3 updates)."""
    torch.set_num_threads(1)
    trainer = Trainer(TrainConfig(C=C, budget=100, eval_every=100), list(range(S)))
    model, y = trainer.model, trainer.data.y_train
    select = trainer._minibatch_source()
    batches = trainer._draw_batches(3).reshape(3, S, -1)
    gen = torch.Generator().manual_seed(0)
    N = batches.shape[-1]
    pooled = torch.randn(S, C, 4, N, generator=gen).relu_().requires_grad_()

    def bare_block(h: torch.Tensor) -> torch.Tensor:
        return model._block_conv(model.conv2, model._block_conv(model.conv1, h)).mean(dim=2)

    replaced = {"full update": {}, "without stem + max-pool + ReLU": {"_stem": lambda x: pooled},
                "without block BatchNorms + ReLUs + residual": {"_block": bare_block}}

    def update(idx: torch.Tensor, parts: dict) -> None:
        model.__dict__.update(parts)  # instance attributes shadow the class's methods for this variant
        try:
            logits = model(select(idx))
        finally:
            for name in parts:
                del model.__dict__[name]
        labels = y.index_select(0, idx.flatten()).view(idx.shape)
        losses = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(dim=1)
        trainer.optimizer.zero_grad()
        losses.sum().backward()
        with torch.no_grad():
            torch._foreach_mul_(list(model.parameters()), 1.0)

    model.train()
    best = dict.fromkeys(VARIANTS, float("inf"))
    for _ in range(rounds):
        for name in VARIANTS:
            started = time.perf_counter()
            for idx in batches:
                update(idx, replaced[name])
            best[name] = min(best[name], (time.perf_counter() - started) / len(batches))
    return {name: 1000 * seconds / S for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--C", type=int, default=64)
    parser.add_argument("--S", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    ms = ablate(args.C, args.S, args.rounds)
    full = ms["full update"]
    print(f"C={args.C} S={args.S}, ms per member-update, best of {args.rounds} interleaved rounds:")
    for name, value in ms.items():
        print(f"  {name}: {value:.3f}" + ("" if name == "full update" else f" (saves {100 * (1 - value / full):.0f}%)"))


if __name__ == "__main__":
    main()
