"""3M-Pose's search space (Hoang, 2021, Sec. 3.1-3.3 and Appendix A.1): a PNFS-style fabric of
rows x layers of cells for bottom-up pose, with Dynamic Ensemble Gumbel-Softmax (Dyn-EGS)
sampling, early escape layers (EELs) and Fuse-Split blocks.

What the thesis fixes:

- stem (HRNet's): two 3x3 stride-2 convs, 4 residual (bottleneck) units, a 1x1 conv to C
  channels at 1/4;
- fabric: 4 rows (1/4 ... 1/32, C, 2C, 4C, 8C channels, C = 32) x 10 layers; a cell takes up
  to three inputs from the previous layer: the finer row ("above", down-sampled), its own row
  ("parallel") and the coarser row ("below", up-sampled) — Eq. 3.7;
- the cell: H = 2 hidden nodes over three edges (Table A.1: O^0 input -> h1, O^1 input -> h2,
  O^2 h1 -> h2), the hidden nodes concatenated and reduced by a 1x1 conv (Sec. 3.2.2) —
  :class:`posenas.spaces.cells.Cell`;
- nine operations: identity, 3x3 conv, 3x3 average and max pool, residual block,
  depthwise-separable conv, conv-sigmoid * identity (CSI), zoomed conv, squeeze-and-excite;
- every cell has its own alpha (edges x ops) and beta (3 inputs); Dyn-EGS adds m_alpha (per
  edge, how many ops: 1..R_alpha, R_alpha = 2) and m_beta (per cell, how many inputs: 1..R_beta,
  R_beta = 3). The derived cell keeps the top-i ops of each edge and the top-i inputs, i from
  argmax m, so cells differ in density (Table A.1);
- EELs at layers 4 and 7 of 10, each with a Fuse-Split block (Fig. 3.2): every row 1x1-conv'd
  to C and up-sampled to 1/4, concatenated (4C), 1x1 conv to C, squeeze-and-excite; the same
  again between the previous exit's features (the skip) and these; the result is the exit's
  output features, the next exit's skip, and through Split (per row a strided 1x1 conv to the
  row's scale and width) added back to the rows. The last layer fuses the same way (no split);
- without Fuse-Split (the ablation of Table 4.2 row c) an exit reads the 1/4 row only and
  forwards nothing;
- K heatmaps + one scalar tag per joint (associative embedding) at 1/4 from each exit.

Where the thesis is silent (our choices):

- the ops: conv = conv-BN-ReLU; residual = ResNet basic block; CSI's conv is 1x1; SE reduces by
  4; the zoomed conv is bilinear down x2, 3x3 conv-BN-ReLU, bilinear up (FasterSeg); the sepconv
  is DARTS's (ReLU, depthwise 3x3, pointwise 1x1, BN);
- a cell's inputs and an edge's ops are summed with weight 1 once selected (the forward value
  of the straight-through Dyn-EGS weights), so the derived net equals the sampled sub-net;
- cross-row resampling as PNFS: finer row through a stride-2 3x3 conv-BN-ReLU, coarser row
  bilinear-up-sampled then a 1x1 conv; a neighbour that does not exist is never a candidate;
- the convs of Fuse-Split are conv-BN-ReLU; Split's strided 1x1 conv is conv-BN; each exit has
  its own 1x1 output conv to 2K channels;
- m_alpha is per edge (Table A.1 gives each of a cell's three edges its own count; the thesis'
  "|cells| x H x R_alpha" counts edges as H), m_beta per cell;
- a cell no selected path reads is pruned (Table A.1's cell 2 is "-").

Architecture JSON (``cells``: one entry per fabric position, in layer then row order —
:func:`positions` — ``null`` for a pruned cell)::

    {"space": "3m-pose", "channels": 32, "rows": 4, "layers": 10, "hidden": 2, "stem_channels": 64,
     "exits": [4, 7], "fuse_split": true,
     "cells": [{"inputs": ["same"], "ops": [["max_pool_3x3", "avg_pool_3x3"], ["skip"], ["skip"]]}, ...]}
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from posenas.errors import PosenasError
from posenas.models.blocks import Bottleneck, ConvBNAct, SqueezeExcite
from posenas.models.exits import ExitOutputs
from posenas.spaces.archfields import check_list, check_object, check_str_choice, is_int
from posenas.spaces.cells import Cell, ScaleInput, edges
from posenas.spaces.pnfs import fabric_layout

OPS = ("skip", "conv_3x3", "avg_pool_3x3", "max_pool_3x3", "residual_3x3", "sep_conv_3x3", "csi",
       "zoom_conv_3x3", "se")
INPUTS = ("finer", "same", "coarser")  # the thesis' "above", "parallel", "below"
STEM_UNITS = 4
_KEYS = ("space", "channels", "rows", "layers", "hidden", "stem_channels", "exits", "fuse_split", "cells")


@dataclass(frozen=True)
class ThreeMSpace:
    """The fabric's shape: what a supernet is built from and every arch of it shares."""

    channels: int = 32
    rows: int = 4
    layers: int = 10
    hidden: int = 2
    stem_channels: int = 64
    exits: tuple[int, ...] = (4, 7)  # early escape layers, 1-based (the last layer is always an exit)
    fuse_split: bool = True

    def to_json(self) -> dict:
        return {"channels": self.channels, "rows": self.rows, "layers": self.layers, "hidden": self.hidden,
                "stem_channels": self.stem_channels, "exits": list(self.exits), "fuse_split": self.fuse_split}

    @classmethod
    def from_json(cls, data: dict, where: str) -> "ThreeMSpace":
        def integer(key: str, default: int, lo: int, hi: int) -> int:
            value = data.get(key, default)
            if not is_int(value) or not lo <= value <= hi:
                raise PosenasError(f"{where}.{key}: expected an integer in [{lo}, {hi}], got {value!r}")
            return int(value)

        rows, layers = integer("rows", cls.rows, 1, 4), integer("layers", cls.layers, 1, 32)
        space = cls(integer("channels", cls.channels, 1, 512), rows, layers, integer("hidden", cls.hidden, 1, 4),
                    integer("stem_channels", cls.stem_channels, 1, 512), (), True)
        fuse_split = data.get("fuse_split", cls.fuse_split)
        if not isinstance(fuse_split, bool):
            raise PosenasError(f"{where}.fuse_split: expected true or false, got {fuse_split!r}")
        exits = check_list(data.get("exits", list(cls.exits)), f"{where}.exits", "layer numbers (1-based)")
        # an exit fuses every row with Fuse-Split: the rows must all exist there (layer l reaches l + 1 rows)
        lo = rows - 1 if fuse_split else 1
        if (not all(is_int(e) and lo <= e < layers for e in exits) or len(set(exits)) != len(exits)
                or list(exits) != sorted(exits)):
            raise PosenasError(f"{where}.exits: expected increasing distinct layer numbers in [{lo}, {layers - 1}] "
                               f"(the last layer {layers} is always an exit{'; Fuse-Split needs every row' if fuse_split else ''}), "
                               f"got {exits!r}")
        object.__setattr__(space, "exits", tuple(int(e) for e in exits))
        object.__setattr__(space, "fuse_split", fuse_split)
        if fuse_split and layers < rows - 1:
            raise PosenasError(f"{where}.layers: {layers} layers cannot reach the {rows} rows the final Fuse needs")
        return space

    @property
    def exit_layers(self) -> tuple[int, ...]:
        """Every exit, 1-based: the EELs then the last layer."""
        return (*self.exits, self.layers)

    def widths(self) -> tuple[int, ...]:
        return tuple(self.channels * 2**k for k in range(self.rows))

    def positions(self) -> list[tuple[int, int]]:
        """The (layer, row) cells, layer then row order: those the stem reaches and that reach an exit."""
        return positions(self)


