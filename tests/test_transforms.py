import numpy as np
import pytest

from posenas.data.transforms import (
    AugmentConfig,
    TopDownTransform,
    affine_matrix,
    box_to_center_scale,
    colour_jitter,
    compose,
    hflip_matrix,
    invert_affine,
    transform_points,
    warp,
)
from posenas.errors import PosenasError
from posenas.keypoints import COCO17, MPII16

INPUT = (64, 48)  # (H, W)
NO_AUG = AugmentConfig(scale_factor=0.0, rotation=0.0, flip=False, half_body_prob=0.0, colour_jitter=0.0)


def _person(schema=COCO17, centre=(100.0, 90.0), height=120.0):
    """A standing person: head at the top, ankles at the bottom, left joints on the image's right."""
    cx, cy = centre
    y = {"nose": -0.45, "eye": -0.47, "ear": -0.45, "shoulder": -0.3, "elbow": -0.1, "wrist": 0.05,
         "hip": 0.05, "knee": 0.27, "ankle": 0.48, "head_top": -0.5, "upper_neck": -0.36, "thorax": -0.3,
         "pelvis": 0.05}
    kp = np.zeros((schema.num_joints, 3), np.float32)
    for i, name in enumerate(schema.joints):
        side, _, part = name.partition("_")
        if side in ("left", "right"):
            dx = (0.12 if side == "left" else -0.12) * height
        else:
            part, dx = name, 0.0
        kp[i] = (cx + dx, cy + y[part] * height, 2)
    return kp


def _box(kp):
    lab = kp[kp[:, 2] > 0, :2]
    lo, hi = lab.min(0), lab.max(0)
    return np.array([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]])


def test_affine_inverse_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        c = rng.uniform(-100, 800, 2)
        s = rng.uniform(5, 500, 2)
        r = rng.uniform(-180, 180)
        size = tuple(rng.integers(8, 400, 2))
        fwd = affine_matrix(c, s, r, size)
        inv = affine_matrix(c, s, r, size, inverse=True)
        pts = rng.uniform(-500, 1000, (17, 2))
        back = transform_points(transform_points(pts, fwd), inv)
        assert np.abs(back - pts).max() <= 1e-6
        np.testing.assert_allclose(invert_affine(fwd), inv, atol=1e-9)


def test_affine_maps_box_onto_crop_classic_convention():
    c, s = np.array([50.0, 40.0]), np.array([30.0, 40.0])
    m = affine_matrix(c, s, 0.0, INPUT)
    corners = np.array([[35.0, 20.0], [65.0, 60.0], [50.0, 40.0]])
    np.testing.assert_allclose(transform_points(corners, m), [[0, 0], [48, 64], [24, 32]], atol=1e-9)
    # positive rotation turns the window clockwise on screen: the point right of the centre
    # in the crop comes from below-right of the centre in the image
    m90 = affine_matrix(c, s, 90.0, INPUT, inverse=True)
    np.testing.assert_allclose(transform_points(np.array([[24.0 + 8, 32.0]]), m90), [[50.0, 45.0]], atol=1e-9)


def test_warp_agrees_with_transform_points():
    """A bright pixel in the image lands where transform_points says (bilinear, pixel centres at integers)."""
    image = np.zeros((120, 160, 3), np.uint8)
    image[70, 90] = 255
    m = affine_matrix([80.0, 60.0], [48.0, 64.0], 0.0, INPUT)  # scale 1: a pure shift
    crop = warp(image, m, INPUT)
    x, y = transform_points(np.array([[90.0, 70.0]]), m)[0]
    assert crop.shape == (*INPUT, 3) and crop.dtype == np.uint8
    assert crop[int(round(y)), int(round(x)), 0] == 255 and crop.sum() == 3 * 255


def test_box_padding_gives_input_aspect_and_context():
    aspect = INPUT[1] / INPUT[0]
    for box in ([10, 20, 30, 100], [10, 20, 100, 30], [0, 0, 0, 0]):
        c, s = box_to_center_scale(box, aspect, padding=1.25)
        np.testing.assert_allclose(c, [box[0] + box[2] / 2, box[1] + box[3] / 2])
        assert s[0] / s[1] == pytest.approx(aspect)
        w, h = max(box[2], 1), max(box[3], 1)
        # the longer side (relative to the aspect) is padded by exactly 1.25, the other grows to match
        assert (s[0] == pytest.approx(1.25 * w)) or (s[1] == pytest.approx(1.25 * h))
        assert s[0] >= 1.25 * w - 1e-9 and s[1] >= 1.25 * h - 1e-9


