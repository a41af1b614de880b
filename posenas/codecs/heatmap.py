"""MSRA heatmap codec (SimpleBaseline / HRNet / MMPose's ``MSRAHeatmap``) and its helpers.

Geometry follows the classic convention of :mod:`posenas.data.transforms`: input and
heatmap pixel centres are at integers and ``x_heatmap = x_input / stride`` with
``stride = input / heatmap`` per axis.

**Encode.** Each labelled joint becomes an unnormalised Gaussian ``exp(-d² / 2σ²)``
(σ in heatmap pixels), truncated, as MSRA does, to pixels within ``3σ`` of the nearest
pixel. The Gaussian is centred on the joint's *sub-pixel* position rather than on the
rounded one (MSRA rounds): the value is 1 at an integer position and at least
``exp(-0.25/σ²)`` (0.94 for σ = 2) at the nearest pixel otherwise. Centring exactly is what
lets the quarter-pixel decoder below recover the position to within 0.25 heatmap px; with
MSRA's rounding the two neighbours of the peak are equal and the error reaches 0.5 px.

**Decode.** Argmax per channel, then a quarter-pixel step along each axis towards the
higher neighbour (SimpleBaseline's ``get_final_preds``), back to input pixels by × stride.

**DARK decode** (``decode="dark"``; Zhang et al., "Distribution-Aware Coordinate
Representation for Human Pose Estimation", CVPR 2020, MMPose's ``use_dark``): the heatmap is
smoothed by a Gaussian of the codec's σ (rescaled to keep its maximum), and the log-heatmap's
peak found by one Newton step from the argmax, ``-H⁻¹ ∇``, with central differences. At low
heatmap resolution (the proxy tier's 24×16 maps) the quarter-pixel step leaves up to 0.25 px
of error, which is most of an eye's OKS tolerance there.

**Flip test.** :func:`flip_back` mirrors, swaps left/right channels and shifts one pixel to
the right (the classic recipe). Under this geometry the exact correction would be 0.75 px,
so the flipped half carries a +0.25 heatmap-px bias in x (averaged: +0.125 px).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from posenas.data.transforms import affine_matrices
from posenas.errors import PosenasError

#: MSRA truncates the Gaussian at this many σ from its (rounded) centre.
TRUNCATE_SIGMAS = 3.0

_FIELDS = ("type", "input_size", "heatmap_size", "sigma", "decode")
#: How :meth:`HeatmapCodec.decode` refines the argmax.
DECODERS = ("quarter", "dark")


def _check_size(name: str, value: Any) -> tuple[int, int]:
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value)
    )
    if not ok:
        raise PosenasError(f"codec.{name}: expected two positive integers (height, width), got {value!r}")
    return int(value[0]), int(value[1])


def _check_sigma(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not math.isfinite(value) or value <= 0:
        raise PosenasError(f"codec.sigma: expected a positive number (heatmap pixels), got {value!r}")
    return float(value)


def _to_numpy(array) -> np.ndarray:
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "detach"):  # torch.Tensor, without importing torch here
        return array.detach().cpu().numpy()
    return np.asarray(array)


@dataclass(frozen=True)
class HeatmapCodec:
    """Keypoints in model-input pixels ↔ ``(K, h, w)`` Gaussian heatmaps."""

    input_size: tuple[int, int]
    heatmap_size: tuple[int, int]
    sigma: float = 2.0
    decode_with: str = "quarter"  # a DECODERS name

    def __post_init__(self):
        if self.decode_with not in DECODERS:
            raise PosenasError(f"codec.decode: unknown decoder {self.decode_with!r}; allowed: {', '.join(DECODERS)}")
        object.__setattr__(self, "input_size", _check_size("input_size", self.input_size))
        object.__setattr__(self, "heatmap_size", _check_size("heatmap_size", self.heatmap_size))
        object.__setattr__(self, "sigma", _check_sigma(self.sigma))
        if self.heatmap_size[0] > self.input_size[0] or self.heatmap_size[1] > self.input_size[1]:
            raise PosenasError(
                f"codec.heatmap_size: {list(self.heatmap_size)} is larger than input_size "
                f"{list(self.input_size)} (expected the input divided by the network stride)"
            )

    @property
    def stride_xy(self) -> np.ndarray:
        """Input pixels per heatmap pixel along ``(x, y)``."""
        return np.array(
            [self.input_size[1] / self.heatmap_size[1], self.input_size[0] / self.heatmap_size[0]],
            dtype=np.float64,
        )

    # ------------------------------------------------------------------ encode / decode

    def encode(self, keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(K, 3)`` x, y, v in input pixels → heatmaps ``(K, h, w)`` float32, target weight ``(K,)`` float32.

        The weight is 1 for a labelled joint (``v > 0``) whose truncated Gaussian has at
        least one pixel on the map, else 0 (and its heatmap is all zero).
        """
        kp = np.asarray(keypoints, dtype=np.float64)
        if kp.ndim != 2 or kp.shape[1] < 3:
            raise PosenasError(f"HeatmapCodec.encode: expected keypoints of shape (K, 3), got {kp.shape}")
        h, w = self.heatmap_size
        mu = kp[:, :2] / self.stride_xy  # (K, 2) heatmap coords
        labelled = (kp[:, 2] > 0) & np.isfinite(mu).all(axis=1)
        mu = np.where(labelled[:, None], mu, -1e6)  # unlabelled: far off the map
        nearest = np.floor(mu + 0.5)
        radius = TRUNCATE_SIGMAS * self.sigma
        inv = -0.5 / (self.sigma * self.sigma)

        def axis(n: int, j: int) -> np.ndarray:
            grid = np.arange(n, dtype=np.float64)[None, :]
            g = np.exp((grid - mu[:, j : j + 1]) ** 2 * inv)
            g[np.abs(grid - nearest[:, j : j + 1]) > radius] = 0.0
            return g

        gx, gy = axis(w, 0), axis(h, 1)  # (K, w), (K, h)
        weight = labelled & (gx > 0).any(axis=1) & (gy > 0).any(axis=1)
        gx[~weight] = 0.0
        heatmaps = (gy[:, :, None] * gx[:, None, :]).astype(np.float32)
        return heatmaps, weight.astype(np.float32)

    def decode(self, heatmaps) -> tuple[np.ndarray, np.ndarray]:
        """``(N, K, h, w)`` heatmaps (numpy or torch) → coords ``(N, K, 2)`` in input pixels, maxvals ``(N, K)``.

        A channel whose maximum is ≤ 0 holds no detection; its coords are the argmax
        (pixel 0 for an all-zero map) and callers should go by ``maxvals``.
        """
        hm = _to_numpy(heatmaps)
        if hm.ndim != 4:
            raise PosenasError(f"HeatmapCodec.decode: expected heatmaps of shape (N, K, h, w), got {hm.shape}")
        n, k, h, w = hm.shape
        flat = hm.reshape(n, k, h * w)
        idx = flat.argmax(axis=2)
        maxvals = np.take_along_axis(flat, idx[..., None], axis=2)[..., 0]
        px, py = idx % w, idx // w

        def at(y, x):
            return np.take_along_axis(flat, (y * w + x)[..., None], axis=2)[..., 0].astype(np.float64)

        dx = at(py, np.minimum(px + 1, w - 1)) - at(py, np.maximum(px - 1, 0))
        dy = at(np.minimum(py + 1, h - 1), px) - at(np.maximum(py - 1, 0), px)
        x = px + 0.25 * np.sign(dx) * ((px > 0) & (px < w - 1))
        y = py + 0.25 * np.sign(dy) * ((py > 0) & (py < h - 1))
        if self.decode_with == "dark":  # where DARK's step holds; the quarter step elsewhere
            dark_x, dark_y, ok = _dark_refine(hm, px, py, self.sigma)
            x, y = np.where(ok, dark_x, x), np.where(ok, dark_y, y)
        coords = np.stack([x, y], axis=-1) * self.stride_xy
        return coords.astype(np.float32), maxvals.astype(np.float32)

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict:
        """Plain types for self-describing checkpoints."""
        d = {
            "type": "heatmap",
            "input_size": list(self.input_size),
            "heatmap_size": list(self.heatmap_size),
            "sigma": self.sigma,
        }
        if self.decode_with != "quarter":  # older checkpoints (and readers) know no decode field
            d["decode"] = self.decode_with
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> HeatmapCodec:
        if not isinstance(d, Mapping):
            raise PosenasError(f"codec: expected a mapping with {', '.join(_FIELDS[1:])}, got {type(d).__name__}")
        unknown = sorted(str(key) for key in d if key not in _FIELDS)
        if unknown:
            raise PosenasError(f"codec: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(_FIELDS)}")
        if d.get("type", "heatmap") != "heatmap":
            raise PosenasError(f"codec.type: expected 'heatmap', got {d['type']!r}")
        for name in ("input_size", "heatmap_size"):
            if name not in d:
                raise PosenasError(f"codec.{name}: missing (expected two positive integers (height, width))")
        return cls(
            input_size=_check_size("input_size", d["input_size"]),
            heatmap_size=_check_size("heatmap_size", d["heatmap_size"]),
            sigma=_check_sigma(d.get("sigma", 2.0)),
            decode_with=d.get("decode", "quarter"),
        )


