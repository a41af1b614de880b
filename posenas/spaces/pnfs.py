"""Pose Neural Fabrics Search (Yang et al.): cell-based neural fabrics, one per body part,
predicting keypoints as vectors in pixels. ``../shared/papers/pose-neural-fabrics-search.md``.

A fabric is L layers x S scales (1/4, 1/8, 1/16, 1/32) of cells (:mod:`posenas.spaces.cells`);
the cell at scale k has ``channels * 4 * 2**k`` channels (the paper's C x 1/s). A cell
exists where an input reaches it (each layer can go one scale coarser) and where it
reaches an output; cells of one fabric share one alpha (edges x ops) and each has its own
beta (3 input weights). The model:

- a backbone giving a feature pyramid at strides 4-32: a fabric backbone (a two-conv stem
  to 1/4, then ``backbone_layers`` fabric layers), or the MobileNetV2 / ResNet-50 feature
  blocks of this project; 1x1 conv-BN-ReLU projections bring it to the fabric channels;
- P fabric sub-networks of ``layers`` layers, one per body part (personal alpha and beta),
  each ending in its last layer's 1/4 cell;
- per part a 1x1 conv to d channels per joint of the part: the vector in pixel, squashed
  (Eq. 4); its length is the joint's score map. A joint in several parts gets the mean of
  their maps (the paper sums them; the mean has the same argmax and stays in [0, 1)).
  ``vector_dim`` 1 is the scalar baseline.

In training mode the model returns every part's maps concatenated (channels in the order
of :attr:`PNFSModel.output_joints`), so each part is supervised on its own joints, as the
paper's loss is "for all P part representations"; in eval mode the (N, K, h, w) joint maps.

Architecture JSON::

    {"space": "pnfs", "backbone": "mobilenetv2", "backbone_layers": 0, "layers": 3, "scales": 4,
     "hidden": 1, "channels": 10, "ops": ["zero", "skip", "sep_conv_3x3", "dil_conv_3x3"],
     "backbone_ops": [], "parts": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]],
     "vector_dim": 8}

``parts`` lists each part's joint indices (:meth:`KeypointSchema.part_groups` gives the
paper's Table I groupings); ``backbone_layers`` and ``backbone_ops`` only matter for the
``fabric`` backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from posenas.errors import PosenasError
from posenas.keypoints import KeypointSchema
from posenas.models.backbones import mobilenetv2, resnet50
from posenas.models.blocks import ConvBNAct
from posenas.spaces.archfields import check_list, check_object, check_str_choice, is_int
from posenas.spaces.cells import Cell, ScaleInput, edges

BACKBONES = ("mobilenetv2", "resnet50", "fabric")
SUBNET_OPS = ("zero", "skip", "sep_conv_3x3", "dil_conv_3x3")  # the paper's sub-network op set
ALL_OPS = ("zero", "skip", "sep_conv_3x3", "dil_conv_3x3", "avg_pool_3x3", "max_pool_3x3")  # the paper's six
MAX_SCALES = 4
_KEYS = ("space", "backbone", "backbone_layers", "layers", "scales", "hidden", "channels", "ops", "backbone_ops",
         "parts", "vector_dim", "weights")

Matrix = tuple[tuple[float, ...], ...]


def scale_channels(channels: int, k: int) -> int:
    """Channels of scale index k (stride 4 * 2**k): C x 1/s."""
    return channels * 4 * 2**k


@dataclass(frozen=True)
class PNFSArch:
    backbone: str
    layers: int
    hidden: int
    channels: int
    parts: tuple[tuple[int, ...], ...]
    vector_dim: int = 8
    scales: int = 4
    ops: tuple[str, ...] = SUBNET_OPS
    backbone_layers: int = 0
    backbone_ops: tuple[str, ...] = ()
    # the searched weights, softmaxed (zeros where pruned): {"backbone": {"alpha", "beta"} or None,
    # "subnets": [{"alpha", "beta"} per part]}; None: a searchable model (alpha, beta parameters)
    weights: dict[str, Any] | None = None
    space: ClassVar[str] = "pnfs"

    def __post_init__(self) -> None:
        PNFSArch.from_json(self.to_json())

    @property
    def num_joints(self) -> int:
        return max(max(p) for p in self.parts) + 1

    def to_json(self) -> dict:
        return {"space": self.space, "backbone": self.backbone, "backbone_layers": self.backbone_layers,
                "layers": self.layers, "scales": self.scales, "hidden": self.hidden, "channels": self.channels,
                "ops": list(self.ops), "backbone_ops": list(self.backbone_ops),
                "parts": [list(p) for p in self.parts], "vector_dim": self.vector_dim,
                "weights": _weights_json(self.weights)}

    def fabric_layouts(self) -> tuple[list | None, list]:
        """(backbone fabric cells or None, sub-network fabric cells)."""
        s = self.scales
        backbone = fabric_layout(self.backbone_layers, s, [0], range(s)) if self.backbone == "fabric" else None
        return backbone, fabric_layout(self.layers, s, range(s), [0])

    @classmethod
    def from_json(cls, data: Any, where: str = "arch") -> "PNFSArch":
        data = check_object(data, where, _KEYS, required=("space", "backbone", "layers", "hidden", "channels", "parts"))
        if data["space"] != cls.space:
            raise PosenasError(f"{where}.space: expected {cls.space!r}, got {data['space']!r}")
        backbone = check_str_choice(data["backbone"], f"{where}.backbone", BACKBONES)

        def positive(key: str, default: int, lo: int = 1, hi: int = 64) -> int:
            value = data.get(key, default)
            if not is_int(value) or not lo <= value <= hi:
                raise PosenasError(f"{where}.{key}: expected an integer in [{lo}, {hi}], got {value!r}")
            return int(value)

        scales = positive("scales", cls.scales, 1, MAX_SCALES)
        layers, hidden, channels = positive("layers", 3), positive("hidden", 1, 1, 8), positive("channels", 10, 1, 256)
        vector_dim = positive("vector_dim", cls.vector_dim, 1, 64)
        backbone_layers = positive("backbone_layers", 0, 0)
        if backbone == "fabric" and backbone_layers < scales - 1:
            raise PosenasError(f"{where}.backbone_layers: a fabric backbone needs at least scales - 1 = {scales - 1} "
                               f"layers to reach the 1/{4 * 2 ** (scales - 1)} scale, got {backbone_layers}")
        if backbone != "fabric" and backbone_layers:
            raise PosenasError(f"{where}.backbone_layers: only the fabric backbone has layers; got {backbone_layers} "
                               f"with backbone {backbone!r}")
        ops = _ops(data.get("ops", list(cls.ops)), f"{where}.ops", required=True)
        backbone_ops = _ops(data.get("backbone_ops", list(ALL_OPS) if backbone == "fabric" else []),
                            f"{where}.backbone_ops", required=backbone == "fabric")
        if backbone != "fabric" and backbone_ops:
            raise PosenasError(f"{where}.backbone_ops: only the fabric backbone has ops; leave it empty")
        raw = check_list(data["parts"], f"{where}.parts", "lists of joint indices")
        if not raw:
            raise PosenasError(f"{where}.parts: at least one part is needed")
        parts = []
        for i, part in enumerate(raw):
            joints = check_list(part, f"{where}.parts[{i}]", "joint indices")
            if not joints or not all(is_int(j) and j >= 0 for j in joints) or len(set(joints)) != len(joints):
                raise PosenasError(f"{where}.parts[{i}]: expected distinct non-negative joint indices, got {part!r}")
            parts.append(tuple(int(j) for j in joints))
        covered = {j for p in parts for j in p}
        missing = sorted(set(range(max(covered) + 1)) - covered)
        if missing:
            raise PosenasError(f"{where}.parts: joints {missing} belong to no part; every joint needs one")
        arch = object.__new__(cls)
        for key, value in (("backbone", backbone), ("layers", layers), ("hidden", hidden), ("channels", channels),
                           ("parts", tuple(parts)), ("vector_dim", vector_dim), ("scales", scales), ("ops", ops),
                           ("backbone_layers", backbone_layers), ("backbone_ops", backbone_ops), ("weights", None)):
            object.__setattr__(arch, key, value)
        if data.get("weights") is not None:
            object.__setattr__(arch, "weights", _check_weights(arch, data["weights"], f"{where}.weights"))
        return arch


def _weights_json(weights: dict[str, Any] | None) -> dict | None:
    if weights is None:
        return None
    fabric = lambda f: None if f is None else {"alpha": [list(r) for r in f["alpha"]],  # noqa: E731
                                               "beta": [list(r) for r in f["beta"]]}
    return {"backbone": fabric(weights["backbone"]), "subnets": [fabric(f) for f in weights["subnets"]]}


def _check_matrix(value: Any, field: str, rows: int, cols: int) -> Matrix:
    rows_ = check_list(value, field, f"{rows} rows of {cols} weights", rows)
    out = []
    for i, row in enumerate(rows_):
        row = check_list(row, f"{field}[{i}]", f"{cols} weights", cols)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in row):
            raise PosenasError(f"{field}[{i}]: expected weights in [0, 1], got {row}")
        if not any(row):
            raise PosenasError(f"{field}[{i}]: all weights are 0; keep at least one")
        out.append(tuple(float(v) for v in row))
    return tuple(out)


def _check_weights(arch: PNFSArch, data: Any, where: str) -> dict[str, Any]:
    """Searched weights with the shapes of ``arch``'s fabrics."""
    data = check_object(data, where, ("backbone", "subnets"), required=("backbone", "subnets"))
    backbone_cells, subnet_cells = arch.fabric_layouts()
    n_edges = len(edges(arch.hidden))

    def fabric(value: Any, field: str, cells: list, ops: tuple[str, ...]) -> dict[str, Matrix]:
        value = check_object(value, field, ("alpha", "beta"), required=("alpha", "beta"))
        return {"alpha": _check_matrix(value["alpha"], f"{field}.alpha", n_edges, len(ops)),
                "beta": _check_matrix(value["beta"], f"{field}.beta", len(cells), 3)}

    if (data["backbone"] is None) != (backbone_cells is None):
        raise PosenasError(f"{where}.backbone: expected {'null' if backbone_cells is None else 'the fabric backbone weights'}"
                           f" for backbone {arch.backbone!r}")
    subnets = check_list(data["subnets"], f"{where}.subnets", "one weight set per part", len(arch.parts))
    return {"backbone": None if backbone_cells is None else
            fabric(data["backbone"], f"{where}.backbone", backbone_cells, arch.backbone_ops),
            "subnets": [fabric(f, f"{where}.subnets[{i}]", subnet_cells, arch.ops) for i, f in enumerate(subnets)]}


