"""Drawing figures, and visibility from what was actually drawn.

A person is drawn as 16 parts (:data:`PART_NAMES`): the two halves of the torso (split by
the body's mid-plane, so that in a side view the near half hides the far shoulder and
hip), the head (rendered per pixel as a shaded ellipsoid with face, hair and ears) and 13
tapered capsules (neck, upper arms, forearms, hands, thighs, shins, feet). Every part
becomes a :class:`DrawOp` with a depth key; the scene sorts all ops of all people and
distractors and paints them back to front (painter's algorithm) into the colour image and,
with the same polygons, into a ``uint16`` label image that records which part of which
person owns each pixel (0: background, :data:`DISTRACTOR_LABEL`: a distractor).

Visibility (:func:`joint_visibility`) reads the label image: a joint inside the image is
visible (v=2) when the pixel at it is owned by one of the parts that meet at the joint
(:data:`JOINT_PARTS`), occluded (v=1) otherwise; the nose, eyes and ears must in addition
lie on the side of the head that faces the camera. Outside the image v=0.

Shapes are filled with sub-pixel precision (``shift=4``), shaded with a light direction:
each capsule / torso half is three nested fills (dark rim, mid tone, highlight shifted
towards the light) so limbs read as round.
"""

from __future__ import annotations

import bisect
import colorsys
import math
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from posenas.synthetic import body as B

PART_NAMES: tuple[str, ...] = ("torso_left", "torso_right", "head") + tuple(c[0] for c in B.CAPSULES)
NUM_PARTS = len(PART_NAMES)
TORSO_L, TORSO_R, HEAD = 0, 1, 2
CAPSULE_PART0 = 3  # part id of CAPSULES[0]
_P = {name: i for i, name in enumerate(PART_NAMES)}

#: Label value of distractor objects drawn among / in front of people (0 is background).
DISTRACTOR_LABEL = 65535
#: How many people the uint16 label image can tell apart.
MAX_PEOPLE_LABELLED = (DISTRACTOR_LABEL - 1) // NUM_PARTS


def person_label(person: int, part: int) -> int:
    """Label value of part ``part`` of the person with index ``person`` in the scene."""
    return 1 + person * NUM_PARTS + part


#: The parts that meet at each joint: the joint is visible when one of them owns its pixel.
JOINT_PARTS: tuple[tuple[int, ...], ...] = tuple(
    tuple(_P[p] for p in parts)
    for parts in (
        ("head",), ("head",), ("head",), ("head",), ("head",), ("head",),  # nose, eyes, ears, head top
        ("neck", "head"),  # upper neck
        ("neck", "torso_left", "torso_right"),  # thorax
        ("torso_left", "left_upper_arm"),
        ("torso_right", "right_upper_arm"),
        ("left_upper_arm", "left_forearm"),
        ("right_upper_arm", "right_forearm"),
        ("left_forearm", "left_hand"),
        ("right_forearm", "right_hand"),
        ("torso_left", "torso_right", "left_thigh", "right_thigh"),  # pelvis
        ("torso_left", "left_thigh"),
        ("torso_right", "right_thigh"),
        ("left_thigh", "left_shin"),
        ("right_thigh", "right_shin"),
        ("left_shin", "left_foot"),
        ("right_shin", "right_foot"),
    )
)
#: Minimum camera-facing component of the head-surface normal for the head points to be
#: visible (nose still shows in profile, the far eye hides first, ears show from the front
#: and the back); ``None``: no facing condition.
FACING_MIN: tuple[float | None, ...] = (-0.25, 0.2, 0.2, -0.3, -0.3) + (None,) * (B.NUM_JOINTS - 5)

_JOINT_PART_MASK = np.zeros((B.NUM_JOINTS, NUM_PARTS + 1), dtype=bool)  # column NUM_PARTS: "not this person"
for _j, _parts in enumerate(JOINT_PARTS):
    _JOINT_PART_MASK[_j, list(_parts)] = True

_SHIFT = 4
_ONE = 1 << _SHIFT
_ARC = 8  # points per capsule end arc
_ARC_T = np.linspace(0.0, 1.0, _ARC)
#: Nested shading layers: radius factor, shift towards the light (in radii), brightness.
_LAYERS = ((1.0, 0.0, 0.6), (0.74, 0.2, 0.8), (0.42, 0.36, 0.98))
_LAYER_F = np.array([ly[0] for ly in _LAYERS])
_LAYER_OFF = np.array([ly[1] for ly in _LAYERS])
_LAYER_TONE = np.array([ly[2] for ly in _LAYERS])
#: Painter's-order bias (units of the person's scale) that puts limbs in front of the
#: torso when both are at the same depth; the torso halves use their centre depth.
_LIMB_BIAS = 0.035
_NECK_BIAS = 0.02
_HEAD_BIAS = 0.025
_MIN_RADIUS = 1.0  # pixels: thinner parts are drawn this thick so every joint has a pixel


# ----------------------------------------------------------------------------- appearance

