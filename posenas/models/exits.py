"""The training output of a multi-exit model (3M-Pose's early escape layers)."""

from __future__ import annotations

import torch


class ExitOutputs(tuple):
    """Every exit's output, first exit first, each a full model output of its own (for a
    bottom-up model: heatmaps then tags at 1/4). A task's loss sums its loss over the exits,
    so each exit is supervised; a plain tuple instead means several resolutions of one output."""

    def __new__(cls, outputs: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> "ExitOutputs":
        return super().__new__(cls, outputs)
