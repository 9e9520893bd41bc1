"""The handout ResNet, pinned layer by layer (HANDOUT.md)."""

import pytest
import torch
from torch import nn

from models.resnet.model import Block, ResNet, parameter_count


def _conv(m: nn.Module, cin: int, cout: int, stride: int) -> None:
    assert type(m) is nn.Conv2d
    assert (m.in_channels, m.out_channels) == (cin, cout)
    assert m.kernel_size == (3, 3) and m.stride == (stride, stride) and m.padding == (1, 1)
    assert m.bias is None and m.dilation == (1, 1) and m.groups == 1


def _bn(m: nn.Module, c: int) -> None:
    assert type(m) is nn.BatchNorm2d
    assert m.num_features == c and m.affine and m.track_running_stats
    assert m.eps == 1e-5 and m.momentum == 0.1


@pytest.mark.parametrize("C", [1, 2, 4, 64])
def test_block_layers(C):
    f = Block(C).f
    assert [type(m) for m in f] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d]
    _conv(f[0], C, C, 1)
    _bn(f[1], C)
    _conv(f[3], C, C, 1)
    _bn(f[4], C)


def test_block_is_relu_of_residual_sum():
    torch.manual_seed(0)
    block = Block(3).eval()
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(block(x), torch.relu(x + block.f(x)))
    assert block(x).shape == x.shape


@pytest.mark.parametrize("C", [1, 2, 4, 64])
def test_resnet_layers(C):
    net = ResNet(C)
    stem = net.stem
    assert [type(m) for m in stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    _conv(stem[0], 1, C, 2)
    _bn(stem[1], C)
    assert stem[3].kernel_size == 2 and stem[3].stride == 2
    assert isinstance(net.block, Block)
    assert type(net.pool) is nn.AdaptiveAvgPool2d and net.pool.output_size == 1
    assert type(net.fc) is nn.Linear and (net.fc.in_features, net.fc.out_features) == (C, 10)
    assert net.fc.bias is not None
    assert [name for name, _ in net.named_children()] == ["stem", "block", "pool", "fc"]


def test_resnet_shapes_on_digits():
    net = ResNet(4).eval()
    x = torch.rand(7, 1, 8, 8)
    assert net(x).shape == (7, 10)
    after_stem = net.stem[:3](x)
    assert after_stem.shape == (7, 4, 4, 4)
    assert net.stem(x).shape == (7, 4, 2, 2)
    assert net.block(net.stem(x)).shape == (7, 4, 2, 2)


@pytest.mark.parametrize(("C", "count"), [(1, 53), (2, 132), (4, 398), (8, 1362), (16, 5018), (32, 19242),
                                          (64, 75338)])
def test_parameter_counts(C, count):
    assert parameter_count(C) == count
    assert count == 18 * C * C + 25 * C + 10


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_width_rejected(bad):
    with pytest.raises(ValueError, match="C must be a positive integer"):
        ResNet(bad)
