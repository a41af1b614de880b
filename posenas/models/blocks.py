"""Reusable building blocks: conv-BN-activation, residual blocks, inverted residuals, attention.

Every block takes its shape (channels, kernel, stride, groups, expansion, activation,
attention) as constructor arguments, so the hand-crafted baselines and the search spaces
(ViPNAS, EfficientPose, PNFS, ...) build their networks from the same classes: a network
derived from a supernet is made of these plain modules.

Conventions:

- ``act`` is a name from :data:`ACTIVATIONS` (``None`` means identity).
- ``attention`` is ``None`` or a factory ``channels -> nn.Module`` (e.g.
  ``lambda c: SqueezeExcite(c)`` or ``lambda c: ContextBlock(c, ratio=1 / 16)``); the
  module must keep the input shape.
- Convolutions followed by BN have no bias; padding keeps "same" spatial size
  (``dilation * (kernel - 1) // 2``, so odd kernels at stride 1 keep the size exactly).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

#: Activation names -> constructors. A plain dict, so the set of names is greppable.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "hswish": lambda: nn.Hardswish(inplace=True),
    "hsigmoid": lambda: nn.Hardsigmoid(inplace=True),
    "sigmoid": lambda: nn.Sigmoid(),
    "swish": lambda: nn.SiLU(inplace=True),
    "identity": lambda: nn.Identity(),
}

#: An attention factory: output channels -> a shape-preserving module.
AttentionFactory = Callable[[int], nn.Module]


def make_activation(name: str | None) -> nn.Module:
    """The activation module called ``name`` (``None`` -> identity)."""
    if name is None:
        return nn.Identity()
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}") from None


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of ``divisor`` (MobileNet rule).

    Never goes below ``min_value`` (default ``divisor``) and never rounds down by more
    than 10 %.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def same_padding(kernel: int, dilation: int = 1) -> int:
    return dilation * (kernel - 1) // 2


def deconv_padding(kernel: int) -> tuple[int, int]:
    """``(padding, output_padding)`` for a stride-2 transposed conv that exactly doubles H and W."""
    if kernel == 4:
        return 1, 0
    if kernel == 3:
        return 1, 1
    if kernel == 2:
        return 0, 0
    raise ValueError(f"transposed-conv kernel {kernel} not supported; allowed: 2, 3, 4")


class ConvBNAct(nn.Sequential):
    """``Conv2d -> BatchNorm2d -> activation``; children are named ``conv``, ``bn``, ``act``.

    ``bn=False`` drops the BN (and the conv then has a bias); ``act=None`` drops the
    activation.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1,
                 groups: int = 1, dilation: int = 1, act: str | None = "relu", bn: bool = True,
                 padding: int | None = None):
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv"] = nn.Conv2d(in_channels, out_channels, kernel, stride,
                                   same_padding(kernel, dilation) if padding is None else padding,
                                   dilation=dilation, groups=groups, bias=not bn)
        if bn:
            layers["bn"] = nn.BatchNorm2d(out_channels)
        if act is not None:
            layers["act"] = make_activation(act)
        super().__init__(layers)
        self.in_channels, self.out_channels = in_channels, out_channels


