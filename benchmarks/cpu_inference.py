"""CPU inference speed of the baselines: PyTorch eager vs ONNX Runtime, 1 thread and all threads.

Run: .venv/bin/python benchmarks/cpu_inference.py [--runs 20] [--input 256x192]

Side by side in one run, batch 1, after warm-up: frames/s (1000 / median ms) of each
named model in PyTorch eager and in ONNX Runtime (all graph optimisations), with one
thread and with all cores; each model's achieved GMAC/s as a fraction of this machine's
single-thread dense FP32 throughput, measured by a large matmul (best of 7 trials; 2 FLOPs = 1 MAC).
The model rows use medians and the machine is shared, so fractions are approximate.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import onnxruntime as ort
import torch

from posenas.arch import NAMED_MODELS, build_model, named_arch
from posenas.cost import count_macs, measure_latency, time_calls
from posenas.export import onnx_bytes
from posenas.runtime import ort_session


def matmul_gmacs(threads: int, n: int = 2048, repeats: int = 5, trials: int = 7) -> float:
    """Best of ``trials`` timings of a large matmul: the limit is the fastest the machine ever goes."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - start) / repeats)
    torch.set_num_threads(previous)
    return n**3 / best / 1e9  # n³ multiply-adds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--input", default="256x192")
    args = ap.parse_args()
    h, w = (int(v) for v in args.input.split("x"))
    cores = os.cpu_count() or 1
    peak = matmul_gmacs(1)
    print(f"machine: {platform.machine()}, {cores} cores; torch {torch.__version__}, onnxruntime {ort.__version__}; "
          f"input {h}x{w}, batch 1, {args.runs} runs")
    print(f"single-thread dense FP32 peak (2048² matmul): {peak:.1f} GMAC/s; {cores} threads: {matmul_gmacs(cores):.1f} GMAC/s\n")
    print("| model | GMACs | torch 1T fps | ORT 1T fps | torch {c}T fps | ORT {c}T fps | ORT/torch 1T | 1T GMAC/s (ORT) | of peak |".format(c=cores))
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in NAMED_MODELS:
        torch.manual_seed(0)
        model = build_model(named_arch(name), 17).eval()
        macs = count_macs(model, (h, w))[0]
        data = onnx_bytes(model, (h, w), where=name)
        x = torch.zeros(1, 3, h, w)
        fps = {}
        for threads in (1, cores):
            fps[("torch", threads)] = 1000 / measure_latency(model, (h, w), threads=threads, runs=args.runs)["median"]
            session = ort_session(data, threads)
            run = lambda t, s=session: s.run(None, {"image": t.numpy()})  # noqa: E731
            fps[("ort", threads)] = 1000 / time_calls(run, x, 5, args.runs)["median"]
        achieved = macs * fps[("ort", 1)] / 1e9
        print(f"| {name} | {macs / 1e9:.3f} | {fps[('torch', 1)]:.1f} | {fps[('ort', 1)]:.1f} | {fps[('torch', cores)]:.1f} | "
              f"{fps[('ort', cores)]:.1f} | {fps[('ort', 1)] / fps[('torch', 1)]:.2f} | {achieved:.1f} | {achieved / peak:.0%} |")
    ablation(h, w, args.runs)


def ablation(h: int, w: int, runs: int) -> None:
    """What makes single-thread inference slow: graph optimisation levels, BN folding, memory format."""
    levels = {"ORT, no graph optimisation": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "ORT, basic (constant folding, BN into conv)": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "ORT, all (plus layout/fusion passes)": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    print("\n| single thread, ms (median) | " + " | ".join(n for n in NAMED_MODELS) + " |")
    print("|---|" + "---:|" * len(NAMED_MODELS))
    rows: dict[str, list[float]] = {}
    x = torch.zeros(1, 3, h, w)
    for name in NAMED_MODELS:
        torch.manual_seed(0)
        model = build_model(named_arch(name), 17).eval()
        rows.setdefault("torch eager", []).append(measure_latency(model, (h, w), threads=1, runs=runs)["median"])
        last = model.to(memory_format=torch.channels_last)
        xl = x.contiguous(memory_format=torch.channels_last)
        torch.set_num_threads(1)
        with torch.inference_mode():
            rows.setdefault("torch eager, channels-last", []).append(time_calls(last, xl, 3, runs)["median"])
        data = onnx_bytes(build_model(named_arch(name), 17).eval(), (h, w), where=name)
        for label, level in levels.items():
            session = ort_session(data, 1, level)
            rows.setdefault(label, []).append(time_calls(lambda t, s=session: s.run(None, {"image": t.numpy()}), x, 3, runs)["median"])
    for label, values in rows.items():
        print(f"| {label} | " + " | ".join(f"{v:.1f}" for v in values) + " |")


if __name__ == "__main__":
    main()
