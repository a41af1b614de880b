"""Cost model: params, MACs (FlopCounterMode / 2) with per-layer breakdown, latency, `posenas profile`."""

import json

import pytest
import torch

from posenas.arch import build_model, named_arch
from posenas.cli import main
from posenas.cost import count_macs, count_params, measure_latency


def _meta(name):
    with torch.device("meta"):
        return build_model(named_arch(name), 17)


@pytest.mark.parametrize("name, params_m, gmacs", [
    ("simplebaseline-resnet50", 34.0, 5.4),     # published SimpleBaseline figures (DESIGN.md)
    ("simplebaseline-mobilenetv2", 9.57, 1.57),
])
def test_published_costs_and_layer_breakdown(name, params_m, gmacs):
    model = _meta(name)
    assert round(count_params(model) / 1e6, 2 if params_m < 10 else 1) == params_m
    total, layers = count_macs(model, (256, 192))
    assert total == pytest.approx(gmacs * 1e9, rel=0.03)
    assert sum(layers.values()) == total  # every MAC sits in a leaf layer
    assert any(k.startswith("head.deconvs.0") for k in layers)


def test_latency_is_measured_with_its_thread_count():
    model = build_model(named_arch("simplebaseline-small"), 17)
    t = measure_latency(model, (128, 96), threads=1, warmup=1, runs=3)
    assert t["threads"] == 1 and t["runs"] == 3 and 0 < t["p10"] <= t["median"] <= t["p90"]


def test_profile_cli_json(tmp_path, capsys):
    assert main(["profile", "--model", "simplebaseline-small", "--input", "128x96", "--runs", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["input"] == [128, 96] and out["params"] == 1905321
    assert out["macs"] == count_macs(build_model(named_arch("simplebaseline-small"), 17), (128, 96))[0]
    assert out["latency_ms"]["median"] > 0


def test_profile_arch_file_and_bad_input(tmp_path, capsys):
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({"space": "simplebaseline", "backbone": "resnet18", "width_mult": 0.25,
                                "head": {"widths": [32, 32, 32], "kernels": [4, 4, 4]}}))
    assert main(["profile", "--arch", str(arch), "--input", "64x64", "--no-latency", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latency_ms"] is None
    arch.write_text(json.dumps({"space": "simplebaseline", "backbone": "resnet34"}))
    assert main(["profile", "--arch", str(arch), "--no-latency"]) == 2
    assert "arch.backbone: unknown backbone 'resnet34'" in capsys.readouterr().err
    arch.write_text(json.dumps({"space": "vipnas-resnet9"}))
    assert main(["profile", "--arch", str(arch), "--no-latency"]) == 2
    assert "unknown space 'vipnas-resnet9'; allowed: simplebaseline" in capsys.readouterr().err
    assert main(["profile", "--model", "simplebaseline-small", "--input", "100x96", "--no-latency"]) == 2
    assert "--input: 100x96 gives 32x24 heatmaps, expected 25x24" in capsys.readouterr().err
    assert main(["profile", "--model", "nope"]) == 2
    assert "unknown model 'nope'; allowed: simplebaseline-resnet18" in capsys.readouterr().err


def test_profile_onnx_runtime_exports_on_the_fly(capsys):
    assert main(["profile", "--model", "simplebaseline-small", "--input", "128x96", "--runtime", "onnx",
                 "--threads", "1", "--runs", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["latency_ms"]["runtime"] == "onnx" and out["latency_ms"]["threads"] == 1
    assert out["params"] == 1905321
