"""The training loop: pure PyTorch, no Ray, no MLflow.

A :class:`Trainer` trains S members (one per seed) of the same configuration as one ``PackedResNet``
computation, for every S including 1: one code path, so a member's float32 records depend only on its
config and seed, never on how many seeds share its pack (which the plan decides from the cluster's size;
tests/test_packed.py checks packs of 1, 2 and 5 bit for bit). Each member starts from the weights
``ResNet(C)`` gets under ``torch.manual_seed(seed)`` and draws its minibatches from its own generator.
``packed=False`` (one seed only) trains a plain ``ResNet`` instead: the reference the packed path is tested
against, and a column of the benchmark; nothing chooses it implicitly.

On a CUDA device one update is a few hundred small kernels, and launching them one by one costs more than
running them (4.0-5.5 ms per update at any S up to 128 on an H200, against 2.0-2.3 ms for the plain loop's one
model): the trainer captures the update in a CUDA graph once and replays it (:class:`_Replayed`), so one launch
runs the whole update (0.26-0.36 ms at S=1 there; docs/gpu.md). On the CPU the update runs op by op.

Protocols (see HANDOUT.md):
  * ``handout``: ``budget`` SGD updates, each on ``batch_size`` distinct training images drawn at random;
    ``step`` counts updates; evaluated every 25 updates by default.
  * ``epochs``: ``budget`` passes over a fresh shuffle of the training half, cut into
    ``898 // batch_size`` full minibatches (the partial one dropped); ``step`` counts epochs; evaluated
    every 10 epochs by default.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.allocator import keep_freed_memory
from models.records import Evaluation, MetricRecord
from models.resnet.config import TrainConfig
from models.resnet.data import Digits, load_for_config
from models.resnet.model import ResNet
from models.resnet.packed import PackedResNet, StemInputs


def init_model(C: int, seed: int, dtype: torch.dtype = torch.float32) -> ResNet:
    """``ResNet(C)`` initialised under ``torch.manual_seed(seed)``, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNet(C)
    return model.to(dtype)


def sampling_seed(seed: int) -> int:
    """The minibatch generator's seed: derived from ``seed`` but a different stream from the init RNG."""
    return int(np.random.SeedSequence([seed, 0x5EED]).generate_state(1, np.uint64)[0] >> 1)


def draw_minibatches(uniforms: np.ndarray, population: int) -> np.ndarray:
    """Row-wise samples without replacement: (R, b) uniforms in [0, 1) -> (R, b) distinct indices < population.

    The first b steps of a Fisher-Yates shuffle, run for all R rows at once: step i swaps position i with a
    position drawn uniformly from [i, population). Each row is a uniform random ordered sample, exactly as
    ``random.sample(range(population), b)`` is; the cost is O(b) per row, where sorting random keys (the
    usual vectorised trick) is O(population log population).
    """
    rows, b = uniforms.shape
    if b > population:
        raise ValueError(f"cannot draw {b} distinct indices out of {population}")
    steps = np.arange(b)
    base = np.arange(rows) * population
    swap_with = base[:, None] + steps + (uniforms * (population - steps)).astype(np.intp)  # (R, b) flat
    order = np.tile(np.arange(population, dtype=np.int64), rows)
    for i in range(b):
        here, there = base + i, swap_with[:, i]
        order[here], order[there] = order[there], order[here].copy()
    return order.reshape(rows, population)[:, :b]


