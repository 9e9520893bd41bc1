"""The ResNet family (CS 446 hw2, problem 3): width C is the knob; trained by :class:`models.resnet.trainer.Trainer`.

This file is the ResNet's declaration under :mod:`models.family`: its spec keys (``model.C``, ``protocol``,
``lr``, ``batch_size``, ``data.label_noise``, ...), metrics and how the analysis reads them (train/test error
and their gap, the interpolation threshold, the best-step oracle), trial config
(:class:`models.resnet.config.TrainConfig`) and trainer. No torch import at module level: the CLI validates
specs through it before anything heavy is imported.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from models.digits import N_TRAIN
from models.family import Family, MetricInfo, Panel, Quantity, ThresholdRule
from models.resnet import native
from models.resnet.config import DEFAULT_EVAL_EVERY, TrainConfig
from models.resnet.pack_cost import member_ms
from models.spec import (
    CommonSpec,
    PositiveFloat,
    PositiveInt,
    Strict,
    as_list,
    grid_list,
)

ProtocolName = Literal["handout", "epochs"]
_LIST = "a non-empty list of distinct ones"
_Noise = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]


class ResNetModelSpec(Strict):
    family: Literal["resnet"] = "resnet"
    C: PositiveInt | list[PositiveInt] = Field(description="ResNet width(s); the complexity knob")

    _C_grid = field_validator("C")(grid_list)




class ResNetDataSpec(Strict):
    label_noise: _Noise | list[_Noise] = Field(
        0.0, description="fraction of training labels replaced by a different class, in [0, 1); a list = an axis"
    )

    val_fraction: float = Field(
        0.2, gt=0, le=0.5, allow_inf_nan=False,
        description="searches and schedulers only: share of the training half held out for validation, in (0, 0.5]")

    _noise_grid = field_validator("label_noise")(grid_list)


class ResNetSpec(CommonSpec):
    """A ResNet sweep (``model.C`` first axis, then protocol, budget, lr, batch_size, eval_every,
    data.label_noise)."""

    family_name = "resnet"

    model: ResNetModelSpec
    data: ResNetDataSpec = ResNetDataSpec()
    protocol: ProtocolName | list[ProtocolName] = "handout"
    budget: PositiveInt | list[PositiveInt] = 4000
    lr: PositiveFloat | list[PositiveFloat] = 0.1
    batch_size: PositiveInt | list[PositiveInt] = 128
    eval_every: PositiveInt | list[PositiveInt] | None = None
    dtype: Literal["float32", "float64"] = "float32"

    _grids = field_validator("protocol", "budget", "lr", "batch_size", "eval_every")(grid_list)

    @field_validator("batch_size")
    @classmethod
    def _batch_fits_the_training_half(cls, v: int | list[int]) -> int | list[int]:
        for b in as_list(v):
            if b > N_TRAIN:
                raise ValueError(f"batch_size {b} is larger than the training half ({N_TRAIN} images)")
        return v

    @model_validator(mode="after")
    def _batch_fits(self) -> ResNetSpec:
        """A minibatch is drawn from the images trained on: the training half, less the validation split when
        something selects on it (a search or a scheduler; not a refine search, which selects nothing)."""
        n_val = round(self.data.val_fraction * N_TRAIN) if self.search.selects else 0
        for b in as_list(self.batch_size):
            if b > N_TRAIN - n_val:
                raise ValueError(f"batch_size {b} is larger than the {N_TRAIN - n_val} images trained on: the "
                                 f"training half's {N_TRAIN} less the {n_val} of the validation split a search or "
                                 f"scheduler holds out (data.val_fraction); allowed: 1..{N_TRAIN - n_val}")
        return self

    @model_validator(mode="after")
    def _eval_fits_budget(self) -> ResNetSpec:
        for protocol, budget, every in itertools.product(
            as_list(self.protocol), as_list(self.budget), as_list(self.eval_every)
        ):
            every = every or DEFAULT_EVAL_EVERY[protocol]
            if every > budget:
                raise ValueError(f"eval_every {every} is larger than the budget {budget} ({protocol} protocol)")
        return self


ERROR_AXIS = "error rate (fraction misclassified, 0–1)"


class ResNetFamily(Family):
    name = "resnet"
    display_name = "ResNet"
    knob = "C"
    knob_meaning = "ResNet width"
    metrics = (
        MetricInfo("train_error", "misclassification rate on the training half, against the labels trained on",
                   "", False, "training error"),
        MetricInfo("test_error", "misclassification rate on the test half", "", False, "test error"),
        MetricInfo("train_loss", "mean cross-entropy on the training half (labels trained on)", "nats", False),
        MetricInfo("test_loss", "mean cross-entropy on the test half", "nats", False),
        MetricInfo("generalization_gap", "test_error - train_error", "", False,
                   "generalization gap (test − train error)"),
        MetricInfo("minibatch_loss", "training-mode loss of the last minibatch before the evaluation", "nats",
                   False),
        MetricInfo("train_error_clean", "train error against the true labels", "", False),
    )
    #: Measured on the validation split (searches and schedulers only): what selection may use.
    validation_metrics = (
        MetricInfo("val_error", "misclassification rate on the validation split (held out of the training half)",
                   "", False),
        MetricInfo("val_loss", "mean cross-entropy on the validation split", "nats", False),
    )
    quantities = (
        Quantity("final_train_error", "train_error", "final", "final train error"),
        Quantity("final_test_error", "test_error", "final", "final test error"),
        Quantity("final_gap", "generalization_gap", "final", "final generalization gap (test - train error)",
                 "gap (test − train error)"),
        Quantity("best_test_error", "test_error", "best", "oracle best-step test error (step picked on the test set)"),
        Quantity("final_train_error_clean", "train_error_clean", "final", "final train error on the true labels",
                 note="With label noise, the train error is measured against the labels the model was trained on "
                      "(a fraction replaced by a wrong class), and the interpolation threshold refers to it; the "
                      "train error on the true labels is the column so named."),
    )
    complexity_panels = (Panel(("train_error", "test_error", "generalization_gap"), ERROR_AXIS),)
    curve_metrics = ("train_error", "test_error")
    gap_metric = "generalization_gap"
    #: The smallest width from which every wider one has a mean final train error below 1%: it fits the labels
    #: it is trained on (with label noise, the noisy ones, as in Nakkiran et al. 2019).
    threshold = ThresholdRule("train_error", 0.01)
    table_metrics = (("train_error", "train_error"), ("test_error", "test_error"), ("generalization_gap", "gap"))
    budget_unit = "update"
    axis_keys = {"C": "model.C", "protocol": "protocol", "budget": "budget", "lr": "lr",
                 "batch_size": "batch_size", "eval_every": "eval_every", "label_noise": "data.label_noise"}
    spec_class = ResNetSpec
    allowed = {
        "model.C": f"a positive integer or {_LIST}",
        "data.label_noise": f"a fraction in [0, 1) or {_LIST}",
        "protocol": "'handout' or 'epochs', or a non-empty list of distinct ones",
        "budget": f"an integer > 0 or {_LIST}",
        "lr": f"a finite number > 0 or {_LIST}",
        "batch_size": f"an integer in 1..{N_TRAIN} or {_LIST}",
        "eval_every": f"an integer in 1..budget, {_LIST}, or null for the protocol's default",
    }

    def make_config(self, values: dict[str, Any], spec: Any) -> TrainConfig:
        # A validation split only where something selects on it: grids keep the handout protocol.
        val_fraction = spec.data.val_fraction if spec.search.selects else 0.0
        return TrainConfig(**values, split_seed=spec.split_seed, dtype=spec.dtype, val_fraction=val_fraction)

    def config_from_dict(self, d: dict[str, Any]) -> TrainConfig:
        return TrainConfig(**d)

    def param_count(self, config: TrainConfig) -> int:
        from models.resnet.model import parameter_count  # imports torch (~1.5 s): not for the CLI's spec check

        return parameter_count(config.C)

    def relative_cost(self, config: TrainConfig) -> float:
        """In units of one C=1 update: packed updates cost about 0.09 ms + 0.0005 ms * C^2 per member on one
        core (measured, docs/benchmarks.md), so a C=64 member costs ~21 C=1 members."""
        return config.budget * config.updates_per_step * (1.0 + config.C**2 / 200.0)

    def pack_cost(self, config: TrainConfig, size: int) -> float:
        """ms of one member's whole run in a pack of ``size``: its updates times this machine's ms per
        member-update at that width and pack size (:mod:`models.resnet.pack_cost`: measured once per machine,
        or the defaults)."""
        return config.budget * config.updates_per_step * member_ms(config.C, size)

    def code_path(self, config: TrainConfig) -> str:
        """``aten + packed_kernels.c`` where the packed model runs its C kernels (:mod:`models.resnet.native`), with
        ``+ update_kernels.c`` where its updates are one C call (C <= ``native.ONE_CALL_MAX_C``), else ``aten``."""
        if config.device != "cpu" or native.library() is None:
            return "aten"
        return "aten + packed_kernels.c" + (" + update_kernels.c" if config.C <= native.ONE_CALL_MAX_C else "")

    def member_params(self, config: TrainConfig, seed: int, split_hash: str) -> dict[str, Any]:
        c = config
        return {
            "C": c.C, "seed": seed, "protocol": c.protocol, "budget": c.budget, "lr": c.lr,
            "batch_size": c.batch_size, "eval_every": c.eval_interval, "split_seed": c.split_seed,
            "split_hash": split_hash, "model_family": self.name, "param_count": self.param_count(c),
            "dtype": c.dtype, "label_noise": c.label_noise, "n_flipped_labels": c.n_flipped_labels,
            **({"val_fraction": c.val_fraction, "n_val": c.n_val} if c.val_fraction else {}),
        }

    def describe(self, params: dict[str, Any]) -> str:
        """E.g. ``ResNet C=4 (398 params), seed 0, handout protocol, 4000 updates, lr 0.1, batch size 128``."""
        unit = "epochs" if params.get("protocol") == "epochs" else "updates"
        text = (f"ResNet C={params['C']} ({params['param_count']} params), seed {params['seed']}, "
                f"{params['protocol']} protocol, {params['budget']} {unit}, lr {params['lr']}, "
                f"batch size {params['batch_size']}")
        if params.get("label_noise"):
            text += f", label noise {params['label_noise']}"
        return text

    def trainer(self, config: TrainConfig, seeds: Sequence[int], arrays: Any = None) -> Any:
        # Here, not at the top: they import torch (~1.5 s), which the CLI's spec check must not pay.
        from models.resnet.data import load_for_config
        from models.resnet.trainer import Trainer

        return Trainer(config, seeds, data=load_for_config(config, arrays))

    def export(self, trainer: Any, seed: int) -> Any:
        """The member's plain ``ResNet(C)`` state dict (loads with ``ResNet(C).load_state_dict``)."""
        return trainer.members()[trainer.seeds.index(seed)].state_dict()


RESNET = ResNetFamily()
__all__ = ["RESNET", "ResNetFamily", "ResNetSpec"]
