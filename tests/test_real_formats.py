"""Dataset files as their releases write them: PoseTrack18 (per video and MMPose's one file),
MPII as MMPose / HRNet ship it (head boxes in mpii_gt_val.mat), COCO crowds and detection
files; and prediction files in the annotation file's coordinate frame (MPII 1-based)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

from posenas.arch import arch_from_json, build_model
from posenas.checkpoint import save_checkpoint
from posenas.cli import main
from posenas.codecs.heatmap import HeatmapCodec
from posenas.data.boxes import load_detections
from posenas.data.images import encode_jpeg
from posenas.data.layout import load_dataset
from posenas.engine.evaluate import evaluate_checkpoint
from posenas.errors import PosenasError
from posenas.keypoints import COCO17, MPII16, POSETRACK18

from conftest import make_dataset

W, H = 64, 48


def _jpeg(path: Path, w: int = W, h: int = H) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_jpeg(np.full((h, w, 3), 90, np.uint8)))


def _write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _eval(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(["eval", *args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def _error(capsys, *args: str) -> str:
    capsys.readouterr()
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


# ------------------------------------------------------------------ PoseTrack18


def _pt_keypoints(rng, labelled: bool = True) -> list[float]:
    if not labelled:
        return [0.0] * 51
    kp = np.zeros((17, 3))
    kp[:, 0] = rng.uniform(8, 36, 17).round(1)
    kp[:, 1] = rng.uniform(6, 40, 17).round(1)
    kp[:, 2] = 1  # PoseTrack18 writes 1 for every labelled joint
    kp[[3, 4]] = 0  # ears are never labelled
    return kp.reshape(-1).tolist()


def _pt_video(number: int, frames: int, labelled: set[int], seed: int) -> dict:
    """One video as the PoseTrack18 release writes it (extra fields, iscrowd false, a head-box-only person)."""
    rng = np.random.default_rng(seed)
    name = f"{number:06d}_mpii_test"
    images, anns = [], []
    for f in range(frames):
        image_id = 10_000_000_000 + number * 10_000 + f
        images.append({"has_no_densepose": True, "is_labeled": f in labelled, "file_name": f"images/val/{name}/{f:06d}.jpg",
                       "nframes": frames, "frame_id": image_id, "vid_id": f"{number:06d}", "id": image_id,
                       "ignore_regions_y": [[1, 9, 9]], "ignore_regions_x": [[50, 50, 60]],
                       "mask_file": f"mask/val/{name}/{f:06d}.jpg"})
        if f not in labelled and f != 1:
            continue  # unlabelled frames carry no people, except frame 1 (see the PCKh test)
        for t in range(2):
            anns.append({"bbox_head": [10.0 + 20 * t, 4.0, 8.0, 9.0], "keypoints": _pt_keypoints(rng),
                         "track_id": t, "image_id": image_id, "bbox": [4.0, 2.0, 40.0, 44.0], "scores": [],
                         "category_id": 1, "id": image_id * 100 + t, "iscrowd": False})
        # a person with a head box but no joints and no bbox, as the real files have
        anns.append({"bbox_head": [50.0, 4.0, 6.0, 7.0], "keypoints": [0] * 51, "track_id": 2, "image_id": image_id,
                     "scores": [], "category_id": 1, "id": image_id * 100 + 2, "iscrowd": False})
    category = {"supercategory": "person", "id": 1, "name": "person", "keypoints": list(POSETRACK18.joints),
                "skeleton": [[a + 1, b + 1] for a, b in POSETRACK18.skeleton]}
    return {"images": images, "annotations": anns, "categories": [category]}


def _pt_images(root: Path, video: dict) -> None:
    for img in video["images"]:
        _jpeg(root / img["file_name"])


def test_posetrack18_release_files_load_and_check(tmp_path, capsys):
    root = tmp_path / "pt"
    video = _pt_video(342, frames=4, labelled={0, 2}, seed=0)
    _write(root / "annotations" / "val" / "000342_mpii_test.json", video)
    _pt_images(root, video)
    capsys.readouterr()
    assert main(["data", "check", str(root), "--json"]) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)["val"]
    # 3 annotated frames × 3 people; instances: the 2 with joints per frame
    assert summary["format"] == "posetrack" and summary["people"] == 9 and summary["instances"] == 6
    assert summary["videos"] == 1 and summary["tracks"] == 3

    ds = load_dataset(root)
    assert [img.is_labeled for img in ds.images] == [True, False, True, False]
    assert [img.frame_id for img in ds.videos()["000342"]] == [img["id"] for img in video["images"]]
    people = ds.images[0].people
    assert [p.track_id for p in people] == [0, 1, 2] and not any(p.iscrowd for p in people)
    head_only = people[2]
    assert head_only.bbox is None and head_only.num_labelled == 0
    np.testing.assert_allclose(head_only.head_box, [50, 4, 56, 11])


@pytest.mark.parametrize("value, shown", [("no", "'no'"), (2, "2"), (None, "None")])
def test_iscrowd_other_than_boolean_or_0_1_is_an_error(tmp_path, capsys, value, shown):
    video = _pt_video(1, frames=1, labelled={0}, seed=0)
    video["annotations"][1]["iscrowd"] = value
    path = _write(tmp_path / "annotations" / "val" / "000001.json", video)
    err = _error(capsys, "data", "check", str(tmp_path), "--no-images")
    ann_id = video["annotations"][1]["id"]
    assert f"{path}: annotations[1] (id {ann_id}): field 'iscrowd': expected true/false or 0/1, got {shown}" in err
    video["annotations"][1]["iscrowd"] = 1  # 0/1 is fine
    video["images"][0]["is_labeled"] = "yes"
    _write(path, video)
    assert "images[0] (id 10000010000): field 'is_labeled': expected true/false or 0/1, got 'yes'" in _error(
        capsys, "data", "check", str(tmp_path), "--no-images")


def test_posetrack18_single_file_of_all_videos(tmp_path, capsys):
    """MMPose's annotations/posetrack18_val.json: every video in one COCO-style file."""
    root = tmp_path / "pt"
    a, b = _pt_video(342, 3, {0, 2}, seed=1), _pt_video(7, 2, {0, 1}, seed=2)
    merged = {"images": a["images"] + b["images"], "annotations": a["annotations"] + b["annotations"],
              "categories": a["categories"]}
    _write(root / "annotations" / "posetrack18_val.json", merged)
    _pt_images(root, merged)
    capsys.readouterr()
    assert main(["data", "check", str(root), "--json"]) == 0, capsys.readouterr().err  # every image is found
    summary = json.loads(capsys.readouterr().out)
    assert list(summary) == ["val"] and summary["val"]["format"] == "posetrack" and summary["val"]["videos"] == 2
    ds = load_dataset(root)
    assert ds.source.name == "posetrack18_val.json"
    assert {vid: len(frames) for vid, frames in ds.videos().items()} == {"000342": 3, "000007": 2}
    assert ds.image_path(ds.images[0]) == root / "images/val/000342_mpii_test/000000.jpg"


