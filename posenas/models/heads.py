"""Heatmap heads.

:class:`DeconvHead` is the SimpleBaseline head (Xiao et al. 2018): N stride-2 transposed
convs (no bias) each followed by BN + ReLU, then a 1x1 conv (with bias) to one heatmap
per joint. Each transposed conv doubles H and W, so three of them take a stride-32
feature map to stride-4 heatmaps. Widths, kernels and groups are per layer, so the
ViPNAS heads (grouped deconvs) and slimmer heads use the same class. :class:`SlimHead` is
EfficientPose's head (slim upsampling layers, optional spatial information correction).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from posenas.models.blocks import ConvBNAct, DeconvBNAct


def init_head(layers: nn.Module, final: nn.Conv2d) -> None:
    """SimpleBaseline's head init: every (transposed) conv of ``layers`` and the ``final`` conv
    normal(std=0.001), BN weight 1 and bias 0, the final bias 0."""
    for m in layers.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, std=0.001)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.normal_(final.weight, std=0.001)
    nn.init.zeros_(final.bias)


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
        init_head(self.deconvs, self.final)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.deconvs(x))


#: How a slim head doubles the resolution (EfficientPose Table 8): a plain transposed conv,
#: MobileNetV1 style (depthwise transposed conv + pointwise conv) or MobileNetV2 style
#: (1x1 expand x6 -> depthwise transposed conv -> linear 1x1 projection).
UPSAMPLE_STYLES = ("deconv", "mbv1", "mbv2")
MBV2_UPSAMPLE_EXPANSION = 6


def upsample_block(style: str, in_channels: int, out_channels: int, kernel: int = 4) -> nn.Module:
    """One stride-2 upsampling layer of a slim head (see :data:`UPSAMPLE_STYLES`)."""
    if style == "deconv":
        return DeconvBNAct(in_channels, out_channels, kernel)
    if style == "mbv1":
        return nn.Sequential(DeconvBNAct(in_channels, in_channels, kernel, groups=in_channels),
                             ConvBNAct(in_channels, out_channels, 1))
    if style == "mbv2":
        hidden = in_channels * MBV2_UPSAMPLE_EXPANSION
        return nn.Sequential(ConvBNAct(in_channels, hidden, 1, act="relu6"),
                             DeconvBNAct(hidden, hidden, kernel, groups=hidden, act="relu6"),
                             ConvBNAct(hidden, out_channels, 1, act=None))
    raise ValueError(f"upsample style {style!r}; allowed: {', '.join(UPSAMPLE_STYLES)}")


class SpatialInfoCorrection(nn.Module):
    """EfficientPose's SIC: a 3x3 depthwise conv + ReLU after the transposed convs, which
    smooths their checkerboard artefacts. Initialised as the identity (a centred Dirac
    kernel, zero bias), so at the start the head behaves as without SIC and learns the
    correction from there (the paper does not give its init)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.act = nn.ReLU(inplace=True)
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.dirac_(self.conv.weight, groups=self.conv.groups)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class SlimHead(nn.Module):
    """EfficientPose's head: stride-2 upsampling layers of ``widths`` (``style``), optionally
    SIC, then a 1x1 conv to one heatmap per joint. Init as the SimpleBaseline head:
    convs and transposed convs normal(std=0.001), BN weight 1 and bias 0; SIC as identity."""

    def __init__(self, in_channels: int, num_joints: int, widths: Sequence[int] = (64, 32), style: str = "deconv",
                 sic: bool = True):
        super().__init__()
        layers, ch = [], in_channels
        for width in widths:
            layers.append(upsample_block(style, ch, width))
            ch = width
        self.upsamples = nn.Sequential(*layers)
        self.sic = SpatialInfoCorrection(ch) if sic else nn.Identity()
        self.final = nn.Conv2d(ch, num_joints, 1)
        self.in_channels, self.num_joints = in_channels, num_joints
        self.upsample = 2 ** len(widths)
        init_head(self.upsamples, self.final)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.sic(self.upsamples(x)))
