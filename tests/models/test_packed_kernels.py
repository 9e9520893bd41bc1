"""The packed model's C kernels (models/resnet/packed_kernels.c) against the same computation on ATen ops, a
block conv by Winograd's transforms against F.conv2d, a pool-window tie and the block's BatchNorm worked out by
hand, and the ATen fallback where the kernels are not built."""

from __future__ import annotations

import math

import pytest
import torch

from models.resnet import native, packed
from models.resnet.model import ResNet
from models.resnet.packed import PackedResNet, _NativeBatchNormReLU, _NativeBlockTail
from tests.numerics import FLOAT32_EPS, FLOAT64_EPS


@pytest.fixture
def kernel():
    if native.library() is None:
        pytest.skip("no C compiler here: the packed model runs on ATen ops only")
    return native.library()


def _pair(C: int, S: int, dtype: torch.dtype) -> tuple[PackedResNet, PackedResNet]:
    torch.manual_seed(C * 100 + S)
    with_kernel = PackedResNet(C, S).to(dtype)
    for name, tensor in with_kernel.named_parameters():
        torch.nn.init.normal_(tensor, std=0.5) if "weight" in name or "conv" in name else torch.nn.init.zeros_(tensor)
    on_aten = PackedResNet(C, S).to(dtype)
    on_aten.load_state_dict(with_kernel.state_dict())
    on_aten.native_kernels = False
    return with_kernel, on_aten


@pytest.mark.parametrize("dtype, eps", [(torch.float64, FLOAT64_EPS), (torch.float32, FLOAT32_EPS)])
@pytest.mark.parametrize("shared", [False, True])
def test_the_kernel_equals_aten_ops_forward_backward_and_in_eval(kernel, dtype, eps, shared):
    # N not a multiple of the stem's block of 64 images or of a vector; S * C = 45 BatchNorm rows, odd, so the
    # block kernels' last row takes its statistics alone (they take rows in pairs)
    S, C, N = 3, 15, 37
    with_kernel, on_aten = _pair(C, S, dtype)
    digits = torch.randint(0, 17, (N, 1, 8, 8) if shared else (S, N, 1, 8, 8)).to(dtype) / 16
    labels = torch.randint(0, 10, (S, N))
    for model in (with_kernel, on_aten):
        logits = model(digits)
        torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels).backward()
    # Both sum the same 9-term products in another order: a few roundings of each value's size apart.
    for (name, a), b in zip(with_kernel.named_parameters(), on_aten.parameters(), strict=True):
        scale = b.grad.abs().max().item() + 1e-3
        assert (a.grad - b.grad).abs().max().item() <= 1e3 * eps * scale, name
    for (name, a), b in zip(with_kernel.named_buffers(), on_aten.buffers(), strict=True):
        assert (a.double() - b.double()).abs().max().item() <= 1e3 * eps * (b.double().abs().max().item() + 1), name
    with torch.no_grad():
        with_kernel.eval(), on_aten.eval()
        a, b = with_kernel(digits), on_aten(digits)
    assert (a - b).abs().max().item() <= 1e3 * eps * b.abs().max().item()


@pytest.mark.parametrize("dtype, eps", [(torch.float64, FLOAT64_EPS), (torch.float32, FLOAT32_EPS)])
@pytest.mark.parametrize("S, C", [(2, 8), (1, 8), (5, 3)])
def test_a_block_conv_by_winograd_is_conv2d_on_a_2x2_map(kernel, dtype, eps, S, C):
    """The C kernels' Winograd transforms around batched products against torch's own convolution (padding 1) on
    2x2 maps, and the weight and input gradients against conv2d's; one member, several, an odd C."""
    N = 5
    torch.manual_seed(0)
    model = PackedResNet(C, S).to(dtype)
    weight = torch.randn(S, C, C, 3, 3, dtype=dtype, requires_grad=True)
    maps = torch.randn(S, N, C, 2, 2, dtype=dtype, requires_grad=True)
    out = model._block_conv(weight, maps.permute(0, 2, 3, 4, 1).reshape(S, C, 4, N))  # (S, C, 4, N)
    assert out.grad_fn.name() == "_NativeBlockConvBackward"
    grad = torch.randn_like(out)
    out.backward(grad)
    for s in range(S):
        w = weight[s].detach().clone().requires_grad_()
        x = maps[s].detach().clone().requires_grad_()
        expected = torch.nn.functional.conv2d(x, w, padding=1)  # (N, C, 2, 2)
        expected.backward(grad[s].reshape(C, 2, 2, N).permute(3, 0, 1, 2))
        got = out[s].detach().reshape(C, 2, 2, N).permute(3, 0, 1, 2)
        assert (got - expected.detach()).abs().max().item() <= 100 * eps * expected.abs().max().item()
        assert (weight.grad[s] - w.grad).abs().max().item() <= 100 * eps * w.grad.abs().max().item()
        assert (maps.grad[s] - x.grad).abs().max().item() <= 100 * eps * x.grad.abs().max().item()


