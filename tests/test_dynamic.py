"""3M-Pose dynamic inference (engine/dynamic.py): confidence, the multi-exit wrapper, its cost,
evaluation, the CLI's --dynamic and the per-exit ONNX export."""

import json
import math

import numpy as np
import pytest
import scipy.stats
import torch

from posenas.checkpoint import save_checkpoint
from posenas.cli import main
from posenas.codecs import AssociativeEmbeddingCodec
from posenas.cost import count_macs
from posenas.engine import dynamic
from posenas.engine.dynamic import (DynamicExits, average_gmacs, exit_confidence, exit_macs, moments,
                                    skew_kurtosis)
from posenas.errors import PosenasError
from posenas.export import exit_path
from posenas.runtime import load_model
from posenas.spaces.threem import ExitModel, ThreeMSpace, ThreeMSupernet, build_threem

from conftest import make_dataset
from test_api import tiny_checkpoint

TINY = {"channels": 4, "rows": 2, "layers": 3, "exits": [1, 2], "stem_channels": 8}


def tiny_net(space: dict = TINY, seed: int = 0):
    torch.manual_seed(seed)
    arch = ThreeMSupernet(ThreeMSpace.from_json(space, "t"), 17).derive()
    return arch, build_threem(arch, 17).eval()


@pytest.fixture(scope="module")
def net(one_thread):
    return tiny_net()[1]


@pytest.fixture(scope="module")
def x():
    return torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def multi_exit_checkpoint(path, space: dict = TINY):
    arch, model = tiny_net(space)
    codec = AssociativeEmbeddingCodec(input_size=(64, 64), heatmap_sizes=((16, 16),))
    save_checkpoint(path, {"arch": arch.to_json(), "schema": "coco17", "codec": codec.to_dict(),
                           "state_dict": model.state_dict()})
    return path, model


# ---------------------------------------------------------------- confidence
def test_skew_and_kurtosis_are_the_population_moments():
    v = torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0, 0.5, 0.25, 7.0])
    m2, m3 = moments(v, (2, 3))
    assert float(m2) == pytest.approx(float(((v - v.mean()) ** 2).mean()))
    skew, kurt = skew_kurtosis(v.reshape(1, -1))  # one 1 x n map
    assert float(skew) == pytest.approx(scipy.stats.skew(v.numpy()), rel=1e-6)
    assert float(kurt) == pytest.approx(scipy.stats.kurtosis(v.numpy(), fisher=False), rel=1e-6)
    maps = torch.rand(2, 3, 5, 6, generator=torch.Generator().manual_seed(0)) ** 3
    skew, kurt = skew_kurtosis(maps)
    assert skew.shape == kurt.shape == (2, 3)
    flat = maps.flatten(2).numpy()
    np.testing.assert_allclose(skew.numpy(), scipy.stats.skew(flat, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(kurt.numpy(), scipy.stats.kurtosis(flat, axis=-1, fisher=False), rtol=1e-5)
    # scale-invariant down to an untrained net's tiny maps (m2^2 would underflow)
    np.testing.assert_allclose(skew_kurtosis(maps.double() * 1e-90)[1].numpy(), kurt.numpy(), rtol=1e-5)
    constant = torch.full((2, 3, 4, 4), 0.1)
    constant[1, 2] = 0.0
    for value in skew_kurtosis(constant):
        assert torch.equal(value, torch.zeros(2, 3))


def _gaussians(k: int = 17, size: int = 16, sigma: float = 2.0) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.randint(3, size - 3, (k, 2), generator=torch.Generator().manual_seed(0))
    return torch.stack([torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2)) for cy, cx in centres])


def test_a_peaked_gaussian_is_more_confident_than_flat_noise():
    noise = torch.rand(1, 17, 16, 16, generator=torch.Generator().manual_seed(0))
    heat = torch.cat([_gaussians()[None], noise])
    conf, detected = exit_confidence(heat, (1, 1, 1), 0.1)
    assert detected.tolist() == [17, 17]
    assert conf[0] > conf[1] > 0
    # Eq. 3.4 lies in (-0.5, 0.5): the thesis' thresholds (1 and 0.6) are never met
    for coeffs in ((1, 1, 1), (2, 1, 1)):
        assert exit_confidence(heat, coeffs, 0.1)[0].max() < 0.5
    # only detected joints count: half the Gaussians below the threshold -> N = 8, the same mean
    weak = heat.clone()
    weak[0, 8:] *= 0.05
    conf_weak, detected = exit_confidence(weak, (1, 1, 1), 0.1)
    assert detected.tolist() == [8, 17]
    sk, ku = skew_kurtosis(heat[0, :8])
    assert float(conf_weak[0]) == pytest.approx(float((torch.sigmoid((sk + ku) / 2) - 0.5).mean()), rel=1e-5)
    # nothing detected: N = 0, conf 0 (no NaN)
    conf, detected = exit_confidence(heat, (1, 1, 1), 2.0)
    assert detected.tolist() == [0, 0] and conf.tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- the wrapper
