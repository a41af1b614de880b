"""Running a bottom-up model over whole images and scoring the result (no boxes, no detector).

One path serves validation during training, `posenas eval --checkpoint` on a bottom-up
checkpoint and `posenas infer`: letterbox each image to the input size, run the model (and on
the mirrored image with the flip test), aggregate heatmaps over resolutions and flip and stack
the tags (HigherHRNet's test), group joints into people by their tags, map them back to image
pixels. Each person becomes an :class:`~posenas.engine.predict.InstancePrediction` (person id
-1, box = its joints' extent), so prediction files and COCO OKS AP are the top-down ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from posenas.codecs.associative import AssociativeEmbeddingCodec, aggregate
from posenas.data.bottomup import BottomUpDataset
from posenas.data.records import PoseDataset
from posenas.engine.precision import FP32, Precision
from posenas.data.transforms import transform_points
from posenas.engine.predict import InstancePrediction, prediction_records
from posenas.engine.task import as_outputs
from posenas.evaluation import default_metric, evaluate_records
from posenas.errors import PosenasError


def outputs_with_flip(model: nn.Module, images: torch.Tensor, num_joints: int, flip_index: tuple[int, ...],
                      flip_test: bool, precision: Precision = FP32) -> tuple[torch.Tensor, torch.Tensor]:
    """Aggregated heatmaps ``(N, K, h, w)`` and tags ``(N, K, h, w, D)`` (D = 2 with the flip test)
    at the model's finest output resolution."""
    if not flip_test:
        out = precision.forward(model, images)
        return aggregate(list(as_outputs(out)), num_joints, None, flip_index)
    both = as_outputs(precision.forward(model, torch.cat([images, torch.flip(images, dims=[3])])))
    n = len(images)
    # input_size: the mirrored maps are moved back by the exact offset of our pixel convention
    return aggregate([o[:n] for o in both], num_joints, [o[n:] for o in both], flip_index,
                     input_size=tuple(images.shape[-2:]))


def people_to_predictions(people: np.ndarray, scores: np.ndarray, input_to_image: np.ndarray, image_id: int,
                          file_origin: float) -> list[InstancePrediction]:
    """Decoded people ``(P, K, 3)`` in input pixels → predictions in image pixels."""
    out = []
    for person, score in zip(people, scores):
        xy = transform_points(person[:, :2], input_to_image)
        kp = np.concatenate([xy, person[:, 2:3]], axis=1).astype(np.float32)
        found = kp[kp[:, 2] > 0, :2]
        lo, hi = (found.min(0), found.max(0)) if len(found) else (np.zeros(2), np.zeros(2))
        box = np.array([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]], np.float32)
        out.append(InstancePrediction(image_id, -1, kp, float(score), box, file_origin))
    return out


@torch.no_grad()
def predict_images(
    model: nn.Module,
    data: BottomUpDataset,
    codec: AssociativeEmbeddingCodec,
    device: torch.device,
    *,
    flip_test: bool = True,
    batch_size: int = 16,
    workers: int = 0,
    progress: bool = True,
    precision: Precision = FP32,
) -> list[InstancePrediction]:
    """Every person the model finds in each image of ``data`` (letterboxed, no augmentation), image by image."""
    was_training = model.training
    model.eval()
    schema = data.dataset.schema
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers)
    out: list[InstancePrediction] = []
    for batch in tqdm(loader, desc="predicting", disable=not progress, leave=False):
        heatmaps, tags = outputs_with_flip(model, batch["image"].to(device), schema.num_joints, schema.flip_index,
                                           flip_test, precision)
        heatmaps, tags = heatmaps.float().cpu().numpy(), tags.float().cpu().numpy()
        for i in range(len(heatmaps)):
            people, scores = codec.decode(heatmaps[i], tags[i])
            out += people_to_predictions(people, scores, batch["matrix"][i].numpy(), int(batch["image_id"][i]),
                                         data.dataset.file_origin)
    model.train(was_training)
    return out


def predict_whole_images(model: nn.Module, dataset: PoseDataset, codec: AssociativeEmbeddingCodec,
                         device: torch.device, **options: Any) -> list[InstancePrediction]:
    """:func:`predict_images` on every image of ``dataset``, letterboxed (options as there)."""
    return predict_images(model, BottomUpDataset(dataset, codec, augment=None, targets=False), codec, device,
                          **options)


def evaluate_bottomup(
    model: nn.Module,
    dataset: PoseDataset,
    codec: AssociativeEmbeddingCodec,
    device: torch.device,
    metric: str | None = None,
    **predict_options: Any,
) -> tuple[str, dict, str, list[InstancePrediction]]:
    """Predict every image of ``dataset`` and score it (COCO OKS AP on whole images): (metric, result, table, preds)."""
    metric = metric or default_metric(dataset)
    if metric != "coco":
        raise PosenasError(f"{dataset.source}: a bottom-up model is scored by COCO OKS AP; PCKh scores each GT "
                           "person's own box (use a top-down model)")
    preds = predict_whole_images(model, dataset, codec, device, **predict_options)
    _, result, table = evaluate_records(dataset, prediction_records(preds, metric), metric)
    return metric, result, table, preds
