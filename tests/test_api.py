"""The Python API (`import posenas`): lazy import, the README's example run as written, and
each verb giving what the matching command gives."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import posenas
from posenas.arch import build_model as arch_build_model
from posenas.checkpoint import save_checkpoint
from posenas.cli import main
from posenas.codecs.heatmap import HeatmapCodec
from posenas.cost import profile_model
from posenas.data.layout import load_dataset
from posenas.errors import PosenasError
from posenas.evaluation.reference import coco_results
from posenas.jsonio import write_json

from conftest import make_dataset

REPO = Path(__file__).resolve().parent.parent
TINY_ARCH = {"space": "simplebaseline", "backbone": "resnet18", "width_mult": 0.125,
             "head": {"widths": [16, 16, 16], "kernels": [4, 4, 4]}}


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A self-describing checkpoint of a randomly initialised tiny model (no training needed)."""
    torch.manual_seed(seed)
    model = arch_build_model(TINY_ARCH, 17)
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    for conv in convs:  # heatmaps of order 0.5 that vary with the image (the training init gives ~1e-5)
        torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    convs[-1].weight.data *= 0.1
    codec = HeatmapCodec(input_size=(96, 64), heatmap_size=(24, 16), sigma=2.0)
    save_checkpoint(path, {"arch": TINY_ARCH, "schema": "coco17", "codec": codec.to_dict(),
                           "state_dict": model.state_dict()})
    return path


@pytest.fixture
def demo_tree(tmp_path, monkeypatch):
    """What `make demo` leaves, in miniature: the data, a checkpoint, its val predictions; cwd there."""
    root = tmp_path / "data" / "synthetic" / "coco"
    make_dataset("coco", root, images=3, people=2)
    run = tmp_path / "runs" / "demo" / "train"
    tiny_checkpoint(run / "checkpoints" / "last.pt")
    write_json(run / "val_predictions.json", coco_results(load_dataset(root), noise=0.3, seed=1))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def readme_python_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_import_posenas_stays_light():
    code = ("import sys, posenas; assert 'torch' not in sys.modules, 'import posenas loaded torch'; "
            "assert {'load', 'evaluate', 'profile', 'build_model', 'load_arch'} <= set(dir(posenas))")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    from posenas import api

    assert (posenas.load, posenas.profile, posenas.Predictor) == (api.load, api.profile, api.Predictor)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        posenas.nope


