"""The run directory of a search: refuse to overwrite another run, a search or user files; write the config once."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from posenas.config import open_run_dir, remove_run_start, to_dict
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


#: What a search writes before any work worth resuming: removed when its start fails.
START_FILES = ("config.yaml", "cost_table.json")


@contextmanager
def removed_if_start_fails(out: Path, resume: bool) -> Iterator[None]:
    """A new search that fails (a bad value found late, missing data) before it wrote anything
    but its config and cost table leaves nothing behind: a folder holding its config.yaml would
    refuse the corrected retry and resume the bad config. Only what this start wrote is
    removed (never a folder that held a config before), and a Ctrl-C keeps it: ``--resume``
    continues it."""
    fresh = not resume and not (out / "config.yaml").exists()
    try:
        yield
    except KeyboardInterrupt:
        raise
    except BaseException as error:
        from posenas.engine.train import Interrupted

        if fresh and not isinstance(error, Interrupted) and out.is_dir() and not any(
                p.is_file() and p.name not in START_FILES for p in out.rglob("*")):
            remove_run_start(out, START_FILES)
        raise
