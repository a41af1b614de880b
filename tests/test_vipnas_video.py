"""T-ViPNAS: the fusion module, T-ViPNets and their supernet, propagation, costs and the video search."""

import json
import random

import numpy as np
import pytest
import torch

from posenas.arch import arch_from_json, build_model
from posenas.checkpoint import model_from_checkpoint
from posenas.codecs import HeatmapCodec
from posenas.cost import count_macs
from posenas.data.layout import load_dataset
from posenas.engine.task import task_for
from posenas.engine.video import VideoTask, instance_chains, predict_video
from posenas.errors import PosenasError
from posenas.jsonio import read_json, read_jsonl
from posenas.spaces.vipnas import SPACES, derive, parse_choices, sample_arch, largest_arch
from posenas.spaces.vipnas_video import (FrameArch, Fusion, TemporalFusion, TemporalSupernet,
                                         VideoArch, average_gmacs, derive_frame, frame_macs, load_active_state,
                                         propagate, warp_heatmaps)
from posenas.synthetic.generate import default_spec, ensure_synthetic

SPACE = "vipnas-resnet"
CHOICES = {
    "stem": {"widths": [16, 24], "kernels": [3]},
    "stages": [{"depths": [1, 2], "widths": [16, 32], "expansions": [1, 2], "kernels": [3], "groups": [2, 4],
                "attentions": ["none", "se"]},
               {"depths": [1], "widths": [32, 48], "expansions": [1], "kernels": [3, 5], "groups": [4, 8],
                "attentions": ["none"]},
               {"depths": [1], "widths": [64], "expansions": [1, 2], "kernels": [3], "groups": [8],
                "attentions": ["none"]},
               {"depths": [1], "widths": [128, 144], "expansions": [1, 2], "kernels": [3], "groups": [16],
                "attentions": ["none"]}],
    "head": {"widths": [16, 32], "groups": [4, 8], "kernels": [2, 4]},
}
K = 5


def _choices():
    return parse_choices(SPACES[SPACE], CHOICES, "test")


