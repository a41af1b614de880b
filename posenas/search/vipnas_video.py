"""The ViPNAS temporal search (T-ViPNAS; Xu et al., CVPR 2021, sections 3.4.2 and 3.5):
`posenas search` on a config whose ``supernet.space`` is ``vipnas-video``.

Phases, each resumable (a finished one is skipped):

0. **key frame** (``key/``): the S-ViPNet of ``key.arch`` trained as an image model on the
   video frames, unless ``key.checkpoint`` gives its weights (a trained S-ViPNAS, or a
   ViPNAS supernet holding the arch). It is frozen from then on.
1. **propagation training** (``supernet/``, Eqs. 1-2, Fig. 3): clips of ``T + 1`` frames;
   frame 0 through the frozen key net, frames 1..T through ONE temporal supernet
   (:class:`~posenas.spaces.vipnas_video.TemporalSupernet`), each fed the previous frame's
   heatmaps warped into its crop. The sandwich rule per step: all frames largest, all
   smallest (fusions drawn at random), ``random_subnets`` sequences drawing each frame's
   own spatial sub-net and fusion; MSE on every frame, in-place distillation from the
   largest sequence's frames. The supernet starts from the key net's weights (the key arch
   must be one of its sub-nets, as in the paper: the supernet shares the S-ViPNet's CNN).
2. **search** (Eq. 3): sequences of T frame archs whose mean GMACs over the key frame and
   the T frames fits ``search.max_gmacs``, scored with shared weights (BN re-calibrated
   through propagation) on the val videos by PoseTrack mAP. Variants, each with its own
   draws under the same budget (the paper's Fig. 6 / Table 3):

   ``t-vipnas``   each frame its own arch and fusion (the method);
   ``no-fusion``  the same archs as each t-vipnas candidate with the fusion removed (6a);
   ``shared``     one arch and fusion for all T frames (6b);
   ``per-frame``  one arch for all frames and no fusion: image nets run on each frame at
                  the same average GMACs (Table 3's S-ViPNAS-per-frame comparison).

   ``no-fusion`` / ``per-frame`` need sub-nets trained without fusion:
   ``supernet.no_fusion_draws`` gives each frame of a sandwich step no fusion with
   probability 1/2 (the paper re-trains these nets apart; one shared supernet trains both
   here, so the comparison sees the same weights and steps).

Run directory: ``config.yaml``, ``key/``, ``supernet/``, ``candidates.jsonl`` (one line per
scored sequence, appended), ``best_video_arch.json`` (key + T frame archs), ``best_video.pt``
(a video checkpoint: `posenas eval`, `posenas infer VIDEO`, `posenas export`),
``results.json`` and ``pareto.png``.
"""

from __future__ import annotations

import functools
import json
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from posenas.arch import arch_from_json, save_arch_file
from posenas.checkpoint import inherited_state, load_checkpoint, load_weights, save_checkpoint, supernet_from_checkpoint
from posenas.codecs.heatmap import HeatmapCodec
from posenas.config import to_dict
from posenas.cost import count_macs, time_calls
from posenas.data.layout import load_dataset
from posenas.data.transforms import AugmentConfig
from posenas.data.video import ClipDataset
from posenas.display import format_score, heading, warn
from posenas.engine.config import DataConfig, OptimConfig, TrainConfig, TrainingSections
from posenas.engine.distributed import World, resolve_device
from posenas.engine.precision import supernet_family
from posenas.engine.task import heatmap_loss
from posenas.engine.train import Objective, interruptible, make_codec, train
from posenas.engine.video import first_videos, frame_nets_of, key_net_of, score_video_model
from posenas.errors import PosenasError
from posenas.jsonio import JsonlLog, write_json
from posenas.search.candidates import bn_reestimation
from posenas.search.rundir import open_search_dir
from posenas.spaces.vipnas import (SPACES, Choices, ViPNASArch, derive, in_choices, largest_arch, parse_choices,
                                   smallest_arch)
from posenas.spaces.vipnas_video import (FUSION_OPS, FUSION_STAGES, SPACE, FrameArch, Fusion, PropagationModel,
                                         TemporalSupernet, VideoArch, VideoPoseModel, average_gmacs,
                                         check_fusion_choices, frame_macs, load_active_state, sample_frames,
                                         propagate, sandwich_frames, video_supernet_fields)

