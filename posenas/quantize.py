"""`posenas export --int8` / `--precision fp16`: reduced-precision ONNX files, checked against FP32.

int8 is ONNX Runtime's static quantisation (``quantize_static``) in QDQ format, calibrated on
real person crops of the dataset's train split made exactly as evaluation makes them (person
box → :class:`~posenas.data.transforms.TopDownTransform` without augmentation → ImageNet
normalisation), ``count`` of them drawn without replacement from ``seed``. The settings were
chosen by measurement (AP on the synthetic val set and ORT latency, side by side:
``benchmarks/quantized_deploy.py``, docs/benchmarks.md "Quantised deployment"):

- **min-max calibration**, 64 crops. ORT's entropy calibrator, as ``quantize_static`` sets it
  up (128 histogram bins for 128 quantised bins), has the full range as its only candidate
  threshold: it measured identical to min-max. Percentile (99.999 %) clipped useful range:
  AP 0.0730 against min-max's 0.0747.
- **uint8 activations, int8 per-channel weights, reduce_range (7-bit weights).** On x86
  without VNNI (this AMD EPYC: AVX2 only) ORT's u8×s8 kernels use ``vpmaddubsw``, which sums
  two u8·s8 products into a saturating int16: 255·127·2 > 32767. 7-bit weights keep every
  pair below it (weights in [-64, 64]: 255·64·2 = 32640). Without reduce_range the heatmaps were off by 0.28 × FP32's
  peak, the val keypoints moved 0.75 px on average and AP fell 0.0737 → 0.0726; with it
  0.034 × peak, 0.41 px, AP 0.0747 (within noise of FP32). uint8 weights (u8u8, no saturation)
  were as accurate but no faster than FP32; int8 activations (s8s8) ran slower than FP32 on
  this CPU (0.86× with one thread).
- **quant_pre_process on.** It changed neither AP nor speed here (PyTorch's exporter already
  folds BatchNorm into the convolutions), but gives the quantiser full shape information and
  silences its warning; it costs well under a second.

Measured speed-up of the chosen int8 over FP32 (one thread): 1.52× on the trained tiny baseline
(128×96), 1.28× on SimpleBaseline-ResNet18 at 256×192 (its transposed convolutions have no int8
kernel in ORT and stay FP32), but 0.74× on S-ViPNAS-MobileNetV3, whose depthwise and grouped
convolutions run slower in int8; with two threads 0.96–1.16×. Tables: docs/benchmarks.md.

fp16 is done with the ``onnx`` package (no extra dependency): float initialisers and
constants become float16, the graph keeps a float32 ``image`` input and ``heatmaps``
output (a Cast at each end), so every caller feeds it as it feeds the FP32 file. ONNX
Runtime's CPU provider has no fp16 convolution kernels on x86: its graph optimiser casts the
graph back to float32 (one Cast is left), so it computes in float32 with fp16-rounded weights
and loses fusions (ReLU as a separate Max, 35 layout reorders instead of 3 on the tiny
baseline): never faster (measured 0.50–1.00× with one thread). The file is for runtimes with
fp16 kernels (GPU, ARM); on this CPU it only halves the file.
bf16 is not offered: ONNX's Conv takes no bfloat16 at the opset posenas exports (18; ORT
rejects such a graph as invalid), and this CPU (no AVX512-BF16, no AMX) would emulate it
anyway (bf16 matmul measured ≈ 0.95 GMAC/s against 31 in FP32).

The 1e-4 parity check of FP32 exports cannot hold for 8-bit arithmetic; instead the
reduced-precision graph is compared with the FP32 one on the dataset-independent
:func:`~posenas.export.real_input` crops, and refused (nothing written) when the argmax
locations of fewer than :data:`MIN_AGREEMENT` of the joints lie within
:data:`AGREEMENT_RADIUS` heatmap pixels of FP32's.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from posenas.errors import PosenasError
from posenas.jsonio import write_bytes
from posenas.runtime import METADATA_PREFIX, ort_session

if TYPE_CHECKING:
    from posenas.codecs.heatmap import HeatmapCodec
    from posenas.keypoints import KeypointSchema

#: Calibration crops by default: on the tiny baseline (step 500, min-max, 8-bit weights) 16 → 64
#: crops raised the argmax agreement with FP32 from 97.8 to 99.3 %; 64 crops calibrate in seconds.
DEFAULT_CALIB_IMAGES = 64
#: Crops of :func:`posenas.export.real_input` the quantised graph is checked on.
CHECK_CROPS = 8
#: A joint agrees when the reduced-precision argmax is within this many heatmap pixels (Chebyshev) of FP32's.
AGREEMENT_RADIUS = 1
#: Fewest agreeing joints (fraction) for the file to be written. Measured: correct int8 graphs of
#: trained models 95-99 %, fp16 100 %, of the tests' random-weight model (heatmaps ~0.5) 81-92 %;
#: broken ones (all-zero calibration images) 5-21 %. Half lies far from both. Untrained,
#: default-initialised nets (flat heatmaps: the argmax is noise) measured 46-71 % and may be refused.
MIN_AGREEMENT = 0.5


def calibration_batches(data: str | Path, codec: HeatmapCodec, schema: KeypointSchema, *,
                        count: int = DEFAULT_CALIB_IMAGES,
                        split: str = "train", seed: int = 0) -> list[np.ndarray]:
    """``count`` normalised ``(1, 3, H, W)`` person crops of ``data``'s ``split``, as evaluation crops them."""
    from posenas.data.layout import load_dataset
    from posenas.data.topdown import TopDownDataset

    check_count(count)
    path = Path(data)
    if not path.exists():
        raise PosenasError(f"{path}: calibration data: no such dataset root or annotation file")
    dataset = load_dataset(path, split)
    if dataset.schema != schema:
        raise PosenasError(f"{path}: calibration data is {dataset.schema.name} but the model predicts {schema.name} joints")
    crops = TopDownDataset(dataset, codec, None)  # no augmentation: the crops deployment sees
    if count > len(crops):
        raise PosenasError(f"{dataset.source}: --calib-images {count}: the {split} split has only {len(crops)} person "
                           "instances")
    chosen = np.sort(np.random.default_rng(seed).choice(len(crops), size=count, replace=False))
    return [crops[int(i)]["image"].numpy()[None] for i in chosen]


