"""First-order differentiable architecture search through the training engine (DARTS, first
order), shared by EfficientPose's cost-aware search and PNFS's "DARTS" strategy.

The training images are split by image, with a seeded permutation, into a weight part and
an architecture part. The engine iterates the weight part; every step (after
``warmup_epochs`` weight-only epochs) first takes one step of the architecture parameters
on a batch of the architecture part with the weights fixed, then the weight step with the
architecture parameters fixed. Under torchrun both gradients are averaged over the ranks
by hand, so the architecture parameters stay identical on every rank. Architecture
batches are a function of (seed, step, rank), so a resumed run repeats them exactly.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

from posenas.codecs.heatmap import HeatmapCodec
from posenas.data.records import PoseDataset
from posenas.engine.config import ExperimentConfig
from posenas.engine.distributed import World, average_gradients
from posenas.engine.train import Objective, run_length
from posenas.errors import PosenasError


def split_images(dataset: PoseDataset, fraction: float, seed: int) -> tuple[PoseDataset, PoseDataset]:
    """(weight part, architecture part): a seeded split by image."""
    order = list(range(len(dataset.images)))
    random.Random(f"dnas-split:{seed}").shuffle(order)
    cut = max(1, round(fraction * len(order)))
    if cut >= len(order):
        raise PosenasError(f"{dataset.source}: {len(order)} training images are too few to hold out "
                           f"{fraction:.0%} for the architecture steps")
    arch = sorted(order[:cut])
    weights = sorted(order[cut:])
    return (replace(dataset, images=[dataset.images[i] for i in weights]),
            replace(dataset, images=[dataset.images[i] for i in arch]))


class FirstOrderObjective(Objective, ABC):
    """Alternating architecture / weight steps. Subclasses build the model and say which of
    its parameters are architecture parameters (:meth:`arch_parameters`), and may add a
    term to the architecture loss (:meth:`arch_penalty`)."""

    ddp = False

    def __init__(self, arch_fraction: float, warmup_epochs: float, arch_lr: float, arch_weight_decay: float,
                 seed: int, betas: tuple[float, float] = (0.5, 0.999)):
        super().__init__(None)
        self.arch_fraction, self.warmup_epochs, self.seed = arch_fraction, warmup_epochs, seed
        self.arch_lr, self.arch_weight_decay, self.betas = arch_lr, arch_weight_decay, betas
        self.model: nn.Module | None = None
        self.last_arch_loss: float | None = None

    # --- what subclasses provide
    @abstractmethod
    def arch_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The model's architecture parameters (updated by the architecture steps only)."""

    def arch_penalty(self, model: nn.Module) -> torch.Tensor | float:
        return 0.0

    # --- the engine's hooks
    def weight_split(self, train_set: PoseDataset) -> PoseDataset:
        weights, self.arch_set = split_images(train_set, self.arch_fraction, self.seed)
        return weights

    def prepare(self, model: nn.Module, codec: HeatmapCodec, cfg: ExperimentConfig, world: World,
                steps_per_epoch: int) -> None:
        self.model = model
        self.arch_data = self.task.train_data(self.arch_set, codec, cfg, self.seed)  # person crops or whole images
        if len(self.arch_data) == 0:
            raise PosenasError(f"{self.arch_set.source}: the architecture split holds no labelled "
                               f"{'image' if self.task.name == 'bottomup' else 'person'}")
        self.batch_size = cfg.data.batch_size
        self.arch_start = round(self.warmup_epochs * steps_per_epoch)
        total = run_length(cfg, steps_per_epoch)
        if self.arch_start >= total:  # the search would silently return its initial (uniform) architecture
            raise PosenasError(
                f"config.search.warmup_epochs: {self.warmup_epochs} weight-only epochs are {self.arch_start} steps "
                f"here ({steps_per_epoch} per epoch) but the run has {total}, so no architecture step would be "
                f"taken; lower it (fractions of an epoch are allowed)")
        self.arch_opt = torch.optim.Adam(self.arch_parameters(model), lr=self.arch_lr, betas=self.betas,
                                         weight_decay=self.arch_weight_decay)

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters(model)}
        return [p for p in model.parameters() if id(p) not in arch]

    def state_dict(self) -> dict[str, Any]:
        return {"arch_optimizer": self.arch_opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "arch_optimizer" in state:
            self.arch_opt.load_state_dict(state["arch_optimizer"])

    def arch_batch(self, step: int, world: World) -> dict[str, torch.Tensor]:
        """The architecture batch of a step: a function of (seed, step, rank) only (exact resume)."""
        g = torch.Generator().manual_seed(random.Random(f"dnas-arch:{self.seed}:{step}:{world.rank}").getrandbits(62))
        picks = torch.randint(len(self.arch_data), (self.batch_size,), generator=g).tolist()
        self.arch_data.set_epoch(step)
        batch = default_collate([self.arch_data[i] for i in picks])  # as the training loop's batches
        return {k: v.to(world.device) for k, v in batch.items()}

    def arch_step(self, model: nn.Module, step: int, world: World) -> torch.Tensor | None:
        """One step of the architecture parameters; returns a non-finite loss to stop the run."""
        batch = self.arch_batch(step, world)
        drop, model.drop_prob = getattr(model, "drop_prob", 0.0), 0.0  # no drop-path on architecture steps
        try:
            loss = self.loss(model, self.forward(model, batch["image"]), batch)
            loss = loss + self.arch_penalty(model)
        finally:  # an error in this forward must not leave the weight steps without their drop-path
            model.drop_prob = drop
        if world.any_true(not bool(torch.isfinite(loss))):
            return loss.detach()
        params = self.arch_parameters(model)
        # a parameter this forward did not use (AutoPose: every branch off, so no individual
        # cell ran) gets no gradient and no Adam step
        for p, grad in zip(params, torch.autograd.grad(loss, params, allow_unused=True)):
            p.grad = grad
        average_gradients(params, world)
        self.arch_opt.step()
        self.arch_opt.zero_grad(set_to_none=True)
        self.last_arch_loss = float(loss.detach())
        return None

    def step(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int, world: World) -> torch.Tensor:
        if step >= self.arch_start:
            stop = self.arch_step(model, step, world)
            if stop is not None:
                return stop  # the loop stops before any optimiser step
        params = self.arch_parameters(model)
        for p in params:
            p.requires_grad_(False)
        try:
            loss = self.loss(model, self.forward(model, batch["image"]), batch)
            if not world.any_true(not bool(torch.isfinite(loss))):
                loss.backward()
        finally:
            for p in params:
                p.requires_grad_(True)
        average_gradients(self.parameters(model), world)
        return loss.detach()

    def log_fields(self, model: nn.Module) -> dict[str, Any]:
        return {"arch_loss": self.last_arch_loss}