def positions(space: ThreeMSpace) -> list[tuple[int, int]]:
    """The fabric's cells: reached from the stem (row 0) and reaching the last layer's rows the
    final exit reads (all rows with Fuse-Split, row 0 without)."""
    outputs = range(space.rows) if space.fuse_split else [0]
    return fabric_layout(space.layers, space.rows, [0], outputs)


def available_inputs(space: ThreeMSpace) -> list[tuple[bool, bool, bool]]:
    """Per position: which of (finer, same, coarser) exist in the previous layer (the stem for layer 0)."""
    pos = positions(space)
    built = set(pos)
    out = []
    for layer, k in pos:
        prev = {0} if layer == 0 else {kk for ll, kk in built if ll == layer - 1}
        out.append((k - 1 in prev, k in prev, k + 1 in prev))
    return out


class CellArch(NamedTuple):
    inputs: tuple[str, ...]  # of INPUTS
    ops: tuple[tuple[str, ...], ...]  # per edge, the ops summed


@dataclass(frozen=True)
class ThreeMArch:
    """A derived 3M-Pose network: the fabric's shape and each cell's inputs and ops (None: pruned)."""

    net: ThreeMSpace
    cells: tuple[CellArch | None, ...]
    space: ClassVar[str] = "3m-pose"
    bottom_up: ClassVar[bool] = True  # whole images, heatmaps + tags (engine/task.py)

    def __post_init__(self) -> None:
        ThreeMArch.from_json(self.to_json())

    def to_json(self) -> dict:
        return {"space": self.space, **self.net.to_json(),
                "cells": [None if c is None else {"inputs": list(c.inputs), "ops": [list(o) for o in c.ops]}
                          for c in self.cells]}

    @classmethod
    def from_json(cls, data: Any, where: str = "arch") -> "ThreeMArch":
        data = check_object(data, where, _KEYS, required=("space", "cells"))
        if data["space"] != cls.space:
            raise PosenasError(f"{where}.space: expected {cls.space!r}, got {data['space']!r}")
        net = ThreeMSpace.from_json(data, where)
        pos = positions(net)
        avail = available_inputs(net)
        raw = check_list(data["cells"], f"{where}.cells", f"one entry per fabric cell ({len(pos)})", len(pos))
        n_edges = len(edges(net.hidden))
        cells: list[CellArch | None] = []
        for i, cell in enumerate(raw):
            field = f"{where}.cells[{i}]"
            if cell is None:
                cells.append(None)
                continue
            cell = check_object(cell, field, ("inputs", "ops"), required=("inputs", "ops"))
            inputs = check_list(cell["inputs"], f"{field}.inputs", "input names")
            allowed = [name for name, has in zip(INPUTS, avail[i]) if has]
            for j, name in enumerate(inputs):
                check_str_choice(name, f"{field}.inputs[{j}]", allowed)
            if not inputs or len(set(inputs)) != len(inputs):
                raise PosenasError(f"{field}.inputs: expected 1-{len(allowed)} distinct inputs of "
                                   f"{', '.join(allowed)}, got {inputs!r}")
            ops = check_list(cell["ops"], f"{field}.ops", "one op list per edge", n_edges)
            per_edge = []
            for e, names in enumerate(ops):
                names = check_list(names, f"{field}.ops[{e}]", "op names")
                for j, name in enumerate(names):
                    check_str_choice(name, f"{field}.ops[{e}][{j}]", OPS)
                if not names or len(set(names)) != len(names):
                    raise PosenasError(f"{field}.ops[{e}]: expected distinct op names, at least one, got {names!r}")
                per_edge.append(tuple(sorted(names, key=OPS.index)))
            cells.append(CellArch(tuple(sorted(inputs, key=INPUTS.index)), tuple(per_edge)))
        _check_connected(net, pos, cells, where)
        arch = object.__new__(cls)
        object.__setattr__(arch, "net", net)
        object.__setattr__(arch, "cells", tuple(cells))
        return arch


