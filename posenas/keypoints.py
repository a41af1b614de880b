"""Keypoint schemas: joint names, flip pairs, skeleton, OKS sigmas and PNFS body-part groups.

Every dataset, codec and model refers to joints through a :class:`KeypointSchema`, so the
joint order of a dataset is written down once, here, in that dataset's official order.
The PNFS body-part groupings (Table I of the paper, P = 1 / 3 / 5 / 8) are defined by
joint *names* and mapped onto each schema's order, so they cannot drift out of sync with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from posenas.errors import PosenasError

#: COCO's per-keypoint OKS sigmas (pycocotools / the COCO keypoint challenge), by joint name.
COCO_SIGMAS_BY_NAME: dict[str, float] = {
    "nose": 0.026,
    "left_eye": 0.025,
    "right_eye": 0.025,
    "left_ear": 0.035,
    "right_ear": 0.035,
    "left_shoulder": 0.079,
    "right_shoulder": 0.079,
    "left_elbow": 0.072,
    "right_elbow": 0.072,
    "left_wrist": 0.062,
    "right_wrist": 0.062,
    "left_hip": 0.107,
    "right_hip": 0.107,
    "left_knee": 0.087,
    "right_knee": 0.087,
    "left_ankle": 0.089,
    "right_ankle": 0.089,
}

#: Joints that have no COCO counterpart borrow the sigma of their nearest COCO joint
#: (our choice; COCO defines none for them): head top / head bottom like the eyes
#: (small, sharply defined head points), upper neck and thorax like the shoulders,
#: pelvis like the hips.
_BORROWED_SIGMA: dict[str, str] = {
    "head_top": "left_eye",
    "head_bottom": "left_eye",
    "upper_neck": "left_shoulder",
    "thorax": "left_shoulder",
    "pelvis": "left_hip",
}


def oks_sigma(name: str) -> float:
    """COCO's OKS sigma for a joint name (borrowed from the nearest COCO joint if needed)."""
    if name in COCO_SIGMAS_BY_NAME:
        return COCO_SIGMAS_BY_NAME[name]
    return COCO_SIGMAS_BY_NAME[_BORROWED_SIGMA[name]]


@dataclass(frozen=True)
class PartGroup:
    """One body part of a PNFS grouping: a name and the joint indices it predicts."""

    name: str
    joints: tuple[int, ...]


