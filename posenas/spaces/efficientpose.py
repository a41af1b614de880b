"""EfficientPose (Zhang et al. 2020): an MBConv backbone chain searched position by position,
and a slim head with spatial information correction. ``../shared/papers/efficientpose.md``.

The space (Table 1). Stem: 3x3 stride-2 conv to 32 channels, then a separable 3x3
depthwise conv to 16 (``small``) or 24 (``large``) channels. Four NAS stages of
*positions*; each position holds one operation:

- ``kK_eE``: an MBConv (MobileNetV2 inverted residual, ReLU6) with kernel K in {3, 5, 7}
  and expansion E in {3, 6};
- ``skip``: the identity, allowed only where the position keeps width and stride (it is
  how the search shortens a stage).

The first position of a stage changes the width (and, in stages 1-3, halves the
resolution), so it cannot be skipped. Stage 4 keeps stride 1: the backbone has stride 16,
and two stride-2 upsampling layers give stride-4 heatmaps.

Architecture JSON (what ``posenas profile --arch`` and ``posenas train --arch`` read)::

    {"space": "efficientpose", "setting": "small",
     "blocks": ["k3_e6", "k7_e3", "skip", ...one per position: 28 in small, 34 in large],
     "head": {"widths": [64, 32], "sic": true, "upsample": "deconv"}}

``head`` may be left out (the paper's head: widths 64, 32, SIC, plain transposed convs);
``upsample`` is ``deconv``, ``mbv1`` or ``mbv2`` (Table 8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from posenas.errors import PosenasError
from posenas.models.blocks import ConvBNAct, InvertedResidual, init_backbone_weights
from posenas.models.heads import UPSAMPLE_STYLES, SlimHead
from posenas.models.simplebaseline import SimpleBaseline, check_num_joints
from posenas.spaces.archfields import check_list, check_object, check_str_choice, is_int

KERNELS = (3, 5, 7)
EXPANSIONS = (3, 6)
SKIP = "skip"
MBCONV_OPS = tuple(f"k{k}_e{e}" for k in KERNELS for e in EXPANSIONS)
OPS = MBCONV_OPS + (SKIP,)  # the order of the architecture parameters' columns
MAX_HEAD_WIDTH = 1024
ACT = "relu6"


@dataclass(frozen=True)
class Stage:
    width: int
    stride: int
    positions: int


@dataclass(frozen=True)
class Position:
    """One searchable slot of the chain, with the shapes its operation sees."""

    index: int
    stage: int  # 1-based, as in Table 1
    in_channels: int
    out_channels: int
    stride: int

    @property
    def can_skip(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels

    @property
    def ops(self) -> tuple[str, ...]:
        return OPS if self.can_skip else MBCONV_OPS

    def describe(self) -> str:
        return (f"position {self.index} (NAS stage {self.stage}: stride {self.stride}, "
                f"{self.in_channels} -> {self.out_channels} channels)")


@dataclass(frozen=True)
class Setting:
    stem_width: int  # the plain 3x3 stride-2 conv
    sep_width: int  # the separable depthwise conv's output
    stages: tuple[Stage, ...]

    @property
    def positions(self) -> tuple[Position, ...]:
        out, ch = [], self.sep_width
        for s, stage in enumerate(self.stages, start=1):
            for j in range(stage.positions):
                out.append(Position(len(out), s, ch, stage.width, stage.stride if j == 0 else 1))
                ch = stage.width
        return tuple(out)

    @property
    def out_channels(self) -> int:
        return self.stages[-1].width


#: Table 1 of the paper ([width, stride] x positions per NAS stage).
SETTINGS: dict[str, Setting] = {
    "small": Setting(32, 16, (Stage(24, 2, 4), Stage(32, 2, 6), Stage(64, 2, 10), Stage(96, 1, 8))),
    "large": Setting(32, 24, (Stage(32, 2, 6), Stage(64, 2, 8), Stage(96, 2, 10), Stage(160, 1, 10))),
}

_ARCH_KEYS = ("space", "setting", "blocks", "head")
_HEAD_KEYS = ("widths", "sic", "upsample")


def op_shape(op: str) -> tuple[int, int]:
    """``"k5_e3"`` -> (kernel 5, expansion 3)."""
    k, e = op.split("_")
    return int(k[1:]), int(e[1:])


@dataclass(frozen=True)
class HeadArch:
    widths: tuple[int, ...] = (64, 32)
    sic: bool = True
    upsample: str = "deconv"

    def to_json(self) -> dict:
        return {"widths": list(self.widths), "sic": self.sic, "upsample": self.upsample}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "HeadArch":
        data = check_object(data, where, _HEAD_KEYS)
        widths = check_list(data.get("widths", list(cls.widths)), f"{where}.widths", "2 integers", 2)
        for i, w in enumerate(widths):
            if not is_int(w) or not 1 <= w <= MAX_HEAD_WIDTH:
                raise PosenasError(f"{where}.widths[{i}]: expected an integer in [1, {MAX_HEAD_WIDTH}], got {w!r}")
        sic = data.get("sic", cls.sic)
        if not isinstance(sic, bool):
            raise PosenasError(f"{where}.sic: expected true or false, got {sic!r}")
        upsample = check_str_choice(data.get("upsample", cls.upsample), f"{where}.upsample", UPSAMPLE_STYLES)
        return cls(tuple(int(w) for w in widths), sic, upsample)


@dataclass(frozen=True)
class EfficientPoseArch:
    """One architecture of the space: a setting, one operation per position, the head."""

    setting: str
    blocks: tuple[str, ...]
    head: HeadArch = HeadArch()
    space: ClassVar[str] = "efficientpose"

    def __post_init__(self) -> None:
        EfficientPoseArch.from_json(self.to_json())  # direct construction is validated like JSON

    @property
    def definition(self) -> Setting:
        return SETTINGS[self.setting]

    def to_json(self) -> dict:
        return {"space": self.space, "setting": self.setting, "blocks": list(self.blocks),
                "head": self.head.to_json()}

    @classmethod
    def from_json(cls, data: Any, where: str = "arch") -> "EfficientPoseArch":
        data = check_object(data, where, _ARCH_KEYS, required=("space", "setting", "blocks"))
        if data["space"] != cls.space:
            raise PosenasError(f"{where}.space: expected {cls.space!r}, got {data['space']!r}")
        setting = check_str_choice(data["setting"], f"{where}.setting", tuple(SETTINGS))
        positions = SETTINGS[setting].positions
        blocks = check_list(data["blocks"], f"{where}.blocks", f"{len(positions)} operation names")
        if len(blocks) != len(positions):
            raise PosenasError(f"{where}.blocks: the {setting} setting has {len(positions)} positions, "
                               f"got {len(blocks)} blocks")
        for pos, op in zip(positions, blocks):
            field = f"{where}.blocks[{pos.index}]"
            if op == SKIP and not pos.can_skip:
                raise PosenasError(f"{field}: 'skip' not allowed at {pos.describe()}, which changes the "
                                   f"{'resolution' if pos.stride != 1 else 'width'}; allowed: {', '.join(pos.ops)}")
            check_str_choice(op, field, pos.ops)
        head = HeadArch.from_json(data.get("head", {}), f"{where}.head")
        arch = object.__new__(cls)  # validated: skip __post_init__'s re-validation
        object.__setattr__(arch, "setting", setting)
        object.__setattr__(arch, "blocks", tuple(blocks))
        object.__setattr__(arch, "head", head)
        return arch


def make_op(op: str, pos: Position) -> nn.Module:
    """The module of ``op`` at ``pos``: an MBConv, or the identity for ``skip``."""
    if op == SKIP:
        return nn.Identity()
    kernel, expansion = op_shape(op)
    return InvertedResidual(pos.in_channels, pos.out_channels, pos.stride, expansion=expansion, kernel=kernel, act=ACT)


class Stem(nn.Sequential):
    """3x3 stride-2 conv to ``stem_width``, then the separable 3x3 depthwise conv (depthwise
    + BN + ReLU6, then a linear 1x1 + BN) to ``sep_width``: MobileNetV2's first block."""

    def __init__(self, setting: Setting):
        super().__init__(ConvBNAct(3, setting.stem_width, 3, 2, act=ACT),
                         InvertedResidual(setting.stem_width, setting.sep_width, 1, expansion=1, kernel=3, act=ACT))


