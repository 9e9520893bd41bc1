"""The pure-PyTorch trainer: protocols, determinism, learning, checkpoints, divergence."""

import random

import numpy as np
import pytest
import torch

from sweep.data import N_TRAIN, digits_arrays, load_digits_split, split_hash, split_indices
from sweep.trainer import TrainConfig, Trainer, draw_minibatches


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


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


def test_handout_protocol_counts_updates_and_eval_steps():
    cfg = TrainConfig(C=1, budget=100, eval_every=25)
    trainer = Trainer(cfg, [0])
    evaluations = run_all(trainer)
    assert [e.step for e in evaluations] == [25, 50, 75, 100]
    assert trainer.updates == 100 and trainer.step == 100
    # The errors, worked out here from the final weights by counting wrong argmaxes (not by the trainer's
    # evaluation code), and the gap from those counts.
    r = evaluations[-1].records[0]
    net = trainer.members()[0].eval()
    with torch.no_grad():
        wrong_train = int((net(trainer.data.x_train).argmax(1) != trainer.data.y_train).sum())
        wrong_test = int((net(trainer.data.x_test).argmax(1) != trainer.data.y_test).sum())
    assert r.train_error == pytest.approx(wrong_train / 898, abs=1e-12)
    assert r.test_error == pytest.approx(wrong_test / 899, abs=1e-12)
    assert r.generalization_gap == pytest.approx(wrong_test / 899 - wrong_train / 898, abs=1e-12)


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


def test_divergence_stops_at_once():
    # BatchNorm keeps small nets finite even at lr=50 (loss ~17); a wide net at lr=1e6 overflows at once.
    trainer = Trainer(TrainConfig(C=64, budget=400, eval_every=25, lr=1e6), [0])
    evaluations = run_all(trainer)
    assert trainer.diverged, "lr=1e6 should blow up"
    step, reason = trainer.diverged[0]
    assert reason.startswith("diverged: minibatch loss became")
    assert evaluations[-1].records == [] and evaluations[-1].diverged == {0: (step, reason)}
    assert trainer.updates == step < 400


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
