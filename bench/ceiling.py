"""The packed model against this process's own matrix-multiply rate, measured in the same run.

What is counted (per member, per SGD update, minibatch N images; see ``packed_products``): the matrix
products of ``models/packed.py`` in the forward pass and the ones autograd runs for them in the backward
pass, 2*m*k*n FLOPs each:

* stem, (C x 9) @ (9 x 16N): the folded conv+BatchNorm matmul. Backward: only the weight gradient
  (C x 16N) @ (16N x 9); the patches are constants, so no input gradient: 2x the forward's FLOPs.
* block conv 1 and 2, each (4C x 4C) @ (4C x N). Backward: the weight gradient (4C x N) @ (N x 4C) and the
  input gradient (4C x 4C)^T @ (4C x N): 3x the forward's FLOPs.
* fc, (10 x C) @ (C x N). Backward: weight and input gradients: 3x.

Left out (a few percent at most at C=64, and no matmul-shaped work): the stem's BatchNorm statistics from
the (9 x 9) patch moments, BatchNorm, ReLU, pooling, the loss, the optimizer, the gathers. At C=64 the two
block convs are 95% of the counted FLOPs: about 105 MFLOP per member-update with N=128.

The ceiling is this process's sgemm rate (``torch.mm``, float32, the current number of torch threads) at
each of those shapes, timed right next to the packed model: ``ceiling time = sum(flops_i / rate_i)`` is
what the products alone would take, and ``achieved / ceiling = ceiling time / measured time``. The count is the
dense one, the model's arithmetic as written; where the C kernels run, the block convs go by Winograd's F(2, 3)
(``models/resnet/packed.py``), 9/16 of the dense products' arithmetic, so their piece can take less than its
share of the ceiling and the ratio can pass 100% in principle.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BATCH = 128
CONVS = "block convs: weight and activation transforms + products (x2)"


@dataclass(frozen=True)
class Product:
    """One matrix product per member per update: (m x k) @ (k x n); ``transposed``: "a" or "b" names the
    operand that is a transposed view, as autograd reads it (input gradient W^T @ dY, weight gradient
    dY @ X^T)."""

    name: str
    m: int
    k: int
    n: int
    count: int = 1
    transposed: str = ""

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.k * self.n * self.count


def packed_products(C: int, N: int = BATCH, num_classes: int = 10) -> list[Product]:
    """The matmuls of one SGD update of one ``PackedResNet`` member, forward and backward (module doc)."""
    c4 = 4 * C
    return [
        Product("stem fwd", C, 9, 16 * N),
        Product("stem dW", C, 16 * N, 9, transposed="b"),
        Product("conv fwd", c4, c4, N, count=2),
        Product("conv dW", c4, N, c4, count=2, transposed="b"),
        Product("conv dX", c4, c4, N, count=2, transposed="a"),
        Product("fc fwd", num_classes, C, N),
        Product("fc dW", num_classes, N, C, transposed="b"),
        Product("fc dX", C, num_classes, N, transposed="a"),
    ]


def _best_seconds(fn: Callable[[], object], min_seconds: float = 0.05, repeats: int = 5) -> float:
    """Best over ``repeats`` of the mean time of one call, each repeat looping for ``min_seconds``."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        calls, started = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - started
            if elapsed >= min_seconds:
                break
        best = min(best, elapsed / calls)
    return best


