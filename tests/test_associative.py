"""Associative-embedding codec, losses, flip / multi-resolution aggregation and grouping decoder."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from posenas.codecs.associative import (
    COCO_JOINT_ORDER,
    AssociativeEmbeddingCodec,
    _resample,
    ae_loss,
    aggregate,
    flip_maps,
    joint_order,
    masked_heatmap_loss,
)
from posenas.codecs.heatmap import HeatmapCodec
from posenas.errors import PosenasError
from posenas.keypoints import COCO17

K = 17
FLIP = COCO17.flip_index
BACKGROUND_TAG = 100.0  # far from every person's tag


def perfect_tags(people: np.ndarray, size: tuple[int, int], stride: float, radius: float = 3.0) -> np.ndarray:
    """Tag maps ``(K, h, w)``: person ``p``'s tag ``p`` in a disk (heatmap px) around each of its labelled
    joints, the nearest person's where disks overlap, ``BACKGROUND_TAG`` elsewhere."""
    h, w = size
    k = people.shape[1]
    tags = np.full((k, h, w), BACKGROUND_TAG)
    best = np.full((k, h, w), np.inf)
    yy, xx = np.mgrid[:h, :w]
    for p, person in enumerate(people):
        for j in range(k):
            if person[j, 2] > 0:
                x, y = person[j, :2] / stride
                d2 = (xx - x) ** 2 + (yy - y) ** 2
                sel = (d2 <= radius**2) & (d2 < best[j])
                tags[j][sel], best[j][sel] = p, d2[sel]
    return tags


