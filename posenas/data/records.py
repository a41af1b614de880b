"""One record type for every dataset format.

COCO, MPII and PoseTrack files are all read into a :class:`PoseDataset` of
:class:`ImageRecord` s, each holding the :class:`Person` s annotated in it. Later pipelines
take what they need from it: top-down training iterates :meth:`PoseDataset.instances`,
bottom-up training iterates images, video models iterate :meth:`PoseDataset.videos`.

Keypoints are ``(K, 3)`` float32 arrays of ``x, y, v`` in pixel coordinates of the full
image (0-based, pixel centres at integers), with COCO's visibility convention:
``v = 2`` labelled and visible, ``v = 1`` labelled but occluded, ``v = 0`` not labelled
(for our synthetic data: outside the image); unlabelled joints have ``x = y = 0``.

Files keep their release's frame (:data:`FILE_ORIGIN`): readers convert to the records'
0-based one and writers back, and a prediction file is in the frame of the annotation
file it is scored against, so MPII predictions are 1-based as the official toolkit expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from posenas.keypoints import KeypointSchema

#: Dataset formats we read and write — a plain tuple to grep.
FORMATS = ("coco", "mpii", "posetrack")

#: Pixel coordinate of the first pixel's centre in each format's files: MPII counts from 1 (MATLAB).
FILE_ORIGIN = {"coco": 0.0, "mpii": 1.0, "posetrack": 0.0}


def to_file_frame(keypoints: np.ndarray, origin: float) -> np.ndarray:
    """(K, 3) keypoints from the records' 0-based frame into a file's (``origin``: :data:`FILE_ORIGIN`), as float64."""
    out = np.asarray(keypoints, dtype=np.float64).copy()
    out[:, :2] += origin
    return out


@dataclass
class Person:
    """One annotated person.

    ``id`` is the annotation id (COCO, PoseTrack) or the record id (MPII). ``bbox`` is
    ``x, y, w, h``; MPII records have none and carry ``center`` / ``scale`` (person height
    / 200, MPII's convention) instead. ``head_box`` is ``x1, y1, x2, y2`` (MPII's head
    rectangle, used by PCKh; PoseTrack's ``bbox_head`` converted). ``segmentation`` is COCO's,
    as in the file (polygons ``[[x, y, ...], ...]`` or an RLE ``{"counts", "size"}``): bottom-up
    training masks crowds and unlabelled people by it (:mod:`posenas.data.bottomup`).
    """

    id: int
    keypoints: np.ndarray
    bbox: np.ndarray | None = None
    area: float | None = None
    iscrowd: bool = False
    track_id: int | None = None
    center: np.ndarray | None = None
    scale: float | None = None
    head_box: np.ndarray | None = None
    segmentation: list | dict | None = None

    @property
    def num_labelled(self) -> int:
        return int((self.keypoints[:, 2] > 0).sum())

    def box(self) -> np.ndarray:
        """``x, y, w, h`` of the person: the bbox, else MPII's centre/scale box, else the joints' extent."""
        if self.bbox is not None:
            return self.bbox
        if self.center is not None and self.scale is not None:
            # MPII: scale * 200 is the person height; assume the 3:4 aspect the field uses.
            h = float(self.scale) * 200.0
            w = h * 0.75
            return np.array([self.center[0] - w / 2, self.center[1] - h / 2, w, h], dtype=np.float32)
        labelled = self.keypoints[self.keypoints[:, 2] > 0, :2]
        if len(labelled) == 0:
            return np.zeros(4, dtype=np.float32)
        lo, hi = labelled.min(0), labelled.max(0)
        return np.array([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]], dtype=np.float32)


@dataclass
class ImageRecord:
    """One image and the people annotated in it. ``file_name`` is relative to the image root."""

    id: int
    file_name: str
    width: int | None = None
    height: int | None = None
    people: list[Person] = field(default_factory=list)
    video_id: str | None = None
    frame_id: int | None = None
    #: PoseTrack frames without annotations say ``is_labeled: false``; evaluation skips them.
    is_labeled: bool = True
    #: PoseTrack18's ``ignore_regions_x/y``: polygons, each ``(N, 2)`` float ``x, y`` in pixels, where
    #: people are not annotated; PoseTrack mAP drops joints inside them. ``None``: the file has none.
    ignore_regions: list[np.ndarray] | None = None


@dataclass
class PoseDataset:
    """A dataset split: its format, schema, where its images are, and its image records."""

    format: str
    schema: KeypointSchema
    image_root: Path
    images: list[ImageRecord]
    source: Path

    @property
    def file_origin(self) -> float:
        """What files of this format add to the records' 0-based coordinates (prediction files too)."""
        return FILE_ORIGIN[self.format]

    def image_path(self, image: ImageRecord) -> Path:
        return self.image_root / image.file_name

    def instances(self, min_labelled: int = 1) -> list[tuple[ImageRecord, Person]]:
        """Top-down instances: every non-crowd person with at least ``min_labelled`` joints."""
        return [
            (img, p)
            for img in self.images
            for p in img.people
            if not p.iscrowd and p.num_labelled >= min_labelled
        ]

    def videos(self) -> dict[str, list[ImageRecord]]:
        """Frames grouped by video id, each list in frame order (images without a video are left out)."""
        out: dict[str, list[ImageRecord]] = {}
        for img in self.images:
            if img.video_id is not None:
                out.setdefault(img.video_id, []).append(img)
        for frames in out.values():
            frames.sort(key=lambda r: (r.frame_id if r.frame_id is not None else 0, r.id))
        return out

    @property
    def num_people(self) -> int:
        return sum(len(img.people) for img in self.images)

    def counts(self) -> dict[str, int]:
        """Summary numbers, as ``posenas data check`` prints them."""
        kp = [p.keypoints[:, 2] for img in self.images for p in img.people]
        v = np.concatenate(kp) if kp else np.zeros(0)
        out = {
            "images": len(self.images),
            "people": self.num_people,
            "instances": len(self.instances()),
            "keypoints_visible": int((v == 2).sum()),
            "keypoints_occluded": int((v == 1).sum()),
            "keypoints_unlabelled": int((v == 0).sum()),
        }
        videos = self.videos()
        if videos:
            out["videos"] = len(videos)
            out["tracks"] = len({(vid, p.track_id) for vid, fr in videos.items() for img in fr for p in img.people})
        return out
