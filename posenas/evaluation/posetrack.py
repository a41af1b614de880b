"""PoseTrack multi-person mAP per joint, as the PoseTrack benchmark's ``poseval`` computes it.

Why a second AP next to COCO's OKS AP: PoseTrack papers (ViPNAS Table 1) report poseval's
per-joint AP — Head, Shoulder, Elbow, Wrist, Hip, Knee, Ankle, Total — which normalises by
head size and matches each joint on its own, so OKS AP numbers are not comparable to them.

What poseval does, and so what we do:

* **Frames.** Only frames with ``is_labeled`` true that carry at least one annotated person
  are evaluated (poseval drops ground-truth frames without people, and the predictions on
  them). Predictions on other frames are accepted and dropped.
* **Joints.** poseval's 15: ``nose``, ``head_bottom``, ``head_top`` and the twelve left/right
  limb joints, looked up by name in the schema (PoseTrack18's unlabelled ears are not
  among them). A ground-truth joint counts when labelled (``v > 0``); every joint of a
  prediction counts, scored by its own confidence (keypoints column 3; the person
  ``score`` is not used).
* **Ignore regions.** Joints inside a polygon of :attr:`ImageRecord.ignore_regions` are
  removed from the predictions *and* from the ground truth (poseval's
  ``removeIgnoredPoints`` filters both). A point on a polygon's boundary is outside, as
  shapely's ``Polygon.contains`` (which poseval uses) says.
* **Matching, per frame.** Distance = ``|pred - gt|`` / head size, head size = ``SC_BIAS``
  (0.6) × the ground truth's head-box diagonal (:func:`posenas.evaluation.pckh._head_size`);
  a joint matches when distance ≤ 0.5. For each prediction/GT pair, PCKh = matched joints /
  the GT's labelled joints. poseval's assignment is greedy, not Hungarian: each prediction
  picks its best GT (first on ties), then each GT keeps the best of the predictions that
  picked it (first on ties), and pairs with PCKh 0 are not assigned. A predicted joint is
  a true positive when it matches the joint of its assigned GT, else a false positive.
* **AP per joint.** All predicted joints of all frames, sorted by score as poseval does
  (``argsort()[::-1]``, frames in dataset order, predictions in list order); precision
  made monotone, area under the recall steps (VOC AP); positives = labelled GT joints.
  In percent.
* **Columns.** Head = mean of ``nose``, ``head_bottom``, ``head_top``; Shoulder ... Ankle =
  mean of left and right; Total = mean of the 15 per-joint APs (not of the columns).

Choice where poseval is not consistent: a joint with no labelled ground truth has no AP
(``None``; poseval gives NaN with predictions, 0 without). Columns and Total average the
joints that have one, ``None`` if none does. On PoseTrack18's validation set every joint is
labelled, so this never changes a published number.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from posenas.data.records import ImageRecord, PoseDataset
from posenas.errors import PosenasError
from posenas.evaluation.coco import _validate_predictions
from posenas.evaluation.pckh import _head_size

#: Columns of the table, in the benchmark's order.
POSETRACK_COLUMNS = ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Total")

#: A joint matches its ground truth within this fraction of the head size (poseval's ``distThresh``).
DIST_THRESHOLD = 0.5

_COLUMN_JOINTS: dict[str, tuple[str, ...]] = {
    "Head": ("nose", "head_bottom", "head_top"),
    **{part.capitalize(): (f"left_{part}", f"right_{part}")
       for part in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle")},
}

#: poseval's 15 joints, by name.
POSETRACK_JOINTS = tuple(j for joints in _COLUMN_JOINTS.values() for j in joints)

_SHORT = {"Head": "Head", "Shoulder": "Sho.", "Elbow": "Elb.", "Wrist": "Wri.", "Hip": "Hip", "Knee": "Knee",
          "Ankle": "Ank.", "Total": "Total"}


def points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(M,) bool: which ``points`` (M, 2) lie strictly inside ``polygon`` (N, 2); even-odd rule, boundary outside."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    poly = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    if len(poly) < 3 or len(pts) == 0:
        return np.zeros(len(pts), dtype=bool)
    x, y = pts[:, :1], pts[:, 1:]  # (M, 1)
    x1, y1 = poly[:, 0], poly[:, 1]  # (N,)
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    straddles = (y1 > y) != (y2 > y)  # (M, N)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    inside = (straddles & (x < x_cross)).sum(axis=1) % 2 == 1
    on_edge = (((x2 - x1) * (y - y1) - (y2 - y1) * (x - x1)) == 0) \
        & (np.minimum(x1, x2) <= x) & (x <= np.maximum(x1, x2)) \
        & (np.minimum(y1, y2) <= y) & (y <= np.maximum(y1, y2))
    return inside & ~on_edge.any(axis=1)


def _ignored(points: np.ndarray, regions: list[np.ndarray] | None) -> np.ndarray:
    """(..., ) bool over ``points`` (..., 2): inside any ignore polygon."""
    shape = points.shape[:-1]
    flat = points.reshape(-1, 2)
    out = np.zeros(len(flat), dtype=bool)
    for poly in regions or ():
        out |= points_in_polygon(flat, poly)
    return out.reshape(shape)


def _joint_indices(dataset: PoseDataset) -> np.ndarray:
    schema = dataset.schema
    missing = [j for j in POSETRACK_JOINTS if j not in schema.joints]
    if missing:
        raise PosenasError(
            f"{dataset.source}: PoseTrack mAP needs the joints {', '.join(missing)}, "
            f"which schema {schema.name} does not have"
        )
    return np.array([schema.joints.index(j) for j in POSETRACK_JOINTS])


def _flat_keypoints(predictions: Any) -> Any:
    """Copies of the results with ``(K, 3)`` keypoints flattened to COCO's ``3K`` list; anything else as given."""
    if not isinstance(predictions, list):
        return predictions
    out = []
    for item in predictions:
        kps = item.get("keypoints") if isinstance(item, dict) else None
        nested = isinstance(kps, list) and bool(kps) and isinstance(kps[0], (list, tuple, np.ndarray))
        if isinstance(kps, np.ndarray) or nested:
            try:
                item = {**item, "keypoints": np.asarray(kps, dtype=np.float64).reshape(-1).tolist()}
            except (TypeError, ValueError):
                pass  # ragged or not numbers: the validator names the record
        out.append(item)
    return out


