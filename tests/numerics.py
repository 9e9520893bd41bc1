"""Comparing two different computations, and making a member diverge on purpose: helpers shared by the tests.

Two computations of the same quantity (a member packed with others and the same member alone; the packed
model and a plain ``ResNet``; S EM members and one) run different kernels: MKL, OpenBLAS and oneDNN pick
their kernels by CPU type, vector width and batch count, so the last bits of a result may differ from one
machine to the next. These helpers compare such results within a tolerance derived from the dtype and the
depth of the computation, never bit for bit; bitwise checks are kept for the same kernels on the same inputs
in one process (the same configuration run twice, pack mates of one pack).
"""

from __future__ import annotations

import torch
from torch import Tensor

FLOAT32_EPS = torch.finfo(torch.float32).eps  # 1.19e-7
FLOAT64_EPS = torch.finfo(torch.float64).eps  # 2.2e-16


def assert_error_rate_off_ties(rate: float, logits: Tensor, labels: Tensor, margin: float) -> None:
    """``rate`` (an error rate computed by one computation) agrees with the predictions ``logits`` (N, classes)
    of another on every image whose top two logits are more than ``margin`` apart.

    An error rate counts argmax decisions; a rounding-level difference between two computations can move an
    image only where two classes are tied to within that difference. So the count ``rate * N`` must lie
    between the mistakes on the clear images and those plus the near-tied images (either way).
    """
    top2 = logits.topk(2, dim=1).values
    tied = (top2[:, 0] - top2[:, 1]) <= margin
    wrong = logits.argmax(dim=1) != labels
    sure = int((wrong & ~tied).sum())
    count = rate * labels.numel()
    assert abs(count - round(count)) < 1e-6, f"{rate} is no multiple of 1/{labels.numel()}"
    assert sure <= round(count) <= sure + int(tied.sum()), (rate, sure, int(tied.sum()))


def poison_member(model: torch.nn.Module, at_update: dict[int, int]) -> None:
    """Make member ``i`` of a packed model non-finite from its ``at_update[i]``-th training update on (1-based):
    before that update's forward pass its fc bias is set to NaN, so its logits and minibatch loss are NaN at
    that update on any machine, and stay so. Counts training-mode forward passes (one per SGD update);
    evaluations run in eval mode and do not count. A member's NaN cannot reach its pack mates: every
    operation of the packed model works on each member's slice alone."""
    calls = 0

    def hook(module: torch.nn.Module, args: object) -> None:
        nonlocal calls
        if not module.training:
            return
        calls += 1
        with torch.no_grad():
            for member, update in at_update.items():
                if update == calls:
                    module.fc_bias[member].fill_(float("nan"))

    model.register_forward_pre_hook(hook)


def assert_same_em_records(got: dict, expected: dict, n_train: int, n_test: int, iterations: int) -> None:
    """Two EM computations of one member (packed with others, and alone: different batched kernels) agree
    within float64 rounding. Per iteration, p and pi are ratios of sums over the n = 898 images, rounded at
    ~n eps relative; over T iterations without amplification that is T n eps = 4e-12 at T = 20, and EM's map
    can amplify it (measured: 7e-12 on p after 20 iterations at K = 10, AVX-512 Xeon); 1e3 T n eps leaves
    a margin of ~500 for other CPUs. BIC is -2 n_train x the mean log-likelihood. Error rates count argmax
    decisions, which can move only where two responsibilities tie to that rounding: at most one image."""
    tol = em_tol(iterations, n_train)
    for key, value in expected.items():
        if key in ("seed", "iteration"):
            assert got[key] == value, key
        elif key.endswith("error"):
            assert abs(got[key] - value) <= 1.0 / min(n_train, n_test) + 1e-12, key
        else:
            scale = 2 * n_train if key == "bic" else 1
            assert abs(got[key] - value) <= tol * scale, (key, got[key], value)


def em_tol(iterations: int, n: int = 898) -> float:
    """1e3 T n eps (float64): see :func:`assert_same_em_records`."""
    return 1e3 * iterations * n * FLOAT64_EPS
