"""The proxy benchmark tier: is architecture search measurable on a 2-core CPU?

Run: .venv/bin/python benchmarks/proxy_tier.py [--out runs/proxy] [--stages baseline,noise,budget,sharing]
     [--steps 400] [--long 4] [--archs-per-space 4] [--summary docs/search_quality.json] [--report-only]

The tier (docs/benchmarks.md, "Proxy benchmark tier"): synthetic people with the ``proxy`` scene
preset (one or two large, fully visible people; ``data synth --scenes proxy --max-people 2``, 4000
train / 500 val images), 96x64 input, the recipe of ``configs/proxy/baseline-small.yaml`` (Adam
2e-3, cosine, batch 32). Stages, each resumable (a finished training is read back, an interrupted
one continues from its last checkpoint):

- ``baseline``: SimpleBaseline-small with the recipe as shipped (its epochs), AP and minutes;
- ``noise``: three architectures x three train seeds at the proxy budget (``--steps``): the AP
  standard deviation a difference must beat;
- ``budget``: ``--archs-per-space`` architectures from each of vipnas-resnet, vipnas-mobilenetv3
  and efficientpose (drawn from the shipped tiny search spaces, spread over their GMACs range),
  each trained at the proxy budget and at ``--long`` times it; Kendall tau between the two
  rankings (rank fidelity of the proxy budget);
- ``sharing``: a vipnas-resnet supernet trained with the sandwich rule on the tier
  (``configs/proxy/vipnas-resnet.yaml``); its sub-nets' AP with inherited weights (BN
  re-calibrated) against the same sub-nets trained alone at the proxy budget: Kendall tau
  (weight-sharing fidelity).

Every AP is COCO OKS AP on all val images with GT boxes and the flip test. The summary goes to
``--summary`` (the ``proxy`` part of docs/search_quality.json; other parts of that file are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
from dataclasses import replace
from pathlib import Path

import torch
from equal_budget import budget_config, train_and_evaluate, train_minutes
from scipy.stats import kendalltau

from posenas.arch import arch_to_json, build_model, load_arch_file, save_arch_file
from posenas.config import load_config
from posenas.cost import count_macs
from posenas.engine.config import ExperimentConfig
from posenas.jsonio import read_json, write_json
from posenas.search import efficientpose as ep_search
from posenas.search.vipnas import candidate_evaluator, train_supernet
from posenas.search.vipnas_config import SearchExperimentConfig
from posenas.spaces import vipnas
from posenas.synthetic.generate import default_spec, ensure_synthetic

RECIPE = "configs/proxy/baseline-small.yaml"
SHARING_CONFIG = "configs/proxy/vipnas-resnet.yaml"
DATA = "data/synthetic/proxy"
#: The tier's dataset: what ``posenas data synth --out data/synthetic/proxy --scenes proxy --max-people 2
#: --train 4000 --val 500`` makes.
SPEC = dict(train=4000, val=500, max_people=2, scenes="proxy")
#: The search spaces the drawn architectures come from (their tiny CPU configs).
SPACES = {
    "vipnas-resnet": "configs/vipnas/tiny-resnet.yaml",
    "vipnas-mobilenetv3": "configs/vipnas/tiny-mobilenetv3.yaml",
    "efficientpose": "configs/efficientpose/tiny-small.yaml",
}
NOISE_SEEDS = (0, 1, 2)


def input_size() -> tuple[int, int]:
    return tuple(load_config(ExperimentConfig, RECIPE).data.input_size)


def gmacs(arch) -> float:
    return count_macs(build_model(arch, 17), input_size())[0] / 1e9


def draw_archs(per_space: int, spaces: tuple[str, ...] = tuple(SPACES), pool: int = 24,
               seed: int = 0) -> dict[str, object]:
    """``per_space`` architectures per space, drawn at random (``pool`` per space) and picked at
    evenly spaced GMACs ranks, so the set spans each space's cost range. EfficientPose draws
    from the small setting of Table 1: the large one's 7x7 depthwise blocks train at 2-10 s a
    step on 2 cores, beyond a CPU tier's budget."""
    rng = random.Random(f"proxy-tier:{seed}")
    picked: dict[str, object] = {}
    for space in spaces:
        config = SPACES[space]
        if space == "efficientpose":
            cfg = load_config(ep_search.DNASExperimentConfig, config)
            head = cfg.supernet.head_arch()
            draws = [ep_search.sample_arch("small", head, rng) for _ in range(pool)]
        else:
            cfg = load_config(SearchExperimentConfig, config)
            draws = [vipnas.sample_arch(space, cfg.supernet.parsed_choices(), rng) for _ in range(pool)]
        costed = sorted(((gmacs(a), i, a) for i, a in enumerate(draws)), key=lambda t: t[:2])
        for j in range(per_space):
            g, i, arch = costed[round(j * (len(costed) - 1) / max(1, per_space - 1))]
            picked[f"{space}-{j}"] = arch
    return picked


