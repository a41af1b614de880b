"""Elastic layers for weight-sharing supernets (Once-for-All / BigNAS / ViPNAS).

Each layer stores the weights of its largest setting and, per forward, uses the slice
that the active sub-net selects:

- width: the first ``out`` filters and the first ``in`` input channels;
- kernel: the centre ``k x k`` crop of the largest kernel;
- groups: the block-diagonal part of the (virtual) dense weight — group ``j`` of ``g``
  connects output channels ``j*out/g ...`` with input channels ``j*in/g ...``, exactly
  the channels a plain grouped ``nn.Conv2d`` connects;
- BatchNorm / LayerNorm: the first ``c`` entries of the affine weights and running stats.

A layer's setting is set with ``set_active(...)`` before the forward pass.
``active_tensors()`` returns the sliced tensors under the state-dict names of the plain
block (:mod:`posenas.models.blocks`) the layer stands for, so a derived plain network
loads a supernet's weights with ``load_state_dict`` and computes the same function.

Square grouped convs (``in == out``, e.g. a depthwise conv) whose group width (channels
per group) never exceeds ``max_group_width`` store only the band of the dense weight that
any such block-diagonal can touch (``|in - out| < max_group_width``): a MobileNetV3
supernet with 1920 hidden channels then holds ``1920 x 15`` kernels instead of
``1920 x 1920``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from posenas.models.blocks import deconv_padding, make_activation

Tensors = dict[str, torch.Tensor]


def block_diagonal(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The grouped-conv weight ``(a, b / groups, ...)`` made of the ``groups`` diagonal
    blocks of a dense weight ``(a, b, ...)`` (conv: ``a`` = out, ``b`` = in; transposed
    conv: ``a`` = in, ``b`` = out)."""
    if groups == 1:
        return weight
    a, b, *rest = weight.shape
    blocks = weight.reshape(groups, a // groups, groups, b // groups, *rest).diagonal(dim1=0, dim2=2)
    return blocks.movedim(-1, 0).reshape(a, b // groups, *rest)


def centre_crop(weight: torch.Tensor, kernel: int) -> torch.Tensor:
    """The centre ``kernel x kernel`` of the last two dimensions."""
    k = weight.shape[-1]
    if kernel == k:
        return weight
    o = (k - kernel) // 2
    return weight[..., o : o + kernel, o : o + kernel]


def prefixed(prefix: str, tensors: Tensors) -> Tensors:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


class Holder(nn.Module):
    """Parameter storage only (``weight`` and optional ``bias``), so state-dict names match
    the plain layer's (``conv.weight``, ``reduce.bias``, ...)."""

    def __init__(self, *shape: int, bias: int | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(*shape))
        self.bias = nn.Parameter(torch.zeros(bias)) if bias is not None else None


def _bn_tensors(bn: nn.BatchNorm2d, c: int) -> Tensors:
    return {"weight": bn.weight[:c], "bias": bn.bias[:c], "running_mean": bn.running_mean[:c],
            "running_var": bn.running_var[:c], "num_batches_tracked": bn.num_batches_tracked}


def _batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    # The running-stat slices are views: the batch statistics update the supernet's buffers.
    return F.batch_norm(x, bn.running_mean[:c], bn.running_var[:c], bn.weight[:c], bn.bias[:c],
                        bn.training, bn.momentum, bn.eps)


class ElasticConvBN(nn.Module):
    """Elastic ``Conv2d (-> BN) (-> act)``: stands for :class:`~posenas.models.blocks.ConvBNAct`
    (names ``conv``, ``bn``); with ``bn=False`` the conv has a bias (a plain ``nn.Conv2d``).

    Active setting: ``(in_channels, out_channels, kernel, groups)``. Padding is
    ``kernel // 2`` (odd kernels).
    """

    def __init__(self, max_in: int, max_out: int, max_kernel: int = 1, stride: int = 1, act: str | None = "relu",
                 bn: bool = True, max_group_width: int | None = None):
        super().__init__()
        self.max_in, self.max_out, self.max_kernel, self.stride = max_in, max_out, max_kernel, stride
        self.banded = max_group_width is not None and max_in == max_out and max_group_width < max_in
        self.band = max_group_width if self.banded else None
        width = 2 * max_group_width - 1 if self.banded else max_in
        self.conv = Holder(max_out, width, max_kernel, max_kernel, bias=None if bn else max_out)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        self.bn = nn.BatchNorm2d(max_out) if bn else None
        self.act = make_activation(act)
        self.active = (max_in, max_out, max_kernel, 1)

    def set_active(self, in_channels: int, out_channels: int, kernel: int = 1, groups: int = 1) -> None:
        if not (in_channels <= self.max_in and out_channels <= self.max_out and kernel <= self.max_kernel):
            raise ValueError(f"setting {in_channels}->{out_channels} k{kernel} exceeds the layer's "
                             f"{self.max_in}->{self.max_out} k{self.max_kernel}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{groups} groups do not divide {in_channels}->{out_channels} channels")
        if self.banded and (in_channels != out_channels or in_channels // groups > self.band):
            raise ValueError(f"group width {in_channels // groups} exceeds the stored band of {self.band}")
        self.active = (in_channels, out_channels, kernel, groups)

    def weight(self) -> torch.Tensor:
        cin, cout, k, g = self.active
        w = self.conv.weight
        if self.banded:
            width = cin // g
            rows = torch.arange(cout, device=w.device)
            cols = (rows // width * width)[:, None] + torch.arange(width, device=w.device)  # absolute input channels
            w = w[rows[:, None], cols - rows[:, None] + self.band - 1]  # (out, in/g, K, K)
        else:
            w = block_diagonal(w[:cout, :cin], g)
        return centre_crop(w, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, cout, k, g = self.active
        bias = self.conv.bias[:cout] if self.conv.bias is not None else None
        y = F.conv2d(x, self.weight(), bias, self.stride, k // 2, 1, g)
        if self.bn is not None:
            y = _batch_norm(self.bn, y)
        return self.act(y)

    def active_tensors(self) -> Tensors:
        cout = self.active[1]
        out = {"conv.weight": self.weight()}
        if self.conv.bias is not None:
            out["conv.bias"] = self.conv.bias[:cout]
        if self.bn is not None:
            out.update(prefixed("bn", _bn_tensors(self.bn, cout)))
        return out


class ElasticDeconvBN(nn.Module):
    """Elastic stride-2 ``ConvTranspose2d -> BN -> act`` (:class:`~posenas.models.blocks.DeconvBNAct`,
    names ``deconv``, ``bn``); kernels 4 or 2 (the centre crop of 4), groups block-diagonal."""

    def __init__(self, max_in: int, max_out: int, max_kernel: int = 4, act: str | None = "relu"):
        super().__init__()
        self.max_in, self.max_out, self.max_kernel = max_in, max_out, max_kernel
        self.deconv = Holder(max_in, max_out, max_kernel, max_kernel)
        nn.init.normal_(self.deconv.weight, std=0.001)  # SimpleBaseline's head init
        self.bn = nn.BatchNorm2d(max_out)
        self.act = make_activation(act)
        self.active = (max_in, max_out, max_kernel, 1)

    def set_active(self, in_channels: int, out_channels: int, kernel: int, groups: int = 1) -> None:
        if not (in_channels <= self.max_in and out_channels <= self.max_out and kernel <= self.max_kernel):
            raise ValueError(f"setting {in_channels}->{out_channels} k{kernel} exceeds the layer's "
                             f"{self.max_in}->{self.max_out} k{self.max_kernel}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{groups} groups do not divide {in_channels}->{out_channels} channels")
        self.active = (in_channels, out_channels, kernel, groups)

    def weight(self) -> torch.Tensor:
        cin, cout, k, g = self.active
        return centre_crop(block_diagonal(self.deconv.weight[:cin, :cout], g), k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, g = self.active[2], self.active[3]
        padding, output_padding = deconv_padding(k)
        y = F.conv_transpose2d(x, self.weight(), None, 2, padding, output_padding, g)
        return self.act(_batch_norm(self.bn, y))

    def active_tensors(self) -> Tensors:
        return {"deconv.weight": self.weight(), **prefixed("bn", _bn_tensors(self.bn, self.active[1]))}


class ElasticSqueezeExcite(nn.Module):
    """Elastic :class:`~posenas.models.blocks.SqueezeExcite`: the squeeze width follows the
    active channel count through ``squeeze(channels)``, the same rule the plain block uses."""

    def __init__(self, max_channels: int, squeeze: Callable[[int], int], act: str = "relu", gate: str = "sigmoid"):
        super().__init__()
        self.squeeze = squeeze
        s = squeeze(max_channels)
        self.reduce = Holder(s, max_channels, 1, 1, bias=s)
        self.expand = Holder(max_channels, s, 1, 1, bias=max_channels)
        for h in (self.reduce, self.expand):
            nn.init.kaiming_normal_(h.weight, mode="fan_out", nonlinearity="relu")
        self.act, self.gate = make_activation(act), make_activation(gate)

    def active_tensors(self, channels: int) -> Tensors:
        s = self.squeeze(channels)
        return {"reduce.weight": self.reduce.weight[:s, :channels], "reduce.bias": self.reduce.bias[:s],
                "expand.weight": self.expand.weight[:channels, :s], "expand.bias": self.expand.bias[:channels]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.active_tensors(x.shape[1])
        s = x.mean((2, 3), keepdim=True)
        s = self.act(F.conv2d(s, t["reduce.weight"], t["reduce.bias"]))
        return x * self.gate(F.conv2d(s, t["expand.weight"], t["expand.bias"]))


class ElasticContextBlock(nn.Module):
    """Elastic :class:`~posenas.models.blocks.ContextBlock` (GCNet, channel add); the
    transform width follows the active channel count through ``planes(channels)``."""

    def __init__(self, max_channels: int, planes: Callable[[int], int]):
        super().__init__()
        self.planes = planes
        p = planes(max_channels)
        self.mask = Holder(1, max_channels, 1, 1, bias=1)
        self.transform = nn.Module()
        self.transform.reduce = Holder(p, max_channels, 1, 1, bias=p)
        self.transform.norm = nn.LayerNorm([p, 1, 1])
        self.transform.expand = Holder(max_channels, p, 1, 1, bias=max_channels)
        for h in (self.mask, self.transform.reduce):
            nn.init.kaiming_normal_(h.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.transform.expand.weight)  # a fresh block is the identity, as in GCNet
        nn.init.zeros_(self.transform.expand.bias)

    def active_tensors(self, channels: int) -> Tensors:
        p, tr = self.planes(channels), self.transform
        return {"mask.weight": self.mask.weight[:, :channels], "mask.bias": self.mask.bias,
                "transform.reduce.weight": tr.reduce.weight[:p, :channels], "transform.reduce.bias": tr.reduce.bias[:p],
                "transform.norm.weight": tr.norm.weight[:p], "transform.norm.bias": tr.norm.bias[:p],
                "transform.expand.weight": tr.expand.weight[:channels, :p],
                "transform.expand.bias": tr.expand.bias[:channels]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        t = self.active_tensors(c)
        p = t["transform.norm.weight"].shape[0]
        weights = torch.softmax(F.conv2d(x, t["mask.weight"], t["mask.bias"]).view(n, 1, h * w), dim=-1)
        context = torch.bmm(x.view(n, c, h * w), weights.transpose(1, 2)).view(n, c, 1, 1)
        y = F.conv2d(context, t["transform.reduce.weight"], t["transform.reduce.bias"])
        y = F.relu(F.layer_norm(y, [p, 1, 1], t["transform.norm.weight"], t["transform.norm.bias"],
                                self.transform.norm.eps))
        return x + F.conv2d(y, t["transform.expand.weight"], t["transform.expand.bias"])


class ElasticAttention(nn.Module):
    """The attention choices of a block (``none`` / ``se`` / ``gc``); the active one acts
    on the block's output and exports under the plain block's ``attention.`` names."""

    def __init__(self, choices: tuple[str, ...], max_channels: int, se: Callable[[int], nn.Module],
                 gc: Callable[[int], nn.Module]):
        super().__init__()
        self.options = nn.ModuleDict()
        if "se" in choices:
            self.options["se"] = se(max_channels)
        if "gc" in choices:
            self.options["gc"] = gc(max_channels)
        self.active, self.channels = "none", max_channels

    def set_active(self, kind: str, channels: int) -> None:
        if kind != "none" and kind not in self.options:
            raise ValueError(f"attention {kind!r} is not in this supernet (has: none, {', '.join(self.options)})")
        self.active, self.channels = kind, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.active == "none" else self.options[self.active](x)

    def active_tensors(self) -> Tensors:
        return {} if self.active == "none" else self.options[self.active].active_tensors(self.channels)


def gc_planes(channels: int) -> int:
    """GCNet transform width with ViPNAS's ratio ``max(1/16, 16/channels)`` (MMPose's S-ViPNAS)."""
    return max(1, int(round(channels * max(1 / 16, 16 / channels))))

