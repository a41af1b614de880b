"""No silent damage (issue 16, item 2): what a fault battery found, one test each.

Run folders are never overwritten; crashes mid-append or mid-write leave nothing that
breaks the next resume; a loss that explodes stops the run; a bad image in a DataLoader
worker, a bad checkpoint, an empty data root are one clear line; damaged synthetic data is
regenerated; Ctrl-C / SIGTERM stop every search phase with one resume command.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from posenas.checkpoint import load_checkpoint, save_checkpoint
from posenas.cli import main
from posenas.config import load_config, to_dict, write_yaml
from posenas.engine import task as task_module
from posenas.engine.config import ExperimentConfig
from posenas.engine.train import Interrupted, interruptible, train
from posenas.errors import PosenasError
from posenas.jsonio import JsonlLog, read_jsonl

from conftest import make_dataset
from test_engine import TINY_ARCH, tiny_config
from test_vipnas_search import search_yaml


@pytest.fixture
def data_root(tmp_path):
    make_dataset("coco", tmp_path / "data", images=8, people=2)  # 16 instances: 4 steps of 4 per epoch
    return tmp_path / "data"


def quick(root: Path, **train_overrides) -> ExperimentConfig:
    """The engine tests' tiny run without validation passes (fast)."""
    return tiny_config(root, **{"val_every": 0, "flip_test": False, **train_overrides})


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["seconds"]) for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]


# ------------------------------------------------------------------ run folders
def test_train_refuses_a_folder_of_another_run_a_search_or_user_files(tmp_path, data_root, capsys):
    cfg = quick(data_root)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    other_run = tmp_path / "other"  # another run's files (a different config), never checkpointed
    write_yaml(other_run / "config.yaml", to_dict(replace(cfg, train=replace(cfg.train, seed=99))))
    (other_run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.1}\n')
    (other_run / "results.json").write_text('{"AP": 0.5}\n')
    from posenas.search.vipnas_config import SearchExperimentConfig

    search = tmp_path / "search"  # a search's files (its supernet not trained yet)
    write_yaml(search / "config.yaml", to_dict(load_config(SearchExperimentConfig, search_yaml(tmp_path / "s.yaml",
                                                                                                data_root))))
    (search / "candidates.jsonl").write_text('{"strategy": "random", "index": 0, "score": 0.1}\n')
    for folder, message in [
        (user, r"holds files of no posenas run \(notes\.txt\); choose another --out .* or remove them"),
        (other_run, r"holds a run already; pass --resume .*posenas train --resume --out .*other"),
        (search, r"holds a search already; pass --resume .*posenas search --resume --out .*search\b"),
    ]:
        before = _snapshot(folder)
        with pytest.raises(PosenasError, match=message):
            train(cfg, folder, progress=False)
        assert _snapshot(folder) == before, folder  # not one byte touched
    # the CLI says the same in one line, exit status 2
    capsys.readouterr()
    cfg_file = tmp_path / "t.yaml"
    write_yaml(cfg_file, to_dict(cfg))
    assert main(["train", "--config", str(cfg_file), "--out", str(search), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "holds a search already" in err
    # an existing empty folder is fine
    (tmp_path / "empty").mkdir()
    train(replace(cfg, train=replace(cfg.train, max_steps=1)), tmp_path / "empty", progress=False)
    assert (tmp_path / "empty" / "checkpoints" / "last.pt").is_file()


def test_a_start_killed_before_its_first_checkpoint_restarts(tmp_path, data_root):
    """What `kill -9` leaves before the first checkpoint (config.yaml, a torn metrics line, a
    checkpoint temp file) does not block the same run: `train` starts it over, and so does
    `--resume` (nothing to continue), stale temp files removed."""
    cfg = quick(data_root, max_steps=2)
    for resume in (False, True):
        run = tmp_path / f"run-{resume}"
        write_yaml(run / "config.yaml", to_dict(replace(cfg, train=replace(cfg.train, device="auto"))))
        (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.1}\n{"step": 2, "lo')
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / ".last.pt.k2x9_abc.tmp").write_bytes(b"half a checkpoint")
        train(cfg, run, resume=resume, progress=False)
        assert load_checkpoint(run / "checkpoints" / "last.pt")["train_state"]["step"] == 2
        assert [s for s, _ in _losses(run)] == [1, 2]
        assert not list(run.rglob("*.tmp"))


def test_a_search_resumes_over_a_partial_supernet_and_a_torn_candidate_line(tmp_path, data_root):
    """A search killed in supernet training before its first checkpoint resumes; a candidate
    line torn by a crash is dropped, redone and the file stays readable for every later resume."""
    from posenas.search.rundir import open_search_dir
    from posenas.search.vipnas_config import SearchExperimentConfig

    yaml_file = search_yaml(tmp_path / "s.yaml", data_root, candidates=2, population=2, parents=1)
    out = tmp_path / "search"
    cfg = load_config(SearchExperimentConfig, yaml_file)
    open_search_dir(out, cfg, resume=False)  # the search started ...
    write_yaml(out / "supernet" / "config.yaml", to_dict(cfg.training()))  # ... and its supernet training
    (out / "supernet" / "metrics.jsonl").write_text('{"step": 1, "loss": 0.1}\n')
    (out / ".config.yaml.ab12cd34.tmp").write_text("stale")
    assert main(["search", "--resume", "--out", str(out), "--quiet"]) == 0
    assert not list(out.glob(".*.tmp"))
    records = read_jsonl(out / "candidates.jsonl")
    assert len(records) == 4

    text = (out / "candidates.jsonl").read_text()
    (out / "candidates.jsonl").write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])  # torn last line
    (out / "results.json").unlink()
    assert main(["search", "--resume", "--out", str(out), "--quiet"]) == 0
    lines = (out / "candidates.jsonl").read_text().splitlines()
    assert [json.loads(line)["arch"] for line in lines] == [r["arch"] for r in records]  # every line whole
    assert main(["search", "--resume", "--out", str(out), "--quiet"]) == 0  # and again
    assert len(read_jsonl(out / "candidates.jsonl")) == 4


