"""HRNet / HigherHRNet: published parameter and MAC figures, the three heads' outputs, arch JSON,
init, ONNX export of the heatmap model, and the Resample block shared with AutoPose."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from posenas.arch import ARCH_SPACES, NAMED_MODELS, arch_from_json, build_model, named_arch
from posenas.cost import count_macs, count_params
from posenas.errors import PosenasError
from posenas.models import blocks
from posenas.models.hrnet import HEADS, HRNetArch, HRModule, build_hrnet
from posenas.spaces import autopose

pytestmark = pytest.mark.usefixtures("one_thread")


def build_meta(arch, num_joints: int = 17) -> nn.Module:
    """Build on the meta device: params and MACs without allocating or computing."""
    with torch.device("meta"):
        return build_model(arch, num_joints)


# ---------------------------------------------------------------- published figures

def test_hrnet_w32_published_params_and_macs():
    model = build_meta(named_arch("hrnet-w32"))
    params = count_params(model)
    macs, _ = count_macs(model, (256, 192))
    assert params == pytest.approx(28.5e6, rel=0.02)
    # HRNet's GFLOPs are conv multiply-adds (weight numel x output pixels, the count_macs count
    # for plain convs) divided by 1024**3 (lib/utils/utils.py, get_model_summary): 7.12 "G".
    assert macs / 1024**3 == pytest.approx(7.1, rel=0.06)
    # The exact counts of the reference implementation (pose_hrnet.py, w32_256x192), checked
    # against it by loading its weights by position: the outputs were identical.
    assert params == 28_536_113
    assert macs == 7_645_003_776


def test_higherhrnet_w32_published_params_and_macs():
    model = build_meta(named_arch("higherhrnet-w32"))
    params = count_params(model)
    macs, layers = count_macs(model, (512, 512))
    assert params == pytest.approx(28.6e6, rel=0.02)
    assert macs == pytest.approx(47.9e9, rel=0.06)
    assert params == 28_645_331        # pose_higher_hrnet.py, w32_512: same check as above
    assert macs == 46_203_404_288
    # The 3.5 % gap is the transposed conv: counted per output pixel (4x count_macs' per input
    # pixel) it gives 47.86e9, the published 47.9.
    deconv = layers["deconv.0.deconv"]
    assert deconv == 66 * 32 * 4 * 4 * 128 * 128
    assert macs + 3 * deconv == pytest.approx(47.9e9, rel=0.002)


def test_last_module_fuses_into_branch_zero_only():
    """pose_hrnet.py's multi_scale_output=False: with all four outputs the model would be 29.3 M, not 28.5 M."""
    model = build_meta(named_arch("hrnet-w32"))
    assert [len(m.fuse) for m in model.body.stage4] == [4, 4, 1]
    assert [len(m.fuse) for m in model.body.stage3] == [3, 3, 3, 3]
    with torch.device("meta"):
        extra = count_params(HRModule((32, 64, 128, 256))) - count_params(HRModule((32, 64, 128, 256), outputs=1))
    assert round((count_params(model) + extra) / 1e6, 1) == 29.3


