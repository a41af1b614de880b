"""Constrained search strategies over a trained supernet.

Both draw only sub-nets within the budget (rejection sampling) and spend the same number
of evaluations. ``evaluate(arch, strategy, index)`` returns a candidate record with a
``score``. They draw a batch of candidates whose draws do not depend on each other's
scores (random search: all ``k``; evolution: one generation), then score it, one at a time
with ``evaluate`` or all at once with ``batch(archs, strategy, first_index)`` (one record
per arch, in order). The run serves already-finished indices from ``candidates.jsonl``, and since
the draws depend only on the seed and on earlier scores, a resumed search repeats the
same sequence and continues where it stopped.

Why batches: under torchrun a batch is scored by all ranks at once
(:mod:`posenas.search.vipnas`); ``share(draw)`` runs a batch's draw on rank 0 alone and
hands the archs to every rank (a latency budget measures, and measurements differ between
ranks). The rng is consumed in exactly the order of a one-at-a-time search, so a batch is
the same candidates in the same order whatever the number of processes.

- random (ViPNAS 3.4.1): ``k`` independent sub-nets within the budget; keep the best.
- evolution (as in Once-for-All): a random first generation of ``population``; then
  each generation keeps the best ``parents`` and breeds the rest, half by mutation
  (each stage re-drawn with ``mutate_prob``) and half by crossover of two parents; a child
  that cannot be bred new within the budget (the parents' neighbourhood used up) is a fresh
  random sub-net instead.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from posenas.errors import PosenasError
from posenas.search.candidates import arch_key
from posenas.spaces.vipnas import Choices, ViPNASArch, crossover_arch, mutate_arch, sample_arch, smallest_arch

Evaluate = Callable[[ViPNASArch, str, int], dict[str, Any]]
EvaluateBatch = Callable[[list[ViPNASArch], str, int], list[dict[str, Any]]]
Share = Callable[[Callable[[], list[ViPNASArch]]], list[ViPNASArch]]
MAX_TRIES = 2000


def check_budget(space_name: str, choices: Choices, fits: Callable[[ViPNASArch], bool]) -> None:
    if not fits(smallest_arch(space_name, choices)):
        raise PosenasError("config.search: no sub-net fits the budget (not even the smallest); raise "
                           "max_gmacs / max_latency_ms or restrict the choices to smaller values")


def _feasible(draw: Callable[[], ViPNASArch], fits: Callable[[ViPNASArch], bool], seen: set[str],
              fallback: Callable[[], ViPNASArch] | None = None) -> ViPNASArch:
    """A new sub-net within the budget; it is added to ``seen``. If ``draw`` finds none in
    MAX_TRIES (an evolution whose parents' neighbourhood within the budget is used up),
    ``fallback`` (a fresh random sub-net) is drawn instead."""
    for source in (draw, fallback) if fallback is not None else (draw,):
        for _ in range(MAX_TRIES):
            arch = source()
            if arch_key(arch) not in seen and fits(arch):
                seen.add(arch_key(arch))
                return arch
    raise PosenasError(f"config.search: found no new sub-net within the budget in {MAX_TRIES} draws")


def _here(draw: Callable[[], list[ViPNASArch]]) -> list[ViPNASArch]:
    return draw()


def _batched(evaluate: Evaluate | None, batch: EvaluateBatch | None) -> EvaluateBatch:
    if batch is not None:
        return batch
    if evaluate is None:
        raise TypeError("a search strategy needs evaluate or batch")
    return lambda archs, strategy, first: [evaluate(a, strategy, first + j) for j, a in enumerate(archs)]


def random_search(space_name: str, choices: Choices, k: int, seed: int, fits, evaluate: Evaluate | None = None,
                  *, batch: EvaluateBatch | None = None, share: Share = _here) -> list[dict]:
    score = _batched(evaluate, batch)

    def draw() -> list[ViPNASArch]:
        check_budget(space_name, choices, fits)
        rng = random.Random(f"random:{seed}")
        seen: set[str] = set()
        return [_feasible(lambda: sample_arch(space_name, choices, rng), fits, seen) for _ in range(k)]

    return score(share(draw), "random", 0)


def evolution_search(space_name: str, choices: Choices, k: int, seed: int, fits, evaluate: Evaluate | None,
                     population: int, parents: int, mutate_prob: float, *, batch: EvaluateBatch | None = None,
                     share: Share = _here) -> list[dict]:
    score = _batched(evaluate, batch)
    if k > population and parents >= population:
        raise PosenasError(f"config.search.parents: must be < population ({population}) to breed more than "
                           f"{population} candidates, got {parents}")
    rng = random.Random(f"evolution:{seed}")  # used by the drawing rank alone (see ``share``)
    seen: set[str] = set()

    def first() -> list[ViPNASArch]:
        check_budget(space_name, choices, fits)
        return [_feasible(lambda: sample_arch(space_name, choices, rng), fits, seen)
                for _ in range(min(k, population))]

    records = score(share(first), "evolution", 0)
    pool = list(records)
    while len(records) < k:
        best = sorted(pool, key=lambda r: -r["score"])[:parents]
        archs = [r["_arch"] for r in best]

        def children(archs: list[ViPNASArch] = archs,
                     count: int = min(population - parents, k - len(records))) -> list[ViPNASArch]:
            out = []
            for j in range(count):
                if j % 2 == 0 or len(archs) < 2:
                    draw = lambda: mutate_arch(rng.choice(archs), choices, rng, mutate_prob)  # noqa: E731
                else:
                    draw = lambda: crossover_arch(*rng.sample(archs, 2), rng)  # noqa: E731
                out.append(_feasible(draw, fits, seen, lambda: sample_arch(space_name, choices, rng)))
            return out

        kids = score(share(children), "evolution", len(records))
        records += kids
        pool = best + kids
    return records
