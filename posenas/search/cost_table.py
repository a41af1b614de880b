"""Cost lookup tables for hardware-aware differentiable search (EfficientPose Eq. 4-5, as
FBNet and FasterSeg build them).

A table holds the cost of every candidate op at every position of an ``efficientpose``
setting, each op measured on its own at the input shape it has inside the network, plus
the cost of the parts every architecture shares (stem, head). Three kinds:

- ``macs``: GMACs at batch 1 (our MACs convention, :mod:`posenas.cost`);
- ``cpu_latency``: ms per forward on this CPU (PyTorch eager, ``threads`` threads, ``batch``;
  with ``cold_cache`` each timed run starts after :data:`FLUSH_BYTES` are written);
- ``gpu_latency``: the same on the CUDA device (only where one is present).

Latencies are the median of ``runs`` timed rounds, each of which times every module once in
a shuffled order (``schedule: interleaved``), so a change of load on a shared machine moves
all modules alike and their ratios hold.

A latency table may be *calibrated* (``calibration_archs`` K > 0 in the header): an op timed
on its own costs a different amount than inside a network (caches, allocator and dispatch
state differ; measured in docs/benchmarks.md), so right after the ops, K random
architectures (their own seeded draw, skip-heavy to op-dense) are timed whole and
``network ≈ scale × (table sum) + call_overhead × (timed calls)`` is fitted by least squares
(:class:`Calibration`; a table times one call per non-skip op, one each for the stem and the
head). The correction is affine per op, so the DNAS's expected cost stays linear in the op
probabilities; :func:`load_cost_table` and :func:`cached_cost_table` return the corrected
table (``calibrated=False``: the ops as measured).

The file is JSON: ``{"header": {kind, unit, setting, head, input_size, batch, threads,
device, runtime, runtime_version, num_joints, calibration_archs}, "fixed": cost, "ops": [{op: cost}
per position], "calibration": {scale, call_overhead, points}}`` (``fixed`` and ``ops`` as
measured; ``calibration`` only in a calibrated table).
:func:`cached_cost_table` reuses a table whose header matches exactly and measures a new
one otherwise; latencies are machine facts, so a table from another machine is never reused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from posenas.cost import module_macs
from posenas.display import warn
from posenas.errors import PosenasError
from posenas.jsonio import read_json, write_json
from posenas.spaces.efficientpose import (SETTINGS, SKIP, CostTable, EfficientPoseArch, HeadArch, Stem, derive,
                                          make_head, make_op)

KINDS = ("macs", "cpu_latency", "gpu_latency")
UNITS = {"macs": "GMACs", "cpu_latency": "ms", "gpu_latency": "ms"}


def device_name(device: torch.device) -> str:
    """What the latencies were measured on: the GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: Bytes written between timed runs of an op when a CPU table is measured with cold caches:
#: more than this machine's per-core L2, so each run starts with the op's weights and input
#: evicted, as they are inside a network after the layers before it.
FLUSH_BYTES = 8 << 20


#: The fewest calibration architectures: two coefficients need a third point to leave a residual.
MIN_CALIBRATION_ARCHS = 3


def check_calibration_archs(value: Any, where: str) -> int:
    """0 (no calibration) or at least :data:`MIN_CALIBRATION_ARCHS`, else a one-line error naming ``where``."""
    if not (isinstance(value, int) and not isinstance(value, bool)) or (0 < value < MIN_CALIBRATION_ARCHS) or value < 0:
        raise PosenasError(f"{where}: expected 0 (no calibration) or an integer >= {MIN_CALIBRATION_ARCHS}, "
                           f"got {value!r}")
    return value


