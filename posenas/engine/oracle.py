"""`posenas eval --oracle`: the AP ceiling a codec and an input size allow.

The ground truth is encoded into the training targets a model would be taught (top-down:
each person's crop heatmaps; bottom-up: every person's heatmaps and ideal tags) and decoded
with the real decoder, then scored like any model's predictions. What is lost is lost to
the codec alone: sub-pixel quantisation at the heatmap resolution, joints the crop or the
letterbox cuts off, people too close to tell apart at that resolution, the grouping. It tells a
user what input size they can afford before training anything.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from posenas.codecs.associative import AssociativeEmbeddingCodec
from posenas.codecs.heatmap import HeatmapCodec
from posenas.data.bottomup import BottomUpDataset
from posenas.data.records import PoseDataset
from posenas.data.topdown import TopDownDataset
from posenas.data.transforms import invert_affine
from posenas.engine.bottomup import people_to_predictions
from posenas.engine.predict import InstancePrediction, crop_predictions, prediction_records
from posenas.errors import PosenasError
from posenas.evaluation import default_metric, evaluate_records

#: The codecs an oracle can measure.
ORACLES = ("topdown", "bottomup")


def ideal_tags(codec: AssociativeEmbeddingCodec, people: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """``(K, h, w)`` tags a perfect network would give at the tag resolution: each pixel of joint k
    carries the id (1, 2, ...) of the person whose Gaussian for k is strongest there (0: nobody's)."""
    k = people.shape[1]
    h, w = codec.heatmap_sizes[0]
    if len(people) == 0:
        return np.zeros((k, h, w), np.float32)
    each = np.stack([codec.encode(people[p : p + 1], areas[p : p + 1])[0][0] for p in range(len(people))])
    return np.where(each.max(0) > 0, each.argmax(0) + 1, 0).astype(np.float32)


def oracle_predictions(dataset: PoseDataset, kind: str, input_size: tuple[int, int], sigma: float = 2.0,
                       progress: bool = True) -> list[InstancePrediction]:
    """The ground truth through a codec's encode and decode (no model)."""
    if kind == "topdown":
        codec = HeatmapCodec(input_size, (input_size[0] // 4, input_size[1] // 4), sigma)
        loader = DataLoader(TopDownDataset(dataset, codec, None), batch_size=64)
        out: list[InstancePrediction] = []
        for batch in tqdm(loader, desc="oracle", disable=not progress, leave=False):
            out += crop_predictions(batch["target"].numpy(), batch, codec, dataset.file_origin)
        return out
    if kind != "bottomup":
        raise PosenasError(f"--oracle: unknown codec {kind!r}; allowed: {', '.join(ORACLES)}")
    codec = AssociativeEmbeddingCodec(input_size, ((input_size[0] // 4, input_size[1] // 4),), sigma)
    data = BottomUpDataset(dataset, codec, None)
    out = []
    for i in tqdm(range(len(data)), desc="oracle", disable=not progress, leave=False):
        sample = data.sample(i)
        heatmaps, _ = codec.encode(sample.people, sample.areas)
        tags = ideal_tags(codec, sample.people, sample.areas)
        people, scores = codec.decode(heatmaps[0], tags)
        out += people_to_predictions(people, scores, invert_affine(sample.matrix), int(data.images[i].id),
                                     dataset.file_origin)
    return out


def evaluate_oracle(dataset: PoseDataset, kind: str, input_size: tuple[int, int], sigma: float = 2.0,
                    progress: bool = True) -> tuple[str, dict, str]:
    """(metric, result, table) of the codec's ceiling on ``dataset``: COCO OKS AP (PCKh for MPII data, top-down)."""
    metric = default_metric(dataset)
    if kind == "bottomup" and metric != "coco":
        raise PosenasError(f"{dataset.source}: the bottom-up oracle is scored by COCO OKS AP; this is {metric} data")
    preds = oracle_predictions(dataset, kind, input_size, sigma, progress)
    return evaluate_records(dataset, prediction_records(preds, metric), metric)