def spread_people(rng, cells: int = 2, size: float = 256.0, margin: float = 16.0) -> np.ndarray:
    """``cells²`` people, person ``p``'s joints uniform in its own grid cell (so people never touch)."""
    cell = size / cells
    people = np.zeros((cells * cells, K, 3))
    for p in range(cells * cells):
        x0, y0 = (p % cells) * cell + margin, (p // cells) * cell + margin
        people[p, :, 0] = rng.uniform(x0, x0 + cell - 2 * margin, K)
        people[p, :, 1] = rng.uniform(y0, y0 + cell - 2 * margin, K)
        people[p, :, 2] = 2
    return people


def match_people(found: np.ndarray, truth: np.ndarray) -> list[int]:
    """For each decoded person, the true person nearest over its labelled joints."""
    out = []
    for person in found:
        err = [np.abs(person[t[:, 2] > 0, :2] - t[t[:, 2] > 0, :2]).mean() for t in truth]
        out.append(int(np.argmin(err)))
    return out


# ---------------------------------------------------------------------------------------------- losses


def _joints(n, m, k, entries):
    joints = torch.zeros(n, m, k, 2, dtype=torch.int64)
    for (i, p, j), idx in entries.items():
        joints[i, p, j] = torch.tensor([idx, 1])
    return joints


def test_ae_loss_hand_computed():
    torch.manual_seed(0)
    tags = torch.randn(2, 3, 4, 4) * 10  # noise everywhere a labelled joint does not read
    flat = tags.view(2, 3, 16)
    entries = {}

    def put(i, p, j, idx, value):
        flat[i, j, idx] = value
        entries[(i, p, j)] = idx

    # image 0: A (1, 2) -> mean 1.5, pull 0.25; B (3, 3, 3) -> mean 3; C (0) -> mean 0; row 3 absent
    put(0, 0, 0, 5, 1.0), put(0, 0, 1, 6, 2.0)
    put(0, 1, 0, 0, 3.0), put(0, 1, 1, 1, 3.0), put(0, 1, 2, 2, 3.0)
    put(0, 2, 2, 10, 0.0)
    # image 1: A (0.5, 1.5 at the same flat index of two joints' maps) -> mean 1, pull 0.25; D (2) -> mean 2;
    # rows 1 and 3 absent (row 3 has an index but flag 0)
    put(1, 0, 0, 3, 0.5), put(1, 0, 1, 3, 1.5)
    put(1, 2, 2, 15, 2.0)
    joints = _joints(2, 4, 3, entries)
    joints[1, 3, 0] = torch.tensor([7, 0])
    pull, push = ae_loss(tags, joints)
    assert pull.shape == push.shape == (2,)
    # pull: (0.25 + 0 + 0) / 3 people; (0.25 + 0) / 2
    np.testing.assert_allclose(pull.numpy(), [0.25 / 3, 0.25 / 2], rtol=1e-6)
    # push: 0.5 * mean over the 6 ordered pairs of exp(-Δ²): Δ = 1.5 (AB, AC, twice each), 3 (BC, twice)
    e0 = 0.5 * (4 * math.exp(-2.25) + 2 * math.exp(-9.0)) / 6
    e1 = 0.5 * (2 * math.exp(-1.0)) / 2
    np.testing.assert_allclose(push.numpy(), [e0, e1], rtol=1e-6)
    assert e0 == pytest.approx(0.0351536, abs=1e-6) and e1 == pytest.approx(0.1839397, abs=1e-6)
    # push_sigma: exp(-Δ² / (2σ²)); σ = 1/√2 is the default (HigherHRNet's exp(-Δ²))
    _, push1 = ae_loss(tags, joints, push_sigma=1.0)
    np.testing.assert_allclose(push1[1].item(), 0.5 * math.exp(-0.5), rtol=1e-6)
    _, push_default = ae_loss(tags, joints, push_sigma=1 / math.sqrt(2))
    np.testing.assert_allclose(push_default.numpy(), push.numpy(), rtol=1e-6)


def _reference_ae_loss(tags, joints):
    """A per-person loop in the style of HigherHRNet's singleTagLoss (per-joint maps)."""
    pulls, pushes = [], []
    for i in range(tags.shape[0]):
        means, pull = [], 0.0
        for person in joints[i]:
            values = [tags[i, j].reshape(-1)[int(idx)] for j, (idx, flag) in enumerate(person) if flag > 0]
            if not values:
                continue
            values = torch.stack(values)
            means.append(values.mean())
            pull = pull + ((values - means[-1]) ** 2).mean()
        p = len(means)
        if p == 0:
            pulls.append(torch.tensor(0.0)), pushes.append(torch.tensor(0.0))
            continue
        pulls.append(pull / p)
        if p == 1:
            pushes.append(torch.tensor(0.0))
            continue
        m = torch.stack(means)
        push = torch.exp(-((m[:, None] - m[None, :]) ** 2)).sum() - p
        pushes.append(push / ((p - 1) * p) * 0.5)
    return torch.stack(pulls), torch.stack(pushes)


def test_ae_loss_matches_a_per_person_loop_and_is_differentiable():
    rng = np.random.default_rng(3)
    n, m, k, h, w = 4, 6, 5, 8, 7
    tags = torch.tensor(rng.normal(size=(n, k, h, w)), dtype=torch.float64, requires_grad=True)
    joints = np.zeros((n, m, k, 2), np.int64)
    joints[..., 0] = rng.integers(0, h * w, (n, m, k))
    joints[..., 1] = rng.random((n, m, k)) < 0.5
    joints[0] = 0  # no people
    joints[1, 1:] = 0  # one person
    joints = torch.from_numpy(joints)
    pull, push = ae_loss(tags, joints)
    ref_pull, ref_push = _reference_ae_loss(tags.detach(), joints)
    torch.testing.assert_close(pull.detach(), ref_pull.to(pull.dtype))
    torch.testing.assert_close(push.detach(), ref_push.to(push.dtype))
    assert pull[0] == 0 and push[0] == 0 and push[1] == 0 and pull[1] > 0
    (pull.sum() + push.sum()).backward()
    grad = tags.grad.reshape(n, k, h * w)
    read = torch.zeros_like(grad, dtype=torch.bool)
    for i, p, j in zip(*torch.nonzero(joints[..., 1] > 0, as_tuple=True)):
        read[i, j, joints[i, p, j, 0]] = True
    assert (grad[~read] == 0).all() and grad[read].abs().sum() > 0


def test_ae_loss_bad_inputs():
    tags = torch.zeros(1, 2, 3, 3)
    with pytest.raises(PosenasError, match="joints of shape"):
        ae_loss(tags, torch.zeros(1, 4, 3, 2, dtype=torch.int64))
    with pytest.raises(PosenasError, match="outside the 3x3 tag map"):
        ae_loss(tags, torch.tensor([[[[9, 1], [0, 0]]]]))
    with pytest.raises(PosenasError, match="push_sigma"):
        ae_loss(tags, torch.zeros(1, 1, 2, 2, dtype=torch.int64), push_sigma=0)


def test_masked_heatmap_loss():
    torch.manual_seed(1)
    pred, target = torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 5)
    mask = torch.ones(2, 4, 5)
    mask[0, 1:3, 2:] = 0  # a crowd region in image 0
    loss = masked_heatmap_loss(pred, target, mask)
    err = (pred - target) ** 2
    hand = err.sum() - err[0, :, 1:3, 2:].sum()  # exactly that region's error removed
    torch.testing.assert_close(loss, hand / err.numel())
    torch.testing.assert_close(masked_heatmap_loss(pred, target, torch.ones(2, 4, 5)), F.mse_loss(pred, target))
    with pytest.raises(PosenasError, match="mask of shape"):
        masked_heatmap_loss(pred, target, torch.ones(2, 5, 4))


