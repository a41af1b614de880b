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

import functools
import math
import os
import signal
import statistics
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from posenas.arch import arch_from_json, build_model, load_arch_file, named_arch
from posenas.checkpoint import load_checkpoint, load_weights, save_checkpoint
from posenas.codecs.heatmap import HeatmapCodec
from posenas.config import open_run_dir, remove_run_start, to_dict, write_yaml
from posenas.data.layout import load_dataset
from posenas.data.records import PoseDataset
from posenas.data.topdown import worker_errors_released
from posenas.display import warn
from posenas.engine.config import ExperimentConfig, ModelConfig, OptimConfig
from posenas.engine.distributed import World, init_world
from posenas.engine.precision import FP32, Precision, emulation_warning, model_family, resolve_precision
from posenas.engine.predict import prediction_records, primary_value
from posenas.engine.task import TOP_DOWN, Task, task_for, unwrap
from posenas.errors import PosenasError
from posenas.jsonio import JsonlLog, read_json, write_json, write_text
from posenas.resources import resolve_config

class Interrupted(Exception):
    """Raised after a clean stop (Ctrl-C, SIGTERM or ``stop_at_step``) once the checkpoint is
    written. The message names no command: the CLI adds the one that continues (``posenas
    train --resume`` or ``posenas search --resume``)."""

    def __init__(self, step: int, run_dir: Path):
        super().__init__(step, run_dir)  # args that rebuild it (pickling)
        self.step, self.run_dir = step, run_dir

    def __str__(self) -> str:
        return f"stopped at step {self.step}; checkpoint written in {self.run_dir}"


class _Signals:
    """Installs ``handler`` for SIGINT and SIGTERM while active (main thread only), restoring the
    previous handlers after. Installed whatever the previous one was: a process started with
    SIGINT ignored (a script without job control) gets no KeyboardInterrupt handler from Python,
    and a Ctrl-C or ``kill -INT`` would otherwise do nothing."""

    def __init__(self, handler: Callable[[int, Any], None]):
        self.handler = handler
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self.handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


_F = TypeVar("_F", bound=Callable[..., Any])


