"""Does the data loader keep up with training? Loader samples/s vs training-step samples/s.

Run: .venv/bin/python benchmarks/data_pipeline.py [--data data/synthetic/coco] [--batches 20]
(generate the data first, e.g. with `make demo` or `posenas data synth --out data/synthetic/coco`).

Measured side by side in one run, at 128×96 input, batch 32, with augmentation:
(a) the TopDownDataset + DataLoader alone, for 0 / 1 / 2 worker processes;
(b) a training step (forward, backward, Adam) of each baseline on a batch already in memory;
(c) real training steps fed by the loader (2 workers) vs fed the same cached batch —
    the ratio says how much the loader slows training down on this machine.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import time

import torch
from torch.utils.data import DataLoader

from posenas.arch import build_model, named_arch
from posenas.codecs.heatmap import HeatmapCodec
from posenas.data.layout import load_dataset
from posenas.data.topdown import TopDownDataset
from posenas.data.transforms import AugmentConfig
from posenas.engine.task import heatmap_loss

INPUT = (128, 96)
BATCH = 32


def loader_rate(data: TopDownDataset, workers: int, batches: int) -> float:
    loader = DataLoader(data, batch_size=BATCH, shuffle=True, num_workers=workers, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    start = time.perf_counter()
    n = sum(1 for _ in itertools.islice(it, batches))
    return n * BATCH / (time.perf_counter() - start)


def train_rate(model: torch.nn.Module, batches, steps: int) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    def step(batch):
        loss = heatmap_loss(model(batch["image"]), batch["target"], batch["target_weight"])
        opt.zero_grad()
        loss.backward()
        opt.step()

    batches = iter(batches)
    step(next(batches))  # warm-up
    start = time.perf_counter()
    for batch in itertools.islice(batches, steps):
        step(batch)
    return steps * BATCH / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/synthetic/coco")
    ap.add_argument("--batches", type=int, default=20)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads; input {INPUT[0]}x{INPUT[1]}, batch {BATCH}")
    ds = load_dataset(args.data, "train")
    codec = HeatmapCodec(input_size=INPUT, heatmap_size=(INPUT[0] // 4, INPUT[1] // 4), sigma=2.0)
    data = TopDownDataset(ds, codec, AugmentConfig(), seed=0)
    print("\n| (a) loader, augmentation on | samples/s |\n|---|---:|")
    for workers in (0, 1, 2):
        print(f"| DataLoader, {workers} workers | {loader_rate(data, workers, args.batches):.0f} |")

    cached = next(iter(DataLoader(data, batch_size=BATCH, shuffle=False)))
    print("\n| (b) training step on a cached batch | samples/s |\n|---|---:|")
    for name in ("simplebaseline-small", "simplebaseline-mobilenetv2", "simplebaseline-resnet18"):
        torch.manual_seed(0)
        model = build_model(named_arch(name), ds.schema.num_joints)
        steps = max(3, args.batches // (1 if name.endswith("small") else 4))
        print(f"| {name} | {train_rate(model, itertools.repeat(cached), steps):.0f} |")

    torch.manual_seed(0)
    model = build_model(named_arch("simplebaseline-small"), ds.schema.num_joints)
    fed = DataLoader(data, batch_size=BATCH, shuffle=True, num_workers=2, drop_last=True, persistent_workers=True)
    real = train_rate(model, itertools.chain.from_iterable(itertools.repeat(fed)), args.batches)
    memory = train_rate(model, itertools.repeat(cached), args.batches)
    print("\n| (c) simplebaseline-small training | samples/s |\n|---|---:|")
    print(f"| fed by the loader (2 workers) | {real:.0f} |")
    print(f"| fed a cached batch | {memory:.0f} |")
    print(f"| loader-fed / cached | {real / memory:.2f} |")


if __name__ == "__main__":
    main()
