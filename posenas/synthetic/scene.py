"""Synthetic-people scenes: backgrounds, distractors, 1..N people, camera effects.

Public API: :func:`render_image` and :func:`render_video` (with :class:`SceneConfig`),
returning :class:`RenderedImage` s whose people carry joints in :data:`CANONICAL_JOINTS`
order with honest visibility (see :mod:`posenas.synthetic.render`).

A seed first becomes a :class:`ScenePlan` (everything random: background image, people
with shapes, clothes and per-frame poses / cameras, distractors with motion, light,
camera effects), which :func:`render_frame` then paints frame by frame. All randomness
comes from ``np.random.default_rng([seed, mode, stream])`` generators, one stream per
concern, so the same seed gives byte-identical output and e.g. ``max_people`` does not
change the background.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from posenas.errors import PosenasError
from posenas.synthetic import body as B
from posenas.synthetic import render as R

CANONICAL_JOINTS: tuple[str, ...] = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "head_top", "upper_neck", "thorax",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "pelvis", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")  # fmt: skip
assert CANONICAL_JOINTS == B.JOINT_NAMES

_MODE_IMAGE, _MODE_VIDEO = 0, 1
_STREAM_BACKGROUND, _STREAM_PEOPLE, _STREAM_DISTRACTORS, _STREAM_CAMERA = range(4)
#: Depth-key distance between people's layers: people never interleave, distractors go between.
_LAYER = 1.0e6


@dataclass(frozen=True)
class SceneConfig:
    """What a scene may contain. Probabilities are per image (per clip in video mode)."""

    width: int = 256
    height: int = 256
    max_people: int = 3  # 1..max_people people per image, fewer more likely (P(n) ~ 1/n)
    min_person_height: float = 0.25  # standing height as a fraction of the image height
    max_person_height: float = 1.0
    edge_prob: float = 0.25  # a person is placed partly outside the frame
    overlap_prob: float = 0.5  # a further person is placed overlapping an earlier one
    clutter: float = 1.0  # background clutter density (0: smooth gradient + noise only)
    occluder_prob: float = 0.5  # occluding distractors among / in front of the people
    blur_prob: float = 0.35  # defocus or motion blur
    max_noise: float = 10.0  # sensor noise standard deviation, grey levels (drawn in 0..max)
    lighting: float = 1.0  # strength of global lighting / contrast / colour-cast variation
    max_yaw: float = 60.0  # people face the camera within +-max_yaw degrees (180: any direction)

    def __post_init__(self) -> None:
        for name in ("width", "height", "max_people"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise PosenasError(f"SceneConfig.{name}: must be an integer, got {value!r}")
        if self.width < 16 or self.height < 16:
            raise PosenasError(f"SceneConfig.width/height: must be >= 16, got {self.width}x{self.height}")
        if not 1 <= self.max_people <= R.MAX_PEOPLE_LABELLED:
            raise PosenasError(f"SceneConfig.max_people: must be in 1..{R.MAX_PEOPLE_LABELLED}, got {self.max_people}")
        if not 0.02 <= self.min_person_height <= self.max_person_height <= 4.0:
            raise PosenasError(
                "SceneConfig.min_person_height/max_person_height: need 0.02 <= min <= max <= 4, "
                f"got {self.min_person_height}, {self.max_person_height}"
            )
        for name in ("edge_prob", "overlap_prob", "occluder_prob", "blur_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise PosenasError(f"SceneConfig.{name}: must be a probability in [0, 1], got {value}")
        if not 0 <= self.max_yaw <= 180:
            raise PosenasError(f"SceneConfig.max_yaw: must be in [0, 180] degrees, got {self.max_yaw}")
        for name in ("clutter", "max_noise", "lighting"):
            if not getattr(self, name) >= 0:
                raise PosenasError(f"SceneConfig.{name}: must be >= 0, got {getattr(self, name)}")


@dataclass
class RenderedPerson:
    joints: np.ndarray  # (21, 3) float32: x, y (pixels, centres at integers; true positions even outside), v
    bbox: np.ndarray  # (4,) float32 x, y, w, h of the visible mask (COCO box-from-mask convention), in [0, W] x [0, H]
    area: float  # visible mask pixels
    head_box: np.ndarray  # (4,) float32 x1, y1, x2, y2 of the head (geometric; may leave the image)
    track_id: int  # 0..n-1 within an image; stable over a video


@dataclass
class RenderedImage:
    image: np.ndarray  # (H, W, 3) uint8 BGR
    people: list[RenderedPerson]  # only people with area > 0


# ----------------------------------------------------------------------------- plan


@dataclass
class PersonTrack:
    """One person over the frames of a plan (a still image is a one-frame plan)."""

    shape: B.BodyShape
    appearance: R.Appearance
    angles: np.ndarray  # (T, NUM_DOF)
    yaw: np.ndarray  # (T,)
    pitch: np.ndarray
    roll: np.ndarray
    scale: np.ndarray  # (T,) pixels per unit
    centre: np.ndarray  # (T, 2) pixel position of the pelvis
    rank: int  # depth order: 0 is the farthest
    track_id: int


@dataclass
class Distractor:
    """An object drawn among or in front of the people (label :data:`render.DISTRACTOR_LABEL`).

    ``kind``: ``"capsule"`` (limb-like; ``points`` is a chain of 2-3 points with ``radii``),
    ``"pole"`` / ``"box"`` (``points`` are the 4 polygon corners), ``"blob"`` (``points[0]``
    the centre, ``radii`` the half-axes, ``angle`` in degrees). ``layer`` is its depth among
    the people's ranks: -0.5 behind everyone, 0.5 between ranks 0 and 1, ``n - 0.5`` in
    front of all n people. ``velocity`` in pixels per frame.
    """

    kind: str
    points: np.ndarray
    radii: np.ndarray
    colour: tuple[float, float, float]
    layer: float
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))
    angle: float = 0.0

    def op(self, t: int, light: R.Light, order: int) -> R.DrawOp:
        pts = self.points + self.velocity * t
        colour = self.colour
        label = R.DISTRACTOR_LABEL
        if self.kind == "capsule":
            layers = R.shaded_capsules(pts[:-1], pts[1:], self.radii[:-1], self.radii[1:], light)
            tones = [R.shade(colour, tone * (0.75 + 0.35 * light.ambient)) for _, _, tone in R._LAYERS]
            draws = [R.capsule_draw(label, list(layers[:, k]), tones) for k in range(len(pts) - 1)]

            def draw(canvas: R.Canvas) -> None:
                for d in draws:
                    d(canvas)

        elif self.kind == "blob":
            centre = (float(pts[0, 0]), float(pts[0, 1]))
            axes = (float(self.radii[0]), float(self.radii[1]))
            lx, ly = light.image_dir
            box = (centre, (2 * axes[0], 2 * axes[1]), self.angle)
            inner = ((centre[0] + 0.2 * axes[0] * lx, centre[1] + 0.2 * axes[1] * ly), (1.3 * axes[0], 1.3 * axes[1]), self.angle)

            def draw(canvas: R.Canvas) -> None:
                cv2.ellipse(canvas.label, box, label, -1, cv2.LINE_8)
                cv2.ellipse(canvas.image, box, R.shade(colour, 0.7), -1, cv2.LINE_AA)
                cv2.ellipse(canvas.image, inner, R.shade(colour, 0.95), -1, cv2.LINE_AA)

        else:  # pole / box: a polygon, two-tone shading along its long axis
            fixed = R._fixed(pts)
            half = R._fixed(np.array([pts[0], 0.5 * (pts[0] + pts[1]), 0.5 * (pts[2] + pts[3]), pts[3]]))
            dark, lit = R.shade(colour, 0.72), R.shade(colour, 1.0)

            def draw(canvas: R.Canvas) -> None:
                cv2.fillConvexPoly(canvas.label, fixed, label, cv2.LINE_8, R._SHIFT)
                cv2.fillConvexPoly(canvas.image, fixed, lit, cv2.LINE_AA, R._SHIFT)
                cv2.fillConvexPoly(canvas.image, half, dark, cv2.LINE_AA, R._SHIFT)

        return R.DrawOp(self.layer * _LAYER, order, draw)


@dataclass
class CameraEffects:
    """Whole-image effects after painting: tone curve (sometimes), colour transform
    (contrast, brightness, saturation, colour cast), illumination field, blur, noise."""

    gamma_lut: np.ndarray | None  # (256, 1) uint8, or None for gamma 1
    colour_matrix: np.ndarray  # (3, 4) float32 for cv2.transform on BGR
    illumination: np.ndarray | None  # (H, W, 3) uint8 gains * 128
    blur: tuple[str, float, float] | None  # ("gauss", sigma, 0) | ("motion", length, angle)
    noise: float  # standard deviation, grey levels
    noise_offsets: np.ndarray  # (T, 2) offsets into the noise bank, per frame


@dataclass
class ScenePlan:
    width: int
    height: int
    num_frames: int
    background: np.ndarray  # (H, W, 3) uint8, with background clutter
    people: list[PersonTrack]
    figures: B.Figure2D  # all people x frames, person-major: index person * num_frames + t
    distractors: list[Distractor]
    light: R.Light
    effects: CameraEffects

    def frame_figures(self, t: int) -> B.Figure2D:
        return self.figures.select(np.arange(len(self.people)) * self.num_frames + t)


# ----------------------------------------------------------------------------- background


def _octave_noise(rng: np.random.Generator, h: int, w: int, slope: float) -> np.ndarray:
    """Multi-scale value noise ``(h, w, 3)`` float32 (about unit range), octaves from 3 cells
    up to ``(h, w)`` in steps of 3: each octave is upsampled bilinearly and a finer one added."""
    sizes = [3]
    while sizes[-1] * 3 <= max(h, w):
        sizes.append(sizes[-1] * 3)
    noise = rng.standard_normal(sum(4 * sz * sz for sz in sizes), dtype=np.float32)
    acc = np.zeros((3, 3, 3), np.float32)
    amp, start = 1.0, 0
    for k, sz in enumerate(sizes):
        if k:
            acc = cv2.resize(acc, (sz, sz), interpolation=cv2.INTER_LINEAR)
        cells = noise[start : start + 4 * sz * sz].reshape(sz, sz, 4)
        start += 4 * sz * sz
        acc += amp * (cells[..., :1] + 0.45 * cells[..., 1:])
        amp *= slope
    return cv2.resize(acc, (w, h), interpolation=cv2.INTER_LINEAR)


_UNIT_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * math.pi, 32, endpoint=False)),
                         np.sin(np.linspace(0, 2 * math.pi, 32, endpoint=False))], 1)


def _rot2(u: float) -> np.ndarray:
    """Rotation by ``2 pi u`` for row vectors."""
    c, s = math.cos(2 * math.pi * u), math.sin(2 * math.pi * u)
    return np.array([[c, s], [-s, c]])


def _random_polygon(u: list[float], cx: float, cy: float, size: float) -> np.ndarray:
    """A rotated rectangle or a (roughly regular) 3..8-gon, from uniform numbers ``u`` (4)."""
    angle = 2 * math.pi * u[0]
    if u[1] < 0.4:
        w, h = size * (0.1 + 0.4 * u[2]), size * (0.1 + 0.4 * u[3])
        corners = [(-w, -h), (w, -h), (w, h), (-w, h)]
    else:
        n = 3 + int(u[2] * 6)
        corners = [(0.5 * size * math.cos(2 * math.pi * k / n + u[3] * (n == 3)), 0.5 * size * math.sin(2 * math.pi * k / n))
                   for k in range(n)]
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[round((cx + x * c - y * s) * 16), round((cy + x * s + y * c) * 16)] for x, y in corners], np.int32)


def _limb_like(rng: np.random.Generator, cx: float, cy: float, unit: float):
    """One limb-like chain of two tapered capsules (see :func:`_limb_likes`)."""
    pts, radii, colours = _limb_likes(rng, np.array([[cx, cy]]), np.array([unit]))
    return pts[0], radii[0], colours[0]


def _limb_likes(rng: np.random.Generator, starts: np.ndarray, units: np.ndarray):
    """``n`` limb-like chains of two tapered capsules (``(n, 3, 2)`` points, ``(n, 3)`` radii,
    colours); about half are straight (the two segments aligned), the rest bent like an
    elbow or knee; half are skin-coloured."""
    n = len(starts)
    u = rng.random((n, 8))
    angle = 2 * math.pi * u[:, 0]
    bend = np.where(u[:, 1] < 0.5, 0.0, 3.6 * (u[:, 2] - 0.5))
    length = units[:, None] * (0.12 + 0.18 * u[:, 3:5])  # (n, 2)
    pts = np.empty((n, 3, 2))
    pts[:, 0] = starts
    pts[:, 1, 0] = starts[:, 0] + length[:, 0] * np.cos(angle)
    pts[:, 1, 1] = starts[:, 1] + length[:, 0] * np.sin(angle)
    pts[:, 2, 0] = pts[:, 1, 0] + length[:, 1] * np.cos(angle + bend)
    pts[:, 2, 1] = pts[:, 1, 1] + length[:, 1] * np.sin(angle + bend)
    taper = 0.55 + 0.45 * u[:, 5:6]
    radii = (units * (0.015 + 0.035 * u[:, 6]))[:, None] * (1.0 - (1.0 - taper) * np.array([0.0, 0.5, 1.0]))
    randoms = R.random_colours(rng, n)
    colours = [R.skin_colour(rng) if u[k, 7] < 0.5 else tuple(randoms[k]) for k in range(n)]
    return pts, radii, colours


def _noise_texture(rng: np.random.Generator, h: int, w: int, blurred: bool) -> np.ndarray:
    oy, ox = (int(v) for v in rng.integers(0, _BANK, 2))
    return _noise_bank(h, w, blurred)[oy : oy + h, ox : ox + w]


def _background(rng: np.random.Generator, cfg: SceneConfig) -> np.ndarray:
    """Gradient + multi-scale colour noise, fine texture, stripes / grids, random shapes and
    limb-like capsules, sometimes defocused."""
    h, w = cfg.height, cfg.width
    # Coarse structure at a quarter of the resolution, then one upsampling.
    lh, lw = max(h // 4, 4), max(w // 4, 4)
    corners = np.array([R.random_colour(rng) for _ in range(4)], np.float32).reshape(2, 2, 3)
    corners = 0.5 * corners + 0.5 * corners.mean((0, 1))
    low = cv2.resize(corners, (lw, lh), interpolation=cv2.INTER_LINEAR)
    low += _octave_noise(rng, lh, lw, rng.uniform(0.3, 0.8)) * rng.uniform(8, 45)
    img = cv2.resize(np.clip(low, 0, 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.6:  # fine texture (grain, foliage-like speckle)
        g = rng.uniform(0.1, 0.5)
        img = cv2.addWeighted(img, 1.0, _noise_texture(rng, h, w, blurred=rng.random() < 0.6), g, -128.0 * g)
    clutter = cfg.clutter
    size = min(h, w)
    if clutter > 0:
        # Stripes and grids: all bars of a set in one fillPoly call.
        for _ in range(int(rng.random() < 0.4 * clutter) + int(rng.random() < 0.15 * clutter)):
            period = rng.uniform(max(8.0, 0.03 * size), max(9.0, 0.2 * size))
            half = 0.5 * period * rng.uniform(0.1, 0.5)
            angle = rng.uniform(0, math.pi)
            d = np.array([math.cos(angle), math.sin(angle)])
            nrm = np.array([-d[1], d[0]])
            reach = 0.5 * math.hypot(w, h) + 2.0  # from the image centre past every corner
            k = np.arange(-int(reach / period) - 1, int(reach / period) + 2)
            centres = np.array([w / 2, h / 2]) + (k * period)[:, None] * nrm
            quads = np.stack([centres - d * reach - nrm * half, centres + d * reach - nrm * half,
                              centres + d * reach + nrm * half, centres - d * reach + nrm * half], 1)
            cv2.fillPoly(img, list(R._fixed(quads)), R.random_colour(rng), cv2.LINE_AA, R._SHIFT)
        # Random shapes: circles / rings, polygons, thick lines.
        n_shapes = int(rng.poisson(12 * clutter))
        if n_shapes:
            colours = R.random_colours(rng, n_shapes)
            lo_sz, hi_sz = math.log(0.03), math.log(0.5)
            for u, colour in zip(rng.random((n_shapes, 10)).tolist(), colours):
                sz = size * math.exp(lo_sz + (hi_sz - lo_sz) * u[0])
                cx, cy = (-0.1 + 1.2 * u[1]) * w, (-0.1 + 1.2 * u[2]) * h
                if u[3] < 0.3:  # disc or ring, as a 32-gon (much cheaper than cv2.circle with antialiasing)
                    ring = R._fixed(_UNIT_CIRCLE * (0.5 * sz * (0.6 + 0.8 * u[5]), 0.5 * sz) @ _rot2(u[6]) + (cx, cy))
                    if u[4] < 0.7:
                        cv2.fillConvexPoly(img, ring, colour, cv2.LINE_AA, R._SHIFT)
                    else:
                        cv2.polylines(img, [ring], True, colour, max(1, int(sz * 0.1)), cv2.LINE_AA, R._SHIFT)
                elif u[3] < 0.8:
                    cv2.fillConvexPoly(img, _random_polygon(u[4:8], cx, cy, sz), colour, cv2.LINE_AA, R._SHIFT)
                else:
                    a = 2 * math.pi * u[4]
                    end = (int(cx + sz * math.cos(a)), int(cy + sz * math.sin(a)))
                    cv2.line(img, (int(cx), int(cy)), end, colour, max(1, int(sz * (0.03 + 0.12 * u[5]))), cv2.LINE_AA)
        # Limb-like clutter, shaded like body parts.
        n_limbs = int(rng.poisson(3 * clutter))
        if n_limbs:
            starts = rng.random((n_limbs, 2)) * (w, h)
            pts, radii, colours = _limb_likes(rng, starts, h * rng.uniform(0.3, 1.0, n_limbs))
            light = R.Light.sample(rng)
            layers = R.shaded_capsules(pts[:, :2].reshape(-1, 2), pts[:, 1:].reshape(-1, 2), radii[:, :2].ravel(), radii[:, 1:].ravel(), light)
            tones = np.minimum(np.array(colours)[:, None, :] * R._LAYER_TONE[None, :, None], 255.0).tolist()
            for k in range(2 * n_limbs):
                for li in range(len(R._LAYERS)):
                    cv2.fillConvexPoly(img, layers[li, k], tones[k // 2][li], cv2.LINE_AA, R._SHIFT)
    if rng.random() < 0.3:
        img = gaussian_blur(img, rng.uniform(0.6, 1.6) * size / 256)
    return img


# ----------------------------------------------------------------------------- people


def _num_people(rng: np.random.Generator, max_people: int) -> int:
    weights = [1.0 / k for k in range(1, max_people + 1)]
    u = rng.random() * sum(weights)
    for k, wk in enumerate(weights):
        u -= wk
        if u < 0:
            return k + 1
    return max_people


def _place(rng: np.random.Generator, cfg: SceneConfig, bounds, placed: list[tuple[float, float, float, float]]) -> tuple[float, float]:
    """Where the centre of a figure box ``bounds`` goes: overlapping an earlier person, partly
    outside the frame, or inside it."""
    w, h = cfg.width, cfg.height
    x0, y0, x1, y1 = bounds
    bw, bh = x1 - x0, y1 - y0
    u = rng.random(5)
    if placed and u[0] < cfg.overlap_prob:
        px, py, pw, ph = placed[int(u[1] * len(placed))]
        tx = min(max(px + rng.uniform(-0.65, 0.65) * max(pw, bw), 0.0), w)
        ty = min(max(py + rng.uniform(-0.2, 0.2) * max(ph, bh), 0.0), h)
    elif u[4] < cfg.edge_prob:
        tx = -0.3 * bw + u[2] * (w + 0.6 * bw)
        ty = -0.25 * bh + u[3] * (h + 0.5 * bh)
    else:
        tx = min(bw / 2, w - bw / 2) + u[2] * abs(w - bw)
        ty = min(bh / 2, h - bh / 2) + u[3] * abs(h - bh)
    return float(tx), float(ty)


def _wave(rng: np.random.Generator, t: np.ndarray, min_period: float, max_period: float) -> np.ndarray:
    """A sinusoid of random period and phase that is 0 at t = 0."""
    phase = rng.uniform(0, 2 * math.pi)
    return np.sin(2 * math.pi * t / rng.uniform(min_period, max_period) + phase) - math.sin(phase)


def _sample_people(rng: np.random.Generator, cfg: SceneConfig, frames: int) -> tuple[list[PersonTrack], B.Figure2D]:
    """People with shapes, clothes, poses and cameras over ``frames`` frames, and their
    projected figures (person-major, see :attr:`ScenePlan.figures`)."""
    n = _num_people(rng, cfg.max_people)
    lo, hi = math.log(cfg.min_person_height), math.log(cfg.max_person_height)
    shapes, apps, angles0, cams = [], [], [], []
    for i in range(n):
        shape = B.sample_shape(rng)
        shapes.append(shape)
        apps.append(R.sample_appearance(rng))
        angles0.append(B.sample_pose(rng))
        u = rng.random(5)
        yaw = math.radians(cfg.max_yaw) * (2 * u[0] - 1)
        pitch = min(max(rng.normal(0, 0.1), -0.3), 0.3)
        roll = min(max(rng.normal(0, 0.08), -0.3), 0.3) if u[1] > 0.05 else -1.3 + 2.6 * u[2]
        if i > 0 and u[3] < cfg.overlap_prob:  # groups: similar apparent heights
            prev = cams[-1][3] * shapes[-2].stature / cfg.height
            frac = math.exp(min(max(math.log(prev) + rng.normal(0, 0.25), lo), hi))
        else:
            frac = math.exp(lo + (hi - lo) * u[4])
        cams.append((yaw, pitch, roll, frac * cfg.height / shape.stature))
    shape_arr = B.stack_shapes(shapes)
    cam_arr = np.array(cams)
    rotation = B.camera_rotations(cam_arr[:, 0], cam_arr[:, 1], cam_arr[:, 2])
    angles0 = np.array(angles0)
    figs0 = B.project(B.forward_kinematics(shape_arr, angles0), shape_arr, rotation, cam_arr[:, 3], np.zeros((n, 2)))
    bounds = R.figure_bounds(figs0).tolist()
    placed: list[tuple[float, float, float, float]] = []
    centres = np.empty((n, 2))
    for i in range(n):
        x0, y0, x1, y1 = bounds[i]
        tx, ty = _place(rng, cfg, bounds[i], placed)
        centres[i] = tx - 0.5 * (x0 + x1), ty - 0.5 * (y0 + y1)
        placed.append((tx, ty, x1 - x0, y1 - y0))
    people = []
    t = np.arange(frames, dtype=np.float64)
    for i in range(n):
        yaw0, pitch0, roll0, scale0 = cams[i]
        if frames == 1:
            track = PersonTrack(shapes[i], apps[i], angles0[i : i + 1], cam_arr[i : i + 1, 0], cam_arr[i : i + 1, 1],
                                cam_arr[i : i + 1, 2], cam_arr[i : i + 1, 3], centres[i : i + 1], 0, i)
        else:
            angles = B.sample_trajectory(rng, angles0[i], frames)
            yaw = yaw0 + rng.normal(0, 0.02) * t + rng.uniform(0, 0.3) * _wave(rng, t, 30, 120)
            pitch = np.clip(pitch0 + 0.05 * _wave(rng, t, 30, 120), -0.35, 0.35)
            roll = roll0 + 0.04 * _wave(rng, t, 30, 120)
            frac = scale0 * shapes[i].stature / cfg.height
            growth = rng.normal(0, 0.004)
            scale = scale0 * np.exp(np.clip(growth * t, lo - math.log(frac) - 0.2, hi - math.log(frac) + 0.2))
            vel = rng.normal(0, 0.006, 2) * scale0 * np.array([1.0, 0.3])
            wobble = rng.normal(0, 0.01) * scale0
            centre = np.stack([centres[i, 0] + vel[0] * t, centres[i, 1] + vel[1] * t + wobble * _wave(rng, t, 10, 40)], 1)
            track = PersonTrack(shapes[i], apps[i], angles, yaw, pitch, roll, scale, centre, 0, i)
        people.append(track)
    # Depth order: usually bigger (nearer) people in front.
    if rng.random() < 0.75:
        order = sorted(range(n), key=lambda k: (cams[k][3] * shapes[k].stature, k))
    else:
        order = [int(k) for k in rng.permutation(n)]
    for rank, k in enumerate(order):
        people[k].rank = rank
    if frames == 1:
        figures = figs0.translated(centres)
    else:
        all_shapes = {k: np.repeat(v, frames, axis=0) for k, v in shape_arr.items()}
        cat = lambda name: np.concatenate([getattr(p, name) for p in people])  # noqa: E731
        rotation = B.camera_rotations(cat("yaw"), cat("pitch"), cat("roll"))
        figures = B.project(B.forward_kinematics(all_shapes, cat("angles")), all_shapes, rotation, cat("scale"), cat("centre"))
    return people, figures


def _sample_distractors(rng: np.random.Generator, cfg: SceneConfig, people: list[PersonTrack], figs0: B.Figure2D, frames: int) -> list[Distractor]:
    """Occluders among and in front of the people (mostly next to someone's joint), moving
    in video; in video, sometimes one crossing the whole view in front of everyone."""
    w, h = cfg.width, cfg.height
    out: list[Distractor] = []
    n_people = len(people)
    count = 1 + int(rng.poisson(0.7)) if rng.random() < cfg.occluder_prob else 0
    for _ in range(count):
        if n_people and rng.random() < 0.8:
            i = int(rng.integers(n_people))
            unit = float(people[i].scale[0])
            anchor = figs0.points[i, int(rng.integers(B.NUM_JOINTS))] + rng.normal(0, 0.08, 2) * unit
        else:
            anchor = np.array([rng.uniform(0, w), rng.uniform(0, h)])
            unit = h * rng.uniform(0.3, 1.0)
        # Depth among the people: in front of everyone half of the time, else between any two ranks.
        layer = n_people - 0.5 if rng.random() < 0.5 else float(rng.integers(n_people + 1)) - 0.5
        out.append(_make_distractor(rng, anchor, unit, layer, w, h))
    if frames > 1:
        for d in out:
            if rng.random() < 0.5:
                d.velocity = rng.normal(0, 0.004, 2) * h
        if rng.random() < 0.5:
            unit = h * rng.uniform(0.4, 1.0)
            from_left = rng.random() < 0.5
            start = np.array([-0.2 * w if from_left else 1.2 * w, rng.uniform(0.1 * h, 0.9 * h)])
            d = _make_distractor(rng, start, unit, n_people - 0.5, w, h, crossing=True)
            d.velocity = np.array([(1.4 * w / frames) * (1 if from_left else -1), rng.normal(0, 0.2)])
            out.append(d)
    return out


def _make_distractor(rng, anchor, unit, layer, w, h, crossing: bool = False) -> Distractor:
    r = rng.random()
    if r < 0.45 and not crossing:
        pts, radii, colour = _limb_like(rng, float(anchor[0]), float(anchor[1]), unit)
        pts = pts - (pts.mean(0) - anchor) * rng.uniform(0.0, 1.0)
        return Distractor("capsule", pts, radii, colour, layer)
    colour = R.random_colour(rng)
    if r < 0.65:  # pole: long thin bar, often near vertical
        angle = math.pi / 2 + rng.normal(0, 0.35) if rng.random() < 0.7 else rng.uniform(0, math.pi)
        length = max(w, h) * rng.uniform(0.6, 2.0)
        thick = unit * rng.uniform(0.02, 0.07)
        return Distractor("pole", _rect(anchor, length, thick, angle), np.zeros(0), colour, layer)
    if r < 0.88:  # box
        sw, sh = unit * rng.uniform(0.1, 0.5), unit * rng.uniform(0.1, 0.5)
        return Distractor("box", _rect(anchor, sw, sh, rng.uniform(-0.4, 0.4)), np.zeros(0), colour, layer)
    axes = np.array([unit * rng.uniform(0.05, 0.25), unit * rng.uniform(0.05, 0.25)])
    return Distractor("blob", np.asarray(anchor, float)[None, :], axes, colour, layer, angle=float(rng.uniform(0, 180)))


def _rect(centre, length: float, thick: float, angle: float) -> np.ndarray:
    d = np.array([math.cos(angle), math.sin(angle)]) * length / 2
    n = np.array([-math.sin(angle), math.cos(angle)]) * thick / 2
    c = np.asarray(centre, float)
    return np.array([c - d - n, c - d + n, c + d + n, c + d - n])


# ----------------------------------------------------------------------------- camera effects

_BANK = 256
_NOISE_BANK: dict[tuple[int, int, bool], np.ndarray] = {}


def _noise_bank(h: int, w: int, blurred: bool = False) -> np.ndarray:
    """A fixed uint8 noise texture (mean 128, std 32; white, or blurred to a fine grain and
    renormalised), tiled to at least ``(h + 256, w + 256, 3)``. Generated once per process
    from a fixed seed, so crops of it are deterministic."""
    key = (h, w, blurred)
    if key not in _NOISE_BANK:
        base_key = (0, 0, blurred)
        if base_key not in _NOISE_BANK:
            noise = np.random.default_rng(20240607).normal(0.0, 1.0, (_BANK * 2, _BANK * 2, 3)).astype(np.float32)
            if blurred:
                noise = cv2.GaussianBlur(noise, (0, 0), 1.0)
                noise /= noise.std()
            _NOISE_BANK[base_key] = np.clip(128.0 + 32.0 * noise, 0, 255).astype(np.uint8)
        base = _NOISE_BANK[base_key]
        reps = (-(-(h + _BANK) // base.shape[0]), -(-(w + _BANK) // base.shape[1]), 1)
        _NOISE_BANK[key] = np.ascontiguousarray(np.tile(base, reps)[: h + _BANK, : w + _BANK])
    return _NOISE_BANK[key]


_LUMA = np.array([0.114, 0.587, 0.299])  # BGR


def _sample_effects(rng: np.random.Generator, cfg: SceneConfig, frames: int) -> CameraEffects:
    k = cfg.lighting
    g = rng.normal(0, 1, 7)
    u = rng.random(7)
    gamma_lut = None
    if u[6] < 0.3 * min(k, 1.0):  # a tone curve costs a LUT pass, so only some images get one
        gamma = math.exp(0.3 * k * g[0])
        gamma_lut = np.clip(np.round(255.0 * (np.arange(256) / 255.0) ** gamma), 0, 255).astype(np.uint8)[:, None]
    contrast = math.exp(0.2 * k * g[1])
    bright = 18 * k * g[2]
    saturation = math.exp(0.25 * k * g[6])
    cast = np.exp(0.06 * k * g[3:6])
    # out = cast * (contrast * (sat * x + (1 - sat) * luma(x)) + offset), mid-grey kept at 128 before the offset.
    mix = saturation * np.eye(3) + (1 - saturation) * _LUMA[None, :]
    matrix = np.empty((3, 4), np.float32)
    matrix[:, :3] = cast[:, None] * contrast * mix
    matrix[:, 3] = cast * (128.0 * (1 - contrast) + bright)
    illumination = None
    if u[0] < 0.5 * min(k, 1.0):
        gains = np.clip(128.0 * np.exp(rng.normal(0, 0.25 * k, (3, 3, 1))), 0, 255).astype(np.uint8)
        illumination = cv2.resize(np.repeat(gains, 3, axis=2), (cfg.width, cfg.height), interpolation=cv2.INTER_LINEAR)
    blur = None
    size = min(cfg.width, cfg.height) / 256
    if u[1] < cfg.blur_prob:
        if u[2] < 0.6:
            blur = ("gauss", (0.6 + 1.2 * u[3]) * size, 0.0)
        else:
            blur = ("motion", (3 + 6 * u[3]) * size, math.pi * u[4])
    noise = float(cfg.max_noise * u[5] ** 1.5)
    offsets = rng.integers(0, _BANK, (frames, 2))
    return CameraEffects(gamma_lut, matrix, illumination, blur, noise, offsets)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with a +-2 sigma kernel (cheaper than OpenCV's default +-3 sigma)."""
    k = 2 * int(math.ceil(2 * sigma)) + 1
    return cv2.GaussianBlur(img, (k, k), sigma)


def motion_blur(img: np.ndarray, length: float, angle: float) -> np.ndarray:
    """Linear motion blur of about ``length`` pixels along ``angle``: repeated averaging of
    the image with a copy shifted by 1, 2, 4, ... pixels (a box filter of length 2^passes)."""
    h, w = img.shape[:2]
    dx, dy = math.cos(angle), math.sin(angle)
    out = img
    for k in range(max(1, round(math.log2(max(length, 2.0))))):
        sx, sy = round(dx * 2**k), round(dy * 2**k)
        if sx == 0 and sy == 0:
            continue
        pad = max(abs(sx), abs(sy))
        padded = cv2.copyMakeBorder(out, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        ax, ay = pad - sx // 2, pad - sy // 2  # centred: shift by -s/2 and +s/2
        a = padded[ay : ay + h, ax : ax + w]
        b = padded[ay + sy : ay + sy + h, ax + sx : ax + sx + w]
        out = cv2.addWeighted(a, 0.5, b, 0.5, 0.0)
    return out


def _apply_effects(img: np.ndarray, fx: CameraEffects, t: int) -> np.ndarray:
    if fx.gamma_lut is not None:
        img = cv2.LUT(img, fx.gamma_lut)
    img = cv2.transform(img, fx.colour_matrix)
    if fx.illumination is not None:
        img = cv2.multiply(img, fx.illumination, scale=1.0 / 128.0)
    if fx.blur is not None:
        kind, a, b = fx.blur
        img = gaussian_blur(img, a) if kind == "gauss" else motion_blur(img, a, b)
    if fx.noise > 0.25:
        h, w = img.shape[:2]
        oy, ox = (int(v) for v in fx.noise_offsets[t])
        noise = _noise_bank(h, w)[oy : oy + h, ox : ox + w]
        g = fx.noise / 32.0
        img = cv2.addWeighted(img, 1.0, noise, g, -128.0 * g)
    return img


# ----------------------------------------------------------------------------- API


def _check_seed(seed) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PosenasError(f"synthetic scene: seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def sample_plan(seed: int, config: SceneConfig = SceneConfig(), num_frames: int = 1) -> ScenePlan:
    """Everything random about a scene: a still image if ``num_frames == 1``, else a clip."""
    seed = _check_seed(seed)
    mode = _MODE_IMAGE if num_frames == 1 else _MODE_VIDEO

    def stream(k: int) -> np.random.Generator:
        # Philox is keyed directly (no seed hashing, which costs more than rendering parts of an
        # image); distinct keys give independent streams.
        if seed < 2**120:
            return np.random.Generator(np.random.Philox(key=(seed << 8) | (mode << 4) | k))
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, mode, k])))

    background = _background(stream(_STREAM_BACKGROUND), config)
    rng = stream(_STREAM_PEOPLE)
    people, figures = _sample_people(rng, config, num_frames)
    light = R.Light.sample(rng)
    figs0 = figures.select(np.arange(len(people)) * num_frames)
    distractors = _sample_distractors(stream(_STREAM_DISTRACTORS), config, people, figs0, num_frames)
    effects = _sample_effects(stream(_STREAM_CAMERA), config, num_frames)
    return ScenePlan(config.width, config.height, num_frames, background, people, figures, distractors, light, effects)


