"""EfficientPose's differentiable, cost-aware backbone search (sections 3.1-3.2 of the paper;
DARTS first order with FBNet's cost term).

The first-order alternation itself is :mod:`posenas.search.darts`. The training split is
divided by image, with a seeded permutation, into a weight part (80 %) and an architecture
part (20 %). Every optimiser step trains the operation weights
on a weight batch (SGD, momentum 0.9, weight decay 1e-4, cosine: the run's optimiser) with
the architecture parameters alpha fixed. After ``warmup_epochs`` weight-only epochs each
step first takes one alpha step (Adam, lr 3e-4) on an architecture batch, with the weights
fixed, minimising Eq. 6::

    L = MSE + lambda * log_tau(cost),   cost = fixed + sum_positions sum_ops p_o * cost_o

where ``cost_o`` comes from a lookup table (:mod:`posenas.search.cost_table`). (The paper
alternates "in each epoch"; we alternate every step, as DARTS does, which spreads the alpha
updates over the whole search.) Drop-path is active on the weight steps. Under torchrun,
alpha and weight gradients are averaged over the ranks by hand, so alpha and the weights
stay identical on every rank; the architecture batches are a function of (seed, step, rank).

Run directory::

    config.yaml, cost_table.json   the resolved config; the lookup table used
    supernet/                      the training run: metrics.jsonl (with the per-position
                                   probabilities and expected cost at each log step), checkpoints
    alpha_history.jsonl            step, expected cost, probabilities (from metrics.jsonl)
    alpha.png                      per-position probabilities over the search
    best_arch.json                 the argmax architecture (train it: posenas train --arch)
    results.json                   derived arch, its table cost and GMACs, final probabilities

``search.strategy: random`` runs the paper's baseline instead (:func:`run_random_search`).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from posenas.arch import arch_from_json, save_arch_file
from posenas.checkpoint import load_checkpoint, model_from_checkpoint, supernet_from_checkpoint
from posenas.cost import count_macs, count_params
from posenas.data.layout import load_dataset
from posenas.data.transforms import AugmentConfig
from posenas.engine.config import DataConfig, ModelConfig, OptimConfig, TrainConfig, TrainingSections
from posenas.engine.distributed import env_rank, share_note, single_process
from posenas.engine.precision import supernet_family
from posenas.engine.predict import primary_value
from posenas.engine.train import interruptible, train
from posenas.search.darts import FirstOrderObjective
from posenas.display import format_score, heading, retrain_command, ties, warn, warn_if_alpha_unmoved
from posenas.errors import PosenasError
from posenas.jsonio import JsonlLog, read_json, read_jsonl, write_json, write_text
from posenas.search.cost_table import (KINDS, cached_cost_table, check_calibration_archs, load_cost_table,
                                      read_cost_table, save_cost_table, table_header)
from posenas.search.rundir import open_search_dir
from posenas.spaces.supernets import dnas_supernet_fields
from posenas.spaces.efficientpose import (OPS, SETTINGS, CostTable, EfficientPoseArch, EfficientPoseSupernet, HeadArch,
                                          derive)


@dataclass(frozen=True)
class DNASSupernetConfig:
    space: Literal["efficientpose"] = "efficientpose"
    setting: str = "small"
    head: dict[str, Any] | None = None  # the head JSON of the arch ({"widths", "sic", "upsample"}); None: the paper's
    drop_path: float = 0.1  # per-sample drop probability of each MBConv candidate on weight steps

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise PosenasError(f"config.supernet.setting: {self.setting!r} not allowed; allowed: {', '.join(SETTINGS)}")
        self.head_arch()
        if not 0 <= self.drop_path < 1:
            raise PosenasError(f"config.supernet.drop_path: must be in [0, 1), got {self.drop_path}")

    def head_arch(self) -> HeadArch:
        return HeadArch.from_json(self.head or {}, "config.supernet.head")


@dataclass(frozen=True)
class DNASConfig:
    strategy: str = "dnas"  # dnas | random (the paper's baseline: M sampled archs, short training each)
    arch_fraction: float = 0.2  # share of the training images held out for the alpha steps
    warmup_epochs: float = 1.0  # weight-only epochs before alpha steps start (fractions allowed)
    arch_lr: float = 3e-4
    arch_weight_decay: float = 0.0
    cost: str = "macs"  # macs | cpu_latency | gpu_latency
    cost_weight: float = 0.02  # lambda of Eq. 6 (with our per-pixel-mean MSE; see configs/efficientpose)
    cost_base: float = 10.0  # tau of Eq. 6 (the log base)
    latency_threads: int = 1
    latency_batch: int = 1
    latency_cold_cache: bool = True  # cpu_latency: time each op with its caches flushed (predicts networks better)
    latency_calibration_archs: int = 8  # latency tables: whole networks timed to correct the ops' bias (0: none)
    table_runs: int = 20  # timed runs per op when measuring a latency table
    table_cache: str = "runs/cost-tables"
    random_archs: int = 8  # random strategy: M architectures ...
    random_steps: int = 100  # ... each trained this many steps (pick M x steps to match the DNAS run's cost)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in ("dnas", "random"):
            raise PosenasError(f"config.search.strategy: {self.strategy!r} not allowed; allowed: dnas, random")
        if not 0 < self.arch_fraction < 1:
            raise PosenasError(f"config.search.arch_fraction: must be in (0, 1), got {self.arch_fraction}")
        if self.cost not in KINDS:
            raise PosenasError(f"config.search.cost: {self.cost!r} not allowed; allowed: {', '.join(KINDS)}")
        if self.warmup_epochs < 0 or self.cost_weight < 0:
            raise PosenasError("config.search.warmup_epochs and cost_weight: must be >= 0")
        if not self.cost_base > 1:
            raise PosenasError(f"config.search.cost_base: must be > 1, got {self.cost_base}")
        if not self.arch_lr > 0:
            raise PosenasError(f"config.search.arch_lr: must be > 0, got {self.arch_lr}")
        if self.arch_weight_decay < 0:
            raise PosenasError(f"config.search.arch_weight_decay: must be >= 0, got {self.arch_weight_decay}")
        for name in ("latency_threads", "latency_batch", "table_runs", "random_archs", "random_steps"):
            if getattr(self, name) < 1:
                raise PosenasError(f"config.search.{name}: must be >= 1, got {getattr(self, name)}")
        check_calibration_archs(self.latency_calibration_archs, "config.search.latency_calibration_archs")


def _paper_optim() -> OptimConfig:
    return OptimConfig(optimizer="sgd", lr=0.05, weight_decay=1e-4, momentum=0.9, schedule="cosine", warmup_steps=0)


@dataclass(frozen=True)
class DNASExperimentConfig(TrainingSections):
    supernet: DNASSupernetConfig = field(default_factory=DNASSupernetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=_paper_optim)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: DNASConfig = field(default_factory=DNASConfig)

    def __post_init__(self) -> None:
        if self.train.init_from:
            raise PosenasError("config.train.init_from: not supported by the differentiable search (its supernet "
                               "starts from scratch); leave it null")


def cost_term(cost: torch.Tensor, weight: float, base: float) -> torch.Tensor:
    """lambda * log_tau(cost) of Eq. 6."""
    return weight * torch.log(cost) / math.log(base)


class DNASObjective(FirstOrderObjective):
    """The engine's objective for the search: alpha steps on held-out batches with the cost
    term of Eq. 6, weight steps with drop-path."""

    def __init__(self, cfg: DNASExperimentConfig, table: CostTable):
        s = cfg.search
        super().__init__(s.arch_fraction, s.warmup_epochs, s.arch_lr, s.arch_weight_decay, s.seed)
        self.cfg, self.table = cfg, table

    def build(self, num_joints: int) -> nn.Module:
        sc = self.cfg.supernet
        model = EfficientPoseSupernet(sc.setting, sc.head_arch(), num_joints)
        model.drop_prob = sc.drop_path
        return model

    def family(self) -> str:
        return supernet_family("efficientpose")

    def checkpoint_fields(self) -> dict:
        return {"arch": self.model.argmax_arch().to_json(), **dnas_supernet_fields(self.model)}

    def arch_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [model.alpha]

    def arch_penalty(self, model: nn.Module) -> torch.Tensor:
        s = self.cfg.search
        return cost_term(model.expected_cost(self.table), s.cost_weight, s.cost_base)

    def log_fields(self, model: nn.Module) -> dict[str, Any]:
        with torch.no_grad():
            probs = model.probabilities()
            cost = float(model.expected_cost(self.table))
        return {**super().log_fields(model), "expected_cost": round(cost, 6),
                "probs": [[round(float(v), 5) for v in row] for row in probs]}


def plot_alpha(history: list[dict], path: Path, setting: str) -> None:
    """Per-position probabilities over the search: one small panel per position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positions = SETTINGS[setting].positions
    cols = 7
    rows = math.ceil(len(positions) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 1.6 * rows), sharex=True, sharey=True, squeeze=False)
    steps = [h["step"] for h in history]
    for pos, ax in zip(positions, axes.flat):
        for j, op in enumerate(OPS):
            if op in pos.ops:
                ax.plot(steps, [h["probs"][pos.index][j] for h in history], lw=1, label=op,
                        marker="." if len(steps) < 10 else None)
        ax.set_title(f"{pos.index} (stage {pos.stage})", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(positions):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=5, loc="upper left")
    fig.suptitle("operation probabilities softmax(alpha) per position vs step", fontsize=9)
    fig.tight_layout()
    tmp = path.with_suffix(".partial.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def _wait_for_table(path: Path, timeout_s: float = 7200.0) -> tuple[dict, CostTable]:
    """The table rank 0 writes into the run (atomically, so an existing file is complete)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise PosenasError(f"{path}: rank 0 wrote no cost table within {timeout_s:.0f} s")
        time.sleep(0.5)
    return load_cost_table(path)


@interruptible  # Ctrl-C / SIGTERM stop every phase (the cost table too), also when SIGINT is ignored
def run_dnas(cfg: DNASExperimentConfig, out: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """The whole search (resumable): cost table, supernet training with alpha steps, derivation."""
    out = Path(out)
    s, sc = cfg.search, cfg.supernet
    num_joints = load_dataset(cfg.data.root, cfg.data.val_split).schema.num_joints
    header = table_header(s.cost, sc.setting, sc.head_arch(), tuple(cfg.data.input_size), num_joints,
                          s.latency_threads, s.latency_batch, s.latency_cold_cache,
                          s.table_runs, calibration_archs=s.latency_calibration_archs)  # e.g. no CUDA: fails before any file
    is_main = open_search_dir(out, cfg, resume)
    table_file = out / "cost_table.json"
    if not is_main:  # under torchrun rank 0 alone measures: timings taken side by side would disturb each other
        header, table = _wait_for_table(table_file)
    elif table_file.exists():  # a resumed search keeps the table it started with
        header, table = load_cost_table(table_file)
    else:
        heading(f"cost table: {s.cost} of every op at its input shape")
        cached, table = cached_cost_table(s.table_cache, header, progress=progress)
        save_cost_table(table_file, *read_cost_table(cached))  # as measured, with its calibration
    run = out / "supernet"
    if not (run / "results.json").exists():
        heading(f"supernet training: {sc.setting} setting, alpha steps after {s.warmup_epochs} warm-up epoch(s) "
                f"into {run}")
        train(cfg.training(), run, resume=(run / "checkpoints" / "last.pt").exists(), progress=progress,
              objective=DNASObjective(cfg, table))
    if not is_main:
        return {}
    heading("derivation: the argmax op of every position")
    return finish_dnas(out, table, header, num_joints)


def finish_dnas(out: Path, table: CostTable, header: dict, num_joints: int) -> dict:
    """Derive the argmax arch from the last checkpoint; write alpha history, plot, results."""
    last = out / "supernet" / "checkpoints" / "last.pt"
    supernet = supernet_from_checkpoint(load_checkpoint(last), last)
    arch = supernet.argmax_arch()
    save_arch_file(out / "best_arch.json", arch)
    history = [{"step": r["step"], "expected_cost": r["expected_cost"], "probs": r["probs"]}
               for r in read_jsonl(out / "supernet" / "metrics.jsonl") if "probs" in r]
    write_text(out / "alpha_history.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    if history:
        plot_alpha(history, out / "alpha.png", supernet.setting)
    model = derive(arch, num_joints)
    size = tuple(header["input_size"])
    val = read_json(out / "supernet" / "results.json") if (out / "supernet" / "results.json").exists() else {}
    summary = {"arch": arch.to_json(), "cost_kind": header["kind"], "cost_unit": header["unit"],
               "table_cost": table.predict(arch), "gmacs": count_macs(model, size)[0] / 1e9,
               "params_m": count_params(model) / 1e6, "supernet_val": val,
               "probabilities": [[round(float(v), 5) for v in row] for row in supernet.probabilities().detach()]}
    write_json(out / "results.json", summary, indent=2)
    return summary


def sample_arch(setting: str, head: HeadArch, rng: random.Random) -> EfficientPoseArch:
    """Uniform over each position's allowed operations."""
    return EfficientPoseArch(setting, tuple(rng.choice(p.ops) for p in SETTINGS[setting].positions), head)


def random_search_archs(cfg: DNASExperimentConfig) -> list[EfficientPoseArch]:
    """The ``random_archs`` architectures the random search draws (seeded by ``search.seed``)."""
    rng = random.Random(f"efficientpose-random:{cfg.search.seed}")
    return [sample_arch(cfg.supernet.setting, cfg.supernet.head_arch(), rng) for _ in range(cfg.search.random_archs)]


@interruptible
def run_random_search(cfg: DNASExperimentConfig, out: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """The paper's random-search baseline (resumable): ``random_archs`` architectures drawn
    uniformly (seeded), each trained from scratch for ``random_steps`` steps with the run's
    recipe and scored on the val split; the best is kept. Writes ``candidates.jsonl``,
    ``best_arch.json`` and ``results.json``; each candidate's training run is ``random/NN/``.

    Under torchrun arch ``i`` is trained by rank ``i % N``, as a 1-process run
    (:func:`single_process`), so every training is the one a 1-process search makes. The
    results are gathered through the run folder: rank 0 waits for each ``random/NN/results.json``
    and appends the records in index order. Why files and not a collective: each training
    already writes its results there (a resumed search reads them back), a training lasts
    far longer than a collective's timeout, and the ranks need nothing from each other."""
    out = Path(out)
    is_main = open_search_dir(out, cfg, resume)
    rank, size = env_rank()
    s = cfg.search
    archs = random_search_archs(cfg)
    path = out / "candidates.jsonl"
    # a line torn by a crash is dropped (and redone) before anything is appended: rank 0 alone writes the file
    log = JsonlLog(path) if is_main else None
    done = {r["index"]: r for r in (log.records if log is not None else read_jsonl(path) if path.exists() else [])}
    for i, arch in enumerate(archs):
        if i in done and done[i].get("arch") != arch.to_json():
            raise PosenasError(f"{path}: line for #{i} holds another arch than this search draws (was the config "
                               "changed?); search into a new --out")
    heading(f"random search: {len(archs)} archs, {s.random_steps} training steps each, into {out / 'random'}"
            + (f", shared over {size} processes" if size > 1 else ""))
    gathered = _RandomRecords(cfg, out, archs, done, log)
    mine = [i for i in range(len(archs)) if i % size == rank and i not in done]
    for i in mine:
        run = out / "random" / f"{i:02d}"
        if not (run / "results.json").exists():
            with single_process():
                train(_random_training(cfg, archs[i]), run, resume=(run / "checkpoints" / "last.pt").exists(),
                      progress=progress and is_main)
        if is_main:
            gathered.collect(wait=False)  # what is finished so far, in index order
    share_note(rank, size, f"trained {len(mine)} of {len(archs)} random archs"
               + (f" (#{', #'.join(map(str, mine))})" if mine else ""))
    if not is_main:
        return {}
    records = gathered.collect(wait=True)
    best = max(records, key=lambda r: r["score"])
    save_arch_file(out / "best_arch.json", arch_from_json(best["arch"]))
    summary = {"strategy": "random", "best": best, "evaluations": len(records),
               "steps_each": s.random_steps, "records": [{"index": r["index"], "score": r["score"]} for r in records]}
    write_json(out / "results.json", summary, indent=2)
    return summary


def _random_training(cfg: DNASExperimentConfig, arch: EfficientPoseArch):
    """The training run of one random arch: the search's recipe, ``random_steps`` steps."""
    base = cfg.training()
    return replace(base, model=ModelConfig(arch=arch.to_json()),
                   train=replace(base.train, max_steps=cfg.search.random_steps, epochs=10**6, val_every=0))


class _RandomRecords:
    """Rank 0's view of the random search: appends each arch's record to ``candidates.jsonl``
    in index order, once its training run (by any rank) has finished."""

    def __init__(self, cfg: DNASExperimentConfig, out: Path, archs: list[EfficientPoseArch], done: dict[int, dict],
                 log: JsonlLog | None):
        self.out, self.archs, self.done, self.log = out, archs, done, log
        self.size = tuple(cfg.data.input_size)
        self.next = 0

    def collect(self, wait: bool) -> list[dict]:
        """Records up to the first arch still training (``wait``: all of them, waiting for the other ranks)."""
        announced = False
        while self.next < len(self.archs):
            i = self.next
            if i not in self.done:
                run = self.out / "random" / f"{i:02d}"
                while not (run / "results.json").exists():
                    if not wait:
                        return []
                    if not announced:
                        heading("waiting for the other processes' trainings")
                        announced = True
                    time.sleep(1.0)
                self.done[i] = self._record(i, run)
                self.log.append(self.done[i])
            self.next += 1
        return [self.done[i] for i in range(len(self.archs))]

    def _record(self, i: int, run: Path) -> dict:
        val = read_json(run / "results.json")
        model = model_from_checkpoint(run / "checkpoints" / "last.pt").model
        return {"index": i, "arch": self.archs[i].to_json(), "gmacs": count_macs(model, self.size)[0] / 1e9,
                "params_m": count_params(model) / 1e6, "metric": val["metric"],
                "score": primary_value(val["metric"], val), "val": val}


@interruptible
def run_efficientpose(cfg: DNASExperimentConfig, out: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """The search ``search.strategy`` names: the differentiable search, or the random baseline."""
    run = run_random_search if cfg.search.strategy == "random" else run_dnas
    return run(cfg, out, resume=resume, progress=progress)


def print_summary(summary: dict, out: Path, cfg: DNASExperimentConfig) -> None:
    """The derived (or best random) arch, warnings where it means nothing, and the retrain command."""
    if summary.get("strategy") == "random":
        best = summary["best"]
        print(f"best of {summary['evaluations']} random archs ({summary['steps_each']} steps each): {best['metric']} "
              f"{format_score(best['score'])} at {best['gmacs']:.4f} GMACs; arch in {out / 'best_arch.json'}")
        scores = [r["score"] for r in summary.get("records", [])]
        if ties(scores):
            warn(f"all {len(scores)} random archs scored {best['metric']} {format_score(scores[0])}: the pick is the "
                 "first drawn, not a better arch; raise search.random_steps")
    else:
        print(f"derived arch: {summary['table_cost']:.4g} {summary['cost_unit']} by the {summary['cost_kind']} table, "
              f"{summary['gmacs']:.4f} GMACs, {summary['params_m']:.3f} M params; in {out / 'best_arch.json'}")
        spread = max((max(row) - min(row) for row in summary["probabilities"] if len(row) > 1), default=0.0)
        warn_if_alpha_unmoved(spread, "a position's", "the derived arch is the argmax of a near-uniform mixture; "
                              "search longer or after a shorter warm-up")
    print("retrain it: " + retrain_command(out / "best_arch.json", cfg.data.root, cfg.data.input_size))
