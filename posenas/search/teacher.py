"""3M-Pose's student-teacher loss (thesis Sec. 3.4): representational dissimilarity matrices
(RDMs) of a frozen teacher's hand-picked outputs against every cell output of the student.

For a batch of N images, the RDM of a tensor (N, ...) is the N x N matrix of Euclidean
distances between its per-image activation vectors; only its upper triangle (i < j) carries
information, so :func:`rdm` returns that as a vector of N(N-1)/2 distances. The loss is

    Sim_i = max_j corr(RDM(Y_i), RDM(X_j)),    loss = 1 - mean_i Sim_i

with ``corr`` the Pearson correlation, Y_i the teacher's tensors and X_j the student's. The
RDM compares *how a network tells the images of a batch apart*, not the activations
themselves, so student and teacher may have any widths and resolutions; distances scale
with a representation and Pearson does not, so scaling a representation leaves the loss
unchanged. Gradients reach the student only: teacher tensors are detached.

:class:`Teacher` wraps a frozen model of this project (any checkpoint loads; the thesis'
teacher is HigherHRNet-W32 trained on COCO, arch ``higherhrnet-w32``) and returns the
tensors the loss compares it on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from posenas.checkpoint import model_from_checkpoint
from posenas.engine.task import as_outputs, unwrap
from posenas.errors import PosenasError

#: Pearson's eps: keeps a constant vector's correlation at 0 (and its gradient finite).
PEARSON_EPS = 1e-12


def rdm(features: torch.Tensor) -> torch.Tensor:
    """The upper triangle (i < j, row-major: (0,1), (0,2), ..., (1,2), ...) of the Euclidean
    distance matrix of ``features`` (N, ...) flattened per sample, as a vector of N(N-1)/2.

    Computed in float32 (float64 stays float64) with autocast off: under bf16 the Gram
    matrix's cancellation would swamp small distances. Features are centred over the batch
    first (distances do not change) for the same reason. A zero distance has zero gradient
    rather than sqrt's NaN.
    """
    if features.dim() < 1 or features.shape[0] < 3:
        got = features.shape[0] if features.dim() else 0
        raise PosenasError(f"the teacher loss needs a batch of at least 3 images (got {got}): "
                           "the correlation of two RDMs needs at least 3 pairs")
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=features.device.type, enabled=False):
        x = features.reshape(features.shape[0], -1).to(dtype)
        x = x - x.mean(dim=0, keepdim=True)
        sq = (x * x).sum(dim=1)
        d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)
        i, j = torch.triu_indices(x.shape[0], x.shape[0], offset=1, device=x.device)
        d2 = d2[i, j]
        positive = d2 > 0
        return torch.where(positive, torch.where(positive, d2, 1.0).sqrt(), 0.0)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two vectors of the same length, differentiable; a constant
    vector gives 0 (eps in the denominator) rather than NaN."""
    if a.shape != b.shape or a.dim() != 1:
        raise PosenasError(f"pearson: expected two vectors of the same length, got shapes "
                           f"{list(a.shape)} and {list(b.shape)} (student and teacher saw different batches?)")
    dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    with torch.autocast(device_type=a.device.type, enabled=False):
        a, b = a.to(dtype), b.to(dtype)
        a, b = a - a.mean(), b - b.mean()
        return (a * b).sum() / (((a * a).sum() + PEARSON_EPS).sqrt() * ((b * b).sum() + PEARSON_EPS).sqrt())


def rdm_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """``1 - mean_i max_j pearson(rdm(teacher[i]), rdm(student[j]))`` (thesis Sec. 3.4).

    ``student``: every cell output of the student; ``teacher``: the teacher's hand-picked
    tensors (:meth:`Teacher.representations`), detached here so no gradient reaches them.
    Both must come from the same batch of images. Each teacher tensor is matched to the
    student tensor that resembles it most, so the gradient of a step flows into those.
    """
    student, teacher = list(student), list(teacher)
    if not student or not teacher:
        raise PosenasError(f"the teacher loss needs at least one student and one teacher tensor; "
                           f"got {len(student)} student and {len(teacher)} teacher tensor(s)")
    batches = {t.shape[0] if t.dim() else 0 for t in student + teacher}
    if len(batches) > 1:
        raise PosenasError(f"the teacher loss compares the same batch of images in student and teacher; "
                           f"got tensors of batch sizes {sorted(batches)}")
    xs = [rdm(x) for x in student]
    device = xs[0].device
    sims = [torch.stack([pearson(y, x) for x in xs]).max()
            for y in (rdm(t.detach()).to(device) for t in teacher)]
    return 1.0 - torch.stack(sims).mean()


