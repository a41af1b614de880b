"""`posenas infer` on videos: online propagation, tracking, the written video and PoseTrack JSON."""

import json

import cv2
import numpy as np
import pytest
import torch

from posenas.arch import build_model
from posenas.checkpoint import save_checkpoint
from posenas.cli import main
from posenas.codecs import HeatmapCodec
from posenas.data.video import VideoWriter, open_frames
from posenas.infer_video import box_from_pose, iou, match_detections, run_video_inference, Track
from posenas.jsonio import read_json
from posenas.spaces.vipnas import SPACES, largest_arch, parse_choices
from posenas.spaces.vipnas_video import FrameArch, Fusion, VideoArch

CHOICES = {"stem": {"widths": [16], "kernels": [3]},
           "stages": [{"depths": [1], "widths": [16], "expansions": [1], "kernels": [3], "groups": [4],
                       "attentions": ["none"]},
                      {"depths": [1], "widths": [32], "expansions": [1], "kernels": [3], "groups": [8],
                       "attentions": ["none"]},
                      {"depths": [1], "widths": [64], "expansions": [1], "kernels": [3], "groups": [8],
                       "attentions": ["none"]},
                      {"depths": [1], "widths": [128], "expansions": [1], "kernels": [3], "groups": [16],
                       "attentions": ["none"]}],
           "head": {"widths": [16], "groups": [4], "kernels": [4]}}