class SGD:
    """``torch.optim.SGD(params, lr)`` as the trainer uses it, without momentum or weight decay: p <- p - lr * grad.

    Written out, not taken from ``torch.optim``: constructing any ``torch.optim`` optimizer imports
    ``torch._dynamo`` (its methods are wrapped to keep dynamo out of them), ~2 s of CPU in every new Ray worker on
    the 2-core machines, and nothing else a trial runs needs it. The arithmetic is SGD's own: one
    ``_foreach_add_(params, grads, alpha=-lr)``, which on the CPU runs SGD's per-parameter ``add_(grad, alpha=-lr)``
    and on CUDA is SGD's default foreach form; tests/models/test_resnet_trainer.py compares this class with
    ``torch.optim.SGD`` on the CPU."""

    def __init__(self, params: Iterator[nn.Parameter], lr: float) -> None:
        self.params = list(params)
        self.lr = lr

    def zero_grad(self) -> None:
        """Drop the gradients (``set_to_none``), so the next backward writes them afresh."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        params = [p for p in self.params if p.grad is not None]
        torch._foreach_add_(params, [p.grad for p in params], alpha=-self.lr)


class _Single(nn.Module):
    """One plain ResNet behind the packed interface: (S=1, N, 1, H, W) or shared (N, 1, H, W) -> (1, N, 10)."""

    def __init__(self, net: ResNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x[0] if x.dim() == 5 else x).unsqueeze(0)

    def members(self) -> list[ResNet]:
        return [self.net]


_UPDATES_PER_DRAW = 4  # on a CUDA device: minibatches drawn for about this many updates at a time (Trainer._draws)


class _Launcher(Protocol):
    """How :class:`_Replayed` runs an update before its capture (``eager``) and captures it (``capture``, which
    returns the replay)."""

    def eager(self, update: Callable[[], None]) -> None: ...

    def capture(self, update: Callable[[], None]) -> Callable[[], None]: ...


class _CudaGraph:
    """Capture and replay on a CUDA device, by PyTorch's recipe for whole-network capture: the updates before the
    capture run on a side stream (cuBLAS handles and workspaces, autograd's device threads and the allocator are
    set up there, not inside the capture), then one update is captured and replayed from then on."""

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.Stream(device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def eager(self, update: Callable[[], None]) -> None:
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            update()
        torch.cuda.current_stream().wait_stream(self.stream)

    def capture(self, update: Callable[[], None]) -> Callable[[], None]:
        """Record ``update``'s kernels (capture runs none of them) -> the function that runs them."""
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            update()
        return self.graph.replay


class _Replayed:
    """An update captured once and replayed: ``update(idx, step)`` reads its minibatch indices and step number
    from tensors that stay in place (a graph replays its kernels on the same memory), which each call fills
    before the replay. The first ``WARMUP`` calls run ``update`` eagerly (``launcher.eager``), the next one is
    captured (``launcher.capture``) and replayed, and every later call replays that capture."""

    WARMUP = 3  # eager updates before the capture, as in PyTorch's whole-network capture example

    def __init__(self, update: Callable[[Tensor, Tensor], None], idx_shape: tuple[int, ...], device: torch.device,
                 launcher: _Launcher) -> None:
        self.update, self.launcher = update, launcher
        self.idx = torch.zeros(idx_shape, dtype=torch.long, device=device)
        self.step = torch.zeros((), dtype=torch.long, device=device)
        self.warm = 0
        self.replay: Callable[[], None] | None = None

    def __call__(self, idx: Tensor, step: int) -> None:
        self.idx.copy_(idx)
        self.step.fill_(step)
        if self.replay is None:
            if self.warm < self.WARMUP:
                self.warm += 1
                self.launcher.eager(self._update)
                return
            self.replay = self.launcher.capture(self._update)
        self.replay()

    def _update(self) -> None:
        self.update(self.idx, self.step)


