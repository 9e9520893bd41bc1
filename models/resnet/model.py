"""The handout ResNet (CS 446 hw2, problem 3; He et al. 2016, Figure 2).

Width ``C`` is the model-complexity knob. Shapes: input (N, 1, H, W) images, output (N, 10) logits.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Block(nn.Module):
    """Residual block ``relu(x + f(x))`` with f = conv-BN-ReLU-conv-BN, 3x3 convs, stride 1, padding 1.

    Input and output shape: (N, C, H, W).
    """

    def __init__(self, C: int) -> None:
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(C, C, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(C),
            nn.ReLU(),
            nn.Conv2d(C, C, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.f(x))


class ResNet(nn.Module):
    """Stem conv (stride 2) -> BN -> ReLU -> 2x2 max-pool -> Block(C) -> global average pool -> Linear(C, 10).

    Args:
        C: number of channels, a positive integer (1, 2, 4 and 64 in the handout).
        num_classes: number of output logits.
    """

    def __init__(self, C: int, num_classes: int = 10) -> None:
        super().__init__()
        if not isinstance(C, int) or isinstance(C, bool) or C <= 0:
            raise ValueError(f"C must be a positive integer, got {C!r}")
        self.C = C
        self.stem = nn.Sequential(
            nn.Conv2d(1, C, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2),
        )
        self.block = Block(C)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(C, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def parameter_count(C: int, num_classes: int = 10) -> int:
    """Trainable parameters of ``ResNet(C)``: 10*C (convs 9*C + 2*9*C*C) ... counted, not derived."""
    return sum(p.numel() for p in ResNet(C, num_classes).parameters() if p.requires_grad)