def table_header(kind: str, setting: str, head: HeadArch, input_size: tuple[int, int], num_joints: int,
                 threads: int = 1, batch: int = 1, cold_cache: bool = False, runs: int = 20,
                 warmup: int = 5, calibration_archs: int = 0) -> dict[str, Any]:
    """Everything a table's numbers depend on (so a cached table is reused only when they all match)."""
    if kind not in KINDS:
        raise PosenasError(f"cost kind {kind!r} not allowed; allowed: {', '.join(KINDS)}")
    if kind == "gpu_latency" and not torch.cuda.is_available():
        raise PosenasError("cost kind gpu_latency needs a CUDA device, and this machine has none")
    header: dict[str, Any] = {"kind": kind, "unit": UNITS[kind], "setting": setting, "head": head.to_json(),
                              "input_size": list(input_size), "num_joints": num_joints}
    if kind != "macs":
        device = torch.device("cuda" if kind == "gpu_latency" else "cpu")
        header.update(batch=batch, threads=threads, device=device_name(device), runtime="torch",
                      runtime_version=torch.__version__, runs=runs, warmup=warmup)
        if kind == "cpu_latency":
            header["cold_cache"] = cold_cache
            if cold_cache:
                header["flush_bytes"] = FLUSH_BYTES
        header["calibration_archs"] = check_calibration_archs(calibration_archs, "calibration_archs")
        header["schedule"] = "interleaved"  # every round times every module once (_time_schedule)
    return header


@dataclass(frozen=True)
class Calibration:
    """``network ≈ scale × (table sum) + call_overhead × (timed calls)``, fitted on whole networks.

    Why: ops timed alone are biased against the same ops inside a network, and the bias is
    systematic (docs/benchmarks.md): partly in proportion to an op's time (its caches are in
    another state), partly a fixed amount per timed call (what an isolated call pays or saves
    once, e.g. the aftermath of the cache flush). A table has one timed call per non-skip op
    plus two for its fixed parts (stem, head), so the corrected cost of an op is ``scale ×
    measured + call_overhead`` (skip stays 0) and of the fixed parts ``scale × measured + 2 ×
    call_overhead``: affine per op, as the gradient of Eq. 4-5 needs."""

    scale: float
    call_overhead: float  # ms per timed call (negative: an op alone pays more than inside a network)
    #: (table sum as measured, timed calls, measured whole-network latency) per calibration arch
    points: tuple[tuple[float, int, float], ...] = ()

    def apply(self, table: CostTable) -> CostTable:
        """The corrected table: what :meth:`CostTable.predict` and the DNAS's cost term read."""
        ops = tuple({op: 0.0 if op == SKIP else self.scale * cost + self.call_overhead for op, cost in costs.items()}
                    for costs in table.ops)
        return CostTable(self.scale * table.fixed + FIXED_CALLS * self.call_overhead, ops)

    def predict(self, raw_sum: float, calls: int) -> float:
        return self.scale * raw_sum + self.call_overhead * calls

    def to_json(self) -> dict[str, Any]:
        return {"scale": self.scale, "call_overhead": self.call_overhead, "points": [list(p) for p in self.points]}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "Calibration":
        """A calibration block read back; a malformed field fails naming ``where`` and the field."""
        if not isinstance(data, dict) or set(data) != {"scale", "call_overhead", "points"}:
            raise PosenasError(f"{where}: expected an object with the keys scale, call_overhead, points")
        for name in ("scale", "call_overhead"):
            v = data[name]
            if not _is_number(v) or (name == "scale" and not v > 0):
                raise PosenasError(f"{where}.{name}: expected a {'positive ' if name == 'scale' else ''}finite number, "
                                   f"got {v!r}")
        points = data["points"]
        if not isinstance(points, list) or not all(
                isinstance(p, list) and len(p) == 3 and all(_is_number(v) for v in p) for p in points):
            raise PosenasError(f"{where}.points: expected a list of [table sum, timed calls, measured] triples")
        return cls(float(data["scale"]), float(data["call_overhead"]),
                   tuple((float(a), int(n), float(m)) for a, n, m in points))


#: Timed calls behind a table's ``fixed`` cost: the stem and the head.
FIXED_CALLS = 2


