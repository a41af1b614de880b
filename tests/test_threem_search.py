"""The 3M-Pose search: the run's files and derivation, exact resume, the FLOP and teacher losses
(each switchable, each moving what it should), clean config errors before anything is written,
the temperature schedule, and identical architecture parameters on two torchrun ranks."""

from __future__ import annotations

import json

import pytest
import torch

from posenas.arch import build_model
from posenas.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from posenas.cli import main
from posenas.codecs.associative import AssociativeEmbeddingCodec
from posenas.config import from_dict
from posenas.engine.train import Interrupted, train
from posenas.jsonio import read_jsonl
from posenas.search.threem import ThreeMExperimentConfig, ThreeMObjective, ThreeMSupernetConfig
from posenas.spaces.threem import ThreeMArch

from conftest import make_dataset, torchrun

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data_root(tmp_path):
    make_dataset("coco", tmp_path / "data", images=10, people=2)
    return tmp_path / "data"


def search_cfg(root, **search) -> dict:
    """A 2-row x 3-layer fabric with an exit at layer 1; 8 weight images at batch 4: 2 steps an
    epoch, 4 epochs."""
    return {"supernet": {"space": "3m-pose", "channels": 4, "rows": 2, "layers": 3, "stem_channels": 8,
                         "exits": [1], "tau_start": 10.0, "tau_end": 0.001},
            "data": {"root": str(root), "train_split": "val", "val_split": "val", "input_size": [64, 64],
                     "batch_size": 4, "workers": 0},
            "optim": {"optimizer": "adam", "lr": 0.001, "warmup_steps": 0},
            "train": {"epochs": 4, "device": "cpu", "threads": 1, "val_every": 0, "flip_test": False,
                      "log_every": 1, "seed": 0},
            "search": {"arch_fraction": 0.2, "flop_scale_epochs": 1.0, **search}}


def test_temperature_is_linear_from_start_to_end():
    sc = ThreeMSupernetConfig(tau_start=10.0, tau_end=0.001)
    assert sc.tau(0, 11) == 10.0 and sc.tau(10, 11) == pytest.approx(0.001)
    assert sc.tau(5, 11) == pytest.approx((10.0 + 0.001) / 2)


