"""`posenas export`: a checkpoint's plain model to ONNX, checked against PyTorch.

The ONNX file is self-describing like the checkpoint: its metadata holds the
architecture JSON, keypoint schema and codec, so :mod:`posenas.runtime` runs it with the
same pre- and post-processing and no other file. By default the graph exported is
:mod:`posenas.export_rewrite`'s faster equivalent of the model; the export is written only
after the parity check against the original PyTorch model passes (max abs heatmap
difference ≤ 1e-4 × the heatmaps' peak, on random and real inputs).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from posenas.checkpoint import model_from_checkpoint
from posenas.data.topdown import normalize_image
from posenas.data.transforms import TopDownTransform
from posenas.engine.task import as_outputs
from posenas.errors import PosenasError
from posenas.export_rewrite import rewrite_for_export
from posenas.jsonio import write_bytes
from posenas.runtime import METADATA_PREFIX, ort_session

#: Allowed max abs heatmap difference, relative to the PyTorch heatmaps' peak |value|: an absolute
#: limit would pass anything on an untrained net whose heatmaps are ~1e-8.
PARITY_TOLERANCE = 1e-4
#: ONNX input names: the crop, and a T-ViPNet's previous heatmaps.
INPUT_NAMES = ["image", "previous_heatmaps"]


def real_input(input_size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """A normalised crop of a synthetic-people image: realistic statistics, no dataset needed."""
    import cv2

    from posenas.keypoints import COCO17
    from posenas.synthetic.scene import SceneConfig, render_image

    rendered = render_image(seed, SceneConfig())
    box = rendered.people[0].bbox if rendered.people else np.array([0, 0, 256, 256], np.float32)
    sample = TopDownTransform(input_size, COCO17, None)(
        cv2.cvtColor(rendered.image, cv2.COLOR_BGR2RGB), np.zeros((17, 3), np.float32), box,
        np.random.default_rng(seed))
    return torch.from_numpy(normalize_image(sample.crop))[None]


def onnx_proto(module: torch.nn.Module, example: tuple[torch.Tensor, ...], input_names: list[str],
               output_names: list[str], *, opset: int = 18, dynamic_shapes=None):
    """``module`` traced on ``example`` by the dynamo exporter, its chatter silenced: the ModelProto
    (the one exporter call of the project; a benchmark exporting a single block uses it too)."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, example, input_names=input_names, output_names=output_names,
                                    dynamo=True, opset_version=opset, dynamic_shapes=dynamic_shapes, verbose=False)
    return program.model_proto


def onnx_bytes(model: torch.nn.Module, input_size: tuple[int, int], *, opset: int = 18, dynamic_batch: bool = False,
               metadata: dict[str, str] | None = None, where: str = "model", rewrite: bool = True,
               heatmap_input: tuple[int, int, int] | None = None) -> bytes:
    """The serialised ONNX graph of a plain model (input ``image``, output ``heatmaps``; a model with
    several outputs, one per resolution, names the later ones ``heatmaps_1``, ...).

    ``rewrite`` (default): export :func:`posenas.export_rewrite.rewrite_for_export`'s copy, the
    same function as a graph ONNX Runtime runs faster; ``model`` itself is left as it is.
    ``heatmap_input`` ``(K, h, w)``: the model also takes ``previous_heatmaps`` (a T-ViPNet's fusion
    input); such a graph is exported as it is (the rewrites
    trace one input)."""
    model = model.eval()
    if rewrite and heatmap_input is None:
        try:
            model = rewrite_for_export(model, input_size)[0]
        except RuntimeError as e:
            raise PosenasError(f"{where}: export rewrite failed ({str(e).splitlines()[0][:200]}); "
                               "export without it (--no-rewrite)") from None
    example = (torch.zeros(1, 3, *input_size),) + ((torch.zeros(1, *heatmap_input),) if heatmap_input else ())
    with torch.no_grad():
        count = len(as_outputs(model(*example)))  # HigherHRNet: one output per resolution
    names = ["heatmaps"] + [f"heatmaps_{i}" for i in range(1, count)]
    batch = torch.export.Dim("batch", min=1, max=1024)
    dynamic = tuple({0: batch} for _ in example) if dynamic_batch else None
    try:
        proto = onnx_proto(model, example, INPUT_NAMES[:len(example)], names, opset=opset, dynamic_shapes=dynamic)
    except Exception as e:  # the exporter raises many kinds
        raise PosenasError(f"{where}: ONNX export failed: {str(e).splitlines()[0][:200]}") from None
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, value
    return proto.SerializeToString()


def _check_parity(model: torch.nn.Module, data: bytes, inputs: dict[str, torch.Tensor | tuple[torch.Tensor, ...]],
                  where: str) -> dict:
    """Max abs heatmap difference of ONNX Runtime against ``model`` per input (a tensor, or the
    tuple of ``image`` and ``heatmaps``); PosenasError past the tolerance."""
    session = ort_session(data)
    report, limits = {}, {}
    with torch.no_grad():
        for name, x in inputs.items():
            args = x if isinstance(x, tuple) else (x,)
            ours = [o.numpy() for o in as_outputs(model(*args))]
            theirs = session.run(None, {n: a.numpy() for n, a in zip(INPUT_NAMES, args)})
            report[name] = max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs))
            limits[name] = PARITY_TOLERANCE * max(float(np.abs(a).max()) for a in ours)
    worst = max(report, key=lambda k: report[k] - limits[k])
    if report[worst] > limits[worst]:
        raise PosenasError(
            f"{where}: ONNX parity failed on the {worst} input: max abs heatmap difference "
            f"{report[worst]:.3g} > {limits[worst]:.3g} ({PARITY_TOLERANCE:g} x the heatmaps' peak); nothing written"
        )
    return report