def timed_calls(arch: EfficientPoseArch) -> int:
    """The calls a table times for ``arch``'s prediction: one per non-skip op, the stem, the head."""
    return sum(op != SKIP for op in arch.blocks) + FIXED_CALLS


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fit_calibration(points: list[tuple[float, int, float]], cheapest_call: float | None = None) -> Calibration:
    """Least squares of measured on (table sum, timed calls) over the calibration points.

    ``cheapest_call``: the table's least cost of one timed call. Where the two-term fit would
    make that call cost nothing or less, or the scale is not positive (timings too noisy to
    tell the terms apart), the scale alone is fitted instead, with a warning: a negative op
    cost would make the search prefer that op to skip."""
    if len(points) < MIN_CALIBRATION_ARCHS:
        raise PosenasError(f"calibration: {len(points)} archs; at least {MIN_CALIBRATION_ARCHS} needed")
    a = np.array([[raw, calls] for raw, calls, _ in points], dtype=np.float64)
    y = np.array([m for _, _, m in points], dtype=np.float64)
    (scale, call_overhead), *_ = np.linalg.lstsq(a, y, rcond=None)
    cheapest = scale * (cheapest_call or 0.0) + call_overhead
    if not scale > 0 or (cheapest_call is not None and not cheapest > 0):
        warn(f"latency calibration: the fit (scale {scale:.3g}, {call_overhead:+.3g} ms per call) would make the cheapest "
             f"op cost {cheapest:.3g} ms; fitting the scale alone (the timings are noisy: more runs help)")
        scale, call_overhead = float(a[:, 0] @ y / (a[:, 0] @ a[:, 0])), 0.0
    return Calibration(float(scale), float(call_overhead), tuple(points))


def cheapest_call(table: CostTable) -> float:
    """The least cost of one call a table times: a non-skip op, or the fixed parts' mean."""
    return min([table.fixed / FIXED_CALLS] + [c for costs in table.ops for op, c in costs.items() if op != SKIP])


def calibration_archs(setting: str, head: HeadArch, count: int) -> list[EfficientPoseArch]:
    """The ``count`` archs a table is calibrated on: a seeded draw of its own (benchmarks test on
    other draws), with the chance of skip where allowed spread from 0 to 0.9, so the fit sees
    op-dense and skip-heavy networks and can tell the per-call overhead from the scale."""
    rng = random.Random(f"cost-table-calibration:{setting}")
    positions = SETTINGS[setting].positions
    archs = []
    for k in range(count):
        p_skip = 0.9 * k / max(1, count - 1)
        blocks = tuple(SKIP if pos.can_skip and rng.random() < p_skip else
                       rng.choice([op for op in pos.ops if op != SKIP]) for pos in positions)
        archs.append(EfficientPoseArch(setting, blocks, head))
    return archs


#: One module of a measuring schedule: the module, its input, and whether it is a whole network.
Item = tuple[torch.nn.Module, torch.Tensor, bool]


