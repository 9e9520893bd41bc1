"""The pure-PyTorch trainer: protocols, determinism, learning, checkpoints, divergence."""

import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.digits import N_TRAIN, digits_arrays, split_hash, split_indices
from models.resnet.config import TrainConfig
from models.resnet.data import load_digits_split
from models.resnet.trainer import Trainer, _predictions, draw_minibatches
from tests.numerics import FLOAT32_EPS, FLOAT64_EPS, assert_error_rate_off_ties, poison_member

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/models/conftest.py


def run_all(trainer):
    return list(trainer.run())


def test_digits_split():
    d = load_digits_split(0)
    assert d.x_train.shape == (898, 1, 8, 8) and d.x_test.shape == (899, 1, 8, 8)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert float(d.x_train.min()) == 0.0 and float(d.x_train.max()) == 1.0
    assert d.split_hash == split_hash(0) != split_hash(1)
    assert len(d.split_hash) == 12
    # The two halves are disjoint and together are all 1797 digits: a property of the index sets, then the
    # tensors must be the digits at exactly those indices.
    train_idx, test_idx = split_indices(0)
    assert len(train_idx) == 898 and len(test_idx) == 899
    assert set(train_idx.tolist()) & set(test_idx.tolist()) == set()
    assert set(train_idx.tolist()) | set(test_idx.tolist()) == set(range(1797))
    images, labels = digits_arrays()
    assert torch.equal(d.x_train, torch.from_numpy(images[train_idx]).float())
    assert torch.equal(d.y_test, torch.from_numpy(labels[test_idx]))
    other_train, _ = split_indices(1)
    assert set(other_train.tolist()) != set(train_idx.tolist())


def test_predictions_are_the_first_largest_class_of_the_transposed_logits():
    nan, inf = float("nan"), float("inf")
    # (S=1, classes=4, N=5) as the packed model computes them, read through its (S, N, classes) transpose
    by_class = torch.tensor([[[1.0, nan, 2.0, -inf, 0.0],
                              [3.0, 1.0, 2.0, -inf, 0.0],
                              [3.0, nan, 2.0, 0.0, 0.0],
                              [0.0, 2.0, 2.0, 0.0, 5.0]]])
    assert _predictions(by_class.transpose(1, 2)).tolist() == [[1, 0, 0, 2, 3]]  # ties: the first; NaN: its class
    # many ties, against torch's argmax on the same strided view
    logits = torch.randint(0, 3, (3, 10, 899), generator=torch.Generator().manual_seed(0)).float().transpose(1, 2)
    assert torch.equal(_predictions(logits), logits.argmax(dim=2))


def test_handout_protocol_counts_updates_and_eval_steps():
    cfg = TrainConfig(C=1, budget=100, eval_every=25)
    trainer = Trainer(cfg, [0])
    evaluations = run_all(trainer)
    assert [e.step for e in evaluations] == [25, 50, 75, 100]
    assert trainer.updates == 100 and trainer.step == 100
    # The errors, worked out here from the final weights by counting wrong argmaxes (not by the trainer's
    # evaluation code), and the gap from those counts.
    # The plain ResNet is another computation than the trainer's packed model: the two agree on every image
    # but those whose top two logits are tied to within float32 rounding of a forward pass (a margin of
    # 1000 eps times the largest logit: products of length <= 9C over ~5 layers, with room to spare).
    r = evaluations[-1].records[0]
    net = trainer.members()[0].eval()
    d = trainer.data
    with torch.no_grad():
        train_logits, test_logits = net(d.x_train), net(d.x_test)
    for rate, logits, labels in ((r.train_error, train_logits, d.y_train), (r.test_error, test_logits, d.y_test)):
        assert_error_rate_off_ties(rate, logits, labels, margin=1000 * FLOAT32_EPS * float(logits.abs().max()))
    assert r.generalization_gap == r.test_error - r.train_error


