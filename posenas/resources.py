"""The configs and architecture JSONs shipped inside the package, and the one resolver for them.

Why: an installed posenas (a wheel, not a checkout) has no ``configs/`` folder in the
current directory, yet ``posenas search --config vipnas/tiny-resnet`` and the commands
posenas prints itself (``--config configs/baselines/tiny.yaml``) must work from anywhere.
Every place that takes a config or an arch file calls :func:`resolve_config`: an existing
path wins; otherwise ``configs/vipnas/tiny-resnet.yaml``, ``vipnas/tiny-resnet.yaml`` and
``vipnas/tiny-resnet`` all name the shipped ``posenas/configs/vipnas/tiny-resnet.yaml``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from posenas.errors import PosenasError

#: The shipped tree (package data; the repository's top-level ``configs`` links here).
SHIPPED_ROOT = Path(__file__).resolve().parent / "configs"

Kind = Literal["config", "arch"]
SUFFIXES: dict[str, tuple[str, ...]] = {"config": (".yaml", ".yml"), "arch": (".json",)}
_WHAT = {"config": "config", "arch": "architecture JSON"}


def shipped(kind: Kind | None = None) -> list[str]:
    """Names of the shipped files (``vipnas/tiny-resnet.yaml``, ...), sorted; ``kind`` picks configs or archs."""
    suffixes = SUFFIXES[kind] if kind else sum(SUFFIXES.values(), ())
    return sorted(p.relative_to(SHIPPED_ROOT).as_posix() for p in SHIPPED_ROOT.rglob("*")
                  if p.is_file() and p.suffix in suffixes)


def _shipped_name(text: str) -> str:
    """``configs/x/y.yaml`` or ``posenas/configs/x/y.yaml`` (relative, as posenas prints them) -> ``x/y.yaml``."""
    name = text.replace("\\", "/").removeprefix("./")
    for prefix in ("posenas/configs/", "configs/"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def resolve_config(path_or_name: str | os.PathLike, kind: Kind = "config") -> Path:
    """The file a ``--config`` / ``--arch`` argument names: the path itself when it exists,
    else the shipped file of that name (the suffix may be left out); otherwise a one-line
    error listing the shipped names of that kind."""
    text = os.fspath(path_or_name)
    path = Path(text)
    if path.is_file():
        return path
    name = _shipped_name(text)
    if name and not Path(name).is_absolute() and ".." not in Path(name).parts:
        candidates = [name] if Path(name).suffix in SUFFIXES[kind] else [name + s for s in SUFFIXES[kind]]
        for candidate in candidates:
            shipped_file = SHIPPED_ROOT / candidate
            if shipped_file.is_file():
                return shipped_file
    raise PosenasError(f"{text}: no such file, and no shipped {_WHAT[kind]} of that name; shipped: "
                       f"{', '.join(shipped(kind))} (see `posenas configs`)")


def describe(name: str) -> str:
    """One line about a shipped file: a YAML's first comment line, an arch JSON's space and setting."""
    path = SHIPPED_ROOT / name
    if path.suffix == ".json":
        from posenas.jsonio import read_json

        data = read_json(path)
        if not isinstance(data, dict):
            return ""
        words = [f"space {data.get('space')}"]
        words += [f"{key} {data[key]}" for key in ("setting", "backbone") if key in data]
        if isinstance(data.get("parts"), list):  # PNFS: the parts fix the joint count (profile --joints N)
            words.append(f"{1 + max(j for part in data['parts'] for j in part)} joints")
        return ", ".join(words)
    first = path.read_text(encoding="utf-8").split("\n", 1)[0]  # every shipped YAML opens with a one-line summary
    return first.lstrip("#").strip() if first.startswith("#") else ""


__all__ = ["SHIPPED_ROOT", "shipped", "resolve_config", "describe"]