def test_flip_maps_is_an_involution_that_swaps_left_and_right():
    rng = np.random.default_rng(0)
    maps = rng.random((2, K, 6, 5)).astype(np.float32)
    for x in (maps, torch.from_numpy(maps)):
        once = flip_maps(x, FLIP)
        assert type(once) is type(x) and tuple(once.shape) == maps.shape
        np.testing.assert_array_equal(np.asarray(flip_maps(once, FLIP)), maps)
        once = np.asarray(once)
        left, right = COCO17.index("left_eye"), COCO17.index("right_eye")
        np.testing.assert_array_equal(once[:, left], maps[:, right, :, ::-1])  # no pixel shift
        np.testing.assert_array_equal(once[:, 0], maps[:, 0, :, ::-1])  # the nose stays
    tags5 = rng.random((K, 4, 4))
    np.testing.assert_array_equal(flip_maps(flip_maps(tags5, FLIP), FLIP), tags5)
    with pytest.raises(PosenasError, match="flip_maps"):
        flip_maps(maps[:, :5], FLIP)


# ---------------------------------------------------------------------------------------------- encode


def test_encode_heatmaps_and_tag_targets():
    codec = AssociativeEmbeddingCodec((64, 48), ((16, 12), (32, 24)), sigma=2.0, max_people=2)
    people = np.zeros((3, 2, 3))
    people[0] = [[20.0, 28.0, 2], [45.9, 4.0, 1]]  # joint 1: x 11.475 on the 12-wide map -> column 11
    people[1] = [[28.0, 28.0, 2], [46.5, 4.0, 2]]  # joint 1: x 11.625 -> column 12, off the tag map
    people[2] = [[-40.0, 8.0, 2], [8.0, 8.0, 0]]  # beyond max_people: heatmaps only
    heatmaps, joints = codec.encode(people)
    assert [h.shape for h in heatmaps] == [(2, 16, 12), (2, 32, 24)] and heatmaps[0].dtype == np.float32
    h0, h1 = heatmaps
    assert h0[0, 7, 5] == 1.0 and h1[0, 14, 10] == 1.0  # (20, 28) / stride 4 and / stride 2: σ the same in px
    assert h0[0, 7, 7] == 1.0  # person 1's joint 0 at (7, 7): the maximum over people, not the sum
    assert h0[0, 7, 6] == pytest.approx(math.exp(-1 / 8), rel=1e-6)
    assert h1[0, 14, 12] == pytest.approx(math.exp(-4 / 8), rel=1e-6)
    without_2, _ = codec.encode(people[:2])  # person 2: x = -10 map px (its 3σ patch misses), joint 1 unlabelled
    assert all((a == b).all() for a, b in zip(heatmaps, without_2))
    beyond = people.copy()
    beyond[2, 0, 0] = 8.0  # on the map: beyond max_people, it still has its heatmap
    assert codec.encode(beyond)[0][0][0, 2, 2] == 1.0
    assert joints.shape == (2, 2, 2) and joints.dtype == np.int64
    np.testing.assert_array_equal(joints[0], [[7 * 12 + 5, 1], [1 * 12 + 11, 1]])
    np.testing.assert_array_equal(joints[1], [[7 * 12 + 7, 1], [0, 0]])
    # a fourth person, a person without labelled joints and absent rows stay 0
    _, joints = AssociativeEmbeddingCodec((64, 48), ((16, 12),), max_people=4).encode(people)
    np.testing.assert_array_equal(joints[2:], 0)
    # rounding at the left edge: x = -1.9 input px is -0.475 map px (column 0), x = -3 is -0.75 (column -1: off)
    _, edge = codec.encode(np.array([[[-1.9, 0.0, 2], [-3.0, 0.0, 2]]]))
    np.testing.assert_array_equal(edge[0], [[0, 1], [0, 0]])
    # truncation at 3σ from the *nearest* pixel: the joint at x = 5.6 map px reaches column 12 (6 + 6), not 13
    (wide,), _ = AssociativeEmbeddingCodec((64, 64), ((16, 16),)).encode(np.array([[[5.6 * 4, 20.0, 2]]]))
    assert wide[0, 5, 12] == pytest.approx(math.exp(-(6.4**2) / 8), rel=1e-5) and wide[0, 5, 13] == 0
    assert wide[0, 5, 0] > 0
    heatmaps, joints = codec.encode(np.zeros((0, 2, 3)))
    assert all((h == 0).all() for h in heatmaps) and (joints == 0).all()
    with pytest.raises(PosenasError, match="shape"):
        codec.encode(np.zeros((2, 3)))