class Trainer:
    """Trains one member per seed as one ``PackedResNet`` (any number of seeds, one included).

    ``packed=False`` (exactly one seed) trains a plain ``ResNet`` instead, for comparisons only. ``data``:
    the split :func:`models.resnet.data.load_for_config` gives for ``config`` (loaded here when None); it must have
    the config's split seed and label noise. ``cuda_graph`` (on a CUDA device only): replay the update from a
    CUDA graph (:class:`_Replayed`); False launches every op of every update, the reference the graph is checked
    against.

    Usage::

        trainer = Trainer(TrainConfig(C=4, budget=400), seeds=[0])
        for evaluation in trainer.run():
            print(evaluation.records)
    """

    def __init__(
        self,
        config: TrainConfig,
        seeds: Sequence[int],
        packed: bool = True,
        data: Digits | None = None,
        cuda_graph: bool = True,
    ) -> None:
        if not seeds:
            raise ValueError("at least one seed is needed")
        if not packed and len(seeds) != 1:
            raise ValueError("an unpacked trainer trains exactly one seed")
        keep_freed_memory()  # a C=64 update's temporaries would page-fault afresh every update otherwise
        self.config = config
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(config.device)
        dtype = getattr(torch, config.dtype)
        self.data = data or load_for_config(config)
        if (self.data.split_seed, self.data.label_noise) != (config.split_seed, config.label_noise):
            raise ValueError(f"data has split_seed={self.data.split_seed}, label_noise={self.data.label_noise}; "
                             f"the config asks for {config.split_seed}, {config.label_noise}")
        members = [init_model(config.C, s, dtype) for s in self.seeds]
        if packed:
            self.model: nn.Module = PackedResNet.from_models(members)
        else:
            self.model = _Single(members[0])
        self.model.to(self.device)
        self.optimizer = SGD(self.model.parameters(), lr=config.lr)
        self.generators = [np.random.default_rng(sampling_seed(s)) for s in self.seeds]
        self.step = 0
        self.updates = 0
        self.train_seconds = 0.0
        self.diverged: dict[int, tuple[int, str]] = {}
        # The training images as the packed stem reads them (its per-image work done once, not per update): what
        # each update's minibatch is gathered from, and what the one-call update reads.
        self._images: StemInputs | None = None
        if isinstance(self.model, PackedResNet):
            with torch.no_grad():
                self._images = self.model.stem_inputs(self.data.x_train, per_image=True)
        self._minibatch = self._minibatch_source()
        self._packed_cpu = self._images is not None and self.device.type == "cpu"
        # Written by every update (_update), read after each evaluation period: on the device, in place.
        S = len(self.seeds)
        self._losses = torch.zeros(S, dtype=dtype, device=self.device)  # each member's last minibatch loss
        self._first_bad = torch.zeros(S, dtype=torch.long, device=self.device)  # step of its first non-finite one
        self._first_bad_loss = torch.zeros(S, dtype=dtype, device=self.device)  # and that loss
        self._run_update: Callable[[Tensor, int], None] = self._update
        if cuda_graph and self.device.type == "cuda":
            idx_shape = (S, config.batch_size)
            self._run_update = _Replayed(self._update, idx_shape, self.device, _CudaGraph(self.device))

    # -- checkpointing -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit for bit: weights, BatchNorm buffers, RNGs, step (plain SGD keeps no
        state of its own)."""
        return {
            "config": asdict(self.config),
            "seeds": self.seeds,
            "model": self.model.state_dict(),
            "generators": [g.bit_generator.state for g in self.generators],
            "step": self.step,
            "updates": self.updates,
            "train_seconds": self.train_seconds,
            "diverged": dict(self.diverged),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seeds"] != self.seeds or state["config"] != asdict(self.config):
            raise ValueError("checkpoint belongs to another configuration or other seeds")
        self.model.load_state_dict(state["model"])  # an "optimizer" entry (older checkpoints) holds nothing more
        for g, s in zip(self.generators, state["generators"], strict=True):
            g.bit_generator.state = s
        self.step = state["step"]
        self.updates = state["updates"]
        self.train_seconds = state["train_seconds"]
        self.diverged = dict(state["diverged"])

    def members(self) -> list[ResNet]:
        """One plain ``ResNet`` per seed holding that member's current weights and BatchNorm buffers."""
        return self.model.members()

    @property
    def ms_per_update(self) -> float:
        """Wall-clock training time (evaluations excluded) per SGD update per member, in milliseconds."""
        return 1000.0 * self.train_seconds / max(1, self.updates * len(self.seeds))

    # -- the loop --------------------------------------------------------------------------------------
    def _draw_batches(self, n_steps: int) -> Tensor:
        """Minibatch indices for the next ``n_steps`` steps: (n_steps, updates_per_step, S, batch_size).

        Each member draws from its own generator only, so its minibatches do not depend on what it is packed
        with: the handout protocol draws ``batch_size`` distinct images per step (:func:`draw_minibatches`),
        the epochs protocol one fresh shuffle of the training half per step, cut into full minibatches.
        A generator's numbers do not depend on how the steps are split into draws (each draw takes the next
        values of its stream), and every draw ends at an evaluation step, which is where checkpoints are taken.
        On a CUDA device the indices go up through pinned memory without waiting for the device.
        """
        k, b = self.config.updates_per_step, self.config.batch_size
        n_train = len(self.data.y_train)  # 898, less the validation split when there is one
        if k == 1:  # a sample without replacement per step: n_steps * S rows drawn at once
            uniforms = np.stack([g.random((n_steps, b)) for g in self.generators], axis=1)  # (n_steps, S, b)
            order = draw_minibatches(uniforms.reshape(-1, b), n_train).reshape(n_steps, 1, len(self.seeds), b)
        else:  # whole shuffles, cut into k minibatches
            keys = np.stack([g.random((n_steps, n_train)) for g in self.generators], axis=1)  # (n_steps, S, 898)
            order = np.argsort(keys, axis=2, kind="stable")[:, :, : k * b].reshape(n_steps, len(self.seeds), k, b)
            order = order.transpose(0, 2, 1, 3)
        indices = torch.from_numpy(np.ascontiguousarray(order))
        if self.device.type == "cuda":
            return indices.pin_memory().to(self.device, non_blocking=True)
        return indices.to(self.device)

    def _draws(self, n_steps: int) -> list[int]:
        """The next ``n_steps`` steps split into draws (:meth:`_draw_batches`): one on the CPU; on a CUDA device a
        few updates each, so that the host draws the next ones while the device runs these (drawn a period at a
        time, 128 members' minibatches kept an H200 waiting: 0.0219 against 0.0133 ms per model-update at C=64)."""
        if self.device.type != "cuda":
            return [n_steps]
        per_draw = max(1, _UPDATES_PER_DRAW // self.config.updates_per_step)
        return [min(per_draw, n_steps - i) for i in range(0, n_steps, per_draw)]

    def _minibatch_source(self) -> Callable[[Tensor], Tensor | StemInputs]:
        """idx (S, B) of training images -> the model's input for those S member minibatches."""
        if self._images is not None:
            return self._images.select
        x = self.data.x_train
        # index_select is several times cheaper than x[idx] here
        return lambda idx: x.index_select(0, idx.flatten()).view(*idx.shape, *x.shape[1:])

    def _update(self, idx: Tensor, step: Tensor | int) -> None:
        """One SGD update of every member on its minibatch, indices ``idx`` (S, batch_size), at step ``step``
        (1-based). Writes each member's loss into ``_losses``, and ``step`` and the loss into ``_first_bad`` and
        ``_first_bad_loss`` for a member whose loss is non-finite for the first time this period: tensor ops
        only, in place, no read of the device, so that a CUDA graph can capture it."""
        # At narrow widths the whole update is one C call (PackedResNet.sgd_update): there, forward, autograd and
        # the optimizer's step cost several times the arithmetic (docs/benchmarks.md).
        if self._packed_cpu and self.model.updates_in_one_call():
            self._record_losses(self.model.sgd_update(self._images, self.data.y_train, idx, self.config.lr), step)
            return
        logits = self.model(self._minibatch(idx))  # (S, B, 10)
        # Classes on dim 1: this torch's log-softmax is far slower over a last dim of 10.
        member_losses = F.cross_entropy(
            logits.transpose(1, 2), self.data.y_train.index_select(0, idx.flatten()).view(idx.shape), reduction="none"
        ).mean(dim=1)
        self.optimizer.zero_grad()
        # Summing keeps members independent: d(sum)/d(loss_s) = 1 for every member.
        member_losses.sum().backward()
        self.optimizer.step()
        self._record_losses(member_losses.detach(), step)

    def _record_losses(self, losses: Tensor, step: Tensor | int) -> None:
        """Each member's minibatch loss ``losses`` (S,) into ``_losses``; for a member whose loss is non-finite
        for the first time this period, ``step`` and that loss into ``_first_bad`` and ``_first_bad_loss``."""
        newly = losses.isfinite().logical_not_().logical_and_(self._first_bad == 0)
        self._first_bad.copy_(torch.where(newly, step, self._first_bad))
        self._first_bad_loss.copy_(torch.where(newly, losses, self._first_bad_loss))
        self._losses.copy_(losses)

    def _live(self) -> list[int]:
        return [i for i, s in enumerate(self.seeds) if s not in self.diverged]

    def run(self) -> Iterator[Evaluation]:
        """Train from the current step to ``budget``, yielding an :class:`Evaluation` at every eval step.

        Divergence (a non-finite minibatch loss) is checked on the device and read once per evaluation
        period, so an update never waits for the host: a member whose loss turned non-finite keeps being
        updated (harmlessly: members are independent, its NaN gradient is its own) until the evaluation step,
        where it is reported with the step of its first non-finite update and its records stop. The run
        ends at the first evaluation step by which every member has diverged.
        """
        cfg = self.config
        reported: set[int] = set(self.diverged)
        for eval_step in cfg.eval_steps():
            if eval_step <= self.step:
                continue
            start = time.perf_counter()
            self.model.train()
            self._first_bad.zero_()
            self._first_bad_loss.zero_()
            for n_steps in self._draws(eval_step - self.step):
                for step_batches in self._draw_batches(n_steps):
                    for idx in step_batches:  # (S, batch_size)
                        self._run_update(idx, self.step + 1)
                        self.updates += 1
                    self.step += 1
            self._mark_diverged()  # the period's one read of the device
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.train_seconds += time.perf_counter() - start
            new = {s: v for s, v in self.diverged.items() if s not in reported}
            reported |= set(new)
            if not self._live():
                yield Evaluation(step=self.step, records=[], diverged=new)
                return
            yield Evaluation(step=self.step, records=self.evaluate(self._losses), diverged=new)

    def _mark_diverged(self) -> None:
        """Record live members whose loss turned non-finite this period: ``_first_bad`` (S,) holds that step (0:
        none), ``_first_bad_loss`` (S,) the non-finite value."""
        steps, values = self._first_bad.tolist(), self._first_bad_loss.tolist()
        for i in self._live():
            if steps[i]:
                step = steps[i]
                self.diverged[self.seeds[i]] = (step, f"diverged: minibatch loss became {values[i]} at step {step}")

    @torch.no_grad()
    def evaluate(self, minibatch_losses: Tensor) -> list[MetricRecord]:
        """Every live member's metrics (the ResNet family's: errors are misclassification rates in [0, 1] on the
        whole train and test halves in eval mode, losses mean cross-entropy in nats, ``train_*`` against the
        labels trained on and ``train_error_clean`` against the true ones, ``minibatch_loss`` the training-mode
        loss of the last minibatch before the evaluation; ``val_*`` on the validation split when there is one)."""
        self.model.eval()
        d = self.data
        per_split = []
        predictions = []
        for xs, ys in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
            logits = self.model(xs)  # shared input -> (S, N, 10)
            loss = F.cross_entropy(logits.transpose(1, 2), ys.expand(logits.shape[0], -1), reduction="none")
            predictions.append(_predictions(logits))
            per_split.append((_error_rates(predictions[-1], ys), loss.mean(dim=1).tolist()))
        (train_err, train_loss), (test_err, test_loss) = per_split
        train_err_clean = train_err if d.n_flipped == 0 else _error_rates(predictions[0], d.y_train_clean)
        val: list[dict[str, float]] = [{} for _ in self.seeds]
        if d.x_val is not None:  # the validation split (searches and schedulers only)
            logits = self.model(d.x_val)
            loss = F.cross_entropy(logits.transpose(1, 2), d.y_val.expand(logits.shape[0], -1), reduction="none")
            val_err, val_loss = _error_rates(_predictions(logits), d.y_val), loss.mean(dim=1).tolist()
            val = [{"val_error": e, "val_loss": v} for e, v in zip(val_err, val_loss, strict=True)]
        return [
            MetricRecord(seed=self.seeds[i], step=self.step, values={
                "train_error": train_err[i], "test_error": test_err[i], "train_loss": train_loss[i],
                "test_loss": test_loss[i], "generalization_gap": test_err[i] - train_err[i],
                "minibatch_loss": float(minibatch_losses[i]), "train_error_clean": train_err_clean[i], **val[i]})
            for i in self._live()
        ]


def _predictions(logits: Tensor) -> Tensor:
    """logits (S, N, classes) -> (S, N) predicted classes: ``argmax(dim=2)``, computed as ``max(dim=2).indices``.

    Why: the packed model's logits are a transposed view, and ATen's CPU argmax over that strided class axis took
    1.1 ms for 10 members x 898 images (a third of an evaluation at C=1) where max's indices take 0.27 ms. Both
    return the first largest class on ties, and a NaN's class where there is one (tested)."""
    return logits.max(dim=2).indices


def _error_rates(predictions: Tensor, labels: Tensor) -> list[float]:
    """predictions (S, N), labels (N,) -> S misclassification rates, each exactly mistakes / N: counted in
    integers, so the rate does not depend on the dtype."""
    return ((predictions != labels).sum(dim=1).double() / labels.numel()).tolist()