def exit_path(out: str | Path, exit_number: int) -> Path:
    """Where early exit ``exit_number`` (1-based) of a multi-exit model is exported beside ``out``: NAME.exitN.onnx."""
    out = Path(out)
    stem = out.name.removesuffix(".onnx")
    return out.with_name(f"{stem}.exit{exit_number}.onnx")


def frame_path(out: str | Path, frame: int) -> Path:
    """Where T-ViPNet ``frame`` (1-based) of a video model is exported beside ``out``: NAME.frameN.onnx."""
    out = Path(out)
    stem = out.name.removesuffix(".onnx")
    return out.with_name(f"{stem}.frame{frame}.onnx")


def _video_frames(model: torch.nn.Module, meta: dict, codec, num_joints: int, inputs: dict, opset: int,
                  dynamic_batch: bool, where: str) -> list[dict]:
    """Each T-ViPNet of a video model as its own graph (inputs ``image`` and, with a fusion,
    ``previous_heatmaps``), parity-checked like the key net with the previous heatmaps of its input."""
    out = []
    for t, net in enumerate(model.frames, 1):
        net = net.eval()
        shape = (num_joints, *codec.heatmap_size) if net.fusion is not None else None
        frame_inputs = inputs
        if shape is not None:
            generator = torch.Generator().manual_seed(t)
            frame_inputs = {name: (x, torch.rand(len(x), *shape, generator=generator)) for name, x in inputs.items()}
        frame_meta = {**meta, "frame": json.dumps(t), "fusion": json.dumps(net.fusion is not None)}
        here = f"{where} (T-ViPNet {t})"
        data = onnx_bytes(net, codec.input_size, opset=opset, dynamic_batch=dynamic_batch, metadata=frame_meta,
                          where=here, heatmap_input=shape)
        out.append({"frame": t, "fusion": shape is not None, "data": data, "bytes": len(data),
                    "max_abs_diff": _check_parity(net, data, frame_inputs, here)})
    return out


def export_onnx(checkpoint: str | Path, out: str | Path, *, opset: int = 18, dynamic_batch: bool = False,
                rewrite: bool = True) -> dict:
    """Export (the rewritten graph unless ``rewrite`` is False), check parity against the original
    PyTorch model, then write ``out``; returns the parity report.

    A multi-exit model (``exit_count`` > 1, 3M-Pose with EELs) also gets one file per early exit
    beside ``out`` (:func:`exit_path`: NAME.exit1.onnx, ...), each that exit alone
    (:class:`~posenas.spaces.threem.ExitModel`, metadata ``exit`` and ``exit_layer``) and checked
    the same way; nothing is written unless every one passes. The report's ``exits`` lists them.

    A video model (T-ViPNAS) exports its key net as ``out`` and each T-ViPNet beside it
    (:func:`frame_path`: NAME.frame1.onnx, ...), with its fusion input ``previous_heatmaps``; the
    report's ``frames`` lists them."""
    loaded = model_from_checkpoint(checkpoint)
    model = loaded.model.eval()
    video = getattr(loaded.arch, "video", False)
    h, w = loaded.codec.input_size
    meta = {
        "format": "posenas-onnx",
        "arch": json.dumps(loaded.arch.to_json()),
        "schema": loaded.schema.name,
        "codec": json.dumps(loaded.codec.to_dict()),
        "dynamic_batch": json.dumps(dynamic_batch),
    }
    main = model.key if video else model  # a video model's forward is its key net
    data = onnx_bytes(main, (h, w), opset=opset, dynamic_batch=dynamic_batch, metadata=meta, where=str(checkpoint),
                      rewrite=rewrite)
    generator = torch.Generator().manual_seed(0)
    inputs = {"random": torch.randn(1, 3, h, w, generator=generator), "real": real_input((h, w))}
    if dynamic_batch:
        inputs["random batch of 3"] = torch.randn(3, 3, h, w, generator=generator)
    report = _check_parity(main, data, inputs, str(checkpoint))
    frames = _video_frames(model, meta, loaded.codec, loaded.schema.num_joints, inputs, opset, dynamic_batch, str(checkpoint)) if video else []
    exits = []
    count = getattr(model, "exit_count", 1)
    if isinstance(count, int) and count > 1 and hasattr(model, "advance"):
        from posenas.engine.dynamic import exit_layers
        from posenas.spaces.threem import ExitModel

        layers = exit_layers(model)
        for e in range(count - 1):
            path = exit_path(out, e + 1)
            exit_model = ExitModel(model, e).eval()
            exit_meta = {**meta, "exit": json.dumps(e), "exit_layer": json.dumps(layers[e])}
            where = f"{checkpoint} (early exit {e + 1}, layer {layers[e]})"
            exit_data = onnx_bytes(exit_model, (h, w), opset=opset, dynamic_batch=dynamic_batch, metadata=exit_meta,
                                   where=where, rewrite=rewrite)
            exits.append({"path": str(path), "exit": e, "layer": layers[e], "data": exit_data,
                          "bytes": len(exit_data), "max_abs_diff": _check_parity(exit_model, exit_data, inputs, where)})
    write_bytes(out, data)
    for entry in exits:
        write_bytes(entry["path"], entry.pop("data"))
    for entry in frames:
        entry["path"] = str(frame_path(out, entry["frame"]))
        write_bytes(entry["path"], entry.pop("data"))
    return {"max_abs_diff": report, "opset": opset, "dynamic_batch": dynamic_batch, "bytes": len(data),
            "rewrite": rewrite, **({"exits": exits} if exits else {}), **({"frames": frames} if frames else {})}
