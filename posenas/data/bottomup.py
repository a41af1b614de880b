"""Bottom-up torch dataset: whole images with every person's heatmaps, tag targets and an ignore mask.

Geometry is :mod:`posenas.data.transforms`' (pixel centres at integers, the classic affine):
the image is fitted into the model input keeping its aspect ratio (the long side fills the
input, the rest is black padding), so validation sees each whole image, letterboxed.

Training augmentation (HigherHRNet's recipe, Cheng et al. CVPR 2020): a random zoom
``s ~ U(min_scale, max_scale)`` (s > 1 makes people larger), rotation ``U(-max_rotation,
max_rotation)`` degrees, a translation of the window centre by ``U(-t, t)`` of the window
size per axis, and a horizontal flip (joints swapped by the schema) with probability
``flip_prob`` — the draws fixed in number and order, from the rng passed in, so an item is a
pure function of (seed, epoch, index) as in :mod:`posenas.data.topdown`.

Targets (per output resolution of the model, from :class:`~posenas.codecs.associative.
AssociativeEmbeddingCodec`): heatmaps of every non-crowd person with a labelled joint, the
tag-target joint indices, and a **mask** that is 0 where the loss must not look: crowd
regions and people annotated without any joint (COCO's ``num_keypoints: 0``), as HigherHRNet
masks them — by their segmentation (pycocotools), or by their box where a file has none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from posenas.codecs.associative import AssociativeEmbeddingCodec
from posenas.data.images import DataError
from posenas.data.records import ImageRecord, Person, PoseDataset
from posenas.data.seeded import SeededDataset
from posenas.data.topdown import normalize_image
from posenas.data.transforms import (affine_matrix, box_to_center_scale, compose, hflip_matrix, invert_affine,
                                     transform_points, warp)
from posenas.errors import PosenasError
from posenas.keypoints import KeypointSchema


@dataclass(frozen=True)
class BottomUpAugment:
    """HigherHRNet's whole-image augmentation (its COCO defaults); ``enabled=False``: the letterboxed image."""

    min_scale: float = 0.75
    max_scale: float = 1.5
    max_rotation: float = 30.0
    max_translate: float = 40.0 / 512.0  # HigherHRNet: 40 px of a 512 input
    flip_prob: float = 0.5
    enabled: bool = True

    def __post_init__(self) -> None:
        def number(name: str, lo: float, hi: float) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                raise PosenasError(f"config.bottomup.{name}: expected a number in [{lo:g}, {hi:g}], got {v!r}")

        number("min_scale", 0.05, 20.0)
        number("max_scale", 0.05, 20.0)
        if self.min_scale > self.max_scale:
            raise PosenasError(f"config.bottomup.min_scale: {self.min_scale} is above max_scale {self.max_scale}")
        number("max_rotation", 0.0, 180.0)
        number("max_translate", 0.0, 1.0)
        number("flip_prob", 0.0, 1.0)
        if not isinstance(self.enabled, bool):
            raise PosenasError(f"config.bottomup.enabled: expected true or false, got {self.enabled!r}")


@dataclass
class WholeImageSample:
    """One transformed image: ``image`` ``(H, W, 3)`` RGB at the input size, ``people`` ``(M, K, 3)``
    in input pixels (``v = 0`` outside the input or unlabelled), their ``areas`` in input pixels²,
    ``ignore`` uint8 at the *original* image size (1 = masked out, see :meth:`mask`), and ``matrix``
    image → input (back-project with :func:`~posenas.data.transforms.invert_affine`)."""

    image: np.ndarray
    people: np.ndarray
    areas: np.ndarray
    ignore: np.ndarray
    matrix: np.ndarray
    flipped: bool

    def mask(self, size_hw: tuple[int, int]) -> np.ndarray:
        """The ``(h, w)`` float32 loss mask at a heatmap size (0 = ignore): the ignore region warped
        to each heatmap pixel's centre under the classic stride mapping ``x_map = x_input / stride``."""
        h, w = size_hw
        if not self.ignore.any():
            return np.ones((h, w), np.float32)
        h_in, w_in = self.image.shape[:2]
        to_map = np.array([[w / w_in, 0.0, 0.0], [0.0, h / h_in, 0.0]])
        covered = warp(self.ignore * np.uint8(255), compose(to_map, self.matrix), (h, w))
        return (covered <= 127).astype(np.float32)


def ignore_region(people: list[Person], height: int, width: int) -> np.ndarray:
    """``(height, width)`` uint8: 1 over crowds and people with no labelled joint (segmentation, else box)."""
    out = np.zeros((height, width), np.uint8)
    for p in people:
        if not (p.iscrowd or p.num_labelled == 0):
            continue
        if p.segmentation is not None:
            out |= segmentation_mask(p.segmentation, height, width)
        elif p.bbox is not None:
            x, y, w, h = (float(v) for v in p.bbox)
            x0, y0 = max(0, int(math.floor(x))), max(0, int(math.floor(y)))
            x1, y1 = min(width, int(math.ceil(x + w))), min(height, int(math.ceil(y + h)))
            out[y0:y1, x0:x1] = 1
    return out


