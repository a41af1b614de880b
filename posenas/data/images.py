"""Reading images with errors that name the file (OpenCV returns None silently)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from posenas.errors import PosenasError


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to an (H, W, 3) uint8 BGR array, or raise a one-line error."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise PosenasError(f"{path}: image file not found") from None
    except OSError as e:
        raise PosenasError(f"{path}: cannot read image: {e.strerror or e}") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise PosenasError(f"{path}: cannot decode image (corrupt or not an image)")
    return image


def encode_jpeg(image: np.ndarray, quality: int = 92) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise PosenasError("cannot encode image as JPEG")
    return buf.tobytes()
