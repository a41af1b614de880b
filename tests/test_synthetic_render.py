"""The synthetic-people renderer: determinism, formats, honest visibility, boxes, video."""

from __future__ import annotations

import math

import numpy as np
import pytest

from posenas.errors import PosenasError
from posenas.synthetic import body as B
from posenas.synthetic import render as R
from posenas.synthetic.scene import (
    CANONICAL_JOINTS,
    Distractor,
    SceneConfig,
    render_frame,
    render_image,
    render_video,
    sample_plan,
)

J = {name: i for i, name in enumerate(CANONICAL_JOINTS)}
QUIET = SceneConfig(max_people=1, occluder_prob=0.0, blur_prob=0.0, max_noise=0.0, clutter=0.3)


def _inside(joints: np.ndarray, w: int, h: int) -> np.ndarray:
    ix = np.floor(joints[:, 0] + 0.5)
    iy = np.floor(joints[:, 1] + 0.5)
    return (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)


def _posed_plan(seed: int, angles: np.ndarray, yaw: float, height: float = 200.0, centre=(128.0, 120.0), config=QUIET):
    """A one-person plan with the person's pose and camera replaced."""
    plan = sample_plan(seed, config)
    person = plan.people[0]
    shapes = B.stack_shapes([person.shape])
    rot = B.camera_rotations(np.array([yaw]), np.zeros(1), np.zeros(1))
    pose = B.forward_kinematics(shapes, angles[None, :])
    plan.figures = B.project(pose, shapes, rot, np.array([height / person.shape.stature]), np.array([centre]))
    return plan


# ----------------------------------------------------------------------------- determinism, format


def test_same_seed_same_bytes_and_different_seeds_differ():
    a, b = render_image(1234), render_image(1234)
    assert a.image.tobytes() == b.image.tobytes()
    assert len(a.people) == len(b.people)
    for p, q in zip(a.people, b.people):
        for field in ("joints", "bbox", "head_box"):
            assert getattr(p, field).tobytes() == getattr(q, field).tobytes()
        assert (p.area, p.track_id) == (q.area, q.track_id)
    c = render_image(1235)
    assert c.image.tobytes() != a.image.tobytes()
    va, vb = render_video(7, 3), render_video(7, 3)
    assert [f.image.tobytes() for f in va] == [f.image.tobytes() for f in vb]


def test_shapes_dtypes_and_value_ranges():
    cfg = SceneConfig(width=96, height=64, max_people=3)
    seen_people = 0
    for seed in range(12):
        out = render_image(seed, cfg)
        assert out.image.shape == (64, 96, 3) and out.image.dtype == np.uint8
        ids = [p.track_id for p in out.people]
        assert len(set(ids)) == len(ids) and all(0 <= i < 3 for i in ids)
        for p in out.people:
            seen_people += 1
            assert p.joints.shape == (21, 3) and p.joints.dtype == np.float32
            assert p.bbox.shape == (4,) and p.bbox.dtype == np.float32
            assert p.head_box.shape == (4,) and p.head_box.dtype == np.float32
            assert isinstance(p.area, float) and p.area > 0
            assert set(np.unique(p.joints[:, 2])) <= {0.0, 1.0, 2.0}
            assert np.isfinite(p.joints).all()
    assert seen_people > 5
    assert len(CANONICAL_JOINTS) == 21 and CANONICAL_JOINTS == B.JOINT_NAMES


def test_bad_arguments_are_rejected():
    with pytest.raises(PosenasError, match="seed"):
        render_image(-1)
    with pytest.raises(PosenasError, match="max_people"):
        SceneConfig(max_people=0)
    with pytest.raises(PosenasError, match="width"):
        SceneConfig(width=8)
    with pytest.raises(PosenasError, match="occluder_prob"):
        SceneConfig(occluder_prob=1.5)
    with pytest.raises(PosenasError, match="num_frames"):
        render_video(0, 0)


def test_max_people_is_respected_and_reached():
    for max_people in (1, 2, 4):
        counts = [len(sample_plan(s, SceneConfig(max_people=max_people)).people) for s in range(40)]
        assert min(counts) >= 1 and max(counts) == max_people
        visible = [len(render_image(s, SceneConfig(max_people=max_people)).people) for s in range(10)]
        assert max(visible) <= max_people


# ----------------------------------------------------------------------------- visibility