def test_permissive_thresholds_exit_first_and_infinite_ones_are_static_inference(net, x):
    wrapper = DynamicExits(net, [-1.0, -1.0], detection_threshold=-math.inf)  # every joint detected
    with torch.no_grad():
        out = wrapper(x)
        assert torch.equal(out, ExitModel(net, 0).eval()(x))
        assert wrapper.counts == [4, 0, 0] and wrapper.exits.tolist() == [0, 0, 0, 0]
        never = DynamicExits(net, [math.inf, math.inf])
        assert torch.equal(never(x), net(x))  # static inference, exactly
        assert never.counts == [0, 0, 4] and never.tested == [False, False]
        never(x[:2])
        assert never.counts == [0, 0, 6]  # counts accumulate until reset()
        never.reset()
        assert never.counts == [0, 0, 0]
    assert not wrapper.training and not net.training


def test_a_mixed_batch_stitches_each_image_s_exit_in_batch_order(net, x, monkeypatch):
    """Image 2 leaves at exit 0, image 0 at exit 1 (after the state was narrowed), 1 and 3 at the last."""
    leave_at = {0: [2], 1: [0]}
    calls = []

    def fake(heatmaps, coeffs, threshold):
        e = len(calls)
        calls.append(len(heatmaps))
        remaining = [i for i in range(4) if not any(i in leave_at[j] for j in range(e))]
        conf = torch.tensor([1.0 if i in leave_at[e] else 0.0 for i in remaining])
        return conf, torch.ones(len(heatmaps), dtype=torch.long)

    monkeypatch.setattr(dynamic, "exit_confidence", fake)
    wrapper = DynamicExits(net, [0.5, 0.5])
    with torch.no_grad():
        out = wrapper(x)
        exits = [ExitModel(net, e).eval()(x) for e in range(3)]
    assert calls == [4, 3]
    assert wrapper.exits.tolist() == [1, 2, 0, 2] and wrapper.counts == [1, 1, 2]
    for i, e in enumerate([1, 2, 0, 2]):
        torch.testing.assert_close(out[i], exits[e][i], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(exits[0], exits[2])  # the exits do differ


def test_no_detected_keypoint_stops_at_once_unless_disabled(net, x):
    with torch.no_grad():
        stop = DynamicExits(net, [-1.0, -1.0], detection_threshold=1e9)  # above every heat: N = 0
        assert torch.equal(stop(x), ExitModel(net, 0).eval()(x)) and stop.counts == [4, 0, 0]
        go_on = DynamicExits(net, [-1.0, -1.0], detection_threshold=1e9, stop_on_empty=False)
        assert torch.equal(go_on(x), net(x)) and go_on.counts == [0, 0, 4]
        # inf: not even the N = 0 rule stops there
        skip_first = DynamicExits(net, [math.inf, -1.0], detection_threshold=1e9)
        skip_first(x)
        assert skip_first.counts == [0, 4, 0]
        # the thesis' defaults: thresholds 1 and 0.6 are never met; N = 0 decides
        defaults = DynamicExits(net)
        assert defaults.thresholds == [1.0, 0.6] and defaults.coeffs == [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0)]
    with pytest.raises(PosenasError, match=r"thresholds: expected one per early exit \(2\), got 1"):
        DynamicExits(net, [0.5])
    with pytest.raises(PosenasError, match="has no early exits"):
        DynamicExits(torch.nn.Conv2d(3, 3, 1))


