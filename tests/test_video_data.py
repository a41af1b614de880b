"""Video clips for training (ClipDataset) and video files for inference (FrameSource, VideoWriter)."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from posenas.codecs import HeatmapCodec
from posenas.data.images import encode_jpeg
from posenas.data.layout import load_dataset
from posenas.data.posetrack import frame_image_id
from posenas.data.transforms import AugmentConfig, affine_matrix, box_to_center_scale
from posenas.data.video import ClipDataset, VideoWriter, find_clips, open_frames
from posenas.errors import PosenasError
from posenas.jsonio import write_json
from posenas.keypoints import POSETRACK18
from posenas.synthetic.generate import default_spec, ensure_synthetic

from conftest import make_dataset

CODEC = HeatmapCodec(input_size=(64, 48), heatmap_size=(16, 12))
BOX = [8.0, 6.0, 30.0, 36.0]


def _keypoints(labelled: bool, shift: float = 0.0) -> list[float]:
    kp = np.zeros((17, 3))
    if labelled:
        kp[:, 0] = np.linspace(10, 36, 17) + shift
        kp[:, 1] = np.linspace(8, 40, 17)
        kp[:, 2] = 2
    return kp.reshape(-1).tolist()


def _write_video(root: Path, number: int, frames: list[tuple[bool, list[tuple]]], same_image: bool = False) -> None:
    """One PoseTrack18 video file + its JPEGs. ``frames``: (is_labeled, [(track_id, labelled, iscrowd), ...])."""
    rng = np.random.default_rng(number)
    vid = f"{number:06d}"
    fixed = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    images, anns = [], []
    for f, (is_labeled, people) in enumerate(frames):
        image_id = frame_image_id(number, f)
        file_name = f"images/val/{vid}/{f:06d}.jpg"
        images.append({"id": image_id, "file_name": file_name, "width": 64, "height": 48, "vid_id": vid,
                       "frame_id": image_id, "nframes": len(frames), "is_labeled": is_labeled})
        path = root / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_jpeg(fixed if same_image else rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)))
        for k, (track, labelled, crowd) in enumerate(people):
            box = BOX if same_image else [BOX[0] + f, BOX[1], BOX[2] + 2 * f, BOX[3]]
            ann = {"id": image_id * 100 + k, "image_id": image_id, "category_id": 1, "iscrowd": crowd,
                   "keypoints": _keypoints(labelled, 0.0 if same_image else f), "bbox": box}
            if track is not None:
                ann["track_id"] = track
            anns.append(ann)
    category = {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(POSETRACK18.joints),
                "skeleton": [[a + 1, b + 1] for a, b in POSETRACK18.skeleton]}
    write_json(root / "annotations" / "val" / f"{vid}.json",
               {"images": images, "annotations": anns, "categories": [category]})


@pytest.fixture
def hand(tmp_path):
    """Video 1: 6 frames, frame 2 unlabelled; track 1 everywhere, track 2 missing in frame 3, a crowd track 9.
    Video 2: 3 frames; track 5 everywhere, track 6 without joints in frame 1, a person without a track."""
    root = tmp_path / "hand"
    full = [(1, True, False), (2, True, False), (9, True, True)]
    _write_video(root, 1, [(True, full), (True, full), (False, []), (True, full[:1] + full[2:]), (True, full),
                           (True, full)])
    _write_video(root, 2, [(True, [(5, True, False), (6, True, False), (None, True, False)]),
                           (True, [(5, True, False), (6, False, False), (None, True, False)]),
                           (True, [(5, True, False), (6, True, False)])])
    return load_dataset(root)


def _keys(clips):
    return [(c.video_id, c.track_id, c.start) for c in clips]


def test_clips_follow_tracks_over_labelled_frames(hand):
    a, b = "000001", "000002"
    assert _keys(find_clips(hand, 2)) == [(a, 1, 0), (a, 1, 1), (a, 1, 2), (a, 1, 3), (a, 2, 0), (a, 2, 3),
                                          (b, 5, 0), (b, 5, 1)]
    assert _keys(find_clips(hand, 3)) == [(a, 1, 0), (a, 1, 1), (a, 1, 2), (b, 5, 0)]
    assert _keys(find_clips(hand, 2, stride=2)) == [(a, 1, 0), (a, 1, 2), (a, 2, 0), (b, 5, 0)]
    # with min_labelled=0 the joint-less track-6 person counts as present
    assert _keys(find_clips(hand, 2, min_labelled=0))[-2:] == [(b, 6, 0), (b, 6, 1)]
    # consecutive labelled frames: the unlabelled frame 2 is skipped, not a gap
    clip = find_clips(hand, 2)[1]
    assert [img.id for img in clip.frames] == [frame_image_id(1, 1), frame_image_id(1, 3)]
    assert [p.id for p in clip.people] == [frame_image_id(1, 1) * 100, frame_image_id(1, 3) * 100]
    with pytest.raises(PosenasError, match=r"no clip of 6 consecutive labelled frames.*spans 5 labelled frame"):
        find_clips(hand, 6)


def test_clip_item_contents_without_augmentation(hand):
    ds = ClipDataset(hand, CODEC, None, frames=3)
    assert len(ds) == 4
    item = ds[1]  # video 1, track 1, labelled frames 1, 2, 3 = files 1, 3, 4
    assert item["image"].shape == (3, 3, 64, 48) and item["image"].dtype == torch.float32
    assert item["target"].shape == (3, 17, 16, 12) and item["target_weight"].shape == (3, 17)
    assert item["matrix"].shape == (3, 2, 3) and item["matrix"].dtype == torch.float32
    assert item["image_id"].dtype == torch.int64
    assert item["image_id"].tolist() == [frame_image_id(1, f) for f in (1, 3, 4)]
    assert item["track_id"] == 1 and item["video_id"] == "000001"
    for k, f in enumerate((1, 3, 4)):  # each frame cropped around its own box (x + f, w + 2f)
        center, scale = box_to_center_scale([BOX[0] + f, BOX[1], BOX[2] + 2 * f, BOX[3]], 48 / 64)
        np.testing.assert_allclose(item["matrix"][k].numpy(), affine_matrix(center, scale, 0.0, (64, 48)),
                                   rtol=1e-5, atol=1e-4)
    assert not torch.equal(item["matrix"][0], item["matrix"][2])
    assert (item["target_weight"].sum(dim=1) > 0).all()
    with pytest.raises(IndexError):
        ds[4]


def test_one_augmentation_per_clip(tmp_path):
    root = tmp_path / "same"
    person = [(0, True, False)]
    _write_video(root, 3, [(True, person)] * 4, same_image=True)  # identical frames and boxes
    ds = ClipDataset(load_dataset(root), CODEC, AugmentConfig(), frames=3, seed=1)
    plain = ClipDataset(load_dataset(root), CODEC, None, frames=3)[0]["matrix"][0]
    assert len(ds) == 2
    seen = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            for f in (1, 2):  # same draws: same crop, colours and matrix in every frame
                assert torch.equal(item["image"][f], item["image"][0])
                assert torch.equal(item["matrix"][f], item["matrix"][0])
                assert torch.equal(item["target"][f], item["target"][0])
            seen.append(item["matrix"][0])
    assert all(not torch.allclose(m, plain) for m in seen)  # augmentation is on
    assert not torch.equal(seen[0], seen[1])  # two clips of one epoch differ
    dets = [float(torch.linalg.det(m[:, :2])) for m in seen]
    assert min(dets) < 0 < max(dets)  # some clips flipped, some not


def test_shared_draws_on_moving_synthetic_people(tmp_path):
    spec = default_spec("posetrack", train=2, val=1, frames=6, width=96, height=72, max_people=2)
    ensure_synthetic(tmp_path / "pt", spec, progress=False)
    data = load_dataset(tmp_path / "pt", split="train")
    # expected clips counted independently: per video, per track, windows of 3 labelled frames with the track
    expected = 0
    for frames in data.videos().values():
        frames = [img for img in frames if img.is_labeled]
        tracks = {p.track_id for img in frames for p in img.people}
        for t in tracks:
            has = [any(p.track_id == t and p.num_labelled >= 1 and not p.iscrowd for p in img.people) for img in frames]
            expected += sum(all(has[s:s + 3]) for s in range(len(frames) - 2))
    aug = AugmentConfig(half_body_prob=0.0)
    ds = ClipDataset(data, CODEC, aug, frames=3, seed=5)
    assert len(ds) == expected > 0
    for i in range(len(ds)):
        clip, item = ds.clips[i], ds[i]
        m = item["matrix"].double()
        lin = m[:, :, :2] / torch.linalg.det(m[:, :, :2]).abs().sqrt()[:, None, None]
        torch.testing.assert_close(lin, lin[:1].expand_as(lin), atol=1e-5, rtol=0)  # same rotation and flip
        # same scale factor: each frame's zoom against its own unaugmented crop scale
        zoom = [48.0 / (box_to_center_scale(p.box(), 48 / 64)[1][0] * abs(float(torch.linalg.det(m[k, :, :2]))) ** 0.5)
                for k, p in enumerate(clip.people)]
        np.testing.assert_allclose(zoom, zoom[0], rtol=1e-4)
        if i > 0:
            assert not torch.equal(item["matrix"], ds[i - 1]["matrix"])
    # default collate: (B, F, ...)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, 3, 64, 48) and batch["target"].shape == (2, 3, 17, 16, 12)
    assert batch["target_weight"].shape == (2, 3, 17) and batch["matrix"].shape == (2, 3, 2, 3)
    assert batch["image_id"].shape == (2, 3) and batch["track_id"].shape == (2,)
    assert batch["video_id"] == [ds.clips[0].video_id, ds.clips[1].video_id]


def test_clip_items_are_a_function_of_seed_epoch_index(hand):
    a = ClipDataset(hand, CODEC, AugmentConfig(), frames=2, seed=3)
    b = ClipDataset(hand, CODEC, AugmentConfig(), frames=2, seed=3)
    first = [a[i] for i in range(len(a))]
    for i, item in enumerate(first):
        other = b[i]
        assert all(torch.equal(item[k], other[k]) if isinstance(item[k], torch.Tensor) else item[k] == other[k]
                   for k in item)
    a.set_epoch(1)
    assert sum(not torch.equal(p["matrix"], a[i]["matrix"]) for i, p in enumerate(first)) == len(a)
    a.set_epoch(0)
    assert all(torch.equal(p["image"], a[i]["image"]) for i, p in enumerate(first))


def test_clip_dataset_bad_input(hand, tmp_path):
    with pytest.raises(PosenasError, match=r"frames \(T \+ 1\): expected an integer >= 2, got 1"):
        ClipDataset(hand, CODEC, None, frames=1)
    with pytest.raises(PosenasError, match="stride: expected an integer >= 1"):
        ClipDataset(hand, CODEC, None, frames=2, stride=0)
    coco = make_dataset("coco", tmp_path / "coco", images=2)
    with pytest.raises(PosenasError, match="no videos in this coco dataset"):
        ClipDataset(coco, CODEC, None, frames=2)
    dup = tmp_path / "dup"
    _write_video(dup, 4, [(True, [(1, True, False), (1, True, False)])] * 2)
    with pytest.raises(PosenasError, match=r"image 10000040000: field 'track_id': 1 is given to two people"):
        find_clips(load_dataset(dup), 2)
    ds = ClipDataset(hand, CODEC, None, frames=2)
    missing = hand.image_path(ds.clips[0].frames[1])
    missing.unlink()
    with pytest.raises(PosenasError, match=f"{missing}: image file not found"):
        ds[0]


# --------------------------------------------------------------------------- video files

COLOURS = [(i * 35, 240 - i * 35, (60 + i * 25) % 256) for i in range(7)]  # BGR, one per frame


def _frames(n: int = 7) -> list[np.ndarray]:
    out = []
    for colour in COLOURS[:n]:
        f = np.empty((48, 64, 3), np.uint8)
        f[:] = colour
        out.append(f)
    return out


def _check_colours(frames: list[np.ndarray], n: int = 7) -> None:
    assert len(frames) == n
    for f, colour in zip(frames, COLOURS):
        assert f.shape == (48, 64, 3) and f.dtype == np.uint8
        np.testing.assert_allclose(f.reshape(-1, 3).mean(0), colour, atol=6)


@pytest.mark.parametrize("suffix,fourcc", [(".avi", "MJPG"), (".mp4", "mp4v")])
def test_reads_a_video_file(tmp_path, suffix, fourcc):
    path = tmp_path / f"clip{suffix}"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 12.0, (64, 48))
    assert writer.isOpened()
    for f in _frames():
        writer.write(f)
    writer.release()
    src = open_frames(path)
    assert src.is_video and src.frame_count == 7 and src.fps == 12.0 and src.size == (64, 48)
    _check_colours(list(src))
    _check_colours(list(src))  # iterating again starts over
    assert src.name(3) == "000003"
    assert open_frames(path, fps=5).fps == 5.0


def test_reads_a_folder_of_frames_in_name_order(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for name, f in zip(["b", "a", "c"], _frames(3)):
        cv2.imwrite(str(folder / f"{name}.png"), f)
    (folder / "notes.txt").write_text("not a frame")
    src = open_frames(folder)
    assert not src.is_video and src.frame_count == 3 and src.fps == 25.0 and src.size == (64, 48)
    assert [src.name(i) for i in range(3)] == ["a", "b", "c"]
    frames = list(src)
    expected = _frames(3)
    for got, want in zip(frames, [expected[1], expected[0], expected[2]]):
        np.testing.assert_array_equal(got, want)  # PNG: exact
    assert open_frames(folder, fps=10).fps == 10.0


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_video_writer_round_trip(tmp_path, suffix):
    out = tmp_path / "out" / f"poses{suffix}"
    with VideoWriter(out, 10.0, (64, 48)) as writer:
        for f in _frames():
            writer.write(f)
        assert not out.exists()  # only a temporary name while writing
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
    src = open_frames(out)
    assert src.frame_count == 7 and src.fps == 10.0 and src.size == (64, 48)
    _check_colours(list(src))


def test_video_writer_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "v.avi"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(out, 10.0, (64, 48)) as writer:
            writer.write(_frames(1)[0])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(PosenasError, match=r"frame 1: expected a \(48, 64, 3\) uint8 BGR image, got shape \(48, 32"):
        with VideoWriter(out, 10.0, (64, 48)) as writer:
            writer.write(_frames(1)[0])
            writer.write(np.zeros((48, 32, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(PosenasError, match="OpenCV cannot open a video writer with fourcc 'XXXX'"):
        VideoWriter(out, 10.0, (64, 48), fourcc="XXXX")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(PosenasError, match=r"v\.mkv: cannot write this container"):
        VideoWriter(tmp_path / "v.mkv", 10.0, (64, 48))
    with pytest.raises(PosenasError, match="no frames were written"):
        with VideoWriter(out, 10.0, (64, 48)):
            pass
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(PosenasError, match="fps: expected a positive number"):
        VideoWriter(out, 0.0, (64, 48))


def test_frame_source_errors_name_the_file(tmp_path):
    with pytest.raises(PosenasError, match=r"nothere\.mp4: no such video file or folder"):
        open_frames(tmp_path / "nothere.mp4")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(PosenasError, match=r"notes\.txt: not a video"):
        open_frames(text)
    fake = tmp_path / "fake.mp4"
    fake.write_text("hello")
    with pytest.raises(PosenasError, match=r"fake\.mp4: cannot open video"):
        open_frames(fake)
    empty = tmp_path / "empty.avi"  # a header and no frames: OpenCV opens it, then reads nothing
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48)).release()
    with pytest.raises(PosenasError, match=r"empty\.avi: cannot read video: it yields no frame"):
        open_frames(empty)
    folder = tmp_path / "frames"
    folder.mkdir()
    with pytest.raises(PosenasError, match="frames: folder holds no images"):
        open_frames(folder)
    cv2.imwrite(str(folder / "000000.png"), _frames(1)[0])
    (folder / "000001.png").write_bytes(b"not a png")
    src = open_frames(folder)
    with pytest.raises(PosenasError, match=r"frame 1: .*000001\.png: cannot decode image"):
        list(src)
    (folder / "000001.png").unlink()
    cv2.imwrite(str(folder / "000001.png"), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(PosenasError, match=r"000001\.png: frame 1: size 10x10 differs from the first frame's 64x48"):
        list(open_frames(folder))
    (folder / "000000.png").write_bytes(b"")
    with pytest.raises(PosenasError, match=r"frame 0: .*000000\.png: cannot decode image"):
        open_frames(folder)
