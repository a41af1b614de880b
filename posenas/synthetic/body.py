"""The articulated figure of the synthetic-people renderer.

A figure is a kinematic tree rooted at the pelvis, posed by a vector of joint angles
(:data:`DOF_NAMES`, limits :data:`DOF_LOW` / :data:`DOF_HIGH`), with body proportions from
a :class:`BodyShape` (children and adults, thin and wide, jittered limb lengths).
:func:`forward_kinematics` turns shape + angles into 3D points in the body frame,
:func:`project` turns those into pixel coordinates and depths under an orthographic
camera with a yaw / pitch / roll and a scale, and :func:`sample_trajectory` makes smooth
angle trajectories for video.

Frames. The body frame is right-handed: X is the person's left, Y up, Z forward (the
direction the person faces). The camera frame is X right, Y up, Z towards the viewer; a
person with yaw 0 faces the camera, so their left side is on the image's right. Image
coordinates are ``u = cx + s * X``, ``v = cy - s * Y``, pixel centres at integers; the
depth ``s * Z`` grows towards the viewer.

Units. Body lengths are in "adult heights": a standing adult of stature 1 is 1 unit tall
from sole to head top; the scale ``s`` is pixels per unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: The renderer's joint set, in its fixed order (also ``scene.CANONICAL_JOINTS``).
JOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "head_top", "upper_neck", "thorax",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "pelvis", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)
NUM_JOINTS = len(JOINT_NAMES)

# Indices of the points :func:`forward_kinematics` returns: the 21 joints, then helper points.
(NOSE, L_EYE, R_EYE, L_EAR, R_EAR, HEAD_TOP, UPPER_NECK, THORAX, L_SHOULDER, R_SHOULDER, L_ELBOW,
 R_ELBOW, L_WRIST, R_WRIST, PELVIS, L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE) = range(NUM_JOINTS)
L_HAND, R_HAND, L_TOE, R_TOE, HEAD_CENTER = range(NUM_JOINTS, NUM_JOINTS + 5)
NUM_POINTS = NUM_JOINTS + 5

#: Head-surface points in unit-sphere coordinates of the head frame (left, up, forward):
#: where the nose tip, eyes and ears sit on the head ellipsoid. The nose tip sticks out.
HEAD_POINTS: dict[int, tuple[float, float, float]] = {
    NOSE: (0.0, -0.16, 1.12),
    L_EYE: (0.34, 0.08, 0.94),
    R_EYE: (-0.34, 0.08, 0.94),
    L_EAR: (0.99, -0.02, -0.12),
    R_EAR: (-0.99, -0.02, -0.12),
    HEAD_TOP: (0.0, 0.95, -0.1),
}

# ----------------------------------------------------------------------------- angles

#: Degrees of freedom of a pose (radians). Arms and legs are mirrored: the same angle
#: value means the mirror-image motion on the other side.
DOF_NAMES: tuple[str, ...] = (
    "torso_pitch",  # forward bend (+)
    "torso_roll",  # side bend (+: towards the person's left)
    "torso_twist",  # chest turned relative to the pelvis (+: chest turns left)
    "neck_pitch",  # nod (+: looking down)
    "neck_yaw",  # head turn (+: towards the person's left)
    "neck_roll",  # head tilt
    *(f"{side}_{dof}" for side in ("left", "right")
      for dof in ("shoulder_flex", "shoulder_abd", "shoulder_twist", "elbow", "wrist")),
    *(f"{side}_{dof}" for side in ("left", "right")
      for dof in ("hip_flex", "hip_abd", "hip_twist", "knee", "ankle")),
)
NUM_DOF = len(DOF_NAMES)
_D = {name: i for i, name in enumerate(DOF_NAMES)}

_LIMITS: dict[str, tuple[float, float]] = {
    "torso_pitch": (-0.35, 0.95),
    "torso_roll": (-0.35, 0.35),
    "torso_twist": (-0.6, 0.6),
    "neck_pitch": (-0.55, 0.6),
    "neck_yaw": (-1.1, 1.1),
    "neck_roll": (-0.35, 0.35),
    "shoulder_flex": (-0.9, 3.0),  # arm raised forwards (+) / backwards (-)
    "shoulder_abd": (-0.35, 2.9),  # arm raised sideways (+) / across the body (-)
    "shoulder_twist": (-1.2, 1.2),  # + turns the elbow's bending plane outwards
    "elbow": (0.0, 2.6),
    "wrist": (-0.8, 0.8),
    "hip_flex": (-0.5, 2.2),
    "hip_abd": (-0.3, 0.9),
    "hip_twist": (-0.6, 0.6),
    "knee": (0.0, 2.5),
    "ankle": (-0.5, 0.6),
}


def _limit(name: str) -> tuple[float, float]:
    if name in _LIMITS:
        return _LIMITS[name]
    return _LIMITS[name.split("_", 1)[1]]


DOF_LOW = np.array([_limit(n)[0] for n in DOF_NAMES], dtype=np.float64)
DOF_HIGH = np.array([_limit(n)[1] for n in DOF_NAMES], dtype=np.float64)
_SPAN = DOF_HIGH - DOF_LOW
_MIDDLE = np.clip(0.0, DOF_LOW, DOF_HIGH)  # the rest pose, inside the limits

#: Pose "prototypes" (activities) as partial angle settings; everything unnamed is 0.
#: Sampled poses are a prototype plus noise (or random within the limits), mirrored at random.
_PROTOTYPES: tuple[dict[str, float], ...] = (
    {},  # standing
    {"left_elbow": 0.2, "right_elbow": 0.2, "left_shoulder_abd": 0.15, "right_shoulder_abd": 0.15},
    {  # walking
        "left_hip_flex": 0.45, "right_hip_flex": -0.3, "right_knee": 0.5, "left_knee": 0.1,
        "left_shoulder_flex": -0.4, "right_shoulder_flex": 0.45, "left_elbow": 0.3, "right_elbow": 0.5,
    },
    {  # running
        "torso_pitch": 0.25, "left_hip_flex": 1.1, "left_knee": 1.4, "right_hip_flex": -0.45,
        "right_knee": 1.2, "left_shoulder_flex": -0.7, "right_shoulder_flex": 0.9, "left_elbow": 1.5,
        "right_elbow": 1.6, "left_ankle": -0.2, "right_ankle": 0.5,
    },
    {"left_shoulder_abd": 2.6, "right_shoulder_abd": 2.6, "left_elbow": 0.3, "right_elbow": 0.3},  # arms up
    {"left_shoulder_abd": 1.55, "right_shoulder_abd": 1.55},  # T-pose
    {"left_shoulder_abd": 1.9, "left_elbow": 1.6, "left_shoulder_twist": 0.9, "neck_yaw": 0.3},  # waving
    {  # sitting / crouching
        "left_hip_flex": 1.6, "right_hip_flex": 1.6, "left_knee": 1.6, "right_knee": 1.6,
        "left_shoulder_flex": 0.5, "right_shoulder_flex": 0.5, "left_elbow": 0.9, "right_elbow": 0.9,
    },
    {  # squat
        "torso_pitch": 0.6, "left_hip_flex": 2.0, "right_hip_flex": 2.0, "left_knee": 2.3, "right_knee": 2.3,
        "left_hip_abd": 0.4, "right_hip_abd": 0.4, "left_shoulder_flex": 1.4, "right_shoulder_flex": 1.4,
        "left_ankle": -0.4, "right_ankle": -0.4, "neck_pitch": -0.4,
    },
    {"left_shoulder_flex": 1.5, "right_shoulder_flex": 1.4, "left_elbow": 0.2},  # reaching forwards
    {"left_hip_flex": 1.7, "left_knee": 0.2, "torso_pitch": -0.2, "right_shoulder_abd": 0.9,
     "left_shoulder_abd": 0.9},  # kick
    {  # hands on hips
        "left_shoulder_abd": 0.75, "right_shoulder_abd": 0.75, "left_shoulder_flex": -0.15, "right_shoulder_flex": -0.15,
        "left_elbow": 1.0, "right_elbow": 1.0, "left_shoulder_twist": -1.2, "right_shoulder_twist": -1.2,
    },
    {  # arms crossed
        "left_shoulder_flex": 0.5, "right_shoulder_flex": 0.55, "left_shoulder_abd": 0.1, "right_shoulder_abd": 0.1,
        "left_elbow": 1.5, "right_elbow": 1.5, "left_shoulder_twist": -1.2, "right_shoulder_twist": -1.2,
    },
    {  # lunge
        "left_hip_flex": 1.3, "left_knee": 1.4, "right_hip_flex": -0.4, "right_knee": 0.4,
        "torso_pitch": 0.1, "left_shoulder_abd": 0.3, "right_shoulder_abd": 0.3,
    },
    {  # bending down
        "torso_pitch": 0.9, "left_hip_flex": 0.3, "right_hip_flex": 0.3, "left_shoulder_flex": 1.0,
        "right_shoulder_flex": 0.8, "neck_pitch": -0.3, "left_elbow": 0.2,
    },
    {  # throwing / pointing
        "left_shoulder_abd": 1.4, "left_shoulder_flex": 0.5, "left_elbow": 0.1, "right_shoulder_flex": -0.6,
        "right_elbow": 1.4, "torso_twist": 0.4, "neck_yaw": 0.6, "left_hip_flex": 0.3, "right_hip_flex": -0.2,
    },
    {  # phone / holding something at the face
        "left_shoulder_flex": 0.6, "left_elbow": 2.4, "left_shoulder_twist": -0.4, "neck_pitch": 0.2,
        "right_shoulder_flex": 0.5, "right_elbow": 1.4,
    },
)
_PROTO_VECTORS = np.zeros((len(_PROTOTYPES), NUM_DOF))
for _i, _p in enumerate(_PROTOTYPES):
    for _k, _v in _p.items():
        _PROTO_VECTORS[_i, _D[_k]] = _v


_MIRROR_INDEX = np.r_[0:6, 11:16, 6:11, 21:26, 16:21]
_MIRROR_SIGN = np.ones(NUM_DOF)
_MIRROR_SIGN[[_D["torso_roll"], _D["torso_twist"], _D["neck_yaw"], _D["neck_roll"]]] = -1.0


def mirror_pose(angles: np.ndarray) -> np.ndarray:
    """The left/right mirror image of a pose (arms and legs swapped, sideways angles negated)."""
    return angles[..., _MIRROR_INDEX] * _MIRROR_SIGN


def sample_pose(rng: np.random.Generator) -> np.ndarray:
    """A random pose (``(NUM_DOF,)`` radians within the limits).

    Half of the poses are an activity prototype plus noise, a third are random near the
    middle of the joint ranges, the rest uniform over the full ranges; half are mirrored.
    """
    u = rng.random(4).tolist()
    if u[0] < 0.5:
        base = _PROTO_VECTORS[int(u[1] * len(_PROTOTYPES))]
        angles = base + rng.standard_normal(NUM_DOF) * (_SPAN * (0.03 + 0.13 * u[2]))
    elif u[0] < 0.83:
        angles = _MIDDLE + (rng.random(NUM_DOF) - 0.5) * (_SPAN * (0.3 + 0.4 * u[2]))
    else:
        angles = DOF_LOW + rng.random(NUM_DOF) * _SPAN
    if u[3] < 0.5:
        angles = mirror_pose(angles)
    return np.minimum(np.maximum(angles, DOF_LOW), DOF_HIGH)


def sample_trajectory(rng: np.random.Generator, start: np.ndarray, num_frames: int) -> np.ndarray:
    """Smooth joint-angle trajectories ``(num_frames, NUM_DOF)`` starting near ``start``.

    Each angle follows its start value plus a sum of two sinusoids (random amplitude,
    period 12..120 frames, phase) and a slow linear drift; legs and arms share a gait
    frequency in anti-phase half of the time (walking / running-like motion). The result is
    clipped to the joint limits, so it stays continuous.
    """
    span = DOF_HIGH - DOF_LOW
    t = np.arange(num_frames, dtype=np.float64)[:, None]
    activity = rng.uniform(0.02, 0.15)
    out = np.repeat(start[None, :], num_frames, axis=0).astype(np.float64)
    for _ in range(2):
        amp = rng.random(NUM_DOF) * span * activity
        freq = 1.0 / rng.uniform(12.0, 120.0, NUM_DOF)
        phase = rng.uniform(0.0, 2 * math.pi, NUM_DOF)
        out += amp * (np.sin(2 * math.pi * freq * t + phase) - np.sin(phase))
    out += rng.normal(0.0, 0.002, NUM_DOF) * span * t
    if rng.random() < 0.5:  # gait: legs and arms swing in anti-phase
        freq = 1.0 / rng.uniform(14.0, 40.0)
        amp = rng.uniform(0.15, 0.6)
        phase = rng.uniform(0.0, 2 * math.pi)
        swing = amp * (np.sin(2 * math.pi * freq * t[:, 0] + phase) - math.sin(phase))
        for side, sign in (("left", 1.0), ("right", -1.0)):
            out[:, _D[f"{side}_hip_flex"]] += sign * swing
            out[:, _D[f"{side}_shoulder_flex"]] -= sign * 0.8 * swing
            out[:, _D[f"{side}_knee"]] += 0.6 * np.maximum(0.0, -sign * swing)
    return np.clip(out, DOF_LOW, DOF_HIGH)


# ----------------------------------------------------------------------------- shape

#: Capsule parts: (name, from point, to point). Radii come from :class:`BodyShape`.
CAPSULES: tuple[tuple[str, int, int], ...] = (
    ("neck", THORAX, UPPER_NECK),
    ("left_upper_arm", L_SHOULDER, L_ELBOW),
    ("left_forearm", L_ELBOW, L_WRIST),
    ("left_hand", L_WRIST, L_HAND),
    ("right_upper_arm", R_SHOULDER, R_ELBOW),
    ("right_forearm", R_ELBOW, R_WRIST),
    ("right_hand", R_WRIST, R_HAND),
    ("left_thigh", L_HIP, L_KNEE),
    ("left_shin", L_KNEE, L_ANKLE),
    ("left_foot", L_ANKLE, L_TOE),
    ("right_thigh", R_HIP, R_KNEE),
    ("right_shin", R_KNEE, R_ANKLE),
    ("right_foot", R_ANKLE, R_TOE),
)
CAPSULE_A = np.array([c[1] for c in CAPSULES])
CAPSULE_B = np.array([c[2] for c in CAPSULES])

#: Adult radii (start, end) of each capsule in units of stature, before the width factor.
_CAPSULE_RADII = {
    "neck": (0.029, 0.027),
    "upper_arm": (0.031, 0.025),
    "forearm": (0.025, 0.018),
    "hand": (0.019, 0.023),
    "thigh": (0.056, 0.038),
    "shin": (0.038, 0.024),
    "foot": (0.025, 0.021),
}

_CAPSULE_RADII_ARRAY = np.array([_CAPSULE_RADII[c[0] if c[0] == "neck" else c[0].split("_", 1)[1]] for c in CAPSULES])

#: Torso cross-section levels: name, (half-width, half-depth) for an adult of width 1.
_TORSO_LEVELS = ("crotch", "hip", "belt", "waist", "chest", "shoulder", "top")
#: Index of the level where trousers end and the shirt begins.
BELT_LEVEL = 2
NUM_TORSO_LEVELS = len(_TORSO_LEVELS)


@dataclass(frozen=True)
class BodyShape:
    """Body proportions, lengths in units (see module docs)."""

    stature: float
    head_radii: np.ndarray  # (3,) half-extents along left, up, forward
    neck: float
    spine: float
    shoulder_half: float
    hip_half: float
    upper_arm: float
    forearm: float
    hand: float
    thigh: float
    shin: float
    foot: float
    ankle_height: float
    capsule_radii: np.ndarray  # (len(CAPSULES), 2)
    torso_half_width: np.ndarray  # (NUM_TORSO_LEVELS,)
    torso_half_depth: np.ndarray  # (NUM_TORSO_LEVELS,)


def sample_shape(rng: np.random.Generator) -> BodyShape:
    """Random proportions: one in five is a child (bigger head, shorter legs, smaller),
    widths 0.75..1.45 (thin to wide), every length jittered by up to 8 %."""
    u = rng.random(20).tolist()
    child = u[0] < 0.2
    age = 0.7 * u[1] if child else 0.75 + 0.25 * u[1]  # 0: small child, 1: adult
    stature = (0.55 + 0.4 * age / 0.7) if child else 0.88 + 0.2 * u[2]
    width = min(max(math.exp(0.17 * math.sqrt(-2 * math.log(max(u[3], 1e-12))) * math.cos(2 * math.pi * u[4])), 0.75), 1.45)
    jitter = [0.92 + 0.16 * x for x in u[5:17]]

    def lerp(a: float, b: float) -> float:
        return a + (b - a) * age

    head_h = lerp(0.19, 0.13) * jitter[0]
    leg = lerp(0.40, 0.47) * jitter[1]
    ankle_h = 0.04
    neck = lerp(0.035, 0.055) * jitter[2]
    spine = max(0.22, 1.0 - ankle_h - leg - neck - head_h * 0.9)
    shoulder_half = lerp(0.095, 0.112) * jitter[3] * math.sqrt(width) * (0.95 + 0.13 * u[17])
    hip_half = lerp(0.05, 0.058) * jitter[4] * width
    ry = head_h / 2
    head_radii = np.array([0.8 * ry * jitter[5] ** 0.5, ry, 0.93 * ry])
    limb_w = width * lerp(1.1, 1.0)
    capsule_radii = _CAPSULE_RADII_ARRAY * limb_w
    belly = (0.9 + 0.25 * u[18]) * width
    thigh_r, arm_r, neck_r = capsule_radii[7, 0], capsule_radii[1, 0], capsule_radii[0, 0]
    torso_half_width = np.array([
        hip_half * 1.1,
        hip_half + 0.8 * thigh_r,
        0.5 * (hip_half + 0.8 * thigh_r) + 0.5 * 0.095 * belly,
        0.095 * belly * lerp(0.95, 1.0),
        shoulder_half * 0.93,
        shoulder_half + 0.2 * arm_r,
        neck_r * 1.7,
    ])
    depth_f = math.sqrt(width) * lerp(0.9, 1.0)
    torso_half_depth = np.array([0.06, 0.08, 0.078 * belly, 0.075 * belly, 0.09, 0.065, 0.04]) * depth_f
    s = stature
    return BodyShape(
        stature=stature,
        head_radii=head_radii * s,
        neck=neck * s,
        spine=spine * s,
        shoulder_half=shoulder_half * s,
        hip_half=hip_half * s,
        upper_arm=lerp(0.15, 0.175) * jitter[6] * s,
        forearm=lerp(0.13, 0.15) * jitter[7] * s,
        hand=lerp(0.075, 0.095) * jitter[8] * s,
        thigh=leg * 0.51 * s,
        shin=leg * 0.49 * s * jitter[9] ** 0.5,
        foot=lerp(0.11, 0.14) * jitter[10] * s,
        ankle_height=ankle_h * s,
        capsule_radii=capsule_radii * s,
        torso_half_width=torso_half_width * s,
        torso_half_depth=torso_half_depth * s,
    )


# ----------------------------------------------------------------------------- kinematics
#
# Everything below is batched over a leading axis N (people, or people x frames): with
# tiny arrays the cost is the number of numpy calls, so one call handles all figures.


# Rotation about axis k as constant templates: R = T0 + cos(a) * T1 + sin(a) * T2.
_ROT_T = np.zeros((3, 3, 3, 3))  # (axis, template, 3, 3)
for _k, (_i, _j) in enumerate([(1, 2), (2, 0), (0, 1)]):
    _ROT_T[_k, 0, _k, _k] = 1.0
    _ROT_T[_k, 1, _i, _i] = _ROT_T[_k, 1, _j, _j] = 1.0
    _ROT_T[_k, 2, _i, _j] = -1.0
    _ROT_T[_k, 2, _j, _i] = 1.0


def _rotations(axes: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Rotation matrices ``angles.shape + (3, 3)`` about the axes ``axes`` (0: x, 1: y, 2: z;
    broadcast against the last axis of ``angles``)."""
    t = _ROT_T[axes]  # (..., 3 templates, 3, 3)
    return t[..., 0, :, :] + np.cos(angles)[..., None, None] * t[..., 1, :, :] + np.sin(angles)[..., None, None] * t[..., 2, :, :]


