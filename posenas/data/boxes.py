"""Person detections (boxes) for top-down evaluation and inference.

A detections file is a JSON list of ``{"image_id": int, "bbox": [x, y, w, h], "score": s}``
(COCO detection results; ``category_id`` other than 1 is skipped) — or, for
``posenas infer`` on loose images, ``{"image": "frame_0001.jpg", "bbox": ..., "score": ...}``
naming the input file. Every record is checked. Detections on image ids the dataset does
not have are skipped with one warning line, since real detection files (COCO's
``COCO_val2017_detections_AP_H_56_person.json``) cover the whole split and users evaluate
on subsets; a file none of whose detections is on a known image is an error (wrong file).
Unknown ``image`` names (``posenas infer``) are errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from posenas.data.fields import Where, as_box, as_int, as_number, as_str
from posenas.display import warn
from posenas.errors import PosenasError
from posenas.jsonio import read_json

#: (image id, x y w h box, detection score)
Detection = tuple[int, np.ndarray, float]


def load_detections(path: str | Path, image_ids: set[int] | None = None, names: dict[str, int] | None = None,
                    min_score: float = 0.0) -> list[Detection]:
    """Read a detections file.

    ``image_ids``: the known image ids (records must use ``image_id``); ``names``: file
    name → image id for loose images (records may use ``image``, matched by the full path
    given on the command line or its base name).
    """
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, list):
        raise PosenasError(f"{path}: expected a JSON list of detections ({{image_id, bbox, score}}), got {type(data).__name__}")
    out: list[Detection] = []
    unknown: list[tuple[int, int]] = []  # (record index, image id) of detections on images not in the dataset
    matched = 0
    input_ids = set((names or {}).values())
    for i, rec in enumerate(data):
        where = Where(path, "detections", i)
        if not isinstance(rec, dict):
            raise PosenasError(f"{where}: expected an object with image_id, bbox, score")
        if rec.get("category_id", 1) != 1:
            continue
        if "image" in rec and names is not None:
            name = as_str(rec["image"], "image", where)
            image_id = names.get(name, names.get(Path(name).name))
            if image_id is None:
                raise where.error("image", f"{name!r} is not one of the input images "
                                           "(name it by its path as given when base names repeat)")
            known = True
        elif "image_id" in rec:
            image_id = as_int(rec["image_id"], "image_id", where)
            if image_ids is None and image_id not in input_ids:
                raise where.error("image_id", f"unknown image id {image_id}")
            known = image_ids is None or image_id in image_ids
        else:
            raise where.error("image_id", "missing (give image_id" + (", or image" if names is not None else "") + ")")
        box = as_box(rec.get("bbox"), "bbox", where) if "bbox" in rec else None
        if box is None:
            raise where.error("bbox", "missing")
        score = as_number(rec.get("score", 1.0), "score", where)
        if not known:
            unknown.append((i, image_id))
            continue
        matched += 1
        if score >= min_score:
            out.append((image_id, box, score))
    if unknown:
        i, image_id = unknown[0]
        if not matched:
            raise Where(path, "detections", i).error("image_id", f"unknown image id {image_id}; none of the "
                                                     f"{len(unknown)} person detections is on an image of the dataset")
        warn(f"{path}: skipped {len(unknown)} detection(s) on {len({u for _, u in unknown})} image id(s) the dataset "
             f"does not have (first: detections[{i}], image id {image_id})")
    return out
