"""`posenas train`: supervised top-down training with exact resume.

Why a resumed run ends bit-identical to an uninterrupted one on CPU: the sample order of
an epoch comes from ``DistributedSampler(seed, epoch)``, each sample's augmentation from
``(seed, epoch, index)`` (see :mod:`posenas.data.topdown`), and the checkpoint holds the
weights, the optimiser and scheduler state, the step and the torch RNG state. Resuming
mid-epoch skips the batches already seen.

Run directory: ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON object a line),
``checkpoints/last.pt`` and ``best.pt``, ``val_predictions.json`` and ``results.json``.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from posenas.arch import arch_from_json, build_model, load_arch_file, named_arch
from posenas.checkpoint import check_heatmap_size, load_checkpoint, load_weights, save_checkpoint
from posenas.codecs.heatmap import HeatmapCodec
from posenas.config import to_dict, write_yaml
from posenas.data.layout import load_dataset
from posenas.data.records import PoseDataset
from posenas.data.topdown import TopDownDataset
from posenas.engine.config import ExperimentConfig, ModelConfig, OptimConfig
from posenas.engine.distributed import World, close_world, init_world
from posenas.engine.predict import evaluate_model, prediction_records, primary_value
from posenas.errors import PosenasError
from posenas.jsonio import read_json, read_jsonl, write_json, write_text

class Interrupted(Exception):
    """Raised after a clean stop (Ctrl-C, SIGTERM or ``stop_at_step``) once the checkpoint is written."""


class _StopRequest:
    """SIGINT / SIGTERM only set a flag; the loop stops at the next step boundary.

    Stopping between steps keeps the checkpoint consistent (weights, optimiser, scheduler
    and step all agree). A second Ctrl-C raises KeyboardInterrupt at once (the last
    checkpoint written stays the one to resume from).
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which stops cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def resolve_arch(model: ModelConfig) -> Any:
    if model.arch is not None:
        return arch_from_json(model.arch, "config.model.arch")
    if model.arch_file is not None:
        return load_arch_file(model.arch_file)
    try:
        return named_arch(model.name)
    except PosenasError as e:
        raise PosenasError(f"config.model.name: {e}") from None


