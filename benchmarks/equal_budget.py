"""The equal training budget of the synthetic benchmarks (shared by baselines_synthetic.py,
vipnas_synthetic.py and efficientpose_synthetic.py, so a searched model and a baseline get
exactly the same recipe), and their side-by-side latency measurement.

Every model is trained with configs/baselines/tiny.yaml (128×96 input, batch 32, Adam,
cosine schedule) for the same number of optimiser steps on the default synthetic COCO
data, then evaluated on the whole val split with GT boxes and the flip test. A run
resumes where it stopped and a finished run is only read back.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from torch import nn

from posenas.config import load_config
from posenas.cost import measure_latency
from posenas.engine.config import ExperimentConfig
from posenas.engine.evaluate import evaluate_checkpoint
from posenas.engine.train import train
from posenas.jsonio import read_json, read_jsonl, write_json

RECIPE = "configs/baselines/tiny.yaml"


def budget_config(model: list[str], data: str, steps: int, overrides: list[str], recipe: str = RECIPE) -> ExperimentConfig:
    """The recipe with ``model`` overrides (e.g. ``model.name=…`` or ``model.arch_file=…``) and ``steps`` steps."""
    return load_config(ExperimentConfig, recipe, [
        *model, f"data.root={data}", "train.epochs=1000", f"train.max_steps={steps}", "train.val_every=0", *overrides,
    ])


def train_minutes(run: Path) -> float:
    """Training wall time from metrics.jsonl. Each resumed segment restarts its clock, so the
    total is the sum of each segment's last reading. A resume drops the lines after its
    checkpoint, so the time of steps redone is counted once; a segment is recognised by its
    clock reading going down, so one much shorter than the previous may go unnoticed."""
    total, last = 0.0, 0.0
    for record in read_jsonl(run / "metrics.jsonl"):
        if "seconds" not in record:
            continue
        if record["seconds"] < last:
            total += last
        last = record["seconds"]
    return (total + last) / 60


def train_and_evaluate(cfg: ExperimentConfig, run: Path) -> tuple[dict, float]:
    """(val stats with the flip test, training minutes); trains or resumes only what is missing."""
    last = run / "checkpoints" / "last.pt"
    if not (run / "results.json").exists():
        train(cfg, run, resume=last.exists())
    cached = run / "flip_test_eval.json"
    if not cached.exists():
        _, stats, _, _ = evaluate_checkpoint(last, cfg.data.root, run / "eval", flip_test=True, progress=False)
        write_json(cached, stats, indent=2)
    return read_json(cached), train_minutes(run)


def interleaved_latency_ms(models: dict[str, nn.Module], input_size: tuple[int, int], rounds: int,
                           runs: int = 10) -> dict[str, float]:
    """Batch-1, single-thread ms of each model: the models take turns each round (a noisy shared
    machine then slows them alike), median of the round medians."""
    medians: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            medians[name].append(measure_latency(model, input_size, threads=1, warmup=3, runs=runs)["median"])
    return {name: statistics.median(ms) for name, ms in medians.items()}
