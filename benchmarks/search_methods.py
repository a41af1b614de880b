"""The three searches against their baselines on the proxy tier: does a search find a better
accuracy-cost point than random at equal cost, beyond the training noise?

Run: .venv/bin/python benchmarks/search_methods.py [--methods vipnas,efficientpose,pnfs] [--seeds 0,1,2]
     [--search-steps 1600] [--retrain-steps 400] [--vipnas-candidates 32] [--random-archs 8]
     [--set METHOD:KEY=VALUE ...] [--out runs/search-methods] [--summary docs/search_quality.json]

For every method and search seed s (``train.seed`` and ``search.seed`` = s), on the tier's data
(benchmarks/proxy_tier.py) with the method's proxy config:

- ``vipnas`` (configs/proxy/vipnas-resnet.yaml): one supernet, --search-steps sandwich steps;
  on it the constrained evolutionary search and random sampling, each scoring
  --vipnas-candidates sub-nets under the config's GMACs budget. Scoring a candidate costs the
  same whatever drew it, so equal candidates = equal wall clock (both are timed).
- ``efficientpose`` (configs/proxy/efficientpose.yaml): DNAS with the MACs table and with the
  CPU-latency table, --search-steps steps each; random search: --random-archs draws, each
  trained for the steps that together fit the faster DNAS's time (the paper's baseline; in
  CPU seconds of the process, which pauses and other load do not inflate).
- ``pnfs`` (configs/proxy/pnfs.yaml): synchronous and first-order DARTS, --search-steps steps,
  and the fabric with alpha, beta drawn from N(0, 1) with seed s and frozen (the paper's
  random baseline; same steps, so the same wall clock as synchronous); and ``uniform``, no
  search at all: alpha, beta left at their initial zeros (every op and input weighted equally),
  pruned at the same threshold, the same arch for every s and so retrained with train seed s.
  Both searches ended with alpha near uniform, so this baseline says whether they found
  anything beyond the even weighting they started from.
- ``autopose`` (configs/proxy/autopose.yaml): the REINFORCE controller against coin-flip
  branch vectors under the same cell search, every branch on (the paper's "fixed to four"),
  and the aggregation-cell ablation (plain concatenation, with the controller), --search-steps
  steps each (not in the default --methods: a supernet step is ~2.5 s here); the controller's
  reward curve per seed.

Every pick (ViPNAS/EfficientPose: best_arch.json; PNFS: arch_pruned.json) is retrained from
scratch with the tier recipe (configs/proxy/baseline-small.yaml) for --retrain-steps steps, train
seed 0 (PNFS uniform: s), and scored with COCO OKS AP on all val images, GT boxes, flip test; the SimpleBaselines
with the same recipe and steps, train seeds 0..2 (their spread is the retraining noise). The
summary goes to ``--summary``: part ``methods``, one entry per searched variant (``vipnas``,
``efficientpose``, ``efficientpose-cpu_latency``, ``pnfs``, ``pnfs-darts``, ``autopose``; the
AutoPose all-branches and concat rows are in ``method_runs``) with searched_ap,
random_ap, searched_gmacs, random_gmacs over the search seeds and the mean difference to random
with its standard error (PNFS also uniform_ap and versus_uniform, the same against no search); part ``method_runs``, the settings, the baselines and every variant's
seeds (AP, GMACs, search minutes, arch). Each search's run directory can be put side by side
with ``posenas compare``.

The summary is the benchmark's memory across machines: a baseline with all its train seeds, and a
(method, search seed) with every variant, that ``--summary`` already holds are not run again (its
settings must equal this run's, or the script stops), so committing the summary after each seed
keeps finished work when the run folders are gone.
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
from efficientpose_synthetic import single_arch_step_seconds
from proxy_tier import DATA, SPEC, input_size, run

from posenas.arch import build_model, load_arch_file, named_arch, save_arch_file
from posenas.config import load_config
from posenas.cost import count_macs
from posenas.data.layout import load_dataset
from posenas.engine.precision import cpu_flags
from posenas.jsonio import read_json, read_jsonl, write_json
from posenas.search.autopose import AutoPoseExperimentConfig, run_autopose
from posenas.search.efficientpose import DNASExperimentConfig, random_search_archs, run_dnas, run_random_search
from posenas.search.pnfs import PNFSExperimentConfig, run_pnfs
from posenas.search.rundir import open_search_dir
from posenas.search.vipnas import search_supernet, train_supernet
from posenas.search.vipnas_config import SearchExperimentConfig
from posenas.spaces.pnfs import PNFSModel, export_arch, prune_arch
from posenas.synthetic.generate import default_spec, ensure_synthetic

CONFIGS = {"vipnas": "configs/proxy/vipnas-resnet.yaml", "efficientpose": "configs/proxy/efficientpose.yaml",
           "pnfs": "configs/proxy/pnfs.yaml", "autopose": "configs/proxy/autopose.yaml"}
#: Per method: the variants compared, the first being the method's random baseline.
VARIANTS = {"vipnas": ("random", "evolution"), "efficientpose": ("random", "dnas-macs", "dnas-cpu_latency"),
            "pnfs": ("random", "synchronous", "darts", "uniform"), "autopose": ("random", "controller", "all", "concat")}
#: The entries of the summary's ``methods`` part: (method, searched variant), each against its random.
ENTRIES = {"vipnas": ("vipnas", "evolution"), "efficientpose": ("efficientpose", "dnas-macs"),
           "efficientpose-cpu_latency": ("efficientpose", "dnas-cpu_latency"), "pnfs": ("pnfs", "synchronous"),
           "pnfs-darts": ("pnfs", "darts"), "autopose": ("autopose", "controller")}
BASELINES = ("simplebaseline-small", "simplebaseline-mobilenetv2")
BASELINE_SEEDS = (0, 1, 2)


def timed(timing: Path, work: Callable[[], None]) -> float:
    """Run ``work`` unless ``timing`` records it finished; wall seconds summed over resumed
    segments (kept beside the run folder, which a search wants empty or its own). The main
    process's CPU seconds are recorded too (``cpu_seconds``): a budget derived from them is not
    inflated by a paused or shared machine."""
    if timing.exists() and read_json(timing).get("finished"):
        return read_json(timing)["seconds"]
    timing.parent.mkdir(parents=True, exist_ok=True)
    before = read_json(timing) if timing.exists() else {}
    start, cpu_start = time.perf_counter(), time.process_time()
    finished = False
    try:
        work()
        finished = True
    finally:  # an interrupted segment's time counts too
        write_json(timing, {"seconds": before.get("seconds", 0.0) + time.perf_counter() - start,
                            "cpu_seconds": before.get("cpu_seconds", 0.0) + time.process_time() - cpu_start,
                            "finished": finished})
    return read_json(timing)["seconds"]


def gmacs_of(arch_file: Path) -> float:
    """GMACs at the tier's input size (every proxy config's)."""
    return count_macs(build_model(load_arch_file(arch_file), 17).eval(), input_size())[0] / 1e9


def overrides(method: str, seed: int, args) -> list[str]:
    """The tier's data, the search budget and seed, then the ``--set METHOD:KEY=VALUE`` of ``method``."""
    own = [item.split(":", 1)[1] for item in args.set if item.split(":", 1)[0] == method]
    return [f"data.root={DATA}", "train.epochs=1000", f"train.max_steps={args.search_steps}", f"train.seed={seed}",
            f"search.seed={seed}", *own]


