"""Top-down crop geometry and training augmentation.

Conventions
-----------
Sizes are ``(height, width)``; points are ``(x, y)``. Image, crop and heatmap coordinates all
put pixel centres at integers (pixel ``i`` covers ``[i - 0.5, i + 0.5)``), which is also what
:func:`cv2.warpAffine` assumes, so :func:`warp` and :func:`transform_points` agree exactly.

**Crop affine: the classic convention** (SimpleBaseline / HRNet ``get_affine_transform``,
MMPose's ``get_warp_matrix(use_udp=False)``, the one MMPose's MSRA heatmap codec uses).
A box with centre ``c``, size ``scale = (w, h)`` pixels and rotation ``θ`` degrees maps onto
an ``(H, W)`` crop by

    q = (W/2, H/2) + diag(W/w, H/h) · R(-θ) · (p - c),      R(θ) = [[cos θ, -sin θ], [sin θ, cos θ]]

so the box centre lands on ``(W/2, H/2)`` and the box's left / right edges on ``x = 0`` /
``x = W``: the centre of the first pixel and half a pixel beyond the last one (the exact fit
would be ``-0.5`` / ``W - 0.5``; this half-pixel offset is the classic convention's). A positive ``θ`` turns the
crop window clockwise on screen (image ``y`` points down), i.e. the person appears turned
counter-clockwise in the crop — SimpleBaseline's sign. The inverse (crop → image, for
back-projection) is computed in closed form, not by solving from three points, so a point
mapped in and back returns to itself to float64 rounding. The heatmap codec
(:mod:`posenas.codecs.heatmap`) pairs this with the classic stride mapping
``x_heatmap = x_input / stride``; the classic flip test (mirror + 1-px shift) belongs to this
convention. Its known cost: the flipped half of a flip test sits 0.25 heatmap px to the right
of the exact position (see :func:`posenas.codecs.heatmap.flip_back`); UDP would remove it
but would not match the 1-px-shift flip test the design references.

Augmentation (SimpleBaseline / HRNet recipe, order: half body → scale / rotation → flip →
colour): every random number a sample uses is drawn from the ``rng`` passed in, a fixed
number of draws in a fixed order, so a sample is a pure function of (image, annotation, rng
state) — :class:`~posenas.data.topdown.TopDownDataset` seeds it per (seed, epoch, index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from posenas.errors import PosenasError
from posenas.keypoints import KeypointSchema

#: Padding of the half-body box around the chosen joints' extent (SimpleBaseline / HRNet).
HALF_BODY_PADDING = 1.5
#: Fewest labelled joints the chosen half must have (else the other half, else no half body).
HALF_BODY_MIN_PART_JOINTS = 2
#: Luma weights for RGB images (ITU-R BT.601), used by the saturation / contrast jitter.
_LUMA_RGB = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# --------------------------------------------------------------------------- geometry


def box_to_center_scale(box_xywh, aspect: float, padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """Centre ``(x, y)`` and scale ``(w, h)`` in pixels of the crop window for a person box.

    The box is grown (never shrunk) along one axis to the input's aspect ratio ``aspect =
    W / H``, then both sides are multiplied by ``padding`` for context. The centre is
    ``(x + w/2, y + h/2)`` as in SimpleBaseline / MMPose. Degenerate boxes (a single joint,
    a zero-size detection) are widened to 1 px first so the crop stays finite.
    """
    x, y, w, h = (float(v) for v in np.asarray(box_xywh, dtype=np.float64).reshape(4))
    if not aspect > 0:
        raise PosenasError(f"box_to_center_scale: aspect must be > 0, got {aspect}")
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float64)
    w, h = max(w, 1.0), max(h, 1.0)
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    return center, np.array([w, h], dtype=np.float64) * float(padding)


def affine_matrices(centers, scales_wh, rotations_deg, output_size_hw, inverse: bool = False) -> np.ndarray:
    """Vectorised :func:`affine_matrix`: ``(N, 2, 3)`` float64 for N boxes (arguments broadcast)."""
    c = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    s = np.asarray(scales_wh, dtype=np.float64).reshape(-1, 2)
    r = np.asarray(rotations_deg, dtype=np.float64).reshape(-1)
    n = max(len(c), len(s), len(r))
    c, s, r = (np.broadcast_to(a, (n,) + a.shape[1:]) for a in (c, s, r))
    out_h, out_w = (float(v) for v in output_size_hw)
    if np.any(s <= 0):
        raise PosenasError(f"affine_matrix: scale must be > 0, got {s[np.any(s <= 0, axis=1)][0].tolist()}")
    theta = np.deg2rad(r)
    cos, sin = np.cos(theta), np.sin(theta)
    kx, ky = out_w / s[:, 0], out_h / s[:, 1]
    out_c = np.array([out_w * 0.5, out_h * 0.5])
    m = np.empty((n, 2, 3), dtype=np.float64)
    if not inverse:
        # q = C + K R(-θ) (p - c), R(-θ) = [[cos, sin], [-sin, cos]]
        m[:, 0, 0], m[:, 0, 1] = kx * cos, kx * sin
        m[:, 1, 0], m[:, 1, 1] = -ky * sin, ky * cos
        src, dst = c, np.broadcast_to(out_c, (n, 2))
    else:
        # p = c + R(θ) K⁻¹ (q - C)
        m[:, 0, 0], m[:, 0, 1] = cos / kx, -sin / ky
        m[:, 1, 0], m[:, 1, 1] = sin / kx, cos / ky
        src, dst = np.broadcast_to(out_c, (n, 2)), c
    m[:, :, 2] = dst - np.einsum("nij,nj->ni", m[:, :, :2], src)
    return m


def affine_matrix(center, scale_wh, rotation_deg: float, output_size_hw, inverse: bool = False) -> np.ndarray:
    """The ``(2, 3)`` float64 matrix mapping image → crop (or crop → image with ``inverse``).

    See the module docstring for the exact convention.
    """
    return affine_matrices(center, scale_wh, rotation_deg, output_size_hw, inverse)[0]


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The ``(2, 3)`` affine ``outer ∘ inner`` (apply ``inner`` first)."""
    out = np.empty((2, 3), dtype=np.float64)
    out[:, :2] = outer[:, :2] @ inner[:, :2]
    out[:, 2] = outer[:, :2] @ inner[:, 2] + outer[:, 2]
    return out


