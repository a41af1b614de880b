"""ViPNAS spatial search spaces (S-ViPNAS; Xu et al., CVPR 2021, sections 3.2 and 3.4.1).

Two spaces, ``vipnas-resnet`` and ``vipnas-mobilenetv3``: a backbone of stages, each
searched over five dimensions — depth (the first D blocks), width (the first W filters),
kernel (the centre K x K crop), group number (block-diagonal slices, 1 ... depthwise) and
attention at the end of each block (none / SE / GC) — plus the stem and the head's three
transposed convs (widths, groups, kernels {2, 4}). Strides and activations are fixed by
the space. The arch JSON (users write it by hand to reproduce a paper model)::

    {"space": "vipnas-resnet",
     "stem": {"width": 48, "kernel": 7},
     "stages": [{"depth": 4, "width": 80, "expansion": 1, "kernel": 3, "groups": 16, "attention": "gc"},
                ... 4 stages (vipnas-mobilenetv3: 6)],
     "head": {"widths": [144, 144, 144], "groups": [16, 16, 16], "kernels": [4, 4, 4]}}

vipnas-resnet (MMPose's ViPNAS_ResNet): 7x7-style stem conv (stride 2, ReLU) + 3x3 max
pool; stages of bottlenecks ``1x1 -> KxK grouped (stride on it) -> 1x1 (-> attention)``
with middle width ``width / expansion``, strides 1/2/2/2; SE reduction 16, GC ratio
``max(1/16, 16/width)``.

vipnas-mobilenetv3 (MMPose's ViPNAS_MobileNetV3): stem conv stride 2 (h-swish); stages of
inverted residuals ``1x1 expand -> KxK grouped (stride) (-> attention) -> 1x1 project``
with hidden width ``width * expansion`` (the expand conv is omitted when the hidden width
equals the input width), strides 1/2/2/2/1/2, ReLU in stages 1-3 and h-swish in 4-6;
attention acts on the hidden features (where MobileNetV3 puts SE: reduction 4,
hard-sigmoid gate).

Both end in the ViPNAS head: three stride-2 transposed convs (BN, ReLU), then a 1x1 conv
to one heatmap per joint (stride 4 overall).

``groups`` in the arch is the group number of the searched conv (it must divide that
conv's channels). The *choice sets* of the search give group numbers in vipnas-resnet
(its published 16 groups) and group widths — channels per group, 1 = depthwise — in
vipnas-mobilenetv3 (its published 120, 20, 100, 280, 240 groups are hidden widths over 1,
8, 4, 2, 4).

Here: the choice sets (:data:`SPACES`), the arch dataclass (:class:`ViPNASArch`),
``derive(arch)`` (:func:`derive`, a plain network of :mod:`posenas.models.blocks`), the
supernet (:class:`ViPNASSupernet`) and the samplers used by the search.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Literal, Sequence

import torch
from torch import nn

from posenas.errors import PosenasError
from posenas.models.blocks import (Bottleneck, ContextBlock, ConvBNAct, InvertedResidual, SqueezeExcite,
                                   init_backbone_weights, make_activation, make_divisible)
from posenas.models.heads import DeconvHead
from posenas.models.simplebaseline import SimpleBaseline, check_num_joints
from posenas.spaces import elastic as E
from posenas.spaces.archfields import check_groups, check_int_choice, check_list, check_object, check_str_choice

ATTENTIONS = ("none", "se", "gc")
CONV_KERNELS = (3, 5, 7)
HEAD_KERNELS = (2, 4)
HEAD_DEPTH = 3

_ARCH_KEYS = ("space", "stem", "stages", "head")
_STEM_KEYS = ("width", "kernel")
_STAGE_KEYS = ("depth", "width", "expansion", "kernel", "groups", "attention")
_HEAD_KEYS = ("widths", "groups", "kernels")


# ----------------------------------------------------------------------------- choice sets

@dataclass(frozen=True)
class StageChoices:
    """What one stage may be. ``groups``: group numbers (unit "count") or channels per group (unit "width")."""

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    expansions: tuple[int, ...]
    kernels: tuple[int, ...]
    groups: tuple[int, ...]
    attentions: tuple[str, ...]


@dataclass(frozen=True)
class Choices:
    """A search space's choice sets (the full space, or a subset a config restricts it to)."""

    stem_widths: tuple[int, ...]
    stem_kernels: tuple[int, ...]
    stages: tuple[StageChoices, ...]
    head_widths: tuple[int, ...]
    head_groups: tuple[int, ...]
    head_kernels: tuple[int, ...]

    def to_json(self, group_key: str) -> dict:
        return {"stem": {"widths": list(self.stem_widths), "kernels": list(self.stem_kernels)},
                "stages": [{"depths": list(s.depths), "widths": list(s.widths), "expansions": list(s.expansions),
                            "kernels": list(s.kernels), group_key: list(s.groups), "attentions": list(s.attentions)}
                           for s in self.stages],
                "head": {"widths": list(self.head_widths), group_key: list(self.head_groups),
                         "kernels": list(self.head_kernels)}}


