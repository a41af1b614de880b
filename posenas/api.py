"""The Python API: ``import posenas`` and call the verbs below (the CLI's commands, in-process).

Why a module of its own: users embedding posenas want a model, an image in, poses out, and
the cost of an architecture, without learning which internal module does what. Each verb
is a thin layer over the code the CLI runs (:mod:`posenas.runtime`,
:mod:`posenas.engine.predict`, :mod:`posenas.evaluation`, :mod:`posenas.cost`,
:mod:`posenas.arch`), so both give the same numbers::

    predictor = posenas.load("run/checkpoints/last.pt")        # or an exported model.onnx
    poses = predictor.predict(cv2.imread("person.jpg"), boxes=[[x, y, w, h]])
    posenas.profile("vipnas/s-vipnas-res50")                    # {"params", "macs", "input", ...}
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from posenas.arch import NAMED_MODELS, arch_from_json, load_arch_file, named_arch, output_joints
from posenas.arch import build_model as _build
from posenas.checkpoint import LoadedModel
from posenas.cost import profile_model
from posenas.data.records import ImageRecord, PoseDataset
from posenas.codecs import AssociativeEmbeddingCodec
from posenas.data.bottomup import BottomUpDataset
from posenas.data.topdown import TopDownDataset
from posenas.engine.bottomup import predict_images
from posenas.engine.distributed import resolve_device
from posenas.engine.predict import predict as _predict
from posenas.errors import PosenasError
from posenas.resources import resolve_config
from posenas.runtime import RUNTIMES, load_model

#: Channel orders :meth:`Predictor.predict` accepts: ``bgr`` is what ``cv2.imread`` gives.
CHANNELS = ("bgr", "rgb")


@dataclass
class Pose:
    """One person: ``keypoints`` ``(K, 3)`` as ``x, y, score`` in image pixels (0-based, pixel
    centres at integers), the ``box`` ``x, y, w, h`` it was predicted in, and the instance ``score``."""

    keypoints: np.ndarray
    box: np.ndarray
    score: float


class _ImageCrops(TopDownDataset):
    """The person boxes of one in-memory image, as the prediction path reads datasets."""

    def __init__(self, image_rgb: np.ndarray, dataset: PoseDataset, codec, boxes):
        super().__init__(dataset, codec, augment=None, boxes=boxes)
        self.image_rgb = image_rgb

    def load_image(self, img: ImageRecord) -> np.ndarray:
        return self.image_rgb


class _WholeImage(BottomUpDataset):
    """One in-memory image for a bottom-up model."""

    def __init__(self, image_rgb: np.ndarray, dataset: PoseDataset, codec):
        super().__init__(dataset, codec, augment=None, targets=False)
        self.image_rgb = image_rgb

    def load_image(self, img: ImageRecord) -> np.ndarray:
        return self.image_rgb


class Predictor:
    """A loaded model (PyTorch checkpoint or exported ONNX file) with its schema and codec.

    Attributes: ``schema`` (joint names: ``schema.joints``), ``codec`` (``codec.input_size``),
    ``arch`` and ``model``.
    """

    def __init__(self, loaded: LoadedModel, device: torch.device, flip_test: bool = True):
        self.model, self.arch, self.schema, self.codec = loaded.model.to(device), loaded.arch, loaded.schema, loaded.codec
        self.device, self.flip_test = device, flip_test

    def predict(self, image: np.ndarray, boxes: Sequence[Sequence[float]] | None = None, *,
                channels: str = "bgr", flip_test: bool | None = None) -> list[Pose]:
        """Poses in ``image``, an ``(H, W, 3)`` uint8 array, BGR (as ``cv2.imread`` gives; pass
        ``channels="rgb"`` for RGB). ``boxes``: person boxes ``[x, y, w, h]`` in pixels, one
        pose each, in order; ``None``: the whole image is one person box — or, for a bottom-up
        model (which takes no boxes), every person it finds, best first."""
        if channels not in CHANNELS:
            raise PosenasError(f"channels: {channels!r} not allowed; allowed: {', '.join(CHANNELS)}")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise PosenasError(f"image: expected an (H, W, 3) uint8 array, got shape {image.shape} of {image.dtype}")
        h, w = image.shape[:2]
        rgb = np.ascontiguousarray(image if channels == "rgb" else cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        record = ImageRecord(id=0, file_name="<array>", width=w, height=h)
        dataset = PoseDataset("coco", self.schema, Path("."), [record], Path("<array>"))
        flip = self.flip_test if flip_test is None else flip_test
        if isinstance(self.codec, AssociativeEmbeddingCodec):
            if boxes is not None:
                raise PosenasError("boxes: a bottom-up model finds every person in the image and takes no boxes")
            preds = predict_images(self.model, _WholeImage(rgb, dataset, self.codec), self.codec, self.device,
                                   flip_test=flip, progress=False)
            return [Pose(p.keypoints, np.asarray(p.box, np.float32), p.score) for p in preds]
        if boxes is None:
            boxes = [[0, 0, w, h]]
        crops = _ImageCrops(rgb, dataset, self.codec, [(0, b, 1.0) for b in boxes])
        preds = _predict(self.model, crops, self.codec, self.schema.flip_index, self.device,
                         flip_test=self.flip_test if flip_test is None else flip_test, progress=False)
        return [Pose(p.keypoints, np.asarray(p.box, np.float32), p.score) for p in preds]

    def __repr__(self) -> str:
        h, w = self.codec.input_size
        return f"Predictor({self.arch.space}, {self.schema.name}, input {h}x{w}, {self.device})"


def load(path: str | os.PathLike, runtime: str | None = None, *, device: str = "auto",
         flip_test: bool = True) -> Predictor:
    """A :class:`Predictor` for a checkpoint (``runtime="torch"``) or an exported ``.onnx``
    file (``"onnx"``, ONNX Runtime on the CPU); ``None`` picks by the file suffix."""
    runtime = runtime or ("onnx" if os.fspath(path).endswith(".onnx") else "torch")
    if runtime not in RUNTIMES:
        raise PosenasError(f"runtime: {runtime!r} not allowed; allowed: {', '.join(RUNTIMES)}")
    loaded = load_model(path, runtime)
    return Predictor(loaded, resolve_device(device) if runtime == "torch" else torch.device("cpu"), flip_test)


def load_arch(arch: Any):
    """An architecture dataclass from its JSON (a dict), a file, a shipped name
    (``vipnas/s-vipnas-res50``) or a named model (``simplebaseline-small``)."""
    if hasattr(type(arch), "space") and hasattr(arch, "to_json"):
        return arch
    if isinstance(arch, dict):
        return arch_from_json(arch)
    if isinstance(arch, (str, os.PathLike)):
        if os.fspath(arch) in NAMED_MODELS:
            return named_arch(os.fspath(arch))
        return load_arch_file(resolve_config(arch, "arch"))
    raise PosenasError(f"arch: expected an architecture, its JSON, a file or a name, got {type(arch).__name__}")


def build_model(arch: Any, num_joints: int | None = None) -> nn.Module:
    """A freshly initialised ``nn.Module`` for ``arch`` (anything :func:`load_arch` takes)."""
    arch = load_arch(arch)
    return _build(arch, output_joints(arch, num_joints))


def profile(arch: Any, input_size: tuple[int, int] = (256, 192), latency: bool = False, *,
            num_joints: int | None = None, threads: int | None = None, runs: int = 30) -> dict:
    """``{"params", "macs", "input": [h, w], "latency_ms"}`` of ``arch`` (anything :func:`load_arch`
    takes, or an ``nn.Module``) at ``input_size`` (height, width), as ``posenas profile --json``."""
    model = arch if isinstance(arch, nn.Module) else build_model(arch, num_joints)
    return profile_model(model, tuple(input_size), latency=latency, threads=threads, runs=runs).to_json()


def evaluate(gt: str | os.PathLike | PoseDataset, pred: str | os.PathLike | list, metric: str | None = None, *,
             split: str | None = None, headboxes: str | os.PathLike | None = None) -> dict:
    """Score predictions against ground truth, as ``posenas eval --gt --pred --json``.

    ``gt``: a dataset root (``split`` default val), an annotation file, or a loaded dataset;
    ``pred``: a predictions file or its content (a COCO results list, or PCKh records);
    ``metric``: ``coco`` or ``pckh`` (default: PCKh for MPII data, COCO otherwise);
    ``headboxes``: MPII's ground-truth ``.mat`` (``mpii_gt_val.mat``) for MPII JSON without head boxes.
    """
    from posenas.data.layout import load_dataset
    from posenas.evaluation import evaluate_file, evaluate_records

    dataset = gt if isinstance(gt, PoseDataset) else load_dataset(gt, split, headboxes=headboxes)
    if isinstance(pred, list):
        return evaluate_records(dataset, pred, metric)[1]
    return evaluate_file(dataset, Path(pred), metric)[1]


def compare(runs: Sequence[str | os.PathLike], out: str | os.PathLike, *, quiet: bool = True) -> dict:
    """Compare search and training runs, as ``posenas compare RUN ... --out DIR``: writes
    ``compare.md``, ``compare.json``, ``pareto_gmacs.png`` and ``pareto_latency.png`` into
    ``out`` and returns the JSON (``picks``, ``methods`` with mean / std, every ``points``)."""
    from posenas.comparison import compare as _compare

    return _compare(list(runs), out, quiet=quiet)


__all__ = ["Pose", "Predictor", "load", "load_arch", "build_model", "profile", "evaluate", "compare",
           "resolve_config"]
