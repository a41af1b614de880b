"""`posenas search` dispatch: one entry per search space, each naming its config, run and report.

A newcomer looking for a method's search finds it in the module named after the method:
:mod:`posenas.search.vipnas`, :mod:`posenas.search.efficientpose`, :mod:`posenas.search.pnfs`,
:mod:`posenas.search.autopose`, :mod:`posenas.search.threem` (3M-Pose),
:mod:`posenas.search.vipnas_video` (T-ViPNAS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple

from posenas.errors import PosenasError
from posenas.search import autopose, efficientpose, pnfs, threem, vipnas, vipnas_video
from posenas.spaces.vipnas import SPACES as VIPNAS_SPACES


class SearchMethod(NamedTuple):
    """A search: its typed config, its resumable run, and how its summary is printed."""

    config: type
    run: Callable[..., dict]
    report: Callable[[dict, Path, Any], None]


_VIPNAS = SearchMethod(vipnas.SearchExperimentConfig, vipnas.run_search, vipnas.print_summary)

#: ``supernet.space`` of a search config -> the search that runs it.
SEARCHES: dict[str, SearchMethod] = {
    **{space: _VIPNAS for space in VIPNAS_SPACES},
    "efficientpose": SearchMethod(efficientpose.DNASExperimentConfig, efficientpose.run_efficientpose,
                                  efficientpose.print_summary),
    "pnfs": SearchMethod(pnfs.PNFSExperimentConfig, pnfs.run_pnfs, pnfs.print_summary),
    "autopose": SearchMethod(autopose.AutoPoseExperimentConfig, autopose.run_autopose, autopose.print_summary),
    "3m-pose": SearchMethod(threem.ThreeMExperimentConfig, threem.run_threem, threem.print_summary),
    "vipnas-video": SearchMethod(vipnas_video.VideoSearchExperimentConfig, vipnas_video.run_video_search,
                                 vipnas_video.print_summary),
}


def method_for(space: str | None, config_file: str) -> SearchMethod:
    """The search of a config's ``supernet.space`` (none given: ViPNAS, whose config defaults it)."""
    if space is None:
        return _VIPNAS
    if space not in SEARCHES:
        raise PosenasError(f"{config_file}: supernet.space {space!r}: no search for it; known: {', '.join(SEARCHES)}")
    return SEARCHES[space]
