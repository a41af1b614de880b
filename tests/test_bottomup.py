"""Bottom-up pipeline: whole-image geometry, crowd masks, the task loss, and train → eval → infer → export."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from posenas.arch import arch_from_json, build_model, named_arch
from posenas.checkpoint import model_from_checkpoint
from posenas.cli import main
from posenas.codecs import AssociativeEmbeddingCodec, codec_from_dict
from posenas.data.bottomup import BottomUpAugment, WholeImageTransform, ignore_region
from posenas.data.coco import annotation_dict, parse_annotation
from posenas.data.fields import Where
from posenas.data.records import Person
from posenas.engine.config import ExperimentConfig, ModelConfig
from posenas.engine.task import BottomUpTask, TOP_DOWN, task_for
from posenas.engine.train import train
from posenas.errors import PosenasError
from posenas.keypoints import COCO17

from conftest import make_dataset
from test_engine import tiny_config

TINY_AE = {"space": "simplebaseline", "backbone": "resnet18", "width_mult": 0.125,
           "head": {"widths": [16, 16, 16], "kernels": [4, 4, 4]}, "tags": True}


def _person(pid: int, points: list[tuple[float, float]], **kw) -> Person:
    kp = np.zeros((17, 3), np.float32)
    for j, (x, y) in enumerate(points):
        kp[j] = (x, y, 2)
    return Person(id=pid, keypoints=kp, **kw)


def test_letterbox_keeps_the_whole_image_and_maps_joints_back():
    t = WholeImageTransform((128, 128), COCO17, None)
    image = np.full((100, 200, 3), 200, np.uint8)
    p = _person(1, [(0.0, 0.0), (199.0, 99.0), (100.0, 50.0)], bbox=np.array([0, 0, 200, 100], np.float32))
    s = t(image, [p], None)
    assert s.image.shape == (128, 128, 3)
    # the long side fills the input (classic convention: 200 px onto 128 → 0.64 per px), the rest is padding
    np.testing.assert_allclose(s.people[0, 0, :2], [0.0, 64 - 50 * 0.64], atol=1e-6)
    np.testing.assert_allclose(s.people[0, 1, :2], [199 * 0.64, 64 + 49 * 0.64], atol=1e-6)
    assert s.image[5, 64].max() == 0 and s.image[64, 64].min() > 150  # black padding above, the image inside
    np.testing.assert_allclose(s.areas, [200 * 100 * 0.64 ** 2], rtol=1e-6)
    # back-projection through the stored inverse recovers the image coordinates
    inv = np.linalg.inv(np.vstack([s.matrix, [0, 0, 1]]))[:2]
    back = s.people[0, :3, :2] @ inv[:, :2].T + inv[:, 2]
    np.testing.assert_allclose(back, p.keypoints[:3, :2], atol=1e-6)


def test_augmentation_is_deterministic_and_flip_mirrors_and_swaps_joints():
    t_flip = WholeImageTransform((64, 64), COCO17, BottomUpAugment(max_rotation=0.0, flip_prob=1.0))
    t_keep = WholeImageTransform((64, 64), COCO17, BottomUpAugment(max_rotation=0.0, flip_prob=0.0))
    image = np.random.default_rng(0).integers(0, 255, (80, 60, 3), dtype=np.uint8)
    p = _person(1, [(10.0, 20.0), (30.0, 22.0), (12.0, 40.0), (50.0, 41.0)] + [(20.0 + j, 60.0) for j in range(13)])
    a = t_flip(image, [p], np.random.default_rng(5))
    b = t_flip(image, [p], np.random.default_rng(5))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.people, b.people)
    c = t_keep(image, [p], np.random.default_rng(5))  # the same zoom and shift, no flip
    assert a.flipped and not c.flipped
    flip = np.asarray(COCO17.flip_index)
    inside = (a.people[0, :, 2] > 0) & (c.people[0, flip, 2] > 0)
    assert inside.sum() >= 10
    # classic geometry: the mirrored window maps x to W - x (left and right joints swapped)
    np.testing.assert_allclose(a.people[0, inside, 0], 64 - c.people[0, flip, 0][inside], atol=1e-6)
    np.testing.assert_allclose(a.people[0, inside, 1], c.people[0, flip, 1][inside], atol=1e-6)


def test_crowd_and_unlabelled_people_are_masked_out_of_the_loss():
    crowd = Person(id=1, keypoints=np.zeros((17, 3), np.float32), iscrowd=True,
                   segmentation=[[0.0, 0.0, 31.0, 0.0, 31.0, 31.0, 0.0, 31.0]])
    unlabelled = Person(id=2, keypoints=np.zeros((17, 3), np.float32), bbox=np.array([40, 40, 20, 20], np.float32))
    person = _person(3, [(48.0, 10.0), (50.0, 12.0)])
    region = ignore_region([crowd, unlabelled, person], 64, 64)
    assert region[:31, :31].all() and region[40:60, 40:60].all()  # the crowd's polygon, the unlabelled box
    assert region[33:40].sum() == 0 and region[:, 33:40].sum() == 0 and region[60:].sum() == 0
    assert region[10, 48] == 0  # the labelled person is a target, not ignored

    t = WholeImageTransform((64, 64), COCO17, None)
    s = t(np.zeros((64, 64, 3), np.uint8), [crowd, unlabelled, person], None)
    assert len(s.people) == 1  # only the labelled non-crowd person is a target
    mask = s.mask((16, 16))
    assert mask[:7, :7].sum() == 0 and mask[11:14, 11:14].sum() == 0 and mask[0, 12] == 1 and mask.mean() > 0.6

    # the loss: an error inside the masked region costs nothing, the same error outside does
    task = BottomUpTask()
    target = torch.zeros(1, 17, 16, 16)
    batch = {"heatmaps_0": target, "mask_0": torch.from_numpy(mask)[None], "joints": torch.zeros(1, 30, 17, 2,
                                                                                              dtype=torch.long)}
    inside, outside = torch.zeros(1, 34, 16, 16), torch.zeros(1, 34, 16, 16)
    inside[:, :17, 2, 2] = 1.0
    outside[:, :17, 2, 12] = 1.0
    assert float(task.loss(None, inside, batch)) == 0.0
    assert float(task.loss(None, outside, batch)) == pytest.approx(17 / (17 * 256))
    unmasked = dict(batch, mask_0=torch.ones(1, 16, 16))
    assert float(task.loss(None, inside, unmasked)) == pytest.approx(17 / (17 * 256))


def test_segmentation_is_read_validated_and_written_back(tmp_path):
    where = Where(tmp_path / "a.json", "annotations", 0)
    rec = {"id": 5, "image_id": 1, "keypoints": [0] * 51, "iscrowd": 1,
           "segmentation": {"size": [10, 12], "counts": [5, 10, 105]}}
    _, person = parse_annotation(rec, where, COCO17)
    assert person.segmentation == {"size": [10, 12], "counts": [5, 10, 105]}
    person.bbox = np.array([0, 0, 3, 3], np.float32)
    assert annotation_dict(person, 1)["segmentation"] == person.segmentation
    assert ignore_region([person], 10, 12).sum() == 10
    for bad, field in (([[1, 2, 3]], "segmentation[0]"), ({"size": [10], "counts": []}, "segmentation.size"),
                       ({"size": [4, 4], "counts": 3}, "segmentation.counts"),
                       ("polygon", "segmentation")):
        with pytest.raises(PosenasError, match=re.escape(f"field '{field}'")):
            parse_annotation(dict(rec, segmentation=bad), where, COCO17)


def test_tags_make_a_simplebaseline_bottom_up():
    arch = arch_from_json(TINY_AE)
    assert arch.bottom_up and arch.to_json() == TINY_AE
    assert arch_from_json({k: v for k, v in TINY_AE.items() if k != "tags"}).to_json() == \
        {k: v for k, v in TINY_AE.items() if k != "tags"}  # top-down JSON unchanged
    assert build_model(arch, 17)(torch.zeros(1, 3, 64, 64)).shape == (1, 34, 16, 16)
    assert named_arch("simplebaseline-small-ae").bottom_up
    with pytest.raises(PosenasError, match=r"arch.tags: expected true or false"):
        arch_from_json(dict(TINY_AE, tags="yes"))
    assert task_for(named_arch("simplebaseline-small")) is TOP_DOWN
    assert isinstance(task_for(arch), BottomUpTask)


def _config(root: Path, **train_overrides) -> ExperimentConfig:
    """test_engine's tiny recipe with the tiny bottom-up arch on whole 64x64 images."""
    cfg = tiny_config(root, **{"seed": 1, **train_overrides})
    return replace(cfg, model=ModelConfig(arch=TINY_AE), data=replace(cfg.data, input_size=(64, 64)))


