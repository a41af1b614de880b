"""ViPNAS search spaces: arch JSON, published S-ViPNAS figures, validation errors, the
supernet against its derived plain networks, elastic-layer semantics and the samplers."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from posenas.arch import arch_from_json, build_model, load_arch_file
from posenas.cost import count_macs, count_params
from posenas.errors import PosenasError
from posenas.spaces.elastic import ElasticConvBN, ElasticDeconvBN, block_diagonal
from posenas.spaces.vipnas import (SPACES, Choices, ViPNASMobileNetV3Arch, ViPNASResNetArch, ViPNASSupernet,
                                   crossover_arch, derive, in_choices, largest_arch, make_arch, mutate_arch,
                                   parse_choices, sample_arch, smallest_arch)

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "vipnas"
RES50 = CONFIGS / "s-vipnas-res50.json"
MBV3 = CONFIGS / "s-vipnas-mobilenetv3.json"
SPACE_NAMES = ("vipnas-resnet", "vipnas-mobilenetv3")
NUM_STAGES = {"vipnas-resnet": 4, "vipnas-mobilenetv3": 6}


pytestmark = pytest.mark.usefixtures("one_thread")


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def restricted(name: str, **stage_extra) -> Choices:
    """A small supernet space: stem widths 16/24, each stage's first three widths, depths
    1/2, head widths 32/48/64 (everything else: the full sets, unless ``stage_extra``)."""
    full = SPACES[name].choices
    stages = [{"widths": list(s.widths[:3]), "depths": [1, 2], **stage_extra} for s in full.stages]
    return parse_choices(SPACES[name], {"stem": {"widths": [16, 24]}, "stages": stages,
                                        "head": {"widths": [32, 48, 64]}}, "choices")


# ---------------------------------------------------------------- arch JSON round trip

def check_shape(data: dict, name: str) -> None:
    assert list(data) == ["space", "stem", "stages", "head"]
    assert data["space"] == name
    assert list(data["stem"]) == ["width", "kernel"]
    assert len(data["stages"]) == NUM_STAGES[name]
    for stage in data["stages"]:
        assert list(stage) == ["depth", "width", "expansion", "kernel", "groups", "attention"]
        assert all(type(stage[k]) is int for k in ("depth", "width", "expansion", "kernel", "groups"))
        assert stage["attention"] in ("none", "se", "gc")
    assert list(data["head"]) == ["widths", "groups", "kernels"]
    assert all(isinstance(v, list) and len(v) == 3 for v in data["head"].values())


@pytest.mark.parametrize("path,name,cls", [(RES50, "vipnas-resnet", ViPNASResNetArch),
                                           (MBV3, "vipnas-mobilenetv3", ViPNASMobileNetV3Arch)])
def test_published_arch_files_round_trip(path, name, cls):
    data = read(path)
    arch = load_arch_file(path)
    assert type(arch) is cls and type(arch).space == data["space"] == name
    assert arch.to_json() == data  # the file is exactly what to_json writes
    check_shape(arch.to_json(), name)
    assert in_choices(arch, SPACES[name].choices) is None  # published archs lie inside the full space
    again = arch_from_json(json.loads(json.dumps(arch.to_json())))
    assert again == arch and type(again) is cls


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_sampled_archs_round_trip(name):
    cls = {"vipnas-resnet": ViPNASResNetArch, "vipnas-mobilenetv3": ViPNASMobileNetV3Arch}[name]
    for seed in range(8):
        arch = sample_arch(name, None, random.Random(seed))
        data = arch.to_json()
        check_shape(data, name)
        back = arch_from_json(json.loads(json.dumps(data)))
        assert back == arch
        assert type(back) is cls and type(back).space == data["space"]
    for arch in (largest_arch(name), smallest_arch(name)):
        assert arch_from_json(arch.to_json()) == arch


# ---------------------------------------------------------------- published numbers

def test_s_vipnas_res50_params_and_macs_match_the_paper():
    arch = load_arch_file(RES50)
    with torch.device("meta"):
        model = build_model(arch, 17)
    # ViPNAS (Xu et al., CVPR 2021) Table 1: S-ViPNAS-Res50 7.3M params, 1.44 GFLOPs (MACs) at 256x192.
    assert count_params(model) == pytest.approx(7.3e6, rel=0.01)
    macs, _ = count_macs(model, (256, 192))
    assert macs == pytest.approx(1.44e9, rel=0.03)


def test_s_vipnas_mobilenetv3_builds_with_published_groups():
    arch = load_arch_file(MBV3)
    with torch.device("meta"):
        model = build_model(arch, 17).eval()
        out = model(torch.zeros(1, 3, 256, 192))
    assert tuple(out.shape) == (1, 17, 64, 48)
    # MMPose's S-ViPNAS-MobileNetV3: group numbers 8, 120, 20, 100, 280, 240; head groups 160.
    groups = [model.backbone.stages[i][0].depthwise.conv.groups for i in range(6)]
    assert groups == [8, 120, 20, 100, 280, 240]
    for stage, g in zip(model.backbone.stages, groups):  # every block of a stage shares its group number
        assert all(block.depthwise.conv.groups == g for block in stage)
    assert [d.deconv.groups for d in model.head.deconvs] == [160, 160, 160]


# ---------------------------------------------------------------- validation errors

def edited(path: Path, edit) -> dict:
    data = copy.deepcopy(read(path))
    edit(data)
    return data


@pytest.mark.parametrize("edit,fragments", [
    (lambda d: d["stages"][0].update(groups=7),
     ["arch.stages[0].groups", "7", "80", "allowed: 1, 2, 4, 5, 8, 10, 16, 20, 40, 80"]),
    (lambda d: d["stages"][1].update(width=170), ["arch.stages[1].width", "170", "allowed", "32", "192"]),
    (lambda d: d["stages"].pop(), ["arch.stages", "4 stages", "got 3"]),
    (lambda d: d["stages"][2].update(foo=1), ["arch.stages[2]", "'foo'", "allowed: depth, width, expansion"]),
    (lambda d: d["stages"][2].update(attention="cbam"), ["arch.stages[2].attention", "'cbam'",
                                                         "allowed: 'none', 'se', 'gc'"]),
    (lambda d: d["head"].update(kernels=[4, 3, 4]), ["arch.head.kernels[1]", "allowed: 2, 4"]),
    (lambda d: d.pop("head"), ["arch.head", "missing"]),
    (lambda d: d["stem"].update(width=40), ["arch.stem.width", "allowed: 16, 24, 32, 48, 64"]),
    (lambda d: d["head"].update(groups=[16, 5, 16]), ["arch.head.groups[1]", "144", "allowed"]),
    (lambda d: d.update(space="vipnas-foo"), ["arch.space", "'vipnas-foo'", "vipnas-resnet", "vipnas-mobilenetv3"]),
])
def test_bad_resnet_arch_names_the_field(edit, fragments):
    with pytest.raises(PosenasError) as err:
        arch_from_json(edited(RES50, edit))
    for fragment in fragments:
        assert fragment in str(err.value)


def test_bad_arch_errors_from_make_arch_and_mobilenet():
    with pytest.raises(PosenasError, match=r"arch\.space: 'vipnas-foo' is not a ViPNAS space; allowed: "
                                           r"vipnas-resnet, vipnas-mobilenetv3"):
        make_arch({**read(RES50), "space": "vipnas-foo"})
    # a 24-wide stage with expansion 5 has a 120-channel depthwise conv: 7 groups do not divide it
    with pytest.raises(PosenasError, match=r"arch\.stages\[1\]\.groups: 7 does not divide the 120 channels"):
        arch_from_json(edited(MBV3, lambda d: d["stages"][1].update(groups=7)))
    with pytest.raises(PosenasError, match=r"arch\.stages: vipnas-mobilenetv3 has 6 stages, got 4"):
        arch_from_json(edited(MBV3, lambda d: d.update(stages=d["stages"][:4])))
    # the resnet bottleneck's middle width is width / expansion: 80 / 4 = 20, so 16 groups do not fit
    with pytest.raises(PosenasError, match=r"arch\.stages\[0\]\.groups: 16 does not divide the 20 channels"):
        arch_from_json(edited(RES50, lambda d: d["stages"][0].update(expansion=4)))


@pytest.mark.parametrize("data,fragments", [
    ({"stages": [{"widths": [17]}, {}, {}, {}]}, ["choices.stages[0].widths[0]", "17", "allowed: 16, 32, 48"]),
    ({"head": {"widths": []}}, ["choices.head.widths", "must not be empty"]),
    ({"stem": {"kernels": [9]}}, ["choices.stem.kernels[0]", "allowed: 3, 5, 7"]),
    ({"head": {"group_widths": [2]}}, ["choices.head", "'group_widths'", "allowed: widths, groups, kernels"]),
    ({"stages": [{}, {"attentions": ["cbam"]}, {}, {}]}, ["choices.stages[1].attentions[0]", "'cbam'"]),
])
def test_parse_choices_errors_name_the_field(data, fragments):
    with pytest.raises(PosenasError) as err:
        parse_choices(SPACES["vipnas-resnet"], data, "choices")
    for fragment in fragments:
        assert fragment in str(err.value)


def test_parse_choices_keeps_full_sets_and_group_widths_for_mobilenet():
    space = SPACES["vipnas-mobilenetv3"]
    assert parse_choices(space, None, "choices") == space.choices
    picked = parse_choices(space, {"head": {"group_widths": [8, 1]}}, "choices")
    assert picked.head_groups == (1, 8)  # sorted in the full set's order
    with pytest.raises(PosenasError, match=r"choices\.head\.group_widths\[0\]: 3 not allowed; allowed: 1, 2, 4, 8"):
        parse_choices(space, {"head": {"group_widths": [3]}}, "choices")


# ---------------------------------------------------------------- supernet vs derived networks

def scramble(module: nn.Module, seed: int) -> None:
    """Random, non-trivial parameters and BN running statistics (the default init makes the
    head's output ~1e-7, and the GC blocks start as the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 1.5 + 0.5)


SUPERNET_CASES = [("vipnas-resnet", {}, False),  # dense storage of the grouped conv (max group width == channels)
                  ("vipnas-resnet", {"groups": [4, 8, 16]}, True),  # banded storage in a bottleneck
                  ("vipnas-mobilenetv3", {}, True)]  # banded storage: group widths 1, 2, 4, 8


@pytest.fixture(scope="module", params=SUPERNET_CASES, ids=["resnet", "resnet-banded", "mobilenetv3"])
def supernet_case(request):
    name, extra, banded = request.param
    choices = restricted(name, **extra)
    torch.manual_seed(0)
    supernet = ViPNASSupernet(name, choices, 17)
    scramble(supernet, 1)
    for stage in supernet.backbone.stages:
        for block in stage:
            assert (block.conv2 if name == "vipnas-resnet" else block.depthwise).banded == banded
    return name, choices, supernet


def test_supernet_matches_derived_networks(supernet_case):
    name, choices, supernet = supernet_case
    supernet.eval()
    rng = random.Random(7)
    archs = [largest_arch(name, choices), smallest_arch(name, choices)] + [
        sample_arch(name, choices, rng) for _ in range(5)]
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    outputs = []
    for arch in archs:
        supernet.set_active(arch)
        with torch.no_grad():
            y1 = supernet(x)
            y2 = derive(arch, 17, supernet).eval()(x)
        assert y1.shape == y2.shape == (1, 17, 16, 16)
        assert torch.isfinite(y1).all()
        assert y1.abs().max() > 1e-2  # a meaningful comparison, not two ~0 tensors
        assert (y1 - y2).abs().max() <= 1e-5, arch
        outputs.append(y1)
    # the supernet really switches: every pair of distinct archs gives a different function
    for i in range(len(archs)):
        for j in range(i + 1, len(archs)):
            if archs[i] != archs[j]:
                assert (outputs[i] - outputs[j]).abs().max() > 1e-3


def test_derived_network_inherits_the_supernet_slices(supernet_case):
    name, choices, supernet = supernet_case
    arch = smallest_arch(name, choices)
    model = derive(arch, 17, supernet)
    stem = supernet.backbone.stem
    k, w = arch.stem_kernel, arch.stem_width
    o = (stem.max_kernel - k) // 2
    assert torch.equal(model.backbone.stem.conv.weight, stem.conv.weight[:w, :, o:o + k, o:o + k])
    assert torch.equal(model.backbone.stem.bn.running_var, stem.bn.running_var[:w])
    assert len(model.backbone.stages[0]) == arch.stages[0].depth
    c = arch.head_widths[-1]
    assert torch.equal(model.head.final.weight, supernet.head.final.weight[:, :c])


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_set_active_outside_the_choices_names_the_field(name):
    choices = restricted(name)
    supernet = ViPNASSupernet(name, choices, 17)
    big = largest_arch(name)  # the full space's largest: wider stem than 16/24
    with pytest.raises(PosenasError, match=r"not a sub-net of this supernet: stem\.width \d+ \(choices: \[16, 24\]\)"):
        supernet.set_active(big)
    data = largest_arch(name, choices).to_json()
    data["stages"][2]["width"] = SPACES[name].choices.stages[2].widths[3]  # the 4th width: not in the first three
    data["stages"][2]["groups"] = 1
    with pytest.raises(PosenasError, match=r"stages\[2\]\.width"):
        supernet.set_active(make_arch(data))
    data = largest_arch(name, choices).to_json()
    data["stages"][0]["depth"] = 3
    with pytest.raises(PosenasError, match=r"stages\[0\]\.depth 3 \(choices: \[1, 2\]\)"):
        supernet.set_active(make_arch(data))
    other = "vipnas-mobilenetv3" if name == "vipnas-resnet" else "vipnas-resnet"
    with pytest.raises(PosenasError, match=r"arch\.space"):
        supernet.set_active(smallest_arch(other))
    supernet.set_active(smallest_arch(name, choices))  # still usable


# ---------------------------------------------------------------- training mode: gradients stay in the slice

@pytest.mark.parametrize("name", SPACE_NAMES)
def test_backward_touches_only_the_active_slice(name):
    choices = restricted(name)
    torch.manual_seed(0)
    supernet = ViPNASSupernet(name, choices, 17)
    scramble(supernet, 2)
    arch = smallest_arch(name, choices)
    assert arch.stages[0].depth == 1 and arch.stem_width == 16 and arch.stem_kernel == 3
    supernet.set_active(arch)
    supernet.train()
    stem = supernet.backbone.stem
    mean_before = stem.bn.running_mean.clone()
    y = supernet(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4)))
    y.square().mean().backward()

    # blocks beyond the active depth get no gradient at all
    for stage in supernet.backbone.stages:
        for p in stage[1].parameters():
            assert p.grad is None or not p.grad.any()
    # stem conv: 16 of 24 filters, centre 3x3 of 7x7
    g = stem.conv.weight.grad
    assert g[:16, :, 2:5, 2:5].abs().sum() > 0
    assert g[:16, :, 2:5, 2:5].ne(0).float().mean() > 0.5
    assert not g[16:].any()
    outside = torch.ones_like(g, dtype=torch.bool)
    outside[:, :, 2:5, 2:5] = False
    assert not g[outside].any()
    assert stem.bn.weight.grad[:16].any() and not stem.bn.weight.grad[16:].any()
    # the BN running stats of the active channels move, the others stay
    assert not torch.equal(stem.bn.running_mean[:16], mean_before[:16])
    assert torch.equal(stem.bn.running_mean[16:], mean_before[16:])
    # the heatmap conv reads only the last head width's channels
    c = arch.head_widths[-1]
    fg = supernet.head.final.weight.grad
    assert fg[:, :c].any() and not fg[:, c:].any()
    # attention options not active in the smallest arch ("none") get no gradient
    for p in supernet.backbone.stages[0][0].attention.parameters():
        assert p.grad is None or not p.grad.any()