def _ops(value: Any, field: str, required: bool) -> tuple[str, ...]:
    ops = check_list(value, field, "operation names")
    for i, op in enumerate(ops):
        check_str_choice(op, f"{field}[{i}]", ALL_OPS)
    if len(set(ops)) != len(ops):
        raise PosenasError(f"{field}: operations repeat: {ops}")
    if required and not [op for op in ops if op != "zero"]:
        raise PosenasError(f"{field}: needs at least one operation besides 'zero'; allowed: {', '.join(ALL_OPS)}")
    return tuple(ops)


def pnfs_arch(schema: KeypointSchema, parts: int, where: str = "arch", **fields: Any) -> PNFSArch:
    """An arch with the paper's Table I grouping of ``parts`` parts for ``schema``."""
    try:
        groups = [list(g.joints) for g in schema.part_groups(parts)]
    except PosenasError as e:
        raise PosenasError(f"{where}.parts: {e}") from None
    return PNFSArch.from_json({"space": "pnfs", "parts": groups, **fields}, where)


def fabric_layout(layers: int, scales: int, inputs: Sequence[int], outputs: Sequence[int]) -> list[tuple[int, int]]:
    """The (layer, scale) cells of a fabric: those an input reaches (one scale coarser or finer
    per layer) and that reach an output of the last layer, in layer then scale order."""
    avail = [set(inputs)]
    for _ in range(layers):
        prev = avail[-1]
        avail.append({k for k in range(scales) if prev & {k - 1, k, k + 1}})
    needed = set(outputs)
    kept: list[set[int]] = [set() for _ in range(layers)]
    for layer in range(layers - 1, -1, -1):
        kept[layer] = avail[layer + 1] & needed
        needed = {n for k in kept[layer] for n in (k - 1, k, k + 1)}
    missing = set(outputs) - kept[-1]
    if missing:
        raise PosenasError(f"fabric: {layers} layers from scales {sorted(inputs)} cannot reach scales {sorted(missing)}")
    return [(layer, k) for layer in range(layers) for k in sorted(kept[layer])]


