"""HRNet (Sun et al., CVPR 2019) and HigherHRNet (Cheng et al., CVPR 2020).

The architecture is data: :class:`HRNetArch` is a frozen, validated dataclass whose JSON
form is::

    {"space": "hrnet", "width": 32, "head": "heatmap"}

``width`` is the channel count of the highest-resolution branch (the branches have
``width``, 2x, 4x and 8x that many channels: W32 is 32/64/128/256); ``head`` is one of
:data:`HEADS`.

The body is the published COCO configuration (``w32_256x192``):

- stem: two 3x3 stride-2 conv-BN-ReLU of 64 channels (stride 4);
- stage 1: 4 Bottlenecks (64 -> 256, expansion 4, the first with a 1x1 conv-BN shortcut);
- transitions: a 3x3 conv-BN-ReLU where a kept branch changes width, and for each new
  branch a 3x3 stride-2 conv-BN-ReLU from the previous stage's lowest-resolution branch;
- stages 2/3/4: 1/4/3 multi-resolution modules of 2/3/4 branches; a module runs 4
  BasicBlocks per branch, then fuses: every output branch is the ReLU of the sum of all
  branches brought to its scale (:class:`~posenas.models.blocks.Resample`). As in HRNet's
  ``pose_hrnet.py``, the last module of stage 4 fuses into branch 0 only
  (``multi_scale_output=False``): branches 1-3 of its output would be unused.

Heads (:data:`HEADS`), all on branch 0 (stride 4):

- ``heatmap`` (top-down HRNet): a 1x1 conv to ``K`` heatmaps, ``(N, K, H/4, W/4)``;
- ``ae`` (single-resolution bottom-up, associative embedding): a 1x1 conv to ``2K``
  channels, ``[0:K]`` heatmaps and ``[K:2K]`` one tag map per joint, ``(N, 2K, H/4, W/4)``;
- ``higher`` (HigherHRNet): the ``ae`` prediction at 1/4, then the deconv module:
  concat(branch-0 features, that prediction) -> 4x4 stride-2 transposed conv-BN-ReLU to
  ``width`` channels -> 4 BasicBlocks -> a 1x1 conv to ``K`` heatmaps at 1/2. ``forward``
  returns the tuple ``(out_quarter (N, 2K, H/4, W/4), out_half (N, K, H/2, W/2))``.

The modules are registered in the order of the reference implementations (``pose_hrnet.py``,
``pose_higher_hrnet.py``), so their state dicts list tensors of the same shapes in the same
order: an official checkpoint loads by position (checked: identical outputs), and W32 has
their exact parameter and MAC counts (28,536,113 / 7,645,003,776 MACs at 256x192; HigherHRNet
28,645,331 / 46,203,404,288 at 512x512; HRNet's "7.1 GFLOPs" divides by 1024**3).

Init as HRNet / HigherHRNet (``init_weights`` in both repositories): every conv and
transposed conv normal(std=0.001) with zero bias, BN weight 1 and bias 0 — body and heads
alike (not :func:`~posenas.models.blocks.init_backbone_weights`' kaiming init).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from posenas.errors import PosenasError
from posenas.models.blocks import BasicBlock, Bottleneck, ConvBNAct, DeconvBNAct, Resample
from posenas.models.simplebaseline import check_num_joints
from posenas.spaces.archfields import check_object, check_str_choice, is_int

#: ``heatmap``: top-down heatmaps; ``ae``: heatmaps + tags at 1/4; ``higher``: HigherHRNet.
HEADS = ("heatmap", "ae", "higher")
MIN_WIDTH, MAX_WIDTH = 4, 256

STEM_CHANNELS = 64
#: Stage 1: Bottlenecks of 64 middle channels (expansion 4: 256 out).
STAGE1_BLOCKS, STAGE1_CHANNELS = 4, 256
#: Stages 2, 3, 4: (modules, branches); every branch of every module has 4 BasicBlocks.
STAGES = ((1, 2), (4, 3), (3, 4))
BLOCKS_PER_BRANCH = 4
#: HigherHRNet's deconv module: one 4x4 stride-2 transposed conv, then 4 BasicBlocks.
DECONV_KERNEL, DECONV_BLOCKS = 4, 4

_KEYS = ("space", "width", "head")


def _check_width(value: Any, where: str) -> int:
    if not is_int(value) or not MIN_WIDTH <= value <= MAX_WIDTH:
        raise PosenasError(f"{where}.width: expected an integer in [{MIN_WIDTH}, {MAX_WIDTH}] (channels of the "
                           f"highest-resolution branch), got {value!r}")
    return int(value)


@dataclass(frozen=True)
class HRNetArch:
    """An HRNet: the highest-resolution branch's width and the head (:data:`HEADS`)."""

    width: int = 32
    head: str = "heatmap"
    space: ClassVar[str] = "hrnet"

    def __post_init__(self):
        # Direct construction is validated like JSON; 32.0 becomes 32 so equal archs hash equal.
        object.__setattr__(self, "width", _check_width(self.width, "arch"))
        object.__setattr__(self, "head", check_str_choice(self.head, "arch.head", HEADS))

    @property
    def bottom_up(self) -> bool:
        """Whether the model predicts tags for grouping (``ae``, ``higher``) instead of one person's heatmaps."""
        return self.head != "heatmap"

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels of the four branches (strides 4, 8, 16, 32)."""
        return tuple(self.width * 2 ** b for b in range(4))

    def to_json(self) -> dict:
        return {"space": self.space, "width": self.width, "head": self.head}

    @classmethod
    def from_json(cls, data: Any, where: str = "arch") -> "HRNetArch":
        """Parse and validate the JSON form; ``width`` and ``head`` default as in the dataclass.
        Any bad value raises a one-line :class:`PosenasError` naming the field."""
        data = check_object(data, where, _KEYS)
        if "space" not in data:
            raise PosenasError(f"{where}.space: missing; expected {cls.space!r}")
        if data["space"] != cls.space:
            raise PosenasError(f"{where}.space: expected {cls.space!r}, got {data['space']!r}")
        width = _check_width(data.get("width", cls.width), where)
        head = check_str_choice(data.get("head", cls.head), f"{where}.head", HEADS)
        return cls(width, head)


# ---------------------------------------------------------------- modules


class Transition(nn.Module):
    """From one stage's branches to the next's: a kept branch passes as is (or through a 3x3
    conv-BN-ReLU when its width changes); a new branch is a 3x3 stride-2 conv-BN-ReLU of
    the previous stage's lowest-resolution branch."""

    def __init__(self, in_widths: Sequence[int], out_widths: Sequence[int]):
        super().__init__()
        if len(out_widths) > len(in_widths) + 1:
            raise ValueError("a transition adds at most one branch")
        self.layers = nn.ModuleList(
            (nn.Identity() if in_widths[i] == c else ConvBNAct(in_widths[i], c, 3)) if i < len(in_widths)
            else ConvBNAct(in_widths[-1], c, 3, 2) for i, c in enumerate(out_widths))

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [layer(xs[i] if i < len(xs) else xs[-1]) for i, layer in enumerate(self.layers)]