def test_validation_crop_is_deterministic_and_centred():
    kp = _person()
    box = _box(kp)
    image = np.random.default_rng(1).integers(0, 255, (200, 220, 3), dtype=np.uint8)
    t = TopDownTransform(INPUT, COCO17, augment=None)
    a = t(image, kp, box, np.random.default_rng(0))
    b = t(image, kp, box, np.random.default_rng(123))
    np.testing.assert_array_equal(a.crop, b.crop)
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    assert a.rotation == 0.0 and not a.flipped
    centre = transform_points(np.array([[box[0] + box[2] / 2, box[1] + box[3] / 2]]), a.matrix)[0]
    np.testing.assert_allclose(centre, [INPUT[1] / 2, INPUT[0] / 2], atol=1e-9)
    assert (a.keypoints[:, 2] == 2).all()  # the padded box holds every joint
    # disabled augmentation is the same plain crop
    c = TopDownTransform(INPUT, COCO17, AugmentConfig(enabled=False))(image, kp, box, np.random.default_rng(5))
    np.testing.assert_array_equal(a.crop, c.crop)


def _flip_only(schema):
    return TopDownTransform(INPUT, schema, AugmentConfig(scale_factor=0.0, rotation=0.0, flip=True,
                                                         half_body_prob=0.0, colour_jitter=0.0))


def _rng_with_flip(flip: bool):
    """A seed whose flip draw (4th uniform) is / is not a flip."""
    for seed in range(100):
        if (np.random.default_rng(seed).random(4)[3] < 0.5) == flip:
            return seed
    raise AssertionError


@pytest.mark.parametrize("schema", [COCO17, MPII16])
def test_flip_swaps_left_and_right(schema):
    kp = _person(schema)
    kp[schema.index("left_wrist"), 1] -= 30  # the left hand is raised: the pose is not symmetric
    image = np.random.default_rng(2).integers(0, 255, (200, 220, 3), dtype=np.uint8)
    t = _flip_only(schema)
    plain = t(image, kp, _box(kp), np.random.default_rng(_rng_with_flip(False)))
    flipped = t(image, kp, _box(kp), np.random.default_rng(_rng_with_flip(True)))
    assert flipped.flipped and not plain.flipped
    # mirrored about the crop centre (x -> W - x, the classic convention) with left and right swapped
    for a, b in list(schema.flip_pairs) + [(b, a) for a, b in schema.flip_pairs]:
        np.testing.assert_allclose(flipped.keypoints[a, 0], INPUT[1] - plain.keypoints[b, 0], atol=1e-4)
        np.testing.assert_allclose(flipped.keypoints[a, 1:], plain.keypoints[b, 1:], atol=1e-4)
    lw, rw = schema.index("left_wrist"), schema.index("right_wrist")
    # the raised hand is the right one in the mirrored picture
    assert flipped.keypoints[rw, 1] < flipped.keypoints[lw, 1]
    assert plain.keypoints[lw, 1] < plain.keypoints[rw, 1]
    # and the matrix takes the original right wrist to the flipped sample's left wrist
    np.testing.assert_allclose(transform_points(kp[[rw], :2], flipped.matrix)[0], flipped.keypoints[lw, :2], atol=1e-4)
    # the crop is the mirror image of the plain crop (to the classic convention's 1-px offset)
    # (cv2's fixed-point bilinear weights round differently by at most 1 grey level)
    diff = flipped.crop[:, 1:].astype(int) - plain.crop[:, ::-1][:, :-1].astype(int)
    assert np.abs(diff).max() <= 1


def test_flipping_twice_is_identity():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    kp = _person(COCO17, centre=(35, 25), height=40)
    mirror = hflip_matrix(image.shape[1])
    twice = compose(mirror, mirror)
    np.testing.assert_allclose(twice, [[1, 0, 0], [0, 1, 0]])
    once = warp(image, mirror, image.shape[:2])
    np.testing.assert_array_equal(once, image[:, ::-1])  # the mirror is pixel exact
    np.testing.assert_array_equal(warp(once, mirror, image.shape[:2]), image)
    # keypoints: mirror coordinates and swap joints, twice
    fi = np.array(COCO17.flip_index)
    k1 = kp.copy()
    k1[:, :2] = transform_points(kp[:, :2], mirror)
    k1 = k1[fi]
    k2 = k1.copy()
    k2[:, :2] = transform_points(k1[:, :2], mirror)
    np.testing.assert_allclose(k2[fi], kp, atol=1e-9)


