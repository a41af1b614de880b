"""Reading images with errors that name the file (OpenCV returns None silently)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from posenas.errors import PosenasError

#: Image files a folder of frames may hold (``posenas infer``, :mod:`posenas.data.video`).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: Video containers :mod:`posenas.data.video` reads with OpenCV.
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


class DataError(PosenasError):
    """A bad-input error raised while loading a sample, which keeps its one-line message when
    a DataLoader worker raised it.

    Why: the loader re-raises a worker's exception in the main process as
    ``type(e)(text)``, ``text`` being "Caught ... in DataLoader worker process N. Original
    Traceback ..." with the message on its last line; a plain PosenasError would squash that
    whole traceback into one line. This constructor cuts it back to the original message.
    """

    def __init__(self, message: str):
        text = str(message)
        if text.startswith("Caught ") and "\nOriginal Traceback" in text:
            last = text.rstrip().splitlines()[-1]  # "posenas.data.images.DataError: <message>"
            text = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(text)


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to an (H, W, 3) uint8 BGR array, or raise a one-line error."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read image: {e.strerror or e}") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DataError(f"{path}: cannot decode image (corrupt or not an image)")
    return image


def encode_jpeg(image: np.ndarray, quality: int = 92) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise PosenasError("cannot encode image as JPEG")
    return buf.tobytes()
