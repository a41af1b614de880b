"""PNFS search strategies (section III-F of the paper), chosen by ``search.strategy``:

- ``synchronous`` (the paper's main strategy): alpha and beta are parameters of the model
  and the run's optimiser updates them with the weights on the training loss;
- ``random``: alpha and beta drawn from N(0, 1) (seeded) and frozen; only weights train;
- ``darts``: first-order DARTS (:mod:`posenas.search.darts`): a separate Adam (lr 3e-3,
  weight decay 1e-3) updates alpha and beta on a held-out half of the training images.

The network is kept dense, as the paper keeps it (no argmax). Run directory::

    config.yaml        the resolved config
    supernet/          the training run (checkpoints/last.pt loads anywhere as the model)
    arch.json          the searched architecture: all of Theta, the parts, d and the
                       softmaxed alpha, beta of every fabric (rebuilds the model exactly)
    model.pt           a checkpoint of that exported model (posenas eval / infer / export)
    arch_pruned.json, model_pruned.pt   with search.prune_threshold: ops and inputs whose
                       weight is below it removed
    results.json       val scores, params and GMACs, before and after pruning
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from posenas.arch import save_arch_file
from posenas.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from posenas.cost import count_macs, count_params
from posenas.data.layout import load_dataset
from posenas.data.transforms import AugmentConfig
from posenas.engine.config import DataConfig, OptimConfig, TrainConfig, TrainingSections
from posenas.engine.distributed import resolve_device
from posenas.engine.predict import evaluate_model, primary_value
from posenas.engine.train import Objective, interruptible, make_codec, train
from posenas.display import format_score, heading, retrain_command, warn, warn_if_alpha_unmoved
from posenas.errors import PosenasError
from posenas.jsonio import read_json, write_json
from posenas.keypoints import KeypointSchema
from posenas.search.darts import FirstOrderObjective
from posenas.search.rundir import open_search_dir
from posenas.spaces.pnfs import (SUBNET_OPS, PNFSArch, PNFSModel, export_arch, fabrics, pnfs_arch, prune_arch,
                                 searched_state)

STRATEGIES = ("synchronous", "random", "darts")


@dataclass(frozen=True)
class PNFSSupernetConfig:
    """Theta = (L, scales, H, C, O) of the fabrics, the backbone, P and d."""

    space: Literal["pnfs"] = "pnfs"
    backbone: str = "mobilenetv2"  # mobilenetv2 | resnet50 | fabric
    backbone_layers: int = 0  # fabric backbone only (>= scales - 1)
    layers: int = 3
    scales: int = 4
    hidden: int = 1
    channels: int = 10
    ops: tuple[str, ...] = SUBNET_OPS
    backbone_ops: tuple[str, ...] = ()  # fabric backbone only (default: all six ops)
    parts: int = 3  # P: 1, 3, 5 or 8 (Table I groupings of the data's keypoint schema)
    vector_dim: int = 8  # d; 1 is the scalar heatmap

    def arch(self, schema: KeypointSchema) -> PNFSArch:
        fields: dict[str, Any] = {"backbone": self.backbone, "layers": self.layers, "scales": self.scales,
                                  "hidden": self.hidden, "channels": self.channels, "ops": list(self.ops),
                                  "vector_dim": self.vector_dim, "backbone_layers": self.backbone_layers}
        if self.backbone_ops:
            fields["backbone_ops"] = list(self.backbone_ops)
        return pnfs_arch(schema, self.parts, "config.supernet", **fields)


@dataclass(frozen=True)
class PNFSSearchConfig:
    strategy: str = "synchronous"
    arch_fraction: float = 0.5  # darts: held-out share of the training images
    arch_lr: float = 3e-3  # darts
    arch_weight_decay: float = 1e-3  # darts
    warmup_epochs: float = 0.0  # darts: weight-only epochs first (fractions allowed)
    prune_threshold: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise PosenasError(f"config.search.strategy: {self.strategy!r} not allowed; allowed: {', '.join(STRATEGIES)}")
        if not 0 < self.arch_fraction < 1:
            raise PosenasError(f"config.search.arch_fraction: must be in (0, 1), got {self.arch_fraction}")
        if not self.arch_lr > 0 or self.arch_weight_decay < 0:
            raise PosenasError(f"config.search.arch_lr must be > 0 and arch_weight_decay >= 0, got {self.arch_lr} "
                               f"and {self.arch_weight_decay}")
        if self.warmup_epochs < 0:
            raise PosenasError(f"config.search.warmup_epochs: must be >= 0, got {self.warmup_epochs}")
        if self.prune_threshold is not None and not 0 < self.prune_threshold < 1:
            raise PosenasError(f"config.search.prune_threshold: must be in (0, 1) or null, got {self.prune_threshold}")


@dataclass(frozen=True)
class PNFSExperimentConfig(TrainingSections):
    supernet: PNFSSupernetConfig = field(default_factory=PNFSSupernetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: PNFSSearchConfig = field(default_factory=PNFSSearchConfig)


class SynchronousObjective(Objective):
    """``synchronous`` (alpha, beta trained with the weights) or ``random`` (drawn, frozen)."""

    def __init__(self, arch: PNFSArch, frozen_random: bool, seed: int):
        super().__init__(arch)
        self.frozen_random, self.seed = frozen_random, seed

    def build(self, num_joints: int) -> nn.Module:
        model = PNFSModel(self.arch, num_joints)
        if self.frozen_random:
            g = torch.Generator().manual_seed(self.seed)
            for f in fabrics(model):
                for p in (f.alpha, f.beta):
                    with torch.no_grad():
                        p.copy_(torch.randn(p.shape, generator=g))
                    p.requires_grad_(False)
        return model

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]


class DartsObjective(FirstOrderObjective):
    def __init__(self, arch: PNFSArch, cfg: PNFSSearchConfig):
        super().__init__(cfg.arch_fraction, cfg.warmup_epochs, cfg.arch_lr, cfg.arch_weight_decay, cfg.seed)
        self.arch = arch

    def build(self, num_joints: int) -> nn.Module:
        return PNFSModel(self.arch, num_joints)

    def arch_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for f in fabrics(model) for p in (f.alpha, f.beta)]


@interruptible  # Ctrl-C / SIGTERM stop every phase (export, pruning too), also when SIGINT is ignored
def run_pnfs(cfg: PNFSExperimentConfig, out: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train the fabrics with the chosen strategy (resumable), then export (and prune)."""
    out = Path(out)
    val = load_dataset(cfg.data.root, cfg.data.val_split)
    arch = cfg.supernet.arch(val.schema)  # before the run directory: a bad config leaves nothing behind
    is_main = open_search_dir(out, cfg, resume)
    s = cfg.search
    objective = (DartsObjective(arch, s) if s.strategy == "darts"
                 else SynchronousObjective(arch, s.strategy == "random", s.seed))
    run = out / "supernet"
    if not (run / "results.json").exists():
        heading(f"fabric training: strategy {s.strategy}, {len(arch.parts)} part fabric(s) into {run}")
        train(cfg.training(), run, resume=(run / "checkpoints" / "last.pt").exists(), progress=progress,
              objective=objective)
    if not is_main:
        return {}
    heading("export" + (f" and pruning at {s.prune_threshold}" if s.prune_threshold is not None else "")
            + ": scored on val")
    return export_run(cfg, out, val)