def _source(layer: int, row: int, name: str) -> tuple[int, int]:
    """The (layer, row) an input of cell (layer, row) comes from."""
    return layer - 1, row + INPUTS.index(name) - 1


def needed_cells(net: ThreeMSpace, pos: Sequence[tuple[int, int]], cells: Sequence[CellArch | None]) -> set[int]:
    """The positions some exit reads, directly or through selected inputs (the rest can be pruned)."""
    index = {p: i for i, p in enumerate(pos)}
    read_rows = range(net.rows) if net.fuse_split else [0]
    todo = [index[(e - 1, k)] for e in net.exit_layers for k in read_rows if (e - 1, k) in index]
    needed: set[int] = set()
    while todo:
        i = todo.pop()
        if i in needed or cells[i] is None:
            needed.add(i)
            continue
        needed.add(i)
        layer, row = pos[i]
        if layer > 0:
            todo += [index[_source(layer, row, name)] for name in cells[i].inputs]
    return needed


def _check_connected(net: ThreeMSpace, pos: list, cells: list, where: str) -> None:
    for i in sorted(needed_cells(net, pos, cells)):
        if cells[i] is None:
            layer, row = pos[i]
            raise PosenasError(f"{where}.cells[{i}]: is null (pruned) but layer {layer + 1}, row {row} is read by an "
                               "exit or by a kept cell's inputs")