@dataclass(frozen=True)
class SpaceDef:
    """A ViPNAS space: its fixed skeleton (block type, strides, activations) and full choice sets."""

    name: str
    block: Literal["bottleneck", "inverted_residual"]
    stem_act: str
    stem_pool: bool
    strides: tuple[int, ...]
    acts: tuple[str, ...]
    group_unit: Literal["count", "width"]
    choices: Choices

    @property
    def attention_by_size(self) -> tuple[str, ...]:
        """Attention choices, biggest first (params): GC on a bottleneck's output outweighs SE
        (reduction 16); SE (reduction 4) on an MBConv's hidden features outweighs GC."""
        return ("gc", "se", "none") if self.block == "bottleneck" else ("se", "gc", "none")

    @property
    def group_key(self) -> str:
        return "groups" if self.group_unit == "count" else "group_widths"

    def hidden(self, width: int, expansion: int) -> int:
        """The searched (grouped) conv's width in a block of this ``width`` and ``expansion``."""
        return width // expansion if self.block == "bottleneck" else width * expansion

    def group_number(self, option: int, channels: int) -> int:
        """A choice-set group option as a group number for a conv of ``channels``."""
        return option if self.group_unit == "count" else channels // option

    def group_option(self, groups: int, channels: int) -> int:
        return groups if self.group_unit == "count" else channels // groups

    def se(self, channels: int) -> nn.Module:
        if self.block == "bottleneck":
            return SqueezeExcite(channels, reduction=16, gate="sigmoid")
        return SqueezeExcite(channels, reduction=4, gate="hsigmoid")

    def se_squeeze(self, channels: int) -> int:
        return make_divisible(channels / (16 if self.block == "bottleneck" else 4), 8)

    @property
    def se_gate(self) -> str:
        return "sigmoid" if self.block == "bottleneck" else "hsigmoid"


def _gc(channels: int) -> nn.Module:
    return ContextBlock(channels, ratio=E.gc_planes(channels) / channels)


def _range(lo: int, hi: int, step: int) -> tuple[int, ...]:
    return tuple(range(lo, hi + 1, step))


_RESNET_WIDTHS = (_range(16, 96, 16), _range(32, 192, 16), _range(64, 384, 16), _range(128, 768, 16))
_RESNET_DEPTHS = (_range(1, 4, 1), _range(1, 6, 1), _range(1, 8, 1), _range(1, 4, 1))
_MBV3_WIDTHS = (_range(8, 32, 8), _range(16, 48, 8), _range(24, 80, 8), _range(40, 160, 8), _range(56, 224, 8),
                _range(80, 320, 8))

#: The two ViPNAS spaces. Published S-ViPNAS archs (DESIGN.md) lie inside these sets.
SPACES: dict[str, SpaceDef] = {
    "vipnas-resnet": SpaceDef(
        name="vipnas-resnet", block="bottleneck", stem_act="relu", stem_pool=True, strides=(1, 2, 2, 2),
        acts=("relu",) * 4, group_unit="count",
        choices=Choices(
            stem_widths=(16, 24, 32, 48, 64), stem_kernels=CONV_KERNELS,
            stages=tuple(StageChoices(d, w, (1, 2, 4), CONV_KERNELS, (1, 2, 4, 8, 16, 32), ATTENTIONS)
                         for d, w in zip(_RESNET_DEPTHS, _RESNET_WIDTHS)),
            head_widths=_range(16, 320, 16), head_groups=(1, 2, 4, 8, 16, 32), head_kernels=HEAD_KERNELS)),
    "vipnas-mobilenetv3": SpaceDef(
        name="vipnas-mobilenetv3", block="inverted_residual", stem_act="hswish", stem_pool=False,
        strides=(1, 2, 2, 2, 1, 2), acts=("relu",) * 3 + ("hswish",) * 3, group_unit="width",
        choices=Choices(
            stem_widths=(8, 16, 24, 32), stem_kernels=CONV_KERNELS,
            stages=tuple(StageChoices(_range(1, 4, 1), w, _range(1, 6, 1), CONV_KERNELS, (1, 2, 4, 8), ATTENTIONS)
                         for w in _MBV3_WIDTHS),
            head_widths=_range(16, 320, 16), head_groups=(1, 2, 4, 8), head_kernels=HEAD_KERNELS)),
}