def _randomise(module: torch.nn.Module) -> None:
    """Weights and BN statistics of a trained-looking net: a fresh one's heatmaps are ~1e-10
    (the head starts at std 0.001) and a fresh fusion is the identity, both of which hide bugs."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 1.0 / max(1, p[0].numel()) ** 0.5)
            elif name.endswith("bn.weight") or ".bn" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.1)
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)


def _perturbed_supernet(seed: int = 0) -> TemporalSupernet:
    torch.manual_seed(seed)
    net = TemporalSupernet(SPACE, _choices(), K)
    _randomise(net)
    return net.eval()


# ----------------------------------------------------------------------------- fusion by hand

@pytest.mark.parametrize("op", ["add", "mul", "cat"])
def test_fusion_ops_match_hand_computed_tensors(op):
    torch.manual_seed(1)
    c, k = 3, 2
    fusion = TemporalFusion(k, c, op)
    with torch.no_grad():
        for p in fusion.parameters():
            p.normal_()
    feats = torch.randn(1, c, 2, 2)
    heat = torch.randn(1, k, 4, 4)
    # by hand: 1x1 conv = a matrix product per pixel; bilinear 4x4 -> 2x2 (align_corners=False) = 2x2 block means
    wp, bp = fusion.pre.weight[:, :, 0, 0].detach().numpy(), fusion.pre.bias.detach().numpy()
    h = heat[0].numpy()
    p = np.einsum("ck,kyx->cyx", wp, h) + bp[:, None, None]
    p = p.reshape(c, 2, 2, 2, 2).mean(axis=(2, 4))
    f = feats[0].numpy()
    fused = {"add": f + p, "mul": f * p, "cat": np.concatenate([f, p])}[op]
    wq, bq = fusion.post.weight[:, :, 0, 0].detach().numpy(), fusion.post.bias.detach().numpy()
    expected = np.einsum("co,oyx->cyx", wq, fused) + bq[:, None, None]
    got = fusion(feats, heat)[0].detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["add", "mul", "cat"])
def test_a_fresh_fusion_passes_the_features_through(op):
    torch.manual_seed(0)
    fusion = TemporalFusion(4, 6, op)
    feats, heat = torch.randn(2, 6, 5, 3), torch.rand(2, 4, 10, 6)
    assert torch.allclose(fusion(feats, heat), feats, atol=1e-6)
    with torch.no_grad():  # the heatmaps reach the output once the weights move
        fusion.pre.weight.normal_()
        fusion.post.weight.add_(0.1)
        assert (fusion(feats, heat) - fusion(feats, 2 * heat)).abs().max() > 1e-3


def test_fusion_is_rejected_for_an_unknown_op():
    with pytest.raises(PosenasError, match="fusion op 'sub'"):
        TemporalFusion(2, 3, "sub")


# ----------------------------------------------------------------------------- sub-nets

def test_a_supernet_frame_equals_its_derived_net_with_the_same_heatmaps():
    net = _perturbed_supernet()
    rng = random.Random(3)
    x = torch.randn(2, 3, 64, 48)
    heat = torch.rand(2, K, 16, 12)
    for trial in range(6):
        fusion = None if trial == 5 else Fusion(rng.choice([1, 2, 3, 4]), rng.choice(["add", "mul", "cat"]))
        frame = FrameArch(sample_arch(SPACE, _choices(), rng), fusion)
        derived = derive_frame(net, frame).eval()
        net.set_frame(frame)
        with torch.no_grad():
            assert torch.allclose(net(x, heat), derived(x, heat), atol=1e-5), frame.to_json()
            if fusion is not None:  # the heatmaps matter
                out = derived(x, heat)
                assert (out - derived(x, torch.zeros_like(heat))).abs().max() > 1e-4  # float noise: ~1e-7


def test_the_supernet_starts_as_the_key_net():
    """Initialised from the S-ViPNet (load_active_state) with identity fusions, the largest T-ViPNet
    of every fusion gives the key net's heatmaps: the supernet shares the key's CNN (section 3.4.2)."""
    torch.manual_seed(0)
    choices = _choices()
    key_arch = largest_arch(SPACE, choices)
    key = derive(key_arch, K).eval()
    _randomise(key)
    net = TemporalSupernet(SPACE, choices, K).eval()
    net.set_active(key_arch)
    load_active_state(net, key.state_dict())
    x, heat = torch.randn(1, 3, 64, 48), torch.rand(1, K, 16, 12)
    with torch.no_grad():
        for fusion in (Fusion(1, "add"), Fusion(3, "mul"), Fusion(4, "cat")):
            net.set_frame(FrameArch(key_arch, fusion))
            assert torch.allclose(net(x, heat), key(x), atol=1e-5)
    # without the weight transfer it would not be
    fresh = TemporalSupernet(SPACE, choices, K).eval()
    fresh.set_frame(FrameArch(key_arch, Fusion(1, "add")))
    with torch.no_grad():
        assert (fresh(x, heat) - key(x)).abs().max() > 1e-2 * key(x).abs().max()


def test_load_active_state_inverts_active_state_dict():
    net = _perturbed_supernet(1)
    rng = random.Random(5)
    frame = FrameArch(sample_arch(SPACE, _choices(), rng), Fusion(2, "cat"))
    net.set_frame(frame)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in net.active_state_dict().items()}
    load_active_state(net, state)
    for k, v in net.active_state_dict().items():
        assert torch.equal(v, state[k]), k
    with pytest.raises(PosenasError, match="not a tensor of the active sub-net"):
        load_active_state(net, {"nope.weight": torch.zeros(1)})


# ----------------------------------------------------------------------------- propagation

def _matrices(shifts, scale=1.0):
    """(N, 2, 3) image -> crop affines: a scale and a translation each."""
    return torch.tensor([[[scale, 0.0, -dx * scale], [0.0, scale, -dy * scale]] for dx, dy in shifts],
                        dtype=torch.float32)


def test_warp_moves_a_peak_with_the_crop():
    heat = torch.zeros(1, 1, 16, 12)
    heat[0, 0, 8, 6] = 1.0
    same = warp_heatmaps(heat, _matrices([(0, 0)]), _matrices([(0, 0)]), (4, 4))
    assert torch.allclose(same, heat, atol=1e-6)
    # the next crop starts 8 image pixels further right and 4 lower: the point sits 2 / 1 heatmap pixels back
    moved = warp_heatmaps(heat, _matrices([(0, 0)]), _matrices([(8, 4)]), (4, 4))
    assert moved[0, 0].argmax().item() == 7 * 12 + 4
    assert moved[0, 0, 7, 4].item() == pytest.approx(1.0, abs=1e-5)
    # a crop twice as zoomed-in: the point's heatmap coordinates double
    zoomed = warp_heatmaps(heat, _matrices([(0, 0)]), _matrices([(0, 0)], scale=2.0), (4, 4))
    assert zoomed[0, 0].argmax().item() == 15 * 12 + 11 or zoomed[0, 0].sum() == 0  # (16, 12) is off the map
    heat2 = torch.zeros(1, 1, 16, 12)
    heat2[0, 0, 4, 3] = 1.0
    z2 = warp_heatmaps(heat2, _matrices([(0, 0)]), _matrices([(0, 0)], scale=2.0), (4, 4))
    assert z2[0, 0].argmax().item() == 8 * 12 + 6
    # stride is (x, y): 8 image px right is 2 heatmap px at x-stride 4, 4 px down is 2 at y-stride 2
    tall = warp_heatmaps(heat, _matrices([(0, 0)]), _matrices([(8, 4)]), (4, 2))
    assert tall[0, 0].argmax().item() == 6 * 12 + 4


def test_propagation_over_t_frames_equals_t_single_steps():
    net = _perturbed_supernet(2)
    rng = random.Random(0)
    frames = [FrameArch(sample_arch(SPACE, _choices(), rng), Fusion(s, op))
              for s, op in ((1, "add"), (4, "cat"), (2, "mul"))]
    nets = [derive_frame(net, f).eval() for f in frames]
    images = torch.randn(2, 4, 3, 64, 48)
    matrices = torch.stack([_matrices([(t, 2 * t), (-t, t)]) for t in range(4)], 1)
    first = torch.rand(2, K, 16, 12)
    with torch.no_grad():
        outs = propagate(nets, images, matrices, first, (4, 4))
        h = first
        for t, n in enumerate(nets, 1):
            h = n(images[:, t], warp_heatmaps(h, matrices[:, t - 1], matrices[:, t], (4, 4)))
            assert torch.equal(outs[t - 1], h)
    assert len(outs) == 3


def test_average_gmacs_of_a_sequence_equals_the_hand_sum():
    rng = random.Random(1)
    key_arch = sample_arch(SPACE, _choices(), rng)
    frames = (FrameArch(sample_arch(SPACE, _choices(), rng), Fusion(2, "cat")),
              FrameArch(sample_arch(SPACE, _choices(), rng), Fusion(1, "mul")),
              FrameArch(sample_arch(SPACE, _choices(), rng), None))
    size = (64, 48)
    key = count_macs(derive(key_arch, K), size)[0]
    plain = [count_macs(derive(f.spatial, K), size)[0] for f in frames]
    # the fusion by hand: pre 1x1 (K -> C) at heatmap size 16x12, post 1x1 (C or 2C -> C) at the stage's size
    hw = {1: 16 * 12, 2: 8 * 6, 3: 4 * 3, 4: 2 * 2}  # stages 1-4 at strides 4, 8, 16, 32 of 64x48
    fusion = []
    for f in frames:
        if f.fusion is None:
            fusion.append(0)
            continue
        c = f.spatial.stages[f.fusion.stage - 1].width
        fusion.append(K * c * 16 * 12 + (2 if f.fusion.op == "cat" else 1) * c * c * hw[f.fusion.stage])
    per_frame = [frame_macs(f, K, size) for f in frames]
    assert per_frame == [p + q for p, q in zip(plain, fusion)]
    assert average_gmacs(key / 1e9, [m / 1e9 for m in per_frame]) == pytest.approx(
        (key + sum(plain) + sum(fusion)) / 4 / 1e9, rel=1e-12)


# ----------------------------------------------------------------------------- arch JSON

def _video_arch(rng=None) -> VideoArch:
    rng = rng or random.Random(0)
    return VideoArch(sample_arch(SPACE, _choices(), rng),
                     (FrameArch(sample_arch(SPACE, _choices(), rng), Fusion(3, "add")),
                      FrameArch(sample_arch(SPACE, _choices(), rng), None)))


def test_video_arch_json_round_trip_and_model():
    arch = _video_arch()
    data = json.loads(json.dumps(arch.to_json()))
    assert arch_from_json(data) == arch
    model = build_model(data, K)
    assert len(model.frames) == 2 and model.frames[1].fusion is None
    assert isinstance(task_for(arch), VideoTask) and task_for(arch).frames == 3


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["frames"][0]["fusion"].update(op="sub"), r"frames\[0\].fusion.op"),
    (lambda d: d["frames"][0]["fusion"].update(stage=5), r"frames\[0\].fusion.stage"),
    (lambda d: d.update(frames=[]), "at least one non-key frame"),
    (lambda d: d["frames"][1]["arch"].update(space="vipnas-mobilenetv3"), r"frames\[1\].arch"),
    (lambda d: d.update(extra=1), "extra"),
])
def test_bad_video_arch_json_names_the_field(edit, message):
    data = _video_arch().to_json()
    edit(data)
    with pytest.raises(PosenasError, match=message):
        arch_from_json(data)


# ----------------------------------------------------------------------------- evaluation by propagation

class _Recorder(torch.nn.Module):
    """A fake video model: heatmaps say which net made them (key: 1, frame net t: 1 + t) and what came in."""

    def __init__(self, frames: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.calls: list[tuple[str, int]] = []
        self.frames = frames

    def key(self, x):
        self.calls.append(("key", len(x)))
        return torch.ones(len(x), 17, 16, 12)

    def frame_nets(self):
        def net(t):
            def run(x, h):
                self.calls.append((f"frame{t}", len(x)))
                assert h.shape == (len(x), 17, 16, 12)
                return h + 1
            return run
        return [net(t) for t in range(1, self.frames + 1)]


@pytest.fixture(scope="module")
def posetrack_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("posetrack") / "data"
    ensure_synthetic(root, default_spec("posetrack", train=3, val=2, frames=9, width=96, height=72, max_people=2,
                                        scenes="proxy"), progress=False)
    return root


def test_propagation_evaluation_schedules_key_frames_every_t_plus_1(posetrack_root):
    val = load_dataset(posetrack_root, "val")
    chains = instance_chains(val)
    assert sum(len(c) for c in chains) == len(val.instances())
    assert max(len(c) for c in chains) == 9  # a person tracked over the whole video
    model = _Recorder(frames=2)
    codec = HeatmapCodec(input_size=(64, 48), heatmap_size=(16, 12))
    preds = predict_video(model, val, codec, torch.device("cpu"), progress=False, batch_size=1000)
    assert len(preds) == len(val.instances())
    per_round = [name for name, _ in model.calls]
    # rounds 0..8 of the chains: key, frame1, frame2, key, frame1, frame2, ...
    assert per_round[:9] == ["key", "frame1", "frame2"] * 3
    # the heatmaps of frame net t are the key's + t: propagation really carried them along (warped, not reset)
    scores = {(p.image_id, p.person_id): p.keypoints[:, 2].max() for p in preds}
    assert sorted(set(np.round(list(scores.values()), 3))) == [1.0, 2.0, 3.0]


def test_an_image_model_runs_every_frame_as_a_key_frame(posetrack_root):
    val = load_dataset(posetrack_root, "val")
    model = _Recorder(frames=2)
    model.frame_nets = None  # an image model has no frame nets
    preds = predict_video(model, val, HeatmapCodec(input_size=(64, 48), heatmap_size=(16, 12)),
                          torch.device("cpu"), progress=False, period=1)
    assert {n for n, _ in model.calls} == {"key"} and len(preds) == len(val.instances())


# ----------------------------------------------------------------------------- the search

def _search_config(tmp_path, root, **search):
    import yaml

    key = tmp_path / "key.json"
    key.write_text(json.dumps(largest_arch(SPACE, _choices()).to_json()))
    cfg = {"supernet": {"space": "vipnas-video", "spatial": SPACE, "frames": 2, "choices": CHOICES},
           "key": {"arch": str(key), "epochs": 1},
           "data": {"root": str(root), "input_size": [64, 64], "batch_size": 4, "workers": 0},
           "optim": {"lr": 0.001, "warmup_steps": 0},
           "train": {"epochs": 1, "max_steps": 3, "seed": 0, "checkpoint_every": 1, "log_every": 1},
           "search": {"candidates": 2, "max_gmacs": 0.01, "calib_batches": 1, "latency_runs": 1, **search}}
    path = tmp_path / "video.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_video_search_writes_its_files_resumes_and_loads(tmp_path, posetrack_root):
    from posenas.cli import main

    out = tmp_path / "run"
    assert main(["search", "--config", str(_search_config(tmp_path, posetrack_root)), "--out", str(out),
                 "--quiet"]) == 0
    for name in ("best_video_arch.json", "best_video.pt", "results.json", "pareto.png", "candidates.jsonl",
                 "key/results.json", "supernet/results.json"):
        assert (out / name).exists(), name
    lines = read_jsonl(out / "candidates.jsonl")
    assert [(r["variant"], r["index"]) for r in lines] == [(v, i) for v in ("t-vipnas", "no-fusion", "shared",
                                                                          "per-frame") for i in range(2)]
    for r in lines:
        assert r["gmacs"] <= 0.01 + 1e-12 or r["variant"] == "no-fusion"
        assert r["gmacs"] == pytest.approx((r["key_gmacs"] + sum(r["frame_gmacs"])) / 3)
        frames = r["arch"]["frames"]
        if r["variant"] in ("no-fusion", "per-frame"):
            assert all(f["fusion"] is None for f in frames)
        if r["variant"] in ("shared", "per-frame"):
            assert frames[0] == frames[1]
    twins = {r["index"]: r for r in lines if r["variant"] == "t-vipnas"}
    for r in (r for r in lines if r["variant"] == "no-fusion"):  # the same archs with the fusion removed
        assert [f["arch"] for f in r["arch"]["frames"]] == [f["arch"] for f in twins[r["index"]]["arch"]["frames"]]
    summary = read_json(out / "results.json")
    best = max((r for r in lines if r["variant"] == "t-vipnas"), key=lambda r: r["score"])
    assert summary["best"]["arch"] == best["arch"] == read_json(out / "best_video_arch.json")

    # resume: finished lines are served, not re-scored; the rest redone with the same draws and scores
    first = (out / "candidates.jsonl").read_text().splitlines()
    marked = json.loads(first[0])
    marked["seconds"] = -1.0
    (out / "candidates.jsonl").write_text("\n".join([json.dumps(marked)] + first[1:3]) + "\n")
    (out / "results.json").unlink()
    assert main(["search", "--resume", "--out", str(out), "--quiet"]) == 0
    again = read_jsonl(out / "candidates.jsonl")
    assert again[0]["seconds"] == -1.0
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert [strip(r) for r in again] == [strip(r) for r in lines]

    # the video checkpoint runs as a video model: the search's score is its PoseTrack mAP
    loaded = model_from_checkpoint(out / "best_video.pt")
    assert isinstance(loaded.arch, VideoArch)
    val = load_dataset(posetrack_root, "val")
    _, result, _, _ = VideoTask(3).evaluate(loaded.model, val, loaded.codec, torch.device("cpu"), progress=False)
    assert result["Total"] == pytest.approx(summary["best"]["score"], abs=1e-9)
    # and the supernet checkpoint loads as the plain model of its arch
    assert isinstance(model_from_checkpoint(out / "supernet" / "checkpoints" / "last.pt").arch, VideoArch)


def test_propagation_training_resumes_exactly(tmp_path, posetrack_root):
    from posenas.config import load_config
    from posenas.engine.train import Interrupted, train
    from posenas.search.vipnas_video import PropagationObjective, VideoSearchExperimentConfig

    cfg = load_config(VideoSearchExperimentConfig, _search_config(tmp_path, posetrack_root))
    key_arch = cfg.key_arch()
    torch.manual_seed(0)
    key_state = derive(key_arch, 17).state_dict()

    def objective():
        return PropagationObjective(cfg.supernet, key_arch, key_state, seed=0)

    train(cfg.training(), tmp_path / "whole", progress=False, objective=objective())
    with pytest.raises(Interrupted):
        train(cfg.training(), tmp_path / "cut", progress=False, objective=objective(), stop_at_step=2)
    train(cfg.training(), tmp_path / "cut", resume=True, progress=False, objective=objective())
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the key net is frozen: its weights are the ones it started with
    for k, v in key_state.items():
        assert torch.equal(a[f"key.{k}"], v), k


def test_propagation_step_mechanisms(tmp_path, posetrack_root):
    """Distillation adds a loss term; no-fusion draws remove fusions; only the supernet gets gradients."""
    from posenas.config import load_config
    from posenas.data.video import ClipDataset
    from posenas.engine.distributed import World
    from posenas.search.vipnas_video import PropagationObjective, VideoSearchExperimentConfig
    from dataclasses import replace

    cfg = load_config(VideoSearchExperimentConfig, _search_config(tmp_path, posetrack_root))
    key_arch = cfg.key_arch()
    codec = HeatmapCodec(input_size=(64, 64), heatmap_size=(16, 16))
    clips = ClipDataset(load_dataset(posetrack_root, "train"), codec, None, frames=3)
    batch = torch.utils.data.default_collate([clips[i] for i in range(4)])
    batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    world = World(rank=0, size=1, device=torch.device("cpu"))
    key = derive(key_arch, 17)
    _randomise(key)  # sub-nets of a fresh supernet all give ~0, and the distillation term with them
    losses = {}
    for distill in (True, False):
        torch.manual_seed(0)
        obj = PropagationObjective(replace(cfg.supernet, distill=distill), key_arch, key.state_dict(), 0)
        model = obj.build(17)
        obj.prepare(model, codec, cfg.training(), world, 1)
        losses[distill] = obj.step(model, batch, 0, world).item()
        assert all(p.grad is None for p in model.key.parameters())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.supernet.parameters())
    assert losses[True] > losses[False] * 1.01
    seqs_on = PropagationObjective(cfg.supernet, key_arch, {}, 0).sequences(model, 7)
    seqs_off = PropagationObjective(replace(cfg.supernet, no_fusion_draws=False), key_arch, {}, 0).sequences(model, 7)
    assert all(f.fusion is not None for s in seqs_off for f in s)
    many = [f for step in range(20) for s in PropagationObjective(cfg.supernet, key_arch, {}, 0).sequences(model, step)
            for f in s]
    share = sum(f.fusion is None for f in many) / len(many)
    assert 0.3 < share < 0.7
    assert len(seqs_on) == len(seqs_off) == 2 + cfg.supernet.random_subnets


def test_video_search_config_errors(tmp_path, posetrack_root, capsys):
    from posenas.cli import main

    bad = _search_config(tmp_path, posetrack_root, max_gmacs=0.0001)
    assert main(["search", "--config", str(bad), "--out", str(tmp_path / "r1"), "--quiet"]) != 0
    assert "max_gmacs: 0.0001 GMACs fits no sequence" in capsys.readouterr().err
    assert not (tmp_path / "r1").exists()  # found before any training
    key = tmp_path / "key.json"
    arch = largest_arch(SPACE, _choices()).to_json()
    arch["stem"]["width"] = 64  # outside the supernet's choices
    key.write_text(json.dumps(arch))
    path = tmp_path / "video.yaml"
    text = path.read_text()
    path.write_text(text.replace("max_gmacs: 0.0001", "max_gmacs: 0.01"))
    assert main(["search", "--config", str(path), "--out", str(tmp_path / "r2"), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "config.key.arch" in err and "not a sub-net" in err
    assert not (tmp_path / "r2").exists()


def test_a_nan_loss_stops_propagation_training_with_the_divergence_error(tmp_path, posetrack_root, monkeypatch):
    from posenas.config import load_config
    from posenas.engine.train import train
    from posenas.search import vipnas_video
    from posenas.search.vipnas_video import PropagationObjective, VideoSearchExperimentConfig

    cfg = load_config(VideoSearchExperimentConfig, _search_config(tmp_path, posetrack_root))
    key_arch = cfg.key_arch()
    real = vipnas_video.heatmap_loss
    monkeypatch.setattr(vipnas_video, "heatmap_loss", lambda *a: real(*a) * float("nan"))
    obj = PropagationObjective(cfg.supernet, key_arch, derive(key_arch, 17).state_dict(), seed=0)
    with pytest.raises(PosenasError, match="training diverged"):
        train(cfg.training(), tmp_path / "nan", progress=False, objective=obj)
    # no optimiser step ran on it: the supernet is the key net's, as built
    model = obj.build(17)
    assert not (tmp_path / "nan" / "checkpoints" / "last.pt").exists() or all(
        torch.equal(v, model.state_dict()[k]) for k, v in
        torch.load(tmp_path / "nan" / "checkpoints" / "last.pt", weights_only=True)["state_dict"].items())