def test_v0_exactly_outside_and_area_bbox_match_the_label_buffer():
    cfg = SceneConfig(edge_prob=0.6)
    n_outside = n_visible = 0
    for seed in range(25):
        frame = render_frame(sample_plan(seed, cfg))
        h, w = frame.label.shape
        for i, p in enumerate(frame.people):
            inside = _inside(p.joints, w, h)
            assert np.array_equal(p.joints[:, 2] == 0, ~inside)
            n_outside += int((~inside).sum())
            lo = R.person_label(i, 0)
            mask = (frame.label >= lo) & (frame.label < lo + R.NUM_PARTS)
            assert p.area == mask.sum()
            if p.area == 0:
                continue
            ys, xs = np.nonzero(mask)
            x, y, bw, bh = p.bbox
            # COCO's box-from-mask convention: mask columns x0..x1 give x = x0, w = x1 - x0 + 1.
            assert x <= xs.min() and y <= ys.min() and x + bw >= xs.max() + 1 and y + bh >= ys.max() + 1
            assert x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
            for jx, jy, v in p.joints:
                if v == 2:  # joints have pixel centres at integers: half a pixel shift
                    n_visible += 1
                    assert x <= jx + 0.5 <= x + bw and y <= jy + 0.5 <= y + bh
    assert n_outside > 20 and n_visible > 300


def test_person_behind_a_large_distractor_is_occluded_not_outside():
    angles = np.zeros(B.NUM_DOF)
    plan = _posed_plan(3, angles, yaw=0.0)
    # A box in front of everyone over the upper body only: head and arms hidden, legs seen.
    plan.distractors = [Distractor("box", np.array([[0.0, 0.0], [256.0, 0.0], [256.0, 110.0], [0.0, 110.0]]),
                                   np.zeros(0), (90.0, 90.0, 90.0), layer=0.5)]
    frame = render_frame(plan)
    v = frame.people[0].joints[:, 2]
    y = frame.people[0].joints[:, 1]
    assert (v[y < 108] == 1).all() and (y < 108).sum() >= 8
    assert (v[[J["left_knee"], J["right_knee"], J["left_ankle"], J["right_ankle"]]] == 2).all()
    # Covering the whole image hides the person completely: inside joints v=1, area 0, not listed.
    plan.distractors[0] = Distractor("box", np.array([[-5.0, -5.0], [261.0, -5.0], [261.0, 261.0], [-5.0, 261.0]]),
                                     np.zeros(0), (90.0, 90.0, 90.0), layer=0.5)
    frame = render_frame(plan)
    person = frame.people[0]
    assert person.area == 0
    assert (person.joints[:, 2] == 1).all()
    # A distractor behind the person (layer -0.5) hides nothing.
    plan.distractors[0].layer = -0.5
    assert render_frame(plan).people[0].area > 1000


def test_side_and_back_views_self_occlude():
    stand = np.zeros(B.NUM_DOF)
    front = render_frame(_posed_plan(5, stand, yaw=0.0)).people[0].joints[:, 2]
    assert (front == 2).sum() >= 17  # facing the camera, arms down: nearly everything is seen
    # Yaw +90 deg: the person faces image-right, their left side is away from the camera.
    # Arms held forwards, so that the near arm does not hang over the near hip.
    reach = stand.copy()
    reach[[B.DOF_NAMES.index("left_shoulder_flex"), B.DOF_NAMES.index("right_shoulder_flex")]] = 1.4
    side = render_frame(_posed_plan(5, reach, yaw=math.pi / 2)).people[0].joints[:, 2]
    for far, near in (("left_shoulder", "right_shoulder"), ("left_hip", "right_hip"), ("left_eye", "right_eye"),
                      ("left_ear", "right_ear")):
        assert side[J[far]] == 1 and side[J[near]] == 2, (far, near)
    assert side[J["nose"]] == 2
    back = render_frame(_posed_plan(5, stand, yaw=math.pi)).people[0].joints[:, 2]
    assert back[J["nose"]] == 1 and back[J["left_eye"]] == 1 and back[J["right_eye"]] == 1
    assert back[J["left_ear"]] == 2 and back[J["right_ear"]] == 2


def test_self_occlusion_happens_in_random_single_person_images():
    occluded = 0
    for seed in range(30):
        frame = render_frame(sample_plan(seed, QUIET))
        assert len(frame.people) == 1 and not sample_plan(seed, QUIET).distractors
        occluded += int((frame.people[0].joints[:, 2] == 1).sum())
    assert occluded > 30


def test_other_people_and_distractors_only_remove_visibility():
    """A joint visible in a crowded scene is visible when its person is rendered alone."""
    cfg = SceneConfig(max_people=3, overlap_prob=0.9, occluder_prob=0.9)
    lost = 0
    for seed in range(12):
        plan = sample_plan(seed, cfg)
        crowded = render_frame(plan)
        for i, person in enumerate(plan.people):
            alone = sample_plan(seed, cfg)
            alone.people = [person]
            alone.figures = plan.figures.select([i])
            alone.distractors = []
            v_alone = render_frame(alone).people[0].joints[:, 2]
            v_crowd = crowded.people[i].joints[:, 2]
            assert ((v_crowd == 2) <= (v_alone == 2)).all()
            lost += int(((v_alone == 2) & (v_crowd == 1)).sum())
    assert lost > 0  # occlusion by others does happen


