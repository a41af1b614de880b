"""Models: published parameter / MAC figures, shapes, arch JSON round trip and errors, init, determinism."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from posenas.arch import (ARCH_SPACES, NAMED_MODELS, arch_from_json, build_model, load_arch_file, named_arch,
                          save_arch_file)
from posenas.errors import PosenasError
from posenas.models import (BasicBlock, Bottleneck, ContextBlock, ConvBNAct, DeconvBNAct, DeconvHead,
                            InvertedResidual, SimpleBaselineArch, SqueezeExcite, build_backbone, make_divisible)


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_meta(arch, num_joints: int = 17) -> nn.Module:
    """Build on the meta device: shapes, params and MACs without allocating or computing."""
    with torch.device("meta"):
        return build_model(arch, num_joints)


def macs(model: nn.Module, h: int, w: int) -> float:
    """MACs of one (1, 3, h, w) forward: FlopCounterMode FLOPs / 2 (DESIGN's cost convention)."""
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, h, w, device=device))
    return counter.get_total_flops() / 2


# ---------------------------------------------------------------- published figures

def test_backbone_params_match_the_classification_networks_minus_classifier():
    # torchvision totals minus the 1000-way fc: ResNet-18 11,689,512 - 513,000; ResNet-50
    # 25,557,032 - 2,049,000; MobileNetV2 3,504,872 - 1,281,000.
    with torch.device("meta"):
        assert params(build_backbone("resnet18")) == 11_176_512
        assert params(build_backbone("resnet50")) == 23_508_032
        assert params(build_backbone("mobilenetv2")) == 2_223_872


def test_simplebaseline_resnet50_published_params_and_macs():
    model = build_meta(named_arch("simplebaseline-resnet50"))
    p = params(model)
    assert round(p / 1e6, 1) == 34.0
    # backbone 23,508,032 + deconvs 2048*256*16 + 2*256*256*16 + 3 BN(256) + 1x1 256->17 with bias
    assert p == 23_508_032 + 2048 * 256 * 16 + 2 * 256 * 256 * 16 + 3 * 2 * 256 + 256 * 17 + 17
    assert macs(model, 256, 192) == pytest.approx(5.4e9, rel=0.03)


def test_simplebaseline_mobilenetv2_published_params_and_macs():
    model = build_meta(named_arch("simplebaseline-mobilenetv2"))
    p = params(model)
    assert round(p / 1e6, 2) == 9.57
    assert p == 2_223_872 + 1280 * 256 * 16 + 2 * 256 * 256 * 16 + 3 * 2 * 256 + 256 * 17 + 17
    assert macs(model, 256, 192) == pytest.approx(1.57e9, rel=0.03)


def test_simplebaseline_resnet18_params():
    p = params(build_meta(named_arch("simplebaseline-resnet18")))
    assert round(p / 1e6, 1) == 15.4
    assert p == 11_176_512 + 512 * 256 * 16 + 2 * 256 * 256 * 16 + 3 * 2 * 256 + 256 * 17 + 17


def test_flop_counter_counts_transposed_convs_per_input_pixel():
    # DESIGN's convention: a transposed conv costs Cin * Cout/groups * k * k MACs per *input* pixel.
    deconv = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1, bias=False)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = deconv(torch.zeros(1, 8, 5, 6))
    assert out.shape[-2:] == (10, 12)
    assert counter.get_total_flops() / 2 == 8 * 4 * 4 * 4 * 5 * 6


def test_small_model_is_small():
    model = build_meta(named_arch("simplebaseline-small"))
    assert 0.05e9 <= macs(model, 128, 96) <= 0.15e9
    assert params(model) < 3e6


# ---------------------------------------------------------------- shapes