def test_jsonl_log_rewrites_a_torn_or_unterminated_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"')  # torn mid-record
    log = JsonlLog(path)
    assert log.records == [{"a": 1}, {"a": 2}]
    log.append({"a": 3})
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 3}]
    path.write_text('{"a": 1}\n{"a": 2}')  # whole record, its newline never written
    JsonlLog(path).append({"a": 3})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"a": 1}, {"a": 2}, {"a": 3}]
    stamp = path.stat().st_mtime_ns
    assert JsonlLog(path, keep=lambda r: r["a"] < 3).records == [{"a": 1}, {"a": 2}]
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    os.utime(path, ns=(stamp, stamp))
    JsonlLog(path)  # intact: not rewritten
    assert path.stat().st_mtime_ns == stamp


def test_resume_cleans_stale_temp_files_and_seconds_go_on(tmp_path, data_root, monkeypatch):
    cfg = quick(data_root, log_every=1)
    real = task_module.heatmap_loss

    def slow(pred, target, weight):
        time.sleep(0.2)
        return real(pred, target, weight)

    monkeypatch.setattr(task_module, "heatmap_loss", slow)
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(cfg, run, progress=False, stop_at_step=2)
    monkeypatch.setattr(task_module, "heatmap_loss", real)
    stale = [run / "checkpoints" / ".last.pt.x8k2_q1z.tmp", run / ".results.json.abcd1234.tmp"]
    for p in stale:
        p.write_bytes(b"left by kill -9")
    keep = run / "checkpoints" / "notes.tmp"  # not named as our temp files: kept
    keep.write_text("mine")
    train(cfg, run, resume=True, progress=False)
    assert not any(p.exists() for p in stale) and keep.exists()
    seconds = dict(_losses(run))
    assert list(seconds) == list(range(1, 9))
    assert seconds[2] >= 0.4 and seconds[3] > seconds[2]  # not restarted from 0 after the resume
    assert load_checkpoint(run / "checkpoints" / "last.pt")["train_state"]["seconds"] >= seconds[8] - 0.01