def _coco_gt_predictions(anns: list[dict], evaluated: set[int]) -> list[dict]:
    """The ground truth of an annotation file as a COCO results file: its people with joints, keypoints as written."""
    return [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 0.9}
            for a in anns if a["image_id"] in evaluated and any(a["keypoints"][2::3]) and not a.get("iscrowd")]


def test_posetrack_evaluation_ignores_unlabelled_frames(tmp_path, capsys):
    root = tmp_path / "pt"
    video = _pt_video(342, frames=4, labelled={0, 2}, seed=3)
    _write(root / "annotations" / "val" / "000342_mpii_test.json", video)
    labelled = {img["id"] for img in video["images"] if img["is_labeled"]}
    gt = _coco_gt_predictions(video["annotations"], labelled)
    unlabelled_frame = video["images"][1]["id"]
    garbage = [{"image_id": unlabelled_frame, "category_id": 1, "keypoints": [30.0, 20.0, 0.9] * 17, "score": 0.99}]

    # COCO AP: the GT as predictions is perfect, and predictions on unlabelled frames change nothing
    pred = _write(tmp_path / "gt_pred.json", gt + garbage)
    assert _eval(capsys, "--gt", str(root), "--pred", str(pred))["AP"] == 1.0
    rng = np.random.default_rng(0)
    noisy = [p | {"keypoints": (np.array(p["keypoints"]) + rng.normal(0, 1.5, 51)).round(2).tolist()} for p in gt]
    a = _eval(capsys, "--gt", str(root), "--pred", str(_write(tmp_path / "noisy.json", noisy)))
    b = _eval(capsys, "--gt", str(root), "--pred", str(_write(tmp_path / "noisy_garbage.json", noisy + garbage)))
    assert a == b and 0.0 < a["AP"] < 1.0

    # PCKh with PoseTrack's head boxes: the people of the unlabelled frame 1 are not records;
    # a (wrong) prediction for them is accepted and does not count
    records = [{"id": ann["id"], "keypoints": np.reshape(ann["keypoints"], (17, 3)).tolist()}
               for ann in video["annotations"] if any(ann["keypoints"][2::3])]
    for r in records:
        if r["id"] // 100 == unlabelled_frame:
            r["keypoints"] = [[0.0, 0.0, 1.0]] * 17
    out = _eval(capsys, "--gt", str(root), "--pred", str(_write(tmp_path / "pckh.json", records)), "--metric", "pckh")
    assert all(v == 100.0 for rows in out.values() for v in rows.values() if v is not None)


