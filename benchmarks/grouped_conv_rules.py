"""How the export rewrites of grouped convolutions are chosen: every candidate, timed per layer.

Run: flock /tmp/cpu.lock .venv/bin/python -W ignore benchmarks/grouped_conv_rules.py
     [--models vipnas/s-vipnas-mobilenetv3.json vipnas/s-vipnas-res50.json] [--input 256x192]
     [--runs 25] [--rounds 3] [--out runs/grouped-rules]

For every grouped convolution of each model that :mod:`posenas.export_rewrite` could rewrite (a
ViPNAS inverted residual's or bottleneck's k x k conv with 2 or more channels per group), the
whole block (1x1 producer -> act -> grouped conv -> act -> ... -> 1x1 consumer, attention
removed: it is the same in every candidate) at the real input shape of that layer in the model,
exported to ONNX as it is ("none") and with each rewrite forced in turn: the depthwise sum,
merging groups into the NCHWc block and into two blocks, padding groups to a multiple of the
block. Each export is checked in float64 (the rewrite module's own check) and timed in ONNX
Runtime, one thread, batch 1, the candidates of one layer in alternation over ``--rounds``
rounds of ``--runs`` (median of the round medians). Layers of the same shape are timed once.
The table gives ms per candidate, the fastest in bold, and what :func:`choose_grouped` picks on
this machine's NCHWc block; ``results.json`` keeps every number.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from posenas.arch import build_model, load_arch_file
from posenas.cost import time_calls
from posenas.engine.precision import cpu_flags
from posenas.export import onnx_proto
from posenas.export_rewrite import choose_grouped, nchwc_block, rewrite_for_export
from posenas.models.blocks import Bottleneck, InvertedResidual
from posenas.resources import SHIPPED_ROOT
from posenas.runtime import ort_session

GROUPED_KINDS = ("grouped-depthwise-sum", "grouped-merge", "grouped-pad")


def grouped_layers(model: nn.Module, input_size: tuple[int, int]) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """(name, block, input shape) of every block with a grouped (not depthwise) k x k conv."""
    found: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        conv = None
        if isinstance(m, InvertedResidual) and isinstance(m.depthwise, nn.Sequential):
            conv = m.depthwise.conv
        elif isinstance(m, Bottleneck):
            conv = m.conv2.conv
        if isinstance(conv, nn.Conv2d) and 1 < conv.in_channels // conv.groups:
            found[name] = m
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            shapes.setdefault(name, tuple(args[0].shape))
        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in found.items()]
    with torch.no_grad():
        model(torch.zeros(1, 3, *input_size))
    for h in hooks:
        h.remove()
    return [(n, m, shapes[n]) for n, m in found.items()]


def signature(block: nn.Module, shape: tuple[int, ...]) -> tuple:
    conv = block.depthwise.conv if isinstance(block, InvertedResidual) else block.conv2.conv
    producer = block.expand if isinstance(block, InvertedResidual) else block.conv1
    cin = producer.conv.in_channels if isinstance(producer, nn.Sequential) else None
    return (conv.in_channels // conv.groups, conv.kernel_size[0], conv.stride[0], cin, conv.out_channels, shape[2:])


def candidates(block: nn.Module, shape: tuple[int, ...], nchwc: int) -> dict[str, nn.Module]:
    """Each forced rewrite of ``block`` that applies, keyed "none", "dwsum", "merge<N>", "pad<N>"."""
    block = copy.deepcopy(block).eval()
    block.attention = nn.Identity()
    size, channels = shape[2:], shape[1]
    out = {"none": block}
    forced = [("dwsum", "grouped-depthwise-sum", nchwc), (f"merge{nchwc}", "grouped-merge", nchwc),
              (f"merge{2 * nchwc}", "grouped-merge", 2 * nchwc), (f"pad{nchwc}", "grouped-pad", nchwc)]
    for label, kind, b in forced:
        try:
            rewritten, done = rewrite_for_export(block, size, kinds=("fold-bn", kind), block=b,
                                                 choose=lambda c, k, s, cin, b, kind=kind: kind if cin or kind == "grouped-merge" else None,
                                                 in_channels=channels)
        except ValueError:  # e.g. groups that do not merge into b
            continue
        if any(r.kind == kind for r in done):
            out[label] = rewritten
    return out


def onnx_of(module: nn.Module, shape: tuple[int, ...]) -> bytes:
    return onnx_proto(module, (torch.zeros(shape),), ["x"], ["y"]).SerializeToString()


def time_layer(graphs: dict[str, bytes], shape: tuple[int, ...], runs: int, rounds: int) -> dict[str, float]:
    """Median ms per graph (one ORT thread), interleaved over ``rounds``."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    sessions = {k: ort_session(v, threads=1) for k, v in graphs.items()}
    per: dict[str, list[float]] = {k: [] for k in graphs}
    for _ in range(rounds):
        for k, s in sessions.items():
            per[k].append(time_calls(lambda a, s=s: s.run(None, {"x": a}), x, 5, runs)["median"])
    return {k: statistics.median(v) for k, v in per.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vipnas/s-vipnas-mobilenetv3.json", "vipnas/s-vipnas-res50.json"])
    parser.add_argument("--input", default="256x192")
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="runs/grouped-rules")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    size = tuple(int(v) for v in args.input.split("x"))
    nchwc = nchwc_block() or 8
    print(f"CPU: {cpu_flags()}; load {os.getloadavg()[0]:.1f}; ORT NCHWc block {nchwc}; input {args.input}; "
          f"1 thread, {args.rounds} rounds x {args.runs} runs per candidate", flush=True)
    rows, seen = [], set()
    for spec in args.models:
        path = Path(spec) if Path(spec).exists() else SHIPPED_ROOT / spec
        model = build_model(load_arch_file(path), 17).eval()
        for name, block, shape in grouped_layers(model, size):
            sig = signature(block, shape)
            if sig in seen:
                continue
            seen.add(sig)
            c, k, stride, cin, channels, _ = sig
            graphs = {label: onnx_of(m, shape) for label, m in candidates(block, shape, nchwc).items()}
            ms = time_layer(graphs, shape, args.runs, args.rounds)
            pick = choose_grouped(c, k, stride, cin, nchwc)
            row = {"model": spec, "layer": name, "per_group": c, "kernel": k, "stride": stride, "producer_in": cin,
                   "channels": channels, "input": list(shape), "ms": ms, "rule": pick, "fastest": min(ms, key=ms.get)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"cpu": cpu_flags(), "nchwc": nchwc, "rows": rows}, indent=1))
    labels = ["none", "dwsum", f"merge{nchwc}", f"merge{2 * nchwc}", f"pad{nchwc}"]
    rule_label = {None: "none", "grouped-depthwise-sum": "dwsum", "grouped-merge": f"merge{nchwc}",
                  "grouped-pad": f"pad{nchwc}"}
    print(f"\n| layer (cin → C, c per group, k×k, stride, input) | {' | '.join(labels)} | rule picks |")
    print("|---|" + "---:|" * len(labels) + "---|")
    for r in rows:
        cells = []
        for label in labels:
            v = r["ms"].get(label)
            cells.append("–" if v is None else (f"**{v:.2f}**" if label == r["fastest"] else f"{v:.2f}"))
        h, w = r["input"][2:]
        print(f"| cin {r['producer_in']}, C {r['channels']}, c {r['per_group']}, {r['kernel']}×{r['kernel']}"
              f"{' s2' if r['stride'] == 2 else ''}, {h}×{w} | {' | '.join(cells)} | {rule_label[r['rule']]} |")


if __name__ == "__main__":
    sys.exit(main())