def _nonzero(row: Sequence[float]) -> list[int]:
    return [i for i, v in enumerate(row) if v != 0]


class Fabric(nn.Module):
    """``layers`` x ``scales`` cells fed by a pyramid at the scales ``inputs``; returns the last
    layer's outputs at the scales ``outputs``. Cells no input reaches, or that reach no
    output, are not built.

    Searchable (``fixed`` None): ``alpha`` (edges x ops, shared by the fabric's cells, as the
    paper has it) and ``beta`` (cells x 3) are parameters, weights = softmax. Fixed (an
    exported arch): ``fixed = {"alpha": ..., "beta": ...}`` holds the weights themselves
    (softmaxed, zeros where pruned), kept as buffers; ops and inputs of weight 0 are not
    built or run."""

    def __init__(self, layers: int, scales: int, hidden: int, channels: int, ops: Sequence[str],
                 inputs: Sequence[int], outputs: Sequence[int], fixed: dict[str, Any] | None = None):
        super().__init__()
        self.layers, self.scales, self.hidden = layers, scales, hidden
        self.positions = fabric_layout(layers, scales, inputs, outputs)
        self.outputs = tuple(sorted(outputs))
        self.ops = tuple(ops)
        n_edges = len(edges(hidden))
        if fixed is None:
            self.alpha = nn.Parameter(torch.zeros(n_edges, len(ops)))
            self.beta = nn.Parameter(torch.zeros(len(self.positions), 3))
            self.edge_ops = self.cell_inputs = None
        else:
            self.register_buffer("alpha_weights", torch.tensor(fixed["alpha"], dtype=torch.float32))
            self.register_buffer("beta_weights", torch.tensor(fixed["beta"], dtype=torch.float32))
            self.edge_ops = [_nonzero(row) for row in fixed["alpha"]]
            self.cell_inputs = [_nonzero(row) for row in fixed["beta"]]
        built = {(layer, k) for layer, k in self.positions}
        self.cells = nn.ModuleDict()
        self.mix = nn.ModuleDict()
        for i, (layer, k) in enumerate(self.positions):
            prev = set(inputs) if layer == 0 else {kk for ll, kk in built if ll == layer - 1}
            c = scale_channels(channels, k)
            self.mix[f"{layer}_{k}"] = ScaleInput(c, k - 1 in prev, k in prev, k + 1 in prev,
                                                  None if self.cell_inputs is None else self.cell_inputs[i])
            self.cells[f"{layer}_{k}"] = Cell(c, hidden, ops, self.edge_ops)

    @property
    def searchable(self) -> bool:
        return self.edge_ops is None

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Op weights per edge and input weights per cell: softmax(alpha), softmax(beta) (Eq. 1-2)."""
        if self.searchable:
            return torch.softmax(self.alpha, dim=-1), torch.softmax(self.beta, dim=-1)
        return self.alpha_weights, self.beta_weights

    def forward(self, pyramid: dict[int, torch.Tensor], sizes: dict[int, tuple[int, int]]) -> dict[int, torch.Tensor]:
        alpha, beta = self.weights()
        prev, current = pyramid, {}
        layer = 0
        for i, (lyr, k) in enumerate(self.positions):
            if lyr != layer:
                prev, current, layer = current, {}, lyr
            x = self.mix[f"{lyr}_{k}"](prev.get(k - 1), prev.get(k), prev.get(k + 1), beta[i], sizes[k],
                                       None if self.cell_inputs is None else self.cell_inputs[i])
            current[k] = self.cells[f"{lyr}_{k}"](x, alpha, self.edge_ops)
        return {k: current[k] for k in self.outputs}


def squash_length(v: torch.Tensor) -> torch.Tensor:
    """Eq. 4's length: ``|v|^2 / (1 + |v|^2)`` over dim 2 of (N, J, d, h, w) -> (N, J, h, w)."""
    sq = (v * v).sum(dim=2)
    return sq / (1 + sq)


