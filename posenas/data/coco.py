"""COCO keypoints JSON: reading into records and writing records back.

PoseTrack18 files share this structure (images + annotations + categories) with a few
extra fields, so :mod:`posenas.data.posetrack` reuses the parsing here.

Real files carry more than we use; unknown fields are ignored (``num_keypoints``, which we recount from the keypoints, PoseTrack's ``scores``,
``ignore_regions_x/y``, ``mask_file`` ...). ``iscrowd`` may be 0/1 (COCO) or a boolean
(PoseTrack18). People with no labelled joint (COCO's ``num_keypoints: 0``, crowds,
PoseTrack's head-box-only people, which may lack ``bbox``) load; they are not training
instances, and evaluation treats them as pycocotools does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from posenas.data.fields import (
    Where,
    as_box,
    as_flag,
    as_int,
    as_list,
    as_number,
    as_numbers,
    as_str,
    as_visibility,
    check_unique,
    require,
)
from posenas.data.records import ImageRecord, Person, PoseDataset
from posenas.errors import PosenasError
from posenas.keypoints import COCO17, SCHEMAS, KeypointSchema

PERSON_CATEGORY_ID = 1


def schema_from_categories(data: dict, path: Path) -> KeypointSchema:
    """The schema whose joint names match the person category's ``keypoints`` list."""
    cats = data.get("categories")
    if not cats:
        return COCO17
    where = Where(path, "categories")
    cats = as_list(cats, "categories", Where(path, "top level"))
    for i, cat in enumerate(cats):
        w = Where(path, "categories", i)
        if isinstance(cat, dict) and "keypoints" in cat:
            names = tuple(as_list(cat["keypoints"], "keypoints", w))
            for schema in SCHEMAS.values():
                if schema.joints == names:
                    return schema
            raise w.error(
                "keypoints",
                f"unknown joint layout ({len(names)} joints); known schemas: {', '.join(SCHEMAS)}",
            )
    raise where.error("keypoints", "no category lists keypoint names")


def parse_image(rec: Any, where: Where) -> ImageRecord:
    image_id = as_int(require(rec, "id", where), "id", where)
    where = where.with_id(image_id)
    img = ImageRecord(id=image_id, file_name=as_str(require(rec, "file_name", where), "file_name", where))
    for field in ("width", "height"):
        if rec.get(field) is not None:
            value = as_int(rec[field], field, where)
            if value <= 0:
                raise where.error(field, f"must be > 0, got {value}")
            setattr(img, field, value)
    return img


def parse_keypoints(value: Any, field: str, where: Where, num_joints: int) -> np.ndarray:
    """Flat ``x1, y1, v1, ...`` list → (K, 3) with unlabelled joints at (0, 0)."""
    kp = as_numbers(value, field, where, 3 * num_joints, f"3×{num_joints} = {3 * num_joints} numbers").reshape(
        num_joints, 3
    )
    as_visibility(kp[:, 2], field, where)
    kp[kp[:, 2] == 0, :2] = 0.0
    return kp


def parse_annotation(rec: Any, where: Where, schema: KeypointSchema) -> tuple[int, Person]:
    """One annotation → (image id, person)."""
    ann_id = as_int(require(rec, "id", where), "id", where)
    where = where.with_id(ann_id)
    image_id = as_int(require(rec, "image_id", where), "image_id", where)
    kp = parse_keypoints(require(rec, "keypoints", where), "keypoints", where, schema.num_joints)
    person = Person(id=ann_id, keypoints=kp)
    if rec.get("bbox") is not None:
        person.bbox = as_box(rec["bbox"], "bbox", where)
    if rec.get("area") is not None:
        person.area = as_number(rec["area"], "area", where)
        if person.area < 0:
            raise where.error("area", f"must be >= 0, got {person.area:g}")
    person.iscrowd = as_flag(rec.get("iscrowd", 0), "iscrowd", where)
    if rec.get("track_id") is not None:
        person.track_id = as_int(rec["track_id"], "track_id", where)
    if rec.get("bbox_head") is not None:
        x, y, w, h = as_box(rec["bbox_head"], "bbox_head", where)
        person.head_box = np.array([x, y, x + w, y + h], dtype=np.float32)
    if rec.get("segmentation") is not None:
        person.segmentation = parse_segmentation(rec["segmentation"], where)
    return image_id, person


def parse_segmentation(value: Any, where: Where) -> list | dict | None:
    """COCO's ``segmentation``: polygons (lists of >= 3 x, y pairs) or an RLE with ``counts``
    (a list or pycocotools' compressed string) and ``size`` [h, w]. An empty list is none."""
    if isinstance(value, list):
        polygons = []
        for i, poly in enumerate(value):
            if (not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly)):
                raise where.error(f"segmentation[{i}]", "expected a polygon: a list of >= 3 x, y number pairs")
            polygons.append([float(v) for v in poly])
        return polygons or None
    if isinstance(value, dict):
        size, counts = value.get("size"), value.get("counts")
        if (not isinstance(size, list) or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise where.error("segmentation.size", f"expected [height, width], got {size!r}")
        if not (isinstance(counts, str) or (isinstance(counts, list) and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts))):
            raise where.error("segmentation.counts", "expected an RLE: a list of run lengths or a compressed string")
        return {"size": list(size), "counts": counts}
    raise where.error("segmentation", f"expected polygons or an RLE object, got {type(value).__name__}")