@dataclass
class FrameRender:
    """A rendered frame with everything the renderer knows (for tests and debugging)."""

    image: np.ndarray  # after camera effects
    label: np.ndarray  # (H, W) uint16 part labels (see render.person_label)
    people: list[RenderedPerson]  # every person of the plan, also those with area 0
    figures: B.Figure2D


def render_frame(plan: ScenePlan, t: int = 0) -> FrameRender:
    """Paint frame ``t`` of a plan and read joints, visibility, boxes and areas back."""
    canvas = R.Canvas(plan.background.copy())
    figs = plan.frame_figures(t)
    apps = [p.appearance for p in plan.people]
    ops, extents, head = R.people_ops(figs, apps, plan.light, [p.rank * _LAYER for p in plan.people])
    for d in plan.distractors:
        ops.append(d.op(t, plan.light, len(ops)))
    ops.sort(key=lambda o: (o.key, o.order))
    for op in ops:
        op.draw(canvas)
    people = []
    for i, p in enumerate(plan.people):
        v = R.joint_visibility(canvas.label, figs.points[i], head.facing[i], i)
        joints = np.empty((B.NUM_JOINTS, 3), np.float32)
        joints[:, :2] = figs.points[i, : B.NUM_JOINTS]
        joints[:, 2] = v
        bbox, area = R.person_mask_stats(canvas.label, i, extents[i], joints)
        people.append(RenderedPerson(joints, bbox, float(area), head.box[i].copy(), p.track_id))
    image = _apply_effects(canvas.image, plan.effects, t)
    return FrameRender(image, canvas.label, people, figs)


def _public(frame: FrameRender) -> RenderedImage:
    return RenderedImage(frame.image, [p for p in frame.people if p.area > 0])


def render_image(seed: int, config: SceneConfig = SceneConfig()) -> RenderedImage:
    """One synthetic image with 1..``config.max_people`` people (deterministic per seed)."""
    return _public(render_frame(sample_plan(seed, config, 1), 0))


def render_video(seed: int, num_frames: int, config: SceneConfig = SceneConfig()) -> list[RenderedImage]:
    """A clip of ``num_frames`` frames: smooth motion of poses, positions and scales, a
    static background, occasional occluders crossing; track ids stable over the clip."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise PosenasError(f"synthetic video: num_frames must be a positive integer, got {num_frames!r}")
    plan = sample_plan(seed, config, max(int(num_frames), 2))
    return [_public(render_frame(plan, t)) for t in range(int(num_frames))]
