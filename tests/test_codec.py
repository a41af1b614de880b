import math

import numpy as np
import pytest
import torch

from posenas.codecs import HeatmapCodec, back_project, flip_back, instance_scores
from posenas.data.transforms import AugmentConfig, TopDownTransform, affine_matrix, transform_points
from posenas.errors import PosenasError
from posenas.keypoints import COCO17

CODEC = HeatmapCodec(input_size=(256, 192), heatmap_size=(64, 48), sigma=2.0)


def test_round_trip_within_a_quarter_heatmap_pixel():
    rng = np.random.default_rng(0)
    k = 500
    hm_xy = np.stack([rng.uniform(2, 46, k), rng.uniform(2, 62, k)], axis=1)  # away from the border
    kp = np.concatenate([hm_xy * CODEC.stride_xy, np.full((k, 1), 2.0)], axis=1)
    heatmaps, weight = CODEC.encode(kp)
    assert heatmaps.shape == (k, 64, 48) and heatmaps.dtype == np.float32
    assert weight.dtype == np.float32 and (weight == 1).all()
    coords, maxvals = CODEC.decode(heatmaps[None])
    err = np.abs(coords[0] / CODEC.stride_xy - hm_xy)
    assert err.max() <= 0.25 + 1e-4
    assert maxvals.min() >= math.exp(-0.25 / 4) - 1e-6  # the nearest pixel is at most 0.71 px away
    # integer positions decode exactly
    coords, _ = CODEC.decode(CODEC.encode(np.array([[40.0, 80.0, 1.0]]))[0][None])
    np.testing.assert_allclose(coords[0, 0], [40.0, 80.0])


def test_gaussian_peak_and_sigma():
    codec = HeatmapCodec((64, 48), (16, 12), sigma=2.0)
    heatmaps, weight = codec.encode(np.array([[5 * 4.0, 7 * 4.0, 2.0]]))  # heatmap pixel (5, 7)
    h = heatmaps[0]
    assert h[7, 5] == 1.0 and h.max() == 1.0
    assert h[7, 7] == pytest.approx(math.exp(-0.5), rel=1e-6)  # one σ to the right
    assert h[9, 5] == pytest.approx(math.exp(-0.5), rel=1e-6)  # one σ down
    assert h[9, 7] == pytest.approx(math.exp(-1.0), rel=1e-6)
    # separable and truncated at 3σ from the centre, like MSRA's patch
    assert h[7, 11] == pytest.approx(math.exp(-36 / 8), rel=1e-6)
    assert h[14, 5] == 0.0 and h[0, 5] == 0.0 and h[13, 5] > 0 and h[1, 5] > 0
    # a sub-pixel position peaks at the nearest pixel with the exact Gaussian value
    heatmaps, _ = codec.encode(np.array([[5.3 * 4, 6.8 * 4, 2.0]]))
    assert np.unravel_index(heatmaps[0].argmax(), (16, 12)) == (7, 5)
    assert heatmaps[0, 7, 5] == pytest.approx(math.exp(-(0.3**2 + 0.2**2) / 8), rel=1e-5)


def test_target_weight():
    codec = HeatmapCodec((64, 48), (16, 12), sigma=2.0)
    kp = np.array([
        [20.0, 20.0, 2.0],    # inside, visible
        [20.0, 20.0, 1.0],    # inside, occluded: still a target
        [20.0, 20.0, 0.0],    # unlabelled
        [-40.0, 20.0, 2.0],   # far left (-10 heatmap px: the 3σ patch misses the map)
        [20.0, 500.0, 2.0],   # far below
        [-12.0, 20.0, 2.0],   # just outside (-3 px): its Gaussian tail still overlaps the map
        [np.nan, 5.0, 2.0],   # garbage
    ])
    heatmaps, weight = codec.encode(kp)
    np.testing.assert_array_equal(weight, [1, 1, 0, 0, 0, 1, 0])
    assert (heatmaps[[2, 3, 4, 6]] == 0).all()
    assert heatmaps[5].max() > 0
    with pytest.raises(PosenasError, match=r"\(K, 3\)"):
        codec.encode(np.zeros((3, 2)))


def test_decode_quarter_offset_and_vectorisation():
    codec = HeatmapCodec((64, 48), (16, 12))
    h = np.zeros((2, 3, 16, 12), np.float32)
    h[0, 0, 5, 4], h[0, 0, 5, 5], h[0, 0, 6, 4] = 1.0, 0.5, 0.2  # step right and down
    h[0, 1, 8, 8], h[0, 1, 8, 7], h[0, 1, 7, 8] = 0.9, 0.3, 0.1  # step left and up
    h[1, 2, 0, 11] = 0.7  # at the border: no neighbour on one side, no step
    h[1, 0] = -1.0  # nothing: maxval <= 0
    coords, maxvals = codec.decode(torch.from_numpy(h))  # torch input works too
    np.testing.assert_allclose(coords[0, 0], np.array([4.25, 5.25]) * 4)
    np.testing.assert_allclose(coords[0, 1], np.array([7.75, 7.75]) * 4)
    np.testing.assert_allclose(coords[1, 2], np.array([11.0, 0.0]) * 4)
    np.testing.assert_allclose(maxvals, [[1.0, 0.9, 0.0], [-1.0, 0.0, 0.7]])
    assert coords.shape == (2, 3, 2) and coords.dtype == np.float32