def test_train_eval_infer_export_a_bottom_up_model(tmp_path, capsys):
    root = tmp_path / "data"
    make_dataset("coco", root, images=8, people=2)
    result = train(_config(root), tmp_path / "run", progress=False)
    assert 0.0 <= result["AP"] <= 1.0
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)  # self-describing, no pickled objects
    assert stored["codec"]["type"] == "associative_embedding" and stored["arch"]["tags"] is True
    codec = codec_from_dict(stored["codec"])
    assert isinstance(codec, AssociativeEmbeddingCodec) and codec.heatmap_sizes == ((16, 16),)
    loaded = model_from_checkpoint(ckpt)
    assert loaded.codec == codec and loaded.model(torch.zeros(1, 3, 64, 64)).shape == (1, 34, 16, 16)

    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(root), "--out", str(tmp_path / "ev"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert set(stats) >= {"AP", "AP50"}
    preds = json.loads((tmp_path / "ev" / "predictions.json").read_text())
    assert all(len(p["keypoints"]) == 51 for p in preds)

    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 40, 30], "score": 0.9, "category_id": 1}]))
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(root), "--boxes", str(dets)]) == 2
    assert "takes no person boxes" in capsys.readouterr().err

    images = root / "images" / "val"
    assert main(["infer", "--checkpoint", str(ckpt), str(images), "--out", str(tmp_path / "inf")]) == 0
    out = json.loads((tmp_path / "inf" / "predictions.json").read_text())
    assert len(list((tmp_path / "inf").glob("*.jpg"))) == 8
    assert all(np.array(p["keypoints"]).shape == (17, 3) for p in out["predictions"])
    # the Python API finds the same people in an in-memory image, and refuses boxes
    import cv2

    import posenas

    first = sorted(images.glob("*.jpg"))[0]
    poses = posenas.load(ckpt, device="cpu").predict(cv2.imread(str(first)))
    infer_poses = [p for p in out["predictions"] if p["image_id"] == 0]
    assert len(poses) == len(infer_poses)
    for pose, rec in zip(poses, infer_poses):
        np.testing.assert_allclose(pose.keypoints, np.array(rec["keypoints"]), atol=0.01)
    with pytest.raises(PosenasError, match="takes no boxes"):
        posenas.load(ckpt, device="cpu").predict(cv2.imread(str(first)), boxes=[[0, 0, 10, 10]])

    onnx = tmp_path / "m.onnx"
    assert main(["export", str(ckpt), "--onnx", str(onnx)]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(onnx), "--runtime", "onnx", "--data", str(root), "--json",
                 "--out", str(tmp_path / "ev_onnx")]) == 0
    assert json.loads(capsys.readouterr().out)["AP"] == pytest.approx(stats["AP"], abs=1e-3)


