"""Training throughput of every baseline and supernet in each precision mode, beside the matmul limits.

Run: .venv/bin/python benchmarks/train_throughput.py [--data data/synthetic/coco] [--steps 6]
     [--threads 2] [--emulated-bf16] [--compile] [--only NAME,...] [--out runs/bench-throughput]

Side by side in one run, at each config's input (128×96) and batch (32): samples/s of one
optimiser step (forward, backward, optimiser; median of ``--steps`` after 2 warm-up steps) on a
batch already in memory, through the same ``Objective.step`` the runs use, for
- the SimpleBaselines (plain training),
- larger and searched nets trained plainly (SimpleBaseline-ResNet-50, S-ViPNAS-Res50 and
  -MobileNetV3, EfficientPose k3e6-small: what a search's retraining runs), and
- each shipped CPU search's supernet step (ViPNAS sandwich rule: 4 sub-nets a step; EfficientPose
  DNAS: an α step on held-out data and a weight step; PNFS synchronous fabrics; AutoPose: an α
  step and a weight step with a branch vector drawn from the controller),
in fp32 NCHW, fp32 channels-last, bf16 autocast NCHW and channels-last (bf16 only where the CPU
has it natively, or with ``--emulated-bf16``: then 1 timed step, to show the cost), and with
``--compile`` ``torch.compile`` of the plain models (compile time reported apart). Also the data
loader's samples/s (2 workers) and this machine's FP32 / bf16 matmul GMAC/s, with the mode
``auto`` picks. Rows resume from ``--out`` (one JSON per row), so an interrupted run loses nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from posenas.arch import NAMED_MODELS, load_arch_file, named_arch
from posenas.config import load_config
from posenas.cost import matmul_limit
from posenas.data.layout import load_dataset
from posenas.data.topdown import TopDownDataset
from posenas.engine.distributed import World
from posenas.engine.precision import Precision, cpu_flags, native_bf16, resolve_precision
from posenas.engine.train import Objective, make_codec, make_optimizer
from posenas.resources import resolve_config
from posenas.search import autopose, efficientpose, pnfs, vipnas
from posenas.search.cost_table import build_cost_table, table_header

BASELINES = ("simplebaseline-small", "simplebaseline-resnet18", "simplebaseline-mobilenetv2")
#: Plain training of larger and of searched nets (a search's retraining): a searched net's family
#: is keyed apart from its supernet's step (``<space>-supernet``, engine/precision.py), so both are timed.
DERIVED = ("simplebaseline-resnet50", "vipnas/s-vipnas-res50", "vipnas/s-vipnas-mobilenetv3",
           "efficientpose/k3e6-small")
SUPERNETS = ("vipnas/tiny-resnet", "vipnas/tiny-mobilenetv3", "efficientpose/tiny-small", "pnfs/tiny-coco",
             "autopose/tiny")
MODES = {"fp32": Precision("fp32", False), "fp32-cl": Precision("fp32", True),
         "bf16": Precision("bf16", False), "bf16-cl": Precision("bf16", True)}


def objective_of(name: str, data_root: str, num_joints: int):
    """(objective, training config, the step index to time) as the run of ``name`` builds them."""
    if name in BASELINES or name in DERIVED:
        from posenas.engine.config import ExperimentConfig

        cfg = load_config(ExperimentConfig, resolve_config("baselines/tiny"), [f"data.root={data_root}"])
        arch = named_arch(name) if name in NAMED_MODELS else load_arch_file(resolve_config(name, "arch"))
        return Objective(arch), cfg, 0
    path = resolve_config(name)
    if name.startswith("vipnas"):
        cfg = load_config(vipnas.SearchExperimentConfig, path, [f"data.root={data_root}"])
        sc = cfg.supernet
        return vipnas.SandwichObjective(sc.space, sc.parsed_choices(), sc.random_subnets, sc.distill, 0), cfg.training(), 0
    if name.startswith("efficientpose"):
        cfg = load_config(efficientpose.DNASExperimentConfig, path, [f"data.root={data_root}"])
        sc = cfg.supernet
        table = build_cost_table(table_header("macs", sc.setting, sc.head_arch(), tuple(cfg.data.input_size), num_joints))
        return efficientpose.DNASObjective(cfg, table), cfg.training(), None  # None: the first α step
    if name.startswith("autopose"):
        # the controller (a REINFORCE update every epoch) starts after the steps timed here
        cfg = load_config(autopose.AutoPoseExperimentConfig, path, [f"data.root={data_root}", "search.controller_start_epoch=0.5"])
        return autopose.AutoPoseObjective(cfg), cfg.training(), None  # an α step and a weight step
    cfg = load_config(pnfs.PNFSExperimentConfig, path, [f"data.root={data_root}"])
    return pnfs.SynchronousObjective(cfg.supernet.arch(load_dataset(data_root, "val").schema), False, 0), cfg.training(), 0


def time_steps(name: str, mode: Precision, data_root: str, steps: int, compile_: bool = False) -> dict:
    train_set = load_dataset(data_root, "train")
    objective, cfg, step_index = objective_of(name, data_root, train_set.schema.num_joints)
    codec = make_codec(cfg)
    world = World(0, 1, torch.device("cpu"))
    torch.manual_seed(0)
    model = objective.build(train_set.schema.num_joints)
    weights = objective.weight_split(train_set)
    objective.precision = mode
    objective.prepare(model, codec, cfg, world, steps_per_epoch=100)
    if step_index is None:
        step_index = objective.arch_start
    mode.prepare_model(model)
    optimizer = make_optimizer(objective.parameters(model), cfg.optim)
    batch = next(iter(DataLoader(TopDownDataset(weights, codec, cfg.augment, seed=0), batch_size=cfg.data.batch_size)))
    compiled = torch.compile(model) if compile_ else model
    model.train()
    compile_seconds = None
    times = []
    for i in range(2 + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        objective.step(compiled, batch, step_index, world)
        optimizer.step()
        elapsed = time.perf_counter() - start
        if i == 0 and compile_:
            compile_seconds = elapsed
        if i >= 2:
            times.append(elapsed)
    step_s = statistics.median(times)
    return {"step_ms": step_s * 1000, "samples_s": cfg.data.batch_size / step_s, "steps": steps,
            "compile_s": compile_seconds}


def loader_rate(data_root: str, batches: int = 15) -> float:
    from posenas.engine.config import ExperimentConfig

    cfg = load_config(ExperimentConfig, resolve_config("baselines/tiny"), [f"data.root={data_root}"])
    data = TopDownDataset(load_dataset(data_root, "train"), make_codec(cfg), cfg.augment, seed=0)
    loader = DataLoader(data, batch_size=cfg.data.batch_size, shuffle=True, num_workers=cfg.data.workers,
                        drop_last=True, generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    start = time.perf_counter()
    n = sum(1 for _ in itertools.islice(it, batches))
    return n * cfg.data.batch_size / (time.perf_counter() - start)


def cached(out: Path, key: str, compute):
    path = out / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    path.write_text(json.dumps(value))
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/synthetic/coco")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--emulated-bf16", action="store_true", help="time bf16 modes even where bf16 is emulated")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the baselines (fp32)")
    ap.add_argument("--only", default="", help="comma-separated rows (e.g. simplebaseline-small,pnfs/tiny-coco)")
    ap.add_argument("--out", default="runs/bench-throughput")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    native = native_bf16(cpu)
    fp32 = {t: matmul_limit(t) for t in (1, args.threads)}
    bf16 = {t: matmul_limit(t, torch.bfloat16, n=2048 if native else 512, trials=5 if native else 2)
            for t in (1, args.threads)}
    print(f"machine: {cpu_flags()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads; "
          f"native bf16: {native}")
    print(f"matmul limits (GMAC/s): fp32 {fp32[1]:.1f} (1 thread), {fp32[args.threads]:.1f} ({args.threads}); "
          f"bf16 {bf16[1]:.1f} (1 thread), {bf16[args.threads]:.1f} ({args.threads})")
    print(f"data loader, augmentation on, {args.threads} workers: "
          f"{cached(out, 'loader', lambda: loader_rate(args.data)):.0f} samples/s\n")
    rows = [r for r in BASELINES + DERIVED + SUPERNETS if not args.only or r in args.only.split(",")]
    modes = [m for m in MODES if not m.startswith("bf16") or native or args.emulated_bf16]
    extra = ["compile"] if args.compile else []
    print("| row | " + " | ".join(f"{m} samples/s" for m in modes + extra) + " | auto picks | auto / fp32 |")
    print("|---|" + "---:|" * (len(modes) + len(extra) + 2))
    for row in rows:
        rates = {}
        for m in modes:
            steps = args.steps if not m.startswith("bf16") or native else 1
            key = f"{row.replace('/', '-')}-{m}-{steps}"
            rates[m] = cached(out, key, lambda: time_steps(row, MODES[m], args.data, steps))
        if args.compile and row in BASELINES:
            rates["compile"] = cached(out, f"{row}-compile-{args.steps}",
                                      lambda: time_steps(row, MODES["fp32"], args.data, args.steps, compile_=True))
        objective = objective_of(row, args.data, 17)[0]
        auto = resolve_precision("auto", "auto", cpu, objective.family())
        auto_key = next(k for k, v in MODES.items() if v == auto)
        cells = [f"{rates[m]['samples_s']:.1f}" if m in rates else "—" for m in modes + extra]
        ratio = rates[auto_key]["samples_s"] / rates["fp32"]["samples_s"] if auto_key in rates else float("nan")
        print(f"| {row} | " + " | ".join(cells) + f" | {auto_key} | {ratio:.2f} |", flush=True)
    if args.compile:
        print("\ncompile: first step's seconds (tracing + C++ codegen): "
              + ", ".join(f"{r} {json.loads((out / f'{r}-compile-{args.steps}.json').read_text())['compile_s']:.0f} s"
                          for r in rows if r in BASELINES))


if __name__ == "__main__":
    main()
