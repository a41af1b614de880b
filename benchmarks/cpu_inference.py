"""CPU inference speed of exported models: ONNX Runtime on one thread, plain vs rewritten export.

Run: .venv/bin/python -W ignore benchmarks/cpu_inference.py [--runs 20] [--input 256x192] [--nodes [--plain-nodes]]
     [--models NAME_OR_ARCH ...] [--torch]

Side by side in one run, batch 1, one thread, after warm-up: for every named model and the
shipped searched architectures (configs/vipnas/s-vipnas-*.json, configs/efficientpose/k3e6-*.json,
configs/pnfs/mobilenetv2-p3-*.json), the GMACs, ORT frames/s (1000 / median ms) of the plain
export (``onnx_bytes(rewrite=False)``) and of the default, rewritten one
(:mod:`posenas.export_rewrite`), timed in alternation so that load on the machine hits both
alike; the rewritten export's GMAC/s and its fraction of this machine's single-thread dense
FP32 limit, measured by a large matmul (best of 7 trials before and 7 after; 2 FLOPs = 1 MAC).

``--nodes``: per model, ORT's own per-node times (``SessionOptions.enable_profiling``) of the
rewritten export (and of the plain one with ``--plain-nodes``), summed by op kind and shape class (for convolutions: dense / depthwise /
grouped with its channels per group, kernel, output resolution, and whether ORT ran it in its
NCHWc layout) with their GMAC/s: where the time goes, layer by layer; ReorderInput/ReorderOutput
are ORT's conversions into and out of NCHWc. ``--torch``: the earlier
PyTorch-eager-vs-ORT table of the named models (1 and all threads) and its ablation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from posenas.arch import NAMED_MODELS, build_model, load_arch_file, named_arch, output_joints
from posenas.cost import count_macs, measure_latency, time_calls
from posenas.export import onnx_bytes
from posenas.export_rewrite import rewrite_for_export
from posenas.resources import SHIPPED_ROOT
from posenas.runtime import ort_session

#: The shipped searched architectures, relative to the configs folder.
SEARCHED = ("vipnas/s-vipnas-*.json", "efficientpose/k3e6-*.json", "pnfs/mobilenetv2-p3-*.json")
#: CPU flags that decide FP32/BF16 matmul speed.
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_description() -> str:
    """The CPU model name and which of :data:`FLAGS` it has (from /proc/cpuinfo)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return f"{name}; " + ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in FLAGS)


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


def model_names(given: list[str] | None) -> list[str]:
    """Named models, then the shipped searched architectures (as configs-relative paths)."""
    if given:
        return given
    searched = sorted(str(p.relative_to(SHIPPED_ROOT)) for pattern in SEARCHED for p in SHIPPED_ROOT.glob(pattern))
    return list(NAMED_MODELS) + searched


def build(name: str) -> torch.nn.Module:
    """An eval-mode model of a named model or a shipped/loose arch JSON; seeded weights."""
    if name in NAMED_MODELS:
        arch = named_arch(name)
    else:
        path = Path(name) if Path(name).is_file() else SHIPPED_ROOT / name
        arch = load_arch_file(path)
    torch.manual_seed(0)
    return build_model(arch, output_joints(arch)).eval()