def test_detections_file_with_posetrack_image_ids(tmp_path, capsys):
    video = _pt_video(342, frames=3, labelled={0, 2}, seed=4)
    ids = [img["id"] for img in video["images"]]
    dets = _write(tmp_path / "dets.json", [
        {"image_id": ids[0], "bbox": [4.0, 2.0, 40.0, 44.0], "score": 0.9, "category_id": 1},
        {"image_id": float(ids[2]), "bbox": [1.0, 1.0, 10.0, 20.0], "score": 0.4, "category_id": 1},
        {"image_id": ids[1], "bbox": [1.0, 1.0, 10.0, 20.0], "score": 0.8, "category_id": 3},  # not a person
    ])
    capsys.readouterr()
    got = load_detections(dets, image_ids=set(ids))
    assert [(i, s) for i, _, s in got] == [(ids[0], 0.9), (ids[2], 0.4)]
    assert all(type(i) is int for i, _, _ in got)
    np.testing.assert_allclose(got[0][1], [4, 2, 40, 44])
    assert capsys.readouterr().err == ""  # every detection is on a known frame: no warning


# ------------------------------------------------------------------ MPII (MMPose / HRNet release)

#: Records of the MMPose / HRNet mpii_val.json: no id, no headbox. Image a.jpg has records 0 and 2.
_MPII_IMAGES = ["a.jpg", "b.jpg", "a.jpg", "c.jpg"]


def _mpii_release(n: int = 4, seed: int = 0) -> tuple[list[dict], dict]:
    """(mpii_val.json records, mpii_gt_val.mat fields), both MATLAB 1-based, in the release's layout."""
    rng = np.random.default_rng(seed)
    records, boxes, missing, pos = [], np.zeros((2, 2, n)), np.zeros((16, n)), np.zeros((16, 2, n))
    for i in range(n):
        joints = rng.uniform(5, 40, (16, 2)).round(1)
        vis = (rng.uniform(size=16) > 0.2).astype(int)
        vis[MPII16.index("head_top")] = 1
        joints[vis == 0] = -1.0  # HRNet's file: unlabelled joints at -1, -1
        records.append({"joints_vis": vis.tolist(), "joints": joints.tolist(), "image": _MPII_IMAGES[i % 4],
                        "scale": 0.3 + 0.05 * i, "center": [30.0, 20.0]})
        x1, y1 = 10.0 + i, 5.0
        boxes[:, :, i] = [[x1, y1], [x1 + 8.0 + i, y1 + 10.0]]  # [top-left, bottom-right] corner, (x, y)
        missing[:, i] = 1 - vis
        pos[:, :, i] = np.where(vis[:, None] > 0, joints, np.nan)  # missing joints: no position
    return records, {"headboxes_src": boxes, "jnt_missing": missing, "pos_gt_src": pos,
                     "dataset_joints": np.array([["rank"], ["rkne"]], dtype=object)}


def _mpii_files(tmp_path: Path, **kwargs) -> tuple[Path, Path, list[dict], dict]:
    records, mat = _mpii_release(**kwargs)
    json_path = _write(tmp_path / "annotations" / "mpii_val.json", records)
    mat_path = tmp_path / "annotations" / "mpii_gt_val.mat"
    savemat(mat_path, mat)
    return json_path, mat_path, records, mat