_SKIN_RGB = ((255, 226, 200), (241, 194, 167), (224, 172, 125), (198, 134, 86), (141, 85, 50), (88, 56, 40))
_HAIR_RGB = ((22, 18, 16), (55, 36, 26), (100, 70, 45), (190, 160, 105), (150, 148, 142), (125, 55, 30))
_HAIR_CUM = (0.3, 0.55, 0.73, 0.85, 0.92, 1.0)  # cumulative probabilities of the hair colours
_TROUSERS_HSV = ((0.6, 0.55, 0.45), (0.0, 0.0, 0.15), (0.11, 0.35, 0.65))  # denim, dark, khaki


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (b * 255.0, g * 255.0, r * 255.0)


def _clip255(x: float) -> float:
    return 0.0 if x < 0.0 else 255.0 if x > 255.0 else float(x)


def random_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    """A clothing / object colour (BGR): any hue, saturation and value."""
    h, s, v = rng.random(3)
    return _hsv(float(h), float(s) ** 1.3, 0.12 + 0.85 * float(v))


def random_colours(rng: np.random.Generator, k: int) -> list[list[float]]:
    """``k`` colours drawn like :func:`random_colour`, converted in one call (BGR lists)."""
    u = rng.random((k, 1, 3)).astype(np.float32)
    hsv = np.empty_like(u)
    hsv[..., 0] = 360.0 * u[..., 0]
    hsv[..., 1] = u[..., 1] ** 1.3
    hsv[..., 2] = 0.12 + 0.85 * u[..., 2]
    return (cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[:, 0] * 255.0).tolist()


def skin_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    """A skin tone (BGR) between light and dark, slightly jittered."""
    u = rng.random()
    g = rng.normal(0, 6, 3).tolist()
    t = u * (len(_SKIN_RGB) - 1)
    i = min(int(t), len(_SKIN_RGB) - 2)
    f = t - i
    a, b = _SKIN_RGB[i], _SKIN_RGB[i + 1]
    return tuple(_clip255(a[c] + f * (b[c] - a[c]) + g[2 - c]) for c in (2, 1, 0))


@dataclass
class Appearance:
    """Colours (BGR) and styles of one person."""

    part_colours: tuple[tuple[float, float, float], ...]  # (NUM_PARTS,) base colour of each part (torso halves: shirt)
    trousers: tuple[float, float, float]
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    hairline: float  # hair covers the head where qy - hair_slope * qz > hairline (head-frame unit sphere)
    hair_slope: float
    long_hair: bool
    lips: tuple[float, float, float]


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """Clothes (shirt with long/short/no sleeves, trousers or shorts, shoes), skin, hair.

    Left and right limbs get the same colours, as clothes do.
    """
    skin = skin_colour(rng)
    shirt = random_colour(rng)
    u = rng.random(10)
    if u[0] < 0.35:
        jitter = rng.normal(0, 12, 3)
        trousers = tuple(_clip255(c + j) for c, j in zip(_hsv(*_TROUSERS_HSV[int(u[1] * 3)]), jitter))
    else:
        trousers = random_colour(rng)
    shoes = _hsv(float(u[2]), 0.4 * float(u[3]), 0.05 + 0.6 * float(u[4]) ** 2)
    sleeves = 0 if u[5] < 0.45 else 1 if u[5] < 0.8 else 2  # long, short, none
    shorts = u[6] < 0.3
    sleeve_colour = shirt if u[7] < 0.85 else random_colour(rng)
    hair_rgb = _HAIR_RGB[min(bisect.bisect_right(_HAIR_CUM, u[8]), len(_HAIR_RGB) - 1)]
    jitter = rng.normal(0, 8, 3)
    hair = (_clip255(hair_rgb[2] + jitter[0]), _clip255(hair_rgb[1] + jitter[1]), _clip255(hair_rgb[0] + jitter[2]))
    colours = [shirt, shirt, skin, skin]  # torso halves, head, neck
    for _side in ("left", "right"):
        colours += [sleeve_colour if sleeves < 2 else skin, sleeve_colour if sleeves == 0 else skin, skin]
    for _side in ("left", "right"):
        colours += [trousers, skin if shorts else trousers, shoes]
    lips = (0.75 * skin[0], 0.75 * skin[1], min(255.0, skin[2] * 0.9 + 25))
    style = rng.random(3)
    return Appearance(
        part_colours=tuple(colours),
        trousers=trousers,
        skin=skin,
        hair=hair,
        hairline=-0.2 + 0.25 * float(style[0]),
        hair_slope=0.35 + 0.25 * float(style[1]),
        long_hair=bool(style[2] < 0.25),
        lips=lips,
    )


@dataclass(frozen=True)
class Light:
    """Scene light: unit direction in camera coordinates (towards the light) and ambient level."""

    direction: np.ndarray
    ambient: float

    @staticmethod
    def sample(rng: np.random.Generator) -> "Light":
        g = rng.normal(size=3)
        d = np.array([g[0], g[1] + 0.6, abs(g[2]) + 0.5])
        return Light(d / np.linalg.norm(d), float(rng.uniform(0.45, 0.8)))

    @property
    def image_dir(self) -> tuple[float, float]:
        """The light's direction in the image plane (u right, v down)."""
        return (float(self.direction[0]), -float(self.direction[1]))


