"""`posenas compare`: run kinds recognised from the files the real searches and training
write, table values equal to the files', mean ± std over seeds, Pareto fronts, and clean
errors for bad run directories (nothing written then)."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import pytest

import posenas
from posenas.checkpoint import model_from_checkpoint
from posenas.cli import main
from posenas.comparison import Point, arch_tag, collect, load_run, pareto_front
from posenas.cost import count_macs, count_params
from posenas.errors import PosenasError
from posenas.jsonio import read_jsonl

from conftest import make_dataset
from test_vipnas_search import search_yaml

pytestmark = pytest.mark.usefixtures("one_thread")

PNG = b"\x89PNG\r\n\x1a\n"
COMMON = {"train_split": "val", "val_split": "val", "input_size": [64, 64], "batch_size": 4, "workers": 0}
TRAIN = {"epochs": 1, "device": "cpu", "threads": 1, "val_every": 0, "flip_test": False}
TRAIN_ARGS = ["data.train_split=val", "data.input_size=[64, 64]", "data.batch_size=4", "data.workers=0",
              "train.max_steps=1", "train.device=cpu", "train.val_every=0", "train.flip_test=false", "train.threads=1"]


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory) -> dict[str, Path]:
    """Runs made by the real commands, as small as they go (a ViPNAS search with 2 candidates
    per strategy, the EfficientPose random baseline, a PNFS search, a retrain, a training run)."""
    base = tmp_path_factory.mktemp("runs")
    root = base / "data"
    make_dataset("coco", root, images=6, people=2)
    runs = {"vipnas": base / "vip", "random": base / "eprand", "pnfs": base / "pnfs",
            "retrain": base / "vip" / "retrain", "train": base / "train", "retrain_apart": base / "apart",
            "arch_file": base / "arch_file"}
    assert main(["search", "--config", str(search_yaml(base / "v.yaml", root, candidates=2)), "--out",
                 str(runs["vipnas"]), "--quiet"]) == 0
    ep = {"supernet": {"space": "efficientpose", "setting": "small", "head": {"widths": [16, 16]}},
          "data": {"root": str(root), **COMMON}, "train": {**TRAIN, "max_steps": 1},
          "search": {"strategy": "random", "random_archs": 2, "random_steps": 1}}
    (base / "r.yaml").write_text(json.dumps(ep))
    assert main(["search", "--config", str(base / "r.yaml"), "--out", str(runs["random"]), "--quiet"]) == 0
    pn = {"supernet": {"space": "pnfs", "backbone": "fabric", "backbone_layers": 3, "backbone_ops": ["skip"],
                       "layers": 2, "hidden": 1, "channels": 2, "parts": 3, "vector_dim": 4,
                       "ops": ["zero", "skip", "sep_conv_3x3"]},
          "data": {"root": str(root), **COMMON}, "optim": {"lr": 0.01, "warmup_steps": 0},
          "train": {**TRAIN, "max_steps": 2}, "search": {"prune_threshold": 0.3}}
    (base / "p.yaml").write_text(json.dumps(pn))
    assert main(["search", "--config", str(base / "p.yaml"), "--out", str(runs["pnfs"]), "--quiet"]) == 0
    assert main(["train", "--arch", str(runs["vipnas"] / "best_arch.json"), "--out", str(runs["retrain"]),
                 "--quiet", f"data.root={root}", *TRAIN_ARGS]) == 0
    assert main(["train", "--config", "baselines/tiny", "--out", str(runs["train"]), "--quiet",
                 f"data.root={root}", *TRAIN_ARGS]) == 0
    # a search's best arch retrained elsewhere (as benchmarks do), and an arch file of no search,
    # each with a recipe whose model.name (simplebaseline-small) is not what is trained
    (base / "mine.json").write_text((runs["vipnas"] / "best_arch.json").read_text())
    for key, arch_file in (("retrain_apart", runs["vipnas"] / "best_arch.json"), ("arch_file", base / "mine.json")):
        assert main(["train", "--config", "baselines/tiny", "--out", str(runs[key]), "--quiet",
                     f"model.arch_file={arch_file}", f"data.root={root}", *TRAIN_ARGS]) == 0
    return runs


def dnas_run(path: Path, arch: dict, gmacs: float, ap: float, input_size=(64, 64)) -> Path:
    """An EfficientPose DNAS run directory with the fields finish_dnas writes (its cost table
    makes the real one too slow for this file)."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(json.dumps({"supernet": {"space": "efficientpose"},
                                                  "data": {"root": "d", "input_size": list(input_size)},
                                                  "search": {"strategy": "dnas"}}))
    (path / "results.json").write_text(json.dumps({
        "arch": arch, "cost_kind": "macs", "cost_unit": "GMACs", "table_cost": gmacs, "gmacs": gmacs,
        "params_m": 0.5, "supernet_val": {"metric": "coco", "AP": ap, "AP50": ap, "steps": 7},
        "probabilities": [[0.5, 0.5]]}))
    return path