def test_body_structure_is_hrnets():
    model = build_meta(HRNetArch(32))
    body = model.body
    stage1 = [(b.in_channels, b.out_channels, b.mid_channels) for b in body.layer1]
    assert stage1 == [(64, 256, 64)] + [(256, 256, 64)] * 3
    assert [len(s) for s in (body.stage2, body.stage3, body.stage4)] == [1, 4, 3]
    assert [len(s[0].branches) for s in (body.stage2, body.stage3, body.stage4)] == [2, 3, 4]
    assert all(len(branch) == 4 and all(isinstance(b, blocks.BasicBlock) for b in branch)
               for s in (body.stage2, body.stage3, body.stage4) for m in s for branch in m.branches)
    # transitions: 256 -> 32 (3x3) and 256 -> 64 (3x3 stride 2); later ones keep the branches, add one
    t1 = body.transition1.layers
    assert (t1[0].conv.in_channels, t1[0].conv.out_channels, t1[0].conv.stride) == (256, 32, (1, 1))
    assert (t1[1].conv.in_channels, t1[1].conv.out_channels, t1[1].conv.stride) == (256, 64, (2, 2))
    assert [type(layer).__name__ for layer in body.transition3.layers] == ["Identity"] * 3 + ["ConvBNAct"]
    # fuse: 8x down is three stride-2 3x3 convs (ReLU after the first two only), up is 1x1 conv-BN + nearest
    down = body.stage4[0].fuse[3][0].body
    assert [(c.conv.in_channels, c.conv.out_channels) for c in down] == [(32, 32), (32, 32), (32, 256)]
    assert ["act" in c._modules for c in down] == [True, True, False]
    up = body.stage4[0].fuse[0][3]
    assert up.up and up.body.conv.kernel_size == (1, 1) and "act" not in up.body._modules
    assert all(m.bias is None for m in body.modules() if isinstance(m, nn.Conv2d))  # every body conv is followed by BN


# ---------------------------------------------------------------- outputs