# ----------------------------------------------------------------------------- canvas


class Canvas:
    """The colour image (BGR uint8) and the label image (uint16) being painted."""

    def __init__(self, image: np.ndarray):
        self.image = image
        self.label = np.zeros(image.shape[:2], dtype=np.uint16)
        self.height, self.width = image.shape[:2]


@dataclass
class DrawOp:
    """One paint step: ``draw(canvas)`` at depth ``key`` (larger is nearer; ties by ``order``)."""

    key: float
    order: int
    draw: Callable[[Canvas], None]


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(points * _ONE).astype(np.int32)


def capsule_outlines(p1: np.ndarray, p2: np.ndarray, r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """Convex outlines ``(K, 2 * _ARC, 2)`` of K tapered capsules (hulls of two discs).

    Vectorised over capsules; a capsule whose one disc contains the other becomes that disc.
    """
    d = p2 - p1
    length = np.hypot(d[:, 0], d[:, 1])
    contained = length <= np.abs(r1 - r2) + 1e-6
    if contained.any():
        p1, p2, r1, r2 = p1.copy(), p2.copy(), r1.copy(), r2.copy()
        for k in np.nonzero(contained)[0]:
            if r1[k] >= r2[k]:
                p2[k], r2[k] = p1[k], r1[k]
            else:
                p1[k], r1[k] = p2[k], r2[k]
        d = p2 - p1
        length = np.hypot(d[:, 0], d[:, 1])
    theta = np.arctan2(d[:, 1], d[:, 0])[:, None]
    sin_phi = (r1 - r2) / np.maximum(length, 1e-9)
    phi = np.arcsin(np.minimum(np.maximum(sin_phi, -1.0), 1.0))[:, None]
    a1 = (theta + (math.pi / 2) - phi) + _ARC_T * (math.pi + 2 * phi)
    a2 = (theta - (math.pi / 2) + phi) + _ARC_T * (math.pi - 2 * phi)
    out = np.empty((len(p1), 2 * _ARC, 2))
    out[:, :_ARC, 0] = p1[:, :1] + r1[:, None] * np.cos(a1)
    out[:, :_ARC, 1] = p1[:, 1:] + r1[:, None] * np.sin(a1)
    out[:, _ARC:, 0] = p2[:, :1] + r2[:, None] * np.cos(a2)
    out[:, _ARC:, 1] = p2[:, 1:] + r2[:, None] * np.sin(a2)
    return out


def shade(colour, factor: float) -> tuple[float, float, float]:
    f = float(factor)
    return (min(255.0, colour[0] * f), min(255.0, colour[1] * f), min(255.0, colour[2] * f))


def shaded_capsules(p1: np.ndarray, p2: np.ndarray, r1: np.ndarray, r2: np.ndarray, light: Light) -> np.ndarray:
    """Fixed-point outlines ``(layers, K, N, 2)`` of K capsules for the shading layers: layer 0
    is the full shape (also used for the label), inner layers are thinner and moved across
    the limb towards the light."""
    k = len(p1)
    r1 = np.maximum(r1, _MIN_RADIUS)
    r2 = np.maximum(r2, _MIN_RADIUS)
    d = p2 - p1
    length = np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-9)
    lx, ly = light.image_dir
    # Light component across each capsule: (l . perp) perp, perp = (-dy, dx) / |d|.
    px, py = -d[:, 1] / length, d[:, 0] / length
    scale = _LAYER_OFF[:, None] * ((px * lx + py * ly) * 0.5 * (r1 + r2))  # (layers, K)
    off_x, off_y = scale * px, scale * py
    n_layers = len(_LAYERS)
    q1 = np.empty((n_layers, k, 2))
    q2 = np.empty((n_layers, k, 2))
    q1[:, :, 0] = p1[:, 0] + off_x
    q1[:, :, 1] = p1[:, 1] + off_y
    q2[:, :, 0] = p2[:, 0] + off_x
    q2[:, :, 1] = p2[:, 1] + off_y
    rr1 = (_LAYER_F[:, None] * r1).ravel()
    rr2 = (_LAYER_F[:, None] * r2).ravel()
    return _fixed(capsule_outlines(q1.reshape(-1, 2), q2.reshape(-1, 2), rr1, rr2)).reshape(n_layers, k, -1, 2)


def capsule_draw(label: int, layers: list[np.ndarray], colours: list[tuple]) -> Callable[[Canvas], None]:
    """A paint step for one shaded capsule: label fill, then the colour layers."""

    def draw(canvas: Canvas) -> None:
        cv2.fillConvexPoly(canvas.label, layers[0], label, cv2.LINE_8, _SHIFT)
        img = canvas.image
        cv2.fillConvexPoly(img, layers[0], colours[0], cv2.LINE_AA, _SHIFT)
        for pts, col in zip(layers[1:], colours[1:]):
            cv2.fillConvexPoly(img, pts, col, cv2.LINE_8, _SHIFT)

    return draw


