"""EfficientPose differentiable search: supernet vs derived net, cost tables (MACs exact,
latency measured and cached), Eq. 6's cost term, the split, exact resume with the alpha
optimiser, the search run's files, and the same run under torchrun."""

from __future__ import annotations

import json
import random

import pytest
import torch

from posenas.checkpoint import load_checkpoint, model_from_checkpoint
from posenas.cli import main
from posenas.config import from_dict
from posenas.cost import count_macs
from posenas.engine.train import Interrupted, train
from posenas.errors import PosenasError
from posenas.jsonio import read_jsonl
from posenas.search.cost_table import build_cost_table, cached_cost_table, load_cost_table, table_header
from posenas.search.darts import split_images
from posenas.search.efficientpose import DNASExperimentConfig, DNASObjective, cost_term
from posenas.spaces.efficientpose import OPS, SETTINGS, EfficientPoseArch, EfficientPoseSupernet, HeadArch, derive

from conftest import make_dataset, torchrun


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data_root(tmp_path):
    make_dataset("coco", tmp_path / "data", images=10, people=2)
    return tmp_path / "data"


def random_arch(setting: str, rng: random.Random, head: HeadArch = HeadArch()) -> EfficientPoseArch:
    return EfficientPoseArch(setting, tuple(rng.choice(p.ops) for p in SETTINGS[setting].positions), head)


def one_hot(supernet: EfficientPoseSupernet, arch: EfficientPoseArch) -> None:
    with torch.no_grad():
        supernet.alpha.fill_(-1e4)
        for i, op in enumerate(arch.blocks):
            supernet.alpha[i, OPS.index(op)] = 0.0


@pytest.mark.parametrize("head", [HeadArch(), HeadArch((32, 32), False, "mbv1")])
def test_supernet_with_one_hot_alpha_equals_the_derived_net(head):
    torch.manual_seed(0)
    supernet = EfficientPoseSupernet("small", head, 17)
    with torch.no_grad():  # O(1) weights: with the heads' init (std 0.001) the output is ~1e-12, below any tolerance
        for name, p in supernet.named_parameters():
            if p.dim() > 1 and name != "alpha":
                p.normal_(0, p[0].numel() ** -0.5)
    for m in supernet.modules():  # scrambled BN statistics, so a wrong hand-over shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    supernet.eval()
    rng = random.Random(1)
    x = torch.randn(2, 3, 64, 48)
    for _ in range(2):
        arch = random_arch("small", rng, head)
        one_hot(supernet, arch)
        plain = derive(arch, 17)
        plain.load_state_dict(supernet.derived_state_dict(arch))
        plain.eval()
        with torch.no_grad():
            y = supernet(x)
            assert y.abs().max() > 0.1  # a signal far above the tolerance
            assert (y - plain(x)).abs().max() <= 1e-5
        assert supernet.argmax_arch() == arch


def test_macs_table_predicts_the_derived_net_exactly_and_expected_cost_is_linear():
    header = table_header("macs", "small", HeadArch(), (64, 48), 17)
    table = build_cost_table(header)
    rng = random.Random(0)
    for _ in range(3):
        arch = random_arch("small", rng)
        assert table.predict(arch) == pytest.approx(count_macs(derive(arch, 17), (64, 48))[0] / 1e9, rel=1e-9)
    supernet = EfficientPoseSupernet("small", HeadArch(), 17)
    one_hot(supernet, arch)
    assert float(supernet.expected_cost(table).detach()) == pytest.approx(table.predict(arch), rel=1e-6)
    with torch.no_grad():
        supernet.alpha.zero_()  # uniform over each position's allowed ops
    uniform = table.fixed + sum(sum(c.values()) / len(c) for c in table.ops)
    assert float(supernet.expected_cost(table).detach()) == pytest.approx(uniform, rel=1e-6)
    assert float(supernet.probabilities().detach()[0, OPS.index("skip")]) == 0.0  # position 0 cannot skip


def test_cost_term_is_lambda_log_tau():
    assert float(cost_term(torch.tensor(100.0), 0.5, 10.0)) == pytest.approx(1.0)
    assert float(cost_term(torch.tensor(8.0), 1.0, 2.0)) == pytest.approx(3.0)