class _Taps(nn.Module):
    """A hand-crafted backbone as a pyramid: its features at strides 4, 8, ... for ``scales``
    levels; the layers after the last level used are not built."""

    def __init__(self, name: str, scales: int):
        super().__init__()
        self.name = name
        if name == "resnet50":
            self.net = resnet50()
            self.net.stages = self.net.stages[:scales]
            self.channels = list(self.net.stage_channels[:scales])
        else:
            self.net = mobilenetv2()
            stride, last_at = 2, {}  # the last block at each stride 4, 8, 16, 32
            for i, block in enumerate(self.net.blocks):
                stride *= block.stride
                last_at[stride] = i
            self.ends = [last_at[4 * 2**k] for k in range(scales)]
            self.net.blocks = self.net.blocks[: self.ends[-1] + 1]
            self.channels = [self.net.blocks[i].out_channels for i in self.ends]
            del self.net.last  # the feature blocks only (the paper's 1.3 M-parameter MobileNetV2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.name == "resnet50":
            return self.net.forward_stages(x)
        outs, x = [], self.net.stem(x)
        for i, block in enumerate(self.net.blocks):
            x = block(x)
            if i in self.ends:
                outs.append(x)
        return outs


class PNFSModel(nn.Module):
    """Backbone pyramid -> P part fabrics -> vectors in pixels -> joint score maps (stride 4)."""

    def __init__(self, arch: PNFSArch, num_joints: int):
        super().__init__()
        if arch.num_joints != num_joints:
            raise PosenasError(f"arch.parts: the parts cover joints 0-{arch.num_joints - 1}, but the model predicts "
                               f"{num_joints} joints")
        self.arch, self.num_joints, self.stride = arch, num_joints, 4
        s, c = arch.scales, arch.channels
        if arch.backbone == "fabric":
            self.stem = nn.Sequential(ConvBNAct(3, 32, 3, 2), ConvBNAct(32, scale_channels(c, 0), 3, 2))
            self.backbone = Fabric(arch.backbone_layers, s, arch.hidden, c, arch.backbone_ops, [0], list(range(s)),
                                   None if arch.weights is None else arch.weights["backbone"])
            self.project = None
        else:
            self.stem = _Taps(arch.backbone, s)
            self.backbone = None
            self.project = nn.ModuleList(ConvBNAct(self.stem.channels[k], scale_channels(c, k), 1) for k in range(s))
        self.subnets = nn.ModuleList(Fabric(arch.layers, s, arch.hidden, c, arch.ops, list(range(s)), [0],
                                            None if arch.weights is None else arch.weights["subnets"][i])
                                     for i in range(len(arch.parts)))
        self.heads = nn.ModuleList(nn.Conv2d(scale_channels(c, 0), len(p) * arch.vector_dim, 1) for p in arch.parts)
        for head in self.heads:
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)
        self.output_joints = torch.tensor([j for p in arch.parts for j in p])
        counts = torch.zeros(num_joints)
        for p in arch.parts:
            counts[list(p)] += 1
        self.register_buffer("joint_counts", counts, persistent=False)

    def pyramid(self, x: torch.Tensor) -> tuple[dict[int, torch.Tensor], dict[int, tuple[int, int]]]:
        s = self.arch.scales
        if self.backbone is not None:
            x = self.stem(x)
            sizes = {0: tuple(x.shape[-2:])}
            for k in range(1, s):
                sizes[k] = tuple(math.ceil(d / 2) for d in sizes[k - 1])
            return self.backbone({0: x}, sizes), sizes
        feats = self.stem(x)
        pyramid = {k: proj(f) for k, (proj, f) in enumerate(zip(self.project, feats))}
        return pyramid, {k: tuple(f.shape[-2:]) for k, f in pyramid.items()}

    def part_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per part, the squashed vector lengths of its joints: (N, J_p, H/4, W/4) each."""
        pyramid, sizes = self.pyramid(x)
        maps = []
        for part, subnet, head in zip(self.arch.parts, self.subnets, self.heads):
            v = head(subnet(pyramid, sizes)[0])
            n, _, h, w = v.shape
            maps.append(squash_length(v.view(n, len(part), self.arch.vector_dim, h, w)))
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.part_maps(x)
        if self.training:
            return torch.cat(maps, dim=1)  # channels in the order of output_joints
        n, _, h, w = maps[0].shape
        joint = maps[0].new_zeros(n, self.num_joints, h, w)
        joint.index_add_(1, self.output_joints.to(joint.device), torch.cat(maps, dim=1))
        return joint / self.joint_counts[None, :, None, None]


def build_pnfs(arch: PNFSArch, num_joints: int) -> PNFSModel:
    """The registry's build function (:data:`posenas.arch.ARCH_SPACES`)."""
    return PNFSModel(arch, num_joints)