def hflip_matrix(width: int) -> np.ndarray:
    """Horizontal mirror of an image ``width`` pixels wide: ``x → width - 1 - x`` (pixel-exact)."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0]])


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a ``(2, 3)`` affine."""
    a = np.linalg.inv(np.asarray(matrix, dtype=np.float64)[:, :2])
    return np.concatenate([a, -(a @ matrix[:, 2])[:, None]], axis=1)


def warp(image: np.ndarray, matrix: np.ndarray, output_size_hw) -> np.ndarray:
    """Crop ``image`` with the image → crop ``matrix`` (bilinear, black outside the image)."""
    h, w = (int(v) for v in output_size_hw)
    return cv2.warpAffine(
        image,
        np.asarray(matrix, dtype=np.float64),
        (w, h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a ``(2, 3)`` affine to ``(K, 2)`` points (float64 out)."""
    p = np.asarray(points, dtype=np.float64)[..., :2]
    m = np.asarray(matrix, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


# --------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation (SimpleBaseline / HRNet defaults).

    ``scale_factor``: the crop scale is multiplied by ``clip(1 + f·N(0,1), 1-f, 1+f)``.
    ``rotation``: with probability ``rotation_prob`` the crop turns by
    ``clip(rotation·N(0,1), -2·rotation, 2·rotation)`` degrees (SimpleBaseline's clipped normal).
    ``flip``: horizontal mirror with probability 0.5, left/right joints swapped by the schema's
    ``flip_index``. ``half_body_prob``: with at least ``half_body_min_joints`` labelled joints,
    the box becomes the extent of the upper body (PNFS P=3 head part + upper limb part) or
    the lower body (lower limb part), chosen with equal odds, padded to the input aspect and
    × 1.5. ``colour_jitter``: brightness, contrast and saturation factors each uniform in
    ``[1 - j, 1 + j]``. ``enabled=False`` turns everything off (a plain centred crop).
    """

    scale_factor: float = 0.30
    rotation: float = 40.0
    rotation_prob: float = 0.6
    flip: bool = True
    half_body_prob: float = 0.3
    half_body_min_joints: int = 8
    colour_jitter: float = 0.2
    enabled: bool = True

    def __post_init__(self):
        def number(name, lo, hi, hi_open=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise PosenasError(f"config.augment.{name}: expected a number, got {v!r}")
            if v < lo or v > hi or (hi_open and v >= hi):
                bound = f"[{lo}, {hi})" if hi_open else f"[{lo}, {hi}]"
                raise PosenasError(f"config.augment.{name}: expected a value in {bound}, got {v}")

        number("scale_factor", 0.0, 1.0, hi_open=True)
        number("rotation", 0.0, 180.0)
        number("rotation_prob", 0.0, 1.0)
        number("half_body_prob", 0.0, 1.0)
        number("colour_jitter", 0.0, 1.0, hi_open=True)
        for name in ("flip", "enabled"):
            if not isinstance(getattr(self, name), bool):
                raise PosenasError(f"config.augment.{name}: expected true or false, got {getattr(self, name)!r}")
        n = self.half_body_min_joints
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PosenasError(f"config.augment.half_body_min_joints: expected an integer >= 1, got {n!r}")


def colour_jitter(image: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """Scale brightness, contrast and saturation of an RGB uint8 image (factor 1 = unchanged).

    Brightness multiplies; contrast blends with the image's mean luma; saturation blends
    each pixel with its own luma (torchvision's ``ColorJitter`` definitions, fixed order).
    """
    x = image.astype(np.float32)
    x *= np.float32(brightness)
    if contrast != 1.0:
        mean = float((x @ _LUMA_RGB).mean())
        x *= np.float32(contrast)
        x += np.float32((1.0 - contrast) * mean)
    if saturation != 1.0:
        gray = (x @ _LUMA_RGB)[..., None]
        x *= np.float32(saturation)
        x += np.float32(1.0 - saturation) * gray
    np.clip(x, 0.0, 255.0, out=x)
    return np.rint(x, out=x).astype(np.uint8)


@dataclass
class TransformedSample:
    """One top-down crop. ``keypoints`` are in crop coordinates, ``v = 0`` (and x = y = 0)
    for joints that are unlabelled or fall outside the crop's pixel area.

    ``center`` / ``scale`` / ``rotation`` describe the crop window in the original image;
    ``matrix`` is the full image → crop affine. When ``flipped`` the crop is the window
    ``(W-1-cx, cy)``, ``scale``, ``rotation`` of the mirrored image (joints swapped), i.e.
    ``matrix = affine_matrix(...) ∘ hflip_matrix(image_width)``; back-project such a crop
    with ``invert_affine(matrix)`` rather than from centre / scale / rotation.
    """

    crop: np.ndarray
    keypoints: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    rotation: float
    flipped: bool
    matrix: np.ndarray


class TopDownTransform:
    """Image + person box → fixed-size crop with keypoints in crop coordinates.

    ``augment=None`` (or ``enabled=False``) gives the validation crop: the padded box,
    centred, no rotation, no flip, no colour change. Images are RGB ``(H, W, 3)`` uint8
    (colour jitter's luma weights assume RGB).
    """

    def __init__(
        self,
        input_size_hw,
        schema: KeypointSchema,
        augment: AugmentConfig | None = None,
        padding: float = 1.25,
    ):
        h, w = (int(v) for v in input_size_hw)
        if h <= 0 or w <= 0:
            raise PosenasError(f"input size must be two positive integers (height, width), got {input_size_hw}")
        if not padding > 0:
            raise PosenasError(f"padding must be > 0, got {padding}")
        self.input_size = (h, w)
        self.schema = schema
        self.augment = augment if augment is not None and augment.enabled else None
        self.padding = float(padding)
        self.flip_index = np.asarray(schema.flip_index, dtype=np.int64)
        groups = schema.part_groups(3)
        by_name = {g.name: g.joints for g in groups}
        self.upper_joints = np.array(sorted(by_name["head part"] + by_name["upper limb part"]), dtype=np.int64)
        self.lower_joints = np.array(sorted(by_name["lower limb part"]), dtype=np.int64)

    @property
    def aspect(self) -> float:
        return self.input_size[1] / self.input_size[0]

    def half_body_box(self, keypoints: np.ndarray, upper_first: bool) -> np.ndarray | None:
        """``x, y, w, h`` extent of the labelled upper (or lower) body joints, or None if too few."""
        labelled = keypoints[:, 2] > 0
        order = (self.upper_joints, self.lower_joints) if upper_first else (self.lower_joints, self.upper_joints)
        for part in order:
            pts = keypoints[part[labelled[part]], :2]
            if len(pts) >= HALF_BODY_MIN_PART_JOINTS:
                lo, hi = pts.min(0), pts.max(0)
                return np.array([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]], dtype=np.float64)
        return None

    def __call__(self, image: np.ndarray, keypoints: np.ndarray, box_xywh, rng: np.random.Generator) -> TransformedSample:
        if image.ndim != 3 or image.shape[2] != 3:
            raise PosenasError(f"expected an (H, W, 3) image, got shape {image.shape}")
        kp = np.asarray(keypoints, dtype=np.float64)
        if kp.shape != (self.schema.num_joints, 3):
            raise PosenasError(
                f"expected keypoints of shape ({self.schema.num_joints}, 3) for schema {self.schema.name!r}, "
                f"got {kp.shape}"
            )
        center, scale = box_to_center_scale(box_xywh, self.aspect, self.padding)
        rotation, flipped, jitter = 0.0, False, None
        aug = self.augment
        if aug is not None:
            # Fixed draws in a fixed order, whatever branches are taken.
            u = rng.random(4)  # half body?, upper or lower?, rotate?, flip?
            normal = rng.standard_normal(2)  # scale, rotation
            factors = rng.uniform(1.0 - aug.colour_jitter, 1.0 + aug.colour_jitter, 3)
            if (
                aug.half_body_prob > 0
                and u[0] < aug.half_body_prob
                and int((kp[:, 2] > 0).sum()) >= aug.half_body_min_joints
            ):
                box = self.half_body_box(kp, upper_first=u[1] < 0.5)
                if box is not None:
                    center, scale = box_to_center_scale(box, self.aspect, HALF_BODY_PADDING)
            sf = aug.scale_factor
            scale = scale * float(np.clip(1.0 + sf * normal[0], 1.0 - sf, 1.0 + sf))
            if aug.rotation > 0 and u[2] < aug.rotation_prob:
                rotation = float(np.clip(aug.rotation * normal[1], -2 * aug.rotation, 2 * aug.rotation))
            flipped = bool(aug.flip and u[3] < 0.5)
            if aug.colour_jitter > 0:
                jitter = factors

        if flipped:
            mirror = hflip_matrix(image.shape[1])
            mirrored_center = transform_points(center[None], mirror)[0]
            matrix = compose(affine_matrix(mirrored_center, scale, rotation, self.input_size), mirror)
        else:
            matrix = affine_matrix(center, scale, rotation, self.input_size)

        crop = warp(image, matrix, self.input_size)
        if jitter is not None:
            crop = colour_jitter(crop, *jitter)

        out = np.zeros((self.schema.num_joints, 3), dtype=np.float32)
        xy = transform_points(kp[:, :2], matrix)
        h, w = self.input_size
        inside = (
            (kp[:, 2] > 0)
            & (xy[:, 0] >= -0.5) & (xy[:, 0] < w - 0.5)
            & (xy[:, 1] >= -0.5) & (xy[:, 1] < h - 0.5)
        )
        out[inside, :2] = xy[inside]
        out[inside, 2] = kp[inside, 2]
        if flipped:
            out = out[self.flip_index]
        return TransformedSample(
            crop=crop,
            keypoints=out,
            center=center,
            scale=scale,
            rotation=rotation,
            flipped=flipped,
            matrix=matrix,
        )