# --- modules


class Stem(nn.Sequential):
    """HRNet's stem: two 3x3 stride-2 conv-BN-ReLU, four bottleneck units (to 4x the stem
    width, as HRNet's stage 1), a 1x1 conv-BN-ReLU to the fabric's C channels at 1/4."""

    def __init__(self, stem_channels: int, channels: int):
        wide = 4 * stem_channels
        super().__init__(ConvBNAct(3, stem_channels, 3, 2), ConvBNAct(stem_channels, stem_channels, 3, 2),
                         *[Bottleneck(stem_channels if u == 0 else wide, wide, expansion=4) for u in range(STEM_UNITS)],
                         ConvBNAct(wide, channels, 1))


class Fuse(nn.Module):
    """Fig. 3.2's Fuse: every row 1x1-conv'd to C and up-sampled (bilinear) to 1/4, concatenated,
    1x1 conv to C, squeeze-and-excite; then the same between the previous exit's features
    (``skip``, if any) and these."""

    def __init__(self, widths: Sequence[int], with_skip: bool):
        super().__init__()
        c = widths[0]
        self.project = nn.ModuleList(ConvBNAct(w, c, 1) for w in widths)
        self.merge = nn.Sequential(ConvBNAct(len(widths) * c, c, 1), SqueezeExcite(c, reduction=4, divisor=1))
        self.merge_skip = (nn.Sequential(ConvBNAct(2 * c, c, 1), SqueezeExcite(c, reduction=4, divisor=1))
                           if with_skip else None)

    def forward(self, rows: Sequence[torch.Tensor], skip: torch.Tensor | None) -> torch.Tensor:
        size = rows[0].shape[-2:]
        ups = [p(x) if k == 0 else F.interpolate(p(x), size=size, mode="bilinear", align_corners=False)
               for k, (p, x) in enumerate(zip(self.project, rows))]
        fused = self.merge(torch.cat(ups, dim=1))
        if self.merge_skip is None:
            return fused
        return self.merge_skip(torch.cat([skip, fused], dim=1))


