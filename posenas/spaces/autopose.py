"""AutoPose's search space (Gong et al., 2020, Sec. 3.1 and 4.2): multi-scale modules of
branches at 4x/8x/16x/32x, each with two individual cells and an aggregation cell.

What the paper fixes:

- stem: two 3x3 stride-2 convs and a residual bottleneck to the 4x scale, then further 3x3
  stride-2 convs giving the 8x, 16x, 32x inputs;
- B = 4 branches of 16/32/64/128 channels (``channels``); 3 stages of 2 modules; the derived
  network doubles the searched channels (``width_mult`` 2);
- Eq. 1: in module m an active branch (beta = 1) runs C_M . C_I2 . C_I1 on its input; an
  inactive one passes its input on (a skip connection; its cells do not run);
- Eq. 2: an individual cell of K_I = 4 nodes, node i the sum over every earlier node j
  (node 0 is the cell's input) of the op on edge (j, i) — :class:`posenas.spaces.cells.Cell`;
- Eq. 3: an aggregation cell of K_M = 2 nodes, node i the sum of the ops on its edges from
  the earlier nodes and of one op per branch b on H_I2 of b, resampled to this cell's scale;
- a cell's output: its nodes concatenated, then a 1x1 conv;
- ops: 1x1, 3x3, 5x5 conv, 3x3 average and max pooling, skip; one alpha per cell type
  (individual, aggregation) shared by every cell of that type (all stages and branches);
- head: every branch upsampled (nearest) to 4x, concatenated, a 3x3 conv to the joints;
- the derived network keeps every edge of every node, with the argmax op.

Where the paper is silent (our choices):

- a conv op is conv-BN-ReLU; a cell's 1x1 output conv is conv-BN-ReLU (as PNFS's cells);
- the aggregation cell's first node has no intra-cell edge (it is the sum of the branch
  inputs' ops); node i > 1 also has edges from nodes 1..i-1;
- the input of branch b in an aggregation cell is H_I2 of b when b is active in the module and
  b's module input when it is not (as the paper's Fig. 3 example reads);
- resampling to the aggregation cell's scale, as HRNet fuses branches: a finer branch goes
  through k stride-2 3x3 conv-BN (ReLU between them) to come down 2^k, a coarser one through a
  1x1 conv-BN then nearest up-sampling; each (source, target) pair has its own;
- the stem: 3x3 stride-2 convs to ``stem_channels`` (64, as HRNet), then a bottleneck of
  middle width stem_channels / 4 to the first branch's channels, then 3x3 stride-2
  conv-BN-ReLU from each branch to the next;
- one branch vector per module (``branches``: modules x B bits; the controller emits them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from posenas.errors import PosenasError
from posenas.models.blocks import Bottleneck, ConvBNAct, Resample
from posenas.spaces.archfields import check_list, check_object, check_str_choice, is_int
from posenas.spaces.cells import Cell, MixedOp, edges

OPS = ("conv_1x1", "conv_3x3", "conv_5x5", "avg_pool_3x3", "max_pool_3x3", "skip")
MAX_BRANCHES = 4
#: How a module's branches meet: the searched aggregation cell (Eq. 3), or the paper's ablation
#: (Table 4, "N/A"): the resampled branches concatenated and reduced by a 1x1 conv-BN-ReLU.
AGGREGATIONS = ("cell", "concat")
_KEYS = ("space", "channels", "width_mult", "stem_channels", "stages", "modules_per_stage", "individual_nodes",
         "aggregation_nodes", "aggregation", "ops", "branches", "individual_cell", "aggregation_cell")


def aggregation_edges(nodes: int, branches: int) -> list[tuple[str, int, int]]:
    """The edges of an aggregation cell, in alpha's row order: for node i = 1..K_M, first one
    ("input", b, i) per branch b, then one ("node", j, i) per earlier node j = 1..i-1."""
    out: list[tuple[str, int, int]] = []
    for i in range(1, nodes + 1):
        out += [("input", b, i) for b in range(branches)]
        out += [("node", j, i) for j in range(1, i)]
    return out


@dataclass(frozen=True)
class AutoPoseSpace:
    """The searched network's shape: what a supernet is built from and every arch of it shares."""

    channels: tuple[int, ...] = (16, 32, 64, 128)
    width_mult: int = 1
    stem_channels: int = 64
    stages: int = 3
    modules_per_stage: int = 2
    individual_nodes: int = 4
    aggregation_nodes: int = 2
    ops: tuple[str, ...] = OPS
    aggregation: str = "cell"

    @property
    def branches(self) -> int:
        return len(self.channels)

    @property
    def modules(self) -> int:
        return self.stages * self.modules_per_stage

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels of each branch in the built network (``channels`` x ``width_mult``)."""
        return tuple(c * self.width_mult for c in self.channels)

    def individual_edges(self) -> list[tuple[int, int]]:
        return edges(self.individual_nodes)

    def aggregation_edges(self) -> list[tuple[str, int, int]]:
        """The searched edges of the aggregation cell (none under ``concat``)."""
        return aggregation_edges(self.aggregation_nodes, self.branches) if self.aggregation == "cell" else []

    def to_json(self) -> dict:
        return {"channels": list(self.channels), "width_mult": self.width_mult, "stem_channels": self.stem_channels,
                "stages": self.stages, "modules_per_stage": self.modules_per_stage,
                "individual_nodes": self.individual_nodes, "aggregation_nodes": self.aggregation_nodes,
                "aggregation": self.aggregation, "ops": list(self.ops)}

    @classmethod
    def from_json(cls, data: dict, where: str) -> "AutoPoseSpace":
        """The space fields of ``data`` (other keys are left to the caller), validated."""

        def integer(key: str, default: int, lo: int, hi: int) -> int:
            value = data.get(key, default)
            if not is_int(value) or not lo <= value <= hi:
                raise PosenasError(f"{where}.{key}: expected an integer in [{lo}, {hi}], got {value!r}")
            return int(value)

        raw = check_list(data.get("channels", list(cls.channels)), f"{where}.channels", "channels per branch")
        if not 1 <= len(raw) <= MAX_BRANCHES:
            raise PosenasError(f"{where}.channels: expected 1 to {MAX_BRANCHES} branches (4x to "
                               f"{4 * 2 ** (MAX_BRANCHES - 1)}x), got {len(raw)}")
        for b, c in enumerate(raw):
            if not is_int(c) or not 1 <= c <= 1024:
                raise PosenasError(f"{where}.channels[{b}]: expected an integer in [1, 1024], got {c!r}")
        ops = check_list(data.get("ops", list(cls.ops)), f"{where}.ops", "operation names")
        if not ops or len(set(ops)) != len(ops):
            raise PosenasError(f"{where}.ops: expected distinct operation names; allowed: {', '.join(OPS)}")
        for i, op in enumerate(ops):
            check_str_choice(op, f"{where}.ops[{i}]", OPS)
        return cls(channels=tuple(int(c) for c in raw), width_mult=integer("width_mult", 1, 1, 8),
                   stem_channels=integer("stem_channels", cls.stem_channels, 1, 1024),
                   stages=integer("stages", cls.stages, 1, 8),
                   modules_per_stage=integer("modules_per_stage", cls.modules_per_stage, 1, 8),
                   individual_nodes=integer("individual_nodes", cls.individual_nodes, 1, 8),
                   aggregation_nodes=integer("aggregation_nodes", cls.aggregation_nodes, 1, 8), ops=tuple(ops),
                   aggregation=check_str_choice(data.get("aggregation", cls.aggregation), f"{where}.aggregation",
                                                AGGREGATIONS))


@dataclass(frozen=True)
class AutoPoseArch:
    """A derived AutoPose network: the space, one branch vector per module, and the argmax op
    of every edge of the individual cell and of the aggregation cell (shared by all cells of
    each type). ``aggregation_cell`` lists, per node, its branch-input ops then its node ops."""

    net: AutoPoseSpace
    branches: tuple[tuple[int, ...], ...]
    individual_cell: tuple[str, ...]
    aggregation_cell: tuple[str, ...]
    space: ClassVar[str] = "autopose"

    def __post_init__(self) -> None:
        AutoPoseArch.from_json(self.to_json())

    def to_json(self) -> dict:
        inputs, nodes = _aggregation_json(self.net, self.aggregation_cell)
        return {"space": self.space, **self.net.to_json(), "branches": [list(b) for b in self.branches],
                "individual_cell": list(self.individual_cell),
                "aggregation_cell": {"inputs": inputs, "nodes": nodes}}

    @classmethod
    def from_json(cls, data: Any, where: str = "arch") -> "AutoPoseArch":
        data = check_object(data, where, _KEYS, required=("space", "branches", "individual_cell", "aggregation_cell"))
        if data["space"] != cls.space:
            raise PosenasError(f"{where}.space: expected {cls.space!r}, got {data['space']!r}")
        net = AutoPoseSpace.from_json(data, where)
        rows = check_list(data["branches"], f"{where}.branches", f"one {net.branches}-bit vector per module",
                          net.modules)
        branches = []
        for m, row in enumerate(rows):
            bits = check_list(row, f"{where}.branches[{m}]", "0/1 bits", net.branches)
            for b, bit in enumerate(bits):
                if isinstance(bit, bool) or not is_int(bit) or int(bit) not in (0, 1):
                    raise PosenasError(f"{where}.branches[{m}][{b}]: {bit!r} not allowed; allowed: 0, 1")
            branches.append(tuple(int(bit) for bit in bits))
        ind = check_list(data["individual_cell"], f"{where}.individual_cell", "one op per edge",
                         len(net.individual_edges()))
        for e, op in enumerate(ind):
            check_str_choice(op, f"{where}.individual_cell[{e}]", net.ops)
        agg = _aggregation_from_json(net, data["aggregation_cell"], f"{where}.aggregation_cell")
        arch = object.__new__(cls)
        for key, value in (("net", net), ("branches", tuple(branches)), ("individual_cell", tuple(ind)),
                           ("aggregation_cell", agg)):
            object.__setattr__(arch, key, value)
        return arch


def _aggregation_json(net: AutoPoseSpace, ops: Sequence[str]) -> tuple[list, list]:
    """(per node: its op per branch input; per node: its ops from earlier nodes) from the flat order."""
    if net.aggregation == "concat":
        return [], []
    inputs: list[list[str]] = [[] for _ in range(net.aggregation_nodes)]
    nodes: list[list[str]] = [[] for _ in range(net.aggregation_nodes)]
    for (kind, _, i), op in zip(net.aggregation_edges(), ops):
        (inputs if kind == "input" else nodes)[i - 1].append(op)
    return inputs, nodes


def _aggregation_from_json(net: AutoPoseSpace, value: Any, where: str) -> tuple[str, ...]:
    data = check_object(value, where, ("inputs", "nodes"), required=("inputs", "nodes"))
    if net.aggregation == "concat":  # nothing searched: both lists empty
        check_list(data["inputs"], f"{where}.inputs", "nothing (aggregation concat)", 0)
        check_list(data["nodes"], f"{where}.nodes", "nothing (aggregation concat)", 0)
        return ()
    inputs = check_list(data["inputs"], f"{where}.inputs", "per node, one op per branch", net.aggregation_nodes)
    nodes = check_list(data["nodes"], f"{where}.nodes", "per node, one op per earlier node", net.aggregation_nodes)
    flat = []
    for i in range(1, net.aggregation_nodes + 1):
        row = check_list(inputs[i - 1], f"{where}.inputs[{i - 1}]", "ops, one per branch", net.branches)
        inner = check_list(nodes[i - 1], f"{where}.nodes[{i - 1}]", "ops, one per earlier node", i - 1)
        for field, ops in ((f"{where}.inputs[{i - 1}]", row), (f"{where}.nodes[{i - 1}]", inner)):
            for k, op in enumerate(ops):
                check_str_choice(op, f"{field}[{k}]", net.ops)
        flat += [*row, *inner]
    return tuple(flat)


# ---------------------------------------------------------------- modules


class Stem(nn.Module):
    """Two 3x3 stride-2 conv-BN-ReLU, a bottleneck to the 4x branch, then one 3x3 stride-2
    conv-BN-ReLU from each branch to the next: the module inputs at every scale."""

    def __init__(self, stem_channels: int, widths: Sequence[int]):
        super().__init__()
        self.conv1 = ConvBNAct(3, stem_channels, 3, 2)
        self.conv2 = ConvBNAct(stem_channels, stem_channels, 3, 2)
        self.bottleneck = Bottleneck(stem_channels, widths[0], mid_channels=max(1, stem_channels // 4))
        self.down = nn.ModuleList(ConvBNAct(a, b, 3, 2) for a, b in zip(widths, widths[1:]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = [self.bottleneck(self.conv2(self.conv1(x)))]
        for down in self.down:
            out.append(down(out[-1]))
        return out


class AggregationCell(nn.Module):
    """Eq. 3 at branch ``target``: node i = sum_b O_b^i(resampled H_I2 of b) + sum_{j<i} O^(i,j)(x^(j)),
    the nodes concatenated and reduced by a 1x1 conv-BN-ReLU. ``keep``: per edge (in
    :func:`aggregation_edges` order), the op indices to build (None: all)."""

    def __init__(self, widths: Sequence[int], target: int, nodes: int, ops: Sequence[str],
                 keep: Sequence[Sequence[int]] | None = None):
        super().__init__()
        c = widths[target]
        self.target, self.nodes, self.edges = target, nodes, aggregation_edges(nodes, len(widths))
        self.resample = nn.ModuleList(Resample(widths, b, target) for b in range(len(widths)))
        self.mixed = nn.ModuleList(MixedOp(c, ops, None if keep is None else keep[e]) for e in range(len(self.edges)))
        self.reduce = ConvBNAct(nodes * c, c, 1)

    def forward(self, features: Sequence[torch.Tensor], weights: torch.Tensor | None) -> torch.Tensor:
        """``features``: one tensor per branch (H_I2, or the module input of an inactive branch);
        ``weights``: (edges x ops), None in a derived cell."""
        size = tuple(features[self.target].shape[-2:])
        inputs = [r(f, size) for r, f in zip(self.resample, features)]
        nodes: dict[int, torch.Tensor] = {}
        for e, (kind, src, i) in enumerate(self.edges):  # node-major: node i's edges are consecutive
            y = self.mixed[e](inputs[src] if kind == "input" else nodes[src], None if weights is None else weights[e])
            nodes[i] = y if i not in nodes else nodes[i] + y
        return self.reduce(torch.cat([nodes[i] for i in range(1, self.nodes + 1)], dim=1))


class ConcatAggregation(nn.Module):
    """The ablation of the aggregation cell: every branch resampled to branch ``target``,
    concatenated, reduced by a 1x1 conv-BN-ReLU (no searched ops)."""

    def __init__(self, widths: Sequence[int], target: int):
        super().__init__()
        self.target = target
        self.resample = nn.ModuleList(Resample(widths, b, target) for b in range(len(widths)))
        self.reduce = ConvBNAct(widths[target] * len(widths), widths[target], 1)

    def forward(self, features: Sequence[torch.Tensor], weights: torch.Tensor | None = None) -> torch.Tensor:
        size = tuple(features[self.target].shape[-2:])
        return self.reduce(torch.cat([r(f, size) for r, f in zip(self.resample, features)], dim=1))


class MultiScaleModule(nn.Module):
    """Eq. 1 for every branch: the active ones run C_I1, C_I2 and then C_M over all branches'
    C_I2 outputs (module inputs for inactive branches); an inactive branch passes its input on.
    ``built``: the branches whose cells exist (all in a supernet, the active ones when derived)."""

    def __init__(self, net: AutoPoseSpace, built: Sequence[int], keep_individual=None, keep_aggregation=None):
        super().__init__()
        widths = net.widths
        self.built = tuple(built)
        self.individual1 = nn.ModuleDict({str(b): Cell(widths[b], net.individual_nodes, net.ops, keep_individual)
                                          for b in self.built})
        self.individual2 = nn.ModuleDict({str(b): Cell(widths[b], net.individual_nodes, net.ops, keep_individual)
                                          for b in self.built})
        self.aggregation = nn.ModuleDict({
            str(b): (AggregationCell(widths, b, net.aggregation_nodes, net.ops, keep_aggregation)
                     if net.aggregation == "cell" else ConcatAggregation(widths, b)) for b in self.built})

    def forward(self, xs: Sequence[torch.Tensor], active: Sequence[int], w_individual: torch.Tensor | None,
                w_aggregation: torch.Tensor | None) -> list[torch.Tensor]:
        if not active:
            return list(xs)
        h = list(xs)
        for b in active:
            h[b] = self.individual2[str(b)](self.individual1[str(b)](xs[b], w_individual), w_individual)
        out = list(xs)
        for b in active:
            out[b] = self.aggregation[str(b)](h, w_aggregation)
        return out


class Head(nn.Module):
    """Every branch up-sampled (nearest) to the 4x scale, concatenated, a 3x3 conv to the joints."""

    def __init__(self, widths: Sequence[int], num_joints: int):
        super().__init__()
        self.conv = nn.Conv2d(sum(widths), num_joints, 3, padding=1)

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        size = xs[0].shape[-2:]
        return self.conv(torch.cat([xs[0], *(F.interpolate(x, size=size, mode="nearest") for x in xs[1:])], dim=1))


class AutoPoseNet(nn.Module):
    """The derived AutoPose network: a plain module (fixed branches, one op per edge)."""

    def __init__(self, arch: AutoPoseArch, num_joints: int):
        super().__init__()
        net = arch.net
        self.arch, self.num_joints = arch, num_joints
        keep_i = [[net.ops.index(op)] for op in arch.individual_cell]
        keep_a = [[net.ops.index(op)] for op in arch.aggregation_cell]
        self.active = [tuple(b for b, bit in enumerate(row) if bit) for row in arch.branches]
        self.stem = Stem(net.stem_channels, net.widths)
        self.modules_ = nn.ModuleList(MultiScaleModule(net, active, keep_i, keep_a) for active in self.active)
        self.head = Head(net.widths, num_joints)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = self.stem(x)
        for module, active in zip(self.modules_, self.active):
            xs = module(xs, active, None, None)
        return self.head(xs)


class AutoPoseSupernet(nn.Module):
    """Every cell of every branch with all ops; the op weights come from alpha (one matrix per
    cell type) through the Gumbel-softmax at temperature ``tau`` in training (one draw per
    forward and cell type, shared by all cells of the type) and softmax(alpha / tau) in eval;
    the active branches are set per forward by :meth:`set_branches` (the controller's draw)."""

    def __init__(self, net: AutoPoseSpace, num_joints: int, tau: float = 1.0):
        super().__init__()
        self.net, self.num_joints, self.tau = net, num_joints, tau
        self.stem = Stem(net.stem_channels, net.widths)
        self.modules_ = nn.ModuleList(MultiScaleModule(net, range(net.branches)) for _ in range(net.modules))
        self.head = Head(net.widths, num_joints)
        self.alpha_individual = nn.Parameter(1e-3 * torch.randn(len(net.individual_edges()), len(net.ops)))
        self.alpha_aggregation = nn.Parameter(1e-3 * torch.randn(len(net.aggregation_edges()), len(net.ops)))
        self.branches: tuple[tuple[int, ...], ...] = tuple((1,) * net.branches for _ in range(net.modules))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha_individual] + ([self.alpha_aggregation] if self.alpha_aggregation.numel() else [])

    def set_branches(self, branches: Sequence[Sequence[int]]) -> None:
        """The branch vectors of the next forwards (modules x B bits)."""
        rows = [tuple(int(bit) for bit in row) for row in branches]
        if len(rows) != self.net.modules or any(len(r) != self.net.branches or set(r) - {0, 1} for r in rows):
            raise PosenasError(f"branch vectors: expected {self.net.modules} rows of {self.net.branches} bits, "
                               f"got {branches!r}")
        self.branches = tuple(rows)

    def op_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(individual, aggregation) op weights of this forward (aggregation None: nothing searched there)."""
        weigh = ((lambda a: F.gumbel_softmax(a, tau=self.tau, dim=-1)) if self.training
                 else (lambda a: torch.softmax(a / self.tau, dim=-1)))
        return (weigh(self.alpha_individual),
                weigh(self.alpha_aggregation) if self.alpha_aggregation.numel() else None)

    def derive(self) -> AutoPoseArch:
        """The argmax op of every edge, with the current branch vectors."""
        ops = self.net.ops
        return AutoPoseArch(self.net, self.branches,
                            tuple(ops[int(k)] for k in self.alpha_individual.argmax(-1)),
                            tuple(ops[int(k)] for k in self.alpha_aggregation.argmax(-1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_i, w_a = self.op_weights()
        xs = self.stem(x)
        for module, row in zip(self.modules_, self.branches):
            xs = module(xs, [b for b, bit in enumerate(row) if bit], w_i, w_a)
        return self.head(xs)


def derived_state_dict(supernet: AutoPoseSupernet, arch: AutoPoseArch, num_joints: int) -> dict[str, torch.Tensor]:
    """The derived network's weights taken from the supernet (the same names: its modules are
    the supernet's with only the kept ops and active branches)."""
    own = supernet.state_dict()
    wanted = AutoPoseNet(arch, num_joints).state_dict()
    if arch.net != supernet.net or num_joints != supernet.num_joints:
        raise PosenasError(f"cannot inherit weights: the arch is not a sub-net of this supernet (its space "
                           f"{arch.net.to_json()} and {num_joints} joints; the supernet's {supernet.net.to_json()} "
                           f"and {supernet.num_joints})")
    return {k: own[k].detach().clone() for k in wanted}


def build_autopose(arch: AutoPoseArch, num_joints: int) -> AutoPoseNet:
    return AutoPoseNet(arch, num_joints)
