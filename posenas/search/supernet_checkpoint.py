"""Supernet checkpoints: self-describing like every checkpoint, plus the space and the
choice sets the supernet was built over (field ``supernet``), so any sub-net's weights
can be inherited from the file alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from posenas.arch import arch_from_json
from posenas.checkpoint import load_checkpoint, load_weights
from posenas.errors import PosenasError
from posenas.keypoints import get_schema
from posenas.spaces.vipnas import SPACES, ViPNASSupernet, parse_choices


def supernet_fields(space_name: str, supernet_choices_json: dict) -> dict[str, Any]:
    return {"supernet": {"space": space_name, "choices": supernet_choices_json}}


def supernet_from_checkpoint(ckpt: dict[str, Any], path: str | Path) -> ViPNASSupernet:
    """Rebuild a supernet from a loaded checkpoint dict (weights loaded, largest sub-net active)."""
    info = ckpt.get("supernet")
    if not isinstance(info, dict) or info.get("space") not in SPACES:
        raise PosenasError(f"{path}: field 'supernet': expected {{'space': one of {', '.join(SPACES)}, 'choices': ...}}")
    choices = parse_choices(SPACES[info["space"]], info.get("choices"), f"{path}: field 'supernet'.choices")
    try:
        num_joints = get_schema(ckpt["schema"]).num_joints
    except PosenasError as e:
        raise PosenasError(f"{path}: {e}") from None
    supernet = ViPNASSupernet(info["space"], choices, num_joints)
    load_weights(supernet, ckpt["state_dict"], path)
    return supernet


def inherited_state(path: str | Path, arch_json: dict) -> dict:
    """Weights for the plain model of ``arch_json`` from checkpoint ``path``: a supernet's
    slices for that arch, or a plain checkpoint of the very same arch."""
    ckpt = load_checkpoint(path)
    arch = arch_from_json(arch_json)
    if "supernet" in ckpt:
        supernet = supernet_from_checkpoint(ckpt, path)
        try:
            supernet.set_active(arch)
        except PosenasError as e:
            raise PosenasError(f"{path}: cannot inherit weights: {e}") from None
        return {k: v.detach().clone() for k, v in supernet.active_state_dict().items()}
    if ckpt["arch"] != arch.to_json():
        raise PosenasError(f"{path}: holds the weights of another architecture ({ckpt['arch'].get('space')}); "
                           "init_from needs the same arch or a supernet that contains it")
    return ckpt["state_dict"]