def test_mpii_release_pckh_with_headboxes_mat(tmp_path, capsys):
    json_path, mat_path, records, mat = _mpii_files(tmp_path)
    ds = load_dataset(json_path, headboxes=mat_path)
    # no 'id' in the file: a record's id is its 0-based position; a.jpg holds records 0 and 2
    assert [img.file_name for img in ds.images] == ["a.jpg", "b.jpg", "c.jpg"]
    assert [[p.id for p in img.people] for img in ds.images] == [[0, 2], [1], [3]]
    people = {p.id: p for img in ds.images for p in img.people}
    for i, p in people.items():  # head boxes follow the file order, in the records' 0-based frame
        corners = mat["headboxes_src"][:, :, i]
        np.testing.assert_allclose(p.head_box, np.concatenate([corners[0], corners[1]]) - 1.0)

    # the GT joints as written in the file (1-based) are a perfect prediction file, naming records by position;
    # head boxes are small (head size ≈ 8 px), so one pixel off fails PCKh@0.1
    pred = _write(tmp_path / "pred.json", [{"id": i, "keypoints": r["joints"]} for i, r in enumerate(records)])
    out = _eval(capsys, "--gt", str(json_path), "--pred", str(pred), "--headboxes", str(mat_path))
    assert all(v == 100.0 for rows in out.values() for v in rows.values() if v is not None)
    assert out["PCKh@0.1"]["mean"] == 100.0
    # a dataset root with --split finds the same file
    assert _eval(capsys, "--gt", str(tmp_path), "--split", "val", "--pred", str(pred),
                 "--headboxes", str(mat_path)) == out
    shifted = _write(tmp_path / "shifted.json", [{"id": i, "keypoints": (np.array(r["joints"]) - 1.0).tolist()}
                                                 for i, r in enumerate(records)])
    assert _eval(capsys, "--gt", str(json_path), "--pred", str(shifted), "--headboxes", str(mat_path))[
        "PCKh@0.1"]["mean"] < 50.0


def test_mpii_release_without_headboxes_says_what_provides_them(tmp_path, capsys):
    json_path, _, records, _ = _mpii_files(tmp_path)
    pred = _write(tmp_path / "pred.json", [{"id": i, "keypoints": r["joints"]} for i, r in enumerate(records)])
    err = _error(capsys, "eval", "--gt", str(json_path), "--pred", str(pred))
    assert f"{json_path}: no head boxes" in err and "--headboxes mpii_gt_val.mat" in err


def test_mpii_headboxes_mat_that_does_not_belong(tmp_path, capsys):
    json_path, mat_path, records, mat = _mpii_files(tmp_path)
    pred = str(_write(tmp_path / "pred.json", [{"id": i, "keypoints": r["joints"]} for i, r in enumerate(records)]))
    args = ["eval", "--gt", str(json_path), "--pred", pred, "--headboxes"]

    short = tmp_path / "short.mat"
    savemat(short, {k: v[..., :3] for k, v in mat.items() if k != "dataset_joints"})
    assert f"{short} has 3 records but {json_path} has 4" in _error(capsys, *args, str(short))

    moved = tmp_path / "moved.mat"
    pos = mat["pos_gt_src"].copy()
    pos[MPII16.index("head_top"), 0, 2] += 3.0
    savemat(moved, mat | {"pos_gt_src": pos})
    err = _error(capsys, *args, str(moved))
    assert f"{moved}: record 2 (id 2) of {json_path}: joint 9 (head_top)" in err and "more than 1 px apart" in err

    swapped = tmp_path / "swapped.mat"  # the same records in another order
    savemat(swapped, {k: v[..., [1, 0, 2, 3]] for k, v in mat.items() if k != "dataset_joints"})
    assert f"{swapped}: record 0 (id 0) of {json_path}" in _error(capsys, *args, str(swapped))

    within = tmp_path / "within.mat"  # sub-pixel differences are fine
    savemat(within, mat | {"pos_gt_src": mat["pos_gt_src"] + 0.4})
    assert load_dataset(json_path, headboxes=within).images[0].people[0].head_box is not None

    lacking = tmp_path / "lacking.mat"
    savemat(lacking, {"headboxes_src": mat["headboxes_src"]})
    assert f"{lacking}: field 'jnt_missing' missing" in _error(capsys, *args, str(lacking))
    bad_shape = tmp_path / "bad_shape.mat"
    savemat(bad_shape, mat | {"jnt_missing": mat["jnt_missing"][:15]})
    err = _error(capsys, *args, str(bad_shape))
    assert f"{bad_shape}: field 'jnt_missing': expected shape (16, 4), got shape (15, 4)" in err
    flat = tmp_path / "flat.mat"
    savemat(flat, mat | {"headboxes_src": mat["headboxes_src"].reshape(4, 4)})
    assert f"{flat}: field 'headboxes_src': expected shape (2, 2, N), got shape (4, 4)" in _error(capsys, *args, str(flat))
    not_mat = _write(tmp_path / "not.mat", {"a": 1})
    assert f"{not_mat}: not a readable MATLAB .mat file" in _error(capsys, *args, str(not_mat))
    assert "no such file" in _error(capsys, *args, str(tmp_path / "absent.mat"))

    coco = make_dataset("coco", tmp_path / "coco", images=1, people=1)
    err = _error(capsys, "eval", "--gt", str(coco.source), "--pred", pred, "--headboxes", str(mat_path))
    assert f"{mat_path}: head boxes from MPII's .mat apply to MPII JSON records" in err


