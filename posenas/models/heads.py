"""Heatmap heads.

:class:`DeconvHead` is the SimpleBaseline head (Xiao et al. 2018): N stride-2 transposed
convs (no bias) each followed by BN + ReLU, then a 1x1 conv (with bias) to one heatmap
per joint. Each transposed conv doubles H and W, so three of them take a stride-32
feature map to stride-4 heatmaps. Widths, kernels and groups are per layer, so the
ViPNAS heads (grouped deconvs) and slimmer heads use the same class.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from posenas.models.blocks import DeconvBNAct


class DeconvHead(nn.Module):
    """``[ConvTranspose2d(k, stride 2) -> BN -> ReLU] x len(widths) -> Conv2d(final_kernel) to num_joints``.

    ``kernels`` (each 2, 3 or 4) and ``groups`` are one per transposed conv, or a single
    int for all. Init as SimpleBaseline: transposed convs and the final conv
    normal(std=0.001), final bias 0, BN weight 1 and bias 0.
    """

    def __init__(self, in_channels: int, num_joints: int, widths: Sequence[int] = (256, 256, 256),
                 kernels: int | Sequence[int] = 4, groups: int | Sequence[int] = 1, final_kernel: int = 1):
        super().__init__()
        n = len(widths)
        kernels = [kernels] * n if isinstance(kernels, int) else list(kernels)
        groups = [groups] * n if isinstance(groups, int) else list(groups)
        if len(kernels) != n or len(groups) != n:
            raise ValueError(f"head: {n} widths but {len(kernels)} kernels and {len(groups)} groups")
        layers, ch = [], in_channels
        for width, kernel, g in zip(widths, kernels, groups):
            layers.append(DeconvBNAct(ch, width, kernel, groups=g))
            ch = width
        self.deconvs = nn.Sequential(*layers)
        self.final = nn.Conv2d(ch, num_joints, final_kernel, padding=(final_kernel - 1) // 2)
        self.in_channels, self.num_joints = in_channels, num_joints
        self.upsample = 2 ** n
        self.init_weights()

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.final.weight, std=0.001)
        nn.init.zeros_(self.final.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.deconvs(x))