def session(data: bytes, threads: int = 1, profile_prefix: str | None = None) -> ort.InferenceSession:
    if profile_prefix is None:
        return ort_session(data, threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def alternating_ms(sessions: dict[str, ort.InferenceSession], x: np.ndarray, warmup: int, runs: int) -> dict[str, float]:
    """Median ms per session, timed in turn (one run of each per round), so drift in load hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(warmup):
        for s in sessions.values():
            s.run(None, {"image": x})
    for _ in range(runs):
        for k, s in sessions.items():
            start = time.perf_counter()
            s.run(None, {"image": x})
            times[k].append((time.perf_counter() - start) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


# ----------------------------------------------------------------------------- per-node profile

def conv_class(op: str, weight: list[int] | None, groups: int, out: list[int], nchwc: bool) -> tuple[str, int]:
    """(shape class, MACs) of a conv node from its weight shape, group count and output shape."""
    layout = "NCHWc" if nchwc else "NCHW"
    res = f"{out[2]}x{out[3]}" if len(out) == 4 else "?"
    if not weight:
        return f"{op} ({layout}) @{res}", 0
    if op == "ConvTranspose":  # weight (Cin, Cout / g, k, k), MACs per input pixel as FlopCounterMode
        cin, cpg_out, k = weight[0], weight[1], weight[2]
        cpg_in = cin // groups
        macs = cin * cpg_out * weight[2] * weight[3] * (out[2] // 2) * (out[3] // 2)
        kind = "depthwise" if cpg_in == 1 and cpg_out == 1 else ("dense" if groups == 1 else f"grouped {cpg_in}/group")
    else:
        cout, cpg_in, k = weight[0], weight[1], weight[2]
        macs = cout * cpg_in * weight[2] * weight[3] * out[2] * out[3]
        kind = "depthwise" if cpg_in == 1 and groups > 1 else ("dense" if groups == 1 else f"grouped {cpg_in}/group")
    return f"{op} {kind} {k}x{k} ({layout}) @{res}", macs


def node_profile(data: bytes, x: np.ndarray, runs: int) -> tuple[list[tuple[str, int, float, int]], float]:
    """Rows (class, nodes, ms per run, MACs per run) of ORT's per-node times, and the profiled total ms."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        import onnx

        optimized = onnx.load(options.optimized_model_filepath)
        weights = {t.name: list(t.dims) for t in optimized.graph.initializer}
        groups = {}
        node_weights = {}
        for node in optimized.graph.node:
            groups[node.name] = next((a.i for a in node.attribute if a.name == "group"), 1)
            if node.op_type in ("Conv", "ConvTranspose", "FusedConv") and len(node.input) > 1:
                node_weights[node.name] = weights.get(node.input[1])
        s = session(data, 1, str(Path(tmp) / "profile"))
        for _ in range(3):
            s.run(None, {"image": x})
        start = time.perf_counter()
        for _ in range(runs):
            s.run(None, {"image": x})
        total = (time.perf_counter() - start) * 1000 / runs
        events = json.loads(Path(s.end_profiling()).read_text())
    calls = 3 + runs
    rows: dict[str, list] = defaultdict(lambda: [0, 0.0, 0])
    count: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        args, name = e["args"], e["name"][: -len("_kernel_time")]
        op = args["op_name"]
        nchwc = name.endswith("_nchwc") or op in ("ReorderInput", "ReorderOutput")
        out = next(iter(args["output_type_shape"][0].values())) if args.get("output_type_shape") else []
        if op in ("Conv", "ConvTranspose", "FusedConv"):
            shapes = [next(iter(d.values())) for d in args.get("input_type_shape", [])]
            if op == "ConvTranspose" or len(shapes) < 2:  # the profile omits prepacked weights
                weight, g = node_weights.get(name), groups.get(name, 1)
            else:
                weight = shapes[1]
                g = max(1, shapes[0][1] // weight[1])
            cls, macs = conv_class("ConvTranspose" if op == "ConvTranspose" else "Conv", weight, g, out, nchwc)
        else:  # ORT keeps the names of the elementwise nodes it runs on NCHWc data: no layout tag
            cls, macs = op, 0
        row = rows[cls]
        row[1] += e["dur"] / 1000 / calls
        row[2] += macs / calls
        count[(cls, name)] += 1
    for (cls, _name) in count:
        rows[cls][0] += 1
    return [(cls, r[0], r[1], int(r[2])) for cls, r in rows.items()], total


def print_nodes(name: str, data: bytes, x: np.ndarray, runs: int, peak: float, which: str = "rewritten",
                top: int = 14) -> None:
    rows, total = node_profile(data, x, runs)
    rows.sort(key=lambda r: -r[2])
    summed = sum(r[2] for r in rows)
    print(f"\n**{name}**, {which} export: {total:.1f} ms per run while profiled, {summed:.1f} ms in nodes\n")
    print("| op / shape class (output resolution) | nodes | ms | share | GMAC/s | of limit |")
    print("|---|---:|---:|---:|---:|---:|")
    for cls, n, ms, macs in rows[:top]:
        rate = macs / ms / 1e6 if macs and ms else 0.0
        print(f"| {cls} | {n} | {ms:.2f} | {ms / summed:.0%} | " + (f"{rate:.1f} | {rate / peak:.0%} |" if macs else "– | – |"))
    rest = rows[top:]
    if rest:
        ms = sum(r[2] for r in rest)
        print(f"| {len(rest)} other classes | {sum(r[1] for r in rest)} | {ms:.2f} | {ms / summed:.0%} | | |")


# ----------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--input", default="256x192")
    ap.add_argument("--models", nargs="+", help="named models or arch JSONs (default: every named model and the "
                                                "shipped searched architectures)")
    ap.add_argument("--nodes", action="store_true", help="per model, ORT's per-node time by op kind and shape class")
    ap.add_argument("--plain-nodes", action="store_true", help="with --nodes: the plain export's per-node times too")
    ap.add_argument("--torch", action="store_true", help="also the PyTorch eager vs ORT table of the named models")
    args = ap.parse_args()
    h, w = (int(v) for v in args.input.split("x"))
    first = matmul_gmacs(1)
    print(f"CPU: {cpu_description()}; {os.cpu_count()} cores; torch {torch.__version__}, onnxruntime {ort.__version__}; "
          f"input {h}x{w}, batch 1, 1 thread, {args.runs} runs per export (alternating)", flush=True)
    x = np.zeros((1, 3, h, w), np.float32)
    exports, rows = {}, []
    for name in model_names(args.models):
        model = build(name)
        macs = count_macs(model, (h, w))[0]
        kinds: dict[str, int] = defaultdict(int)
        faster, done = rewrite_for_export(model, (h, w))  # what onnx_bytes(rewrite=True) exports
        for r in done:
            kinds[r.kind] += 1
        plain = onnx_bytes(model, (h, w), where=name, rewrite=False)
        rewritten = onnx_bytes(faster, (h, w), where=name, rewrite=False)
        ms = alternating_ms({"plain": session(plain), "rewritten": session(rewritten)}, x, 5, args.runs)
        fps = {k: 1000 / v for k, v in ms.items()}
        done = ", ".join(f"{k} ×{n}" for k, n in kinds.items() if k != "fold-bn") or "none"
        rows.append((name, macs, fps, done))
        exports[name] = (plain, rewritten)
    # the limit is the fastest the machine goes: best of the trials before and after the models
    peak = max(first, matmul_gmacs(1))
    print(f"single-thread dense FP32 limit (2048² matmul, best of 2 x 7 trials, before and after): {peak:.1f} GMAC/s\n")
    print("| model | GMACs | ORT plain fps | ORT rewritten fps | speed-up | GMAC/s (rewritten) | of limit | rewrites |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, macs, fps, done in rows:
        rate = macs * fps["rewritten"] / 1e9
        print(f"| {name} | {macs / 1e9:.3f} | {fps['plain']:.1f} | {fps['rewritten']:.1f} | "
              f"{fps['rewritten'] / fps['plain']:.2f} | {rate:.1f} | {rate / peak:.0%} | {done} |")
    if args.nodes:
        print("\nPer-node ORT time of the exports (one thread; GMAC/s of the convolutions):")
        for name, (plain, rewritten) in exports.items():
            if args.plain_nodes:
                print_nodes(name, plain, x, args.runs, peak, "plain")
            print_nodes(name, rewritten, x, args.runs, peak)
    if args.torch:
        torch_table(h, w, args.runs, peak)


def torch_table(h: int, w: int, runs: int, peak: float) -> None:
    """PyTorch eager vs ORT (plain export) for the named models, 1 and all threads; then the ablation."""
    cores = os.cpu_count() or 1
    print("\n| model | GMACs | torch 1T fps | ORT 1T fps | torch {c}T fps | ORT {c}T fps | ORT/torch 1T | 1T GMAC/s (ORT) | of limit |".format(c=cores))
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in NAMED_MODELS:
        model = build(name)
        macs = count_macs(model, (h, w))[0]
        data = onnx_bytes(model, (h, w), where=name, rewrite=False)
        x = torch.zeros(1, 3, h, w)
        fps = {}
        for threads in (1, cores):
            fps[("torch", threads)] = 1000 / measure_latency(model, (h, w), threads=threads, runs=runs)["median"]
            s = ort_session(data, threads)
            run = lambda t, s=s: s.run(None, {"image": t.numpy()})  # noqa: E731
            fps[("ort", threads)] = 1000 / time_calls(run, x, 5, runs)["median"]
        achieved = macs * fps[("ort", 1)] / 1e9
        print(f"| {name} | {macs / 1e9:.3f} | {fps[('torch', 1)]:.1f} | {fps[('ort', 1)]:.1f} | {fps[('torch', cores)]:.1f} | "
              f"{fps[('ort', cores)]:.1f} | {fps[('ort', 1)] / fps[('torch', 1)]:.2f} | {achieved:.1f} | {achieved / peak:.0%} |")
    ablation(h, w, runs)


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
        model = build(name)
        rows.setdefault("torch eager", []).append(measure_latency(model, (h, w), threads=1, runs=runs)["median"])
        last = build(name).to(memory_format=torch.channels_last)
        xl = x.contiguous(memory_format=torch.channels_last)
        torch.set_num_threads(1)
        with torch.inference_mode():
            rows.setdefault("torch eager, channels-last", []).append(time_calls(last, xl, 3, runs)["median"])
        data = onnx_bytes(build(name), (h, w), where=name, rewrite=False)
        for label, level in levels.items():
            s = ort_session(data, 1, level)
            rows.setdefault(label, []).append(time_calls(lambda t, s=s: s.run(None, {"image": t.numpy()}), x, 3, runs)["median"])
    for label, values in rows.items():
        print(f"| {label} | " + " | ".join(f"{v:.1f}" for v in values) + " |")


if __name__ == "__main__":
    main()