def test_exit_macs_increase_and_average_gmacs(net):
    alone = exit_macs(net, (64, 64))
    assert alone[0] < alone[1] < alone[2] == count_macs(net, (64, 64))[0]
    on_the_way = exit_macs(net, (64, 64), [True, True])  # dynamic inference also runs the earlier heads
    assert on_the_way[0] == alone[0] and on_the_way[1] > alone[1] and on_the_way[2] > alone[2]
    assert exit_macs(net, (64, 64), [False, False]) == alone
    assert not net.training  # measuring left the net in eval mode
    assert average_gmacs([2, 0, 1], [1e9, 2e9, 4e9]) == pytest.approx(2.0)
    assert average_gmacs([0, 3, 1], [1e9, 2e9, 6e9]) == pytest.approx(3.0)
    with pytest.raises(PosenasError, match="no image"):
        average_gmacs([0, 0, 0], alone)


# ---------------------------------------------------------------- evaluation, CLI, export
def test_eval_and_infer_dynamic_report_every_exit(tmp_path, capsys, one_thread):
    root = tmp_path / "data"
    make_dataset("coco", root, images=3, people=2)
    ckpt, model = multi_exit_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "ev"
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(root), "--dynamic", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split()[:5] == ["layer", "GMACs", "AP", "AP(M)", "AP(L)"]
    assert [line.split()[0] for line in printed.splitlines()[1:5]] == ["1", "2", "3", "dynamic"]
    report = json.loads((out / "dynamic.json").read_text())
    alone = exit_macs(model, (64, 64))
    assert [r["gmacs"] for r in report["exits"]] == pytest.approx([m / 1e9 for m in alone])
    # an untrained net detects nothing (heads ~1e-3 < the codec's 0.1): the N = 0 rule stops every image at exit 0
    assert [r["count"] for r in report["exits"]] == [3, 0, 0] and report["views"] == 3
    assert report["dynamic"]["gmacs"] == pytest.approx(alone[0] / 1e9)
    assert report["static"]["layer"] == 3 and report["static"]["gmacs"] == pytest.approx(alone[2] / 1e9)
    assert all(isinstance(r["AP"], float) for r in report["exits"]) and (out / "dynamic_predictions.json").is_file()

    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(root), "--dynamic", "--thresholds", "inf", "inf",
                 "--flip-test", "--json", "--out", str(tmp_path / "ev2")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["count"] for r in report["exits"]] == [0, 0, 6]  # the mirrored copies are views of their own
    assert report["thresholds"] == ["inf", "inf"] and report["dynamic"]["AP"] == report["static"]["AP"]

    image = next((root / "images" / "val").glob("*.jpg"))
    assert main(["infer", "--checkpoint", str(ckpt), str(image), "--out", str(tmp_path / "inf"), "--dynamic"]) == 0
    assert "layer 1: 2, layer 2: 0, layer 3: 0" in capsys.readouterr().out
    assert json.loads((tmp_path / "inf" / "predictions.json").read_text())["dynamic"]["counts"] == [2, 0, 0]


def test_dynamic_on_a_model_without_exits_is_a_one_line_error(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "plain.pt")
    root = tmp_path / "data"
    make_dataset("coco", root, images=1, people=1)
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(root), "--dynamic"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no early exits" in err
    assert main(["infer", "--checkpoint", str(ckpt), str(root / "images" / "val"), "--out", str(tmp_path / "i"),
                 "--dynamic"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no early exits" in err
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(root), "--thresholds", "0.5"]) == 2
    assert "add --dynamic" in capsys.readouterr().err


def test_export_of_a_multi_exit_model_writes_each_early_exit(tmp_path, capsys, one_thread):
    pytest.importorskip("onnxruntime")
    ckpt, model = multi_exit_checkpoint(tmp_path / "m.pt", {**TINY, "layers": 2, "exits": [1]})
    assert main(["export", str(ckpt), "--onnx", str(tmp_path / "m.onnx")]) == 0
    printed = capsys.readouterr().out
    assert "m.exit1.onnx (early exit 1, layer 1" in printed
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["m.exit1.onnx", "m.onnx"]
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        first, last = ExitModel(model, 0).eval()(x), model(x)
    for name, expected in (("m.exit1.onnx", first), ("m.onnx", last)):
        loaded = load_model(tmp_path / name, "onnx")
        assert loaded.model.metadata.get("exit") == ("0" if "exit1" in name else None)
        got = loaded.model(x)
        assert float((got - expected).abs().max()) <= 1e-4 * float(expected.abs().max())
    assert not torch.allclose(first, last)
    assert exit_path(tmp_path / "net", 2) == tmp_path / "net.exit2.onnx"