def parse_choices(space: SpaceDef, data: Any, where: str) -> Choices:
    """A config's restriction of ``space``: every list must be a non-empty subset of the
    full set; a missing key keeps the full set."""
    full = space.choices
    data = check_object({} if data is None else data, where, ("stem", "stages", "head"))

    def subset(obj: dict, key: str, allowed: tuple, field_: str) -> tuple:
        if key not in obj:
            return allowed
        values = check_list(obj[key], field_, "choices")
        if not values:
            raise PosenasError(f"{field_}: must not be empty")
        check = check_str_choice if isinstance(allowed[0], str) else check_int_choice
        picked = {check(v, f"{field_}[{i}]", allowed) for i, v in enumerate(values)}
        return tuple(v for v in allowed if v in picked)

    gk = space.group_key
    stem = check_object(data.get("stem", {}), f"{where}.stem", ("widths", "kernels"))
    stages_data = data.get("stages")
    if stages_data is None:
        stages_data = [{}] * len(full.stages)
    stages_data = check_list(stages_data, f"{where}.stages", "stage objects", len(full.stages))
    stages = []
    for i, (obj, fs) in enumerate(zip(stages_data, full.stages)):
        w = f"{where}.stages[{i}]"
        obj = check_object(obj, w, ("depths", "widths", "expansions", "kernels", gk, "attentions"))
        stages.append(StageChoices(subset(obj, "depths", fs.depths, f"{w}.depths"),
                                   subset(obj, "widths", fs.widths, f"{w}.widths"),
                                   subset(obj, "expansions", fs.expansions, f"{w}.expansions"),
                                   subset(obj, "kernels", fs.kernels, f"{w}.kernels"),
                                   subset(obj, gk, fs.groups, f"{w}.{gk}"),
                                   subset(obj, "attentions", fs.attentions, f"{w}.attentions")))
    head = check_object(data.get("head", {}), f"{where}.head", ("widths", gk, "kernels"))
    return Choices(subset(stem, "widths", full.stem_widths, f"{where}.stem.widths"),
                   subset(stem, "kernels", full.stem_kernels, f"{where}.stem.kernels"), tuple(stages),
                   subset(head, "widths", full.head_widths, f"{where}.head.widths"),
                   subset(head, gk, full.head_groups, f"{where}.head.{gk}"),
                   subset(head, "kernels", full.head_kernels, f"{where}.head.kernels"))


# ----------------------------------------------------------------------------- the arch

@dataclass(frozen=True)
class StageArch:
    depth: int
    width: int
    expansion: int
    kernel: int
    groups: int
    attention: str


