"""EfficientPose search space: Table 1 settings, arch JSON round trips and errors, the slim
head (upsampling styles, SIC), the published model sizes and `posenas profile --arch`."""

from __future__ import annotations

import json
import random

import pytest
import torch

from posenas.arch import arch_from_json, build_model, load_arch_file, save_arch_file
from posenas.cli import main
from posenas.cost import count_macs, count_params
from posenas.errors import PosenasError
from posenas.models.heads import SpatialInfoCorrection
from posenas.spaces.efficientpose import MBCONV_OPS, OPS, SETTINGS, EfficientPoseArch, HeadArch


pytestmark = pytest.mark.usefixtures("one_thread")


def random_blocks(setting: str, rng: random.Random) -> list[str]:
    return [rng.choice(p.ops) for p in SETTINGS[setting].positions]


def arch_json(setting: str = "small", blocks: list[str] | None = None, **head) -> dict:
    blocks = blocks if blocks is not None else [MBCONV_OPS[0]] * len(SETTINGS[setting].positions)
    data = {"space": "efficientpose", "setting": setting, "blocks": blocks}
    if head:
        data["head"] = head
    return data


def test_settings_follow_table_1():
    small, large = SETTINGS["small"], SETTINGS["large"]
    assert (small.sep_width, large.sep_width) == (16, 24)
    assert [(s.width, s.stride, s.positions) for s in small.stages] == [(24, 2, 4), (32, 2, 6), (64, 2, 10), (96, 1, 8)]
    assert [(s.width, s.stride, s.positions) for s in large.stages] == [(32, 2, 6), (64, 2, 8), (96, 2, 10),
                                                                        (160, 1, 10)]
    assert (len(small.positions), len(large.positions)) == (28, 34)
    # the first position of each stage changes width (and stride in stages 1-3): never skippable
    for setting in (small, large):
        firsts = [p.index for p in setting.positions if not p.can_skip]
        starts = [sum(s.positions for s in setting.stages[:i]) for i in range(4)]
        assert firsts == starts
    assert len(OPS) == 7 and "skip" in OPS and "k7_e6" in MBCONV_OPS


@pytest.mark.parametrize("setting", ["small", "large"])
def test_arch_json_round_trip_and_stride(tmp_path, setting):
    rng = random.Random(setting)
    for i in range(3):
        data = arch_json(setting, random_blocks(setting, rng),
                         widths=[rng.choice([32, 64]), 32], sic=bool(i % 2), upsample=["deconv", "mbv1", "mbv2"][i])
        arch = arch_from_json(data)
        assert arch.to_json() == data
        save_arch_file(tmp_path / "a.json", arch)
        assert load_arch_file(tmp_path / "a.json") == arch
        model = build_model(arch, 17).eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, 128, 96))
        assert out.shape == (1, 17, 32, 24)
    # head defaults to the paper's (64, 32, SIC, plain transposed convs)
    assert arch_from_json(arch_json(setting)).head == HeadArch((64, 32), True, "deconv")


def test_skip_shortens_the_chain():
    n = len(SETTINGS["small"].positions)
    full = build_model(arch_json("small", ["k3_e3"] * n), 17)
    blocks = ["k3_e3" if not p.can_skip else "skip" for p in SETTINGS["small"].positions]
    short = build_model(arch_json("small", blocks), 17)
    assert count_params(short) < count_params(full)
    assert sum(isinstance(b, torch.nn.Identity) for b in short.backbone.blocks) == n - 4