# Which pose angles (and with which factor) feed the rotations about x, y and z.
_AX = {
    0: ([_D["torso_pitch"], _D["neck_pitch"], _D["neck_pitch"]]
        + [_D[f"{side}_{dof}"] for dof in ("shoulder_flex", "elbow", "wrist", "hip_flex", "knee", "ankle") for side in ("left", "right")],
        [0.5, 0.5, 1.0] + [-1.0] * 8 + [1.0] * 4),
    1: ([_D["torso_twist"], _D["neck_yaw"], _D["neck_yaw"], _D["left_shoulder_twist"], _D["right_shoulder_twist"],
         _D["left_hip_twist"], _D["right_hip_twist"]],
        [0.5, 0.5, 1.0, 1.0, -1.0, 1.0, -1.0]),
    2: ([_D["torso_roll"], _D["neck_roll"], _D["left_shoulder_abd"], _D["right_shoulder_abd"], _D["left_hip_abd"], _D["right_hip_abd"]],
        [0.5, 1.0, 1.0, -1.0, 1.0, -1.0]),
}
# All rotations of a pose in one batch: x rotations first, then y, then z.
_ROT_INDEX = np.array(_AX[0][0] + _AX[1][0] + _AX[2][0])
_ROT_COEF = np.array(_AX[0][1] + _AX[1][1] + _AX[2][1], dtype=np.float64)
_ROT_AXIS = np.array([0] * len(_AX[0][0]) + [1] * len(_AX[1][0]) + [2] * len(_AX[2][0]))
_NX, _NY = len(_AX[0][0]), len(_AX[1][0])
_SIDE = np.array([1.0, -1.0])  # left, right
_HEAD_Q = np.array(list(HEAD_POINTS.values()))
_HEAD_IDX = np.array(list(HEAD_POINTS.keys()))
_SHAPE_FIELDS = ("stature", "neck", "spine", "shoulder_half", "hip_half", "upper_arm", "forearm", "hand", "thigh",
                 "shin", "foot", "ankle_height")


