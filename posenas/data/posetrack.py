"""PoseTrack18-style video annotations: one COCO-structured JSON per video, or one for all.

Images carry ``vid_id`` (string), ``frame_id``, ``nframes`` and ``is_labeled`` (a boolean
or 0/1); annotations carry ``track_id`` and ``bbox_head`` (x, y, w, h). ``file_name`` is
relative to the dataset root (``images/<split>/<video>/<frame>.jpg``), as in the real
release. Image ids follow PoseTrack18's scheme, ``1 VVVVVV FFFF`` (video number, frame
index), so that they are unique across the videos of a split; the real files' ``frame_id``
is that same number, which orders the frames as well. Only frames with ``is_labeled``
true are evaluated. MMPose's ``posetrack18_<split>.json`` (every video in one file) reads
the same way. ``ignore_regions_x`` / ``ignore_regions_y`` (one list of x and one of y per
polygon) become :attr:`ImageRecord.ignore_regions`, which PoseTrack mAP uses and
:func:`to_posetrack_videos` writes back; any other field the real files carry (``scores``,
``mask_file``, ``has_no_densepose`` ...) is ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from posenas.data.coco import annotation_dict, category, image_dict, parse_coco_like
from posenas.data.fields import Where, as_flag, as_int, as_str, check_unique, is_number
from posenas.data.records import PoseDataset
from posenas.errors import PosenasError
from posenas.jsonio import read_json
from posenas.keypoints import POSETRACK18


def is_posetrack(data: Any) -> bool:
    """A COCO-structured dict whose images name their video."""
    images = data.get("images") if isinstance(data, dict) else None
    return bool(images) and isinstance(images[0], dict) and "vid_id" in images[0]


def video_files(path: Path) -> list[Path]:
    """The per-video JSON files of a PoseTrack split folder (or the one file given)."""
    if path.is_file():
        return [path]
    files = sorted(p for p in path.glob("*.json") if not p.name.startswith("."))
    if not files:
        raise PosenasError(f"{path}: no PoseTrack video JSON files in this folder")
    return files


def read_posetrack(path: Path, image_root: Path, first: Any = None) -> PoseDataset:
    """Read one video file or a folder of them into one dataset (``first``: already-parsed data of ``path``)."""
    images = []
    for file in video_files(path):
        data = first if (first is not None and file == path) else read_json(file)
        schema, vid_images, raw = parse_coco_like(data, file, POSETRACK18)
        for i, (img, rec) in enumerate(zip(vid_images, raw)):
            where = Where(file, "images", i, img.id)
            vid = rec.get("vid_id")
            if vid is None or isinstance(vid, (bool, dict, list)):
                raise where.error("vid_id", f"expected a video id string, got {vid!r}")
            img.video_id = as_str(str(vid), "vid_id", where)
            img.frame_id = as_int(rec.get("frame_id", i), "frame_id", where)
            img.is_labeled = as_flag(rec.get("is_labeled", True), "is_labeled", where)
            img.ignore_regions = ignore_regions(rec, where)
        images += vid_images
    check_unique([img.id for img in images], path, "images (all videos)")
    check_unique([p.id for img in images for p in img.people], path, "annotations (all videos)")
    return PoseDataset("posetrack", POSETRACK18, image_root, images, path)


def ignore_regions(rec: dict, where: Where) -> list[np.ndarray] | None:
    """An image's ``ignore_regions_x`` / ``ignore_regions_y`` as ``(N, 2)`` float64 polygons (``None``: neither field).

    Both fields or neither: polygon ``i`` is ``zip(x[i], y[i])``, so the lists must match in
    length at both levels and hold finite numbers only.
    """
    xs, ys = rec.get("ignore_regions_x"), rec.get("ignore_regions_y")
    if xs is None and ys is None:
        return None
    for name, value, other in (("ignore_regions_x", xs, "ignore_regions_y"),
                               ("ignore_regions_y", ys, "ignore_regions_x")):
        if value is None:
            raise where.error(name, f"missing, but {other} is given (one list of coordinates per polygon in each)")
        if not isinstance(value, list):
            raise where.error(name, f"expected a list of polygons (lists of numbers), got {type(value).__name__}")
        for i, poly in enumerate(value):
            if not isinstance(poly, list):
                raise where.error(name, f"polygon {i}: expected a list of numbers, got {type(poly).__name__}")
    if len(xs) != len(ys):
        raise where.error("ignore_regions_y", f"{len(ys)} polygons, but ignore_regions_x has {len(xs)}")
    polygons = []
    for i, (px, py) in enumerate(zip(xs, ys)):
        if len(px) != len(py):
            raise where.error("ignore_regions_y",
                              f"polygon {i}: {len(py)} y values, but ignore_regions_x has {len(px)} x values")
        for name, values in (("ignore_regions_x", px), ("ignore_regions_y", py)):
            bad = [v for v in values if not is_number(v) or not np.isfinite(v)]
            if bad:
                raise where.error(name, f"polygon {i}: expected finite numbers, found {bad[0]!r}")
        polygons.append(np.array([px, py], dtype=np.float64).T.reshape(len(px), 2))
    return polygons


def frame_image_id(video_number: int, frame_index: int) -> int:
    return 10_000_000_000 + video_number * 10_000 + frame_index


def to_posetrack_videos(dataset: PoseDataset) -> dict[str, dict]:
    """One PoseTrack18 dict per video id."""
    out = {}
    for vid, frames in dataset.videos().items():
        images = []
        for img in frames:
            rec = image_dict(img)
            rec.update(vid_id=vid, frame_id=img.frame_id, nframes=len(frames), is_labeled=img.is_labeled)
            if img.ignore_regions is not None:
                rec["ignore_regions_x"] = [[float(v) for v in poly[:, 0]] for poly in img.ignore_regions]
                rec["ignore_regions_y"] = [[float(v) for v in poly[:, 1]] for poly in img.ignore_regions]
            images.append(rec)
        out[vid] = {
            "images": images,
            "annotations": [annotation_dict(p, img.id) for img in frames for p in img.people],
            "categories": [category(dataset.schema)],
        }
    return out