# ------------------------------------------------------------------ COCO


def _rle_crowd() -> dict:
    return {"counts": [2000, 30, 10, 30, 4330], "size": [60, 120]}


def _coco_release(tmp_path: Path) -> tuple[Path, dict]:
    """person_keypoints_val.json with COCO's extra fields, a crowd (RLE) and a num_keypoints 0 person."""
    rng = np.random.default_rng(5)

    def person(ann_id, image_id, x0):
        kp = np.zeros((17, 3))
        kp[:, 0] = rng.uniform(x0, x0 + 30, 17).round(1)
        kp[:, 1] = rng.uniform(10, 100, 17).round(1)
        kp[:, 2] = 2
        return {"segmentation": [[x0, 10.0, x0 + 30, 10.0, x0 + 30, 100.0]], "num_keypoints": 17, "area": 2400.0,
                "iscrowd": 0, "keypoints": kp.reshape(-1).tolist(), "image_id": image_id,
                "bbox": [x0, 10.0, 30.0, 90.0], "category_id": 1, "id": ann_id}

    anns = [person(1, 1, 5.0), person(2, 1, 45.0), person(3, 2, 10.0),
            {"segmentation": _rle_crowd(), "num_keypoints": 0, "area": 1800.0, "iscrowd": 1, "keypoints": [0] * 51,
             "image_id": 1, "bbox": [130.0, 20.0, 60.0, 60.0], "category_id": 1, "id": 9001},
            {"segmentation": [[130.0, 10.0, 180.0, 10.0, 180.0, 90.0]], "num_keypoints": 0, "area": 2000.0,
             "iscrowd": 0, "keypoints": [0] * 51, "image_id": 2, "bbox": [130.0, 10.0, 50.0, 80.0],
             "category_id": 1, "id": 4}]
    images = [{"license": 4, "file_name": f"{i:012d}.jpg", "coco_url": f"http://images.cocodataset.org/val2017/{i:012d}.jpg",
               "height": 120, "width": 200, "date_captured": "2013-11-14 17:02:52", "flickr_url": "http://farm7",
               "id": i} for i in (1, 2)]
    cat = {"supercategory": "person", "id": 1, "name": "person", "keypoints": list(COCO17.joints),
           "skeleton": [[a + 1, b + 1] for a, b in COCO17.skeleton]}
    data = {"info": {"year": 2017}, "licenses": [], "images": images, "annotations": anns, "categories": [cat]}
    root = tmp_path / "coco"
    path = _write(root / "annotations" / "person_keypoints_val.json", data)
    for img in images:
        _jpeg(root / "images" / "val" / img["file_name"], 200, 120)
    return path, data