def test_readme_example_runs(demo_tree, one_thread, capsys):
    exec(compile(readme_python_block(), "README.md", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    assert "(17, 3)" in printed and "'nose': [" in printed  # the poses
    assert "'params': 7286772" in printed  # the profile of S-ViPNAS-Res50
    assert main(["eval", "--gt", "data/synthetic/coco", "--pred", "runs/demo/train/val_predictions.json", "--json"]) == 0
    ap = json.loads(capsys.readouterr().out)["AP"]
    assert f"\n{ap}\n" in printed  # evaluate printed what `posenas eval --json` gives


def test_predict_equals_infer(tmp_path, one_thread):
    ckpt = tiny_checkpoint(tmp_path / "model.pt")
    image = np.random.default_rng(0).integers(0, 255, (80, 120, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "frame.png"), image)  # lossless: infer reads back these very pixels
    boxes = [[10.0, 5.0, 40.0, 60.0], [60.0, 12.0, 50.0, 66.0]]
    write_json(tmp_path / "boxes.json", [{"image": "frame.png", "bbox": b, "score": 1.0} for b in boxes])
    assert main(["infer", "--checkpoint", str(ckpt), str(tmp_path / "frame.png"), "--boxes", str(tmp_path / "boxes.json"),
                 "--out", str(tmp_path / "inf"), "--device", "cpu"]) == 0
    expected = json.loads((tmp_path / "inf" / "predictions.json").read_text())["predictions"]

    predictor = posenas.load(ckpt, device="cpu")
    poses = predictor.predict(image, boxes=boxes)
    assert len(poses) == 2 and all(isinstance(p, posenas.Pose) for p in poses)
    for pose, ref in zip(poses, expected):
        assert pose.keypoints.shape == (17, 3) and pose.box.tolist() == ref["bbox"]
        np.testing.assert_allclose(pose.keypoints, np.asarray(ref["keypoints"]), atol=0.006)
        assert pose.score == pytest.approx(ref["score"], abs=1e-4)
    # RGB input with channels="rgb" is the same image; passing RGB as BGR is not
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    same = predictor.predict(rgb, boxes=boxes, channels="rgb")
    np.testing.assert_array_equal(same[0].keypoints, poses[0].keypoints)
    swapped = predictor.predict(rgb, boxes=boxes)
    assert np.abs(swapped[0].keypoints[:, 2] - poses[0].keypoints[:, 2]).max() > 1e-4
    # no boxes: the whole image is one person box
    (whole,) = predictor.predict(image)
    assert whole.box.tolist() == [0, 0, 120, 80]
    # flip test off changes the scores (both halves averaged otherwise)
    flipless = predictor.predict(image, boxes=boxes, flip_test=False)
    assert np.abs(flipless[0].keypoints[:, 2] - poses[0].keypoints[:, 2]).max() > 1e-4


def test_predict_rejects_bad_input(tmp_path):
    predictor = posenas.load(tiny_checkpoint(tmp_path / "model.pt"), device="cpu")
    with pytest.raises(PosenasError, match=r"image: expected an \(H, W, 3\) uint8 array, got shape \(8, 8\)"):
        predictor.predict(np.zeros((8, 8), np.uint8))
    with pytest.raises(PosenasError, match=r"image: expected .* of float32"):
        predictor.predict(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(PosenasError, match="channels: 'bgra' not allowed; allowed: bgr, rgb"):
        predictor.predict(np.zeros((8, 8, 3), np.uint8), channels="bgra")
    with pytest.raises(PosenasError, match=r"boxes\[0\]: expected a finite box"):
        predictor.predict(np.zeros((8, 8, 3), np.uint8), boxes=[[0, 0, -1, 4]])
    with pytest.raises(PosenasError, match="runtime: 'tflite' not allowed"):
        posenas.load(tmp_path / "model.pt", runtime="tflite")
    with pytest.raises(PosenasError, match="no such checkpoint file"):
        posenas.load(tmp_path / "missing.pt")


def test_onnx_file_predicts_like_the_checkpoint(tmp_path, one_thread):
    from posenas.export import export_onnx

    ckpt = tiny_checkpoint(tmp_path / "model.pt")
    export_onnx(ckpt, tmp_path / "model.onnx")
    image = np.random.default_rng(1).integers(0, 255, (64, 48, 3), dtype=np.uint8)
    onnx = posenas.load(tmp_path / "model.onnx")  # the runtime from the suffix
    assert "OnnxPoseModel" in type(onnx.model).__name__
    a = posenas.load(ckpt, device="cpu").predict(image)[0]
    b = onnx.predict(image)[0]
    np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-3)


def test_evaluate_equals_eval_cli(tmp_path, capsys):
    make_dataset("coco", tmp_path / "ds", images=4, people=2)
    preds = coco_results(load_dataset(tmp_path / "ds"), noise=0.3, seed=2)
    write_json(tmp_path / "pred.json", preds)
    assert main(["eval", "--gt", str(tmp_path / "ds"), "--pred", str(tmp_path / "pred.json"), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert posenas.evaluate(tmp_path / "ds", tmp_path / "pred.json") == expected
    assert posenas.evaluate(str(tmp_path / "ds"), preds, split="val") == expected  # in-memory records
    assert posenas.evaluate(load_dataset(tmp_path / "ds"), tmp_path / "pred.json", metric="coco") == expected
    assert 0 < expected["AP"] < 1
    with pytest.raises(PosenasError, match="no split 'train'"):
        posenas.evaluate(tmp_path / "ds", preds, split="train")


def test_profile_build_model_and_load_arch(tmp_path, one_thread):
    arch_file = tmp_path / "tiny.json"
    arch_file.write_text(json.dumps(TINY_ARCH))
    expected = profile_model(arch_build_model(TINY_ARCH, 17), (64, 64), latency=False).to_json()
    for spec in (TINY_ARCH, arch_file, str(arch_file), posenas.load_arch(TINY_ARCH)):
        assert posenas.profile(spec, input_size=(64, 64)) == expected
    assert posenas.profile("vipnas/s-vipnas-res50", input_size=(128, 96))["params"] == 7286772  # shipped name
    small = posenas.profile("simplebaseline-small", input_size=(128, 96), latency=True, runs=1)  # named model
    assert small["params"] == 1905321 and small["latency_ms"]["runs"] == 1
    model = posenas.build_model("pnfs/mobilenetv2-p3-mpii")  # PNFS: the parts fix 16 joints
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 16, 16, 16)
    assert posenas.load_arch("configs/efficientpose/k3e6-small.json").setting == "small"
    with pytest.raises(PosenasError, match="arch: expected an architecture, its JSON, a file or a name, got int"):
        posenas.load_arch(3)
    with pytest.raises(PosenasError, match="no-such: no such file, and no shipped architecture JSON"):
        posenas.build_model("no-such")