def vipnas_searches(out: Path, seed: int, args) -> dict[str, dict]:
    cfg = load_config(SearchExperimentConfig, CONFIGS["vipnas"], [
        *overrides("vipnas", seed, args), f"search.candidates={args.vipnas_candidates}"])
    root = out / "vipnas" / f"seed{seed}"
    checkpoint = root / "supernet" / "checkpoints" / "last.pt"
    supernet_s = timed(root / "supernet.wall.json", lambda: train_supernet(cfg, root))
    found = {}
    for strategy in VARIANTS["vipnas"]:
        scfg = replace(cfg, search=replace(cfg.search, strategies=(strategy,)))
        folder = root / strategy

        def search() -> None:  # a search folder of its own (config.yaml: posenas compare reads it)
            open_search_dir(folder, scfg, resume=(folder / "config.yaml").exists())
            search_supernet(scfg, folder, checkpoint)

        seconds = timed(root / f"{strategy}.wall.json", search)
        found[strategy] = {"arch_file": folder / "best_arch.json", "search_min": (supernet_s + seconds) / 60,
                           "candidate_min": seconds / 60, "score": read_json(folder / "results.json")["best"]["score"]}
    return found


def efficientpose_searches(out: Path, seed: int, args) -> dict[str, dict]:
    cfg = load_config(DNASExperimentConfig, CONFIGS["efficientpose"], overrides("efficientpose", seed, args))
    root = out / "efficientpose" / f"seed{seed}"
    found = {}
    for kind in ("macs", "cpu_latency"):
        kcfg = replace(cfg, search=replace(cfg.search, cost=kind, strategy="dnas"))
        folder = root / f"dnas-{kind}"
        seconds = timed(root / f"dnas-{kind}.wall.json",
                        lambda: run_dnas(kcfg, folder, resume=(folder / "config.yaml").exists()))
        found[f"dnas-{kind}"] = {"arch_file": folder / "best_arch.json", "search_min": seconds / 60}
    # the two DNAS runs do the same work (only the table differs): the shorter is the budget, in
    # CPU seconds of this process, and a random arch's step in CPU seconds too, so a machine paused
    # or shared during a DNAS run does not buy the random search extra steps
    budget_s = min(read_json(root / f"dnas-{k}.wall.json")["cpu_seconds"] for k in ("macs", "cpu_latency"))
    rcfg = replace(cfg, search=replace(cfg.search, strategy="random", random_archs=args.random_archs))
    steps_file = root / "random_steps.json"
    if not steps_file.exists():  # fixed once, so a resumed benchmark keeps the same budget
        per_step = [single_arch_step_seconds(a, tuple(cfg.data.input_size), cfg.data.batch_size,
                                             clock=time.process_time) for a in random_search_archs(rcfg)]
        write_json(steps_file, {"steps": max(1, int(budget_s / sum(per_step))), "step_cpu_seconds": per_step,
                                "budget_cpu_s": budget_s})
    rcfg = replace(rcfg, search=replace(rcfg.search, random_steps=read_json(steps_file)["steps"]))
    folder = root / "random"
    seconds = timed(root / "random.wall.json",
                    lambda: run_random_search(rcfg, folder, resume=(folder / "config.yaml").exists()))
    found["random"] = {"arch_file": folder / "best_arch.json", "search_min": seconds / 60,
                       "random_steps": read_json(steps_file)["steps"]}
    return found


