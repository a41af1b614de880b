"""The configs and architectures shipped in the package: the resolver that finds them by name
from any directory, the wheel that carries them, every config loading with its typed class,
every paper recipe running one optimiser step, every architecture building and profiling."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from posenas.arch import build_model, load_arch_file
from posenas.cli import main
from posenas.config import load_config, read_yaml, to_dict
from posenas.cost import profile_model
from posenas.display import retrain_command
from posenas.engine.config import ExperimentConfig
from posenas.errors import PosenasError
from posenas.resources import SHIPPED_ROOT, resolve_config, shipped
from posenas.search.methods import method_for
from posenas.spaces.vipnas import largest_arch

from conftest import make_dataset

REPO = Path(__file__).resolve().parent.parent
CONFIGS = shipped("config")
ARCHS = shipped("arch")
PAPER = [name for name in CONFIGS if Path(name).name.startswith("paper-")]


def config_class(name: str) -> type:
    """The typed config a shipped YAML is for: a search's (by supernet.space) or training's."""
    data = read_yaml(SHIPPED_ROOT / name)
    if "supernet" in data:
        return method_for(data["supernet"].get("space"), name).config
    return ExperimentConfig


# ---------------------------------------------------------------- what is shipped
def test_every_method_has_paper_configs_and_example_archs():
    assert set(PAPER) >= {"vipnas/paper-resnet.yaml", "vipnas/paper-mobilenetv3.yaml",
                          "efficientpose/paper-small.yaml", "efficientpose/paper-large.yaml",
                          "pnfs/paper-mpii.yaml", "pnfs/paper-coco.yaml", "autopose/paper-coco.yaml",
                          "bottomup/paper-higherhrnet-w32.yaml", "3m-pose/paper-coco.yaml",
                          "baselines/paper-simplebaseline-resnet50.yaml", "vipnas/paper-posetrack.yaml"}
    spaces = {load_arch_file(SHIPPED_ROOT / name).space for name in ARCHS}
    assert spaces == {"vipnas-resnet", "vipnas-mobilenetv3", "efficientpose", "pnfs", "3m-pose"}
    settings = {load_arch_file(SHIPPED_ROOT / n).setting for n in ARCHS if n.startswith("efficientpose/")}
    assert settings == {"small", "large"}
    # the repository's configs/ is the package's tree, so README paths work from the root
    assert (REPO / "configs").resolve() == SHIPPED_ROOT


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_loads_with_its_typed_class(name):
    cfg = load_config(config_class(name), SHIPPED_ROOT / name)  # unknown keys and bad values are errors
    written = read_yaml(SHIPPED_ROOT / name)
    resolved = to_dict(cfg)
    for section, values in written.items():  # every value written is the value used
        for key, value in (values or {}).items():
            got = resolved[section][key]
            assert got == value or (isinstance(value, list) and list(got) == value), f"{name}: {section}.{key}"
    assert SHIPPED_ROOT.joinpath(name).read_text().startswith("# ")  # `posenas configs` shows that line


@pytest.mark.parametrize("name", [n for n in CONFIGS if n.startswith(("autopose/", "proxy/autopose"))])
def test_autopose_configs_start_their_controller_within_the_run(name):
    """The controller's start (epochs of N_iter steps) must lie inside the run whatever the data's
    size: with N_iter left to one pass over the data, autopose/tiny's 60 steps ended before the
    161-step first epoch of the default dataset and the search refused to start."""
    cfg = load_config(config_class(name), SHIPPED_ROOT / name)
    s, t = cfg.search, cfg.train
    assert s.iterations is not None, f"{name}: search.iterations (N_iter) must be set"
    if t.max_steps:
        assert s.controller_start_epoch * s.iterations < t.max_steps


def test_paper_recipes_are_the_papers():
    """Spot checks of the numbers each paper states (the rest is commented in the YAMLs)."""
    def load(name):
        return load_config(config_class(name), SHIPPED_ROOT / name)

    v = load("vipnas/paper-resnet.yaml")
    assert (v.data.input_size, v.train.epochs, v.optim.lr, v.optim.milestones) == ((256, 192), 250, 1e-3, (200, 230))
    assert (v.search.candidates, v.search.max_gmacs, v.supernet.random_subnets) == (500, 1.44, 2)
    assert load("vipnas/paper-mobilenetv3.yaml").search.max_gmacs == 0.69
    e = load("efficientpose/paper-small.yaml")
    assert (e.data.input_size, e.supernet.setting, e.search.warmup_epochs, e.train.epochs) == ((256, 256), "small", 60, 210)
    assert (e.optim.optimizer, e.optim.lr, e.optim.weight_decay, e.optim.schedule) == ("sgd", 0.05, 1e-4, "cosine")
    assert (e.search.arch_lr, e.search.arch_fraction, e.search.cost, e.search.latency_batch) == (3e-4, 0.2, "gpu_latency", 32)
    assert load("efficientpose/paper-large.yaml").supernet.setting == "large"
    p = load("pnfs/paper-mpii.yaml")
    assert (p.supernet.parts, p.supernet.hidden, p.supernet.channels, p.supernet.vector_dim) == (3, 1, 10, 8)
    assert (p.optim.milestones, p.optim.gamma, p.train.epochs, p.data.batch_size) == ((90, 120, 150), 0.25, 200, 24)
    c = load("pnfs/paper-coco.yaml")
    assert (c.data.input_size, c.supernet.channels) == ((384, 288), 16)
    s = load("baselines/paper-simplebaseline-resnet50.yaml")
    assert (s.model.name, s.data.input_size, s.data.sigma, s.data.batch_size) == ("simplebaseline-resnet50", (256, 192), 2.0, 32)
    assert (s.optim.optimizer, s.optim.lr, s.train.epochs, s.optim.milestones, s.train.flip_test) == (
        "adam", 1e-3, 140, (90, 120), True)
    t = load("vipnas/paper-posetrack.yaml")  # Sec. 4.1: T = 3, 60 epochs at 1e-3 cosine; key 20 epochs 1e-4 / 10 / 15
    assert (t.supernet.frames, t.train.epochs, t.optim.lr, t.optim.schedule, t.supernet.random_subnets) == (
        3, 60, 1e-3, "cosine", 2)
    assert (t.key.epochs, t.key.optim.lr, t.key.optim.milestones, t.key.optim.gamma) == (20, 1e-4, (10, 15), 0.1)
    assert t.search.max_gmacs == 0.82 and t.key_arch() == largest_arch("vipnas-resnet", t.supernet.parsed_choices())


# ---------------------------------------------------------------- the resolver
def test_shipped_names_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    target = SHIPPED_ROOT / "vipnas" / "tiny-resnet.yaml"
    for name in ("configs/vipnas/tiny-resnet.yaml", "vipnas/tiny-resnet.yaml", "vipnas/tiny-resnet",
                 "./configs/vipnas/tiny-resnet.yaml"):
        assert resolve_config(name) == target, name
    assert resolve_config("vipnas/s-vipnas-res50", "arch") == SHIPPED_ROOT / "vipnas" / "s-vipnas-res50.json"
    # the command a search prints for the retrain names configs/... and works here too
    command = retrain_command(Path("run/best_arch.json"), "data", (64, 64))
    config = command.split("--config ")[1].split()[0]
    assert resolve_config(config) == SHIPPED_ROOT / "baselines" / "tiny.yaml"


def test_an_existing_path_wins_and_unknown_names_list_the_shipped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vipnas").mkdir()
    (tmp_path / "vipnas" / "tiny-resnet.yaml").write_text("train: {epochs: 1}\n")
    assert resolve_config("vipnas/tiny-resnet.yaml") == Path("vipnas/tiny-resnet.yaml")
    assert resolve_config("vipnas/tiny-resnet") == SHIPPED_ROOT / "vipnas" / "tiny-resnet.yaml"  # no such file here
    with pytest.raises(PosenasError) as e:
        resolve_config("vipnas/tiny-resnett")
    message = str(e.value)
    assert "\n" not in message and message.startswith("vipnas/tiny-resnett: no such file")
    assert all(name in message for name in CONFIGS) and not any(name in message for name in ARCHS)
    with pytest.raises(PosenasError, match=r"no shipped architecture JSON of that name; shipped: .*s-vipnas-res50\.json"):
        resolve_config("vipnas/tiny-resnet", "arch")  # a config's name is not an arch's


def test_cli_takes_shipped_names_from_another_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["profile", "--arch", "vipnas/s-vipnas-res50", "--no-latency", "--json", "--input", "128x96"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 7286772 and out["input"] == [128, 96]  # README: 7.29 M params
    assert main(["search", "--config", "vipnas/no-such"]) == 2
    assert "vipnas/no-such: no such file, and no shipped config" in capsys.readouterr().err
    assert main(["train", "--arch", "vipnas/no-such", "--out", "run"]) == 2  # fails before any run dir exists
    assert "no shipped architecture JSON" in capsys.readouterr().err and not (tmp_path / "run").exists()
    assert main(["configs"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in CONFIGS + ARCHS)


def test_arch_file_in_a_config_resolves_by_name(tmp_path, monkeypatch):
    from posenas.engine.train import resolve_arch

    monkeypatch.chdir(tmp_path)
    cfg = load_config(ExperimentConfig, resolve_config("efficientpose/paper-retrain-mpii"))
    assert cfg.model.arch_file == "efficientpose/k3e6-small.json"
    assert resolve_arch(cfg.model).to_json() == load_arch_file(SHIPPED_ROOT / "efficientpose" / "k3e6-small.json").to_json()


def test_demo_checks_its_config_before_generating_data(tmp_path, monkeypatch, capsys):
    from posenas.synthetic import generate

    def no_data(*args, **kwargs):
        raise AssertionError("generated data before checking the config")

    monkeypatch.setattr(generate, "ensure_synthetic", no_data)
    monkeypatch.setattr("posenas.demo.ensure_synthetic", no_data)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--config", "baselines/no-such", "--out", "out"]) == 2
    assert "baselines/no-such: no such file" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("model: {arch_file: nowhere.json}\n")
    assert main(["demo", "--config", "bad.yaml", "--out", "out"]) == 2
    assert "nowhere.json: no such file" in capsys.readouterr().err
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


def test_wheel_holds_every_shipped_file(tmp_path):
    """Build the wheel as `pip install .` does (outside the checkout) and read its file list."""
    src = tmp_path / "src"
    src.mkdir()
    for item in ("pyproject.toml", "README.md"):
        (src / item).write_bytes((REPO / item).read_bytes())
    subprocess.run(["cp", "-r", str(REPO / "posenas"), str(src / "posenas")], check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("posenas-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"posenas/configs/{p.relative_to(SHIPPED_ROOT).as_posix()}" for p in SHIPPED_ROOT.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}
    assert expected and expected <= names, sorted(expected - names)
    assert {"posenas/resources.py", "posenas/api.py"} <= names


# ---------------------------------------------------------------- every paper recipe, one step
def tiny_overrides(name: str, root: Path) -> list[str]:
    """A paper recipe on a tiny dataset: tiny input and batch, one optimiser step, a 1-image validation."""
    out = [f"data.root={root}", "data.train_split=val", "data.val_split=val", "data.input_size=[64,64]",
           "data.batch_size=2", "data.workers=0", "data.val_max_images=1", "train.epochs=1", "train.max_steps=1",
           "train.device=cpu", "train.threads=1", "train.checkpoint_every=0", "train.log_every=1"]
    supernet = read_yaml(SHIPPED_ROOT / name).get("supernet", {})
    space = supernet.get("space")
    if space in ("vipnas-resnet", "vipnas-mobilenetv3"):
        # one candidate, one calibration batch, one val image; the supernet over the tiny config's
        # choices of the same space (the whole resnet space is 200 M parameters: minutes to step
        # and checkpoint on a CPU, and nothing more of the recipe tested)
        tiny = read_yaml(SHIPPED_ROOT / f"vipnas/tiny-{space.removeprefix('vipnas-')}.yaml")["supernet"]
        assert tiny["space"] == space
        out += ["search.candidates=1", "search.calib_batches=1", "search.val_max_images=1",
                f"supernet.choices={json.dumps(tiny['choices'])}"]
    elif space == "vipnas-video":  # the tiny video config's supernet and key net, one sequence per variant
        tiny = read_yaml(SHIPPED_ROOT / "vipnas/tiny-video.yaml")
        out += [f"supernet.choices={json.dumps(tiny['supernet']['choices'])}", f"key.arch={tiny['key']['arch']}",
                "key.epochs=1", "search.candidates=1", "search.calib_batches=1", "search.max_gmacs=null",
                "search.latency_runs=1"]
    elif space == "autopose":  # 4 branches and the six ops at a few channels, one stage; the controller updates at step 0
        out += ["supernet.channels=[4,8,8,8]", "supernet.stem_channels=8", "supernet.stages=1",
                "supernet.individual_nodes=2", "search.iterations=1",
                "search.controller_start_epoch=0", "search.controller_steps=1", "search.reward_images=1",
                "search.derive_samples=1"]
    elif space == "3m-pose":  # the whole fabric and every op at a few channels (the CPU cost is the width)
        out += ["supernet.channels=4", "supernet.stem_channels=8"]
    elif space == "efficientpose":  # a MACs table (GPU latency needs CUDA), alpha steps from step 0
        out += ["search.cost=macs", "search.warmup_epochs=0", f"search.table_cache={root.parent / 'tables'}"]
    return out


@pytest.mark.parametrize("name", PAPER)
def test_paper_config_runs_one_step(name, tmp_path, one_thread, monkeypatch):
    from posenas.search import efficientpose

    # the 35-panel alpha plot is most of an EfficientPose run this short (test_efficientpose_search draws it)
    monkeypatch.setattr(efficientpose, "plot_alpha", lambda history, path, setting: None)
    cfg_class = config_class(name)
    written = read_yaml(SHIPPED_ROOT / name)
    fmt = ("posetrack" if written.get("supernet", {}).get("space") == "vipnas-video" else
           "mpii" if "mpii" in written["data"]["root"] else "coco")
    root = tmp_path / "data"
    make_dataset(fmt, root, images=6, people=1)
    command = "train" if cfg_class is ExperimentConfig else "search"
    run = tmp_path / "run"
    assert main([command, "--config", name, "--out", str(run), "--quiet", *tiny_overrides(name, root)]) == 0
    saved = load_config(cfg_class, run / "config.yaml")
    paper = load_config(cfg_class, SHIPPED_ROOT / name)
    assert (saved.optim, saved.augment) == (paper.optim, paper.augment)  # the recipe ran, not a default
    log = run / ("metrics.jsonl" if command == "train" else "supernet/metrics.jsonl")
    steps = [json.loads(line) for line in log.read_text().splitlines()]
    losses = [m["loss"] for m in steps if "loss" in m]
    assert [m["step"] for m in steps if "loss" in m] == [1] and all(v == v for v in losses)  # one finite step


# ---------------------------------------------------------------- every shipped architecture
@pytest.mark.parametrize("name", ARCHS)
def test_shipped_arch_builds_profiles_and_runs(name, one_thread):
    arch = load_arch_file(resolve_config(name, "arch"))
    joints = getattr(arch, "num_joints", 17)
    model = build_model(arch, joints).eval()
    result = profile_model(model, (128, 96), latency=False)
    assert result.params == sum(p.numel() for p in model.parameters()) > 1e5 and result.macs > 1e7
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 96))
    channels = 2 * joints if getattr(arch, "bottom_up", False) else joints  # bottom-up: heatmaps + tags
    assert out.shape == (1, channels, 32, 24) and torch.isfinite(out).all()
