"""The ViPNAS spatial search (`posenas search` on a vipnas-* space): train a weight-sharing
supernet with the sandwich rule, then search it under a budget.

Run directory::

    config.yaml         the resolved search config
    supernet/           the supernet's training run (checkpoints, metrics.jsonl, results.json)
    candidates.jsonl    one line per evaluated sub-net: strategy, index, arch, gmacs, params_m,
                        latency_ms, AP (or PCKh) ...; appended as they finish
    best_arch.json      the best candidate's arch (train it: posenas train --arch best_arch.json)
    results.json        the best per strategy and overall
    pareto.png          AP vs GMACs and vs latency, Pareto fronts marked

Interrupt it at any point and run it again with ``--resume``: supernet training resumes
from its last checkpoint, finished candidates are read back, and the search continues
with the same draws.

Under ``torchrun --nproc_per_node N`` the supernet trains as one DDP run, then the
candidates are shared out: rank 0 draws each batch (random search: all of it; evolution:
a generation) and every rank scores its share, with the same supernet weights, calibration
batches and val images; rank 0 writes the same files as a 1-process run (latencies are
measurements, so they differ between any two runs).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from posenas.arch import arch_from_json, save_arch_file
from posenas.checkpoint import load_checkpoint, supernet_from_checkpoint
from posenas.data.layout import load_dataset
from posenas.engine.distributed import World, gather, init_world, on_main, share_note
from posenas.engine.precision import Precision, supernet_family
from posenas.engine.train import interruptible, make_codec, run_precision, train
from posenas.display import format_score, heading, retrain_command, ties, warn
from posenas.errors import PosenasError
from posenas.jsonio import JsonlLog, write_json
from posenas.search.candidates import Evaluator, calibration_batches
from posenas.search.vipnas_config import SearchExperimentConfig
from posenas.search.sandwich import SandwichObjective
from posenas.search.strategies import evolution_search, random_search
from posenas.search.rundir import open_search_dir
from posenas.spaces.vipnas import ViPNASArch


def train_supernet(cfg: SearchExperimentConfig, out: Path, progress: bool = True) -> Path:
    """Phase 1 (resumable; a finished one is skipped): returns the supernet checkpoint."""
    run = out / "supernet"
    last = run / "checkpoints" / "last.pt"
    if not (run / "results.json").exists():
        sc = cfg.supernet
        heading(f"supernet training: {sc.space}, sandwich rule (largest, smallest, {sc.random_subnets} random"
                f"{', in-place distillation' if sc.distill else ''}) into {run}")
        objective = SandwichObjective(sc.space, sc.parsed_choices(), sc.random_subnets, sc.distill, cfg.train.seed)
        train(cfg.training(), run, resume=last.exists(), progress=progress, objective=objective)
    return last


class _Candidates:
    """Scores the candidates of a batch, shared out over the ranks of a torchrun, and serves
    finished ones from ``candidates.jsonl`` (a resumed search does not score them again).

    The batch's unfinished candidates are taken ``size`` at a time (a round): the j-th of a
    round is scored by rank j, all ranks then hold every record of the round
    (:func:`gather`), and rank 0 appends them in index order, so the file is a 1-process
    run's. Why a collective and not files: every rank needs every score (the evolution
    search breeds the next generation from them on rank 0, and the records are returned on
    every rank), a record is a few hundred bytes, and a round's records are appended as one
    step, so an interrupt loses at most one round. Each candidate's score depends on nothing
    but its arch: the supernet weights, the calibration batches and the val images are the
    same on every rank (all fixed by the seed)."""

    def __init__(self, path: Path, bar: tqdm, evaluator: Evaluator, world: World):
        self.path, self.bar, self.evaluator, self.world = path, bar, evaluator, world
        # a line torn by a crash is dropped (and redone) before anything is appended: rank 0 alone touches the file
        self.log = JsonlLog(path) if world.is_main else None
        lines = on_main(world, lambda: self.log.records)
        self.done = {(r.get("strategy"), r.get("index")): r for r in lines}
        self.scores: list[float] = []
        self.mine: list[str] = []  # "strategy #index" of the candidates this rank scored
        self.forecast_printed = False

    def __call__(self, archs: list[ViPNASArch], strategy: str, first: int) -> list[dict[str, Any]]:
        records: list[dict | None] = []
        for index, arch in enumerate(archs, first):
            record = self.done.get((strategy, index))
            if record is not None and record.get("arch") != arch.to_json():
                raise PosenasError(f"{self.path}: line for {strategy} #{index} holds another arch than this search "
                                   "draws (was the config changed?); search into a new --out")
            records.append(record)
        pending = [j for j, r in enumerate(records) if r is None]
        served = len(archs) - len(pending)
        self._advance([r["score"] for r in records if r is not None], served)
        size, rank = self.world.size, self.world.rank
        for start in range(0, len(pending), size):
            round_ = pending[start:start + size]
            started = time.perf_counter()
            mine = None
            if rank < len(round_):
                j = round_[rank]
                mine = {"strategy": strategy, "index": first + j, "arch": archs[j].to_json(),
                        **self.evaluator.evaluate(archs[j])}
                self.mine.append(f"{strategy} #{first + j}")
            for j, record in zip(round_, gather(self.world, mine)):
                records[j] = record
                if self.log is not None:
                    self.log.append(record)
            self._forecast(time.perf_counter() - started, len(round_))
            self._advance([records[j]["score"] for j in round_], len(round_))
        return [{**r, "_arch": a} for r, a in zip(records, archs)]

    def _advance(self, scores: list[float], count: int) -> None:
        if not count:
            return
        self.scores += scores
        self.bar.update(count)
        self.bar.set_postfix(best=f"{max(self.scores):.4f}")

    def _forecast(self, seconds: float, count: int) -> None:
        """The phase's cost, once its first round is timed."""
        if self.forecast_printed or self.bar.disable:
            return
        self.forecast_printed = True
        size = self.world.size
        left = self.bar.total - self.bar.n - count
        total = seconds * math.ceil(left / size)
        where = f" ({size} at a time, one per process)" if size > 1 else ""
        tqdm.write(f"expected: {seconds:.1f} s a candidate (cost, BN re-calibration, val){where}, {left} left = "
                   f"{total / 60:.1f} min")

    def share(self, draw: Callable[[], list[ViPNASArch]]) -> list[ViPNASArch]:
        """A batch's draws made on rank 0 alone and handed to every rank with the costs that
        the budget check measured (a latency is measured once: another rank's timing would
        differ, and the candidates would too)."""
        def drawn() -> list[dict]:
            return [{"arch": a.to_json(), "cost": self.evaluator.known_cost(a)} for a in draw()]

        archs = []
        for item in on_main(self.world, drawn):
            arch = arch_from_json(item["arch"])
            if item["cost"] is not None:
                self.evaluator.adopt_cost(arch, item["cost"])
            archs.append(arch)
        return archs


