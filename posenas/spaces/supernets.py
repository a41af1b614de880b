"""What a supernet checkpoint records about its supernet, and rebuilding it from that.

A supernet checkpoint carries a ``supernet`` field beside the usual ones (a ViPNAS space and
its choice sets, or an efficientpose setting and head), so that any sub-net's weights can be
taken from the file alone. This module knows the spaces; :mod:`posenas.checkpoint` reads the
file and loads the weights, so the two do not import each other in a circle.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from posenas.errors import PosenasError
from posenas.spaces.autopose import AutoPoseArch, AutoPoseSpace, AutoPoseSupernet, derived_state_dict
from posenas.spaces.efficientpose import SETTINGS, EfficientPoseArch, EfficientPoseSupernet, HeadArch
from posenas.spaces.threem import ThreeMArch, ThreeMSpace, ThreeMSupernet, derived_state_dict as threem_state_dict
from posenas.spaces.vipnas import SPACES, ViPNASSupernet, parse_choices
from posenas.spaces.vipnas_video import PropagationModel, VideoArch, build_propagation_model, propagation_state

SUPERNET_SPACES = (*SPACES, "efficientpose", "autopose", "3m-pose", "vipnas-video")


def supernet_fields(space_name: str, supernet_choices_json: dict) -> dict[str, Any]:
    """The checkpoint field of a ViPNAS supernet over ``supernet_choices_json``."""
    return {"supernet": {"space": space_name, "choices": supernet_choices_json}}


def dnas_supernet_fields(supernet: EfficientPoseSupernet) -> dict[str, Any]:
    """The checkpoint field of an EfficientPose supernet (its setting and head)."""
    return {"supernet": {"space": "efficientpose", "setting": supernet.setting, "head": supernet.head_arch.to_json()}}


def build_supernet(info: Any, num_joints: int, where: str) -> nn.Module:
    """An untrained supernet as a checkpoint's ``supernet`` field describes it (``where``: the file, for errors)."""
    if not isinstance(info, dict) or info.get("space") not in SUPERNET_SPACES:
        raise PosenasError(f"{where}: field 'supernet': expected {{'space': one of {', '.join(SUPERNET_SPACES)}, ...}}")
    if info["space"] == "autopose":
        net = info.get("net")
        if not isinstance(net, dict):
            raise PosenasError(f"{where}: field 'supernet'.net: expected the searched network's JSON object")
        return AutoPoseSupernet(AutoPoseSpace.from_json(net, f"{where}: field 'supernet'.net"), num_joints)
    if info["space"] == "3m-pose":
        net = info.get("net")
        if not isinstance(net, dict):
            raise PosenasError(f"{where}: field 'supernet'.net: expected the fabric's JSON object")
        try:
            return ThreeMSupernet(ThreeMSpace.from_json(net, f"{where}: field 'supernet'.net"), num_joints,
                                  info.get("sampling", "dyn-egs"), info.get("r_alpha", 2), info.get("r_beta", 3))
        except TypeError:
            raise PosenasError(f"{where}: field 'supernet': sampling, r_alpha, r_beta have the wrong types") from None
    if info["space"] == "vipnas-video":
        return build_propagation_model(info, num_joints, where)
    if info["space"] == "efficientpose":
        if info.get("setting") not in SETTINGS:
            raise PosenasError(f"{where}: field 'supernet'.setting: expected one of {', '.join(SETTINGS)}")
        head = HeadArch.from_json(info.get("head", {}), f"{where}: field 'supernet'.head")
        return EfficientPoseSupernet(info["setting"], head, num_joints)
    choices = parse_choices(SPACES[info["space"]], info.get("choices"), f"{where}: field 'supernet'.choices")
    return ViPNASSupernet(info["space"], choices, num_joints)


def subnet_state(supernet: nn.Module, arch: Any, where: str) -> dict[str, torch.Tensor]:
    """The plain model of ``arch``'s weights, taken from ``supernet`` (a copy)."""
    if isinstance(supernet, AutoPoseSupernet):
        if not isinstance(arch, AutoPoseArch):
            raise PosenasError(f"{where}: cannot inherit weights: an autopose supernet holds autopose archs only")
        try:
            return derived_state_dict(supernet, arch, supernet.num_joints)
        except PosenasError as e:
            raise PosenasError(f"{where}: {e}") from None
    if isinstance(supernet, ThreeMSupernet):
        if not isinstance(arch, ThreeMArch):
            raise PosenasError(f"{where}: cannot inherit weights: a 3m-pose supernet holds 3m-pose archs only")
        try:
            return threem_state_dict(supernet, arch)
        except PosenasError as e:
            raise PosenasError(f"{where}: {e}") from None
    if isinstance(supernet, PropagationModel):
        if not isinstance(arch, VideoArch):
            raise PosenasError(f"{where}: cannot inherit weights: a vipnas-video supernet holds vipnas-video archs only")
        return propagation_state(supernet, arch, where)
    if isinstance(supernet, EfficientPoseSupernet):
        if not isinstance(arch, EfficientPoseArch) or arch.setting != supernet.setting or arch.head != supernet.head_arch:
            raise PosenasError(f"{where}: cannot inherit weights: the arch is not a sub-net of this efficientpose "
                               f"supernet ({supernet.setting} setting, head {supernet.head_arch.to_json()})")
        return supernet.derived_state_dict(arch)
    try:
        supernet.set_active(arch)
    except (PosenasError, AttributeError) as e:
        raise PosenasError(f"{where}: cannot inherit weights: {e}") from None
    with torch.no_grad():
        return {k: v.detach().clone() for k, v in supernet.active_state_dict().items()}