class EfficientPoseBackbone(nn.Module):
    """Stem -> the chain of the arch's operations (stride 16)."""

    def __init__(self, arch: EfficientPoseArch):
        super().__init__()
        setting = arch.definition
        self.stem = Stem(setting)
        self.blocks = nn.Sequential(*[make_op(op, pos) for op, pos in zip(arch.blocks, setting.positions)])
        self.out_channels, self.stride = setting.out_channels, 16
        init_backbone_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


def make_head(head: HeadArch, in_channels: int, num_joints: int) -> SlimHead:
    return SlimHead(in_channels, num_joints, head.widths, head.upsample, head.sic)


def derive(arch: EfficientPoseArch, num_joints: int = 17) -> SimpleBaseline:
    """The plain network of ``arch``: backbone (stride 16) + slim head (x4)."""
    num_joints = check_num_joints(num_joints)
    backbone = EfficientPoseBackbone(arch)
    return SimpleBaseline(backbone, make_head(arch.head, backbone.out_channels, num_joints))


def build_efficientpose(arch: EfficientPoseArch, num_joints: int) -> nn.Module:
    """The registry's build function (:data:`posenas.arch.ARCH_SPACES`)."""
    return derive(arch, num_joints)


# ----------------------------------------------------------------------------- the supernet

