"""PackedResNet.sgd_update: the narrow widths' whole SGD update in one C call (update_kernels.c) computes what the
packed model's forward, autograd and torch.optim.SGD compute.

The trainer-level comparisons (tests/models/test_resnet_packed.py: packed against plain ResNets to 1e-10 in float64
over 200 updates, and across pack sizes) run through this path at their widths (C <= 8); the first test here checks
that they do, the others compare the one call with the autograd update of the same packed model directly.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from models.resnet import native
from models.resnet.config import TrainConfig
from models.resnet.data import load_for_config
from models.resnet.native import ONE_CALL_MAX_C
from models.resnet.packed import PackedResNet
from models.resnet.trainer import Trainer, draw_minibatches, init_model
from tests.numerics import FLOAT32_EPS, FLOAT64_EPS

pytestmark = [pytest.mark.skipif(native.library() is None, reason="the C kernels did not build here"),
              pytest.mark.usefixtures("one_thread")]  # tests/models/conftest.py


@pytest.fixture(scope="module")
def digits():
    return load_for_config(TrainConfig(C=1))


def _packed(C: int, seeds: list[int], dtype: torch.dtype) -> PackedResNet:
    return PackedResNet.from_models([init_model(C, s, dtype) for s in seeds])


def _minibatches(updates: int, S: int, seed: int = 0) -> torch.Tensor:
    """(updates, S, 128) distinct training-image indices per member and update."""
    uniforms = torch.rand(updates * S, 128, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.from_numpy(draw_minibatches(uniforms.numpy(), 898)).view(updates, S, 128)


def _autograd_update(model: PackedResNet, optimizer: torch.optim.Optimizer, images, labels, idx) -> torch.Tensor:
    """The trainer's update op by op: forward, the members' summed mean cross-entropies, backward, SGD's step."""
    logits = model(images.select(idx))
    losses = F.cross_entropy(logits.transpose(1, 2), labels.index_select(0, idx.flatten()).view(idx.shape),
                             reduction="none").mean(dim=1)
    optimizer.zero_grad(set_to_none=True)
    losses.sum().backward()
    optimizer.step()
    return losses.detach()


def _twins(C: int, seeds: list[int], dtype: torch.dtype, digits, updates: int):
    """The same packed model trained ``updates`` times by sgd_update and by the autograd update: both models, the
    per-update losses of each."""
    one = _packed(C, seeds, dtype)
    ref = copy.deepcopy(one)
    optimizer = torch.optim.SGD(ref.parameters(), lr=0.1)
    x = digits.x_train.to(dtype)
    with torch.no_grad():
        images = one.stem_inputs(x, per_image=True)
    one_losses, ref_losses = [], []
    for idx in _minibatches(updates, len(seeds)):
        one_losses.append(one.sgd_update(images, digits.y_train, idx, 0.1))
        ref_losses.append(_autograd_update(ref, optimizer, images, digits.y_train, idx))
    return one, ref, torch.stack(one_losses), torch.stack(ref_losses)


def test_the_trainer_takes_the_one_call_update_at_narrow_widths_only(digits) -> None:
    """At C <= ONE_CALL_MAX_C the trainer's update writes no .grad (it ran as one call); wider, or with a forward
    hook on the model (which the one call would not run), it runs autograd and the optimizer."""
    def grads_after_one_update(C: int, hook: bool = False) -> bool:
        trainer = Trainer(TrainConfig(C=C, budget=1, eval_every=1), [0, 1], data=digits)
        if hook:
            trainer.model.register_forward_pre_hook(lambda module, args: None)
        next(trainer.run())
        return any(p.grad is not None for p in trainer.model.parameters())

    assert not grads_after_one_update(1)
    assert not grads_after_one_update(ONE_CALL_MAX_C)
    assert grads_after_one_update(ONE_CALL_MAX_C + 1)
    assert grads_after_one_update(1, hook=True)


@pytest.mark.parametrize(("C", "seeds"), [(1, [0, 1, 2]), (3, [4]), (8, [5, 6])])
def test_one_call_matches_the_autograd_update_in_float64(C: int, seeds: list[int], digits) -> None:
    """float64, 30 updates: every weight, BatchNorm buffer and loss within 1e-10 (float64 eps 2.2e-16; the two
    differ in rounding only, ~1e-15 relative per update, measured worst 9e-15 at C=1 after 30 updates on the AMD
    EPYC; the bound leaves the margin test_resnet_packed.py's TOL explains). Batch counters equal."""
    one, ref, one_losses, ref_losses = _twins(C, seeds, torch.float64, digits, updates=30)
    torch.testing.assert_close(one_losses, ref_losses, rtol=0, atol=1e-10)
    a, b = one.state_dict(), ref.state_dict()
    for name in b:
        if b[name].dtype == torch.long:
            assert torch.equal(a[name], b[name]), name
            assert int(a[name][0]) == 30
        else:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("C", [1, 4, 8])