def check_count(count: object) -> int:
    """A valid calibration image count, or a one-line error."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise PosenasError(f"--calib-images: expected a positive integer, got {count!r}")
    return int(count)


def _reader(batches: list[np.ndarray]):
    """An ``onnxruntime.quantization.CalibrationDataReader`` over a list of ``image`` arrays."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {"image": x}

    return Reader()


def quantize_int8(fp32: bytes, batches: list[np.ndarray], *, method: str = "minmax", activations: str = "uint8",
                  weights: str = "int8", preprocess: bool = True, reduce_range: bool = True) -> bytes:
    """The QDQ int8 graph of serialised FP32 graph ``fp32``, calibrated on ``batches``; metadata kept.

    Per-channel weights; ``activations`` and ``weights`` uint8 or int8; ``reduce_range``: 7-bit
    weights; ``preprocess``: ORT's ``quant_pre_process`` (shape inference, graph optimisation)
    first. The defaults are the measured choice of the module docstring.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    if method not in methods:
        raise PosenasError(f"calibration method {method!r}: allowed: {', '.join(methods)}")
    for what, value in (("activation", activations), ("weight", weights)):
        if value not in types:
            raise PosenasError(f"{what} type {value!r}: allowed: {', '.join(types)}")
    if not batches:
        raise PosenasError("int8 quantisation: no calibration batches")
    reader = _reader(batches)
    with tempfile.TemporaryDirectory(prefix="posenas-int8-") as tmp:
        src, pre, out = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32)
        try:
            if preprocess:
                quant_pre_process(str(src), str(pre))
                src = pre
            with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
                quantize_static(str(src), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                                reduce_range=reduce_range, activation_type=types[activations],
                                weight_type=types[weights], calibrate_method=methods[method])
        except Exception as e:  # ORT's quantiser raises many kinds
            raise PosenasError(f"int8 quantisation failed: {str(e).splitlines()[0][:200]}") from None
        model = onnx.load(str(out))
    return _with_metadata(model, fp32, {"precision": "int8", "calibration": json.dumps(
        {"images": len(batches), "method": method, "activations": activations, "weights": f"{weights} per channel",
         "preprocess": preprocess, "reduce_range": reduce_range})})


#: (op type, input index) pairs the ONNX spec types as float32 whatever the data type (kept fp32 by :func:`to_fp16`).
_FLOAT32_INPUTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1)}


def to_fp16(fp32: bytes) -> bytes:
    """Serialised FP32 graph ``fp32`` with float16 weights and arithmetic; float32 ``image`` in, ``heatmaps`` out."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(fp32)
    graph = model.graph
    keep = {node.input[i] for node in graph.node for (op, i) in _FLOAT32_INPUTS
            if node.op_type == op and i < len(node.input)}

    def half(tensor: onnx.TensorProto) -> onnx.TensorProto:
        if tensor.data_type != TensorProto.FLOAT or tensor.name in keep:
            return tensor
        return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name)

    for i, init in enumerate(graph.initializer):
        graph.initializer[i].CopyFrom(half(init))
    for node in graph.node:
        if node.op_type == "Constant" and not any(o in keep for o in node.output):
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    attr.t.CopyFrom(half(attr.t))
        if node.op_type in ("Cast", "CastLike") or node.op_type == "ConstantOfShape":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    attr.t.CopyFrom(half(attr.t))
    casts_in, casts_out = [], []
    for inp in graph.input:
        if inp.type.tensor_type.elem_type == TensorProto.FLOAT:
            inner = inp.name + "_fp16"
            for node in graph.node:
                node.input[:] = [inner if n == inp.name else n for n in node.input]
            casts_in.append(helper.make_node("Cast", [inp.name], [inner], to=TensorProto.FLOAT16, name=inner + "_cast"))
    for out in graph.output:
        if out.type.tensor_type.elem_type == TensorProto.FLOAT:
            inner = out.name + "_fp16"
            for node in graph.node:
                node.output[:] = [inner if n == out.name else n for n in node.output]
                node.input[:] = [inner if n == out.name else n for n in node.input]
            casts_out.append(helper.make_node("Cast", [inner], [out.name], to=TensorProto.FLOAT, name=out.name + "_cast"))
    nodes = casts_in + list(graph.node) + casts_out
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # float32 intermediate types are stale; ORT infers them again
    return _with_metadata(model, fp32, {"precision": "fp16"})