def saved_draws(folder: Path, per_space: int, spaces: tuple[str, ...] = tuple(SPACES), seed: int = 0) -> dict:
    """:func:`draw_archs`, drawn once and kept in ``folder`` (counting MACs of the pools takes minutes)."""
    index = folder / "draws.json"
    if index.exists() and {k: read_json(index)[k] for k in ("per_space", "seed")} == {"per_space": per_space,
                                                                                          "seed": seed}:
        return {name: load_arch_file(folder / f"{name}.json") for name in read_json(index)["names"]}
    archs = draw_archs(per_space, spaces, seed=seed)
    for name, arch in archs.items():
        save_arch_file(folder / f"{name}.json", arch)
    write_json(index, {"per_space": per_space, "seed": seed, "names": list(archs)})
    return archs


class NotFinished(Exception):
    """``--report-only`` met a training that has not finished."""


REPORT_ONLY = False


def run(name: str, model: list[str], steps: int | None, out: Path, overrides: list[str] = ()) -> dict:
    """Train (or read back) one model with the tier's recipe; ``steps`` None: the recipe's own epochs."""
    if REPORT_ONLY and not (out / "flip_test_eval.json").exists():
        raise NotFinished(out)
    if steps is None:
        cfg = load_config(ExperimentConfig, RECIPE, [*model, f"data.root={DATA}", *overrides])
    else:
        cfg = budget_config(model, DATA, steps, list(overrides), recipe=RECIPE)
    print(f"== {name} ({out.name})", flush=True)
    stats, minutes = train_and_evaluate(cfg, out)
    return {"AP": stats["AP"], "AP50": stats["AP50"], "AR": stats["AR"], "train_min": round(minutes, 2)}


def arch_model(folder: Path, name: str) -> list[str]:
    return [f"model.arch_file={folder / f'{name}.json'}"]


def inherited_scores(cfg: SearchExperimentConfig, checkpoint: Path, archs: dict, cache: Path) -> dict[str, float]:
    """AP of each sub-net with the supernet's weights, BN re-calibrated on ``search.calib_batches``
    training batches, on ALL val images with the flip test (as the trained-alone models are scored)."""
    scores = read_json(cache) if cache.exists() else {}
    todo = [n for n in archs if n not in scores]
    if todo:
        scoring = replace(cfg, search=replace(cfg.search, val_max_images=None, flip_test=True))
        evaluator = candidate_evaluator(scoring, checkpoint, torch.device("cpu"))
        for name in todo:
            scores[name] = evaluator.evaluate(archs[name])["score"]
            print(f"inherited: {name} AP {scores[name]:.4f}", flush=True)
            write_json(cache, scores, indent=2)
    return scores


def tau(a: list[float], b: list[float]) -> float | None:
    """Kendall's tau-b; None where it is undefined (a ranking of all ties), so the JSON stays JSON."""
    value = float(kendalltau(a, b).statistic)
    return None if value != value else value


