"""The ViPNAS video search space (T-ViPNAS; Xu et al., CVPR 2021, sections 3.1, 3.3, 3.4.2).

Online video pose estimation by propagation: every ``T + 1`` frames a key frame goes through
the S-ViPNet (an S-ViPNAS arch); each of the ``T`` frames after it goes through its own
T-ViPNet, which sees the current crop *and* the previous frame's heatmaps. A T-ViPNet is a
ViPNAS spatial sub-net with a **temporal fusion module** after one backbone stage:

    previous heatmaps (K ch.) -> 1x1 conv (K -> C) -> bilinear resize to the stage's output F_s
    fused = op(F_s, that)         op: add (F + P), mul (F * P), cat ([F, P], 2C channels)
    F_s <- 1x1 conv (C or 2C -> C) of fused                 (same shape as F_s: the net goes on)

The temporal-level search space per non-key frame is fusion stage x fusion op (``(N_S x
N_O)^T`` in all), searched jointly with each frame's spatial sub-net (computation
allocation). ``fusion: null`` is a frame net without fusion (the paper's Fig. 6a baseline).

A fresh fusion module is the identity (post conv = identity, the mul branch's pre conv
gives 1, the cat branch's second half is 0), so a T-ViPNet initialised from an S-ViPNet
starts as that S-ViPNet and learns what the heatmaps add.

The previous heatmaps are warped into the current crop first (:func:`warp_heatmaps`):
each frame is cropped around its own person box, so the same image point sits at another
heatmap pixel in each frame's crop.

Arch JSON of a whole video model (``best_video_arch.json``)::

    {"space": "vipnas-video",
     "key": {... an S-ViPNAS arch (space vipnas-resnet or vipnas-mobilenetv3) ...},
     "frames": [{"arch": {... a ViPNAS arch of the same space ...}, "fusion": {"stage": 2, "op": "cat"}},
                ... T entries, frame t+1 ... t+T]}
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from posenas.errors import PosenasError
from posenas.spaces import elastic as E
from posenas.spaces.archfields import check_int_choice, check_list, check_object, check_str_choice
from posenas.spaces.vipnas import (SPACES, Choices, ViPNASArch, ViPNASSupernet, derive, in_choices, largest_arch,
                                   parse_choices,
                                   make_arch, sample_arch, smallest_arch)

FUSION_OPS = ("add", "mul", "cat")
#: Fusion after stage 1..4 (the paper's F1 ... F4); a space with more stages allows those too.
FUSION_STAGES = (1, 2, 3, 4)
SPACE = "vipnas-video"


# ----------------------------------------------------------------------------- arch

@dataclass(frozen=True)
class Fusion:
    stage: int  # 1-based: fuse into the output of this backbone stage
    op: str

    def to_json(self) -> dict:
        return {"stage": self.stage, "op": self.op}

    @classmethod
    def from_json(cls, data: Any, where: str, num_stages: int) -> "Fusion":
        data = check_object(data, where, ("stage", "op"), required=("stage", "op"))
        return cls(check_int_choice(data["stage"], f"{where}.stage", tuple(range(1, num_stages + 1))),
                   check_str_choice(data["op"], f"{where}.op", FUSION_OPS))


@dataclass(frozen=True)
class FrameArch:
    """One non-key frame's net: a spatial sub-net and its fusion (None: a plain single-image net)."""

    spatial: ViPNASArch
    fusion: Fusion | None

    def to_json(self) -> dict:
        return {"arch": self.spatial.to_json(), "fusion": self.fusion.to_json() if self.fusion else None}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "FrameArch":
        data = check_object(data, where, ("arch", "fusion"), required=("arch", "fusion"))
        spatial = make_arch(data["arch"], f"{where}.arch")
        fusion = None if data["fusion"] is None else Fusion.from_json(
            data["fusion"], f"{where}.fusion", len(spatial.stages))
        return cls(spatial, fusion)


