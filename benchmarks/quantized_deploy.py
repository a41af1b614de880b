"""Quantised deployment (issue 17, item 3): AP and speed of FP32, int8 and fp16 ONNX exports side by side.

Run: flock /tmp/cpu.lock .venv/bin/python -W ignore benchmarks/quantized_deploy.py
     --checkpoint RUN/checkpoints/last.pt [--checkpoint ...] [--data data/synthetic/coco]
     [--calib-data DIR] [--calib-images 64] [--runs 30] [--rounds 5] [--variants minmax-u8s8,...]
     [--speed-arch simplebaseline-resnet18 --speed-arch vipnas/s-vipnas-mobilenetv3 --speed-input 256x192]
     [--out /tmp/runs17/H2/bench]

For each checkpoint: ``posenas export`` (FP32, parity-checked), ``--int8`` and ``--precision
fp16`` with their defaults, through :func:`posenas.quantize.export_reduced` (the command's
path; its refusal is off here so that every file is measured, the table shows the agreement it
judges). Then each file's val AP through the function behind ``posenas eval --runtime onnx
--flip-test`` (GT boxes), the distance of its keypoints from FP32's, and its batch-1 latency in
ONNX Runtime with 1 and 2 threads, the files timed in interleaved rounds (median of the round
medians, so that load drift hits all alike), and one thread's time per op type (ORT's profiler).
``--variants`` adds other int8 settings (calibration method, activation / weight types,
reduce_range, ``quant_pre_process``) quantised from the same FP32 file and calibration crops:
how the defaults were chosen. ``--speed-arch`` times a randomly initialised 17-joint
architecture at ``--speed-input`` (speed only; int8 calibrated on
:func:`posenas.export.real_input` crops). The header names the CPU and the load average at the
start and end. Writes ``results.json`` and ``results.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from posenas import quantize as Q
from posenas.cost import time_calls
from posenas.engine.evaluate import evaluate_checkpoint
from posenas.engine.precision import cpu_flags
from posenas.export import export_onnx
from posenas.jsonio import write_json, write_text
from posenas.runtime import OnnxPoseModel, load_model

#: name → quantize_int8 keywords (u8s8: uint8 activations, int8 weights; rr: reduce_range, 7-bit weights).
VARIANTS = {
    "minmax-u8s8": dict(method="minmax", activations="uint8", weights="int8", reduce_range=False),
    "minmax-s8s8": dict(method="minmax", activations="int8", weights="int8", reduce_range=False),
    "minmax-u8u8": dict(method="minmax", activations="uint8", weights="uint8", reduce_range=False),
    "minmax-u8s8-rr": dict(method="minmax", activations="uint8", weights="int8", reduce_range=True),
    "entropy-u8s8-rr": dict(method="entropy", activations="uint8", weights="int8", reduce_range=True),
    "percentile-u8s8-rr": dict(method="percentile", activations="uint8", weights="int8", reduce_range=True),
    "minmax-u8s8-rr-nopre": dict(method="minmax", activations="uint8", weights="int8", reduce_range=True,
                                 preprocess=False),
}


def latencies(files: dict[str, Path], input_size: tuple[int, int], runs: int, rounds: int) -> dict[str, dict[int, float]]:
    """Median batch-1 ms per file and thread count (1, 2), interleaved over ``rounds``."""
    x = torch.from_numpy(Q.check_inputs(input_size, 1)[0])
    per: dict[str, dict[int, list[float]]] = {k: {1: [], 2: []} for k in files}
    for _ in range(rounds):
        for threads in (1, 2):
            for name, path in files.items():
                model = OnnxPoseModel(path, threads)
                per[name][threads].append(time_calls(model, x, 5, runs)["median"])
    return {k: {t: statistics.median(v) for t, v in d.items()} for k, d in per.items()}


def op_profile(path: Path, input_size: tuple[int, int], runs: int = 30) -> dict[str, float]:
    """Mean ms per run spent in each op type, one thread (ORT's own profiler; the ops after its fusions)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = Q.check_inputs(input_size, 1)[0]
    for _ in range(5 + runs):
        session.run(None, {"image": x})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op.setdefault(e["args"]["op_name"], []).append(e["dur"] / 1000.0)
    # the first 5 runs are warm-up: keep each op's last `runs` share of calls
    return {op: sum(v[len(v) * 5 // (5 + runs):]) / runs for op, v in sorted(per_op.items())}


def evaluate_file(path: Path, data: Path, out: Path) -> tuple[dict, np.ndarray]:
    """``posenas eval --checkpoint FILE --data DATA --runtime onnx --flip-test``'s numbers, and the keypoints."""
    _, result, _, preds = evaluate_checkpoint(path, data, out, flip_test=True, runtime="onnx", progress=False)
    return {"AP": result["AP"], "AP50": result["AP50"], "AR": result["AR"]}, np.stack([p.keypoints[:, :2] for p in preds])


def bench_checkpoint(ckpt: Path, data: Path, out: Path, args) -> dict:
    """Export every precision of one checkpoint, score each on val and time it."""
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(ckpt, "torch")
    size = loaded.codec.input_size
    files = {"fp32": out / "fp32.onnx", "int8": out / "int8.onnx", "fp16": out / "fp16.onnx"}
    export_onnx(ckpt, files["fp32"])
    # min_agreement 0: measure whatever comes out (the table shows the agreement export would judge)
    checks = {"int8": Q.export_reduced(ckpt, files["int8"], "int8", calib_data=args.calib_data or None,
                                       calib_images=args.calib_images, min_agreement=0.0),
              "fp16": Q.export_reduced(ckpt, files["fp16"], "fp16", min_agreement=0.0)}
    fp32 = files["fp32"].read_bytes()
    if args.variants:
        root, split = (Path(args.calib_data), "train") if args.calib_data else Q.training_data(loaded.checkpoint, ckpt)
        batches = Q.calibration_batches(root, loaded.codec, loaded.schema, count=args.calib_images, split=split)
        for name in args.variants:
            data_bytes = Q.quantize_int8(fp32, batches, **VARIANTS[name])
            checks[name] = Q.compare(fp32, data_bytes, Q.check_inputs(size))
            files[name] = out / f"{name}.onnx"
            files[name].write_bytes(data_bytes)
    rows, reference = {}, None
    for name, path in files.items():
        scores, keypoints = evaluate_file(path, data, out / f"eval-{name}")
        reference = keypoints if reference is None else reference  # fp32 comes first
        shift = np.linalg.norm(keypoints - reference, axis=-1)  # image pixels, per instance and joint
        rows[name] = {"bytes": path.stat().st_size, **scores, "shift_px": {"mean": float(shift.mean()),
                                                                           "p90": float(np.quantile(shift, 0.9))}}
        if name in checks:
            rows[name]["check"] = {k: checks[name][k] for k in ("relative", "agreement")}
        print(f"  {name}: AP {rows[name]['AP']:.4f}", flush=True)
    for name, t in latencies(files, size, args.runs, args.rounds).items():
        rows[name]["ms"] = t
    for name in ("fp32", "int8", "fp16"):
        rows[name]["op_ms"] = op_profile(files[name], size)
    return {"checkpoint": str(ckpt), "input": list(size), "arch": loaded.arch.to_json(), "rows": rows}


def bench_speed_arch(arch_name: str, size: tuple[int, int], out: Path, args) -> dict:
    """Latency only: a randomly initialised ``arch_name`` at ``size``, int8 calibrated on real crops."""
    from posenas.api import load_arch
    from posenas.arch import build_model, output_joints
    from posenas.checkpoint import save_checkpoint
    from posenas.codecs.heatmap import HeatmapCodec

    out.mkdir(parents=True, exist_ok=True)
    arch = load_arch(arch_name)
    torch.manual_seed(0)
    model = build_model(arch, output_joints(arch, 17)).eval()
    codec = HeatmapCodec(input_size=size, heatmap_size=(size[0] // 4, size[1] // 4), sigma=2.0)
    ckpt = out / "random.pt"
    save_checkpoint(ckpt, {"arch": arch.to_json(), "schema": "coco17", "codec": codec.to_dict(),
                           "state_dict": model.state_dict()})
    files = {"fp32": out / "fp32.onnx", "int8": out / "int8.onnx", "fp16": out / "fp16.onnx"}
    export_onnx(ckpt, files["fp32"])
    fp32 = files["fp32"].read_bytes()
    files["int8"].write_bytes(Q.quantize_int8(fp32, Q.check_inputs(size, 16)[8:]))  # crops apart from the check's
    files["fp16"].write_bytes(Q.to_fp16(fp32))
    rows = {name: {"bytes": p.stat().st_size} for name, p in files.items()}
    for name, t in latencies(files, size, args.runs, args.rounds).items():
        rows[name]["ms"] = t
    for name in ("fp32", "int8"):
        rows[name]["op_ms"] = op_profile(files[name], size)
    return {"arch": arch_name, "input": list(size), "rows": rows}


def table(result: dict) -> str:
    """One markdown table per model: AP (when measured), size, ms and speed-up vs FP32."""
    lines = []
    for entry in result["models"]:
        title = entry.get("checkpoint") or f"{entry['arch']} (random weights: speed only)"
        lines += [f"\n{title}, input {entry['input'][0]}x{entry['input'][1]}\n",
                  "| file | AP | AP50 | val keypoint shift vs FP32, px (mean / p90) | export check: max diff / peak, "
                  "argmax agreement | MB | 1 thread ms | speed-up | 2 threads ms | speed-up |",
                  "|---|---:|---:|---|---|---:|---:|---:|---:|---:|"]
        base = entry["rows"]["fp32"]["ms"]
        for name, row in entry["rows"].items():
            check = row.get("check")
            lines.append(
                f"| {name} | {row['AP']:.4f} | {row['AP50']:.3f} | {row['shift_px']['mean']:.2f} / "
                f"{row['shift_px']['p90']:.2f} | " if "AP" in row else f"| {name} | – | – | – | ")
            lines[-1] += (f"{check['relative']:.3f} / {check['agreement']:.1%} | " if check else "– | ")
            lines[-1] += (f"{row['bytes'] / 1e6:.2f} | {row['ms'][1]:.2f} | {base[1] / row['ms'][1]:.2f}x | "
                          f"{row['ms'][2]:.2f} | {base[2] / row['ms'][2]:.2f}x |")
        profiled = {k: r["op_ms"] for k, r in entry["rows"].items() if "op_ms" in r}
        ops = sorted({op for v in profiled.values() for op in v}, key=lambda op: -max(v.get(op, 0) for v in profiled.values()))
        lines += ["", "one thread, ms per run by op type (ORT profiler, after its fusions): | "
                  + " | ".join(profiled) + " |", "|---|" + "---:|" * len(profiled)]
        lines += [f"| {op} | " + " | ".join(f"{v.get(op, 0):.3f}" for v in profiled.values()) + " |" for op in ops]
        lines.append("| total | " + " | ".join(f"{sum(v.values()):.3f}" for v in profiled.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", action="append", default=[], help="trained checkpoint (repeatable)")
    ap.add_argument("--data", default="data/synthetic/coco", help="dataset root whose val split is scored")
    ap.add_argument("--calib-data", help="int8 calibration root (default: each checkpoint's training data)")
    ap.add_argument("--calib-images", type=int, default=Q.DEFAULT_CALIB_IMAGES)
    ap.add_argument("--runs", type=int, default=30, help="timed runs per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", default="", help=f"extra int8 settings, comma-separated: {', '.join(VARIANTS)}")
    ap.add_argument("--speed-arch", action="append", default=[],
                    help="17-joint arch (JSON, shipped or model name) timed with random weights")
    ap.add_argument("--speed-input", default="256x192")
    ap.add_argument("--out", default="/tmp/runs17/H2/bench")
    args = ap.parse_args()
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"--variants: unknown {', '.join(unknown)}; allowed: {', '.join(VARIANTS)}")
    out = Path(args.out)
    header = (f"CPU: {cpu_flags()} (of avx2, avx512_f, avx512_bf16, amx_bf16, amx_int8, avx512_vnni, avx_vnni only "
              f"those listed are present)\nonnxruntime {ort.__version__}, torch {torch.__version__}; batch 1, "
              f"{args.rounds} interleaved rounds of {args.runs} runs (median of round medians); "
              f"AP: val, flip test, GT boxes; int8: {args.calib_images} calibration crops")
    print(header, flush=True)
    start_load = os.getloadavg()
    result = {"header": header, "command": " ".join(sys.argv), "models": []}
    for i, ckpt in enumerate(args.checkpoint):
        print(f"== {ckpt}", flush=True)
        result["models"].append(bench_checkpoint(Path(ckpt), Path(args.data), out / f"model{i}", args))
    sh, sw = (int(v) for v in args.speed_input.split("x"))
    for i, name in enumerate(args.speed_arch):
        print(f"== {name} at {sh}x{sw} (speed only)", flush=True)
        result["models"].append(bench_speed_arch(name, (sh, sw), out / f"speed{i}", args))
    load = os.getloadavg()
    result["load_average"] = {"start": start_load, "end": load}
    text = (header + f"\nload average (1 min) at start {start_load[0]:.1f}, at end {load[0]:.1f} on {os.cpu_count()} cores"
            + "\n" + table(result))
    print(text)
    write_json(out / "results.json", result, indent=2)
    write_text(out / "results.md", f"`{result['command']}`\n\n{text}\n")


if __name__ == "__main__":
    main()