@pytest.mark.parametrize("dtype, eps", [(torch.float64, FLOAT64_EPS), (torch.float32, FLOAT32_EPS)])
def test_a_block_conv_without_a_backward_runs_in_column_blocks_with_the_same_values(kernel, dtype, eps,
                                                                                    monkeypatch):
    """Without autograd the forward takes the images in blocks (here of about 4: 19 images as 3, 4, 4, 4, 4), each a
    pointer offset and row stride into the same activations; its values are conv2d's, as in one block."""
    monkeypatch.setattr(packed, "_COLUMN_BLOCK", 4)
    assert [n for _, n in packed._column_blocks(19)] == [3, 4, 4, 4, 4]
    S, C, N = 3, 6, 19
    torch.manual_seed(1)
    model = PackedResNet(C, S).to(dtype)
    weight = torch.randn(S, C, C, 3, 3, dtype=dtype)
    maps = torch.randn(S, N, C, 2, 2, dtype=dtype)
    with torch.no_grad():
        blocked = model._block_conv(weight, maps.permute(0, 2, 3, 4, 1).reshape(S, C, 4, N))
    whole = model._block_conv(weight.requires_grad_(), maps.permute(0, 2, 3, 4, 1).reshape(S, C, 4, N))
    assert whole.requires_grad
    torch.testing.assert_close(blocked, whole.detach(), rtol=0, atol=10 * eps * whole.abs().max().item())
    for s in range(S):
        expected = torch.nn.functional.conv2d(maps[s], weight[s].detach(), padding=1)
        got = blocked[s].reshape(C, 2, 2, N).permute(3, 0, 1, 2)
        assert (got - expected).abs().max().item() <= 100 * eps * expected.abs().max().item()


