"""PoseTrack per-joint mAP (poseval's rules), ignore regions in PoseTrack18 files, and OKS AP on PoseTrack data.

Tiny videos are written as PoseTrack18 JSON and read back with ``read_posetrack``. Every
person is the same 17-joint pose shifted by 200 px, with a 10×10 head box: head size =
0.6 × √200 ≈ 8.49 px, so a joint matches within ≈ 4.24 px.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from posenas.cli import main
from posenas.data.posetrack import frame_image_id, read_posetrack, to_posetrack_videos
from posenas.errors import PosenasError
from posenas.evaluation import evaluate_coco, evaluate_records, score
from posenas.evaluation.posetrack import (
    POSETRACK_JOINTS,
    format_posetrack_table,
    points_in_polygon,
    posetrack_joint_ap,
    posetrack_map,
)
from posenas.keypoints import POSETRACK18

EARS = (POSETRACK18.index("left_ear"), POSETRACK18.index("right_ear"))
WRIST = POSETRACK18.index("left_wrist")
COLUMNS = ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Total")


def _pose(dx: float) -> np.ndarray:
    """(17, 3) PoseTrack18 joints of a person shifted by ``dx``: v = 1, ears unlabelled (zeros)."""
    kp = np.zeros((17, 3))
    kp[:, 0] = 10 + 3 * np.arange(17) + dx
    kp[:, 1] = 20 + 5 * np.arange(17)
    kp[:, 2] = 1
    kp[list(EARS)] = 0
    return kp


def _video(frames: list[dict]) -> dict:
    """A PoseTrack18 video dict; each frame: ``people`` (dx, or a (17, 3) pose with the head box of dx 0),
    ``labeled``, optional ``image`` fields."""
    images, anns = [], []
    for f, frame in enumerate(frames):
        image_id = frame_image_id(1, f)
        images.append({"id": image_id, "file_name": f"images/val/000001_test/{f:06d}.jpg", "vid_id": "000001",
                       "frame_id": image_id, "nframes": len(frames), "is_labeled": frame.get("labeled", True),
                       "width": 640, "height": 480, **frame.get("image", {})})
        for t, person in enumerate(frame.get("people", ())):
            dx = 0.0 if isinstance(person, np.ndarray) else person
            kp = person if isinstance(person, np.ndarray) else _pose(dx)
            anns.append({"id": image_id * 100 + t, "image_id": image_id, "category_id": 1, "track_id": t,
                         "keypoints": kp.reshape(-1).tolist(), "bbox": [dx, 10.0, 70.0, 110.0],
                         "bbox_head": [10.0 + dx, 10.0, 10.0, 10.0], "iscrowd": False})
    category = {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(POSETRACK18.joints),
                "skeleton": [[a + 1, b + 1] for a, b in POSETRACK18.skeleton]}
    return {"images": images, "annotations": anns, "categories": [category]}


def _write(tmp_path: Path, frames: list[dict], name: str = "000001_test.json") -> Path:
    path = tmp_path / "annotations" / "val" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_video(frames)))
    return path


def _read(tmp_path: Path, frames: list[dict]):
    return read_posetrack(_write(tmp_path, frames), tmp_path)


def _pred(frame: int, dx: float, joint_score: float, person_score: float = 0.5, moved: dict | None = None) -> dict:
    """A prediction = the GT pose at ``dx`` with every joint scored ``joint_score``; ``moved``: {joint: (ddx, ddy)}."""
    kp = _pose(dx)
    kp[:, 2] = joint_score
    for j, (ddx, ddy) in (moved or {}).items():
        kp[j, :2] += (ddx, ddy)
    return {"image_id": frame_image_id(1, frame), "category_id": 1, "keypoints": kp.reshape(-1).tolist(),
            "score": person_score}


TWO_BY_TWO = [{"people": [0, 200]}, {"people": [0, 200]}]


def test_ground_truth_as_predictions_is_100_everywhere(tmp_path):
    frames = [{"people": [0, 200]}, {"people": [0, 200], "labeled": True}, {"people": [0], "labeled": False}]
    ds = _read(tmp_path, frames)
    preds = [_pred(f, dx, 1.0) for f in (0, 1) for dx in (0, 200)]
    result = posetrack_map(ds, preds)
    assert result == {c: 100.0 for c in COLUMNS}
    # (K, 3) keypoints are accepted as well as COCO's flat list
    as_arrays = [p | {"keypoints": np.reshape(p["keypoints"], (17, 3))} for p in preds]
    assert posetrack_map(ds, as_arrays) == result
    # the ears are not among poseval's 15 joints
    assert set(posetrack_joint_ap(ds, preds)) == set(POSETRACK_JOINTS) and len(POSETRACK_JOINTS) == 15


def test_hand_computed_wrist_ap_and_ranking(tmp_path):
    ds = _read(tmp_path, TWO_BY_TWO)
    off = {WRIST: (20.0, 0.0)}  # 20 px > 0.5 × 8.49 px: a false positive for its (still assigned) person
    # joint scores 0.9, 0.8, 0.7, 0.6; person scores the other way round: the joint score ranks
    wrong_first = [_pred(0, 0, 0.9, 0.1, off), _pred(0, 200, 0.8, 0.2), _pred(1, 0, 0.7, 0.3), _pred(1, 200, 0.6, 0.4)]
    # left wrist, 4 positives, ranked FP, TP, TP, TP: precision 0, 1/2, 2/3, 3/4 at recall 0, .25, .5, .75;
    # made monotone: 3/4 at each of the three recall steps of .25 → AP = 3 × .25 × .75 = 56.25 %
    aps = posetrack_joint_ap(ds, wrong_first)
    assert aps["left_wrist"] == pytest.approx(56.25)
    assert all(v == 100.0 for j, v in aps.items() if j != "left_wrist")
    result = posetrack_map(ds, wrong_first)
    assert result["Wrist"] == pytest.approx((56.25 + 100) / 2)
    assert result["Total"] == pytest.approx((14 * 100 + 56.25) / 15)  # the mean of the 15 joints, not of the columns
    assert result["Head"] == result["Ankle"] == 100.0

    # the same wrong wrist with the lowest joint score: TP, TP, TP, FP → precision 1 up to recall .75 → 75 %
    wrong_last = [_pred(0, 0, 0.9, 0.1), _pred(0, 200, 0.8, 0.2), _pred(1, 0, 0.7, 0.3), _pred(1, 200, 0.6, 0.4, off)]
    assert posetrack_joint_ap(ds, wrong_last)["left_wrist"] == pytest.approx(75.0)
    assert posetrack_map(ds, wrong_last)["Wrist"] > result["Wrist"]


def test_assignment_is_poseval_greedy_not_hungarian(tmp_path):
    # GT 2 shares its head and shoulder joints with GT 1; its other joints are 100 px away.
    # Two copies of GT 1 are predicted (scores 0.9, 0.8): both prefer GT 1 (PCKh 1 vs 5/15), GT 1 keeps
    # the first, and the second is assigned nowhere, so all its joints are false positives: every joint
    # has 2 positives, ranked TP then FP → AP 50. (A Hungarian assignment would give the copy to GT 2,
    # making its 5 shared joints true positives: Head and Shoulder 100.)
    gt2 = _pose(0)
    gt2[[POSETRACK18.index(j) for j in POSETRACK_JOINTS[5:]], 0] += 100
    ds = _read(tmp_path, [{"people": [_pose(0), gt2]}])
    result = posetrack_map(ds, [_pred(0, 0, 0.9), _pred(0, 0, 0.8)])
    assert result == {c: 50.0 for c in COLUMNS}


def test_missing_people_and_an_unmatched_prediction(tmp_path):
    ds = _read(tmp_path, TWO_BY_TWO)
    exact = [_pred(f, dx, 0.5) for f in (0, 1) for dx in (0, 200)]
    # one person not predicted: recall stops at 3/4 with precision 1 → 75 for every joint
    assert posetrack_map(ds, exact[:3]) == {c: 75.0 for c in COLUMNS}
    # a prediction far from everyone, ranked first: FP, TP×4 → precision 4/5 at every recall step → 80
    stray = _pred(0, 400, 0.9)
    assert posetrack_map(ds, [stray, *exact]) == pytest.approx({c: 80.0 for c in COLUMNS})
    # no predictions at all: AP 0 wherever there are positives
    assert posetrack_map(ds, []) == {c: 0.0 for c in COLUMNS}


def test_ignore_regions_drop_predictions_and_ground_truth(tmp_path):
    # a rectangle around x = 400 (where the stray prediction is), and one around the person at dx = 200 of frame 1
    around_stray = {"ignore_regions_x": [[395, 470, 470, 395]], "ignore_regions_y": [[0, 0, 200, 200]]}
    frames = [{"people": [0, 200], "image": around_stray}, {"people": [0, 200]}]
    ds = _read(tmp_path, frames)
    np.testing.assert_allclose(ds.images[0].ignore_regions[0], [[395, 0], [470, 0], [470, 200], [395, 200]])
    assert ds.images[1].ignore_regions is None
    exact = [_pred(f, dx, 0.5) for f in (0, 1) for dx in (0, 200)]
    stray = _pred(0, 400, 0.9)
    # inside the ignore region the false prediction costs nothing ...
    assert posetrack_map(ds, [stray, *exact]) == {c: 100.0 for c in COLUMNS}
    # ... outside it (frame 1 has no region) the same prediction lowers every AP to 80
    assert posetrack_map(ds, [stray | {"image_id": frame_image_id(1, 1)}, *exact]) == pytest.approx(
        {c: 80.0 for c in COLUMNS})

    # ground-truth joints inside an ignore region are not positives: a person wholly inside one,
    # left unpredicted, does not lower recall
    around_person = {"ignore_regions_x": [[195, 270, 270, 195]], "ignore_regions_y": [[0, 0, 200, 200]]}
    ds2 = _read(tmp_path, [{"people": [0, 200]}, {"people": [0, 200], "image": around_person}])
    assert posetrack_map(ds2, exact[:3]) == {c: 100.0 for c in COLUMNS}


def test_points_in_polygon_boundary_is_outside():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], dtype=float)
    pts = np.array([[5, 5], [10, 5], [0, 0], [15, 5], [5, -1], [9.99, 9.99]])
    assert points_in_polygon(pts, square).tolist() == [True, False, False, False, False, True]
    # concave "L": the notch at (7, 7) is outside
    ell = np.array([[0, 0], [10, 0], [10, 4], [4, 4], [4, 10], [0, 10]], dtype=float)
    assert points_in_polygon(np.array([[2, 8], [8, 2], [7, 7]]), ell).tolist() == [True, True, False]
    # fewer than 3 points enclose nothing
    assert not points_in_polygon(np.array([[1, 1]]), square[:2]).any()


def test_unlabelled_and_empty_frames_are_skipped(tmp_path):
    frames = [*TWO_BY_TWO, {"people": [0, 200], "labeled": False}, {"people": []}]
    ds = _read(tmp_path, frames)
    exact = [_pred(f, dx, 0.5) for f in (0, 1) for dx in (0, 200)]
    base = posetrack_map(ds, exact)
    assert base == {c: 100.0 for c in COLUMNS}
    # garbage with top scores on the unlabelled frame 2 and on frame 3, labelled but without people (poseval
    # drops ground-truth frames without people, and their predictions)
    garbage = [_pred(f, dx, 0.99, moved={j: (33.0, 7.0) for j in range(17)}) for f in (2, 3) for dx in (0, 200)]
    assert posetrack_map(ds, garbage + exact) == base
    # the same garbage on a labelled frame with people does count
    assert posetrack_map(ds, [g | {"image_id": frame_image_id(1, 0)} for g in garbage] + exact)["Total"] < 100.0


@pytest.mark.parametrize("fields, field, message", [
    ({"ignore_regions_x": [[1, 2, 3], [4, 5, 6]], "ignore_regions_y": [[1, 2, 3]]},
     "ignore_regions_y", "1 polygons, but ignore_regions_x has 2"),
    ({"ignore_regions_x": [[1, 2, 3]], "ignore_regions_y": [[1, 2]]},
     "ignore_regions_y", "polygon 0: 2 y values, but ignore_regions_x has 3 x values"),
    ({"ignore_regions_x": [[1, "a", 3]], "ignore_regions_y": [[1, 2, 3]]},
     "ignore_regions_x", "polygon 0: expected finite numbers, found 'a'"),
    ({"ignore_regions_x": [[1, 2, 3]], "ignore_regions_y": [[1, True, 3]]},
     "ignore_regions_y", "polygon 0: expected finite numbers, found True"),
    ({"ignore_regions_x": [[1, 2, 3]]}, "ignore_regions_y", "missing, but ignore_regions_x is given"),
    ({"ignore_regions_x": 5, "ignore_regions_y": [[1, 2, 3]]}, "ignore_regions_x", "expected a list of polygons"),
    ({"ignore_regions_x": [[1, 2, 3], 4], "ignore_regions_y": [[1, 2, 3], [4]]},
     "ignore_regions_x", "polygon 1: expected a list of numbers, got int"),
])
def test_malformed_ignore_regions_name_file_image_and_field(tmp_path, fields, field, message):
    path = _write(tmp_path, [{"people": [0]}, {"people": [0], "image": fields}])
    with pytest.raises(PosenasError) as err:
        read_posetrack(path, tmp_path)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: images[1] (id {frame_image_id(1, 1)}): field '{field}': ")
    assert message in text


def test_ignore_regions_round_trip(tmp_path):
    regions = {"ignore_regions_x": [[1.5, 9, 9], []], "ignore_regions_y": [[2, 2, 8.25], []]}
    ds = _read(tmp_path, [{"people": [0], "image": regions}, {"people": [0]}])
    written = to_posetrack_videos(ds)["000001"]["images"]
    assert written[0]["ignore_regions_x"] == [[1.5, 9.0, 9.0], []]
    assert written[0]["ignore_regions_y"] == [[2.0, 2.0, 8.25], []]
    assert "ignore_regions_x" not in written[1]
    again = tmp_path / "again"
    again.mkdir()
    (again / "v.json").write_text(json.dumps(to_posetrack_videos(ds)["000001"]))
    back = read_posetrack(again / "v.json", tmp_path)
    assert [len(p) for p in back.images[0].ignore_regions] == [3, 0]
    np.testing.assert_array_equal(back.images[0].ignore_regions[0], ds.images[0].ignore_regions[0])


def test_missing_head_box_of_a_labelled_person_is_an_error(tmp_path):
    video = _video(TWO_BY_TWO)
    del video["annotations"][1]["bbox_head"]
    path = tmp_path / "v.json"
    path.write_text(json.dumps(video))
    ds = read_posetrack(path, tmp_path)
    with pytest.raises(PosenasError, match=rf"image {frame_image_id(1, 0)}, person {video['annotations'][1]['id']}: "
                                           r"no head box \(field 'head_box'\)"):
        posetrack_map(ds, [_pred(0, 0, 1.0)])


def test_score_evaluate_records_table_and_cli(tmp_path, capsys):
    path = _write(tmp_path, TWO_BY_TWO)
    ds = read_posetrack(path, tmp_path)
    exact = [_pred(f, dx, 0.5) for f in (0, 1) for dx in (0, 200)]
    result, table = score(ds, "posetrack", exact[:3])
    assert result == {c: 75.0 for c in COLUMNS}
    assert table == format_posetrack_table(result)
    metric, again, _ = evaluate_records(ds, exact[:3], "posetrack")
    assert metric == "posetrack" and again == result
    assert format_posetrack_table({**result, "Head": None, "Total": 81.06}) == (
        "|  Head |  Sho. |  Elb. |  Wri. |   Hip |  Knee |  Ank. | Total |\n"
        "|   n/a |  75.0 |  75.0 |  75.0 |  75.0 |  75.0 |  75.0 |  81.1 |"
    )
    with pytest.raises(PosenasError, match="allowed: coco, pckh, posetrack"):
        score(ds, "mota", exact)
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(exact[:3]))
    capsys.readouterr()
    assert main(["eval", "--gt", str(tmp_path), "--pred", str(pred), "--metric", "posetrack", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {c: 75.0 for c in COLUMNS}


def test_oks_ap_on_posetrack_data_counts_labelled_frames_only(tmp_path):
    ds = _read(tmp_path, [*TWO_BY_TWO, {"people": [0, 200], "labeled": False}])
    gt = [_pred(f, dx, 1.0, 0.9) for f in (0, 1) for dx in (0, 200)]
    garbage = [_pred(2, dx, 1.0, 0.99, moved={j: (30.0, 0.0) for j in range(17)}) for dx in (0, 200)]
    stats = evaluate_coco(ds, gt + garbage)
    assert stats["AP"] == pytest.approx(1.0)
    # one of the four people predicted 30 px off: AP drops
    assert evaluate_coco(ds, gt[:3] + [garbage[1] | {"image_id": frame_image_id(1, 1)}])["AP"] < 1.0
