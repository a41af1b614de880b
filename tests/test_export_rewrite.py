"""Export-time rewrites (posenas.export_rewrite): each rewritten module computes what the original does,
the rules pick the layers they were measured on, and the rewritten ONNX graph keeps parity."""

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from posenas.arch import build_model, load_arch_file
from posenas.checkpoint import save_checkpoint
from posenas.codecs.heatmap import HeatmapCodec
from posenas.export import PARITY_TOLERANCE, export_onnx, onnx_bytes
from posenas.export_rewrite import (KINDS, ExpandedDepthwiseSum, PooledSqueezeExcite, SubpixelDeconv,
                                    SubpixelDenseDeconv, choose_grouped, fold_batchnorms, is_depthwise_deconv,
                                    merge_groups, nchwc_block, pad_groups, rewrite_for_export)
from posenas.models.blocks import SqueezeExcite
from posenas.resources import resolve_config
from posenas.runtime import ort_session

#: A small vipnas-mobilenetv3 arch with every rewrite's case: 2 and 4 channels per group with and
#: without a 1x1 producer, 7x7 / 5x5 / 3x3, strides 1 and 2, SE blocks, a depthwise head.
SMALL_MBV3 = {
    "space": "vipnas-mobilenetv3", "stem": {"width": 16, "kernel": 3},
    "stages": [{"depth": 1, "width": 16, "expansion": 1, "kernel": 3, "groups": 8, "attention": "se"},
               {"depth": 1, "width": 24, "expansion": 2, "kernel": 7, "groups": 24, "attention": "none"},
               {"depth": 1, "width": 40, "expansion": 2, "kernel": 5, "groups": 20, "attention": "se"},
               {"depth": 1, "width": 80, "expansion": 2, "kernel": 5, "groups": 40, "attention": "none"},
               {"depth": 1, "width": 112, "expansion": 2, "kernel": 3, "groups": 56, "attention": "se"},
               {"depth": 1, "width": 160, "expansion": 2, "kernel": 5, "groups": 80, "attention": "none"}],
    "head": {"widths": [32, 32, 32], "groups": [32, 32, 32], "kernels": [4, 4, 4]},
}


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Weights of order 1 and BN in eval with non-trivial running statistics: every channel matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_in = m.weight[0].numel() if isinstance(m, nn.Conv2d) else m.weight.shape[1] * m.weight[0, 0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model.eval()


@pytest.fixture
def float64():
    """Every module of these tests (and every module a rewrite builds) in float64: the rewrites are
    exact, so only rounding of ~1e-15 may remain, far below any error of a wrong channel or tap."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to float64 rounding, against a signal of order 1 (checked)."""
    assert a.dtype == torch.float64
    peak = float(a.abs().max())
    assert peak > 0.1
    assert float((a - b).abs().max()) <= 1e-10 * peak


def test_nchwc_block_is_probed():
    assert nchwc_block() in (8, 16, None)


@pytest.mark.parametrize("groups,transposed", [(1, False), (4, False), (16, False), (1, True), (4, True), (16, True)])
def test_fold_bn_keeps_the_function(groups, transposed, float64):
    conv = (nn.ConvTranspose2d(16, 16, 4, 2, 1, groups=groups, bias=False) if transposed
            else nn.Conv2d(16, 16, 3, 2, 1, groups=groups, bias=False))
    seq = randomize(nn.Sequential(conv, nn.BatchNorm2d(16), nn.ReLU()))
    folded = copy.deepcopy(seq)
    assert [r.kind for r in fold_batchnorms(folded)] == ["fold-bn"]
    assert isinstance(folded[1], nn.Identity) and folded[0].bias is not None
    x = torch.randn(2, 16, 7, 5)
    with torch.no_grad():
        assert_same(seq(x), folded(x))


@pytest.mark.parametrize("per_group,kernel,stride,dilation", [(2, 3, 1, 1), (2, 7, 2, 1), (4, 5, 1, 2), (4, 3, 2, 1),
                                                               (8, 3, 1, 1)])
@pytest.mark.parametrize("act", [nn.ReLU, nn.Hardswish])
def test_expanded_depthwise_sum_is_the_grouped_conv(per_group, kernel, stride, dilation, act, float64):
    c = 16
    expand = nn.Conv2d(8, c, 1)
    grouped = nn.Conv2d(c, c, kernel, stride, dilation * (kernel // 2), dilation, groups=c // per_group)
    randomize(nn.Sequential(expand, grouped))
    x = torch.randn(2, 8, 9, 7)
    with torch.no_grad():
        ref = grouped(act()(expand(x)))
        rewritten = ExpandedDepthwiseSum(expand, act(), grouped)
        assert len(rewritten.depthwise) == per_group and all(d.groups == c for d in rewritten.depthwise)
        assert_same(ref, rewritten(x))


@pytest.mark.parametrize("per_group,target,stride,dilation", [(2, 8, 1, 1), (4, 8, 2, 1), (2, 16, 1, 2), (4, 16, 1, 1)])
def test_merged_groups_are_the_grouped_conv(per_group, target, stride, dilation, float64):
    conv = randomize(nn.Conv2d(32, 32, 5, stride, 2 * dilation, dilation, groups=32 // per_group))
    x = torch.randn(2, 32, 9, 7)
    merged = merge_groups(conv, target)
    assert merged.groups == 32 // target
    with torch.no_grad():
        assert_same(conv(x), merged(x))


@pytest.mark.parametrize("per_group,groups,stride", [(5, 2, 1), (19, 2, 2), (38, 1, 1), (10, 3, 1)])
@pytest.mark.parametrize("act", [nn.ReLU, nn.Hardswish])
def test_padded_groups_are_the_grouped_conv(per_group, groups, stride, act, float64):
    c = per_group * groups
    producer, grouped, consumer = nn.Conv2d(12, c, 1), nn.Conv2d(c, c, 3, stride, 1, groups=groups), nn.Conv2d(c, 10, 1)
    randomize(nn.Sequential(producer, grouped, consumer))
    x = torch.randn(2, 12, 8, 6)
    p, g, q = pad_groups(producer, grouped, consumer, 8)
    assert g.in_channels // g.groups % 8 == 0
    with torch.no_grad():
        assert_same(consumer(act()(grouped(act()(producer(x))))), q(act()(g(act()(p(x))))))


@pytest.mark.parametrize("cin,cout,groups,kernel", [(16, 16, 16, 4), (16, 16, 16, 2), (16, 16, 16, 3), (16, 8, 4, 4),
                                                   (8, 12, 1, 4)])
def test_subpixel_deconv_is_the_transposed_conv(cin, cout, groups, kernel, float64):
    padding, output_padding = {4: (1, 0), 3: (1, 1), 2: (0, 0)}[kernel]
    deconv = randomize(nn.ConvTranspose2d(cin, cout, kernel, 2, padding, output_padding, groups=groups))
    tail = randomize(nn.Sequential(nn.ReLU(), nn.Conv2d(cout, 5, 1)))
    x = torch.randn(2, cin, 5, 4)
    with torch.no_grad():
        assert_same(deconv(x), SubpixelDeconv(deconv)(x))
        assert_same(tail(deconv(x)), SubpixelDeconv(deconv, tail)(x))


@pytest.mark.parametrize("kernel", [4, 3, 2])
def test_one_conv_subpixel_dense_deconv_is_the_transposed_conv(kernel, float64):
    padding, output_padding = {4: (1, 0), 3: (1, 1), 2: (0, 0)}[kernel]
    deconv = randomize(nn.ConvTranspose2d(8, 12, kernel, 2, padding, output_padding, bias=False))
    tail = randomize(nn.Sequential(nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, 5, 1)))
    x = torch.randn(2, 8, 5, 4)
    rewritten = SubpixelDenseDeconv(deconv)
    assert rewritten.conv.kernel_size == ((1, 1) if kernel == 2 else (2, 2))  # the transposed conv's MACs, not more
    with torch.no_grad():
        assert_same(deconv(x), rewritten(x))
        assert_same(tail(deconv(x)), SubpixelDenseDeconv(deconv, tail)(x))


def test_squeeze_excite_rewrite_keeps_the_function(float64):
    x = torch.randn(2, 16, 6, 5)
    se = randomize(SqueezeExcite(16, gate="hsigmoid"))
    with torch.no_grad():
        assert float((se(x) - x).abs().max()) > 0.1  # the gate does something
        assert_same(se(x), PooledSqueezeExcite(se)(x))


#: (arch, whether the default rules rewrite it: only BN folding, which ORT does itself, is dropped)
SMALL_ARCHS = [
    (SMALL_MBV3, True),
    ({"space": "vipnas-resnet", "stem": {"width": 16, "kernel": 3},
     "stages": [{"depth": 1, "width": 32, "expansion": 1, "kernel": 3, "groups": 16, "attention": "gc"},
                {"depth": 1, "width": 80, "expansion": 1, "kernel": 5, "groups": 4, "attention": "se"},
                {"depth": 1, "width": 64, "expansion": 1, "kernel": 3, "groups": 16, "attention": "none"},
                {"depth": 1, "width": 160, "expansion": 1, "kernel": 3, "groups": 8, "attention": "gc"}],
     "head": {"widths": [32, 32, 32], "groups": [32, 8, 1], "kernels": [4, 2, 4]}}, True),
    ({"space": "simplebaseline", "backbone": "resnet18", "width_mult": 0.25,
      "head": {"widths": [16, 16, 16], "kernels": [4, 4, 4]}}, False),
    ({"space": "simplebaseline", "backbone": "mobilenetv2", "width_mult": 0.25,
      "head": {"widths": [16, 16, 16]}}, False),
    ({**json.loads(resolve_config("efficientpose/k3e6-small", "arch").read_text()),
      "head": {"widths": [32, 16], "sic": True, "upsample": "mbv1"}}, True),  # depthwise transposed convs
    ({**json.loads(resolve_config("pnfs/mobilenetv2-p3-coco", "arch").read_text()), "layers": 1, "scales": 2}, False),
]


@pytest.mark.parametrize("arch,by_default", SMALL_ARCHS,
                         ids=[a["space"] + "-" + a.get("backbone", "") for a, _ in SMALL_ARCHS])
def test_rewritten_models_of_every_space_compute_the_same(arch, by_default, float64):
    model = randomize(build_model(arch, 17))
    x = torch.randn(1, 3, 32, 32)
    rewritten, done = rewrite_for_export(model, (32, 32), KINDS, block=8)
    assert done and rewritten is not model
    with torch.no_grad():
        assert_same(model(x), rewritten(x))
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    default_kinds = {r.kind for r in rewrite_for_export(model, (32, 32), block=8)[1]}
    assert bool(default_kinds) == by_default and default_kinds <= {r.kind for r in done}


def test_the_self_check_catches_a_wrong_rewrite(monkeypatch):
    """A rewrite off by one tap of one channel fails the float64 self-check, and `onnx_bytes` says so."""
    import posenas.export_rewrite as rw

    model = randomize(build_model(SMALL_MBV3, 17)).float()
    real_merge = rw.merge_groups

    def off_by_one_tap(conv, per_group):
        merged = real_merge(conv, per_group)
        merged.weight.data[0, 0, 0, 0] += 0.01
        return merged

    monkeypatch.setattr(rw, "merge_groups", off_by_one_tap)
    with pytest.raises(RuntimeError, match="export rewrite changed the model's output"):
        rewrite_for_export(model, (64, 48), block=8)
    from posenas.errors import PosenasError
    with pytest.raises(PosenasError, match=r"^m\.pt: export rewrite failed .*--no-rewrite"):
        onnx_bytes(model, (64, 48), where="m.pt")


def test_rules_pick_the_measured_layers_of_s_vipnas_mobilenetv3():
    """Which layers of the shipped S-ViPNAS-MobileNetV3 are rewritten, and how (see the module docstring)."""
    arch = load_arch_file(resolve_config("vipnas/s-vipnas-mobilenetv3", "arch"))
    model = randomize(build_model(arch, 17))
    _, done = rewrite_for_export(model, (64, 48), block=8)
    kinds = {r.name: r.kind for r in done if r.kind != "fold-bn"}
    for b in range(4):
        assert kinds[f"backbone.stages.4.{b}.depthwise.conv"] == "grouped-depthwise-sum"  # 2 per group, 7x7
        assert kinds[f"backbone.stages.3.{b}.depthwise.conv"] == "grouped-merge"          # 4 per group, 5x5
        assert kinds[f"backbone.stages.5.{b}.depthwise.conv"] == "grouped-merge"
        assert f"backbone.stages.1.{b}.depthwise.conv" not in kinds                         # depthwise already
        assert f"backbone.stages.2.{b}.depthwise.conv" not in kinds                         # 8 per group: NCHWc
    assert kinds["backbone.stages.0.0.depthwise.conv"] == "grouped-merge"                 # no 1x1 producer
    assert [k for k in kinds.values()].count("se-pooled") == 17
    assert [k for k in kinds.values()].count("deconv-subpixel") == 3


@pytest.mark.parametrize("per_group,kernel,stride,producer_in,expected", [
    (1, 7, 1, 24, None), (8, 7, 1, 24, None), (16, 5, 1, 24, None),           # NCHWc handles these
    (2, 7, 1, 112, "grouped-depthwise-sum"), (2, 3, 1, 16, "grouped-depthwise-sum"),
    (4, 7, 1, 24, "grouped-depthwise-sum"),
    (4, 5, 2, 112, "grouped-merge"), (4, 5, 1, 160, "grouped-merge"), (2, 3, 1, 160, "grouped-merge"),
    (2, 3, 1, None, "grouped-merge"),                                         # no producer to copy
    (19, 5, 1, 304, "grouped-pad"), (38, 5, 1, 608, "grouped-pad"),          # padding costs <= 1.6x
    (5, 3, 1, 80, None), (10, 5, 1, 160, None), (19, 5, 1, None, None)])     # 2.56x, 2.56x; nothing to pad
def test_grouped_conv_rule(per_group, kernel, stride, producer_in, expected):
    """The measured choices (docs/benchmarks.md, "Inference speed of exported models")."""
    assert choose_grouped(per_group, kernel, stride, producer_in, 8) == expected


@pytest.mark.parametrize("per_group,kernel,stride,producer_in,expected", [
    (8, 7, 2, 24, "grouped-merge"), (8, 7, 1, 40, "grouped-depthwise-sum"),   # 8 per group is not NCHWc here
    (4, 5, 2, 40, "grouped-merge"), (4, 5, 1, 80, "grouped-depthwise-sum"),
    (2, 7, 1, 112, "grouped-depthwise-sum"), (4, 5, 2, 112, "grouped-merge"), (4, 5, 1, 160, "grouped-depthwise-sum"),
    (16, 5, 1, 40, None), (38, 5, 1, 608, "grouped-pad"), (19, 5, 1, 304, None)])  # 19 -> 32: 2.8x the MACs
def test_grouped_conv_rule_on_avx512(per_group, kernel, stride, producer_in, expected):
    """The faster candidate of every S-ViPNAS layer timed with ORT's 16-channel NCHWc block
    (benchmarks/grouped_conv_rules.py; docs/benchmarks.md, "Inference speed of exported models")."""
    assert choose_grouped(per_group, kernel, stride, producer_in, 16) == expected


def test_a_forced_rule_rewrites_one_block_of_any_input_width(float64):
    """``choose`` overrides the rule (benchmarks/grouped_conv_rules.py times every candidate with it)
    and ``in_channels`` lets the float64 self-check feed a lone block: each forced kind applies and
    computes the block's function."""
    from posenas.models.blocks import InvertedResidual

    block = randomize(InvertedResidual(24, 24, expansion=4, kernel=5, dw_groups=24))  # 4 per group
    x = torch.randn(1, 24, 12, 8)
    for kind in ("grouped-depthwise-sum", "grouped-merge", "grouped-pad"):
        rewritten, done = rewrite_for_export(block, (12, 8), kinds=("fold-bn", kind), block=8,
                                             choose=lambda *a, kind=kind: kind, in_channels=24)
        assert [r.kind for r in done if r.kind != "fold-bn"] == [kind]
        with torch.no_grad():
            assert_same(block(x), rewritten(x))
    assert choose_grouped(4, 5, 1, 24, 8) == "grouped-depthwise-sum"  # the rule alone: so merge, pad were forced


def onnx_graph_ops(data: bytes) -> list[tuple[str, int, int]]:
    """(op type, group, input channels per group) of every Conv / ConvTranspose node of a graph,
    (op type, 0, 0) of its ReduceMean and AveragePool nodes."""
    import onnx

    model = onnx.load_from_string(data)
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type in ("ReduceMean", "AveragePool"):
            out.append((node.op_type, 0, 0))
        elif node.op_type in ("Conv", "ConvTranspose"):
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            shape = weights.get(node.input[1])
            per_group = shape[1] if node.op_type == "Conv" else shape[0] // group
            out.append((node.op_type, group, per_group))
    return out


def test_exported_graph_is_rewritten_by_default_and_keeps_parity(tmp_path):
    """`export_onnx` writes the rewritten graph (no grouped conv of 2 or 4 channels per group, no
    depthwise transposed conv) after checking it against the original model, with dynamic batch."""
    torch.manual_seed(0)
    model = randomize(build_model(SMALL_MBV3, 17))
    [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1].weight.data *= 0.1  # heatmaps of order 1
    per_group = {m.in_channels // m.groups for m in model.modules() if isinstance(m, nn.Conv2d)}
    assert {2, 4} <= per_group and any(is_depthwise_deconv(m) for m in model.modules())  # what is rewritten

    ckpt, out = tmp_path / "mbv3.pt", tmp_path / "mbv3.onnx"
    codec = HeatmapCodec(input_size=(64, 32), heatmap_size=(16, 8), sigma=2.0)
    save_checkpoint(ckpt, {"arch": SMALL_MBV3, "schema": "coco17", "codec": codec.to_dict(),
                           "state_dict": model.state_dict()})
    report = export_onnx(ckpt, out, dynamic_batch=True)
    assert report["rewrite"] is True and set(report["max_abs_diff"]) == {"random", "real", "random batch of 3"}
    ops = onnx_graph_ops(out.read_bytes())
    assert not [op for op in ops if op[0] == "Conv" and op[2] in (2, 4)]
    assert not [op for op in ops if op[0] == "ConvTranspose" and op[2] == 1]
    assert not [op for op in ops if op[0] == "ReduceMean"] and [op for op in ops if op[0] == "AveragePool"]  # SE
    session = ort_session(str(out))
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(ref).max() > 0.1
    assert np.abs(session.run(None, {"image": x.numpy()})[0] - ref).max() <= PARITY_TOLERANCE * np.abs(ref).max()
    assert json.loads(session.get_modelmeta().custom_metadata_map["posenas.arch"])["space"] == "vipnas-mobilenetv3"


def test_cli_no_rewrite_exports_the_model_as_it_is(tmp_path, monkeypatch):
    import posenas.export
    from posenas.cli import main

    seen = []
    monkeypatch.setattr(posenas.export, "export_onnx", lambda ckpt, out, **kw: seen.append(kw["rewrite"]) or
                        {"max_abs_diff": {"random": 0.0}, "opset": 18, "bytes": 1})
    assert main(["export", "m.pt", "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert main(["export", "m.pt", "--onnx", str(tmp_path / "m.onnx"), "--no-rewrite"]) == 0
    assert seen == [True, False]
