"""Where a depthwise convolution's training time goes: forward, input gradient, weight gradient.

Run: flock /tmp/cpu.lock .venv/bin/python -W ignore benchmarks/depthwise_grad.py [--threads 1]
     [--runs 5] [--setting small] [--input 96x64] [--batch 32] [--out runs/depthwise-grad]

Why it exists: the EfficientPose supernet (every MBConv candidate of every position, Eq. 3) and
the MobileNet-style nets gain little or lose under bf16 / channels-last (docs/benchmarks.md,
"On a CPU with AMX"). This measures the reason. Three parts, side by side in one run:

1. Each distinct depthwise conv of the supernet at its real shape (the proxy tier's 96x64 crops,
   batch 32): ms of the forward, of forward + input gradient, and of forward + input and weight
   gradients, in fp32 NCHW, fp32 channels-last and (where the CPU has bf16) bf16 autocast
   channels-last; the weight gradient's share and its GMAC/s (its MACs equal the forward's).
2. One whole supernet weight step (forward, backward; no optimiser) as trained, and the same step
   with the depthwise weights frozen (their gradient not computed): the share of the step that
   the depthwise weight gradients cost.
3. A what-if for the precision policy: whole optimiser steps (Adam) of the supernet and of two
   plain MBConv nets (EfficientPose k3e6-small, S-ViPNAS-MobileNetV3, 128x96) in fp32
   channels-last, bf16 autocast channels-last, and bf16 autocast with every depthwise conv run
   in fp32 (autocast off inside it); best of 2 rounds, the modes alternating.

Results go to ``--out``/results.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from posenas.arch import build_model, load_arch_file
from posenas.cost import time_calls
from posenas.engine.precision import cpu_flags, native_bf16
from posenas.resources import SHIPPED_ROOT
from posenas.spaces.efficientpose import EfficientPoseSupernet


def median_ms(call, runs: int) -> float:
    """Median ms of ``runs`` calls after one warm-up (posenas.cost's timer)."""
    return time_calls(lambda _: call(), None, warmup=1, runs=runs)["median"]


def is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels and m.groups > 1


def rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def depthwise_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[int, int, int, int, int, int]]:
    """(batch, channels, H, W, kernel, stride) of every distinct depthwise conv a forward meets."""
    seen: dict[tuple, None] = {}

    def record(mod: nn.Conv2d, inp):
        b, c, h, w = inp[0].shape
        seen.setdefault((b, c, h, w, mod.kernel_size[0], mod.stride[0]), None)

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if is_depthwise(m)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return list(seen)


