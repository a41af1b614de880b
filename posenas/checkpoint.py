"""Self-describing checkpoints: everything needed to rebuild and run a model, and to resume.

A checkpoint is a dict of tensors and plain types only, so it loads with
``torch.load(weights_only=True)`` (nothing is unpickled):

``format``/``format_version``; ``arch`` (the architecture JSON, with its ``space``);
``schema`` (keypoint schema name); ``codec`` (heatmap codec settings, which include the
input size); ``state_dict``; optionally ``config`` (the resolved experiment config),
``train_state`` (optimiser, scheduler, step, epoch, RNG) and ``metrics``. A supernet
checkpoint adds ``supernet`` (what it was built over); it loads as the plain model of
its ``arch`` with the weights taken from the supernet.
Writes are atomic: a temp file in the same folder, then a rename.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from posenas.arch import arch_from_json, build_model
from posenas.codecs import AssociativeEmbeddingCodec, HeatmapCodec, codec_from_dict
from posenas.errors import PosenasError
from posenas.jsonio import write_bytes
from posenas.keypoints import KeypointSchema, get_schema
from posenas.spaces.supernets import build_supernet, subnet_state

FORMAT = "posenas-checkpoint"
FORMAT_VERSION = 1
_REQUIRED = ("arch", "schema", "codec", "state_dict")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus the format marker) atomically."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, buffer)
    write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint (``weights_only=True``: tensors and plain types only)."""
    path = Path(path)
    if not path.is_file():
        raise PosenasError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise PosenasError(f"not a posenas checkpoint (or corrupt): {path} (an empty file)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a bad file: zip, pickle, EOF, runtime
        # Our words only: torch's text runs over lines, carries terminal colour codes, and for a
        # file holding Python objects advises loading untrusted files with weights_only=False.
        objects = "Unsupported global" in str(e)
        raise PosenasError(f"not a posenas checkpoint (or corrupt): {path}"
                           + (" (it holds pickled Python objects, which no posenas checkpoint does; not loaded)"
                              if objects else "")) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PosenasError(f"not a posenas checkpoint (or corrupt): {path} (no 'format': {FORMAT!r} marker)")
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
    codec: HeatmapCodec | AssociativeEmbeddingCodec  # top-down or bottom-up (engine/task.py)
    checkpoint: dict[str, Any]


def check_heatmap_size(model: nn.Module, codec: HeatmapCodec | AssociativeEmbeddingCodec,
                       where: str = "config.data.input_size") -> None:
    """The model must map the codec's input size to its heatmap size(s) (SimpleBaselines: sizes divisible by 32)."""
    from posenas.engine.task import task_of_codec

    task_of_codec(codec).check_model(model, codec, where)


def load_weights(model: nn.Module, state_dict: Any, path: str | Path) -> None:
    """``load_state_dict`` with a one-line error when the weights do not fit the architecture."""
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError, KeyError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PosenasError(f"{path}: weights do not fit the architecture in the checkpoint: {first}") from None


def model_from_checkpoint(path: str | Path) -> LoadedModel:
    """Rebuild the plain model of a checkpoint, with no other file, in eval mode."""
    ckpt = load_checkpoint(path)
    arch = arch_from_json(ckpt["arch"], f"{path}: field 'arch'")
    if not isinstance(ckpt["schema"], str):
        raise PosenasError(f"{path}: field 'schema': expected a schema name, got {ckpt['schema']!r}")
    try:
        schema = get_schema(ckpt["schema"])
        codec = codec_from_dict(ckpt["codec"])
    except PosenasError as e:
        raise PosenasError(f"{path}: {e}") from None
    model = build_model(arch, schema.num_joints)
    if "supernet" in ckpt:  # a supernet checkpoint runs as the plain model of its 'arch', weights inherited
        load_weights(model, subnet_state(supernet_from_checkpoint(ckpt, path), arch, str(path)), path)
    else:
        load_weights(model, ckpt["state_dict"], path)
    check_heatmap_size(model, codec, f"{path}: field 'codec'.input_size")
    model.eval()
    return LoadedModel(model, arch, schema, codec, ckpt)


def supernet_from_checkpoint(ckpt: dict[str, Any], path: str | Path) -> nn.Module:
    """Rebuild the supernet of a loaded supernet checkpoint dict, weights loaded."""
    try:
        num_joints = get_schema(ckpt["schema"]).num_joints
    except PosenasError as e:
        raise PosenasError(f"{path}: {e}") from None
    supernet = build_supernet(ckpt.get("supernet"), num_joints, str(path))
    load_weights(supernet, ckpt["state_dict"], path)
    return supernet


def inherited_state(path: str | Path, arch_json: dict) -> dict:
    """Weights for the plain model of ``arch_json`` from checkpoint ``path``: a supernet's
    slices for that arch, or a plain checkpoint of the very same arch."""
    ckpt = load_checkpoint(path)
    arch = arch_from_json(arch_json)
    if "supernet" in ckpt:
        return subnet_state(supernet_from_checkpoint(ckpt, path), arch, str(path))
    if ckpt["arch"] != arch.to_json():
        raise PosenasError(f"{path}: holds the weights of another architecture ({ckpt['arch'].get('space')}); "
                           "init_from needs the same arch or a supernet that contains it")
    return ckpt["state_dict"]
