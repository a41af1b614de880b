"""Top-down torch dataset: one person crop, its heatmap targets and its geometry per item.

Each item is a pure function of (seed, epoch, index): see :mod:`posenas.data.seeded`.
"""

from __future__ import annotations

import traceback
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from posenas.codecs.heatmap import HeatmapCodec
from posenas.data.images import DataError
from posenas.data.records import ImageRecord, PoseDataset
from posenas.data.seeded import SeededDataset
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


class TopDownDataset(SeededDataset):
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
        super().__init__(dataset, seed)
        self.codec = codec
        self.augment = augment
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

    def __len__(self) -> int:
        return len(self._items)

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
