"""PNFS on the synthetic benchmark: the paper's Tables II, III and VI measured here, and the
SimpleBaseline of similar MACs beside them.

Run: .venv/bin/python benchmarks/pnfs_synthetic.py [--steps 300] [--random-seeds 3] [--datasets mpii,coco]
     [--tables II,III,VI,noise] [--noise-seeds 3] [--config configs/pnfs/tiny-coco.yaml] [--out runs/bench-pnfs] [--set KEY=VALUE ...]

Every PNFS run is the config's model (MobileNetV2 feature blocks, part fabrics of 3 layers x
4 scales, H=1, C=4, ops zero / skip / sep 3x3 / dil 3x3) trained for --steps optimiser steps
of batch 32 at 128x96 (Adam lr 1e-3, cosine) on the default synthetic data of each format,
exported dense (and pruned at the config's threshold), and scored on all val images with
the flip test: PCKh@0.5 / PCKh@0.1 means on MPII-style data, AP / AP50 / AR on COCO-style data.

- Table II (search strategy, P=3, d=8): random (alpha, beta drawn from N(0, 1) with
  --random-seeds seeds, mean and std as the paper reports), first-order DARTS (an alpha /
  beta step on the held-out half each step), synchronous. Equal budgets = equal steps; the
  minutes are reported beside (DARTS does two passes per step).
- Table III (body parts, synchronous, d=8): P = 1, 3, 5, 8.
- Table VI (vector in pixel, synchronous, P=3): d = 1 (scalar heatmap), 4, 8, 16.
- noise (on request): synchronous P=3, d=8 with --noise-seeds train seeds (weight init, data
  order, augmentation), the spread a difference in the tables above must beat to mean anything.
- SimpleBaseline-small (0.088 GMACs, the PNFS models' 0.08-0.15) with the recipe of
  equal_budget.py for the same steps.

A run shared by several tables (synchronous P=3 d=8) is trained once. Every run resumes
where it stopped and a finished one is only read back; summary.json holds all rows.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
from equal_budget import budget_config, train_and_evaluate, train_minutes

from posenas.arch import build_model, named_arch
from posenas.config import load_config
from posenas.cost import count_macs, count_params
from posenas.data.layout import load_dataset
from posenas.evaluation import default_metric
from posenas.jsonio import read_json, write_json
from posenas.search.pnfs import PNFSExperimentConfig, run_pnfs
from posenas.synthetic.generate import default_spec, ensure_synthetic

BASELINE = "simplebaseline-small"
TABLES = ("II", "III", "VI", "noise")


@dataclass(frozen=True)
class Variant:
    strategy: str = "synchronous"
    parts: int = 3
    vector_dim: int = 8
    seed: int = 0
    train_seed: int = 0

    @property
    def name(self) -> str:
        name = f"{self.strategy}-P{self.parts}-d{self.vector_dim}-s{self.seed}"
        return f"{name}-t{self.train_seed}" if self.train_seed else name


def variants(tables: list[str], random_seeds: int, noise_seeds: int) -> dict[str, list[Variant]]:
    """The runs of each table (the same Variant in two tables is one run)."""
    out: dict[str, list[Variant]] = {}
    if "II" in tables:
        out["II"] = [*(Variant("random", seed=s) for s in range(random_seeds)), Variant("darts"), Variant()]
    if "III" in tables:
        out["III"] = [Variant(parts=p) for p in (1, 3, 5, 8)]
    if "VI" in tables:
        out["VI"] = [Variant(vector_dim=d) for d in (1, 4, 8, 16)]
    if "noise" in tables:  # the same run with other weight-init / data-order seeds
        out["noise"] = [Variant(train_seed=t) for t in range(noise_seeds)]
    return out


def scores(metric: str, result: dict) -> dict[str, float]:
    if metric == "pckh":
        return {"PCKh@0.5": result["PCKh@0.5"]["mean"], "PCKh@0.1": result["PCKh@0.1"]["mean"]}
    # AP50 beside AP: near the floor of AP (short runs) it is the column with resolution.
    return {"AP": result["AP"], "AP50": result["AP50"], "AR": result["AR"]}


def score_keys(row: dict) -> list[str]:
    """The score columns of a row, in the order scores() gave them (the rest is size and time)."""
    return [k for k in row if k not in ("run", "params_m", "gmacs", "train_min", "pruned")]


def run_variant(v: Variant, config: str, data: str, steps: int, out: Path, overrides: list[str]) -> dict:
    """Train (or resume, or read back) one PNFS run; its row."""
    run = out / v.name
    cfg = load_config(PNFSExperimentConfig, config, [
        f"data.root={data}", "train.epochs=1000", f"train.max_steps={steps}", "train.val_every=0",
        f"supernet.parts={v.parts}", f"supernet.vector_dim={v.vector_dim}", f"search.strategy={v.strategy}",
        f"search.seed={v.seed}", f"train.seed={v.train_seed}", *overrides])
    if not (run / "results.json").exists():
        print(f"== {run}", flush=True)
        run_pnfs(cfg, run, resume=(run / "config.yaml").exists(), progress=True)
    res = read_json(run / "results.json")
    dense = res["dense"]
    row = {"run": v.name, "params_m": dense["params_m"], "gmacs": dense["gmacs"],
           "train_min": train_minutes(run / "supernet"), **scores(dense["metric"], dense["val"])}
    if "pruned" in res:
        pruned = res["pruned"]
        row["pruned"] = {"params_m": pruned["params_m"], "gmacs": pruned["gmacs"],
                         **scores(pruned["metric"], pruned["val"])}
    return row


def baseline_row(data: str, steps: int, out: Path, overrides: list[str]) -> dict:
    cfg = budget_config([f"model.name={BASELINE}"], data, steps, ["optim.lr=0.001", *overrides])
    print(f"== {BASELINE} on {data}", flush=True)
    stats, minutes = train_and_evaluate(cfg, out / f"{BASELINE}-{steps}")
    val = load_dataset(data, "val")
    model = build_model(named_arch(BASELINE), val.schema.num_joints)
    return {"run": BASELINE, "params_m": count_params(model) / 1e6,
            "gmacs": count_macs(model, tuple(cfg.data.input_size))[0] / 1e9, "train_min": minutes,
            **scores(default_metric(val), stats)}


def number(key: str, value: float) -> str:
    """AP / AR are fractions, PCKh is in percent."""
    return f"{value:.3f}" if key.startswith(("AP", "AR")) else f"{value:.1f}"


def fmt(row: dict, keys: list[str]) -> str:
    cells = [row["run"], f"{row['params_m']:.2f}", f"{row['gmacs']:.3f}", f"{row['train_min']:.1f}",
             *(number(k, row[k]) for k in keys)]
    p = row.get("pruned")
    cells.append(f"{p['params_m']:.2f} M / {p['gmacs']:.3f} G / {number(keys[0], p[keys[0]])}" if p else "")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/pnfs/tiny-coco.yaml")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--random-seeds", type=int, default=3)
    ap.add_argument("--datasets", default="mpii,coco")
    ap.add_argument("--tables", default="II,III,VI",
                    help=f"any of {', '.join(TABLES)} (noise: synchronous P=3 d=8 with --noise-seeds train seeds)")
    ap.add_argument("--noise-seeds", type=int, default=3)
    ap.add_argument("--out", default="runs/bench-pnfs")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides for every run, PNFS and baseline (e.g. train.threads=1)")
    args = ap.parse_args()
    requested = args.tables.split(",")
    unknown = set(requested) - set(TABLES)
    if unknown:
        ap.error(f"--tables: unknown table(s) {', '.join(sorted(unknown))}; choose from {', '.join(TABLES)}")
    tables = variants(requested, args.random_seeds, args.noise_seeds)
    summary_path = Path(args.out) / "summary.json"
    summary: dict = {"steps": args.steps, "config": args.config, "datasets": {}}
    if summary_path.exists():  # keep the other datasets' rows from an earlier invocation
        earlier = read_json(summary_path)
        if (earlier.get("steps"), earlier.get("config")) == (args.steps, args.config):
            summary["datasets"] = earlier.get("datasets", {})
    for fmt_name in args.datasets.split(","):
        data = f"data/synthetic/{fmt_name}"
        ensure_synthetic(data, default_spec(fmt_name), progress=False)
        out = Path(args.out) / fmt_name
        rows: dict[str, dict] = {}
        for table in tables.values():
            for v in table:
                if v.name not in rows:
                    rows[v.name] = run_variant(v, args.config, data, args.steps, out, args.set)
        rows[BASELINE] = baseline_row(data, args.steps, out, args.set)
        summary["datasets"][fmt_name] = {"rows": rows, "tables": {t: [v.name for v in vs] for t, vs in tables.items()}}
        write_json(summary_path, summary, indent=2)

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; {args.steps} steps "
          f"of batch 32 at 128x96 each; val: all images, GT boxes, flip test")
    for fmt_name, d in summary["datasets"].items():
        rows = d["rows"]
        keys = score_keys(rows[BASELINE])
        for table, names in d["tables"].items():
            print(f"\n### Table {table} ({fmt_name})\n")
            print(f"| run | params (M) | GMACs | train min | {' | '.join(keys)} | pruned: params / GMACs / {keys[0]} |")
            print("|---|---:|---:|---:|" + "---:|" * len(keys) + "---|")
            for name in names:
                print(fmt(rows[name], keys))
            spread = {"II": [n for n in names if n.startswith("random")], "noise": names}.get(table, [])
            if len(spread) > 1:
                for key in keys:
                    vals = [rows[n][key] for n in spread]
                    print(f"\n{'random' if table == 'II' else 'train seeds'}: {key} "
                          f"{number(key, statistics.mean(vals))} ± {number(key, statistics.stdev(vals))} "
                          f"over {len(vals)} seeds")
        print(f"\nbeside them ({fmt_name}):\n")
        print(fmt(rows[BASELINE], keys))


if __name__ == "__main__":
    main()