class HRModule(nn.Module):
    """A multi-resolution module: ``blocks`` BasicBlocks per branch, then every output branch
    ``i`` is ``ReLU(sum_j Resample(j -> i)(x_j))``. ``outputs``: how many output branches
    (all, or 1 for the last module of HRNet: ``multi_scale_output=False``)."""

    def __init__(self, widths: Sequence[int], blocks: int = BLOCKS_PER_BRANCH, outputs: int | None = None):
        super().__init__()
        if len(widths) < 2:
            raise ValueError("an HRNet module has at least two branches")
        outputs = len(widths) if outputs is None else outputs
        self.branches = nn.ModuleList(nn.Sequential(*[BasicBlock(c, c) for _ in range(blocks)]) for c in widths)
        self.fuse = nn.ModuleList(nn.ModuleList(Resample(widths, j, i) for j in range(len(widths)))
                                  for i in range(outputs))
        self.act = nn.ReLU(inplace=True)

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        out = []
        for i, row in enumerate(self.fuse):
            size = (xs[i].shape[-2], xs[i].shape[-1])
            y = row[0](xs[0], size)
            for j in range(1, len(xs)):
                y = y + row[j](xs[j], size)  # >= 2 branches: y is a fresh tensor, the in-place ReLU is safe
            out.append(self.act(y))
        return out