def alpha_spread(arch: PNFSArch) -> float:
    """The largest gap between two op weights of one edge, over every fabric (0: alpha is uniform)."""
    fabrics_ = [arch.weights["backbone"], *arch.weights["subnets"]] if arch.weights else []
    return max((max(row) - min(row) for f in fabrics_ if f for row in f["alpha"]), default=0.0)


def export_run(cfg: PNFSExperimentConfig, out: Path, val) -> dict:
    """arch.json + model.pt from the trained run; with a threshold, the pruned pair too; scores
    (on the same val images as the run's validation: ``data.val_max_images``)."""
    if cfg.data.val_max_images is not None:
        val = replace(val, images=val.images[: cfg.data.val_max_images])
    last = out / "supernet" / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)
    trained = model_from_checkpoint(last).model
    codec = make_codec(cfg.training())
    device = resolve_device(cfg.train.device)
    size = tuple(cfg.data.input_size)

    def publish(arch: PNFSArch, name: str) -> dict[str, Any]:
        model = PNFSModel(arch, trained.num_joints)
        model.load_state_dict(searched_state(trained, model))
        model.eval()
        save_arch_file(out / f"arch{name}.json", arch)
        save_checkpoint(out / f"model{name}.pt", {"arch": arch.to_json(), "schema": ckpt["schema"],
                                                  "codec": ckpt["codec"], "state_dict": model.state_dict(),
                                                  "config": ckpt["config"]})
        metric, result, _, _ = evaluate_model(model.to(device), val, codec, device, flip_test=cfg.train.flip_test,
                                              batch_size=cfg.data.batch_size * 2, workers=0, progress=False)
        return {"metric": metric, "score": primary_value(metric, result), "val": result,
                "params_m": count_params(model) / 1e6, "gmacs": count_macs(model.cpu(), size)[0] / 1e9}

    exported = export_arch(trained)
    summary: dict[str, Any] = {"strategy": cfg.search.strategy, "dense": publish(exported, ""),
                               "alpha_spread": alpha_spread(exported)}
    if cfg.search.prune_threshold is not None:
        summary["pruned"] = {"threshold": cfg.search.prune_threshold,
                             **publish(prune_arch(exported, cfg.search.prune_threshold), "_pruned")}
    summary["training_val"] = read_json(out / "supernet" / "results.json")
    write_json(out / "results.json", summary, indent=2)
    return summary


def print_summary(summary: dict, out: Path, cfg: PNFSExperimentConfig) -> None:
    """Scores of the dense (and pruned) fabric, warnings where they mean nothing, the retrain command."""
    for key, file in (("dense", "arch.json"), ("pruned", "arch_pruned.json")):
        if key in summary:
            r = summary[key]
            print(f"{key}: {r['metric']} {format_score(r['score'])}, {r['params_m']:.3f} M params, "
                  f"{r['gmacs']:.4f} GMACs; {out / file}")
    if summary["strategy"] != "random":  # random: alpha is frozen on purpose
        warn_if_alpha_unmoved(summary["alpha_spread"], "an edge's",
                              "the searched fabric is the uniform mixture; search longer (train.epochs)")
    pruned = summary.get("pruned")
    if pruned is not None and pruned["params_m"] == summary["dense"]["params_m"]:
        warn(f"pruning at {pruned['threshold']} removed nothing (no op or input weight below it)")
    print("retrain it: " + retrain_command(out / "arch.json", cfg.data.root, cfg.data.input_size))
