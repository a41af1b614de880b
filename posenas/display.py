"""How results are printed: scores with enough digits, warnings and phase headings on one line each.

Why a module of its own: the searches, ``train`` and ``eval`` all print scores, and a score
printed as ``0.0000`` when it is 3.5e-5 hides whether a run learnt anything at all.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def format_score(value: float) -> str:
    """Four decimals for ordinary scores, four significant digits for tiny ones (3.5e-05, not 0.0000)."""
    value = float(value)
    if value != 0.0 and abs(value) < 1e-3:
        return f"{value:.4g}"
    return f"{value:.4f}"


def warn(message: str) -> None:
    """A one-line warning on stderr: the result exists but may mean nothing."""
    print(f"posenas: warning: {message}", file=sys.stderr, flush=True)


def heading(text: str) -> None:
    """A phase heading of a long command (``== supernet training``); printed by rank 0 alone under torchrun."""
    if os.environ.get("RANK", "0") == "0":
        print(f"\n== {text}", flush=True)


def retrain_command(arch_file: Path, data_root: Any, input_size: Any, init_from: Path | None = None,
                    config: str = "configs/baselines/tiny.yaml") -> str:
    """The command that trains a searched architecture with the baseline recipe (``config``: a
    bottom-up search's is the bottom-up one) on the search's data."""
    h, w = input_size
    parts = ["posenas train", f"--arch {arch_file}", f"--config {config}"]
    if init_from is not None:
        parts.append(f"--init-from {init_from}")
    parts += [f"--out {arch_file.parent / 'retrain'}", f"data.root={data_root}", f"data.input_size=[{h},{w}]"]
    return " ".join(parts)


def ties(scores: list[float], rel: float = 1e-9) -> bool:
    """Whether every score is the same (a best picked from ties means nothing)."""
    return len(scores) > 1 and max(scores) - min(scores) <= rel * max(1.0, abs(max(scores)))


#: Below this gap between the largest and smallest weight of one choice, alpha "did not move".
UNMOVED_ALPHA = 0.01


def warn_if_alpha_unmoved(spread: float, where: str, consequence: str) -> None:
    """Warn when a differentiable search's largest op-weight gap (over every ``where``: position,
    edge) stayed below :data:`UNMOVED_ALPHA`: its result is the uniform mixture's."""
    if spread < UNMOVED_ALPHA:
        warn(f"alpha did not move (largest gap between {where} op weights {spread:.4f}): {consequence}")
