"""int8 / fp16 export (`posenas export --int8`, `--precision fp16`): runs like FP32, agrees with it
within measured bounds, refuses broken graphs, keeps the metadata; bad input is a one-line error."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from posenas import quantize as Q
from posenas.checkpoint import load_checkpoint, save_checkpoint
from posenas.cli import main
from posenas.data.layout import load_dataset
from posenas.data.topdown import TopDownDataset
from posenas.export import export_onnx
from posenas.runtime import load_model
from posenas.synthetic.generate import default_spec, synthesize

from test_api import tiny_checkpoint

#: Bounds on the tiny random-weight model (heatmaps of order 0.5, peak ~3) against FP32 on the
#: 8 real crops. int8 (8 calibration crops, four calibration seeds): measured max |diff| 0.04-0.085
#: x peak and argmax agreement 0.90-0.93; all-zero calibration images give 1.03 x peak and 0.21.
INT8_MAX_RELATIVE = 0.3
#: fp16: measured 6e-4 x peak (float16 has an 11-bit significand: ~5e-4 per rounding).
FP16_MAX_RELATIVE = 5e-3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny checkpoint whose config records its training data (synthetic people, 8 train images)."""
    tmp = tmp_path_factory.mktemp("quantize")
    root = tmp / "data"
    synthesize(root, default_spec("coco", train=8, val=2), progress=False)
    plain = tiny_checkpoint(tmp / "plain.pt")
    ckpt = load_checkpoint(plain)
    ckpt["config"] = {"data": {"root": str(root), "train_split": "train"}}
    save_checkpoint(tmp / "model.pt", {k: v for k, v in ckpt.items() if k not in ("format", "format_version")})
    return {"tmp": tmp, "root": root, "plain": plain, "ckpt": tmp / "model.pt"}


@pytest.fixture(scope="module")
def fp32(setup):
    """The FP32 export of the checkpoint (the reference of every comparison)."""
    out = setup["tmp"] / "fp32.onnx"
    export_onnx(setup["ckpt"], out)
    return out


@pytest.fixture(scope="module")
def exported(setup):
    """The int8 export through the command line, calibrated on the checkpoint's own training data."""
    out = setup["tmp"] / "int8.onnx"
    assert main(["export", str(setup["ckpt"]), "--onnx", str(out), "--int8", "--calib-images", "8"]) == 0
    return out