def test_scale_aware_sigma():
    codec = AssociativeEmbeddingCodec((256, 256), ((64, 64),), sigma=2.0, scale_aware_sigma=True)
    people = np.array([[[80.0, 80.0, 2]], [[160.0, 160.0, 2]]])
    # σ_p = max(min(σ, 1), σ · sqrt(area) / (min(H, W) / 4)): sqrt(area) 128 -> 4 px; area 0 -> floor 1 px
    (heat,), _ = codec.encode(people, np.array([128.0**2, 0.0]))
    assert heat[0, 20, 24] == pytest.approx(math.exp(-0.5), rel=1e-6)  # 4 px from (20, 20): one σ_0
    assert heat[0, 40, 41] == pytest.approx(math.exp(-0.5), rel=1e-6)  # 1 px from (40, 40): one σ_1
    np.testing.assert_allclose(codec.person_sigmas(2, [64.0**2, 32.0**2]), [2.0, 1.0])
    with pytest.raises(PosenasError, match="needs the people's areas"):
        codec.encode(people)
    # off by default: the areas are not read
    (plain,), _ = AssociativeEmbeddingCodec((256, 256), ((64, 64),)).encode(people, np.array([1e6, 0.0]))
    assert plain[0, 20, 22] == pytest.approx(math.exp(-0.5), rel=1e-6)


# ---------------------------------------------------------------------------------------------- decode