def attach_people(
    images: list[ImageRecord], anns: list[tuple[int, Person]], path: Path, ann_indices: list[int]
) -> None:
    """Put each annotation on its image; an unknown image id is an error."""
    by_id = {img.id: img for img in images}
    for (image_id, person), i in zip(anns, ann_indices):
        if image_id not in by_id:
            raise Where(path, "annotations", i, person.id).error(
                "image_id", f"unknown image id {image_id} (no such entry in 'images')"
            )
        by_id[image_id].people.append(person)


def parse_coco_like(data: Any, path: Path, schema: KeypointSchema | None = None):
    """Images and annotations of a COCO-structured dict, validated; returns (schema, images, raw image recs)."""
    top = Where(path, "top level")
    if not isinstance(data, dict):
        raise PosenasError(f"{path}: expected a JSON object with 'images' and 'annotations', got {type(data).__name__}")
    raw_images = as_list(require(data, "images", top), "images", top)
    raw_anns = as_list(require(data, "annotations", top), "annotations", top)
    schema = schema or schema_from_categories(data, path)
    images = [parse_image(r, Where(path, "images", i)) for i, r in enumerate(raw_images)]
    check_unique([img.id for img in images], path, "images")
    anns, indices = [], []
    for i, rec in enumerate(raw_anns):
        if isinstance(rec, dict) and rec.get("category_id", PERSON_CATEGORY_ID) != PERSON_CATEGORY_ID:
            continue  # keypoint files hold persons only; other categories carry no joints
        anns.append(parse_annotation(rec, Where(path, "annotations", i), schema))
        indices.append(i)
    check_unique([p.id for _, p in anns], path, "annotations")
    attach_people(images, anns, path, indices)
    return schema, images, raw_images


def read_coco(path: Path, data: Any, image_root: Path) -> PoseDataset:
    schema, images, _ = parse_coco_like(data, path)
    return PoseDataset("coco", schema, image_root, images, path)


def category(schema: KeypointSchema) -> dict:
    """The person category, with joint names and the 1-based skeleton as COCO writes it."""
    return {
        "id": PERSON_CATEGORY_ID,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(schema.joints),
        "skeleton": [[a + 1, b + 1] for a, b in schema.skeleton],
    }


def _floats(values: np.ndarray, decimals: int | None) -> list[float]:
    """Plain floats; files round to ``decimals`` (sub-pixel enough, small, byte-stable)."""
    return [float(v) if decimals is None else round(float(v), decimals) for v in np.asarray(values).reshape(-1)]


def annotation_dict(person: Person, image_id: int, decimals: int | None = 2) -> dict:
    """One person as a COCO annotation (bbox required; area defaults to bbox w×h).

    ``decimals=None`` keeps the exact values (for pycocotools); files use 2 decimals.
    """
    if person.bbox is None:
        raise PosenasError(f"person {person.id} in image {image_id} has no bbox; COCO annotations need one")
    kp = person.keypoints.copy()
    kp[kp[:, 2] == 0, :2] = 0.0
    area = person.area if person.area is not None else float(person.bbox[2] * person.bbox[3])
    ann = {
        "id": person.id,
        "image_id": image_id,
        "category_id": PERSON_CATEGORY_ID,
        "keypoints": [v if i % 3 != 2 else int(v) for i, v in enumerate(_floats(kp, decimals))],
        "num_keypoints": person.num_labelled,
        "bbox": _floats(person.bbox, decimals),
        "area": _floats([area], decimals)[0],
        "iscrowd": int(person.iscrowd),
    }
    if person.track_id is not None:
        ann["track_id"] = person.track_id
    if person.head_box is not None:
        x1, y1, x2, y2 = person.head_box
        ann["bbox_head"] = _floats(np.array([x1, y1, x2 - x1, y2 - y1]), decimals)
    if person.segmentation is not None:
        ann["segmentation"] = person.segmentation
    return ann


def image_dict(img: ImageRecord) -> dict:
    out: dict[str, Any] = {"id": img.id, "file_name": img.file_name}
    if img.width is not None:
        out["width"], out["height"] = img.width, img.height
    return out


def to_coco_dict(dataset: PoseDataset) -> dict:
    """A COCO keypoints dict of the dataset — the file format, and pycocotools' ground truth."""
    return {
        "info": {"description": "written by posenas"},
        "images": [image_dict(img) for img in dataset.images],
        "annotations": [annotation_dict(p, img.id) for img in dataset.images for p in img.people],
        "categories": [category(dataset.schema)],
    }