@pytest.mark.parametrize("size", [(128, 96), (64, 64)])
def test_output_shapes_of_the_three_heads(size):
    torch.manual_seed(0)
    h, w = size
    x = torch.randn(2, 3, h, w)
    outputs = {}
    for head in HEADS:
        model = build_hrnet(HRNetArch(8, head), 17).eval()
        with torch.no_grad():
            outputs[head] = model(x)
        assert model.stride == 4
        if head == "heatmap":
            assert not hasattr(model, "output_strides")
    heat, ae, (quarter, half) = outputs["heatmap"], outputs["ae"], outputs["higher"]
    assert type(heat) is torch.Tensor and tuple(heat.shape) == (2, 17, h // 4, w // 4)
    assert type(ae) is torch.Tensor and tuple(ae.shape) == (2, 34, h // 4, w // 4)
    assert type(outputs["higher"]) is tuple and len(outputs["higher"]) == 2
    assert type(quarter) is torch.Tensor and tuple(quarter.shape) == (2, 34, h // 4, w // 4)
    assert type(half) is torch.Tensor and tuple(half.shape) == (2, 17, h // 2, w // 2)
    assert build_hrnet(HRNetArch(8, "ae"), 17).output_strides == (4,)
    assert build_hrnet(HRNetArch(8, "higher"), 17).output_strides == (4, 2)


def test_higher_head_trains_end_to_end():
    torch.manual_seed(0)
    model = build_hrnet(HRNetArch(8, "higher"), 5)
    quarter, half = model(torch.randn(2, 3, 64, 64))
    (quarter.square().mean() + half.square().mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # the 1/2 prediction sees the 1/4 one: the deconv's input is concat(features, prediction)
    assert model.deconv[0].deconv.in_channels == 8 + 2 * 5


def test_init_is_hrnets():
    torch.manual_seed(0)
    model = build_hrnet(HRNetArch(16, "higher"), 17)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    weights = torch.cat([m.weight.detach().flatten() for m in convs])
    assert weights.std().item() == pytest.approx(0.001, rel=0.02) and abs(weights.mean().item()) < 1e-5
    assert all(torch.all(m.bias == 0) for m in convs if m.bias is not None)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)


# ---------------------------------------------------------------- arch JSON

def test_arch_json_round_trip_and_registry():
    assert ARCH_SPACES["hrnet"].arch is HRNetArch
    assert NAMED_MODELS["hrnet-w32"] == {"space": "hrnet", "width": 32, "head": "heatmap"}
    assert NAMED_MODELS["higherhrnet-w32"] == {"space": "hrnet", "width": 32, "head": "higher"}
    assert sorted(n for n, a in NAMED_MODELS.items() if a["space"] == "hrnet") == ["higherhrnet-w32", "hrnet-w32"]
    for name in ("hrnet-w32", "higherhrnet-w32"):
        arch = named_arch(name)
        assert arch.to_json() == NAMED_MODELS[name]
        assert arch_from_json(json.loads(json.dumps(arch.to_json()))) == arch
        assert hash(HRNetArch.from_json(arch.to_json())) == hash(arch)
    assert not named_arch("hrnet-w32").bottom_up and named_arch("higherhrnet-w32").bottom_up
    assert HRNetArch(8, "ae").bottom_up
    assert arch_from_json({"space": "hrnet"}) == HRNetArch(32, "heatmap")     # defaults
    assert arch_from_json({"space": "hrnet", "width": 48.0}).to_json()["width"] == 48
    assert HRNetArch(48).widths == (48, 96, 192, 384)


@pytest.mark.parametrize("data, message", [
    ({"space": "hrnet", "width": 0}, r"^arch\.width: expected an integer in \[4, 256\].*got 0$"),
    ({"space": "hrnet", "width": 257}, r"^arch\.width: expected an integer in \[4, 256\].*got 257$"),
    ({"space": "hrnet", "width": 32.5}, r"^arch\.width: .*got 32\.5$"),
    ({"space": "hrnet", "width": True}, r"^arch\.width: .*got True$"),
    ({"space": "hrnet", "head": "foo"}, r"^arch\.head: 'foo' not allowed; allowed: 'heatmap', 'ae', 'higher'$"),
    ({"space": "hrnet", "width": 32, "depth": 4}, r"^arch: unknown key 'depth'; allowed: space, width, head$"),
])
def test_bad_values_are_rejected_naming_the_field(data, message):
    with pytest.raises(PosenasError, match=message) as info:
        arch_from_json(data)
    assert "\n" not in str(info.value)


def test_direct_construction_is_validated():
    with pytest.raises(PosenasError, match=r"^arch\.width: "):
        HRNetArch(2)
    with pytest.raises(PosenasError, match=r"^arch\.head: "):
        HRNetArch(32, "bottomup")
    with pytest.raises(PosenasError, match=r"^num_joints: "):
        build_hrnet(HRNetArch(8), 0)
    with pytest.raises(PosenasError, match=r"^file\.json: arch\.space: expected 'hrnet'"):
        HRNetArch.from_json({"space": "simplebaseline"}, where="file.json: arch")


# ---------------------------------------------------------------- export, shared blocks

def test_heatmap_model_exports_to_onnx_and_matches_pytorch():
    pytest.importorskip("onnxruntime")
    from posenas.export import onnx_bytes
    from posenas.runtime import ort_session

    torch.manual_seed(0)
    model = build_hrnet(HRNetArch(8, "heatmap"), 17)
    with torch.no_grad():  # weights of order 1 / sqrt(fan_in) and real BN statistics, not ~1e-3: a signal to compare
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0, 0.7 / m.weight[0].numel() ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model.eval()
    session = ort_session(onnx_bytes(model, (64, 64)))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = model(x).numpy()
    theirs = session.run(None, {"image": x.numpy()})[0]
    assert theirs.shape == ours.shape == (1, 17, 16, 16)
    peak = float(np.abs(ours).max())
    assert peak > 1e-3
    assert float(np.abs(ours - theirs).max()) <= 1e-4 * peak


def test_resample_lives_in_blocks_and_autopose_uses_it():
    assert autopose.Resample is blocks.Resample
    widths = (4, 8, 16)
    down, up = blocks.Resample(widths, 0, 2), blocks.Resample(widths, 2, 0)
    x0, x2 = torch.randn(1, 4, 16, 16), torch.randn(1, 16, 4, 4)
    with torch.no_grad():
        assert down.eval()(x0, (4, 4)).shape == (1, 16, 4, 4)
        assert up.eval()(x2, (16, 16)).shape == (1, 4, 16, 16)
    # state-dict keys as before the move (AutoPose checkpoints still load)
    assert list(down.state_dict())[:2] == ["body.0.conv.weight", "body.0.bn.weight"]
    assert list(up.state_dict())[:2] == ["body.conv.weight", "body.bn.weight"]