def sgemm_gflops(p: Product) -> float:
    """This process's torch.mm rate at ``p``'s shape, float32, GFLOP/s (best of five short loops)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(p.k, p.m, generator=gen).t() if p.transposed == "a" else torch.randn(p.m, p.k, generator=gen)
    b = torch.randn(p.n, p.k, generator=gen).t() if p.transposed == "b" else torch.randn(p.k, p.n, generator=gen)
    out = torch.empty(p.m, p.n)
    seconds = _best_seconds(lambda: torch.mm(a, b, out=out))
    return 2.0 * p.m * p.k * p.n / seconds / 1e9


def ceiling(C: int, N: int = BATCH) -> dict:
    """Per-product sgemm rates and the ceiling: {"products": [...], "flops", "ceiling_ms", "ceiling_gflops"}
    per member-update."""
    rows, ceiling_s = [], 0.0
    for p in packed_products(C, N):
        rate = sgemm_gflops(p)
        ceiling_s += p.flops / (rate * 1e9)
        shape = f"({p.m}x{p.k}){'^T' * (p.transposed == 'a')}@({p.k}x{p.n}){'^T' * (p.transposed == 'b')}"
        rows.append({"name": p.name, "shape": shape,
                     "count": p.count, "mflops": p.flops / 1e6, "gflops": rate})
    flops = sum(p.flops for p in packed_products(C, N))
    return {"products": rows, "flops": flops, "ceiling_ms": 1000 * ceiling_s,
            "ceiling_gflops": flops / ceiling_s / 1e9}


# -- where the time goes: the update loop's phases, and each forward/backward piece on its own ---------

def loop_phases(C: int, S: int, updates: int) -> dict[str, float]:
    """The Trainer's update loop, rebuilt here with a perf_counter mark between phases (CPU ops are
    synchronous, so the marks are exact): ms per pack-update in gathers (member minibatches and labels),
    forward (model + loss), backward, optimizer (zero_grad + step), divergence check, each the best over
    the updates (the cost without interference from other processes), and their sum."""
    from models.resnet.config import TrainConfig
    from models.resnet.trainer import Trainer

    trainer = Trainer(TrainConfig(C=C, budget=updates, eval_every=updates), list(range(S)), packed=True)
    model, optimizer, y = trainer.model, trainer.optimizer, trainer.data.y_train
    select = trainer._minibatch_source()
    batches = trainer._draw_batches(updates).reshape(updates, S, -1)
    best = dict.fromkeys(("gathers", "forward", "backward", "optimizer", "divergence check"), float("inf"))
    model.train()
    for i, idx in enumerate(batches):
        t0 = time.perf_counter()
        inputs, labels = select(idx), y.index_select(0, idx.flatten()).view(idx.shape)
        t1 = time.perf_counter()
        losses = F.cross_entropy(model(inputs).transpose(1, 2), labels, reduction="none").mean(dim=1)
        t2 = time.perf_counter()
        optimizer.zero_grad()
        losses.sum().backward()
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        trainer._record_losses(losses.detach(), i + 1)
        t5 = time.perf_counter()
        if i >= 3:  # the first updates warm allocator and caches
            for key, a, b in (("gathers", t0, t1), ("forward", t1, t2), ("backward", t2, t3),
                              ("optimizer", t3, t4), ("divergence check", t4, t5)):
                best[key] = min(best[key], b - a)
    out = {k: 1000 * v for k, v in best.items()}
    out["total"] = sum(out.values())
    return out


def _fwd_bwd_once(build: Callable[[], torch.Tensor], grad: torch.Tensor) -> tuple[float, float]:
    """(forward s, backward s) of one piece, once: ``out = build()`` then ``out.backward(grad)``."""
    t0 = time.perf_counter()
    out = build()
    t1 = time.perf_counter()
    out.backward(grad)
    return t1 - t0, time.perf_counter() - t1


def pieces(C: int, S: int, repeats: int = 20) -> dict[str, tuple[float, float]]:
    """Each piece of one packed update alone, at the shapes it has in training, through the module's own
    methods where it has them: {piece: (forward ms, backward ms)} per pack-update; pieces that run twice
    (the two block convs) are counted twice. Each is the best of ``repeats`` rounds."""
    from models.resnet.config import TrainConfig
    from models.resnet.packed import PackedResNet
    from models.resnet.trainer import Trainer

    trainer = Trainer(TrainConfig(C=C, budget=1, eval_every=1), list(range(S)), packed=True)
    model: PackedResNet = trainer.model
    model.train()
    N = BATCH
    inputs = trainer._minibatch_source()(trainer._draw_batches(1).reshape(S, -1))
    gen = torch.Generator().manual_seed(0)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).requires_grad_()

    h4, h4_residual = leaf(S, C, 4, N), leaf(S, C, 4, N)
    pooled, logits = leaf(S, C, N), leaf(S, N, model.num_classes)
    labels = torch.randint(0, model.num_classes, (S, N), generator=gen)

    kind = "C kernels" if model._kernels(model.stem_conv) else "ATen"

    builds: dict[str, Callable[[], torch.Tensor]] = {
        f"stem + ReLU + max-pool ({kind})": lambda: model._stem(inputs),
        CONVS: lambda: model._block_conv(model.conv1, h4),
        f"block BatchNorm + ReLU ({kind})": lambda: model._bn_relu(h4, "bn1"),
        f"block BatchNorm + residual + ReLU + mean ({kind})": lambda: model._bn_residual_pool(h4, h4_residual, "bn2"),
        "fc": lambda: torch.baddbmm(model.fc_bias.unsqueeze(2), model.fc_weight, pooled),
        "loss": lambda: F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(dim=1),
    }
    grads = {key: torch.randn_like(build()) for key, build in builds.items()}
    # Round robin, best of ``repeats``: a busy spell of the machine then hits every piece alike, and the
    # minimum is each piece's cost without interference (loop_phases takes its best the same way).
    times = {key: (float("inf"), float("inf")) for key in builds}
    for _ in range(repeats):
        for key, build in builds.items():
            f, b = _fwd_bwd_once(build, grads[key])
            times[key] = (min(times[key][0], 1000 * f), min(times[key][1], 1000 * b))
    f, b = times[CONVS]
    times[CONVS] = (2 * f, 2 * b)
    return times


PRODUCTS_STEP = (
    "the block convs (Winograd transforms around 9 (C x C) products per member) run above their dense share of "
    "the ceiling: try the transforms fused into the kernels before and after them, or larger product batches, "
    "timed against this same-run ceiling")
# Rewrites measured on this machine against the current code (C=64, same run, forward + backward): on the AMD
# machine (2026-11-29, S=32) max-pool as a maximum of four strided slices 4-9x slower, as torch.max over a
# taps-first layout 2.7x slower, the block weight gather as a one-hot (9 x 16) matmul 3-4x slower; on the
# AVX-512 Xeon (2026-12-02, S=8, whole update) a taps-first stem with amax 15% and with a torch.maximum chain
# 75% slower, torch.compile (inductor) of forward + loss 1.8x slower (and 91 s to compile cold), oneDNN grouped
# convolutions in channels-last 1.4x slower than the gathered bmm per block conv, tap-major weight gathers and
# their folds no faster. bench/ablate.py bounds what any rewrite can gain: without the stem + pool, the block
# gathers or the block BatchNorms the update is ~30%, ~12% and ~16% cheaper, so 60% needs nearly all of them gone.
# On 2026-12-03 (Xeon, S=32): the stem + pool + ReLU as a chunked autograd.Function of ATen ops (float masks, the
# stem output kept in L2) 5-9% slower than the ATen path; in C (models/resnet/packed_kernels.c, kept) the stem's
# tail and the block weight gathers 0.69x the update's time, the block's BatchNorms + ReLUs + residual + mean
# 0.90-0.95x again; later that day the stem kernels on vectors with their sums in registers 0.93x, and the block
# convs a chunk of members at a time (gather, multiply while the matrices are in L2) 0.95x; then the block's
# BatchNorm kernels and the dense-matrix gathers and folds on vectors 0.95x (S=32) and 0.98x (S=5), and the stem's
# forward on 64-byte vectors (AVX-512 only) 0.89x of the stem forward alone, not kept (docs/benchmarks.md). On
# 2026-12-05 (AMD EPYC, AVX2) the block convs by Winograd's F(2, 3) instead of the dense matrices, 9 products of
# K = C instead of 16 C^2 multiply-adds as one K = 4C product: a conv's forward + backward 0.73 -> 0.55 ms per
# member at S=3, the whole update 0.87-0.91x at S=3 and S=7 (kept). Later that day (EPYC Zen 1) the stem kernels
# reading a contiguous copy of each image block's patch rows (they alias in L1 at N=128): float32 forward 0.85x,
# backward 1.03x of the kernels alone, <1% of the update (float64 2x faster; not kept).
NOT_PRODUCTS_STEP = (
    "the work that is no product is spread over several pieces (largest here: {largest}); the rewrites in ATen "
    "ops measured (bench/ceiling.py's comment) were slower, and C kernels now run the stem's tail, the block "
    "convs' Winograd transforms and the block's elementwise work: next, the largest of these in fewer passes over "
    "memory, timed against this same-run ceiling")


def account(C: int, S: int, updates: int, ceiling_ms: float) -> dict:
    """Where one packed update's time goes, per member, in ms: the loop's phases, each piece alone, and the
    counted products at this run's sgemm ceiling; names the largest excess over the ceiling as the next step."""
    phases = {k: v / S for k, v in loop_phases(C, S, updates).items()}
    parts = {k: (f / S, b / S) for k, (f, b) in pieces(C, S).items()}
    fwd_pieces = sum(f for f, _ in parts.values())
    bwd_pieces = sum(b for _, b in parts.values())
    convs = sum(parts[CONVS])
    conv_ceiling = ceiling_ms * sum(p.flops for p in packed_products(C) if p.name.startswith("conv")) / sum(
        p.flops for p in packed_products(C))
    excess = {
        CONVS: convs - conv_ceiling,
        "forward outside the pieces": phases["forward"] - fwd_pieces,
        "backward outside the pieces": phases["backward"] - bwd_pieces,
        **{k: f + b for k, (f, b) in parts.items() if k != CONVS},
        "gathers": phases["gathers"],
        "optimizer": phases["optimizer"],
        "divergence check": phases["divergence check"],
    }
    # The products' shortfall against torch.mm on one side, everything that is no product on the other; the
    # next step is the largest single item of the larger side.
    shortfall = excess[CONVS]
    others = {k: v for k, v in excess.items() if k != CONVS}
    if shortfall >= sum(others.values()):
        largest, step = CONVS, PRODUCTS_STEP
    else:
        largest = max(others, key=lambda k: others[k])
        step = NOT_PRODUCTS_STEP.format(largest=largest)
    return {"C": C, "S": S, "phases_ms": phases, "pieces_ms": parts, "conv_ceiling_ms": conv_ceiling,
            "excess_ms": excess, "products_shortfall_ms": shortfall, "not_products_ms": sum(others.values()),
            "largest": largest, "next_step": step}