def test_latency_table_is_measured_cached_and_validated(tmp_path, monkeypatch):
    header = table_header("cpu_latency", "small", HeadArch(), (32, 32), 17, threads=1, batch=1, runs=1)
    assert header["unit"] == "ms" and header["threads"] == 1 and header["runtime"] == "torch" and header["device"]
    path, table = cached_cost_table(tmp_path, header)
    assert table.fixed > 0 and all(c["k3_e3"] > 0 for c in table.ops)
    assert all(c.get("skip", 0.0) == 0.0 for c in table.ops)
    import posenas.search.cost_table as ct

    monkeypatch.setattr(ct, "build_cost_table", lambda *a, **k: pytest.fail("the cached table was re-measured"))
    assert cached_cost_table(tmp_path, header)[1] == table
    data = json.loads(path.read_text())
    del data["ops"][3]["k5_e6"]
    path.write_text(json.dumps(data))
    with pytest.raises(PosenasError, match=r"ops\[3\]: expected a non-negative cost for each of k3_e3"):
        load_cost_table(path)
    with pytest.raises(PosenasError, match="cost kind 'flops' not allowed; allowed: macs, cpu_latency, gpu_latency"):
        table_header("flops", "small", HeadArch(), (32, 32), 17)
    if not torch.cuda.is_available():
        with pytest.raises(PosenasError, match="gpu_latency needs a CUDA device"):
            table_header("gpu_latency", "small", HeadArch(), (32, 32), 17)


def test_split_is_seeded_and_disjoint(data_root):
    from posenas.data.layout import load_dataset

    ds = load_dataset(data_root, "val")
    w1, a1 = split_images(ds, 0.2, 0)
    w2, a2 = split_images(ds, 0.2, 0)
    ids = lambda d: [im.id for im in d.images]  # noqa: E731
    assert ids(w1) == ids(w2) and ids(a1) == ids(a2)
    assert len(ids(a1)) == 2 and not set(ids(w1)) & set(ids(a1)) and len(ids(w1)) + len(ids(a1)) == 10
    assert ids(split_images(ds, 0.2, 1)[1]) != ids(a1) or ids(split_images(ds, 0.2, 2)[1]) != ids(a1)


def search_cfg(root, **search) -> dict:
    return {"supernet": {"space": "efficientpose", "setting": "small", "head": {"widths": [16, 16]}},
            "data": {"root": str(root), "train_split": "val", "val_split": "val", "input_size": [32, 32],
                     "batch_size": 4, "workers": 0},
            "train": {"epochs": 3, "device": "cpu", "threads": 1, "val_every": 0, "flip_test": False,
                      "log_every": 1},
            "search": {"warmup_epochs": 1, "arch_lr": 0.01, "cost_weight": 1.0, **search}}


def test_resumed_search_ends_with_the_same_alpha_and_weights(tmp_path, data_root):
    cfg = from_dict(DNASExperimentConfig, search_cfg(data_root))
    table = build_cost_table(table_header("macs", "small", cfg.supernet.head_arch(), (32, 32), 17))
    train(cfg.training(), tmp_path / "full", progress=False, objective=DNASObjective(cfg, table))
    with pytest.raises(Interrupted):  # 8 weight images, 16 people: 4 steps an epoch; stopped after 2 alpha steps
        train(cfg.training(), tmp_path / "cut", progress=False, stop_at_step=6, objective=DNASObjective(cfg, table))
    train(cfg.training(), tmp_path / "cut", resume=True, progress=False, objective=DNASObjective(cfg, table))
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    cut = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert not torch.equal(full["state_dict"]["alpha"], torch.zeros_like(full["state_dict"]["alpha"]))
    for key, value in full["state_dict"].items():
        assert torch.equal(value, cut["state_dict"][key]), key