def _tensors(output: Any) -> list[torch.Tensor]:
    """A module's output as a list of tensors (a tuple or list, e.g. HRNet's branches, gives its tensors)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for o in output for t in _tensors(o)]
    return []


class Teacher:
    """A frozen model (eval mode, no gradients) whose representations guide a search.

    ``layers`` are module names as in ``model.named_modules()`` (e.g. ``"body.stage2"``); the
    outputs of those modules are what the loss compares, in the order given (a module giving
    a tuple or list, such as an HRNet stage's branches, contributes each of its tensors).
    **Default** (no layers): the model's output tensors, every tensor of
    ``as_outputs(model(images))`` (for HigherHRNet: heatmaps+tags at 1/4 and heatmaps at 1/2).

    A plain object, not an ``nn.Module``: the teacher's weights never join the student's
    parameters, state dict or optimiser, and the student's ``.train()`` leaves it in eval.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] = (), where: str = "teacher model"):
        self.model = unwrap(model)
        self.where = where
        self.layers: tuple[str, ...] = tuple(dict.fromkeys((layers,) if isinstance(layers, str) else layers))
        self.model.eval().requires_grad_(False)
        modules = dict(self.model.named_modules())
        for name in self.layers:
            if not isinstance(name, str) or name not in modules:
                valid = [n for n in modules if n]
                shown = ", ".join(valid[:8]) + (f", ... ({len(valid)} in all)" if len(valid) > 8 else "")
                raise PosenasError(f"{where}: teacher layer {name!r} is no module of the model; "
                                   f"module names include: {shown or '(none)'}")
        self._captured: dict[str, list[torch.Tensor]] = {}
        self._hooks = [modules[name].register_forward_hook(self._hook(name)) for name in self.layers]

    def _hook(self, name: str):
        def capture(module: nn.Module, inputs: Any, output: Any) -> None:
            # a clone: a later in-place op (ReLU(inplace=True)) would otherwise change what was captured
            self._captured[name] = [t.clone() for t in _tensors(output)]
        return capture

    @classmethod
    def from_checkpoint(cls, path: str | Path, layers: Sequence[str] = (),
                        device: str | torch.device = "cpu") -> "Teacher":
        """The plain model of a checkpoint of this project (``model_from_checkpoint``: loaded
        with ``weights_only=True``; a supernet checkpoint gives its arch's model), frozen on
        ``device``. Any checkpoint is accepted; the thesis uses HigherHRNet-W32 trained on COCO."""
        model = model_from_checkpoint(path).model.to(device)
        return cls(model, layers, where=str(path))

    @property
    def device(self) -> torch.device:
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def representations(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's tensors for ``images`` (N, 3, H, W) — the very batch the student sees
        (bottom-up models are fully convolutional, so any size divisible by 32 runs) — computed
        under ``torch.no_grad()``; see the class docstring for which tensors."""
        self.model.eval()  # in case someone switched it back to training (batch-norm statistics)
        self._captured.clear()
        try:
            with torch.no_grad():
                output = self.model(images.to(self.device))
            if not self.layers:
                found = list(as_outputs(output))
            else:
                missing = [n for n in self.layers if n not in self._captured]
                if missing:
                    raise PosenasError(f"{self.where}: teacher layer {missing[0]!r} did not run in the forward pass")
                found = [t for n in self.layers for t in self._captured[n]]
        finally:
            self._captured.clear()
        n = images.shape[0]
        for t in found:
            if not isinstance(t, torch.Tensor) or t.dim() < 2 or t.shape[0] != n:
                shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise PosenasError(f"{self.where}: a teacher tensor has shape {shape}; expected one per image "
                                   f"of the batch of {n} ({', '.join(self.layers) or 'model outputs'})")
        if not found:
            raise PosenasError(f"{self.where}: teacher layers {', '.join(self.layers)} gave no tensors")
        return found
