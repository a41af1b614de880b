"""The run directory of a search: refuse to overwrite another run, a search or user files; write the config once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from posenas.config import open_run_dir, to_dict
from posenas.errors import PosenasError


def open_search_dir(out: Path, cfg: Any, resume: bool) -> bool:
    """Check ``out`` for a new or resumed search and write the config of a new one (rank 0);
    returns whether this process is rank 0. Only rank 0 checks for an existing search: under
    torchrun the other ranks may look after rank 0 wrote config.yaml."""
    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main:  # the check every run folder gets (train's too): posenas.config.open_run_dir
        open_run_dir(out, to_dict(cfg), resume)
    elif resume and not (out / "config.yaml").exists():
        raise PosenasError(f"{out}: nothing to resume (no config.yaml)")
    return is_main
