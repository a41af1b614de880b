"""AutoPose's bi-level search (Algorithm 1 of the paper): cell-level alpha by first-order
gradient steps, network-level branch vectors beta by a REINFORCE controller.

Every optimiser step (``cell_update``): beta is drawn from the controller (a function of
(seed, step): identical on every torchrun rank and after a resume), then the first-order
alternation of :mod:`posenas.search.darts` — an alpha step (Adam, ``search.arch_lr``, the
paper's 3e-3) on a held-out batch, a weight step on a training batch — with the op weights
drawn by the Gumbel-softmax at temperature tau, annealed exponentially from
``supernet.tau_start`` to ``supernet.tau_end`` over the search. At every epoch boundary
(``search.iterations`` steps, the paper's N_iter = 1100; by default one pass over the weight
split) from ``search.controller_start_epoch`` on (paper: 5 of 50), ``controller_update``: with the
weights and alpha fixed, ``search.controller_steps`` REINFORCE steps (paper: N_ctr = 10) of
``search.controller_batch`` draws (paper: 2), each rewarded by the OKS AP (PCKh on MPII-style
data) of the supernet with that beta on ``search.reward_images`` held-out images (softmax(alpha
/ tau) op weights, BN in eval mode, no flip test). Every rank computes the same rewards, so the
controller stays identical.

Derivation (Sec. 3.3): ``search.derive_samples`` beta vectors (paper: N = 10) sampled from the
trained controller and scored the same way on every held-out image, the best kept; the argmax
op of every edge; the channels multiplied by ``supernet.derived_width_mult`` (paper: 2).

``search.branch_policy`` gives the paper's comparisons the same machinery: ``random`` draws
every step's beta (and the derivation's samples) as fair coin flips and never trains the
controller (the same cell search under random branches); ``all`` keeps every branch on (the
paper's "fixed to four": cell search only).

Run directory::

    config.yaml                 the resolved config
    supernet/                   the training run (metrics.jsonl with tau, arch loss, controller
                                probabilities; checkpoints holding controller and reward history)
    controller.jsonl            every controller update: step, rewards, baseline, entropy
    derive.jsonl                the sampled branch vectors and their held-out scores
    best_arch.json              the derived network (train it: posenas train --arch)
    branches.png                the per-module branch vector (the paper's Fig. 4)
    alpha.png, rewards.png      op probabilities and controller rewards over the search
    results.json                the derived arch, its GMACs and params, the scores
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from posenas.arch import save_arch_file
from posenas.checkpoint import load_checkpoint, supernet_from_checkpoint
from posenas.codecs.heatmap import HeatmapCodec
from posenas.cost import count_macs, count_params
from posenas.data.layout import load_dataset
from posenas.data.records import PoseDataset
from posenas.data.transforms import AugmentConfig
from posenas.display import format_score, heading, retrain_command, warn
from posenas.engine.config import DataConfig, ExperimentConfig, OptimConfig, TrainConfig, TrainingSections
from posenas.engine.distributed import World, check_identical, resolve_device
from posenas.engine.precision import supernet_family
from posenas.engine.predict import evaluate_model, primary_value
from posenas.engine.train import interruptible, make_codec, run_length, train
from posenas.errors import PosenasError
from posenas.jsonio import read_jsonl, write_json, write_text
from posenas.search.controller import BranchController, Reinforce, bits_of, branch_generator
from posenas.search.darts import FirstOrderObjective, split_images
from posenas.search.rundir import open_search_dir
from posenas.spaces.autopose import OPS, AutoPoseArch, AutoPoseSpace, AutoPoseSupernet, build_autopose


@dataclass(frozen=True)
class AutoPoseSupernetConfig:
    """The searched network (the paper's defaults) and the Gumbel-softmax temperature."""

    space: Literal["autopose"] = "autopose"
    channels: tuple[int, ...] = (16, 32, 64, 128)
    stem_channels: int = 64
    stages: int = 3
    modules_per_stage: int = 2
    individual_nodes: int = 4
    aggregation_nodes: int = 2
    ops: tuple[str, ...] = OPS
    aggregation: str = "cell"  # cell (Eq. 3) | concat (the paper's ablation: plain concatenation)
    derived_width_mult: int = 2  # the paper doubles the searched channels for the derived network
    tau_start: float = 1.0  # Gumbel-softmax temperature at the first step ...
    tau_end: float = 0.1  # ... and at the last (exponential in between)

    def __post_init__(self) -> None:
        self.net()
        if not self.tau_start > 0 or not self.tau_end > 0:
            raise PosenasError(f"config.supernet.tau_start and tau_end: must be > 0, got {self.tau_start} and "
                               f"{self.tau_end}")
        if not 1 <= self.derived_width_mult <= 8:
            raise PosenasError(f"config.supernet.derived_width_mult: expected an integer in [1, 8], got "
                               f"{self.derived_width_mult}")

    def net(self, width_mult: int = 1) -> AutoPoseSpace:
        """The space these fields name (every :class:`AutoPoseSpace` field but its width_mult), validated."""
        shape = {f.name: getattr(self, f.name) for f in fields(AutoPoseSpace) if f.name != "width_mult"}
        return AutoPoseSpace.from_json({**shape, "width_mult": width_mult}, "config.supernet")

    def controller(self, hidden: int) -> BranchController:
        """An untrained controller of one branch vector per module."""
        return BranchController(self.stages * self.modules_per_stage, len(self.channels), hidden)

    def tau(self, step: int, total: int) -> float:
        """The temperature at ``step`` of ``total``: tau_start (tau_end / tau_start) ** (step / (total - 1))."""
        frac = step / max(1, total - 1)
        return self.tau_start * (self.tau_end / self.tau_start) ** min(1.0, frac)


#: Where each step's branch vectors come from: the REINFORCE controller (AutoPose), uniform
#: random bits (the same cell search under random branches), or every branch on (cell search only).
BRANCH_POLICIES = ("controller", "random", "all")


@dataclass(frozen=True)
class AutoPoseSearchConfig:
    branch_policy: str = "controller"  # controller | random | all (the baselines of the benchmark)
    arch_fraction: float = 0.2  # share of the training images held out for alpha steps and rewards
    arch_lr: float = 3e-3  # Adam on alpha (paper)
    arch_weight_decay: float = 0.0
    warmup_epochs: float = 0.0  # weight-only epochs before the alpha steps start
    iterations: int | None = None  # N_iter: steps between controller updates (paper 1100; None: one pass)
    controller_lr: float = 3.5e-3  # Adam on the controller (paper)
    controller_steps: int = 10  # N_ctr REINFORCE updates per epoch (paper)
    controller_batch: int = 2  # draws per update (paper)
    controller_start_epoch: float = 5.0  # the controller learns from this epoch on (paper: 5 of 50)
    controller_hidden: int = 64
    entropy_weight: float = 1e-3
    baseline_decay: float = 0.9
    reward_images: int | None = 100  # held-out images per reward (None: all of them)
    derive_samples: int = 10  # N branch vectors sampled at the end (paper)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.branch_policy not in BRANCH_POLICIES:
            raise PosenasError(f"config.search.branch_policy: {self.branch_policy!r} not allowed; allowed: "
                               f"{', '.join(BRANCH_POLICIES)}")
        if not 0 < self.arch_fraction < 1:
            raise PosenasError(f"config.search.arch_fraction: must be in (0, 1), got {self.arch_fraction}")
        for name in ("arch_lr", "controller_lr"):
            if not getattr(self, name) > 0:
                raise PosenasError(f"config.search.{name}: must be > 0, got {getattr(self, name)}")
        for name in ("controller_steps", "controller_batch", "controller_hidden", "derive_samples"):
            if getattr(self, name) < 1:
                raise PosenasError(f"config.search.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_epochs", "controller_start_epoch", "entropy_weight", "arch_weight_decay"):
            if getattr(self, name) < 0:
                raise PosenasError(f"config.search.{name}: must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.baseline_decay < 1:
            raise PosenasError(f"config.search.baseline_decay: must be in [0, 1), got {self.baseline_decay}")
        if self.iterations is not None and self.iterations < 1:
            raise PosenasError(f"config.search.iterations: must be >= 1 or null (one pass), got {self.iterations}")
        if self.reward_images is not None and self.reward_images < 1:
            raise PosenasError(f"config.search.reward_images: must be >= 1 or null (all), got {self.reward_images}")


@dataclass(frozen=True)
class AutoPoseExperimentConfig(TrainingSections):
    supernet: AutoPoseSupernetConfig = field(default_factory=AutoPoseSupernetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: AutoPoseSearchConfig = field(default_factory=AutoPoseSearchConfig)

    def __post_init__(self) -> None:
        if self.train.init_from:
            raise PosenasError("config.train.init_from: not supported by the AutoPose search (its supernet starts "
                               "from scratch); leave it null")


def all_on(controller: BranchController):
    return tuple((1,) * controller.branches for _ in range(controller.modules_))


def draw_branches(policy: str, controller: BranchController, generator: torch.Generator):
    """A step's (or a derivation sample's) branch vectors under ``policy``: the controller's draw,
    fair coin flips, or every branch on."""
    if policy == "all":
        return all_on(controller)
    if policy == "random":
        bits = (torch.rand(controller.modules_, controller.branches, generator=generator) < 0.5).int()
        return tuple(tuple(int(b) for b in row) for row in bits.tolist())
    with torch.no_grad():
        return controller.sample(generator).branches


def autopose_supernet_fields(supernet: AutoPoseSupernet) -> dict[str, Any]:
    """The checkpoint field that rebuilds the supernet (:func:`posenas.spaces.supernets.build_supernet`)."""
    return {"supernet": {"space": "autopose", "net": supernet.net.to_json()}}


def held_out_score(model: AutoPoseSupernet, branches, images: PoseDataset, codec: HeatmapCodec,
                   device: torch.device, batch_size: int) -> float:
    """The supernet's primary metric with ``branches`` on ``images`` (eval mode, no flip test)."""
    was_training = model.training
    model.set_branches(branches)
    model.eval()
    try:
        metric, result, _, _ = evaluate_model(model, images, codec, device, flip_test=False, batch_size=batch_size,
                                              workers=0, progress=False)
    finally:
        model.train(was_training)
    return primary_value(metric, result)


class AutoPoseObjective(FirstOrderObjective):
    """The engine's objective for Algorithm 1 (see the module docstring)."""

    def __init__(self, cfg: AutoPoseExperimentConfig):
        s = cfg.search
        super().__init__(s.arch_fraction, s.warmup_epochs, s.arch_lr, s.arch_weight_decay, s.seed)
        self.cfg = cfg
        self.history: list[dict[str, Any]] = []  # controller updates (kept in the checkpoint)

    def build(self, num_joints: int) -> nn.Module:
        sc = self.cfg.supernet
        self.controller = sc.controller(self.cfg.search.controller_hidden)
        self.agent = Reinforce(self.controller, self.cfg.search.controller_lr, self.cfg.search.entropy_weight,
                               self.cfg.search.baseline_decay)
        return AutoPoseSupernet(sc.net(), num_joints, tau=sc.tau_start)

    def family(self) -> str:
        return supernet_family("autopose")

    def checkpoint_fields(self) -> dict:
        with torch.no_grad():
            greedy = self.controller.sample(greedy=True).branches
        return {"arch": replace(self.model.derive(), branches=greedy).to_json(),
                **autopose_supernet_fields(self.model)}

    def arch_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return model.arch_parameters()

    def prepare(self, model: nn.Module, codec: HeatmapCodec, cfg: ExperimentConfig, world: World,
                steps_per_epoch: int) -> None:
        super().prepare(model, codec, cfg, world, steps_per_epoch)
        s = self.cfg.search
        self.codec, self.device = codec, world.device
        self.steps_per_epoch = s.iterations or steps_per_epoch  # Algorithm 1's N_iter
        self.total = run_length(cfg, steps_per_epoch)
        self.controller_start = round(s.controller_start_epoch * self.steps_per_epoch)
        if s.branch_policy == "controller" and self.controller_start >= self.total:
            raise PosenasError(
                f"config.search.controller_start_epoch: {s.controller_start_epoch} epochs are {self.controller_start} "
                f"steps here ({self.steps_per_epoch} per epoch) but the run has {self.total}, so the controller would "
                f"never learn; lower it (fractions of an epoch are allowed)")
        images = self.arch_set.images[: s.reward_images] if s.reward_images else self.arch_set.images
        self.reward_set = replace(self.arch_set, images=images)

    def controller_due(self, step: int) -> bool:
        """At every epoch boundary (N_iter steps) from the start epoch on (the controller policy only)."""
        return (self.cfg.search.branch_policy == "controller" and step >= self.controller_start
                and (step - self.controller_start) % self.steps_per_epoch == 0)

    def controller_update(self, model: AutoPoseSupernet, step: int) -> None:
        s = self.cfg.search
        reward = lambda b: held_out_score(model, b, self.reward_set, self.codec, self.device,  # noqa: E731
                                          self.batch_size * 2)
        for k in range(s.controller_steps):
            seen = self.agent.update(reward, s.controller_batch, branch_generator(s.seed, "controller", step, k))
            self.history.append({"step": step, "update": k, **seen})

    def step(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int, world: World) -> torch.Tensor:
        model.tau = self.cfg.supernet.tau(step, self.total)
        due = self.controller_due(step)
        if due:
            self.controller_update(model, step)
        model.set_branches(draw_branches(self.cfg.search.branch_policy, self.controller,
                                         branch_generator(self.cfg.search.seed, "step", step)))
        if due:  # under torchrun: alpha, the controller and this step's beta alike on every rank
            check_identical([*model.arch_parameters(), *self.controller.parameters(),
                             torch.tensor(model.branches, dtype=torch.float64)], world,
                            f"step {step}: alpha, controller and branch vectors")
        return super().step(model, batch, step, world)

    def before_validation(self, model: nn.Module) -> None:
        """Validation sees the controller's most likely branch vectors (all branches, under ``all``)."""
        with torch.no_grad():
            greedy = self.controller.sample(greedy=True).branches
        model.set_branches(greedy if self.cfg.search.branch_policy != "all" else all_on(self.controller))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "controller": self.agent.state_dict(), "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "controller" in state:
            self.agent.load_state_dict(state["controller"])
            self.history = list(state.get("history", []))

    def log_fields(self, model: nn.Module) -> dict[str, Any]:
        with torch.no_grad():
            w_i, w_a = (torch.softmax(a, -1) for a in (model.alpha_individual, model.alpha_aggregation))
        last = self.history[-1] if self.history else None
        return {**super().log_fields(model), "tau": round(model.tau, 5), "branches": bits_of(model.branches),
                "alpha_individual": [[round(float(v), 4) for v in row] for row in w_i],
                "alpha_aggregation": [[round(float(v), 4) for v in row] for row in w_a],
                "branch_probs": [[round(p, 4) for p in row] for row in self.controller.probabilities()],
                "reward_mean": None if last is None else sum(last["rewards"]) / len(last["rewards"])}


def _atomic_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_suffix(".partial.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def plot_branches(branches, path: Path, modules_per_stage: int) -> None:
    """The paper's Fig. 4: which branch each multi-scale module runs (filled) or skips."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(branches[0])
    fig, ax = plt.subplots(figsize=(max(4.5, 1.0 + 0.6 * len(branches)), 1.2 + 0.5 * rows))
    for m, row in enumerate(branches):
        for b, bit in enumerate(row):
            ax.add_patch(plt.Rectangle((m, rows - 1 - b), 0.9, 0.8, color="tab:blue" if bit else "0.9"))
    for m in range(modules_per_stage, len(branches), modules_per_stage):
        ax.axvline(m - 0.05, color="k", lw=0.8)
    ax.set_xlim(-0.1, len(branches))
    ax.set_ylim(-0.1, rows)
    ax.set_xticks([m + 0.45 for m in range(len(branches))], [str(m + 1) for m in range(len(branches))])
    ax.set_yticks([rows - 1 - b + 0.4 for b in range(rows)], [f"{4 * 2 ** b}x" for b in range(rows)])
    ax.set_xlabel("multi-scale module (stages split by lines)")
    ax.set_title("derived branches (filled: active)", fontsize=9)
    fig.tight_layout()
    _atomic_figure(fig, path)


def plot_search(metrics: list[dict], history: list[dict], path_alpha: Path, path_rewards: Path, ops) -> None:
    """Op probabilities (mean over edges, per cell type) and controller rewards over the search."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in metrics if "alpha_individual" in r]
    if rows:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3), sharey=True)
        for ax, key in zip(axes, ("alpha_individual", "alpha_aggregation")):
            if not rows[0][key]:  # aggregation concat: nothing searched there
                ax.set_title(key.replace("alpha_", "") + " cell: not searched", fontsize=8)
                continue
            for k, op in enumerate(ops):
                ax.plot([r["step"] for r in rows], [sum(e[k] for e in r[key]) / len(r[key]) for r in rows], label=op)
            ax.set_title(key.replace("alpha_", "") + " cell: softmax(alpha), mean over edges", fontsize=8)
            ax.set_xlabel("step")
        axes[0].legend(fontsize=6)
        fig.tight_layout()
        _atomic_figure(fig, path_alpha)
    if history:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot(range(len(history)), [sum(h["rewards"]) / len(h["rewards"]) for h in history], ".", label="reward")
        ax.plot(range(len(history)), [h["baseline"] for h in history], "-", label="baseline")
        ax.set_xlabel("controller update")
        ax.set_ylabel("held-out score")
        ax.legend(fontsize=7)
        fig.tight_layout()
        _atomic_figure(fig, path_rewards)


@interruptible  # Ctrl-C / SIGTERM stop the search cleanly, also under a script that ignores SIGINT
def run_autopose(cfg: AutoPoseExperimentConfig, out: str | Path, resume: bool = False,
                 progress: bool = True) -> dict:
    """The whole search (resumable): supernet training with alpha and controller steps, derivation."""
    out = Path(out)
    train_set = load_dataset(cfg.data.root, cfg.data.train_split)  # a bad data root fails before any file
    is_main = open_search_dir(out, cfg, resume)
    run = out / "supernet"
    if not (run / "results.json").exists():
        sc = cfg.supernet
        heading(f"supernet training: {len(sc.channels)} branches, {sc.stages} x {sc.modules_per_stage} modules, "
                f"controller from epoch {cfg.search.controller_start_epoch} into {run}")
        train(cfg.training(), run, resume=(run / "checkpoints" / "last.pt").exists(), progress=progress,
              objective=AutoPoseObjective(cfg))
    if not is_main:
        return {}
    source = {"controller": "from the controller", "random": "drawn at random", "all": "(all on)"}
    count = 1 if cfg.search.branch_policy == "all" else cfg.search.derive_samples
    heading(f"derivation: {count} branch vector(s) {source[cfg.search.branch_policy]}, scored on the held-out "
            f"images; the argmax op of every edge")
    return finish_autopose(cfg, out, train_set)


def finish_autopose(cfg: AutoPoseExperimentConfig, out: Path, train_set: PoseDataset) -> dict:
    """Sample, score and keep the best branch vector; write the arch, plots and results."""
    s, sc = cfg.search, cfg.supernet
    last = out / "supernet" / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)
    supernet: AutoPoseSupernet = supernet_from_checkpoint(ckpt, last)
    supernet.tau = sc.tau_end
    objective_state = ckpt["train_state"]["objective"]
    controller = sc.controller(s.controller_hidden)
    controller.load_state_dict(objective_state["controller"]["controller"])
    history = objective_state.get("history", [])
    write_text(out / "controller.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    _, held_out = split_images(train_set, s.arch_fraction, s.seed)
    device = resolve_device(cfg.train.device)
    codec = make_codec(cfg.training())
    supernet.to(device)
    samples = []
    with torch.no_grad():
        for i in range(1 if s.branch_policy == "all" else s.derive_samples):
            branches = draw_branches(s.branch_policy, controller, branch_generator(s.seed, "derive", i))
            score = held_out_score(supernet, branches, held_out, codec, device, cfg.data.batch_size * 2)
            samples.append({"sample": i, "branches": [list(r) for r in branches], "bits": bits_of(branches),
                            "score": score})
    write_text(out / "derive.jsonl", "".join(json.dumps(r) + "\n" for r in samples))
    best = max(samples, key=lambda r: r["score"])
    if len({r["score"] for r in samples}) == 1:
        warn(f"all {len(samples)} sampled branch vectors scored {format_score(best['score'])} on the held-out "
             "images: the pick among them is arbitrary (search longer)")
    supernet.set_branches(best["branches"])
    searched = supernet.derive()
    arch = AutoPoseArch(sc.net(sc.derived_width_mult), searched.branches, searched.individual_cell,
                        searched.aggregation_cell)
    save_arch_file(out / "best_arch.json", arch)
    plot_branches(arch.branches, out / "branches.png", sc.modules_per_stage)
    plot_search(read_jsonl(out / "supernet" / "metrics.jsonl"), history, out / "alpha.png", out / "rewards.png",
                sc.ops)
    size = tuple(cfg.data.input_size)
    model = build_autopose(arch, supernet.num_joints)
    summary = {"arch": arch.to_json(), "branch_policy": s.branch_policy, "best": best, "samples": samples,
               "gmacs": count_macs(model, size)[0] / 1e9, "params_m": count_params(model) / 1e6,
               "searched_width_gmacs": count_macs(build_autopose(searched, supernet.num_joints), size)[0] / 1e9,
               "controller_updates": len(history),
               "final_rewards": history[-1]["rewards"] if history else None,
               "controller_probabilities": controller.probabilities()}
    write_json(out / "results.json", summary, indent=2)
    return summary


def print_summary(summary: dict, out: Path, cfg: AutoPoseExperimentConfig) -> None:
    """The derived arch, its cost, warnings where the search saw nothing, the retrain command."""
    best = summary["best"]
    print(f"best branch vector {best['bits']}: held-out score {format_score(best['score'])} with the shared "
          f"weights; derived net ({cfg.supernet.derived_width_mult}x channels) {summary['params_m']:.3f} M params, "
          f"{summary['gmacs']:.4f} GMACs; {out / 'best_arch.json'}")
    if not summary["controller_updates"] and cfg.search.branch_policy == "controller":
        warn("the controller never updated: its branch vectors are its initial coin flips")
    print("retrain it: " + retrain_command(out / "best_arch.json", cfg.data.root, cfg.data.input_size))

