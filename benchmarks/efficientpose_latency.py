"""How well a latency lookup table predicts a whole network's latency (EfficientPose item 4).

Run: .venv/bin/python benchmarks/efficientpose_latency.py [--setting small] [--input 128x96]
     [--threads 1] [--archs 24] [--runs 30] [--cache runs/cost-tables] [--cold-cache] [--repeat 1]

Builds (or reuses) the CPU-latency table of the setting — every op timed alone at its real
input shape, batch 1 — then draws ``--archs`` random architectures (uniform per position),
times each derived network (median of ``--runs`` after warm-up, same threads; ``--repeat``
times to show the noise) and compares with the table's sum. ``--cold-cache`` builds the
table with each op's caches flushed between runs. Prints each arch's predicted vs measured ms and the median absolute
error in percent. The MACs table is checked the same way (it is exact by construction).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics

import torch

from posenas.cost import count_macs, measure_latency
from posenas.search.cost_table import build_cost_table, cached_cost_table, table_header
from posenas.search.efficientpose import sample_arch
from posenas.spaces.efficientpose import HeadArch, derive


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", default="small")
    ap.add_argument("--input", default="128x96")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--archs", type=int, default=24)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--cache", default="runs/cost-tables")
    ap.add_argument("--cold-cache", action="store_true", help="time each op with its caches flushed between runs")
    ap.add_argument("--repeat", type=int, default=1, help="time each arch this many times (noise check)")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.input.split("x"))
    head = HeadArch()
    header = table_header("cpu_latency", args.setting, head, size, 17, threads=args.threads, batch=1,
                          cold_cache=args.cold_cache, runs=args.runs)
    path, table = cached_cost_table(args.cache, header, progress=True)
    macs_table = build_cost_table(table_header("macs", args.setting, head, size, 17))
    rng = random.Random(0)
    errors, macs_errors, spread = [], [], []
    print(f"machine: {header['device']} ({os.cpu_count()} cores), {platform.machine()}, torch {torch.__version__}; "
          f"{args.setting} setting, input {size[0]}x{size[1]}, batch 1, {args.threads} thread(s); table {path}\n")
    print("| arch | predicted ms | measured ms | error % | table GMACs | counted GMACs |")
    print("|---:|---:|---:|---:|---:|---:|")
    for i in range(args.archs):
        arch = sample_arch(args.setting, head, rng)
        model = derive(arch, 17).eval()
        repeats = [measure_latency(model, size, threads=args.threads, warmup=5, runs=args.runs)["median"]
                   for _ in range(args.repeat)]
        measured = statistics.median(repeats)
        if args.repeat > 1:
            spread.append((max(repeats) - min(repeats)) / measured * 100)
        predicted = table.predict(arch)
        macs = count_macs(model, size)[0] / 1e9
        errors.append(abs(predicted - measured) / measured * 100)
        macs_errors.append(abs(macs_table.predict(arch) - macs) / macs * 100)
        print(f"| {i} | {predicted:.2f} | {measured:.2f} | {errors[-1]:.1f} | {macs_table.predict(arch):.4f} | {macs:.4f} |")
    print(f"\nlatency table: median absolute error {statistics.median(errors):.1f} % "
          f"(max {max(errors):.1f} %) over {args.archs} random archs")
    if spread:
        print(f"repeat spread of the measured latency (max - min over {args.repeat} timings): median "
              f"{statistics.median(spread):.1f} %, max {max(spread):.1f} %")
    print(f"MACs table: max absolute error {max(macs_errors):.2e} %")


if __name__ == "__main__":
    main()
