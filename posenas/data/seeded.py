"""What the top-down and bottom-up torch datasets share: per-item augmentation seeded by
(seed, epoch, index), and an epoch that reaches DataLoader workers.

Determinism: the augmentation of item ``index`` in epoch ``epoch`` is drawn from
``np.random.default_rng([seed, epoch, index])`` and nothing else — no global NumPy / torch
state, no worker state — so an item is a pure function of (seed, epoch, index) whatever
the DataLoader's worker count, order or resumption point.

The epoch lives in a one-element shared-memory tensor, so ``set_epoch`` reaches
DataLoader workers too, persistent ones included (``persistent_workers=True``): call it
*before* starting the epoch's iteration (``for batch in loader``), as with
``DistributedSampler.set_epoch`` — workers only fetch once the iterator asks them.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from posenas.data.images import read_image
from posenas.data.records import ImageRecord, PoseDataset
from posenas.errors import PosenasError


class SeededDataset(torch.utils.data.Dataset):
    """Base of the pipelines' datasets over a :class:`PoseDataset` (``self.dataset``)."""

    def __init__(self, dataset: PoseDataset, seed: int):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise PosenasError(f"seed: expected a non-negative integer, got {seed!r}")
        self.dataset = dataset
        self.seed = int(seed)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation ``__getitem__`` draws (see the module docstring)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise PosenasError(f"epoch: expected a non-negative integer, got {epoch!r}")
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def rng(self, index: int) -> np.random.Generator:
        """The augmentation RNG of item ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def load_image(self, img: ImageRecord) -> np.ndarray:
        """The RGB ``(H, W, 3)`` uint8 image of a record, read from disk (in-memory images: :mod:`posenas.api`)."""
        return cv2.cvtColor(read_image(self.dataset.image_path(img)), cv2.COLOR_BGR2RGB)
