"""PNFS building blocks: cell DAG (Eq. 1), scale mixing (Eq. 2) with copied inputs, fabric
shape, body-part merging, the squash (Eq. 4, Appendix A), arch JSON and published sizes."""

from __future__ import annotations

import json

import pytest
import torch

from posenas.arch import arch_from_json, build_model
from posenas.cli import main
from posenas.cost import count_params
from posenas.errors import PosenasError
from posenas.keypoints import COCO17, MPII16
from posenas.spaces.cells import Cell, MixedOp, ScaleInput, edges
from posenas.spaces.pnfs import Fabric, PNFSModel, pnfs_arch, scale_channels, squash_length

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cell_edges_and_eq1_by_hand():
    assert edges(2) == [(0, 1), (0, 2), (1, 2)] and len(edges(4)) == 10
    torch.manual_seed(0)
    cell = Cell(4, 2, ["zero", "skip", "avg_pool_3x3"]).eval()
    x = torch.randn(1, 4, 6, 6)
    w = torch.softmax(torch.randn(3, 3), dim=-1)
    pool = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    mixed = lambda h, e: w[e, 1] * h + w[e, 2] * pool(h)  # noqa: E731  (zero adds nothing)
    h1 = mixed(x, 0)
    h2 = mixed(x, 1) + mixed(h1, 2)
    with torch.no_grad():
        assert torch.allclose(cell(x, w), cell.reduce(torch.cat([h1, h2], 1)), atol=1e-6)


def test_mixed_op_runs_only_active_ops():
    op = MixedOp(3, ["skip", "max_pool_3x3"])
    x = torch.randn(1, 3, 5, 5)
    w = torch.tensor([0.25, 0.75])
    assert torch.allclose(op(x, w, active=[0]), 0.25 * x)
    assert torch.allclose(op(x, w), 0.25 * x + 0.75 * torch.nn.functional.max_pool2d(x, 3, 1, 1))


def test_scale_input_copies_a_missing_neighbour():
    torch.manual_seed(0)
    mix = ScaleInput(8, has_finer=False, has_same=True, has_coarser=True).eval()
    same, coarser = torch.randn(1, 8, 4, 4), torch.randn(1, 16, 2, 2)
    beta = torch.tensor([0.2, 0.3, 0.5])
    with torch.no_grad():
        up = mix.up(torch.nn.functional.interpolate(coarser, size=(4, 4), mode="bilinear", align_corners=False))
        assert torch.allclose(mix(None, same, coarser, beta, (4, 4)), 0.5 * same + 0.5 * up, atol=1e-6)
    first = ScaleInput(8, has_finer=True, has_same=False, has_coarser=False)  # a first-layer cell fed from finer only
    assert first.source == (0, 0, 0)


def test_fabric_cells_reach_the_output_only():
    sub = Fabric(3, 4, 1, 2, ["skip"], inputs=[0, 1, 2, 3], outputs=[0])
    assert sub.positions == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0)]  # 6 cells, as the paper's sub-networks
    backbone = Fabric(3, 4, 1, 2, ["skip"], inputs=[0], outputs=[0, 1, 2, 3])
    assert [k for layer, k in backbone.positions if layer == 0] == [0, 1]  # layer 1 reaches one scale further
    assert [k for layer, k in backbone.positions if layer == 2] == [0, 1, 2, 3]
    with pytest.raises(PosenasError, match=r"cannot reach scales \[3\]"):
        Fabric(2, 4, 1, 2, ["skip"], inputs=[0], outputs=[0, 1, 2, 3])
    assert scale_channels(10, 0) == 40 and scale_channels(10, 3) == 320


def test_squash_length_and_appendix_a():
    v = torch.tensor([3.0, 4.0]).view(1, 1, 2, 1, 1)  # |v| = 5
    assert float(squash_length(v)) == pytest.approx(25 / 26)
    p = torch.tensor(0.64)  # a target p is reached at |v| = sqrt(1/(1-p) - 1)
    length = torch.sqrt(1 / (1 - p) - 1)
    assert float(squash_length(length.view(1, 1, 1, 1, 1))) == pytest.approx(0.64)


def test_parts_merge_by_mean_and_training_output_follows_output_joints():
    torch.manual_seed(0)
    arch = pnfs_arch(COCO17, 8, backbone="mobilenetv2", layers=2, hidden=1, channels=2, vector_dim=4)
    model = PNFSModel(arch, 17)
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        parts = model.part_maps(x)
        joint = model(x)
    elbow = COCO17.index("left_elbow")  # in the left upper arm and left lower arm parts
    owners = [(i, p.index(elbow)) for i, p in enumerate(arch.parts) if elbow in p]
    assert len(owners) == 2
    assert torch.allclose(joint[:, elbow], sum(parts[i][:, j] for i, j in owners) / 2)
    model.train()
    out = model(x)
    assert out.shape[1] == len(model.output_joints) == sum(len(p) for p in arch.parts)


