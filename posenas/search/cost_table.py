"""Cost lookup tables for hardware-aware differentiable search (EfficientPose Eq. 4-5, as
FBNet and FasterSeg build them).

A table holds the cost of every candidate op at every position of an ``efficientpose``
setting, each op measured on its own at the input shape it has inside the network, plus
the cost of the parts every architecture shares (stem, head). Three kinds:

- ``macs``: GMACs at batch 1 (our MACs convention, :mod:`posenas.cost`);
- ``cpu_latency``: ms per forward on this CPU (PyTorch eager, ``threads`` threads, ``batch``;
  with ``cold_cache`` each timed run starts after :data:`FLUSH_BYTES` are written);
- ``gpu_latency``: the same on the CUDA device (only where one is present).

The file is JSON: ``{"header": {kind, unit, setting, head, input_size, batch, threads,
device, runtime, runtime_version, num_joints}, "fixed": cost, "ops": [{op: cost} per position]}``.
:func:`cached_cost_table` reuses a table whose header matches exactly and measures a new
one otherwise; latencies are machine facts, so a table from another machine is never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from posenas.cost import module_macs, time_calls
from posenas.errors import PosenasError
from posenas.jsonio import read_json, write_json
from posenas.spaces.efficientpose import SETTINGS, SKIP, CostTable, HeadArch, Stem, make_head, make_op

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


def table_header(kind: str, setting: str, head: HeadArch, input_size: tuple[int, int], num_joints: int,
                 threads: int = 1, batch: int = 1, cold_cache: bool = False, runs: int = 20,
                 warmup: int = 5) -> dict[str, Any]:
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
    return header


class _Meter:
    """The cost of one module at one input, in the header's unit."""

    def __init__(self, header: dict[str, Any]):
        self.kind, self.runs, self.warmup = header["kind"], header.get("runs", 20), header.get("warmup", 5)
        self.device = torch.device("cuda" if self.kind == "gpu_latency" else "cpu")
        self.batch = header.get("batch", 1)
        self.sync = (lambda: torch.cuda.synchronize(self.device)) if self.device.type == "cuda" else None
        self.flush = None
        if header.get("cold_cache"):
            buffer = torch.zeros(header["flush_bytes"] // 4)
            self.flush = lambda: buffer.add_(1.0)

    def __call__(self, module: torch.nn.Module, shape: tuple[int, ...]) -> float:
        x = torch.randn(self.batch if self.kind != "macs" else 1, *shape, device=self.device)
        module = module.to(self.device).eval()
        if self.kind == "macs":
            return module_macs(module, x) / 1e9
        with torch.inference_mode():
            return time_calls(module, x, self.warmup, self.runs, self.sync, before=self.flush)["median"]


def build_cost_table(header: dict[str, Any], progress: bool = False) -> CostTable:
    """Measure every op at every position (and the fixed parts) as ``header`` says."""
    setting = SETTINGS[header["setting"]]
    head = HeadArch.from_json(header["head"], "header.head")
    h, w = header["input_size"]
    meter = _Meter(header)
    previous = torch.get_num_threads()
    if "threads" in header:
        torch.set_num_threads(header["threads"])
    try:
        with torch.random.fork_rng():  # seeded op weights and inputs, the caller's RNG untouched
            torch.manual_seed(0)
            fixed = meter(Stem(setting), (3, h, w))
            size = ((h + 1) // 2, (w + 1) // 2)  # after the stride-2 stem
            ops: list[dict[str, float]] = []
            for pos in tqdm(setting.positions, desc=f"cost table ({header['kind']})", unit="position",
                            disable=not progress):
                ops.append({op: 0.0 if op == SKIP else meter(make_op(op, pos), (pos.in_channels, *size))
                            for op in pos.ops})
                if pos.stride == 2:
                    size = ((size[0] + 1) // 2, (size[1] + 1) // 2)
            fixed += meter(make_head(head, setting.out_channels, header["num_joints"]), (setting.out_channels, *size))
    finally:
        torch.set_num_threads(previous)
    return CostTable(fixed, tuple(ops))


def save_cost_table(path: str | os.PathLike, header: dict[str, Any], table: CostTable) -> None:
    write_json(path, {"header": header, "fixed": table.fixed, "ops": list(table.ops)}, indent=1)


def load_cost_table(path: str | os.PathLike) -> tuple[dict[str, Any], CostTable]:
    """Read a table; a file that is not one fails naming the file and the field."""
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
    return header, CostTable(float(data["fixed"]), tuple({k: float(v) for k, v in c.items()} for c in ops))


def cached_cost_table(cache_dir: str | os.PathLike, header: dict[str, Any],
                      progress: bool = False) -> tuple[Path, CostTable]:
    """The table for ``header`` from ``cache_dir`` (measured and written there if absent)."""
    key = hashlib.sha1(json.dumps(header, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"{header['kind']}-{header['setting']}-{key}.json"
    if path.exists():
        saved, table = load_cost_table(path)
        if saved == header:
            return path, table
    table = build_cost_table(header, progress=progress)
    save_cost_table(path, header, table)
    return path, table