def make_codec(cfg: ExperimentConfig) -> HeatmapCodec:
    h, w = cfg.data.input_size
    return HeatmapCodec(input_size=(h, w), heatmap_size=(h // 4, w // 4), sigma=cfg.data.sigma)


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """SimpleBaseline's joints MSE: 0.5 × mean of target-weighted squared errors."""
    return 0.5 * (weight[:, :, None, None] * (pred - target) ** 2).mean()


def model_loss(model: nn.Module, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """:func:`heatmap_loss` of a model's training output. A model whose training output has
    other channels than the joints (PNFS: each body part's maps, a joint in several parts
    repeated) names the joint of each channel in ``output_joints``; targets follow it."""
    inner = _unwrap(model)
    joints = getattr(inner, "output_joints", None)
    if joints is not None and inner.training:
        index = joints.to(target.device)
        target, weight = target[:, index], weight[:, index]
    return heatmap_loss(pred, target, weight)


class Objective:
    """What a training run optimises: the plain model of an arch (this class), or a
    supernet with the sandwich rule (:class:`posenas.search.sandwich.SandwichObjective`).

    The loop in :func:`train` owns data, optimiser, schedule, checkpoints, resume,
    validation and stopping; the objective owns the model and what one step computes.
    """

    #: Wrap the model in DistributedDataParallel under torchrun (False: the objective
    #: all-reduces its gradients itself).
    ddp = True

    def __init__(self, arch: Any):
        self.arch = arch

    def build(self, num_joints: int) -> nn.Module:
        return build_model(self.arch, num_joints)

    def checkpoint_fields(self) -> dict[str, Any]:
        """Fields that make the checkpoint self-describing (``arch`` at least)."""
        return {"arch": self.arch.to_json()}

    def weight_split(self, train_set: PoseDataset) -> PoseDataset:
        """The part of the training split the optimiser's steps iterate over (all of it here;
        a differentiable search keeps a held-out part for its architecture parameters)."""
        return train_set

    def prepare(self, model: nn.Module, codec: HeatmapCodec, cfg: ExperimentConfig, world: World,
                steps_per_epoch: int) -> None:
        """Called once the model is built, before the first step (and before a resume loads state)."""

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """What the run's optimiser updates."""
        return list(model.parameters())

    def state_dict(self) -> dict[str, Any]:
        """Objective state a resumed run needs besides the model, optimiser and scheduler."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def log_fields(self, model: nn.Module) -> dict[str, Any]:
        """Extra fields for the metrics line written every ``log_every`` steps."""
        return {}

    def step(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
             step: int, world: World) -> torch.Tensor:
        """Forward and backward for one optimiser step; returns the (detached) loss to log."""
        loss = model_loss(model, model(images), target, weight)
        if not world.any_true(not bool(torch.isfinite(loss))):  # every rank backwards, or none (DDP)
            loss.backward()
        return loss.detach()

    def before_validation(self, model: nn.Module) -> None:
        """Put the model in the state validation should see (a supernet: its largest sub-net)."""


def make_optimizer(params: list[nn.Parameter], optim: OptimConfig) -> torch.optim.Optimizer:
    if optim.optimizer == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    return torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay)


def lr_lambda(optim: OptimConfig, steps_per_epoch: int, total_steps: int):
    """Multiplier of the base lr at an optimiser step: linear warm-up, then cosine or step decay."""

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / optim.warmup_steps) if optim.warmup_steps > 0 else 1.0
        if optim.schedule == "cosine":
            progress = min(1.0, step / max(1, total_steps))
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            epoch = step // max(1, steps_per_epoch)
            decay = optim.gamma ** sum(epoch >= m for m in optim.milestones)
        return warm * decay

    return factor


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class _Metrics:
    """``metrics.jsonl``, appended by the main process; a resumed run first drops the lines
    after its checkpoint's step (they are redone), a fresh run starts it empty."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept = [r for r in read_jsonl(path) if r.get("step", 0) <= resume_step] if resume_step is not None and path.exists() else []
        write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, **record: Any) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def run_length(cfg: ExperimentConfig, steps_per_epoch: int) -> int:
    """Optimiser steps of the whole run: ``train.epochs`` epochs, capped by ``train.max_steps``."""
    total = cfg.train.epochs * steps_per_epoch
    return total if cfg.train.max_steps is None else min(total, cfg.train.max_steps)


def _layout(world: World, cfg: ExperimentConfig, steps_per_epoch: int) -> dict[str, int]:
    """What ``step`` means: a resumed run must have the same (else the sample order changes)."""
    return {"world_size": world.size, "batch_size": cfg.data.batch_size, "steps_per_epoch": steps_per_epoch}


def _payload(model, objective, schema_name, codec, cfg, optimizer, scheduler, step, best, layout, metrics) -> dict:
    return {
        **objective.checkpoint_fields(),
        "schema": schema_name,
        "codec": codec.to_dict(),
        "state_dict": _unwrap(model).state_dict(),
        "config": to_dict(cfg),
        # CPU RNG only: training draws no random numbers on the GPU (augmentation is per-sample NumPy).
        "train_state": {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "best": best,
            "layout": layout,
            "torch_rng": torch.get_rng_state(),
            "objective": objective.state_dict(),
        },
        "metrics": metrics,
    }


def init_weights(model: nn.Module, objective: Objective, path: str) -> None:
    """``train.init_from``: start from a checkpoint's weights — the same arch's, or a ViPNAS
    supernet's slices for this arch (weight inheritance before fine-tuning)."""
    from posenas.checkpoint import inherited_state

    state = inherited_state(path, objective.checkpoint_fields()["arch"])
    load_weights(model, state, path)


def validate(model, cfg: ExperimentConfig, val: PoseDataset, codec: HeatmapCodec, world: World, progress: bool):
    """Predict the val split on GT boxes; returns (metric, result, table, predictions)."""
    if cfg.data.val_max_images is not None:
        val = replace(val, images=val.images[: cfg.data.val_max_images])
    return evaluate_model(_unwrap(model), val, codec, world.device, flip_test=cfg.train.flip_test,
                          batch_size=cfg.data.batch_size * 2, workers=cfg.data.workers, progress=progress)


def train(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    stop_at_step: int | None = None,
    objective: Objective | None = None,
) -> dict:
    """Train (or resume) a run; returns the final validation result.

    ``objective`` defaults to the plain model of ``cfg.model``.

    ``stop_at_step`` stops after that many steps as Ctrl-C does (checkpoint written,
    :class:`Interrupted` raised) — used to test resuming.
    """
    run_dir = Path(run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    if resume and not last.is_file():
        raise PosenasError(f"{run_dir}: nothing to resume (no checkpoints/last.pt)")
    if not resume and last.exists():
        raise PosenasError(f"{run_dir}: holds a run already; pass --resume to continue it or choose another --out")
    world = init_world(cfg.train.device)
    try:
        with _StopRequest() as stop:
            objective = objective or Objective(resolve_arch(cfg.model))
            return _train(cfg, run_dir, last, resume, progress, stop_at_step, world, stop, objective)
    finally:
        close_world(world)


def _final_done(run_dir: Path, step: int) -> bool:
    path = run_dir / "results.json"
    if not path.exists():
        return False
    results = read_json(path)
    return isinstance(results, dict) and results.get("steps") == step


def _train(cfg, run_dir, last, resume, progress, stop_at_step, world: World, stop: _StopRequest,
           objective: Objective) -> dict:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    train_set = load_dataset(cfg.data.root, cfg.data.train_split)
    val_set = load_dataset(cfg.data.root, cfg.data.val_split)
    if train_set.schema != val_set.schema:
        raise PosenasError(f"{cfg.data.root}: train and val splits use different keypoint schemas")
    schema, codec = train_set.schema, make_codec(cfg)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(run_dir / "config.yaml", to_dict(cfg))

    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = objective.build(schema.num_joints).to(world.device)
    check_heatmap_size(model, codec)
    if cfg.train.init_from and not resume:
        init_weights(model, objective, cfg.train.init_from)
    train_data = TopDownDataset(objective.weight_split(train_set), codec, cfg.augment, seed=cfg.train.seed)
    sampler = DistributedSampler(train_data, num_replicas=world.size, rank=world.rank, shuffle=True,
                                 seed=cfg.train.seed, drop_last=True)
    steps_per_epoch = len(sampler) // cfg.data.batch_size
    if steps_per_epoch == 0:
        raise PosenasError(
            f"{cfg.data.root}: {len(train_data)} training instances give no full batch of {cfg.data.batch_size} "
            f"per process; lower config.data.batch_size"
        )
    layout = _layout(world, cfg, steps_per_epoch)
    total_steps = run_length(cfg, steps_per_epoch)
    objective.prepare(model, codec, cfg, world, steps_per_epoch)
    optimizer = make_optimizer(objective.parameters(model), cfg.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim, steps_per_epoch, total_steps))

    step, best = 0, float("-inf")
    if resume:
        state = load_checkpoint(last)
        ts = state.get("train_state")
        if not isinstance(ts, dict):
            raise PosenasError(f"{last}: holds no training state (a weights-only checkpoint cannot be resumed)")
        saved = ts.get("layout", {})
        for key, value in layout.items():
            if saved.get(key) != value:
                raise PosenasError(
                    f"{last}: cannot resume with {key} {value}: the run was made with {key} {saved.get(key)} "
                    f"(processes and batch size must match for the same sample order)"
                )
        load_weights(_unwrap(model), state["state_dict"], last)
        try:
            optimizer.load_state_dict(ts["optimizer"])
            scheduler.load_state_dict(ts["scheduler"])
            step, best = int(ts["step"]), float(ts["best"])
            torch.set_rng_state(ts["torch_rng"])
            objective.load_state_dict(ts.get("objective", {}))
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise PosenasError(f"{last}: training state does not fit this run: {str(e).splitlines()[0]}") from None
    if world.size > 1 and objective.ddp:
        model = DistributedDataParallel(model, device_ids=[world.device.index] if world.device.type == "cuda" else None)
    metrics = _Metrics(run_dir / "metrics.jsonl", world.is_main, step if resume else None)

    def checkpoint(extra: dict | None = None, name: str = "last.pt") -> None:
        if world.is_main:
            save_checkpoint(run_dir / "checkpoints" / name,
                            _payload(model, objective, schema.name, codec, cfg, optimizer, scheduler, step, best, layout, extra))

    def record_validation(epoch: int, final: bool) -> dict:
        nonlocal best
        objective.before_validation(_unwrap(model))
        metric, result, table, preds = validate(model, cfg, val_set, codec, world, progress)
        metrics.write(step=step, epoch=epoch, val={"metric": metric, **result})
        if primary_value(metric, result) > best:  # "best" = highest AP (COCO) or PCKh@0.5 mean
            best = primary_value(metric, result)
            checkpoint({"metric": metric, **result}, "best.pt")
        if final:
            write_json(run_dir / "val_predictions.json", prediction_records(preds, metric))
            write_text(run_dir / "results.txt", table + "\n")
            write_json(run_dir / "results.json", {"metric": metric, **result, "steps": step}, indent=2)
        model.train()
        return result

    def stop_requested() -> bool:
        return world.any_true(stop.requested or (stop_at_step is not None and step >= stop_at_step))

    bar = tqdm(total=total_steps, initial=step, desc="training", unit="step", disable=not (progress and world.is_main))
    result: dict = {}
    started = time.perf_counter()
    model.train()
    try:
        while step < total_steps:
            epoch, done_in_epoch = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch)
            train_data.set_epoch(epoch)
            order = list(sampler)[done_in_epoch * cfg.data.batch_size :]
            # its own generator: creating the iterator must not draw from the global torch RNG, whose
            # state (drop-path, dropout) a resumed run restores at a step, not at an epoch start
            loader = DataLoader(Subset(train_data, order), batch_size=cfg.data.batch_size, drop_last=True,
                                num_workers=cfg.data.workers, shuffle=False, worker_init_fn=_ignore_sigint,
                                generator=torch.Generator().manual_seed(cfg.train.seed * 100003 + epoch))
            for batch in loader:
                images = batch["image"].to(world.device, non_blocking=True)
                target = batch["target"].to(world.device, non_blocking=True)
                weight = batch["target_weight"].to(world.device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                loss = objective.step(model, images, target, weight, step, world)
                if world.any_true(not bool(torch.isfinite(loss))):
                    raise PosenasError(
                        f"training diverged: loss is {loss.item()} at step {step + 1} (epoch {epoch}); stopped. "
                        f"The last good checkpoint is {last if last.exists() else 'not written yet'}"
                    )
                optimizer.step()
                scheduler.step()
                step += 1
                bar.update(1)
                if step % cfg.train.log_every == 0 or step == total_steps:
                    lr = optimizer.param_groups[0]["lr"]
                    metrics.write(step=step, epoch=epoch, loss=loss.item(), lr=lr,
                                  seconds=round(time.perf_counter() - started, 2), **objective.log_fields(model))
                    bar.set_postfix(loss=f"{loss.item():.2e}", lr=f"{lr:.1e}")
                if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0:
                    checkpoint()
                if step >= total_steps or stop_requested():
                    break
            if step % steps_per_epoch == 0 or step >= total_steps:
                due = cfg.train.val_every and (epoch + 1) % cfg.train.val_every == 0
                if world.is_main and due and step < total_steps:
                    record_validation(epoch, final=False)
                world.barrier()
            checkpoint()
            if step < total_steps and stop_requested():
                raise Interrupted(f"stopped at step {step}; checkpoint written, continue with --resume --out {run_dir}")
        # The final validation runs after the loop, so that a run stopped during it (its
        # last checkpoint already at total_steps) does it on --resume.
        if world.is_main and not _final_done(run_dir, step):
            result = record_validation((step - 1) // steps_per_epoch, final=True)
        world.barrier()
    finally:
        bar.close()
    return result
