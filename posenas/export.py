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


def onnx_bytes(model: torch.nn.Module, input_size: tuple[int, int], *, opset: int = 18, dynamic_batch: bool = False,
               metadata: dict[str, str] | None = None, where: str = "model", rewrite: bool = True) -> bytes:
    """The serialised ONNX graph of a plain model (input ``image``, output ``heatmaps``; a model with
    several outputs, one per resolution, names the later ones ``heatmaps_1``, ...).

    ``rewrite`` (default): export :func:`posenas.export_rewrite.rewrite_for_export`'s copy, the
    same function as a graph ONNX Runtime runs faster; ``model`` itself is left as it is."""
    model = model.eval()
    if rewrite:
        try:
            model = rewrite_for_export(model, input_size)[0]
        except RuntimeError as e:
            raise PosenasError(f"{where}: export rewrite failed ({str(e).splitlines()[0][:200]}); "
                               "export without it (--no-rewrite)") from None
    example = torch.zeros(1, 3, *input_size)
    with torch.no_grad():
        count = len(as_outputs(model(example)))  # HigherHRNet: one output per resolution
    names = ["heatmaps"] + [f"heatmaps_{i}" for i in range(1, count)]
    dynamic = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(model, (example,), input_names=["image"], output_names=names,
                                        dynamo=True, opset_version=opset, dynamic_shapes=dynamic, verbose=False)
        except Exception as e:  # the exporter raises many kinds
            raise PosenasError(f"{where}: ONNX export failed: {str(e).splitlines()[0][:200]}") from None
    proto = program.model_proto
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, value
    return proto.SerializeToString()


def _check_parity(model: torch.nn.Module, data: bytes, inputs: dict[str, torch.Tensor], where: str) -> dict:
    """Max abs heatmap difference of ONNX Runtime against ``model`` per input; PosenasError past the tolerance."""
    session = ort_session(data)
    report, limits = {}, {}
    with torch.no_grad():
        for name, x in inputs.items():
            ours = [o.numpy() for o in as_outputs(model(x))]
            theirs = session.run(None, {"image": x.numpy()})
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
    stem = out.name[: -len(".onnx")] if out.name.endswith(".onnx") else out.name
    return out.with_name(f"{stem}.exit{exit_number}.onnx")


def export_onnx(checkpoint: str | Path, out: str | Path, *, opset: int = 18, dynamic_batch: bool = False,
                rewrite: bool = True) -> dict:
    """Export (the rewritten graph unless ``rewrite`` is False), check parity against the original
    PyTorch model, then write ``out``; returns the parity report.

    A multi-exit model (``exit_count`` > 1, 3M-Pose with EELs) also gets one file per early exit
    beside ``out`` (:func:`exit_path`: NAME.exit1.onnx, ...), each that exit alone
    (:class:`~posenas.spaces.threem.ExitModel`, metadata ``exit`` and ``exit_layer``) and checked
    the same way; nothing is written unless every one passes. The report's ``exits`` lists them."""
    loaded = model_from_checkpoint(checkpoint)
    model = loaded.model.eval()
    h, w = loaded.codec.input_size
    meta = {
        "format": "posenas-onnx",
        "arch": json.dumps(loaded.arch.to_json()),
        "schema": loaded.schema.name,
        "codec": json.dumps(loaded.codec.to_dict()),
        "dynamic_batch": json.dumps(dynamic_batch),
    }
    data = onnx_bytes(model, (h, w), opset=opset, dynamic_batch=dynamic_batch, metadata=meta, where=str(checkpoint),
                      rewrite=rewrite)
    generator = torch.Generator().manual_seed(0)
    inputs = {"random": torch.randn(1, 3, h, w, generator=generator), "real": real_input((h, w))}
    if dynamic_batch:
        inputs["random batch of 3"] = torch.randn(3, 3, h, w, generator=generator)
    report = _check_parity(model, data, inputs, str(checkpoint))
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
    return {"max_abs_diff": report, "opset": opset, "dynamic_batch": dynamic_batch, "bytes": len(data),
            "rewrite": rewrite, **({"exits": exits} if exits else {})}
