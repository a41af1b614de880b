"""COCO keypoint evaluation: OKS AP / AR through pycocotools' ``COCOeval``.

We never reimplement COCOeval. This module only

* turns a :class:`~posenas.data.records.PoseDataset` into a COCO ground-truth dict
  (:func:`coco_ground_truth`),
* reads and validates a COCO results file (:func:`load_coco_predictions`), so that bad
  input fails with a one-line :class:`~posenas.errors.PosenasError` instead of an
  ``AssertionError`` or ``KeyError`` deep inside pycocotools,
* runs ``COCOeval(iouType="keypoints")`` in memory with the dataset schema's OKS sigmas,
  silencing pycocotools' prints so callers can write pure JSON to stdout
  (:func:`evaluate_coco`).

Choices where the COCO tools leave room (all written down here, and tested):

* **Which images are evaluated.** Every image record with ``is_labeled`` true. PoseTrack
  videos contain unlabelled frames; their images are left out of the ground truth, and
  predictions on them are accepted by the loader (the image exists in the dataset) but
  dropped before evaluation, so a model may simply be run on every frame. Labelled images
  with no people stay in: a detection there is a false positive, as in COCO.
* **Crowds and people without joints.** They reach pycocotools as they are: crowd
  regions with ``iscrowd`` 1 (a detection there is ignored, however many there are) and
  non-crowd people with ``num_keypoints`` 0 (ignored ground truth: a detection matched to
  one neither helps nor hurts), each with its ``bbox``, as COCOeval expects. A person with
  no labelled joint *and* no bbox (PoseTrack18 writes such head-box-only people) gives
  COCOeval nothing to match and is left out; a person with labelled joints but no bbox is
  an error.
* **Coordinates.** In-memory results are in the records' 0-based frame; a results *file*
  is in the frame of the annotation file (:attr:`PoseDataset.file_origin`; 0 for COCO and
  PoseTrack, so files and records agree).
* **Annotation ids.** The ground-truth annotation ids are the ``Person.id`` s, unless they
  are not unique or one of them is 0. pycocotools marks a detection as matched by storing
  the matched ground-truth *id* and tests it for non-zero, so a ground truth with id 0
  can never count as a true positive; in those cases the annotations are numbered
  1..N in dataset order instead (the ids never reach the metric otherwise).
* **Empty predictions.** ``COCO.loadRes`` cannot read an empty list; we build the empty
  results object ourselves, so the numbers are exactly what COCOeval gives for "no
  detections": 0 for every metric whose area range has ground truth, -1 where it has none.
* **Prediction fields.** Only ``image_id``, ``category_id`` (must be 1, the person
  category; COCOeval would silently ignore anything else), ``keypoints`` and ``score`` are
  used; other fields (``bbox``, ``track_id`` ...) are allowed and ignored. The detection
  area COCOeval needs for its area ranges is computed by ``loadRes`` from the keypoints'
  extent, as pycocotools always does.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
from typing import Any

import numpy as np

from posenas.data.coco import PERSON_CATEGORY_ID, annotation_dict, category, image_dict
from posenas.data.fields import check_unique, is_number
from posenas.data.records import ImageRecord, PoseDataset
from posenas.errors import PosenasError
from posenas.jsonio import read_json

#: The ten numbers of ``COCOeval.stats`` for keypoints, in pycocotools' order.
COCO_METRIC_KEYS = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")

#: What each key means (OKS threshold(s), area range), for the table.
_METRIC_DESCRIPTIONS = {
    "AP": ("0.50:0.95", "all"),
    "AP50": ("0.50", "all"),
    "AP75": ("0.75", "all"),
    "APM": ("0.50:0.95", "medium"),
    "APL": ("0.50:0.95", "large"),
    "AR": ("0.50:0.95", "all"),
    "AR50": ("0.50", "all"),
    "AR75": ("0.75", "all"),
    "ARM": ("0.50:0.95", "medium"),
    "ARL": ("0.50:0.95", "large"),
}

_REQUIRED_FIELDS = ("image_id", "category_id", "keypoints", "score")


def _evaluated_images(dataset: PoseDataset) -> list[ImageRecord]:
    return [img for img in dataset.images if img.is_labeled]


def coco_ground_truth(dataset: PoseDataset) -> dict:
    """The dataset as a COCO keypoint ground-truth dict (``images``, ``annotations``, ``categories``).

    Works for any dataset whose people have a ``bbox`` (COCO, PoseTrack). Only labelled
    images are included, and people with neither joints nor bbox are left out (see the
    module notes). Each annotation has ``id``, ``image_id``, ``category_id`` (1),
    ``keypoints`` (flat ``3K`` list), ``num_keypoints`` (joints with ``v > 0``), ``bbox``
    (``x, y, w, h``), ``area`` (``Person.area`` if set, else ``w * h``) and ``iscrowd`` (0/1). The category carries the schema's joint names and its skeleton
    as 1-based index pairs, COCO's convention. All values are plain Python types, so the
    dict can be written with ``json.dump``.
    """
    check_unique([img.id for img in dataset.images], dataset.source, "images")
    images = _evaluated_images(dataset)
    people = [(img, p) for img in images for p in img.people if p.bbox is not None or p.num_labelled > 0]
    for img, person in people:
        if person.bbox is None:
            raise PosenasError(
                f"{dataset.source}: image {img.id}, person {person.id}: no bbox; "
                "COCO keypoint evaluation needs an x, y, w, h box for every person with labelled joints"
            )
    annotations = [annotation_dict(p, img.id, decimals=None) for img, p in people]
    ids = [a["id"] for a in annotations]
    if len(set(ids)) != len(ids) or 0 in ids:
        for n, ann in enumerate(annotations, start=1):
            ann["id"] = n
    return {
        "images": [image_dict(img) for img in images],
        "annotations": annotations,
        "categories": [category(dataset.schema)],
    }


def _validate_predictions(items: Any, dataset: PoseDataset, where: str, origin: float = 0.0) -> list[dict]:
    """Check a COCO results list against the dataset; return clean copies of the entries,
    with ``origin`` (the file's frame) subtracted from x and y."""
    if not isinstance(items, list):
        raise PosenasError(
            f"{where}: expected a JSON list of results "
            f"({{image_id, category_id, keypoints, score}}), got {type(items).__name__}"
        )
    schema = dataset.schema
    k = schema.num_joints
    image_ids = {img.id for img in dataset.images}
    out = []
    for i, item in enumerate(items):
        rec = f"{where}: record {i}"
        if not isinstance(item, dict):
            raise PosenasError(f"{rec}: expected an object with {', '.join(_REQUIRED_FIELDS)}, got {type(item).__name__}")
        for name in _REQUIRED_FIELDS:
            if name not in item:
                raise PosenasError(f"{rec}: missing field {name!r}")
        image_id = item["image_id"]
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise PosenasError(f"{rec}: field 'image_id' must be an integer, got {image_id!r}")
        if image_id not in image_ids:
            raise PosenasError(f"{rec}: field 'image_id': {image_id} is not an image of the ground truth {dataset.source}")
        category_id = item["category_id"]
        if category_id != PERSON_CATEGORY_ID or isinstance(category_id, bool):
            raise PosenasError(
                f"{rec}: field 'category_id' must be {PERSON_CATEGORY_ID} (person), got {category_id!r}"
            )
        kps = item["keypoints"]
        if not isinstance(kps, list):
            raise PosenasError(f"{rec}: field 'keypoints' must be a list of 3×K numbers, got {type(kps).__name__}")
        if len(kps) != 3 * k:
            raise PosenasError(
                f"{rec}: field 'keypoints' has {len(kps)} numbers, expected 3×K = {3 * k} "
                f"(x, y, score for the {k} joints of schema {schema.name})"
            )
        for j, v in enumerate(kps):
            if not is_number(v) or not math.isfinite(v):
                raise PosenasError(
                    f"{rec}: field 'keypoints'[{j}] (joint {j // 3} {schema.joints[j // 3]}, "
                    f"{'xys'[j % 3]}) must be a finite number, got {v!r}"
                )
        score = item["score"]
        if not is_number(score) or not math.isfinite(score):
            raise PosenasError(f"{rec}: field 'score' must be a finite number, got {score!r}")
        out.append(
            {
                "image_id": int(image_id),
                "category_id": PERSON_CATEGORY_ID,
                "keypoints": [float(v) - origin if j % 3 != 2 else float(v) for j, v in enumerate(kps)],
                "score": float(score),
            }
        )
    return out


def load_coco_predictions(path: str | os.PathLike, dataset: PoseDataset) -> list[dict]:
    """Read and validate a COCO keypoint results file for ``dataset``.

    The file is a JSON list of ``{"image_id", "category_id": 1, "keypoints": [x, y, score] * K,
    "score"}``; an empty list is valid. Every problem is a one-line
    :class:`PosenasError` naming the file, the record index and the field. Returns clean
    copies holding just those four fields (numbers as Python floats / ints), in the records'
    0-based frame.
    """
    return coco_predictions(read_json(path), dataset, str(path))


def coco_predictions(items: Any, dataset: PoseDataset, where: str) -> list[dict]:
    """A results file's content (in the annotation file's frame) as validated in-memory results (0-based)."""
    return _validate_predictions(items, dataset, where, dataset.file_origin)


def _coco_object(dataset_dict: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset_dict
    coco.createIndex()
    return coco


def evaluate_coco(dataset: PoseDataset, predictions: list[dict]) -> dict[str, float]:
    """OKS AP / AR of ``predictions`` on ``dataset`` with pycocotools' ``COCOeval``.

    The OKS sigmas are the dataset schema's. Returns the ten ``COCOeval.stats`` as floats
    keyed by :data:`COCO_METRIC_KEYS`: values in ``[0, 1]``, or -1 where pycocotools gives
    -1 (no ground truth in that area range). Nothing is printed: pycocotools' output is
    captured. Predictions are validated as :func:`load_coco_predictions` does; those on
    unlabelled frames are dropped (see the module notes).
    """
    from pycocotools.cocoeval import COCOeval

    gt_dict = coco_ground_truth(dataset)
    preds = _validate_predictions(predictions, dataset, "predictions")
    evaluated = {img["id"] for img in gt_dict["images"]}
    preds = [p for p in preds if p["image_id"] in evaluated]

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = _coco_object(gt_dict)
        if preds:
            # loadRes adds fields to the entries it is given; ours are private copies.
            coco_dt = coco_gt.loadRes(preds)
        else:
            coco_dt = _coco_object(
                {
                    "images": list(gt_dict["images"]),
                    "categories": copy.deepcopy(gt_dict["categories"]),
                    "annotations": [],
                }
            )
        ev = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        ev.params.kpt_oks_sigmas = np.array(dataset.schema.sigmas, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {key: float(v) for key, v in zip(COCO_METRIC_KEYS, ev.stats)}


def format_coco_table(stats: dict[str, float]) -> str:
    """A human-readable table of :func:`evaluate_coco`'s result (-1 shown as ``n/a``)."""
    lines = [f"{'metric':<7} {'OKS':<10} {'area':<7} {'value':>6}"]
    for key in COCO_METRIC_KEYS:
        if key not in stats:
            continue
        oks, area = _METRIC_DESCRIPTIONS[key]
        v = stats[key]
        value = "n/a" if v is None or v < 0 else f"{v:.4f}"
        lines.append(f"{key:<7} {oks:<10} {area:<7} {value:>6}")
    if any(stats.get(k) is not None and stats[k] < 0 for k in COCO_METRIC_KEYS):
        lines.append("n/a: no ground-truth person in that area range")
    return "\n".join(lines)