@pytest.mark.parametrize("data, message", [
    (arch_json(blocks=["skip"] + ["k3_e3"] * 27),
     r"arch\.blocks\[0\]: 'skip' not allowed at position 0 \(NAS stage 1: stride 2, 16 -> 24 channels\), which "
     r"changes the resolution; allowed: k3_e3, k3_e6"),
    (arch_json(blocks=["k3_e3"] * 20 + ["skip"] + ["k3_e3"] * 7),
     r"arch\.blocks\[20\]: 'skip' not allowed at position 20 \(NAS stage 4: stride 1, 64 -> 96 channels\), "
     r"which changes the width"),
    (arch_json(blocks=["k3_e3"] * 5 + ["k9_e6"] + ["k3_e3"] * 22),
     r"arch\.blocks\[5\]: 'k9_e6' not allowed; allowed: 'k3_e3', .*'skip'"),
    (arch_json(blocks=["k3_e3"] * 27), r"arch\.blocks: the small setting has 28 positions, got 27 blocks"),
    ({**arch_json(), "setting": "medium"}, r"arch\.setting: 'medium' not allowed; allowed: 'small', 'large'"),
    (arch_json(widths=[64]), r"arch\.head\.widths: expected 2 entries, got 1"),
    (arch_json(upsample="bilinear"), r"arch\.head\.upsample: 'bilinear' not allowed; allowed: 'deconv', 'mbv1'"),
    (arch_json(sic="yes"), r"arch\.head\.sic: expected true or false"),
    ({**arch_json(), "depth": 3}, r"arch: unknown key 'depth'"),
])
def test_invalid_arch_names_the_field(data, message):
    with pytest.raises(PosenasError, match=message):
        arch_from_json(data)


def test_direct_construction_is_validated():
    with pytest.raises(PosenasError, match=r"arch\.blocks\[0\]: 'skip' not allowed"):
        EfficientPoseArch("large", ("skip",) + ("k3_e3",) * 33)


def test_published_sizes_lie_inside_their_settings():
    """EfficientPose-A (small) has 1.3 M params / 0.67 GFLOPs, B and C (large) 3.3 M / 1.5 and
    5.0 M / 2.0 at 256x256 with 16 MPII joints (Tables 2, 3): each setting's smallest and
    largest arch must bracket them (the per-block choices are only drawn in the paper's Fig. 4)."""
    def size(setting: str, pick) -> tuple[float, float]:
        model = build_model(arch_json(setting, [pick(p) for p in SETTINGS[setting].positions]), 16)
        return count_params(model) / 1e6, count_macs(model, (256, 256))[0] / 1e9

    smallest = lambda p: "skip" if p.can_skip else "k3_e3"  # noqa: E731
    for setting, published in (("small", [(1.3, 0.67)]), ("large", [(3.3, 1.5), (5.0, 2.0)])):
        lo, hi = size(setting, smallest), size(setting, lambda p: "k7_e6")
        for params, gmacs in published:
            assert lo[0] < params < hi[0] and lo[1] < gmacs < hi[1], (setting, lo, hi)
    assert size("small", lambda p: "k7_e6")[0] < 3.3  # B and C do not fit the small setting


def test_sic_starts_as_identity_after_relu():
    sic = SpatialInfoCorrection(8)
    x = torch.randn(2, 8, 6, 5)
    assert torch.equal(sic(x), torch.relu(x))


def test_head_variants_and_sic_cost():
    """MBV1-style upsampling (depthwise transposed conv + 1x1) is cheaper than the plain transposed
    conv, MBV2 style (x6 expansion) dearer than MBV1. (With transposed convs counted per input
    pixel, our convention, MBV2 also costs more than plain, unlike the paper's Table 8.)"""
    blocks = ["k3_e6"] * 28
    macs = {s: count_macs(build_model(arch_json("small", blocks, upsample=s), 16), (256, 256))[0]
            for s in ("deconv", "mbv1", "mbv2")}
    assert macs["mbv1"] < macs["deconv"] and macs["mbv1"] < macs["mbv2"]
    no_sic = count_macs(build_model(arch_json("small", blocks, sic=False), 16), (256, 256))[0]
    assert 0 < macs["deconv"] - no_sic == 32 * 9 * 64 * 64  # SIC: a 3x3 depthwise conv on 32 x 64 x 64


def test_profile_cli_on_an_efficientpose_arch(tmp_path, capsys):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(arch_json("large", ["k5_e3"] * 34)))
    assert main(["profile", "--arch", str(path), "--input", "256x192", "--no-latency", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == count_params(build_model(load_arch_file(path), 17))
    path.write_text(json.dumps(arch_json("large", ["skip"] * 34)))
    assert main(["profile", "--arch", str(path), "--no-latency"]) == 2
    assert "a.json: arch.blocks[0]: 'skip' not allowed at position 0" in capsys.readouterr().err
