"""Training engine: config validation, exact resume, NaN stop, checkpoints, eval/infer CLIs, torchrun."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from posenas.checkpoint import load_checkpoint, model_from_checkpoint
from posenas.cli import main
from posenas.config import from_dict, load_config, to_dict
from posenas.engine import task as task_module
from posenas.engine import train as train_module
from posenas.engine.config import ExperimentConfig
from posenas.engine.train import Interrupted, train
from posenas.errors import PosenasError

from conftest import make_dataset, torchrun

TINY_ARCH = {"space": "simplebaseline", "backbone": "resnet18", "width_mult": 0.125,
             "head": {"widths": [16, 16, 16], "kernels": [4, 4, 4]}}


def tiny_config(root: Path, **train_overrides) -> ExperimentConfig:
    cfg = from_dict(ExperimentConfig, {
        "model": {"arch": TINY_ARCH},
        "data": {"root": str(root), "train_split": "val", "val_split": "val", "input_size": [96, 64],
                 "batch_size": 4, "workers": 0},
        "optim": {"lr": 0.01, "warmup_steps": 2},
        "train": {"epochs": 2, "device": "cpu", "log_every": 1, "checkpoint_every": 0, "val_every": 1,
                  "flip_test": True, "seed": 3},
    })
    return replace(cfg, train=replace(cfg.train, **train_overrides))


@pytest.fixture
def data_root(tmp_path):
    make_dataset("coco", tmp_path / "data", images=8, people=2)  # 16 instances: 4 steps of 4 per epoch
    return tmp_path / "data"


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["state_dict"]


def test_config_errors_name_the_path(tmp_path):
    with pytest.raises(PosenasError, match=r"config\.optim\.lrr: unknown key; allowed: optimizer, lr, weight_decay"):
        from_dict(ExperimentConfig, {"optim": {"lrr": 1}})
    with pytest.raises(PosenasError, match=r"config\.train\.epochs: expected an integer, got 'ten'"):
        from_dict(ExperimentConfig, {"train": {"epochs": "ten"}})
    with pytest.raises(PosenasError, match=r"config\.optim\.schedule: 'linear' not allowed; allowed: 'cosine', 'step'"):
        from_dict(ExperimentConfig, {"optim": {"schedule": "linear"}})
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n   seed: 1\n")
    with pytest.raises(PosenasError, match=r"c\.yaml: invalid YAML at line 3"):
        load_config(ExperimentConfig, path)
    path.write_text("train:\n  epochs: 3\n")
    cfg = load_config(ExperimentConfig, path, ["optim.lr=0.5", "data.input_size=[64, 48]"])
    assert cfg.train.epochs == 3 and cfg.optim.lr == 0.5 and cfg.data.input_size == (64, 48)
    assert from_dict(ExperimentConfig, to_dict(cfg)) == cfg  # config -> plain -> config
    path.write_text("optim:\n  lr: 1e-3\n")  # YAML 1.1 reads this as a string; it is a number here
    assert load_config(ExperimentConfig, path).optim.lr == 0.001


def test_input_size_the_model_cannot_take(tmp_path, data_root):
    cfg = tiny_config(data_root)
    cfg = replace(cfg, data=replace(cfg.data, input_size=(64, 48)))
    with pytest.raises(PosenasError, match=r"input_size: 64x48 gives 16x16 heatmaps, expected 16x12"):
        train(cfg, tmp_path / "run", progress=False)


def test_resumed_run_ends_with_identical_weights(tmp_path, data_root):
    cfg = tiny_config(data_root)
    train(cfg, tmp_path / "full", progress=False)
    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "split", progress=False, stop_at_step=6)  # mid second epoch
    assert load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["train_state"]["step"] == 6
    with pytest.raises(PosenasError, match="holds a run already; pass --resume"):
        train(cfg, tmp_path / "split", progress=False)
    train(cfg, tmp_path / "split", resume=True, progress=False)
    full, split = _weights(tmp_path / "full"), _weights(tmp_path / "split")
    assert full.keys() == split.keys()
    assert all(torch.equal(full[k], split[k]) for k in full)
    # the metrics log has each step once, as the uninterrupted run's
    steps = lambda run: [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps(tmp_path / "split") == steps(tmp_path / "full") == list(range(1, 9))
    results = json.loads((tmp_path / "full" / "results.json").read_text())
    assert results["metric"] == "coco" and 0.0 <= results["AP"] <= 1.0


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_root, monkeypatch):
    real = task_module.heatmap_loss
    calls = {"n": 0}

    def poisoned(pred, target, weight):
        calls["n"] += 1
        loss = real(pred, target, weight)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(task_module, "heatmap_loss", poisoned)
    with pytest.raises(PosenasError, match=r"training diverged: loss is nan at step 4 .* last good checkpoint is .*last\.pt"):
        train(tiny_config(data_root, checkpoint_every=2), tmp_path / "run", progress=False)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["train_state"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_checkpoint_rebuilds_the_model_alone(tmp_path, data_root):
    train(tiny_config(data_root, epochs=1), tmp_path / "run", progress=False)
    loaded = model_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert loaded.schema.name == "coco17" and loaded.codec.input_size == (96, 64)
    x = torch.randn(2, 3, 96, 64)
    assert loaded.model(x).shape == (2, 17, 24, 16)
    raw = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)  # nothing to unpickle
    assert raw["arch"] == TINY_ARCH | {"width_mult": 0.125}


@pytest.mark.parametrize("content, message", [
    (b"definitely not a checkpoint", "not a posenas checkpoint"),
    (None, "not a posenas checkpoint"),
])
def test_corrupt_or_foreign_checkpoint(tmp_path, content, message, capsys):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(PosenasError, match=message):
        model_from_checkpoint(path)
    assert main(["eval", "--checkpoint", str(path), "--data", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_truncated_checkpoint(tmp_path, data_root):
    train(tiny_config(data_root, epochs=1), tmp_path / "run", progress=False)
    good = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(PosenasError, match="not a posenas checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")


def test_eval_and_infer_from_checkpoint(tmp_path, data_root, capsys):
    train(tiny_config(data_root, epochs=1), tmp_path / "run", progress=False)
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.pt")
    assert main(["eval", "--checkpoint", ckpt, "--data", str(data_root), "--flip-test", "--json",
                 "--out", str(tmp_path / "ev")]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats == {k: v for k, v in json.loads((tmp_path / "ev" / "metrics.json").read_text()).items()
                     if k not in ("metric", "runtime", "flip_test", "boxes")}
    preds = json.loads((tmp_path / "ev" / "predictions.json").read_text())
    assert len(preds) == 16 and len(preds[0]["keypoints"]) == 51

    # detections: one box for image 1; an unknown image id is an error
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 40, 30], "score": 0.9, "category_id": 1}]))
    assert main(["eval", "--checkpoint", ckpt, "--data", str(data_root), "--boxes", str(dets), "--out", str(tmp_path / "ev2")]) == 0
    assert len(json.loads((tmp_path / "ev2" / "predictions.json").read_text())) == 1
    dets.write_text(json.dumps([{"image_id": 77, "bbox": [0, 0, 40, 30], "score": 0.9}]))
    capsys.readouterr()
    assert main(["eval", "--checkpoint", ckpt, "--data", str(data_root), "--boxes", str(dets)]) == 2
    assert "detections[0]: field 'image_id': unknown image id 77" in capsys.readouterr().err

    images = data_root / "images" / "val"
    assert main(["infer", "--checkpoint", ckpt, str(images / "000001.jpg"), str(images), "--out", str(tmp_path / "inf")]) == 0
    out = json.loads((tmp_path / "inf" / "predictions.json").read_text())
    assert out["schema"] == "coco17" and len(out["predictions"]) == 9  # one file + a folder of 8, whole-image boxes
    assert len(list((tmp_path / "inf").glob("*.jpg"))) == 9
    kp = np.array(out["predictions"][0]["keypoints"])
    assert kp.shape == (17, 3)

    (tmp_path / "broken.jpg").write_bytes(b"nope")
    capsys.readouterr()
    assert main(["infer", "--checkpoint", ckpt, str(tmp_path / "broken.jpg"), "--out", str(tmp_path / "inf2")]) == 2
    assert "broken.jpg: cannot decode image" in capsys.readouterr().err
    assert not (tmp_path / "inf2").exists()


def test_torchrun_two_processes_on_cpu(tmp_path, data_root):
    cfg_path = tmp_path / "cfg.yaml"
    from posenas.config import write_yaml

    write_yaml(cfg_path, to_dict(tiny_config(data_root, epochs=1)))
    proc = torchrun("train", "--config", str(cfg_path), "--out", str(tmp_path / "ddp"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    # 16 instances, 2 processes, batch 4 per process: 2 steps per epoch
    assert ckpt["train_state"]["step"] == 2
    assert json.loads((tmp_path / "ddp" / "results.json").read_text())["steps"] == 2


def test_interrupted_final_validation_is_redone_on_resume(tmp_path, data_root, monkeypatch):
    real = train_module.validate
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the final validation (the first is after epoch 0)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "validate", flaky)
    cfg = tiny_config(data_root)
    with pytest.raises(KeyboardInterrupt):  # a forced stop (second Ctrl-C) in the final validation
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "results.json").exists()
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["train_state"]["step"] == 8
    train(cfg, tmp_path / "run", resume=True, progress=False)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == 8


def test_ctrl_c_stops_at_a_step_boundary_and_resumes_exactly(tmp_path, data_root, monkeypatch):
    cfg = tiny_config(data_root)
    train(cfg, tmp_path / "full", progress=False)
    real = task_module.heatmap_loss
    calls = {"n": 0}

    def interrupted(pred, target, weight):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step; the step completes
        return real(pred, target, weight)

    monkeypatch.setattr(task_module, "heatmap_loss", interrupted)
    with pytest.raises(Interrupted, match="stopped at step 3"):
        train(cfg, tmp_path / "run", progress=False)
    monkeypatch.setattr(task_module, "heatmap_loss", real)
    train(cfg, tmp_path / "run", resume=True, progress=False)
    full, run = _weights(tmp_path / "full"), _weights(tmp_path / "run")
    assert all(torch.equal(full[k], run[k]) for k in full)


def test_resume_refuses_a_different_batch_size(tmp_path, data_root):
    cfg = tiny_config(data_root)
    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "run", progress=False, stop_at_step=2)
    other = replace(cfg, data=replace(cfg.data, batch_size=2))
    with pytest.raises(PosenasError, match="cannot resume with batch_size 2: the run was made with batch_size 4"):
        train(other, tmp_path / "run", resume=True, progress=False)


def test_bad_config_values_name_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    for text, message in [
        ("train:\n  log_every: 0\n", "config.train.log_every: must be >= 1"),
        ("optim:\n  weight_decay: -1\n", "config.optim.weight_decay: must be >= 0"),
        ("augment:\n  rotation: -5\n", "config.augment.rotation"),
        ("model:\n  name: resnet9000\n", None),
    ]:
        path.write_text(text)
        if message is None:
            cfg = load_config(ExperimentConfig, path)
            with pytest.raises(PosenasError, match="config.model.name: unknown model 'resnet9000'"):
                train_module.resolve_arch(cfg.model)
            continue
        with pytest.raises(PosenasError, match=message) as e:
            load_config(ExperimentConfig, path)
        assert str(e.value).startswith(str(path))


def test_flip_test_in_one_pass_equals_two_passes():
    from posenas.arch import build_model, arch_from_json
    from posenas.codecs.heatmap import flip_back
    from posenas.engine.predict import heatmaps_with_flip
    from posenas.keypoints import COCO17

    torch.manual_seed(0)
    model = build_model(arch_from_json(TINY_ARCH), 17).eval()
    with torch.no_grad():  # the head's init (std 0.001) gives heatmaps of ~1e-8, below any tolerance: O(1) weights
        for p in model.head.parameters():
            if p.dim() > 1:
                p.normal_(0, p[0].numel() ** -0.5)
    x = torch.randn(3, 3, 96, 64)
    with torch.no_grad():
        two = (model(x) + flip_back(model(torch.flip(x, dims=[3])), COCO17.flip_index)) * 0.5
        one = heatmaps_with_flip(model, x, COCO17.flip_index, flip_test=True)
        unshifted = (model(x) + flip_back(model(torch.flip(x, dims=[3])), COCO17.flip_index, shift=False)) * 0.5
    scale = float(two.abs().max())
    assert scale > 1e-2 and float((unshifted - two).abs().max()) > 1e-2 * scale  # the shift shows
    torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-6 * scale)
