"""Does bf16 autocast train as well as FP32? The same recipe in both precisions, several seeds each.

Run: .venv/bin/python benchmarks/precision_accuracy.py [--config baselines/tiny] [--seeds 0,1]
     [--out runs/bench-precision] [--set KEY=VALUE ...]

Each (precision, seed) is one `posenas train` run in ``--out`` (run one at a time; an
interrupted run is resumed, a finished one read back). Prints per run the final training loss
(mean of the last 50 logged steps), val AP / AP50 / AR and seconds per step, then per precision
the mean ± std over seeds, and the bf16 − fp32 gap beside the seed-to-seed spread: bf16 trains
"as well" when the gap is inside that noise. On a CPU without native bf16 the bf16 runs are
emulated and slow, so the default recipe is shortened (``--set`` overrides it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from posenas.engine.precision import cpu_flags

DEFAULT_SET = ["data.input_size=[64, 64]", "train.max_steps=150", "train.val_every=0", "data.val_max_images=200",
               "train.checkpoint_every=25"]


def run_one(config: str, precision: str, seed: int, out: Path, overrides: list[str]) -> dict:
    run = out / f"{precision}-seed{seed}"
    results = run / "results.json"
    if not results.exists():
        if (run / "checkpoints" / "last.pt").exists():
            cmd = ["train", "--resume", "--out", str(run), "--quiet"]
        else:
            cmd = ["train", "--config", config, "--out", str(run), "--quiet", f"train.precision={precision}",
                   "train.channels_last=auto", f"train.seed={seed}", *overrides]
        print(f"posenas {' '.join(cmd)}", flush=True)
        subprocess.run([sys.executable, "-m", "posenas", *cmd], check=True, stdout=subprocess.DEVNULL)
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    steps = [ln for ln in lines if "loss" in ln]
    final = json.loads(results.read_text())
    tail = [s for s in steps if s["step"] > steps[-1]["step"] - 50]
    return {"precision": precision, "seed": seed, "loss": statistics.fmean(s["loss"] for s in tail),
            "AP": final["AP"], "AP50": final["AP50"], "AR": final["AR"],
            "s_per_step": steps[-1]["seconds"] / steps[-1]["step"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="baselines/tiny")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--out", default="runs/bench-precision")
    ap.add_argument("--set", nargs="*", default=None, help=f"config overrides (default: {' '.join(DEFAULT_SET)})")
    args = ap.parse_args()
    out = Path(args.out)
    overrides = DEFAULT_SET if args.set is None else args.set
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [run_one(args.config, p, s, out, overrides) for p in ("fp32", "bf16") for s in seeds]
    print(f"\nmachine: {cpu_flags()}; config {args.config} with {' '.join(overrides)}\n")
    print("| precision | seed | final loss (last 50 steps) | AP | AP50 | AR | s/step |\n|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['precision']} | {r['seed']} | {r['loss']:.3e} | {r['AP']:.3f} | {r['AP50']:.3f} | {r['AR']:.3f} | "
              f"{r['s_per_step']:.2f} |")
    print("\n| precision | loss mean ± std | AP mean ± std | AR mean ± std |\n|---|---:|---:|---:|")
    stats = {}
    for p in ("fp32", "bf16"):
        group = [r for r in rows if r["precision"] == p]
        stats[p] = {k: (statistics.fmean(r[k] for r in group), statistics.stdev(r[k] for r in group) if len(group) > 1
                        else 0.0) for k in ("loss", "AP", "AR")}
        print(f"| {p} | " + " | ".join(f"{m:.4g} ± {s:.2g}" for m, s in stats[p].values()) + " |")
    for k in ("loss", "AP", "AR"):
        gap = stats["bf16"][k][0] - stats["fp32"][k][0]
        noise = max(stats["fp32"][k][1], stats["bf16"][k][1])
        print(f"{k}: bf16 - fp32 = {gap:+.3g}; seed std {noise:.2g} -> "
              f"{'within' if abs(gap) <= 2 * noise else 'OUTSIDE'} 2 std of the seed noise")


if __name__ == "__main__":
    main()