def _ground_truth(dataset: PoseDataset, img: ImageRecord,
                  joints: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(G, J, 2) GT joints, (G, J) labelled and outside ignore regions, (G,) head sizes of a frame."""
    kps = np.stack([np.asarray(p.keypoints, dtype=np.float64)[joints] for p in img.people])  # (G, J, 3)
    has = (kps[:, :, 2] > 0) & ~_ignored(kps[:, :, :2], img.ignore_regions)
    head = np.ones(len(img.people))
    for g, person in enumerate(img.people):
        if not has[g].any():
            continue  # never matched: its head size is not used
        if person.head_box is None:
            raise PosenasError(
                f"{dataset.source}: image {img.id}, person {person.id}: no head box (field 'head_box'); "
                "PoseTrack mAP normalises by head size; PoseTrack files give it as 'bbox_head' (x, y, w, h)"
            )
        box = np.asarray(person.head_box, dtype=np.float64).reshape(-1)
        if box.shape != (4,) or not np.isfinite(box).all() or _head_size(box) <= 0:
            raise PosenasError(
                f"{dataset.source}: image {img.id}, person {person.id}: field 'head_box' {box.tolist()} "
                "is not a finite x1, y1, x2, y2 box of non-zero size"
            )
        head[g] = _head_size(box)
    return kps[:, :, :2], has, head


def _frame_labels(gt: np.ndarray, gt_has: np.ndarray, head: np.ndarray,
                  pred: np.ndarray, pred_has: np.ndarray) -> np.ndarray:
    """(P, J) true-positive flags of a frame's predictions, assigned to GT people as poseval does."""
    both = pred_has[:, None, :] & gt_has[None, :, :]  # (P, G, J)
    dist = np.linalg.norm(pred[:, None] - gt[None], axis=-1) / head[None, :, None]
    match = both & (dist <= DIST_THRESHOLD)
    n_gt = gt_has.sum(axis=1)
    pck = match.sum(axis=2) / np.where(n_gt > 0, n_gt, 1)[None, :]  # (P, G)
    rows = np.arange(len(pred))
    best = np.zeros_like(pck)
    picked = pck.argmax(axis=1)
    best[rows, picked] = pck[rows, picked]  # each prediction keeps only its best GT
    winner = best.argmax(axis=0)  # (G,): the best prediction of each GT
    assigned = best.max(axis=0) > 0
    labels = np.zeros(pred_has.shape, dtype=bool)
    labels[winner[assigned]] = match[winner[assigned], np.flatnonzero(assigned)]
    return labels


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC AP (in [0, 1]) of a ranked list: precision made monotone, summed over the recall steps."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))


def _ap(scores: np.ndarray, labels: np.ndarray, positives: int) -> float | None:
    if positives == 0:
        return None
    order = np.array(scores).argsort()[::-1]  # poseval's ranking, ties included
    tp = np.cumsum(labels[order])
    recall = tp / positives
    precision = tp / np.arange(1, len(order) + 1)
    return 100.0 * voc_ap(recall, precision)


def posetrack_joint_ap(dataset: PoseDataset, predictions: list[dict]) -> dict[str, float | None]:
    """AP in percent of each of poseval's 15 joints (``None``: never labelled), by joint name.

    ``predictions``: a COCO results list (``image_id``, ``category_id`` 1, ``keypoints`` as a
    flat ``3K`` list or ``(K, 3)``, ``score``) in the records' 0-based frame, as
    :func:`posenas.evaluation.coco.evaluate_coco` takes it; validated the same way.
    """
    joints = _joint_indices(dataset)
    preds = _validate_predictions(_flat_keypoints(predictions), dataset, "predictions")
    by_image: dict[int, list[np.ndarray]] = {}
    for p in preds:
        by_image.setdefault(p["image_id"], []).append(np.asarray(p["keypoints"], dtype=np.float64).reshape(-1, 3))
    scores: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    positives = np.zeros(len(joints), dtype=np.int64)
    for img in dataset.images:
        if not img.is_labeled or not img.people:
            continue
        gt, gt_has, head = _ground_truth(dataset, img, joints)
        positives += gt_has.sum(axis=0)
        if img.id not in by_image:
            continue
        pred_kps = np.stack(by_image[img.id])[:, joints]  # (P, J, 3)
        pred_has = ~_ignored(pred_kps[:, :, :2], img.ignore_regions)
        tp = _frame_labels(gt, gt_has, head, pred_kps[:, :, :2], pred_has)
        scores.append(np.where(pred_has, pred_kps[:, :, 2], np.nan))
        labels.append(tp)
    all_scores = np.concatenate(scores) if scores else np.zeros((0, len(joints)))
    all_labels = np.concatenate(labels) if labels else np.zeros((0, len(joints)), dtype=bool)
    out: dict[str, float | None] = {}
    for j, name in enumerate(POSETRACK_JOINTS):
        present = ~np.isnan(all_scores[:, j])
        out[name] = _ap(all_scores[present, j], all_labels[present, j], int(positives[j]))
    return out


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def posetrack_map(dataset: PoseDataset, predictions: list[dict]) -> dict[str, float | None]:
    """PoseTrack mAP (percent) by column: Head ... Ankle, Total (module notes); ``None`` where nothing is labelled."""
    aps = posetrack_joint_ap(dataset, predictions)
    result: dict[str, float | None] = {col: _mean([aps[j] for j in joints]) for col, joints in _COLUMN_JOINTS.items()}
    result["Total"] = _mean(list(aps.values()))
    return result


def format_posetrack_table(result: dict[str, float | None]) -> str:
    """A header and one row, in the columns of the PoseTrack tables of the papers (``n/a``: no AP)."""
    cells = ["n/a" if result.get(c) is None else f"{result[c]:.1f}" for c in POSETRACK_COLUMNS]
    header = "| " + " | ".join(f"{_SHORT[c]:>5}" for c in POSETRACK_COLUMNS) + " |"
    row = "| " + " | ".join(f"{v:>5}" for v in cells) + " |"
    return f"{header}\n{row}"