@dataclass(frozen=True)
class ViPNASArch:
    """An S-ViPNAS architecture (both spaces; :attr:`space_name` tells which).

    Construct through :meth:`from_json` (or :func:`make_arch`): it validates every field
    against the space's choice sets and the group numbers against the channels.
    """

    space_name: str
    stem_width: int
    stem_kernel: int
    stages: tuple[StageArch, ...]
    head_widths: tuple[int, ...]
    head_groups: tuple[int, ...]
    head_kernels: tuple[int, ...]
    space: ClassVar[str] = "vipnas"

    @property
    def definition(self) -> SpaceDef:
        return SPACES[self.space_name]

    def to_json(self) -> dict:
        return {
            "space": self.space_name,
            "stem": {"width": self.stem_width, "kernel": self.stem_kernel},
            "stages": [{"depth": s.depth, "width": s.width, "expansion": s.expansion, "kernel": s.kernel,
                        "groups": s.groups, "attention": s.attention} for s in self.stages],
            "head": {"widths": list(self.head_widths), "groups": list(self.head_groups),
                     "kernels": list(self.head_kernels)},
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "arch") -> "ViPNASArch":
        data = check_object(data, where, _ARCH_KEYS, required=_ARCH_KEYS)
        name = data["space"]
        if not isinstance(name, str) or name not in SPACES:
            raise PosenasError(f"{where}.space: {name!r} is not a ViPNAS space; allowed: {', '.join(SPACES)}")
        space = SPACES[name]
        full = space.choices
        stem = check_object(data["stem"], f"{where}.stem", _STEM_KEYS, required=_STEM_KEYS)
        stem_width = check_int_choice(stem["width"], f"{where}.stem.width", full.stem_widths)
        stem_kernel = check_int_choice(stem["kernel"], f"{where}.stem.kernel", full.stem_kernels)
        n = len(full.stages)
        raw = check_list(data["stages"], f"{where}.stages", f"{n} stage objects")
        if len(raw) != n:
            raise PosenasError(f"{where}.stages: {name} has {n} stages, got {len(raw)}")
        stages, in_ch = [], stem_width
        for i, (obj, sc) in enumerate(zip(raw, full.stages)):
            w = f"{where}.stages[{i}]"
            obj = check_object(obj, w, _STAGE_KEYS, required=_STAGE_KEYS)
            width = check_int_choice(obj["width"], f"{w}.width", sc.widths)
            expansion = check_int_choice(obj["expansion"], f"{w}.expansion", sc.expansions)
            hidden = space.hidden(width, expansion)
            if space.block == "bottleneck" and width % expansion:
                raise PosenasError(f"{w}.expansion: {expansion} does not divide the width {width}")
            stages.append(StageArch(
                depth=check_int_choice(obj["depth"], f"{w}.depth", sc.depths), width=width, expansion=expansion,
                kernel=check_int_choice(obj["kernel"], f"{w}.kernel", sc.kernels),
                groups=check_groups(obj["groups"], f"{w}.groups", [hidden], "grouped conv"),
                attention=check_str_choice(obj["attention"], f"{w}.attention", ATTENTIONS)))
            in_ch = width
        head = check_object(data["head"], f"{where}.head", _HEAD_KEYS, required=_HEAD_KEYS)
        lists = {k: check_list(head[k], f"{where}.head.{k}", f"{HEAD_DEPTH} integers", HEAD_DEPTH) for k in _HEAD_KEYS}
        widths = tuple(check_int_choice(v, f"{where}.head.widths[{i}]", full.head_widths)
                       for i, v in enumerate(lists["widths"]))
        kernels = tuple(check_int_choice(v, f"{where}.head.kernels[{i}]", full.head_kernels)
                        for i, v in enumerate(lists["kernels"]))
        groups, ch = [], in_ch
        for i, (g, wd) in enumerate(zip(lists["groups"], widths)):
            groups.append(check_groups(g, f"{where}.head.groups[{i}]", [ch, wd], "transposed conv"))
            ch = wd
        return ARCH_CLASSES[name](name, stem_width, stem_kernel, tuple(stages), widths, tuple(groups), kernels)


class ViPNASResNetArch(ViPNASArch):
    """The registry entry of ``vipnas-resnet`` (same dataclass; ``space`` names the space)."""

    space: ClassVar[str] = "vipnas-resnet"


class ViPNASMobileNetV3Arch(ViPNASArch):
    space: ClassVar[str] = "vipnas-mobilenetv3"


ARCH_CLASSES: dict[str, type[ViPNASArch]] = {"vipnas-resnet": ViPNASResNetArch,
                                             "vipnas-mobilenetv3": ViPNASMobileNetV3Arch}


def make_arch(data: dict, where: str = "arch") -> ViPNASArch:
    """Validate arch JSON of either ViPNAS space (returns that space's registry class)."""
    return ViPNASArch.from_json(data, where)


def in_choices(arch: ViPNASArch, choices: Choices) -> str | None:
    """``None`` if ``arch`` is a sub-net of a supernet over ``choices``, else the first field that is not."""
    space = arch.definition
    if arch.stem_width not in choices.stem_widths:
        return f"stem.width {arch.stem_width} (choices: {list(choices.stem_widths)})"
    if arch.stem_kernel not in choices.stem_kernels:
        return f"stem.kernel {arch.stem_kernel} (choices: {list(choices.stem_kernels)})"
    for i, (s, c) in enumerate(zip(arch.stages, choices.stages)):
        for name, value, allowed in (("depth", s.depth, c.depths), ("width", s.width, c.widths),
                                     ("expansion", s.expansion, c.expansions), ("kernel", s.kernel, c.kernels),
                                     ("attention", s.attention, c.attentions)):
            if value not in allowed:
                return f"stages[{i}].{name} {value!r} (choices: {list(allowed)})"
        option = space.group_option(s.groups, space.hidden(s.width, s.expansion))
        if option not in c.groups:
            return f"stages[{i}].groups {s.groups} ({space.group_key} {option}; choices: {list(c.groups)})"
    ch = arch.stages[-1].width
    for i, (w, g, k) in enumerate(zip(arch.head_widths, arch.head_groups, arch.head_kernels)):
        if w not in choices.head_widths:
            return f"head.widths[{i}] {w} (choices: {list(choices.head_widths)})"
        if k not in choices.head_kernels:
            return f"head.kernels[{i}] {k} (choices: {list(choices.head_kernels)})"
        option = space.group_option(g, min(ch, w)) if space.group_unit == "width" else g
        if option not in choices.head_groups:
            return f"head.groups[{i}] {g} (choices: {list(choices.head_groups)})"
        ch = w
    return None


