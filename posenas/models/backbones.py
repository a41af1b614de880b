"""Feature extractors for the hand-crafted baselines: ResNet-18/50 and MobileNetV2, with a width multiplier.

Each backbone maps ``(N, 3, H, W)`` to its last feature map at stride 32,
``(N, out_channels, H/32, W/32)`` (sizes rounded up by the strided convs), and has the
attributes ``out_channels`` and ``stride``. No classifier: the ResNets stop after the
last stage (no pooling, no fc), MobileNetV2 after its final 1x1 conv to 1280 channels
(the "features" part of the classification network).

Written from the papers (He et al. 2016; Sandler et al. 2018); weights start from the
torchvision-style init (:func:`~posenas.models.blocks.init_backbone_weights`); no
pretrained weights exist here.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, Sequence

import torch
from torch import nn

from posenas.models.blocks import (AttentionFactory, BasicBlock, Bottleneck, ConvBNAct, InvertedResidual,
                                   init_backbone_weights, make_divisible)


def scale_width(channels: int, width_mult: float) -> int:
    """ResNet width scaling: ``channels * width_mult`` rounded half up, at least 1."""
    return max(1, int(math.floor(channels * width_mult + 0.5)))


def _per_stage(value, stages: int, name: str) -> list:
    """Broadcast a scalar to ``stages`` entries, or check a sequence has ``stages`` entries."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != stages:
            raise ValueError(f"{name}: expected {stages} entries, got {len(value)}")
        return list(value)
    return [value] * stages


class ResNet(nn.Module):
    """A ResNet trunk: 7x7 stride-2 stem conv + 3x3 stride-2 max-pool, then stages of
    residual blocks (stride 1 for the first stage, 2 after).

    ``widths`` are the stage output widths; ``kernels``, ``groups``, ``expansion`` and
    ``attention`` may be one value for all stages or one per stage (``expansion`` only
    matters for bottlenecks: middle width = output width // expansion).
    """

    def __init__(self, block: str, depths: Sequence[int], widths: Sequence[int], stem_width: int = 64,
                 expansion: float | Sequence[float] = 4, kernels: int | Sequence[int] = 3,
                 groups: int | Sequence[int] = 1,
                 attention: AttentionFactory | None | Sequence[AttentionFactory | None] = None,
                 act: str = "relu"):
        super().__init__()
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"unknown ResNet block {block!r}; allowed: basic, bottleneck")
        if len(depths) != len(widths):
            raise ValueError(f"depths has {len(depths)} entries but widths has {len(widths)}")
        n = len(depths)
        expansions = _per_stage(expansion, n, "expansion")
        kernels = _per_stage(kernels, n, "kernels")
        groups = _per_stage(groups, n, "groups")
        attention = attention if isinstance(attention, Sequence) else [attention] * n
        if len(attention) != n:
            raise ValueError(f"attention: expected {n} entries, got {len(attention)}")

        self.stem = nn.Sequential(OrderedDict([
            ("conv", ConvBNAct(3, stem_width, 7, 2, act=act)),
            ("pool", nn.MaxPool2d(3, 2, 1)),
        ]))
        stages, in_ch = [], stem_width
        for i in range(n):
            blocks = []
            for j in range(depths[i]):
                stride = 2 if (i > 0 and j == 0) else 1
                if block == "basic":
                    blocks.append(BasicBlock(in_ch, widths[i], stride, kernels[i], groups[i], act, attention[i]))
                else:
                    blocks.append(Bottleneck(in_ch, widths[i], stride, kernels[i], groups[i], expansions[i],
                                             act=act, attention=attention[i]))
                in_ch = widths[i]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = tuple(widths)
        self.out_channels = in_ch
        self.stride = 4 * 2 ** (n - 1)
        init_backbone_weights(self)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage (strides 4, 8, 16, 32 for the four-stage ResNets)."""
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x


def resnet18(width_mult: float = 1.0) -> ResNet:
    """ResNet-18 trunk: basic blocks, depths 2/2/2/2, widths 64/128/256/512 (x ``width_mult``)."""
    widths = [scale_width(c, width_mult) for c in (64, 128, 256, 512)]
    return ResNet("basic", (2, 2, 2, 2), widths, stem_width=scale_width(64, width_mult))


def resnet50(width_mult: float = 1.0) -> ResNet:
    """ResNet-50 trunk: bottlenecks, depths 3/4/6/3, middle widths 64/128/256/512 (x ``width_mult``),
    output widths 4x the middle widths (256/512/1024/2048 at width 1)."""
    widths = [4 * scale_width(c, width_mult) for c in (64, 128, 256, 512)]
    return ResNet("bottleneck", (3, 4, 6, 3), widths, stem_width=scale_width(64, width_mult), expansion=4)


#: MobileNetV2 body (Sandler et al. 2018, Table 2): (expansion t, channels c, repeats n, first stride s).
MOBILENETV2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(nn.Module):
    """MobileNetV2 features: 3x3 stride-2 conv to 32, the inverted-residual body, and a final 1x1
    conv to 1280 channels (ReLU6 throughout).

    Widths scale by ``width_mult`` and round to multiples of ``round_nearest`` (8), as in
    the paper's reference code; the final conv keeps 1280 channels for ``width_mult <= 1``
    and scales above.
    """

    def __init__(self, width_mult: float = 1.0, settings: Sequence[tuple[int, int, int, int]] = MOBILENETV2_SETTINGS,
                 stem_width: int = 32, last_width: int = 1280, round_nearest: int = 8, act: str = "relu6"):
        super().__init__()
        in_ch = make_divisible(stem_width * width_mult, round_nearest)
        last = make_divisible(last_width * max(1.0, width_mult), round_nearest)
        self.stem = ConvBNAct(3, in_ch, 3, 2, act=act)
        blocks = []
        for t, c, n, s in settings:
            out_ch = make_divisible(c * width_mult, round_nearest)
            for j in range(n):
                blocks.append(InvertedResidual(in_ch, out_ch, s if j == 0 else 1, expansion=t, act=act))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.last = ConvBNAct(in_ch, last, 1, act=act)
        self.out_channels = last
        self.stride = 2 * math.prod(s for _, _, _, s in settings)
        init_backbone_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.blocks(self.stem(x)))


def mobilenetv2(width_mult: float = 1.0) -> MobileNetV2:
    return MobileNetV2(width_mult)


#: Backbone names -> constructors ``(width_mult) -> nn.Module`` with ``out_channels`` and ``stride``.
BACKBONES: dict[str, Callable[[float], nn.Module]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenetv2": mobilenetv2,
}


def build_backbone(name: str, width_mult: float = 1.0) -> nn.Module:
    try:
        factory = BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; allowed: {', '.join(BACKBONES)}") from None
    return factory(width_mult)