def pnfs_searches(out: Path, seed: int, args) -> dict[str, dict]:
    cfg = load_config(PNFSExperimentConfig, CONFIGS["pnfs"], overrides("pnfs", seed, args))
    root = out / "pnfs" / f"seed{seed}"
    found = {}
    for strategy in ("random", "synchronous", "darts"):  # the variants that train a fabric
        scfg = replace(cfg, search=replace(cfg.search, strategy=strategy))
        folder = root / strategy
        seconds = timed(root / f"{strategy}.wall.json",
                        lambda: run_pnfs(scfg, folder, resume=(folder / "config.yaml").exists()))
        found[strategy] = {"arch_file": folder / "arch_pruned.json", "search_min": seconds / 60,
                           "score": read_json(folder / "results.json")["pruned"]["score"]}
    uniform = root / "uniform" / "arch_pruned.json"
    if not uniform.exists():  # the fabric as every search starts it: softmax of zeros, nothing learnt
        schema = load_dataset(cfg.data.root, cfg.data.val_split).schema
        dense = export_arch(PNFSModel(cfg.supernet.arch(schema), schema.num_joints))
        save_arch_file(uniform, prune_arch(dense, cfg.search.prune_threshold))
    # one arch for every search seed: its retrain takes train seed s, so its spread is training noise
    found["uniform"] = {"arch_file": uniform, "search_min": 0.0, "retrain_overrides": [f"train.seed={seed}"]}
    return found


