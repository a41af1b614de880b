"""Video data: training clips of consecutive labelled frames per track, and video files.

:class:`ClipDataset` gives video pose models (ViPNAS-style temporal nets) ``T + 1``
consecutive labelled frames of one tracked person per item, every frame cropped around that
frame's own person box but with ONE augmentation draw for the whole clip, and each frame's
full-image → crop affine so a model can warp the previous frame's heatmaps into the current
crop. An item is a pure function of (seed, epoch, index), as in :mod:`posenas.data.seeded`.

:class:`FrameSource` / :func:`open_frames` read a video file or a folder of frames with
OpenCV for inference; :class:`VideoWriter` writes the annotated video back at the same rate.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch

from posenas.codecs.heatmap import HeatmapCodec
from posenas.data.images import IMAGE_SUFFIXES, VIDEO_SUFFIXES, DataError, read_image
from posenas.data.records import ImageRecord, Person, PoseDataset
from posenas.data.seeded import SeededDataset
from posenas.data.topdown import normalize_image
from posenas.data.transforms import AugmentConfig, TopDownTransform
from posenas.errors import PosenasError

#: Frame rate assumed for a folder of frames, or a video whose container states none.
DEFAULT_FPS = 25.0
#: FourCC written per container (both are in every OpenCV build's bundled FFmpeg).
FOURCC_OF_SUFFIX = {".mp4": "mp4v", ".avi": "MJPG"}


# --------------------------------------------------------------------------- training clips


@dataclass(frozen=True)
class Clip:
    """One item of a :class:`ClipDataset`: a track over consecutive labelled frames of a video.

    ``start`` indexes the video's labelled frames (unlabelled ones are not counted).
    """

    video_id: str
    track_id: int
    start: int
    frames: tuple[ImageRecord, ...]
    people: tuple[Person, ...]


def _positive_int(value: object, name: str, lowest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lowest:
        raise PosenasError(f"ClipDataset: {name}: expected an integer >= {lowest}, got {value!r}")
    return int(value)


def _longest_run(present: np.ndarray) -> int:
    """Length of the longest run of True in a 1-D bool array."""
    if not present.any():
        return 0
    edges = np.diff(np.concatenate([[0], present.astype(np.int8), [0]]))
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())


def find_clips(dataset: PoseDataset, frames: int, stride: int = 1, min_labelled: int = 1) -> list[Clip]:
    """Every clip of ``frames`` consecutive labelled frames in which one track is present.

    A track is present in a frame when a non-crowd person of that ``track_id`` has at least
    ``min_labelled`` labelled joints. Starts are ``0, stride, 2·stride, ...`` of the video's
    labelled frames; order: video (as :meth:`PoseDataset.videos`), track id, start.
    """
    frames = _positive_int(frames, "frames (T + 1)", 2)
    stride = _positive_int(stride, "stride", 1)
    min_labelled = _positive_int(min_labelled, "min_labelled", 0)
    videos = dataset.videos()
    if not videos:
        raise PosenasError(f"{dataset.source}: no videos in this {dataset.format} dataset: clips need PoseTrack-style "
                           "annotations (images with vid_id and frame_id)")
    clips: list[Clip] = []
    longest = 0
    for vid, records in videos.items():
        labelled = [img for img in records if img.is_labeled]
        # per labelled frame: track id -> person
        tracks: list[dict[int, Person]] = []
        for img in labelled:
            by_track: dict[int, Person] = {}
            for p in img.people:
                if p.track_id is None or p.iscrowd or p.num_labelled < min_labelled:
                    continue
                if p.track_id in by_track:
                    raise PosenasError(f"{dataset.source}: video {vid}, image {img.id}: field 'track_id': "
                                       f"{p.track_id} is given to two people (annotations {by_track[p.track_id].id} "
                                       f"and {p.id})")
                by_track[p.track_id] = p
            tracks.append(by_track)
        n = len(labelled)
        for tid in sorted({t for by_track in tracks for t in by_track}):
            present = np.array([tid in by_track for by_track in tracks], dtype=bool)
            longest = max(longest, _longest_run(present))
            if n < frames:
                continue
            # present[s : s + frames] all true  <=>  window sum == frames
            sums = np.convolve(present.astype(np.int64), np.ones(frames, dtype=np.int64), mode="valid")
            starts = np.arange(0, n - frames + 1, stride)
            for s in starts[sums[starts] == frames]:
                s = int(s)
                clips.append(Clip(vid, tid, s, tuple(labelled[s : s + frames]),
                                  tuple(tracks[f][tid] for f in range(s, s + frames))))
    if not clips:
        raise PosenasError(f"{dataset.source}: no clip of {frames} consecutive labelled frames fits: the longest track "
                           f"(with >= {min_labelled} labelled joints per frame) spans {longest} labelled frame(s) in a "
                           f"row; lower the clip length")
    return clips


class ClipDataset(SeededDataset):
    """Clips of ``frames`` (= T + 1) consecutive labelled frames of one track, for video pose training.

    Items (see :func:`find_clips`) are dicts of tensors with a leading frame axis F:
    ``image`` (F, 3, H, W), ``target`` (F, K, h, w), ``target_weight`` (F, K), ``matrix``
    (F, 2, 3) float32 (each frame's full image → input crop affine), ``image_id`` (F,) int64,
    plus ``track_id`` (int) and ``video_id`` (str). Every frame is cropped around its own
    person box, and every frame's :class:`TopDownTransform` gets a fresh generator from the
    same seed ``[seed, epoch, index]``: the same scale factor, rotation, flip, colour jitter
    and half-body draw for the whole clip (whether the half body applies still depends on
    each frame's labelled joints). ``augment=None``: plain centred crops.
    """

    def __init__(
        self,
        dataset: PoseDataset,
        codec: HeatmapCodec,
        augment: AugmentConfig | None,
        frames: int,
        seed: int = 0,
        stride: int = 1,
        min_labelled: int = 1,
    ):
        super().__init__(dataset, seed)
        self.codec = codec
        self.augment = augment
        self.frames = _positive_int(frames, "frames (T + 1)", 2)
        self.transform = TopDownTransform(codec.input_size, dataset.schema, augment)
        self.clips = find_clips(dataset, frames, stride, min_labelled)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.clips):
            raise IndexError(f"ClipDataset index {index} out of range for {len(self.clips)} clips")
        clip = self.clips[index]
        images, targets, weights, matrices = [], [], [], []
        for img, person in zip(clip.frames, clip.people):
            try:
                image = self.load_image(img)
                kp = np.asarray(person.keypoints, dtype=np.float32)
                box = np.asarray(person.box(), dtype=np.float64)
                sample = self.transform(image, kp, box, self.rng(index))  # same draws for every frame
            except DataError:
                raise
            except PosenasError as e:  # as DataError: one line also when a DataLoader worker raised it
                raise DataError(str(e)) from None
            target, weight = self.codec.encode(sample.keypoints)
            images.append(normalize_image(sample.crop))
            targets.append(target)
            weights.append(weight)
            matrices.append(sample.matrix)
        return {
            "image": torch.from_numpy(np.stack(images)),
            "target": torch.from_numpy(np.stack(targets)),
            "target_weight": torch.from_numpy(np.stack(weights)),
            "matrix": torch.from_numpy(np.stack(matrices).astype(np.float32)),
            "image_id": torch.tensor([img.id for img in clip.frames], dtype=torch.int64),
            "track_id": int(clip.track_id),
            "video_id": clip.video_id,
        }


# --------------------------------------------------------------------------- video files


def _check_fps(fps: float, where: Path) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.number)) or not math.isfinite(fps) or fps <= 0:
        raise PosenasError(f"{where}: fps: expected a positive number, got {fps!r}")
    return float(fps)


class FrameSource:
    """BGR uint8 ``(H, W, 3)`` frames of a video file or of a folder of images (name order).

    Iterating reads the frames from the start each time. ``fps``: the rate given, else the
    video's (``CAP_PROP_FPS``; :data:`DEFAULT_FPS` when it states none), else
    :data:`DEFAULT_FPS` for a folder. ``frame_count``: a video's stated count (a hint: the
    container may be wrong), a folder's number of images. ``size``: ``(w, h)`` of the first
    frame; a folder frame of another size is an error (a video has one size).
    """

    def __init__(self, path: str | Path, fps: float | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise PosenasError(f"{self.path}: no such video file or folder of frames")
        self.is_video = not self.path.is_dir()
        self._files: list[Path] = []
        if self.is_video:
            if self.path.suffix.lower() not in VIDEO_SUFFIXES:
                raise PosenasError(f"{self.path}: not a video ({', '.join(VIDEO_SUFFIXES)}) or a folder of frames")
            capture = self._capture()
            try:
                ok, first = capture.read()
                if not ok or first is None:
                    raise PosenasError(f"{self.path}: cannot read video: it yields no frame (corrupt or empty)")
                stated_fps = float(capture.get(cv2.CAP_PROP_FPS))
                stated_count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
            finally:
                capture.release()
            self.size = (int(first.shape[1]), int(first.shape[0]))
            self.frame_count = int(stated_count) if math.isfinite(stated_count) and stated_count > 0 else 0
            own_fps = stated_fps if math.isfinite(stated_fps) and stated_fps > 0 else DEFAULT_FPS
        else:
            self._files = sorted(p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._files:
                raise PosenasError(f"{self.path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            first = self._read_file(0)
            self.size = (int(first.shape[1]), int(first.shape[0]))
            self.frame_count = len(self._files)
            own_fps = DEFAULT_FPS
        self.fps = own_fps if fps is None else _check_fps(fps, self.path)

    def _capture(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            capture.release()
            raise PosenasError(f"{self.path}: cannot open video (not a video OpenCV can decode, or corrupt)")
        return capture

    def _read_file(self, i: int) -> np.ndarray:
        try:
            return read_image(self._files[i])
        except PosenasError as e:
            raise PosenasError(f"frame {i}: {e}") from None

    def name(self, i: int) -> str:
        """Frame ``i``'s name: the file stem in a folder, ``000123`` in a video."""
        if not self.is_video:
            return self._files[i].stem
        if i < 0:
            raise IndexError(f"{self.path}: frame index {i} is negative")
        return f"{i:06d}"

    def __iter__(self) -> Iterator[np.ndarray]:
        if not self.is_video:
            for i in range(len(self._files)):
                frame = self._read_file(i)
                if (frame.shape[1], frame.shape[0]) != self.size:
                    raise PosenasError(f"{self._files[i]}: frame {i}: size {frame.shape[1]}x{frame.shape[0]} differs "
                                       f"from the first frame's {self.size[0]}x{self.size[1]}")
                yield frame
            return
        capture = self._capture()
        try:
            while True:
                ok, frame = capture.read()
                if not ok or frame is None:
                    return
                yield frame
        finally:
            capture.release()


def open_frames(path: str | Path, fps: float | None = None) -> FrameSource:
    """The frames of a video file or folder of images; ``fps`` overrides the source's rate."""
    return FrameSource(path, fps)


class VideoWriter:
    """Writes BGR uint8 frames of one size to an .mp4 (``mp4v``) or .avi (``MJPG``) file.

    A context manager: the video goes to a temporary name in the target's folder and is
    renamed onto ``path`` only when it closes without error, so no half-written video is
    left behind. ``size`` is ``(w, h)``, as :attr:`FrameSource.size`.
    """

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int], fourcc: str | None = None):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if fourcc is None:
            if suffix not in FOURCC_OF_SUFFIX:
                raise PosenasError(f"{self.path}: cannot write this container; use one of "
                                   f"{', '.join(FOURCC_OF_SUFFIX)}")
            fourcc = FOURCC_OF_SUFFIX[suffix]
        if not isinstance(fourcc, str) or len(fourcc) != 4:
            raise PosenasError(f"{self.path}: fourcc: expected 4 characters, got {fourcc!r}")
        self.fps = _check_fps(fps, self.path)
        try:
            w, h = (int(v) for v in size)
        except (TypeError, ValueError):
            raise PosenasError(f"{self.path}: size: expected (width, height), got {size!r}") from None
        if w <= 0 or h <= 0:
            raise PosenasError(f"{self.path}: size: expected a positive (width, height), got {size!r}")
        self.size = (w, h)
        self.frames_written = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=f".partial{self.path.suffix}",
                                   dir=self.path.parent)  # OpenCV picks the container by the suffix
        os.close(fd)
        self._tmp = Path(tmp)
        code = cv2.VideoWriter_fourcc(*fourcc)
        self._writer: cv2.VideoWriter | None = cv2.VideoWriter(tmp, code, self.fps, self.size)
        if not self._writer.isOpened():
            self._abort()
            raise PosenasError(f"{self.path}: OpenCV cannot open a video writer with fourcc {fourcc!r} "
                               f"at {w}x{h}, {self.fps:g} fps")

    def write(self, frame: np.ndarray) -> None:
        """Append one ``(h, w, 3)`` uint8 BGR frame."""
        if self._writer is None:
            raise PosenasError(f"{self.path}: the video writer is closed")
        w, h = self.size
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.shape != (h, w, 3):
            shape = getattr(frame, "shape", None)
            dtype = getattr(frame, "dtype", type(frame).__name__)
            raise PosenasError(f"{self.path}: frame {self.frames_written}: expected a ({h}, {w}, 3) uint8 BGR image, "
                               f"got shape {shape} {dtype}")
        self._writer.write(np.ascontiguousarray(frame))
        self.frames_written += 1

    def _abort(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self._tmp.unlink(missing_ok=True)

    def close(self) -> None:
        """Finish the file and move it onto ``path`` (an error if no frame was written)."""
        if self._writer is None:
            return
        if self.frames_written == 0:
            self._abort()
            raise PosenasError(f"{self.path}: no frames were written; no video saved")
        self._writer.release()
        self._writer = None
        os.replace(self._tmp, self.path)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._abort()
            return False
        self.close()
        return False