def _inside(box: list[float], score: float) -> dict:
    """A detection whose joints all lie in ``box``."""
    x, y, w, h = box
    kp = np.stack([np.linspace(x + 5, x + w - 5, 17), np.linspace(y + 5, y + h - 5, 17), np.full(17, 0.9)], 1)
    return {"image_id": 0, "category_id": 1, "keypoints": kp.round(2).reshape(-1).tolist(), "score": score}


def test_coco_release_file_crowds_and_people_without_joints(tmp_path, capsys):
    path, data = _coco_release(tmp_path)
    capsys.readouterr()
    assert main(["data", "check", str(path.parent.parent), "--json"]) == 0, capsys.readouterr().err
    counts = json.loads(capsys.readouterr().out)["val"]
    assert counts["people"] == 5 and counts["instances"] == 3  # the crowd and the num_keypoints 0 person train nothing
    ds = load_dataset(path)
    crowd = ds.images[0].people[2]
    assert crowd.iscrowd and crowd.num_labelled == 0
    np.testing.assert_allclose(crowd.bbox, [130, 20, 60, 60])

    gt = _coco_gt_predictions(data["annotations"], {1, 2})
    assert len(gt) == 3
    crowd_box, empty_box = data["annotations"][3]["bbox"], data["annotations"][4]["bbox"]
    # two confident detections in the crowd region (crowds absorb any number) and one on the
    # num_keypoints 0 person (ignored ground truth absorbs one): none is a false positive
    extra = [_inside(crowd_box, 1.0) | {"image_id": 1}, _inside(crowd_box, 1.0) | {"image_id": 1},
             _inside(empty_box, 1.0) | {"image_id": 2}]
    out = _eval(capsys, "--gt", str(path), "--pred", str(_write(tmp_path / "pred.json", gt + extra)))
    assert out["AP"] == 1.0 and out["AR"] == 1.0
    # the same detections away from everyone (bottom-left corner) are false positives
    corner = np.stack([np.linspace(0, 4, 17), np.linspace(110, 118, 17), np.full(17, 0.9)], 1).reshape(-1).tolist()
    elsewhere = [p | {"keypoints": corner} for p in extra]
    assert _eval(capsys, "--gt", str(path), "--pred", str(_write(tmp_path / "fp.json", gt + elsewhere)))["AP"] < 0.9


# ------------------------------------------------------------------ a model's predictions files

TINY_ARCH = {"space": "simplebaseline", "backbone": "resnet18", "width_mult": 0.125,
             "head": {"widths": [16, 16, 16], "kernels": [4, 4, 4]}}


def _checkpoint(path: Path, schema) -> Path:
    torch.manual_seed(0)
    model = build_model(arch_from_json(TINY_ARCH), schema.num_joints)
    codec = HeatmapCodec(input_size=(96, 64), heatmap_size=(24, 16))
    save_checkpoint(path, {"arch": TINY_ARCH, "schema": schema.name, "codec": codec.to_dict(),
                           "state_dict": model.state_dict()})
    return path


def _strip_mpii_headboxes(root: Path) -> Path:
    """Rewrite a written MPII split as the MMPose release has it: no headbox, no id; the boxes in a .mat."""
    path = root / "annotations" / "mpii_val.json"
    records = json.loads(path.read_text())
    n = len(records)
    boxes, pos = np.zeros((2, 2, n)), np.zeros((16, 2, n))
    missing = np.ones((16, n))
    for i, r in enumerate(records):
        x1, y1, x2, y2 = r.pop("headbox")
        r.pop("id")
        boxes[:, :, i] = [[x1, y1], [x2, y2]]
        missing[:, i] = 1 - np.array(r["joints_vis"])
        pos[:, :, i] = r["joints"]
    _write(path, records)
    mat = root / "annotations" / "mpii_gt_val.mat"
    savemat(mat, {"headboxes_src": boxes, "jnt_missing": missing, "pos_gt_src": pos})
    return mat