# ----------------------------------------------------------------------------- derive: the plain network

class ViPNASBackbone(nn.Module):
    """``stem (-> max pool) -> stages``: the plain backbone of an arch (stride 32)."""

    def __init__(self, arch: ViPNASArch):
        super().__init__()
        space = arch.definition
        self.stem = ConvBNAct(3, arch.stem_width, arch.stem_kernel, 2, act=space.stem_act)
        self.pool = nn.MaxPool2d(3, 2, 1) if space.stem_pool else nn.Identity()
        stages, ch = [], arch.stem_width
        for s, stride, act in zip(arch.stages, space.strides, space.acts):
            attention = {"none": None, "se": space.se, "gc": _gc}[s.attention]
            blocks = []
            for b in range(s.depth):
                st = stride if b == 0 else 1
                if space.block == "bottleneck":
                    blocks.append(Bottleneck(ch, s.width, st, s.kernel, s.groups, expansion=s.expansion, act=act,
                                             attention=attention))
                else:
                    blocks.append(InvertedResidual(ch, s.width, st, kernel=s.kernel, act=act,
                                                   hidden_channels=space.hidden(s.width, s.expansion),
                                                   dw_groups=s.groups, attention=attention))
                ch = s.width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.out_channels, self.stride = ch, 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        for stage in self.stages:
            x = stage(x)
        return x


def derive(arch: ViPNASArch, num_joints: int = 17, supernet: "ViPNASSupernet | None" = None) -> SimpleBaseline:
    """The plain network of ``arch`` (no elastic machinery): backbone + ViPNAS head.

    With ``supernet`` its weights (and BN statistics) are inherited from the supernet's
    slices for ``arch``; otherwise freshly initialised.
    """
    num_joints = check_num_joints(num_joints)
    backbone = ViPNASBackbone(arch)
    init_backbone_weights(backbone)
    head = DeconvHead(backbone.out_channels, num_joints, arch.head_widths, arch.head_kernels, arch.head_groups)
    model = SimpleBaseline(backbone, head)
    if supernet is not None:
        supernet.set_active(arch)
        with torch.no_grad():
            state = {k: v.detach().clone() for k, v in supernet.active_state_dict().items()}
        model.load_state_dict(state)
    return model


def build_vipnas(arch: ViPNASArch, num_joints: int) -> nn.Module:
    """The registry's build function (:data:`posenas.arch.ARCH_SPACES`)."""
    return derive(arch, num_joints)


# ----------------------------------------------------------------------------- the supernet

def _hidden_widths(space: SpaceDef, stage: StageChoices) -> list[int]:
    """Every width the stage's grouped conv can have."""
    return [space.hidden(w, e) for w in stage.widths for e in stage.expansions
            if space.block != "bottleneck" or w % e == 0]


