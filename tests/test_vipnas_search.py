"""ViPNAS supernet training and search: sandwich sampling, BN re-calibration, the search
run (files, resume, budget) and weight inheritance into `train --arch --init-from`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from posenas.arch import load_arch_file
from posenas.checkpoint import load_checkpoint, model_from_checkpoint
from posenas.cli import main
from posenas.config import from_dict
from posenas.errors import PosenasError
from posenas.jsonio import read_jsonl
from posenas.search.candidates import recalibrate_bn
from posenas.search.vipnas_config import SearchExperimentConfig
from posenas.search.vipnas import pareto_front
from posenas.search.sandwich import SandwichObjective
from posenas.spaces.vipnas import derive, largest_arch, smallest_arch

from conftest import TINY_VIPNAS_CHOICES as TINY_CHOICES, make_dataset, torchrun


def search_yaml(path: Path, root: Path, **search) -> Path:
    cfg = {
        "supernet": {"space": "vipnas-resnet", "choices": TINY_CHOICES},
        "data": {"root": str(root), "train_split": "val", "val_split": "val", "input_size": [64, 64],
                 "batch_size": 4, "workers": 0},
        "optim": {"lr": 0.001, "warmup_steps": 1},
        "train": {"epochs": 1, "max_steps": 2, "device": "cpu", "threads": 1, "val_every": 0, "flip_test": False},
        "search": {"candidates": 3, "population": 2, "parents": 1, "calib_batches": 1, "latency_runs": 1,
                   "val_max_images": 4, **search},
    }
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


@pytest.fixture
def data_root(tmp_path):
    make_dataset("coco", tmp_path / "data", images=6, people=2)
    return tmp_path / "data"


def test_sandwich_subnets_depend_on_seed_and_step_only():
    cfg = from_dict(SearchExperimentConfig, {"supernet": {"space": "vipnas-resnet", "choices": TINY_CHOICES}})
    choices = cfg.supernet.parsed_choices()
    a, b = SandwichObjective("vipnas-resnet", choices, 2, seed=5), SandwichObjective("vipnas-resnet", choices, 2, seed=5)
    assert a.subnets(7) == b.subnets(7)  # what every rank of a torchrun computes
    assert a.subnets(7) != a.subnets(8)
    subnets = a.subnets(7)
    assert len(subnets) == 4 and subnets[0] == largest_arch("vipnas-resnet", choices)
    assert subnets[1] == smallest_arch("vipnas-resnet", choices)


def test_recalibrated_bn_holds_the_average_of_the_batch_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    model[1].running_mean.fill_(9.0)
    model[1].num_batches_tracked.fill_(100)  # as a trained supernet's: a cumulative average not reset stays near 9
    batches = [torch.randn(2, 3, 5, 5) * (i + 1) + i for i in range(3)]
    recalibrate_bn(model, batches)
    with torch.no_grad():
        feats = [model[0](b) for b in batches]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    assert torch.allclose(model[1].running_mean, mean, atol=1e-5)
    assert torch.allclose(model[1].running_var, var, atol=1e-4)
    assert not model.training and model[1].momentum == 0.1


def test_pareto_front_by_hand():
    recs = [{"gmacs": 1, "score": 0.1}, {"gmacs": 2, "score": 0.3}, {"gmacs": 3, "score": 0.2},
            {"gmacs": 4, "score": 0.5}, {"gmacs": 2, "score": 0.05}]
    assert [(r["gmacs"], r["score"]) for r in pareto_front(recs, "gmacs")] == [(1, 0.1), (2, 0.3), (4, 0.5)]


def test_search_run_writes_its_files_resumes_and_feeds_training(tmp_path, data_root, capsys):
    cfg = search_yaml(tmp_path / "s.yaml", data_root)
    out = tmp_path / "search"
    assert main(["search", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    records = read_jsonl(out / "candidates.jsonl")
    assert [(r["strategy"], r["index"]) for r in records] == [("random", i) for i in range(3)] + [
        ("evolution", i) for i in range(3)]
    for r in records:
        assert {"arch", "gmacs", "params_m", "latency_ms", "AP", "score"} <= set(r)
    best = max(records, key=lambda r: r["score"])
    assert load_arch_file(out / "best_arch.json").to_json() == best["arch"]
    assert (out / "pareto.png").stat().st_size > 0
    assert json.loads((out / "results.json").read_text())["evaluations"] == 6
    ckpt = load_checkpoint(out / "supernet" / "checkpoints" / "last.pt")
    assert ckpt["supernet"]["space"] == "vipnas-resnet"
    # a supernet checkpoint loads as the plain model of its largest sub-net
    assert not hasattr(model_from_checkpoint(out / "supernet" / "checkpoints" / "last.pt").model, "set_active")

    # resume: nothing is re-evaluated (a marker written into the file survives) and the draws repeat
    lines = (out / "candidates.jsonl").read_text().splitlines()
    marked = [json.dumps({**json.loads(line), "marker": i}) for i, line in enumerate(lines[:4])]
    (out / "candidates.jsonl").write_text("\n".join(marked) + "\n")
    assert main(["search", "--resume", "--out", str(out), "--quiet"]) == 0
    again = read_jsonl(out / "candidates.jsonl")
    assert [r.get("marker") for r in again[:4]] == [0, 1, 2, 3]
    assert [r["arch"] for r in again] == [r["arch"] for r in records]
    assert main(["search", "--config", str(cfg), "--out", str(out), "--quiet"]) != 0
    assert "holds a search already; pass --resume" in capsys.readouterr().err

    # retrain the best arch from the supernet's weights: the first forward equals the supernet sub-net's
    run = tmp_path / "retrain"
    supernet_ckpt = out / "supernet" / "checkpoints" / "last.pt"
    assert main(["train", "--arch", str(out / "best_arch.json"), "--init-from", str(supernet_ckpt), "--out", str(run),
                 "--quiet", f"data.root={data_root}", "data.train_split=val", "data.input_size=[64, 64]",
                 "data.batch_size=4", "data.workers=0", "train.max_steps=1", "train.device=cpu",
                 "train.val_every=0", "train.flip_test=false"]) == 0
    from posenas.checkpoint import inherited_state

    arch = load_arch_file(out / "best_arch.json")
    inherited = derive(arch, 17)
    inherited.load_state_dict(inherited_state(supernet_ckpt, arch.to_json()))
    trained = load_checkpoint(run / "checkpoints" / "last.pt")["state_dict"]
    key = "backbone.stem.conv.weight"
    assert trained[key].shape == inherited.state_dict()[key].shape
    assert 0 < (trained[key] - inherited.state_dict()[key]).abs().max() < 0.05  # one small step away


def test_search_budget_errors(tmp_path, data_root, capsys):
    cfg = search_yaml(tmp_path / "s.yaml", data_root, max_gmacs=1e-6)
    assert main(["search", "--config", str(cfg), "--out", str(tmp_path / "s"), "--quiet"]) != 0
    assert "no sub-net fits the budget (not even the smallest)" in capsys.readouterr().err
    with pytest.raises(PosenasError, match=r"config\.supernet\.choices\.stages\[0\]\.widths\[0\]: 20 not allowed"):
        from_dict(SearchExperimentConfig, {"supernet": {"choices": {"stages": [{"widths": [20]}, {}, {}, {}]}}})
    with pytest.raises(PosenasError, match=r"config\.search\.strategies: unknown strategy 'grid'"):
        from_dict(SearchExperimentConfig, {"search": {"strategies": ["grid"]}})


def test_init_from_a_supernet_that_lacks_the_arch(tmp_path, data_root, capsys):
    cfg = search_yaml(tmp_path / "s.yaml", data_root, candidates=1, population=1)
    out = tmp_path / "search"
    assert main(["search", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    arch = largest_arch("vipnas-resnet").to_json()  # the full space's largest: not in the tiny supernet
    (tmp_path / "big.json").write_text(json.dumps(arch))
    capsys.readouterr()
    assert main(["train", "--arch", str(tmp_path / "big.json"), "--init-from",
                 str(out / "supernet" / "checkpoints" / "last.pt"), "--out", str(tmp_path / "r"), "--quiet",
                 f"data.root={data_root}", "data.train_split=val", "data.input_size=[64, 64]", "data.workers=0",
                 "train.max_steps=1", "train.device=cpu"]) != 0
    assert "cannot inherit weights: arch: not a sub-net of this supernet: stem.width" in capsys.readouterr().err


def _sandwich_rank(rank: int, port: int, out: str) -> None:
    """One gloo rank: the same supernet, its own batch; saves its all-reduced gradients."""
    import os

    import torch.distributed as dist

    from posenas.engine.distributed import World

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model, objective, batches = _sandwich_setup()
        images, target, weight = batches[rank]
        objective.step(model, {"image": images, "target": target, "target_weight": weight}, 3, World(rank, 2, torch.device("cpu")))
        torch.save({n: p.grad for n, p in model.named_parameters()}, f"{out}/grads{rank}.pt")
    finally:
        dist.destroy_process_group()


def _sandwich_setup():
    cfg = from_dict(SearchExperimentConfig, {"supernet": {"space": "vipnas-resnet", "choices": TINY_CHOICES}})
    objective = SandwichObjective("vipnas-resnet", cfg.supernet.parsed_choices(), 2, seed=1)
    torch.manual_seed(0)
    model = objective.build(17)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(2, 3, 64, 64, generator=g), torch.rand(2, 17, 16, 16, generator=g), torch.ones(2, 17))
               for _ in range(2)]
    return model, objective, batches


def test_sandwich_gradients_are_averaged_over_ranks(tmp_path):
    """Under 2 gloo processes each rank's gradient is the mean of what each rank's batch gives
    alone, so every rank takes the same optimiser step (same sub-nets drawn on each)."""
    import socket

    import torch.multiprocessing as mp

    from posenas.engine.distributed import World

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_sandwich_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"grads{r}.pt", weights_only=True) for r in range(2)]
    alone = []
    for images, target, weight in _sandwich_setup()[2]:
        model, objective, _ = _sandwich_setup()
        objective.step(model, {"image": images, "target": target, "target_weight": weight}, 3, World(0, 1, torch.device("cpu")))
        alone.append({n: p.grad for n, p in model.named_parameters()})
    used = [n for n, grad in alone[0].items() if grad is not None]
    assert len(used) > 10
    for name, grad in ranks[0].items():
        assert torch.equal(grad, ranks[1][name]), name
        if name in used:  # relative: a third of these gradients are below 1e-6 everywhere
            mean = (alone[0][name] + alone[1][name]) / 2
            assert torch.allclose(grad, mean, rtol=1e-4, atol=1e-5 * float(mean.abs().max())), name
        else:  # a slice no sub-net of this step touched: zero everywhere
            assert not grad.any(), name


def test_search_under_torchrun_two_processes(tmp_path, data_root):
    cfg = search_yaml(tmp_path / "s.yaml", data_root, candidates=1, population=1)
    proc = torchrun("search", "--config", str(cfg), "--out", str(tmp_path / "s"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    # 12 instances, 2 processes of batch 4: one step in the configured epoch
    assert load_checkpoint(tmp_path / "s" / "supernet" / "checkpoints" / "last.pt")["train_state"]["step"] == 1
    assert len(read_jsonl(tmp_path / "s" / "candidates.jsonl")) == 2  # each candidate written once, by rank 0


def test_search_prints_the_expected_time_of_its_candidate_phase(tmp_path, data_root, capsys):
    cfg = search_yaml(tmp_path / "s.yaml", data_root)
    assert main(["search", "--config", str(cfg), "--out", str(tmp_path / "search")]) == 0
    captured = capsys.readouterr()
    assert re.search(r"expected: [\d.]+ s a candidate \(cost, BN re-calibration, val\), 5 left = [\d.]+ min",
                     captured.out + captured.err)
