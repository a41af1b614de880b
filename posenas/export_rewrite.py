"""Export-time rewrites: the same function as a graph ONNX Runtime runs faster on one CPU thread.

:func:`rewrite_for_export` returns a rewritten *copy* of an eval-mode plain model (the
original is untouched); :func:`posenas.export.onnx_bytes` exports that copy by default.
Every rewrite is an exact re-expression of the same arithmetic (checked in float64 on
every export), so the graph keeps the ≤ 1e-4 × peak parity with the original model.

Why: ORT's CPU convolutions are fast only in its NCHWc layout (channel blocks of 8 on
AVX2, 16 on AVX-512; :func:`nchwc_block` probes it), which takes dense convs, depthwise
convs and grouped convs whose channels per group are a multiple of the block. Any other
grouped conv falls back to per-group im2col plus tiny GEMMs, and a few ops (a broadcasting
Mul, ReduceMean, ConvTranspose) run outside NCHWc. The rules, from ORT's per-node profile
of S-ViPNAS-MobileNetV3 / -ResNet50 and side-by-side layer timings (2-core AMD EPYC, AVX2,
31-38 GMAC/s single-thread FP32 matmul; docs/benchmarks.md, "Inference speed of exported
models"), per grouped conv of ``c`` channels per group, ``k x k``, fed by a 1x1 conv of
``cin`` inputs at stride ``s``:

- ``c`` = 1 or a multiple of the block: left alone (NCHWc already; 8 per group runs at
  ~14 GMAC/s, and no rewrite measured faster: 8 depthwise convs 1.36x, merging into 16
  or 32 per group 1.05x / 1.4x slower).
- ``c`` divides the block (2, 4): 1.9-4 GMAC/s as is (ORT's per-node profile). Either
  *depthwise sum* (:class:`ExpandedDepthwiseSum`: ``c`` rotated copies of the 1x1
  producer, ``c`` depthwise convs, summed; 2.6-3.0x faster for 2 per group 7x7) or
  *merge* (:func:`merge_groups`: block-diagonal groups of 8, 8/c times the MACs in
  NCHWc; 1.45-2.05x faster). The sum costs ``(c-1) cin s²`` extra producer MACs per
  output channel and pixel at dense speed, merging ``k² (8 - c)`` extra grouped MACs at
  depthwise speed, about half as fast: the sum is chosen when
  ``(c-1) cin s³ < 2 k² (B - c)`` (B the block; the faster of the two on all 13 layers
  measured on AVX2 and all 8 of S-ViPNAS-MobileNetV3 on AVX-512, where a stride-2 layer's
  sum measured slower than the s² form predicted: its strided depthwise convs run at about
  half the unit-stride speed, hence s³; one, 4 per group 3x3 from 24 inputs, sits on the
  boundary), merging otherwise and wherever there is no 1x1 producer to copy.
- other ``c`` (ViPNAS-ResNet's 5, 10, 19, 38, ...): *pad* (:func:`pad_groups`) every
  group to the next multiple of 8 with zero channels made by the producer and ignored by
  the consumer, when that multiplies the grouped MACs by at most 1.6 (19 -> 24: 1.2x
  faster, 38 -> 40: 1.2x, 20 -> 24: 1.4x; 12 -> 16 and 6 -> 8, 1.78x the MACs, 1.0x and
  1.2x; 10 -> 16 and 5 -> 8, 2.56x the MACs, 1.3x and 1.1x slower, so left alone).
- depthwise stride-2 transposed convs (ViPNAS heads): ORT's ConvTranspose ran them at
  ~1 GMAC/s; as four depthwise convs, one per output phase, interleaved
  (:class:`SubpixelDeconv`), with the head's last BN, activation and 1x1 conv moved before
  the interleave, the MobileNetV3 head ran 2.1x faster. Grouped transposed convs stay: ORT's
  ConvTranspose beat grouped phase convs 2x. Dense ones (the SimpleBaseline and EfficientPose
  heads, 55-65 % of the limit in ORT) as ONE 2x2 conv making all four phases
  (:class:`SubpixelDenseDeconv`, kind "deconv-dense") ran that conv 1.6x faster, but the
  interleaving transposes ate the gain: whole models 0.91-1.04x, so it is not a default.
- SE blocks: mean as an average pool and the gate spread over H x W before the multiply
  (:class:`PooledSqueezeExcite`), so ORT keeps the tensor in NCHWc instead of reordering
  it out and back (S-ViPNAS-MobileNetV3 3 % faster). The same spreading of a GC block's
  add removed its slow broadcasting Add but cost as much in Resize and reorders (its
  transform has channel counts that are not multiples of 8): not done.
- BatchNorm is folded into the conv before the rewrites that need it; alone it changes
  nothing ORT does not do itself, so a model no other rule applies to is exported as is.
"""