def interruptible(run: _F) -> _F:
    """For a long command's entry (each search): SIGINT and SIGTERM raise KeyboardInterrupt in
    every phase (cost tables, BN re-calibration, candidate evaluation, export), also when the
    process started with SIGINT ignored; training inside it stops at a step boundary instead
    (:class:`_StopRequest`). Every phase's output is written atomically or appended a line at
    a time, so ``--resume`` continues from where it stopped."""

    @functools.wraps(run)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _Signals(_raise_interrupt):
            return run(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class _StopRequest(_Signals):
    """SIGINT / SIGTERM only set a flag; the loop stops at the next step boundary.

    Stopping between steps keeps the checkpoint consistent (weights, optimiser, scheduler
    and step all agree). A second Ctrl-C raises KeyboardInterrupt at once (the last
    checkpoint written stays the one to resume from), and so does any after
    :meth:`immediate` (the final validation: its checkpoint is written, ``--resume`` redoes it).
    """

    def __init__(self) -> None:
        super().__init__(self._handle)
        self.requested = False
        self._immediate = False

    def _handle(self, signum, frame) -> None:
        if self._immediate or (self.requested and signum == signal.SIGINT):
            raise KeyboardInterrupt
        self.requested = True

    def immediate(self) -> None:
        """From now on a signal raises KeyboardInterrupt; one that came already raises it here."""
        self._immediate = True
        if self.requested:
            raise KeyboardInterrupt


def _ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which stops cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def resolve_arch(model: ModelConfig) -> Any:
    if model.arch is not None:
        return arch_from_json(model.arch, "config.model.arch")
    if model.arch_file is not None:  # a path, or a shipped name such as vipnas/s-vipnas-res50
        return load_arch_file(resolve_config(model.arch_file, "arch"))
    try:
        return named_arch(model.name)
    except PosenasError as e:
        raise PosenasError(f"config.model.name: {e}") from None


def make_codec(cfg: ExperimentConfig) -> HeatmapCodec:
    """The top-down heatmap codec of a config (the searches' supernets are top-down)."""
    return TOP_DOWN.make_codec(cfg)


class Objective:
    """What a training run optimises: the plain model of an arch (this class), or a
    supernet with the sandwich rule (:class:`posenas.search.sandwich.SandwichObjective`).

    The loop in :func:`train` owns data, optimiser, schedule, checkpoints, resume,
    validation and stopping; the objective owns the model and what one step computes.
    """

    #: Wrap the model in DistributedDataParallel under torchrun (False: the objective
    #: all-reduces its gradients itself).
    ddp = True
    #: How :meth:`forward` runs the model; the loop sets the run's resolved choice before :meth:`prepare`.
    precision: Precision = FP32
    #: What a batch holds and how :meth:`loss` reads it (top-down or bottom-up, engine/task.py);
    #: the loop sets the run's task before :meth:`prepare`.
    task: Task = TOP_DOWN

    def __init__(self, arch: Any):
        self.arch = arch

    def build(self, num_joints: int) -> nn.Module:
        return build_model(self.arch, num_joints)

    def family(self) -> str:
        """The model family whose measured speed picks ``auto`` precision (engine/precision.py)."""
        return model_family(self.arch)

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

    def forward(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The model's training output in the run's precision and memory format (FP32 out): every
        objective's forward goes through here, so ``train.precision`` reaches each of them."""
        return self.precision.forward(model, images)

    def loss(self, model: nn.Module, output: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The run's task loss of a training output against the batch's targets."""
        return self.task.loss(model, output, batch)

    def step(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int, world: World) -> torch.Tensor:
        """Forward and backward for one optimiser step on ``batch`` (tensors on the run's device,
        ``image`` and the task's targets); returns the (detached) loss to log."""
        loss = self.loss(model, self.forward(model, batch["image"]), batch)
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


_unwrap = unwrap


class _Metrics:
    """``metrics.jsonl``, appended by the main process; a resumed run first drops the lines
    after its checkpoint's step (they are redone) and a torn last line, a fresh run starts it empty."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.log: JsonlLog | None = None
        if enabled and resume_step is None:
            self.log = JsonlLog(path, fresh=True)
        elif enabled:
            self.log = JsonlLog(path, keep=lambda r: isinstance(r, dict) and r.get("step", 0) <= resume_step)

    def write(self, **record: Any) -> None:
        if self.log is not None:
            self.log.append(record)


class _Divergence:
    """Stops a run whose loss explodes without (yet) becoming NaN: Adam at a huge lr takes the
    loss from 7e-3 to 1e26 in a few steps, and a run that "succeeds" that way is silent damage.

    The rule: a step's loss above ``factor`` (``train.divergence_factor``, default 1000) x the
    run's level, the lowest median of the last :data:`WINDOW` step losses reached so far. It is
    checked from the second step on, so an explosion in the first steps is caught before it
    fills the window (a plain running median would then follow it up); the lowest median, not
    the current one, also catches a loss that climbs slowly. Why it never fires on a healthy
    run of our configs: the loss is a target-weighted MSE of heatmaps in [0, 1] (sums of such
    terms for the sandwich rule), which starts near 0.5 x the mean squared target (predicting
    zeros) and falls; over whole runs of every config in docs/benchmarks.md its window means
    stay within 3x of each other (e.g. 3.2e-3 .. 6.0e-3), and a single batch (a few people)
    varies by a few x more at most, while 1000x the level means the weights are gone (Adam at
    lr 10: 7.7e-3 -> 1.1e4 at step 2). ``factor`` None turns it off.
    """

    WINDOW = 50

    def __init__(self, factor: float | None, state: dict | None = None):
        self.factor = factor
        self.recent: list[float] = [float(v) for v in (state or {}).get("recent", [])]
        self.level: float | None = (state or {}).get("level")

    def check(self, loss: float) -> float | None:
        """The level ``loss`` exceeds by more than ``factor`` (None: fine); then records ``loss``."""
        if self.factor is not None and self.level is not None and loss > self.factor * self.level:
            return self.level
        self.recent = (self.recent + [loss])[-self.WINDOW:]
        median = statistics.median(self.recent)
        if median > 0:
            self.level = median if self.level is None else min(self.level, median)
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "level": self.level}


class _Forecast:
    """The run's expected training wall time, printed once after its first steps, so a user
    learns the cost of a search or training run in a minute rather than at its end. Steps are
    timed after :data:`WARMUP` untimed ones (allocator and kernel warm-up) over :data:`TIMED`."""

    WARMUP, TIMED = 2, 8

    def __init__(self, first_step: int, total_steps: int):
        self.first, self.total = first_step, total_steps
        self.started: float | None = None
        self.done = total_steps - first_step <= self.WARMUP + self.TIMED  # too short to be worth a line

    def update(self, step: int) -> str | None:
        """After optimiser step ``step``: the forecast line once enough steps are timed, else None."""
        if self.done:
            return None
        if step - self.first == self.WARMUP:
            self.started = time.perf_counter()
        elif self.started is not None and step - self.first == self.WARMUP + self.TIMED:
            self.done = True
            per_step = (time.perf_counter() - self.started) / self.TIMED
            left = per_step * (self.total - step)
            ends = time.strftime("%H:%M", time.localtime(time.time() + left))
            return (f"expected: {per_step:.2f} s/step, {self.total - step} steps left = {left / 60:.1f} min of training "
                    f"(ends about {ends}, plus validation)")
        return None


def _grad_norm(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """The total 2-norm of the gradients the optimiser is about to apply."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)


def run_length(cfg: ExperimentConfig, steps_per_epoch: int) -> int:
    """Optimiser steps of the whole run: ``train.epochs`` epochs, capped by ``train.max_steps``."""
    total = cfg.train.epochs * steps_per_epoch
    return total if cfg.train.max_steps is None else min(total, cfg.train.max_steps)


def _layout(world: World, cfg: ExperimentConfig, steps_per_epoch: int) -> dict[str, int]:
    """What ``step`` means: a resumed run must have the same (else the sample order changes)."""
    return {"world_size": world.size, "batch_size": cfg.data.batch_size, "steps_per_epoch": steps_per_epoch}


def _payload(model, objective, schema_name, codec, cfg, optimizer, scheduler, step, best, layout, metrics,
             seconds: float, divergence: dict) -> dict:
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
            "seconds": seconds,  # training time so far: metrics.jsonl's "seconds" goes on across resumes
            "divergence": divergence,
            "precision": objective.precision.to_json(),
        },
        "metrics": metrics,
    }


def init_weights(model: nn.Module, objective: Objective, path: str) -> None:
    """``train.init_from``: start from a checkpoint's weights — the same arch's, or a ViPNAS
    supernet's slices for this arch (weight inheritance before fine-tuning)."""
    from posenas.checkpoint import inherited_state

    state = inherited_state(path, objective.checkpoint_fields()["arch"])
    load_weights(model, state, path)


def validate(model, cfg: ExperimentConfig, val: PoseDataset, codec: Any, world: World, progress: bool,
             precision: Precision = FP32, task: Task = TOP_DOWN):
    """Predict the val split (on GT boxes, or whole images for a bottom-up task); returns
    (metric, result, table, predictions).

    In FP32 whatever the run trains in (only its memory format is kept): a run's reported AP is
    then its weights' AP, what ``posenas eval`` and the FP32 export of its checkpoint give, and
    a bf16 run's AP compares with an FP32 run's without bf16 inference rounding in between."""
    if cfg.data.val_max_images is not None:
        val = replace(val, images=val.images[: cfg.data.val_max_images])
    with worker_errors_released():
        return task.evaluate(_unwrap(model), val, codec, world.device, flip_test=cfg.train.flip_test,
                             batch_size=cfg.data.batch_size * 2, workers=cfg.data.workers, progress=progress,
                             precision=replace(precision, dtype="fp32"))


def run_precision(cfg: ExperimentConfig, family: str, device: torch.device) -> Precision:
    """The run's precision and memory format (``train.precision`` / ``train.channels_last``
    resolved for a model family, :func:`posenas.engine.precision.model_family`)."""
    return resolve_precision(cfg.train.precision, cfg.train.channels_last, device, family)


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
    if int(os.environ.get("RANK", "0")) == 0:  # the other ranks may look after rank 0 wrote
        open_run_dir(run_dir, to_dict(cfg), resume, leftovers=("metrics.jsonl",), write=False)
    resume = resume and last.is_file()  # a run stopped before its first checkpoint starts over
    world = init_world(cfg.train.device)
    with _StopRequest() as stop:
        objective = objective or Objective(resolve_arch(cfg.model))
        return _train(cfg, run_dir, last, resume, progress, stop_at_step, world, stop, objective)


def _final_done(run_dir: Path, step: int) -> bool:
    path = run_dir / "results.json"
    if not path.exists():
        return False
    results = read_json(path)
    return isinstance(results, dict) and results.get("steps") == step


#: What a new training run writes before its first checkpoint: removed when it fails then.
START_FILES = ("config.yaml", "metrics.jsonl", "checkpoints/best.pt")


def _divergence(loss: float, grad_norm: float, detector: _Divergence) -> str | None:
    """What is wrong with a step's loss and gradient norm (None: nothing)."""
    if not math.isfinite(loss):
        return f"loss is {loss}"
    if not math.isfinite(grad_norm):
        return f"gradient norm is {grad_norm} (loss {loss:.4g})"
    level = detector.check(loss)
    if level is not None:
        return (f"loss is {loss:.4g} (more than {detector.factor:g}x its running level {level:.4g}, "
                "train.divergence_factor)")
    return None


def _train(cfg, run_dir, last, resume, progress, stop_at_step, world: World, stop: _StopRequest,
           objective: Objective) -> dict:
    # Everything that can be checked is checked before the run folder is written to: a bad
    # config, dataset or model leaves nothing behind.
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    train_set = load_dataset(cfg.data.root, cfg.data.train_split)
    val_set = load_dataset(cfg.data.root, cfg.data.val_split)
    if train_set.schema != val_set.schema:
        raise PosenasError(f"{cfg.data.root}: train and val splits use different keypoint schemas")
    schema = train_set.schema

    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = objective.build(schema.num_joints).to(world.device)
    task = objective.task = task_for(getattr(objective, "arch", None), cfg)
    codec = task.make_codec(cfg, model)
    task.check_model(model, codec)
    if cfg.train.init_from and not resume:
        init_weights(model, objective, cfg.train.init_from)
    train_data = task.train_data(objective.weight_split(train_set), codec, cfg, cfg.train.seed)
    sampler = DistributedSampler(train_data, num_replicas=world.size, rank=world.rank, shuffle=True,
                                 seed=cfg.train.seed, drop_last=True)
    steps_per_epoch = len(sampler) // cfg.data.batch_size
    if steps_per_epoch == 0:
        raise PosenasError(
            f"{cfg.data.root}: {len(train_data)} training {'images' if task.name == 'bottomup' else 'instances'} "
            f"give no full batch of {cfg.data.batch_size} per process; lower config.data.batch_size"
        )
    layout = _layout(world, cfg, steps_per_epoch)
    total_steps = run_length(cfg, steps_per_epoch)
    objective.precision = run_precision(cfg, objective.family(), world.device)
    objective.prepare(model, codec, cfg, world, steps_per_epoch)
    optimizer = make_optimizer(objective.parameters(model), cfg.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim, steps_per_epoch, total_steps))

    step, best, elapsed, divergence = 0, float("-inf"), 0.0, None
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
            elapsed, divergence = float(ts.get("seconds", 0.0)), ts.get("divergence")
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise PosenasError(f"{last}: training state does not fit this run: {str(e).splitlines()[0]}") from None
        if "precision" in ts:  # a resumed run keeps its precision (auto may resolve otherwise elsewhere)
            objective.precision = Precision.from_json(ts["precision"], f"{last}: train_state")
    precision = objective.precision
    precision.prepare_model(model)  # parameters keep their identity: the optimiser's references hold
    if world.is_main and progress:
        tqdm.write(f"precision: {precision.describe()} (train.precision {cfg.train.precision}, "
                   f"train.channels_last {cfg.train.channels_last})")
    problem = emulation_warning(precision, world.device)
    if world.is_main and problem:
        warn(problem)
    if world.size > 1 and objective.ddp:
        model = DistributedDataParallel(model, device_ids=[world.device.index] if world.device.type == "cuda" else None)
    if world.is_main and not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(run_dir / "config.yaml", to_dict(cfg))
    metrics = _Metrics(run_dir / "metrics.jsonl", world.is_main, step if resume else None)
    started = time.perf_counter() - elapsed  # seconds go on across resumes
    detector = _Divergence(cfg.train.divergence_factor, divergence)

    def checkpoint(extra: dict | None = None, name: str = "last.pt") -> None:
        if world.is_main:
            save_checkpoint(run_dir / "checkpoints" / name,
                            _payload(model, objective, schema.name, codec, cfg, optimizer, scheduler, step, best, layout,
                                     extra, time.perf_counter() - started, detector.state_dict()))

    def record_validation(epoch: int, final: bool) -> dict:
        nonlocal best
        objective.before_validation(_unwrap(model))
        metric, result, table, preds = validate(model, cfg, val_set, codec, world, progress, precision, task)
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
    forecast = _Forecast(step, total_steps)
    result: dict = {}
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
            with worker_errors_released():  # a bad image in a worker: one line, workers freed at once
                for batch in loader:
                    batch = {key: value.to(world.device, non_blocking=True) for key, value in batch.items()
                             if isinstance(value, torch.Tensor)}
                    optimizer.zero_grad(set_to_none=True)
                    loss = objective.step(model, batch, step, world)
                    # one device sync for both numbers
                    loss_value, grad_norm = torch.stack([loss.detach().float().reshape(()),
                                                         _grad_norm(optimizer).to(loss.device).float()]).tolist()
                    problem = _divergence(loss_value, grad_norm, detector)
                    if world.any_true(problem is not None):
                        raise PosenasError(
                            f"training diverged: {problem or 'on another process'} at step {step + 1} (epoch {epoch}); "
                            f"stopped. " + (f"The last good checkpoint is {last}; lower optim.lr and train from it or "
                                            "from scratch" if last.exists() else "No checkpoint was written yet; try a "
                                            "lower optim.lr")
                        )
                    optimizer.step()
                    scheduler.step()
                    step += 1
                    bar.update(1)
                    if (line := forecast.update(step)) and world.is_main and progress:
                        tqdm.write(line)
                    if step % cfg.train.log_every == 0 or step == total_steps:
                        lr = optimizer.param_groups[0]["lr"]
                        metrics.write(step=step, epoch=epoch, loss=loss_value, lr=lr,
                                      seconds=round(time.perf_counter() - started, 2), **objective.log_fields(model))
                        bar.set_postfix(loss=f"{loss_value:.2e}", lr=f"{lr:.1e}")
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
                raise Interrupted(step, run_dir)
        # The final validation runs after the loop, so that a run stopped during it (its
        # last checkpoint already at total_steps) does it on --resume; a Ctrl-C now stops at once.
        if world.is_main and not _final_done(run_dir, step):
            stop.immediate()
            result = record_validation((step - 1) // steps_per_epoch, final=True)
        world.barrier()
    except BaseException:
        if world.is_main and not resume and not last.exists():
            remove_run_start(run_dir, START_FILES)
        raise
    finally:
        bar.close()
    return result