def _mirror(h, flip_index):
    """What a network sees / predicts on the mirrored input: mirror x, swap left/right channels."""
    return h[..., list(flip_index), :, ::-1].copy()


def test_flip_back_recovers_original_up_to_the_one_pixel_shift():
    fi = COCO17.flip_index
    h = np.zeros((2, 17, 16, 12), np.float32)
    h[0, 5, 6, 3] = 1.0  # left shoulder at (x=3, y=6)
    h[1, 9, 10, 7] = 0.8  # left wrist at (x=7, y=10)
    mirrored = _mirror(h, fi)
    assert mirrored[0, 6, 6, 12 - 1 - 3] == 1.0  # appears as a right shoulder, mirrored
    np.testing.assert_array_equal(flip_back(mirrored, fi, shift=False), h)  # exact inverse without shift
    shifted = flip_back(mirrored, fi)  # the classic flip test: one pixel to the right
    assert shifted[0, 5, 6, 4] == 1.0 and shifted[1, 9, 10, 8] == pytest.approx(0.8)
    np.testing.assert_array_equal(shifted[..., 1:], h[..., :-1])
    np.testing.assert_array_equal(shifted[..., 0], h[..., 0])  # the first column is kept as it was
    # same type out, same numbers for torch
    t = flip_back(torch.from_numpy(mirrored), fi)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_array_equal(t.numpy(), shifted)
    with pytest.raises(PosenasError, match="17"):
        flip_back(np.zeros((1, 16, 16, 12)), fi)


def test_flip_test_on_encoded_targets_has_the_documented_bias():
    """Encode the flipped crop's joints, flip back: the peak sits within 1 px (+0.25 px on average)."""
    codec = HeatmapCodec((64, 48), (16, 12))
    fi = np.array(COCO17.flip_index)
    rng = np.random.default_rng(1)
    kp = np.concatenate([rng.uniform(8, 40, (17, 1)), rng.uniform(8, 56, (17, 1)), np.full((17, 1), 2.0)], 1)
    flipped = kp[fi].copy()
    flipped[:, 0] = 48 - 1 - flipped[:, 0]  # the input array mirrored: x -> W - 1 - x
    h_flip, _ = codec.encode(flipped)
    back = flip_back(h_flip[None], fi)
    coords, _ = codec.decode(back)
    err = coords[0] / codec.stride_xy - kp[:, :2] / codec.stride_xy
    assert np.abs(err[:, 1]).max() <= 0.25 + 1e-4
    assert np.abs(err[:, 0] - 0.25).max() <= 0.5 + 1e-4  # exact would be +0.25 (0.75 px correction vs 1)


def test_back_project_inverts_the_crop():
    rng = np.random.default_rng(2)
    n, k = 6, 17
    centers = rng.uniform(0, 600, (n, 2))
    scales = rng.uniform(20, 400, (n, 2))
    rotations = rng.uniform(-90, 90, n)
    pts = rng.uniform(0, 600, (n, k, 2))
    crop = np.stack([transform_points(pts[i], affine_matrix(centers[i], scales[i], rotations[i], (256, 192)))
                     for i in range(n)])
    back = back_project(crop, centers, scales, rotations, (256, 192))
    assert np.abs(back - pts).max() <= 1e-3
    # scalar rotation 0 for validation crops
    crop0 = np.stack([transform_points(pts[i], affine_matrix(centers[i], scales[i], 0, (256, 192))) for i in range(n)])
    assert np.abs(back_project(crop0, centers, scales, 0, (256, 192)) - pts).max() <= 1e-3


@pytest.mark.parametrize("augment", [None, AugmentConfig(flip=False, half_body_prob=0.0, colour_jitter=0.0)])
def test_full_chain_image_to_crop_to_heatmap_and_back(augment):
    """Image keypoint → TopDownTransform → encode → decode → back_project ≈ the original."""
    codec = HeatmapCodec((128, 96), (32, 24))
    t = TopDownTransform(codec.input_size, COCO17, augment)
    rng = np.random.default_rng(3)
    image = np.zeros((480, 640, 3), np.uint8)
    for trial in range(20):
        box = np.array([rng.uniform(0, 300), rng.uniform(0, 200), rng.uniform(40, 300), rng.uniform(40, 250)])
        kp = np.concatenate([box[:2] + rng.uniform(0.1, 0.9, (17, 2)) * box[2:], np.full((17, 1), 2.0)], 1)
        s = t(image, kp, box, np.random.default_rng(trial))
        heatmaps, weight = codec.encode(s.keypoints)
        ok = weight > 0
        coords, _ = codec.decode(heatmaps[None])
        image_xy = back_project(coords, s.center[None], s.scale[None], s.rotation, codec.input_size)[0]
        # 0.25 heatmap px per axis, in image pixels (the crop-to-image factor is scale / input)
        per_axis = 0.25 * codec.stride_xy * s.scale / np.array([96.0, 128.0])
        err = np.linalg.norm(image_xy[ok] - kp[ok, :2], axis=1)
        assert ok.sum() >= 10
        assert err.max() <= np.linalg.norm(per_axis) + 1e-3


