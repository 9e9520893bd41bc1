"""An independent plain-PyTorch version of the handout loop: the baseline the benchmark compares against.

It shares no code with the project on purpose (its own model written with torch.nn, its own data loading,
the handout's ``random.sample`` minibatches): one model, SGD with step size 0.1, minibatches of 128 drawn
without replacement from the training half, one update per "epoch", and every ``eval_every`` updates the
errors and losses on the whole training and test halves in eval mode (as the project records them).

    from plain_loop import run_plain
    run_plain(C=4, seed=0, updates=4000)  # -> {"train_error": ..., "seconds": ..., ...}
"""

from __future__ import annotations

import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

N_TRAIN = 898


class _Block(nn.Module):
    def __init__(self, C: int) -> None:
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(C, C, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(C),
            nn.ReLU(),
            nn.Conv2d(C, C, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.f(x))


def handout_resnet(C: int) -> nn.Module:
    """The handout's ResNet(C), (N, 1, 8, 8) -> (N, 10)."""
    return nn.Sequential(
        nn.Conv2d(1, C, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(C),
        nn.ReLU(),
        nn.MaxPool2d(2),
        _Block(C),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(C, 10),
    )


def load_split(split_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits scaled to [0, 1]; one permutation, first 898 images for training, the rest for test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.from_numpy(np.random.default_rng(split_seed).permutation(len(y)))
    train, test = order[:N_TRAIN], order[N_TRAIN:]
    return x[train], y[train], x[test], y[test]


_DATA: dict[int, tuple[torch.Tensor, ...]] = {}


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    logits = model(x)
    return (logits.argmax(1) != y).float().mean().item(), F.cross_entropy(logits, y).item()


def run_plain(
    C: int,
    seed: int,
    updates: int,
    eval_every: int = 25,
    lr: float = 0.1,
    batch_size: int = 128,
    split_seed: int = 0,
    device: str = "cpu",
) -> dict[str, float]:
    """Train one ``handout_resnet(C)`` for ``updates`` SGD updates; returns the last evaluation's metrics and
    timings: ``seconds`` (wall clock of the whole run, evaluations included), ``cpu_seconds`` (this
    process's CPU time over the same span), ``train_seconds`` (updates only, minibatch sampling included)
    and ``ms_per_update`` (train_seconds / updates, in milliseconds). ``device``: where the model and the data
    live ("cuda" for the GPU check); the loss is read back every update, as the handout's loop does."""
    if split_seed not in _DATA:
        _DATA[split_seed] = load_split(split_seed)
    x_train, y_train, x_test, y_test = (t.to(device) for t in _DATA[split_seed])
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = handout_resnet(C).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    result: dict[str, float] = {}
    train_seconds = 0.0
    started, cpu_started = time.perf_counter(), time.process_time()
    for update in range(1, updates + 1):
        t0 = time.perf_counter()
        model.train()
        idx = torch.tensor(rng.sample(range(N_TRAIN), batch_size), device=device)
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        minibatch_loss = loss.item()
        train_seconds += time.perf_counter() - t0
        if update % eval_every == 0 or update == updates:
            model.eval()
            train_error, train_loss = _evaluate(model, x_train, y_train)
            test_error, test_loss = _evaluate(model, x_test, y_test)
            result = {
                "step": update,
                "train_error": train_error,
                "test_error": test_error,
                "train_loss": train_loss,
                "test_loss": test_loss,
                "generalization_gap": test_error - train_error,
                "minibatch_loss": minibatch_loss,
            }
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    ms = 1000 * train_seconds / updates
    return {**result, "seconds": seconds, "cpu_seconds": cpu_seconds, "train_seconds": train_seconds,
            "ms_per_update": ms}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="The handout loop in plain PyTorch, one model.")
    parser.add_argument("--C", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--updates", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(run_plain(args.C, args.seed, args.updates))
