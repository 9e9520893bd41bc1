"""The trainer's update replayed from a CUDA graph computes what the update run op by op computes.

The first test runs everywhere: it checks the replay's plumbing (indices and step copied into tensors that stay
in place, the warm-up, one capture, every update replayed) with a stand-in for the graph that replays by calling
the captured update again, on the CPU. The others need a CUDA device (`bash scripts/gpu_check.sh`, or
`python3 bench/gpu.py` on a machine without Ray or MLflow, run them there) and are skipped without one.
"""

from __future__ import annotations

import pytest
import torch

from models.resnet.config import TrainConfig
from models.resnet.trainer import Trainer, _Replayed
from tests.numerics import FLOAT32_EPS, poison_member

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def deterministic():
    """ATen's deterministic kernels where it has them (warn_only: cuBLAS's need a variable set before it starts).
    On CUDA the block convs' backward sums with atomics (an index_add), so two op-by-op runs differ in the last
    bits, and training amplifies that through ReLU and max-pool kinks: measured on an H200, op by op against
    op by op 1e-1 relative on a BatchNorm bias after 50 updates at C=64, graph against op by op as much, 1.7e-2
    once after 10 updates; with deterministic algorithms 0 for both after 400 updates (bench/gpu.py)."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


class _CallAgain:
    """A stand-in for ``trainer._CudaGraph``: a capture runs nothing (as a CUDA graph's capture launches no
    kernel) and its replay calls the captured update again, reading the tensors the replay filled."""

    def __init__(self) -> None:
        self.eager_calls = self.captures = 0

    def eager(self, update) -> None:
        self.eager_calls += 1
        update()

    def capture(self, update):
        self.captures += 1
        return update


def _records(trainer: Trainer) -> list:
    return [(e.step, [r.values for r in e.records], e.diverged) for e in trainer.run()]


@pytest.mark.parametrize("protocol, budget, eval_every", [("handout", 60, 20), ("epochs", 6, 2)])
def test_the_replay_feeds_every_update_its_own_minibatch_and_step(protocol, budget, eval_every):
    """Same kernels, same inputs, one process: the replayed trainer's records equal the plain one's bit for bit.
    Member 1 is poisoned at its 30th update (tests.numerics.poison_member), so the step number the replay reads
    from its step tensor is checked too."""
    config = TrainConfig(C=3, protocol=protocol, budget=budget, eval_every=eval_every)
    plain, replayed = Trainer(config, [0, 1, 2]), Trainer(config, [0, 1, 2])
    launcher = _CallAgain()
    replayed._run_update = _Replayed(replayed._update, (3, config.batch_size), replayed.device, launcher)
    for trainer in (plain, replayed):
        poison_member(trainer.model, {1: 30})
    expected = _records(plain)
    assert _records(replayed) == expected
    updates_per_step = config.updates_per_step
    assert replayed.diverged == plain.diverged and replayed.diverged[1][0] == -(-30 // updates_per_step)
    assert (launcher.eager_calls, launcher.captures) == (_Replayed.WARMUP, 1)
    assert replayed.updates == plain.updates == budget * updates_per_step


def _assert_values_agree(got: dict[str, float], want: dict[str, float], tol: float) -> None:
    """Losses within ``tol`` relative (absolute below 1); error rates and the gap within two images."""
    for key, value in want.items():
        bound = 2 / 898 + 1e-12 if "error" in key or key == "generalization_gap" else tol * max(1, abs(value))
        assert abs(got[key] - value) <= bound, (key, got[key], value)


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().double() for k, v in trainer.model.state_dict().items()}


def _train_with_a_nan(config: TrainConfig, seeds: list[int], cuda_graph: bool) -> tuple[list, Trainer]:
    """Train; after the first evaluation member 1's fc bias is set to NaN in place (the graph reads the same
    memory), so it diverges at the next update: the step number comes from the device."""
    trainer = Trainer(config, seeds, cuda_graph=cuda_graph)
    out = []
    for evaluation in trainer.run():
        out.append((evaluation.step, [r.values for r in evaluation.records], evaluation.diverged))
        if len(out) == 1:
            with torch.no_grad():
                trainer.model.fc_bias[1].fill_(float("nan"))
    return out, trainer


@cuda
@pytest.mark.parametrize("C, protocol, budget, eval_every", [(4, "handout", 10, 5), (64, "handout", 10, 5),
                                                              (2, "epochs", 2, 1)])
def test_a_graph_replay_trains_as_the_update_launched_op_by_op(C, protocol, budget, eval_every, deterministic):
    """The graph replays the kernels the op-by-op update launches, on deterministic kernels (the fixture), so the
    two agree to float32 rounding: the capture could still give a product another cuBLAS algorithm. Per update
    a value is rounded at a few eps relative, amplified by at most ~100 through the update's depth; over U
    updates U * 100 eps relative to each tensor's scale. Error rates count argmax decisions, which such a
    difference moves only on near ties: at most two images of a half."""
    config = TrainConfig(C=C, protocol=protocol, budget=budget, eval_every=eval_every, device="cuda")
    seeds = [0, 1, 2]
    graph_records, graph = _train_with_a_nan(config, seeds, cuda_graph=True)
    plain_records, plain = _train_with_a_nan(config, seeds, cuda_graph=False)
    assert graph.diverged == plain.diverged
    assert graph.diverged[1][0] == eval_every + 1  # the first step after the NaN went in
    tol = graph.updates * 100 * FLOAT32_EPS
    assert [(s, d) for s, _, d in graph_records] == [(s, d) for s, _, d in plain_records]
    assert [len(got) for _, got, _ in graph_records] == [3] + [2] * (len(graph_records) - 1)  # member 1 stopped
    for (_, got, _), (_, want, _) in zip(graph_records, plain_records, strict=True):
        for g, w in zip(got, want, strict=True):
            _assert_values_agree(g, w, tol)
    a, b = _state(graph), _state(plain)
    for name in a:
        live = [0, 2]  # member 1's tensors are NaN in both
        x, y = a[name][live], b[name][live]
        assert (x - y).abs().max() <= tol * max(1.0, y.abs().max().item()), name


@cuda
def test_a_graph_captured_trainer_resumes_from_a_checkpoint(deterministic):
    """A checkpoint loaded into a new trainer (in place: its graph reads the loaded weights) continues as the
    uninterrupted run does."""
    config = TrainConfig(C=4, budget=20, eval_every=10, device="cuda")
    straight = [e.records for e in Trainer(config, [5, 6]).run()]
    first = Trainer(config, [5, 6])
    runs = first.run()
    head = [next(runs).records]
    second = Trainer(config, [5, 6])
    second.load_state_dict(first.state_dict())
    tail = [e.records for e in second.run()]
    tol = 20 * 100 * FLOAT32_EPS
    for got, want in zip(head + tail, straight, strict=True):
        for g, w in zip(got, want, strict=True):
            assert g.step == w.step and g.seed == w.seed
            _assert_values_agree(g.values, w.values, tol)