def test_instance_scores():
    maxvals = np.array([[0.9, 0.1, 0.5, 0.3], [0.1, 0.15, 0.05, 0.1]])
    scores = instance_scores(maxvals, np.array([0.8, 0.5]), threshold=0.2)
    # (0.9 + 0.5 + 0.3) / 3 × 0.8 ; none above 0.2 → mean of all (0.1) × 0.5
    np.testing.assert_allclose(scores, [(0.9 + 0.5 + 0.3) / 3 * 0.8, 0.1 * 0.5], rtol=1e-6)
    assert scores.shape == (2,)


def test_dict_round_trip_and_errors():
    d = CODEC.to_dict()
    assert d == {"type": "heatmap", "input_size": [256, 192], "heatmap_size": [64, 48], "sigma": 2.0}
    assert HeatmapCodec.from_dict(d) == CODEC
    import json

    assert HeatmapCodec.from_dict(json.loads(json.dumps(d))) == CODEC
    bad = [
        ({**d, "input_size": [256]}, "codec.input_size"),
        ({**d, "heatmap_size": "64x48"}, "codec.heatmap_size"),
        ({**d, "heatmap_size": [64, 0]}, "codec.heatmap_size"),
        ({**d, "heatmap_size": [512, 48]}, "codec.heatmap_size"),
        ({**d, "sigma": -1}, "codec.sigma"),
        ({**d, "sigma": True}, "codec.sigma"),
        ({**d, "type": "simcc"}, "codec.type"),
        ({**d, "stride": 4}, "unknown field.*stride"),
        ({"heatmap_size": [64, 48]}, "codec.input_size: missing"),
        ([256, 192], "codec: expected a mapping"),
    ]
    for value, message in bad:
        with pytest.raises(PosenasError, match=message):
            HeatmapCodec.from_dict(value)


@pytest.mark.parametrize("sigma", [1.0, 1.5, 2.0])
def test_dark_decode_finds_the_sub_pixel_peak_where_quarter_steps_cannot(sigma):
    rng = np.random.default_rng(0)
    dark = HeatmapCodec((96, 64), (24, 16), sigma, decode_with="dark")
    quarter = HeatmapCodec((96, 64), (24, 16), sigma)
    # joints at least 5 heatmap px from the border (DARK's 5x5 neighbourhood and the Gaussian's body on the map)
    kp = np.c_[rng.uniform(20, 44, 200), rng.uniform(20, 76, 200), np.ones(200)]
    hm = np.stack([dark.encode(k[None])[0][0] for k in kp])[None]  # (1, 200, 24, 16)
    err_dark = np.abs(dark.decode(hm)[0][0] - kp[:, :2]) / 4
    err_quarter = np.abs(quarter.decode(hm)[0][0] - kp[:, :2]) / 4
    assert err_quarter.mean() > 0.1  # the quarter step's quantisation
    assert err_dark.max() < 0.2 and err_dark.mean() < 0.02
    # near the border DARK falls back to the quarter step rather than a biased Newton step
    edge = np.array([[1.0 * 4, 40.0, 1.0], [62.0, 4.0, 1.0]])
    hm = np.stack([dark.encode(k[None])[0][0] for k in edge])[None]
    np.testing.assert_allclose(dark.decode(hm)[0], quarter.decode(hm)[0])


def test_dark_decode_survives_the_checkpoint_dict_and_rejects_unknown_decoders():
    codec = HeatmapCodec((96, 64), (24, 16), 1.5, decode_with="dark")
    assert HeatmapCodec.from_dict(codec.to_dict()) == codec
    assert "decode" not in HeatmapCodec((96, 64), (24, 16)).to_dict()  # older readers see the old fields
    with pytest.raises(PosenasError, match="codec.decode: unknown decoder 'taylor'; allowed: quarter, dark"):
        HeatmapCodec((96, 64), (24, 16), decode_with="taylor")


def test_config_decode_reaches_the_codec_and_bad_values_are_named():
    from posenas.config import load_config
    from posenas.engine.config import ExperimentConfig
    from posenas.engine.train import make_codec

    assert make_codec(load_config(ExperimentConfig, None, ["data.decode=dark"])).decode_with == "dark"
    assert make_codec(load_config(ExperimentConfig, None, [])).decode_with == "quarter"
    with pytest.raises(PosenasError, match="data.decode"):
        load_config(ExperimentConfig, None, ["data.decode=taylor"])
