"""The typed config of a ViPNAS search run (YAML on disk, see configs/vipnas/); its own module
because the candidate evaluator (:mod:`posenas.search.candidates`) reads it too."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from posenas.data.transforms import AugmentConfig
from posenas.engine.config import DataConfig, OptimConfig, TrainConfig, TrainingSections
from posenas.errors import PosenasError
from posenas.spaces.vipnas import SPACES, Choices, parse_choices

STRATEGIES = ("random", "evolution")


@dataclass(frozen=True)
class SupernetConfig:
    """The supernet: a ViPNAS space, optionally restricted to subsets of its choice sets."""

    space: str = "vipnas-resnet"
    choices: dict[str, Any] | None = None  # {"stem": {...}, "stages": [{...}, ...], "head": {...}}; missing = full set
    random_subnets: int = 2  # N of the sandwich rule (largest + smallest + N random per step)
    distill: bool = True  # in-place distillation from the largest sub-net

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise PosenasError(f"config.supernet.space: unknown space {self.space!r}; allowed: {', '.join(SPACES)}")
        if self.random_subnets < 0:
            raise PosenasError(f"config.supernet.random_subnets: must be >= 0, got {self.random_subnets}")
        self.parsed_choices()  # validate now

    def parsed_choices(self) -> Choices:
        return parse_choices(SPACES[self.space], self.choices, "config.supernet.choices")


@dataclass(frozen=True)
class SearchConfig:
    """Constrained search over the trained supernet; each strategy gets ``candidates`` evaluations."""

    strategies: tuple[str, ...] = STRATEGIES
    candidates: int = 20  # evaluated sub-nets per strategy (the paper samples 500 on COCO)
    max_gmacs: float | None = None  # budget: GMACs at data.input_size
    max_latency_ms: float | None = None  # budget: measured median batch-1 latency on this device
    latency_threads: int = 1
    latency_runs: int = 10
    calib_batches: int = 8  # training batches for BN re-calibration of each candidate
    val_max_images: int | None = 200  # evaluate candidates on the first N val images (None: all)
    flip_test: bool = False
    population: int = 8  # evolution: population size (the first generation is random)
    parents: int = 4  # evolution: the best this many breed the next generation
    mutate_prob: float = 0.25  # evolution: per-stage resampling probability
    seed: int = 0

    def __post_init__(self) -> None:
        for s in self.strategies:
            if s not in STRATEGIES:
                raise PosenasError(f"config.search.strategies: unknown strategy {s!r}; allowed: {', '.join(STRATEGIES)}")
        if not self.strategies:
            raise PosenasError("config.search.strategies: must name at least one strategy")
        for name in ("candidates", "calib_batches", "population", "parents", "latency_runs", "latency_threads"):
            if getattr(self, name) < 1:
                raise PosenasError(f"config.search.{name}: must be >= 1, got {getattr(self, name)}")
        if self.parents > self.population:
            raise PosenasError(f"config.search.parents: must be <= population ({self.population}), got {self.parents}")
        for name in ("max_gmacs", "max_latency_ms"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise PosenasError(f"config.search.{name}: must be > 0 (or null for no budget), got {value}")
        if not 0 <= self.mutate_prob <= 1:
            raise PosenasError(f"config.search.mutate_prob: must be in [0, 1], got {self.mutate_prob}")


@dataclass(frozen=True)
class SearchExperimentConfig(TrainingSections):
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