def _time_schedule(header: dict[str, Any], items: list[Item], progress: bool = False) -> list[float]:
    """Median ms of ``runs`` timed calls of every item, after ``warmup`` untimed rounds.

    Why interleaved: on a shared machine the speed drifts by tens of percent within seconds
    (docs/benchmarks.md), so every round calls every item once, in a fresh seeded order, and
    a drift moves all items alike: their ratios (what the table and its calibration rest on)
    stay put. Before its timed call an op is flushed (``cold_cache``) or called once untimed
    (its caches warm, as in a loop); a network is always called once untimed first, so its
    weights are where a back-to-back run has them."""
    runs, warmup = header["runs"], header["warmup"]
    if runs < 1 or warmup < 0:
        raise PosenasError(f"header.runs must be >= 1 and warmup >= 0, got {runs} and {warmup}")
    device = items[0][1].device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    flush = None
    if header.get("cold_cache"):
        buffer = torch.zeros(header["flush_bytes"] // 4)
        flush = lambda: buffer.add_(1.0)  # noqa: E731
    samples: list[list[float]] = [[] for _ in items]
    order = list(range(len(items)))
    rng = random.Random(0)
    with torch.inference_mode():
        for r in tqdm(range(warmup + runs), desc=f"{header['kind']} of {len(items)} modules, interleaved",
                      unit="round", disable=not progress):
            rng.shuffle(order)
            for j in order:
                module, x, network = items[j]
                if flush is not None and not network:
                    flush()
                else:
                    module(x)
                sync()
                start = time.perf_counter()
                module(x)
                sync()
                if r >= warmup:
                    samples[j].append((time.perf_counter() - start) * 1000.0)
    return [statistics.median(v) for v in samples]


@contextmanager
def _table_threads(header: dict[str, Any]) -> Iterator[None]:
    """The header's thread count while measuring; the caller's afterwards."""
    previous = torch.get_num_threads()
    if "threads" in header:
        torch.set_num_threads(header["threads"])
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measure_cost_table(header: dict[str, Any], progress: bool = False, probes: Sequence[torch.nn.Module] = ()
                       ) -> tuple[CostTable, Calibration | None, list[float]]:
    """Measure every op at every position and the fixed parts as ``header`` says, the
    header's ``calibration_archs`` networks (fitted into the :class:`Calibration`) and
    ``probes`` (networks measured for a check, never fitted), all in one interleaved
    schedule. Returns the table as measured, the calibration (None without), the probes' costs."""
    setting = SETTINGS[header["setting"]]
    head = HeadArch.from_json(header["head"], "header.head")
    h, w = header["input_size"]
    kind = header["kind"]
    device = torch.device("cuda" if kind == "gpu_latency" else "cpu")
    batch = header.get("batch", 1) if kind != "macs" else 1
    archs = calibration_archs(header["setting"], head, header.get("calibration_archs", 0))
    items: list[Item] = []

    def add(module: torch.nn.Module, shape: tuple[int, ...], network: bool = False) -> int:
        items.append((module.to(device).eval(), torch.randn(batch, *shape, device=device), network))
        return len(items) - 1

    with _table_threads(header), torch.random.fork_rng():  # seeded op weights and inputs, the caller's RNG untouched
        torch.manual_seed(0)
        stem = add(Stem(setting), (3, h, w))
        size = ((h + 1) // 2, (w + 1) // 2)  # after the stride-2 stem
        where: list[dict[str, int]] = []  # per position: op -> item
        for pos in setting.positions:
            where.append({op: add(make_op(op, pos), (pos.in_channels, *size)) for op in pos.ops if op != SKIP})
            if pos.stride == 2:
                size = ((size[0] + 1) // 2, (size[1] + 1) // 2)
        head_item = add(make_head(head, setting.out_channels, header["num_joints"]), (setting.out_channels, *size))
        networks = [add(derive(arch, header["num_joints"]), (3, h, w), True) for arch in archs]
        checks = [add(model, (3, h, w), True) for model in probes]
        if kind == "macs":
            costs = [module_macs(module, x) / 1e9 for module, x, _ in items]
        else:
            costs = _time_schedule(header, items, progress)
    table = CostTable(costs[stem] + costs[head_item], tuple(
        {op: costs[ops[op]] if op in ops else 0.0 for op in pos.ops} for pos, ops in zip(setting.positions, where)))
    calibration = fit_calibration([(table.predict(arch), timed_calls(arch), costs[j]) for arch, j in
                                   zip(archs, networks)], cheapest_call(table)) if archs else None
    return table, calibration, [costs[j] for j in checks]


def build_cost_table(header: dict[str, Any], progress: bool = False) -> CostTable:
    """Every op at every position and the fixed parts, as measured (no calibration)."""
    return measure_cost_table({**header, "calibration_archs": 0} if "calibration_archs" in header else header,
                              progress)[0]


def save_cost_table(path: str | os.PathLike, header: dict[str, Any], table: CostTable,
                    calibration: Calibration | None = None) -> None:
    """Write ``table`` as measured, with its calibration (a calibrated header needs one)."""
    if bool(header.get("calibration_archs")) != (calibration is not None):
        raise ValueError("save_cost_table: a calibration goes with a header whose calibration_archs > 0, and only then")
    data: dict[str, Any] = {"header": header, "fixed": table.fixed, "ops": list(table.ops)}
    if calibration is not None:
        data["calibration"] = calibration.to_json()
    write_json(path, data, indent=1)


def read_cost_table(path: str | os.PathLike) -> tuple[dict[str, Any], CostTable, Calibration | None]:
    """A table file's header, ops as measured and calibration; a file that is not one fails naming
    the file and the field."""
    data = read_json(path)
    where = os.fspath(path)
    if not isinstance(data, dict) or not {"header", "fixed", "ops"} <= set(data):
        raise PosenasError(f"{where}: not a cost table (expected the keys header, fixed, ops)")
    header = data["header"]
    setting = SETTINGS.get(header.get("setting")) if isinstance(header, dict) else None
    if setting is None:
        raise PosenasError(f"{where}: header.setting: expected one of {', '.join(SETTINGS)}")
    ops = data["ops"]
    if not isinstance(ops, list) or len(ops) != len(setting.positions):
        raise PosenasError(f"{where}: ops: expected {len(setting.positions)} positions")
    for pos, costs in zip(setting.positions, ops):
        if not isinstance(costs, dict) or set(costs) != set(pos.ops) or not all(
                isinstance(v, (int, float)) and v >= 0 for v in costs.values()):
            raise PosenasError(f"{where}: ops[{pos.index}]: expected a non-negative cost for each of {', '.join(pos.ops)}")
    if not isinstance(data["fixed"], (int, float)):
        raise PosenasError(f"{where}: fixed: expected a number")
    count = check_calibration_archs(header.get("calibration_archs", 0), f"{where}: header.calibration_archs")
    calibration = None
    if count:
        if "calibration" not in data:
            raise PosenasError(f"{where}: calibration: missing (header.calibration_archs is {count})")
        calibration = Calibration.from_json(data["calibration"], f"{where}: calibration")
        if len(calibration.points) != count:
            raise PosenasError(f"{where}: calibration.points: expected {count} (header.calibration_archs), "
                               f"got {len(calibration.points)}")
    elif "calibration" in data:
        raise PosenasError(f"{where}: calibration: present, but header.calibration_archs is 0")
    table = CostTable(float(data["fixed"]), tuple({k: float(v) for k, v in c.items()} for c in ops))
    return header, table, calibration


def load_cost_table(path: str | os.PathLike, calibrated: bool = True) -> tuple[dict[str, Any], CostTable]:
    """A table file's header and costs: corrected by its calibration, if it has one and
    ``calibrated``; as measured otherwise."""
    header, table, calibration = read_cost_table(path)
    return header, calibration.apply(table) if calibration is not None and calibrated else table


def cache_path(cache_dir: str | os.PathLike, header: dict[str, Any]) -> Path:
    """Where :func:`cached_cost_table` keeps the table of ``header`` (named by a hash of all of it)."""
    key = hashlib.sha1(json.dumps(header, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{header['kind']}-{header['setting']}-{key}.json"


def cached_cost_table(cache_dir: str | os.PathLike, header: dict[str, Any],
                      progress: bool = False) -> tuple[Path, CostTable]:
    """The (calibrated, where the header asks) table for ``header`` from ``cache_dir``, measured
    and written there if absent."""
    path = cache_path(cache_dir, header)
    if path.exists():
        saved, table = load_cost_table(path)
        if saved == header:
            return path, table
    table, calibration, _ = measure_cost_table(header, progress=progress)
    save_cost_table(path, header, table, calibration)
    return path, calibration.apply(table) if calibration is not None else table