class _ElasticBlock(nn.Module):
    """One supernet block of either kind; mirrors :class:`Bottleneck` / :class:`InvertedResidual`."""

    def __init__(self, space: SpaceDef, max_in: int, stage: StageChoices, stride: int, act: str, first: bool):
        super().__init__()
        self.kind, self.stride, self.act_name = space.block, stride, act
        max_w = max(stage.widths)
        hiddens = _hidden_widths(space, stage)
        max_hidden = max(hiddens)
        # the widest group any sub-net can use: the stored band of the grouped conv
        max_group_width = max(stage.groups) if space.group_unit == "width" else max(
            h // g for h in hiddens for g in stage.groups if h % g == 0)
        kmax = max(stage.kernels)
        se = lambda c: E.ElasticSqueezeExcite(c, space.se_squeeze, gate=space.se_gate)  # noqa: E731
        gc = lambda c: E.ElasticContextBlock(c, E.gc_planes)  # noqa: E731
        if self.kind == "bottleneck":
            self.conv1 = E.ElasticConvBN(max_in, max_hidden, 1, act=act)
            self.conv2 = E.ElasticConvBN(max_hidden, max_hidden, kmax, stride, act=act, max_group_width=max_group_width)
            self.conv3 = E.ElasticConvBN(max_hidden, max_w, 1, act=None)
            self.attention = E.ElasticAttention(stage.attentions, max_w, se, gc)
            self.shortcut = E.ElasticConvBN(max_in, max_w, 1, stride, act=None) if first else None
            self.act = make_activation(act)
        else:
            self.expand = E.ElasticConvBN(max_in, max_hidden, 1, act=act)
            self.depthwise = E.ElasticConvBN(max_hidden, max_hidden, kmax, stride, act=act,
                                             max_group_width=max_group_width)
            self.attention = E.ElasticAttention(stage.attentions, max_hidden, se, gc)
            self.project = E.ElasticConvBN(max_hidden, max_w, 1, act=None)

    def set_active(self, in_channels: int, s: StageArch, space: SpaceDef, stride: int) -> None:
        hidden = space.hidden(s.width, s.expansion)
        if self.kind == "bottleneck":
            self.conv1.set_active(in_channels, hidden)
            self.conv2.set_active(hidden, hidden, s.kernel, s.groups)
            self.conv3.set_active(hidden, s.width)
            self.attention.set_active(s.attention, s.width)
            self.use_shortcut_conv = stride != 1 or in_channels != s.width
            if self.use_shortcut_conv:
                self.shortcut.set_active(in_channels, s.width)
        else:
            self.use_expand = hidden != in_channels
            if self.use_expand:
                self.expand.set_active(in_channels, hidden)
            self.depthwise.set_active(hidden, hidden, s.kernel, s.groups)
            self.attention.set_active(s.attention, hidden)
            self.project.set_active(hidden, s.width)
            self.use_residual = stride == 1 and in_channels == s.width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "bottleneck":
            y = self.attention(self.conv3(self.conv2(self.conv1(x))))
            return self.act(y + (self.shortcut(x) if self.use_shortcut_conv else x))
        y = self.expand(x) if self.use_expand else x
        y = self.project(self.attention(self.depthwise(y)))
        return x + y if self.use_residual else y

    def active_tensors(self) -> E.Tensors:
        names = ("conv1", "conv2", "conv3") if self.kind == "bottleneck" else ("depthwise", "project")
        out: E.Tensors = {}
        for name in names:
            out.update(E.prefixed(name, getattr(self, name).active_tensors()))
        if self.kind == "bottleneck" and self.use_shortcut_conv:
            out.update(E.prefixed("shortcut", self.shortcut.active_tensors()))
        if self.kind != "bottleneck" and self.use_expand:
            out.update(E.prefixed("expand", self.expand.active_tensors()))
        out.update(E.prefixed("attention", self.attention.active_tensors()) if self.attention.active != "none" else {})
        return out


class ViPNASSupernet(nn.Module):
    """The weight-sharing supernet over ``choices`` of a ViPNAS space.

    ``set_active(arch)`` selects a sub-net; ``forward`` runs it; ``active_state_dict()``
    gives its weights under the plain network's names (see :func:`derive`).
    """

    def __init__(self, space_name: str, choices: Choices | None = None, num_joints: int = 17):
        super().__init__()
        self.definition = space = SPACES[space_name]
        self.space_name, self.num_joints = space_name, check_num_joints(num_joints)
        self.choices = choices = choices or space.choices
        self.backbone = nn.Module()
        self.backbone.stem = E.ElasticConvBN(3, max(choices.stem_widths), max(choices.stem_kernels), 2, act=space.stem_act)
        self.backbone.pool = nn.MaxPool2d(3, 2, 1) if space.stem_pool else nn.Identity()
        stages, max_in = [], max(choices.stem_widths)
        for sc, stride, act in zip(choices.stages, space.strides, space.acts):
            blocks = nn.ModuleList()
            for b in range(max(sc.depths)):
                blocks.append(_ElasticBlock(space, max_in if b == 0 else max(sc.widths), sc, stride if b == 0 else 1,
                                            act, first=b == 0))
            stages.append(blocks)
            max_in = max(sc.widths)
        self.backbone.stages = nn.ModuleList(stages)
        self.head = nn.Module()
        head, ch = [], max_in
        for _ in range(HEAD_DEPTH):
            head.append(E.ElasticDeconvBN(ch, max(choices.head_widths), max(choices.head_kernels)))
            ch = max(choices.head_widths)
        self.head.deconvs = nn.ModuleList(head)
        self.head.final = E.Holder(num_joints, ch, 1, 1, bias=num_joints)
        nn.init.normal_(self.head.final.weight, std=0.001)
        self.arch: ViPNASArch | None = None
        self.set_active(largest_arch(space_name, choices))

    def set_active(self, arch: ViPNASArch) -> None:
        if arch.space_name != self.space_name:
            raise PosenasError(f"arch.space: {arch.space_name!r} does not fit a {self.space_name} supernet")
        outside = in_choices(arch, self.choices)
        if outside is not None:
            raise PosenasError(f"arch: not a sub-net of this supernet: {outside}")
        space, bb = self.definition, self.backbone
        bb.stem.set_active(3, arch.stem_width, arch.stem_kernel)
        ch = arch.stem_width
        for s, stride, blocks in zip(arch.stages, space.strides, bb.stages):
            for b in range(s.depth):
                blocks[b].set_active(ch, s, space, stride if b == 0 else 1)
                ch = s.width
        for deconv, w, g, k in zip(self.head.deconvs, arch.head_widths, arch.head_groups, arch.head_kernels):
            deconv.set_active(ch, w, k, g)
            ch = w
        self.arch = arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)

    def run(self, x: torch.Tensor, after_stage: Callable[[int, torch.Tensor], torch.Tensor] | None = None
            ) -> torch.Tensor:
        """The active sub-net's forward; ``after_stage(i, features)`` (stage ``i`` = 1..4) may
        replace each stage's output (the temporal fusion of :mod:`posenas.spaces.vipnas_video`)."""
        arch, bb = self.arch, self.backbone
        x = bb.pool(bb.stem(x))
        for i, (s, blocks) in enumerate(zip(arch.stages, bb.stages), 1):
            for block in blocks[: s.depth]:
                x = block(x)
            if after_stage is not None:
                x = after_stage(i, x)
        for deconv in self.head.deconvs:
            x = deconv(x)
        c = x.shape[1]
        return nn.functional.conv2d(x, self.head.final.weight[:, :c], self.head.final.bias)

    def active_state_dict(self) -> E.Tensors:
        """The active sub-net's tensors, named as in :func:`derive`'s plain model."""
        arch, bb = self.arch, self.backbone
        out = E.prefixed("backbone.stem", bb.stem.active_tensors())
        for i, (s, blocks) in enumerate(zip(arch.stages, bb.stages)):
            for b in range(s.depth):
                out.update(E.prefixed(f"backbone.stages.{i}.{b}", blocks[b].active_tensors()))
        for i, deconv in enumerate(self.head.deconvs):
            out.update(E.prefixed(f"head.deconvs.{i}", deconv.active_tensors()))
        c = arch.head_widths[-1]
        out["head.final.weight"] = self.head.final.weight[:, :c]
        out["head.final.bias"] = self.head.final.bias
        return out


