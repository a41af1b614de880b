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


def measure_latency(model: nn.Module, input_size: tuple[int, int], threads: int | None = None,
                    warmup: int = 5, runs: int = 30) -> dict:
    """Batch-1 forward latency in ms: median, p10, p90, mean over ``runs`` after ``warmup``."""
    if runs < 1 or warmup < 0:
        raise PosenasError(f"--runs must be >= 1 and warm-up >= 0, got {runs} and {warmup}")
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise PosenasError(f"--threads: must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    device = next(model.parameters()).device
    x = torch.zeros(1, 3, *input_size, device=device)
    model.eval()
    times = []
    try:
        with torch.inference_mode():
            for i in range(warmup + runs):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1000.0)
    finally:
        torch.set_num_threads(previous)
    ordered = sorted(times)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "median": round(statistics.median(times), 3),
        "p10": round(pick(0.1), 3),
        "p90": round(pick(0.9), 3),
        "mean": round(statistics.fmean(times), 3),
        "runs": runs,
        "threads": threads if threads is not None else previous,
        "device": str(device),
        "runtime": "torch",
    }


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
                  threads: int | None = None, runs: int = 30) -> Profile:
    """Params, MACs (with the per-layer breakdown) and, optionally, measured latency."""
    check_output_stride(model, input_size)
    macs, layers = count_macs(model, input_size)
    timing = measure_latency(model, input_size, threads=threads, runs=runs) if latency else None
    return Profile(count_params(model), macs, tuple(input_size), timing, layers)