def _dark_refine(hm: np.ndarray, px: np.ndarray, py: np.ndarray, sigma: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DARK's sub-pixel peak (x, y) of each ``(N, K, h, w)`` map from its integer argmax ``(px, py)``,
    and where it holds: a peak with its 5x5 neighbourhood on the map (the differences reach 2 px;
    nearer the border the zeros beyond it bias the smoothed peak by up to a pixel), a maximum
    (negative definite Hessian), and a step under half a pixel."""
    from scipy.ndimage import gaussian_filter

    hm = hm.astype(np.float64)
    peak = hm.max(axis=(2, 3), keepdims=True)
    smooth = gaussian_filter(hm, sigma=(0, 0, sigma, sigma), truncate=TRUNCATE_SIGMAS, mode="constant")
    smooth *= peak / np.maximum(smooth.max(axis=(2, 3), keepdims=True), 1e-12)
    log = np.log(np.maximum(smooth, 1e-10))
    n, k, h, w = hm.shape
    padded = np.pad(log, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="edge")

    def at(dy: int, dx: int) -> np.ndarray:
        return np.take_along_axis(padded.reshape(n, k, -1), ((py + 2 + dy) * (w + 4) + px + 2 + dx)[..., None],
                                  axis=2)[..., 0]

    centre = at(0, 0)
    gx, gy = 0.5 * (at(0, 1) - at(0, -1)), 0.5 * (at(1, 0) - at(-1, 0))
    hxx = 0.25 * (at(0, 2) - 2 * centre + at(0, -2))
    hyy = 0.25 * (at(2, 0) - 2 * centre + at(-2, 0))
    hxy = 0.25 * (at(1, 1) - at(-1, 1) - at(1, -1) + at(-1, -1))
    det = hxx * hyy - hxy * hxy
    inside = (px >= 2) & (px <= w - 3) & (py >= 2) & (py <= h - 3)
    ok = inside & (det > 1e-12) & (hxx < 0) & (peak[..., 0, 0] > 0)
    safe = np.where(ok, det, 1.0)
    ox = np.where(ok, -(hyy * gx - hxy * gy) / safe, 0.0)
    oy = np.where(ok, -(hxx * gy - hxy * gx) / safe, 0.0)
    ok &= (np.abs(ox) <= 0.5) & (np.abs(oy) <= 0.5)
    return px + ox, py + oy, ok


def flip_back(heatmaps, flip_index: Sequence[int], shift: bool = True):
    """Heatmaps predicted on the horizontally flipped input → heatmaps of the original input.

    Mirrors the last axis, reorders channels (axis -3) by ``flip_index`` (left ↔ right), and
    with ``shift`` moves everything one pixel to the right (the leftmost column is kept), the
    classic flip test of SimpleBaseline / HRNet / MMPose. Works on ``(..., K, h, w)`` numpy
    arrays and torch tensors and returns the same type (a new array / tensor).
    """
    idx = [int(i) for i in flip_index]
    if heatmaps.ndim < 3 or heatmaps.shape[-3] != len(idx):
        raise PosenasError(
            f"flip_back: expected heatmaps (..., {len(idx)}, h, w) for {len(idx)} joints, got shape {tuple(heatmaps.shape)}"
        )
    if isinstance(heatmaps, np.ndarray):
        out = np.ascontiguousarray(heatmaps[..., idx, :, ::-1])
        if shift:
            out[..., 1:] = out[..., :-1].copy()
        return out
    import torch

    out = torch.index_select(torch.flip(heatmaps, dims=(-1,)), -3, torch.tensor(idx, device=heatmaps.device))
    if shift:
        out[..., 1:] = out[..., :-1].clone()
    return out


def back_project(coords, centers, scales, rotations, input_size) -> np.ndarray:
    """Crop (model-input) coords ``(N, K, 2)`` → image coords, inverting :func:`posenas.data.transforms.affine_matrix`.

    ``centers`` / ``scales`` are ``(N, 2)`` (x, y) / (w, h) pixels; ``rotations`` ``(N,)``
    degrees or a scalar (0 for validation crops); ``input_size`` is ``(H, W)``.
    """
    c = np.asarray(_to_numpy(coords), dtype=np.float64)
    if c.ndim != 3 or c.shape[2] != 2:
        raise PosenasError(f"back_project: expected coords of shape (N, K, 2), got {c.shape}")
    m = affine_matrices(_to_numpy(centers), _to_numpy(scales), _to_numpy(rotations), input_size, inverse=True)
    if len(m) != len(c):
        raise PosenasError(f"back_project: {len(c)} coordinate sets but {len(m)} boxes")
    return np.einsum("nij,nkj->nki", m[:, :, :2], c) + m[:, None, :, 2]


def instance_scores(maxvals, box_scores, threshold: float = 0.2) -> np.ndarray:
    """Rescore instances as SimpleBaseline / HRNet do: mean joint maximum × box score.

    The mean is over the joints whose maximum exceeds ``threshold`` (over all joints when
    none does — the originals score such an instance 0, which ties every such instance).
    """
    mv = np.asarray(_to_numpy(maxvals), dtype=np.float64)
    if mv.ndim != 2:
        raise PosenasError(f"instance_scores: expected maxvals of shape (N, K), got {mv.shape}")
    box = np.broadcast_to(np.asarray(_to_numpy(box_scores), dtype=np.float64).reshape(-1), (len(mv),))
    above = mv > threshold
    count = above.sum(axis=1)
    mean_above = np.where(above, mv, 0.0).sum(axis=1) / np.maximum(count, 1)
    joint_score = np.where(count > 0, mean_above, mv.mean(axis=1) if mv.shape[1] else 0.0)
    return (joint_score * box).astype(np.float32)
