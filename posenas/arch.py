"""The registry of architecture spaces: the one place arch JSON becomes a model.

Every part of posenas (training, evaluation, checkpoints, export, the CLI) turns an
architecture into a network through here::

    arch = arch_from_json({"space": "simplebaseline", "backbone": "resnet50"})
    model = build_model(arch, num_joints=17)      # a plain nn.Module
    arch = named_arch("simplebaseline-small")
    arch = load_arch_file("best_arch.json")

An architecture ("Arch") is a frozen, validated dataclass with a ``space`` class
attribute, ``to_json() -> dict`` and ``from_json(data, where) -> Arch``; its space
registers ``(arch class, build function)`` in :data:`ARCH_SPACES`.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Callable, ClassVar, NamedTuple, Protocol

from torch import nn

from posenas.errors import PosenasError
from posenas.jsonio import read_json, write_json
from posenas.models.hrnet import HRNetArch, build_hrnet
from posenas.models.simplebaseline import SimpleBaselineArch, build_simplebaseline
from posenas.spaces.autopose import AutoPoseArch, build_autopose
from posenas.spaces.efficientpose import EfficientPoseArch, build_efficientpose
from posenas.spaces.pnfs import PNFSArch, build_pnfs
from posenas.spaces.threem import ThreeMArch, build_threem
from posenas.spaces.vipnas import ViPNASMobileNetV3Arch, ViPNASResNetArch, build_vipnas
from posenas.spaces.vipnas_video import VideoArch, build_video_model


class Arch(Protocol):
    """What every space's architecture dataclass provides."""

    space: ClassVar[str]

    def to_json(self) -> dict: ...

    @classmethod
    def from_json(cls, data: Any, where: str = "arch") -> "Arch": ...


class ArchSpace(NamedTuple):
    arch: type
    build: Callable[[Any, int], nn.Module]


#: Space name -> (arch dataclass, build(arch, num_joints) -> nn.Module).
ARCH_SPACES: dict[str, ArchSpace] = {
    "simplebaseline": ArchSpace(SimpleBaselineArch, build_simplebaseline),
    "vipnas-resnet": ArchSpace(ViPNASResNetArch, build_vipnas),
    "vipnas-mobilenetv3": ArchSpace(ViPNASMobileNetV3Arch, build_vipnas),
    "efficientpose": ArchSpace(EfficientPoseArch, build_efficientpose),
    "pnfs": ArchSpace(PNFSArch, build_pnfs),
    "autopose": ArchSpace(AutoPoseArch, build_autopose),
    "hrnet": ArchSpace(HRNetArch, build_hrnet),
    "3m-pose": ArchSpace(ThreeMArch, build_threem),
    "vipnas-video": ArchSpace(VideoArch, build_video_model),
}

#: Named architectures, as arch JSON.
#: ``simplebaseline-small`` is the CPU model for minutes-long runs at ~128x96 input.
#: ``hrnet-w32`` (top-down, heatmaps at 1/4) and ``higherhrnet-w32`` (bottom-up: a tuple of
#: heatmaps + tags at 1/4 and heatmaps at 1/2) are the published COCO models.
NAMED_MODELS: dict[str, dict] = {
    "simplebaseline-resnet18": {"space": "simplebaseline", "backbone": "resnet18", "width_mult": 1.0,
                                "head": {"widths": [256, 256, 256], "kernels": [4, 4, 4]}},
    "simplebaseline-resnet50": {"space": "simplebaseline", "backbone": "resnet50", "width_mult": 1.0,
                                "head": {"widths": [256, 256, 256], "kernels": [4, 4, 4]}},
    "simplebaseline-mobilenetv2": {"space": "simplebaseline", "backbone": "mobilenetv2", "width_mult": 1.0,
                                   "head": {"widths": [256, 256, 256], "kernels": [4, 4, 4]}},
    "simplebaseline-small": {"space": "simplebaseline", "backbone": "resnet18", "width_mult": 0.375,
                             "head": {"widths": [64, 64, 64], "kernels": [4, 4, 4]}},
    # simplebaseline-small with a tag per joint: the CPU bottom-up (associative-embedding) model
    "simplebaseline-small-ae": {"space": "simplebaseline", "backbone": "resnet18", "width_mult": 0.375,
                                "head": {"widths": [64, 64, 64], "kernels": [4, 4, 4]}, "tags": True},
    "hrnet-w32": {"space": "hrnet", "width": 32, "head": "heatmap"},
    "higherhrnet-w32": {"space": "hrnet", "width": 32, "head": "higher"},
}


def arch_from_json(data: Any, where: str = "arch") -> Arch:
    """Validate arch JSON and return its dataclass, dispatching on ``data["space"]``."""
    if not isinstance(data, dict):
        raise PosenasError(f"{where}: expected a JSON object, got {type(data).__name__}")
    known = ", ".join(ARCH_SPACES)
    if "space" not in data:
        raise PosenasError(f"{where}.space: missing; allowed: {known}")
    space = data["space"]
    if not isinstance(space, str) or space not in ARCH_SPACES:
        raise PosenasError(f"{where}.space: unknown space {space!r}; allowed: {known}")
    return ARCH_SPACES[space].arch.from_json(data, where)


def arch_to_json(arch: Arch) -> dict:
    return _space_of(arch).arch.to_json(arch)


def _space_of(arch: Any) -> ArchSpace:
    space = ARCH_SPACES.get(getattr(type(arch), "space", None))
    if space is None or not isinstance(arch, space.arch):
        raise PosenasError(f"arch: expected an architecture of one of the spaces {', '.join(ARCH_SPACES)}, "
                           f"got {type(arch).__name__}")
    return space


def output_joints(arch: Arch, num_joints: int | None = None) -> int:
    """The joints a model of ``arch`` predicts: as given, else the arch's own (PNFS parts fix
    them), else COCO's 17."""
    return num_joints if num_joints is not None else getattr(arch, "num_joints", 17)


def build_model(arch: Arch | dict, num_joints: int) -> nn.Module:
    """A freshly initialised plain ``nn.Module`` for ``arch`` (a dataclass or its JSON)."""
    if isinstance(arch, dict):
        arch = arch_from_json(arch)
    return _space_of(arch).build(arch, num_joints)


def load_arch_file(path: str | os.PathLike) -> Arch:
    """Read an arch JSON file; errors name the file and the field."""
    return arch_from_json(read_json(path), where=f"{os.fspath(path)}: arch")


def save_arch_file(path: str | os.PathLike, arch: Arch) -> None:
    """Write ``arch`` as indented JSON, atomically."""
    write_json(path, arch_to_json(arch), indent=2)


def named_arch(name: str) -> Arch:
    """The architecture registered as ``name`` in :data:`NAMED_MODELS`."""
    if name not in NAMED_MODELS:
        raise PosenasError(f"unknown model {name!r}; allowed: {', '.join(NAMED_MODELS)}")
    return arch_from_json(copy.deepcopy(NAMED_MODELS[name]), where=f"model {name!r}")
