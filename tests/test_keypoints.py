import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from posenas.errors import PosenasError
from posenas.keypoints import COCO17, MPII16, POSETRACK18, SCHEMAS, get_schema

# PNFS numbers MPII joints in its own order (paper, section III-E) ...
PNFS_MPII_ORDER = [
    "head_top", "upper_neck", "thorax", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle", "pelvis",
]
# ... and Table I gives the groups as index lists in that order (MPII) and in COCO's order.
TABLE_I = {
    "mpii": {
        1: [range(0, 16)],
        3: [range(0, 3), range(3, 9), range(9, 16)],
        5: [range(0, 5), [5, 7], [6, 8], [9, 10, 15], range(11, 15)],
        8: [range(0, 5), [3, 5], [5, 7], [4, 6], [6, 8], [9, 10, 11, 12, 15], [11, 13], [12, 14]],
    },
    "coco": {
        1: [range(0, 17)],
        3: [range(0, 5), range(5, 11), range(11, 17)],
        5: [range(0, 7), [7, 9], [8, 10], [11, 12], range(13, 17)],
        8: [range(0, 7), [5, 7], [7, 9], [6, 8], [8, 10], range(11, 15), [13, 15], [14, 16]],
    },
}


@pytest.mark.parametrize("schema", list(SCHEMAS.values()), ids=list(SCHEMAS))
def test_flip_is_an_involution_between_mirror_names(schema):
    perm = np.array(schema.flip_index)
    assert (perm[perm] == np.arange(schema.num_joints)).all()
    for a, b in schema.flip_pairs:
        assert schema.joints[a].replace("left_", "right_") == schema.joints[b]
    # every left/right joint is paired, central joints map to themselves
    for j, name in enumerate(schema.joints):
        assert (perm[j] != j) == (name.startswith("left_") or name.startswith("right_"))


def test_official_orders_and_flip_pairs():
    assert COCO17.flip_pairs == ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
    assert MPII16.joints[0] == "right_ankle" and MPII16.joints[9] == "head_top" and MPII16.joints[15] == "left_wrist"
    assert MPII16.joints[6:8] == ("pelvis", "thorax")
    assert sorted(MPII16.flip_pairs) == [(3, 2), (4, 1), (5, 0), (13, 12), (14, 11), (15, 10)]
    assert POSETRACK18.joints[:3] == ("nose", "head_bottom", "head_top")


def test_coco_sigmas_are_pycocotools_defaults():
    expected = COCOeval(iouType="keypoints").params.kpt_oks_sigmas
    np.testing.assert_allclose(COCO17.sigmas, expected)
    np.testing.assert_allclose(POSETRACK18.sigmas, expected)
    assert len(MPII16.sigmas) == 16 and min(MPII16.sigmas) > 0


@pytest.mark.parametrize("schema", list(SCHEMAS.values()), ids=list(SCHEMAS))
def test_skeleton_connects_every_joint(schema):
    parent = list(range(schema.num_joints))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for a, b in schema.skeleton:
        assert a != b
        parent[root(a)] = root(b)
    assert len({root(j) for j in range(schema.num_joints)}) == 1


@pytest.mark.parametrize("schema", list(SCHEMAS.values()), ids=list(SCHEMAS))
@pytest.mark.parametrize("parts", [1, 3, 5, 8])
def test_part_groups_cover_every_joint(schema, parts):
    groups = schema.part_groups(parts)
    assert len(groups) == parts
    covered = set().union(*(g.joints for g in groups))
    assert covered == set(range(schema.num_joints))


@pytest.mark.parametrize("parts", [1, 3, 5, 8])
def test_part_groups_match_pnfs_table_1(parts):
    mpii = [{PNFS_MPII_ORDER[i] for i in idx} for idx in TABLE_I["mpii"][parts]]
    ours = [{MPII16.joints[j] for j in g.joints} for g in MPII16.part_groups(parts)]
    assert ours == mpii
    coco = [set(idx) for idx in TABLE_I["coco"][parts]]
    assert [set(g.joints) for g in COCO17.part_groups(parts)] == coco


def test_bad_names_fail_clearly():
    with pytest.raises(PosenasError, match="known: coco17, mpii16, posetrack18"):
        get_schema("h36m")
    with pytest.raises(PosenasError, match="allowed: 1, 3, 5, 8"):
        COCO17.part_groups(4)
    with pytest.raises(PosenasError, match="unknown joint 'chin'"):
        COCO17.index("chin")
