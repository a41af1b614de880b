"""One-shot supernet training with the sandwich rule and in-place distillation
(Yu & Huang, US-Nets / BigNAS; ViPNAS section 3.4.1).

Every optimiser step runs the largest sub-net, the smallest and ``num_random`` random
ones on the same batch and accumulates their gradients. The largest learns from the
ground truth only; every other sub-net from the ground truth and the largest's detached
heatmaps, with equal weights (both terms are the target-weighted heatmap MSE). The
sub-nets of a step come from ``(seed, step)`` alone, so every rank of a ``torchrun``
samples the same ones; gradients are then all-reduced by hand (parts of the supernet
that the step's sub-nets leave unused get zeros on every rank alike).
"""

from __future__ import annotations

import random

import torch
from torch import nn

from posenas.engine.distributed import World, average_gradients
from posenas.engine.precision import supernet_family
from posenas.engine.task import heatmap_loss
from posenas.engine.train import Objective
from posenas.spaces.supernets import supernet_fields
from posenas.spaces.vipnas import SPACES, Choices, ViPNASArch, ViPNASSupernet, largest_arch, sample_arch, smallest_arch


class SandwichObjective(Objective):
    ddp = False

    def __init__(self, space_name: str, choices: Choices, num_random: int = 2, distill: bool = True, seed: int = 0):
        super().__init__(largest_arch(space_name, choices))
        self.space_name, self.choices = space_name, choices
        self.num_random, self.distill, self.seed = num_random, distill, seed
        self.smallest = smallest_arch(space_name, choices)

    def build(self, num_joints: int) -> nn.Module:
        return ViPNASSupernet(self.space_name, self.choices, num_joints)

    def family(self) -> str:
        return supernet_family(self.space_name)

    def checkpoint_fields(self) -> dict:
        return {"arch": self.arch.to_json(),
                **supernet_fields(self.space_name, self.choices.to_json(SPACES[self.space_name].group_key))}

    def subnets(self, step: int) -> list[ViPNASArch]:
        """Largest, smallest, then ``num_random`` random sub-nets: a function of (seed, step) only."""
        rng = random.Random(f"sandwich:{self.seed}:{step}")
        return [self.arch, self.smallest] + [sample_arch(self.space_name, self.choices, rng)
                                             for _ in range(self.num_random)]

    def step(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int, world: World) -> torch.Tensor:
        images, target, weight = batch["image"], batch["target"], batch["target_weight"]
        total = torch.zeros((), device=images.device)
        teacher = None
        for i, arch in enumerate(self.subnets(step)):
            model.set_active(arch)
            out = self.forward(model, images)
            loss = heatmap_loss(out, target, weight)
            if i == 0:
                teacher = out.detach()
            elif self.distill:
                loss = loss + heatmap_loss(out, teacher, weight)
            if world.any_true(not bool(torch.isfinite(loss))):
                return loss.detach()  # the loop stops before the optimiser step
            loss.backward()
            total += loss.detach()
        average_gradients(model.parameters(), world)
        model.set_active(self.arch)
        return total

    def before_validation(self, model: nn.Module) -> None:
        model.set_active(self.arch)
