"""`posenas data check`: validate a dataset fully, images included, and summarise it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from posenas.data.images import read_image
from posenas.data.records import ImageRecord, PoseDataset
from posenas.errors import PosenasError


def _check_image(dataset: PoseDataset, img: ImageRecord) -> None:
    path = dataset.image_path(img)
    try:
        array = read_image(path)
    except PosenasError as e:
        raise PosenasError(f"{dataset.source}: image id {img.id} ({img.file_name!r}): {e}") from None
    h, w = array.shape[:2]
    if img.width is not None and (img.width, img.height) != (w, h):
        raise PosenasError(
            f"{dataset.source}: image id {img.id}: fields 'width'/'height' say {img.width}×{img.height}, "
            f"but {path} is {w}×{h}"
        )


def check_images(dataset: PoseDataset, progress: bool = True, workers: int = 4) -> None:
    """Decode every image (in threads: OpenCV releases the GIL) and compare its size with the record."""
    with ThreadPoolExecutor(workers) as pool:
        jobs = pool.map(lambda img: _check_image(dataset, img), dataset.images)
        for _ in tqdm(jobs, total=len(dataset.images), desc=f"checking {dataset.source.name}", disable=not progress, leave=False):
            pass