from __future__ import annotations

import copy
import functools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Rewrite:
    """One applied rewrite: the module's qualified name, the rewrite's kind and why it applied."""

    name: str
    kind: str
    detail: str


# ----------------------------------------------------------------------------- batch-norm folding

def fold_bn_into(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> nn.Module:
    """A copy of ``conv`` with eval-mode ``bn`` folded in (weights scaled per output channel, bias added)."""
    inv_std = 1 / torch.sqrt(bn.running_var + bn.eps)
    scale = bn.weight.detach() * inv_std if bn.affine else inv_std
    shift = (bn.bias.detach() if bn.affine else 0) - bn.running_mean * scale
    folded = copy.deepcopy(conv)
    w = conv.weight.detach()
    if isinstance(conv, nn.ConvTranspose2d):  # weight (in, out / groups, kh, kw)
        g = conv.groups
        w = (w.view(g, w.shape[0] // g, w.shape[1], *w.shape[2:]) * scale.view(g, 1, -1, 1, 1)).view_as(w)
    else:
        w = w * scale.view(-1, 1, 1, 1)
    bias = conv.bias.detach() * scale + shift if conv.bias is not None else shift
    folded.weight = nn.Parameter(w.clone())
    folded.bias = nn.Parameter(bias.clone())
    return folded


def fold_batchnorms(model: nn.Module) -> list[Rewrite]:
    """Fold every BatchNorm2d that directly follows a conv inside an ``nn.Sequential`` (in place)."""
    done = []
    for name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        keys = list(seq._modules)
        for a, b in zip(keys, keys[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(bn, nn.BatchNorm2d) \
                    and bn.track_running_stats and bn.running_mean is not None:
                seq._modules[a] = fold_bn_into(conv, bn)
                seq._modules[b] = nn.Identity()
                done.append(Rewrite(f"{name}.{a}" if name else a, "fold-bn", "BatchNorm folded into the conv"))
    return done


# ----------------------------------------------------------------------------- grouped convolutions

def _shift_permutation(channels: int, per_group: int, shift: int) -> torch.Tensor:
    """Channel ``j*c + a`` -> ``j*c + (a + shift) % c``: a rotation inside every group of ``c``."""
    a = torch.arange(channels) % per_group
    return torch.arange(channels) - a + (a + shift) % per_group


class ExpandedDepthwiseSum(nn.Module):
    """``grouped(act(expand(x)))`` with ``c`` channels per group, as ``sum_t dw_t(act(expand_t(x)))``.

    ``expand_t`` is the 1x1 (any) conv with its output channels rotated by ``t`` inside every
    group, ``dw_t`` a depthwise conv holding tap ``(a + t) % c`` of each output channel ``a``:
    output channel ``j*c + a`` sums ``W[j*c+a, b] * x[j*c+b]`` over ``b = (a + t) % c``, exactly the
    grouped conv. ORT runs depthwise and dense convs in NCHWc, and fuses the sums into the
    convs, where a grouped conv of 2 or 4 channels per group falls back to per-group GEMMs.
    """

    def __init__(self, expand: nn.Conv2d, act: nn.Module, grouped: nn.Conv2d):
        super().__init__()
        channels, groups = grouped.out_channels, grouped.groups
        c = channels // groups
        if grouped.in_channels != channels or expand.out_channels != channels or expand.groups != 1:
            raise ValueError("ExpandedDepthwiseSum: needs a dense producer and a square grouped conv")
        self.act = act
        self.expands, self.depthwise = nn.ModuleList(), nn.ModuleList()
        w = grouped.weight.detach()
        a = torch.arange(channels) % c
        for t in range(c):
            perm = _shift_permutation(channels, c, t)
            e = copy.deepcopy(expand)
            e.weight = nn.Parameter(expand.weight.detach()[perm].clone())
            if expand.bias is not None:
                e.bias = nn.Parameter(expand.bias.detach()[perm].clone())
            d = nn.Conv2d(channels, channels, grouped.kernel_size, grouped.stride, grouped.padding, grouped.dilation,
                          groups=channels, bias=t == 0 and grouped.bias is not None)
            d.weight = nn.Parameter(w[torch.arange(channels), (a + t) % c][:, None].clone())
            if d.bias is not None:
                d.bias = nn.Parameter(grouped.bias.detach().clone())
            self.expands.append(e)
            self.depthwise.append(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = None
        for e, d in zip(self.expands, self.depthwise):
            z = d(self.act(e(x)))
            y = z if y is None else y + z
        return y


def merge_groups(conv: nn.Conv2d, per_group: int) -> nn.Conv2d:
    """The grouped ``conv`` with neighbouring groups merged into groups of ``per_group`` channels
    (block-diagonal weights, zeros between the original groups): the same function."""
    c_in, c_out = conv.in_channels // conv.groups, conv.out_channels // conv.groups
    m = per_group // c_in
    if per_group % c_in or conv.groups % m:
        raise ValueError(f"merge_groups: {c_in} channels per group do not merge into {per_group}")
    groups = conv.groups // m
    merged = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                       groups=groups, bias=conv.bias is not None)
    w = conv.weight.new_zeros(conv.out_channels, c_in * m, *conv.kernel_size)
    old = conv.weight.detach()
    for o in range(conv.out_channels):
        k = (o // c_out) % m
        w[o, k * c_in:(k + 1) * c_in] = old[o]
    merged.weight = nn.Parameter(w)
    if conv.bias is not None:
        merged.bias = nn.Parameter(conv.bias.detach().clone())
    return merged


def pad_groups(producer: nn.Conv2d, grouped: nn.Conv2d, consumer: nn.Conv2d, multiple: int = 8
               ) -> tuple[nn.Conv2d, nn.Conv2d, nn.Conv2d]:
    """``producer -> grouped -> consumer`` with every group padded to a multiple of ``multiple``
    channels: the producer makes zero channels (zero weights and bias), the grouped conv
    ignores them and makes zeros, the consumer ignores those. Exact when the activations
    between them map 0 to 0 (ReLU, ReLU6, hard-swish)."""
    groups = grouped.groups
    c = grouped.out_channels // groups
    cp = -(-c // multiple) * multiple
    if grouped.in_channels != grouped.out_channels or producer.groups != 1 or consumer.groups != 1:
        raise ValueError("pad_groups: needs dense producer and consumer around a square grouped conv")
    index = (torch.arange(groups)[:, None] * cp + torch.arange(c)[None]).flatten()  # old channel -> padded slot
    width = groups * cp

    def conv_like(conv: nn.Conv2d, cin: int, cout: int, g: int) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups=g,
                         bias=conv.bias is not None)

    p = conv_like(producer, producer.in_channels, width, 1)
    pw = producer.weight.new_zeros(width, *producer.weight.shape[1:])
    pw[index] = producer.weight.detach()
    p.weight = nn.Parameter(pw)
    if producer.bias is not None:
        pb = producer.bias.new_zeros(width)
        pb[index] = producer.bias.detach()
        p.bias = nn.Parameter(pb)
    g = conv_like(grouped, width, width, groups)
    gw = grouped.weight.new_zeros(width, cp, *grouped.kernel_size)
    gw[index, :c] = grouped.weight.detach()
    g.weight = nn.Parameter(gw)
    if grouped.bias is not None:
        gb = grouped.bias.new_zeros(width)
        gb[index] = grouped.bias.detach()
        g.bias = nn.Parameter(gb)
    q = conv_like(consumer, width, consumer.out_channels, 1)
    qw = consumer.weight.new_zeros(consumer.out_channels, width, *consumer.kernel_size)
    qw[:, index] = consumer.weight.detach()
    q.weight = nn.Parameter(qw)
    if consumer.bias is not None:
        q.bias = nn.Parameter(consumer.bias.detach().clone())
    return p, g, q


# ----------------------------------------------------------------------------- transposed convolutions

class SubpixelDeconv(nn.Module):
    """A stride-2 ``ConvTranspose2d`` as four ordinary convs, one per output phase, interleaved.

    Output pixel ``2m + r`` (per axis) is ``sum_d K_r[d] * x[m + d]`` with ``K_r[d] = w[r + p - 2d]``
    (``p`` the padding): a correlation with a small kernel, so each phase is an ordinary
    (grouped or depthwise) conv that ORT runs in NCHWc, then :func:`interleave`. ``tail``:
    per-pixel modules (activation, 1x1 convs) that follow the transposed conv, applied to each
    phase before the interleave (they commute with it), so fewer channels are interleaved.
    """

    def __init__(self, deconv: nn.ConvTranspose2d, tail: nn.Module | None = None):
        super().__init__()
        if deconv.stride != (2, 2) or deconv.dilation != (1, 1):
            raise ValueError("SubpixelDeconv: stride-2, undilated transposed convs only")
        k, p = deconv.kernel_size[0], deconv.padding[0]
        if deconv.kernel_size != (k, k) or deconv.padding != (p, p):
            raise ValueError("SubpixelDeconv: square kernels and paddings only")
        taps = {r: {d: r + p - 2 * d for d in range(-k, k + 1) if 0 <= r + p - 2 * d < k} for r in (0, 1)}
        reach = max(abs(d) for r in taps for d in taps[r])
        size = 2 * reach + 1
        g = deconv.groups
        cin, cout = deconv.in_channels, deconv.out_channels
        w = deconv.weight.detach()  # (cin, cout / g, k, k)
        # as a conv weight (cout, cin / g, k, k): output o of group j reads inputs of group j
        wc = w.view(g, cin // g, cout // g, k, k).transpose(1, 2).reshape(cout, cin // g, k, k)
        self.phases = nn.ModuleList()
        for ry in (0, 1):
            for rx in (0, 1):
                conv = nn.Conv2d(cin, cout, size, 1, reach, groups=g, bias=deconv.bias is not None)
                kernel = w.new_zeros(cout, cin // g, size, size)
                for dy, ty in taps[ry].items():
                    for dx, tx in taps[rx].items():
                        kernel[:, :, dy + reach, dx + reach] = wc[:, :, ty, tx]
                conv.weight = nn.Parameter(kernel)
                if deconv.bias is not None:
                    conv.bias = nn.Parameter(deconv.bias.detach().clone())
                self.phases.append(conv)
        self.tail = tail if tail is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return interleave(torch.cat([self.tail(conv(x)) for conv in self.phases], 1))


def interleave(phases: torch.Tensor) -> torch.Tensor:
    """Four phases stacked on the channels, (N, 4C, H, W) in order ``2 ry + rx``, as one (N, C, 2H, 2W)
    map, pixel ``(2m + ry, 2n + rx)`` from phase ``(ry, rx)``. Two transposes, each moving one axis of
    size 2 (one ORT Transpose of all three, or a DepthToSpace, measured 3x slower)."""
    n, c4, h, w = phases.shape
    c = c4 // 4
    y = phases.view(n, 2, 2, c, h, w)                               # (N, ry, rx, C, H, W)
    y = y.permute(0, 1, 3, 4, 5, 2).reshape(n, 2, c, h, 2 * w)      # rx innermost: rows of width 2W
    return y.permute(0, 2, 3, 1, 4).reshape(n, c, 2 * h, 2 * w)     # ry between rows


def _phase_taps(kernel: int, padding: int) -> dict[int, dict[int, int]]:
    """Per output phase r (per axis), input offset d -> transposed-conv tap ``r + p - 2d``."""
    return {r: {d: r + padding - 2 * d for d in range(-kernel, kernel + 1) if 0 <= r + padding - 2 * d < kernel}
            for r in (0, 1)}


def replicate_per_phase(tail: nn.Module, phases: int = 4) -> nn.Module:
    """``tail`` (activations, BatchNorm2d, dense 1x1 convs) acting on ``phases`` channel blocks at once:
    its 1x1 convs become grouped convs of ``phases`` groups with the same weights in every group."""
    out = []
    for m in (tail if isinstance(tail, nn.Sequential) else [tail]):
        if isinstance(m, nn.Sequential):
            out.append(replicate_per_phase(m, phases))
        elif isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1 and m.stride == (1, 1):
            conv = nn.Conv2d(m.in_channels * phases, m.out_channels * phases, 1, groups=phases, bias=m.bias is not None)
            conv.weight = nn.Parameter(m.weight.detach().repeat(phases, 1, 1, 1))
            if m.bias is not None:
                conv.bias = nn.Parameter(m.bias.detach().repeat(phases))
            out.append(conv)
        elif isinstance(m, nn.BatchNorm2d):
            bn = copy.deepcopy(m)
            bn.num_features *= phases
            for key in ("weight", "bias"):
                if getattr(m, key) is not None:
                    setattr(bn, key, nn.Parameter(getattr(m, key).detach().repeat(phases)))
            for key in ("running_mean", "running_var"):
                setattr(bn, key, getattr(m, key).repeat(phases))
            out.append(bn)
        elif isinstance(m, (nn.Identity, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.SiLU)):
            out.append(m)
        else:
            raise ValueError(f"replicate_per_phase: {type(m).__name__} is not per pixel")
    return nn.Sequential(*out)


class SubpixelDenseDeconv(nn.Module):
    """A dense stride-2 ``ConvTranspose2d`` as ONE conv making all four output phases, interleaved.

    Kernel 4 (padding 1): each phase reads a 2x2 window, phase 0 at rows ``m-1, m``, phase 1 at
    ``m, m+1``; a 2x2 conv with padding 1 gives every window once, ``(H+1) x (W+1)`` of them,
    for ``4 C_out`` channels: the transposed conv's MACs (x (1 + 1/H)(1 + 1/W)) in one dense NCHWc
    conv. Interleaving the phases in the order (1, 0) and cropping one pixel on each side gives
    the output (in general: phase windows of equal size whose starts differ by 0 or 1). ``tail``:
    per-pixel modules run on all phases before the interleave (:func:`replicate_per_phase`).
    """

    def __init__(self, deconv: nn.ConvTranspose2d, tail: nn.Module | None = None):
        super().__init__()
        k, p = deconv.kernel_size[0], deconv.padding[0]
        if deconv.groups != 1 or deconv.stride != (2, 2) or deconv.dilation != (1, 1) \
                or deconv.kernel_size != (k, k) or deconv.padding != (p, p):
            raise ValueError("SubpixelDenseDeconv: dense, stride-2, undilated, square transposed convs only")
        taps = _phase_taps(k, p)
        lo = {r: min(taps[r]) for r in (0, 1)}
        size = max(max(taps[r]) - lo[r] + 1 for r in (0, 1))
        shift = {r: lo[r] + size - 1 for r in (0, 1)}  # phase r at m is conv output m + shift[r]
        if shift[1] - shift[0] not in (0, 1):
            raise ValueError(f"SubpixelDenseDeconv: kernel {k}, padding {p} not supported")
        swapped = shift[1] == shift[0] + 1
        order = (1, 0) if swapped else (0, 1)
        self.offset = 2 * shift[0] + (1 if swapped else 0)
        cin, cout = deconv.in_channels, deconv.out_channels
        wc = deconv.weight.detach().transpose(0, 1)  # (cout, cin, k, k)
        kernel = wc.new_zeros(4 * cout, cin, size, size)
        for i, ry in enumerate(order):
            for j, rx in enumerate(order):
                rows = slice((2 * i + j) * cout, (2 * i + j + 1) * cout)
                for dy, ty in taps[ry].items():
                    for dx, tx in taps[rx].items():
                        kernel[rows, :, dy - lo[ry], dx - lo[rx]] = wc[:, :, ty, tx]
        self.conv = nn.Conv2d(cin, 4 * cout, size, 1, size - 1, bias=deconv.bias is not None)
        self.conv.weight = nn.Parameter(kernel)
        if deconv.bias is not None:
            self.conv.bias = nn.Parameter(deconv.bias.detach().repeat(4))
        self.tail = replicate_per_phase(tail) if tail is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = interleave(self.tail(self.conv(x)))
        return y[:, :, self.offset:self.offset + 2 * h, self.offset:self.offset + 2 * w]


# ----------------------------------------------------------------------------- attention blocks

def _broadcast_spatial(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``s`` (N, C, 1, 1) repeated over ``like``'s H x W by nearest up-sampling: an equal-shape
    operand keeps ORT's multiply/add in NCHWc (a broadcasting one makes it reorder both tensors)."""
    h, w = like.shape[-2:]
    return nn.functional.interpolate(s, scale_factor=(float(h), float(w)), mode="nearest")


class PooledSqueezeExcite(nn.Module):
    """:class:`~posenas.models.blocks.SqueezeExcite` with its mean as a global average pool and
    its gate spread over H x W before the multiply: both stay in ORT's NCHWc layout."""

    def __init__(self, se: nn.Module, spread: bool = True):
        super().__init__()
        self.reduce, self.act, self.expand, self.gate = se.reduce, se.act, se.expand, se.gate
        self.spread = spread

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.expand(self.act(self.reduce(nn.functional.avg_pool2d(x, x.shape[-2:])))))
        return x * (_broadcast_spatial(s, x) if self.spread else s)


# ----------------------------------------------------------------------------- the rules

#: Every rewrite kind; ``rewrite_for_export(kinds=...)`` applies a subset.
KINDS = ("fold-bn", "grouped-depthwise-sum", "grouped-merge", "grouped-pad", "se-pooled", "deconv-subpixel",
         "deconv-dense")
#: The kinds applied by default: "deconv-dense" measured no faster (see the module docstring).
DEFAULT_KINDS = tuple(k for k in KINDS if k != "deconv-dense")
#: Dense 1x1 convs run about this many times faster per MAC than depthwise or 8-per-group convs.
DENSE_SPEEDUP = 2.0
#: Pad groups only when that multiplies the grouped conv's MACs by at most this.
PAD_INFLATION = 1.6


@functools.cache
def nchwc_block() -> int | None:
    """ONNX Runtime's NCHWc channel block on this machine (8 with AVX2, 16 with AVX-512; None
    where it has no NCHWc kernels): probed by optimising a one-conv graph of ``b`` channels per group."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    for block in (8, 16):
        w = numpy_helper.from_array(np.zeros((2 * block, block, 3, 3), np.float32), "w")
        graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], group=2, pads=[1, 1, 1, 1])], "probe",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2 * block, 8, 8])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
        with tempfile.TemporaryDirectory() as tmp:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.optimized_model_filepath = str(Path(tmp) / "probe.onnx")
            options.log_severity_level = 3
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            optimized = onnx.load(options.optimized_model_filepath)
        if any(n.domain == "com.microsoft.nchwc" and n.op_type == "Conv" for n in optimized.graph.node):
            return block
    return None


def choose_grouped(per_group: int, kernel: int, stride: int, producer_in: int | None, block: int) -> str | None:
    """The rewrite kind for a square grouped conv of ``per_group`` channels per group, or None.

    ``producer_in``: input channels of the dense 1x1 conv feeding it (None: no such conv);
    ``block``: ORT's NCHWc channel block (:func:`nchwc_block`).
    """
    if per_group == 1 or per_group % block == 0:
        return None  # depthwise, or already NCHWc-friendly
    if block % per_group == 0:
        # depthwise sum: (c - 1) extra producer copies at dense speed, c depthwise convs; merging
        # into the block: block / c times the grouped MACs at depthwise speed. stride**3, not **2:
        # the copies run at the input's s² pixels, and strided depthwise convs ran about half as
        # fast per MAC as unit-stride ones (AVX-512, benchmarks/grouped_conv_rules.py)
        if producer_in is not None and \
                (per_group - 1) * producer_in * stride**3 < DENSE_SPEEDUP * kernel**2 * (block - per_group):
            return "grouped-depthwise-sum"
        return "grouped-merge"
    padded = -(-per_group // block) * block
    if producer_in is not None and (padded / per_group) ** 2 <= PAD_INFLATION:
        return "grouped-pad"
    return None


def _zero_preserving(act: nn.Module) -> bool:
    """Whether ``act(0) == 0`` (padding channels stay zero through it)."""
    with torch.no_grad():
        return bool(act(torch.zeros(1, 1, 1, 1)).abs().max() == 0)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _act(block: nn.Module) -> nn.Module:
    return getattr(block, "act", None) or nn.Identity()


def _doubling_deconv(m: nn.Module) -> bool:
    """A square, undilated stride-2 transposed conv that exactly doubles H and W."""
    if not isinstance(m, nn.ConvTranspose2d):
        return False
    (k, k2), (p, p2), (o, o2) = m.kernel_size, m.padding, m.output_padding
    return m.stride == (2, 2) and m.dilation == (1, 1) and (k, p, o) == (k2, p2, o2) and k + o - 2 * p == 2


def is_depthwise_deconv(m: nn.Module) -> bool:
    """What :class:`SubpixelDeconv` takes by the rules: a depthwise doubling transposed conv."""
    return _doubling_deconv(m) and m.groups == m.in_channels == m.out_channels


def is_dense_deconv(m: nn.Module) -> bool:
    """What :class:`SubpixelDenseDeconv` takes: a dense doubling transposed conv."""
    return _doubling_deconv(m) and m.groups == 1


def _rewrite_grouped(name: str, block: nn.Module, producer_attr: str, grouped_attr: str, consumer_attr: str,
                     allowed: set[str], nchwc: int, choose: Callable[..., str | None]) -> Rewrite | None:
    """Rewrite ``block.<grouped_attr>.conv`` (fed by ``block.<producer_attr>``, read by ``block.<consumer_attr>``)."""
    grouped_block, producer_block = getattr(block, grouped_attr), getattr(block, producer_attr)
    conv = grouped_block.conv
    if type(conv) is not nn.Conv2d:  # already rewritten
        return None
    c = conv.out_channels // conv.groups
    producer = producer_block.conv if isinstance(producer_block, nn.Sequential) and \
        isinstance(producer_block.conv, nn.Conv2d) and producer_block.conv.groups == 1 and \
        producer_block.conv.kernel_size == (1, 1) and producer_block.conv.stride == (1, 1) else None
    if conv.in_channels != conv.out_channels or conv.kernel_size[0] != conv.kernel_size[1]:
        return None
    kind = choose(c, conv.kernel_size[0], conv.stride[0], producer.in_channels if producer else None, nchwc)
    if kind not in allowed:
        return None
    unfolded = [b for b in (producer_block, grouped_block) if any(isinstance(m, nn.BatchNorm2d) for m in b.modules())]
    if kind == "grouped-depthwise-sum":
        if producer_block in unfolded:  # the copies are of conv, BN and act: BN must be folded first
            return None
        grouped_block.conv = ExpandedDepthwiseSum(producer, _act(producer_block), conv)
        setattr(block, producer_attr, nn.Identity())
    elif kind == "grouped-merge":
        grouped_block.conv = merge_groups(conv, nchwc)
    else:  # pad: the padded zero channels must stay zero through both activations and the BN (folded)
        consumer_block = getattr(block, consumer_attr)
        if unfolded or not all(_zero_preserving(_act(b)) for b in (producer_block, grouped_block)):
            return None
        producer_block.conv, grouped_block.conv, consumer_block.conv = pad_groups(producer, conv, consumer_block.conv,
                                                                                  nchwc)
    k = conv.kernel_size[0]
    return Rewrite(f"{name}.{grouped_attr}.conv", kind, f"{c} channels per group, {k}x{k}, stride {conv.stride[0]}")


def rewrite_for_export(model: nn.Module, input_size: tuple[int, int], kinds: tuple[str, ...] | None = None,
                       block: int | None = None, choose: Callable[..., str | None] | None = None,
                       in_channels: int = 3) -> tuple[nn.Module, list[Rewrite]]:
    """A rewritten eval-mode copy of ``model`` and the rewrites applied (``kinds``: allowed kinds,
    default :data:`DEFAULT_KINDS`; ``block``: ORT's NCHWc block, default :func:`nchwc_block`). By default BN
    folding is kept only where another rewrite applies (it serves them; ORT folds BN itself).
    ``choose``: the grouped-conv rule, default :func:`choose_grouped` (benchmarks force one kind
    per layer with it); ``in_channels``: the input's channels (3 for a pose model, more for one block).

    The same rewrites are also applied to a float64 copy and checked, at one ``input_size``
    input, to compute what the original does (:func:`check_same`)."""
    allowed = set(DEFAULT_KINDS if kinds is None else kinds)
    unknown = allowed - set(KINDS)
    if unknown:
        raise ValueError(f"unknown rewrite kinds {sorted(unknown)}; allowed: {', '.join(KINDS)}")
    block = block or nchwc_block()
    if block is None:  # every rewrite but BN folding targets ORT's NCHWc kernels
        allowed &= {"fold-bn"}
    original = model.eval()
    model = copy.deepcopy(original)
    choose = choose or choose_grouped
    done = _apply(model, allowed, block, choose)
    if kinds is None and all(r.kind == "fold-bn" for r in done):
        return copy.deepcopy(original), []  # ORT folds BN itself: alone it changes nothing
    if done:
        reference = copy.deepcopy(original).double()
        rewritten = copy.deepcopy(reference)
        _apply(rewritten, allowed, block, choose)
        check_same(reference, rewritten, input_size, in_channels)
    return model, done


def _apply(model: nn.Module, allowed: set[str], block: int, choose: Callable[..., str | None]) -> list[Rewrite]:
    """Rewrite ``model`` in place; the rewrites applied."""
    from posenas.models.blocks import Bottleneck, InvertedResidual, SqueezeExcite
    from posenas.models.heads import DeconvHead

    done = fold_batchnorms(model) if "fold-bn" in allowed else []
    for name, m in list(model.named_modules()):
        r = None
        if isinstance(m, InvertedResidual) and isinstance(m.depthwise, nn.Sequential):
            r = _rewrite_grouped(name, m, "expand", "depthwise", "project", allowed, block, choose)
        elif isinstance(m, Bottleneck) and getattr(m.conv2.conv, "groups", 1) > 1:
            r = _rewrite_grouped(name, m, "conv1", "conv2", "conv3", allowed, block, choose)
        if r is not None:
            done.append(r)
    deconvs = {"deconv-subpixel": (is_depthwise_deconv, SubpixelDeconv, "depthwise"),
               "deconv-dense": (is_dense_deconv, SubpixelDenseDeconv, "dense")}
    for kind, (takes, rewrite, what) in deconvs.items():
        if kind not in allowed:
            continue
        for name, m in list(model.named_modules()):
            if isinstance(m, DeconvHead) and len(m.deconvs) and takes(getattr(m.deconvs[-1], "deconv", None)) \
                    and m.final.kernel_size == (1, 1):
                last = m.deconvs[-1]
                # its BN, act and the 1x1 final conv are per pixel: they commute with the interleave
                per_pixel = [child for key, child in last.named_children() if key != "deconv"]
                m.deconvs[-1] = rewrite(last.deconv, nn.Sequential(*per_pixel, m.final))
                m.final = nn.Identity()
                done.append(Rewrite(f"{name}.deconvs.{len(m.deconvs) - 1}.deconv", kind,
                                    f"{what}, with its BN, activation and the final 1x1 conv per phase"))
        for name, m in list(model.named_modules()):
            if takes(m):
                _set(model, name, rewrite(m))
                done.append(Rewrite(name, kind, what))
    for name, m in list(model.named_modules()):
        if isinstance(m, SqueezeExcite) and "se-pooled" in allowed:
            _set(model, name, PooledSqueezeExcite(m))
            done.append(Rewrite(name, "se-pooled", "mean as average pool, gate spread over HxW"))
    return done


#: Rewrites are exact: in float64 (weights rewritten in float64 too) a rewritten copy differs from the
#: original by rounding, ~1e-15 of the peak; a wrong channel or tap differs by a large fraction of it.
SELF_CHECK_TOLERANCE = 1e-9


def check_same(original: nn.Module, rewritten: nn.Module, input_size: tuple[int, int], in_channels: int = 3) -> None:
    """Raise if ``rewritten`` does not compute ``original``'s function (a bug in a rewrite, never bad input).

    Both are run as they are: :func:`rewrite_for_export` passes float64 copies, so float32
    rounding, which grows with depth and weight scale, cannot hide an error."""
    param = next(original.parameters())
    x = torch.randn(1, in_channels, *input_size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x.to(device=param.device, dtype=param.dtype)
    with torch.no_grad():
        a, b = original(x), rewritten(x)
    diff, peak = float((a - b).abs().max()), float(a.abs().max())
    if not diff <= SELF_CHECK_TOLERANCE * peak:
        raise RuntimeError(f"export rewrite changed the model's output by {diff:.3g} (peak {peak:.3g}); "
                           "export with rewrite=False and report this")