def fmt_tau(value: float | None) -> str:
    return "undefined (all tied)" if value is None else f"{value:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/proxy")
    ap.add_argument("--stages", default="baseline,noise,budget,sharing")
    ap.add_argument("--steps", type=int, default=400, help="the proxy budget: training steps of each compared model")
    ap.add_argument("--long", type=int, default=4, help="the longer budget is this many times --steps")
    ap.add_argument("--archs-per-space", type=int, default=4)
    ap.add_argument("--sharing-archs", type=int, default=8, help="vipnas-resnet sub-nets in the sharing stage")
    ap.add_argument("--supernet-steps", type=int, default=None, help="default: the long budget")
    ap.add_argument("--summary", default="docs/search_quality.json")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: summarise the finished runs (a stage stops at its first unfinished one)")
    args = ap.parse_args()
    global REPORT_ONLY
    REPORT_ONLY = args.report_only
    out = Path(args.out)
    stages = args.stages.split(",")
    ensure_synthetic(DATA, default_spec("coco", **SPEC), progress=False)
    size = input_size()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; tier input "
          f"{size[0]}x{size[1]}, data {DATA}; load average {os.getloadavg()[0]:.1f}", flush=True)
    summary = read_json(args.summary) if Path(args.summary).exists() else {}
    proxy = summary.setdefault("proxy", {})

    def save() -> None:  # after every stage (and every arch of the budget stage): an interrupted run keeps its figures
        write_json(args.summary, summary, indent=2)

    archs = saved_draws(out / "archs", args.archs_per_space)
    costs = {name: gmacs(a) for name, a in archs.items()}
    print("drawn: " + ", ".join(f"{n} {g:.3f}" for n, g in costs.items()) +
          f" GMACs (span {max(costs.values()) / min(costs.values()):.1f}x)", flush=True)

    def baseline() -> None:
        start = os.getloadavg()[0]
        r = run("SimpleBaseline-small, the recipe as shipped", ["model.name=simplebaseline-small"], None,
                out / "baseline-small")
        proxy.update(baseline_ap=r["AP"], train_minutes=r["train_min"], baseline_ap50=r["AP50"])
        save()
        print(f"baseline: AP {r['AP']:.3f} (AP50 {r['AP50']:.3f}) in {r['train_min']:.1f} min of training "
              f"(load average {start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)", flush=True)

    def noise() -> None:
        noise_models = {"simplebaseline-small": ["model.name=simplebaseline-small"],
                        "vipnas-resnet-1": arch_model(out / "archs", "vipnas-resnet-1"),
                        "efficientpose-1": arch_model(out / "archs", "efficientpose-1")}
        rows = {}
        for name, model in noise_models.items():
            aps = [run(f"{name} seed {s}", model, args.steps, out / f"{name}-{args.steps}-seed{s}",
                       [f"train.seed={s}"])["AP"] for s in NOISE_SEEDS]
            rows[name] = {"AP": aps, "mean": statistics.mean(aps), "std": statistics.stdev(aps)}
            print(f"noise: {name}: AP {' / '.join(f'{a:.3f}' for a in aps)}, std {rows[name]['std']:.4f}", flush=True)
        proxy["noise"] = rows
        # pooled over the architectures: the root of the mean variance
        proxy["noise_std"] = statistics.mean(r["std"] ** 2 for r in rows.values()) ** 0.5
        save()

    def budget() -> None:
        rows: dict[str, dict] = {}
        try:
            budget_rows(rows)
        finally:
            if rows:
                print(f"\n| arch | GMACs | AP at {args.steps} steps | AP at {args.steps * args.long} steps | "
                      "train min (short / long) |\n|---|---:|---:|---:|---:|")
                for name, r in rows.items():
                    print(f"| {name} | {r['gmacs']:.4f} | {r['AP_proxy']:.3f} | {r['AP_long']:.3f} | "
                          f"{r['min_proxy']:.1f} / {r['min_long']:.1f} |")
                print(flush=True)

    def budget_rows(rows: dict[str, dict]) -> None:
        recorded = proxy.get("budget", {})
        same_budget = (recorded.get("steps"), recorded.get("long_steps")) == (args.steps, args.steps * args.long)
        for name, arch in archs.items():
            row = recorded.get("archs", {}).get(name) if same_budget else None
            if row is not None and row["arch"] == json.loads(json.dumps(arch_to_json(arch))):
                # measured by an earlier session (its run directory gone with its machine): kept, not retrained
                rows[name] = row
                print(f"== {name}: read back from {args.summary} (AP {row['AP_proxy']:.3f} / {row['AP_long']:.3f})",
                      flush=True)
            else:
                model = arch_model(out / "archs", name)
                short = run(name, model, args.steps, out / f"{name}-{args.steps}-seed0")
                long = run(name, model, args.steps * args.long, out / f"{name}-{args.steps * args.long}-seed0")
                rows[name] = {"gmacs": costs[name], "AP_proxy": short["AP"], "AP_long": long["AP"],
                              "min_proxy": short["train_min"], "min_long": long["train_min"],
                              "arch": arch_to_json(arch)}
            record_budget(rows)

    def record_budget(rows: dict[str, dict]) -> None:
        proxy["budget"] = {"steps": args.steps, "long_steps": args.steps * args.long, "archs": rows,
                           "complete": len(rows) == len(archs)}
        if len(rows) >= 3:
            proxy["kendall_tau_budget"] = tau([r["AP_proxy"] for r in rows.values()],
                                              [r["AP_long"] for r in rows.values()])
            print(f"rank fidelity{'' if len(rows) == len(archs) else ' so far'} ({len(rows)} archs): tau "
                  f"{fmt_tau(proxy['kendall_tau_budget'])}", flush=True)
        save()

    def sharing() -> None:
        steps = args.supernet_steps or args.steps * args.long
        cfg = load_config(SearchExperimentConfig, SHARING_CONFIG, [
            f"data.root={DATA}", "train.epochs=1000", f"train.max_steps={steps}"])
        if REPORT_ONLY and not (out / "sharing" / "supernet" / "results.json").exists():
            raise NotFinished(out / "sharing" / "supernet")
        print(f"== vipnas-resnet supernet, {steps} sandwich steps", flush=True)
        checkpoint = train_supernet(cfg, out / "sharing")
        # drawn apart from the budget stage's (seed 1), named sub-0, sub-1, ...
        subnets = {f"sub-{i}": a for i, a in enumerate(
            saved_draws(out / "sharing-archs", args.sharing_archs, ("vipnas-resnet",), seed=1).values())}
        inherited = inherited_scores(cfg, checkpoint, subnets, out / "sharing" / "inherited.json")
        files = dict(zip(subnets, read_json(out / "sharing-archs" / "draws.json")["names"]))
        alone = {name: run(name, arch_model(out / "sharing-archs", files[name]), args.steps,
                           out / f"sharing-{name}-{args.steps}-seed0")["AP"] for name in subnets}
        names = list(subnets)
        proxy["sharing"] = {"supernet_steps": steps, "supernet_min": round(train_minutes(out / "sharing" / "supernet"), 2),
                            "archs": {n: {"gmacs": gmacs(subnets[n]), "AP_inherited": inherited[n],
                                          "AP_alone": alone[n], "arch": arch_to_json(subnets[n])} for n in names}}
        proxy["kendall_tau_weight_sharing"] = tau([inherited[n] for n in names], [alone[n] for n in names])
        print(f"\n| sub-net | GMACs | AP inherited (BN re-calibrated) | AP trained alone, {args.steps} steps |\n"
              "|---|---:|---:|---:|")
        for n, r in proxy["sharing"]["archs"].items():
            print(f"| {n} | {r['gmacs']:.4f} | {r['AP_inherited']:.3f} | {r['AP_alone']:.3f} |")
        print(f"\nweight-sharing fidelity: tau {fmt_tau(proxy['kendall_tau_weight_sharing'])} over {len(names)} sub-nets",
              flush=True)
        save()

    run_stages = {"baseline": baseline, "noise": noise, "budget": budget, "sharing": sharing}
    for stage in stages:
        if stage not in run_stages:
            raise SystemExit(f"--stages: unknown stage {stage!r}; allowed: {', '.join(run_stages)}")
    for stage in stages:
        try:
            run_stages[stage]()
        except NotFinished as e:
            print(f"{stage}: {e} has not finished: the stage stops there (--report-only)", flush=True)
    print(f"summary: {args.summary}", flush=True)


if __name__ == "__main__":
    main()