# ---------------------------------------------------------------- elastic layers

def grouped_by_hand(dense: torch.Tensor, groups: int) -> torch.Tensor:
    """Group j of g: rows j*a/g ... (j+1)*a/g, columns j*b/g ... (j+1)*b/g of the dense (a, b, ...) weight."""
    a, b = dense.shape[:2]
    ra, rb = a // groups, b // groups
    return torch.cat([dense[j * ra:(j + 1) * ra, j * rb:(j + 1) * rb] for j in range(groups)], 0)


def test_block_diagonal_takes_the_diagonal_blocks():
    w = torch.randn(12, 8, 3, 3)
    for g in (1, 2, 4):
        out = block_diagonal(w, g)
        assert out.shape == (12, 8 // g, 3, 3)
        assert torch.equal(out, grouped_by_hand(w, g))
    # a concrete 4x4 case, entry by entry: 2 groups keep rows 0-1 x cols 0-1 and rows 2-3 x cols 2-3
    m = torch.arange(16.0).reshape(4, 4)
    assert block_diagonal(m, 2).tolist() == [[0.0, 1.0], [4.0, 5.0], [10.0, 11.0], [14.0, 15.0]]
    assert block_diagonal(m, 4).tolist() == [[0.0], [5.0], [10.0], [15.0]]


@pytest.mark.parametrize("c,k,g,stride", [(12, 3, 3, 1), (8, 5, 2, 2), (12, 3, 12, 1), (6, 3, 3, 1)])
def test_banded_conv_equals_grouped_conv_of_the_dense_matrix(c, k, g, stride):
    torch.manual_seed(0)
    band, cmax = 4, 12
    layer = ElasticConvBN(cmax, cmax, 5, stride, act=None, bn=False, max_group_width=band)
    assert layer.banded and layer.conv.weight.shape == (cmax, 2 * band - 1, 5, 5)
    with torch.no_grad():
        layer.conv.bias.normal_()
    stored = layer.conv.weight.detach()
    dense = torch.zeros(cmax, cmax, 5, 5)
    for o in range(cmax):
        for i in range(cmax):
            if abs(i - o) < band:
                dense[o, i] = stored[o, i - o + band - 1]
    layer.set_active(c, c, k, g)
    x = torch.randn(2, c, 9, 9)
    o = (5 - k) // 2
    weight = grouped_by_hand(dense[:c, :c, o:o + k, o:o + k], g)
    expected = F.conv2d(x, weight, layer.conv.bias[:c].detach(), stride, k // 2, 1, g)
    with torch.no_grad():
        assert torch.allclose(layer(x), expected, atol=1e-5)


def test_banded_conv_rejects_groups_wider_than_the_band():
    layer = ElasticConvBN(12, 12, 3, max_group_width=4)
    with pytest.raises(ValueError, match="band"):
        layer.set_active(12, 12, 3, 2)  # 6 channels per group > 4
    with pytest.raises(ValueError):
        layer.set_active(12, 8, 3, 4)  # a banded conv is square


def test_kernel_crop_uses_the_centre():
    torch.manual_seed(0)
    layer = ElasticConvBN(4, 6, 7, act=None, bn=False)
    with torch.no_grad():
        layer.conv.bias.normal_()
    w, b = layer.conv.weight.detach(), layer.conv.bias.detach()
    x = torch.randn(1, 4, 10, 10)
    layer.set_active(4, 6, 3)
    with torch.no_grad():
        assert torch.allclose(layer(x), F.conv2d(x, w[..., 2:5, 2:5], b, padding=1), atol=1e-6)
        layer.set_active(3, 5, 5)  # fewer channels and kernel 5
        assert torch.allclose(layer(x[:, :3]), F.conv2d(x[:, :3], w[:5, :3, 1:6, 1:6], b[:5], padding=2), atol=1e-6)
        layer.set_active(4, 6, 7)
        assert torch.allclose(layer(x), F.conv2d(x, w, b, padding=3), atol=1e-6)


@pytest.mark.parametrize("groups", [1, 2])
def test_deconv_kernel_2_uses_the_centre_and_doubles_the_size(groups):
    torch.manual_seed(0)
    layer = ElasticDeconvBN(4, 6, 4, act=None).eval()
    scramble(layer, 5)
    layer.set_active(4, 6, 2, groups)
    x = torch.randn(2, 4, 5, 7)
    with torch.no_grad():
        y = layer(x)
    assert y.shape == (2, 6, 10, 14)
    # kernel 2, stride 2, no padding: input pixel (r, s) writes the 2x2 output block at (2r, 2s)
    w = layer.deconv.weight.detach()[:, :, 1:3, 1:3]  # centre 2x2 of the 4x4
    dense = torch.zeros_like(w)
    ri, ro = 4 // groups, 6 // groups
    for j in range(groups):  # block-diagonal (transposed conv weight: in x out)
        dense[j * ri:(j + 1) * ri, j * ro:(j + 1) * ro] = w[j * ri:(j + 1) * ri, j * ro:(j + 1) * ro]
    z = torch.einsum("nirs,iopq->norpsq", x, dense).reshape(2, 6, 10, 14)  # output (2r + p, 2s + q)
    bn = layer.bn
    expected = (z - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps) \
        * bn.weight[:, None, None] + bn.bias[:, None, None]
    assert torch.allclose(y, expected.detach(), atol=1e-5)


# ---------------------------------------------------------------- sampling

@pytest.mark.parametrize("name", SPACE_NAMES)
def test_sampling_is_deterministic_valid_and_inside_the_choices(name):
    choices = restricted(name)
    first = [sample_arch(name, choices, random.Random(s)) for s in range(10)]
    assert first == [sample_arch(name, choices, random.Random(s)) for s in range(10)]
    assert len(set(first)) > 5  # different seeds give different sub-nets
    rng = random.Random(11)
    seq1 = [sample_arch(name, choices, rng) for _ in range(3)]
    rng = random.Random(11)
    assert seq1 == [sample_arch(name, choices, rng) for _ in range(3)]
    for arch in first + [sample_arch(name, None, random.Random(s)) for s in range(5)]:
        assert make_arch(arch.to_json()) == arch
    for arch in first:
        assert in_choices(arch, choices) is None
    for arch in (largest_arch(name, choices), smallest_arch(name, choices)):
        assert in_choices(arch, choices) is None
        assert make_arch(arch.to_json()) == arch
    rng = random.Random(3)
    for i in range(10):
        mutated = mutate_arch(first[i], choices, rng, prob=0.5)
        crossed = crossover_arch(first[i], first[(i + 1) % 10], rng)
        for arch in (mutated, crossed):
            assert make_arch(arch.to_json()) == arch
            assert in_choices(arch, choices) is None
        # crossover takes each stage from one of the parents
        assert all(s in (a, b) for s, a, b in zip(crossed.stages, first[i].stages, first[(i + 1) % 10].stages))
    assert mutate_arch(first[0], choices, rng, prob=0.0) == first[0]


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_largest_and_smallest_bound_the_sampled_params(name):
    # attention restricted to none/gc: the order GC > SE > none used by largest_arch is a
    # convention, not a size order (an MBV3 SE block is larger than a GC block)
    choices = restricted(name, attentions=["none", "gc"])
    with torch.device("meta"):
        lo = count_params(derive(smallest_arch(name, choices)))
        hi = count_params(derive(largest_arch(name, choices)))
        rng = random.Random(5)
        for _ in range(5):
            p = count_params(derive(sample_arch(name, choices, rng)))
            assert lo <= p <= hi
    assert lo < hi


def test_extremes_pick_the_extreme_dimensions():
    choices = restricted("vipnas-resnet")
    big, small = largest_arch("vipnas-resnet", choices), smallest_arch("vipnas-resnet", choices)
    assert (big.stem_width, big.stem_kernel, small.stem_width, small.stem_kernel) == (24, 7, 16, 3)
    assert [s.width for s in big.stages] == [48, 64, 96, 160]
    assert [s.width for s in small.stages] == [16, 32, 64, 128]
    assert [(s.depth, s.expansion, s.kernel, s.attention) for s in big.stages] == [(2, 1, 7, "gc")] * 4
    assert [(s.depth, s.expansion, s.kernel, s.attention) for s in small.stages] == [(1, 4, 3, "none")] * 4
    # largest: 1 group (dense); smallest: the most groups that divide the middle widths 4, 8, 16, 32
    assert [s.groups for s in big.stages] == [1] * 4
    assert [s.groups for s in small.stages] == [4, 8, 16, 32]
    assert (big.head_widths, big.head_groups, big.head_kernels) == ((64,) * 3, (1,) * 3, (4,) * 3)
    assert (small.head_widths, small.head_groups, small.head_kernels) == ((32,) * 3, (32,) * 3, (2,) * 3)