VARIANTS = ("t-vipnas", "no-fusion", "shared", "per-frame")


# ----------------------------------------------------------------------------- config

@dataclass(frozen=True)
class TemporalSupernetConfig:
    """The T-ViPNet supernet: a ViPNAS spatial space (optionally restricted) + fusion choices."""

    space: str = SPACE
    spatial: str = "vipnas-resnet"
    choices: dict[str, Any] | None = None  # as a spatial search's supernet.choices; missing = full set
    frames: int = 3  # T: non-key frames per key frame (the paper's default)
    fusion_stages: tuple[int, ...] = FUSION_STAGES
    fusion_ops: tuple[str, ...] = FUSION_OPS
    random_subnets: int = 2  # N of the sandwich rule
    distill: bool = True  # in-place distillation from the largest sequence
    no_fusion_draws: bool = True  # also train fusion-free frames (the no-fusion / per-frame variants)

    def __post_init__(self) -> None:
        if self.space != SPACE:
            raise PosenasError(f"config.supernet.space: expected {SPACE!r} here, got {self.space!r}")
        if self.spatial not in SPACES:
            raise PosenasError(f"config.supernet.spatial: unknown space {self.spatial!r}; allowed: {', '.join(SPACES)}")
        if self.frames < 1:
            raise PosenasError(f"config.supernet.frames: T must be >= 1, got {self.frames}")
        if self.random_subnets < 0:
            raise PosenasError(f"config.supernet.random_subnets: must be >= 0, got {self.random_subnets}")
        self.parsed_choices()
        check_fusion_choices(self.fusion_stages, self.fusion_ops, len(SPACES[self.spatial].strides),
                             "config.supernet.fusion")

    def parsed_choices(self) -> Choices:
        return parse_choices(SPACES[self.spatial], self.choices, "config.supernet.choices")


@dataclass(frozen=True)
class KeyFrameConfig:
    """The key frame's S-ViPNet: its arch and where its weights come from."""

    arch: str | None = None  # an S-ViPNAS arch JSON file (a spatial search's best_arch.json)
    checkpoint: str | None = None  # its weights (a trained checkpoint or a supernet holding it); null: train here
    epochs: int = 8  # phase 0's length when no checkpoint is given (data and augmentation are shared)
    optim: OptimConfig | None = None  # phase 0's optimiser and schedule (null: the run's optim section)
    init_from: str | None = None  # phase 0 fine-tunes these weights (a COCO-trained S-ViPNAS), else from scratch

    def __post_init__(self) -> None:
        if self.arch is None:
            raise PosenasError("config.key.arch: missing; give the key frame's S-ViPNAS arch file")
        if self.epochs < 1:
            raise PosenasError(f"config.key.epochs: must be >= 1, got {self.epochs}")