@pytest.mark.parametrize("seed,tag_dims,use_value", [(0, 1, True), (1, 2, True), (2, 1, False)])
def test_round_trip_with_perfect_tags(seed, tag_dims, use_value):
    codec = AssociativeEmbeddingCodec((256, 256), ((64, 64),), use_detection_value=use_value)
    rng = np.random.default_rng(seed)
    people = spread_people(rng)
    people[0, 3, 2] = 0  # unlabelled
    people[2, 10, 2] = 1  # occluded: still labelled
    (heat,), _ = codec.encode(people)
    tags = perfect_tags(people, (64, 64), 4.0)
    if tag_dims == 2:  # as the flip test gives: (K, h, w, 2)
        tags = np.stack([tags, tags], axis=-1)
    found, scores = codec.decode(heat, torch.from_numpy(tags) if seed == 1 else tags)
    assert found.shape == (4, K, 3) and scores.shape == (4,) and found.dtype == np.float32
    assert (np.diff(scores) <= 0).all() and scores.min() > 0.9
    owner = match_people(found, people)
    assert sorted(owner) == [0, 1, 2, 3]
    for person, p in zip(found, owner):
        lab = people[p, :, 2] > 0
        assert np.abs(person[lab, :2] - people[p, lab, :2]).max() <= 0.3 * 4  # 0.3 heatmap px × stride
        assert (person[lab, 2] > 0.9).all()
    np.testing.assert_allclose(scores, [found[i, :, 2].mean() if owner[i] != 0 else
                                        np.delete(found[i, :, 2], 3).sum() / K for i in range(4)], rtol=1e-6)


def test_unfound_joints_and_a_stray_tag():
    codec = AssociativeEmbeddingCodec((256, 256), ((64, 64),), refine=False)
    people = spread_people(np.random.default_rng(5), cells=1, margin=32)
    people[0, 3, 2] = 0
    (heat,), _ = codec.encode(people)
    tags = perfect_tags(people, (64, 64), 4.0)
    found, scores = codec.decode(heat, tags)
    assert len(found) == 1
    np.testing.assert_array_equal(found[0, 3], [0, 0, 0])  # unfound: score 0 (and x, y 0)
    # a joint whose tag is far from the person's starts a person of its own (a low score: 1 of K joints)
    stray = tags.copy()
    stray[9][stray[9] == 0] = 5.0
    found, scores = codec.decode(heat, stray)
    assert len(found) == 2 and scores[0] > scores[1]
    assert found[0, 9, 2] == 0 and (found[1, :, 2] > 0).sum() == 1 and found[1, 9, 2] > 0.9
    # refine puts the stray joint back into the person: the heat there minus round(|5 - 0|) still wins
    found, _ = dataclasses.replace(codec, refine=True).decode(heat, stray)
    assert np.abs(found[0, 9, :2] - people[0, 9, :2]).max() <= 1.2 and found[0, 9, 2] > 0.9
    # nothing above the detection threshold: no people
    found, scores = codec.decode(np.zeros((K, 64, 64)), tags)
    assert found.shape == (0, K, 3) and scores.shape == (0,)
    with pytest.raises(PosenasError, match="tags of shape"):
        codec.decode(heat, tags[:, :32])


def test_max_people_is_respected():
    rng = np.random.default_rng(7)
    people = spread_people(rng, cells=3, margin=10)[:5]
    codec = AssociativeEmbeddingCodec((256, 256), ((64, 64),), max_people=3)
    (heat,), joints = codec.encode(people)
    assert joints.shape == (3, K, 2)
    found, scores = codec.decode(heat, perfect_tags(people, (64, 64), 4.0))
    assert len(found) == 3 and len(scores) == 3
    assert len(set(match_people(found, people))) == 3


def test_joint_order():
    assert joint_order(17) == COCO_JOINT_ORDER
    names = [COCO17.joints[j] for j in COCO_JOINT_ORDER]
    assert names[:9] == ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
                         "right_shoulder", "left_hip", "right_hip"]
    assert joint_order(16) == tuple(range(16))


# ---------------------------------------------------------------------------------------------- test time


def _outputs(codec, people):
    """Perfect HigherHRNet-style outputs for one image: (1, 2K, 64, 64) heat + tags, (1, K, 128, 128) heat."""
    heat, _ = codec.encode(people)
    first = np.concatenate([heat[0], perfect_tags(people, codec.heatmap_sizes[0], 4.0)])
    return [torch.tensor(first[None], dtype=torch.float32), torch.tensor(heat[1][None])]


