"""Running a top-down model over person boxes and scoring the result.

One path serves validation during training, `posenas eval --checkpoint` and `posenas
infer`: crop each box, run the model (optionally with the flip test), decode the
heatmaps, project back to image coordinates, rescore the instance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from posenas.codecs.heatmap import HeatmapCodec, back_project, flip_back, instance_scores
from posenas.data.records import PoseDataset, to_file_frame
from posenas.data.topdown import TopDownDataset
from posenas.data.boxes import Detection
from posenas.engine.precision import FP32, Precision
from posenas.evaluation import default_metric, evaluate_records


#: The number that ranks models, per metric: its path in the result dict and its name.
PRIMARY_METRIC = {"coco": (("AP",), "AP"), "pckh": (("PCKh@0.5", "mean"), "PCKh@0.5 mean"),
                  "posetrack": (("Total",), "PoseTrack mAP")}


def primary_value(metric: str, result: dict) -> float:
    """The ranking number of a result (-inf when undefined), e.g. AP for COCO."""
    value = result
    for key in PRIMARY_METRIC[metric][0]:
        value = value[key]
    return float(value) if value is not None else float("-inf")


@dataclass
class InstancePrediction:
    """One person: keypoints ``(K, 3)`` as ``x, y, score`` in image pixels (0-based, like the
    records), the instance score, the input box; ``file_origin``: the frame of the predicted
    dataset's files (MPII: 1), which the predictions file is written in."""

    image_id: int
    person_id: int
    keypoints: np.ndarray
    score: float
    box: np.ndarray
    file_origin: float = 0.0


def heatmaps_with_flip(model: nn.Module, images: torch.Tensor, flip_index: tuple[int, ...], flip_test: bool,
                       precision: Precision = FP32) -> torch.Tensor:
    """The model's heatmaps (run in ``precision``, returned FP32), averaged with those of the
    mirrored input when ``flip_test``."""
    if not flip_test:
        return precision.forward(model, images)
    # one forward pass over both (eval mode: the halves do not affect each other)
    both = precision.forward(model, torch.cat([images, torch.flip(images, dims=[3])]))
    heatmaps, mirrored = both[: len(images)], both[len(images) :]
    return (heatmaps + flip_back(mirrored, flip_index)) * 0.5


@torch.no_grad()
def predict(
    model: nn.Module,
    data: TopDownDataset,
    codec: HeatmapCodec,
    flip_index: tuple[int, ...],
    device: torch.device,
    *,
    flip_test: bool = True,
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = True,
    precision: Precision = FP32,
) -> list[InstancePrediction]:
    """Predict every instance of ``data`` (GT boxes or detections), in dataset order; the model
    runs in ``precision`` (a training run validates in its own)."""
    was_training = model.training
    model.eval()
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers)
    out: list[InstancePrediction] = []
    for batch in tqdm(loader, desc="predicting", disable=not progress, leave=False):
        heatmaps = heatmaps_with_flip(model, batch["image"].to(device), flip_index, flip_test, precision)
        out += crop_predictions(heatmaps.float().cpu().numpy(), batch, codec, data.dataset.file_origin)
    model.train(was_training)
    return out


def crop_predictions(heatmaps: np.ndarray, batch: dict, codec: HeatmapCodec, file_origin: float
                     ) -> list[InstancePrediction]:
    """A batch of crops' heatmaps ``(N, K, h, w)`` → one prediction each, in image pixels."""
    coords, maxvals = codec.decode(heatmaps)
    rotations = np.asarray(batch["rotation"])
    image_xy = back_project(coords, batch["center"].numpy(), batch["scale"].numpy(), rotations, codec.input_size)
    scores = instance_scores(maxvals, batch["box_score"].numpy())
    boxes = batch["box"].numpy()
    return [InstancePrediction(int(batch["image_id"][i]), int(batch["person_id"][i]),
                               np.concatenate([image_xy[i], maxvals[i][:, None]], axis=1).astype(np.float32),
                               float(scores[i]), boxes[i], file_origin) for i in range(len(coords))]


def by_image(preds: list[InstancePrediction]) -> dict[int, list[InstancePrediction]]:
    """Predictions grouped by image id, in their order."""
    out: dict[int, list[InstancePrediction]] = {}
    for p in preds:
        out.setdefault(p.image_id, []).append(p)
    return out


def _file_keypoints(p: InstancePrediction) -> np.ndarray:
    """The keypoints in the frame of the dataset's files (MPII: 1-based)."""
    return to_file_frame(p.keypoints, p.file_origin)


def coco_results(preds: list[InstancePrediction]) -> list[dict]:
    """COCO keypoint results (``image_id, category_id, keypoints, score``), in the annotation file's frame."""
    return [
        {
            "image_id": p.image_id,
            "category_id": 1,
            "keypoints": [round(float(v), 3) for v in _file_keypoints(p).reshape(-1)],
            "score": round(p.score, 5),
        }
        for p in preds
    ]


def pckh_records(preds: list[InstancePrediction]) -> list[dict]:
    """PCKh prediction records (``id``: the GT person id, ``keypoints``: ``[[x, y, score], ...]``), in the file frame."""
    return [{"id": p.person_id, "keypoints": [[round(float(v), 3) for v in row] for row in _file_keypoints(p)]}
            for p in preds]


def predict_dataset(
    model: nn.Module,
    dataset: PoseDataset,
    codec: HeatmapCodec,
    device: torch.device,
    *,
    boxes: list[Detection] | None = None,
    flip_test: bool = True,
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = True,
    precision: Precision = FP32,
) -> list[InstancePrediction]:
    """:func:`predict` on a dataset's GT boxes, or on ``boxes`` (detections)."""
    inputs = TopDownDataset(dataset, codec, augment=None, boxes=boxes)
    return predict(model, inputs, codec, dataset.schema.flip_index, device, flip_test=flip_test,
                   batch_size=batch_size, workers=workers, progress=progress, precision=precision)


def prediction_records(preds: list[InstancePrediction], metric: str) -> list[dict]:
    """The predictions file of a metric: PCKh records for ``pckh``, COCO results otherwise (``coco``, ``posetrack``).

    Coordinates are in the frame of the predicted dataset's annotation files (MPII:
    MATLAB 1-based, as the official toolkit and MMPose compare), so ``posenas eval --gt
    ... --pred`` on the file gives the numbers of the run that wrote it.
    """
    return pckh_records(preds) if metric == "pckh" else coco_results(preds)


def evaluate_model(
    model: nn.Module,
    dataset: PoseDataset,
    codec: HeatmapCodec,
    device: torch.device,
    metric: str | None = None,
    **predict_options,
) -> tuple[str, dict, str, list[InstancePrediction]]:
    """Predict ``dataset`` (options as :func:`predict_dataset`) and score it: (metric, result, table, predictions).

    The score is that of :func:`prediction_records` (rounded as written, in the file frame),
    so a written predictions file re-evaluates to exactly these numbers.
    """
    metric = metric or default_metric(dataset)
    preds = predict_dataset(model, dataset, codec, device, **predict_options)
    _, result, table = evaluate_records(dataset, prediction_records(preds, metric), metric)
    return metric, result, table, preds
