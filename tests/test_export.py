"""ONNX export with parity check, and ONNX Runtime evaluation/inference equal to PyTorch."""

import json

import pytest
import torch

from posenas import export as export_module
from posenas.cli import main
from posenas.errors import PosenasError
from posenas.export import export_onnx
from posenas.runtime import load_model

from test_api import tiny_checkpoint
from test_engine import data_root  # noqa: F401  (fixture)


@pytest.fixture
def checkpoint(tmp_path):
    """Heatmaps of order 0.5 (a one-epoch model's are ~1e-8: any parity check would pass on them)."""
    return tiny_checkpoint(tmp_path / "model.pt")


def test_export_then_onnx_runtime_matches_pytorch(tmp_path, checkpoint, data_root, capsys):  # noqa: F811
    onnx_path = tmp_path / "model.onnx"
    report = export_onnx(checkpoint, onnx_path, dynamic_batch=True)
    assert set(report["max_abs_diff"]) == {"random", "real", "random batch of 3"}
    with torch.no_grad():
        peak = float(load_model(checkpoint, "torch").model(export_module.real_input((96, 64))).abs().max())
    assert peak > 1e-2  # a signal far above the parity tolerance
    assert max(report["max_abs_diff"].values()) <= 1e-4 * peak
    loaded = load_model(onnx_path, "onnx")  # self-describing: schema, codec, arch from the file
    assert loaded.schema.name == "coco17" and loaded.codec.input_size == (96, 64)

    args = ["eval", "--data", str(data_root), "--flip-test", "--json"]
    assert main(args + ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "t")]) == 0
    torch_stats = json.loads(capsys.readouterr().out)
    assert main(args + ["--checkpoint", str(onnx_path), "--runtime", "onnx", "--out", str(tmp_path / "o")]) == 0
    onnx_stats = json.loads(capsys.readouterr().out)
    assert onnx_stats == pytest.approx(torch_stats, abs=1e-6)
    a = json.loads((tmp_path / "t" / "predictions.json").read_text())
    b = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert [p["image_id"] for p in a] == [p["image_id"] for p in b]
    assert all(x == pytest.approx(y, abs=2e-3) for p, q in zip(a, b) for x, y in zip(p["keypoints"], q["keypoints"]))

    assert main(["profile", "--checkpoint", str(onnx_path), "--runtime", "onnx", "--runs", "2", "--json"]) == 0
    onnx_profile = json.loads(capsys.readouterr().out)
    assert main(["profile", "--checkpoint", str(checkpoint), "--runs", "2", "--json"]) == 0
    torch_profile = json.loads(capsys.readouterr().out)
    assert onnx_profile["latency_ms"]["runtime"] == "onnx" and torch_profile["latency_ms"]["runtime"] == "torch"
    assert (onnx_profile["params"], onnx_profile["macs"]) == (torch_profile["params"], torch_profile["macs"])

    image = next((data_root / "images" / "val").glob("*.jpg"))
    assert main(["infer", "--checkpoint", str(onnx_path), "--runtime", "onnx", str(image), "--out", str(tmp_path / "inf")]) == 0
    assert len(json.loads((tmp_path / "inf" / "predictions.json").read_text())["predictions"]) == 1


def test_parity_failure_writes_nothing(tmp_path, checkpoint, monkeypatch):
    monkeypatch.setattr(export_module, "PARITY_TOLERANCE", 0.0)
    with pytest.raises(PosenasError, match=r"ONNX parity failed on the .* input: max abs heatmap difference .* > 0 \(0 x the heatmaps. peak\); nothing written"):
        export_onnx(checkpoint, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_parity_is_relative_to_the_heatmaps(tmp_path, checkpoint, monkeypatch):
    """An ONNX graph off by 1 % of the heatmaps' peak fails, however small the heatmaps are."""
    import numpy as np

    real_session = export_module.ort_session

    class OffByOnePercent:
        def __init__(self, data):
            self.session = real_session(data)

        def run(self, names, feeds):
            out = self.session.run(names, feeds)[0]
            return [out + 0.01 * np.abs(out).max()]

    monkeypatch.setattr(export_module, "ort_session", OffByOnePercent)
    with pytest.raises(PosenasError, match="ONNX parity failed"):
        export_onnx(checkpoint, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_runtime_mismatches_and_bad_files(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(PosenasError, match="not a readable ONNX model"):
        load_model(bad, "onnx")
    with pytest.raises(PosenasError, match="an ONNX file; run it with --runtime onnx"):
        load_model(bad, "torch")
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"x")
    with pytest.raises(PosenasError, match="--runtime onnx runs an exported model"):
        load_model(ckpt, "onnx")
    assert main(["export", str(ckpt), "--onnx", str(tmp_path / "o.onnx")]) == 2
    assert "not a posenas checkpoint (or corrupt)" in capsys.readouterr().err
