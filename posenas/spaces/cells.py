"""Cells and mixed operations for the cell-based searches (PNFS; AutoPose and 3M-Pose build
on the same pieces).

- :data:`CELL_OPS`: the candidate operations by name (zero, skip, 3x3 depthwise-separable
  conv, 3x3 dilated conv of rate 2, 3x3 average and max pooling; 1x1, 3x3 and 5x5
  conv-BN-ReLU; and 3M-Pose's residual block, conv-sigmoid gate, zoomed conv and
  squeeze-and-excite), each keeping the channels and the resolution.
- :class:`MixedOp`: one edge; its output is the weighted sum of its ops for weights the
  caller passes in (softmax(alpha) in PNFS, Gumbel-softmax samples in AutoPose, a
  sparse top-k in 3M-Pose), so the weighting lives outside the edge. Ops whose weight
  is a known zero (``active``) are not run. A derived edge (no weights) sums its built
  ops (one in PNFS and AutoPose, one or more in 3M-Pose).
- :class:`Cell`: PNFS Eq. 1 (AutoPose's individual cell, Eq. 2) — H hidden nodes, node j
  the sum over every earlier node i (node 0 is the input) of the mixed op on edge (i, j);
  the hidden nodes concatenated and reduced back to the cell's channels by a 1x1
  conv-BN-ReLU.
- :class:`ScaleInput`: PNFS Eq. 2 — a cell's input node, the beta-weighted sum of the
  three neighbouring scales of the previous layer: the finer one down-sampled by a
  stride-2 3x3 conv-BN-ReLU (doubling channels), the same scale as it is, the coarser
  one up-sampled bilinearly and halved in channels by a 1x1 conv. Where a neighbour does
  not exist (the finest and coarsest scales, the first layer) the same-scale input is
  used in its place, as the paper's footnote says ("we copy one of candidate inputs").
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from posenas.models.blocks import BasicBlock, ConvBNAct, SqueezeExcite


class Zero(nn.Module):
    """The "zero" op: no connection (its output is all zeros)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


class SepConv(nn.Sequential):
    """ReLU -> 3x3 depthwise conv (dilation ``dilation``) -> 1x1 conv -> BN (DARTS's op form)."""

    def __init__(self, channels: int, dilation: int = 1):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )


class ConvGate(nn.Module):
    """3M-Pose's "Conv-Sigmoid * Identity" (CSI): ``x * sigmoid(conv1x1(x))``, a per-pixel,
    per-channel gate (the thesis gives no kernel size; 1x1 is our choice)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv(x))


class ZoomConv(nn.Module):
    """FasterSeg's zoomed convolution (3M-Pose's "Zoom Convolution (3x3)"): bilinear down-sampling
    by 2, a 3x3 conv-BN-ReLU, bilinear up-sampling back to the input's size."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = ConvBNAct(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
        return F.interpolate(self.conv(y), size=x.shape[-2:], mode="bilinear", align_corners=False)


#: Candidate operations by name: ``factory(channels) -> module`` keeping shape. PNFS uses the
#: first six; AutoPose's set is its plain convolutions (conv-BN-ReLU), the pools and skip.
CELL_OPS: dict[str, Callable[[int], nn.Module]] = {
    "zero": lambda c: Zero(),
    "skip": lambda c: nn.Identity(),
    "sep_conv_3x3": lambda c: SepConv(c),
    "dil_conv_3x3": lambda c: SepConv(c, dilation=2),
    "avg_pool_3x3": lambda c: nn.AvgPool2d(3, 1, 1, count_include_pad=False),
    "max_pool_3x3": lambda c: nn.MaxPool2d(3, 1, 1),
    "conv_1x1": lambda c: ConvBNAct(c, c, 1),
    "conv_3x3": lambda c: ConvBNAct(c, c, 3),
    "conv_5x5": lambda c: ConvBNAct(c, c, 5),
    "residual_3x3": lambda c: BasicBlock(c, c),  # ResNet basic block of two 3x3 convs
    "csi": lambda c: ConvGate(c),
    "zoom_conv_3x3": lambda c: ZoomConv(c),
    "se": lambda c: SqueezeExcite(c, reduction=4, divisor=1),  # x scaled by its channel gate
}


def edges(hidden: int) -> list[tuple[int, int]]:
    """The (i, j) edges of a cell with ``hidden`` nodes, j = 1..H, i = 0..j-1: H(H+1)/2 of them."""
    return [(i, j) for j in range(1, hidden + 1) for i in range(j)]