def test_handout_minibatches_are_distinct_images():
    trainer = Trainer(TrainConfig(C=1, budget=10, eval_every=10), [3])
    batches = trainer._draw_batches(10)
    assert batches.shape == (10, 1, 1, 128)
    for b in batches[:, 0, 0]:
        assert len(set(b.tolist())) == 128 and int(b.max()) < N_TRAIN


def test_epochs_protocol_makes_seven_updates_per_epoch():
    trainer = Trainer(TrainConfig(C=1, protocol="epochs", budget=3, eval_every=1), [0])
    evaluations = run_all(trainer)
    assert [e.step for e in evaluations] == [1, 2, 3]
    assert trainer.updates == 3 * 7
    epoch = trainer._draw_batches(1)[0, :, 0]  # (7, 128): one shuffle cut into 7 minibatches
    assert epoch.shape == (7, 128) and len(set(epoch.flatten().tolist())) == 7 * 128


@pytest.mark.parametrize("protocol", ["handout", "epochs"])
def test_a_period_drawn_in_pieces_is_the_period_drawn_at_once(protocol):
    """On a CUDA device a period's minibatches are drawn a few steps at a time (Trainer._draws); each member's
    generator must give the same minibatches as one draw of the whole period, and end in the same state."""
    config = TrainConfig(C=1, protocol=protocol, budget=10, eval_every=10)
    whole, pieces = Trainer(config, [0, 4, 9]), Trainer(config, [0, 4, 9])
    expected = whole._draw_batches(7)
    got = torch.cat([pieces._draw_batches(n) for n in (3, 1, 3)])
    assert torch.equal(got, expected)
    assert torch.equal(pieces._draw_batches(2), whole._draw_batches(2))


def test_default_eval_every_and_a_final_partial_period():
    assert TrainConfig(C=1).eval_steps()[:2] == [25, 50]
    assert TrainConfig(C=1, protocol="epochs").eval_steps()[:2] == [10, 20]
    assert TrainConfig(C=1, budget=60, eval_every=25).eval_steps() == [25, 50, 60]


def test_same_config_and_seed_give_identical_records():
    cfg = TrainConfig(C=4, budget=60, eval_every=20)
    a = [e.records for e in run_all(Trainer(cfg, [7]))]
    b = [e.records for e in run_all(Trainer(cfg, [7]))]
    c = [e.records for e in run_all(Trainer(cfg, [8]))]
    assert a == b
    assert a != c


def test_global_rng_does_not_leak_into_training():
    cfg = TrainConfig(C=2, budget=20, eval_every=20)
    random.seed(1)
    torch.manual_seed(123)
    a = run_all(Trainer(cfg, [0]))[-1].records
    torch.manual_seed(999)
    b = run_all(Trainer(cfg, [0]))[-1].records
    assert a == b


def test_short_run_learns():
    # An untrained net sits near 0.9 error; a broken update rule cannot reach 0.15 in 300 updates.
    evaluations = run_all(Trainer(TrainConfig(C=16, budget=300, eval_every=100), [0]))
    first, last = evaluations[0].records[0], evaluations[-1].records[0]
    assert last.test_error < 0.15
    assert last.train_loss < first.train_loss


def test_checkpoint_resume_is_bit_identical():
    cfg = TrainConfig(C=4, budget=100, eval_every=25)
    straight = [e.records for e in run_all(Trainer(cfg, [1]))]
    first = Trainer(cfg, [1])
    it = first.run()
    head = [next(it).records, next(it).records]
    state = first.state_dict()
    second = Trainer(cfg, [1])
    second.load_state_dict(state)
    tail = [e.records for e in second.run()]
    assert head + tail == straight


