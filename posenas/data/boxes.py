"""Person detections (boxes) for top-down evaluation and inference.

A detections file is a JSON list of ``{"image_id": int, "bbox": [x, y, w, h], "score": s}``
(COCO detection results; ``category_id`` other than 1 is skipped) — or, for
``posenas infer`` on loose images, ``{"image": "frame_0001.jpg", "bbox": ..., "score": ...}``
naming the input file. Every record is checked; unknown images are errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from posenas.data.fields import Where, as_box, as_int, as_number, as_str
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
        elif "image_id" in rec:
            image_id = as_int(rec["image_id"], "image_id", where)
            known = image_ids if image_ids is not None else set((names or {}).values())
            if image_id not in known:
                raise where.error("image_id", f"unknown image id {image_id}")
        else:
            raise where.error("image_id", "missing (give image_id" + (", or image" if names is not None else "") + ")")
        box = as_box(rec.get("bbox"), "bbox", where) if "bbox" in rec else None
        if box is None:
            raise where.error("bbox", "missing")
        score = as_number(rec.get("score", 1.0), "score", where)
        if score >= min_score:
            out.append((image_id, box, score))
    return out