class MixedOp(nn.Module):
    """One edge: ``sum_o weights[o] * o(x)`` over the ops named in ``ops``. With ``keep`` only
    those op indices are built (a pruned edge); the others count as weight 0."""

    def __init__(self, channels: int, ops: Sequence[str], keep: Sequence[int] | None = None):
        super().__init__()
        self.names = tuple(ops)
        kept = range(len(self.names)) if keep is None else sorted(keep)
        self.ops = nn.ModuleDict({str(k): CELL_OPS[self.names[k]](channels) for k in kept})

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None,
                active: Sequence[int] | None = None) -> torch.Tensor:
        """``active``: indices of the ops to run (others count as weight 0); None runs every
        built op. "zero" is never run (its term is 0). ``weights`` None: a derived edge, the sum
        of its built ops applied as they are (no weighting)."""
        if weights is None:
            out = None
            for k, op in self.ops.items():
                if self.names[int(k)] != "zero":
                    out = op(x) if out is None else out + op(x)
            return torch.zeros_like(x) if out is None else out
        out = None
        for k in (map(int, self.ops.keys()) if active is None else active):
            if self.names[k] == "zero":
                continue
            y = weights[k] * self.ops[str(k)](x)
            out = y if out is None else out + y
        return torch.zeros_like(x) if out is None else out


class Cell(nn.Module):
    """PNFS Eq. 1: a DAG of ``hidden`` nodes over mixed ops, concatenated and reduced by 1x1.
    ``keep``: per edge, the op indices to build (None: all)."""

    def __init__(self, channels: int, hidden: int, ops: Sequence[str],
                 keep: Sequence[Sequence[int]] | None = None):
        super().__init__()
        self.channels, self.hidden = channels, hidden
        self.edges = edges(hidden)
        self.mixed = nn.ModuleList(MixedOp(channels, ops, None if keep is None else keep[e])
                                   for e in range(len(self.edges)))
        self.reduce = ConvBNAct(hidden * channels, channels, 1)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None,
                active: Sequence[Sequence[int] | None] | None = None) -> torch.Tensor:
        """``weights``: (edges x ops) op weights, None for a derived cell (one op per edge);
        ``active``: per edge, the ops to run (None: all built)."""
        nodes = [x]
        e = 0
        for j in range(1, self.hidden + 1):
            total = None
            for i in range(j):
                y = self.mixed[e](nodes[i], None if weights is None else weights[e],
                                  None if active is None else active[e])
                total = y if total is None else total + y
                e += 1
            nodes.append(total)
        return self.reduce(torch.cat(nodes[1:], dim=1))


class ScaleInput(nn.Module):
    """PNFS Eq. 2: the ``beta``-weighted sum of the finer (down-sampled), same and coarser
    (up-sampled) outputs of the previous layer. A neighbour that does not exist is
    replaced by a copy of one that does (the same scale first, then the finer, then the
    coarser), so beta always has three entries."""

    def __init__(self, channels: int, has_finer: bool, has_same: bool, has_coarser: bool,
                 keep: Sequence[int] | None = None):
        """``keep``: the candidates (0 finer, 1 same, 2 coarser) a pruned cell still uses."""
        super().__init__()
        if not (has_finer or has_same or has_coarser):
            raise ValueError("a cell needs at least one input")
        has = (has_finer, has_same, has_coarser)
        fallback = next(k for k in (1, 0, 2) if has[k])
        self.source = tuple(k if has[k] else fallback for k in range(3))  # which input fills each beta slot
        used = {self.source[k] for k in (range(3) if keep is None else keep)}
        self.down = ConvBNAct(channels // 2, channels, 3, 2) if 0 in used else None
        self.up = nn.Conv2d(channels * 2, channels, 1, bias=False) if 2 in used else None

    def forward(self, finer: torch.Tensor | None, same: torch.Tensor | None, coarser: torch.Tensor | None,
                beta: torch.Tensor | None, size: tuple[int, int], active: Sequence[int] | None = None) -> torch.Tensor:
        """``size``: this scale's (H, W); ``active``: the candidates (0 finer, 1 same, 2 coarser)
        to use, None for all; ``beta`` None: their plain sum (a derived 3M-Pose cell)."""
        cache: dict[int, torch.Tensor] = {}

        def candidate(k: int) -> torch.Tensor:
            if k not in cache:
                if k == 0:
                    cache[k] = self.down(finer)
                elif k == 1:
                    cache[k] = same
                else:
                    cache[k] = self.up(F.interpolate(coarser, size=size, mode="bilinear", align_corners=False))
            return cache[k]

        out = None
        for k in (range(3) if active is None else active):
            y = candidate(self.source[k]) if beta is None else beta[k] * candidate(self.source[k])
            out = y if out is None else out + y
        if out is None:
            raise ValueError("no active input")
        return out
