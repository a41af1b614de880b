"""SimpleBaseline (Xiao et al., ECCV 2018): a classification backbone + a deconvolution head.

The architecture is data: :class:`SimpleBaselineArch` is a frozen, validated dataclass
whose JSON form is::

    {"space": "simplebaseline", "backbone": "resnet50", "width_mult": 1.0,
     "head": {"widths": [256, 256, 256], "kernels": [4, 4, 4]}}

:func:`build_simplebaseline` turns it into a plain ``nn.Module`` mapping images
``(N, 3, H, W)`` to heatmaps ``(N, K, H/4, W/4)``: the backbone has stride 32 and the
head's three stride-2 transposed convs bring it to stride 4. With ``"tags": true`` the head
has 2K output channels, K heatmaps then one associative-embedding tag per joint: the model is
bottom-up (whole images, :mod:`posenas.data.bottomup`), e.g. ``simplebaseline-small-ae``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from posenas.errors import PosenasError
from posenas.models.backbones import BACKBONES, build_backbone
from posenas.models.heads import DeconvHead
from posenas.spaces.archfields import check_list, check_object, is_int

#: Transposed-conv kernels the head accepts (each exactly doubles H and W at stride 2).
HEAD_KERNELS = (2, 3, 4)
#: The backbones have stride 32 and the heatmaps stride 4: three stride-2 deconvs.
HEAD_DEPTH = 3
MAX_HEAD_WIDTH = 4096
MAX_WIDTH_MULT = 4.0

_KEYS = ("space", "backbone", "width_mult", "head", "tags")
_HEAD_KEYS = ("widths", "kernels")


def _check_backbone(value: Any, where: str) -> str:
    allowed = ", ".join(BACKBONES)
    if not isinstance(value, str):
        raise PosenasError(f"{where}.backbone: expected a string, got {value!r}; allowed: {allowed}")
    if value not in BACKBONES:
        raise PosenasError(f"{where}.backbone: unknown backbone {value!r}; allowed: {allowed}")
    return value


def _check_width_mult(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PosenasError(f"{where}.width_mult: expected a number in (0, {MAX_WIDTH_MULT:g}], got {value!r}")
    if not 0 < value <= MAX_WIDTH_MULT:
        raise PosenasError(f"{where}.width_mult: must be in (0, {MAX_WIDTH_MULT:g}], got {value!r}")
    return float(value)


def _check_head(widths: Any, kernels: Any, where: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    what = f"{HEAD_DEPTH} integers"
    widths = check_list(widths, f"{where}.head.widths", what)
    if len(widths) != HEAD_DEPTH:
        raise PosenasError(f"{where}.head.widths: expected {HEAD_DEPTH} entries (one per stride-2 deconv, "
                           f"backbone stride 32 -> heatmap stride 4), got {len(widths)}")
    for i, w in enumerate(widths):
        if not is_int(w) or not 1 <= w <= MAX_HEAD_WIDTH:
            raise PosenasError(f"{where}.head.widths[{i}]: expected an integer in [1, {MAX_HEAD_WIDTH}], got {w!r}")
    kernels = check_list(kernels, f"{where}.head.kernels", what)
    if len(kernels) != len(widths):
        raise PosenasError(f"{where}.head.kernels: has {len(kernels)} entries but head.widths has {len(widths)}; "
                           "they must have the same length")
    allowed = ", ".join(map(str, HEAD_KERNELS))
    for i, k in enumerate(kernels):
        if not is_int(k) or int(k) not in HEAD_KERNELS:
            raise PosenasError(f"{where}.head.kernels[{i}]: {k!r} not allowed; allowed: {allowed}")
    return tuple(int(w) for w in widths), tuple(int(k) for k in kernels)


@dataclass(frozen=True)
class SimpleBaselineArch:
    """A SimpleBaseline architecture: backbone, width multiplier, deconv-head widths and kernels."""

    backbone: str
    width_mult: float = 1.0
    head_widths: tuple[int, ...] = (256, 256, 256)
    head_kernels: tuple[int, ...] = (4, 4, 4)
    tags: bool = False
    space: ClassVar[str] = "simplebaseline"

    def __post_init__(self):
        # Direct construction is validated like JSON (messages use the JSON field names);
        # lists become tuples and ints become floats so equal archs compare and hash equal.
        self._normalise("arch")

    def _normalise(self, where: str) -> None:
        backbone = _check_backbone(self.backbone, where)
        width_mult = _check_width_mult(self.width_mult, where)
        widths, kernels = _check_head(self.head_widths, self.head_kernels, where)
        object.__setattr__(self, "backbone", backbone)
        object.__setattr__(self, "width_mult", width_mult)
        object.__setattr__(self, "head_widths", widths)
        object.__setattr__(self, "head_kernels", kernels)
        if not isinstance(self.tags, bool):
            raise PosenasError(f"{where}.tags: expected true or false, got {self.tags!r}")

    @property
    def bottom_up(self) -> bool:
        """Heatmaps and tags of every person in a whole image (associative embedding)."""
        return self.tags

    def to_json(self) -> dict:
        out = {
            "space": self.space,
            "backbone": self.backbone,
            "width_mult": float(self.width_mult),
            "head": {"widths": list(self.head_widths), "kernels": list(self.head_kernels)},
        }
        if self.tags:  # written only when set: top-down arch JSON stays as it always was
            out["tags"] = True
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "arch") -> "SimpleBaselineArch":
        """Parse and validate the JSON form; ``width_mult`` and ``head`` (and each of its keys)
        default as in the dataclass. Any bad value raises a one-line :class:`PosenasError`
        naming the field (``where`` prefixes the field path)."""
        data = check_object(data, where, _KEYS)
        if "space" not in data:
            raise PosenasError(f"{where}.space: missing; expected {cls.space!r}")
        if data["space"] != cls.space:
            raise PosenasError(f"{where}.space: expected {cls.space!r}, got {data['space']!r}")
        if "backbone" not in data:
            raise PosenasError(f"{where}.backbone: missing; allowed: {', '.join(BACKBONES)}")
        backbone = _check_backbone(data["backbone"], where)
        width_mult = _check_width_mult(data.get("width_mult", 1.0), where)
        head = check_object(data.get("head", {}), f"{where}.head", _HEAD_KEYS)
        widths, kernels = _check_head(head.get("widths", list(cls.head_widths)),
                                      head.get("kernels", list(cls.head_kernels)), where)
        tags = data.get("tags", False)
        if not isinstance(tags, bool):
            raise PosenasError(f"{where}.tags: expected true or false, got {tags!r}")
        return cls(backbone, width_mult, widths, kernels, tags)


class SimpleBaseline(nn.Module):
    """Backbone (stride 32) -> :class:`~posenas.models.heads.DeconvHead` (x8): heatmaps at stride 4."""

    def __init__(self, backbone: nn.Module, head: DeconvHead):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.stride = backbone.stride // head.upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def check_num_joints(num_joints: Any) -> int:
    if isinstance(num_joints, bool) or not isinstance(num_joints, int) or num_joints < 1:
        raise PosenasError(f"num_joints: expected a positive integer, got {num_joints!r}")
    return num_joints


def build_simplebaseline(arch: SimpleBaselineArch, num_joints: int) -> SimpleBaseline:
    """A freshly initialised SimpleBaseline: ``forward((N, 3, H, W)) -> (N, num_joints, H/4, W/4)``
    (``2 * num_joints`` channels with ``arch.tags``: heatmaps, then tags)."""
    if not isinstance(arch, SimpleBaselineArch):
        raise PosenasError(f"arch: expected a SimpleBaselineArch, got {type(arch).__name__}")
    num_joints = check_num_joints(num_joints)
    backbone = build_backbone(arch.backbone, arch.width_mult)
    outputs = 2 * num_joints if arch.tags else num_joints
    head = DeconvHead(backbone.out_channels, outputs, arch.head_widths, arch.head_kernels)
    return SimpleBaseline(backbone, head)