@dataclass
class Pose3D:
    """Posed figures in the body frame (see module docs), batched over N."""

    points: np.ndarray  # (N, NUM_POINTS, 3)
    head_axes: np.ndarray  # (N, 3, 3) columns: head's left, up, forward unit vectors
    torso_centres: np.ndarray  # (N, NUM_TORSO_LEVELS, 3)
    torso_lateral: np.ndarray  # (N, NUM_TORSO_LEVELS, 3) half-width vectors towards the person's left
    torso_forward: np.ndarray  # (N, NUM_TORSO_LEVELS, 3) half-depth vectors towards the front


def stack_shapes(shapes: list[BodyShape]) -> dict[str, np.ndarray]:
    """Body proportions of N figures as arrays (scalars ``(N,)``, the rest stacked)."""
    scalars = np.array([[getattr(sh, name) for name in _SHAPE_FIELDS] for sh in shapes], dtype=np.float64)
    out = {name: scalars[:, k] for k, name in enumerate(_SHAPE_FIELDS)}
    for name in ("head_radii", "capsule_radii", "torso_half_width", "torso_half_depth"):
        out[name] = np.array([getattr(sh, name) for sh in shapes])
    return out


def forward_kinematics(shapes: dict[str, np.ndarray], angles: np.ndarray) -> Pose3D:
    """3D points of N figures (pelvis at the origin) from :func:`stack_shapes` arrays and
    pose angles ``(N, NUM_DOF)``."""
    n = len(angles)
    sh = shapes
    rot = _rotations(_ROT_AXIS, angles[:, _ROT_INDEX] * _ROT_COEF)
    rx, ry, rz = rot[:, :_NX], rot[:, _NX : _NX + _NY], rot[:, _NX + _NY :]
    st = sh["stature"]
    # Spine: the lean, side bend and twist are split between the lumbar and thoracic segments.
    half = rz[:, 0] @ rx[:, 0] @ ry[:, 0]
    r_chest = half @ half
    lumbar = half[:, :, 1] * (0.45 * sh["spine"])[:, None]
    thorax = lumbar + r_chest[:, :, 1] * (0.55 * sh["spine"])[:, None]
    # Neck and head.
    r_neck = r_chest @ ry[:, 1] @ rx[:, 1]
    upper_neck = thorax + (r_neck[:, :, 1] + 0.1 * r_neck[:, :, 2]) * sh["neck"][:, None]
    r_head = r_chest @ ry[:, 2] @ rx[:, 2] @ rz[:, 1]
    rad = sh["head_radii"]
    centre = upper_neck + r_head[:, :, 1] * (0.78 * rad[:, 1:2]) + r_head[:, :, 2] * (0.12 * rad[:, 2:3])
    pts = np.empty((n, NUM_POINTS, 3))
    pts[:, _HEAD_IDX] = centre[:, None, :] + (_HEAD_Q * rad[:, None, :]) @ r_head.transpose(0, 2, 1)
    pts[:, HEAD_CENTER] = centre
    pts[:, UPPER_NECK] = upper_neck
    pts[:, THORAX] = thorax
    # Arms, left and right together: (N, 2, ...).
    off = np.empty((n, 2, 3))
    off[:, :, 0] = sh["shoulder_half"][:, None] * _SIDE
    off[:, :, 1] = (-0.025 * st)[:, None]
    off[:, :, 2] = -0.01 * st[:, None]
    shoulder = thorax[:, None, :] + off @ r_chest.transpose(0, 2, 1)
    r_upper = r_chest[:, None] @ rx[:, 3:5] @ rz[:, 2:4] @ ry[:, 3:5]
    elbow = shoulder - r_upper[..., 1] * sh["upper_arm"][:, None, None]
    r_fore = r_upper @ rx[:, 5:7]
    wrist = elbow - r_fore[..., 1] * sh["forearm"][:, None, None]
    r_hand = r_fore @ rx[:, 7:9]
    pts[:, [L_SHOULDER, R_SHOULDER]] = shoulder
    pts[:, [L_ELBOW, R_ELBOW]] = elbow
    pts[:, [L_WRIST, R_WRIST]] = wrist
    pts[:, [L_HAND, R_HAND]] = wrist - r_hand[..., 1] * sh["hand"][:, None, None]
    # Legs.
    hip = np.zeros((n, 2, 3))
    hip[:, :, 0] = sh["hip_half"][:, None] * _SIDE
    hip[:, :, 1] = (-0.01 * st)[:, None]
    r_thigh = rx[:, 9:11] @ rz[:, 4:6] @ ry[:, 5:7]
    knee = hip - r_thigh[..., 1] * sh["thigh"][:, None, None]
    r_shin = r_thigh @ rx[:, 11:13]
    ankle = knee - r_shin[..., 1] * sh["shin"][:, None, None]
    r_foot = r_shin @ rx[:, 13:15]
    pts[:, [L_HIP, R_HIP]] = hip
    pts[:, [L_KNEE, R_KNEE]] = knee
    pts[:, [L_ANKLE, R_ANKLE]] = ankle
    pts[:, [L_TOE, R_TOE]] = ankle + r_foot[..., 2] * sh["foot"][:, None, None] - r_foot[..., 1] * (0.5 * sh["ankle_height"])[:, None, None]
    pts[:, PELVIS] = 0.5 * (hip[:, 0] + hip[:, 1])
    # Torso cross-sections: lower levels move with the pelvis, upper ones with the chest.
    c = np.zeros((n, NUM_TORSO_LEVELS, 3))
    c[:, 0, 1] = -0.06 * st
    c[:, 0, 2] = -0.005
    c[:, 2, 1] = 0.13 * sh["spine"]
    c[:, 3] = lumbar
    up, fw = r_chest[:, :, 1], r_chest[:, :, 2]
    c[:, 4:] = thorax[:, None, :] + up[:, None, :] * (np.array([-0.12, -0.03, 0.012]) * st[:, None])[:, :, None] \
        - 0.005 * fw[:, None, :] * np.array([0.0, 1.0, 1.0])[None, :, None]
    lateral = np.zeros((n, NUM_TORSO_LEVELS, 3))
    forward = np.zeros((n, NUM_TORSO_LEVELS, 3))
    lateral[:, :3, 0] = 1.0
    forward[:, :3, 2] = 1.0
    lateral[:, 3] = half[:, :, 0]
    forward[:, 3] = half[:, :, 2]
    lateral[:, 4:] = r_chest[:, None, :, 0]
    forward[:, 4:] = r_chest[:, None, :, 2]
    lateral *= sh["torso_half_width"][:, :, None]
    forward *= sh["torso_half_depth"][:, :, None]
    return Pose3D(pts, r_head, c, lateral, forward)


