"""The video pipeline of ViPNAS-style models: propagation over person tracks on GT boxes.

A video model (:class:`posenas.spaces.vipnas_video.VideoPoseModel`, or a temporal supernet
while it trains) exposes ``key`` (image -> heatmaps) and ``frame_nets()`` (T callables
``(image, previous heatmaps) -> heatmaps``). Any other top-down model runs here too, every
frame then a key frame (period 1).

Evaluation follows each person (track id) through the labelled frames of its video: the
frame after a key frame runs ``frame_nets()[0]`` on the previous frame's heatmaps warped into
its own crop (:func:`~posenas.spaces.vipnas_video.warp_heatmaps`), and so on; every ``T + 1``
frames, and whenever the person was absent from the previous frame (frame ids not
consecutive, or the track not in it), a key frame starts again. The crops are the GT boxes,
as the paper evaluates (and as PoseTrack pose-estimation results usually are).

Chains are processed a round at a time (the r-th frame of every chain in one batch), so
the whole val split runs in batches as an image model does.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from posenas.codecs.heatmap import HeatmapCodec
from posenas.data.records import PoseDataset
from posenas.data.topdown import TopDownDataset
from posenas.data.transforms import affine_matrices
from posenas.data.video import ClipDataset
from posenas.engine.precision import FP32, Precision
from posenas.engine.predict import InstancePrediction, crop_predictions, heatmaps_with_flip, prediction_records
from posenas.engine.task import TopDownTask
from posenas.errors import PosenasError
from posenas.evaluation import evaluate_records

FrameNet = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def frame_nets_of(model: nn.Module) -> list[FrameNet]:
    """The non-key frame nets of a video model; none for an image model (every frame a key frame)."""
    fn = getattr(model, "frame_nets", None)
    return list(fn()) if fn is not None else []


def key_net_of(model: nn.Module) -> nn.Module:
    return getattr(model, "key", model)


def instance_chains(dataset: PoseDataset) -> list[list[int]]:
    """Indices into ``dataset.instances()`` grouped into chains: one person (track id) over
    consecutive labelled frames of a video, in frame order. A person without a track id, or
    outside any video, is a chain of its own."""
    index = {(img.id, id(p)): i for i, (img, p) in enumerate(dataset.instances())}
    chains: list[list[int]] = []
    used: set[int] = set()
    for frames in dataset.videos().values():
        open_chains: dict[int, list[int]] = {}
        previous_frame_id: int | None = None
        for img in frames:
            if not img.is_labeled:
                open_chains, previous_frame_id = {}, None
                continue
            consecutive = (previous_frame_id is not None and img.frame_id is not None
                           and img.frame_id == previous_frame_id + 1)
            now: dict[int, list[int]] = {}
            for p in img.people:
                i = index.get((img.id, id(p)))
                if i is None:
                    continue
                used.add(i)
                if p.track_id is None:
                    chains.append([i])
                    continue
                chain = open_chains.get(p.track_id) if consecutive else None
                if chain is None:
                    chain = []
                    chains.append(chain)
                chain.append(i)
                now[p.track_id] = chain
            open_chains, previous_frame_id = now, img.frame_id
    chains += [[i] for i in range(len(index)) if i not in used]
    return chains


def crop_matrices(batch: dict, input_size: tuple[int, int]) -> torch.Tensor:
    """(N, 2, 3) image -> crop affines of a :class:`TopDownDataset` batch (no augmentation)."""
    m = affine_matrices(batch["center"].numpy(), batch["scale"].numpy(), np.asarray(batch["rotation"], np.float64),
                        input_size)
    return torch.from_numpy(m.astype(np.float32))


@torch.no_grad()
def predict_video(
    model: nn.Module,
    dataset: PoseDataset,
    codec: HeatmapCodec,
    device: torch.device,
    *,
    flip_test: bool = False,
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = True,
    precision: Precision = FP32,
    period: int | None = None,
    boxes: Any = None,
) -> list[InstancePrediction]:
    """One prediction per GT instance, by propagation along each chain (module docstring), in
    ``dataset.instances()`` order. ``flip_test`` applies to key frames (a T-ViPNet's heatmap
    input has no mirrored counterpart in the paper's protocol). ``period`` overrides ``T + 1``
    (``1``: every frame a key frame)."""
    from posenas.spaces.vipnas_video import warp_heatmaps

    if boxes is not None:
        raise PosenasError("a video model propagates along the GT tracks of the annotations and takes no detection "
                           "boxes here; drop --boxes (`posenas infer` runs it on detections)")
    was_training = model.training
    model.eval()
    key, frames = key_net_of(model), frame_nets_of(model)
    period = period or len(frames) + 1
    data = TopDownDataset(dataset, codec, augment=None)
    stride = tuple(codec.stride_xy)
    chains = instance_chains(dataset)
    out: list[InstancePrediction | None] = [None] * len(data)
    state: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # chain -> (heatmaps, crop matrix) of its last frame
    rounds = max((len(c) for c in chains), default=0)
    bar = tqdm(total=len(data), desc="propagating", disable=not progress, leave=False)
    for r in range(rounds):
        members = [c for c, chain in enumerate(chains) if len(chain) > r]
        position = r % period
        loader = DataLoader(Subset(data, [chains[c][r] for c in members]), batch_size=batch_size, shuffle=False,
                            num_workers=workers)
        done = 0
        for batch in loader:
            part = members[done:done + len(batch["image"])]
            done += len(part)
            images = batch["image"].to(device)
            matrices = crop_matrices(batch, codec.input_size).to(device)
            if position == 0:
                heatmaps = heatmaps_with_flip(key, images, dataset.schema.flip_index, flip_test, precision)
            else:
                prev = torch.stack([state[c][0] for c in part])
                prev_m = torch.stack([state[c][1] for c in part])
                warped = warp_heatmaps(prev, prev_m, matrices, stride)
                with precision.autocast(device):
                    heatmaps = frames[position - 1](images, warped)
                heatmaps = heatmaps.float()
            for j, c in enumerate(part):
                state[c] = (heatmaps[j], matrices[j])
            preds = crop_predictions(heatmaps.cpu().numpy(), batch, codec, dataset.file_origin)
            for c, p in zip(part, preds):
                out[chains[c][r]] = p
            bar.update(len(part))
    bar.close()
    model.train(was_training)
    return [p for p in out if p is not None]


def evaluate_video(model: nn.Module, dataset: PoseDataset, codec: HeatmapCodec, device: torch.device,
                   metric: str | None = None, **options: Any) -> tuple[str, dict, str, list[InstancePrediction]]:
    """:func:`predict_video` scored by ``metric`` (default: PoseTrack per-joint mAP)."""
    metric = metric or "posetrack"
    preds = predict_video(model, dataset, codec, device, **options)
    _, result, table = evaluate_records(dataset, prediction_records(preds, metric), metric)
    return metric, result, table, preds


class VideoTask(TopDownTask):
    """Top-down crops of tracked people, trained on clips of ``frames`` = T + 1 consecutive
    labelled frames (:class:`~posenas.data.video.ClipDataset`) and evaluated by propagation."""

    name = "video"

    def __init__(self, frames: int):
        self.frames = frames

    def train_data(self, dataset: PoseDataset, codec: HeatmapCodec, cfg: Any, seed: int) -> ClipDataset:
        return ClipDataset(dataset, codec, cfg.augment, frames=self.frames, seed=seed)

    def predict(self, model: nn.Module, dataset: PoseDataset, codec: HeatmapCodec, device: torch.device,
                **options: Any) -> list:
        return predict_video(model, dataset, codec, device, **options)

    def evaluate(self, model: nn.Module, dataset: PoseDataset, codec: HeatmapCodec, device: torch.device,
                 metric: str | None = None, **options: Any) -> tuple[str, dict, str, list]:
        return evaluate_video(model, dataset, codec, device, metric, **options)


def first_videos(dataset: PoseDataset, count: int | None) -> PoseDataset:
    """The dataset cut to the frames of its first ``count`` videos (None: all)."""
    if count is None:
        return dataset
    keep = set(list(dataset.videos())[:count])
    return replace(dataset, images=[img for img in dataset.images if img.video_id in keep])


def score_video_model(model: nn.Module, dataset: PoseDataset, codec: HeatmapCodec, device: torch.device,
                      metrics: Sequence[str] = ("posetrack", "coco"), **options: Any) -> dict[str, dict]:
    """Each metric's result for one propagation pass (the predictions are made once)."""
    preds = predict_video(model, dataset, codec, device, **options)
    return {m: evaluate_records(dataset, prediction_records(preds, m), m)[1] for m in metrics}