def time_depthwise(shape: tuple[int, ...], mode: str, runs: int) -> dict:
    b, c, h, w, k, s = shape
    x = torch.randn(b, c, h, w)
    weight = torch.randn(c, 1, k, k)
    if mode != "fp32-nchw":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16-cl")

    def forward(wt):
        with autocast:
            return F.conv2d(x, wt, stride=s, padding=k // 2, groups=c)

    y = forward(weight)
    grad = torch.randn_like(y)
    w_grad = weight.clone().requires_grad_()
    fwd = median_ms(lambda: forward(weight), runs)
    fwd_dx = median_ms(lambda: torch.autograd.grad(forward(weight), (x,), grad), runs)
    fwd_dx_dw = median_ms(lambda: torch.autograd.grad(forward(w_grad), (x, w_grad), grad), runs)
    macs = b * c * y.shape[2] * y.shape[3] * k * k
    dw_ms = fwd_dx_dw - fwd_dx  # below the timing noise when <= 0: no rate is given then
    return {"fwd_ms": fwd, "fwd_dx_ms": fwd_dx, "fwd_dx_dw_ms": fwd_dx_dw, "dw_share": max(dw_ms, 0.0) / fwd_dx_dw,
            "dw_gmacs_per_s": macs / dw_ms / 1e6 if dw_ms > 0 else None, "fwd_gmacs_per_s": macs / fwd / 1e6}


def time_supernet_step(model: nn.Module, x: torch.Tensor, runs: int, freeze_depthwise: bool) -> float:
    """Median ms of a forward + backward; ``freeze_depthwise`` skips the depthwise weight gradients
    for the timing only (the weights train again afterwards)."""
    depthwise = [m.weight for m in model.modules() if is_depthwise(m)]
    for w in depthwise:
        w.requires_grad_(not freeze_depthwise)

    def step():
        model.zero_grad(set_to_none=True)
        model(x).float().pow(2).mean().backward()

    try:
        return median_ms(step, runs)
    finally:
        for w in depthwise:
            w.requires_grad_(True)


def _fp32_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", enabled=False):
        return self._conv_forward(x.float(), self.weight, self.bias)


def depthwise_in_fp32(model: nn.Module, on: bool) -> None:
    """Run (or stop running) every depthwise conv of ``model`` in fp32 under bf16 autocast."""
    for m in model.modules():
        if is_depthwise(m):
            if on:
                m.forward = types.MethodType(_fp32_forward, m)
            else:
                m.__dict__.pop("forward", None)


def precision_what_if(model: nn.Module, x: torch.Tensor, runs: int) -> dict[str, float]:
    model = model.train().to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-4)

    def step(bf16: bool) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = model(x)
        y.float().pow(2).mean().backward()
        opt.step()

    best: dict[str, float] = {}
    for _ in range(2):
        for name, bf16, dw32 in (("fp32-cl", False, False), ("bf16-cl", True, False), ("bf16-cl, depthwise fp32", True, True)):
            depthwise_in_fp32(model, dw32)
            best[name] = min(best.get(name, float("inf")), median_ms(lambda b=bf16: step(b), runs))
    depthwise_in_fp32(model, False)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--setting", default="small", help="EfficientPose setting of the supernet")
    ap.add_argument("--input", default="96x64", help="HxW of the crops (the proxy tier's)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", default="runs/depthwise-grad")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    height, width = (int(v) for v in args.input.lower().split("x"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{cpu_flags()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s)"
    print(f"machine: {machine}", flush=True)

    model = EfficientPoseSupernet(args.setting).train()
    model.drop_prob = 0.1
    x = torch.randn(args.batch, 3, height, width)
    shapes = depthwise_shapes(model, x)
    modes = ["fp32-nchw", "fp32-cl"] + (["bf16-cl"] if native_bf16(torch.device("cpu")) else [])
    rows = []
    print("\n| B, C, H, W, k, s | mode | fwd ms | fwd + dx ms | fwd + dx + dw ms | dw share | dw GMAC/s | fwd GMAC/s |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|", flush=True)
    for shape in shapes:
        for mode in modes:
            r = {"shape": list(shape), "mode": mode, **time_depthwise(shape, mode, args.runs)}
            rows.append(r)
            print(f"| {', '.join(map(str, shape))} | {mode} | {r['fwd_ms']:.1f} | {r['fwd_dx_ms']:.1f} | "
                  f"{r['fwd_dx_dw_ms']:.1f} | {r['dw_share']:.0%} | {rate(r['dw_gmacs_per_s'])} | "
                  f"{r['fwd_gmacs_per_s']:.1f} |", flush=True)

    steps = {}
    for layout in ("nchw", "cl"):
        net, inp = model, x
        if layout == "cl":
            net, inp = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        steps[layout] = {"full_ms": time_supernet_step(net, inp, args.runs, freeze_depthwise=False),
                         "frozen_dw_ms": time_supernet_step(net, inp, args.runs, freeze_depthwise=True)}
        s = steps[layout]
        print(f"\nsupernet step fp32 {layout}: {s['full_ms']:.0f} ms; depthwise weights frozen {s['frozen_dw_ms']:.0f} ms "
              f"(the depthwise weight gradients are {1 - s['frozen_dw_ms'] / s['full_ms']:.0%} of the step)", flush=True)
    what_if = {}
    if native_bf16(torch.device("cpu")):
        print(f"\n| model (batch {args.batch}) | fp32-cl ms | bf16-cl ms | bf16-cl, depthwise fp32 ms | speed-up over fp32-cl | speed-up over bf16-cl |\n"
              "|---|---:|---:|---:|---:|---:|", flush=True)
        nets = {f"EfficientPose {args.setting} supernet, {height}x{width}": (model, x)}
        for name in ("efficientpose/k3e6-small.json", "vipnas/s-vipnas-mobilenetv3.json"):
            nets[f"{name}, 128x96"] = (build_model(load_arch_file(SHIPPED_ROOT / name), 17), torch.randn(args.batch, 3, 128, 96))
        for name, (net, inp) in nets.items():
            r = what_if[name] = precision_what_if(net, inp, args.runs)
            last = r["bf16-cl, depthwise fp32"]
            print(f"| {name} | {r['fp32-cl']:.0f} | {r['bf16-cl']:.0f} | {last:.0f} | {r['fp32-cl'] / last:.2f} | "
                  f"{r['bf16-cl'] / last:.2f} |", flush=True)
    (out / "results.json").write_text(json.dumps({"machine": machine, "args": vars(args), "depthwise": rows,
                                                  "supernet_step": steps, "precision_what_if": what_if}, indent=1))
    print(f"\nresults: {out / 'results.json'}")


if __name__ == "__main__":
    main()
