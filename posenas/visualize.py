"""Drawing skeletons onto images: ground truth (`data show`) and, later, predictions (`infer`).

Limbs are coloured by side (left blue, right orange, centre green) so that a left/right
swap is visible at a glance; joints are filled when visible, hollow when occluded.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from posenas.data.images import encode_jpeg, read_image
from posenas.data.records import PoseDataset
from posenas.jsonio import write_bytes
from posenas.keypoints import KeypointSchema

LEFT, RIGHT, CENTRE = (230, 140, 30), (30, 140, 255), (60, 200, 60)  # BGR
BOX = (220, 220, 220)


def _side(name: str) -> tuple[int, int, int]:
    return LEFT if name.startswith("left_") else RIGHT if name.startswith("right_") else CENTRE


def _inside(canvas: np.ndarray, box: np.ndarray) -> tuple[int, int, int, int]:
    """``x1, y1, x2, y2`` of an ``x, y, w, h`` box clipped to the image (a detection may reach past it)."""
    h, w = canvas.shape[:2]
    x, y, bw, bh = np.asarray(box, dtype=np.float64)
    x1, y1 = int(np.clip(round(x), 0, w - 1)), int(np.clip(round(y), 0, h - 1))
    x2, y2 = int(np.clip(round(x + bw), 0, w - 1)), int(np.clip(round(y + bh), 0, h - 1))
    return x1, y1, x2, y2


def _box_label(canvas: np.ndarray, box: np.ndarray, label: str | None, scale: int) -> None:
    """The box, and its label inside the image: above the box where there is room, else just inside its top."""
    x1, y1, x2, y2 = _inside(canvas, box)
    cv2.rectangle(canvas, (x1, y1), (x2, y2), BOX, 1, cv2.LINE_AA)
    if not label:
        return
    font_scale = 0.35 * scale
    (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
    ty = y1 - 3 if y1 - 3 - th >= 0 else min(y1 + th + 2, canvas.shape[0] - base - 1)
    tx = int(np.clip(x1, 0, max(0, canvas.shape[1] - tw - 1)))
    cv2.putText(canvas, label, (tx, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale, BOX, 1, cv2.LINE_AA)


def draw_person(
    canvas: np.ndarray,
    keypoints: np.ndarray,
    schema: KeypointSchema,
    *,
    box: np.ndarray | None = None,
    label: str | None = None,
    min_score: float = 0.0,
    scored: bool = False,
    joint_labels: bool = False,
) -> np.ndarray:
    """Draw one person in place.

    ``keypoints`` is (K, 3): ``x, y`` and either a COCO visibility (2 visible, 1 occluded,
    0 not labelled) or, with ``scored``, a confidence compared with ``min_score``;
    ``joint_labels`` writes that confidence beside each joint (off by default: on a crowded
    image the numbers hide the pose).
    """
    scale = max(1, round(max(canvas.shape[:2]) / 400))
    third = keypoints[:, 2]
    shown = third > min_score if scored else third > 0
    pts = np.round(keypoints[:, :2]).astype(np.int32)
    if box is not None:
        _box_label(canvas, box, label, scale)
    for a, b in schema.skeleton:
        if shown[a] and shown[b]:
            names = schema.joints[a], schema.joints[b]
            colour = _side(names[0]) if _side(names[0]) == _side(names[1]) else CENTRE
            cv2.line(canvas, tuple(pts[a]), tuple(pts[b]), colour, scale + 1, cv2.LINE_AA)
    for j in np.flatnonzero(shown):
        colour = _side(schema.joints[j])
        occluded = not scored and third[j] == 1
        cv2.circle(canvas, tuple(pts[j]), 2 * scale + 1, colour, 1 if occluded else -1, cv2.LINE_AA)
        if scored and joint_labels:
            cv2.putText(canvas, f"{third[j]:.2f}", tuple(pts[j] + 3), cv2.FONT_HERSHEY_SIMPLEX, 0.28 * scale, colour, 1, cv2.LINE_AA)
    return canvas


def draw_predictions(canvas: np.ndarray, instances, schema: KeypointSchema, min_score: float = 0.2,
                     joint_scores: bool = False) -> np.ndarray:
    """Draw predicted people in place: ``instances`` yields (keypoints (K, 3) with scores, box or None,
    instance score); the instance score labels the box, ``joint_scores`` also labels every joint."""
    for keypoints, box, score in instances:
        draw_person(canvas, keypoints, schema, box=box, label=f"{score:.2f}", min_score=min_score, scored=True,
                    joint_labels=joint_scores)
    return canvas


def output_name(file_name: str) -> str:
    """A flat output file name for an image path (videos keep their folder as a prefix)."""
    return Path(file_name).with_suffix(".jpg").as_posix().replace("/", "__")


def show_dataset(dataset: PoseDataset, out: Path, limit: int | None = None, progress: bool = True) -> list[Path]:
    """Draw the ground truth of the first ``limit`` images into ``out``; returns the written files."""
    written = []
    images = dataset.images[:limit] if limit else dataset.images
    for img in tqdm(images, desc="drawing", disable=not progress, leave=False):
        canvas = read_image(dataset.image_path(img))
        for p in img.people:
            label = f"id {p.id}" + (f" track {p.track_id}" if p.track_id is not None else "")
            draw_person(canvas, p.keypoints, dataset.schema, box=p.box(), label=label)
        target = out / output_name(img.file_name)
        write_bytes(target, encode_jpeg(canvas))
        written.append(target)
    return written