def test_half_body_box_covers_only_the_chosen_joints():
    kp = _person(COCO17, centre=(300, 300), height=300)
    image = np.zeros((600, 600, 3), np.uint8)
    aug = AugmentConfig(scale_factor=0.0, rotation=0.0, flip=False, half_body_prob=1.0, colour_jitter=0.0)
    t = TopDownTransform(INPUT, COCO17, aug)
    groups = {g.name: set(g.joints) for g in COCO17.part_groups(3)}
    upper = groups["head part"] | groups["upper limb part"]
    lower = groups["lower limb part"]
    seen = set()
    for seed in range(20):
        s = t(image, kp, _box(kp), np.random.default_rng(seed))
        inside = set(np.flatnonzero(s.keypoints[:, 2] > 0).tolist())
        chosen = upper if inside >= upper else lower
        assert inside >= chosen, "every chosen joint is in the crop"
        seen.add(frozenset(chosen))
        # the box is the chosen joints' extent, padded to the aspect and × 1.5
        ext = _box(kp[sorted(chosen)])
        c, sc = box_to_center_scale(ext, INPUT[1] / INPUT[0], 1.5)
        np.testing.assert_allclose(s.center, c)
        np.testing.assert_allclose(s.scale, sc)
        # the far half (ankles for the upper body, nose and eyes for the lower) is outside
        far = {"ankle"} if chosen is upper else {"nose", "eye"}
        far_idx = [i for i, n in enumerate(COCO17.joints) if n.split("_")[-1] in far]
        assert (s.keypoints[far_idx, 2] == 0).all()
    assert len(seen) == 2, "both halves get chosen"
    # fewer than half_body_min_joints (8) labelled joints: never a half body
    few = kp.copy()
    few[7:] = 0
    plain = box_to_center_scale(_box(few), INPUT[1] / INPUT[0], 1.25)
    for seed in range(5):
        s = t(image, few, _box(few), np.random.default_rng(seed))
        np.testing.assert_allclose(s.center, plain[0])
        np.testing.assert_allclose(s.scale, plain[1])


def test_joints_outside_the_crop_get_v_zero():
    kp = _person()
    far = kp.copy()
    far[0, :2] = (1000.0, -500.0)  # nose far outside the box
    far[1, 2] = 0  # unlabelled stays unlabelled, coordinates zeroed
    s = TopDownTransform(INPUT, COCO17, None)(np.zeros((200, 220, 3), np.uint8), far, _box(kp), np.random.default_rng(0))
    assert s.keypoints[0, 2] == 0 and (s.keypoints[0, :2] == 0).all()
    assert s.keypoints[1, 2] == 0 and (s.keypoints[1, :2] == 0).all()
    assert (s.keypoints[2:, 2] == 2).all()
    assert s.keypoints.dtype == np.float32


def test_colour_jitter_keeps_dtype_and_range():
    image = np.random.default_rng(4).integers(0, 256, (32, 24, 3), dtype=np.uint8)
    np.testing.assert_array_equal(colour_jitter(image, 1.0, 1.0, 1.0), image)
    for b, c, s in [(1.2, 0.8, 1.2), (0.8, 1.2, 0.8), (1.5, 1.5, 1.5)]:
        out = colour_jitter(image, b, c, s)
        assert out.dtype == np.uint8 and out.shape == image.shape
    bright = colour_jitter(image, 1.2, 1.0, 1.0)
    assert bright.astype(int).sum() > image.astype(int).sum()
    gray = colour_jitter(image, 1.0, 1.0, 0.0)
    assert np.abs(gray.astype(int) - gray[..., :1].astype(int)).max() <= 1  # saturation 0 is gray


def test_augmented_sample_is_a_function_of_the_rng():
    kp = _person()
    image = np.random.default_rng(5).integers(0, 255, (200, 220, 3), dtype=np.uint8)
    t = TopDownTransform(INPUT, COCO17, AugmentConfig())
    a = t(image, kp, _box(kp), np.random.default_rng(7))
    b = t(image, kp, _box(kp), np.random.default_rng(7))
    np.testing.assert_array_equal(a.crop, b.crop)
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    rotations = {t(image, kp, _box(kp), np.random.default_rng(s)).rotation for s in range(30)}
    assert len(rotations) > 5 and 0.0 in rotations and max(abs(r) for r in rotations) <= 80.0
    # visible labelled joints stay consistent with the matrix
    vis = a.keypoints[:, 2] > 0
    idx = np.flatnonzero(vis)
    src = np.array(COCO17.flip_index)[idx] if a.flipped else idx
    np.testing.assert_allclose(transform_points(kp[src, :2], a.matrix), a.keypoints[idx, :2], atol=1e-3)


def test_no_augmentation_config_equals_plain_crop_geometry():
    kp = _person()
    image = np.zeros((200, 220, 3), np.uint8)
    a = TopDownTransform(INPUT, COCO17, NO_AUG)(image, kp, _box(kp), np.random.default_rng(0))
    b = TopDownTransform(INPUT, COCO17, None)(image, kp, _box(kp), np.random.default_rng(0))
    np.testing.assert_allclose(a.matrix, b.matrix)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"scale_factor": 1.5}, "scale_factor"), ({"rotation_prob": -0.1}, "rotation_prob"),
     ({"flip": 1}, "flip"), ({"half_body_min_joints": 0}, "half_body_min_joints"),
     ({"colour_jitter": "x"}, "colour_jitter")],
)
def test_bad_augment_config_names_the_field(kwargs, field):
    with pytest.raises(PosenasError, match=f"augment.{field}"):
        AugmentConfig(**kwargs)


def test_bad_keypoint_shape_is_a_clear_error():
    t = TopDownTransform(INPUT, COCO17, None)
    with pytest.raises(PosenasError, match=r"\(17, 3\)"):
        t(np.zeros((10, 10, 3), np.uint8), np.zeros((16, 3)), [0, 0, 5, 5], np.random.default_rng(0))