def test_search_run_files_and_derived_model(tmp_path, data_root, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(json.dumps(search_cfg(data_root, table_cache=str(tmp_path / "tables"))))
    out = tmp_path / "run"
    assert main(["search", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert "derived arch:" in capsys.readouterr().out
    for name in ("config.yaml", "cost_table.json", "best_arch.json", "alpha_history.jsonl", "alpha.png",
                 "results.json"):
        assert (out / name).stat().st_size > 0, name
    history = read_jsonl(out / "alpha_history.jsonl")
    assert [h["step"] for h in history] == list(range(1, 13))  # 8 weight images, 16 people: 4 steps x 3 epochs
    assert history[0]["probs"] == history[3]["probs"]  # warm-up epoch: alpha untouched
    assert history[4]["probs"] != history[3]["probs"]
    assert history[-1]["expected_cost"] < history[3]["expected_cost"]  # the cost term pulls towards cheap ops
    results = json.loads((out / "results.json").read_text())
    assert results["table_cost"] == pytest.approx(results["gmacs"], rel=1e-6)
    # the supernet checkpoint loads as the derived arch with the chosen candidates' weights
    loaded = model_from_checkpoint(out / "supernet" / "checkpoints" / "last.pt")
    assert loaded.arch.to_json() == results["arch"]
    assert main(["search", "--config", str(cfg), "--out", str(out), "--quiet"]) == 2
    assert "holds a search already; pass --resume" in capsys.readouterr().err
    assert main(["search", "--resume", "--out", str(out), "--quiet"]) == 0  # finished: only re-derives
    cfg.write_text(json.dumps({**search_cfg(data_root), "search": {"cost": "watts"}}))
    assert main(["search", "--config", str(cfg), "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "config.search.cost: 'watts' not allowed; allowed: macs, cpu_latency, gpu_latency" in capsys.readouterr().err


def test_search_under_torchrun_two_processes(tmp_path, data_root):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(json.dumps(search_cfg(data_root, table_cache=str(tmp_path / "tables"))))
    proc = torchrun("search", "--config", str(cfg), "--out", str(tmp_path / "s"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    history = read_jsonl(tmp_path / "s" / "alpha_history.jsonl")
    assert history[-1]["probs"] != history[0]["probs"]  # alpha moved (averaged over both ranks' batches)


def test_random_search_baseline_trains_scores_and_resumes(tmp_path, data_root, capsys):
    cfg = tmp_path / "r.yaml"
    cfg.write_text(json.dumps(search_cfg(data_root, strategy="random", random_archs=2, random_steps=1)))
    out = tmp_path / "random"
    assert main(["search", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert "best of 2 random archs (1 steps each)" in capsys.readouterr().out
    records = read_jsonl(out / "candidates.jsonl")
    assert [r["index"] for r in records] == [0, 1] and records[0]["arch"] != records[1]["arch"]
    for r in records:
        ckpt = load_checkpoint(out / "random" / f"{r['index']:02d}" / "checkpoints" / "last.pt")
        assert ckpt["train_state"]["step"] == 1 and ckpt["arch"] == r["arch"]
        assert r["gmacs"] == pytest.approx(count_macs(derive(EfficientPoseArch.from_json(r["arch"]), 17), (32, 32))[0] / 1e9)
    best = max(records, key=lambda r: r["score"])
    assert json.loads((out / "best_arch.json").read_text()) == best["arch"]
    # resume: finished candidates are read back, not retrained
    marked = [json.dumps({**r, "marker": True}) for r in records]
    (out / "candidates.jsonl").write_text("\n".join(marked) + "\n")
    assert main(["search", "--resume", "--out", str(out), "--quiet"]) == 0
    assert all(r["marker"] for r in read_jsonl(out / "candidates.jsonl"))


def test_fractional_warmup_starts_alpha_steps_mid_epoch(tmp_path, data_root):
    cfg = tmp_path / "s.yaml"
    one_epoch = search_cfg(data_root, warmup_epochs=0.5, table_cache=str(tmp_path / "tables"))
    one_epoch["train"]["epochs"] = 1
    cfg.write_text(json.dumps(one_epoch))
    out = tmp_path / "run"
    assert main(["search", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    history = read_jsonl(out / "alpha_history.jsonl")  # 4 steps an epoch: 2 weight-only steps, then alpha steps
    assert history[0]["probs"] == history[1]["probs"] != history[2]["probs"]


def test_warmup_longer_than_the_run_is_a_clear_error(tmp_path, data_root, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(json.dumps(search_cfg(data_root, warmup_epochs=3, table_cache=str(tmp_path / "tables"))))
    assert main(["search", "--config", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "config.search.warmup_epochs: 3.0 weight-only epochs are 12 steps" in err
    assert "no architecture step would be taken" in err and len(err.strip().splitlines()) == 1
