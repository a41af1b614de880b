"""The typed config tree of a training run (YAML on disk, see configs/)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from posenas.data.bottomup import BottomUpAugment
from posenas.data.transforms import AugmentConfig
from posenas.errors import PosenasError


@dataclass(frozen=True)
class ModelConfig:
    """The model: ``arch`` (inline architecture JSON) or ``arch_file`` if given, else the named model."""

    name: str = "simplebaseline-small"
    arch: dict[str, Any] | None = None
    arch_file: str | None = None

    def __post_init__(self) -> None:
        if self.arch is not None and self.arch_file is not None:
            raise PosenasError("config.model: give one of 'arch' and 'arch_file', not both")


@dataclass(frozen=True)
class DataConfig:
    root: str = "data/synthetic/coco"
    train_split: str = "train"
    val_split: str = "val"
    input_size: tuple[int, ...] = (128, 96)  # (height, width)
    sigma: float = 2.0  # Gaussian sigma at heatmap scale
    decode: Literal["quarter", "dark"] = "quarter"  # sub-pixel refinement of the heatmap argmax (codecs/heatmap.py)
    batch_size: int = 32  # per process
    workers: int = 2  # DataLoader worker processes (0: load in the main process)
    val_max_images: int | None = None  # evaluate on the first N val images (None: all)

    def __post_init__(self) -> None:
        if len(self.input_size) != 2 or any(s % 4 or s < 32 for s in self.input_size):
            raise PosenasError(
                f"config.data.input_size: expected [height, width], each a multiple of 4 and >= 32, got {list(self.input_size)}"
            )
        if self.batch_size < 1:
            raise PosenasError(f"config.data.batch_size: must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise PosenasError(f"config.data.workers: must be >= 0, got {self.workers}")
        if self.val_max_images is not None and self.val_max_images < 1:
            raise PosenasError(f"config.data.val_max_images: must be >= 1 (or null for all), got {self.val_max_images}")
        if not self.sigma > 0:
            raise PosenasError(f"config.data.sigma: must be > 0, got {self.sigma}")


@dataclass(frozen=True)
class OptimConfig:
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD only
    schedule: Literal["cosine", "step"] = "cosine"
    warmup_steps: int = 100
    milestones: tuple[int, ...] = ()  # epochs at which the step schedule multiplies lr by gamma
    gamma: float = 0.1

    #: Above this a learning rate is a typo (1e39), not a schedule: no optimiser here trains with it.
    MAX_LR = 10.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and 0 < self.lr <= self.MAX_LR):
            raise PosenasError(f"config.optim.lr: must be a number in (0, {self.MAX_LR:g}], got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise PosenasError(f"config.optim.weight_decay: must be >= 0 and finite, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise PosenasError(f"config.optim.warmup_steps: must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.momentum < 1:
            raise PosenasError(f"config.optim.momentum: must be in [0, 1), got {self.momentum}")
        if not 0 < self.gamma <= 1:
            raise PosenasError(f"config.optim.gamma: must be in (0, 1] (the step schedule's lr factor), got {self.gamma}")
        if any(m < 0 for m in self.milestones):
            raise PosenasError(f"config.optim.milestones: epochs must be >= 0, got {list(self.milestones)}")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimiser steps (budgeted runs, tests)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    val_every: int = 1  # validate every N epochs (0: only at the end)
    flip_test: bool = True
    log_every: int = 10  # steps between metric lines
    checkpoint_every: int = 200  # steps between mid-epoch checkpoints (0: epoch ends only)
    init_from: str | None = None  # start from this checkpoint's weights (same arch, or a supernet to inherit from)
    # stop when a step's loss exceeds this many times the run's running level (the lowest median
    # of 50 step losses so far), as for a NaN loss; null: off (see engine/train.py _Divergence)
    divergence_factor: float | None = 1000.0
    # auto: bf16 autocast where the hardware has native bf16, else fp32 (engine/precision.py);
    # bf16 on hardware without it is emulated and ~25x slower
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: Literal["auto"] | bool = "auto"  # auto: as measured per model family (engine/precision.py)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise PosenasError(f"config.train.epochs: must be >= 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise PosenasError(f"config.train.max_steps: must be >= 1 (or null), got {self.max_steps}")
        for name in ("log_every",):
            if getattr(self, name) < 1:
                raise PosenasError(f"config.train.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("val_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise PosenasError(f"config.train.{name}: must be >= 0, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise PosenasError(f"config.train.threads: must be >= 1 (or null), got {self.threads}")
        if self.divergence_factor is not None and not (math.isfinite(self.divergence_factor)
                                                       and self.divergence_factor > 1):
            raise PosenasError(f"config.train.divergence_factor: must be > 1 and finite (or null: off), "
                               f"got {self.divergence_factor}")


@dataclass(frozen=True)
class BottomUpConfig:
    """What a bottom-up model's run uses (an arch whose ``bottom_up`` is true; top-down runs ignore it):
    HigherHRNet's COCO defaults — associative-embedding codec and decoder (codecs/associative.py), loss
    weights (heatmap MSE, pull, push) and whole-image augmentation (data/bottomup.py). ``config.augment``
    is the top-down crop augmentation and must stay at its defaults in a bottom-up run."""

    max_people: int = 30
    scale_aware_sigma: bool = False
    heatmap_weight: float = 1.0
    pull_weight: float = 1e-3
    push_weight: float = 1e-3
    detection_threshold: float = 0.1
    tag_threshold: float = 1.0
    nms_kernel: int = 5
    adjust: bool = True
    refine: bool = True
    augment: BottomUpAugment = field(default_factory=BottomUpAugment)

    def __post_init__(self) -> None:
        for name in ("heatmap_weight", "pull_weight", "push_weight"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise PosenasError(f"config.bottomup.{name}: must be >= 0 and finite, got {v}")
        if self.max_people < 1:
            raise PosenasError(f"config.bottomup.max_people: must be >= 1, got {self.max_people}")


@dataclass(frozen=True)
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    bottomup: BottomUpConfig = field(default_factory=BottomUpConfig)


class TrainingSections:
    """Mixin of the search experiment configs: they hold a run's training sections (data,
    augment, optim, train, and ``bottomup`` for a bottom-up search) beside their own, and
    train their supernet with them."""

    def training(self) -> ExperimentConfig:
        """The training part as a training config (the model comes from the search's objective)."""
        return ExperimentConfig(model=ModelConfig(), data=self.data, augment=self.augment, optim=self.optim,
                                train=self.train, bottomup=getattr(self, "bottomup", BottomUpConfig()))
