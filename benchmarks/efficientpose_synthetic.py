"""EfficientPose on the synthetic benchmark: the DNAS architecture vs random search vs
SimpleBaseline-MobileNetV2, with and without SIC, specialised for MACs vs CPU latency.

Run: .venv/bin/python benchmarks/efficientpose_synthetic.py [--config configs/efficientpose/tiny-small.yaml]
     [--search-steps 600] [--random-archs 6] [--steps 800] [--set optim.lr=0.001]
     [--baselines-out runs/bench-baselines-v3] [--out runs/bench-efficientpose]

Phases, each resumable (finished ones are read back):

1. DNAS with the MACs table and DNAS with the CPU-latency table (this machine, 1 thread),
   each --search-steps steps of the config's recipe; the wall time of the faster of the two
   (they do the same work) is the budget of
2. the random-search baseline: --random-archs architectures, each trained for the same number
   of steps, so many that together they fit that budget at each draw's measured step time;
3. every resulting arch (and the MACs arch without SIC) retrained from scratch with the
   baselines' recipe (equal_budget.py, --steps steps), evaluated on all val images with the
   flip test; SimpleBaseline-MobileNetV2 from the same recipe (its capacity-table run is reused);
4. side by side: params, GMACs, single-thread batch-1 latency (interleaved rounds), AP.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from equal_budget import budget_config, interleaved_latency_ms, train_and_evaluate

from posenas.arch import build_model, load_arch_file, named_arch, save_arch_file
from posenas.config import load_config
from posenas.cost import count_macs, count_params
from posenas.jsonio import read_json, write_json
from posenas.search.efficientpose import DNASExperimentConfig, random_search_archs, run_dnas, run_random_search
from posenas.spaces.efficientpose import EfficientPoseArch
from posenas.synthetic.generate import default_spec, ensure_synthetic


def searched(run: Path, cfg: DNASExperimentConfig, search) -> dict:
    """Run (or resume, or read back) one search; returns its results plus its wall minutes."""
    timing = run / "wall_seconds.json"
    if not (run / "results.json").exists() or not (run / "best_arch.json").exists():
        start = time.perf_counter()
        try:
            search(cfg, run, resume=(run / "config.yaml").exists(), progress=True)
        finally:  # an interrupted segment's time counts too
            before = read_json(timing)["seconds"] if timing.exists() else 0.0
            write_json(timing, {"seconds": before + time.perf_counter() - start})
    if not timing.exists():
        raise SystemExit(f"{run}: finished without wall_seconds.json (made outside this benchmark?); remove it")
    return read_json(run / "results.json")


def single_arch_step_seconds(arch: EfficientPoseArch, input_size: tuple[int, int], batch: int,
                             clock: Callable[[], float] = time.perf_counter) -> float:
    """Median seconds of one training step (forward, backward, SGD step) of a plain arch, on
    ``clock`` (wall by default; ``time.process_time`` gives CPU seconds, which a paused or
    shared machine does not inflate)."""
    model = build_model(arch, 17).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, *input_size), torch.rand(batch, 17, input_size[0] // 4, input_size[1] // 4)
    times = []
    for i in range(6):
        start = clock()
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        if i:
            times.append(clock() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/efficientpose/tiny-small.yaml")
    ap.add_argument("--search-steps", type=int, default=600)
    ap.add_argument("--random-archs", type=int, default=6)
    ap.add_argument("--random-steps", type=int, help="steps per random arch (default: what fits the DNAS budget)")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--set", nargs="*", default=["optim.lr=0.001"], metavar="KEY=VALUE")
    ap.add_argument("--search-set", nargs="*", default=[], metavar="KEY=VALUE", help="search config overrides")
    ap.add_argument("--data", default="data/synthetic/coco")
    ap.add_argument("--baselines-out", default="runs/bench-baselines-v3")
    ap.add_argument("--out", default="runs/bench-efficientpose")
    ap.add_argument("--fps-rounds", type=int, default=5)
    args = ap.parse_args()
    ensure_synthetic(args.data, default_spec("coco"), progress=False)
    out = Path(args.out)
    cfg = load_config(DNASExperimentConfig, args.config, [
        f"data.root={args.data}", "train.epochs=1000", f"train.max_steps={args.search_steps}", *args.search_set])
    size = tuple(cfg.data.input_size)

    runs = {}
    for kind in ("macs", "cpu_latency"):
        print(f"== DNAS, cost {kind}", flush=True)
        kcfg = replace(cfg, search=replace(cfg.search, cost=kind, strategy="dnas"))
        runs[kind] = searched(out / f"dnas-{kind}", kcfg, run_dnas)
    # The two searches do the same work (same supernet and steps; only the table differs), so the
    # shorter wall time is the budget: the other was slowed by whatever else shared the machine.
    budget_s = min(read_json(out / f"dnas-{kind}" / "wall_seconds.json")["seconds"] for kind in runs)
    steps_file = out / "random_steps.json"
    if args.random_steps and not steps_file.exists():
        write_json(steps_file, {"steps": args.random_steps, "step_seconds": None})
    rcfg = replace(cfg, search=replace(cfg.search, strategy="random", random_archs=args.random_archs))
    if not steps_file.exists():  # fixed once, so a resumed benchmark keeps the same random-search budget
        # every draw trains the same number of steps; together they take the DNAS budget
        per_step = [single_arch_step_seconds(arch, size, cfg.data.batch_size) for arch in random_search_archs(rcfg)]
        write_json(steps_file, {"steps": max(1, int(budget_s / sum(per_step))), "step_seconds": per_step})
    random_steps = read_json(steps_file)["steps"]
    print(f"== random search: {args.random_archs} archs x {random_steps} steps (DNAS budget {budget_s / 60:.1f} min)",
          flush=True)
    rcfg = replace(rcfg, search=replace(rcfg.search, random_steps=random_steps))
    runs["random"] = searched(out / "random", rcfg, run_random_search)

    archs = {"DNAS (MACs table)": load_arch_file(out / "dnas-macs" / "best_arch.json"),
             "DNAS (CPU-latency table)": load_arch_file(out / "dnas-cpu_latency" / "best_arch.json"),
             "random search best": load_arch_file(out / "random" / "best_arch.json")}
    no_sic = replace(archs["DNAS (MACs table)"], head=replace(archs["DNAS (MACs table)"].head, sic=False))
    save_arch_file(out / "dnas-macs-no-sic.json", no_sic)
    archs["DNAS (MACs table), no SIC"] = no_sic
    rows, models = [], {}
    for i, (name, arch) in enumerate(archs.items()):
        file = out / f"arch-{i}.json"
        save_arch_file(file, arch)
        print(f"== retrain {name} for {args.steps} steps", flush=True)
        stats, minutes = train_and_evaluate(budget_config([f"model.arch_file={file}"], args.data, args.steps, args.set),
                                            out / f"retrain-{i}-{args.steps}")
        models[name] = build_model(arch, 17).eval()
        rows.append((name, minutes, stats))
    name = "simplebaseline-mobilenetv2"
    stats, minutes = train_and_evaluate(budget_config([f"model.name={name}"], args.data, args.steps, args.set),
                                        Path(args.baselines_out) / f"{name}-{args.steps}")
    models[name] = build_model(named_arch(name), 17).eval()
    rows.append((name, minutes, stats))

    print("== single-thread latency (interleaved rounds)", flush=True)
    ms = interleaved_latency_ms(models, size, args.fps_rounds)
    table = []
    for name, minutes, stats in rows:
        model = models[name]
        table.append({"model": name, "params_m": count_params(model) / 1e6, "gmacs": count_macs(model, size)[0] / 1e9,
                      "ms_1t": ms[name], "train_min": minutes, "AP": stats["AP"],
                      "AP50": stats["AP50"], "AR": stats["AR"]})
    searches = {k: {"wall_min": read_json(out / d / "wall_seconds.json")["seconds"] / 60}
                for k, d in (("macs", "dnas-macs"), ("cpu_latency", "dnas-cpu_latency"), ("random", "random"))}
    write_json(out / "summary.json", {"table": table, "searches": searches, "random_steps": random_steps,
                                      "search_steps": args.search_steps, "steps": args.steps}, indent=2)

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; input {size[0]}x{size[1]}; "
          f"every model {args.steps} steps of batch 32 from scratch (--set {' '.join(args.set)}); val: GT boxes, flip test")
    for k, v in searches.items():
        print(f"search {k}: {v['wall_min']:.1f} min")
    print(f"random search: {args.random_archs} archs x {random_steps} steps\n")
    print("| model | params (M) | GMACs | 1-thread ms | train min | AP | AP50 | AR |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in table:
        print(f"| {r['model']} | {r['params_m']:.2f} | {r['gmacs']:.3f} | {r['ms_1t']:.1f} | {r['train_min']:.1f} | "
              f"{r['AP']:.3f} | {r['AP50']:.3f} | {r['AR']:.3f} |")
    for kind in ("macs", "cpu_latency"):
        arch = load_arch_file(out / f"dnas-{kind}" / "best_arch.json")
        print(f"\n{kind} arch blocks: {' '.join(arch.blocks)}")


if __name__ == "__main__":
    main()