@dataclass(frozen=True)
class VideoSearchConfig:
    candidates: int = 24  # scored sequences per drawn variant (t-vipnas, shared, per-frame)
    max_gmacs: float | None = None  # Eq. 3: mean GMACs over the key frame and the T frames
    variants: tuple[str, ...] = VARIANTS
    calib_batches: int = 4  # training clips batches for each candidate's BN re-calibration
    val_max_videos: int | None = None  # score on the first N val videos (None: all)
    latency_threads: int = 1
    latency_runs: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for v in self.variants:
            if v not in VARIANTS:
                raise PosenasError(f"config.search.variants: unknown variant {v!r}; allowed: {', '.join(VARIANTS)}")
        if "t-vipnas" not in self.variants:
            raise PosenasError("config.search.variants: must include t-vipnas (the method; no-fusion is its twin)")
        for name in ("candidates", "calib_batches", "latency_threads", "latency_runs"):
            if getattr(self, name) < 1:
                raise PosenasError(f"config.search.{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_gmacs is not None and not self.max_gmacs > 0:
            raise PosenasError(f"config.search.max_gmacs: must be > 0 (or null for no budget), got {self.max_gmacs}")
        if self.val_max_videos is not None and self.val_max_videos < 1:
            raise PosenasError(f"config.search.val_max_videos: must be >= 1 (or null), got {self.val_max_videos}")


@dataclass(frozen=True)
class VideoSearchExperimentConfig(TrainingSections):
    supernet: TemporalSupernetConfig = field(default_factory=TemporalSupernetConfig)
    key: KeyFrameConfig = field(default_factory=lambda: KeyFrameConfig("configs/vipnas/tiny-video-key.json"))
    data: DataConfig = field(default_factory=lambda: DataConfig(root="data/synthetic/posetrack"))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: VideoSearchConfig = field(default_factory=VideoSearchConfig)

    def key_arch(self) -> ViPNASArch:
        from posenas.arch import load_arch_file
        from posenas.resources import resolve_config

        arch = load_arch_file(resolve_config(self.key.arch, "arch"))
        if not isinstance(arch, ViPNASArch) or arch.space_name != self.supernet.spatial:
            raise PosenasError(f"config.key.arch: {self.key.arch}: expected a {self.supernet.spatial} arch "
                               f"(supernet.spatial), got space {arch.to_json().get('space')!r}")
        outside = in_choices(arch, self.supernet.parsed_choices())
        if outside is not None:
            raise PosenasError(f"config.key.arch: {self.key.arch}: not a sub-net of the temporal supernet "
                               f"(config.supernet.choices): {outside}; the supernet shares the key net's CNN and "
                               "starts from its weights")
        return arch


# ----------------------------------------------------------------------------- propagation training

def _draw_fusion_free(frames: list[list[FrameArch]], rng: random.Random) -> list[list[FrameArch]]:
    """Each frame of each sequence loses its fusion with probability 1/2."""
    return [[FrameArch(f.spatial, None) if rng.random() < 0.5 else f for f in seq] for seq in frames]


class PropagationObjective(Objective):
    """Eqs. 1-2 with the sandwich rule per frame (module docstring, phase 1)."""

    ddp = False  # the few parameters the step's sub-nets touch: gradients are not all-reduced (1 process)

    def __init__(self, cfg: TemporalSupernetConfig, key_arch: ViPNASArch, key_state: dict[str, torch.Tensor],
                 seed: int):
        self.cfg, self.key_arch, self.key_state, self.seed = cfg, key_arch, key_state, seed
        self.choices = cfg.parsed_choices()
        big = largest_arch(cfg.spatial, self.choices)
        # what validation during training runs (and the checkpoint's arch): largest nets, last stage, first op
        frames = tuple(FrameArch(big, Fusion(cfg.fusion_stages[-1], cfg.fusion_ops[0])) for _ in range(cfg.frames))
        super().__init__(VideoArch(key_arch, frames))

    def build(self, num_joints: int) -> PropagationModel:
        supernet = TemporalSupernet(self.cfg.spatial, self.choices, num_joints, self.cfg.fusion_stages,
                                    self.cfg.fusion_ops)
        model = PropagationModel(self.key_arch, supernet, self.arch.frames)
        load_weights(model.key, self.key_state, "the key frame net")
        supernet.set_active(self.key_arch)
        load_active_state(supernet, self.key_state)  # the supernet starts as the S-ViPNet (section 3.4.2)
        return model

    def family(self) -> str:
        return supernet_family(self.cfg.spatial)

    def checkpoint_fields(self) -> dict:
        return {"arch": self.arch.to_json(),
                **video_supernet_fields(TemporalSupernet(self.cfg.spatial, self.choices, 1, self.cfg.fusion_stages,
                                                         self.cfg.fusion_ops), self.key_arch)}

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return list(model.supernet.parameters())

    def sequences(self, model: PropagationModel, step: int) -> list[list[FrameArch]]:
        """The step's frame-arch sequences: a function of (seed, step) only."""
        rng = random.Random(f"propagation:{self.seed}:{step}")
        seqs = sandwich_frames(model.supernet, self.cfg.frames, self.cfg.random_subnets, rng)
        return _draw_fusion_free(seqs, rng) if self.cfg.no_fusion_draws else seqs

    def prepare(self, model: nn.Module, codec: HeatmapCodec, cfg: Any, world: World, steps_per_epoch: int) -> None:
        if world.size > 1:
            raise PosenasError("the ViPNAS temporal search runs in one process; start it without torchrun")
        self.stride = tuple(codec.stride_xy)

    def step(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int, world: World) -> torch.Tensor:
        images, target, weight, matrix = batch["image"], batch["target"], batch["target_weight"], batch["matrix"]
        with torch.no_grad():
            first = self.precision.forward(model.key, images[:, 0])
        total = torch.zeros((), device=images.device)
        teacher: list[torch.Tensor] = []
        for s, frames in enumerate(self.sequences(model, step)):
            with self.precision.autocast(images.device):
                outs = propagate([functools.partial(model.run_frame, f) for f in frames], images, matrix, first,
                                 self.stride)
            loss = torch.zeros((), device=images.device)
            for t, h in enumerate(outs, 1):
                h = h.float()
                loss = loss + heatmap_loss(h, target[:, t], weight[:, t])  # Eq. 1: MSE on every frame
                if s == 0:
                    teacher.append(h.detach())
                elif self.cfg.distill:
                    loss = loss + heatmap_loss(h, teacher[t - 1], weight[:, t])
            if not bool(torch.isfinite(loss)):
                return loss.detach()  # the loop stops before the optimiser step
            loss.backward()
            total += loss.detach()
        return total

    def before_validation(self, model: nn.Module) -> None:
        model.frames = self.arch.frames


# ----------------------------------------------------------------------------- candidates

def clip_calibration(train_set, codec: HeatmapCodec, augment: AugmentConfig, frames: int, batch_size: int,
                     count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``count`` fixed batches of training clips (augmented as in training) shared by all candidates."""
    data = ClipDataset(train_set, codec, augment, frames=frames, seed=seed)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[: count * batch_size].tolist()
    loader = DataLoader(Subset(data, order), batch_size=batch_size)
    return [{k: v for k, v in b.items() if k in ("image", "matrix")} for b in loader]


@torch.no_grad()
def recalibrate_frames(model: VideoPoseModel, batches: list[dict[str, torch.Tensor]], stride) -> None:
    """Each frame net's BN statistics re-estimated (cumulative average) on ``batches`` of clips,
    each fed the heatmaps propagated to it by the nets before it (key net untouched)."""
    model.eval()
    with bn_reestimation(model.frames):
        for b in batches:
            propagate(list(model.frames), b["image"], b["matrix"], model.key(b["image"][:, 0]), stride)


class VideoEvaluator:
    """Costs and scores frame-arch sequences of one trained propagation supernet."""

    def __init__(self, cfg: VideoSearchExperimentConfig, checkpoint: Path, device: torch.device):
        state = load_checkpoint(checkpoint)
        self.model: PropagationModel = supernet_from_checkpoint(state, checkpoint).to(device).eval()
        self.device, self.cfg = device, cfg
        self.codec = make_codec(cfg.training())
        self.stride = tuple(self.codec.stride_xy)
        train_set = load_dataset(cfg.data.root, cfg.data.train_split)
        self.val = first_videos(load_dataset(cfg.data.root, cfg.data.val_split), cfg.search.val_max_videos)
        self.calib = clip_calibration(train_set, self.codec, cfg.augment, cfg.supernet.frames + 1,
                                      cfg.data.batch_size, cfg.search.calib_batches, cfg.search.seed)
        self.num_joints = self.model.supernet.num_joints
        self.key_gmacs = count_macs(self.model.key, self.codec.input_size)[0] / 1e9
        self._macs: dict[str, float] = {}

    def frame_gmacs(self, frame: FrameArch) -> float:
        k = json.dumps(frame.to_json(), sort_keys=True)
        if k not in self._macs:
            self._macs[k] = frame_macs(frame, self.num_joints, self.codec.input_size) / 1e9
        return self._macs[k]

    def gmacs(self, frames: Sequence[FrameArch]) -> float:
        return average_gmacs(self.key_gmacs, [self.frame_gmacs(f) for f in frames])

    def fits(self, frames: Sequence[FrameArch]) -> bool:
        budget = self.cfg.search.max_gmacs
        return budget is None or self.gmacs(frames) <= budget

    def video_model(self, frames: Sequence[FrameArch]) -> VideoPoseModel:
        model = self.model.derived(frames).to(self.device)
        recalibrate_frames(model, [{k: v.to(self.device) for k, v in b.items()} for b in self.calib], self.stride)
        return model

    def evaluate(self, frames: Sequence[FrameArch]) -> dict[str, Any]:
        model = self.video_model(frames)
        scores = score_video_model(model, self.val, self.codec, self.device, progress=False,
                                   batch_size=self.cfg.data.batch_size * 2)
        pt, coco = scores["posetrack"], scores["coco"]
        return {"gmacs": self.gmacs(frames), "key_gmacs": self.key_gmacs,
                "frame_gmacs": [self.frame_gmacs(f) for f in frames], "score": pt["Total"],
                "posetrack": pt, "AP": coco["AP"]}

    def fps(self, model: nn.Module) -> dict[str, float]:
        """Single-thread batch-1 frames/s of the whole period: (T + 1) / summed median latency."""
        sc = self.cfg.search
        previous = torch.get_num_threads()
        torch.set_num_threads(sc.latency_threads)
        h, w = self.codec.input_size
        x = torch.zeros(1, 3, h, w, device=self.device)
        heat = torch.zeros(1, self.num_joints, *self.codec.heatmap_size, device=self.device)
        try:
            with torch.inference_mode():
                key_ms = time_calls(key_net_of(model), x, 2, sc.latency_runs)["median"]
                frame_ms = [time_calls(lambda i, n=net: n(i, heat), x, 2, sc.latency_runs)["median"]
                            for net in frame_nets_of(model)]
        finally:
            torch.set_num_threads(previous)
        total = key_ms + sum(frame_ms)
        return {"fps": round(1000.0 * (1 + len(frame_ms)) / total, 2), "key_ms": round(key_ms, 3),
                "frame_ms": [round(m, 3) for m in frame_ms], "threads": sc.latency_threads}


def draw_sequences(variant: str, cfg: VideoSearchExperimentConfig, evaluator: VideoEvaluator, count: int
                   ) -> list[tuple[FrameArch, ...]]:
    """``count`` sequences of a drawn variant fitting the budget: a function of (seed, variant)."""
    sc, s = cfg.search, cfg.supernet
    rng = random.Random(f"video-search:{sc.seed}:{variant}")
    shared, fusion = variant in ("shared", "per-frame"), variant != "per-frame"
    out: list[tuple[FrameArch, ...]] = []
    tries = 0
    choices = s.parsed_choices()
    while len(out) < count:
        tries += 1
        if tries > 200 * count:
            raise PosenasError(f"config.search.max_gmacs: {sc.max_gmacs} GMACs (average over the key frame and "
                               f"{s.frames} frames) fits almost no {variant} sequence: the key frame alone costs "
                               f"{evaluator.key_gmacs:.4f}; raise the budget")
        frames = sample_frames(s.spatial, choices, s.frames, s.fusion_stages, s.fusion_ops, rng,
                               shared=shared, fusion=fusion)
        if evaluator.fits(frames):
            out.append(frames)
    return out


def _without_fusion(frames: Sequence[FrameArch]) -> tuple[FrameArch, ...]:
    return tuple(FrameArch(f.spatial, None) for f in frames)


# ----------------------------------------------------------------------------- phases

def train_key(cfg: VideoSearchExperimentConfig, out: Path, progress: bool) -> dict[str, torch.Tensor]:
    """Phase 0: the key net's weights (given, or trained into ``key/``)."""
    arch = cfg.key_arch()
    if cfg.key.checkpoint is not None:
        return inherited_state(cfg.key.checkpoint, arch.to_json())
    run = out / "key"
    last = run / "checkpoints" / "last.pt"
    if not (run / "results.json").exists():
        heading(f"key frame net: {cfg.key.arch} trained {cfg.key.epochs} epochs on the video frames into {run}")
        training = cfg.training()
        training = replace(training, optim=cfg.key.optim or training.optim,
                           train=replace(training.train, epochs=cfg.key.epochs, init_from=cfg.key.init_from))
        train(training, run, resume=last.exists(), progress=progress, objective=Objective(arch))
    return load_checkpoint(last)["state_dict"]


def train_propagation(cfg: VideoSearchExperimentConfig, out: Path, key_state: dict, progress: bool) -> Path:
    """Phase 1: the temporal supernet by propagation (resumable); returns its checkpoint."""
    run = out / "supernet"
    last = run / "checkpoints" / "last.pt"
    if not (run / "results.json").exists():
        s = cfg.supernet
        heading(f"propagation training: T = {s.frames}, sandwich rule per frame (largest, smallest, "
                f"{s.random_subnets} random{', distillation' if s.distill else ''}) into {run}")
        objective = PropagationObjective(s, cfg.key_arch(), key_state, cfg.train.seed)
        train(cfg.training(), run, resume=last.exists(), progress=progress, objective=objective)
    return last


def search_sequences(cfg: VideoSearchExperimentConfig, out: Path, checkpoint: Path, progress: bool) -> dict:
    """Phase 2: score the variants' sequences (appended to candidates.jsonl; a resumed search
    reads finished ones back), then write the best arch, its checkpoint and the summary."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    evaluator = VideoEvaluator(cfg, checkpoint, device)
    sc = cfg.search
    log = JsonlLog(out / "candidates.jsonl")
    done = {(r.get("variant"), r.get("index")): r for r in log.records}
    plan: list[tuple[str, int, tuple[FrameArch, ...]]] = []
    drawn = {v: draw_sequences(v, cfg, evaluator, sc.candidates) for v in sc.variants if v != "no-fusion"}
    for v in sc.variants:
        source = drawn["t-vipnas"] if v == "no-fusion" else drawn[v]
        for i, frames in enumerate(source):
            plan.append((v, i, _without_fusion(frames) if v == "no-fusion" else frames))
    heading(f"search: {', '.join(sc.variants)}, {sc.candidates} sequences each, budget "
            f"{sc.max_gmacs if sc.max_gmacs is not None else '-'} average GMACs (key frame {evaluator.key_gmacs:.4f})")
    records: list[dict] = []
    bar = tqdm(total=len(plan), desc="search", unit="sequence", disable=not progress)
    try:
        for variant, index, frames in plan:
            arch = evaluator.model.video_arch(frames).to_json()
            record = done.get((variant, index))
            if record is not None and record.get("arch") != arch:
                raise PosenasError(f"{out / 'candidates.jsonl'}: line for {variant} #{index} holds another arch than "
                                   "this search draws (was the config changed?); search into a new --out")
            if record is None:
                started = time.perf_counter()
                record = {"variant": variant, "index": index, "arch": arch, **evaluator.evaluate(frames),
                          "seconds": round(time.perf_counter() - started, 2)}
                log.append(record)
            records.append(record)
            bar.update(1)
            bar.set_postfix(best=f"{max(r['score'] for r in records):.2f}")
    finally:
        bar.close()
    return summarise(cfg, out, evaluator, records)


def summarise(cfg: VideoSearchExperimentConfig, out: Path, evaluator: VideoEvaluator, records: list[dict]) -> dict:
    best = {v: max((r for r in records if r["variant"] == v), key=lambda r: r["score"]) for v in cfg.search.variants}
    winner = best["t-vipnas"]
    # Fig. 6a's pairing: the winner's own archs with the fusion removed (not the best of the twins)
    twin = next((r for r in records if r["variant"] == "no-fusion" and r["index"] == winner["index"]), None)
    arch = arch_from_json(winner["arch"])
    save_arch_file(out / "best_video_arch.json", arch)
    models = {v: evaluator.video_model(arch_from_json(r["arch"]).frames) for v, r in best.items()}
    model = models["t-vipnas"]
    save_checkpoint(out / "best_video.pt", {"arch": arch.to_json(), "schema": evaluator.val.schema.name,
                                            "codec": evaluator.codec.to_dict(),
                                            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                                            "config": to_dict(cfg)})
    speed = {v: evaluator.fps(m) for v, m in models.items()}
    key_only = score_video_model(evaluator.model.key, evaluator.val, evaluator.codec, evaluator.device,
                                 progress=False, batch_size=cfg.data.batch_size * 2)
    summary = {"metric": "posetrack", "budget": {"max_gmacs": cfg.search.max_gmacs, "frames": cfg.supernet.frames},
               "best": winner, "best_per_variant": best, "speed": speed,
               "winner_without_fusion": twin,
               "key_every_frame": {"gmacs": evaluator.key_gmacs, "score": key_only["posetrack"]["Total"],
                                   "AP": key_only["coco"]["AP"],
                                   **evaluator.fps(evaluator.model.key)},
               "evaluations": len(records),
               "scores": {v: [r["score"] for r in records if r["variant"] == v] for v in cfg.search.variants}}
    write_json(out / "results.json", summary, indent=2)
    plot_video_pareto(records, out / "pareto.png", summary["key_every_frame"])
    return summary


def plot_video_pareto(records: list[dict], path: Path, key: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from posenas.search.vipnas import pareto_front

    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, marker in zip(VARIANTS, "o^sv"):
        rs = [r for r in records if r["variant"] == variant]
        if not rs:
            continue
        pts = ax.scatter([r["gmacs"] for r in rs], [r["score"] for r in rs], marker=marker, alpha=0.6, label=variant)
        front = pareto_front(rs, "gmacs")
        ax.plot([r["gmacs"] for r in front], [r["score"] for r in front], color=pts.get_facecolor()[0], lw=1)
    ax.scatter([key["gmacs"]], [key["score"]], marker="*", s=120, color="k", label="key net every frame")
    ax.set_xlabel("average GMACs per frame (key + T frames)")
    ax.set_ylabel("PoseTrack mAP (Total)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def check_budget(cfg: VideoSearchExperimentConfig) -> None:
    """Fail before any training when even the cheapest sequence (smallest sub-nets, no fusion)
    is over ``search.max_gmacs``."""
    budget = cfg.search.max_gmacs
    if budget is None:
        return
    s = cfg.supernet
    size = tuple(cfg.data.input_size)
    key = count_macs(derive(cfg.key_arch(), 17), size)[0] / 1e9
    cheapest = frame_macs(FrameArch(smallest_arch(s.spatial, s.parsed_choices()), None), 17, size) / 1e9
    floor = average_gmacs(key, [cheapest] * s.frames)
    if floor > budget:
        raise PosenasError(f"config.search.max_gmacs: {budget} GMACs fits no sequence: the key frame costs {key:.4f} "
                           f"and the smallest frame net {cheapest:.4f}, {floor:.4f} on average over {s.frames + 1} "
                           "frames; raise the budget or shrink config.supernet.choices")


@interruptible
def run_video_search(cfg: VideoSearchExperimentConfig, out: str | Path, resume: bool = False,
                     progress: bool = True) -> dict:
    """All three phases; with ``resume`` an interrupted run continues."""
    out = Path(out)
    check_budget(cfg)  # a bad key arch or an impossible budget fails before the run folder is written
    open_search_dir(out, cfg, resume)
    key_state = train_key(cfg, out, progress)
    checkpoint = train_propagation(cfg, out, key_state, progress)
    return search_sequences(cfg, out, checkpoint, progress)


def print_summary(summary: dict, out: Path, cfg: VideoSearchExperimentConfig) -> None:
    best, key = summary["best"], summary["key_every_frame"]
    print(f"best T-ViPNAS of {cfg.search.candidates}: PoseTrack mAP {format_score(best['score'])} at "
          f"{best['gmacs']:.4f} average GMACs ({summary['speed']['t-vipnas']['fps']} frames/s, "
          f"{summary['speed']['t-vipnas']['threads']} thread); arch in {out / 'best_video_arch.json'}, "
          f"model in {out / 'best_video.pt'}")
    for v, r in summary["best_per_variant"].items():
        if v != "t-vipnas":
            print(f"  {v:>9}: mAP {format_score(r['score'])} at {r['gmacs']:.4f} GMACs (best of its draws)")
    twin = summary.get("winner_without_fusion")
    if twin:
        print(f"  the best T-ViPNAS without its fusion: mAP {format_score(twin['score'])} at {twin['gmacs']:.4f} GMACs")
    print(f"  key net on every frame: mAP {format_score(key['score'])} at {key['gmacs']:.4f} GMACs")
    scores = summary["scores"]["t-vipnas"]
    if len(set(scores)) == 1:
        warn(f"all {len(scores)} T-ViPNAS sequences scored {format_score(scores[0])}: the ranking is noise; train "
             "the supernet longer")
    print(f"run it on a video: posenas infer --checkpoint {out / 'best_video.pt'} VIDEO.mp4 --out DIR")