@dataclass(frozen=True)
class VideoArch:
    """A whole video model: the key frame's S-ViPNet and the T frames' T-ViPNets."""

    key: ViPNASArch
    frames: tuple[FrameArch, ...]
    space: ClassVar[str] = SPACE
    bottom_up: ClassVar[bool] = False
    video: ClassVar[bool] = True

    @property
    def period(self) -> int:
        """Frames per key frame: ``T + 1``."""
        return len(self.frames) + 1

    def to_json(self) -> dict:
        return {"space": SPACE, "key": self.key.to_json(), "frames": [f.to_json() for f in self.frames]}

    @classmethod
    def from_json(cls, data: Any, where: str = "arch") -> "VideoArch":
        data = check_object(data, where, ("space", "key", "frames"), required=("space", "key", "frames"))
        if data["space"] != SPACE:
            raise PosenasError(f"{where}.space: expected {SPACE!r}, got {data['space']!r}")
        key = make_arch(data["key"], f"{where}.key")
        raw = check_list(data["frames"], f"{where}.frames", "a list of frame objects")
        if not raw:
            raise PosenasError(f"{where}.frames: at least one non-key frame (T >= 1)")
        frames = tuple(FrameArch.from_json(f, f"{where}.frames[{i}]") for i, f in enumerate(raw))
        for i, f in enumerate(frames):
            if f.spatial.space_name != key.space_name:
                raise PosenasError(f"{where}.frames[{i}].arch.space: {f.spatial.space_name!r}; the key frame's is "
                                   f"{key.space_name!r} (one space for the whole video model)")
        return cls(key, frames)


# ----------------------------------------------------------------------------- fusion

def fuse(op: str, features: torch.Tensor, heatmaps: torch.Tensor, t: E.Tensors) -> torch.Tensor:
    """The fusion of section 3.3 with tensors ``t`` (``pre.*``, ``post.*``): the one
    computation of the plain module and the supernet's elastic one."""
    p = F.conv2d(heatmaps, t["pre.weight"], t["pre.bias"])
    p = F.interpolate(p, size=features.shape[-2:], mode="bilinear", align_corners=False)
    if op == "add":
        fused = features + p
    elif op == "mul":
        fused = features * p
    else:
        fused = torch.cat([features, p], 1)
    return F.conv2d(fused, t["post.weight"], t["post.bias"])


def _identity_init(pre_w: torch.Tensor, pre_b: torch.Tensor, post_w: torch.Tensor, post_b: torch.Tensor,
                   op: str) -> None:
    """A fresh fusion is the identity on the features (see the module docstring)."""
    with torch.no_grad():
        c = post_w.shape[0]
        post_w.zero_()
        post_w[:, :c, 0, 0] = torch.eye(c)
        post_b.zero_()
        pre_b.fill_(1.0 if op == "mul" else 0.0)
        if op == "cat":
            nn.init.normal_(pre_w, std=0.01)
        else:
            pre_w.zero_()