class Stage(nn.Sequential):
    """``modules`` HRModules in a row; the last one with ``last_outputs`` output branches."""

    def __init__(self, widths: Sequence[int], modules: int, last_outputs: int | None = None):
        super().__init__(*[HRModule(widths, outputs=last_outputs if m == modules - 1 else None)
                           for m in range(modules)])

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:  # type: ignore[override]
        for module in self:
            xs = module(xs)
        return list(xs)


class HRNetBody(nn.Module):
    """Stem, stage 1, the transitions and stages 2-4: ``(N, 3, H, W) -> (N, width, H/4, W/4)``
    (branch 0 of the last module, which fuses all four branches)."""

    def __init__(self, width: int):
        super().__init__()
        widths = [width * 2 ** b for b in range(len(STAGES) + 1)]
        self.stem = nn.Sequential(ConvBNAct(3, STEM_CHANNELS, 3, 2), ConvBNAct(STEM_CHANNELS, STEM_CHANNELS, 3, 2))
        self.layer1 = nn.Sequential(*[Bottleneck(STEM_CHANNELS if k == 0 else STAGE1_CHANNELS, STAGE1_CHANNELS,
                                                 expansion=4) for k in range(STAGE1_BLOCKS)])
        # Named as in HRNet's pose_hrnet.py and registered in its order (transition1, stage2,
        # transition2, ...), so the state dict lists the tensors in the same order.
        previous = [STAGE1_CHANNELS]
        for s, (modules, branches) in enumerate(STAGES, start=2):
            current = widths[:branches]
            setattr(self, f"transition{s - 1}", Transition(previous, current))
            setattr(self, f"stage{s}", Stage(current, modules, last_outputs=1 if s == len(STAGES) + 1 else None))
            previous = current
        self.out_channels = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = [self.layer1(self.stem(x))]
        for s in range(2, len(STAGES) + 2):
            xs = getattr(self, f"stage{s}")(getattr(self, f"transition{s - 1}")(xs))
        return xs[0]


class HigherDeconv(nn.Sequential):
    """HigherHRNet's deconv module: a 4x4 stride-2 transposed conv-BN-ReLU to ``width``, then
    ``DECONV_BLOCKS`` BasicBlocks (its input: concat(branch-0 features, the 1/4 prediction))."""

    def __init__(self, in_channels: int, width: int):
        super().__init__(DeconvBNAct(in_channels, width, DECONV_KERNEL),
                         *[BasicBlock(width, width) for _ in range(DECONV_BLOCKS)])


class HRNet(nn.Module):
    """HRNet body + head (see the module docstring). ``stride``: the first output's stride
    (4); bottom-up heads also have ``output_strides``: (4,) for ``ae``, (4, 2) for ``higher``."""

    def __init__(self, arch: HRNetArch, num_joints: int):
        super().__init__()
        self.arch, self.num_joints = arch, num_joints
        self.body = HRNetBody(arch.width)
        c = self.body.out_channels
        self.final = nn.Conv2d(c, 2 * num_joints if arch.bottom_up else num_joints, 1)
        # HigherHRNet's order: both final 1x1 convs, then the deconv module.
        self.final_half = nn.Conv2d(c, num_joints, 1) if arch.head == "higher" else None
        self.deconv = HigherDeconv(c + 2 * num_joints, c) if arch.head == "higher" else None
        self.stride = 4
        if arch.bottom_up:
            self.output_strides = (4, 2) if self.deconv is not None else (4,)
        self.init_weights()

    def init_weights(self) -> None:
        """HRNet's init: convs and transposed convs normal(std=0.001), biases 0, BN 1 and 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        quarter = self.final(features)
        if self.deconv is None:
            return quarter
        return quarter, self.final_half(self.deconv(torch.cat([features, quarter], dim=1)))


def build_hrnet(arch: HRNetArch, num_joints: int) -> HRNet:
    """A freshly initialised HRNet (the registry's build function, :data:`posenas.arch.ARCH_SPACES`)."""
    if not isinstance(arch, HRNetArch):
        raise PosenasError(f"arch: expected an HRNetArch, got {type(arch).__name__}")
    return HRNet(arch, check_num_joints(num_joints))