# ------------------------------------------------------------------ divergence and config values
def test_loss_explosion_without_nan_stops_the_run(tmp_path, data_root, monkeypatch):
    real = task_module.heatmap_loss
    calls = {"n": 0}

    def exploding(pred, target, weight):
        calls["n"] += 1
        loss = real(pred, target, weight)
        return loss * 1e6 if calls["n"] >= 5 else loss  # finite, but a million times the level

    monkeypatch.setattr(task_module, "heatmap_loss", exploding)
    with pytest.raises(PosenasError, match=r"training diverged: loss is \S+ \(more than 1000x its running level "
                                           r"\S+, train\.divergence_factor\) at step 5 .*last good checkpoint is "
                                           r".*last\.pt"):
        train(quick(data_root, checkpoint_every=2), tmp_path / "on", progress=False)
    assert load_checkpoint(tmp_path / "on" / "checkpoints" / "last.pt")["train_state"]["step"] == 4
    calls["n"] = 0
    train(quick(data_root, divergence_factor=None), tmp_path / "off", progress=False)  # off: runs to the end
    assert load_checkpoint(tmp_path / "off" / "checkpoints" / "last.pt")["train_state"]["step"] == 8


def test_adam_at_a_huge_lr_is_stopped_at_once(tmp_path, data_root):
    cfg = quick(data_root)
    cfg = replace(cfg, optim=replace(cfg.optim, lr=10.0))  # the largest lr the config takes
    with pytest.raises(PosenasError, match=r"training diverged: loss is .* at step 2 .*No checkpoint was written"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # nothing half-written blocks the retry


def test_non_finite_gradient_stops_before_the_step(tmp_path, data_root, monkeypatch):
    real = task_module.heatmap_loss
    calls = {"n": 0}

    def bad_gradient(pred, target, weight):
        calls["n"] += 1
        loss = real(pred, target, weight)
        if calls["n"] == 3:  # forward 0, backward nan (d sqrt(x) / dx at 0 is inf, times 0)
            loss = loss + 0.0 * torch.sqrt((pred - pred.detach()).sum())
        return loss

    monkeypatch.setattr(task_module, "heatmap_loss", bad_gradient)
    with pytest.raises(PosenasError, match=r"training diverged: gradient norm is nan \(loss \S+\) at step 3"):
        train(quick(data_root, checkpoint_every=2), tmp_path / "run", progress=False)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["train_state"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize("override, message", [
    ("optim.lr=1e39", r"config\.optim\.lr: must be a number in \(0, 10\], got 1e\+39"),
    ("optim.lr=.nan", r"config\.optim\.lr: must be a number in \(0, 10\], got nan"),
    ("optim.momentum=1", r"config\.optim\.momentum: must be in \[0, 1\)"),
    ("optim.weight_decay=.inf", r"config\.optim\.weight_decay: must be >= 0 and finite"),
    ("optim.warmup_steps=-1", r"config\.optim\.warmup_steps: must be >= 0"),
    ("optim.gamma=0", r"config\.optim\.gamma: must be in \(0, 1\]"),
    ("optim.milestones=[-2]", r"config\.optim\.milestones: epochs must be >= 0"),
    ("train.divergence_factor=0.5", r"config\.train\.divergence_factor: must be > 1"),
])
def test_optimiser_values_are_validated(tmp_path, override, message, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 1\n")
    with pytest.raises(PosenasError, match=message):
        load_config(ExperimentConfig, path, [override])
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "r"), override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and not (tmp_path / "r").exists()


# ------------------------------------------------------------------ data errors, run starts
def test_bad_image_in_a_worker_is_one_line_and_leaves_nothing(tmp_path, data_root, capsys):
    bad = data_root / "images" / "val" / "000003.jpg"
    good = bad.read_bytes()
    bad.write_bytes(b"not a jpeg")
    cfg = quick(data_root, epochs=1)
    cfg = replace(cfg, data=replace(cfg.data, workers=2))
    with pytest.raises(PosenasError) as e:
        train(cfg, tmp_path / "run", progress=False)
    assert str(e.value) == f"{bad}: cannot decode image (corrupt or not an image)"
    assert not multiprocessing.active_children()  # the workers are shut down now, not at a later gc (5 s each)
    assert not (tmp_path / "run").exists()  # the failed start left nothing behind

    # the validation loop in workers too
    from posenas.arch import arch_from_json, build_model
    from posenas.data.layout import load_dataset
    from posenas.engine.distributed import World
    from posenas.engine.train import make_codec, validate

    model = build_model(arch_from_json(TINY_ARCH), 17)
    with pytest.raises(PosenasError) as e:
        validate(model, cfg, load_dataset(data_root, "val"), make_codec(cfg), World(0, 1, torch.device("cpu")),
                 progress=False)
    assert str(e.value) == f"{bad}: cannot decode image (corrupt or not an image)"
    assert not multiprocessing.active_children()

    # the retry, with the image fixed and another config, uses the same --out
    bad.write_bytes(good)
    cfg_file = tmp_path / "t.yaml"
    write_yaml(cfg_file, to_dict(replace(cfg, data=replace(cfg.data, workers=0))))
    assert main(["train", "--config", str(cfg_file), "--out", str(tmp_path / "run"), "--quiet",
                 "train.max_steps=1"]) == 0


def test_a_config_the_model_cannot_take_writes_nothing(tmp_path, data_root):
    cfg = quick(data_root)
    bad = replace(cfg, data=replace(cfg.data, input_size=(64, 48)))
    with pytest.raises(PosenasError, match="input_size: 64x48 gives 16x16 heatmaps"):
        train(bad, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(PosenasError, match="no such checkpoint file"):
        train(replace(cfg, train=replace(cfg.train, init_from=str(tmp_path / "none.pt"))), tmp_path / "run",
              progress=False)
    assert not (tmp_path / "run").exists()
    train(replace(cfg, train=replace(cfg.train, max_steps=1)), tmp_path / "run", progress=False)  # the retry


def test_empty_root_and_annotation_file_as_root_name_the_problem(tmp_path, data_root):
    (tmp_path / "empty").mkdir()
    cfg = quick(tmp_path / "empty")
    with pytest.raises(PosenasError, match=r"empty: no dataset here \(an empty folder\): a dataset root holds "
                                           r"annotations/"):
        train(cfg, tmp_path / "run", progress=False)
    ann = data_root / "annotations" / "person_keypoints_val.json"
    with pytest.raises(PosenasError, match=r"person_keypoints_val\.json: an annotation file, not a dataset root, so "
                                           r"it has no split 'val'.*give the folder that holds annotations/"):
        train(quick(ann), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ checkpoints
def _plain_checkpoint(path: Path) -> None:
    from posenas.arch import arch_from_json, build_model
    from posenas.codecs.heatmap import HeatmapCodec

    model = build_model(arch_from_json(TINY_ARCH), 17)
    codec = HeatmapCodec(input_size=(96, 64), heatmap_size=(24, 16), sigma=2.0)
    save_checkpoint(path, {"arch": arch_from_json(TINY_ARCH).to_json(), "schema": "coco17", "codec": codec.to_dict(),
                           "state_dict": model.state_dict()})


@pytest.mark.parametrize("kind", ["random", "truncated", "pickled-object", "empty"])
def test_bad_checkpoint_is_one_clean_line(tmp_path, kind, capsys):
    path = tmp_path / f"{kind}.pt"
    if kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        _plain_checkpoint(tmp_path / "good.pt")
        load_checkpoint(tmp_path / "good.pt")  # the real one loads
        good = (tmp_path / "good.pt").read_bytes()
        path.write_bytes(good[: len(good) // 2])
    elif kind == "pickled-object":
        torch.save({"format": "posenas-checkpoint", "format_version": 1, "arch": Path("x")}, path)
    else:
        path.write_bytes(b"")
    with pytest.raises(PosenasError) as e:
        load_checkpoint(path)
    message = str(e.value)
    assert message.startswith(f"not a posenas checkpoint (or corrupt): {path}")
    for torch_text in ("\x1b", "weights_only", "trust", "PytorchStreamReader", "Unpickl", "miniz"):
        assert torch_text not in message
    assert main(["eval", "--checkpoint", str(path), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"posenas: error: {message}\n"


# ------------------------------------------------------------------ synthetic data
def test_synth_regenerates_missing_or_changed_files(tmp_path, capsys):
    from posenas.synthetic.generate import default_spec, synthesize

    out = tmp_path / "ds"
    spec = default_spec("coco", train=2, val=1, width=64, height=64)
    synthesize(out, spec, workers=1, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    image = out / "images" / "val" / "000001.jpg"
    assert manifest["files"]["images/val/000001.jpg"] == image.stat().st_size
    original = _snapshot(out)
    (out / "notes.txt").write_text("mine")  # a user's file beside the dataset stays
    capsys.readouterr()

    image.unlink()
    report = synthesize(out, spec, workers=1, progress=False)
    assert "seconds" in report and "1 file(s) missing or changed" in capsys.readouterr().err
    assert _snapshot(out) == {**original, "notes.txt": b"mine"}  # the same bytes as before

    ann = out / "annotations" / "person_keypoints_train.json"
    ann.write_text(ann.read_text()[:-20])  # changed
    synthesize(out, spec, workers=1, progress=False)
    assert _snapshot(out) == {**original, "notes.txt": b"mine"}
    assert "seconds" not in synthesize(out, spec, workers=1, progress=False)  # intact now: nothing to do

    # a manifest from before the file list cannot be checked: the files are generated again
    del manifest["files"]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    assert "seconds" in synthesize(out, spec, workers=1, progress=False)
    assert "files" in json.loads((out / "manifest.json").read_text())


# ------------------------------------------------------------------ Ctrl-C / SIGTERM
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interruptible_phases_stop_even_when_sigint_was_ignored(sig):
    """A search phase outside training (BN re-calibration, a cost table, an export) stops on
    the signal, also in a process that started with SIGINT ignored (no job control)."""
    seen = []

    @interruptible
    def phase() -> None:
        os.kill(os.getpid(), sig)
        for _ in range(500):  # the handler runs between bytecodes
            time.sleep(0.01)
        seen.append("not stopped")

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt):
            phase()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # restored afterwards
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not seen


def test_every_search_entry_is_interruptible():
    from posenas.search.methods import SEARCHES

    assert all(hasattr(method.run, "__wrapped__") for method in SEARCHES.values())


def test_interrupt_hints_name_the_one_command(tmp_path, data_root, monkeypatch, capsys):
    real = task_module.heatmap_loss
    sent = []

    def ctrl_c(pred, target, weight):
        if not sent:  # one Ctrl-C, mid-step: the step completes, then the run stops
            sent.append(os.kill(os.getpid(), signal.SIGINT))
        return real(pred, target, weight)

    cfg_file = tmp_path / "t.yaml"
    write_yaml(cfg_file, to_dict(quick(data_root)))
    monkeypatch.setattr(task_module, "heatmap_loss", ctrl_c)
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg_file), "--out", str(run), "--quiet"]) == 130
    assert capsys.readouterr().err == (f"posenas: interrupted (stopped at step 1; checkpoint written in {run}); "
                                       f"continue with: posenas train --resume --out {run}\n")

    import posenas.search.sandwich as sandwich

    sent.clear()
    monkeypatch.setattr(sandwich, "heatmap_loss", ctrl_c)
    out = tmp_path / "search"
    assert main(["search", "--config", str(search_yaml(tmp_path / "s.yaml", data_root)), "--out", str(out),
                 "--quiet"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith(f"; continue with: posenas search --resume --out {out}\n")
    assert "supernet --" not in err and "--out" not in err.split("continue with")[0]


def test_sigint_during_candidate_evaluation_of_a_search_without_job_control(tmp_path, data_root):
    """The search started with SIGINT ignored (as a script's background job is): SIGINT during
    the candidate evaluation still stops it with exit status 130 and the resume command, and
    ``--resume`` completes it."""
    yaml_file = search_yaml(tmp_path / "s.yaml", data_root, candidates=6, strategies=["random"])
    out = tmp_path / "search"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "posenas", "search", "--config", str(yaml_file), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    candidates = out / "candidates.jsonl"
    deadline = time.monotonic() + 240
    while not (candidates.exists() and candidates.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == f"posenas: interrupted; continue with: posenas search --resume --out {out}"
    assert "Traceback" not in err
    done = len(read_jsonl(candidates))
    assert 1 <= done < 6 and not (out / "results.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "posenas", "search", "--resume", "--out", str(out), "--quiet"],
                             env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert [r["index"] for r in read_jsonl(candidates)] == list(range(6))
    assert json.loads((out / "results.json").read_text())["evaluations"] == 6
