"""AutoPose's bi-level search: the run's files and derivation, exact resume (alpha, weights,
controller, its draws), clean config errors before anything is written, the temperature
schedule, and identical alpha / controller / branch draws on two torchrun ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from posenas.checkpoint import load_checkpoint, model_from_checkpoint
from posenas.cli import main
from posenas.config import from_dict
from posenas.engine.train import Interrupted, train
from posenas.jsonio import read_jsonl
from posenas.search.autopose import AutoPoseExperimentConfig, AutoPoseObjective, AutoPoseSupernetConfig
from posenas.spaces.autopose import AutoPoseArch

from conftest import make_dataset, torchrun

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data_root(tmp_path):
    make_dataset("coco", tmp_path / "data", images=10, people=2)
    return tmp_path / "data"


def search_cfg(root, **search) -> dict:
    """2 branches, one stage of 2 modules, tiny cells; 8 weight images (16 people) at batch 4:
    4 steps an epoch, 3 epochs; the controller learns from epoch 1 (steps 4 and 8)."""
    return {"supernet": {"space": "autopose", "channels": [4, 8], "stem_channels": 8, "stages": 1,
                         "modules_per_stage": 2, "individual_nodes": 2, "aggregation_nodes": 1,
                         "ops": ["conv_3x3", "max_pool_3x3", "skip"], "tau_start": 1.0, "tau_end": 0.5},
            "data": {"root": str(root), "train_split": "val", "val_split": "val", "input_size": [32, 32],
                     "batch_size": 4, "workers": 0},
            "optim": {"lr": 0.01, "warmup_steps": 0},
            "train": {"epochs": 3, "device": "cpu", "threads": 1, "val_every": 0, "flip_test": False,
                      "log_every": 1, "seed": 0},
            "search": {"arch_fraction": 0.2, "controller_start_epoch": 1, "controller_steps": 2,
                       "reward_images": 2, "derive_samples": 3, **search}}


def test_temperature_anneals_from_start_to_end():
    sc = AutoPoseSupernetConfig(tau_start=2.0, tau_end=0.02)
    assert sc.tau(0, 11) == 2.0 and sc.tau(10, 11) == pytest.approx(0.02) and sc.tau(5, 11) == pytest.approx(0.2)


def test_search_run_files_derivation_and_resume(tmp_path, data_root, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(json.dumps(search_cfg(data_root)))
    out = tmp_path / "run"
    assert main(["search", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "best branch vector" in printed and "retrain it: posenas train --arch" in printed
    for name in ("config.yaml", "best_arch.json", "branches.png", "alpha.png", "rewards.png", "results.json",
                 "controller.jsonl", "derive.jsonl"):
        assert (out / name).stat().st_size > 0, name
    updates = read_jsonl(out / "controller.jsonl")
    assert [(u["step"], u["update"]) for u in updates] == [(4, 0), (4, 1), (8, 0), (8, 1)]  # every epoch from 1 on
    assert all(len(u["rewards"]) == 2 for u in updates)  # batch 2
    metrics = [m for m in read_jsonl(out / "supernet" / "metrics.jsonl") if "tau" in m]
    assert metrics[0]["tau"] == 1.0 and metrics[-1]["tau"] == pytest.approx(0.5)
    assert metrics[0]["alpha_individual"] != metrics[-1]["alpha_individual"]  # the alpha steps ran
    results = json.loads((out / "results.json").read_text())
    samples = read_jsonl(out / "derive.jsonl")
    assert len(samples) == 3 and results["best"]["score"] == max(s["score"] for s in samples)
    arch = AutoPoseArch.from_json(json.loads((out / "best_arch.json").read_text()))
    assert [list(r) for r in arch.branches] == results["best"]["branches"]
    assert arch.net.widths == (8, 16)  # the derived net doubles the searched channels
    # the supernet checkpoint is self-describing: it loads as its (searched-width) derived arch
    loaded = model_from_checkpoint(out / "supernet" / "checkpoints" / "last.pt")
    assert loaded.arch.net.widths == (4, 8)
    assert main(["search", "--resume", "--out", str(out), "--quiet"]) == 0  # finished: only re-derives
    assert read_jsonl(out / "derive.jsonl") == samples  # the same draws and scores


@pytest.mark.parametrize("policy", ["random", "all"])
def test_branch_policies_of_the_baselines(tmp_path, data_root, policy):
    """random: fresh coin flips every step, no controller update; all: every branch on, one derivation sample."""
    cfg = tmp_path / "s.yaml"
    cfg.write_text(json.dumps(search_cfg(data_root, branch_policy=policy)))
    out = tmp_path / "run"
    assert main(["search", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert read_jsonl(out / "controller.jsonl") == []
    drawn = [m["branches"] for m in read_jsonl(out / "supernet" / "metrics.jsonl") if "branches" in m]
    samples = read_jsonl(out / "derive.jsonl")
    arch = AutoPoseArch.from_json(json.loads((out / "best_arch.json").read_text()))
    if policy == "all":
        assert set(drawn) == {"11|11"} and len(samples) == 1 and arch.branches == ((1, 1), (1, 1))
    else:
        assert len(drawn) == 12 and len(set(drawn)) > 4 and len(samples) == 3


def test_resumed_search_ends_with_the_same_alpha_weights_and_controller(tmp_path, data_root):
    cfg = from_dict(AutoPoseExperimentConfig, search_cfg(data_root))
    train(cfg.training(), tmp_path / "full", progress=False, objective=AutoPoseObjective(cfg))
    with pytest.raises(Interrupted):  # after the first controller update, before the second
        train(cfg.training(), tmp_path / "cut", progress=False, stop_at_step=6, objective=AutoPoseObjective(cfg))
    train(cfg.training(), tmp_path / "cut", resume=True, progress=False, objective=AutoPoseObjective(cfg))
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    cut = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    for key, value in full["state_dict"].items():
        assert torch.equal(value, cut["state_dict"][key]), key
    a, b = (c["train_state"]["objective"] for c in (full, cut))
    for key, value in a["controller"]["controller"].items():
        assert torch.equal(value, b["controller"]["controller"][key]), key
    assert a["history"] == b["history"] and len(a["history"]) == 4
    assert a["controller"]["baseline"] == b["controller"]["baseline"]


@pytest.mark.parametrize("change, message", [
    ({"search": {"controller_start_epoch": 5}},
     "config.search.controller_start_epoch: 5.0 epochs are 20 steps here (4 per epoch) but the run has 12"),
    ({"search": {"controller_batch": 0}}, "config.search.controller_batch: must be >= 1, got 0"),
    ({"search": {"branch_policy": "greedy"}},
     "config.search.branch_policy: 'greedy' not allowed; allowed: controller, random, all"),
    ({"supernet": {"ops": ["conv_3x3", "sep_conv_3x3"]}},
     "config.supernet.ops[1]: 'sep_conv_3x3' not allowed; allowed: 'conv_1x1'"),
    ({"supernet": {"tau_end": 0}}, "config.supernet.tau_start and tau_end: must be > 0"),
])
def test_bad_configs_are_one_line_errors_and_leave_nothing(tmp_path, data_root, capsys, change, message):
    data = search_cfg(data_root)
    for section, values in change.items():
        data[section] = {**data[section], **values}
    cfg = tmp_path / "s.yaml"
    cfg.write_text(json.dumps(data))
    assert main(["search", "--config", str(cfg), "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_two_torchrun_ranks_keep_alpha_controller_and_draws_identical(tmp_path, data_root):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(json.dumps(search_cfg(data_root)))
    proc = torchrun("search", "--config", str(cfg), "--out", str(tmp_path / "s"))
    # every controller update checks alpha, the controller and the step's draw across the ranks
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(read_jsonl(tmp_path / "s" / "controller.jsonl")) == 4


def _identity_rank(rank: int, port: int, out: str) -> None:
    """One gloo rank: the same tensors, then a tensor that differs on rank 1."""
    import os

    import torch.distributed as dist

    from posenas.engine.distributed import World, check_identical
    from posenas.errors import PosenasError

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    world = World(rank, 2, torch.device("cpu"))
    try:
        check_identical([torch.arange(4.0), torch.ones(2, 2)], world, "same")
        try:  # a sign flip keeps the sum of absolute values: the plain sum tells them apart
            check_identical([torch.tensor([1.0, -1.0 if rank else 1.0])], world, "alpha")
            seen = "no error"
        except PosenasError as e:
            seen = str(e)
        (Path(out) / f"rank{rank}.txt").write_text(seen)
    finally:
        dist.destroy_process_group()


def test_check_identical_raises_on_every_rank_when_one_rank_differs(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_identity_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert (tmp_path / f"rank{rank}.txt").read_text() == "alpha: rank 1 differs from rank 0 (a search must keep " \
                                                              "them identical)"