def account_markdown(a: dict, ceiling_ms: float) -> list[str]:
    ph = a["phases_ms"]
    total = ph["total"]
    out = [f"Where the time goes, packed C={a['C']} S={a['S']}, ms per member-update (loop phases timed with "
           "perf_counter inside one update loop, best over its updates; pieces timed alone at their training "
           "shapes, round robin, best of 20):", "",
           "| loop phase | ms | share |", "|---|---|---|"]
    out += [f"| {k} | {v:.3f} | {100 * v / total:.0f}% |" for k, v in ph.items() if k != "total"]
    out += [f"| total | {total:.3f} | 100% |", "", "| piece | forward ms | backward ms |", "|---|---|---|"]
    out += [f"| {k} | {f:.3f} | {b:.3f} |" for k, (f, b) in a["pieces_ms"].items()]
    out += ["", f"The counted products at this run's sgemm rate: {ceiling_ms:.3f} ms, of which the block convs "
            f"{a['conv_ceiling_ms']:.3f} ms. Time above that ceiling, largest first:", ""]
    out += [f"- {k}: {v:.3f} ms" for k, v in sorted(a["excess_ms"].items(), key=lambda kv: -kv[1])]
    needed = total - ceiling_ms / 0.6
    undisturbed = (f"The undisturbed update (the sum of the best phases) is {100 * ceiling_ms / total:.0f}% of the "
                   "ceiling: the same ratio, less exposed to other processes")
    gap = (f"Reaching 60% takes {needed:.3f} ms less per member-update. {undisturbed}." if needed > 0
           else f"{undisturbed} (the wall-clock ratio above counts the updates' spread as well).")
    out += ["", f"Of the {total - a['conv_ceiling_ms']:.3f} ms above the block convs' ceiling: their shortfall "
            f"(transforms included) against torch.mm {a['products_shortfall_ms']:.3f} ms, work that is no product "
            f"{a['not_products_ms']:.3f} ms. {gap}", "",
            f"Next step: {a['next_step']}."]
    return out