def test_resample_follows_our_geometry():
    rng = np.random.default_rng(2)
    xy = rng.uniform(10, 245, (200, 2))
    kp = np.concatenate([xy, np.full((200, 1), 2.0)], axis=1)
    low, _ = HeatmapCodec((256, 256), (64, 64)).encode(kp)
    high = HeatmapCodec((256, 256), (128, 128))
    ours, _ = high.decode(_resample(torch.from_numpy(low)[None], (128, 128)))
    theirs, _ = high.decode(F.interpolate(torch.from_numpy(low)[None], size=(128, 128), mode="bilinear",
                                          align_corners=False))
    assert np.abs((ours[0] - xy).mean(axis=0)).max() < 0.1  # input px: unbiased
    assert ((theirs[0] - xy).mean(axis=0) > 0.6).all()  # align_corners=False: about +1 input px (0.5 map px)
    same = torch.rand(2, 3, 5, 4)
    assert _resample(same, (5, 4)) is same


def test_aggregate_over_resolutions_and_flip():
    codec = AssociativeEmbeddingCodec((256, 256), ((64, 64), (128, 128)))
    rng = np.random.default_rng(4)
    people = spread_people(rng)[:3]
    mirrored = people.copy()
    mirrored[..., 0] = 255 - mirrored[..., 0]  # the mirrored image: x -> W - 1 - x, left <-> right
    mirrored = mirrored[:, list(FLIP)]
    outs = [torch.cat([a, a]) for a in _outputs(codec, people)]  # a batch of 2
    flipped = [torch.cat([a, a]) for a in _outputs(codec, mirrored)]

    heatmaps, tags = aggregate(outs, K, None, FLIP)
    assert heatmaps.shape == (2, K, 128, 128) and tags.shape == (2, K, 128, 128, 1)
    torch.testing.assert_close(heatmaps, (_resample(outs[0][:, :K], (128, 128)) + outs[1]) / 2)

    errors = {}
    for name, size in (("exact", (256, 256)), ("mirror only", None)):
        heatmaps, tags = aggregate(outs, K, flipped, FLIP, input_size=size)
        assert heatmaps.shape == (2, K, 128, 128) and tags.shape == (2, K, 128, 128, 2)
        found, scores = codec.decode(heatmaps[1], tags[1])
        assert len(found) == 3 and sorted(match_people(found, people)) == [0, 1, 2]
        errors[name] = np.stack([f[:, :2] - people[p, :, :2] for f, p in zip(found, match_people(found, people))])
    assert np.abs(errors["exact"]).max() <= 0.4 * 2  # 0.4 px of the 128 map
    assert np.abs(errors["exact"][..., 0].mean()) < 0.15
    # HigherHRNet's plain mirror leaves each flipped map (s - 1) input px to the left under our geometry
    assert errors["mirror only"][..., 0].mean() < -0.5
    with pytest.raises(PosenasError, match="2K"):
        aggregate([outs[1]], K, None, FLIP)
    with pytest.raises(PosenasError, match="do not match"):
        aggregate(outs, K, flipped[:1], FLIP)


# ---------------------------------------------------------------------------------------------- COCO AP