class Split(nn.Module):
    """Fig. 3.2's Split: the fused features brought back to every row's scale and width by a
    strided 1x1 conv-BN, to be added to the rows. ``rows``: the rows the next layer reads (a
    derived net's other rows are passed on unchanged and get no conv)."""

    def __init__(self, widths: Sequence[int], rows: Sequence[int] | None = None):
        super().__init__()
        keep = range(len(widths)) if rows is None else rows
        self.convs = nn.ModuleDict({str(k): ConvBNAct(widths[0], widths[k], 1, 2**k, act=None, padding=0)
                                    for k in sorted(keep)})

    def forward(self, fused: torch.Tensor, rows: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for k, x in enumerate(rows):
            if str(k) not in self.convs:
                out.append(x)
                continue
            y = self.convs[str(k)](fused)
            out.append(x + y[..., : x.shape[-2], : x.shape[-1]])
        return out


class ExitState(NamedTuple):
    """Where a forward stands between exits: the last computed layer's row features (the stem
    at layer 0), the last exit's features (the next Fuse's skip), the rows' sizes."""

    layer: int
    rows: dict[int, torch.Tensor]
    skip: torch.Tensor | None
    sizes: dict[int, tuple[int, int]]

    def select(self, index: torch.Tensor) -> "ExitState":
        """The state of the images ``index`` of the batch (dynamic inference continues those only)."""
        return ExitState(self.layer, {k: v[index] for k, v in self.rows.items()},
                         None if self.skip is None else self.skip[index], self.sizes)


class _Fabric(nn.Module, abc.ABC):
    """The stem, the fabric's cells and the exits, shared by the supernet and the derived net;
    ``cell_weights(i)`` gives cell i's (op weights, active ops, input weights, active inputs)."""

    def __init__(self, net: ThreeMSpace, num_joints: int, cells: Sequence[CellArch | None] | None):
        super().__init__()
        self.net, self.num_joints, self.stride = net, num_joints, 4
        self.positions = positions(net)
        self.index = {p: i for i, p in enumerate(self.positions)}  # (layer, row) -> cell number
        widths = net.widths()
        avail = available_inputs(net)
        self.stem = Stem(net.stem_channels, net.channels)
        self.mix = nn.ModuleDict()
        self.cells = nn.ModuleDict()
        for i, (layer, k) in enumerate(self.positions):
            if cells is not None and cells[i] is None:
                continue
            keep_inputs = None if cells is None else [INPUTS.index(n) for n in cells[i].inputs]
            keep_ops = None if cells is None else [[OPS.index(o) for o in ops] for ops in cells[i].ops]
            self.mix[f"{layer}_{k}"] = ScaleInput(widths[k], *avail[i], keep=keep_inputs)
            self.cells[f"{layer}_{k}"] = Cell(widths[k], net.hidden, OPS, keep_ops)
        exit_layers = net.exit_layers
        if net.fuse_split:
            self.fuse = nn.ModuleList(Fuse(widths, with_skip=e > 0) for e in range(len(exit_layers)))
            self.split = nn.ModuleList(Split(widths, None if cells is None else self._rows_read(cells, e))
                                       for e in net.exits)
        else:
            self.fuse = self.split = None
        self.heads = nn.ModuleList(nn.Conv2d(net.channels, 2 * num_joints, 1) for _ in exit_layers)
        for head in self.heads:
            nn.init.normal_(head.weight, std=0.001)
            nn.init.zeros_(head.bias)
        #: a list while the teacher loss records every cell's output of a forward (else None)
        self.cell_outputs: list[torch.Tensor] | None = None

    @abc.abstractmethod
    def cell_weights(self, i: int) -> tuple[Any, Any, Any, Any]:
        """Cell i's (op weights, active ops, input weights, active inputs): fixed in the derived net,
        sampled in the supernet."""

    def _rows_read(self, cells: Sequence[CellArch | None], layer: int) -> list[int]:
        """The rows of 1-based layer ``layer`` that the next layer's kept cells take as inputs."""
        read = set()
        for i, (lyr, k) in enumerate(self.positions):
            if lyr == layer and cells[i] is not None:
                read |= {_source(lyr, k, name)[1] for name in cells[i].inputs}
        return sorted(read)

    @property
    def exit_count(self) -> int:
        return len(self.net.exit_layers)

    def begin(self, x: torch.Tensor) -> ExitState:
        stem = self.stem(x)
        sizes = {0: tuple(stem.shape[-2:])}
        for k in range(1, self.net.rows):
            sizes[k] = tuple(math.ceil(d / 2) for d in sizes[k - 1])
        return ExitState(0, {0: stem}, None, sizes)

    def advance(self, state: ExitState, exit_index: int, head: bool = True) -> tuple[ExitState, torch.Tensor | None]:
        """Run from ``state`` through exit ``exit_index`` (0-based): the new state and that exit's
        output (N, 2K, H/4, W/4), heatmaps then tags (None with ``head`` False: static inference
        passes an early exit without computing its output)."""
        target = self.net.exit_layers[exit_index]
        rows = state.rows
        for layer in range(state.layer, target):
            current = {}
            for k in range(self.net.rows):
                key = f"{layer}_{k}"
                if key not in self.cells:
                    continue
                i = self.index[(layer, k)]
                w_ops, active_ops, w_in, active_in = self.cell_weights(i)
                x = self.mix[key](rows.get(k - 1), rows.get(k), rows.get(k + 1), w_in, state.sizes[k], active_in)
                current[k] = self.cells[key](x, w_ops, active_ops)
                if self.cell_outputs is not None:
                    self.cell_outputs.append(current[k])
            rows = current
        if self.fuse is None:
            features, skip = rows[0], None
        else:
            features = self.fuse[exit_index]([rows[k] for k in range(self.net.rows)], state.skip)
            skip = features
            if exit_index < len(self.net.exits):
                split = self.split[exit_index](features, [rows[k] for k in range(self.net.rows)])
                rows = dict(enumerate(split))
        return ExitState(target, rows, skip, state.sizes), self.heads[exit_index](features) if head else None

    def exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's output, in order."""
        state, outs = self.begin(x), []
        for e in range(self.exit_count):
            state, out = self.advance(state, e)
            outs.append(out)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor | ExitOutputs:
        """Training: every exit's output (each is supervised); eval: the last exit's (static inference)."""
        if not self.training:
            state = self.begin(x)
            for e in range(self.exit_count):
                state, out = self.advance(state, e, head=e == self.exit_count - 1)
            return out
        outs = self.exits(x)
        return ExitOutputs(outs) if len(outs) > 1 else outs[0]



class ThreeMNet(_Fabric):
    """A derived network: each kept cell sums its selected inputs and, per edge, its selected ops."""

    def __init__(self, arch: ThreeMArch, num_joints: int):
        super().__init__(arch.net, num_joints, arch.cells)
        self.arch = arch
        self._inputs = {i: [INPUTS.index(n) for n in c.inputs] for i, c in enumerate(arch.cells) if c is not None}

    def cell_weights(self, i: int) -> tuple[Any, Any, Any, Any]:
        return None, None, None, self._inputs[i]  # no weights: the selected ops and inputs summed


class ExitModel(nn.Module):
    """One exit of a derived network as a model of its own: the layers up to that exit and its
    head (what dynamic inference runs at most to there, and what is exported per exit)."""

    def __init__(self, net: _Fabric, exit_index: int):
        super().__init__()
        self.net, self.exit_index, self.stride = net, exit_index, 4
        self.train(net.training)  # a new module is in train mode; the wrapped net's mode is its own

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self.net.begin(x)
        for e in range(self.exit_index + 1):
            state, out = self.net.advance(state, e, head=e == self.exit_index)
        return out


#: How the supernet samples a sub-net each step: Dyn-EGS (a learned number of ops per edge and
#: inputs per cell, top-i, straight-through), or the thesis' baseline: plain Gumbel-softmax
#: weights over every op and input (a dense supernet), derived by argmax (one op, one input).
SAMPLINGS = ("dyn-egs", "gumbel")


class Sampled(NamedTuple):
    """One forward's cell weights: op weights (cells x edges x ops), the ops run per edge, input
    weights (cells x 3), the inputs used per cell."""

    ops: torch.Tensor
    active_ops: list[list[list[int]]]
    inputs: torch.Tensor
    active_inputs: list[list[int]]


def _top_masks(y: torch.Tensor, counts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of the top-1 ... top-``counts`` entries of ``y`` over its last dim (``(..., counts, n)``)
    and the top-``counts`` indices (``(..., counts)``)."""
    order = y.argsort(dim=-1, descending=True)[..., :counts]
    masks = y.new_zeros(*y.shape[:-1], counts, y.shape[-1])
    for c in range(counts):
        masks[..., c, :].scatter_(-1, order[..., : c + 1], 1.0)
    return masks, order


def gumbel_softmax(logits: torch.Tensor, tau: float, hard: bool = False,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 3.5 with the noise from ``generator`` (so a draw is a function of the run's seed and
    step: the same on every torchrun rank and after a resume); ``hard``: one-hot forward,
    soft gradient (straight-through). Entries at -inf get probability 0."""
    u = torch.rand(logits.shape, generator=generator, device="cpu").to(logits.device)
    g = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))
    y = torch.softmax((logits + g) / tau, dim=-1)
    if not hard:
        return y
    one_hot = F.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
    return one_hot - y.detach() + y


