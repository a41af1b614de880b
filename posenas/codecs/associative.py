"""Associative embedding (Newell et al., NeurIPS 2017) with HigherHRNet's recipe (Cheng et al., CVPR 2020):
the bottom-up codec, its losses, the flip / multi-resolution test and the tag-grouping decoder.

Geometry is :mod:`posenas.codecs.heatmap`'s: pixel centres at integers, ``x_map = x_input / stride``
with ``stride = input / map`` per axis, at every map resolution.

**Encode** (:meth:`AssociativeEmbeddingCodec.encode`). For every heatmap size, each labelled joint of
each person is the heatmap codec's Gaussian (centred on the *sub-pixel* joint, σ in that map's pixels,
truncated to pixels within 3σ of the nearest pixel); a channel is the maximum over people (HigherHRNet).
σ is the same number at every resolution, as HigherHRNet. Every person given reaches the heatmaps;
only the tag targets stop at ``max_people``. The tag targets ``joints`` ``(max_people, K, 2)`` hold, per
person and joint, the flat index ``y * w + x`` of the *rounded* joint position on the first (tag) map and
1, or 0 0 when the joint is unlabelled or its rounded position is off that map (HigherHRNet truncates,
``int(x)``, which in its half-pixel convention is the pixel holding the point; rounding is that pixel
here). Unlike HigherHRNet's ``JointsGenerator``, which packs a person's visible joints into the first
slots, slot ``k`` is joint ``k``: :func:`ae_loss` reads tag map ``k`` at it.

*Scale-aware σ* (``scale_aware_sigma``, HigherHRNet's ``SCALE_AWARE_SIGMA``): HigherHRNet sets
``σ_p = BASE_SIGMA · max(box w, h) / BASE_SIZE`` (2 · side / 256 original-image pixels, for 512-pixel
inputs). We are given person *areas* in input pixels², so we write

    σ_p = max(min(σ, 1), σ · sqrt(area_p) / (min(H, W) / 4))

(H, W the input size): a person whose ``sqrt(area)`` is a quarter of the input's shorter side gets the
codec's σ. For a COCO person the segmentation covers about half of a roughly 1:2 box, so
``sqrt(area) ≈ max(w, h) / 2`` and, at a 512 input, this is HigherHRNet's rule (``max(w, h) = 256``
↔ ``sqrt(area) = 128 = 512 / 4``). The floor ``min(σ, 1)`` is ours: with the Gaussian centred on the
sub-pixel joint, a σ well under a pixel would leave the nearest pixel far below 1 (HigherHRNet centres
on the pixel, and its ``INT_SIGMA`` option also floors σ at 1).

**Losses.** :func:`masked_heatmap_loss` is HigherHRNet's ``HeatmapLoss`` (mask 0 = crowd / unannotated
region). :func:`ae_loss` is HigherHRNet's ``AELoss`` with ``loss_type="exp"``, vectorised:

* pull: per person with a labelled joint, the *mean* over its joints of ``(tag - person mean)²``, then
  the mean over those people (Newell's paper sums over joints; both implementations take the mean);
* push: ``0.5 · mean over ordered pairs p ≠ q of exp(-(m_p - m_q)² / (2 push_sigma²))``, 0 with fewer
  than two people. The default ``push_sigma = 1/√2`` makes the kernel HigherHRNet's (and pose-ae-train's)
  ``exp(-Δ²)``; the factor 0.5 and the pair count are theirs too: they sum the ``P × P`` matrix, subtract
  its diagonal (``P``), divide by ``(P - 1) P`` and halve it. So the number equals HigherHRNet's, and its
  ``PUSH_LOSS_FACTOR`` / ``PULL_LOSS_FACTOR`` (1e-3) carry over. (Newell's paper writes
  ``1/N² Σ_n Σ_n'``, diagonal included and no 0.5.)

**Test-time** (:func:`flip_maps`, :func:`aggregate`). HigherHRNet mirrors the flipped image's outputs
without a pixel shift: exact in its half-pixel convention. Under ours the mirrored map of stride ``s``
sits ``1 - 1/s`` map px (``s - 1`` input px) left of the truth, so :func:`flip_maps` stays the pure
mirror + channel swap (an involution), and :func:`aggregate` removes that offset in the resampling it does
anyway when given ``input_size``. Maps are resized for our geometry (``x_low = x_high · w_low / w_high``,
linear, border replicated): ``F.interpolate(align_corners=False)``, HigherHRNet's, samples
``(x + 0.5) / r - 0.5`` and would move every resized peak ``+0.5`` high-res px here.

**Decode** (:meth:`AssociativeEmbeddingCodec.decode`): HigherHRNet's ``HeatmapParser``. Max-pool NMS,
top-``max_people`` peaks per joint, then joint by joint in HigherHRNet's order (COCO-17: nose, eyes,
ears, shoulders, hips, elbows, wrists, knees, ankles; ``0..K-1`` for other joint counts): candidates above
``detection_threshold``; the first joint with candidates starts one person each; later ones are matched
to the first ``max_people`` people by the L2 distance of their tag to each person's mean tag, cost
``round(d) · 100 - value`` (``use_detection_value``) or ``d``, Hungarian assignment
(:func:`scipy.optimize.linear_sum_assignment` on the cost padded with 1e10 columns to square, as
HigherHRNet's Munkres); an assigned pair with ``d < tag_threshold`` joins the person, any other candidate
starts a new person. People are kept as a list (HigherHRNet keys them by their first tag value, which
merges two people whose first tags are equal). ``adjust``: a quarter-pixel step towards the higher
neighbour, as :class:`~posenas.codecs.heatmap.HeatmapCodec` (no step on a tie or at the border;
HigherHRNet steps -0.25 on ties and adds 0.5 for its half-pixel centres). Person score: the mean of its
``K`` joint values, unfound joints 0, before ``refine`` (HigherHRNet). People are sorted by score and cut
to ``max_people``, then ``refine`` (HigherHRNet's): for each person, every unfound joint goes to the
argmax of ``heat - round(|tag - person mean tag|)`` with the quarter step there, if the heat there is
positive. Refining only the kept people gives the kept people's exact HigherHRNet result (scores do not
depend on refine).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from posenas.codecs.heatmap import TRUNCATE_SIGMAS, _to_numpy
from posenas.errors import PosenasError

#: HigherHRNet's ``joint_order`` for COCO-17 (``[1, 2, 3, 4, 5, 6, 7, 12, 13, 8, ...]`` - 1): head, shoulders,
#: hips, then elbows, wrists, knees, ankles — torso joints seed the people before the limbs join them.
COCO_JOINT_ORDER = (0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16)

#: ``exp(-Δ² / (2σ²))`` with this σ is HigherHRNet's ``exp(-Δ²)``.
DEFAULT_PUSH_SIGMA = 1.0 / math.sqrt(2.0)

#: Scale-aware σ: a person whose ``sqrt(area)`` is this fraction of the input's shorter side gets the base σ.
SCALE_AWARE_REFERENCE = 0.25

_TYPE = "associative_embedding"
_FIELDS = ("input_size", "heatmap_sizes", "sigma", "scale_aware_sigma", "max_people", "detection_threshold",
           "tag_threshold", "nms_kernel", "use_detection_value", "adjust", "refine")


def joint_order(num_joints: int) -> tuple[int, ...]:
    """The decoder's grouping order: HigherHRNet's for 17 joints, else ``0..K-1``."""
    return COCO_JOINT_ORDER if num_joints == len(COCO_JOINT_ORDER) else tuple(range(num_joints))


# ---------------------------------------------------------------------------------------------- validation


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value))


def _size(name: str, value: Any) -> tuple[int, int]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value)):
        raise PosenasError(f"codec.{name}: expected two positive integers (height, width), got {value!r}")
    return int(value[0]), int(value[1])


def _number(name: str, value: Any, what: str, positive: bool) -> float:
    if not _is_number(value) or (value <= 0 if positive else value < 0):
        raise PosenasError(f"codec.{name}: expected {what}, got {value!r}")
    return float(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise PosenasError(f"codec.{name}: expected true or false, got {value!r}")
    return bool(value)


@dataclass(frozen=True)
class AssociativeEmbeddingCodec:
    """People in whole-image model-input pixels ↔ per-resolution heatmaps + tag targets; tags → people."""

    input_size: tuple[int, int]  # (H, W) of the whole-image model input
    heatmap_sizes: tuple[tuple[int, int], ...]  # (h, w) per model output; the first is the tag resolution
    sigma: float = 2.0  # Gaussian σ in heatmap px, the same at every resolution
    scale_aware_sigma: bool = False  # per-person σ from its area (module docstring)
    max_people: int = 30
    detection_threshold: float = 0.1
    tag_threshold: float = 1.0
    nms_kernel: int = 5
    use_detection_value: bool = True
    adjust: bool = True
    refine: bool = True

    def __post_init__(self):
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        put("input_size", _size("input_size", self.input_size))
        sizes = self.heatmap_sizes
        if not isinstance(sizes, (list, tuple)) or len(sizes) == 0:
            raise PosenasError(f"codec.heatmap_sizes: expected a non-empty list of (height, width) pairs, "
                               f"got {sizes!r}")
        sizes = tuple(_size(f"heatmap_sizes[{i}]", s) for i, s in enumerate(sizes))
        for i, (h, w) in enumerate(sizes):
            if h > self.input_size[0] or w > self.input_size[1]:
                raise PosenasError(f"codec.heatmap_sizes[{i}]: {[h, w]} is larger than input_size "
                                   f"{list(self.input_size)} (expected the input divided by the output's stride)")
        put("heatmap_sizes", sizes)
        put("sigma", _number("sigma", self.sigma, "a positive number (heatmap pixels)", True))
        put("scale_aware_sigma", _flag("scale_aware_sigma", self.scale_aware_sigma))
        if not _is_int(self.max_people) or self.max_people < 1:
            raise PosenasError(f"codec.max_people: expected a positive integer, got {self.max_people!r}")
        put("max_people", int(self.max_people))
        put("detection_threshold", _number("detection_threshold", self.detection_threshold,
                                           "a non-negative number (heatmap value)", False))
        put("tag_threshold", _number("tag_threshold", self.tag_threshold, "a positive number (tag distance)", True))
        if not _is_int(self.nms_kernel) or self.nms_kernel < 1 or self.nms_kernel % 2 == 0:
            raise PosenasError(f"codec.nms_kernel: expected a positive odd integer (max-pool size), "
                               f"got {self.nms_kernel!r}")
        put("nms_kernel", int(self.nms_kernel))
        for name in ("use_detection_value", "adjust", "refine"):
            put(name, _flag(name, getattr(self, name)))

    @property
    def num_resolutions(self) -> int:
        return len(self.heatmap_sizes)

    def stride_xy(self, size: tuple[int, int]) -> np.ndarray:
        """Input pixels per map pixel along ``(x, y)`` for a map of ``size`` (h, w)."""
        return np.array([self.input_size[1] / size[1], self.input_size[0] / size[0]], dtype=np.float64)

    def person_sigmas(self, num_people: int, areas: np.ndarray | None) -> np.ndarray:
        """``(M,)`` Gaussian σ per person (heatmap px): the codec's σ, or the scale-aware rule."""
        if not self.scale_aware_sigma:
            return np.full(num_people, self.sigma)
        if areas is None:
            raise PosenasError("AssociativeEmbeddingCodec.encode: scale_aware_sigma needs the people's areas "
                               "(input pixels²)")
        a = np.asarray(areas, dtype=np.float64).reshape(-1)
        if len(a) != num_people or not np.isfinite(a).all() or (a < 0).any():
            raise PosenasError(f"AssociativeEmbeddingCodec.encode: expected {num_people} non-negative areas, "
                               f"got {np.asarray(areas).tolist()!r}")
        reference = SCALE_AWARE_REFERENCE * min(self.input_size)
        return np.maximum(min(self.sigma, 1.0), self.sigma * np.sqrt(a) / reference)

    # ------------------------------------------------------------------------------------------ encode

    def encode(self, people: np.ndarray, areas: np.ndarray | None = None) -> tuple[list[np.ndarray], np.ndarray]:
        """``(M, K, 3)`` x, y, v in input pixels (``v > 0`` labelled) → (heatmaps, joints).

        heatmaps: one float32 ``(K, h, w)`` per heatmap size, the maximum over people of each person's
        Gaussians; joints: int64 ``(max_people, K, 2)``, ``[y * w + x, 1]`` of the rounded joint on the first
        map when labelled and on it, else ``[0, 0]``; people beyond ``max_people`` have no row (but heatmaps),
        rows of absent people are 0. ``areas`` ``(M,)`` (input pixels²) are read with ``scale_aware_sigma``.
        """
        kp = np.asarray(people, dtype=np.float64)
        if kp.ndim != 3 or kp.shape[2] < 3:
            raise PosenasError(f"AssociativeEmbeddingCodec.encode: expected people of shape (M, K, 3), got {kp.shape}")
        m, k = kp.shape[:2]
        sigmas = self.person_sigmas(m, areas)[:, None, None]  # (M, 1, 1)
        labelled = (kp[..., 2] > 0) & np.isfinite(kp[..., :2]).all(axis=2)
        heatmaps = []
        for size in self.heatmap_sizes:
            h, w = size
            mu = np.where(labelled[..., None], kp[..., :2] / self.stride_xy(size), -1e6)  # (M, K, 2)
            nearest = np.floor(mu + 0.5)

            def axis(n: int, j: int) -> np.ndarray:  # (M, K, n) truncated 1-D Gaussians
                grid = np.arange(n, dtype=np.float64)
                g = np.exp(-((grid - mu[..., j : j + 1]) ** 2) / (2.0 * sigmas**2))
                g[np.abs(grid - nearest[..., j : j + 1]) > TRUNCATE_SIGMAS * sigmas] = 0.0
                return g

            gx, gy = axis(w, 0), axis(h, 1)
            gx[~((gx > 0).any(axis=2) & (gy > 0).any(axis=2))] = 0.0
            hm = np.zeros((k, h, w), dtype=np.float32)
            for p in range(m):  # max over people; one (K, h, w) product at a time
                np.maximum(hm, (gy[p, :, :, None] * gx[p, :, None, :]).astype(np.float32), out=hm)
            heatmaps.append(hm)

        h, w = self.heatmap_sizes[0]
        joints = np.zeros((self.max_people, k, 2), dtype=np.int64)
        n = min(m, self.max_people)
        pos = np.floor(np.where(labelled[:n, :, None], kp[:n, :, :2], -1.0) / self.stride_xy((h, w)) + 0.5)
        on_map = labelled[:n] & (pos[..., 0] >= 0) & (pos[..., 0] < w) & (pos[..., 1] >= 0) & (pos[..., 1] < h)
        joints[:n, :, 0] = np.where(on_map, pos[..., 1] * w + pos[..., 0], 0).astype(np.int64)
        joints[:n, :, 1] = on_map
        return heatmaps, joints

    # ------------------------------------------------------------------------------------------ decode

    def decode(self, heatmaps, tags) -> tuple[np.ndarray, np.ndarray]:
        """One image: heatmaps ``(K, h, w)`` and tags ``(K, h, w)`` or ``(K, h, w, D)`` at one resolution
        (numpy or torch) → people ``(P, K, 3)`` x, y, score in input pixels (× that map's stride) and
        person scores ``(P,)``, ``P <= max_people``, by descending score. Unfound joints: 0, 0, 0."""
        det = np.asarray(_to_numpy(heatmaps), dtype=np.float32)
        tag = np.asarray(_to_numpy(tags), dtype=np.float32)
        if det.ndim != 3:
            raise PosenasError(f"AssociativeEmbeddingCodec.decode: expected heatmaps of shape (K, h, w), "
                               f"got {det.shape}")
        if tag.ndim == 3:
            tag = tag[..., None]
        if tag.ndim != 4 or tag.shape[:3] != det.shape:
            raise PosenasError(f"AssociativeEmbeddingCodec.decode: expected tags of shape {det.shape} or "
                               f"{det.shape + ('D',)} like the heatmaps, got {tuple(np.shape(tags))}")
        k, h, w = det.shape
        d = tag.shape[3]
        stride = self.stride_xy((h, w))
        if k == 0 or h * w == 0:
            return np.zeros((0, k, 3), np.float32), np.zeros(0, np.float32)

        # NMS (HigherHRNet: max-pool, keep values equal to the pooled maximum) and top-k per joint.
        from scipy.ndimage import maximum_filter

        pooled = maximum_filter(det, size=(1, self.nms_kernel, self.nms_kernel), mode="constant", cval=-np.inf)
        peaks = np.where(pooled == det, det, 0.0).reshape(k, h * w)
        top = min(self.max_people, h * w)
        ind = np.argsort(-peaks, axis=1, kind="stable")[:, :top]  # (K, top)
        val_k = np.take_along_axis(peaks, ind, axis=1)
        tag_k = tag.reshape(k, h * w, d)[np.arange(k)[:, None], ind]  # (K, top, D)

        found, tag_mean = self._group(val_k, ind, tag_k, w)  # (P, K, 3): x, y (int), value; (P, D)
        if len(found) == 0:
            return np.zeros((0, k, 3), np.float32), np.zeros(0, np.float32)
        xy = found[..., :2].copy()
        has = found[..., 2] > 0
        if self.adjust:
            xy = np.where(has[..., None], _quarter_step(det, found[..., 0].astype(np.int64),
                                                        found[..., 1].astype(np.int64)), xy)
        scores = found[..., 2].mean(axis=1)
        keep = np.argsort(-scores, kind="stable")[: self.max_people]
        found, xy, has, scores, tag_mean = found[keep], xy[keep], has[keep], scores[keep], tag_mean[keep]
        vals = np.where(has, found[..., 2], 0.0)
        if self.refine:
            for p in range(len(found)):
                if has[p].all():
                    continue
                # distance to the mean tag of the person's found joints (HigherHRNet reads them off the tag map)
                dist = np.sqrt(((tag - tag_mean[p]) ** 2).sum(axis=3))  # (K, h, w)
                best = (det - np.round(dist)).reshape(k, -1).argmax(axis=1)
                by, bx = best // w, best % w
                v = det[np.arange(k), by, bx]
                fill = ~has[p] & (v > 0)
                step = _quarter_step(det, bx, by)
                xy[p] = np.where(fill[:, None], step, xy[p])
                vals[p] = np.where(fill, v, vals[p])
        out = np.zeros((len(found), k, 3), dtype=np.float32)
        out[..., :2] = np.where((vals > 0)[..., None], xy * stride, 0.0)
        out[..., 2] = vals
        return out, scores.astype(np.float32)

    def _group(self, val_k: np.ndarray, ind: np.ndarray, tag_k: np.ndarray, width: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """HigherHRNet's ``match_by_tag`` on the top-k candidates (values, flat indices on a map ``width``
        wide, tags): (P, K, 3) x, y, value (0 where not found) and (P, D) mean tags."""
        from scipy.optimize import linear_sum_assignment

        k = len(val_k)
        joints: list[np.ndarray] = []  # per person (K, 3)
        tag_sums: list[np.ndarray] = []
        counts: list[int] = []
        for j in joint_order(k):
            keep = val_k[j] > self.detection_threshold
            if not keep.any():
                continue
            vals, flat, tags = val_k[j][keep], ind[j][keep], tag_k[j][keep]
            cand = np.stack([flat % width, flat // width, vals], axis=1).astype(np.float64)

            def start(r: int) -> None:
                row = np.zeros((k, 3))
                row[j] = cand[r]
                joints.append(row)
                tag_sums.append(tags[r].astype(np.float64).copy())
                counts.append(1)

            if not joints:
                for r in range(len(cand)):
                    start(r)
                continue
            g = min(len(joints), self.max_people)
            means = np.stack([tag_sums[i] / counts[i] for i in range(g)])  # (G, D)
            dist = np.linalg.norm(tags[:, None, :] - means[None], axis=2)  # (A, G)
            cost = np.round(dist) * 100 - vals[:, None] if self.use_detection_value else dist.copy()
            a = len(cand)
            if a > g:
                cost = np.concatenate([cost, np.full((a, a - g), 1e10)], axis=1)
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols):
                if c < g and dist[r, c] < self.tag_threshold:
                    joints[c][j] = cand[r]
                    tag_sums[c] += tags[r]
                    counts[c] += 1
                else:
                    start(r)
        if not joints:
            return np.zeros((0, k, 3)), np.zeros((0, tag_k.shape[2]))
        return np.stack(joints), np.stack([s / c for s, c in zip(tag_sums, counts)])

    # ------------------------------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict:
        """Plain types for self-describing checkpoints: ``{"type": "associative_embedding", ...every field}``."""
        return {
            "type": _TYPE,
            "input_size": list(self.input_size),
            "heatmap_sizes": [list(s) for s in self.heatmap_sizes],
            "sigma": self.sigma,
            "scale_aware_sigma": self.scale_aware_sigma,
            "max_people": self.max_people,
            "detection_threshold": self.detection_threshold,
            "tag_threshold": self.tag_threshold,
            "nms_kernel": self.nms_kernel,
            "use_detection_value": self.use_detection_value,
            "adjust": self.adjust,
            "refine": self.refine,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> AssociativeEmbeddingCodec:
        if not isinstance(d, Mapping):
            raise PosenasError(f"codec: expected a mapping with {', '.join(_FIELDS)}, got {type(d).__name__}")
        unknown = sorted(str(key) for key in d if key != "type" and key not in _FIELDS)
        if unknown:
            raise PosenasError(f"codec: unknown field(s) {', '.join(unknown)}; allowed: type, {', '.join(_FIELDS)}")
        if d.get("type", _TYPE) != _TYPE:
            raise PosenasError(f"codec.type: expected {_TYPE!r}, got {d['type']!r}")
        for name in ("input_size", "heatmap_sizes"):
            if name not in d:
                raise PosenasError(f"codec.{name}: missing")
        sizes = d["heatmap_sizes"]
        if isinstance(sizes, (list, tuple)):
            sizes = tuple(tuple(s) if isinstance(s, list) else s for s in sizes)
        values = {name: d[name] for name in _FIELDS if name in d}
        values["heatmap_sizes"] = sizes
        values["input_size"] = tuple(d["input_size"]) if isinstance(d["input_size"], list) else d["input_size"]
        return cls(**values)


def _quarter_step(det: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """``(…, K, 2)`` positions: integer peaks ``(px, py)`` (``(…, K)``, on maps ``det`` ``(K, h, w)``) moved a
    quarter pixel along each axis towards the higher neighbour; no step on a tie or at the border."""
    k, h, w = det.shape
    j = np.arange(k)
    dx = det[j, py, np.minimum(px + 1, w - 1)] - det[j, py, np.maximum(px - 1, 0)]
    dy = det[j, np.minimum(py + 1, h - 1), px] - det[j, np.maximum(py - 1, 0), px]
    x = px + 0.25 * np.sign(dx) * ((px > 0) & (px < w - 1))
    y = py + 0.25 * np.sign(dy) * ((py > 0) & (py < h - 1))
    return np.stack([x, y], axis=-1).astype(np.float64)


# ---------------------------------------------------------------------------------------------- losses


def ae_loss(tags, joints, push_sigma: float = DEFAULT_PUSH_SIGMA):
    """Associative-embedding grouping loss (HigherHRNet's ``AELoss``, ``exp``), vectorised over people.

    ``tags`` ``(N, K, h, w)`` (one tag per joint), ``joints`` ``(N, M, K, 2)`` as :meth:`encode` gives
    (flat index on tag map ``k``, labelled flag) → ``(pull, push)``, each ``(N,)``:

    * pull = mean over people with ≥ 1 labelled joint of the mean over their labelled joints of
      ``(tag - person mean tag)²`` (0 without people);
    * push = ``0.5 ·`` mean over ordered pairs ``p ≠ q`` of such people of
      ``exp(-(m_p - m_q)² / (2 push_sigma²))`` (0 with fewer than two). The default σ = 1/√2 gives
      HigherHRNet's ``exp(-Δ²)``, and the 0.5 is HigherHRNet's ``push / ((P - 1) P) * 0.5``, so both numbers
      equal HigherHRNet's.
    """
    import torch

    if not isinstance(tags, torch.Tensor) or tags.ndim != 4:
        raise PosenasError(f"ae_loss: expected tags as a tensor of shape (N, K, h, w), got {tuple(np.shape(tags))}")
    n, k, h, w = tags.shape
    joints = torch.as_tensor(joints, device=tags.device)
    if joints.ndim != 4 or joints.shape[0] != n or joints.shape[2] != k or joints.shape[3] != 2:
        raise PosenasError(f"ae_loss: expected joints of shape ({n}, M, {k}, 2) for tags {tuple(tags.shape)}, "
                           f"got {tuple(joints.shape)}")
    if not _is_number(push_sigma) or push_sigma <= 0:
        raise PosenasError(f"ae_loss: push_sigma must be a positive number, got {push_sigma!r}")
    joints = joints.long()
    valid = joints[..., 1] > 0  # (N, M, K)
    idx = joints[..., 0]
    if bool(((idx < 0) | (idx >= h * w))[valid].any()):
        raise PosenasError(f"ae_loss: a labelled joint's index is outside the {h}x{w} tag map")
    idx = torch.where(valid, idx, torch.zeros_like(idx))
    flat = tags.reshape(n, k, h * w)
    batch = torch.arange(n, device=tags.device)[:, None, None]
    joint = torch.arange(k, device=tags.device)[None, None, :]
    values = flat[batch, joint, idx]  # (N, M, K)
    weight = valid.to(values.dtype)
    count = weight.sum(dim=2)  # (N, M)
    present = count > 0
    safe = count.clamp(min=1.0)
    mean = (values * weight).sum(dim=2) / safe  # (N, M)
    person_pull = ((values - mean[..., None]) ** 2 * weight).sum(dim=2) / safe
    people = present.to(values.dtype).sum(dim=1)  # (N,)
    pull = (person_pull * present).sum(dim=1) / people.clamp(min=1.0)
    m = mean.shape[1]
    pairs = present[:, :, None] & present[:, None, :] & ~torch.eye(m, dtype=torch.bool, device=tags.device)
    diff = mean[:, :, None] - mean[:, None, :]
    kernel = torch.exp(-(diff**2) / (2.0 * float(push_sigma) ** 2)) * pairs
    push = 0.5 * kernel.sum(dim=(1, 2)) / (people * (people - 1)).clamp(min=1.0)
    return pull, push


def masked_heatmap_loss(pred, target, mask):
    """HigherHRNet's ``HeatmapLoss``: ``pred`` / ``target`` ``(N, K, h, w)``, ``mask`` ``(N, h, w)`` (0 = no loss:
    crowds, unannotated people) → the mean over ``N, K, h, w`` of ``mask · (pred - target)²`` (a scalar)."""
    if tuple(pred.shape) != tuple(target.shape) or pred.ndim != 4:
        raise PosenasError(f"masked_heatmap_loss: expected pred and target of one shape (N, K, h, w), got "
                           f"{tuple(pred.shape)} and {tuple(target.shape)}")
    n, _, h, w = pred.shape
    if tuple(mask.shape) != (n, h, w):
        raise PosenasError(f"masked_heatmap_loss: expected mask of shape {(n, h, w)}, got {tuple(mask.shape)}")
    return (((pred - target) ** 2) * mask[:, None].to(pred.dtype)).mean()


# ---------------------------------------------------------------------------------------------- test time


def flip_maps(maps, flip_index: Sequence[int]):
    """Maps ``(..., K, h, w)`` (numpy or torch) predicted on a mirrored image → mirrored back along ``w``, channels
    reordered by ``flip_index``; no pixel shift (HigherHRNet's bottom-up flip test), so an involution. For
    heatmaps and tags alike; returns a new array / tensor of the same type."""
    idx = [int(i) for i in flip_index]
    if maps.ndim < 3 or maps.shape[-3] != len(idx):
        raise PosenasError(f"flip_maps: expected maps (..., {len(idx)}, h, w) for {len(idx)} joints, "
                           f"got shape {tuple(maps.shape)}")
    if isinstance(maps, np.ndarray):
        return np.ascontiguousarray(maps[..., idx, :, ::-1])
    import torch

    return torch.index_select(torch.flip(maps, dims=(-1,)), maps.ndim - 3, torch.tensor(idx, device=maps.device))


def _resample(x, size: tuple[int, int], shift_x: float = 0.0):
    """``(N, C, h, w)`` → ``(N, C, H, W)`` in our geometry: output pixel ``X`` reads the input at
    ``X · w / W - shift_x`` (``Y · h / H``), linearly, the border replicated. Differentiable."""
    import torch

    h, w = x.shape[-2:]
    H, W = size
    if (h, w) == (H, W) and shift_x == 0.0:
        return x

    def weights(n_in: int, n_out: int, shift: float) -> torch.Tensor:
        u = (torch.arange(n_out, dtype=torch.float64) * (n_in / n_out) - shift).clamp(0, n_in - 1)
        lo = u.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        frac = u - lo
        a = torch.zeros(n_out, n_in, dtype=torch.float64)
        a[torch.arange(n_out), lo] += 1 - frac
        a[torch.arange(n_out), hi] += frac
        return a.to(device=x.device, dtype=x.dtype)

    return weights(h, H, 0.0) @ x @ weights(w, W, shift_x).T


def aggregate(outputs: list, num_joints: int, flipped: list | None, flip_index: Sequence[int],
              input_size: tuple[int, int] | None = None):
    """HigherHRNet's single-scale test for one batch: model ``outputs`` (tensors ``(N, C_i, h_i, w_i)``, the first
    with ``2K`` channels heat + tags, later ones ``K`` heat channels at higher resolution) and, for the flip test,
    ``flipped`` (the same model's outputs on the mirrored images) → ``heatmaps`` ``(N, K, H, W)`` at the last
    (highest) resolution, the mean over resolutions and flip, and ``tags`` ``(N, K, H, W, D)`` from the first
    output, resized alike, the flipped ones stacked as ``D = 2``.

    Resizing follows our geometry (module docstring), not ``align_corners=False``. With ``input_size`` (H, W of
    the model input) the flipped maps are also moved back by the ``1 - 1/stride`` map px the plain mirror
    leaves under our convention (exact); without it they are only mirrored (HigherHRNet's recipe, off by
    ``stride - 1`` input px each)."""
    import torch

    k = int(num_joints)
    outputs = list(outputs)
    if not outputs or any(not isinstance(o, torch.Tensor) or o.ndim != 4 for o in outputs):
        raise PosenasError("aggregate: expected a non-empty list of (N, C, h, w) tensors")
    if outputs[0].shape[1] < 2 * k or any(o.shape[1] < k for o in outputs):
        raise PosenasError(f"aggregate: expected the first output with 2K = {2 * k} channels (heatmaps, tags) and "
                           f"the others with K = {k}, got {[tuple(o.shape) for o in outputs]}")
    if flipped is not None:
        flipped = list(flipped)
        if [tuple(o.shape) for o in flipped] != [tuple(o.shape) for o in outputs]:
            raise PosenasError(f"aggregate: flipped outputs {[tuple(o.shape) for o in flipped]} do not match "
                               f"the outputs {[tuple(o.shape) for o in outputs]}")
    if input_size is not None:
        input_size = _size("input_size", tuple(input_size))
    size = tuple(outputs[-1].shape[-2:])

    def shift(o) -> float:  # the mirrored map's offset to undo, in its own pixels
        return 0.0 if input_size is None else 1.0 - o.shape[-1] / input_size[1]

    heat = [_resample(o[:, :k], size) for o in outputs]
    tags = [_resample(outputs[0][:, k : 2 * k], size)]
    if flipped is not None:
        heat += [_resample(flip_maps(o[:, :k], flip_index), size, shift(o)) for o in flipped]
        tags.append(_resample(flip_maps(flipped[0][:, k : 2 * k], flip_index), size, shift(flipped[0])))
    return torch.stack(heat).mean(dim=0), torch.stack(tags, dim=-1)