def test_left_and_right_follow_the_viewing_direction():
    stand = np.zeros(B.NUM_DOF)
    for yaw, left_is_right in ((0.0, True), (math.pi, False)):
        joints = render_frame(_posed_plan(2, stand, yaw=yaw)).people[0].joints
        for name in ("shoulder", "hip", "ankle"):
            assert (joints[J[f"left_{name}"], 0] > joints[J[f"right_{name}"], 0]) == left_is_right


def test_head_box_contains_the_head_points():
    for seed in range(10):
        frame = render_frame(sample_plan(seed, SceneConfig()))
        for p in frame.people:
            x1, y1, x2, y2 = p.head_box
            pad = 0.15 * (x2 - x1)  # the nose tip and ears stick out a little
            for name in ("left_eye", "right_eye", "head_top", "nose", "left_ear", "right_ear"):
                jx, jy, _ = p.joints[J[name]]
                assert x1 - pad <= jx <= x2 + pad and y1 - pad <= jy <= y2 + pad


# ----------------------------------------------------------------------------- body model


def test_kinematics_keep_limb_lengths_and_sampled_poses_respect_limits():
    rng = np.random.default_rng(0)
    shapes = [B.sample_shape(rng) for _ in range(16)]
    angles = np.array([B.sample_pose(rng) for _ in range(16)])
    assert ((angles >= B.DOF_LOW - 1e-12) & (angles <= B.DOF_HIGH + 1e-12)).all()
    pts = B.forward_kinematics(B.stack_shapes(shapes), angles).points
    for k, sh in enumerate(shapes):
        for a, b, length in (("left_shoulder", "left_elbow", sh.upper_arm), ("right_elbow", "right_wrist", sh.forearm),
                             ("left_hip", "left_knee", sh.thigh), ("right_knee", "right_ankle", sh.shin)):
            assert np.linalg.norm(pts[k, J[a]] - pts[k, J[b]]) == pytest.approx(length)
    # Children have relatively bigger heads than adults.
    kids = [s for s in (B.sample_shape(np.random.default_rng(i)) for i in range(200)) if s.stature < 0.85]
    adults = [s for s in (B.sample_shape(np.random.default_rng(i)) for i in range(200)) if s.stature > 0.9]
    ratio = lambda ss: np.mean([s.head_radii[1] / s.stature for s in ss])  # noqa: E731
    assert kids and adults and ratio(kids) > 1.2 * ratio(adults)


# ----------------------------------------------------------------------------- video


def test_video_moves_smoothly_with_stable_track_ids():
    step, jump = [], []
    for seed in range(4):
        frames = render_video(seed, 12)
        assert len(frames) == 12
        n_tracks = len(sample_plan(seed, SceneConfig(), num_frames=12).people)
        for prev, cur in zip(frames, frames[1:]):
            ids = [p.track_id for p in cur.people]
            assert len(set(ids)) == len(ids) and all(0 <= i < n_tracks for i in ids)
            before = {p.track_id: p for p in prev.people}
            for p in cur.people:
                if p.track_id in before:
                    step.append(np.abs(p.joints[:, :2] - before[p.track_id].joints[:, :2]).mean())
        a = render_image(100 + seed).people
        b = render_image(200 + seed).people
        if a and b:
            jump.append(np.abs(a[0].joints[:, :2] - b[0].joints[:, :2]).mean())
    assert step and jump
    assert np.median(step) < 0.1 * np.median(jump)
    assert np.max(step) < 25.0


def test_video_track_ids_follow_the_same_person():
    frames = render_video(11, 6)
    plan = sample_plan(11, SceneConfig(), num_frames=6)
    for t, frame in enumerate(frames):
        figs = plan.frame_figures(t)
        for p in frame.people:
            assert np.allclose(p.joints[:, :2], figs.points[p.track_id, :21])


def test_max_yaw_bounds_the_facing_direction():
    """People face the camera within +-max_yaw degrees; 180 allows every direction."""
    for max_yaw in (0.0, 30.0, 180.0):
        yaws = np.concatenate([p.yaw for s in range(40)
                               for p in sample_plan(s, SceneConfig(max_people=3, max_yaw=max_yaw)).people])
        assert np.all(np.abs(np.degrees(yaws)) <= max_yaw + 1e-9)
        if max_yaw == 180.0:
            assert np.abs(np.degrees(yaws)).max() > 120  # back views do occur
    with pytest.raises(PosenasError, match="max_yaw"):
        SceneConfig(max_yaw=200)