class TemporalFusion(nn.Module):
    """The plain fusion module for ``channels`` features and ``num_joints`` heatmaps."""

    def __init__(self, num_joints: int, channels: int, op: str):
        super().__init__()
        if op not in FUSION_OPS:
            raise PosenasError(f"fusion op {op!r}: allowed {', '.join(FUSION_OPS)}")
        self.op = op
        self.pre = nn.Conv2d(num_joints, channels, 1)
        self.post = nn.Conv2d(2 * channels if op == "cat" else channels, channels, 1)
        _identity_init(self.pre.weight, self.pre.bias, self.post.weight, self.post.bias, op)

    def forward(self, features: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
        return fuse(self.op, features, heatmaps, {"pre.weight": self.pre.weight, "pre.bias": self.pre.bias,
                                                 "post.weight": self.post.weight, "post.bias": self.post.bias})


class ElasticFusion(nn.Module):
    """The supernet's fusion module of one (stage, op): weights of the stage's widest
    features, the first ``C`` used (for cat: the first ``C`` of each half of the input)."""

    def __init__(self, num_joints: int, max_channels: int, op: str):
        super().__init__()
        self.op, self.max_channels = op, max_channels
        self.pre = E.Holder(max_channels, num_joints, 1, 1, bias=max_channels)
        self.post = E.Holder(max_channels, (2 if op == "cat" else 1) * max_channels, 1, 1, bias=max_channels)
        _identity_init(self.pre.weight, self.pre.bias, self.post.weight, self.post.bias, op)

    def active_tensors(self, channels: int) -> E.Tensors:
        c, m = channels, self.max_channels
        post = self.post.weight[:c]
        post = torch.cat([post[:, :c], post[:, m:m + c]], 1) if self.op == "cat" else post[:, :c]
        return {"pre.weight": self.pre.weight[:c], "pre.bias": self.pre.bias[:c],
                "post.weight": post, "post.bias": self.post.bias[:c]}

    def forward(self, features: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
        return fuse(self.op, features, heatmaps, self.active_tensors(features.shape[1]))


# ----------------------------------------------------------------------------- plain nets

class TemporalNet(nn.Module):
    """A T-ViPNet: the plain net of a :class:`FrameArch` (``forward(image, previous heatmaps)``;
    with no fusion the heatmaps are ignored). State-dict names: ``backbone.*``, ``head.*`` as
    in :func:`posenas.spaces.vipnas.derive`, and ``fusion.*``."""

    def __init__(self, arch: FrameArch, num_joints: int):
        super().__init__()
        base = derive(arch.spatial, num_joints)
        self.backbone, self.head, self.stride = base.backbone, base.head, base.stride
        self.arch = arch
        f = arch.fusion
        self.fusion = TemporalFusion(num_joints, arch.spatial.stages[f.stage - 1].width, f.op) if f else None

    def forward(self, x: torch.Tensor, heatmaps: torch.Tensor | None = None) -> torch.Tensor:
        bb = self.backbone
        x = bb.pool(bb.stem(x))
        for i, stage in enumerate(bb.stages, 1):
            x = stage(x)
            if self.fusion is not None and i == self.arch.fusion.stage:
                if heatmaps is None:
                    raise PosenasError("a T-ViPNet with fusion needs the previous frame's heatmaps")
                x = self.fusion(x, heatmaps)
        return self.head(x)


class VideoPoseModel(nn.Module):
    """The whole video model of a :class:`VideoArch`: ``key`` (the S-ViPNet, a plain
    top-down model: ``forward(image)`` runs it, so a video checkpoint also runs on images) and
    ``frames`` (the T-ViPNets). :func:`frame_fn` gives the net of a position in the period."""

    def __init__(self, arch: VideoArch, num_joints: int):
        super().__init__()
        self.arch = arch
        self.key = derive(arch.key, num_joints)
        self.frames = nn.ModuleList(TemporalNet(f, num_joints) for f in arch.frames)
        self.stride = self.key.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.key(x)

    def frame_nets(self) -> list[nn.Module]:
        """The T-ViPNets in frame order (what :mod:`posenas.engine.video` propagates through)."""
        return list(self.frames)


def build_video_model(arch: VideoArch, num_joints: int) -> VideoPoseModel:
    """The registry's build function (:data:`posenas.arch.ARCH_SPACES`)."""
    return VideoPoseModel(arch, num_joints)


# ----------------------------------------------------------------------------- supernet

class TemporalSupernet(ViPNASSupernet):
    """The one weight-sharing supernet of every T-ViPNet (section 3.4.2): a ViPNAS supernet
    plus one :class:`ElasticFusion` per (stage, op). ``set_frame(frame)`` selects a sub-net
    and its fusion; ``forward(x, heatmaps)`` runs it."""

    def __init__(self, space_name: str, choices: Choices | None = None, num_joints: int = 17,
                 stages: Sequence[int] = FUSION_STAGES, ops: Sequence[str] = FUSION_OPS):
        super().__init__(space_name, choices, num_joints)
        n = len(self.definition.strides)
        self.fusion_stages, self.fusion_ops = check_fusion_choices(stages, ops, n, "fusion choices")
        self.fusions = nn.ModuleDict({f"{s}-{op}": ElasticFusion(num_joints, max(self.choices.stages[s - 1].widths), op)
                                      for s in self.fusion_stages for op in self.fusion_ops})
        self.fusion: Fusion | None = None

    def set_frame(self, frame: FrameArch) -> None:
        f = frame.fusion
        if f is not None and (f.stage not in self.fusion_stages or f.op not in self.fusion_ops):
            raise PosenasError(f"fusion {f.to_json()}: not in this supernet (stages {list(self.fusion_stages)}, "
                               f"ops {list(self.fusion_ops)})")
        self.set_active(frame.spatial)
        self.fusion = f

    def forward(self, x: torch.Tensor, heatmaps: torch.Tensor | None = None) -> torch.Tensor:
        f = self.fusion
        if f is None:
            return self.run(x)
        if heatmaps is None:
            raise PosenasError("a T-ViPNet with fusion needs the previous frame's heatmaps")
        module = self.fusions[f"{f.stage}-{f.op}"]
        return self.run(x, lambda i, feats: module(feats, heatmaps) if i == f.stage else feats)

    def active_state_dict(self) -> E.Tensors:
        out = super().active_state_dict()
        f = self.fusion
        if f is not None:
            width = self.arch.stages[f.stage - 1].width
            out.update(E.prefixed("fusion", self.fusions[f"{f.stage}-{f.op}"].active_tensors(width)))
        return out


def check_fusion_choices(stages: Sequence[int], ops: Sequence[str], num_stages: int, where: str
                         ) -> tuple[tuple[int, ...], tuple[str, ...]]:
    stages = tuple(check_int_choice(s, f"{where}.stages[{i}]", tuple(range(1, num_stages + 1)))
                   for i, s in enumerate(check_list(list(stages), f"{where}.stages", "stage numbers")))
    ops = tuple(check_str_choice(o, f"{where}.ops[{i}]", FUSION_OPS)
                for i, o in enumerate(check_list(list(ops), f"{where}.ops", "fusion ops")))
    if not stages or not ops:
        raise PosenasError(f"{where}: at least one fusion stage and one op")
    return stages, ops


def derive_frame(supernet: TemporalSupernet, frame: FrameArch) -> TemporalNet:
    """The plain T-ViPNet of ``frame`` with the supernet's weights (a copy)."""
    net = TemporalNet(frame, supernet.num_joints)
    supernet.set_frame(frame)
    with torch.no_grad():
        net.load_state_dict({k: v.detach().clone() for k, v in supernet.active_state_dict().items()})
    return net


# ----------------------------------------------------------------------------- propagation supernet

class PropagationModel(nn.Module):
    """The frozen key net and the temporal supernet, trained together by propagation: what a
    supernet checkpoint of this search holds (``key.*``, ``supernet.*``). ``forward(image)``
    is the key net (the loop's shape checks); :meth:`frame_nets` run the active frame archs."""

    def __init__(self, key_arch: ViPNASArch, supernet: TemporalSupernet, frames: Sequence[FrameArch]):
        super().__init__()
        self.key_arch = key_arch
        self.key = derive(key_arch, supernet.num_joints)
        self.key.requires_grad_(False)
        self.supernet = supernet
        self.frames = tuple(frames)
        self.stride = self.key.stride

    def train(self, mode: bool = True) -> "PropagationModel":
        super().train(mode)
        self.key.eval()  # frozen: its BN statistics too
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.key(x)

    def run_frame(self, frame: FrameArch, x: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
        self.supernet.set_frame(frame)
        return self.supernet(x, heatmaps)

    def frame_nets(self) -> list:
        return [functools.partial(self.run_frame, f) for f in self.frames]

    def video_arch(self, frames: Sequence[FrameArch]) -> VideoArch:
        return VideoArch(self.key_arch, tuple(frames))

    def derived(self, frames: Sequence[FrameArch]) -> VideoPoseModel:
        """The plain video model of ``frames`` with these weights (copies)."""
        model = VideoPoseModel(self.video_arch(frames), self.supernet.num_joints)
        model.key.load_state_dict(self.key.state_dict())
        for net, frame in zip(model.frames, frames):
            net.load_state_dict(derive_frame(self.supernet, frame).state_dict())
        return model.eval()


def video_supernet_fields(supernet: TemporalSupernet, key_arch: ViPNASArch) -> dict:
    """The checkpoint's ``supernet`` field: enough to rebuild a :class:`PropagationModel`."""
    return {"supernet": {"space": SPACE, "spatial": supernet.space_name,
                         "choices": supernet.choices.to_json(SPACES[supernet.space_name].group_key),
                         "fusion_stages": list(supernet.fusion_stages), "fusion_ops": list(supernet.fusion_ops),
                         "key": key_arch.to_json()}}


def build_propagation_model(info: dict, num_joints: int, where: str) -> PropagationModel:
    """:func:`posenas.spaces.supernets.build_supernet` for a ``vipnas-video`` field."""
    spatial = info.get("spatial")
    if spatial not in SPACES:
        raise PosenasError(f"{where}: field 'supernet'.spatial: expected one of {', '.join(SPACES)}, got {spatial!r}")
    choices = parse_choices(SPACES[spatial], info.get("choices"), f"{where}: field 'supernet'.choices")
    key = make_arch(info.get("key"), f"{where}: field 'supernet'.key")
    supernet = TemporalSupernet(spatial, choices, num_joints, info.get("fusion_stages", FUSION_STAGES),
                                info.get("fusion_ops", FUSION_OPS))
    return PropagationModel(key, supernet, ())


def propagation_state(model: PropagationModel, arch: VideoArch, where: str) -> dict[str, torch.Tensor]:
    """:func:`posenas.spaces.supernets.subnet_state` for a video arch: the plain model's weights."""
    if arch.key != model.key_arch:
        raise PosenasError(f"{where}: cannot inherit weights: the arch's key frame net is not this supernet's")
    for i, frame in enumerate(arch.frames):
        outside = in_choices(frame.spatial, model.supernet.choices)
        if outside is not None:
            raise PosenasError(f"{where}: frames[{i}]: not a sub-net of this supernet: {outside}")
    return {k: v.detach().clone() for k, v in model.derived(arch.frames).state_dict().items()}


# ----------------------------------------------------------------------------- sampling

def random_fusion(stages: Sequence[int], ops: Sequence[str], rng: random.Random) -> Fusion:
    return Fusion(rng.choice(list(stages)), rng.choice(list(ops)))


def sandwich_frames(supernet: TemporalSupernet, frames: int, num_random: int, rng: random.Random
                    ) -> list[list[FrameArch]]:
    """The sub-nets of one propagation-training step (section 3.4.2): all frames largest,
    all smallest (their fusions drawn at random), then ``num_random`` sequences in which each
    frame draws its own spatial sub-net and fusion."""
    space, choices = supernet.space_name, supernet.choices
    fs, ops = supernet.fusion_stages, supernet.fusion_ops
    big, small = largest_arch(space, choices), smallest_arch(space, choices)
    out = [[FrameArch(big, random_fusion(fs, ops, rng)) for _ in range(frames)],
           [FrameArch(small, random_fusion(fs, ops, rng)) for _ in range(frames)]]
    for _ in range(num_random):
        out.append([FrameArch(sample_arch(space, choices, rng), random_fusion(fs, ops, rng)) for _ in range(frames)])
    return out


def sample_frames(space: str, choices: Choices, frames: int, stages: Sequence[int], ops: Sequence[str],
                  rng: random.Random, shared: bool = False, fusion: bool = True) -> tuple[FrameArch, ...]:
    """A search candidate's T frame archs; ``shared``: one arch for every frame (the paper's
    Fig. 6b baseline); ``fusion=False``: no fusion (Fig. 6a)."""
    def one() -> FrameArch:
        return FrameArch(sample_arch(space, choices, rng), random_fusion(stages, ops, rng) if fusion else None)

    if shared:
        return (one(),) * frames
    return tuple(one() for _ in range(frames))


# ----------------------------------------------------------------------------- propagation

def heatmap_from_image(matrices: torch.Tensor, stride: Sequence[float]) -> torch.Tensor:
    """(N, 3, 3) image -> heatmap-pixel affines from (N, 2, 3) image -> input-crop ones
    (heatmap coordinates are input coordinates / stride, as the codec encodes them; ``stride``
    along ``(x, y)``, :attr:`HeatmapCodec.stride_xy`)."""
    n = matrices.shape[0]
    m = torch.zeros(n, 3, 3, dtype=torch.float64, device=matrices.device)
    m[:, :2] = matrices.double()
    m[:, 2, 2] = 1.0
    scale = torch.diag(torch.tensor([1.0 / stride[0], 1.0 / stride[1], 1.0], dtype=torch.float64,
                                    device=matrices.device))
    return scale @ m


def warp_heatmaps(heatmaps: torch.Tensor, from_matrix: torch.Tensor, to_matrix: torch.Tensor,
                  stride: Sequence[float]) -> torch.Tensor:
    """Heatmaps of crops ``from_matrix`` (image -> input, (N, 2, 3)) resampled into crops
    ``to_matrix`` (bilinear; outside the source crop: 0). Equal matrices give the input back.
    ``stride``: input pixels per heatmap pixel along ``(x, y)``."""
    n, _, h, w = heatmaps.shape
    src, dst = heatmap_from_image(from_matrix, stride), heatmap_from_image(to_matrix, stride)
    a = src @ torch.linalg.inv(dst)  # destination heatmap pixel -> source heatmap pixel
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64, device=heatmaps.device),
                            torch.arange(w, dtype=torch.float64, device=heatmaps.device), indexing="ij")
    pts = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones(h * w, dtype=torch.float64,
                                                                    device=heatmaps.device)])  # (3, HW)
    mapped = a @ pts  # (N, 3, HW)
    gx = mapped[:, 0] / max(w - 1, 1) * 2 - 1
    gy = mapped[:, 1] / max(h - 1, 1) * 2 - 1
    grid = torch.stack([gx, gy], -1).reshape(n, h, w, 2).to(heatmaps.dtype)
    return F.grid_sample(heatmaps, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


FrameFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def propagate(frame_fns: Sequence[FrameFn], images: torch.Tensor, matrices: torch.Tensor,
              first: torch.Tensor, stride: Sequence[float]) -> list[torch.Tensor]:
    """Section 3.1's propagation over a clip: ``images`` (B, 1 + T', 3, H, W) with each
    frame's crop affine ``matrices`` (B, 1 + T', 2, 3); ``first``: frame 0's heatmaps (the key
    frame's S-ViPNet output); frame t runs ``frame_fns[t - 1](image_t, warped heatmaps of t-1)``.
    Returns the heatmaps of frames 1 ... T'."""
    h, out = first, []
    for t, fn in enumerate(frame_fns, 1):
        h = fn(images[:, t], warp_heatmaps(h, matrices[:, t - 1], matrices[:, t], stride))
        out.append(h)
    return out


def average_gmacs(key_gmacs: float, frame_gmacs: Sequence[float]) -> float:
    """Eq. 3's cost: the mean over the key frame and the T non-key frames."""
    return (key_gmacs + sum(frame_gmacs)) / (1 + len(frame_gmacs))


def frame_macs(frame: FrameArch, num_joints: int, input_size: tuple[int, int]) -> int:
    """MACs of one T-ViPNet forward at batch 1 (fusion included)."""
    from posenas.cost import module_macs

    net = TemporalNet(frame, num_joints)
    h, w = input_size
    stride = net.stride

    class _Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x, torch.zeros(1, num_joints, h // stride, w // stride))

    return module_macs(_Both(), torch.zeros(1, 3, h, w))


def load_active_state(supernet: nn.Module, state: E.Tensors) -> None:
    """The inverse of ``supernet.active_state_dict()``: write a plain net's ``state`` into the
    active sub-net's slices (an S-ViPNet's weights initialise the T-ViPNet supernet). Works for
    any slicing the supernet does (width, crop, block-diagonal, band): every floating tensor
    is filled with globally numbered element indices, and the active tensors then say where
    each of their values lives."""
    named = [t for _, t in supernet.named_parameters()] + [b for _, b in supernet.named_buffers()
                                                           if b.is_floating_point()]
    saved = [t.data for t in named]
    offsets = np.cumsum([0] + [t.numel() for t in named])
    try:
        with torch.no_grad():
            for t, start in zip(named, offsets):
                t.data = torch.arange(start, start + t.numel(), dtype=torch.float64, device=t.device).view_as(t)
            index = {k: v.detach().clone() for k, v in supernet.active_state_dict().items() if v.is_floating_point()}
    finally:
        for t, data in zip(named, saved):
            t.data = data
    unknown = sorted(set(state) - set(supernet.active_state_dict()))
    if unknown:
        raise PosenasError(f"state: {unknown[0]!r} is not a tensor of the active sub-net")
    bounds = torch.as_tensor(offsets, dtype=torch.int64)
    with torch.no_grad():
        for name, idx in index.items():
            if name not in state:
                continue
            value = state[name]
            if value.shape != idx.shape:
                raise PosenasError(f"state: {name!r} has shape {tuple(value.shape)}, the sub-net's {tuple(idx.shape)}")
            flat_idx = idx.reshape(-1).round().long().cpu()
            owner = torch.searchsorted(bounds, flat_idx, right=True) - 1
            values = value.reshape(-1)
            for o in owner.unique().tolist():
                sel = owner == o
                named[o].data.view(-1)[(flat_idx[sel] - bounds[o]).to(named[o].device)] = \
                    values[sel.to(values.device)].to(named[o].dtype)