def dyn_egs(logits: torch.Tensor, count_logits: torch.Tensor, tau: float, noise: bool = True,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic Ensemble Gumbel-Softmax (Sec. 3.3): a count i is drawn from ``count_logits``
    (hard Gumbel-softmax, straight-through), the top-i entries of the Gumbel-softmax sample of
    ``logits`` get weight 1 and the others 0. Forward: that 0/1 mask; backward: through the
    count's soft sample and through the soft weights of the kept entries (straight-through),
    so both alpha (or beta) and m learn. ``noise`` False: no Gumbel noise, argmax count (the
    derived selection). Entries at -inf are never kept. Returns the weights and the indices of
    the top-R entries (R = the largest count): what must run for every count's gradient."""
    if noise:
        y = gumbel_softmax(logits, tau, generator=generator)
        theta = gumbel_softmax(count_logits, tau, hard=True, generator=generator)
    else:
        y = torch.softmax(logits, dim=-1)
        theta = F.one_hot(count_logits.argmax(-1), count_logits.shape[-1]).to(logits.dtype)
    masks, order = _top_masks(y.detach(), count_logits.shape[-1])
    kept = masks * y.unsqueeze(-2)
    straight = masks + kept - kept.detach()  # forward 0/1, gradient of the soft weights
    return (theta.unsqueeze(-1) * straight).sum(-2), order


class ThreeMSupernet(_Fabric):
    """Every cell with all nine ops on every edge and all its inputs; per cell alpha, beta and
    (Dyn-EGS) m_alpha, m_beta. Training forwards draw a sub-net (:data:`SAMPLINGS`) at
    temperature ``tau``; eval forwards run the derived selection (no noise)."""

    def __init__(self, net: ThreeMSpace, num_joints: int, sampling: str = "dyn-egs", r_alpha: int = 2,
                 r_beta: int = 3, tau: float = 10.0):
        super().__init__(net, num_joints, None)
        if sampling not in SAMPLINGS:
            raise PosenasError(f"sampling: {sampling!r} not allowed; allowed: {', '.join(SAMPLINGS)}")
        if not 1 <= r_alpha <= len(OPS) or not 1 <= r_beta <= len(INPUTS):
            raise PosenasError(f"r_alpha, r_beta: expected 1-{len(OPS)} and 1-{len(INPUTS)}, got {r_alpha}, {r_beta}")
        self.sampling, self.r_alpha, self.r_beta, self.tau = sampling, r_alpha, r_beta, tau
        n, e = len(self.positions), len(edges(net.hidden))
        self.alpha = nn.Parameter(1e-3 * torch.randn(n, e, len(OPS)))
        self.beta = nn.Parameter(torch.zeros(n, len(INPUTS)))
        avail = torch.tensor(available_inputs(net))
        self.register_buffer("input_mask", avail, persistent=False)
        counts = torch.arange(1, r_beta + 1)[None, :] <= avail.sum(1, keepdim=True)
        self.register_buffer("count_mask", counts, persistent=False)
        if sampling == "dyn-egs":
            self.m_alpha = nn.Parameter(torch.zeros(n, e, r_alpha))
            self.m_beta = nn.Parameter(torch.zeros(n, r_beta))
        self.sampled: Sampled | None = None
        #: where the training forwards' Gumbel noise comes from (the search sets one per forward;
        #: None: torch's global generator)
        self.generator: torch.Generator | None = None

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha, self.beta] + ([self.m_alpha, self.m_beta] if self.sampling == "dyn-egs" else [])

    def _beta_logits(self) -> torch.Tensor:
        return self.beta.masked_fill(~self.input_mask, float("-inf"))

    def sample(self, noise: bool) -> Sampled:
        """The op and input weights of a forward: drawn (``noise``) or the derived selection (eval)."""
        beta = self._beta_logits()
        if self.sampling == "dyn-egs":
            m_beta = self.m_beta.masked_fill(~self.count_mask, float("-inf"))
            w_ops, top_ops = dyn_egs(self.alpha, self.m_alpha, self.tau, noise, self.generator)
            w_in, top_in = dyn_egs(beta, m_beta, self.tau, noise, self.generator)
        elif noise:
            w_ops = gumbel_softmax(self.alpha, self.tau, generator=self.generator)
            w_in = gumbel_softmax(beta, self.tau, generator=self.generator)
        else:
            w_ops = F.one_hot(self.alpha.argmax(-1), len(OPS)).to(self.alpha.dtype)
            w_in = F.one_hot(beta.argmax(-1), len(INPUTS)).to(self.beta.dtype)
        run_ops = w_ops.detach() != 0
        run_in = w_in.detach() != 0
        if noise and self.sampling == "dyn-egs":  # every op a count could keep runs: the counts' gradient
            run_ops = run_ops | torch.zeros_like(run_ops).scatter_(-1, top_ops, True)
            run_in = run_in | torch.zeros_like(run_in).scatter_(-1, top_in, True)
        run_in = run_in & self.input_mask
        active_ops = [[torch.nonzero(edge).flatten().tolist() for edge in cell] for cell in run_ops]
        active_in = [torch.nonzero(cell).flatten().tolist() for cell in run_in]
        return Sampled(w_ops, active_ops, w_in, active_in)

    def selection(self) -> list[CellArch]:
        """Every cell's derived inputs and ops (argmax m, top-i of alpha and beta; no pruning)."""
        s = self.sample(noise=False)
        cells = []
        for i in range(len(self.positions)):
            inputs = tuple(INPUTS[k] for k in s.active_inputs[i])
            cells.append(CellArch(inputs, tuple(tuple(OPS[k] for k in edge) for edge in s.active_ops[i])))
        return cells

    def derive(self, prune: bool = True) -> ThreeMArch:
        """The derived network; ``prune``: cells no exit reads are left out (null)."""
        cells: list[CellArch | None] = list(self.selection())
        if prune:
            needed = needed_cells(self.net, self.positions, cells)
            cells = [c if i in needed else None for i, c in enumerate(cells)]
        return ThreeMArch(self.net, tuple(cells))

    def forward(self, x: torch.Tensor) -> torch.Tensor | ExitOutputs:
        self.sampled = self.sample(noise=self.training)
        return super().forward(x)

    def cell_weights(self, i: int) -> tuple[Any, Any, Any, Any]:
        s = self.sampled
        return s.ops[i], s.active_ops[i], s.inputs[i], s.active_inputs[i]