def test_the_trainers_sgd_step_is_torch_optim_sgds():
    """The trainer's own SGD (written out so that a trial never imports torch._dynamo) against torch.optim.SGD on
    the same model: C=24 updates through autograd and the optimizer (above the one-call widths), float64, two
    members; every weight within float64 rounding after 20 updates."""
    cfg = TrainConfig(C=24, budget=20, eval_every=10, dtype="float64", lr=0.1)
    ours, reference = Trainer(cfg, [0, 1]), Trainer(cfg, [0, 1])
    initial = {name: p.detach().clone() for name, p in ours.model.named_parameters()}
    reference.optimizer = torch.optim.SGD(reference.model.parameters(), lr=cfg.lr)
    run_all(ours)
    run_all(reference)
    for (name, a), b in zip(ours.model.named_parameters(), reference.model.parameters(), strict=True):
        assert not torch.equal(a, initial[name]), f"{name} never moved"
        torch.testing.assert_close(a, b, rtol=0, atol=1e3 * FLOAT64_EPS, msg=name)


def test_training_never_imports_torch_dynamo():
    """torch.optim's optimizers import torch._dynamo when constructed (~2 s of CPU on the 2-core machines), in every
    new Ray worker; a trial's training, evaluation and checkpoint need none of it. In a process of its own: both
    update paths (C=4 in one C call, C=24 through autograd), a checkpoint saved and loaded."""
    script = (
        "import sys, io, torch\n"
        "from models.resnet.config import TrainConfig\n"
        "from models.resnet.trainer import Trainer\n"
        "for C in (4, 24):\n"
        "    t = Trainer(TrainConfig(C=C, budget=4, eval_every=2), [0, 1])\n"
        "    for _ in t.run(): pass\n"
        "    buffer = io.BytesIO(); torch.save(t.state_dict(), buffer); buffer.seek(0)\n"
        "    Trainer(TrainConfig(C=C, budget=4, eval_every=2), [0, 1]).load_state_dict(torch.load(buffer))\n"
        "print('torch._dynamo' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False"]


def _poisoned(cfg: TrainConfig, seeds: list[int], at_update: dict[int, int]) -> Trainer:
    """A trainer whose member ``seeds[i]`` turns NaN at its update ``at_update[seeds[i]]`` (tests.numerics)."""
    trainer = Trainer(cfg, seeds)
    poison_member(trainer.model, {seeds.index(s): u for s, u in at_update.items()})
    return trainer


def _nan_at(step: int) -> tuple[int, str]:
    return step, f"diverged: minibatch loss became nan at step {step}"


def test_divergence_stops_at_the_evaluation_step():
    # Divergence is read once per evaluation period (no host sync per update), so the run goes on to the
    # end of the period in which it diverged, and no further. The member is made NaN at update 10 by
    # construction (tests.numerics.poison_member), so the step does not depend on the machine's rounding.
    trainer = _poisoned(TrainConfig(C=4, budget=400, eval_every=25), [0], {0: 10})
    evaluations = run_all(trainer)
    assert trainer.diverged == {0: _nan_at(10)}
    assert evaluations[-1].records == [] and evaluations[-1].diverged == {0: _nan_at(10)}
    assert evaluations[-1].step == trainer.step == trainer.updates == 25


def _diverged_when_checked_every_step(cfg, seeds, at_update):
    """Reference: the same run evaluated after every step, where "the step a loss turned non-finite" has
    only one possible reading, whatever the trainer does between evaluations."""
    reference = _poisoned(replace(cfg, eval_every=1), seeds, at_update)
    run_all(reference)
    return reference.diverged


