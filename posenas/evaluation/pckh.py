"""PCKh, as the MPII human-pose benchmark defines it.

* Every non-crowd :class:`~posenas.data.records.Person` with at least one labelled joint is one record,
  identified by ``Person.id`` (for MPII, the people of each image record are its records).
  People on frames with ``is_labeled`` false (PoseTrack) are not records; predictions for
  them are accepted and dropped.
* Coordinates: in-memory predictions are in the records' 0-based frame; a predictions
  *file* is in the annotation file's (MPII: MATLAB 1-based, as the official toolkit,
  HRNet and MMPose compare; :attr:`PoseDataset.file_origin`).
* Head size = 0.6 × the diagonal of the person's head box ``x1, y1, x2, y2`` (the
  benchmark's ``SC_BIAS``).
* A joint is correct when its distance to the ground truth is ≤ threshold × head size
  (the benchmark's ``<=``). Only labelled ground-truth joints count (``v > 0``; MPII's
  ``jnt_visible`` means "not missing", so occluded joints, ``v = 1``, count too).
* Joint rate = correct / labelled for that joint. Rows: ``head`` (the ``head_top`` joint),
  ``shoulder``, ``elbow``, ``wrist``, ``hip``, ``knee``, ``ankle`` (each the mean of its left
  and right joints' rates), and ``mean`` = all correct / all labelled over every joint of
  the schema except ``pelvis`` and ``thorax`` (MPII: the 14 joints of the benchmark's
  "Mean"; the per-joint rates weighted by their labelled counts, as the benchmark does).
  Values are percentages.

Choice where the benchmark is silent: a joint with no labelled ground truth in the whole
dataset has no rate (0 / 0). We do not call that 0 %, which would read as "always wrong".
A left/right row then averages the side(s) that have a rate, and a row none of whose
joints has a rate is ``None`` (JSON ``null``, ``n/a`` in the table). ``mean`` pools the
counts, so it needs no special case unless nothing at all is labelled (then ``None``).
On MPII's validation set every joint is labelled many times, so this never changes a
published number.

Joints are looked up by name through the schema, so any schema with ``head_top`` and the
twelve left/right limb joints works (MPII16, POSETRACK18).
"""

from __future__ import annotations

import math
import os

import numpy as np

from posenas.data.fields import is_number
from posenas.data.records import Person, PoseDataset
from posenas.errors import PosenasError
from posenas.jsonio import read_json

#: Rows of the PCKh table, in the benchmark's order.
PCKH_ROWS = ("head", "shoulder", "elbow", "wrist", "hip", "knee", "ankle", "mean")

#: MPII's head-size factor: head size = SC_BIAS × head-box diagonal.
SC_BIAS = 0.6

#: Joints left out of the benchmark's mean.
_EXCLUDED_FROM_MEAN = ("pelvis", "thorax")