def vipnas_run(path: Path, records: list[tuple[float, float, float]], input_size=(64, 64)) -> Path:
    """A ViPNAS run directory as search_supernet writes it: (gmacs, latency_ms, AP) per candidate."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(json.dumps({"supernet": {"space": "vipnas-resnet"},
                                                  "data": {"root": "d", "input_size": list(input_size)},
                                                  "search": {"strategies": ["random"]}}))
    lines = [{"strategy": "random", "index": i, "arch": {"space": "vipnas-resnet", "i": i}, "gmacs": g,
              "params_m": 10 * g, "latency_ms": lat, "metric": "coco", "AP": ap, "score": ap}
             for i, (g, lat, ap) in enumerate(records)]
    (path / "candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    best = max(lines, key=lambda r: r["score"])
    (path / "results.json").write_text(json.dumps({"metric": "coco", "best": best,
                                                   "best_per_strategy": {"random": best}, "evaluations": len(lines)}))
    return path


def test_real_runs_are_recognised_and_the_table_holds_the_files_values(real_runs, tmp_path, capsys):
    runs = real_runs
    results = {k: json.loads((p / "results.json").read_text()) for k, p in runs.items()}
    ep_arch = read_jsonl(runs["random"] / "candidates.jsonl")[0]["arch"]
    dnas = dnas_run(tmp_path / "dnas", ep_arch, 0.0123, 0.25)
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, runs.values()), str(dnas), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "compare.json").read_text())
    picks = {p["run"]: p for p in data["picks"]}
    assert len(picks) == 8 and data["input_size"] == [64, 64] and data["metric"] == "coco"

    vip = picks[str(runs["vipnas"])]
    best = results["vipnas"]["best"]
    assert vip["method"] == "vipnas-resnet/random+evolution" and vip["ap_kind"] == "inherited"
    assert (vip["arch"], vip["strategy"], vip["gmacs"], vip["params_m"], vip["latency_ms"], vip["ap"]) == (
        best["arch"], best["strategy"], best["gmacs"], best["params_m"], best["latency_ms"], best["score"])
    candidates = read_jsonl(runs["vipnas"] / "candidates.jsonl")
    vip_points = [p for p in data["points"] if p["run"] == str(runs["vipnas"])]
    assert [p["gmacs"] for p in vip_points] == [r["gmacs"] for r in candidates]
    assert sum(p["pick"] for p in vip_points) == 1

    rnd, best = picks[str(runs["random"])], results["random"]["best"]
    assert rnd["method"] == "efficientpose/random" and rnd["ap_kind"] == "trained" and rnd["steps"] == 1
    assert (rnd["arch"], rnd["gmacs"], rnd["params_m"], rnd["ap"], rnd["latency_ms"]) == (
        best["arch"], best["gmacs"], best["params_m"], best["score"], None)

    pn, dense = picks[str(runs["pnfs"])], results["pnfs"]["dense"]
    assert pn["method"] == "pnfs/synchronous" and pn["strategy"] == "dense" and pn["ap_kind"] == "trained"
    assert (pn["gmacs"], pn["params_m"], pn["ap"]) == (dense["gmacs"], dense["params_m"], dense["score"])
    assert pn["arch"] == json.loads((runs["pnfs"] / "arch.json").read_text())
    pruned = [p for p in data["points"] if p["run"] == str(runs["pnfs"]) and not p["pick"]]
    assert [(p["strategy"], p["ap_kind"], p["gmacs"]) for p in pruned] == [
        ("pruned", "inherited", results["pnfs"]["pruned"]["gmacs"])]

    for key, method in (("train", "train/simplebaseline-small"), ("retrain", "vipnas-resnet/random+evolution/retrain"),
                        ("retrain_apart", "vipnas-resnet/random+evolution/retrain"), ("arch_file", "train/vipnas-resnet#")):
        p = picks[str(runs[key])]
        loaded = model_from_checkpoint(runs[key] / "checkpoints" / "last.pt")
        if method.endswith("#"):
            method += arch_tag(loaded.arch.to_json())
        assert p["method"] == method and p["ap_kind"] == "trained"
        assert p["ap"] == results[key]["AP"] and p["steps"] == results[key]["steps"]
        assert p["gmacs"] == count_macs(loaded.model, (64, 64))[0] / 1e9
        assert p["params_m"] == count_params(loaded.model) / 1e6
    assert picks[str(runs["retrain"])]["arch"] == json.loads((runs["vipnas"] / "best_arch.json").read_text())

    d = picks[str(dnas)]
    assert (d["method"], d["gmacs"], d["ap"], d["ap_kind"], d["steps"]) == ("efficientpose/dnas", 0.0123, 0.25,
                                                                            "supernet", 7)
    md = (out / "compare.md").read_text()
    assert md.rstrip() in printed
    assert f"| efficientpose/dnas | {dnas} | dnas | 0.0123 | 0.5 | — | 0.2500 | supernet | 7 |" in md
    assert f"| {best['gmacs']:.4g} |" in md  # the random baseline's pick
    for name in ("pareto_gmacs.png", "pareto_latency.png"):
        assert (out / name).read_bytes()[:8] == PNG
    assert sorted(p.name for p in out.iterdir()) == ["compare.json", "compare.md", "pareto_gmacs.png",
                                                     "pareto_latency.png"]  # no temp file left

    # a search's supernet/ folder is a training run layout but no run to compare
    with pytest.raises(PosenasError, match="supernet training run of a search"):
        load_run(runs["vipnas"] / "supernet")


def test_mean_and_std_over_seeds_of_one_method(tmp_path):
    seeds = [vipnas_run(tmp_path / f"s{i}", [(0.1, 5.0, 0.05), (g, lat, ap)])
             for i, (g, lat, ap) in enumerate([(0.2, 10.0, 0.1), (0.4, 20.0, 0.2), (0.3, 60.0, 0.4)])]
    other = dnas_run(tmp_path / "dnas", {"space": "efficientpose"}, 0.5, 0.3)
    summary = posenas.compare([*seeds, other], tmp_path / "out")
    stats = summary["methods"]["vipnas-resnet/random"]
    assert stats["runs"] == 3 and stats["ap_kind"] == "inherited"
    assert stats["ap"]["mean"] == pytest.approx(0.7 / 3)
    assert stats["ap"]["std"] == pytest.approx(math.sqrt(((0.1 - 0.7 / 3) ** 2 + (0.2 - 0.7 / 3) ** 2
                                                          + (0.4 - 0.7 / 3) ** 2) / 2))
    assert stats["gmacs"]["mean"] == pytest.approx(0.3) and stats["gmacs"]["std"] == pytest.approx(0.1)
    assert stats["latency_ms"]["mean"] == pytest.approx(30.0)
    assert stats["latency_ms"]["std"] == pytest.approx(statistics.stdev([10.0, 20.0, 60.0]))
    one = summary["methods"]["efficientpose/dnas"]
    assert one["runs"] == 1 and one["ap"] == {"mean": 0.3, "std": None} and one["latency_ms"] is None
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| vipnas-resnet/random | 3 | 0.2333 ± 0.1528 | inherited | 0.3 ± 0.1 | 3 ± 1 | 30.00 ± 26.46 |" in md
    assert "| efficientpose/dnas | 1 | 0.3000 | supernet | 0.5 | 0.5 | — |" in md
    assert len(summary["points"]) == 7 and len(summary["picks"]) == 4


def test_pareto_front_by_hand():
    def pt(name, gmacs, ap, kind="inherited", latency=None):
        return Point("m", name, "r", {}, (64, 64), gmacs, 1.0, latency, ap, kind, "coco")

    points = [pt("a", 1.0, 0.30), pt("b", 2.0, 0.25), pt("c", 2.0, 0.50), pt("d", 3.0, 0.45),
              pt("e", 4.0, 0.60), pt("f", 0.5, 0.10), pt("g", 0.1, 0.9, kind="supernet")]
    assert [p.strategy for p in pareto_front(points, "gmacs")] == ["f", "a", "c", "e"]
    timed = [pt("x", 1.0, 0.3, latency=5.0), pt("y", 1.0, 0.4, latency=9.0), pt("z", 1.0, 0.2, latency=None)]
    assert [p.strategy for p in pareto_front(timed, "latency_ms")] == ["x", "y"]


def test_bad_run_directories_are_one_line_errors_and_write_nothing(tmp_path, capsys):
    good = vipnas_run(tmp_path / "good", [(0.1, 5.0, 0.1), (0.2, 6.0, 0.2)])
    out = tmp_path / "out"

    def refused(*runs) -> str:
        assert main(["compare", *map(str, runs), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("posenas: error: ")
        assert not out.exists()
        return err

    assert "no such run directory" in refused(good, tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    assert "not a posenas run (no config.yaml)" in refused(good, tmp_path / "plain")

    torn = shutil.copytree(good, tmp_path / "torn")
    lines = (torn / "candidates.jsonl").read_text().splitlines()
    (torn / "candidates.jsonl").write_text(lines[0] + "\n" + lines[1][:40] + "\n")
    assert f"{torn / 'candidates.jsonl'}: line 2: invalid JSON" in refused(good, torn)

    broken = shutil.copytree(good, tmp_path / "broken")
    (broken / "results.json").write_text("{\"metric\": ")
    assert f"{broken / 'results.json'}: invalid JSON at line 1" in refused(broken)

    nofield = shutil.copytree(good, tmp_path / "nofield")
    record = json.loads((nofield / "candidates.jsonl").read_text().splitlines()[0])
    del record["gmacs"]
    (nofield / "candidates.jsonl").write_text(json.dumps(record) + "\n")
    assert f"{nofield / 'candidates.jsonl'}: line 1: field 'gmacs' missing" in refused(nofield)

    unfinished = shutil.copytree(good, tmp_path / "unfinished")
    (unfinished / "results.json").unlink()
    assert f"{unfinished / 'results.json'}: no such file (is the run finished?)" in refused(unfinished)

    big = vipnas_run(tmp_path / "big", [(0.5, 5.0, 0.3)], input_size=(256, 192))
    err = refused(good, big)
    assert "different input sizes: 64x64" in err and "256x192" in err
    assert "given twice" in refused(good, good)

    with pytest.raises(PosenasError, match="field 'supernet.space': 'autopose'"):
        strange = tmp_path / "strange"
        strange.mkdir()
        (strange / "config.yaml").write_text(json.dumps({"supernet": {"space": "autopose"},
                                                         "data": {"input_size": [64, 64]}}))
        collect([strange])