def pareto_front(records: list[dict], cost: str) -> list[dict]:
    """Records no other record beats on both ``score`` (higher) and ``cost`` (lower)."""
    front, best = [], float("-inf")
    for r in sorted(records, key=lambda r: (r[cost], -r["score"])):
        if r["score"] > best:
            front.append(r)
            best = r["score"]
    return front


def plot_pareto(records: list[dict], path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, cost, label in zip(axes, ("gmacs", "latency_ms"), ("GMACs", "latency (ms, batch 1)")):
        for strategy, marker in (("random", "o"), ("evolution", "^")):
            rs = [r for r in records if r["strategy"] == strategy]
            if rs:
                ax.scatter([r[cost] for r in rs], [r["score"] for r in rs], marker=marker, alpha=0.6, label=strategy)
        front = pareto_front(records, cost)
        ax.plot([r[cost] for r in front], [r["score"] for r in front], "k--", lw=1, label="Pareto front")
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def search_supernet(cfg: SearchExperimentConfig, out: Path, checkpoint: Path, progress: bool = True) -> dict:
    """Phase 2: the strategies of ``cfg.search`` over the trained supernet (results into ``out``).
    Under torchrun every rank scores its share of the candidates (:class:`_Candidates`); rank 0
    writes the files and returns the summary, the other ranks return ``{}``."""
    return _search(cfg, out, checkpoint, progress, init_world(cfg.train.device))


def candidate_evaluator(cfg: SearchExperimentConfig, checkpoint: Path, device: torch.device) -> Evaluator:
    """The trained supernet in ``checkpoint`` with ``cfg.search``'s BN-calibration batches and val
    images: what scores every candidate of a search (and, in benchmarks, any chosen sub-net)."""
    state = load_checkpoint(checkpoint)
    supernet = supernet_from_checkpoint(state, checkpoint).to(device).eval()
    # the supernet's own precision (recorded by its training run), else this config's
    saved = state.get("train_state", {}).get("precision")
    precision = (Precision.from_json(saved, f"{checkpoint}: train_state") if saved else
                 run_precision(cfg.training(), supernet_family(cfg.supernet.space), device))
    train_set = load_dataset(cfg.data.root, cfg.data.train_split)
    val_set = load_dataset(cfg.data.root, cfg.data.val_split)
    codec = make_codec(cfg.training())
    sc = cfg.search
    heading(f"BN re-calibration: {sc.calib_batches} fixed training batches per candidate")
    calib = calibration_batches(train_set, codec, cfg.augment, cfg.data.batch_size, sc.calib_batches, sc.seed)
    return Evaluator(supernet, val_set, codec, device, calib, sc, batch_size=cfg.data.batch_size * 2,
                     precision=precision)


def _search(cfg: SearchExperimentConfig, out: Path, checkpoint: Path, progress: bool, world: World) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    evaluator = candidate_evaluator(cfg, checkpoint, world.device)
    sc = cfg.search
    choices, space = cfg.supernet.parsed_choices(), cfg.supernet.space
    heading(f"candidates: {', '.join(sc.strategies)}, {sc.candidates} each, budget "
            f"{sc.max_gmacs if sc.max_gmacs is not None else '-'} GMACs / "
            f"{sc.max_latency_ms if sc.max_latency_ms is not None else '-'} ms"
            + (f", shared over {world.size} processes" if world.size > 1 else ""))
    bar = tqdm(total=sc.candidates * len(sc.strategies), desc="search", unit="candidate",
               disable=not (progress and world.is_main))
    candidates = _Candidates(out / "candidates.jsonl", bar, evaluator, world)
    records: list[dict] = []
    try:
        for strategy in sc.strategies:
            if strategy == "random":
                records += random_search(space, choices, sc.candidates, sc.seed, evaluator.fits,
                                         batch=candidates, share=candidates.share)
            else:
                records += evolution_search(space, choices, sc.candidates, sc.seed, evaluator.fits, None,
                                            sc.population, sc.parents, sc.mutate_prob,
                                            batch=candidates, share=candidates.share)
    finally:
        bar.close()
    share_note(world.rank, world.size, f"scored {len(candidates.mine)} of {len(records)} candidates"
               + (f" ({', '.join(candidates.mine)})" if candidates.mine else ""))
    if not world.is_main:
        return {}
    for r in records:
        r.pop("_arch")
    best = max(records, key=lambda r: r["score"])
    save_arch_file(out / "best_arch.json", arch_from_json(best["arch"]))
    summary = {"metric": best["metric"], "best": best,
               "best_per_strategy": {s: max((r for r in records if r["strategy"] == s), key=lambda r: r["score"])
                                     for s in sc.strategies},
               "budget": {"max_gmacs": sc.max_gmacs, "max_latency_ms": sc.max_latency_ms},
               "evaluations": len(records), "scores": [r["score"] for r in records]}
    write_json(out / "results.json", summary, indent=2)
    plot_pareto(records, out / "pareto.png", best["metric"])
    return summary


@interruptible  # Ctrl-C / SIGTERM stop every phase, also under a script that ignores SIGINT
def run_search(cfg: SearchExperimentConfig, out: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Both phases; with ``resume`` an interrupted run continues."""
    out = Path(out)
    open_search_dir(out, cfg, resume)
    checkpoint = train_supernet(cfg, out, progress)
    return search_supernet(cfg, out, checkpoint, progress)  # under torchrun shared out over the ranks


def print_summary(summary: dict, out: Path, cfg: SearchExperimentConfig) -> None:
    """The best candidate, warnings where the ranking means nothing, and the retrain command."""
    best, metric = summary["best"], summary["metric"]
    print(f"best of {summary['evaluations']} candidates: {metric} {format_score(best['score'])} at "
          f"{best['gmacs']:.4f} GMACs, {best['params_m']:.3f} M params, {best['latency_ms']:.2f} ms; "
          f"arch in {out / 'best_arch.json'}")
    scores = summary.get("scores", [])
    if ties(scores):
        warn(f"all {len(scores)} candidates scored {metric} {format_score(scores[0])}: the ranking is noise and the "
             "'best' is the first drawn; train the supernet longer (train.epochs) before reading it")
    elif (sharing := sum(sc == best["score"] for sc in scores)) > 1:
        warn(f"the best {metric} {format_score(best['score'])} is shared by {sharing} candidates; "
             "the pick among them is arbitrary")
    print("retrain it: " + retrain_command(out / "best_arch.json", cfg.data.root, cfg.data.input_size,
                                           init_from=out / "supernet" / "checkpoints" / "last.pt"))