def test_perfect_targets_score_coco_ap_one(tmp_path):
    from posenas.data.layout import load_dataset
    from posenas.evaluation import evaluate_records
    from posenas.synthetic.generate import default_spec, synthesize

    synthesize(tmp_path / "ds", default_spec("coco", train=0, val=6, seed=0), workers=1, progress=False)
    dataset = load_dataset(tmp_path / "ds", "val")
    codec = AssociativeEmbeddingCodec((256, 256), ((64, 64),))

    def predict(ds):
        results = []
        for img in ds.images:
            assert (img.width, img.height) == (256, 256)  # input = image: input pixels are image pixels
            people = [p for p in img.people if not p.iscrowd and p.num_labelled > 0]
            kp = np.stack([p.keypoints for p in people]) if people else np.zeros((0, K, 3))
            (heat,), _ = codec.encode(kp)
            found, scores = codec.decode(heat, perfect_tags(kp, (64, 64), 4.0))
            results += [{"image_id": img.id, "category_id": 1, "keypoints": f.reshape(-1).tolist(),
                         "score": float(s)} for f, s in zip(found, scores)]
        return results

    _, stats, _ = evaluate_records(dataset, predict(dataset), "coco")
    # Every person found and grouped right (AP50 = AP75 = 1). Overall AP is 0.954: the quarter-pixel decode at
    # stride 4 (up to 1 input px off) caps OKS at 0.78 for the 229 px² person (about 15 px) and 0.93 for the
    # 731 px² one, below the top OKS thresholds; every medium person scores OKS >= 0.96 (APM = 1).
    assert stats["AP50"] == 1.0 and stats["AP75"] == 1.0 and stats["AR50"] == 1.0
    assert stats["APM"] >= 0.99 and stats["AP"] >= 0.95
    # Without the small people (COCO's area < 32²), AP is 1.
    big = dataclasses.replace(dataset, images=[dataclasses.replace(img, people=[p for p in img.people
                                                                                if p.area >= 32**2])
                                               for img in dataset.images])
    assert sum(len(img.people) for img in big.images) < sum(len(img.people) for img in dataset.images)
    _, stats, _ = evaluate_records(big, predict(big), "coco")
    assert stats["AP"] >= 0.99


# ---------------------------------------------------------------------------------------------- config


def test_to_dict_from_dict():
    codec = AssociativeEmbeddingCodec((512, 384), ((128, 96), (256, 192)), sigma=2.0, scale_aware_sigma=True,
                                      max_people=20, detection_threshold=0.2, tag_threshold=1.5, nms_kernel=3,
                                      use_detection_value=False, adjust=False, refine=False)
    d = codec.to_dict()
    assert d["type"] == "associative_embedding" and d["heatmap_sizes"] == [[128, 96], [256, 192]]
    assert set(d) == {"type"} | {f.name for f in dataclasses.fields(AssociativeEmbeddingCodec)}
    assert AssociativeEmbeddingCodec.from_dict(json.loads(json.dumps(d))) == codec
    minimal = AssociativeEmbeddingCodec.from_dict({"input_size": [256, 256], "heatmap_sizes": [[64, 64]]})
    assert minimal == AssociativeEmbeddingCodec((256, 256), ((64, 64),))
    assert minimal.max_people == 30 and minimal.nms_kernel == 5 and minimal.refine


@pytest.mark.parametrize("change,field", [
    ({"sigma": -1.0}, "codec.sigma"),
    ({"sigma": "2"}, "codec.sigma"),
    ({"max_people": "30"}, "codec.max_people"),
    ({"max_people": 0}, "codec.max_people"),
    ({"nms_kernel": 4}, "codec.nms_kernel"),
    ({"adjust": "yes"}, "codec.adjust"),
    ({"refine": 1}, "codec.refine"),
    ({"tag_threshold": 0}, "codec.tag_threshold"),
    ({"detection_threshold": float("nan")}, "codec.detection_threshold"),
    ({"heatmap_sizes": [[64, 64.5]]}, r"codec.heatmap_sizes\[0\]"),
    ({"heatmap_sizes": []}, "codec.heatmap_sizes"),
    ({"heatmap_sizes": [[64, 64], [512, 512]]}, r"codec.heatmap_sizes\[1\]: .* larger than input_size"),
    ({"input_size": [256]}, "codec.input_size"),
    ({"type": "heatmap"}, "codec.type"),
    ({"flip": True}, "unknown field"),
])
def test_bad_values_name_the_field(change, field):
    d = AssociativeEmbeddingCodec((256, 256), ((64, 64),)).to_dict()
    d.update(change)
    with pytest.raises(PosenasError, match=field) as info:
        AssociativeEmbeddingCodec.from_dict(d)
    assert "\n" not in str(info.value)
    missing = {"heatmap_sizes": [[64, 64]]}
    with pytest.raises(PosenasError, match="codec.input_size: missing"):
        AssociativeEmbeddingCodec.from_dict(missing)
    with pytest.raises(PosenasError, match="codec.sigma"):
        AssociativeEmbeddingCodec((256, 256), ((64, 64),), sigma=-2.0)
