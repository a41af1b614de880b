"""Supernet checkpoints: self-describing like every checkpoint, plus what the supernet was
built over (field ``supernet``: a ViPNAS space and its choice sets, or an efficientpose
setting and head), so any sub-net's weights can be inherited from the file alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from posenas.arch import arch_from_json
from posenas.checkpoint import load_checkpoint, load_weights
from posenas.errors import PosenasError
from posenas.keypoints import get_schema
from posenas.spaces.efficientpose import SETTINGS, EfficientPoseArch, EfficientPoseSupernet, HeadArch
from posenas.spaces.vipnas import SPACES, ViPNASSupernet, parse_choices

SUPERNET_SPACES = (*SPACES, "efficientpose")


def supernet_fields(space_name: str, supernet_choices_json: dict) -> dict[str, Any]:
    return {"supernet": {"space": space_name, "choices": supernet_choices_json}}


def dnas_supernet_fields(supernet: EfficientPoseSupernet) -> dict[str, Any]:
    return {"supernet": {"space": "efficientpose", "setting": supernet.setting, "head": supernet.head_arch.to_json()}}


def supernet_from_checkpoint(ckpt: dict[str, Any], path: str | Path) -> nn.Module:
    """Rebuild a supernet from a loaded checkpoint dict, weights loaded."""
    info = ckpt.get("supernet")
    if not isinstance(info, dict) or info.get("space") not in SUPERNET_SPACES:
        raise PosenasError(f"{path}: field 'supernet': expected {{'space': one of {', '.join(SUPERNET_SPACES)}, ...}}")
    try:
        num_joints = get_schema(ckpt["schema"]).num_joints
    except PosenasError as e:
        raise PosenasError(f"{path}: {e}") from None
    if info["space"] == "efficientpose":
        if info.get("setting") not in SETTINGS:
            raise PosenasError(f"{path}: field 'supernet'.setting: expected one of {', '.join(SETTINGS)}")
        head = HeadArch.from_json(info.get("head", {}), f"{path}: field 'supernet'.head")
        supernet: nn.Module = EfficientPoseSupernet(info["setting"], head, num_joints)
    else:
        choices = parse_choices(SPACES[info["space"]], info.get("choices"), f"{path}: field 'supernet'.choices")
        supernet = ViPNASSupernet(info["space"], choices, num_joints)
    load_weights(supernet, ckpt["state_dict"], path)
    return supernet


def subnet_state(supernet: nn.Module, arch: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The plain model of ``arch``'s weights, taken from ``supernet`` (a copy)."""
    if isinstance(supernet, EfficientPoseSupernet):
        if not isinstance(arch, EfficientPoseArch) or arch.setting != supernet.setting or arch.head != supernet.head_arch:
            raise PosenasError(f"{path}: cannot inherit weights: the arch is not a sub-net of this efficientpose "
                               f"supernet ({supernet.setting} setting, head {supernet.head_arch.to_json()})")
        return supernet.derived_state_dict(arch)
    try:
        supernet.set_active(arch)
    except (PosenasError, AttributeError) as e:
        raise PosenasError(f"{path}: cannot inherit weights: {e}") from None
    with torch.no_grad():
        return {k: v.detach().clone() for k, v in supernet.active_state_dict().items()}


def inherited_state(path: str | Path, arch_json: dict) -> dict:
    """Weights for the plain model of ``arch_json`` from checkpoint ``path``: a supernet's
    slices for that arch, or a plain checkpoint of the very same arch."""
    ckpt = load_checkpoint(path)
    arch = arch_from_json(arch_json)
    if "supernet" in ckpt:
        return subnet_state(supernet_from_checkpoint(ckpt, path), arch, path)
    if ckpt["arch"] != arch.to_json():
        raise PosenasError(f"{path}: holds the weights of another architecture ({ckpt['arch'].get('space')}); "
                           "init_from needs the same arch or a supernet that contains it")
    return ckpt["state_dict"]
