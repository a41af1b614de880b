"""`posenas infer CKPT VIDEO`: online pose estimation and tracking on a video (section 3.1).

Frames are read one at a time (a video file or a folder of frames) and never all held. Every
``T + 1`` frames is a key frame: each tracked person's crop goes through the S-ViPNet (the
checkpoint's ``key`` net; an image model: every frame is a key frame); between key frames
the t-th frame after it goes through T-ViPNet t, fed the person's previous heatmaps warped
into the new crop. A person's box in each frame comes from its pose in the previous frame
(the box of its confident joints); at key frames new people are picked up from
``--boxes`` (detections per frame) or ``--detector`` (a bottom-up checkpoint), matched to
the tracked people by box IoU; with neither, the first frame's whole image is one person.
A person whose pose falls below ``min_track_score`` is dropped.

Writes ``<out>/<video stem>.mp4`` (the frames with the poses drawn, same count and rate as
the input) and ``<out>/<video stem>.json`` (PoseTrack18 style: ``images`` and
``annotations`` with ``track_id``, ``keypoints``, ``scores``, ``bbox``), and returns the
frame rates: of the whole loop and of the networks alone.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posenas.codecs.heatmap import HeatmapCodec, back_project, instance_scores
from posenas.data.boxes import load_detections
from posenas.data.images import encode_jpeg
from posenas.data.records import ImageRecord, PoseDataset
from posenas.data.topdown import normalize_image
from posenas.data.transforms import TopDownTransform
from posenas.data.video import VideoWriter, open_frames
from posenas.engine.distributed import resolve_device
from posenas.engine.predict import heatmaps_with_flip
from posenas.engine.task import task_of_codec
from posenas.engine.video import frame_nets_of, key_net_of
from posenas.errors import PosenasError
from posenas.jsonio import write_json
from posenas.runtime import load_model
from posenas.visualize import draw_predictions


@dataclass
class Track:
    """One followed person: its box for the next frame and what the next frame net needs."""

    track_id: int
    box: np.ndarray  # x, y, w, h in the current frame
    heatmaps: torch.Tensor | None = None  # (K, h, w) of the last frame
    matrix: torch.Tensor | None = None  # (2, 3) image -> crop of the last frame


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a`` (N, 4) and ``b`` (M, 4), xywh: (N, M)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    y2 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = a[:, None, 2] * a[:, None, 3] + b[None, :, 2] * b[None, :, 3] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def box_from_pose(keypoints: np.ndarray, min_score: float, previous: np.ndarray) -> np.ndarray:
    """The box of the joints scoring ``min_score`` or more (xywh); the previous box when fewer than two do."""
    good = keypoints[keypoints[:, 2] >= min_score, :2]
    if len(good) < 2:
        return previous
    lo, hi = good.min(0), good.max(0)
    return np.array([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]], np.float64)


def match_detections(tracks: list[Track], boxes: list[np.ndarray], threshold: float = 0.3) -> list[int | None]:
    """For each detection, the index of the tracked person it continues (greedy by IoU), or None."""
    out: list[int | None] = [None] * len(boxes)
    if not tracks or not boxes:
        return out
    overlap = iou(np.stack(boxes), np.stack([t.box for t in tracks]))
    taken: set[int] = set()
    for d, t in sorted(((d, t) for d in range(len(boxes)) for t in range(len(tracks))),
                       key=lambda dt: -overlap[dt]):
        if overlap[d, t] < threshold:
            break
        if out[d] is None and t not in taken:
            out[d] = t
            taken.add(t)
    return out


class _Detector:
    """New people at key frames: a detections file (per frame index or name) or a bottom-up model."""

    def __init__(self, boxes: str | Path | None, detector: str | Path | None, names: dict[str, int],
                 runtime: str, device: torch.device):
        if boxes is not None and detector is not None:
            raise PosenasError("infer: --boxes and --detector both find people; give one")
        self.by_frame: dict[int, list[np.ndarray]] = {}
        self.model = None
        if boxes is not None:
            for image_id, box, score in load_detections(boxes, names=names):
                self.by_frame.setdefault(int(image_id), []).append(np.asarray(box, np.float64))
        if detector is not None:
            loaded = load_model(detector, runtime)
            if task_of_codec(loaded.codec).name != "bottomup":
                raise PosenasError(f"{detector}: --detector takes a bottom-up checkpoint (it finds the people of "
                                   "whole frames); this one is top-down")
            self.model, self.device = loaded, device
            self.tmp = tempfile.TemporaryDirectory(prefix="posenas-detector-")
        self.active = boxes is not None or detector is not None

    def __call__(self, index: int, frame: np.ndarray) -> list[np.ndarray]:
        if self.model is None:
            return self.by_frame.get(index, [])
        path = Path(self.tmp.name) / "frame.jpg"
        path.write_bytes(encode_jpeg(frame))
        h, w = frame.shape[:2]
        data = PoseDataset("coco", self.model.schema, Path("/"), [ImageRecord(0, str(path), w, h)], path)
        preds = task_of_codec(self.model.codec).predict(self.model.model.to(self.device), data, self.model.codec,
                                                        self.device, progress=False)
        return [box_from_pose(p.keypoints, 0.2, np.asarray(p.box, np.float64)) for p in preds if p.score > 0.1]


def _frame_names(source) -> dict[str, int]:
    return {source.name(i): i for i in range(source.frame_count)}


@torch.no_grad()
def run_video_inference(
    checkpoint: str | Path,
    video: str | Path,
    out: str | Path,
    *,
    boxes: str | Path | None = None,
    detector: str | Path | None = None,
    flip_test: bool = False,
    min_score: float = 0.2,
    min_track_score: float = 0.1,
    fps: float | None = None,
    device: str = "auto",
    runtime: str = "torch",
    progress: bool = True,
    joint_scores: bool = False,
) -> dict[str, Any]:
    """Run the online loop of the module docstring over ``video``; returns a summary
    (frames, people, tracks, frames/s overall and of the networks, the written files)."""
    from tqdm import tqdm

    source = open_frames(video, fps)
    loaded = load_model(checkpoint, runtime)
    if task_of_codec(loaded.codec).name == "bottomup":
        raise PosenasError(f"{checkpoint}: a bottom-up model; on a video pass it as --detector with a top-down "
                           "(or video) checkpoint")
    dev = resolve_device(device) if runtime == "torch" else torch.device("cpu")
    model = loaded.model.to(dev).eval() if runtime == "torch" else loaded.model
    key, frames = key_net_of(model), frame_nets_of(model)
    period = len(frames) + 1
    codec: HeatmapCodec = loaded.codec
    schema = loaded.schema
    stride = tuple(codec.stride_xy)
    transform = TopDownTransform(codec.input_size, schema, None)
    find = _Detector(boxes, detector, _frame_names(source), runtime, dev)

    from posenas.spaces.vipnas_video import warp_heatmaps

    out = Path(out)
    stem = Path(video).stem if Path(video).suffix else Path(video).name
    w, h = source.size
    tracks: list[Track] = []
    next_id = 0
    images, annotations = [], []
    net_seconds, started, count = 0.0, time.perf_counter(), 0
    bar = tqdm(total=source.frame_count or None, desc="video", unit="frame", disable=not progress)
    with VideoWriter(out / f"{stem}.mp4", source.fps, source.size) as writer:
        for i, frame in enumerate(source):
            position = i % period
            confirmed: set[int] = set()  # tracks a detection started or matched now: kept whatever their score
            if position == 0:  # a key frame: pick up new people
                found = find(i, frame) if find.active else ([np.array([0, 0, w, h], np.float64)] if i == 0 else [])
                for d, t in zip(found, match_detections(tracks, found)):
                    if t is None:
                        tracks.append(Track(next_id, d))
                        confirmed.add(next_id)
                        next_id += 1
                    else:
                        tracks[t].box = d
                        confirmed.add(tracks[t].track_id)
            people = []
            if tracks:
                samples = [transform(frame, np.zeros((schema.num_joints, 3), np.float32), t.box, None)
                           for t in tracks]
                crops = torch.from_numpy(np.stack([normalize_image(s.crop) for s in samples])).to(dev)
                matrices = torch.from_numpy(np.stack([s.matrix for s in samples]).astype(np.float32)).to(dev)
                tick = time.perf_counter()
                if position == 0:
                    heat = heatmaps_with_flip(key, crops, schema.flip_index, flip_test)
                else:
                    prev = torch.stack([t.heatmaps for t in tracks])
                    prev_m = torch.stack([t.matrix for t in tracks])
                    heat = frames[position - 1](crops, warp_heatmaps(prev, prev_m, matrices, stride))
                heat = heat.float()
                net_seconds += time.perf_counter() - tick
                coords, maxvals = codec.decode(heat.cpu().numpy())
                xy = back_project(coords, np.stack([s.center for s in samples]), np.stack([s.scale for s in samples]),
                                  np.zeros(len(samples)), codec.input_size)
                scores = instance_scores(maxvals, np.ones(len(samples)))
                kept = []
                for j, t in enumerate(tracks):
                    kp = np.concatenate([xy[j], maxvals[j][:, None]], 1).astype(np.float32)
                    if float(maxvals[j].mean()) < min_track_score and t.track_id not in confirmed:
                        continue  # lost: dropped
                    people.append((kp, t.box.copy(), float(scores[j]), t.track_id))
                    t.heatmaps, t.matrix = heat[j], matrices[j]
                    t.box = box_from_pose(kp, min_score, t.box)
                    kept.append(t)
                tracks = kept
            images.append({"id": i, "file_name": source.name(i), "frame_id": i, "vid_id": stem})
            for kp, box, score, tid in people:
                annotations.append({"image_id": i, "track_id": tid, "category_id": 1,
                                    "keypoints": [round(float(v), 2) for v in kp.reshape(-1)],
                                    "scores": [round(float(v), 4) for v in kp[:, 2]],
                                    "bbox": [round(float(v), 2) for v in box], "score": round(score, 4)})
            canvas = draw_predictions(frame.copy(), ((kp, box, s) for kp, box, s, _ in people), schema, min_score,
                                      joint_scores=joint_scores)
            writer.write(canvas)
            count += 1
            bar.update(1)
    bar.close()
    total = time.perf_counter() - started
    category = {"id": 1, "name": "person", "keypoints": list(schema.joints),
                "skeleton": [[a + 1, b + 1] for a, b in schema.skeleton]}
    write_json(out / f"{stem}.json", {"images": images, "annotations": annotations, "categories": [category]})
    return {"frames": count, "period": period, "people": len(annotations),
            "tracks": len({a["track_id"] for a in annotations}), "fps": count / total if total > 0 else 0.0,
            "model_fps": count / net_seconds if net_seconds > 0 else float("inf"),
            "video": str(out / f"{stem}.mp4"), "json": str(out / f"{stem}.json"), "rate": source.fps}