def _with_metadata(model, fp32: bytes, extra: dict[str, str]) -> bytes:
    """``model`` serialised with the posenas metadata of ``fp32`` plus ``extra`` (``posenas.`` keys)."""
    import onnx

    source = {p.key: p.value for p in onnx.load_from_string(fp32).metadata_props}
    merged = {k: v for k, v in source.items() if k.startswith(METADATA_PREFIX)}
    merged.update({METADATA_PREFIX + k: v for k, v in extra.items()})
    del model.metadata_props[:]
    for key, value in merged.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def compare(fp32: bytes, candidate: bytes, inputs: list[np.ndarray]) -> dict:
    """How far ``candidate``'s heatmaps are from ``fp32``'s on ``inputs`` (each ``(1, 3, H, W)``).

    ``max_abs_diff`` / ``relative`` (÷ FP32's peak |value|), ``agreement``: the fraction of
    joints whose argmax lies within :data:`AGREEMENT_RADIUS` heatmap pixels of FP32's.
    """
    reference, other = ort_session(fp32), ort_session(candidate)
    ref = np.concatenate([reference.run(None, {"image": x})[0] for x in inputs])
    out = np.concatenate([other.run(None, {"image": x})[0] for x in inputs]).astype(np.float32)
    n, k, h, w = ref.shape
    a, b = ref.reshape(n, k, -1).argmax(2), out.reshape(n, k, -1).argmax(2)
    close = (np.abs(a // w - b // w) <= AGREEMENT_RADIUS) & (np.abs(a % w - b % w) <= AGREEMENT_RADIUS)
    diff = float(np.abs(ref - out).max()) if np.isfinite(out).all() else float("inf")
    peak = float(np.abs(ref).max())
    return {"max_abs_diff": diff, "relative": diff / peak if peak > 0 else float("inf"),
            "agreement": float(close.mean()), "joints": int(close.size), "crops": n, "radius": AGREEMENT_RADIUS}


def check_inputs(input_size: tuple[int, int], count: int = CHECK_CROPS) -> list[np.ndarray]:
    """The dataset-independent crops the reduced-precision graph is checked on."""
    from posenas.export import real_input

    return [real_input(input_size, seed).numpy() for seed in range(count)]


def training_data(checkpoint: dict, path: str | Path) -> tuple[Path, str]:
    """The training data root and split a checkpoint records, or a one-line error asking for --calib-data."""
    data = (checkpoint.get("config") or {}).get("data") or {}
    if not data.get("root"):
        raise PosenasError(f"{path}: the checkpoint records no training data; give --calib-data DIR "
                           "(a dataset root whose train split holds calibration crops)")
    root = Path(data["root"])
    if not root.exists():
        raise PosenasError(f"{path}: its training data {root} (config data.root, relative to the current directory) "
                           "does not exist; give --calib-data DIR")
    return root, data.get("train_split") or "train"


def export_reduced(checkpoint: str | Path, out: str | Path, precision: str, *, calib_data: str | Path | None = None,
                   calib_images: int = DEFAULT_CALIB_IMAGES, calib_split: str | None = None, seed: int = 0,
                   opset: int = 18, dynamic_batch: bool = False, method: str = "minmax", activations: str = "uint8",
                   preprocess: bool = True, rewrite: bool = True, min_agreement: float | None = None) -> dict:
    """Export ``checkpoint`` at ``precision`` (int8 or fp16), check it against FP32, then write ``out``.

    The FP32 graph is made (``rewrite``: from the faster equivalent model) and its 1e-4 parity
    with PyTorch checked by :func:`posenas.export.export_onnx`; nothing is written to ``out``
    unless every check passes. ``min_agreement`` overrides :data:`MIN_AGREEMENT` (benchmarks: 0).
    Returns the comparison (:func:`compare`) plus ``precision``, ``bytes`` and ``fp32_bytes``.
    """
    from posenas.checkpoint import model_from_checkpoint
    from posenas.export import export_onnx

    if precision not in ("int8", "fp16"):
        raise PosenasError(f"--precision: {precision!r} is not a reduced precision; allowed: int8, fp16")
    loaded = model_from_checkpoint(checkpoint)
    batches = None
    if precision == "int8":
        check_count(calib_images)
        if calib_data is None:
            calib_data, split = training_data(loaded.checkpoint, checkpoint)
        else:
            split = "train"
        # the crops first: bad data fails in seconds, before the export
        batches = calibration_batches(calib_data, loaded.codec, loaded.schema, count=calib_images,
                                      split=calib_split or split, seed=seed)
    elif calib_data is not None:
        raise PosenasError("--calib-data: only int8 export is calibrated")
    with tempfile.TemporaryDirectory(prefix="posenas-export-") as tmp:
        export_onnx(checkpoint, Path(tmp) / "fp32.onnx", opset=opset, dynamic_batch=dynamic_batch, rewrite=rewrite)
        fp32 = (Path(tmp) / "fp32.onnx").read_bytes()
    data = (quantize_int8(fp32, batches, method=method, activations=activations, preprocess=preprocess)
            if precision == "int8" else to_fp16(fp32))
    report = compare(fp32, data, check_inputs(loaded.codec.input_size))
    limit = MIN_AGREEMENT if min_agreement is None else min_agreement
    if not report["agreement"] >= limit:
        raise PosenasError(
            f"{checkpoint}: the {precision} graph is broken: argmax locations agree with FP32 on "
            f"{report['agreement']:.0%} of {report['joints']} joints (need {limit:.0%}, within {AGREEMENT_RADIUS} "
            f"heatmap px; max abs heatmap difference {report['max_abs_diff']:.3g} = {report['relative']:.3g} x FP32's "
            "peak); nothing written")
    write_bytes(out, data)
    return {**report, "precision": precision, "bytes": len(data), "fp32_bytes": len(fp32),
            **({"calibration": {"data": str(calib_data), "split": calib_split or split, "images": calib_images}}
               if batches is not None else {})}
