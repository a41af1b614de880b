"""Top-down torch dataset: one person crop, its heatmap targets and its geometry per item.

Determinism: the augmentation of item ``index`` in epoch ``epoch`` is drawn from
``np.random.default_rng([seed, epoch, index])`` and nothing else — no global NumPy / torch
state, no worker state — so an item is a pure function of (seed, epoch, index) whatever
the DataLoader's worker count, order or resumption point.

The epoch lives in a one-element shared-memory tensor, so ``set_epoch`` reaches
DataLoader workers too, persistent ones included (``persistent_workers=True``): call it
*before* starting the epoch's iteration (``for batch in loader``), as with
``DistributedSampler.set_epoch`` — workers only fetch once the iterator asks them.
"""

from __future__ import annotations

import traceback
from contextlib import contextmanager
from typing import Iterator

import cv2
import numpy as np
import torch

from posenas.codecs.heatmap import HeatmapCodec
from posenas.data.images import DataError, read_image
from posenas.data.records import ImageRecord, PoseDataset
from posenas.data.transforms import AugmentConfig, TopDownTransform
from posenas.errors import PosenasError

#: ImageNet statistics, RGB order (the normalisation every ImageNet-initialised backbone expects).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_NORM_SCALE = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)
_NORM_SHIFT = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


def normalize_image(crop_rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB → ``(3, H, W)`` float32, ImageNet mean/std normalised."""
    x = crop_rgb.astype(np.float32)
    x *= _NORM_SCALE
    x += _NORM_SHIFT
    return np.ascontiguousarray(x.transpose(2, 0, 1))


@contextmanager
def worker_errors_released() -> Iterator[None]:
    """Around iterating a DataLoader with workers: a sample's :class:`DataError` leaves it with
    the loader's workers shut down at once. Why: the re-raised error's traceback holds the
    loader's iterator in a reference cycle; left to the garbage collector, its shutdown waits
    5 s per worker before the command can exit."""
    try:
        yield
    except DataError as e:
        traceback.clear_frames(e.__traceback__)  # frees the iterator now (frames still running are kept)
        raise


class TopDownDataset(torch.utils.data.Dataset):
    """Person crops of a :class:`PoseDataset` for top-down training and evaluation.

    Instances are ``dataset.instances()`` (non-crowd people with at least one labelled
    joint) in order, boxed by ``Person.box()``; or, with ``boxes``, the given detections
    ``(image_id, xywh, score)`` in order, which carry no keypoints (target weights 0,
    ``person_id`` -1). ``augment=None`` gives plain centred crops (validation / test).
    """

    def __init__(
        self,
        dataset: PoseDataset,
        codec: HeatmapCodec,
        augment: AugmentConfig | None,
        seed: int = 0,
        boxes: list[tuple[int, np.ndarray, float]] | None = None,
    ):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise PosenasError(f"seed: expected a non-negative integer, got {seed!r}")
        self.dataset = dataset
        self.codec = codec
        self.augment = augment
        self.seed = int(seed)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.transform = TopDownTransform(codec.input_size, dataset.schema, augment)
        k = dataset.schema.num_joints
        # (image, keypoints (K,3), box xywh, person id, box score)
        self._items: list[tuple[ImageRecord, np.ndarray, np.ndarray, int, float]] = []
        if boxes is None:
            for img, person in dataset.instances():
                kp = np.asarray(person.keypoints, dtype=np.float32)
                self._items.append((img, kp, np.asarray(person.box(), dtype=np.float64), int(person.id), 1.0))
        else:
            by_id = {img.id: img for img in dataset.images}
            empty = np.zeros((k, 3), dtype=np.float32)
            for i, entry in enumerate(boxes):
                try:
                    image_id, box, score = entry
                except (TypeError, ValueError):
                    raise PosenasError(f"boxes[{i}]: expected (image_id, [x, y, w, h], score), got {entry!r}") from None
                if image_id not in by_id:
                    raise PosenasError(f"boxes[{i}]: image id {image_id!r} is not in {dataset.source}")
                b = np.asarray(box, dtype=np.float64).reshape(-1)
                if b.shape != (4,) or not np.isfinite(b).all() or b[2] < 0 or b[3] < 0:
                    raise PosenasError(f"boxes[{i}]: expected a finite box [x, y, w, h] with w, h >= 0, got {box!r}")
                self._items.append((by_id[image_id], empty, b, -1, float(score)))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation ``__getitem__`` draws (see the module docstring)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise PosenasError(f"epoch: expected a non-negative integer, got {epoch!r}")
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def __len__(self) -> int:
        return len(self._items)

    def rng(self, index: int) -> np.random.Generator:
        """The augmentation RNG of item ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def load_image(self, img: ImageRecord) -> np.ndarray:
        """The RGB ``(H, W, 3)`` uint8 image of a record, read from disk (in-memory images: :mod:`posenas.api`)."""
        return cv2.cvtColor(read_image(self.dataset.image_path(img)), cv2.COLOR_BGR2RGB)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self._items):
            raise IndexError(f"TopDownDataset index {index} out of range for {len(self._items)} instances")
        img, keypoints, box, person_id, score = self._items[index]
        try:
            image = self.load_image(img)
            sample = self.transform(image, keypoints, box, self.rng(index))
        except DataError:
            raise
        except PosenasError as e:  # as DataError: one line also when a DataLoader worker raised it
            raise DataError(str(e)) from None
        target, weight = self.codec.encode(sample.keypoints)
        return {
            "image": torch.from_numpy(normalize_image(sample.crop)),
            "target": torch.from_numpy(target),
            "target_weight": torch.from_numpy(weight),
            "center": torch.from_numpy(sample.center.astype(np.float32)),
            "scale": torch.from_numpy(sample.scale.astype(np.float32)),
            "rotation": float(sample.rotation),
            "box": torch.from_numpy(box.astype(np.float32)),  # the person / detection box, x y w h
            "image_id": int(img.id),
            "person_id": person_id,
            "box_score": score,
        }
