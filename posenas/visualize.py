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


def draw_person(
    canvas: np.ndarray,
    keypoints: np.ndarray,
    schema: KeypointSchema,
    *,
    box: np.ndarray | None = None,
    label: str | None = None,
    min_score: float = 0.0,
    show_scores: bool = False,
) -> np.ndarray:
    """Draw one person in place.

    ``keypoints`` is (K, 3): ``x, y`` and either a COCO visibility (2 visible, 1 occluded,
    0 not labelled) or, with ``show_scores``, a confidence drawn next to each joint and
    compared with ``min_score``.
    """
    scale = max(1, round(max(canvas.shape[:2]) / 400))
    third = keypoints[:, 2]
    shown = third > min_score if show_scores else third > 0
    pts = np.round(keypoints[:, :2]).astype(np.int32)
    if box is not None:
        x, y, w, h = np.round(box).astype(int)
        cv2.rectangle(canvas, (x, y), (x + w, y + h), BOX, 1, cv2.LINE_AA)
        if label:
            cv2.putText(canvas, label, (x, max(y - 3, 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.35 * scale, BOX, 1, cv2.LINE_AA)
    for a, b in schema.skeleton:
        if shown[a] and shown[b]:
            names = schema.joints[a], schema.joints[b]
            colour = _side(names[0]) if _side(names[0]) == _side(names[1]) else CENTRE
            cv2.line(canvas, tuple(pts[a]), tuple(pts[b]), colour, scale + 1, cv2.LINE_AA)
    for j in np.flatnonzero(shown):
        colour = _side(schema.joints[j])
        occluded = not show_scores and third[j] == 1
        cv2.circle(canvas, tuple(pts[j]), 2 * scale + 1, colour, 1 if occluded else -1, cv2.LINE_AA)
        if show_scores:
            cv2.putText(canvas, f"{third[j]:.2f}", tuple(pts[j] + 3), cv2.FONT_HERSHEY_SIMPLEX, 0.28 * scale, colour, 1, cv2.LINE_AA)
    return canvas


def draw_predictions(canvas: np.ndarray, instances, schema: KeypointSchema, min_score: float = 0.2) -> np.ndarray:
    """Draw predicted people in place: ``instances`` yields (keypoints (K, 3) with scores, box or None, score)."""
    for keypoints, box, score in instances:
        draw_person(canvas, keypoints, schema, box=box, label=f"{score:.2f}", min_score=min_score, show_scores=True)
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
