"""The synthetic benchmark table: baselines of different capacity after equal training budgets.

Run: .venv/bin/python benchmarks/baselines_synthetic.py [--steps 800] [--models a,b,c] [--out runs/bench-baselines]

Each model gets the equal budget of equal_budget.py (configs/baselines/tiny.yaml: 128×96
input, batch 32, Adam, cosine; --steps optimiser steps) on the default synthetic COCO data,
then is evaluated on the val split with GT boxes and the flip test. Runs resume: an
interrupted benchmark continues where it stopped, and finished models are not retrained.
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import torch
from equal_budget import RECIPE, budget_config, train_and_evaluate

from posenas.arch import build_model, named_arch
from posenas.cost import count_macs, count_params
from posenas.synthetic.generate import default_spec, ensure_synthetic

MODELS = ("simplebaseline-small", "simplebaseline-mobilenetv2", "simplebaseline-resnet18")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--config", default=RECIPE)
    ap.add_argument("--data", default="data/synthetic/coco")
    ap.add_argument("--out", default="runs/bench-baselines")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every model")
    args = ap.parse_args()
    ensure_synthetic(args.data, default_spec("coco"), progress=False)
    rows = []
    for name in args.models.split(","):
        cfg = budget_config([f"model.name={name}"], args.data, args.steps, args.set, args.config)
        stats, minutes = train_and_evaluate(cfg, Path(args.out) / f"{name}-{args.steps}")
        model = build_model(named_arch(name), 17)
        rows.append((name, count_params(model) / 1e6, count_macs(model, cfg.data.input_size)[0] / 1e9, minutes, stats))
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
          f"{args.steps} steps of batch 32 at 128x96; val: GT boxes, flip test")
    print("\n| model | params (M) | GMACs | train min | AP | AP50 | AP75 | AR |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, p, g, minutes, s in rows:
        print(f"| {name} | {p:.2f} | {g:.3f} | {minutes:.1f} | {s['AP']:.3f} | {s['AP50']:.3f} | {s['AP75']:.3f} | {s['AR']:.3f} |")


if __name__ == "__main__":
    main()