def _checkpoint(path, video: bool):
    spatial = largest_arch("vipnas-resnet", parse_choices(SPACES["vipnas-resnet"], CHOICES, "t"))
    arch = VideoArch(spatial, (FrameArch(spatial, Fusion(2, "cat")), FrameArch(spatial, None))) if video else spatial
    torch.manual_seed(0)
    model = build_model(arch, 17)
    codec = HeatmapCodec(input_size=(64, 64), heatmap_size=(16, 16))
    save_checkpoint(path, {"arch": arch.to_json(), "schema": "coco17", "codec": codec.to_dict(),
                           "state_dict": model.state_dict()})
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 10-frame .mp4 of a bright square moving right on a dark background, and its frames."""
    root = tmp_path_factory.mktemp("clip")
    frames = []
    for i in range(10):
        f = np.full((72, 96, 3), 20, np.uint8)
        f[20:50, 10 + 3 * i:30 + 3 * i] = 230
        frames.append(f)
    with VideoWriter(root / "clip.mp4", 12.0, (96, 72)) as w:
        for f in frames:
            w.write(f)
    folder = root / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        (folder / f"{i:04d}.png").write_bytes(cv2.imencode(".png", f)[1].tobytes())
    return root


def test_iou_match_and_pose_box_by_hand():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 10, 10], [20, 20, 5, 5]])
    np.testing.assert_allclose(iou(a, b), [[50 / 150, 0.0]])
    tracks = [Track(0, np.array([0, 0, 10, 10.0])), Track(1, np.array([100, 100, 10, 10.0]))]
    assert match_detections(tracks, [np.array([101, 100, 10, 10.0]), np.array([1, 0, 10, 10.0]),
                                     np.array([50, 50, 4, 4.0])]) == [1, 0, None]
    kp = np.array([[1, 2, 0.9], [5, 8, 0.5], [100, 100, 0.05]], np.float32)
    np.testing.assert_allclose(box_from_pose(kp, 0.2, np.zeros(4)), [1, 2, 4, 6])
    np.testing.assert_allclose(box_from_pose(kp[:1], 0.2, np.ones(4)), np.ones(4))  # one joint: keep the box


@pytest.mark.parametrize("video", [False, True])
def test_video_inference_writes_every_frame_and_tracks(tmp_path, clip, video, capsys):
    ckpt = _checkpoint(tmp_path / "m.pt", video)
    out = tmp_path / "out"
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([{"image_id": 0, "bbox": [10, 20, 20, 30], "score": 1.0},
                                 {"image_id": 0, "bbox": [60, 0, 30, 20], "score": 0.9},
                                 {"image_id": 3, "bbox": [19, 20, 20, 30], "score": 1.0}]))
    assert main(["infer", "--checkpoint", str(ckpt), str(clip / "clip.mp4"), "--out", str(out),
                 "--boxes", str(boxes)]) == 0
    printed = capsys.readouterr().out
    assert ("key frame every 3" if video else "every frame a key frame") in printed and "frames/s" in printed
    written = open_frames(out / "clip.mp4")
    assert sum(1 for _ in written) == 10 and written.fps == pytest.approx(12.0, abs=0.01)
    data = read_json(out / "clip.json")
    assert [img["frame_id"] for img in data["images"]] == list(range(10))
    first = [a for a in data["annotations"] if a["image_id"] == 0]
    assert sorted(a["track_id"] for a in first) == [0, 1] and all(len(a["keypoints"]) == 17 * 3 for a in first)
    # an untrained net's poses score ~0: its people are dropped after the frame that found them, and the
    # detection of frame 3 starts a new track
    assert {a["image_id"] for a in data["annotations"]} == {0, 3}
    assert [a["track_id"] for a in data["annotations"] if a["image_id"] == 3] == [2]
    # kept whatever their score, the people are followed through every frame, and the frame-3 detection
    # (IoU 0.38 with track 0's box) continues track 0
    r = run_video_inference(ckpt, clip / "clip.mp4", tmp_path / "kept", boxes=boxes, min_track_score=0.0,
                            progress=False)
    data = read_json(tmp_path / "kept" / "clip.json")
    assert r["tracks"] == 2 and len(data["annotations"]) == 20
    assert {a["track_id"] for a in data["annotations"] if a["image_id"] == 3} == {0, 1}


def test_a_folder_of_frames_is_a_video_with_video_and_its_rate(tmp_path, clip, capsys):
    ckpt = _checkpoint(tmp_path / "m.pt", True)
    assert main(["infer", "--checkpoint", str(ckpt), str(clip / "frames"), "--video", "--fps", "5",
                 "--out", str(tmp_path / "o")]) == 0
    written = open_frames(tmp_path / "o" / "frames.mp4")
    assert sum(1 for _ in written) == 10 and written.fps == pytest.approx(5.0, abs=0.01)
    # no detections: the first frame's whole image is the one person, followed from its pose
    data = read_json(tmp_path / "o" / "frames.json")
    assert {a["track_id"] for a in data["annotations"]} == {0}
    assert data["annotations"][0]["bbox"] == [0.0, 0.0, 96.0, 72.0]


def test_the_key_frame_is_the_image_model_on_the_same_box(tmp_path, clip):
    """Frame 0 of a video model = its key net run as an image model on that box."""
    from posenas.infer import run_inference

    ckpt = _checkpoint(tmp_path / "m.pt", True)
    boxes = tmp_path / "b.json"
    boxes.write_text(json.dumps([{"image_id": 0, "bbox": [10, 20, 20, 30], "score": 1.0}]))
    r = run_video_inference(ckpt, clip / "clip.mp4", tmp_path / "v", boxes=boxes, progress=False)
    assert r["frames"] == 10 and r["period"] == 3
    frame0 = tmp_path / "f0.png"
    source = open_frames(clip / "clip.mp4")
    cv2.imwrite(str(frame0), next(iter(source)))
    img_boxes = tmp_path / "ib.json"
    img_boxes.write_text(json.dumps([{"image": "f0.png", "bbox": [10, 20, 20, 30], "score": 1.0}]))
    image = run_inference(ckpt, [frame0], tmp_path / "i", boxes=img_boxes, flip_test=False, progress=False)
    video0 = [a for a in read_json(tmp_path / "v" / "clip.json")["annotations"] if a["image_id"] == 0][0]
    np.testing.assert_allclose(np.array(video0["keypoints"]).reshape(17, 3), np.array(image[0]["keypoints"]),
                               atol=0.02)


def test_video_inference_errors(tmp_path, clip, capsys):
    ckpt = _checkpoint(tmp_path / "m.pt", True)
    assert main(["infer", "--checkpoint", str(ckpt), str(clip / "clip.mp4"), "--out", str(tmp_path / "o"),
                 "--detector", str(ckpt)]) == 2
    assert "--detector takes a bottom-up checkpoint" in capsys.readouterr().err
    assert main(["infer", "--checkpoint", str(ckpt), str(clip / "clip.mp4"), str(clip / "frames"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "mixing a video with images" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_an_exported_video_model_runs_in_onnx_runtime_as_in_pytorch(tmp_path, clip, capsys):
    ckpt = _checkpoint(tmp_path / "m.pt", True)
    assert main(["export", str(ckpt), "--onnx", str(tmp_path / "v.onnx")]) == 0
    printed = capsys.readouterr().out
    assert "T-ViPNet 1, fusion input previous_heatmaps" in printed and "T-ViPNet 2," in printed
    assert (tmp_path / "v.frame1.onnx").is_file() and (tmp_path / "v.frame2.onnx").is_file()
    boxes = tmp_path / "b.json"
    boxes.write_text(json.dumps([{"image_id": 0, "bbox": [10, 20, 20, 30], "score": 1.0}]))
    results = {}
    for runtime, model in (("torch", ckpt), ("onnx", tmp_path / "v.onnx")):
        run_video_inference(model, clip / "clip.mp4", tmp_path / runtime, boxes=boxes, runtime=runtime,
                            min_track_score=0.0, progress=False)
        results[runtime] = read_json(tmp_path / runtime / "clip.json")["annotations"]
    assert len(results["onnx"]) == len(results["torch"]) == 10
    for a, b in zip(results["torch"], results["onnx"]):
        np.testing.assert_allclose(a["keypoints"], b["keypoints"], atol=0.05)
    (tmp_path / "v.frame2.onnx").unlink()
    assert main(["infer", "--checkpoint", str(tmp_path / "v.onnx"), "--runtime", "onnx", str(clip / "clip.mp4"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "T-ViPNet 2 should be beside it as v.frame2.onnx" in capsys.readouterr().err


def test_a_bottom_up_detector_picks_up_people_at_key_frames_only(tmp_path, clip, monkeypatch):
    from posenas.arch import named_arch
    from posenas.codecs import AssociativeEmbeddingCodec
    from posenas.engine.predict import InstancePrediction
    from posenas.engine.task import BottomUpTask

    arch = named_arch("simplebaseline-small-ae")
    save_checkpoint(tmp_path / "ae.pt", {"arch": arch.to_json(), "schema": "coco17",
                                         "codec": AssociativeEmbeddingCodec(input_size=(64, 64),
                                                                            heatmap_sizes=((16, 16),)).to_dict(),
                                         "state_dict": build_model(arch, 17).state_dict()})
    calls = []

    def found(self, model, dataset, codec, device, **options):  # one confident person where the square is
        calls.append(dataset.images[0].width)
        kp = np.zeros((17, 3), np.float32)
        kp[:, 0], kp[:, 1], kp[:, 2] = np.linspace(12, 30, 17), np.linspace(22, 48, 17), 0.9
        return [InstancePrediction(0, -1, kp, 0.9, np.array([10, 20, 20, 30], np.float32))]

    monkeypatch.setattr(BottomUpTask, "predict", found)
    r = run_video_inference(_checkpoint(tmp_path / "m.pt", True), clip / "clip.mp4", tmp_path / "o",
                            detector=tmp_path / "ae.pt", min_track_score=0.0, progress=False)
    assert calls == [96] * 4  # frames 0, 3, 6, 9 of 10 (period 3), on the whole frame
    data = read_json(tmp_path / "o" / "clip.json")
    assert r["tracks"] == 1 and {a["image_id"] for a in data["annotations"]} == set(range(10))
