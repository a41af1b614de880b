"""Cost of a model: exact parameter count, MACs, and measured latency.

MACs follow DESIGN.md: ``torch.utils.flop_counter.FlopCounterMode`` FLOPs ÷ 2 (the
papers' and MMPose's "FLOPs" are multiply-accumulates); transposed convolutions count
per input pixel, as FlopCounterMode does. Latency is batch 1 after warm-up: the median
and spread of N timed runs, with the thread count recorded.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from posenas.errors import PosenasError


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_output_stride(model: nn.Module, input_size: tuple[int, int], stride: int = 4, where: str = "--input") -> None:
    """Pose models give heatmaps at 1/``stride`` of the input; sizes the model cannot take are errors."""
    h, w = input_size
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, h, w, device=device))
    model.train(was)
    out = out[0] if isinstance(out, (tuple, list)) else out  # multi-resolution models: the first output
    if h % stride or w % stride or tuple(out.shape[-2:]) != (h // stride, w // stride):
        raise PosenasError(
            f"{where}: {h}x{w} gives {out.shape[-2]}x{out.shape[-1]} heatmaps, expected "
            f"{h / stride:g}x{w / stride:g}; this model needs sizes divisible by 32"
        )


def count_macs(model: nn.Module, input_size: tuple[int, int]) -> tuple[int, dict[str, int]]:
    """MACs of one forward at batch 1, and MACs per leaf module (by qualified name)."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, *input_size, device=device))
    model.train(was)
    leaves = {name for name, m in model.named_modules() if name and not any(m.children())}
    prefix = type(model).__name__ + "."
    per_layer = {}
    for name, ops in counter.get_flop_counts().items():
        short = name.removeprefix(prefix)
        if short in leaves:
            per_layer[short] = int(sum(ops.values()) // 2)
    return int(counter.get_total_flops() // 2), per_layer


def module_macs(module: nn.Module, x: torch.Tensor) -> int:
    """MACs of ``module(x)`` for any input (a block at its real shape inside a network)."""
    was = module.training
    module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    module.train(was)
    return int(counter.get_total_flops() // 2)


def _summary(times: list[float]) -> dict:
    ordered = sorted(times)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"median": round(statistics.median(times), 3), "p10": round(pick(0.1), 3), "p90": round(pick(0.9), 3),
            "mean": round(statistics.fmean(times), 3), "runs": len(times)}


def time_calls(call, x: torch.Tensor, warmup: int, runs: int, sync=None, before=None) -> dict:
    """Milliseconds per ``call(x)``: ``runs`` timed calls after ``warmup`` untimed ones;
    ``before()``, if given, runs untimed before each call (e.g. to flush caches)."""
    if runs < 1 or warmup < 0:
        raise PosenasError(f"--runs must be >= 1 and warm-up >= 0, got {runs} and {warmup}")
    times = []
    for i in range(warmup + runs):
        if before:
            before()
        if sync:
            sync()
        start = time.perf_counter()
        call(x)
        if sync:
            sync()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000.0)
    return _summary(times)


def measure_latency(model: nn.Module, input_size: tuple[int, int], threads: int | None = None,
                    warmup: int = 5, runs: int = 30) -> dict:
    """PyTorch batch-1 forward latency in ms: median, p10, p90, mean over ``runs`` after ``warmup``."""
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise PosenasError(f"--threads: must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    device = next(model.parameters()).device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    model.eval()
    try:
        with torch.inference_mode():
            timing = time_calls(model, torch.zeros(1, 3, *input_size, device=device), warmup, runs, sync)
    finally:
        torch.set_num_threads(previous)
    return {**timing, "threads": threads if threads is not None else previous, "device": str(device), "runtime": "torch"}


@dataclass
class Profile:
    params: int
    macs: int
    input: tuple[int, int]
    latency_ms: dict | None = None
    layers: dict[str, int] = field(default_factory=dict)

    def to_json(self, layers: bool = False) -> dict:
        out = asdict(self)
        out["input"] = list(self.input)
        if not layers:
            out.pop("layers")
        return out


def profile_model(model: nn.Module, input_size: tuple[int, int], *, latency: bool = True,
                  threads: int | None = None, runs: int = 30, runner=None) -> Profile:
    """Params, MACs (with the per-layer breakdown) and, optionally, measured latency.

    ``runner``: time this callable (e.g. an ONNX Runtime session of the same model)
    instead of the PyTorch module; params and MACs always come from ``model``.
    """
    check_output_stride(model, input_size)
    macs, layers = count_macs(model, input_size)
    timing = None
    if latency and runner is None:
        timing = measure_latency(model, input_size, threads=threads, runs=runs)
    elif latency:
        timing = {**time_calls(runner, torch.zeros(1, 3, *input_size), 5, runs), "threads": threads, "device": "cpu",
                  "runtime": "onnx"}
    return Profile(count_params(model), macs, tuple(input_size), timing, layers)


def matmul_limit(threads: int, dtype: torch.dtype = torch.float32, n: int = 2048, trials: int = 5) -> float:
    """GMAC/s of an ``n``² matmul in ``dtype`` on ``threads`` threads, best of ``trials``: the
    fastest this machine's dense kernels go, the yardstick for a model's achieved GMAC/s.
    (bf16 on a CPU without native bf16 is emulated: a few GMAC/s where FP32 does ~30.)"""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        torch.mm(a, b)
        best = float("inf")
        for _ in range(trials):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return n**3 / best / 1e9