def drop_path(x: torch.Tensor, prob: float) -> torch.Tensor:
    """Zero whole samples with probability ``prob`` and rescale the rest (training only)."""
    if prob <= 0:
        return x
    keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= prob
    return x * keep / (1 - prob)


class MixedOp(nn.Module):
    """Eq. 3: the position's output is the probability-weighted sum of all its candidates."""

    def __init__(self, pos: Position):
        super().__init__()
        self.names = pos.ops
        self.candidates = nn.ModuleList(make_op(op, pos) for op in pos.ops)

    def forward(self, x: torch.Tensor, probs: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        out = None
        for name, op, p in zip(self.names, self.candidates, probs):
            y = op(x)
            if self.training and name != SKIP:
                y = drop_path(y, drop_prob)
            out = p * y if out is None else out + p * y
        return out


class EfficientPoseSupernet(nn.Module):
    """Every candidate of every position, mixed by softmax(alpha) (Eq. 2), plus the fixed stem
    and head. ``alpha`` is one (positions x len(OPS)) parameter; the skip column of positions
    that cannot skip is masked out of the softmax."""

    def __init__(self, setting: str, head: HeadArch = HeadArch(), num_joints: int = 17):
        super().__init__()
        if setting not in SETTINGS:
            raise PosenasError(f"setting: {setting!r} not allowed; allowed: {', '.join(SETTINGS)}")
        self.setting, self.head_arch, self.num_joints = setting, head, check_num_joints(num_joints)
        definition = SETTINGS[setting]
        self.positions = definition.positions
        self.stem = Stem(definition)
        self.mixed = nn.ModuleList(MixedOp(p) for p in self.positions)
        init_backbone_weights(self)
        self.head = make_head(head, definition.out_channels, num_joints)
        self.alpha = nn.Parameter(torch.zeros(len(self.positions), len(OPS)))
        mask = torch.tensor([[op in p.ops for op in OPS] for p in self.positions])
        self.register_buffer("allowed", mask, persistent=False)
        self.drop_prob = 0.0
        self.stride = 4

    def probabilities(self) -> torch.Tensor:
        """(positions x len(OPS)) softmax of alpha; disallowed ops get exactly 0."""
        return torch.softmax(self.alpha.masked_fill(~self.allowed, float("-inf")), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.probabilities()
        x = self.stem(x)
        for i, (pos, mixed) in enumerate(zip(self.positions, self.mixed)):
            columns = [OPS.index(op) for op in pos.ops]
            x = mixed(x, probs[i, columns], self.drop_prob)
        return self.head(x)

    def expected_cost(self, table: "CostTable") -> torch.Tensor:
        """Eq. 4-5: fixed parts plus, per position, the probability-weighted cost of its ops."""
        return table.fixed + (self.probabilities() * table.matrix(self.alpha.device)).sum()

    def argmax_arch(self) -> EfficientPoseArch:
        """The derived architecture: the most probable op at each position."""
        probs = self.probabilities()
        blocks = [OPS[int(probs[i].argmax())] for i in range(len(self.positions))]
        return EfficientPoseArch.from_json({"space": "efficientpose", "setting": self.setting, "blocks": blocks,
                                            "head": self.head_arch.to_json()})

    def derived_state_dict(self, arch: EfficientPoseArch) -> dict[str, torch.Tensor]:
        """Weights of :func:`derive` ``(arch)`` taken from the chosen candidates."""
        state: dict[str, torch.Tensor] = {}
        for key, value in self.stem.state_dict().items():
            state[f"backbone.stem.{key}"] = value
        for i, (op, mixed) in enumerate(zip(arch.blocks, self.mixed)):
            for key, value in mixed.candidates[mixed.names.index(op)].state_dict().items():
                state[f"backbone.blocks.{i}.{key}"] = value
        for key, value in self.head.state_dict().items():
            state[f"head.{key}"] = value
        return {k: v.detach().clone() for k, v in state.items()}


@dataclass(frozen=True)
class CostTable:
    """Per-position, per-op costs (Eq. 4) and the cost of the fixed parts (stem, head), in one
    unit (GMACs or ms); ``ops[i][op]`` is the cost of ``op`` at position ``i``."""

    fixed: float
    ops: tuple[dict[str, float], ...]

    def matrix(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.tensor([[costs.get(op, 0.0) for op in OPS] for costs in self.ops], device=device)

    def predict(self, arch: EfficientPoseArch) -> float:
        """The table's cost of a discrete architecture."""
        return self.fixed + sum(costs[op] for costs, op in zip(self.ops, arch.blocks))