class CostTable(NamedTuple):
    """MACs at one input size (batch 1) of what a sub-net may select, for the FLOP loss:
    ``fixed`` (stem, every cell's 1x1 reduce, Fuse-Split, the last exit's head: paid by every
    sub-net), per cell, edge and op the op's MACs, per cell and input its resampling's."""

    fixed: float
    ops: torch.Tensor
    inputs: torch.Tensor

    def macs(self, sampled: Sampled) -> torch.Tensor:
        """The sampled sub-net's static-inference MACs (every cell counted, none pruned):
        differentiable in the weights, exact for 0/1 weights."""
        w_ops, w_in = sampled.ops.float(), sampled.inputs.float().nan_to_num(0.0)
        return self.fixed + (w_ops * self.ops).sum() + (w_in * self.inputs).sum()


@torch.no_grad()
def cost_table(supernet: ThreeMSupernet, input_size: tuple[int, int]) -> CostTable:
    """Measure every op and resampling at its real shape (:func:`posenas.cost.module_macs`, the
    project's MACs convention); ``fixed`` is the static-inference MACs of the derived selection
    minus its selected parts, so ``macs`` of any 0/1 sampling equals count_macs of that net."""
    from posenas.cost import count_macs, module_macs

    sizes = supernet.begin(torch.zeros(1, 3, *input_size, device=supernet.alpha.device)).sizes
    widths = supernet.net.widths()
    ops = torch.zeros_like(supernet.alpha)
    inputs = torch.zeros_like(supernet.beta)
    for i, (layer, k) in enumerate(supernet.positions):
        key, c = f"{layer}_{k}", widths[k]
        x = supernet.alpha.new_zeros(1, c, *sizes[k])
        for e, mixed in enumerate(supernet.cells[key].mixed):
            for o, op in mixed.ops.items():
                ops[i, e, int(o)] = module_macs(op, x)
        mix = supernet.mix[key]
        if mix.down is not None:
            inputs[i, 0] = module_macs(mix.down, supernet.alpha.new_zeros(1, widths[k - 1], *sizes[k - 1]))
        if mix.up is not None:
            inputs[i, 2] = module_macs(mix.up, supernet.alpha.new_zeros(1, widths[k + 1], *sizes[k]))
    total = count_macs(supernet, input_size)[0]  # eval mode: the derived selection
    chosen = supernet.sample(noise=False)
    fixed = total - float((chosen.ops * ops).sum() + (chosen.inputs * inputs).sum())
    return CostTable(fixed, ops, inputs)


def derived_state_dict(supernet: ThreeMSupernet, arch: ThreeMArch) -> dict[str, torch.Tensor]:
    """The derived network's weights taken from the supernet (the same module names: the derived
    net is the supernet with only the selected ops and inputs and the kept cells)."""
    if arch.net != supernet.net:
        raise PosenasError(f"cannot inherit weights: the arch's fabric {arch.net.to_json()} is not this supernet's "
                           f"{supernet.net.to_json()}")
    own = supernet.state_dict()
    return {k: own[k].detach().clone() for k in ThreeMNet(arch, supernet.num_joints).state_dict()}


def build_threem(arch: ThreeMArch, num_joints: int) -> ThreeMNet:
    """The registry's build function (:data:`posenas.arch.ARCH_SPACES`)."""
    return ThreeMNet(arch, num_joints)
