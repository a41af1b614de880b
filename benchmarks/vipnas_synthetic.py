"""ViPNAS on the synthetic benchmark: searched sub-nets at several GMACs budgets against the
SimpleBaselines, each trained with the same budget.

Run: .venv/bin/python benchmarks/vipnas_synthetic.py [--config configs/vipnas/tiny-resnet.yaml]
     [--supernet-steps 600] [--budgets 0.01,0.02,0.04] [--steps 800] [--set optim.lr=0.001]
     [--baselines-out runs/bench-baselines-v3] [--out runs/bench-vipnas]

Phases, each resumable (a finished phase is read back, an interrupted one continues):

1. supernet: sandwich training with the search config's recipe for --supernet-steps steps;
2. search at each GMACs budget (the config's strategies and number of candidates; each
   candidate inherits the supernet's weights, has its BN re-calibrated and is scored on
   the first val images) -> the best arch per budget;
3. each best arch retrained from scratch with the baselines' recipe and step count
   (equal_budget.py, the same --set overrides), evaluated on all val images with the
   flip test; the SimpleBaselines come from the same function (and from the same run
   directories as baselines_synthetic.py, so its finished runs are reused);
4. side by side: params, GMACs, single-thread batch-1 FPS in PyTorch eager (rounds over
   all models interleaved, median of the round medians), AP;
5. the cost of the supernet machinery: one training step (forward + backward, batch 32,
   one thread) of the supernet fixed to an arch vs its derived plain model, interleaved.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from baselines_synthetic import MODELS
from equal_budget import budget_config, interleaved_latency_ms, train_and_evaluate, train_minutes

from posenas.arch import build_model, load_arch_file, named_arch
from posenas.checkpoint import load_checkpoint
from posenas.config import load_config
from posenas.cost import count_macs, count_params
from posenas.engine.task import heatmap_loss
from posenas.jsonio import read_json, write_json
from posenas.search.vipnas_config import SearchExperimentConfig
from posenas.search.vipnas import search_supernet, train_supernet
from posenas.checkpoint import supernet_from_checkpoint
from posenas.spaces.vipnas import ViPNASArch, derive, largest_arch
from posenas.synthetic.generate import default_spec, ensure_synthetic


def step_ms(model: torch.nn.Module, images: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> float:
    """One forward + backward in train mode, in ms."""
    model.train()
    start = time.perf_counter()
    heatmap_loss(model(images), target, weight).backward()
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed * 1000


def machinery_cost(supernet, archs: dict[str, ViPNASArch], input_size: tuple[int, int], rounds: int) -> list[tuple]:
    """(name, supernet ms, derived ms) per arch: median over interleaved rounds, one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(32, 3, *input_size, generator=g)
    target = torch.rand(32, supernet.num_joints, input_size[0] // 4, input_size[1] // 4, generator=g)
    weight = torch.ones(32, supernet.num_joints)
    rows = []
    for name, arch in archs.items():
        plain = derive(arch, supernet.num_joints, supernet)
        times: dict[str, list[float]] = {"supernet": [], "derived": []}
        for r in range(rounds + 1):  # round 0 warms up
            supernet.set_active(arch)
            a = step_ms(supernet, images, target, weight)
            b = step_ms(plain, images, target, weight)
            if r:
                times["supernet"].append(a)
                times["derived"].append(b)
        rows.append((name, statistics.median(times["supernet"]), statistics.median(times["derived"])))
    torch.set_num_threads(previous)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/vipnas/tiny-resnet.yaml")
    ap.add_argument("--supernet-steps", type=int, default=600)
    ap.add_argument("--budgets", default="0.01,0.02,0.04", help="GMACs budgets at the config's input size")
    ap.add_argument("--steps", type=int, default=800, help="training steps of every compared model")
    ap.add_argument("--set", nargs="*", default=["optim.lr=0.001"], metavar="KEY=VALUE",
                    help="recipe overrides for every compared model (as baselines_synthetic.py --set)")
    ap.add_argument("--search-set", nargs="*", default=[], metavar="KEY=VALUE", help="search config overrides")
    ap.add_argument("--data", default="data/synthetic/coco")
    ap.add_argument("--baselines-out", default="runs/bench-baselines-v3")
    ap.add_argument("--out", default="runs/bench-vipnas")
    ap.add_argument("--fps-rounds", type=int, default=5)
    ap.add_argument("--fps-runs", type=int, default=10)
    args = ap.parse_args()
    ensure_synthetic(args.data, default_spec("coco"), progress=False)
    out = Path(args.out)
    cfg = load_config(SearchExperimentConfig, args.config, [
        f"data.root={args.data}", "train.epochs=1000", f"train.max_steps={args.supernet_steps}", *args.search_set,
    ])
    input_size = tuple(cfg.data.input_size)

    print(f"== supernet: {cfg.supernet.space}, {args.supernet_steps} sandwich steps", flush=True)
    checkpoint = train_supernet(cfg, out)

    rows, models = [], {}
    archs = {"largest": largest_arch(cfg.supernet.space, cfg.supernet.parsed_choices())}
    for budget in (float(b) for b in args.budgets.split(",")):
        name = f"vipnas {budget:g} GMACs"
        search_dir = out / f"search-{budget:g}gmacs"
        if not (search_dir / "results.json").exists():
            print(f"== search under {budget:g} GMACs", flush=True)
            search_supernet(replace(cfg, search=replace(cfg.search, max_gmacs=budget)), search_dir, checkpoint)
        searched = read_json(search_dir / "results.json")
        arch_file = search_dir / "best_arch.json"
        print(f"== retrain {arch_file} for {args.steps} steps", flush=True)
        stats, minutes = train_and_evaluate(
            budget_config([f"model.arch_file={arch_file}"], args.data, args.steps, args.set),
            out / f"retrain-{budget:g}gmacs-{args.steps}")
        archs[name] = load_arch_file(arch_file)
        models[name] = build_model(archs[name], 17).eval()
        rows.append((name, minutes, stats, searched["best"]["score"]))
    for name in MODELS:
        print(f"== baseline {name} for {args.steps} steps", flush=True)
        stats, minutes = train_and_evaluate(
            budget_config([f"model.name={name}"], args.data, args.steps, args.set),
            Path(args.baselines_out) / f"{name}-{args.steps}")
        models[name] = build_model(named_arch(name), 17).eval()
        rows.append((name, minutes, stats, None))

    print("== single-thread FPS (interleaved rounds)", flush=True)
    fps = {name: 1000 / ms for name, ms in interleaved_latency_ms(models, input_size, args.fps_rounds,
                                                                   args.fps_runs).items()}
    supernet = supernet_from_checkpoint(load_checkpoint(checkpoint), checkpoint)
    print("== supernet vs derived training step", flush=True)
    machinery = machinery_cost(supernet, archs, input_size, rounds=5)

    table = []
    for name, minutes, stats, inherited in rows:
        model = models[name]
        table.append({"model": name, "params_m": count_params(model) / 1e6,
                      "gmacs": count_macs(model, input_size)[0] / 1e9, "fps_1t": fps[name], "train_min": minutes,
                      "AP": stats["AP"], "AP50": stats["AP50"], "AR": stats["AR"], "search_AP_inherited": inherited})
    supernet_minutes = train_minutes(out / "supernet")
    write_json(out / "summary.json", {"table": table, "machinery": machinery, "supernet_steps": args.supernet_steps,
                                      "supernet_train_min": supernet_minutes,
                                      "steps": args.steps, "recipe_overrides": args.set}, indent=2)

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; input "
          f"{input_size[0]}x{input_size[1]}; every model {args.steps} steps of batch 32 from scratch "
          f"(--set {' '.join(args.set)}); val: all images, GT boxes, flip test")
    print(f"supernet: {args.supernet_steps} sandwich steps in {supernet_minutes:.1f} min (not in the train min column)")
    print(f"\n| model | params (M) | GMACs | 1-thread FPS | train min | AP | AP50 | AR | AP in search (inherited, "
          f"{cfg.search.val_max_images or 'all'} val) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in table:
        inherited = "" if r["search_AP_inherited"] is None else f"{r['search_AP_inherited']:.4f}"
        print(f"| {r['model']} | {r['params_m']:.2f} | {r['gmacs']:.3f} | {r['fps_1t']:.0f} | {r['train_min']:.1f} | "
              f"{r['AP']:.3f} | {r['AP50']:.3f} | {r['AR']:.3f} | {inherited} |")
    print("\n| arch | supernet step (ms) | derived step (ms) | supernet / derived |")
    print("|---|---:|---:|---:|")
    for name, a, b in machinery:
        print(f"| {name} | {a:.0f} | {b:.0f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