@pytest.mark.parametrize("native_kernels", [True, False])
def test_a_tie_in_a_pool_window_sends_the_gradient_to_the_first_maximum(native_kernels):
    """One channel whose stem weight is the centre tap only: stem pixels (0, 0) and (0, 1) both read 0.5 at their
    centre, so pooled pixel 0 ties between window slots 0 and 1, but their patches differ where image pixel
    (1, 1) = 0.25 falls: tap 8 (row 2, column 2) of the first patch, tap 6 (row 2, column 0) of the second.
    max_pool2d keeps the first maximum, so the weight gradient is scale * (0.5 at tap 4, 0.25 at tap 8)."""
    model = PackedResNet(1, 1).double().eval()  # running statistics 0 and 1: the BatchNorm scale is fixed
    model.native_kernels = native_kernels
    with torch.no_grad():
        model.stem_conv.zero_()
        model.stem_conv[0, 0, 0, 1, 1] = 1.0
    image = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    image[0, 0, 0, 0] = image[0, 0, 0, 2] = 0.5
    image[0, 0, 1, 1] = 0.25
    pooled = model._stem(model.stem_inputs(image))  # (1, 1, 4, 1)
    scale = 1 / (1 + 1e-5) ** 0.5
    assert pooled.flatten().tolist() == pytest.approx([0.5 * scale, 0, 0, 0], abs=1e-15)
    pooled.sum().backward()
    expected = torch.zeros(9, dtype=torch.float64)
    expected[4], expected[8] = 0.5 * scale, 0.25 * scale
    torch.testing.assert_close(model.stem_conv.grad.flatten(), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_block_kernels_batch_norm_by_hand(kernel, dtype):
    """One channel of one image, conv output x = (1, 2, 3, 4) over the 2x2 map: mean 2.5, biased variance 1.25,
    unbiased 5/3. bn1 + ReLU gives max(0, (x - 2.5) / sqrt(1.25 + eps)); the tail with input h = (1, 0, 0, 0) and
    BatchNorm weight 2, bias -1 averages relu(h + 2 (x - 2.5) / sd - 1) over the 4 pixels. Running statistics
    start at (0, 1) and move a tenth of the way (momentum 0.1)."""
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=dtype).view(1, 1, 4, 1)
    h = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=dtype).view(1, 1, 4, 1)
    sd = math.sqrt(1.25 + 1e-5)
    tol = dict(rtol=4 * torch.finfo(dtype).eps, atol=4 * torch.finfo(dtype).eps)

    def params(w: float, b: float) -> tuple[torch.Tensor, ...]:
        return (torch.full((1, 1), w, dtype=dtype), torch.full((1, 1), b, dtype=dtype),
                torch.zeros(1, 1, dtype=dtype), torch.ones(1, 1, dtype=dtype))

    weight, bias, running_mean, running_var = params(1.0, 0.0)
    y = _NativeBatchNormReLU.apply(x, weight, bias, running_mean, running_var, kernel)
    expected = [max(0.0, (v - 2.5) / sd) for v in (1, 2, 3, 4)]
    torch.testing.assert_close(y.flatten(), torch.tensor(expected, dtype=dtype), **tol)
    torch.testing.assert_close(running_mean.flatten(), torch.tensor([0.25], dtype=dtype), **tol)
    torch.testing.assert_close(running_var.flatten(), torch.tensor([0.9 + 0.1 * 5 / 3], dtype=dtype), **tol)

    weight, bias, running_mean, running_var = params(2.0, -1.0)
    pooled = _NativeBlockTail.apply(x, h, weight, bias, running_mean, running_var, kernel)
    values = [hv + 2 * (v - 2.5) / sd - 1 for hv, v in zip((1, 0, 0, 0), (1, 2, 3, 4), strict=True)]
    torch.testing.assert_close(pooled.flatten(), torch.tensor([sum(max(0.0, v) for v in values) / 4], dtype=dtype),
                               **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_block_kernels_eval_forms_by_hand(kernel, dtype):
    """Eval mode reads the running statistics (mean 0.5, variance 2) and leaves them as they are: bn1 + ReLU of
    x = (1, 2, 3, 4) with weight 2, bias -1 gives max(0, 2 (x - 0.5) / sqrt(2 + eps) - 1); the tail with h = (1, 0,
    0, 0) averages relu(h + that, before its ReLU) over the 4 pixels."""
    model = PackedResNet(1, 1).to(dtype).eval()
    assert model._kernels(model.fc_weight) is kernel
    with torch.no_grad():
        for name in ("bn1", "bn2"):
            getattr(model, f"{name}_weight").fill_(2.0)
            getattr(model, f"{name}_bias").fill_(-1.0)
            getattr(model, f"{name}_running_mean").fill_(0.5)
            getattr(model, f"{name}_running_var").fill_(2.0)
        x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=dtype).view(1, 1, 4, 1)
        h = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=dtype).view(1, 1, 4, 1)
        assert model._block_kernels(x, h) is kernel  # the eval kernels compute this, not ATen's ops
        y, pooled = model._bn_relu(x, "bn1"), model._bn_residual_pool(x, h, "bn2")
    sd = math.sqrt(2.0 + 1e-5)
    normed = [2 * (v - 0.5) / sd - 1 for v in (1, 2, 3, 4)]
    tol = dict(rtol=4 * torch.finfo(dtype).eps, atol=4 * torch.finfo(dtype).eps)
    torch.testing.assert_close(y.flatten(), torch.tensor([max(0.0, v) for v in normed], dtype=dtype), **tol)
    expected = sum(max(0.0, hv + v) for hv, v in zip((1, 0, 0, 0), normed, strict=True)) / 4
    torch.testing.assert_close(pooled.flatten(), torch.tensor([expected], dtype=dtype), **tol)
    for name in ("bn1", "bn2"):
        assert getattr(model, f"{name}_running_mean").item() == 0.5
        assert getattr(model, f"{name}_running_var").item() == 2.0
        assert getattr(model, f"{name}_num_batches_tracked").item() == 0


def test_eval_mode_with_autograd_runs_on_aten_ops_and_has_gradients(kernel):
    """The eval kernels have no backward: eval mode with autograd on (a gradient through a frozen BatchNorm) takes
    ATen's ops, and the input gets its gradient."""
    model = PackedResNet.from_models([ResNet(4), ResNet(4)]).eval()
    x = torch.rand(2, 5, 1, 8, 8)
    block_input = torch.rand(2, 4, 4, 5, requires_grad=True)
    assert model._block_kernels(block_input) is None
    model._bn_relu(block_input, "bn1").sum().backward()
    assert block_input.grad is not None and bool(block_input.grad.abs().sum() > 0)
    model(x).sum().backward()
    assert model.conv1.grad is not None and bool(model.conv1.grad.abs().sum() > 0)


def test_without_the_kernel_the_model_runs_on_aten_ops(monkeypatch):
    try:
        for setting in ({native.NATIVE_ENV: "0"}, {"CC": "/nonexistent/cc"}):
            native.library.cache_clear()
            with monkeypatch.context() as env:
                for key, value in setting.items():
                    env.setenv(key, value)
                assert native.library() is None, setting
                logits = PackedResNet.from_models([ResNet(4), ResNet(4)])(torch.rand(2, 5, 1, 8, 8))
                assert logits.shape == (2, 5, 10) and bool(logits.isfinite().all())
    finally:
        native.library.cache_clear()
