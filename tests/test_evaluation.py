"""Tests for posenas.evaluation: COCO OKS AP/AR (against pycocotools itself) and MPII PCKh."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from posenas.data.records import ImageRecord, Person, PoseDataset
from posenas.errors import PosenasError
from posenas.evaluation import (
    COCO_METRIC_KEYS,
    PCKH_ROWS,
    coco_ground_truth,
    evaluate_coco,
    format_coco_table,
    format_pckh_table,
    load_coco_predictions,
    load_pckh_predictions,
    pckh,
)
from posenas.keypoints import COCO17, MPII16, POSETRACK18

# --------------------------------------------------------------------------------------
# COCO: a hand-made ground truth, written as a real COCO JSON file and as a PoseDataset
# --------------------------------------------------------------------------------------


def _pose(x0: float, y0: float, scale: float, k: int = 17) -> list[list[float]]:
    """A deterministic skeleton: joint j at (x0 + scale*(j % 4), y0 + scale*j/2); halves only (float32-exact)."""
    return [[x0 + scale * (j % 4), y0 + scale * j / 2] for j in range(k)]


def _person(pid, xy, v, bbox, area, iscrowd=0):
    kp = [[x, y, float(vis)] if vis > 0 else [0.0, 0.0, 0.0] for (x, y), vis in zip(xy, v)]
    return {"id": pid, "kp": kp, "bbox": bbox, "area": area, "iscrowd": iscrowd}


def _coco_people():
    """image id -> people. Areas: large > 96² = 9216, medium in (32², 96²)."""
    all2 = [2] * 17
    some_missing = [2, 2, 0, 0, 1, 2, 2, 1, 1, 2, 2, 2, 2, 0, 0, 2, 2]  # v=0 and v=1 joints
    few = [0, 0, 0, 0, 0, 2, 2, 1, 1, 0, 0, 2, 2, 0, 0, 0, 0]
    return {
        1: [
            _person(101, _pose(100, 50, 30), all2, [100.0, 50.0, 120.0, 300.0], 30000.0),
            _person(102, _pose(300, 100, 8), some_missing, [300.0, 100.0, 40.0, 80.0], 3000.0),
        ],
        2: [
            _person(201, _pose(50, 60, 40), all2, [50.0, 60.0, 160.0, 340.0], 40000.0),
            # a crowd region: no keypoints, ignored by COCOeval, detections on it are not false positives
            _person(202, _pose(0, 0, 0), [0] * 17, [200.0, 0.0, 400.0, 300.0], 100000.0, iscrowd=1),
        ],
        3: [
            _person(301, _pose(400, 200, 6), few, [390.0, 190.0, 40.0, 60.0], 2000.0),
            # labelled box but no labelled joint: num_keypoints 0, ignored by COCOeval
            _person(302, _pose(0, 0, 0), [0] * 17, [10.0, 10.0, 50.0, 120.0], 5000.0),
        ],
    }


def _coco_json(people_by_image, schema=COCO17, images=None) -> dict:
    """The ground truth as the COCO file format spells it (written independently of coco_ground_truth)."""
    images = images or [{"id": i, "file_name": f"{i:06d}.jpg", "width": 640, "height": 480} for i in people_by_image]
    anns = []
    for img_id, people in people_by_image.items():
        for p in people:
            anns.append(
                {
                    "id": p["id"],
                    "image_id": img_id,
                    "category_id": 1,
                    "keypoints": [c for xyv in p["kp"] for c in xyv],
                    "num_keypoints": sum(1 for xyv in p["kp"] if xyv[2] > 0),
                    "bbox": p["bbox"],
                    "area": p["area"],
                    "iscrowd": p["iscrowd"],
                }
            )
    cat = {
        "id": 1,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(schema.joints),
        "skeleton": [[a + 1, b + 1] for a, b in schema.skeleton],
    }
    return {"images": images, "annotations": anns, "categories": [cat]}


def _dataset(people_by_image, schema=COCO17, fmt="coco", source="gt.json", extra_images=(), area=True, **img_kw):
    images = []
    for img_id, people in people_by_image.items():
        persons = [
            Person(
                id=p["id"],
                keypoints=np.array(p["kp"], dtype=np.float32),
                bbox=np.array(p["bbox"], dtype=np.float32),
                area=p["area"] if area else None,
                iscrowd=bool(p["iscrowd"]),
                head_box=np.array(p["head_box"], dtype=np.float32) if "head_box" in p else None,
            )
            for p in people
        ]
        images.append(ImageRecord(id=img_id, file_name=f"{img_id:06d}.jpg", width=640, height=480, people=persons, **img_kw))
    images += list(extra_images)
    images.sort(key=lambda r: r.id)
    return PoseDataset(format=fmt, schema=schema, image_root=Path("images"), images=images, source=Path(source))


def _exact_predictions(people_by_image, score=1.0):
    preds = []
    for img_id, people in people_by_image.items():
        for p in people:
            if p["iscrowd"] or not any(xyv[2] > 0 for xyv in p["kp"]):
                continue
            flat = []
            for x, y, v in p["kp"]:
                flat += [x, y, 1.0] if v > 0 else [0.0, 0.0, 0.1]
            preds.append({"image_id": img_id, "category_id": 1, "keypoints": flat, "score": score})
    return preds


def _perturbed_predictions(people_by_image, seed=0):
    rng = np.random.default_rng(seed)
    preds = []
    for img_id, people in people_by_image.items():
        for p in people:
            if p["iscrowd"]:
                continue
            sigma = rng.uniform(0.5, 12.0)
            flat = []
            for x, y, _ in p["kp"]:
                flat += [float(x + rng.normal(0, sigma)), float(y + rng.normal(0, sigma)), float(rng.uniform(0.2, 1))]
            preds.append({"image_id": img_id, "category_id": 1, "keypoints": flat, "score": float(rng.uniform(0.3, 1))})
            if rng.uniform() < 0.5:  # a duplicate with a lower score: a false positive
                dup = copy.deepcopy(preds[-1])
                dup["keypoints"] = [c + 3.0 for c in dup["keypoints"]]
                dup["score"] = preds[-1]["score"] * 0.5
                preds.append(dup)
    # a detection on the crowd region of image 2 and a stray false positive on image 3
    preds.append({"image_id": 2, "category_id": 1, "keypoints": [c for xy in _pose(300, 100, 20) for c in (*xy, 0.5)], "score": 0.9})
    preds.append({"image_id": 3, "category_id": 1, "keypoints": [c for xy in _pose(100, 300, 10) for c in (*xy, 0.5)], "score": 0.8})
    return preds


def _direct_pycocotools(gt_file: Path, pred_file: Path, sigmas=None) -> list[float]:
    """The reference: pycocotools on the files, exactly as its README does it."""
    coco_gt = COCO(str(gt_file))
    coco_dt = coco_gt.loadRes(str(pred_file))
    ev = COCOeval(coco_gt, coco_dt, iouType="keypoints")
    if sigmas is not None:
        ev.params.kpt_oks_sigmas = np.array(sigmas)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return [float(s) for s in ev.stats]


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_coco_ground_truth_matches_the_coco_file_format():
    people = _coco_people()
    gt = coco_ground_truth(_dataset(people))
    assert gt == _coco_json(people)
    json.dumps(gt)  # plain Python types only
    # without Person.area the area is the bbox's w*h
    gt_no_area = coco_ground_truth(_dataset(people, area=False))
    assert [a["area"] for a in gt_no_area["annotations"]] == [p["bbox"][2] * p["bbox"][3] for ps in people.values() for p in ps]


def test_coco_exact_predictions_give_ap_one(tmp_path, capsys):
    people = _coco_people()
    ds = _dataset(people)
    preds = load_coco_predictions(_write(tmp_path / "pred.json", _exact_predictions(people)), ds)
    stats = evaluate_coco(ds, preds)
    assert capsys.readouterr().out == ""  # pycocotools' prints are captured
    assert list(stats) == list(COCO_METRIC_KEYS)
    for key in COCO_METRIC_KEYS:
        # 1 - 2.2e-16: COCOeval divides tp by (tp + fp + eps)
        assert stats[key] == pytest.approx(1.0, abs=1e-12), key
        assert isinstance(stats[key], float)


def test_coco_perturbed_predictions_match_direct_pycocotools(tmp_path):
    people = _coco_people()
    gt_file = _write(tmp_path / "gt.json", _coco_json(people))
    ds = _dataset(people, source=str(gt_file))
    for seed in range(3):
        raw = _perturbed_predictions(people, seed)
        pred_file = _write(tmp_path / f"pred{seed}.json", raw)
        preds = load_coco_predictions(pred_file, ds)
        before = copy.deepcopy(preds)
        ours = evaluate_coco(ds, preds)
        assert preds == before  # loadRes mutates its input; ours must not leak that
        reference = _direct_pycocotools(gt_file, pred_file)
        assert [ours[k] for k in COCO_METRIC_KEYS] == reference
        assert 0.0 < ours["AP"] < 1.0  # the perturbation makes this a real test


# OKS in closed form (COCO): OKS = mean over labelled joints of exp(-d² / (2 s² k²)), s² = area, k = 2σ.
_SIGMA = {"left_shoulder": 0.079, "left_hip": 0.107, "right_knee": 0.087}  # COCO's published sigmas


@pytest.mark.parametrize(
    "d_hip, d_knee, lo, hi, passed",
    [
        # 1 + exp(-20²/915.92) + exp(-39²/605.52) = 1 + 0.6461 + 0.0811 -> OKS = 0.5757: passes 0.50, 0.55
        (20.0, 39.0, 0.55, 0.60, 2),
        # 1 + exp(-8²/915.92) + exp(-20²/605.52) = 1 + 0.9325 + 0.5166 -> OKS = 0.8164: passes 0.50 ... 0.80
        (8.0, 20.0, 0.80, 0.85, 7),
    ],
)
def test_coco_hand_computed_oks(d_hip, d_knee, lo, hi, passed):
    area = 10000.0  # s² ; a large person (> 96²)
    labelled = {COCO17.index(n) for n in _SIGMA}
    xy = _pose(200, 100, 10)
    v = [2 if j in labelled else 0 for j in range(17)]
    people = {7: [_person(5, xy, v, [150.0, 80.0, 100.0, 100.0], area)]}
    ds = _dataset(people)

    pred = [list(p) for p in xy]
    pred[COCO17.index("left_hip")][0] += d_hip  # displaced along x
    pred[COCO17.index("right_knee")][1] += d_knee  # displaced along y
    for j in range(17):
        if j not in labelled:
            pred[j] = [900.0, -500.0]  # unlabelled joints: anything, they do not count
    flat = [c for x, y in pred for c in (x, y, 1.0)]

    def term(name, d):
        k = 2 * _SIGMA[name]
        return math.exp(-(d**2) / (2 * area * k**2))

    oks = (term("left_shoulder", 0.0) + term("left_hip", d_hip) + term("right_knee", d_knee)) / 3
    assert lo < oks < hi
    # one GT, one detection: precision 1 at every recall threshold of the passed OKS thresholds, 0 elsewhere
    expected_ap = passed / 10
    stats = evaluate_coco(ds, [{"image_id": 7, "category_id": 1, "keypoints": flat, "score": 0.9}])
    assert stats["AP"] == pytest.approx(expected_ap, abs=1e-12)
    assert stats["AR"] == pytest.approx(expected_ap, abs=1e-12)
    assert stats["APL"] == pytest.approx(expected_ap, abs=1e-12)
    assert stats["AP50"] == pytest.approx(1.0, abs=1e-12)
    assert stats["AP75"] == pytest.approx(1.0 if passed >= 6 else 0.0, abs=1e-12)
    assert stats["APM"] == -1.0 and stats["ARM"] == -1.0  # no medium person: pycocotools says -1


def test_coco_empty_predictions_give_zero(tmp_path):
    people = _coco_people()
    ds = _dataset(people)
    preds = load_coco_predictions(_write(tmp_path / "empty.json", []), ds)
    assert preds == []
    stats = evaluate_coco(ds, preds)
    assert stats == {k: 0.0 for k in COCO_METRIC_KEYS}  # medium and large GT exist: all 0
    # only a large person: the medium range has no ground truth, so pycocotools' -1 stays
    only_large = _dataset({1: people[1][:1]})
    stats = evaluate_coco(only_large, [])
    assert stats["AP"] == 0.0 and stats["APL"] == 0.0 and stats["APM"] == -1.0


def test_coco_annotation_id_zero_still_matches():
    # pycocotools records a match by the GT id and tests it for non-zero: id 0 must be renumbered
    people = {1: [_person(0, _pose(100, 50, 30), [2] * 17, [100.0, 50.0, 120.0, 300.0], 30000.0)]}
    ds = _dataset(people)
    assert coco_ground_truth(ds)["annotations"][0]["id"] == 1
    assert evaluate_coco(ds, _exact_predictions(people))["AP"] == pytest.approx(1.0, abs=1e-12)


def _posetrack_people():
    ears = (POSETRACK18.index("left_ear"), POSETRACK18.index("right_ear"))
    v = [0 if j in ears else 2 for j in range(17)]  # PoseTrack leaves the ears unlabelled
    v2 = list(v)
    v2[POSETRACK18.index("left_wrist")] = 1
    return {
        10001: [
            _person(1, _pose(100, 80, 25), v, [90.0, 70.0, 110.0, 220.0], None) | {"head_box": [100.0, 80.0, 140.0, 120.0]},
            _person(2, _pose(400, 100, 6), v2, [395.0, 95.0, 30.0, 60.0], None) | {"head_box": [400.0, 100.0, 412.0, 112.0]},
        ],
        10003: [
            _person(3, _pose(110, 85, 25), v, [100.0, 75.0, 110.0, 220.0], None) | {"head_box": [110.0, 85.0, 150.0, 125.0]},
        ],
    }


def test_coco_posetrack_dataset(tmp_path):
    people = _posetrack_people()
    unlabelled = ImageRecord(id=10002, file_name="010002.jpg", width=640, height=480, video_id="v1", frame_id=1, is_labeled=False)
    ds = _dataset(people, schema=POSETRACK18, fmt="posetrack", extra_images=[unlabelled], area=False, video_id="v1")

    gt = coco_ground_truth(ds)
    assert [img["id"] for img in gt["images"]] == [10001, 10003]  # unlabelled frames are not evaluated
    assert gt["categories"][0]["keypoints"] == list(POSETRACK18.joints)
    gt_json = _coco_json({i: [p | {"area": p["bbox"][2] * p["bbox"][3]} for p in ps] for i, ps in people.items()}, POSETRACK18)
    gt_file = _write(tmp_path / "gt.json", gt_json)
    # the GT dict may carry PoseTrack's extra fields (bbox_head, track_id); COCOeval ignores them
    fields = {"id", "image_id", "category_id", "keypoints", "num_keypoints", "bbox", "area", "iscrowd"}
    assert [{k: a[k] for k in fields} for a in gt["annotations"]] == gt_json["annotations"]
    assert gt["images"] == gt_json["images"] and gt["categories"] == gt_json["categories"]

    exact = _exact_predictions(people)
    on_unlabelled = {"image_id": 10002, "category_id": 1, "keypoints": [1.0] * 51, "score": 0.99}
    stats = evaluate_coco(ds, exact + [on_unlabelled])
    assert stats["AP"] == pytest.approx(1.0, abs=1e-12)

    perturbed = [p for p in _perturbed_predictions(people, seed=4) if p["image_id"] != 2 and p["image_id"] != 3]
    pred_file = _write(tmp_path / "pred.json", perturbed)
    ours = evaluate_coco(ds, load_coco_predictions(pred_file, ds) + [on_unlabelled])
    assert [ours[k] for k in COCO_METRIC_KEYS] == _direct_pycocotools(gt_file, pred_file, POSETRACK18.sigmas)
    assert 0.0 < ours["AP"] < 1.0


def test_format_coco_table():
    stats = {k: 0.5 for k in COCO_METRIC_KEYS} | {"APM": -1.0}
    table = format_coco_table(stats)
    lines = table.splitlines()
    assert all(any(line.startswith(k + " ") for line in lines) for k in COCO_METRIC_KEYS)
    assert "0.5000" in table and "n/a" in table


# ----------------------------------- COCO bad input -----------------------------------


def test_coco_predictions_malformed_json(tmp_path):
    ds = _dataset(_coco_people())
    path = tmp_path / "bad.json"
    path.write_text('[{"image_id": 1,\n  "keypoints": [1, 2,, 3]}]')
    with pytest.raises(PosenasError, match=r"bad\.json.*line 2, column"):
        load_coco_predictions(path, ds)


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda preds: {"results": preds}, r"expected a JSON list"),
        (lambda preds: [preds[0], {k: v for k, v in preds[1].items() if k != "score"}], r"record 1: missing field 'score'"),
        (lambda preds: [preds[0], preds[1] | {"keypoints": preds[1]["keypoints"][:-3]}], r"record 1: field 'keypoints' has 48 numbers, expected 3×K = 51"),
        (lambda preds: [preds[0] | {"image_id": 999}], r"record 0: field 'image_id': 999 is not an image"),
        (lambda preds: [preds[0] | {"keypoints": [float("nan")] + preds[0]["keypoints"][1:]}], r"record 0: field 'keypoints'\[0\].*finite"),
        (lambda preds: [preds[0] | {"score": float("inf")}], r"record 0: field 'score' must be a finite number"),
        (lambda preds: [preds[0] | {"category_id": 2}], r"record 0: field 'category_id' must be 1"),
        (lambda preds: [preds[0] | {"image_id": "1"}], r"record 0: field 'image_id' must be an integer"),
    ],
)
def test_coco_predictions_bad_records(tmp_path, mutate, pattern):
    people = _coco_people()
    ds = _dataset(people)
    path = tmp_path / "pred.json"
    path.write_text(json.dumps(mutate(_exact_predictions(people))))  # NaN / Infinity: Python's json accepts them
    with pytest.raises(PosenasError, match=pattern) as err:
        load_coco_predictions(path, ds)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_coco_ground_truth_person_without_bbox():
    ds = _dataset(_coco_people(), source="data/val.json")
    ds.images[1].people[0].bbox = None
    with pytest.raises(PosenasError, match=r"data/val\.json: image 2, person 201: no bbox"):
        coco_ground_truth(ds)


# --------------------------------------------------------------------------------------
# PCKh: a hand-computed case on MPII16
# --------------------------------------------------------------------------------------

# Three records. head size = 0.6 × head-box diagonal; thresholds in pixels = t × head size.
_HEAD_BOXES = {
    1: [100.0, 100.0, 130.0, 140.0],  # diagonal √(30² + 40²) = 50 -> head 30: @0.5 ≤ 15 px, @0.1 ≤ 3 px
    2: [0.0, 0.0, 60.0, 80.0],  # diagonal 100 -> head 60: @0.5 ≤ 30 px, @0.1 ≤ 6 px
    3: [10.0, 10.0, 34.0, 42.0],  # diagonal √(24² + 32²) = 40 -> head 24: @0.5 ≤ 12 px, @0.1 ≤ 2.4 px
}

# joint -> (distance of the prediction from the GT, GT visibility) for records 1, 2, 3.
# Displacements are along x, except (3, 4)-shaped ones marked "diag".
# v = 1 (occluded) still counts; v = 0 (unlabelled) does not.
_PCKH_CASE = {
    #                 rec 1      rec 2      rec 3       @0.5     @0.1
    "head_top":       [(2, 2),   (10, 2),   (20, 1)],  # 1,1,0   1,0,0
    "left_shoulder":  [(5, 2),   (5, 2),    (100, 0)],  # 1,1,-   0,1,-   (rec 1: diag)
    "right_shoulder": [(16, 2),  (29, 1),   (2, 2)],   # 0,1,1   0,0,1
    "left_elbow":     [(0, 2),   (0, 2),    (0, 2)],   # 1,1,1   1,1,1
    "right_elbow":    [(14, 2),  (31, 2),   (11, 1)],  # 1,0,1   0,0,0
    "left_wrist":     [(50, 0),  (0, 0),    (7, 0)],   # none labelled: no rate
    "right_wrist":    [(1, 2),   (7, 2),    (13, 2)],  # 1,1,0   1,0,0
    "left_hip":       [(2.5, 2), (4, 2),    (2, 2)],   # 1,1,1   1,1,1
    "right_hip":      [(20, 2),  (40, 2),   (13, 2)],  # 0,0,0   0,0,0
    "left_knee":      [(4, 1),   (60, 0),   (1, 1)],   # 1,-,1   0,-,1
    "right_knee":     [(14, 2),  (25, 2),   (12.5, 2)],  # 1,1,0   0,0,0
    "left_ankle":     [(0, 2),   (0, 2),    (0, 2)],   # 1,1,1   1,1,1
    "right_ankle":    [(16, 2),  (5, 2),    (9, 0)],   # 0,1,-   0,1,-
    "upper_neck":     [(1, 2),   (35, 2),   (5, 1)],   # 1,0,1   1,0,0
    "pelvis":         [(100, 2), (0, 2),    (0, 0)],   # excluded from every row and the mean
    "thorax":         [(50, 2),  (0, 2),    (50, 2)],  # excluded from every row and the mean
}  # fmt: skip
_DIAG = {("left_shoulder", 1)}


def _pckh_dataset(source="mpii_val.json"):
    """Records 1 and 2 are two people of image 1 (MPII: several records per image), record 3 is in image 2."""
    people, preds = {}, {}
    for rec, box in _HEAD_BOXES.items():
        kp = np.zeros((16, 3), dtype=np.float32)  # unlabelled joints: x = y = v = 0
        pred = np.zeros((16, 3))
        for name, cells in _PCKH_CASE.items():
            j = MPII16.index(name)
            d, v = cells[rec - 1]
            x, y = 50.0 + 10 * j + 200 * rec, 300.0 + 5 * j
            if v > 0:
                kp[j] = (x, y, v)
            dx, dy = (d * 3 / 5, d * 4 / 5) if (name, rec) in _DIAG else (d, 0.0)
            pred[j] = (x + dx, y + dy, 0.9)
        people[rec] = Person(id=rec, keypoints=kp, head_box=np.array(box, dtype=np.float32))
        preds[rec] = pred
    images = [
        ImageRecord(id=1, file_name="1.jpg", people=[people[1], people[2]]),
        ImageRecord(id=2, file_name="2.jpg", people=[people[3]]),
    ]
    ds = PoseDataset(format="mpii", schema=MPII16, image_root=Path("images"), images=images, source=Path(source))
    return ds, preds


def test_pckh_hand_computed():
    ds, preds = _pckh_dataset()
    result = pckh(ds, preds)
    assert list(result) == ["PCKh@0.5", "PCKh@0.1"]
    assert all(list(rows) == list(PCKH_ROWS) for rows in result.values())

    # joint rates (correct / labelled), in percent, from the table above
    r = lambda c, n: 100.0 * c / n  # noqa: E731
    expected_05 = {
        "head": r(2, 3),  # head_top 2/3
        "shoulder": (r(2, 2) + r(2, 3)) / 2,  # left 2/2 (rec 3 unlabelled), right 2/3 -> 83.33
        "elbow": (r(3, 3) + r(2, 3)) / 2,  # 83.33
        "wrist": r(2, 3),  # left has no labelled GT at all -> the right side alone
        "hip": (r(3, 3) + r(0, 3)) / 2,  # 50
        "knee": (r(2, 2) + r(2, 3)) / 2,  # 83.33
        "ankle": (r(3, 3) + r(1, 2)) / 2,  # 75
        # 14 joints (all but pelvis, thorax); labelled 3+2+3+3+3+0+3+3+3+2+3+3+2+3 = 36,
        # correct @0.5: 2+2+2+3+2+0+2+3+0+2+2+3+1+2 = 26
        "mean": r(26, 36),
    }
    expected_01 = {
        "head": r(1, 3),
        "shoulder": (r(1, 2) + r(1, 3)) / 2,  # 41.67
        "elbow": (r(3, 3) + r(0, 3)) / 2,  # 50
        "wrist": r(1, 3),
        "hip": (r(3, 3) + r(0, 3)) / 2,  # 50
        "knee": (r(1, 2) + r(0, 3)) / 2,  # 25
        "ankle": (r(3, 3) + r(1, 2)) / 2,  # 75
        # correct @0.1: 1+1+1+3+0+0+1+3+0+1+0+3+1+1 = 16 of 36
        "mean": r(16, 36),
    }
    assert result["PCKh@0.5"] == pytest.approx(expected_05, abs=1e-9)
    assert result["PCKh@0.1"] == pytest.approx(expected_01, abs=1e-9)
    assert result["PCKh@0.5"]["mean"] == pytest.approx(72.2222222, abs=1e-6)

    # exact predictions: 100 everywhere the GT is labelled
    exact = {p.id: p.keypoints.astype(np.float64) for img in ds.images for p in img.people}
    assert all(v == 100.0 for rows in pckh(ds, exact).values() for v in rows.values())

    table = format_pckh_table(result)
    assert "PCKh@0.5" in table and "72.22" in table and "44.44" in table
    assert all(any(line.startswith(row) for line in table.splitlines()) for row in PCKH_ROWS)


def test_pckh_row_without_labelled_joints_is_none():
    ds, preds = _pckh_dataset()
    for img in ds.images:
        for p in img.people:
            for name in ("left_ankle", "right_ankle"):
                p.keypoints[MPII16.index(name)] = 0
    result = pckh(ds, preds, thresholds=(0.5,))
    assert list(result) == ["PCKh@0.5"]
    assert result["PCKh@0.5"]["ankle"] is None  # 0/0 is not 0 %
    # labelled 36 - 5 ankle entries = 31; correct 26 - 4 = 22
    assert result["PCKh@0.5"]["mean"] == pytest.approx(100 * 22 / 31)
    assert "n/a" in format_pckh_table(result)
    json.dumps(result)  # None is JSON null


def test_pckh_predictions_file(tmp_path):
    ds, preds = _pckh_dataset()
    entries = []
    for rec, arr in preds.items():  # an MPII predictions file is 1-based, like the annotation file
        kps = [[x + 1.0, y + 1.0] for x, y, _ in arr] if rec == 2 else [[x + 1.0, y + 1.0, 0.5] for x, y, _ in arr]
        entries.append({"id": rec, "keypoints": kps})
    loaded = load_pckh_predictions(_write(tmp_path / "pred.json", entries), ds)
    assert sorted(loaded) == [1, 2, 3]
    assert loaded[2].shape == (16, 3) and (loaded[2][:, 2] == 1.0).all()
    np.testing.assert_allclose(loaded[1][:, :2], preds[1][:, :2])  # back in the records' 0-based frame
    assert pckh(ds, loaded) == pckh(ds, preds)


def test_pckh_posetrack_dataset():
    people = _posetrack_people()
    ds = _dataset(people, schema=POSETRACK18, fmt="posetrack")
    exact = {p.id: p.keypoints for img in ds.images for p in img.people}
    result = pckh(ds, exact)
    assert all(v == 100.0 for rows in result.values() for v in rows.values())


# ----------------------------------- PCKh bad input -----------------------------------


def _pckh_entries(preds):
    return [{"id": rec, "keypoints": [[float(x), float(y), 1.0] for x, y, _ in arr]} for rec, arr in preds.items()]


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda e: {"predictions": e}, r"expected a JSON list"),
        (lambda e: [e[0] | {"id": 42}] + e[1:], r"record 0: field 'id': 42 is not a record"),
        (lambda e: e + [e[1]], r"record 3: field 'id': 2 already predicted by record 1"),
        (lambda e: [e[0], e[1] | {"keypoints": e[1]["keypoints"][:15]}, e[2]], r"record 1: field 'keypoints' has 15 joints, expected 16"),
        (lambda e: [e[0] | {"keypoints": e[0]["keypoints"][:3] + [[1.0]] + e[0]["keypoints"][4:]}] + e[1:], r"record 0: field 'keypoints'\[3\] \(left_hip\)"),
        (lambda e: e[:2] + [e[2] | {"keypoints": [[float("nan"), 1.0, 1.0]] + e[2]["keypoints"][1:]}], r"record 2: field 'keypoints'\[0\] \(right_ankle\) must hold finite"),
        (lambda e: [e[1]], r"predictions missing for 2 of 3 records .*first missing id: 1"),
        (lambda e: [e[0] | {"id": True}] + e[1:], r"record 0: field 'id' must be an integer"),
        (lambda e: [{"keypoints": []}], r"record 0: missing field 'id'"),
    ],
)
def test_pckh_predictions_bad_records(tmp_path, mutate, pattern):
    ds, preds = _pckh_dataset()
    path = tmp_path / "pred.json"
    path.write_text(json.dumps(mutate(_pckh_entries(preds))))
    with pytest.raises(PosenasError, match=pattern) as err:
        load_pckh_predictions(path, ds)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_pckh_predictions_malformed_json(tmp_path):
    ds, _ = _pckh_dataset()
    path = tmp_path / "pckh.json"
    path.write_text('[\n{"id": 1, "keypoints": [[1, 2], }\n]')
    with pytest.raises(PosenasError, match=r"pckh\.json.*line 2, column"):
        load_pckh_predictions(path, ds)


def test_pckh_missing_predictions_in_python_api():
    ds, preds = _pckh_dataset()
    del preds[1], preds[3]
    with pytest.raises(PosenasError, match=r"missing for 2 of 3 records .*first missing id: 1"):
        pckh(ds, preds)


def test_pckh_dataset_without_head_boxes():
    ds, preds = _pckh_dataset(source="data/mpii_noheads.json")
    for img in ds.images:
        for p in img.people:
            p.head_box = None
    with pytest.raises(PosenasError, match=r"data/mpii_noheads\.json: no head boxes \(field 'head_box'\)"):
        pckh(ds, preds)
    ds, preds = _pckh_dataset(source="data/mpii_onehead.json")
    ds.images[1].people[0].head_box = None
    with pytest.raises(PosenasError, match=r"mpii_onehead\.json: image 2, person 3: no head box"):
        pckh(ds, preds)


def test_pckh_schema_without_head_top():
    people = _coco_people()
    ds = _dataset(people, source="coco_val.json")
    with pytest.raises(PosenasError, match=r"coco_val\.json: PCKh needs the joints head_top, which schema coco17 does not have"):
        pckh(ds, {})


def test_pckh_threshold_boundary_counts_as_correct():
    # head box 30 × 40 -> diagonal 50 -> head size 30 (exact in floating point);
    # MPII counts a joint with distance ≤ t × head size: 15 px is correct @0.5, 3 px @0.1, 15.01 px is not.
    kp = np.zeros((16, 3), dtype=np.float32)
    kp[:, :2] = 100.0
    kp[:, 2] = 2
    pred = kp.astype(np.float64).copy()
    pred[MPII16.index("head_top"), 0] += 15.0
    pred[MPII16.index("left_wrist"), 1] += 3.0
    pred[MPII16.index("right_wrist"), 1] += 15.01
    person = Person(id=0, keypoints=kp, head_box=np.array([0, 0, 30, 40], dtype=np.float32))
    ds = PoseDataset("mpii", MPII16, Path("."), [ImageRecord(id=0, file_name="0.jpg", people=[person])], Path("b.json"))
    result = pckh(ds, {0: pred})
    assert result["PCKh@0.5"]["head"] == 100.0 and result["PCKh@0.1"]["head"] == 0.0
    assert result["PCKh@0.1"]["wrist"] == 50.0  # left 3 px: correct; right 15.01 px: wrong
    assert result["PCKh@0.5"]["wrist"] == 50.0


def test_evaluate_coco_validates_python_predictions():
    ds = _dataset(_coco_people())
    with pytest.raises(PosenasError, match=r"predictions: record 0: field 'image_id': 5 is not an image"):
        evaluate_coco(ds, [{"image_id": 5, "category_id": 1, "keypoints": [0.0] * 51, "score": 1.0}])
