"""Top-down, bottom-up or video: what a training run's data, targets, loss and evaluation are.

The training loop (:mod:`posenas.engine.train`) and every objective on it are the same for
both pipelines; a task object supplies what differs, chosen by the architecture
(:func:`task_for`: an arch whose ``bottom_up`` is true is a bottom-up model):

- **top-down** — person crops, the MSRA heatmap codec, SimpleBaseline's weighted MSE,
  evaluation on GT boxes (:mod:`posenas.engine.predict`);
- **bottom-up** — whole images, the associative-embedding codec, masked heatmap MSE at each
  output resolution + pull / push tag losses (HigherHRNet's), evaluation on whole images
  with no boxes (:mod:`posenas.engine.bottomup`);
- **video** — top-down crops of tracked people, clips of T + 1 frames, evaluation by
  propagation along each track (:mod:`posenas.engine.video`).

A batch is a dict of tensors (``image`` always); :meth:`Task.loss` reads the rest.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from posenas.codecs.associative import AssociativeEmbeddingCodec, ae_loss, masked_heatmap_loss
from posenas.codecs.heatmap import HeatmapCodec
from posenas.cost import check_output_stride
from posenas.data.bottomup import BottomUpDataset
from posenas.data.records import PoseDataset
from posenas.data.topdown import TopDownDataset
from posenas.errors import PosenasError
from posenas.models.exits import ExitOutputs


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """SimpleBaseline's joints MSE: 0.5 × mean of target-weighted squared errors."""
    return 0.5 * (weight[:, :, None, None] * (pred - target) ** 2).mean()


