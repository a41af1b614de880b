"""PNFS search strategies through `posenas search`: synchronous, random (frozen), first-order
DARTS; export and pruning files; alpha/beta identical on every rank under torchrun."""

from __future__ import annotations

import json

import pytest
import torch

from posenas.arch import load_arch_file
from posenas.checkpoint import load_checkpoint, model_from_checkpoint
from posenas.cli import main
from posenas.errors import PosenasError

from conftest import make_dataset, torchrun

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data_root(tmp_path):
    make_dataset("coco", tmp_path / "data", images=8, people=2)
    return tmp_path / "data"


def search_cfg(root, **search) -> dict:
    return {"supernet": {"space": "pnfs", "backbone": "fabric", "backbone_layers": 3, "backbone_ops": ["skip"],
                         "layers": 2, "hidden": 1, "channels": 2, "parts": 3, "vector_dim": 4,
                         "ops": ["zero", "skip", "sep_conv_3x3"]},
            "data": {"root": str(root), "train_split": "val", "val_split": "val", "input_size": [64, 64],
                     "batch_size": 4, "workers": 0},
            "optim": {"lr": 0.01, "warmup_steps": 0},
            "train": {"epochs": 2, "device": "cpu", "threads": 1, "val_every": 0, "flip_test": False},
            "search": {"prune_threshold": 0.3, **search}}


def alphas(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.endswith(".alpha") or k.endswith(".beta")}


@pytest.mark.parametrize("strategy", ["synchronous", "random", "darts"])
def test_strategies_train_export_and_prune(tmp_path, data_root, strategy, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(json.dumps(search_cfg(data_root, strategy=strategy, warmup_epochs=0)))
    out = tmp_path / "run"
    assert main(["search", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert "dense: coco" in capsys.readouterr().out
    state = load_checkpoint(out / "supernet" / "checkpoints" / "last.pt")["state_dict"]
    arch_params = alphas(state)
    assert len(arch_params) == 2 * 4  # backbone + 3 parts, alpha and beta each
    if strategy == "random":  # drawn from N(0, 1) with the seed and never updated
        g = torch.Generator().manual_seed(0)
        for key in sorted(arch_params, key=list(state).index):
            assert torch.equal(arch_params[key], torch.randn(arch_params[key].shape, generator=g)), key
    else:  # trained: no longer all zeros
        assert any(v.abs().sum() > 0 for v in arch_params.values())
    results = json.loads((out / "results.json").read_text())
    assert results["pruned"]["params_m"] <= results["dense"]["params_m"]
    assert results["pruned"]["gmacs"] <= results["dense"]["gmacs"]
    exported = load_arch_file(out / "arch.json")
    assert exported.weights is not None
    # the exported checkpoint runs as the trained model
    trained = model_from_checkpoint(out / "supernet" / "checkpoints" / "last.pt").model
    dense = model_from_checkpoint(out / "model.pt").model
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # relative: after a few steps the maps are still tiny (~1e-8 at init)
        y = trained(x)
        assert y.abs().max() > 0
        assert (y - dense(x)).abs().max() <= 1e-5 * y.abs().max()
    assert model_from_checkpoint(out / "model_pruned.pt").arch.to_json() == load_arch_file(
        out / "arch_pruned.json").to_json()


def test_bad_search_configs_fail_cleanly(tmp_path, data_root, capsys):
    from posenas.config import from_dict
    from posenas.search.pnfs import PNFSExperimentConfig

    with pytest.raises(PosenasError, match=r"config\.search\.strategy: 'bilevel' not allowed; allowed: synchronous"):
        from_dict(PNFSExperimentConfig, {"search": {"strategy": "bilevel"}})
    cfg = tmp_path / "s.yaml"
    cfg.write_text(json.dumps({**search_cfg(data_root), "supernet": {**search_cfg(data_root)["supernet"], "parts": 4}}))
    assert main(["search", "--config", str(cfg), "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "config.supernet.parts: schema 'coco17': no body-part grouping with P=4; allowed: 1, 3, 5, 8" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # nothing half-written
    assert main(["search", "--resume"]) == 2
    assert "search --resume: --out RUN" in capsys.readouterr().err


def test_darts_under_torchrun_keeps_alpha_identical(tmp_path, data_root):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(json.dumps(search_cfg(data_root, strategy="darts", prune_threshold=None)))
    proc = torchrun("search", "--config", str(cfg), "--out", str(tmp_path / "s"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = load_checkpoint(tmp_path / "s" / "supernet" / "checkpoints" / "last.pt")["state_dict"]
    assert any(v.abs().sum() > 0 for v in alphas(state).values())
