"""Constrained search strategies over a trained supernet.

Both draw only sub-nets within the budget (rejection sampling) and spend the same number
of evaluations. ``evaluate(arch, strategy, index)`` returns a candidate record with a
``score``; the run serves already-finished indices from ``candidates.jsonl``, and since
the draws depend only on the seed and on earlier scores, a resumed search repeats the
same sequence and continues where it stopped.

- random (ViPNAS 3.4.1): ``k`` independent sub-nets within the budget; keep the best.
- evolution (as in Once-for-All): a random first generation of ``population``; then
  each generation keeps the best ``parents`` and breeds the rest, half by mutation
  (each stage re-drawn with ``mutate_prob``) and half by crossover of two parents.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from posenas.errors import PosenasError
from posenas.search.candidates import arch_key
from posenas.spaces.vipnas import Choices, ViPNASArch, crossover_arch, mutate_arch, sample_arch, smallest_arch

Evaluate = Callable[[ViPNASArch, str, int], dict[str, Any]]
MAX_TRIES = 2000


def check_budget(space_name: str, choices: Choices, fits: Callable[[ViPNASArch], bool]) -> None:
    if not fits(smallest_arch(space_name, choices)):
        raise PosenasError("config.search: no sub-net fits the budget (not even the smallest); raise "
                           "max_gmacs / max_latency_ms or restrict the choices to smaller values")


def _feasible(draw: Callable[[], ViPNASArch], fits: Callable[[ViPNASArch], bool], seen: set[str],
              space_name: str, choices: Choices) -> ViPNASArch:
    for _ in range(MAX_TRIES):
        arch = draw()
        if arch_key(arch) not in seen and fits(arch):
            return arch
    raise PosenasError(f"config.search: found no new sub-net within the budget in {MAX_TRIES} draws")


def random_search(space_name: str, choices: Choices, k: int, seed: int, fits, evaluate: Evaluate) -> list[dict]:
    check_budget(space_name, choices, fits)
    rng = random.Random(f"random:{seed}")
    seen: set[str] = set()
    records = []
    for i in range(k):
        arch = _feasible(lambda: sample_arch(space_name, choices, rng), fits, seen, space_name, choices)
        seen.add(arch_key(arch))
        records.append(evaluate(arch, "random", i))
    return records


def evolution_search(space_name: str, choices: Choices, k: int, seed: int, fits, evaluate: Evaluate,
                     population: int, parents: int, mutate_prob: float) -> list[dict]:
    check_budget(space_name, choices, fits)
    rng = random.Random(f"evolution:{seed}")
    seen: set[str] = set()
    records: list[dict] = []

    def add(arch: ViPNASArch) -> None:
        seen.add(arch_key(arch))
        records.append(evaluate(arch, "evolution", len(records)))

    while len(records) < min(k, population):
        add(_feasible(lambda: sample_arch(space_name, choices, rng), fits, seen, space_name, choices))
    pool = list(records)
    while len(records) < k:
        best = sorted(pool, key=lambda r: -r["score"])[:parents]
        archs = [r["_arch"] for r in best]
        children = []
        for j in range(min(population - parents, k - len(records))):
            if j % 2 == 0 or len(archs) < 2:
                draw = lambda: mutate_arch(rng.choice(archs), choices, rng, mutate_prob)  # noqa: E731
            else:
                draw = lambda: crossover_arch(*rng.sample(archs, 2), rng)  # noqa: E731
            child = _feasible(draw, fits, seen, space_name, choices)
            add(child)
            children.append(records[-1])
        pool = best + children
    return records