def _brightness(axis3d: np.ndarray, light: Light) -> np.ndarray:
    """Brightest tone of lit cylinders with these axes (..., 3): ambient + diffuse * |L x axis|."""
    n2 = (axis3d * axis3d).sum(-1) + 1e-12
    cos2 = (axis3d @ light.direction) ** 2 / n2
    return light.ambient + (1.0 - light.ambient) * np.sqrt(np.maximum(1.0 - cos2, 0.0)) + 0.15


# ----------------------------------------------------------------------------- torso


def _torso_outlines(figs: B.Figure2D, light: Light) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point outlines ``(layers, N, 2, 2L, 2)`` of the torso halves (left, right) and
    their depth keys ``(N, 2)``.

    Each torso cross-section is an ellipse with half-axes ``lateral`` and ``forward``; its
    projected extent across the image-space spine is ``a cos t + b sin t`` (``a``, ``b`` the
    axes' components along the spine normal), the left half being ``t`` in [-pi/2, pi/2].
    Outlines run up one side and down the other; inner layers are the whole torso's
    shading bands clipped to each half, so the two halves shade as one body.
    """
    c3 = figs.torso_centres
    n, n_lv = c3.shape[:2]
    c2 = np.empty((n, n_lv, 2))
    c2[..., 0] = figs.origin[:, None, 0] + c3[..., 0]
    c2[..., 1] = figs.origin[:, None, 1] - c3[..., 1]
    diff = c2[:, 1:] - c2[:, :-1]
    tangent = np.empty_like(c2)
    tangent[:, 0] = diff[:, 0]
    tangent[:, -1] = diff[:, -1]
    tangent[:, 1:-1] = diff[:, :-1] + diff[:, 1:]
    tl = np.maximum(np.hypot(tangent[..., 0], tangent[..., 1]), 1e-9)
    nx, ny = -tangent[..., 1] / tl, tangent[..., 0] / tl  # (N, L)
    lat, fwd = figs.torso_lateral, figs.torso_forward
    a = lat[..., 0] * nx - lat[..., 1] * ny
    b = fwd[..., 0] * nx - fwd[..., 1] * ny
    full = np.hypot(a, b)
    ab = np.abs(b)
    pos = np.empty((n, 2, n_lv), dtype=bool)  # sign of the half's lateral component: left +a, right -a
    pos[:, 0] = a >= 0
    pos[:, 1] = a <= 0
    hi = ab[:, None] + (full - ab)[:, None] * pos
    pos[:, 0] = a <= 0
    pos[:, 1] = a >= 0
    lo = -ab[:, None] - (full - ab)[:, None] * pos
    lx, ly = light.image_dir
    light_off = (nx * lx + ny * ly) * full  # (N, L)
    centre = _LAYER_OFF[:, None, None, None] * light_off[None, :, None, :]  # (layers, N, 1, L)
    half_w = _LAYER_F[:, None, None, None] * full[None, :, None, :]
    l_hi = np.maximum(np.minimum(hi, centre + half_w), lo)
    l_lo = np.maximum(np.minimum(np.maximum(lo, centre - half_w), l_hi), lo)
    ring = np.empty((len(_LAYERS), n, 2, 2 * n_lv, 2))
    cx, cy = c2[:, None, :, 0], c2[:, None, :, 1]
    nxx, nyy = nx[:, None], ny[:, None]
    ring[..., :n_lv, 0] = cx + nxx * l_hi
    ring[..., :n_lv, 1] = cy + nyy * l_hi
    ring[..., n_lv:, 0] = (cx + nxx * l_lo)[..., ::-1]
    ring[..., n_lv:, 1] = (cy + nyy * l_lo)[..., ::-1]
    keys = np.empty((n, 2))
    depth_c = c3[..., 2].sum(1) * (1.0 / n_lv)
    depth_lat = lat[..., 2].sum(1) * (0.5 / n_lv)
    keys[:, 0] = depth_c + depth_lat
    keys[:, 1] = depth_c - depth_lat
    return _fixed(ring), keys


def _torso_draw(outline: np.ndarray, fills: list, label: int) -> Callable[[Canvas], None]:
    def draw(canvas: Canvas) -> None:
        cv2.fillPoly(canvas.label, [outline], label, cv2.LINE_8, _SHIFT)
        for pts, col, edge in fills:
            cv2.fillPoly(canvas.image, [pts], col, cv2.LINE_AA if edge else cv2.LINE_8, _SHIFT)
            if edge:  # antialiased edges leave a seam where the two halves meet; fill it solid
                cv2.fillPoly(canvas.image, [pts], col, cv2.LINE_8, _SHIFT)

    return draw


def _ring_index(n_lv: int, first: int, last: int) -> np.ndarray:
    """Indices of a ring outline (up ``n_lv`` levels, then back down) restricted to levels first..last."""
    return np.r_[first : last + 1, 2 * n_lv - 1 - last : 2 * n_lv - first]


_TROUSER_IDX = _ring_index(B.NUM_TORSO_LEVELS, 0, B.BELT_LEVEL)
_SHIRT_IDX = _ring_index(B.NUM_TORSO_LEVELS, B.BELT_LEVEL, B.NUM_TORSO_LEVELS - 1)


# ----------------------------------------------------------------------------- head

#: Head-frame unit-sphere points whose camera-facing normal decides visibility / drawing:
#: nose, eyes, ears (the FACING_MIN joints).
_FACING_Q = np.array([B.HEAD_POINTS[j] for j in range(5)])
_FACING_Q = _FACING_Q / np.linalg.norm(_FACING_Q, axis=1, keepdims=True)
#: Points for the protruding features: nose root, nose tip, ear centres and ear tops / bottoms.
_FEATURE_Q = np.array([
    (0.0, 0.02, 0.97), B.HEAD_POINTS[B.NOSE],
    B.HEAD_POINTS[B.L_EAR], B.HEAD_POINTS[B.R_EAR],
    (B.HEAD_POINTS[B.L_EAR][0], B.HEAD_POINTS[B.L_EAR][1] + 0.1, B.HEAD_POINTS[B.L_EAR][2]),
    (B.HEAD_POINTS[B.R_EAR][0], B.HEAD_POINTS[B.R_EAR][1] + 0.1, B.HEAD_POINTS[B.R_EAR][2]),
    (B.HEAD_POINTS[B.L_EAR][0], B.HEAD_POINTS[B.L_EAR][1] - 0.1, B.HEAD_POINTS[B.L_EAR][2]),
    (B.HEAD_POINTS[B.R_EAR][0], B.HEAD_POINTS[B.R_EAR][1] - 0.1, B.HEAD_POINTS[B.R_EAR][2]),
    (0.0, 0.1, -0.4), (0.0, -1.4, -0.5),  # long hair: top, bottom
])


@dataclass
class HeadGeometry:
    """Per-figure head quantities, batched over N. The head is the ellipsoid ``{A q : |q| = 1}``
    around the head centre, ``A`` = head axes scaled by the radii (camera frame, pixels)."""

    inverse: np.ndarray  # (N, 3, 3) A^-1: camera offset -> head-frame unit-sphere coordinates
    facing: np.ndarray  # (N, 5) camera-facing normal component at nose, eyes, ears
    features: np.ndarray  # (N, len(_FEATURE_Q), 3): image u, v and depth offset of the feature points
    box: np.ndarray  # (N, 4) x1, y1, x2, y2 of the projected ellipsoid


def head_geometry(figs: B.Figure2D) -> HeadGeometry:
    """Head inverse, facing of the nose / eyes / ears, feature points and head boxes."""
    mat = figs.head_axes * figs.head_radii[:, None, :]
    inv = figs.head_axes.transpose(0, 2, 1) / figs.head_radii[:, :, None]  # axes are orthonormal
    normals = inv.transpose(0, 2, 1) @ _FACING_Q.T  # (N, 3, 5)
    facing = normals[:, 2] / np.sqrt((normals * normals).sum(1))
    offs = (mat @ _FEATURE_Q.T).transpose(0, 2, 1)  # (N, F, 3)
    centre = figs.points[:, B.HEAD_CENTER]
    feats = np.empty_like(offs)
    feats[..., 0] = centre[:, None, 0] + offs[..., 0]
    feats[..., 1] = centre[:, None, 1] - offs[..., 1]
    feats[..., 2] = offs[..., 2]
    ext = np.sqrt((mat[:, :2] ** 2).sum(2))  # (N, 2) half extents along u and v
    box = np.concatenate([centre - ext, centre + ext], 1).astype(np.float32)
    return HeadGeometry(inv, facing, feats, box)


def _head_draw(
    centre: tuple[float, float], axes: np.ndarray, inv: np.ndarray, box: np.ndarray, app: Appearance, light: Light,
    label: int, extras: list,
) -> Callable[[Canvas], None]:
    """Per-pixel ellipsoid head: ray-cast each pixel of its box (front intersection of the
    orthographic ray with the ellipsoid), map the hit to head-frame unit-sphere coordinates
    ``q`` (left, up, forward), paint hair / skin / eyes / brows / mouth by ``q`` and shade
    with the sphere normal; then the protruding nose and ears (``extras``: fixed-point
    outlines with colours)."""
    m = inv.T @ inv
    m00, m01, m02, m11, m12, m22 = (float(m[0, 0]), float(m[0, 1]), float(m[0, 2]), float(m[1, 1]), float(m[1, 2]), float(m[2, 2]))
    ai = inv.tolist()
    lh = (axes.T @ light.direction).tolist()  # light direction in the head frame
    vz = axes[2].tolist()  # camera z axis in the head frame
    u, v = centre
    palette = np.array([app.skin, app.hair, (25.0, 20.0, 20.0), app.lips, shade(app.hair, 0.8)], dtype=np.float32)
    amb = light.ambient
    hairline, slope = app.hairline, app.hair_slope
    bx0, by0, bx1, by1 = (float(c) for c in box)

    def draw(canvas: Canvas) -> None:
        h, w = canvas.height, canvas.width
        x0, x1 = max(int(math.floor(bx0)) - 1, 0), min(int(math.ceil(bx1)) + 2, w)
        y0, y1 = max(int(math.floor(by0)) - 1, 0), min(int(math.ceil(by1)) + 2, h)
        if x0 < x1 and y0 < y1:
            xx = (np.arange(x0, x1, dtype=np.float32) - u)[None, :]
            yy = (v - np.arange(y0, y1, dtype=np.float32))[:, None]
            bq = m02 * xx + m12 * yy
            cq = (m00 * xx) * xx + (2 * m01 * xx) * yy + (m11 * yy) * yy - 1.0
            disc = bq * bq - m22 * cq
            inside = disc > 0
            if inside.any():
                zz = (np.sqrt(np.maximum(disc, 0.0)) - bq) * (1.0 / m22)
                qx = ai[0][0] * xx + ai[0][1] * yy + ai[0][2] * zz
                qy = ai[1][0] * xx + ai[1][1] * yy + ai[1][2] * zz
                qz = ai[2][0] * xx + ai[2][1] * yy + ai[2][2] * zz
                lam = np.maximum(qx * lh[0] + qy * lh[1] + qz * lh[2], 0.0)
                tone = (amb + (1.0 - amb) * lam) * (0.8 + 0.25 * (qx * vz[0] + qy * vz[1] + qz * vz[2]))
                idx = (qy - slope * qz > hairline).astype(np.intp)
                face = qz > 0.55
                if face.any():
                    ax = np.abs(qx) - 0.34
                    idx[face & (np.abs(ax) < 0.17) & (np.abs(qy - 0.27) < 0.06)] = 4  # brows
                    idx[face & (ax * ax + (qy - 0.08) ** 2 < 0.017)] = 2  # eyes
                    idx[face & (np.abs(qx) < 0.22) & (np.abs(qy + 0.47) < 0.065)] = 3  # mouth
                colour = np.minimum(palette[idx] * tone[..., None], 255.0).astype(np.uint8)
                np.copyto(canvas.image[y0:y1, x0:x1], colour, where=inside[..., None])
                np.copyto(canvas.label[y0:y1, x0:x1], label, where=inside, casting="unsafe")
        for pts, col in extras:
            cv2.fillConvexPoly(canvas.label, pts, label, cv2.LINE_8, _SHIFT)
            cv2.fillConvexPoly(canvas.image, pts, col, cv2.LINE_AA, _SHIFT)

    return draw


# ----------------------------------------------------------------------------- people


_CAPSULE_BIAS = np.array([_NECK_BIAS] + [_LIMB_BIAS] * (len(B.CAPSULES) - 1))
_N_EXTRA = 4  # per person, after the body capsules: nose, left ear, right ear, long hair


def people_ops(
    figs: B.Figure2D, apps: list[Appearance], light: Light, layer_keys: list[float], order0: int = 0
) -> tuple[list[DrawOp], list[tuple[float, float, float, float]], HeadGeometry]:
    """Paint steps of N people (person ``i`` gets labels ``person_label(i, part)``), with
    depth keys offset by ``layer_keys[i]``; also each person's painted extent
    ``x0, y0, x1, y1`` and their head geometry. All outlines and colours are computed for
    all people at once; only the closures are made per part."""
    n = len(figs)
    n_caps = len(B.CAPSULES)
    n_all = n_caps + _N_EXTRA
    pts, depth = figs.points, figs.depth
    head = head_geometry(figs)
    feats = head.features
    # Capsules: body parts, then nose (root -> tip), ears (top -> bottom), long hair.
    p1 = np.empty((n, n_all, 2))
    p2 = np.empty((n, n_all, 2))
    r = np.empty((n, n_all, 2))
    p1[:, :n_caps] = pts[:, B.CAPSULE_A]
    p2[:, :n_caps] = pts[:, B.CAPSULE_B]
    p1[:, n_caps:] = feats[:, [0, 4, 5, 8], :2]
    p2[:, n_caps:] = feats[:, [1, 6, 7, 9], :2]
    r[:, :n_caps] = figs.capsule_radii
    r_small = figs.head_radii.min(1)[:, None]
    r[:, n_caps : n_caps + 3] = r_small[:, :, None] * np.array([[0.16, 0.13], [0.16, 0.14], [0.16, 0.14]])
    r[:, -1] = figs.head_radii[:, :1] * np.array([0.95, 0.8])
    caps = shaded_capsules(p1.reshape(-1, 2), p2.reshape(-1, 2), r[..., 0].ravel(), r[..., 1].ravel(), light)
    caps = caps.reshape(len(_LAYERS), n, n_all, -1, 2)
    # Colours: base colour x tone of each layer x brightness of the part.
    axis3 = np.empty((n, n_caps, 3))
    axis3[..., 0] = p2[:, :n_caps, 0] - p1[:, :n_caps, 0]
    axis3[..., 1] = p1[:, :n_caps, 1] - p2[:, :n_caps, 1]
    axis3[..., 2] = depth[:, B.CAPSULE_B] - depth[:, B.CAPSULE_A]
    factor = np.empty((n, n_all, len(_LAYERS)))
    factor[:, :n_caps] = _brightness(axis3, light)[..., None] * _LAYER_TONE
    factor[:, n_caps] = 0.8
    factor[:, n_caps + 1 : n_caps + 3] = (0.7 + 0.2 * np.maximum(head.facing[:, 3:5], 0.0))[..., None]
    factor[:, -1] = _LAYER_TONE
    base = np.empty((n, n_all, 3))
    base[:, :n_caps] = [app.part_colours[CAPSULE_PART0:] for app in apps]
    base[:, n_caps : n_caps + 3] = np.array([app.skin for app in apps])[:, None, :]
    base[:, -1] = [app.hair for app in apps]
    colours = np.minimum(base[:, :, None, :] * factor[..., None], 255.0).tolist()  # (N, n_all, layers, 3)
    cap_keys = (0.5 * (depth[:, B.CAPSULE_A] + depth[:, B.CAPSULE_B]) + _CAPSULE_BIAS * figs.scale[:, None]).tolist()
    hair_keys = (depth[:, B.HEAD_CENTER] + 0.5 * (feats[:, 8, 2] + feats[:, 9, 2])).tolist()
    head_keys = (depth[:, B.HEAD_CENTER] + _HEAD_BIAS * figs.scale).tolist()
    # Torso halves: outlines, keys and colours (N, halves, layers, trousers / shirt, 3).
    torso, torso_keys = _torso_outlines(figs, light)
    torso_keys = torso_keys.tolist()
    spine = figs.torso_centres[:, -2] - figs.torso_centres[:, 0]
    t_factor = _brightness(spine, light)[:, None] * _LAYER_TONE  # (N, layers)
    t_base = np.array([[[app.trousers, app.part_colours[TORSO_L]], [app.trousers, app.part_colours[TORSO_R]]] for app in apps])
    t_colours = np.minimum(t_base[:, :, None] * t_factor[:, None, :, None, None], 255.0).tolist()
    facing = head.facing.tolist()
    centres = pts[:, B.HEAD_CENTER].tolist()
    # Painted extents: every outline point, and the head box with room for nose and ears.
    hair_on = np.array([app.long_hair for app in apps])
    outline_pts = np.where(hair_on[:, None, None], caps[0, :, :n_caps + 1].reshape(n, -1, 2),
                           np.concatenate([caps[0, :, :n_caps], caps[0, :, :1]], 1).reshape(n, -1, 2))
    lo = np.minimum(outline_pts.min(1), torso[0].min((1, 2))) / _ONE
    hi = np.maximum(outline_pts.max(1), torso[0].max((1, 2))) / _ONE
    margin = (0.45 * figs.head_radii.max(1) + 1.0)[:, None]
    lo = np.minimum(lo, head.box[:, :2] - margin).tolist()
    hi = np.maximum(hi, head.box[:, 2:] + margin).tolist()
    if hair_on.any():
        hair_pts = caps[0, :, -1]
        hair_lo, hair_hi = (hair_pts.min(1) / _ONE).tolist(), (hair_pts.max(1) / _ONE).tolist()
    n_layers = len(_LAYERS)
    ops: list[tuple[float, Callable]] = []
    extents = []
    for i, app in enumerate(apps):
        label0 = person_label(i, 0)
        key0 = layer_keys[i]
        for h, part in enumerate((TORSO_L, TORSO_R)):
            fills = []
            for li in range(n_layers):
                ring = torso[li, i, h]
                col = t_colours[i][h][li]
                fills.append((ring[_TROUSER_IDX], col[0], li == 0))
                fills.append((ring[_SHIRT_IDX], col[1], li == 0))
            ops.append((key0 + torso_keys[i][h], _torso_draw(torso[0, i, h], fills, label0 + part)))
        layers_i = caps[:, i]
        for k in range(n_caps):
            ops.append((key0 + cap_keys[i][k], capsule_draw(label0 + CAPSULE_PART0 + k, layers_i[:, k], colours[i][k])))
        extras = []
        for e, joint in ((0, B.NOSE), (1, B.L_EAR), (2, B.R_EAR)):
            if facing[i][joint] > FACING_MIN[joint]:
                extras.append((layers_i[0, n_caps + e], colours[i][n_caps + e][0]))
        x0, y0 = lo[i]
        x1, y1 = hi[i]
        if app.long_hair:
            ops.append((key0 + hair_keys[i], capsule_draw(label0 + HEAD, layers_i[:, -1], colours[i][-1])))
            x0, y0 = min(x0, hair_lo[i][0]), min(y0, hair_lo[i][1])
            x1, y1 = max(x1, hair_hi[i][0]), max(y1, hair_hi[i][1])
        draw_head = _head_draw(centres[i], figs.head_axes[i], head.inverse[i], head.box[i], app, light, label0 + HEAD, extras)
        ops.append((key0 + head_keys[i], draw_head))
        extents.append((x0, y0, x1, y1))
    return [DrawOp(k, order0 + j, d) for j, (k, d) in enumerate(ops)], extents, head


def figure_bounds(figs: B.Figure2D) -> np.ndarray:
    """Approximate painted extents ``(N, 4)`` ``x0, y0, x1, y1`` — the points padded by the
    thickest part and the head radius — for placing people before they are painted."""
    pad = np.maximum(figs.capsule_radii.max((1, 2)), 1.3 * figs.head_radii.max(1))[:, None] + 2.0
    return np.concatenate([figs.points.min(1) - pad, figs.points.max(1) + pad], 1)


# ----------------------------------------------------------------------------- read back


def joint_visibility(label: np.ndarray, points: np.ndarray, facing: np.ndarray, person: int) -> np.ndarray:
    """``v`` (NUM_JOINTS,) from the label image: 2 visible, 1 occluded, 0 outside the image.

    ``points`` are the person's joint positions ``(>= NUM_JOINTS, 2)``, ``facing`` the
    camera-facing normal components at nose, eyes and ears (:class:`HeadGeometry`).
    Inside means the joint's nearest pixel centre is in the image. A joint is visible when
    that pixel belongs to one of the parts meeting at the joint; if the pixel is bare
    background (a rasterisation gap at a very thin part, nothing in front), its 3x3
    neighbourhood is used instead. Head points also need a camera-facing head surface.
    """
    h, w = label.shape
    xy = points[: B.NUM_JOINTS]
    ix = np.floor(xy[:, 0] + 0.5).astype(np.int64)
    iy = np.floor(xy[:, 1] + 0.5).astype(np.int64)
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    v = inside.astype(np.float32)
    base = person_label(person, 0)
    labs = label[np.where(inside, iy, 0), np.where(inside, ix, 0)].astype(np.int64) - base
    parts = np.where((labs >= 0) & (labs < NUM_PARTS), labs, NUM_PARTS)
    own = _JOINT_PART_MASK[np.arange(B.NUM_JOINTS), parts] & inside
    bare = inside & ~own & (labs == -base)
    for j in np.nonzero(bare)[0]:
        win = label[max(iy[j] - 1, 0) : iy[j] + 2, max(ix[j] - 1, 0) : ix[j] + 2].astype(np.int64) - base
        near = win[(win >= 0) & (win < NUM_PARTS)]
        own[j] = bool(_JOINT_PART_MASK[j, near].any()) if near.size else False
    for j in range(len(facing)):
        if own[j] and not facing[j] > FACING_MIN[j]:
            own[j] = False
    v[own] = 2.0
    return v


def person_mask_stats(
    label: np.ndarray, person: int, extent: tuple[float, float, float, float], joints: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """``(bbox x, y, w, h, visible pixel count)`` of a person's visible mask in the label
    image, searched within ``extent``.

    The bbox follows COCO's box-from-mask convention (pycocotools ``toBbox``): a mask whose
    pixels span columns ``x0..x1`` gets ``x = x0, w = x1 - x0 + 1``, so the box lies in
    ``[0, W] x [0, H]``. (Joints use pixel centres at integers, so a joint on pixel column
    ``i`` has ``x`` in ``[i - 0.5, i + 0.5)``: it lies in the box shifted by half a pixel.)
    With ``joints`` (``(K, 3)`` x, y, v) the box also covers the pixels of visible joints,
    which :func:`joint_visibility` may find visible through a neighbouring pixel where a
    very thin part left a rasterisation gap."""
    h, w = label.shape
    x0 = max(int(math.floor(extent[0])) - 1, 0)
    y0 = max(int(math.floor(extent[1])) - 1, 0)
    x1 = min(int(math.ceil(extent[2])) + 2, w)
    y1 = min(int(math.ceil(extent[3])) + 2, h)
    if x0 >= x1 or y0 >= y1:
        return np.zeros(4, np.float32), 0
    lo = person_label(person, 0)
    mask = cv2.inRange(label[y0:y1, x0:x1], lo, lo + NUM_PARTS - 1)
    area = cv2.countNonZero(mask)
    if area == 0:
        return np.zeros(4, np.float32), 0
    bx, by, bw, bh = cv2.boundingRect(mask)
    lo_x, lo_y, hi_x, hi_y = x0 + bx, y0 + by, x0 + bx + bw - 1, y0 + by + bh - 1
    if joints is not None:
        vis = joints[joints[:, 2] == 2]
        if len(vis):
            jx = np.floor(vis[:, 0] + 0.5)
            jy = np.floor(vis[:, 1] + 0.5)
            lo_x, hi_x = min(lo_x, int(jx.min())), max(hi_x, int(jx.max()))
            lo_y, hi_y = min(lo_y, int(jy.min())), max(hi_y, int(jy.max()))
    return np.array([lo_x, lo_y, hi_x - lo_x + 1, hi_y - lo_y + 1], dtype=np.float32), int(area)
