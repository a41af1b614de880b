"""3M-Pose's search (Hoang, 2021, Sec. 3.2-3.4 and 4.1 "Searching"): a bottom-up fabric
supernet (:mod:`posenas.spaces.threem`) searched by first-order alternation, with Dyn-EGS
sampling, a FLOP constraint and a teacher-guided representation loss.

Every optimiser step, on the first-order machinery of :mod:`posenas.search.darts`: an
architecture step (alpha, beta, m_alpha, m_beta by Adam, ``search.arch_lr`` 5e-3 halved at
``search.arch_lr_drops`` = 20/35 and 25/35 of the search, as the thesis' epochs 20 and 25 of
35) on a batch of the held-out split, then a weight step (``optim``: Adam 1e-3 in the paper
config) on a training batch. Each forward draws a sub-net at temperature tau, linear from
``supernet.tau_start`` 10 to ``supernet.tau_end`` 0.001 over the search (Sec. 3.2.1).

The loss of both steps (Sec. 3.4, weights 1, 1e-3, 1, 1e-3 as Sec. 4.1):

- the bottom-up task loss at every exit: heatmap MSE (weight ``bottomup.heatmap_weight``) and
  associative-embedding pull + push (``bottomup.pull_weight``, ``push_weight``);
- the teacher loss (``search.teacher``: any bottom-up checkpoint of this project, weight
  ``search.teacher_weight``): 1 - mean over the teacher's representations of the best Pearson
  correlation of their RDMs with any cell's output (:mod:`posenas.search.teacher`);
- the FLOP loss ``search.flop_weight * scale * (GMACs / T) ** w`` (T = ``flop_target`` 47.8, the
  GFLOPs HigherHRNet reports, w = ``flop_exponent`` 0.15) of the sampled sub-net's static
  inference (:class:`~posenas.spaces.threem.CostTable`); ``scale`` steps from 1e-4 by x10 every
  ``flop_scale_epochs`` (3) epochs to 1 (the thesis' "step-case loss scaling"). It depends on
  the architecture only, so it enters the architecture steps.

Where the thesis is silent (our choices): GFLOPs are counted as the project's MACs (DESIGN.md;
HigherHRNet's 47.8 is in that unit: our higherhrnet-w32 measures 46.2 GMACs at 512); the held-
out split is ``search.arch_fraction`` of the training images (the thesis uses COCO val for the
architecture steps); the teacher's representations default to its outputs.

Derivation: argmax m, the top-i ops and inputs by alpha and beta, cells no exit reads pruned
(``best_arch.json``); retrain it with ``posenas train --arch``, every exit supervised.

Run directory::

    config.yaml         the resolved config
    supernet/           the training run (metrics.jsonl with tau, expected GMACs, losses)
    best_arch.json      the derived, pruned network
    fabric.png          the derived fabric (the thesis' Fig. A.1): ops per edge, inputs per cell
    results.json        the arch, its GMACs per exit and params, density of the cells
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from posenas.arch import save_arch_file
from posenas.checkpoint import load_checkpoint, supernet_from_checkpoint
from posenas.cost import count_macs, count_params
from posenas.data.layout import load_dataset
from posenas.data.transforms import AugmentConfig
from posenas.display import heading, retrain_command
from posenas.engine.config import (BottomUpConfig, DataConfig, ExperimentConfig, OptimConfig, TrainConfig,
                                   TrainingSections)
from posenas.engine.distributed import World, check_identical
from posenas.engine.precision import supernet_family
from posenas.engine.train import interruptible, run_length, train
from posenas.errors import PosenasError
from posenas.jsonio import read_jsonl, write_json
from posenas.search.darts import FirstOrderObjective
from posenas.search.rundir import open_search_dir
from posenas.spaces.threem import (INPUTS, OPS, SAMPLINGS, CellArch, CostTable, ExitModel, ThreeMArch, ThreeMSpace,
                                   ThreeMSupernet, available_inputs, build_threem, cost_table, positions)


@dataclass(frozen=True)
class ThreeMSupernetConfig:
    """The fabric (the thesis' 4 rows x 10 layers, C = 32, EELs at 4 and 7), its sampling and tau."""

    space: Literal["3m-pose"] = "3m-pose"
    channels: int = 32
    rows: int = 4
    layers: int = 10
    hidden: int = 2
    stem_channels: int = 64
    exits: tuple[int, ...] = (4, 7)
    fuse_split: bool = True
    sampling: str = "dyn-egs"  # dyn-egs | gumbel (the thesis' baseline: Gumbel-softmax weights, argmax)
    r_alpha: int = 2  # most ops per edge (thesis)
    r_beta: int = 3  # most inputs per cell (thesis)
    tau_start: float = 10.0  # Gumbel-softmax temperature, linear from here ...
    tau_end: float = 0.001  # ... to here over the search (thesis)

    def __post_init__(self) -> None:
        self.net()
        if self.sampling not in SAMPLINGS:
            raise PosenasError(f"config.supernet.sampling: {self.sampling!r} not allowed; allowed: "
                               f"{', '.join(SAMPLINGS)}")
        if not 1 <= self.r_alpha <= len(OPS):
            raise PosenasError(f"config.supernet.r_alpha: expected 1-{len(OPS)}, got {self.r_alpha}")
        if not 1 <= self.r_beta <= len(INPUTS):
            raise PosenasError(f"config.supernet.r_beta: expected 1-{len(INPUTS)}, got {self.r_beta}")
        if not self.tau_start > 0 or not self.tau_end > 0:
            raise PosenasError(f"config.supernet.tau_start and tau_end: must be > 0, got {self.tau_start} and "
                               f"{self.tau_end}")

    def net(self) -> ThreeMSpace:
        shape = {f.name: getattr(self, f.name) for f in fields(ThreeMSpace)}
        return ThreeMSpace.from_json({**shape, "exits": list(self.exits)}, "config.supernet")

    def build(self, num_joints: int) -> ThreeMSupernet:
        return ThreeMSupernet(self.net(), num_joints, self.sampling, self.r_alpha, self.r_beta, self.tau_start)

    def tau(self, step: int, total: int) -> float:
        """Linear from tau_start at step 0 to tau_end at the last step."""
        frac = min(1.0, step / max(1, total - 1))
        return self.tau_start + (self.tau_end - self.tau_start) * frac


@dataclass(frozen=True)
class ThreeMSearchConfig:
    arch_fraction: float = 0.2  # share of the training images held out for the architecture steps
    arch_lr: float = 5e-3  # Adam on alpha, beta, m (thesis) ...
    arch_lr_drops: tuple[float, ...] = (20 / 35, 25 / 35)  # ... halved at these fractions of the search
    arch_weight_decay: float = 0.0
    warmup_epochs: float = 0.0  # weight-only epochs before the architecture steps start
    flop_weight: float = 1e-3  # 0 switches the FLOP constraint off (the thesis' ablation)
    flop_target: float = 47.8  # T, GMACs
    flop_exponent: float = 0.15  # w
    flop_scale_start: float = 1e-4  # the stepped scale: this, x10 every flop_scale_epochs, at most 1
    flop_scale_epochs: float = 3.0
    teacher: str | None = None  # a bottom-up checkpoint; null: no teacher loss
    teacher_layers: tuple[str, ...] = ()  # its modules whose outputs guide (empty: its outputs)
    teacher_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.arch_fraction < 1:
            raise PosenasError(f"config.search.arch_fraction: must be in (0, 1), got {self.arch_fraction}")
        if not self.arch_lr > 0:
            raise PosenasError(f"config.search.arch_lr: must be > 0, got {self.arch_lr}")
        if list(self.arch_lr_drops) != sorted(self.arch_lr_drops) or not all(0 < f < 1 for f in self.arch_lr_drops):
            raise PosenasError(f"config.search.arch_lr_drops: expected increasing fractions in (0, 1), got "
                               f"{list(self.arch_lr_drops)}")
        for name in ("warmup_epochs", "flop_weight", "teacher_weight", "arch_weight_decay", "flop_exponent"):
            if not getattr(self, name) >= 0:
                raise PosenasError(f"config.search.{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("flop_target", "flop_scale_start", "flop_scale_epochs"):
            if not getattr(self, name) > 0:
                raise PosenasError(f"config.search.{name}: must be > 0, got {getattr(self, name)}")
        if self.teacher is not None and not os.path.isfile(self.teacher):
            raise PosenasError(f"config.search.teacher: {self.teacher}: no such checkpoint file")

    def flop_scale(self, epoch: float) -> float:
        """The stepped FLOP-loss scale at ``epoch``: flop_scale_start x 10^floor(epoch / flop_scale_epochs), <= 1."""
        return min(1.0, self.flop_scale_start * 10 ** int(epoch // self.flop_scale_epochs))

    def flop_loss(self, gmacs: torch.Tensor, epoch: float) -> torch.Tensor:
        """``flop_weight * scale(epoch) * (gmacs / T) ** w`` (Sec. 3.4)."""
        return self.flop_weight * self.flop_scale(epoch) * (gmacs / self.flop_target) ** self.flop_exponent


@dataclass(frozen=True)
class ThreeMExperimentConfig(TrainingSections):
    supernet: ThreeMSupernetConfig = field(default_factory=ThreeMSupernetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    bottomup: BottomUpConfig = field(default_factory=BottomUpConfig)
    search: ThreeMSearchConfig = field(default_factory=ThreeMSearchConfig)

    def __post_init__(self) -> None:
        if self.train.init_from:
            raise PosenasError("config.train.init_from: not supported by the 3M-Pose search (its supernet starts "
                               "from scratch); leave it null")


def threem_supernet_fields(supernet: ThreeMSupernet) -> dict[str, Any]:
    """The checkpoint field that rebuilds the supernet (:func:`posenas.spaces.supernets.build_supernet`)."""
    return {"supernet": {"space": "3m-pose", "net": supernet.net.to_json(), "sampling": supernet.sampling,
                         "r_alpha": supernet.r_alpha, "r_beta": supernet.r_beta}}


def starting_arch(net: ThreeMSpace) -> ThreeMArch:
    """A valid arch of the space (each cell its first input, skip on every edge): what the
    search objective names before it has searched anything (it says the run is bottom-up)."""
    cells = [CellArch((next(n for n, has in zip(INPUTS, avail) if has),),
                      tuple(("skip",) for _ in range(net.hidden * (net.hidden + 1) // 2)))
             for avail in available_inputs(net)]
    return ThreeMArch(net, tuple(cells))


class ThreeMObjective(FirstOrderObjective):
    """The engine's objective for the 3M-Pose search (see the module docstring)."""

    def __init__(self, cfg: ThreeMExperimentConfig):
        s = cfg.search
        super().__init__(s.arch_fraction, s.warmup_epochs, s.arch_lr, s.arch_weight_decay, s.seed)
        self.cfg = cfg
        self.arch = starting_arch(cfg.supernet.net())  # bottom-up: the loop picks the bottom-up task by it
        self.teacher = None
        self.last: dict[str, float] = {}
        self.step_now = self.forwards = 0

    def build(self, num_joints: int) -> nn.Module:
        return self.cfg.supernet.build(num_joints)

    def family(self) -> str:
        return supernet_family("3m-pose")

    def checkpoint_fields(self) -> dict:
        return {"arch": self.model.derive().to_json(), **threem_supernet_fields(self.model)}

    def arch_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return model.arch_parameters()

    def prepare(self, model: nn.Module, codec: Any, cfg: ExperimentConfig, world: World,
                steps_per_epoch: int) -> None:
        super().prepare(model, codec, cfg, world, steps_per_epoch)
        s = self.cfg.search
        self.steps_per_epoch, self.total = steps_per_epoch, run_length(cfg, steps_per_epoch)
        self.costs: CostTable = cost_table(model, tuple(cfg.data.input_size))
        if s.teacher is not None:
            from posenas.search.teacher import Teacher

            self.teacher = Teacher.from_checkpoint(s.teacher, s.teacher_layers, world.device)
        if s.teacher is not None and cfg.data.batch_size < 3:
            raise PosenasError(f"config.data.batch_size: the teacher loss compares images pairwise and needs a batch "
                               f"of at least 3, got {cfg.data.batch_size}")

    def arch_lr_at(self, step: int) -> float:
        drops = sum(step >= round(f * self.total) for f in self.cfg.search.arch_lr_drops)
        return self.cfg.search.arch_lr * 0.5**drops

    def forward(self, model: nn.Module, images: torch.Tensor) -> Any:
        """The training output of a sub-net drawn with noise that is a function of (seed, step,
        forward of the step): the same on every rank and after a resume. With a teacher, every
        cell's output is recorded for its loss."""
        self.forwards += 1
        key = f"3m-pose-draw:{self.cfg.search.seed}:{self.step_now}:{self.forwards}"
        model.generator = torch.Generator().manual_seed(random.Random(key).getrandbits(62))
        if self.teacher is None:
            return super().forward(model, images)
        model.cell_outputs = []
        try:
            output = super().forward(model, images)
            self._cells, self._images = model.cell_outputs, images
        finally:
            model.cell_outputs = None
        return output

    def loss(self, model: nn.Module, output: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = self.task.loss(model, output, batch)
        self.last["task_loss"] = float(loss.detach())
        if self.teacher is not None and self.cfg.search.teacher_weight > 0:
            from posenas.search.teacher import rdm_loss

            guide = rdm_loss(self._cells, self.teacher.representations(self._images))
            self.last["teacher_loss"] = float(guide.detach())
            loss = loss + self.cfg.search.teacher_weight * guide
            self._cells = self._images = None
        return loss

    def arch_penalty(self, model: nn.Module) -> torch.Tensor | float:
        gmacs = self.costs.macs(model.sampled) / 1e9
        self.last["expected_gmacs"] = float(gmacs.detach())
        if self.cfg.search.flop_weight == 0:
            return 0.0
        return self.cfg.search.flop_loss(gmacs, self.step_now / self.steps_per_epoch)

    def step(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int, world: World) -> torch.Tensor:
        self.step_now, self.forwards = step, 0
        model.tau = self.cfg.supernet.tau(step, self.total)
        for group in self.arch_opt.param_groups:
            group["lr"] = self.arch_lr_at(step)
        loss = super().step(model, batch, step, world)
        if step % 100 == 0:  # under torchrun: every rank holds the same architecture parameters
            check_identical(model.arch_parameters(), world, f"step {step}: alpha, beta, m")
        return loss

    def before_validation(self, model: nn.Module) -> None:
        """Validation runs the derived selection (the supernet's eval mode does)."""

    def log_fields(self, model: nn.Module) -> dict[str, Any]:
        with torch.no_grad():
            chosen = model.sample(noise=False)
            ops = [len(edge) for cell in chosen.active_ops for edge in cell]
            ins = [len(cell) for cell in chosen.active_inputs]
        return {**super().log_fields(model), "tau": round(model.tau, 5), "arch_lr": self.arch_lr_at(self.step_now),
                **{k: round(v, 6) for k, v in self.last.items()},
                "derived_gmacs": round(float(self.costs.macs(chosen)) / 1e9, 5),
                "ops_per_edge": round(sum(ops) / len(ops), 4), "inputs_per_cell": round(sum(ins) / len(ins), 4)}


def density(arch: ThreeMArch) -> dict[str, Any]:
    """How dense the derived cells are: ops per edge and inputs per kept cell (counts), pruned cells."""
    kept = [c for c in arch.cells if c is not None]
    per_edge: dict[int, int] = {}
    per_cell: dict[int, int] = {}
    for c in kept:
        per_cell[len(c.inputs)] = per_cell.get(len(c.inputs), 0) + 1
        for ops in c.ops:
            per_edge[len(ops)] = per_edge.get(len(ops), 0) + 1
    return {"cells": len(arch.cells), "pruned": len(arch.cells) - len(kept),
            "ops_per_edge": dict(sorted(per_edge.items())), "inputs_per_cell": dict(sorted(per_cell.items()))}


def plot_fabric(arch: ThreeMArch, path: Path) -> None:
    """The derived fabric (the thesis' Fig. A.1): a box per kept cell with its op count per edge,
    a line per selected input, exits marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    net = arch.net
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * net.layers, 1.0 + 0.8 * net.rows))
    for i, ((layer, row), cell) in enumerate(zip(positions(net), arch.cells)):
        if cell is None:
            ax.plot(layer, -row, "x", color="0.6")
            continue
        for name in cell.inputs:
            src = row + INPUTS.index(name) - 1
            ax.plot([layer - 1, layer], [-src, -row], "-", color="tab:blue", lw=0.8, zorder=1)
        ax.scatter([layer], [-row], s=420, color="white", edgecolors="k", zorder=2)
        ax.text(layer, -row, "".join(str(len(o)) for o in cell.ops), ha="center", va="center", fontsize=7, zorder=3)
    for e in net.exit_layers:
        ax.axvline(e - 1 + 0.5, color="tab:red", lw=0.8, ls="--")
    ax.set_xticks(range(net.layers), [str(layer + 1) for layer in range(net.layers)])
    ax.set_yticks([-r for r in range(net.rows)], [f"1/{4 * 2 ** r}" for r in range(net.rows)])
    ax.set_xlim(-1.5, net.layers)
    ax.set_xlabel("layer (dashed: exits); digits: ops per edge; x: pruned")
    fig.tight_layout()
    tmp = path.with_suffix(".partial.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


@interruptible  # Ctrl-C / SIGTERM stop the search cleanly, also under a script that ignores SIGINT
def run_threem(cfg: ThreeMExperimentConfig, out: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """The whole search (resumable): supernet training with architecture steps, then derivation."""
    out = Path(out)
    load_dataset(cfg.data.root, cfg.data.train_split)  # a bad data root fails before any file
    is_main = open_search_dir(out, cfg, resume)
    run = out / "supernet"
    if not (run / "results.json").exists():
        sc, s = cfg.supernet, cfg.search
        heading(f"supernet training: 3M-Pose fabric {sc.rows} rows x {sc.layers} layers, exits at "
                f"{list(sc.net().exit_layers)}, {sc.sampling} sampling, FLOP loss "
                f"{'on' if s.flop_weight else 'off'}, teacher {s.teacher or 'none'} into {run}")
        train(cfg.training(), run, resume=(run / "checkpoints" / "last.pt").exists(), progress=progress,
              objective=ThreeMObjective(cfg))
    if not is_main:
        return {}
    heading("derivation: argmax m, the top-i ops and inputs by alpha and beta, unread cells pruned")
    return finish_threem(cfg, out)


def finish_threem(cfg: ThreeMExperimentConfig, out: Path) -> dict:
    """Derive, prune and describe the searched network."""
    last = out / "supernet" / "checkpoints" / "last.pt"
    supernet: ThreeMSupernet = supernet_from_checkpoint(load_checkpoint(last), last)
    arch = supernet.derive(prune=True)
    save_arch_file(out / "best_arch.json", arch)
    plot_fabric(arch, out / "fabric.png")
    size = tuple(cfg.data.input_size)
    model = build_threem(arch, supernet.num_joints)
    exit_gmacs = [count_macs(ExitModel(model, e), size)[0] / 1e9 for e in range(model.exit_count)]
    metrics = read_jsonl(out / "supernet" / "metrics.jsonl") if (out / "supernet" / "metrics.jsonl").exists() else []
    summary = {"arch": arch.to_json(), "gmacs": exit_gmacs[-1], "exit_gmacs": exit_gmacs,
               "exit_layers": list(arch.net.exit_layers), "params_m": count_params(model) / 1e6,
               "density": density(arch), "sampling": cfg.supernet.sampling,
               "val": read_val(out / "supernet"), "steps": metrics[-1]["step"] if metrics else None}
    write_json(out / "results.json", summary, indent=2)
    return summary


def read_val(run: Path) -> dict | None:
    """The supernet run's last validation (the derived selection with the shared weights), if any."""
    path = run / "results.json"
    if not path.exists():
        return None
    from posenas.jsonio import read_json

    data = read_json(path)
    return {k: data.get(k) for k in ("metric", "AP", "score") if k in data} or None


def print_summary(summary: dict, out: Path, cfg: ThreeMExperimentConfig) -> None:
    """The derived arch, its cost per exit, its density, the retrain command."""
    d = summary["density"]
    exits = ", ".join(f"layer {layer}: {g:.3f}" for layer, g in zip(summary["exit_layers"], summary["exit_gmacs"]))
    print(f"derived net: {summary['params_m']:.3f} M params; GMACs to each exit {exits}; {d['pruned']} of "
          f"{d['cells']} cells pruned; ops per edge {d['ops_per_edge']}, inputs per cell {d['inputs_per_cell']}; "
          f"{out / 'best_arch.json'}")
    print("retrain it: " + retrain_command(out / "best_arch.json", cfg.data.root, cfg.data.input_size,
                                           config="configs/bottomup/tiny.yaml"))
