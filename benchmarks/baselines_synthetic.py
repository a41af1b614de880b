"""The synthetic benchmark table: baselines of different capacity after equal training budgets.

Run: .venv/bin/python benchmarks/baselines_synthetic.py [--steps 800] [--models a,b,c] [--out runs/bench-baselines]

Each model is trained with configs/baselines/tiny.yaml (128×96 input, batch 32, Adam,
cosine schedule) for the same number of optimiser steps on the default synthetic COCO
data, then evaluated on the val split with GT boxes and the flip test. Runs resume: an
interrupted benchmark continues where it stopped, and finished models are not retrained.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from posenas.arch import build_model, named_arch
from posenas.config import load_config
from posenas.cost import count_macs, count_params
from posenas.engine.config import ExperimentConfig
from posenas.engine.evaluate import evaluate_checkpoint
from posenas.engine.train import train
from posenas.jsonio import read_json, write_json
from posenas.synthetic.generate import default_spec, ensure_synthetic

MODELS = ("simplebaseline-small", "simplebaseline-mobilenetv2", "simplebaseline-resnet18")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--config", default="configs/baselines/tiny.yaml")
    ap.add_argument("--data", default="data/synthetic/coco")
    ap.add_argument("--out", default="runs/bench-baselines")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every model")
    args = ap.parse_args()
    ensure_synthetic(args.data, default_spec("coco"), progress=False)
    rows = []
    for name in args.models.split(","):
        run = Path(args.out) / f"{name}-{args.steps}"
        cfg = load_config(ExperimentConfig, args.config, [
            f"model.name={name}", f"data.root={args.data}", "train.epochs=1000", f"train.max_steps={args.steps}",
            "train.val_every=0", *args.set,
        ])
        timing = run / "train_seconds.json"
        if not (run / "results.json").exists():
            start = time.perf_counter()
            train(cfg, run, resume=(run / "checkpoints" / "last.pt").exists())
            previous = read_json(timing)["seconds"] if timing.exists() else 0.0
            write_json(timing, {"seconds": previous + time.perf_counter() - start})
        _, stats, _, _ = evaluate_checkpoint(run / "checkpoints" / "last.pt", args.data, run / "eval", flip_test=True,
                                             progress=False)
        model = build_model(named_arch(name), 17)
        rows.append((name, count_params(model) / 1e6, count_macs(model, cfg.data.input_size)[0] / 1e9,
                     read_json(timing)["seconds"] / 60 if timing.exists() else float("nan"), stats))
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
          f"{args.steps} steps of batch 32 at 128x96; val: GT boxes, flip test")
    print("\n| model | params (M) | GMACs | train min | AP | AP50 | AP75 | AR |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, p, g, minutes, s in rows:
        print(f"| {name} | {p:.2f} | {g:.3f} | {minutes:.1f} | {s['AP']:.3f} | {s['AP50']:.3f} | {s['AP75']:.3f} | {s['AR']:.3f} |")


if __name__ == "__main__":
    main()