def test_search_run_files_derivation_and_resume(tmp_path, data_root, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(json.dumps(search_cfg(data_root)))
    out = tmp_path / "run"
    assert main(["search", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "derived net:" in printed and "--config configs/bottomup/tiny.yaml" in printed
    for name in ("config.yaml", "best_arch.json", "fabric.png", "results.json"):
        assert (out / name).stat().st_size > 0, name
    metrics = [m for m in read_jsonl(out / "supernet" / "metrics.jsonl") if "tau" in m]
    assert metrics[0]["tau"] == 10.0 and metrics[-1]["tau"] == pytest.approx(0.001)
    assert metrics[0]["arch_lr"] == 5e-3 and metrics[-1]["arch_lr"] == pytest.approx(1.25e-3)  # two halvings
    arch = ThreeMArch.from_json(json.loads((out / "best_arch.json").read_text()))
    results = json.loads((out / "results.json").read_text())
    assert results["arch"] == arch.to_json() and len(results["exit_gmacs"]) == 2
    assert results["exit_gmacs"][0] < results["exit_gmacs"][1]
    # the supernet checkpoint is self-describing: it loads as its derived arch
    loaded = model_from_checkpoint(out / "supernet" / "checkpoints" / "last.pt")
    assert isinstance(loaded.arch, ThreeMArch)
    assert main(["search", "--resume", "--out", str(out), "--quiet"]) == 0  # finished: only re-derives
    assert json.loads((out / "results.json").read_text()) == results
    # the derived net trains as a bottom-up model, every exit supervised
    retrain = tmp_path / "retrain"
    assert main(["train", "--arch", str(out / "best_arch.json"), "--out", str(retrain), "--quiet",
                 f"data.root={data_root}", "data.train_split=val", "data.val_split=val", "data.input_size=[64,64]",
                 "data.batch_size=4", "data.workers=0", "train.epochs=1", "train.device=cpu", "train.val_every=0",
                 "train.flip_test=false", "bottomup.augment.enabled=false"]) == 0
    assert (retrain / "checkpoints" / "last.pt").exists()


def test_resumed_search_ends_with_the_same_weights_and_arch_parameters(tmp_path, data_root):
    cfg = from_dict(ThreeMExperimentConfig, search_cfg(data_root))
    train(cfg.training(), tmp_path / "full", progress=False, objective=ThreeMObjective(cfg))
    with pytest.raises(Interrupted):
        train(cfg.training(), tmp_path / "cut", progress=False, stop_at_step=3, objective=ThreeMObjective(cfg))
    train(cfg.training(), tmp_path / "cut", resume=True, progress=False, objective=ThreeMObjective(cfg))
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    cut = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    for key, value in full["state_dict"].items():
        assert torch.equal(value, cut["state_dict"][key]), key


def _last_log(tmp_path, data_root, name: str, **search) -> dict:
    """The last metrics line (derived GMACs, ops per edge, inputs per cell) of a short search."""
    data = search_cfg(data_root, **search)
    data["train"]["epochs"] = 6
    cfg = from_dict(ThreeMExperimentConfig, data)
    train(cfg.training(), tmp_path / name, progress=False, objective=ThreeMObjective(cfg))
    return [m for m in read_jsonl(tmp_path / name / "metrics.jsonl") if "derived_gmacs" in m][-1]


def test_the_flop_loss_drives_the_derived_net_cheaper_and_off_it_does_not(tmp_path, data_root):
    """A strong FLOP loss (weight 10, scale 1 from the start) against none, same seed and steps:
    measured, on it every edge keeps one op and every cell one input within 12 steps (ops per
    edge 1.0, inputs 1.0, 0.00171 GMACs); off, 1.67 and 1.33 (0.0021 GMACs)."""
    strong = dict(flop_weight=10.0, flop_scale_start=1.0, flop_target=0.001, arch_lr=0.05)
    on = _last_log(tmp_path, data_root, "flop", **strong)
    off = _last_log(tmp_path, data_root, "off", **{**strong, "flop_weight": 0.0})
    assert on["ops_per_edge"] == 1.0 and on["inputs_per_cell"] == 1.0
    assert off["ops_per_edge"] > 1.3 and off["inputs_per_cell"] > 1.15
    assert on["derived_gmacs"] < 0.9 * off["derived_gmacs"]


def _teacher_checkpoint(path) -> None:
    arch = {"space": "simplebaseline", "backbone": "resnet18", "width_mult": 0.125,
            "head": {"widths": [8, 8, 8], "kernels": [4, 4, 4]}, "tags": True}
    torch.manual_seed(0)
    model = build_model(arch, 17)
    codec = AssociativeEmbeddingCodec(input_size=(64, 64), heatmap_sizes=((16, 16),))
    save_checkpoint(path, {"arch": arch, "schema": "coco17", "codec": codec.to_dict(), "state_dict": model.state_dict()})


def test_the_teacher_loss_enters_the_search_and_switches_off(tmp_path, data_root):
    _teacher_checkpoint(tmp_path / "teacher.pt")
    runs = {}
    for name, weight in (("on", 1.0), ("off", 0.0)):
        data = search_cfg(data_root, teacher=str(tmp_path / "teacher.pt"), teacher_weight=weight)
        data["train"]["epochs"] = 1
        cfg = from_dict(ThreeMExperimentConfig, data)
        train(cfg.training(), tmp_path / name, progress=False, objective=ThreeMObjective(cfg))
        runs[name] = [m for m in read_jsonl(tmp_path / name / "metrics.jsonl") if "loss" in m]
    on, off = runs["on"][0], runs["off"][0]
    assert 0 < on["teacher_loss"] <= 2  # 1 - a correlation
    assert "teacher_loss" not in off
    # the logged step loss is the task loss plus the weighted teacher loss
    assert on["loss"] == pytest.approx(on["task_loss"] + on["teacher_loss"], rel=1e-4)
    assert off["loss"] == pytest.approx(off["task_loss"], rel=1e-4)


@pytest.mark.parametrize("change, message", [
    ({"supernet": {"exits": [3]}}, "config.supernet.exits: expected increasing distinct layer numbers in [1, 2]"),
    ({"supernet": {"sampling": "dense"}}, "config.supernet.sampling: 'dense' not allowed; allowed: dyn-egs, gumbel"),
    ({"supernet": {"r_alpha": 10}}, "config.supernet.r_alpha: expected 1-9, got 10"),
    ({"search": {"arch_lr_drops": [0.8, 0.5]}}, "config.search.arch_lr_drops: expected increasing fractions"),
    ({"search": {"teacher": "/no/such.pt"}}, "config.search.teacher: /no/such.pt: no such checkpoint file"),
    ({"search": {"flop_target": 0}}, "config.search.flop_target: must be > 0, got 0"),
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


def test_two_torchrun_ranks_keep_the_arch_parameters_identical(tmp_path, data_root):
    cfg = tmp_path / "s.yaml"
    data = search_cfg(data_root)
    data["train"]["epochs"] = 2
    cfg.write_text(json.dumps(data))
    proc = torchrun("search", "--config", str(cfg), "--out", str(tmp_path / "s"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "s" / "best_arch.json").exists()


def test_a_nan_loss_stops_the_search_before_any_step_on_it(tmp_path, data_root, monkeypatch):
    """The architecture step's loss goes NaN at step 2: the run stops there with the engine's
    divergence error, and the last checkpoint holds finite architecture parameters."""
    from posenas.engine import task as task_module
    from posenas.errors import PosenasError

    real = task_module.masked_heatmap_loss
    calls = {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] > 8 else loss  # 2 exits x (arch + weight) per step

    monkeypatch.setattr(task_module, "masked_heatmap_loss", poisoned)
    data = search_cfg(data_root)
    data["train"]["checkpoint_every"] = 1
    cfg = from_dict(ThreeMExperimentConfig, data)
    with pytest.raises(PosenasError, match=r"training diverged: loss is nan"):
        train(cfg.training(), tmp_path / "run", progress=False, objective=ThreeMObjective(cfg))
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["train_state"]["step"] == 2
    assert all(torch.isfinite(v).all() for k, v in ckpt["state_dict"].items() if k in ("alpha", "beta", "m_alpha", "m_beta"))