def test_arch_json_round_trip_errors_and_profile(tmp_path, capsys):
    arch = pnfs_arch(MPII16, 5, backbone="fabric", backbone_layers=3, layers=2, hidden=2, channels=4, vector_dim=1)
    assert arch_from_json(json.loads(json.dumps(arch.to_json()))) == arch
    assert build_model(arch, 16)(torch.randn(1, 3, 64, 64)).shape == (1, 16, 16, 16)
    bad = {**arch.to_json(), "backbone_layers": 2}
    with pytest.raises(PosenasError, match=r"arch\.backbone_layers: a fabric backbone needs at least scales - 1 = 3"):
        arch_from_json(bad)
    with pytest.raises(PosenasError, match=r"arch\.ops\[1\]: 'conv_5x5' not allowed"):
        arch_from_json({**arch.to_json(), "ops": ["skip", "conv_5x5"]})
    with pytest.raises(PosenasError, match=r"arch\.parts: joints \[3\] belong to no part"):
        arch_from_json({**arch.to_json(), "parts": [[0, 1, 2], [4, 5]]})
    with pytest.raises(PosenasError, match="the parts cover joints 0-15, but the model predicts 17 joints"):
        build_model(arch, 17)
    path = tmp_path / "pnfs.json"
    path.write_text(json.dumps(arch.to_json()))
    assert main(["profile", "--arch", str(path), "--joints", "16", "--input", "64x64", "--no-latency", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == count_params(build_model(arch, 16))


def test_table_vi_model_size():
    """Table VI: MobileNetV2 backbone, P=3, H=1, C=10, six cells per sub-network, d=8: 3.3 M
    params (MPII, 16 joints). Ours: 3.14 M (our separable conv is a single ReLU-dw-pw-BN stack)."""
    arch = pnfs_arch(MPII16, 3, backbone="mobilenetv2", layers=3, hidden=1, channels=10, vector_dim=8)
    params = count_params(build_model(arch, 16)) / 1e6
    assert params == pytest.approx(3.3, rel=0.06)


def test_training_loss_supervises_each_part_on_its_own_joints():
    from posenas.engine.task import heatmap_loss, model_loss

    torch.manual_seed(0)
    arch = pnfs_arch(COCO17, 5, backbone="mobilenetv2", layers=1, hidden=1, channels=2, vector_dim=2)
    model = PNFSModel(arch, 17).train()
    order = model.output_joints.tolist()
    assert order != sorted(order)  # P=5 interleaves the arms: a plain loss would mix joints up
    target, weight = torch.rand(2, 17, 16, 16), torch.rand(2, 17)
    pred = model(torch.randn(2, 3, 64, 64))
    expected = torch.stack([heatmap_loss(pred[:, [c]], target[:, [j]], weight[:, [j]]) for c, j in enumerate(order)])
    assert torch.allclose(model_loss(model, pred, target, weight), expected.mean(), atol=1e-7)


def test_export_reproduces_the_model_and_pruning_drops_small_terms():
    from posenas.cost import count_macs
    from posenas.spaces.pnfs import export_arch, fabrics, prune_arch, searched_state

    torch.manual_seed(0)
    arch = pnfs_arch(COCO17, 3, backbone="fabric", backbone_layers=3, layers=2, hidden=2, channels=2, vector_dim=4,
                     ops=["zero", "skip", "sep_conv_3x3", "avg_pool_3x3"], backbone_ops=["skip", "max_pool_3x3"])
    model = PNFSModel(arch, 17)
    with torch.no_grad():
        for f in fabrics(model):
            f.alpha.normal_(0, 2)
            f.beta.normal_(0, 2)
        for head in model.heads:  # the heads' init (std 0.01) gives maps of ~1e-8, below the tolerance
            head.weight.normal_(0, 10.0)
    model.eval()
    exported = export_arch(model)
    again = arch_from_json(json.loads(json.dumps(exported.to_json())))  # through JSON text
    assert again == exported
    dense = build_model(again, 17).eval()
    dense.load_state_dict(searched_state(model, dense))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y = model(x)
        assert y.abs().max() > 0.1  # a signal far above the tolerance
        assert (y - dense(x)).abs().max() <= 1e-6
    pruned_arch = prune_arch(exported, 0.3)
    pruned = build_model(pruned_arch, 17).eval()
    pruned.load_state_dict(searched_state(model, pruned))
    assert count_params(pruned) < count_params(dense)
    assert count_macs(pruned, (64, 64))[0] < count_macs(dense, (64, 64))[0]
    alpha = pruned_arch.weights["subnets"][0]["alpha"]
    assert all(v == 0 or v >= 0.3 or v == max(row) for row in alpha for v in row)
    with pytest.raises(PosenasError, match=r"arch\.weights\.subnets\[1\]\.beta\[0\]: all weights are 0"):
        bad = exported.to_json()
        bad["weights"]["subnets"][1]["beta"][0] = [0, 0, 0]
        arch_from_json(bad)


@pytest.mark.parametrize("backbone", ["mobilenetv2", "resnet50"])
def test_fewer_scales_build_no_unused_backbone_layers(backbone):
    arch = pnfs_arch(COCO17, 1, backbone=backbone, scales=2, layers=1, hidden=1, channels=2, vector_dim=1)
    model = PNFSModel(arch, 17).train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused[:3]
