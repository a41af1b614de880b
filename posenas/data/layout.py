"""Where a dataset's files are: finding splits and image folders, loading and writing splits.

A dataset root holds ``annotations/`` and ``images/`` in the layout of each real release:

=========  =========================================  ===========================================
format     annotations                                images (``file_name`` relative to)
=========  =========================================  ===========================================
coco       ``annotations/person_keypoints_<split>.json``  ``images/<split>/`` (or ``<split>/``)
mpii       ``annotations/mpii_<split>.json``              ``images/``
posetrack  ``annotations/<split>/<video>.json``           the root (``images/<split>/<video>/...``)
posetrack  ``annotations/posetrack18_<split>.json``       the root (MMPose's one file for all videos)
=========  =========================================  ===========================================

When a PoseTrack split has both, the folder of per-video files (the official release) is used.

Any annotation file (or PoseTrack folder) can also be given directly; its format is
recognised from its content.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from posenas.data.coco import read_coco, to_coco_dict
from posenas.data.mpii import read_mpii, to_mpii_records
from posenas.data.posetrack import is_posetrack, read_posetrack, to_posetrack_videos, video_files
from posenas.data.records import PoseDataset
from posenas.errors import PosenasError
from posenas.jsonio import read_json, write_json


def find_splits(root: Path) -> dict[str, tuple[str, Path]]:
    """``split -> (format, annotation path)`` for a dataset root."""
    ann = root / "annotations"
    splits: dict[str, tuple[str, Path]] = {}
    if not ann.is_dir():
        return splits
    for f in sorted(ann.glob("person_keypoints_*.json")):
        splits[f.stem[len("person_keypoints_") :]] = ("coco", f)
    for f in sorted(ann.glob("mpii_*.json")):
        splits[f.stem[len("mpii_") :]] = ("mpii", f)
    for f in sorted(ann.glob("posetrack18_*.json")):
        splits[f.stem[len("posetrack18_") :]] = ("posetrack", f)
    for d in sorted(p for p in ann.iterdir() if p.is_dir()):
        if any(d.glob("*.json")):
            splits[d.name] = ("posetrack", d)
    return splits


def _dataset_root(annotation: Path) -> Path:
    """The folder above ``annotations/`` (or the file's own folder when it is elsewhere)."""
    for parent in annotation.parents:
        if parent.name == "annotations":
            return parent.parent
    return annotation.parent if annotation.is_file() else annotation


def _coco_image_root(annotation: Path, data: Any) -> Path:
    root = _dataset_root(annotation)
    split = annotation.stem.removeprefix("person_keypoints_")
    candidates = [root / "images" / split, root / split, root / "images", root]
    first = next((img.get("file_name") for img in data.get("images", []) if isinstance(img, dict)), None)
    existing = [c for c in candidates if c.is_dir()]
    for c in existing:
        if isinstance(first, str) and (c / first).exists():
            return c
    return existing[0] if existing else candidates[0]


def _no_headboxes(headboxes: Path | None, path: Path, fmt: str) -> None:
    if headboxes is not None:
        raise PosenasError(f"{headboxes}: head boxes from MPII's .mat apply to MPII JSON records; {path} is {fmt} data")


def read_annotation(path: Path, image_root: Path | None = None, headboxes: Path | None = None) -> PoseDataset:
    """Load one annotation file or PoseTrack folder, recognising its format from the content.

    ``headboxes``: MPII's ground-truth .mat with the head boxes of MPII records that lack them.
    """
    if path.is_dir():
        _no_headboxes(headboxes, path, "posetrack")
        root = image_root or _dataset_root(path)
        return read_posetrack(path, root)
    data = read_json(path)
    if isinstance(data, list):
        return read_mpii(path, data, image_root or (_dataset_root(path) / "images"), headboxes)
    if is_posetrack(data):
        _no_headboxes(headboxes, path, "posetrack")
        return read_posetrack(path, image_root or _dataset_root(path), first=data)
    if isinstance(data, dict):
        _no_headboxes(headboxes, path, "coco")
        return read_coco(path, data, image_root or _coco_image_root(path, data))
    raise PosenasError(
        f"{path}: not a pose dataset: expected a COCO/PoseTrack object or an MPII list of records, "
        f"got {type(data).__name__}"
    )


def load_dataset(path: str | Path, split: str | None = None, image_root: str | Path | None = None,
                 headboxes: str | Path | None = None) -> PoseDataset:
    """Load a split from a dataset root, or an annotation file / PoseTrack folder given directly.

    From a root, ``split`` defaults to ``val`` when there is one, else to the only split.
    ``headboxes``: MPII's ground-truth .mat (``mpii_gt_val.mat``) for MPII JSON without head boxes.
    """
    path = Path(path)
    image_root = Path(image_root) if image_root is not None else None
    headboxes = Path(headboxes) if headboxes is not None else None
    if not path.exists():
        raise PosenasError(f"{path}: no such file or folder")
    splits = find_splits(path) if path.is_dir() else {}
    if not splits:
        if split is not None and path.is_file():
            raise PosenasError(f"{path}: an annotation file, not a dataset root, so it has no split {split!r} "
                               "(--split and data.train_split / val_split choose among a root's splits); give the "
                               "folder that holds annotations/ and images/")
        if path.is_dir() and not any(path.glob("*.json")):  # neither a root nor a PoseTrack split folder
            raise PosenasError(f"{path}: no dataset here{' (an empty folder)' if not any(path.iterdir()) else ''}: a "
                               "dataset root holds annotations/ (person_keypoints_<split>.json, mpii_<split>.json or "
                               "PoseTrack files) and images/")
        if path.is_dir():
            video_files(path)  # raises a clear error when the folder holds no annotations at all
        return read_annotation(path, image_root, headboxes)
    if split is None:
        split = "val" if "val" in splits else (next(iter(splits)) if len(splits) == 1 else None)
        if split is None:
            raise PosenasError(f"{path}: several splits ({', '.join(splits)}); choose one with --split")
    if split not in splits:
        raise PosenasError(f"{path}: no split {split!r}; found: {', '.join(splits) or 'none'}")
    return read_annotation(splits[split][1], image_root, headboxes)


def load_splits(path: str | Path) -> dict[str, PoseDataset]:
    """Every split of a dataset root (or the one dataset a file / folder holds, as its stem)."""
    path = Path(path)
    if not path.exists():
        raise PosenasError(f"{path}: no such file or folder")
    splits = find_splits(path) if path.is_dir() else {}
    if not splits:
        return {path.stem: load_dataset(path)}
    return {name: read_annotation(ann) for name, (_, ann) in splits.items()}


def annotation_path(root: Path, fmt: str, split: str) -> Path:
    """Where :func:`write_annotations` puts a split's annotations (a folder for PoseTrack)."""
    if fmt == "coco":
        return root / "annotations" / f"person_keypoints_{split}.json"
    if fmt == "mpii":
        return root / "annotations" / f"mpii_{split}.json"
    if fmt == "posetrack":
        return root / "annotations" / split
    raise PosenasError(f"unknown dataset format {fmt!r}; known: coco, mpii, posetrack")


def write_annotations(dataset: PoseDataset, root: Path, split: str, fmt: str | None = None) -> Path:
    """Write a split's annotations in the layout above (atomically, file by file)."""
    fmt = fmt or dataset.format
    target = annotation_path(root, fmt, split)
    if fmt == "coco":
        write_json(target, to_coco_dict(dataset))
    elif fmt == "mpii":
        write_json(target, to_mpii_records(dataset))
    else:
        for vid, data in to_posetrack_videos(dataset).items():
            write_json(target / f"{vid}.json", data)
    return target
