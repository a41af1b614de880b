"""The run directory of a search: refuse to overwrite another search, write the config once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from posenas.config import to_dict, write_yaml
from posenas.errors import PosenasError


def open_search_dir(out: Path, cfg: Any, resume: bool) -> bool:
    """Check ``out`` for a new or resumed search and write the config of a new one (rank 0);
    returns whether this process is rank 0. Only rank 0 checks for an existing search: under
    torchrun the other ranks may look after rank 0 wrote config.yaml."""
    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main and not resume and (out / "config.yaml").exists():
        raise PosenasError(f"{out}: holds a search already; pass --resume to continue it or choose another --out")
    if resume and not (out / "config.yaml").exists():
        raise PosenasError(f"{out}: nothing to resume (no config.yaml)")
    if is_main and not resume:
        out.mkdir(parents=True, exist_ok=True)
        write_yaml(out / "config.yaml", to_dict(cfg))
    return is_main