def test_divergence_is_reported_at_its_first_nonfinite_step_and_leaves_other_members_alone():
    # Of seeds 0, 1, 5 packed together, seed 5 turns NaN at update 16 and seed 0 at update 17 (by
    # construction), both in the middle of the first 25-update period; seed 1 never.
    cfg = TrainConfig(C=16, budget=40, eval_every=25)
    poison = {5: 16, 0: 17}
    trainer = _poisoned(cfg, [0, 1, 5], poison)
    evaluations = run_all(trainer)
    expected = {5: _nan_at(16), 0: _nan_at(17)}
    assert trainer.diverged == expected
    assert trainer.diverged == _diverged_when_checked_every_step(cfg, [0, 1, 5], poison)
    # Reported once, at the first evaluation after the fact; from then on their records stop.
    assert [(e.step, e.diverged, [r.seed for r in e.records]) for e in evaluations] == [
        (25, expected, [1]), (40, {}, [1])]
    # Members are independent: what the diverged members did in the pack does not reach seed 1. The same
    # pack without the poison runs the same kernels on the same inputs, so seed 1's records are bit for bit
    # the same (a pack of another size would be another computation: see tests/models/test_resnet_packed.py).
    # Its poisoning hook poisons nothing: a hooked model updates through autograd, as the poisoned one does
    # (PackedResNet.updates_in_one_call), so that the two are the same computation.
    clean = run_all(_poisoned(cfg, [0, 1, 5], {}))
    assert [e.records for e in evaluations] == [[r for r in e.records if r.seed == 1] for e in clean]


def test_divergence_of_every_member_is_reported_at_its_step_and_ends_the_run():
    for cfg in (TrainConfig(C=64, budget=400, eval_every=25),
                TrainConfig(C=64, protocol="epochs", budget=4, eval_every=3)):
        trainer = _poisoned(cfg, [0], {0: 5})
        evaluations = run_all(trainer)
        # NaN from update 5: step 5 (handout) or epoch 1 (7 updates per epoch).
        step = 5 if cfg.protocol == "handout" else 1
        assert trainer.diverged == {0: _nan_at(step)}
        assert trainer.diverged == _diverged_when_checked_every_step(cfg, [0], {0: 5})
        assert len(evaluations) == 1 and evaluations[0].records == []
        assert evaluations[0].diverged == trainer.diverged


def test_a_huge_step_size_is_caught_as_divergence():
    """lr = 1e38 sends every parameter with a gradient to the edge of float32's range (3.4e38) in one update,
    and products of such numbers in the next forward pass overflow: not a question of rounding, so the run
    diverges on any machine; the trainer catches it without a host sync per update."""
    trainer = Trainer(TrainConfig(C=4, budget=50, eval_every=25, lr=1e38), [0, 1])
    evaluations = run_all(trainer)
    assert sorted(trainer.diverged) == [0, 1]
    assert all(step <= 25 and reason.startswith("diverged: minibatch loss became")
               for step, reason in trainer.diverged.values())
    assert len(evaluations) == 1 and evaluations[0].records == []


def test_bad_train_config():
    for kwargs in ({"batch_size": 899}, {"eval_every": 101, "budget": 100}, {"protocol": "nope"}):
        with pytest.raises(ValueError):
            TrainConfig(C=1, budget=100, **{k: v for k, v in kwargs.items() if k != "budget"})


def test_draw_minibatches_is_a_uniform_ordered_sample_without_replacement():
    rows = draw_minibatches(np.random.default_rng(0).random((40000, 2)), 5)
    assert rows.shape == (40000, 2) and (rows[:, 0] != rows[:, 1]).all() and rows.min() >= 0 and rows.max() < 5
    pairs, counts = np.unique(rows[:, 0] * 5 + rows[:, 1], return_counts=True)
    assert len(pairs) == 20  # every ordered pair of distinct indices, each with probability 1/20
    assert np.abs(counts / 40000 - 1 / 20).max() < 0.006  # ~5 standard deviations
    with pytest.raises(ValueError, match="cannot draw 6 distinct indices out of 5"):
        draw_minibatches(np.zeros((1, 6)), 5)


# -- label noise (issue 12) ---------------------------------------------------------------------------

# round(f * 898) worked out by hand: 0.05 -> 44.9 -> 45, 0.2 -> 179.6 -> 180, 0.5 -> 449, 0.9 -> 808.2 -> 808.
FLIPS = [(0.0, 0), (0.05, 45), (0.2, 180), (0.5, 449), (0.9, 808)]


