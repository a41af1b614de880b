"""3M-Pose on the proxy tier (issue 21, item 7): the thesis' ablation (Table 4.2), static vs dynamic
inference (Table 4.3), and the hand-crafted small bottom-up baseline, at equal budgets with seeds.

Run: .venv/bin/python benchmarks/threem_ablation.py [--seeds 0,1] [--search-steps 400]
     [--retrain-steps 1500] [--variants baseline,dyn-egs,eels,fuse-split] [--out runs/threem]
     [--summary docs/search_quality.json]

Data: the proxy tier's scenes (benchmarks/proxy_tier.py), whole images at 128x128.

1. The baseline ``simplebaseline-small-ae`` (configs/proxy/bottomup-small.yaml) for --retrain-steps
   steps, train seeds 0, 1, 2: its AP spread is the retraining noise. Its seed-0 checkpoint is the
   teacher of the searches that use one (the thesis' teacher is HigherHRNet-W32 on COCO).
2. For every variant and search seed s, a search of --search-steps steps with configs/proxy/3m-pose.yaml
   (search.seed = train.seed = s), then the derived, pruned net retrained from scratch with the
   baseline's recipe and steps (train seed 0) and scored with COCO OKS AP on all val images (flip
   test): static inference (the last exit), every exit alone, and dynamic inference with the
   thesis' thresholds (1 and 0.6) and with one threshold t for every early exit (--sweep).
   The variants, cumulative as Table 4.2's rows:

   - ``baseline``: Gumbel-softmax weights over every op and input, argmax derivation, no FLOP or
     teacher loss, no early exits, the 1/4 row as the output (PNFS-like);
   - ``dyn-egs``: + Dyn-EGS, FLOP loss and teacher loss;
   - ``eels``: + early exits at layers 3 and 5 (the 1/4 row's features, forwarded nowhere), a
     loss at each during search and retraining;
   - ``fuse-split``: + Fuse-Split at every exit (the full 3M-Pose).

Every stage resumes (searches and trainings resume, evaluations are cached in OUT); the summary
is written after each finished row to --summary under "3m-pose" and the table printed at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import torch
from equal_budget import budget_config, train_and_evaluate
from proxy_tier import DATA, SPEC
from search_methods import mean_std

from posenas.arch import build_model, load_arch_file, named_arch
from posenas.config import load_config
from posenas.cost import count_macs
from posenas.engine.dynamic import evaluate_checkpoint_dynamic
from posenas.engine.precision import cpu_flags
from posenas.jsonio import read_json, write_json
from posenas.search.threem import ThreeMExperimentConfig, run_threem
from posenas.synthetic.generate import default_spec, ensure_synthetic

RECIPE = "configs/proxy/bottomup-small.yaml"
SEARCH = "configs/proxy/3m-pose.yaml"
BASELINE = "simplebaseline-small-ae"
BASELINE_SEEDS = (0, 1, 2)
#: Table 4.2's rows, cumulative: the overrides of configs/proxy/3m-pose.yaml (and whether a teacher is used).
VARIANTS: dict[str, tuple[list[str], bool]] = {
    "baseline": (["supernet.sampling=gumbel", "search.flop_weight=0", "supernet.exits=[]",
                  "supernet.fuse_split=false"], False),
    "dyn-egs": (["supernet.exits=[]", "supernet.fuse_split=false"], True),
    "eels": (["supernet.fuse_split=false"], True),
    "fuse-split": ([], True),
}


def search(variant: str, seed: int, steps: int, teacher: Path, out: Path) -> Path:
    """Run (or resume, or read back) one search; returns its best_arch.json."""
    overrides, with_teacher = VARIANTS[variant]
    folder = out / "search" / f"{variant}-seed{seed}"
    if (folder / "best_arch.json").exists() and (folder / "results.json").exists():
        return folder / "best_arch.json"
    weight_images = round(SPEC["train"] * 0.8)
    batch = load_config(ThreeMExperimentConfig, SEARCH).data.batch_size
    epochs = steps / (weight_images // batch)
    cfg = load_config(ThreeMExperimentConfig, SEARCH, [
        f"data.root={DATA}", f"train.max_steps={steps}", f"train.seed={seed}", f"search.seed={seed}",
        f"search.flop_scale_epochs={3 / 35 * epochs:.6f}", *overrides,
        *([f"search.teacher={teacher}"] if with_teacher else [])])
    print(f"== search {variant}, seed {seed} ({steps} steps)", flush=True)
    run_threem(cfg, folder, resume=(folder / "config.yaml").exists())
    return folder / "best_arch.json"


def dynamic_rows(checkpoint: Path, out: Path, sweep: list[float]) -> dict:
    """Dynamic inference with the thesis' thresholds and with each swept t (cached)."""
    cache = out / "dynamic.json"
    rows = read_json(cache) if cache.exists() else {}
    settings = {"thesis": None, **{f"t={t:g}": [t, t] for t in sweep}}
    for name, thresholds in settings.items():
        if name in rows:
            continue
        report = evaluate_checkpoint_dynamic(checkpoint, DATA, out / f"dynamic-{name}", thresholds=thresholds,
                                             flip_test=True, progress=False)
        rows[name] = {"thresholds": report["thresholds"], "gmacs": report["dynamic"]["gmacs"],
                      "AP": report["dynamic"]["AP"],
                      "fractions": [e["fraction"] for e in report["exits"]],
                      "exits": [{k: e.get(k) for k in ("layer", "gmacs", "AP", "APM", "APL")} for e in report["exits"]]}
        write_json(cache, rows, indent=2)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--search-steps", type=int, default=400)
    ap.add_argument("--retrain-steps", type=int, default=1500)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--sweep", default="0.2,0.3,0.4", help="dynamic inference: thresholds t tried for every exit")
    ap.add_argument("--out", default="runs/threem")
    ap.add_argument("--summary", default="docs/search_quality.json")
    args = ap.parse_args()
    variants = args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"--variants: unknown {v!r}; allowed: {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    sweep = [float(t) for t in args.sweep.split(",")] if args.sweep else []
    out = Path(args.out)
    ensure_synthetic(DATA, default_spec("coco", **SPEC), progress=False)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, cpu flags {cpu_flags()}"
    print(f"machine: {machine}; search {args.search_steps} steps, retrain {args.retrain_steps} steps", flush=True)
    summary = read_json(args.summary) if Path(args.summary).exists() else {}
    part = summary.setdefault("3m-pose", {})
    part["settings"] = {"search_steps": args.search_steps, "retrain_steps": args.retrain_steps, "seeds": seeds,
                        "search_config": SEARCH, "recipe": RECIPE, "machine": machine}

    def save() -> None:
        write_json(args.summary, summary, indent=2)

    size = tuple(load_config(ThreeMExperimentConfig, SEARCH).data.input_size)
    aps = []
    for s in BASELINE_SEEDS:
        cfg = budget_config([f"model.name={BASELINE}"], DATA, args.retrain_steps, [f"train.seed={s}"], recipe=RECIPE)
        print(f"== baseline {BASELINE} seed {s}", flush=True)
        stats, minutes = train_and_evaluate(cfg, out / "baseline" / f"seed{s}")
        aps.append(stats["AP"])
    part["baseline"] = {"name": BASELINE, "AP": aps, **mean_std(aps),
                        "gmacs": count_macs(build_model(named_arch(BASELINE), 17), size)[0] / 1e9}
    save()
    teacher = out / "baseline" / "seed0" / "checkpoints" / "last.pt"

    rows = part.setdefault("variants", {})
    for variant in variants:
        for seed in seeds:
            arch_file = search(variant, seed, args.search_steps, teacher, out)
            name = f"{variant}-seed{seed}"
            run = out / "retrain" / name
            cfg = budget_config([f"model.arch_file={arch_file}"], DATA, args.retrain_steps, [], recipe=RECIPE)
            print(f"== retrain {name}", flush=True)
            stats, minutes = train_and_evaluate(cfg, run)
            arch = load_arch_file(arch_file)
            entry = {"AP": stats["AP"], "gmacs": count_macs(build_model(arch, 17), size)[0] / 1e9,
                     "search": read_json(arch_file.parent / "results.json")["density"], "retrain_min": round(minutes, 2)}
            if arch.net.exits:
                entry["dynamic"] = dynamic_rows(run / "checkpoints" / "last.pt", run, sweep)
            row = rows.setdefault(variant, {"seeds": {}})
            row["seeds"][str(seed)] = entry
            done = list(row["seeds"].values())
            row.update(AP=[d["AP"] for d in done], **mean_std([d["AP"] for d in done]),
                       gmacs=mean_std([d["gmacs"] for d in done]))
            save()

    print(f"\nbaseline {BASELINE}: AP {part['baseline']['mean']:.3f} +- {part['baseline']['std']:.3f} "
          f"(3 train seeds), {part['baseline']['gmacs']:.4f} GMACs")
    print("| variant | search seeds | AP mean +- std | GMACs (static) |\n|---|---:|---:|---:|")
    for variant in variants:
        r = rows[variant]
        std = f"{r['std']:.3f}" if r["std"] is not None else "-"
        print(f"| {variant} | {r['n']} | {r['mean']:.3f} +- {std} | {r['gmacs']['mean']:.4f} |")
    for variant in variants:
        for seed, entry in rows[variant]["seeds"].items():
            for setting, d in entry.get("dynamic", {}).items():
                print(f"{variant} seed {seed} dynamic {setting}: AP {d['AP']:.3f} at {d['gmacs']:.4f} GMACs; exits "
                      + ", ".join(f"layer {e['layer']}: {f:.0%} (alone AP {e['AP']:.3f}, {e['gmacs']:.4f} GMACs)"
                                  for e, f in zip(d["exits"], d["fractions"])))
    print(f"summary: {args.summary} (part '3m-pose')", flush=True)


if __name__ == "__main__":
    main()
