"""Wall time of every shipped CPU config, measured on a shortened run and projected to its full length.

Run: .venv/bin/python benchmarks/shipped_configs.py [--steps 30] [--out runs/bench-configs]
     [--set KEY=VALUE ...] [--against KEY=VALUE ...]

Each config runs through the `posenas` command in a subprocess (one at a time: the machine has
2 cores) with ``train.max_steps=STEPS`` and the search phase cut down to a few evaluations
(the overrides are printed). From the run's own files it reads the optimiser steps of the full
run (``epochs × steps_per_epoch`` from the checkpoint's layout), the seconds per step over the
measured steps, and the seconds of everything after training (candidates, derivation, export,
validation); it prints a Markdown table with the full run's projected training minutes. The
configs in :data:`WHOLE` (a few minutes each) run as shipped, so their wall time is measured.
``--against KEY=VALUE ...`` runs each config a second time with those overrides right after the
first (FP32 NCHW against ``auto``, say) and prints the speed-ups of the pairs.
Runs resume: a finished config is read back from its run directory.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from posenas.config import read_yaml

#: config -> (command, overrides that shorten the non-training phases, where the training run is)
CONFIGS: dict[str, tuple[str, list[str], str]] = {
    "baselines/tiny.yaml": ("train", [], "."),
    "vipnas/tiny-resnet.yaml": ("search", ["search.candidates=2", "search.population=2", "search.parents=1"], "supernet"),
    "vipnas/tiny-mobilenetv3.yaml": ("search", ["search.candidates=2", "search.population=2", "search.parents=1"],
                                     "supernet"),
    "efficientpose/tiny-small.yaml": ("search", ["search.warmup_epochs=0.01"], "supernet"),
    "pnfs/tiny-coco.yaml": ("search", [], "supernet"),
    "autopose/tiny.yaml": ("search", [], "supernet"),
    "bottomup/tiny.yaml": ("train", [], "."),
    "3m-pose/tiny.yaml": ("search", [], "supernet"),
}
#: Configs short enough to run whole (their own train.max_steps / epochs): measured, not projected.
WHOLE = frozenset({"autopose/tiny.yaml", "bottomup/tiny.yaml", "3m-pose/tiny.yaml"})


def config_path(name: str) -> Path:
    return Path(__file__).resolve().parent.parent / "configs" / name


def run_one(name: str, steps: int, out: Path, data_root: str, extra_set: tuple[str, ...] = ()) -> dict:
    command, extra, training = CONFIGS[name]
    run = out / Path(name).with_suffix("").as_posix().replace("/", "-")
    result_file = run / "bench.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    shorten = [] if name in WHOLE else [f"train.max_steps={steps}", "train.val_every=0"]
    overrides = [*shorten, f"data.root={data_root}", *extra, *extra_set]
    if run.exists():
        cmd = [sys.executable, "-m", "posenas", command, "--resume", "--out", str(run), "--quiet"]
    else:
        cmd = [sys.executable, "-m", "posenas", command, "--config", str(config_path(name)), "--out", str(run),
               "--quiet", *overrides]
    print(f"{name}: {' '.join(cmd[2:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    train_dir = run / training
    lines = [json.loads(ln) for ln in (train_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    losses = [r for r in lines if "seconds" in r]
    first, last = losses[0], losses[-1]
    per_step = (last["seconds"] - first["seconds"]) / max(1, last["step"] - first["step"])
    layout = torch.load(train_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["train_state"]["layout"]
    cfg = read_yaml(config_path(name))
    epochs = cfg.get("train", {}).get("epochs", 10)
    full_steps = epochs * layout["steps_per_epoch"]
    if cfg.get("train", {}).get("max_steps"):
        full_steps = min(full_steps, cfg["train"]["max_steps"])
    after_training = wall - last["seconds"]
    result = {"config": name, "overrides": overrides, "steps_measured": last["step"], "s_per_step": per_step,
              "full_steps": full_steps, "projected_train_min": full_steps * per_step / 60,
              "after_training_s": after_training, "wall_s": wall}
    result_file.write_text(json.dumps(result))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="optimiser steps measured per config")
    ap.add_argument("--out", default="runs/bench-configs")
    ap.add_argument("--data", default="data/synthetic/coco", help="the default synthetic COCO dataset")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), help="which shipped configs")
    ap.add_argument("--set", nargs="*", default=[], help="extra overrides for every config (e.g. "
                    "train.precision=fp32 train.channels_last=false; use another --out)")
    ap.add_argument("--against", nargs="*", default=None, help="also run every config with these overrides "
                    "right after it (in OUT/against), e.g. train.precision=fp32 train.channels_last=false, and "
                    "print the ratios: pairs minutes apart, so the machine's drift hits both alike")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, pairs = [], []
    for name in args.configs:
        rows.append(run_one(name, args.steps, out, args.data, tuple(args.set)))
        if args.against is not None:
            pairs.append(run_one(name, args.steps, out / "against", args.data, tuple(args.set) + tuple(args.against)))
    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.steps} steps measured per config; overrides {args.set or 'none'}\n")
    print("| config | s / step | full run: steps | projected training min | after training (s) | wall of this run (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        whole = " (whole run)" if r["config"] in WHOLE else ""
        print(f"| `{r['config']}` | {r['s_per_step']:.2f} | {r['full_steps']} | {r['projected_train_min']:.1f} | "
              f"{r['after_training_s']:.0f} | {r['wall_s']:.0f}{whole} |")
    if pairs:
        print(f"\nagainst {args.against} (each run right after the one above):\n")
        print("| config | s / step, against | speed-up per step | wall, against (s) | wall speed-up |")
        print("|---|---:|---:|---:|---:|")
        for r, q in zip(rows, pairs):
            print(f"| `{r['config']}` | {q['s_per_step']:.2f} | {q['s_per_step'] / r['s_per_step']:.2f} | "
                  f"{q['wall_s']:.0f} | {q['wall_s'] / r['wall_s']:.2f} |")


if __name__ == "__main__":
    main()