def fabrics(model: PNFSModel) -> list[Fabric]:
    """The model's fabrics: the backbone's (if any), then one per part."""
    return ([model.backbone] if model.backbone is not None else []) + list(model.subnets)


def export_arch(model: PNFSModel) -> PNFSArch:
    """The model's arch with its current weights (softmax of alpha, beta): an exact, dense
    description of the searched network (build it and load the checkpoint's other weights)."""
    def fabric(f: Fabric | None) -> dict | None:
        if f is None:
            return None
        alpha, beta = (w.detach().cpu().tolist() for w in f.weights())
        return {"alpha": alpha, "beta": beta}

    data = model.arch.to_json()
    data["weights"] = {"backbone": fabric(model.backbone), "subnets": [fabric(f) for f in model.subnets]}
    return PNFSArch.from_json(data)


def prune_arch(arch: PNFSArch, threshold: float) -> PNFSArch:
    """Zero the op and input weights below ``threshold`` (each edge and cell keeps its largest),
    without renormalising: the ops and inputs left out are exactly those terms."""
    if arch.weights is None:
        raise PosenasError("prune: the arch has no searched weights (export it from a trained model first)")

    def rows(matrix) -> list[list[float]]:
        out = []
        for row in matrix:
            top = max(row)
            out.append([v if v >= threshold or v == top else 0.0 for v in row])
        return out

    def fabric(f):
        return None if f is None else {"alpha": rows(f["alpha"]), "beta": rows(f["beta"])}

    data = arch.to_json()
    data["weights"] = {"backbone": fabric(arch.weights["backbone"]), "subnets": [fabric(f) for f in arch.weights["subnets"]]}
    return PNFSArch.from_json(data)


def searched_state(model: PNFSModel, exported: PNFSModel) -> dict[str, torch.Tensor]:
    """``model``'s weights for ``exported`` (its export, pruned or not): the architecture
    parameters become the exported buffers, pruned ops and inputs are left out."""
    wanted = exported.state_dict()
    state = {k: v for k, v in model.state_dict().items() if k in wanted}
    for k in wanted:
        if k not in state:
            state[k] = wanted[k]  # the fixed alpha / beta weights
    return state
