"""MPII-style single-person JSON (the layout MMPose and HRNet use): one record per person.

A record is ``{"id", "image", "center": [x, y], "scale": s, "joints": [[x, y] × 16],
"joints_vis": [0/1 × 16], "headbox": [x1, y1, x2, y2]}``; ``scale`` is the person height
/ 200. Coordinates in the file are MPII's MATLAB 1-based ones (as in the HRNet / MMPose
JSON release); records are 0-based like every other format, so the reader subtracts 1
and the writer adds it back. MPII's annotated centre sits high on the body; as HRNet and
MMPose do, the reader moves it down by 15 × scale px (the writer undoes it), so that
:meth:`Person.box` (height 200 × scale) covers the person. ``joints_vis`` is MPII's "labelled" flag (occluded
joints are labelled). We add an optional ``joints_occluded`` (0/1) so that our synthetic
data keeps its honest occlusion labels; readers that do not know it ignore it.
Records of the same ``image`` become one :class:`ImageRecord` with several people.
A record without ``id`` gets its 0-based position in the file as id (the MMPose / HRNet
``mpii_val.json`` has none); predictions name it by that.

MMPose's and HRNet's ``mpii_val.json`` has no ``headbox``: the head boxes are in MPII's
ground-truth ``mpii_gt_val.mat`` (``headboxes_src`` (2, 2, N): top-left and bottom-right
corner; ``jnt_missing`` (16, N); ``pos_gt_src`` (16, 2, N); 1-based), whose N entries are
the JSON's records in order. :func:`read_mpii` takes them from there when given the file,
after checking the count and that ``pos_gt_src`` agrees with the JSON's joints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from posenas.data.fields import (
    Where,
    as_int,
    as_list,
    as_number,
    as_numbers,
    as_str,
    check_unique,
    require,
)
from posenas.data.records import FILE_ORIGIN, ImageRecord, Person, PoseDataset
from posenas.errors import PosenasError
from posenas.keypoints import MPII16

#: MPII files count pixels from 1 (MATLAB); records from 0.
ONE_BASED = FILE_ORIGIN["mpii"]
#: What we read from MPII's ground-truth .mat (``mpii_gt_val.mat``, as HRNet and MMPose ship it).
GT_MAT_FIELDS = ("headboxes_src", "jnt_missing", "pos_gt_src")
#: Largest difference (px, per coordinate) between the .mat's joints and the JSON's of the same record.
GT_MAT_TOLERANCE = 1.0
#: HRNet / MMPose move MPII's centre down by this many × scale pixels.
CENTRE_SHIFT = 15.0


def _flags(rec: dict, field: str, where: Where, k: int) -> np.ndarray:
    values = as_numbers(rec[field], field, where, k, f"{k} flags")
    if not np.isin(values, (0, 1)).all():
        raise where.error(field, f"flags must be 0 or 1, got {sorted(set(values.tolist()))}")
    return values


def parse_record(rec: Any, where: Where, k: int) -> tuple[str, Person]:
    if not isinstance(rec, dict):
        raise PosenasError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    record_id = as_int(rec.get("id", where.index), "id", where)
    where = where.with_id(record_id)
    image = as_str(require(rec, "image", where), "image", where)
    joints = require(rec, "joints", where)
    if not isinstance(joints, list) or len(joints) != k or any(not isinstance(j, list) or len(j) != 2 for j in joints):
        n = len(joints) if isinstance(joints, list) else type(joints).__name__
        raise where.error("joints", f"expected {k} [x, y] pairs, got {n}")
    xy = as_numbers([c for j in joints for c in j], "joints", where, 2 * k, dtype=np.float64).reshape(k, 2)
    require(rec, "joints_vis", where)
    labelled = _flags(rec, "joints_vis", where, k)
    vis = np.where(labelled > 0, 2.0, 0.0).astype(np.float32)
    if rec.get("joints_occluded") is not None:
        occluded = _flags(rec, "joints_occluded", where, k)
        vis[(labelled > 0) & (occluded > 0)] = 1.0
    kp = np.concatenate([xy - ONE_BASED, vis[:, None]], axis=1).astype(np.float32)
    kp[vis == 0, :2] = 0.0
    person = Person(id=record_id, keypoints=kp)
    person.scale = as_number(require(rec, "scale", where), "scale", where)
    if person.scale <= 0:
        raise where.error("scale", f"must be > 0, got {person.scale:g}")
    center = as_numbers(require(rec, "center", where), "center", where, 2, dtype=np.float64) - ONE_BASED
    center[1] += CENTRE_SHIFT * person.scale
    person.center = center.astype(np.float32)
    if rec.get("headbox") is not None:
        box = as_numbers(rec["headbox"], "headbox", where, 4, dtype=np.float64)
        if box[2] <= box[0] or box[3] <= box[1]:
            raise where.error("headbox", f"negative or zero-size box {rec['headbox']} (need x2 > x1, y2 > y1)")
        person.head_box = (box - ONE_BASED).astype(np.float32)
    return image, person


def read_gt_mat(path: Path, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MPII's ground-truth .mat as arrays in its 1-based frame, one row per record:
    head boxes ``(N, 4)`` x1 y1 x2 y2, missing flags ``(N, K)``, joints ``(N, K, 2)``."""
    from scipy.io import loadmat

    if not path.is_file():
        raise PosenasError(f"{path}: no such file (expected MPII's ground-truth .mat, e.g. mpii_gt_val.mat)")
    try:
        mat = loadmat(path, variable_names=GT_MAT_FIELDS)
    except Exception as e:  # scipy raises ValueError, TypeError, NotImplementedError (v7.3 / HDF5) ...
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise PosenasError(f"{path}: not a readable MATLAB .mat file: {reason}") from None
    for name in GT_MAT_FIELDS:
        if name not in mat:
            raise PosenasError(f"{path}: field {name!r} missing; expected MPII's ground truth with "
                               f"{', '.join(GT_MAT_FIELDS)} (mpii_gt_val.mat as HRNet and MMPose ship it)")
    arrays = {}
    n = np.shape(mat["headboxes_src"])[-1] if np.ndim(mat["headboxes_src"]) == 3 else None
    for name, shape in zip(GT_MAT_FIELDS, ((2, 2, n), (k, n), (k, 2, n))):
        try:
            arrays[name] = np.asarray(mat[name], dtype=np.float64)
        except (TypeError, ValueError):
            arrays[name] = None
        if arrays[name] is None or arrays[name].shape != shape:
            got = "not numbers" if arrays[name] is None else f"shape {arrays[name].shape}"
            expected = "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"
            raise PosenasError(f"{path}: field {name!r}: expected shape {expected}, got {got}")
    boxes = np.concatenate([arrays["headboxes_src"][0].T, arrays["headboxes_src"][1].T], axis=1)
    missing = arrays["jnt_missing"].T > 0
    bad = ~np.isfinite(boxes).all(axis=1)
    if bad.any():
        raise PosenasError(f"{path}: field 'headboxes_src': record {int(np.argmax(bad))} is not finite")
    return boxes, missing, arrays["pos_gt_src"].transpose(2, 0, 1)


