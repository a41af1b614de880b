"""`posenas infer`: run a checkpoint on images or folders of frames, draw and save the poses."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

import torch

from posenas.runtime import load_model
from posenas.data.boxes import load_detections
from posenas.data.images import IMAGE_SUFFIXES, VIDEO_SUFFIXES, encode_jpeg, read_image
from posenas.data.records import ImageRecord, PoseDataset
from posenas.engine.distributed import resolve_device
from posenas.engine.predict import by_image
from posenas.engine.task import task_of_codec
from posenas.errors import PosenasError
from posenas.jsonio import write_bytes, write_json
from posenas.visualize import draw_predictions


def image_inputs(inputs: list[str | Path]) -> list[Path]:
    """Image files from the arguments; a folder stands for its images (frames) in name order."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            frames = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not frames:
                raise PosenasError(f"{item}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            paths += frames
        elif item.suffix.lower() in VIDEO_SUFFIXES:
            raise PosenasError(f"{item}: a video; `posenas infer` runs it alone (posenas.infer_video)")
        elif item.exists():
            paths.append(item)
        else:
            raise PosenasError(f"{item}: no such image or folder")
    return paths


def _input_names(paths: list[Path]) -> dict[str, int]:
    """How a detections file may name an input: its path as given, or its base name when that is unique."""
    names = {str(p): i for i, p in enumerate(paths)}
    repeated = Counter(p.name for p in paths)
    for i, p in enumerate(paths):
        if repeated[p.name] == 1:
            names.setdefault(p.name, i)
    return names


def run_inference(
    checkpoint: str | Path,
    inputs: list[str | Path],
    out: str | Path,
    *,
    boxes: str | Path | None = None,
    flip_test: bool = True,
    min_score: float = 0.2,
    device: str = "auto",
    runtime: str = "torch",
    progress: bool = True,
    joint_scores: bool = False,
    dynamic: bool = False,
    thresholds: list[float] | None = None,
) -> list[dict]:
    """Predict every person box (a top-down model without boxes: the whole image is one box; a
    bottom-up model finds every person in each image and takes no boxes); returns the JSON records.

    ``dynamic``: a multi-exit checkpoint runs with dynamic inference
    (:class:`posenas.engine.dynamic.DynamicExits`, ``thresholds`` one per early exit);
    predictions.json then also holds ``dynamic``: the exits' ``layers`` and how many images
    (views: with the flip test each mirrored copy picks its own exit) left at each (``counts``)."""
    paths = image_inputs(inputs)  # the inputs first: a wrong path fails before the model loads
    if dynamic and runtime != "torch":
        raise PosenasError("infer --dynamic: runs the PyTorch checkpoint between its exits; drop --runtime onnx")
    loaded = load_model(checkpoint, runtime)
    model = loaded.model
    if dynamic:
        from posenas.engine.dynamic import DynamicExits, require_exits

        require_exits(model, str(checkpoint))
        model = DynamicExits(model, thresholds, detection_threshold=getattr(loaded.codec, "detection_threshold", 0.1))
    # Decode every input before writing anything (a bad image fails with no output); keep
    # only the sizes, so a long folder of frames does not sit in memory.
    sizes = [read_image(p).shape[:2] for p in paths]
    records = [ImageRecord(id=i, file_name=str(p.resolve()), width=w, height=h)
               for i, (p, (h, w)) in enumerate(zip(paths, sizes))]
    dataset = PoseDataset("coco", loaded.schema, Path("/"), records, Path(str(inputs[0])))
    task = task_of_codec(loaded.codec)
    if boxes is not None:
        detections = load_detections(boxes, names=_input_names(paths))
    elif task.name == "topdown":  # one person per image, the whole image its box
        detections = [(r.id, np.array([0, 0, r.width, r.height], np.float32), 1.0) for r in records]
    else:  # bottom-up: every person of the whole image, no boxes
        detections = None
    dev = resolve_device(device) if runtime == "torch" else torch.device("cpu")
    preds = task.predict(model.to(dev), dataset, loaded.codec, dev, boxes=detections,
                         flip_test=flip_test, progress=progress)
    out = Path(out)
    grouped = by_image(preds)
    results = []
    for i, path in enumerate(paths):
        people = grouped.get(i, [])
        canvas = draw_predictions(read_image(path), ((p.keypoints, p.box, p.score) for p in people), loaded.schema, min_score,
                                   joint_scores=joint_scores)
        for p in people:
            results.append({
                "image": str(path), "image_id": i, "bbox": [round(float(v), 2) for v in p.box],
                "score": round(p.score, 4),
                "keypoints": [[round(float(v), 2) for v in row] for row in p.keypoints],
            })
        write_bytes(out / f"{i:05d}_{path.stem}.jpg", encode_jpeg(canvas))
    extra = {}
    if dynamic:
        from posenas.engine.dynamic import exit_layers

        extra["dynamic"] = {"layers": exit_layers(model.net), "counts": list(model.counts), "flip_test": flip_test}
    write_json(out / "predictions.json", {"schema": loaded.schema.name, "joints": list(loaded.schema.joints),
                                          "predictions": results, **extra}, indent=1)
    return results