@pytest.mark.parametrize("fmt", ["coco", "mpii", "posetrack"])
def test_eval_out_predictions_re_evaluate_to_the_same_numbers(tmp_path, capsys, one_thread, fmt):
    make_dataset(fmt, tmp_path / "ds", images=3, people=2)
    ckpt = _checkpoint(tmp_path / "model.pt", {"coco": COCO17, "mpii": MPII16, "posetrack": POSETRACK18}[fmt])
    extra = ["--headboxes", str(_strip_mpii_headboxes(tmp_path / "ds"))] if fmt == "mpii" else []
    data = str(tmp_path / "ds")
    written = _eval(capsys, "--checkpoint", str(ckpt), "--data", data, "--out", str(tmp_path / "ev"), *extra)
    again = _eval(capsys, "--gt", data, "--pred", str(tmp_path / "ev" / "predictions.json"), *extra)
    assert again == written

    # the file is in the annotation file's frame: MPII 1-based, COCO / PoseTrack 0-based like the records
    _, result, _, preds = evaluate_checkpoint(ckpt, data, tmp_path / "ev2", headboxes=extra[1] if extra else None,
                                              progress=False)
    assert result == written
    records = json.loads((tmp_path / "ev2" / "predictions.json").read_text())
    assert len(records) == len(preds) == 6
    origin = 1.0 if fmt == "mpii" else 0.0
    for p, r in zip(preds, records):
        kp = np.reshape(r["keypoints"], (-1, 3))
        np.testing.assert_allclose(kp[:, :2], p.keypoints[:, :2] + origin, atol=6e-4)
        assert r["id" if fmt == "mpii" else "image_id"] == (p.person_id if fmt == "mpii" else p.image_id)
    if fmt == "mpii":  # records without id are named by their position in the file
        assert sorted(r["id"] for r in records) == list(range(6))


def test_coco_detections_for_images_outside_a_subset(tmp_path, capsys, one_thread):
    """A detections file of the whole split on a subset annotation file: unknown images are skipped with one warning."""
    make_dataset("coco", tmp_path / "ds", images=2, people=1)  # image ids 1, 2
    dets = [{"image_id": i, "category_id": 1, "bbox": [2.0, 3.0, 40.0, 30.0], "score": 0.9} for i in (1, 139, 2, 139, 285)]
    path = _write(tmp_path / "COCO_val2017_detections_AP_H_56_person.json", dets)
    capsys.readouterr()
    assert [i for i, _, _ in load_detections(path, image_ids={1, 2})] == [1, 2]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("posenas: warning: ")
    assert f"{path}: skipped 3 detection(s) on 2 image id(s)" in err and "first: detections[1], image id 139" in err

    ckpt = _checkpoint(tmp_path / "model.pt", COCO17)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(tmp_path / "ds"), "--boxes", str(path),
                 "--out", str(tmp_path / "ev"), "--json"]) == 0
    captured = capsys.readouterr()
    assert "skipped 3 detection(s)" in captured.err and set(json.loads(captured.out)) >= {"AP", "AR"}
    assert sorted(r["image_id"] for r in json.loads((tmp_path / "ev" / "predictions.json").read_text())) == [1, 2]

    # a file none of whose detections is on the dataset's images is the wrong file
    only_unknown = _write(tmp_path / "other.json", dets[1:2] + dets[4:])
    with pytest.raises(PosenasError, match=r"other\.json: detections\[0\]: field 'image_id': unknown image id 139; "
                                           r"none of the 2 person detections"):
        load_detections(only_unknown, image_ids={1, 2})


def test_training_writes_val_predictions_in_the_file_frame(tmp_path, capsys, one_thread):
    from posenas.engine.train import train
    from test_engine import tiny_config

    make_dataset("mpii", tmp_path / "ds", images=3, people=2)
    data, run = str(tmp_path / "ds"), tmp_path / "run"
    cfg = tiny_config(tmp_path / "ds", epochs=1)
    train(cfg, run, progress=False)
    results = json.loads((run / "results.json").read_text())
    again = _eval(capsys, "--gt", data, "--pred", str(run / "val_predictions.json"))
    assert again == {k: v for k, v in results.items() if k not in ("metric", "steps")}
    # the same model's 0-based predictions, one pixel lower and to the left
    _, _, _, preds = evaluate_checkpoint(run / "checkpoints" / "last.pt", data, tmp_path / "ev",
                                         flip_test=cfg.train.flip_test, progress=False)
    records = json.loads((run / "val_predictions.json").read_text())
    assert [r["id"] for r in records] == [p.person_id for p in preds]
    for p, r in zip(preds, records):
        np.testing.assert_allclose(np.array(r["keypoints"])[:, :2], p.keypoints[:, :2] + 1.0, atol=1e-3)