def test_int8_export_runs_like_fp32(setup, fp32, exported, capsys):
    loaded, reference = load_model(exported, "onnx"), load_model(setup["ckpt"], "torch")
    assert (loaded.arch, loaded.schema, loaded.codec) == (reference.arch, reference.schema, reference.codec)
    assert loaded.model.metadata["precision"] == "int8"
    assert json.loads(loaded.model.metadata["calibration"])["images"] == 8
    graph = onnx.load(str(exported)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert weights, "no int8 conv weights"

    report = Q.compare(fp32.read_bytes(), exported.read_bytes(), Q.check_inputs((96, 64)))
    assert report["agreement"] >= Q.MIN_AGREEMENT and report["relative"] <= INT8_MAX_RELATIVE
    x = torch.from_numpy(Q.check_inputs((96, 64), 1)[0])
    with torch.no_grad():
        peak = float(reference.model(x).abs().max())
        diff = float((loaded.model(x) - reference.model(x)).abs().max())
    assert 1e-3 * peak < diff <= INT8_MAX_RELATIVE * peak  # really quantised, and close

    root = setup["root"]
    assert main(["eval", "--checkpoint", str(exported), "--runtime", "onnx", "--data", str(root), "--json",
                 "--out", str(setup["tmp"] / "eval8")]) == 0
    assert "AP" in json.loads(capsys.readouterr().out)
    assert main(["profile", "--checkpoint", str(exported), "--runtime", "onnx", "--runs", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latency_ms"]["runtime"] == "onnx"
    image = next((root / "images" / "val").glob("*.jpg"))
    assert main(["infer", "--checkpoint", str(exported), "--runtime", "onnx", str(image), "--out",
                 str(setup["tmp"] / "inf8")]) == 0


def test_fp16_export_runs_like_fp32(setup, capsys):
    out = setup["tmp"] / "fp16.onnx"
    assert main(["export", str(setup["ckpt"]), "--onnx", str(out), "--precision", "fp16"]) == 0
    assert "argmax within 1 heatmap px on 100.0% of 136 joints" in capsys.readouterr().out
    loaded, reference = load_model(out, "onnx"), load_model(setup["ckpt"], "torch")
    assert (loaded.arch, loaded.schema, loaded.codec) == (reference.arch, reference.schema, reference.codec)
    assert loaded.model.metadata["precision"] == "fp16"
    graph = onnx.load(str(out)).graph
    assert [v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)] == [onnx.TensorProto.FLOAT] * 2
    convs = [i for i in graph.initializer if len(i.dims) == 4]
    assert convs and all(i.data_type == onnx.TensorProto.FLOAT16 for i in convs)
    x = torch.from_numpy(Q.check_inputs((96, 64), 1)[0])
    with torch.no_grad():
        ours, theirs = loaded.model(x), reference.model(x)
    peak = float(theirs.abs().max())
    assert 1e-6 * peak < float((ours - theirs).abs().max()) <= FP16_MAX_RELATIVE * peak


def test_calibration_crops_are_eval_crops_and_deterministic(setup):
    loaded = load_model(setup["ckpt"], "torch")
    a = Q.calibration_batches(setup["root"], loaded.codec, loaded.schema, count=5, seed=3)
    b = Q.calibration_batches(setup["root"], loaded.codec, loaded.schema, count=5, seed=3)
    c = Q.calibration_batches(setup["root"], loaded.codec, loaded.schema, count=5, seed=4)
    assert len(a) == 5 and all(x.shape == (1, 3, 96, 64) and x.dtype == np.float32 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    crops = TopDownDataset(load_dataset(setup["root"], "train"), loaded.codec, None)  # evaluation's crops
    pool = [crops[i]["image"].numpy() for i in range(len(crops))]
    assert all(any(np.array_equal(x[0], p) for p in pool) for x in a)
    assert len({x.tobytes() for x in a}) == 5  # drawn without replacement


def test_broken_calibration_is_refused(setup, monkeypatch, capsys):
    """All-zero calibration images: activation ranges that real images overflow."""
    monkeypatch.setattr(Q, "calibration_batches", lambda *a, **k: [np.zeros((1, 3, 96, 64), np.float32)] * 8)
    out = setup["tmp"] / "zeros.onnx"
    assert main(["export", str(setup["ckpt"]), "--onnx", str(out), "--int8", "--calib-images", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not out.exists()
    assert "the int8 graph is broken: argmax locations agree with FP32 on" in err and "nothing written" in err


def test_broken_quantisation_is_refused(setup, fp32, exported, monkeypatch, capsys):
    """A good int8 graph with one wrong scale (the input's, 50x too small: real images saturate)."""
    import posenas.export

    monkeypatch.setattr(posenas.export, "export_onnx", lambda ckpt, out, **k: out.write_bytes(fp32.read_bytes()))
    model = onnx.load(str(exported))
    scale = next(i for i in model.graph.initializer if i.name == "image_scale")
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) / 50, scale.name))
    monkeypatch.setattr(Q, "quantize_int8", lambda *a, **k: model.SerializeToString())
    out = setup["tmp"] / "bad-scale.onnx"
    assert main(["export", str(setup["ckpt"]), "--onnx", str(out), "--int8", "--calib-images", "8"]) == 2
    assert "the int8 graph is broken" in capsys.readouterr().err and not out.exists()


def test_agreement_counts_joints_within_the_radius():
    """compare(): a joint whose argmax moved one heatmap pixel agrees, two pixels does not."""
    from onnx import helper

    def graph(bump: np.ndarray | None) -> bytes:
        info = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 2, 4, 6]) for n in ("image", "heatmaps")]
        if bump is None:
            nodes, inits = [helper.make_node("Identity", ["image"], ["heatmaps"])], []
        else:
            nodes, inits = [helper.make_node("Add", ["image", "bump"], ["heatmaps"])], [numpy_helper.from_array(bump, "bump")]
        g = helper.make_graph(nodes, "g", info[:1], info[1:], inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10).SerializeToString()

    x = np.zeros((1, 2, 4, 6), np.float32)
    x[0, :, 1, 1] = 1.0  # both joints peak at (1, 1)
    bump = np.zeros_like(x)
    bump[0, 0, 2, 2] = 2.0  # joint 0 moves one pixel diagonally: agrees
    bump[0, 1, 1, 3] = 2.0  # joint 1 moves two pixels: disagrees
    report = Q.compare(graph(None), graph(bump), [x])
    assert (report["agreement"], report["joints"], report["max_abs_diff"], report["relative"]) == (0.5, 2, 2.0, 2.0)


@pytest.mark.parametrize("extra, message", [
    (["--int8"], r"plain\.pt: the checkpoint records no training data; give --calib-data DIR"),
    (["--int8", "--calib-data", "{tmp}/nope"], r"nope: calibration data: no such dataset root or annotation file"),
    (["--int8", "--calib-data", "{root}", "--calib-images", "0"], r"--calib-images: expected a positive integer, got 0"),
    (["--int8", "--calib-data", "{root}", "--calib-images", "100000"],
     r"person_keypoints_train\.json: --calib-images 100000: the train split has only \d+ person instances"),
    (["--calib-data", "{root}"], r"export: --calib-data and --calib-images calibrate an int8 export; add --int8"),
    (["--precision", "fp16", "--calib-images", "4"], r"--calib-images calibrate an int8 export; add --int8"),
    (["--int8", "--precision", "fp16"], r"export: --int8 and --precision fp16 contradict each other"),
])
def test_bad_input_is_one_line_and_writes_nothing(setup, capsys, extra, message):
    out = setup["tmp"] / "bad.onnx"
    args = [a.format(tmp=setup["tmp"], root=setup["root"]) for a in extra]
    assert main(["export", str(setup["plain"]), "--onnx", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("posenas: error: ")
    assert re.search(message, err), err
    assert not out.exists()


def test_recorded_training_data_that_is_gone(setup, capsys):
    ckpt = load_checkpoint(setup["plain"])
    ckpt["config"] = {"data": {"root": str(setup["tmp"] / "moved"), "train_split": "train"}}
    path = setup["tmp"] / "moved.pt"
    save_checkpoint(path, {k: v for k, v in ckpt.items() if k not in ("format", "format_version")})
    assert main(["export", str(path), "--onnx", str(setup["tmp"] / "m.onnx"), "--int8"]) == 2
    assert "moved (config data.root, relative to the current directory) does not exist; give --calib-data DIR" \
        in capsys.readouterr().err
    assert not (setup["tmp"] / "m.onnx").exists()