@pytest.mark.parametrize("name", list(NAMED_MODELS))
@pytest.mark.parametrize("size", [(256, 192), (128, 96)])
def test_named_model_output_shape(name, size):
    h, w = size
    arch = named_arch(name)
    model = build_meta(arch)
    with torch.no_grad():
        out = model(torch.zeros(2, 3, h, w, device="meta"))
    # top-down: K heatmaps at 1/4; bottom-up: K heatmaps + K tags at 1/4 (and K heatmaps at 1/2: HigherHRNet)
    outputs = out if isinstance(out, tuple) else (out,)
    expected = [(2, 17, h // 4, w // 4)] if not arch.bottom_up else \
        [(2, 34, h // 4, w // 4), (2, 17, h // 2, w // 2)][: len(getattr(model, "output_strides", (4,)))]
    assert [tuple(o.shape) for o in outputs] == expected
    assert model.stride == 4


def test_small_model_runs_forward_and_backward_on_cpu():
    torch.manual_seed(0)
    model = build_model(named_arch("simplebaseline-small"), num_joints=16)
    out = model(torch.randn(2, 3, 128, 96))
    assert out.shape == (2, 16, 32, 24)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("kernel", [2, 3, 4])
def test_head_kernels_double_the_size(kernel):
    arch = SimpleBaselineArch("mobilenetv2", 0.35, (16, 24, 8), (kernel, 3, kernel))
    model = build_model(arch, 5).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 96)).shape == (1, 5, 16, 24)
    assert [m.kernel_size[0] for m in model.modules() if isinstance(m, nn.ConvTranspose2d)] == [kernel, 3, kernel]


def test_width_mult_scales_backbones():
    r = build_backbone("resnet50", 0.5)
    assert r.stage_channels == (128, 256, 512, 1024) and r.out_channels == 1024
    assert build_backbone("resnet18", 0.375).stage_channels == (24, 48, 96, 192)
    m = build_backbone("mobilenetv2", 0.5)
    assert m.stem.out_channels == 16 and m.out_channels == 1280      # last conv keeps 1280 for width <= 1
    assert build_backbone("mobilenetv2", 1.4).out_channels == 1792
    assert [b.out_channels for b in m.blocks][:4] == [8, 16, 16, 16]


# ---------------------------------------------------------------- blocks

def test_make_divisible():
    assert make_divisible(32 * 0.5) == 16
    assert make_divisible(16 * 0.35) == 8
    assert make_divisible(24 * 0.35) == 8
    assert make_divisible(96 * 0.75) == 72
    assert make_divisible(10) == 16           # never more than 10 % below the value
    assert make_divisible(1280 * 1.4) == 1792


def test_blocks_shapes_and_options():
    x = torch.randn(2, 16, 12, 10)
    with torch.no_grad():
        b = BasicBlock(16, 32, stride=2, kernel=5).eval()
        assert b(x).shape == (2, 32, 6, 5)
        gc = lambda c: ContextBlock(c, ratio=max(1 / 16, 16 / c))  # noqa: E731
        bt = Bottleneck(16, 32, stride=1, kernel=5, groups=4, expansion=1, attention=gc).eval()
        assert bt.mid_channels == 32 and bt.conv2.conv.groups == 4 and bt.conv2.conv.kernel_size == (5, 5)
        assert bt(x).shape == (2, 32, 12, 10)
        ir = InvertedResidual(16, 16, 1, expansion=4, kernel=7, act="hswish", dw_groups=8,
                              attention=lambda c: SqueezeExcite(c, reduction=4, gate="hsigmoid")).eval()
        assert ir.use_residual and ir.depthwise.conv.groups == 8 and isinstance(ir.attention, SqueezeExcite)
        assert ir.attention.squeeze_channels == 16 and isinstance(ir.depthwise.act, nn.Hardswish)
        assert ir(x).shape == x.shape
        first = InvertedResidual(16, 8, 2, expansion=1)
        assert isinstance(first.expand, nn.Identity) and first(x).shape == (2, 8, 6, 5)
        # the expand conv exists whenever the hidden width differs from the input's
        assert isinstance(InvertedResidual(16, 8, 1, hidden_channels=24).expand, ConvBNAct)
        assert isinstance(InvertedResidual(16, 8, 1, hidden_channels=16).expand, nn.Identity)
        assert ConvBNAct(16, 4, 3, dilation=2, act=None)(x).shape == (2, 4, 12, 10)
        assert DeconvBNAct(16, 4, kernel=3, groups=4)(x).shape == (2, 4, 24, 20)
        # a fresh context block is the identity (its last conv starts at zero)
        assert torch.equal(ContextBlock(16)(x), x)
    with pytest.raises(ValueError, match="allowed: 2, 3, 4"):
        DeconvBNAct(4, 4, kernel=5)


# ---------------------------------------------------------------- init and determinism

def test_initialisation_follows_simplebaseline():
    torch.manual_seed(0)
    model = build_model(named_arch("simplebaseline-resnet18"), 17)
    deconvs = [m for m in model.head.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(deconvs) == 3 and all(m.bias is None for m in deconvs)
    for m in deconvs + [model.head.final]:
        assert m.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert torch.count_nonzero(model.head.final.bias) == 0
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    conv = model.backbone.stages[2][0].conv1.conv          # kaiming normal, fan_out: std = sqrt(2 / (Cout k k))
    assert conv.weight.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.05)


@pytest.mark.parametrize("name", ["simplebaseline-small", "simplebaseline-mobilenetv2"])
def test_same_seed_same_weights(name):
    torch.manual_seed(7)
    a = build_model(named_arch(name), 17).state_dict()
    torch.manual_seed(7)
    b = build_model(named_arch(name), 17).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_mode_is_deterministic():
    torch.manual_seed(0)
    model = build_model(named_arch("simplebaseline-small"), 17).eval()
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


# ---------------------------------------------------------------- arch JSON

@pytest.mark.parametrize("name", list(NAMED_MODELS))
def test_named_arch_json_round_trip(name):
    arch = named_arch(name)
    assert arch.to_json() == NAMED_MODELS[name]                 # the registry holds the canonical form
    assert arch_from_json(arch.to_json()) == arch
    assert arch_from_json(json.loads(json.dumps(arch.to_json()))) == arch
    assert type(arch).from_json(arch.to_json()) == arch
    assert hash(arch_from_json(arch.to_json())) == hash(arch)


def test_defaults_and_normalisation():
    arch = arch_from_json({"space": "simplebaseline", "backbone": "resnet50", "width_mult": 1,
                           "head": {"widths": [128, 128.0, 64]}})
    assert arch == SimpleBaselineArch("resnet50", 1.0, (128, 128, 64), (4, 4, 4))
    assert isinstance(arch.width_mult, float) and arch.head_widths == (128, 128, 64)
    assert arch_from_json({"space": "simplebaseline", "backbone": "resnet18"}) == SimpleBaselineArch("resnet18")
    assert SimpleBaselineArch("resnet18", head_widths=[8, 8, 8]).head_widths == (8, 8, 8)


def _good() -> dict:
    return copy.deepcopy(NAMED_MODELS["simplebaseline-resnet50"])


def _with(path: tuple, value) -> dict:
    data = _good()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


BAD_ARCHS = [
    (_with(("backbone",), "resnet34"),
     "arch.backbone: unknown backbone 'resnet34'; allowed: resnet18, resnet50, mobilenetv2"),
    (_with(("backbone",), 50), "arch.backbone: expected a string"),
    (_with(("head", "kernels", 1), 5), "arch.head.kernels[1]: 5 not allowed; allowed: 2, 3, 4"),
    (_with(("head", "kernels", 0), "4"), "arch.head.kernels[0]: '4' not allowed; allowed: 2, 3, 4"),
    (_with(("width_mult",), 0), "arch.width_mult: must be in (0, 4], got 0"),
    (_with(("width_mult",), 4.5), "arch.width_mult: must be in (0, 4], got 4.5"),
    (_with(("width_mult",), "1"), "arch.width_mult: expected a number in (0, 4], got '1'"),
    (_with(("width_mult",), True), "arch.width_mult: expected a number"),
    (_with(("width_mult",), float("nan")), "arch.width_mult: expected a number"),
    (_with(("depth",), 50), "arch: unknown key 'depth'; allowed: space, backbone, width_mult, head"),
    (_with(("head", "depth"), 3), "arch.head: unknown key 'depth'; allowed: widths, kernels"),
    (_with(("head", "kernels"), [4, 4]),
     "arch.head.kernels: has 2 entries but head.widths has 3; they must have the same length"),
    (_with(("head", "widths"), [256, 256]), "arch.head.widths: expected 3 entries"),
    (_with(("head", "widths", 0), "256"), "arch.head.widths[0]: expected an integer in [1, 4096], got '256'"),
    (_with(("head", "widths", 2), 0), "arch.head.widths[2]: expected an integer in [1, 4096], got 0"),
    (_with(("head", "widths", 1), 2.5), "arch.head.widths[1]: expected an integer"),
    (_with(("head", "widths"), "256,256,256"), "arch.head.widths: expected a list of 3 integers, got str"),
    (_with(("head", "kernels"), 4), "arch.head.kernels: expected a list of 3 integers, got int"),
    (_with(("head",), [256, 256, 256]), "arch.head: expected a JSON object, got list"),
    (_with(("space",), "vipnas"), "arch.space: unknown space 'vipnas'; allowed: simplebaseline"),
    ({"backbone": "resnet18"}, "arch.space: missing; allowed: simplebaseline"),
    ({"space": "simplebaseline"}, "arch.backbone: missing; allowed: resnet18, resnet50, mobilenetv2"),
    ([1, 2], "arch: expected a JSON object, got list"),
]


@pytest.mark.parametrize("data, message", BAD_ARCHS, ids=[m.split(":")[0] + "-" + str(i)
                                                           for i, (_, m) in enumerate(BAD_ARCHS)])
def test_bad_arch_json_is_a_one_line_error_naming_the_field(data, message):
    with pytest.raises(PosenasError) as info:
        arch_from_json(data)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(message), text


def test_direct_construction_is_validated():
    with pytest.raises(PosenasError, match=r"arch\.backbone: unknown backbone 'resnet34'"):
        SimpleBaselineArch("resnet34")
    with pytest.raises(PosenasError, match=r"arch\.head\.kernels\[2\]: 5 not allowed"):
        SimpleBaselineArch("resnet18", head_kernels=(4, 4, 5))
    with pytest.raises(PosenasError, match=r"space: expected 'simplebaseline', got 'pnfs'"):
        SimpleBaselineArch.from_json({"space": "pnfs", "backbone": "resnet18"})


def test_registry_and_named_models():
    assert set(ARCH_SPACES) >= {"simplebaseline"}
    for name in NAMED_MODELS:
        assert named_arch(name).space in ARCH_SPACES
    with pytest.raises(PosenasError, match="unknown model 'resnet'; allowed: simplebaseline-resnet18, "
                                           "simplebaseline-resnet50, simplebaseline-mobilenetv2, simplebaseline-small"):
        named_arch("resnet")


def test_build_model_checks_its_arguments():
    arch = named_arch("simplebaseline-small")
    with torch.device("meta"):
        assert isinstance(build_model(arch.to_json(), 17), nn.Module)
    with pytest.raises(PosenasError, match="num_joints: expected a positive integer, got 0"):
        build_model(arch, 0)
    with pytest.raises(PosenasError, match="arch: expected an architecture"):
        build_model("resnet18", 17)


def test_arch_files(tmp_path):
    path = tmp_path / "arch.json"
    arch = named_arch("simplebaseline-small")
    save_arch_file(path, arch)
    assert load_arch_file(path) == arch
    path.write_text('{"space": "simplebaseline", "backbone": "resnet34"}')
    where = re.escape(str(path))
    with pytest.raises(PosenasError, match=rf"^{where}: arch\.backbone: unknown backbone 'resnet34'; allowed"):
        load_arch_file(path)
    path.write_text('{"space": ')
    with pytest.raises(PosenasError, match=rf"^{where}: invalid JSON"):
        load_arch_file(path)
    with pytest.raises(PosenasError, match="no such file"):
        load_arch_file(tmp_path / "missing.json")


def test_deconv_head_per_layer_groups():
    head = DeconvHead(32, 17, widths=(16, 16), kernels=4, groups=(4, 16))
    assert [m.groups for m in head.modules() if isinstance(m, nn.ConvTranspose2d)] == [4, 16]
    assert head(torch.zeros(1, 32, 3, 4)).shape == (1, 17, 12, 16)