# ----------------------------------------------------------------------------- sampling

def _arch(space_name: str, stem: tuple[int, int], stages: list[StageArch], head: list[tuple[int, int, int]]) -> ViPNASArch:
    cls = ARCH_CLASSES[space_name]
    return cls(space_name, stem[0], stem[1], tuple(stages), tuple(h[0] for h in head), tuple(h[1] for h in head),
               tuple(h[2] for h in head))


def _valid_groups(space: SpaceDef, options: Iterable[int], channels: Sequence[int]) -> list[int]:
    """Group numbers from choice-set ``options`` that divide every one of ``channels``."""
    out = []
    for o in options:
        g = space.group_number(o, min(channels)) if space.group_unit == "width" else o
        if g >= 1 and all(c % g == 0 for c in channels) and (space.group_unit == "count" or min(channels) % o == 0):
            out.append(g)
    return out


def _extreme_arch(space_name: str, choices: Choices, largest: bool) -> ViPNASArch:
    space = SPACES[space_name]
    pick = max if largest else min
    stages = []
    for sc in choices.stages:
        width = pick(sc.widths)
        exps = [e for e in sc.expansions if space.block != "bottleneck" or width % e == 0]
        # the largest sub-net has the widest hidden layer: min expansion in a bottleneck, max in an MBConv
        bigger_hidden = (min if space.block == "bottleneck" else max) if largest else (max if space.block == "bottleneck" else min)
        expansion = bigger_hidden(exps)
        hidden = space.hidden(width, expansion)
        groups = _valid_groups(space, sc.groups, [hidden])
        if not groups:
            raise PosenasError(f"choices: no group option of {list(sc.groups)} fits the {hidden}-channel conv of "
                               f"the {'largest' if largest else 'smallest'} sub-net")
        order = space.attention_by_size if largest else space.attention_by_size[::-1]
        attention = next(a for a in order if a in sc.attentions)
        stages.append(StageArch(pick(sc.depths), width, expansion, pick(sc.kernels),
                                min(groups) if largest else max(groups), attention))
    head, ch = [], stages[-1].width
    for _ in range(HEAD_DEPTH):
        w = pick(choices.head_widths)
        groups = _valid_groups(space, choices.head_groups, [ch, w])
        if not groups:
            raise PosenasError(f"choices: no head group option of {list(choices.head_groups)} fits {ch}->{w} channels")
        head.append((w, min(groups) if largest else max(groups), pick(choices.head_kernels)))
        ch = w
    return _arch(space_name, (pick(choices.stem_widths), pick(choices.stem_kernels)), stages, head)


