"""How well a latency lookup table predicts a whole network's latency, raw and calibrated (issue 6 item 4, issue 17 item 5).

Run: .venv/bin/python benchmarks/efficientpose_latency.py [--setting small] [--input 128x96]
     [--threads 1] [--archs 24] [--runs 30] [--cache runs/cost-tables] [--cold-cache] [--repeat 1]
     [--calibration-archs 8] [--skip-prob P] [--seed 0]

Measures the CPU-latency table of the setting — every op timed alone at its real input
shape, batch 1 — and, with ``--calibration-archs K`` > 0, its calibration: K archs of the
table's own seeded draw timed whole, ``network ≈ scale × table + call_overhead × calls``
fitted on them (posenas.search.cost_table.Calibration). ``--archs`` *held-out* random
architectures (uniform per position, or skip with ``--skip-prob`` where allowed; never one
of the calibration archs) are timed whole twice: in the table's own interleaved schedule
(load-matched: the same drift of a shared machine hits table, calibration and check alike)
and apart, afterwards (``--repeat`` interleaved rounds of ``--runs`` calls each, to show the
noise). Prints each arch's raw and calibrated predictions vs both measurements, the median
absolute and the mean signed error in percent, and the repeat spread (the noise floor).
``--cold-cache`` times each op with its caches flushed between runs. The table is written
to ``--cache`` (where a search with the same settings finds it). The MACs table is checked
the same way (it is exact by construction).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
from pathlib import Path

import torch

from posenas.cost import count_macs, measure_latency
from posenas.search.cost_table import (build_cost_table, cache_path, calibration_archs, measure_cost_table,
                                       save_cost_table, table_header)
from posenas.search.efficientpose import sample_arch
from posenas.spaces.efficientpose import SETTINGS, SKIP, EfficientPoseArch, HeadArch, derive


def cpu_flags() -> str:
    """The flags that decide CPU speed here (docs/benchmarks.md names them beside every figure)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16"))


def held_out_archs(setting: str, head: HeadArch, count: int, seed: int, skip_prob: float | None,
                   exclude: set[tuple[str, ...]]) -> list[EfficientPoseArch]:
    """``count`` archs not among ``exclude``: uniform per position, or skip with ``skip_prob`` where allowed."""
    rng = random.Random(seed)
    out: list[EfficientPoseArch] = []
    while len(out) < count:
        if skip_prob is None:
            arch = sample_arch(setting, head, rng)
        else:
            arch = EfficientPoseArch(setting, tuple(
                SKIP if pos.can_skip and rng.random() < skip_prob else rng.choice([o for o in pos.ops if o != SKIP])
                for pos in SETTINGS[setting].positions), head)
        if arch.blocks not in exclude:
            out.append(arch)
    return out


def pct(predicted: float, measured: float) -> float:
    return (predicted - measured) / measured * 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", default="small")
    ap.add_argument("--input", default="128x96")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--archs", type=int, default=24, help="held-out archs timed against the table")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--cache", default="runs/cost-tables")
    ap.add_argument("--cold-cache", action="store_true", help="time each op with its caches flushed between runs")
    ap.add_argument("--repeat", type=int, default=1, help="time each arch this many times (noise check)")
    ap.add_argument("--calibration-archs", type=int, default=8,
                    help="archs timed whole to calibrate the table (0: raw table only)")
    ap.add_argument("--skip-prob", type=float, default=None,
                    help="held-out archs skip with this probability where allowed (default: uniform over the ops)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the held-out draw")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.input.split("x"))
    head = HeadArch()
    load_start = os.getloadavg()
    header = table_header("cpu_latency", args.setting, head, size, 17, threads=args.threads, batch=1,
                          cold_cache=args.cold_cache, runs=args.runs, calibration_archs=args.calibration_archs)
    exclude = {a.blocks for a in calibration_archs(args.setting, head, args.calibration_archs)}
    archs = held_out_archs(args.setting, head, args.archs, args.seed, args.skip_prob, exclude)
    models = [derive(arch, 17).eval() for arch in archs]
    raw, calibration, in_schedule = measure_cost_table(header, progress=True, probes=models)
    path = cache_path(args.cache, header)
    save_cost_table(path, header, raw, calibration)
    corrected = calibration.apply(raw) if calibration is not None else raw
    macs_table = build_cost_table(table_header("macs", args.setting, head, size, 17))
    print(f"machine: {header['device']} ({os.cpu_count()} cores; {cpu_flags()}), {platform.machine()}, "
          f"torch {torch.__version__}; {args.setting} setting, input {size[0]}x{size[1]}, batch 1, "
          f"{args.threads} thread(s), {args.runs} runs; table {path}")
    if calibration is not None:
        print(f"calibration on {len(calibration.points)} archs of the table's own draw: network = "
              f"{calibration.scale:.4f} x table {calibration.call_overhead:+.4f} ms x timed calls (non-skip ops + 2); "
              "fit residuals " + ", ".join(f"{pct(calibration.predict(r, n), m):+.1f}" for r, n, m in calibration.points)
              + " %")
    rounds = [[measure_latency(model, size, threads=args.threads, warmup=5, runs=args.runs)["median"]
               for model in models] for _ in range(args.repeat)]  # interleaved: drift hits every arch alike
    apart = [statistics.median(r[i] for r in rounds) for i in range(len(models))]
    spread = [(max(r[i] for r in rounds) - min(r[i] for r in rounds)) / apart[i] * 100 for i in range(len(models))]
    print(f"\nheld-out archs ({'uniform per position' if args.skip_prob is None else f'skip prob {args.skip_prob}'}, "
          f"seed {args.seed}); measured in the table's schedule (sched.) and apart, afterwards:\n")
    print("| arch | non-skip ops | raw table ms | calibrated ms | measured ms, sched. | raw error % | calibrated "
          "error % | measured ms, apart | raw error % | calibrated error % |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    errors: dict[tuple[str, str], list[float]] = {}
    macs_errors = []
    for i, (arch, model) in enumerate(zip(archs, models)):
        row = [str(i), str(sum(op != SKIP for op in arch.blocks)), f"{raw.predict(arch):.2f}",
               f"{corrected.predict(arch):.2f}"]
        for where, measured in (("sched.", in_schedule[i]), ("apart", apart[i])):
            row.append(f"{measured:.2f}")
            for name, table in (("raw", raw), ("calibrated", corrected)):
                errors.setdefault((name, where), []).append(pct(table.predict(arch), measured))
                row.append(f"{errors[name, where][-1]:+.1f}")
        macs = count_macs(model, size)[0] / 1e9
        macs_errors.append(abs(macs_table.predict(arch) - macs) / macs * 100)
        print("| " + " | ".join(row) + " |")
    print()
    for (name, where), errs in errors.items():
        print(f"{name} table vs measured {where}: median absolute error {statistics.median(abs(e) for e in errs):.1f} % "
              f"(max {max(abs(e) for e in errs):.1f} %, mean signed {statistics.fmean(errs):+.1f} %) "
              f"over {args.archs} held-out archs")
    if args.repeat > 1:
        print(f"repeat spread of the latency measured apart (max - min over {args.repeat} interleaved rounds): median "
              f"{statistics.median(spread):.1f} %, max {max(spread):.1f} %")
    print(f"MACs table: max absolute error {max(macs_errors):.2e} %")
    load_end = os.getloadavg()
    print(f"load average (1 min) at start {load_start[0]:.2f}, at end {load_end[0]:.2f}")


if __name__ == "__main__":
    main()