def autopose_searches(out: Path, seed: int, args) -> dict[str, dict]:
    """The controller against random branch vectors (same cell search), every branch on, and the
    aggregation-cell ablation (plain concatenation, with the controller); equal steps each."""
    cfg = load_config(AutoPoseExperimentConfig, CONFIGS["autopose"], overrides("autopose", seed, args))
    root = out / "autopose" / f"seed{seed}"
    found = {}
    for variant in VARIANTS["autopose"]:
        policy = variant if variant in ("random", "all") else "controller"
        vcfg = replace(cfg, search=replace(cfg.search, branch_policy=policy))
        if variant == "concat":
            vcfg = replace(vcfg, supernet=replace(vcfg.supernet, aggregation="concat"))
        folder = root / variant
        seconds = timed(root / f"{variant}.wall.json",
                        lambda: run_autopose(vcfg, folder, resume=(folder / "config.yaml").exists()))
        rewards = [sum(u["rewards"]) / len(u["rewards"]) for u in read_jsonl(folder / "controller.jsonl")]
        found[variant] = {"arch_file": folder / "best_arch.json", "search_min": seconds / 60,
                          "score": read_json(folder / "results.json")["best"]["score"], "reward_curve": rewards}
    return found


SEARCHES = {"vipnas": vipnas_searches, "efficientpose": efficientpose_searches, "pnfs": pnfs_searches,
            "autopose": autopose_searches}


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def versus_random(rows: dict[str, dict], variant: str, baseline: str = "random") -> dict | None:
    """Mean AP difference to the random (or another) baseline and its standard error over search seeds."""
    if variant not in rows or baseline not in rows:
        return None
    a, b = rows[variant]["AP"], rows[baseline]["AP"]
    if len(a) < 2 or len(b) < 2:
        return None
    se = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
    return {"diff": statistics.mean(a) - statistics.mean(b), "se": se}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="vipnas,efficientpose,pnfs", help=f"of {', '.join(SEARCHES)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--search-steps", type=int, default=1600)
    ap.add_argument("--retrain-steps", type=int, default=400, help="the proxy budget, whose noise the tier measured")
    ap.add_argument("--vipnas-candidates", type=int, default=32)
    ap.add_argument("--random-archs", type=int, default=8, help="EfficientPose random search: archs drawn")
    ap.add_argument("--set", nargs="*", default=[], metavar="METHOD:KEY=VALUE",
                    help="a search config override for one method, e.g. efficientpose:search.warmup_epochs=0.5")
    ap.add_argument("--out", default="runs/search-methods")
    ap.add_argument("--summary", default="docs/search_quality.json")
    args = ap.parse_args()
    methods = args.methods.split(",")
    for m in methods:
        if m not in SEARCHES:
            raise SystemExit(f"--methods: unknown method {m!r}; allowed: {', '.join(SEARCHES)}")
    for item in args.set:
        if item.split(":", 1)[0] not in SEARCHES or ":" not in item:
            raise SystemExit(f"--set {item}: expected METHOD:KEY=VALUE with METHOD one of {', '.join(SEARCHES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    ensure_synthetic(DATA, default_spec("coco", **SPEC), progress=False)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; data {DATA}; "
          f"search {args.search_steps} steps, retrain {args.retrain_steps} steps", flush=True)
    summary = read_json(args.summary) if Path(args.summary).exists() else {}
    detail = summary.setdefault("method_runs", {})  # settings, baselines, every variant's seeds
    settings = {"search_steps": args.search_steps, "retrain_steps": args.retrain_steps,
                "vipnas_candidates": args.vipnas_candidates, "random_archs": args.random_archs}
    clash = {k: detail[k] for k, v in settings.items() if k in detail and detail[k] != v}
    if clash:  # the summary's results were made with other settings: never mix them
        raise SystemExit(f"{args.summary}: its method_runs were measured with {clash}, not {settings}; "
                         "pass the same settings or another --summary")
    detail.update(settings)

    def save() -> None:
        write_json(args.summary, summary, indent=2)

    baselines = detail.setdefault("baselines", {})
    for name in BASELINES:
        if baselines.get(name, {}).get("n") == len(BASELINE_SEEDS):
            continue  # measured with these settings (the summary is committed; run folders are not)
        aps = [run(f"{name} seed {s}", [f"model.name={name}"], args.retrain_steps,
                   out / "baselines" / f"{name}-{args.retrain_steps}-seed{s}", [f"train.seed={s}"])["AP"]
               for s in BASELINE_SEEDS]
        gm = count_macs(build_model(named_arch(name), 17).eval(), input_size())[0] / 1e9
        baselines[name] = {"gmacs": gm, "AP": aps, **mean_std(aps)}
        save()

    for method in methods:
        rows = detail.setdefault(method, {})
        for seed in seeds:
            if all(str(seed) in rows.get(v, {}).get("seeds", {}) for v in VARIANTS[method]):
                print(f"== {method}, search seed {seed}: in {args.summary} already", flush=True)
                continue
            print(f"== {method}, search seed {seed}", flush=True)
            found = SEARCHES[method](out, seed, args)
            for variant, f in found.items():
                name = f"{method}-{variant}-seed{seed}"
                r = run(name, [f"model.arch_file={f['arch_file']}"], args.retrain_steps,
                        out / "retrain" / f"{name}-{args.retrain_steps}", f.get("retrain_overrides", []))
                row = rows.setdefault(variant, {"seeds": {}})
                row["seeds"][str(seed)] = {"AP": r["AP"], "gmacs": gmacs_of(f["arch_file"]),
                                           "search_min": round(f["search_min"], 2), "cpu": cpu_flags(),
                                           "arch": read_json(f["arch_file"]),
                                           **({"reward_curve": f["reward_curve"]} if "reward_curve" in f else {})}
                done = list(row["seeds"].values())
                row.update(AP=[d["AP"] for d in done], gmacs=mean_std([d["gmacs"] for d in done]),
                           search_min=mean_std([d["search_min"] for d in done]), **mean_std([d["AP"] for d in done]))
                save()
        for entry, (of, variant) in ENTRIES.items():
            if of == method and variant in rows and "random" in rows:
                searched, rnd = rows[variant]["seeds"], rows["random"]["seeds"]
                summary.setdefault("methods", {})[entry] = {
                    "searched": variant, "seeds": sorted(map(int, searched)),
                    "searched_ap": [searched[k]["AP"] for k in sorted(searched, key=int)],
                    "random_ap": [rnd[k]["AP"] for k in sorted(rnd, key=int)],
                    "searched_gmacs": [searched[k]["gmacs"] for k in sorted(searched, key=int)],
                    "random_gmacs": [rnd[k]["gmacs"] for k in sorted(rnd, key=int)],
                    "versus_random": versus_random(rows, variant),
                    **({"uniform_ap": rows["uniform"]["AP"], "versus_uniform": versus_random(rows, variant, "uniform")}
                       if "uniform" in rows else {})}
        save()

    print("\n| method | variant | seeds | AP mean +- std | GMACs | search min | AP - random (SE) |\n"
          "|---|---|---:|---:|---:|---:|---:|")
    for method in methods:
        rows = detail[method]
        for variant in VARIANTS[method]:
            r = rows[variant]
            vs = versus_random(rows, variant) if variant != "random" else None
            std = f"{r['std']:.3f}" if r["std"] is not None else "-"
            diff = f"{vs['diff']:+.3f} ({vs['se']:.3f})" if vs else "-"
            print(f"| {method} | {variant} | {r['n']} | {r['mean']:.3f} +- {std} | {r['gmacs']['mean']:.4f} | "
                  f"{r['search_min']['mean']:.1f} | {diff} |")
    for name, r in baselines.items():
        print(f"| baseline | {name} | {r['n']} | {r['mean']:.3f} +- {r['std']:.3f} | {r['gmacs']:.4f} | - | - |")
    print(f"summary: {args.summary} (parts 'methods' and 'method_runs')", flush=True)


if __name__ == "__main__":
    main()