def segmentation_mask(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """COCO polygons or RLE → ``(height, width)`` uint8 mask, via pycocotools (as COCO's own tools rasterise)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):  # uncompressed RLE (COCO crowds)
        rle = mask_utils.frPyObjects(segmentation, *segmentation["size"])
    else:
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
    m = mask_utils.decode(rle)
    if m.shape != (height, width):  # an RLE made for another image size: rescale it
        m = cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST)
    return m.astype(np.uint8)


class WholeImageTransform:
    """Image + all its people → the model input, people in input pixels, and the ignore mask."""

    def __init__(self, input_size_hw, schema: KeypointSchema, augment: BottomUpAugment | None = None):
        h, w = (int(v) for v in input_size_hw)
        if h <= 0 or w <= 0:
            raise PosenasError(f"input size must be two positive integers (height, width), got {input_size_hw}")
        self.input_size = (h, w)
        self.schema = schema
        self.augment = augment if augment is not None and augment.enabled else None
        self.flip_index = np.asarray(schema.flip_index, dtype=np.int64)

    def matrix(self, width: int, height: int, rng: np.random.Generator | None) -> tuple[np.ndarray, bool]:
        """The image → input affine (letterbox, then the random zoom / rotation / shift / flip)."""
        h_in, w_in = self.input_size
        center, scale = box_to_center_scale([0.0, 0.0, width, height], w_in / h_in, padding=1.0)
        rotation, flipped = 0.0, False
        aug = self.augment
        if aug is not None and rng is not None:
            u = rng.random(5)  # zoom, rotation, shift x, shift y, flip: fixed draws in a fixed order
            zoom = aug.min_scale + (aug.max_scale - aug.min_scale) * u[0]
            scale = scale / zoom
            rotation = float((2 * u[1] - 1) * aug.max_rotation)
            center = center + (2 * u[2:4] - 1) * aug.max_translate * scale
            flipped = bool(u[4] < aug.flip_prob)
        if flipped:
            mirror = hflip_matrix(width)
            mirrored = transform_points(center[None], mirror)[0]
            return compose(affine_matrix(mirrored, scale, rotation, self.input_size), mirror), True
        return affine_matrix(center, scale, rotation, self.input_size), False

    def __call__(self, image: np.ndarray, people: list[Person], rng: np.random.Generator | None) -> WholeImageSample:
        if image.ndim != 3 or image.shape[2] != 3:
            raise PosenasError(f"expected an (H, W, 3) image, got shape {image.shape}")
        height, width = image.shape[:2]
        k = self.schema.num_joints
        matrix, flipped = self.matrix(width, height, rng)
        out = warp(image, matrix, self.input_size)
        ignore = ignore_region(people, height, width)

        kept = [p for p in people if not p.iscrowd and p.num_labelled > 0]
        for p in kept:
            if p.keypoints.shape != (k, 3):
                raise PosenasError(f"person {p.id}: expected keypoints of shape ({k}, 3) for schema "
                                   f"{self.schema.name!r}, got {p.keypoints.shape}")
        kp = np.stack([p.keypoints for p in kept]).astype(np.float64) if kept else np.zeros((0, k, 3))
        xy = transform_points(kp[..., :2], matrix) if kept else np.zeros((0, k, 2))
        h_in, w_in = self.input_size
        inside = ((kp[..., 2] > 0) & (xy[..., 0] >= -0.5) & (xy[..., 0] < w_in - 0.5)
                  & (xy[..., 1] >= -0.5) & (xy[..., 1] < h_in - 0.5))
        joints = np.zeros((len(kept), k, 3), np.float32)
        joints[..., :2] = np.where(inside[..., None], xy, 0.0)
        joints[..., 2] = np.where(inside, kp[..., 2], 0.0)
        if flipped:
            joints = joints[:, self.flip_index]
        gain = abs(float(np.linalg.det(matrix[:, :2])))  # area scale, image → input
        areas = np.array([(p.area if p.area is not None else float(np.prod(p.box()[2:]))) * gain for p in kept],
                         np.float32)
        return WholeImageSample(out, joints, areas, ignore, matrix, flipped)


class BottomUpDataset(SeededDataset):
    """Whole images of a :class:`PoseDataset` for bottom-up training and evaluation.

    Items: ``image`` (3, H, W); per model output resolution ``i``: ``heatmaps_i`` (K, h_i, w_i) and
    ``mask_i`` (h_i, w_i) float32; ``joints`` (max_people, K, 2) int64 (tag targets at the first
    resolution); ``matrix`` (2, 3) float64 input → image; ``image_id``. ``augment=None``: letterboxed
    (validation); ``targets=False``: no targets (prediction). Deterministic per (seed, epoch, index)
    (:mod:`posenas.data.seeded`).
    """

    def __init__(self, dataset: PoseDataset, codec: AssociativeEmbeddingCodec, augment: BottomUpAugment | None,
                 seed: int = 0, images: list[ImageRecord] | None = None, targets: bool = True):
        super().__init__(dataset, seed)
        self.codec = codec
        self.transform = WholeImageTransform(codec.input_size, dataset.schema, augment)
        self.images = list(dataset.images if images is None else images)
        self.targets = targets  # False: images and geometry only (prediction)

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, index: int) -> WholeImageSample:
        """The transformed image ``index`` of this epoch, before encoding."""
        img = self.images[index]
        try:
            return self.transform(self.load_image(img), img.people, self.rng(index))
        except DataError:
            raise
        except PosenasError as e:  # one line also from a DataLoader worker
            raise DataError(f"{self.dataset.image_path(img)}: {e}") from None

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.images):
            raise IndexError(f"BottomUpDataset index {index} out of range for {len(self.images)} images")
        s = self.sample(index)
        item = {"image": torch.from_numpy(normalize_image(s.image)),
                "matrix": torch.from_numpy(invert_affine(s.matrix)), "image_id": int(self.images[index].id)}
        if not self.targets:
            return item
        heatmaps, joints = self.codec.encode(s.people, s.areas)
        item["joints"] = torch.from_numpy(joints)
        for i, (hm, (h, w)) in enumerate(zip(heatmaps, self.codec.heatmap_sizes)):
            item[f"heatmaps_{i}"] = torch.from_numpy(hm)
            item[f"mask_{i}"] = torch.from_numpy(s.mask((h, w)))
        return item