_ROW_JOINTS: dict[str, tuple[str, ...]] = {
    "head": ("head_top",),
    **{part: (f"left_{part}", f"right_{part}") for part in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle")},
}


def _unlabelled_frame_people(dataset: PoseDataset) -> set[int]:
    """Ids of people on frames that are not evaluated (``is_labeled`` false)."""
    return {p.id for img in dataset.images if not img.is_labeled for p in img.people}


def _no_head_box_hint(dataset: PoseDataset) -> str:
    if dataset.format == "mpii":
        return ("MPII JSON as MMPose and HRNet ship it has none: --headboxes mpii_gt_val.mat "
                "(MPII's ground truth, same records in the same order) provides them")
    return "PoseTrack and COCO-style files give it as 'bbox_head' (x, y, w, h)"


def _records(dataset: PoseDataset) -> list[Person]:
    """The dataset's PCKh records (non-crowd people on labelled frames, dataset order),
    checked for the fields PCKh needs."""
    schema = dataset.schema
    needed = [j for joints in _ROW_JOINTS.values() for j in joints]
    missing = [j for j in needed if j not in schema.joints]
    if missing:
        raise PosenasError(
            f"{dataset.source}: PCKh needs the joints {', '.join(missing)}, which schema {schema.name} does not have"
        )
    # people with no labelled joint add nothing to any count (and top-down runs skip them)
    people = [(img, p) for img in dataset.images if img.is_labeled
              for p in img.people if not p.iscrowd and p.num_labelled > 0]
    if not people:
        raise PosenasError(f"{dataset.source}: no people to evaluate PCKh on")
    without = [(img, p) for img, p in people if p.head_box is None]
    if len(without) == len(people):
        raise PosenasError(
            f"{dataset.source}: no head boxes (field 'head_box'); PCKh needs an MPII-style head box for every person; "
            + _no_head_box_hint(dataset)
        )
    if without:
        img, p = without[0]
        raise PosenasError(
            f"{dataset.source}: image {img.id}, person {p.id}: no head box (field 'head_box'); "
            f"{len(without)} of {len(people)} people lack one, PCKh needs it for every person; "
            + _no_head_box_hint(dataset)
        )
    seen: dict[int, int] = {}
    for img, p in people:
        if p.id in seen:
            raise PosenasError(
                f"{dataset.source}: image {img.id}: person id {p.id} is used twice (also in image {seen[p.id]}); "
                "PCKh records are identified by person id"
            )
        seen[p.id] = img.id
        if np.asarray(p.keypoints).shape != (schema.num_joints, 3):
            raise PosenasError(
                f"{dataset.source}: image {img.id}, person {p.id}: field 'keypoints' has shape "
                f"{np.asarray(p.keypoints).shape}, expected ({schema.num_joints}, 3)"
            )
        box = np.asarray(p.head_box, dtype=np.float64).reshape(-1)
        if box.shape != (4,) or not np.isfinite(box).all() or _head_size(box) <= 0:
            raise PosenasError(
                f"{dataset.source}: image {img.id}, person {p.id}: field 'head_box' {box.tolist()} "
                "is not a finite x1, y1, x2, y2 box of non-zero size"
            )
    return [p for _, p in people]


def _head_size(box: np.ndarray) -> float:
    x1, y1, x2, y2 = (float(v) for v in box)
    return SC_BIAS * math.hypot(x2 - x1, y2 - y1)


def load_pckh_predictions(path: str | os.PathLike, dataset: PoseDataset) -> dict[int, np.ndarray]:
    """Read PCKh predictions: a JSON list of ``{"id": record id, "keypoints": [[x, y, score], ...]}``.

    ``keypoints`` has one entry per schema joint, each ``[x, y, score]`` or ``[x, y]``, in the
    pixel frame of the annotation file (MPII: 1-based, like its ``joints``). Returns ``{id:
    (K, 3) float64 array}`` in the records' 0-based frame; the score column is 1.0 where
    the file gave only ``x, y`` (PCKh ignores it). Errors name the file, the record index
    and the field: not a list, unknown or duplicate id, wrong joint count, non-finite
    values, and predictions missing for some records.
    """
    return pckh_predictions(read_json(path), dataset, str(path))


def pckh_predictions(data: object, dataset: PoseDataset, where: str) -> dict[int, np.ndarray]:
    """A predictions file's content, checked as :func:`load_pckh_predictions` describes (``where`` names it)."""
    if not isinstance(data, list):
        raise PosenasError(f"{where}: expected a JSON list of {{\"id\", \"keypoints\"}} objects, got {type(data).__name__}")
    schema = dataset.schema
    k = schema.num_joints
    records = _records(dataset)
    known = {p.id for p in records}
    dropped = _unlabelled_frame_people(dataset) - known
    origin = dataset.file_origin
    out: dict[int, np.ndarray] = {}
    first_index: dict[int, int] = {}
    for i, item in enumerate(data):
        rec = f"{where}: record {i}"
        if not isinstance(item, dict):
            raise PosenasError(f"{rec}: expected an object with 'id' and 'keypoints', got {type(item).__name__}")
        for name in ("id", "keypoints"):
            if name not in item:
                raise PosenasError(f"{rec}: missing field {name!r}")
        rid = item["id"]
        if not isinstance(rid, int) or isinstance(rid, bool):
            raise PosenasError(f"{rec}: field 'id' must be an integer record id, got {rid!r}")
        if rid not in known and rid not in dropped:
            raise PosenasError(f"{rec}: field 'id': {rid} is not a record (person id) of {dataset.source}")
        if rid in first_index:
            raise PosenasError(f"{rec}: field 'id': {rid} already predicted by record {first_index[rid]}")
        first_index[rid] = i
        kps = item["keypoints"]
        if not isinstance(kps, list):
            raise PosenasError(f"{rec}: field 'keypoints' must be a list of {k} [x, y, score] entries, got {type(kps).__name__}")
        if len(kps) != k:
            raise PosenasError(
                f"{rec}: field 'keypoints' has {len(kps)} joints, expected {k} (schema {schema.name})"
            )
        arr = np.ones((k, 3), dtype=np.float64)
        for j, entry in enumerate(kps):
            field = f"field 'keypoints'[{j}] ({schema.joints[j]})"
            if not isinstance(entry, list) or len(entry) not in (2, 3):
                raise PosenasError(f"{rec}: {field} must be [x, y, score] or [x, y], got {entry!r}")
            for v in entry:
                if not is_number(v) or not math.isfinite(v):
                    raise PosenasError(f"{rec}: {field} must hold finite numbers, got {entry!r}")
            arr[j, : len(entry)] = entry
        arr[:, :2] -= origin
        if rid in known:
            out[rid] = arr
    missing = [p.id for p in records if p.id not in out]
    if missing:
        raise PosenasError(
            f"{where}: predictions missing for {len(missing)} of {len(records)} records of {dataset.source}; "
            f"first missing id: {missing[0]}"
        )
    return out


def _threshold_key(t: float) -> str:
    return f"PCKh@{t:g}"


def pckh(
    dataset: PoseDataset,
    predictions: dict[int, np.ndarray],
    thresholds: tuple[float, ...] = (0.5, 0.1),
) -> dict[str, dict[str, float | None]]:
    """PCKh of ``predictions`` (``{record id: (K, 2 or 3) array}``, 0-based like the records) on ``dataset``.

    Returns ``{"PCKh@0.5": {row: percent}, "PCKh@0.1": {...}}`` with the rows of
    :data:`PCKH_ROWS`; a row is ``None`` when none of its joints is labelled anywhere
    (see the module notes).
    """
    schema = dataset.schema
    k = schema.num_joints
    records = _records(dataset)
    for t in thresholds:
        if not is_number(t) or not math.isfinite(t) or t <= 0:
            raise PosenasError(f"PCKh threshold must be a positive number, got {t!r}")

    ids = {p.id for p in records}
    dropped = _unlabelled_frame_people(dataset)
    extra = [rid for rid in predictions if rid not in ids and rid not in dropped]
    if extra:
        raise PosenasError(f"predictions: id {extra[0]} is not a record (person id) of {dataset.source}")
    missing = [p.id for p in records if p.id not in predictions]
    if missing:
        raise PosenasError(
            f"predictions missing for {len(missing)} of {len(records)} records of {dataset.source}; "
            f"first missing id: {missing[0]}"
        )

    pred = np.empty((len(records), k, 2), dtype=np.float64)
    for n, p in enumerate(records):
        a = np.asarray(predictions[p.id], dtype=np.float64)
        if a.ndim != 2 or a.shape[0] != k or a.shape[1] not in (2, 3):
            raise PosenasError(
                f"predictions: id {p.id}: keypoints have shape {a.shape}, expected ({k}, 2) or ({k}, 3) (schema {schema.name})"
            )
        if not np.isfinite(a[:, :2]).all():
            raise PosenasError(f"predictions: id {p.id}: keypoints hold non-finite values")
        pred[n] = a[:, :2]

    gt = np.stack([np.asarray(p.keypoints, dtype=np.float64) for p in records])  # (N, K, 3)
    labelled = gt[:, :, 2] > 0
    head = np.array([_head_size(np.asarray(p.head_box, dtype=np.float64).reshape(-1)) for p in records])
    scaled = np.linalg.norm(pred - gt[:, :, :2], axis=2) / head[:, None]  # (N, K)
    labelled_count = labelled.sum(axis=0)  # (K,)
    in_mean = np.array([name not in _EXCLUDED_FROM_MEAN for name in schema.joints])

    result: dict[str, dict[str, float | None]] = {}
    for t in thresholds:
        correct_count = ((scaled <= t) & labelled).sum(axis=0)  # (K,)
        rates: list[float | None] = [
            100.0 * float(c) / float(n) if n > 0 else None for c, n in zip(correct_count, labelled_count)
        ]
        table: dict[str, float | None] = {}
        for row, joints in _ROW_JOINTS.items():
            defined = [rates[schema.index(j)] for j in joints if rates[schema.index(j)] is not None]
            table[row] = sum(defined) / len(defined) if defined else None
        total = int(labelled_count[in_mean].sum())
        table["mean"] = 100.0 * float(correct_count[in_mean].sum()) / total if total > 0 else None
        result[_threshold_key(t)] = table
    return result


def format_pckh_table(result: dict[str, dict[str, float | None]]) -> str:
    """A human-readable table: one row per :data:`PCKH_ROWS` entry, one column per threshold."""
    columns = list(result)
    width = max([9] + [len(c) for c in columns])
    lines = [f"{'':<9}" + "".join(f"{c:>{width + 2}}" for c in columns)]
    for row in PCKH_ROWS:
        cells = []
        for c in columns:
            v = result[c].get(row)
            cells.append(f"{'n/a' if v is None else f'{v:.2f}':>{width + 2}}")
        lines.append(f"{row:<9}" + "".join(cells))
    if any(result[c].get(row) is None for c in columns for row in PCKH_ROWS):
        lines.append("n/a: no labelled ground-truth joint of that row in the dataset")
    return "\n".join(lines)