def model_loss(model: nn.Module, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """:func:`heatmap_loss` of a model's training output. A model whose training output has
    other channels than the joints (PNFS: each body part's maps, a joint in several parts
    repeated) names the joint of each channel in ``output_joints``; targets follow it."""
    inner = unwrap(model)
    joints = getattr(inner, "output_joints", None)
    if joints is not None and inner.training:
        index = joints.to(target.device)
        target, weight = target[:, index], weight[:, index]
    return heatmap_loss(pred, target, weight)


def as_outputs(output: Any) -> tuple[torch.Tensor, ...]:
    """A model's output as a tuple of tensors: bottom-up models may give one per resolution."""
    return tuple(output) if isinstance(output, (tuple, list)) else (output,)


class Task(Protocol):
    name: str

    def make_codec(self, cfg: Any, model: nn.Module) -> Any: ...

    def check_model(self, model: nn.Module, codec: Any, where: str) -> None: ...

    def train_data(self, dataset: PoseDataset, codec: Any, cfg: Any, seed: int) -> torch.utils.data.Dataset: ...

    def loss(self, model: nn.Module, output: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def predict(self, model: nn.Module, dataset: PoseDataset, codec: Any, device: torch.device,
                **options: Any) -> list: ...

    def evaluate(self, model: nn.Module, dataset: PoseDataset, codec: Any, device: torch.device,
                 metric: str | None = None, **options: Any) -> tuple[str, dict, str, list]: ...


class TopDownTask:
    """Person crops and the MSRA heatmap codec (the pipeline every search so far trains)."""

    name = "topdown"

    def make_codec(self, cfg: Any, model: nn.Module | None = None) -> HeatmapCodec:
        h, w = cfg.data.input_size
        return HeatmapCodec(input_size=(h, w), heatmap_size=(h // 4, w // 4), sigma=cfg.data.sigma,
                            decode_with=cfg.data.decode)

    def check_model(self, model: nn.Module, codec: HeatmapCodec, where: str = "config.data.input_size") -> None:
        check_output_stride(model, codec.input_size, codec.input_size[0] // codec.heatmap_size[0], where)

    def train_data(self, dataset: PoseDataset, codec: HeatmapCodec, cfg: Any, seed: int) -> TopDownDataset:
        return TopDownDataset(dataset, codec, cfg.augment, seed=seed)

    def loss(self, model: nn.Module, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model_loss(model, output, batch["target"], batch["target_weight"])

    def predict(self, model: nn.Module, dataset: PoseDataset, codec: HeatmapCodec, device: torch.device,
                **options: Any) -> list:
        """One pose per GT box, or per detection in ``boxes``."""
        from posenas.engine.predict import predict_dataset

        return predict_dataset(model, dataset, codec, device, **options)

    def evaluate(self, model: nn.Module, dataset: PoseDataset, codec: HeatmapCodec, device: torch.device,
                 metric: str | None = None, **options: Any) -> tuple[str, dict, str, list]:
        from posenas.engine.predict import evaluate_model

        return evaluate_model(model, dataset, codec, device, metric, **options)


class BottomUpTask:
    """Whole images and associative embedding; loss weights from ``config.bottomup``."""

    name = "bottomup"

    def __init__(self, heatmap_weight: float = 1.0, pull_weight: float = 1e-3, push_weight: float = 1e-3):
        self.heatmap_weight, self.pull_weight, self.push_weight = heatmap_weight, pull_weight, push_weight

    @classmethod
    def from_config(cls, cfg: Any) -> "BottomUpTask":
        b = cfg.bottomup
        return cls(b.heatmap_weight, b.pull_weight, b.push_weight)

    def make_codec(self, cfg: Any, model: nn.Module) -> AssociativeEmbeddingCodec:
        h, w = cfg.data.input_size
        b = cfg.bottomup
        strides = getattr(unwrap(model), "output_strides", (4,))
        return AssociativeEmbeddingCodec(
            input_size=(h, w), heatmap_sizes=tuple((h // s, w // s) for s in strides), sigma=cfg.data.sigma,
            scale_aware_sigma=b.scale_aware_sigma, max_people=b.max_people,
            detection_threshold=b.detection_threshold, tag_threshold=b.tag_threshold, nms_kernel=b.nms_kernel,
            adjust=b.adjust, refine=b.refine)

    def check_model(self, model: nn.Module, codec: AssociativeEmbeddingCodec,
                    where: str = "config.data.input_size") -> None:
        check_bottomup_outputs(model, codec, where)

    def train_data(self, dataset: PoseDataset, codec: AssociativeEmbeddingCodec, cfg: Any,
                   seed: int) -> BottomUpDataset:
        from posenas.evaluation import default_metric

        if default_metric(dataset) != "coco":  # before any step: validation would fail only at the end
            raise PosenasError(f"{dataset.source}: a bottom-up model is scored by COCO OKS AP on whole images; "
                               f"{dataset.format} data is scored by PCKh per GT person (train a top-down model)")
        defaults = type(cfg.augment)()
        if cfg.augment != defaults:
            changed = sorted(k for k in vars(defaults) if getattr(cfg.augment, k) != getattr(defaults, k))
            raise PosenasError(f"config.augment.{changed[0]}: is top-down crop augmentation, unused by a bottom-up "
                               "model; set whole-image augmentation in config.bottomup.augment")
        return BottomUpDataset(dataset, codec, cfg.bottomup.augment, seed=seed)

    def loss(self, model: nn.Module, output: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Masked heatmap MSE at every resolution + pull + push; a multi-exit model's
        (:class:`~posenas.models.exits.ExitOutputs`): the sum of that over its exits."""
        if isinstance(output, ExitOutputs):
            return sum((self.loss(model, out, batch) for out in output), torch.zeros((), device=output[0].device))
        outputs = as_outputs(output)
        k = batch["heatmaps_0"].shape[1]
        total = torch.zeros((), device=outputs[0].device)
        for i, out in enumerate(outputs):
            total = total + self.heatmap_weight * masked_heatmap_loss(out[:, :k], batch[f"heatmaps_{i}"],
                                                                      batch[f"mask_{i}"])
        pull, push = ae_loss(outputs[0][:, k:2 * k], batch["joints"])
        return total + self.pull_weight * pull.mean() + self.push_weight * push.mean()

    def predict(self, model: nn.Module, dataset: PoseDataset, codec: AssociativeEmbeddingCodec,
                device: torch.device, boxes: Any = None, **options: Any) -> list:
        """Every person found in each whole image (no boxes: a bottom-up model needs no detector)."""
        from posenas.engine.bottomup import predict_whole_images

        if boxes is not None:
            raise PosenasError("a bottom-up model finds every person in whole images and takes no person boxes; "
                               "drop --boxes")
        return predict_whole_images(model, dataset, codec, device, **options)

    def evaluate(self, model: nn.Module, dataset: PoseDataset, codec: AssociativeEmbeddingCodec,
                 device: torch.device, metric: str | None = None, boxes: Any = None,
                 **options: Any) -> tuple[str, dict, str, list]:
        from posenas.engine.bottomup import evaluate_bottomup

        if boxes is not None:
            raise PosenasError("a bottom-up model finds every person in whole images and takes no person boxes; "
                               "drop --boxes")
        return evaluate_bottomup(model, dataset, codec, device, metric, **options)


TOP_DOWN = TopDownTask()


def is_bottom_up(arch: Any) -> bool:
    """Does the arch predict every person of a whole image (heatmaps + tags)?"""
    return bool(getattr(arch, "bottom_up", False))


def task_for(arch: Any, cfg: Any | None = None) -> Task:
    """The pipeline an architecture trains and evaluates in (a video arch: propagation over
    tracks, :mod:`posenas.engine.video`)."""
    if getattr(arch, "video", False):
        from posenas.engine.video import VideoTask

        return VideoTask(arch.period)
    if not is_bottom_up(arch):
        return TOP_DOWN
    return BottomUpTask.from_config(cfg) if cfg is not None else BottomUpTask()


def task_of_codec(codec: Any, arch: Any = None) -> Task:
    """The pipeline of a loaded checkpoint or ONNX file, by its codec (and arch: a video model's)."""
    if getattr(arch, "video", False):
        return task_for(arch)
    return BottomUpTask() if isinstance(codec, AssociativeEmbeddingCodec) else TOP_DOWN


def check_bottomup_outputs(model: nn.Module, codec: AssociativeEmbeddingCodec, where: str) -> None:
    """A bottom-up model gives, at each codec heatmap size, 2K channels (heatmaps + tags) first, then K."""
    h, w = codec.input_size
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    with torch.no_grad():
        outputs = as_outputs(model(torch.zeros(1, 3, h, w, device=device)))
    model.train(was)
    got = [tuple(o.shape[-2:]) for o in outputs]
    if got != [tuple(s) for s in codec.heatmap_sizes]:
        raise PosenasError(f"{where}: {h}x{w} gives maps of {got}, expected {[list(s) for s in codec.heatmap_sizes]}; "
                           "this model needs sizes divisible by 32")
    channels = [o.shape[1] for o in outputs]
    if channels[0] % 2 or any(c != channels[0] // 2 for c in channels[1:]):
        raise PosenasError(f"{where}: a bottom-up model must give 2K channels (heatmaps, tags) then K per further "
                           f"resolution; this one gives {channels}")