@pytest.mark.parametrize(("noise", "n_flipped"), FLIPS)
def test_label_noise_flips_exactly_round_f_898_labels_each_to_another_class(noise, n_flipped):
    clean = load_digits_split(0)
    noisy = load_digits_split(0, label_noise=noise)
    changed = noisy.y_train != clean.y_train
    assert int(changed.sum()) == n_flipped == noisy.n_flipped  # != : each flipped label is a different class
    assert torch.equal(noisy.y_train_clean, clean.y_train)
    assert int(noisy.y_train.min()) >= 0 and int(noisy.y_train.max()) <= 9
    # images and the test half untouched
    assert torch.equal(noisy.x_train, clean.x_train) and torch.equal(noisy.x_test, clean.x_test)
    assert torch.equal(noisy.y_test, clean.y_test)
    assert noisy.split_hash == clean.split_hash


def test_label_noise_is_the_same_for_every_width_and_seed():
    """Fixed by split_seed and the noise level alone: two trainers that share nothing else see the same labels."""
    a = Trainer(TrainConfig(C=1, budget=10, eval_every=10, label_noise=0.2), [0]).data
    b = Trainer(TrainConfig(C=64, budget=20, eval_every=10, lr=0.05, label_noise=0.2), [3, 7]).data
    assert torch.equal(a.y_train, b.y_train) and int((a.y_train != a.y_train_clean).sum()) == 180
    # ... and another split seed or another level gives another corruption
    other_split = load_digits_split(1, label_noise=0.2)
    assert not torch.equal(other_split.y_train != other_split.y_train_clean, a.y_train != a.y_train_clean)
    other_level = load_digits_split(0, label_noise=0.3)
    assert int((other_level.y_train != other_level.y_train_clean).sum()) == 269  # 0.3 x 898 = 269.4
    # a Trainer refuses data that was corrupted differently from what its config says
    with pytest.raises(ValueError, match="label_noise"):
        Trainer(TrainConfig(C=1, budget=10, eval_every=10, label_noise=0.2), [0], data=load_digits_split(0))


def test_wrong_labels_are_spread_over_the_nine_other_classes():
    d = load_digits_split(0, label_noise=0.5)
    flipped = d.y_train != d.y_train_clean
    offsets = ((d.y_train - d.y_train_clean) % 10)[flipped]
    counts = torch.bincount(offsets, minlength=10).tolist()
    assert counts[0] == 0
    # 449 flips over 9 offsets: 49.9 each, standard deviation sqrt(449 * 1/9 * 8/9) = 6.7; allow 5 of them
    assert all(abs(c - 449 / 9) < 5 * 6.7 for c in counts[1:]), counts


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan")])
def test_label_noise_outside_0_1_is_refused(bad):
    with pytest.raises(ValueError, match="label_noise"):
        TrainConfig(C=1, label_noise=bad)
    with pytest.raises(ValueError, match="label_noise"):
        load_digits_split(0, label_noise=bad)


def test_train_error_is_against_the_noisy_labels_and_train_error_clean_against_the_true_ones():
    # The plain ResNet's predictions below come from another computation than the packed model's: compared
    # off float64 ties (1e6 eps times the largest logit, far above a forward pass's rounding).
    trainer = Trainer(TrainConfig(C=8, budget=100, eval_every=100, label_noise=0.2, dtype="float64"), [0])
    record = run_all(trainer)[-1].records[0]
    net = trainer.members()[0].eval()
    with torch.no_grad():
        logits = net(trainer.data.x_train)
    margin = 1e6 * FLOAT64_EPS * float(logits.abs().max())
    assert_error_rate_off_ties(record.train_error, logits, trainer.data.y_train, margin)
    assert_error_rate_off_ties(record.train_error_clean, logits, trainer.data.y_train_clean, margin)
    predicted = logits.argmax(dim=1)
    assert int((predicted != trainer.data.y_train).sum()) != int((predicted != trainer.data.y_train_clean).sum())
    clean = run_all(Trainer(TrainConfig(C=8, budget=25, eval_every=25), [0]))[-1].records[0]
    assert clean.train_error_clean == clean.train_error
