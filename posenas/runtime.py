"""Runtimes: a model from a PyTorch checkpoint or an exported ONNX file, used the same way.

:class:`OnnxPoseModel` behaves like the plain ``nn.Module`` where the prediction path
needs it (called on an image batch, returns heatmaps; ``eval``/``train``/``to`` are
no-ops), so evaluation and inference share every line of pre- and post-processing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from posenas.arch import arch_from_json
from posenas.checkpoint import LoadedModel, model_from_checkpoint
from posenas.codecs import codec_from_dict
from posenas.errors import PosenasError
from posenas.keypoints import get_schema

RUNTIMES = ("torch", "onnx")
#: Keys of the posenas metadata in exported ONNX files.
METADATA_PREFIX = "posenas."


def ort_session(source: str | bytes, threads: int | None = None, level=None):
    """An ONNX Runtime CPU session with all graph optimisations (or ``level``) and ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = level if level is not None else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OnnxPoseModel:
    """An ONNX Runtime session with the call signature of the exported module."""

    training = False

    def __init__(self, path: str | Path, threads: int | None = None, *, data: bytes | None = None):
        """Open an exported file (``path``), or an in-memory graph (``data``, for profiling)."""
        try:
            self.session = ort_session(data if data is not None else str(path), threads)
        except Exception as e:  # ORT raises its own exception types for unreadable models
            raise PosenasError(f"{path}: not a readable ONNX model: {str(e).splitlines()[0][:160]}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if data is None and meta.get(METADATA_PREFIX + "format") != "posenas-onnx":
            raise PosenasError(f"{path}: not exported by posenas (no {METADATA_PREFIX}format metadata)")
        self.metadata = {k[len(METADATA_PREFIX):]: v for k, v in meta.items() if k.startswith(METADATA_PREFIX)}
        self.dynamic_batch = json.loads(self.metadata.get("dynamic_batch", "false"))
        self.input_names = [i.name for i in self.session.get_inputs()]

    @classmethod
    def from_bytes(cls, data: bytes, threads: int | None = None) -> "OnnxPoseModel":
        return cls("<in-memory ONNX graph>", threads, data=data)

    def __call__(self, images: torch.Tensor, heatmaps: torch.Tensor | None = None
                 ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The heatmaps (a tuple, one per resolution, for a model with several outputs);
        ``heatmaps``: a T-ViPNet's fusion input (ignored by a graph without one)."""
        feeds = {"image": images.detach().cpu().numpy().astype(np.float32, copy=False)}
        if heatmaps is not None and "previous_heatmaps" in self.input_names:
            feeds["previous_heatmaps"] = heatmaps.detach().cpu().numpy().astype(np.float32, copy=False)
        if self.dynamic_batch:
            outs = self.session.run(None, feeds)
        else:  # exported for batch 1
            n = len(feeds["image"])
            runs = [self.session.run(None, {k: v[i : i + 1] for k, v in feeds.items()}) for i in range(n)]
            outs = [np.concatenate([r[j] for r in runs]) for j in range(len(runs[0]))]
        tensors = tuple(torch.from_numpy(o) for o in outs)
        return tensors[0] if len(tensors) == 1 else tensors

    def eval(self) -> "OnnxPoseModel":
        return self

    def train(self, mode: bool = True) -> "OnnxPoseModel":
        return self

    def to(self, device) -> "OnnxPoseModel":
        return self


class OnnxVideoModel:
    """An exported video model: the key net's file and one file per T-ViPNet beside it
    (``NAME.frameN.onnx``), with the interface :mod:`posenas.engine.video` reads."""

    training = False

    def __init__(self, path: str | Path, frames: int, threads: int | None = None):
        from posenas.export import frame_path

        self.key = OnnxPoseModel(path, threads)
        self.frames = []
        for t in range(1, frames + 1):
            p = frame_path(path, t)
            if not p.is_file():
                raise PosenasError(f"{path}: a video model's T-ViPNet {t} should be beside it as {p.name}; "
                                   "export the checkpoint again (posenas export writes them all)")
            net = OnnxPoseModel(p, threads)
            if net.metadata.get("frame") != json.dumps(t) or net.metadata.get("arch") != self.key.metadata.get("arch"):
                raise PosenasError(f"{p}: not T-ViPNet {t} of {path} (its metadata names another model or frame)")
            self.frames.append(net)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.key(images)

    def frame_nets(self) -> list:
        return list(self.frames)

    def eval(self) -> "OnnxVideoModel":
        return self

    def train(self, mode: bool = True) -> "OnnxVideoModel":
        return self

    def to(self, device) -> "OnnxVideoModel":
        return self


def load_model(path: str | Path, runtime: str = "torch", threads: int | None = None) -> LoadedModel:
    """A checkpoint for ``torch``, an exported ``.onnx`` file for ``onnx``."""
    if runtime not in RUNTIMES:
        raise PosenasError(f"--runtime: unknown runtime {runtime!r}; allowed: {', '.join(RUNTIMES)}")
    if runtime == "torch":
        if str(path).endswith(".onnx"):
            raise PosenasError(f"{path}: an ONNX file; run it with --runtime onnx")
        return model_from_checkpoint(path)
    if not Path(path).is_file():
        raise PosenasError(f"{path}: no such ONNX file")
    if not str(path).endswith(".onnx"):
        raise PosenasError(f"{path}: --runtime onnx runs an exported model; make one with `posenas export {path} --onnx OUT.onnx`")
    model = OnnxPoseModel(path, threads)
    meta = model.metadata
    try:
        arch = arch_from_json(json.loads(meta["arch"]), f"{path}: metadata arch")
        schema = get_schema(meta["schema"])
        codec = codec_from_dict(json.loads(meta["codec"]))
    except (KeyError, json.JSONDecodeError) as e:
        raise PosenasError(f"{path}: incomplete posenas metadata: {e}") from None
    if getattr(arch, "video", False):
        if "frame" in meta:
            raise PosenasError(f"{path}: one T-ViPNet of a video model; run the key net's file (without .frameN)")
        model = OnnxVideoModel(path, len(arch.frames), threads)
    return LoadedModel(model, arch, schema, codec, {})