@dataclass(frozen=True)
class KeypointSchema:
    """A dataset's joint layout. Indices everywhere are 0-based in the dataset's official order."""

    name: str
    joints: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    skeleton: tuple[tuple[int, int], ...]
    sigmas: tuple[float, ...]
    # P -> groups, by joint name (resolved to indices by `part_groups`).
    _groups_by_name: dict[int, tuple[tuple[str, tuple[str, ...]], ...]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    def index(self, joint: str) -> int:
        try:
            return self.joints.index(joint)
        except ValueError:
            raise PosenasError(
                f"schema {self.name!r}: unknown joint {joint!r}; known: {', '.join(self.joints)}"
            ) from None

    @property
    def flip_index(self) -> tuple[int, ...]:
        """Permutation mapping each joint to its mirror joint (itself for central joints)."""
        perm = list(range(self.num_joints))
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return tuple(perm)

    def part_groups(self, parts: int) -> tuple[PartGroup, ...]:
        """PNFS body-part grouping with ``parts`` groups (1, 3, 5 or 8), as joint indices."""
        if parts not in self._groups_by_name:
            allowed = ", ".join(str(p) for p in sorted(self._groups_by_name)) or "none"
            raise PosenasError(
                f"schema {self.name!r}: no body-part grouping with P={parts}; allowed: {allowed}"
            )
        return tuple(
            PartGroup(group, tuple(sorted(self.index(j) for j in names)))
            for group, names in self._groups_by_name[parts]
        )

    @property
    def part_counts(self) -> tuple[int, ...]:
        return tuple(sorted(self._groups_by_name))


def _pairs(joints: tuple[str, ...], named: list[tuple[str, str]]) -> tuple[tuple[int, int], ...]:
    return tuple((joints.index(a), joints.index(b)) for a, b in named)


def _mirror_pairs(joints: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """Flip pairs: every ``left_*`` joint with its ``right_*`` twin."""
    out = []
    for i, name in enumerate(joints):
        if name.startswith("left_"):
            out.append((i, joints.index("right_" + name[len("left_") :])))
    return tuple(out)


def _limbs(side_joints: list[str]) -> list[tuple[str, str]]:
    """Arm and leg chains for both sides."""
    edges = []
    for side in ("left", "right"):
        chain = [f"{side}_{j}" for j in side_joints]
        edges += list(zip(chain[:-1], chain[1:]))
    return edges


_ARM = ["shoulder", "elbow", "wrist"]
_LEG = ["hip", "knee", "ankle"]


def _make_schema(
    name: str,
    joints: tuple[str, ...],
    skeleton: list[tuple[str, str]],
    groups: dict[int, tuple[tuple[str, tuple[str, ...]], ...]],
    sigmas: tuple[float, ...] | None = None,
) -> KeypointSchema:
    return KeypointSchema(
        name=name,
        joints=joints,
        flip_pairs=_mirror_pairs(joints),
        skeleton=_pairs(joints, skeleton),
        sigmas=sigmas if sigmas is not None else tuple(oks_sigma(j) for j in joints),
        _groups_by_name=groups,
    )


def _lr(*parts: str) -> tuple[str, ...]:
    """('left_elbow', 'left_wrist') from _lr('left', 'elbow', 'wrist')-style shorthand."""
    side, *rest = parts
    return tuple(f"{side}_{p}" for p in rest)


def _both(*parts: str) -> tuple[str, ...]:
    return tuple(f"{side}_{p}" for p in parts for side in ("left", "right"))


def _pnfs_groups(head: tuple[str, ...], neck: tuple[str, ...], pelvis: tuple[str, ...]):
    """PNFS Table I, written by joint name.

    ``head`` are the schema's head joints, ``neck`` its joints between head and shoulders
    (MPII: upper neck, thorax), ``pelvis`` its central hip joint if any (MPII: pelvis).
    In Table I, MPII's pelvis sits with the lower limbs (P=3) and with the thigh (P=5, P=8);
    COCO has no such joint.
    """
    head_part = head + neck
    head_shoulder = head_part + _both("shoulder")
    return {
        1: (("all keypoints", head_part + _both("shoulder", "elbow", "wrist", "hip", "knee", "ankle") + pelvis),),
        3: (
            ("head part", head_part),
            ("upper limb part", _both("shoulder", "elbow", "wrist")),
            ("lower limb part", _both("hip", "knee", "ankle") + pelvis),
        ),
        5: (
            ("head-shoulder", head_shoulder),
            ("left lower arm", _lr("left", "elbow", "wrist")),
            ("right lower arm", _lr("right", "elbow", "wrist")),
            ("thigh", _both("hip") + pelvis),
            ("lower limb part", _both("knee", "ankle")),
        ),
        8: (
            ("head-shoulder", head_shoulder),
            ("left upper arm", _lr("left", "shoulder", "elbow")),
            ("left lower arm", _lr("left", "elbow", "wrist")),
            ("right upper arm", _lr("right", "shoulder", "elbow")),
            ("right lower arm", _lr("right", "elbow", "wrist")),
            ("thigh", _both("hip", "knee") + pelvis),
            ("left lower leg", _lr("left", "knee", "ankle")),
            ("right lower leg", _lr("right", "knee", "ankle")),
        ),
    }


_COCO_JOINTS = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)

_BODY_EDGES = (
    _limbs(_ARM)
    + _limbs(_LEG)
    + [("left_shoulder", "right_shoulder"), ("left_hip", "right_hip")]
    + [("left_shoulder", "left_hip"), ("right_shoulder", "right_hip")]
)

#: COCO-17 in the official order; skeleton as in COCO's person category.
COCO17 = _make_schema(
    "coco17",
    _COCO_JOINTS,
    _BODY_EDGES
    + [
        ("left_eye", "right_eye"),
        ("nose", "left_eye"),
        ("nose", "right_eye"),
        ("left_eye", "left_ear"),
        ("right_eye", "right_ear"),
        ("left_ear", "left_shoulder"),
        ("right_ear", "right_shoulder"),
    ],
    _pnfs_groups(("nose",) + _both("eye", "ear"), (), ()),
)

#: MPII-16 in the official order: 0 r-ankle ... 6 pelvis, 7 thorax, 8 upper neck, 9 head top ... 15 l-wrist.
MPII16 = _make_schema(
    "mpii16",
    (
        "right_ankle",
        "right_knee",
        "right_hip",
        "left_hip",
        "left_knee",
        "left_ankle",
        "pelvis",
        "thorax",
        "upper_neck",
        "head_top",
        "right_wrist",
        "right_elbow",
        "right_shoulder",
        "left_shoulder",
        "left_elbow",
        "left_wrist",
    ),
    _limbs(_ARM)
    + _limbs(_LEG)
    + [
        ("left_hip", "pelvis"),
        ("right_hip", "pelvis"),
        ("pelvis", "thorax"),
        ("thorax", "upper_neck"),
        ("upper_neck", "head_top"),
        ("thorax", "left_shoulder"),
        ("thorax", "right_shoulder"),
    ],
    _pnfs_groups(("head_top",), ("upper_neck", "thorax"), ("pelvis",)),
)

#: PoseTrack18: COCO's layout with eyes replaced by head bottom / head top (ears unlabelled
#: in the real data). Sigmas are COCO's by position, as the PoseTrack toolkits use them.
POSETRACK18 = _make_schema(
    "posetrack18",
    ("nose", "head_bottom", "head_top") + _COCO_JOINTS[3:],
    _BODY_EDGES
    + [
        ("nose", "head_bottom"),
        ("head_bottom", "head_top"),
        ("head_bottom", "left_shoulder"),
        ("head_bottom", "right_shoulder"),
        ("left_ear", "head_top"),
        ("right_ear", "head_top"),
    ],
    _pnfs_groups(("nose", "head_bottom", "head_top") + _both("ear"), (), ()),
    sigmas=tuple(COCO_SIGMAS_BY_NAME[j] for j in _COCO_JOINTS),
)

#: All schemas by name — a plain dict to grep.
SCHEMAS: dict[str, KeypointSchema] = {s.name: s for s in (COCO17, MPII16, POSETRACK18)}


def get_schema(name: str) -> KeypointSchema:
    try:
        return SCHEMAS[name]
    except KeyError:
        raise PosenasError(f"unknown keypoint schema {name!r}; known: {', '.join(SCHEMAS)}") from None