def attach_gt_mat(people: list[Person], mat_path: Path, json_path: Path) -> None:
    """Give each record (in file order) its head box from the .mat, after checking that the files belong together."""
    boxes, missing, positions = read_gt_mat(mat_path, MPII16.num_joints)
    if len(boxes) != len(people):
        raise PosenasError(f"{mat_path} has {len(boxes)} records but {json_path} has {len(people)}; the .mat must "
                           "hold the JSON's records in the same order (mpii_gt_val.mat goes with mpii_val.json)")
    if not people:
        return
    kp = np.stack([p.keypoints for p in people]).astype(np.float64)
    json_xy = kp[:, :, :2] + ONE_BASED
    both = (kp[:, :, 2] > 0) & ~missing
    with np.errstate(invalid="ignore"):
        off = both & ~(np.abs(json_xy - positions).max(axis=2) <= GT_MAT_TOLERANCE)  # NaN counts as off
    if off.any():
        i, j = np.argwhere(off)[0]
        raise PosenasError(
            f"{mat_path}: record {i} (id {people[i].id}) of {json_path}: joint {j} ({MPII16.joints[j]}) is at "
            f"{positions[i, j].round(2).tolist()} in 'pos_gt_src' but {json_xy[i, j].round(2).tolist()} in the JSON "
            f"(more than {GT_MAT_TOLERANCE:g} px apart); the .mat must hold the JSON's records in the same order"
        )
    for person, box in zip(people, boxes - ONE_BASED):
        person.head_box = box.astype(np.float32)


def read_mpii(path: Path, data: Any, image_root: Path, headboxes: Path | None = None) -> PoseDataset:
    """MPII JSON records; ``headboxes``: MPII's ground-truth .mat to take the head boxes from."""
    schema = MPII16
    records = as_list(data, "records", Where(path, "top level"))
    images: dict[str, ImageRecord] = {}
    people = []
    for i, rec in enumerate(records):
        name, person = parse_record(rec, Where(path, "records", i), schema.num_joints)
        people.append(person)
        if name not in images:
            images[name] = ImageRecord(id=len(images), file_name=name)
        images[name].people.append(person)
    check_unique([p.id for p in people], path, "records")
    if headboxes is not None:
        attach_gt_mat(people, Path(headboxes), path)
    return PoseDataset("mpii", schema, image_root, list(images.values()), path)


def to_mpii_records(dataset: PoseDataset) -> list[dict]:
    """One MPII record per person; needs head boxes and centre/scale (or a bbox to derive them)."""
    out = []
    for img in dataset.images:
        for p in img.people:
            kp = p.keypoints
            labelled = kp[:, 2] > 0
            if p.center is not None and p.scale is not None:
                center, scale = p.center, p.scale
            else:
                x, y, w, h = p.box()
                center, scale = np.array([x + w / 2, y + h / 2]), max(float(h), 1e-3) / 200.0
            scale = round(float(scale), 4)
            file_center = np.asarray(center, dtype=np.float64) + ONE_BASED
            file_center[1] -= CENTRE_SHIFT * scale
            rec = {
                "id": p.id,
                "image": img.file_name,
                "center": [round(float(c), 2) for c in file_center],
                "scale": scale,
                "joints": [[round(float(x) + ONE_BASED, 2), round(float(y) + ONE_BASED, 2)] if ok else [-1.0, -1.0]
                           for (x, y), ok in zip(kp[:, :2], labelled)],
                "joints_vis": labelled.astype(int).tolist(),
                "joints_occluded": (kp[:, 2] == 1).astype(int).tolist(),
            }
            if p.head_box is not None:
                rec["headbox"] = [round(float(c) + ONE_BASED, 2) for c in p.head_box]
            out.append(rec)
    return out