def test_one_float32_update_matches_the_autograd_update(C: int, digits) -> None:
    """float32, one update: every weight and buffer within rtol = atol = 1e3 float32 eps (the bound of
    test_resnet_packed.py's one-update comparison across pack sizes, for the same reason: a few eps per sum,
    relative to the gradient, scaled by lr), the losses within 1e2 eps (a forward only)."""
    one, ref, one_losses, ref_losses = _twins(C, [0, 1, 2, 3], torch.float32, digits, updates=1)
    torch.testing.assert_close(one_losses, ref_losses, rtol=1e2 * FLOAT32_EPS, atol=1e2 * FLOAT32_EPS)
    tol = 1e3 * FLOAT32_EPS
    for name, value in ref.state_dict().items():
        torch.testing.assert_close(one.state_dict()[name], value, rtol=tol, atol=tol, msg=name)


def test_a_member_does_not_depend_on_its_pack_mates(digits) -> None:
    """float64, 20 updates of seed 1 in a pack of three whose member 0 is non-finite from the start (a NaN fc
    bias), and alone: seed 1's weights and buffers agree within 1e3 float64 eps of their scale, and member 0's
    losses are all NaN. A NaN must stay in its member; the same sums per member make the two runs agree (bit for
    bit with these kernels, which is a fact of them, not a property tested)."""
    pack, alone = _packed(4, [0, 1, 2], torch.float64), _packed(4, [1], torch.float64)
    with torch.no_grad():
        pack.fc_bias[0].fill_(float("nan"))
        images = pack.stem_inputs(digits.x_train.to(torch.float64), per_image=True)
    minibatches = _minibatches(20, 3)
    for idx in minibatches:
        losses = pack.sgd_update(images, digits.y_train, idx, 0.1)
        assert torch.isnan(losses[0]) and torch.isfinite(losses[1:]).all()
        alone.sgd_update(images, digits.y_train, idx[1:2], 0.1)
    for name, value in alone.state_dict().items():
        if name.startswith("_"):
            continue
        got = pack.state_dict()[name][1]
        tol = 1e3 * FLOAT64_EPS * max(1.0, float(value.abs().max()))
        torch.testing.assert_close(got, value[0], rtol=0, atol=tol, msg=name)


def test_sgd_update_refuses_what_it_does_not_compute(digits) -> None:
    model = _packed(2, [0, 1], torch.float32)
    images = model.stem_inputs(digits.x_train, per_image=True)
    idx = _minibatches(1, 2)[0]
    with pytest.raises(ValueError, match="per_image=True"):
        model.sgd_update(model.stem_inputs(digits.x_train), digits.y_train, idx, 0.1)
    with pytest.raises(ValueError, match="2 members"):
        model.sgd_update(images, digits.y_train, idx[:1], 0.1)
    model.eval()
    with pytest.raises(RuntimeError, match="training mode"):
        model.sgd_update(images, digits.y_train, idx, 0.1)
    wide = _packed(ONE_CALL_MAX_C + 1, [0], torch.float32)
    with pytest.raises(RuntimeError, match=f"C <= {ONE_CALL_MAX_C}"):
        wide.sgd_update(wide.stem_inputs(digits.x_train, per_image=True), digits.y_train, idx[:1], 0.1)


def test_the_trainer_reports_a_member_that_turns_non_finite_in_the_one_call(digits) -> None:
    """A member whose fc bias is NaN before the first update has a NaN minibatch loss at step 1: the trainer
    reports it diverged there, at the first evaluation, and keeps evaluating the other member only."""
    trainer = Trainer(TrainConfig(C=4, budget=50, eval_every=25), [0, 1], data=digits)
    with torch.no_grad():
        trainer.model.fc_bias[1].fill_(float("nan"))
    evaluations = list(trainer.run())
    assert all(p.grad is None for p in trainer.model.parameters())  # the one-call path ran
    assert trainer.diverged == {1: (1, "diverged: minibatch loss became nan at step 1")}
    assert [(e.step, [r.seed for r in e.records]) for e in evaluations] == [(25, [0]), (50, [0])]
    assert evaluations[0].diverged == trainer.diverged
