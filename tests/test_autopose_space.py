"""AutoPose's search space: Eq. 1-3 by hand on small tensors, the Gumbel-softmax relaxation,
the derived network against the supernet with one-hot alpha and fixed branches, arch JSON."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

from posenas.arch import arch_from_json, build_model
from posenas.errors import PosenasError
from posenas.spaces.autopose import (OPS, AggregationCell, ConcatAggregation, AutoPoseArch, AutoPoseNet, AutoPoseSpace,
                                     AutoPoseSupernet, MultiScaleModule, aggregation_edges, derived_state_dict)

pytestmark = pytest.mark.usefixtures("one_thread")

#: Two branches, one stage of two modules, small cells: fast, and every mechanism still there.
SMALL = AutoPoseSpace(channels=(4, 8), stem_channels=8, stages=1, modules_per_stage=2, individual_nodes=2,
                      aggregation_nodes=2)


def small_arch(branches=((1, 0), (1, 1)), **net) -> AutoPoseArch:
    space = AutoPoseSpace(**{**SMALL.__dict__, **net})  # under aggregation "concat" no aggregation ops
    return AutoPoseArch(space, tuple(branches), ("conv_3x3", "skip", "max_pool_3x3")[:len(space.individual_edges())],
                        tuple(OPS[e % len(OPS)] for e in range(len(space.aggregation_edges()))))


def test_aggregation_edges_are_node_major_inputs_first():
    assert aggregation_edges(2, 3) == [("input", 0, 1), ("input", 1, 1), ("input", 2, 1),
                                       ("input", 0, 2), ("input", 1, 2), ("input", 2, 2), ("node", 1, 2)]
    assert len(AutoPoseSpace().aggregation_edges()) == 9  # the paper's K_M = 2, B = 4
    assert len(AutoPoseSpace().individual_edges()) == 10  # K_I = 4: edges from the input and every earlier node


def test_eq3_aggregation_cell_by_hand():
    torch.manual_seed(0)
    widths = (4, 8)
    cell = AggregationCell(widths, 0, 2, ["skip", "avg_pool_3x3"]).eval()
    fine, coarse = torch.randn(1, 4, 8, 8), torch.randn(1, 8, 4, 4)
    w = torch.softmax(torch.randn(5, 2), dim=-1)  # edges: in0->1, in1->1, in0->2, in1->2, node1->2
    pool = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    mixed = lambda h, e: w[e, 0] * h + w[e, 1] * pool(h)  # noqa: E731
    with torch.no_grad():
        up = F.interpolate(cell.resample[1].body(coarse), size=(8, 8), mode="nearest")  # 1x1 conv-BN, then nearest
        n1 = mixed(fine, 0) + mixed(up, 1)
        n2 = mixed(fine, 2) + mixed(up, 3) + mixed(n1, 4)
        assert torch.allclose(cell([fine, coarse], w), cell.reduce(torch.cat([n1, n2], 1)), atol=1e-6)
        # at the coarse branch the fine input comes down by a stride-2 conv, the coarse one is itself
        low = AggregationCell(widths, 1, 1, ["skip"]).eval()
        ones = torch.ones(2, 1)
        expected = low.reduce(low.resample[0].body(fine) + coarse)
        assert torch.allclose(low([fine, coarse], ones), expected, atol=1e-6)


def test_eq1_inactive_branches_pass_their_input_and_active_ones_see_the_others_cells():
    torch.manual_seed(0)
    module = MultiScaleModule(SMALL, range(2)).eval()
    xs = [torch.randn(1, 4, 8, 8), torch.randn(1, 8, 4, 4)]
    w_i = torch.softmax(torch.randn(len(SMALL.individual_edges()), len(OPS)), -1)
    w_a = torch.softmax(torch.randn(len(SMALL.aggregation_edges()), len(OPS)), -1)
    with torch.no_grad():
        assert all(a is b for a, b in zip(module(xs, [], w_i, w_a), xs))  # no branch on: the module is skipped
        out = module(xs, [0], w_i, w_a)
        assert out[1] is xs[1]  # branch 1 inactive: a skip connection
        h0 = module.individual2["0"](module.individual1["0"](xs[0], w_i), w_i)
        assert torch.allclose(out[0], module.aggregation["0"]([h0, xs[1]], w_a), atol=1e-6)  # its C_M got x_1 itself
        both = module(xs, [0, 1], w_i, w_a)
        h1 = module.individual2["1"](module.individual1["1"](xs[1], w_i), w_i)
        assert torch.allclose(both[0], module.aggregation["0"]([h0, h1], w_a), atol=1e-6)
        assert torch.allclose(both[1], module.aggregation["1"]([h0, h1], w_a), atol=1e-6)


def test_gumbel_softmax_in_training_softmax_over_tau_in_eval():
    torch.manual_seed(0)
    sup = AutoPoseSupernet(SMALL, 3, tau=0.5)
    with torch.no_grad():
        sup.alpha_individual.copy_(torch.randn_like(sup.alpha_individual))
    sup.train()
    a, _ = sup.op_weights()
    b, _ = sup.op_weights()
    assert torch.allclose(a.sum(-1), torch.ones(len(a))) and not torch.allclose(a, b)  # a fresh draw each forward
    sup.eval()
    c, _ = sup.op_weights()
    assert torch.allclose(c, torch.softmax(sup.alpha_individual / 0.5, -1))
    sup.tau = 5.0  # a hotter temperature flattens the weights
    assert sup.op_weights()[0].max() < c.max()


@pytest.mark.parametrize("aggregation", ["cell", "concat"])
def test_derived_net_equals_the_supernet_with_one_hot_alpha_and_fixed_branches(aggregation):
    torch.manual_seed(0)
    arch = small_arch(branches=((1, 0), (0, 1)), aggregation=aggregation)
    sup = AutoPoseSupernet(arch.net, 5).eval()
    with torch.no_grad():  # alpha one-hot on the arch's ops: softmax(alpha / tau) is exactly one-hot
        for alpha, ops in ((sup.alpha_individual, arch.individual_cell), (sup.alpha_aggregation, arch.aggregation_cell)):
            alpha.zero_()
            for e, op in enumerate(ops):
                alpha[e, OPS.index(op)] = 1e4
        for p in sup.parameters():  # BN statistics away from their init, so inheriting them is checked
            p.add_(0.01 * torch.randn_like(p))
        for name, buf in sup.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    sup.set_branches(arch.branches)
    assert sup.derive() == arch
    net = AutoPoseNet(arch, 5)
    net.load_state_dict(derived_state_dict(sup, arch, 5))
    net.eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        assert (sup(x) - net(x)).abs().max() < 1e-5
    assert not any("alpha" in k for k in net.state_dict())  # no NAS machinery in the derived net
    assert len(net.state_dict()) < len(sup.state_dict())  # inactive branches' cells and unchosen ops not built
    wider = AutoPoseArch(AutoPoseSpace(**{**arch.net.__dict__, "channels": (4, 16)}), arch.branches,
                         arch.individual_cell, arch.aggregation_cell)
    with pytest.raises(PosenasError, match="not a sub-net of this supernet"):
        derived_state_dict(sup, wider, 5)


def test_the_concat_ablation_resamples_concatenates_and_reduces():
    torch.manual_seed(0)
    cell = ConcatAggregation((4, 8), 1).eval()
    fine, coarse = torch.randn(1, 4, 8, 8), torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        expected = cell.reduce(torch.cat([cell.resample[0].body(fine), coarse], 1))
        assert torch.allclose(cell([fine, coarse]), expected, atol=1e-6)
    arch = small_arch(aggregation="concat")
    assert arch.aggregation_cell == () and arch.to_json()["aggregation_cell"] == {"inputs": [], "nodes": []}
    assert arch_from_json(json.loads(json.dumps(arch.to_json()))) == arch
    sup = AutoPoseSupernet(arch.net, 3)
    assert sup.arch_parameters() == [sup.alpha_individual]  # nothing searched in the aggregation
    data = arch.to_json()
    data["aggregation_cell"]["inputs"] = [["skip", "skip"]]
    with pytest.raises(PosenasError, match=r"arch.aggregation_cell.inputs: expected 0 entries, got 1"):
        arch_from_json(data)


def test_shapes_head_at_quarter_resolution_and_width_mult_doubles_channels():
    arch = small_arch()
    doubled = AutoPoseArch(AutoPoseSpace(**{**SMALL.__dict__, "width_mult": 2}), arch.branches, arch.individual_cell,
                           arch.aggregation_cell)
    assert doubled.net.widths == (8, 16)
    for a in (arch, doubled):
        y = build_model(a, 17)(torch.randn(1, 3, 64, 48))
        assert y.shape == (1, 17, 16, 12)
    base, wide = (sum(p.numel() for p in build_model(a, 17).parameters()) for a in (arch, doubled))
    assert 3 < wide / base < 4.2  # convs grow ~4x with doubled widths


def test_arch_json_round_trip_and_paper_defaults():
    arch = small_arch()
    data = json.loads(json.dumps(arch.to_json()))
    assert arch_from_json(data) == arch and AutoPoseArch.from_json(data).to_json() == data
    assert data["aggregation_cell"] == {"inputs": [list(arch.aggregation_cell[0:2]), list(arch.aggregation_cell[2:4])],
                                        "nodes": [[], [arch.aggregation_cell[4]]]}
    paper = AutoPoseSpace()
    assert (paper.channels, paper.stages * paper.modules_per_stage, paper.individual_nodes,
            paper.aggregation_nodes, paper.ops) == ((16, 32, 64, 128), 6, 4, 2, OPS)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(branches=[[1, 0]]), r"arch.branches: expected 2 entries, got 1"),
    (lambda d: d["branches"][1].__setitem__(0, 2), r"arch.branches\[1\]\[0\]: 2 not allowed; allowed: 0, 1"),
    (lambda d: d["branches"][0].__setitem__(1, True), r"arch.branches\[0\]\[1\]: True not allowed"),
    (lambda d: d["individual_cell"].__setitem__(0, "sep_conv_3x3"),
     r"arch.individual_cell\[0\]: 'sep_conv_3x3' not allowed; allowed: 'conv_1x1', 'conv_3x3'"),
    (lambda d: d["aggregation_cell"]["nodes"].__setitem__(1, []), r"arch.aggregation_cell.nodes\[1\]: expected 1 entries"),
    (lambda d: d.update(channels=[4, 8, 16, 32, 64]), r"arch.channels: expected 1 to 4 branches"),
    (lambda d: d.update(width_mult=0), r"arch.width_mult: expected an integer in \[1, 8\], got 0"),
    (lambda d: d.update(ops=["conv_3x3", "conv_3x3"]), r"arch.ops: expected distinct operation names"),
    (lambda d: d.update(depth=3), r"arch: unknown key 'depth'"),
])
def test_invalid_arch_values_name_the_field_and_the_allowed_values(change, message):
    data = json.loads(json.dumps(small_arch().to_json()))
    change(data)
    with pytest.raises(PosenasError, match=message):
        arch_from_json(data)