def camera_rotations(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Body-to-camera rotations ``(N, 3, 3)``: yaw about the vertical, then pitch, then roll."""
    rot = _rotations(_CAM_AXES, np.stack([roll, pitch, yaw], 1))
    return rot[:, 0] @ rot[:, 1] @ rot[:, 2]


_CAM_AXES = np.array([2, 0, 1])


@dataclass
class Figure2D:
    """Posed figures in image space, batched over N: pixel positions, depths (towards the
    viewer) and the rotated, scaled head and torso frames (camera axes, pixel units)."""

    points: np.ndarray  # (N, NUM_POINTS, 2) u, v
    depth: np.ndarray  # (N, NUM_POINTS)
    head_axes: np.ndarray  # (N, 3, 3) camera-frame columns: head left, up, forward (unit)
    head_radii: np.ndarray  # (N, 3) pixels
    torso_centres: np.ndarray  # (N, L, 3) camera frame, pixels (x right, y up, z to viewer), from the origin
    torso_lateral: np.ndarray  # (N, L, 3)
    torso_forward: np.ndarray  # (N, L, 3)
    capsule_radii: np.ndarray  # (N, C, 2) pixels
    origin: np.ndarray  # (N, 2) pixel position of the body origin (pelvis)
    scale: np.ndarray  # (N,) pixels per unit

    def __len__(self) -> int:
        return len(self.points)

    def select(self, index) -> "Figure2D":
        """The figures at ``index`` (an index array or slice), still batched."""
        return Figure2D(*(getattr(self, f)[index] for f in _FIGURE_FIELDS))

    def translated(self, shift: np.ndarray) -> "Figure2D":
        """The figures moved by ``shift`` ``(N, 2)`` pixels."""
        return Figure2D(self.points + shift[:, None, :], self.depth, self.head_axes, self.head_radii, self.torso_centres,
                        self.torso_lateral, self.torso_forward, self.capsule_radii, self.origin + shift, self.scale)


_FIGURE_FIELDS = ("points", "depth", "head_axes", "head_radii", "torso_centres", "torso_lateral", "torso_forward",
                  "capsule_radii", "origin", "scale")


def project(pose: Pose3D, shapes: dict[str, np.ndarray], rotation: np.ndarray, scale: np.ndarray, origin: np.ndarray) -> Figure2D:
    """Orthographic projection of N posed figures: ``rotation`` ``(N, 3, 3)`` from
    :func:`camera_rotations`, ``scale`` ``(N,)`` pixels per unit, ``origin`` ``(N, 2)`` pixel
    position of the pelvis."""
    r_t = (rotation * scale[:, None, None]).transpose(0, 2, 1)
    cam = pose.points @ r_t
    points = np.empty(cam.shape[:2] + (2,))
    points[..., 0] = origin[:, None, 0] + cam[..., 0]
    points[..., 1] = origin[:, None, 1] - cam[..., 1]
    return Figure2D(
        points=points,
        depth=cam[..., 2],
        head_axes=rotation @ pose.head_axes,
        head_radii=shapes["head_radii"] * scale[:, None],
        torso_centres=pose.torso_centres @ r_t,
        torso_lateral=pose.torso_lateral @ r_t,
        torso_forward=pose.torso_forward @ r_t,
        capsule_radii=shapes["capsule_radii"] * scale[:, None, None],
        origin=np.array(origin, dtype=np.float64),
        scale=np.array(scale, dtype=np.float64),
    )