class DeconvBNAct(nn.Sequential):
    """Stride-2 ``ConvTranspose2d (no bias) -> BatchNorm2d -> activation``: doubles H and W.

    ``kernel`` 4 (padding 1), 3 (padding 1, output padding 1) or 2 (padding 0).
    Children are named ``deconv``, ``bn``, ``act``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 4, groups: int = 1,
                 act: str | None = "relu"):
        padding, output_padding = deconv_padding(kernel)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["deconv"] = nn.ConvTranspose2d(in_channels, out_channels, kernel, stride=2, padding=padding,
                                              output_padding=output_padding, groups=groups, bias=False)
        layers["bn"] = nn.BatchNorm2d(out_channels)
        if act is not None:
            layers["act"] = make_activation(act)
        super().__init__(layers)
        self.in_channels, self.out_channels = in_channels, out_channels


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global average pool -> 1x1 reduce -> act -> 1x1 expand -> gate -> scale.

    The squeeze width is ``squeeze_channels`` if given, else
    ``make_divisible(channels / reduction, divisor)`` (MobileNetV3 uses reduction 4,
    divisor 8, ``gate="hsigmoid"``; SENet uses reduction 16, ``divisor=1``).
    """

    def __init__(self, channels: int, reduction: float = 4, squeeze_channels: int | None = None,
                 act: str = "relu", gate: str = "sigmoid", divisor: int = 8):
        super().__init__()
        if squeeze_channels is None:
            squeeze_channels = make_divisible(channels / reduction, divisor, min_value=1 if divisor == 1 else None)
        self.channels, self.squeeze_channels = channels, squeeze_channels
        self.reduce = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = make_activation(act)
        self.expand = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = make_activation(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.gate(self.expand(self.act(self.reduce(s))))
        return x * s


class ContextBlock(nn.Module):
    """Global-context block (GCNet, channel-add fusion): ``x + transform(attention_pool(x))``.

    Attention pooling: a 1x1 conv to one channel, softmax over H*W, weighted sum of x.
    Transform: 1x1 conv to ``round(channels * ratio)`` -> LayerNorm -> ReLU -> 1x1 conv back.
    The last conv starts at zero, so a fresh block is the identity (as in GCNet).
    """

    def __init__(self, channels: int, ratio: float = 1 / 16):
        super().__init__()
        planes = max(1, int(round(channels * ratio)))
        self.channels, self.planes = channels, planes
        self.mask = nn.Conv2d(channels, 1, 1)
        self.transform = nn.Sequential(OrderedDict([
            ("reduce", nn.Conv2d(channels, planes, 1)),
            ("norm", nn.LayerNorm([planes, 1, 1])),
            ("act", nn.ReLU(inplace=True)),
            ("expand", nn.Conv2d(planes, channels, 1)),
        ]))
        self.post_init()

    def post_init(self) -> None:
        """Re-apply the block's own init after a generic initialiser has run over it."""
        nn.init.zeros_(self.transform.expand.weight)
        nn.init.zeros_(self.transform.expand.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        weights = torch.softmax(self.mask(x).view(n, 1, h * w), dim=-1)            # (N, 1, HW)
        context = torch.bmm(x.view(n, c, h * w), weights.transpose(1, 2))           # (N, C, 1)
        return x + self.transform(context.view(n, c, 1, 1))


class Resample(nn.Module):
    """Branch ``source`` brought to branch ``target``'s scale and width (HRNet's fuse layers).

    ``widths``: channels per branch, branch b at stride ``2**b`` relative to branch 0.
    Down (``source < target``, k = target - source): k stride-2 3x3 conv-BN, ReLU between
    them and none after the last; the first k - 1 keep the source width, the last maps to
    the target's. Up (``source > target``): a 1x1 conv-BN to the target width, then nearest
    up-sampling to ``size``. Same branch: the identity. Used by HRNet's fuse layers and by
    AutoPose's aggregation cells.
    """

    def __init__(self, widths: Sequence[int], source: int, target: int):
        super().__init__()
        self.up = source > target
        if source == target:
            self.body: nn.Module = nn.Identity()
        elif self.up:
            self.body = ConvBNAct(widths[source], widths[target], 1, act=None)
        else:
            steps = target - source
            self.body = nn.Sequential(*[
                ConvBNAct(widths[source], widths[target] if k == steps - 1 else widths[source], 3, 2,
                          act=None if k == steps - 1 else "relu") for k in range(steps)])

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        y = self.body(x)
        return F.interpolate(y, size=size, mode="nearest") if self.up else y


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Identity when shapes match, else a strided 1x1 conv + BN (ResNet option B)."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return ConvBNAct(in_channels, out_channels, 1, stride, act=None)


class BasicBlock(nn.Module):
    """ResNet basic block: ``k x k conv-BN-act -> k x k conv-BN (-> attention)``, plus shortcut, then act.

    The stride is on the first conv; ``groups`` applies to both convs.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel: int = 3,
                 groups: int = 1, act: str = "relu", attention: AttentionFactory | None = None):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.conv1 = ConvBNAct(in_channels, out_channels, kernel, stride, groups=groups, act=act)
        self.conv2 = ConvBNAct(out_channels, out_channels, kernel, 1, groups=groups, act=None)
        self.attention = attention(out_channels) if attention is not None else nn.Identity()
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.attention(self.conv2(self.conv1(x))) + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck: ``1x1 -> k x k (stride, groups) -> 1x1 (-> attention)``, plus shortcut, then act.

    The middle width is ``mid_channels`` if given, else ``out_channels // expansion``
    (ResNet: expansion 4; ViPNAS-ResNet: expansion 1). The stride sits on the middle
    conv (the "ResNet v1.5" placement used by PyTorch and MMPose).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel: int = 3,
                 groups: int = 1, expansion: float = 4, mid_channels: int | None = None,
                 act: str = "relu", attention: AttentionFactory | None = None):
        super().__init__()
        mid = mid_channels if mid_channels is not None else max(1, int(out_channels // expansion))
        self.in_channels, self.out_channels, self.mid_channels, self.stride = in_channels, out_channels, mid, stride
        self.conv1 = ConvBNAct(in_channels, mid, 1, act=act)
        self.conv2 = ConvBNAct(mid, mid, kernel, stride, groups=groups, act=act)
        self.conv3 = ConvBNAct(mid, out_channels, 1, act=None)
        self.attention = attention(out_channels) if attention is not None else nn.Identity()
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.conv2(self.conv1(x)))
        return self.act(self.attention(y) + self.shortcut(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual (MBConv): ``1x1 expand -> k x k depthwise (stride) (-> attention) -> 1x1 project``.

    Hidden width: ``hidden_channels`` if given, else ``round(in_channels * expansion)``.
    The expand conv is omitted when ``expand`` is False; by default (``None``) it is
    omitted exactly when the hidden width equals the input width (MobileNetV2's first
    block, MMPose's rule). ``dw_groups`` defaults to the hidden width (a true depthwise
    conv); ViPNAS searches it. ``attention`` acts on the hidden features after the
    depthwise conv, where MobileNetV3 puts its squeeze-and-excitation. The projection is
    linear (no activation). A residual connection is used when ``stride == 1`` and
    ``in_channels == out_channels``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expansion: float = 6,
                 kernel: int = 3, act: str = "relu6", hidden_channels: int | None = None,
                 dw_groups: int | None = None, attention: AttentionFactory | None = None,
                 expand: bool | None = None):
        super().__init__()
        hidden = hidden_channels if hidden_channels is not None else int(round(in_channels * expansion))
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.hidden_channels = hidden
        self.use_residual = stride == 1 and in_channels == out_channels
        if expand is None:
            expand = hidden != in_channels
        self.expand = ConvBNAct(in_channels, hidden, 1, act=act) if expand else nn.Identity()
        self.depthwise = ConvBNAct(hidden, hidden, kernel, stride, groups=dw_groups or hidden, act=act)
        self.attention = attention(hidden) if attention is not None else nn.Identity()
        self.project = ConvBNAct(hidden, out_channels, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.attention(self.depthwise(self.expand(x))))
        return x + y if self.use_residual else y


def init_backbone_weights(module: nn.Module) -> None:
    """Backbone init as in SimpleBaseline / torchvision: conv kaiming-normal (fan_out, ReLU),
    conv biases 0, norm weights 1 and biases 0, linear normal(0, 0.01).

    Afterwards any submodule with a ``post_init()`` method (e.g. :class:`ContextBlock`)
    re-applies its own init.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in module.modules():
        post = getattr(m, "post_init", None)
        if callable(post):
            post()