def largest_arch(space_name: str, choices: Choices | None = None) -> ViPNASArch:
    """Every dimension at its largest (the sandwich rule's top sub-net; attention by :attr:`SpaceDef.attention_by_size`)."""
    return _extreme_arch(space_name, choices or SPACES[space_name].choices, True)


def smallest_arch(space_name: str, choices: Choices | None = None) -> ViPNASArch:
    return _extreme_arch(space_name, choices or SPACES[space_name].choices, False)


def sample_arch(space_name: str, choices: Choices | None, rng: random.Random) -> ViPNASArch:
    """A uniformly random sub-net (each dimension independently; group options that do not
    divide the sampled channels are left out)."""
    space = SPACES[space_name]
    choices = choices or space.choices
    for _ in range(1000):
        stages = []
        for sc in choices.stages:
            width = rng.choice(sc.widths)
            exps = [e for e in sc.expansions if space.block != "bottleneck" or width % e == 0]
            expansion = rng.choice(exps)
            groups = _valid_groups(space, sc.groups, [space.hidden(width, expansion)])
            if not groups:
                break
            stages.append(StageArch(rng.choice(sc.depths), width, expansion, rng.choice(sc.kernels),
                                    rng.choice(groups), rng.choice(sc.attentions)))
        else:
            head, ch = [], stages[-1].width
            for _ in range(HEAD_DEPTH):
                w = rng.choice(choices.head_widths)
                groups = _valid_groups(space, choices.head_groups, [ch, w])
                if not groups:
                    break
                head.append((w, rng.choice(groups), rng.choice(choices.head_kernels)))
                ch = w
            else:
                return _arch(space_name, (rng.choice(choices.stem_widths), rng.choice(choices.stem_kernels)),
                             stages, head)
    raise PosenasError(f"choices: could not sample a valid {space_name} sub-net (group options never divide the widths)")


def mutate_arch(arch: ViPNASArch, choices: Choices, rng: random.Random, prob: float = 0.1) -> ViPNASArch:
    """Each stage and head layer resampled with probability ``prob`` (evolutionary search)."""
    fresh = sample_arch(arch.space_name, choices, rng)
    return crossover_arch(arch, fresh, rng, take_second=prob)


def crossover_arch(a: ViPNASArch, b: ViPNASArch, rng: random.Random, take_second: float = 0.5) -> ViPNASArch:
    """Per stage (and for the stem and the head as wholes) take ``b``'s part with probability
    ``take_second``; a combination whose groups no longer divide falls back to ``a``'s part."""
    stem = (b.stem_width, b.stem_kernel) if rng.random() < take_second else (a.stem_width, a.stem_kernel)
    stages = [sb if rng.random() < take_second else sa for sa, sb in zip(a.stages, b.stages)]
    head_b = rng.random() < take_second
    src = b if head_b else a
    head = list(zip(src.head_widths, src.head_groups, src.head_kernels))
    try:
        return make_arch(_arch(a.space_name, stem, stages, head).to_json())
    except PosenasError:  # the head's first groups must divide the last stage's width
        head = list(zip(a.head_widths, a.head_groups, a.head_kernels)) if head_b else list(
            zip(b.head_widths, b.head_groups, b.head_kernels))
        try:
            return make_arch(_arch(a.space_name, stem, stages, head).to_json())
        except PosenasError:
            return a

