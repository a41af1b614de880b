"""Self-describing checkpoints: everything needed to rebuild and run a model, and to resume.

A checkpoint is a dict of tensors and plain types only, so it loads with
``torch.load(weights_only=True)`` (nothing is unpickled):

``format``/``format_version``; ``arch`` (the architecture JSON, with its ``space``);
``schema`` (keypoint schema name); ``codec`` (heatmap codec settings, which include the
input size); ``state_dict``; optionally ``config`` (the resolved experiment config),
``train_state`` (optimiser, scheduler, step, epoch, RNG) and ``metrics``.
Writes are atomic: a temp file in the same folder, then a rename.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from posenas.arch import arch_from_json, build_model
from posenas.codecs.heatmap import HeatmapCodec
from posenas.errors import PosenasError
from posenas.keypoints import KeypointSchema, get_schema

FORMAT = "posenas-checkpoint"
FORMAT_VERSION = 1
_REQUIRED = ("arch", "schema", "codec", "state_dict")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus the format marker) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(data, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint (``weights_only=True``: tensors and plain types only)."""
    path = Path(path)
    if not path.is_file():
        raise PosenasError(f"{path}: no such checkpoint file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a bad file: zip, pickle, EOF, runtime
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise PosenasError(f"{path}: not a readable checkpoint (corrupt, truncated or not a torch file): {reason}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PosenasError(f"{path}: not a posenas checkpoint (no 'format': {FORMAT!r} marker)")
    if data.get("format_version") != FORMAT_VERSION:
        raise PosenasError(
            f"{path}: checkpoint format version {data.get('format_version')!r}; this posenas reads {FORMAT_VERSION}"
        )
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise PosenasError(f"{path}: checkpoint lacks field(s) {', '.join(missing)}")
    return data


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, with what is needed to feed it and read its output."""

    model: nn.Module
    arch: Any
    schema: KeypointSchema
    codec: HeatmapCodec
    checkpoint: dict[str, Any]


def model_from_checkpoint(path: str | Path) -> LoadedModel:
    """Rebuild the plain model of a checkpoint, with no other file, in eval mode."""
    ckpt = load_checkpoint(path)
    where = f"{path}: field 'arch'"
    arch = arch_from_json(ckpt["arch"], where)
    try:
        schema = get_schema(ckpt["schema"])
        codec = HeatmapCodec.from_dict(ckpt["codec"])
    except PosenasError as e:
        raise PosenasError(f"{path}: {e}") from None
    model = build_model(arch, schema.num_joints)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "mismatch"
        raise PosenasError(f"{path}: weights do not fit the architecture in the checkpoint: {first}") from None
    model.eval()
    return LoadedModel(model, arch, schema, codec, ckpt)