def test_top_down_augmentation_in_a_bottom_up_run_is_an_error(tmp_path):
    root = tmp_path / "data"
    make_dataset("coco", root, images=4, people=2)
    cfg = _config(root)
    cfg = replace(cfg, augment=replace(cfg.augment, half_body_prob=0.5))
    with pytest.raises(PosenasError, match=r"config.augment.half_body_prob: is top-down crop augmentation"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_codec_oracles_reach_their_ceilings_on_synthetic_people(tmp_path, capsys):
    """The ground truth through each codec's encode + real decoder: top-down at 256x192 and AE at 512."""
    from posenas.synthetic.generate import default_spec, synthesize

    synthesize(tmp_path / "syn", default_spec("coco", train=0, val=30, seed=0), workers=1, progress=False)
    for kind, size, floor in (("topdown", "256x192", 0.95), ("bottomup", "512x512", 0.90)):
        assert main(["eval", "--data", str(tmp_path / "syn"), "--oracle", kind, "--input", size, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["AP"] >= floor, (kind, result)
        assert result["oracle"] == kind and result["input_size"] == [int(v) for v in size.split("x")]
    # a coarse AE map loses AP: the oracle measures the codec, not a constant
    assert main(["eval", "--data", str(tmp_path / "syn"), "--oracle", "bottomup", "--input", "64x64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["AP"] < 0.8
    assert main(["eval", "--data", str(tmp_path / "syn"), "--oracle", "bottomup", "--input", "66x64"]) == 2
    assert "--input: expected HEIGHTxWIDTH, each a multiple of 4" in capsys.readouterr().err


def test_higherhrnet_exports_both_resolutions_to_onnx(one_thread):
    """A multi-output model (heatmaps + tags at 1/4, heatmaps at 1/2) exports with both outputs and parity."""
    from posenas.export import onnx_bytes
    from posenas.runtime import OnnxPoseModel

    torch.manual_seed(0)
    model = build_model(arch_from_json({"space": "hrnet", "width": 4, "head": "higher"}), 17).eval()
    for m in model.modules():  # HRNet's std-0.001 init leaves tiny maps: give the parity check real signal
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        quarter, half = model(x)
    runner = OnnxPoseModel.from_bytes(onnx_bytes(model, (64, 64), rewrite=False))
    ort_quarter, ort_half = runner(x)
    assert ort_quarter.shape == (1, 34, 16, 16) and ort_half.shape == (1, 17, 32, 32)
    for ours, theirs in ((quarter, ort_quarter), (half, ort_half)):
        assert float((ours - theirs).abs().max()) <= 1e-4 * float(ours.abs().max())


def test_bottom_up_on_mpii_data_is_refused_before_training(tmp_path):
    root = tmp_path / "data"
    make_dataset("mpii", root, images=4, people=2)
    cfg = _config(root)
    with pytest.raises(PosenasError, match=r"a bottom-up model is scored by COCO OKS AP.*mpii data is scored by PCKh"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_too_few_images_for_a_batch_names_images(tmp_path):
    root = tmp_path / "data"
    make_dataset("coco", root, images=2, people=2)
    with pytest.raises(PosenasError, match=r"2 training images give no full batch of 4 per process"):
        train(_config(root), tmp_path / "run", progress=False)


def test_task_loss_adds_each_weighted_term():
    """Heatmap MSE at every resolution + pull_weight × pull + push_weight × push, each term switchable."""
    from posenas.codecs.associative import ae_loss, masked_heatmap_loss

    g = torch.Generator().manual_seed(0)
    quarter, half = torch.randn(2, 34, 8, 8, generator=g), torch.randn(2, 17, 16, 16, generator=g)
    joints = torch.zeros(2, 30, 17, 2, dtype=torch.long)
    joints[:, 0, :3] = torch.tensor([[5, 1], [9, 1], [20, 1]])
    joints[:, 1, :3] = torch.tensor([[40, 1], [41, 1], [50, 1]])
    batch = {"heatmaps_0": torch.rand(2, 17, 8, 8, generator=g), "mask_0": torch.ones(2, 8, 8),
             "heatmaps_1": torch.rand(2, 17, 16, 16, generator=g), "mask_1": torch.ones(2, 16, 16), "joints": joints}
    heat = masked_heatmap_loss(quarter[:, :17], batch["heatmaps_0"], batch["mask_0"]) + \
        masked_heatmap_loss(half, batch["heatmaps_1"], batch["mask_1"])
    pull, push = ae_loss(quarter[:, 17:], joints)
    assert float(pull.mean()) > 0 and float(push.mean()) > 0
    full = BottomUpTask(1.0, 0.5, 0.25).loss(None, (quarter, half), batch)
    assert float(full) == pytest.approx(float(heat + 0.5 * pull.mean() + 0.25 * push.mean()), rel=1e-6)
    assert float(BottomUpTask(1.0, 0.0, 0.0).loss(None, (quarter, half), batch)) == pytest.approx(float(heat), rel=1e-6)
    assert float(BottomUpTask(0.0, 0.5, 0.0).loss(None, (quarter, half), batch)) == pytest.approx(
        float(0.5 * pull.mean()), rel=1e-6)
