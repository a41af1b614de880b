"""`posenas compare`: the picks of several search and training runs side by side.

Why: a method comparison is many runs (methods x seeds), each with its own file layout.
(The module is ``comparison``, not ``compare``: a submodule ``posenas.compare`` would shadow
the API verb ``posenas.compare`` once imported.) :func:`load_run` recognises a run directory
by its ``config.yaml`` (a search has a ``supernet`` section whose ``space`` and
``search.strategy`` name the method; a training run has a ``model`` section) and reads the points it holds
from the files the run wrote:

==========================  ================================================  ==========
run                         points                                            AP kind
==========================  ================================================  ==========
ViPNAS search               every line of ``candidates.jsonl``; pick:         inherited
                            ``results.json`` ``best``
EfficientPose DNAS          the derived arch (``results.json``); its AP is    supernet
                            the supernet mixture's val AP (``supernet_val``)
EfficientPose random        every line of ``candidates.jsonl`` (each trained  trained
                            ``steps_each`` steps from scratch); pick: best
PNFS search                 ``dense`` (the pick) and ``pruned``               trained /
                                                                              inherited
training run / retrain      the final val AP of ``results.json``; GMACs and   trained
                            params counted on ``checkpoints/last.pt``
==========================  ================================================  ==========

"inherited": scored with weights taken from a supernet or a trained fabric, not trained
alone; "trained": the architecture's own training run (``steps`` says how long);
"supernet": the AP of the search's mixture network, shown in the tables but not plotted
(it is not the derived architecture's AP: retrain it for one).

GMACs are compared at one input size: runs made at different ``data.input_size`` are
refused (MACs of nets with global pooling and fixed-size heads do not scale exactly with
the pixel count, so a rescaled number would be a guess). Latency is only what a run
measured (ViPNAS: every candidate, batch 1, ``search.latency_threads`` threads, on the
machine that ran the search); the other runs give None. Means and standard deviations
(sample, n - 1) are over the runs of one method: their picks.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from posenas.display import format_score, warn
from posenas.errors import PosenasError
from posenas.jsonio import read_json, read_text, write_bytes, write_json, write_text

#: AP kinds whose value belongs to the point's architecture: these are plotted and form fronts.
PLOTTED_KINDS = ("inherited", "trained")

#: ``results.json`` ``metric`` -> the name of its primary score (as posenas.engine.predict ranks).
METRIC_NAMES = {"coco": "AP", "pckh": "PCKh@0.5 mean"}


@dataclass(frozen=True)
class Point:
    """One architecture a run evaluated: cost, score and where the score comes from."""

    method: str  # the group of runs compared (seeds of one config share it)
    strategy: str  # what produced the point inside its run (random, evolution, dnas, dense, pruned, train)
    run: str
    arch: dict[str, Any]
    input_size: tuple[int, int]  # (height, width) the GMACs are counted at
    gmacs: float
    params_m: float
    latency_ms: float | None  # as the run measured it; None where it did not
    ap: float | None  # the primary score: COCO AP, or PCKh@0.5 mean on MPII
    ap_kind: str  # inherited | trained | supernet
    metric: str | None  # coco | pckh (None: a DNAS run whose supernet wrote no val result)
    steps: int | None = None  # training steps behind a "trained" score
    pick: bool = False  # the run's chosen architecture

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d


# ---------------------------------------------------------------- reading run files


def _read_json_file(path: Path) -> Any:
    if not path.is_file():
        raise PosenasError(f"{path}: no such file (is the run finished?)")
    return read_json(path)


def _read_jsonl_strict(path: Path) -> list[dict]:
    """Every line of a finished run's JSON-lines file; a bad line (torn ones too) names file and line."""
    if not path.is_file():
        raise PosenasError(f"{path}: no such file (is the run finished?)")
    out = []
    for i, line in enumerate(read_text(path, "JSON-lines").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise PosenasError(f"{path}: line {i}: invalid JSON at column {e.colno}: {e.msg}") from None
        if not isinstance(record, dict):
            raise PosenasError(f"{path}: line {i}: expected a JSON object, got {type(record).__name__}")
        out.append(record)
    if not out:
        raise PosenasError(f"{path}: holds no records")
    return out


def _get(record: Any, key: str, where: str, kind: str = "number") -> Any:
    """``record[key]`` checked: ``number`` (finite or not, no bool), ``int``, ``dict``, ``str``."""
    if not isinstance(record, dict):
        raise PosenasError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise PosenasError(f"{where}: field '{key}' missing")
    value = record[key]
    ok = {"number": isinstance(value, (int, float)) and not isinstance(value, bool),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "dict": isinstance(value, dict), "str": isinstance(value, str)}[kind]
    if not ok:
        raise PosenasError(f"{where}: field '{key}': expected a {kind}, got {value!r:.60}")
    return value


def _score(record: dict, where: str) -> tuple[float, str]:
    """(primary score, metric) of a record holding ``metric`` and ``score``."""
    metric = _get(record, "metric", where, "str")
    if metric not in METRIC_NAMES:
        raise PosenasError(f"{where}: field 'metric': {metric!r} not known; known: {', '.join(METRIC_NAMES)}")
    return float(_get(record, "score", where)), metric


def _primary(result: dict, where: str) -> tuple[float, str]:
    """(primary score, metric) of a validation result as ``train`` writes it (``metric``, ``AP`` ...)."""
    from posenas.engine.predict import PRIMARY_METRIC

    metric = _get(result, "metric", where, "str")
    if metric not in PRIMARY_METRIC:
        raise PosenasError(f"{where}: field 'metric': {metric!r} not known; known: {', '.join(PRIMARY_METRIC)}")
    value: Any = result
    for key in PRIMARY_METRIC[metric][0]:
        value = _get(value, key, where, "dict" if key != PRIMARY_METRIC[metric][0][-1] else "number")
    return float(value), metric


def _config(run: Path) -> dict:
    from posenas.config import read_yaml

    path = run / "config.yaml"
    if not run.is_dir():
        raise PosenasError(f"{run}: no such run directory")
    if not path.is_file():
        raise PosenasError(f"{run}: not a posenas run (no config.yaml)")
    cfg = read_yaml(path)
    if not isinstance(cfg, dict):
        raise PosenasError(f"{path}: expected a mapping of config sections")
    return cfg


def _input_size(cfg: dict, run: Path) -> tuple[int, int]:
    size = _get(cfg, "data", f"{run / 'config.yaml'}", "dict").get("input_size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        raise PosenasError(f"{run / 'config.yaml'}: field 'data.input_size': expected [height, width], got {size!r}")
    return size[0], size[1]


def method_name(cfg: dict, run: Path) -> str:
    """The group a search run belongs to: its space and strategy (``vipnas-resnet/random+evolution``)."""
    space = _get(cfg, "supernet", str(run / "config.yaml"), "dict").get("space")
    search = cfg.get("search") if isinstance(cfg.get("search"), dict) else {}
    if space is None or str(space).startswith("vipnas"):
        strategies = search.get("strategies", ["random", "evolution"])
        return f"{space or 'vipnas-resnet'}/{'+'.join(map(str, strategies))}"
    return f"{space}/{search.get('strategy', 'dnas' if space == 'efficientpose' else 'synchronous')}"


def _arch_of(record: dict, where: str) -> dict:
    return _get(record, "arch", where, "dict")


def _latency(record: dict, where: str) -> float | None:
    value = record.get("latency_ms")
    if value is None:
        return None
    return float(_get(record, "latency_ms", where))


# ---------------------------------------------------------------- one loader per run kind


def _vipnas(run: Path, cfg: dict, size: tuple[int, int]) -> list[Point]:
    method = method_name(cfg, run)
    results = _read_json_file(run / "results.json")
    cand_file = run / "candidates.jsonl"
    best = _get(results, "best", f"{run / 'results.json'}", "dict")
    pick_key = (_get(best, "strategy", f"{run / 'results.json'}: best", "str"),
                _get(best, "index", f"{run / 'results.json'}: best", "int"))
    points, found = [], False
    for i, r in enumerate(_read_jsonl_strict(cand_file), 1):
        where = f"{cand_file}: line {i}"
        key = (_get(r, "strategy", where, "str"), _get(r, "index", where, "int"))
        ap, metric = _score(r, where)
        pick = key == pick_key and not found
        found = found or pick
        points.append(Point(method, key[0], str(run), _arch_of(r, where), size, float(_get(r, "gmacs", where)),
                            float(_get(r, "params_m", where)), _latency(r, where), ap, "inherited", metric, None, pick))
    if not found:
        raise PosenasError(f"{run / 'results.json'}: field 'best': {pick_key[0]} #{pick_key[1]} is not in {cand_file}")
    return points


def _efficientpose_random(run: Path, cfg: dict, size: tuple[int, int]) -> list[Point]:
    method = method_name(cfg, run)
    results = _read_json_file(run / "results.json")
    rwhere = f"{run / 'results.json'}"
    pick_index = _get(_get(results, "best", rwhere, "dict"), "index", f"{rwhere}: best", "int")
    steps = _get(results, "steps_each", rwhere, "int")
    cand_file = run / "candidates.jsonl"
    points, found = [], False
    for i, r in enumerate(_read_jsonl_strict(cand_file), 1):
        where = f"{cand_file}: line {i}"
        index = _get(r, "index", where, "int")
        ap, metric = _score(r, where)
        pick = index == pick_index and not found
        found = found or pick
        points.append(Point(method, "random", str(run), _arch_of(r, where), size, float(_get(r, "gmacs", where)),
                            float(_get(r, "params_m", where)), None, ap, "trained", metric, steps, pick))
    if not found:
        raise PosenasError(f"{rwhere}: field 'best': #{pick_index} is not in {cand_file}")
    return points


def _efficientpose_dnas(run: Path, cfg: dict, size: tuple[int, int]) -> list[Point]:
    results = _read_json_file(run / "results.json")
    where = f"{run / 'results.json'}"
    val = _get(results, "supernet_val", where, "dict")
    ap, metric = _primary(val, f"{where}: supernet_val") if val else (None, None)
    return [Point(method_name(cfg, run), "dnas", str(run), _arch_of(results, where), size,
                  float(_get(results, "gmacs", where)), float(_get(results, "params_m", where)), None, ap,
                  "supernet", metric, val.get("steps"), True)]


def _pnfs(run: Path, cfg: dict, size: tuple[int, int]) -> list[Point]:
    method = method_name(cfg, run)
    results = _read_json_file(run / "results.json")
    rwhere = f"{run / 'results.json'}"
    training_val = results.get("training_val")
    steps = training_val.get("steps") if isinstance(training_val, dict) else None
    points = []
    for key, arch_file, kind in (("dense", "arch.json", "trained"), ("pruned", "arch_pruned.json", "inherited")):
        if key not in results and key == "pruned":
            continue
        r = _get(results, key, rwhere, "dict")
        where = f"{rwhere}: {key}"
        ap, metric = _score(r, where)
        arch = _read_json_file(run / arch_file)
        if not isinstance(arch, dict):
            raise PosenasError(f"{run / arch_file}: expected an architecture JSON object")
        points.append(Point(method, key, str(run), arch, size, float(_get(r, "gmacs", where)),
                            float(_get(r, "params_m", where)), None, ap, kind, metric,
                            steps if kind == "trained" else None, key == "dense"))
    return points


def arch_tag(arch: dict) -> str:
    """A short stable name of an architecture: training runs of one arch (seeds) group by it."""
    return hashlib.sha1(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:8]


def _is_search(folder: Path) -> bool:
    return (folder / "config.yaml").is_file() and "supernet" in _config(folder)


def _search_of(run: Path, model: dict) -> Path | None:
    """The search a training run retrains: the folder it sits in (``retrain_command`` puts it in
    SEARCH/retrain) or the one its ``model.arch_file`` came from (a search's best_arch.json)."""
    if _is_search(run.parent):
        return run.parent
    arch_file = model.get("arch_file")
    if isinstance(arch_file, str) and _is_search(Path(arch_file).parent):
        return Path(arch_file).parent
    return None


def _training(run: Path, cfg: dict, size: tuple[int, int]) -> list[Point]:
    from posenas.checkpoint import load_checkpoint, model_from_checkpoint
    from posenas.cost import count_macs, count_params

    results = _read_json_file(run / "results.json")
    where = f"{run / 'results.json'}"
    ap, metric = _primary(results, where)
    last = run / "checkpoints" / "last.pt"
    if "supernet" in load_checkpoint(last):
        raise PosenasError(f"{run}: the supernet training run of a search; compare the search run {run.parent}")
    loaded = model_from_checkpoint(last)
    arch = loaded.arch.to_json()
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    search = _search_of(run, model)
    if search is not None:
        method = f"{method_name(_config(search), search)}/retrain"
    elif model.get("name") and model.get("arch") is None and model.get("arch_file") is None:
        method = f"train/{model['name']}"
    else:  # an architecture given as JSON: the recipe's model.name is not what was trained
        method = f"train/{arch.get('space', 'arch')}#{arch_tag(arch)}"
    return [Point(method, "train", str(run), arch, size, count_macs(loaded.model, size)[0] / 1e9,
                  count_params(loaded.model) / 1e6, None, ap, "trained", metric,
                  _get(results, "steps", where, "int"), True)]


def load_run(path: str | os.PathLike) -> list[Point]:
    """The points of one run directory (search or training), its pick marked; a directory that
    is no finished posenas run, or a missing / malformed file, is a one-line error."""
    run = Path(path)
    cfg = _config(run)
    size = _input_size(cfg, run)
    if "supernet" in cfg:
        supernet = _get(cfg, "supernet", str(run / "config.yaml"), "dict")
        space = supernet.get("space") or "vipnas-resnet"
        strategy = (cfg.get("search") or {}).get("strategy") if isinstance(cfg.get("search"), dict) else None
        if str(space).startswith("vipnas"):
            return _vipnas(run, cfg, size)
        if space == "efficientpose":
            return (_efficientpose_random if strategy == "random" else _efficientpose_dnas)(run, cfg, size)
        if space == "pnfs":
            return _pnfs(run, cfg, size)
        raise PosenasError(f"{run / 'config.yaml'}: field 'supernet.space': {space!r}: no known search; "
                           "known: vipnas-*, efficientpose, pnfs")
    if "model" in cfg:
        return _training(run, cfg, size)
    raise PosenasError(f"{run / 'config.yaml'}: neither a search (no 'supernet' section) nor a training run "
                       "(no 'model' section)")


# ---------------------------------------------------------------- summaries


def plottable(p: Point, cost: str) -> bool:
    """Whether ``p`` goes on the ``cost`` plot: an AP of its own arch (finite) and a value for ``cost``."""
    return (p.ap_kind in PLOTTED_KINDS and p.ap is not None and math.isfinite(p.ap)
            and getattr(p, cost) is not None)



def pareto_front(points: Iterable[Point], cost: str) -> list[Point]:
    """Points that no other point beats on both AP (higher) and ``cost`` (lower), by rising cost;
    only points with an AP of their own architecture and a value for ``cost``."""
    from posenas.search.vipnas import pareto_front as front

    usable = [p for p in points if plottable(p, cost)]
    records = [{"score": p.ap, cost: getattr(p, cost), "point": p} for p in usable]
    return [r["point"] for r in front(records, cost)]


def mean_std(values: list[float]) -> tuple[float, float | None] | None:
    """(mean, sample standard deviation); std None for one value, None for no value."""
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class Comparison:
    points: list[Point]
    input_size: tuple[int, int]
    metric: str
    notes: list[str] = field(default_factory=list)

    @property
    def picks(self) -> list[Point]:
        return [p for p in self.points if p.pick]

    def methods(self) -> dict[str, dict[str, Any]]:
        """Per method: how many runs, AP kind, and mean / std of the picks' numbers."""
        out: dict[str, dict[str, Any]] = {}
        for method in dict.fromkeys(p.method for p in self.points):
            picks = [p for p in self.picks if p.method == method]
            stats = {"runs": len(picks), "ap_kind": "/".join(dict.fromkeys(p.ap_kind for p in picks))}
            for name in ("ap", "gmacs", "params_m", "latency_ms"):
                ms = mean_std([getattr(p, name) for p in picks if getattr(p, name) is not None])
                stats[name] = None if ms is None else {"mean": ms[0], "std": ms[1]}
            out[method] = stats
        return out


def collect(runs: list[str | os.PathLike]) -> Comparison:
    """Load every run; refuse runs at different input sizes or with different metrics."""
    if not runs:
        raise PosenasError("compare: at least one run directory is required")
    seen: dict[Path, str] = {}
    points: list[Point] = []
    for run in runs:
        key = Path(run).resolve()
        if key in seen:
            raise PosenasError(f"{run}: given twice (also as {seen[key]})")
        seen[key] = str(run)
        points += load_run(run)
    by_size = {tuple(p.input_size): p.run for p in points}
    if len(by_size) > 1:
        listed = ", ".join(f"{h}x{w} ({r})" for (h, w), r in by_size.items())
        raise PosenasError(f"compare: runs made at different input sizes: {listed}; GMACs and AP compare only at "
                           "one data.input_size: compare each size separately")
    by_metric = {p.metric: p.run for p in points if p.metric is not None}
    if len(by_metric) > 1:
        listed = ", ".join(f"{METRIC_NAMES[m]} ({r})" for m, r in by_metric.items())
        raise PosenasError(f"compare: runs scored with different metrics: {listed}")
    notes = []
    roots = {}
    for run in seen.values():
        roots.setdefault(str(_config(Path(run)).get("data", {}).get("root")), run)
    if len(roots) > 1:
        notes.append(f"runs used different data.root ({', '.join(roots)}): their AP come from different val sets")
    if any(p.ap_kind == "supernet" for p in points):
        notes.append("AP kind 'supernet': the search's mixture network's val AP, not the derived arch's "
                     "(not plotted; retrain the arch and compare the retrain run)")
    if any(p.latency_ms is not None for p in points):
        notes.append("latency: as each run measured it (ViPNAS: batch 1, search.latency_threads threads, on the "
                     "machine that ran the search)")
    return Comparison(points, points[0].input_size, next(iter(by_metric), "coco"), notes)


# ---------------------------------------------------------------- output


def _num(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _ms(stats: dict | None, fmt) -> str:
    if stats is None:
        return "—"
    return fmt(stats["mean"]) + ("" if stats["std"] is None else f" ± {fmt(stats['std'])}")


def markdown(c: Comparison) -> str:
    """The two tables (picks of every run; per-method mean ± std) and the notes."""
    h, w = c.input_size
    score = METRIC_NAMES[c.metric]
    lines = [f"# Method comparison ({len(c.picks)} runs, input {h}x{w}, score {score})", "",
             "## Picks of every run", "",
             f"| method | run | strategy | GMACs | params (M) | latency (ms) | {score} | {score} kind | steps |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in c.picks:
        lines.append(f"| {p.method} | {p.run} | {p.strategy} | {_num(p.gmacs)} | {_num(p.params_m)} | "
                     f"{'—' if p.latency_ms is None else f'{p.latency_ms:.2f}'} | "
                     f"{'—' if p.ap is None else format_score(p.ap)} | {p.ap_kind} | {_num(p.steps, 12)} |")
    lines += ["", "## Per method: mean ± std over runs (sample std; picks only)", "",
              f"| method | runs | {score} | {score} kind | GMACs | params (M) | latency (ms) |",
              "|---|---|---|---|---|---|---|"]
    for method, s in c.methods().items():
        lines.append(f"| {method} | {s['runs']} | {_ms(s['ap'], format_score)} | {s['ap_kind']} | "
                     f"{_ms(s['gmacs'], _num)} | {_ms(s['params_m'], _num)} | "
                     f"{_ms(s['latency_ms'], lambda v: f'{v:.2f}')} |")
    lines += ["", f"All {len(c.points)} points are in compare.json; plots: pareto_gmacs.png, pareto_latency.png."]
    if c.notes:
        lines += [""] + [f"- {n}" for n in c.notes]
    return "\n".join(lines) + "\n"


MARKERS = "os^Dv<>Ph*X"


def plot(c: Comparison, cost: str, label: str) -> bytes:
    """AP vs ``cost``: every point faint, picks bold, each method's Pareto front a bold line (PNG bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=100)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = False
    for i, method in enumerate(dict.fromkeys(p.method for p in c.points)):
        usable = [p for p in c.points if p.method == method and plottable(p, cost)]
        if not usable:
            continue
        drawn = True
        colour, marker = colours[i % len(colours)], MARKERS[i % len(MARKERS)]
        kind = "/".join(dict.fromkeys(p.ap_kind for p in usable))
        ax.scatter([getattr(p, cost) for p in usable], [p.ap for p in usable], color=colour, marker=marker,
                   alpha=0.25, s=20)
        picks = [p for p in usable if p.pick]
        ax.scatter([getattr(p, cost) for p in picks], [p.ap for p in picks], color=colour, marker=marker, s=90,
                   edgecolors="black", linewidths=1.2, label=f"{method} ({kind}; picks bold)", zorder=3)
        front = pareto_front(usable, cost)
        ax.plot([getattr(p, cost) for p in front], [p.ap for p in front], color=colour, lw=2.2, zorder=2)
    if not drawn:
        ax.text(0.5, 0.5, f"no run has points with {label} and an AP of their own arch", ha="center", va="center",
                transform=ax.transAxes)
    else:
        ax.legend(fontsize=7)
    h, w = c.input_size
    ax.set_xlabel(f"{label} (input {h}x{w})")
    ax.set_ylabel(f"val {METRIC_NAMES[c.metric]}")
    ax.set_title("AP vs cost: faint = all points, bold = run picks, lines = Pareto fronts per method", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def compare(runs: list[str | os.PathLike], out: str | os.PathLike, quiet: bool = False) -> dict:
    """Load ``runs``, write ``compare.md``, ``compare.json``, ``pareto_gmacs.png`` and
    ``pareto_latency.png`` into ``out`` (each atomically, after every run loaded and every plot
    drawn: a bad run leaves ``out`` untouched); prints the table unless ``quiet``. Returns the
    JSON written."""
    c = collect(runs)
    text = markdown(c)
    summary = {"input_size": list(c.input_size), "metric": c.metric, "score": METRIC_NAMES[c.metric],
               "runs": [str(r) for r in runs], "methods": c.methods(), "notes": c.notes,
               "picks": [p.to_json() for p in c.picks], "points": [p.to_json() for p in c.points]}
    pngs = {"pareto_gmacs.png": plot(c, "gmacs", "GMACs"),
            "pareto_latency.png": plot(c, "latency_ms", "latency (ms, as measured by the run)")}
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PosenasError(f"{out}: exists and is not a directory")
    write_json(out / "compare.json", summary, indent=2)
    for name, data in pngs.items():
        write_bytes(out / name, data)
    write_text(out / "compare.md", text)
    if not quiet:
        print(text.rstrip())
        print(f"written: {out / 'compare.md'}, compare.json, pareto_gmacs.png, pareto_latency.png")
    for note in c.notes:
        if note.startswith("runs used different"):
            warn(note)
    return summary
