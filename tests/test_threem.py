"""3M-Pose: the space (ops, cell, fabric, arch JSON), Dyn-EGS, the FLOP loss, the search objective."""

from __future__ import annotations

import json

import pytest
import torch

from posenas.arch import arch_from_json, build_model
from posenas.cost import count_macs
from posenas.errors import PosenasError
from posenas.models.exits import ExitOutputs
from posenas.spaces.cells import CELL_OPS, Cell
from posenas.spaces.threem import (OPS, CellArch, ExitModel, ThreeMArch, ThreeMSpace, ThreeMSupernet, build_threem,
                                   cost_table, derived_state_dict, dyn_egs, needed_cells, positions)
from posenas.search.threem import ThreeMSearchConfig, ThreeMSupernetConfig

SMALL = {"channels": 4, "rows": 3, "layers": 4, "exits": [2], "stem_channels": 8}


def small_space(**fields) -> ThreeMSpace:
    return ThreeMSpace.from_json({**SMALL, **fields}, "test")


@pytest.mark.parametrize("name", OPS)
def test_every_op_keeps_shape(name):
    x = torch.randn(2, 8, 9, 7)  # odd sizes: the zoomed conv must come back to them
    assert CELL_OPS[name](8)(x).shape == x.shape


def test_cell_by_hand():
    """Table A.1's cell: h1 = O0(I), h2 = O1(I) + O2(h1); output 1x1 conv of [h1, h2]. With skip
    and avg pool chosen, compute it by hand."""
    torch.manual_seed(0)
    cell = Cell(3, 2, OPS, keep=[[OPS.index("skip")], [OPS.index("skip"), OPS.index("avg_pool_3x3")],
                                 [OPS.index("skip")]]).eval()
    x = torch.randn(1, 3, 5, 5)
    h1 = x
    h2 = (x + torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)) + h1
    want = cell.reduce(torch.cat([h1, h2], 1))
    assert torch.allclose(cell(x, None), want, atol=1e-6)


def test_fabric_positions_match_the_thesis():
    """4 rows x 10 layers from the stem's 1/4 row: 2 + 3 + 4 x 8 = 37 cells (Table A.1's 0-36)."""
    assert len(positions(ThreeMSpace())) == 37
    # without Fuse-Split the last exit reads the 1/4 row only: cells that cannot reach it go
    assert len(positions(ThreeMSpace.from_json({"fuse_split": False, "exits": []}, "t"))) < 37


def test_arch_json_round_trip_and_build():
    torch.manual_seed(0)
    arch = ThreeMSupernet(small_space(), 17).derive()
    data = json.loads(json.dumps(arch.to_json()))
    again = arch_from_json(data)
    assert again == arch and again.to_json() == data
    model = build_model(again, 17).eval()
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 34, 16, 16)


@pytest.mark.parametrize("change, field", [
    (lambda d: d["cells"][0].update(inputs=["coarser"]), "cells[0].inputs[0]"),
    (lambda d: d["cells"][1]["ops"][0].append("conv_7x7"), "cells[1].ops[0][1]"),
    (lambda d: d["cells"][1]["ops"].pop(), "cells[1].ops"),
    (lambda d: d["cells"][1].update(ops=[[], ["skip"], ["skip"]]), "cells[1].ops[0]"),
    (lambda d: d.update(exits=[4]), "exits"),
    (lambda d: d.update(rows=5), "rows"),
    (lambda d: d.update(colour=1), "unknown key"),
])
def test_bad_arch_json_names_the_field(change, field):
    data = ThreeMSupernet(small_space(), 17).derive(prune=False).to_json()
    change(data)
    with pytest.raises(PosenasError, match=field.replace("[", r"\[").replace("]", r"\]")):
        ThreeMArch.from_json(data)


def test_a_pruned_cell_that_an_exit_reads_is_an_error():
    data = ThreeMSupernet(small_space(), 17).derive(prune=False).to_json()
    data["cells"][-1] = None  # the last layer's coarsest row: the final Fuse reads it
    with pytest.raises(PosenasError, match=r"cells\[10\]: is null"):
        ThreeMArch.from_json(data)


def test_pruning_keeps_exactly_what_the_exits_read():
    """Every cell reads only its row ('same'): cells of intermediate layers are each read, and a
    cell whose row nothing reads is pruned."""
    net = small_space(exits=[])
    cells = []
    for layer, row in positions(net):
        inputs = ("same",) if (layer, row) != (0, 1) else ("finer",)
        if layer == 1 and row == 2:
            inputs = ("finer",)
        cells.append(CellArch(inputs, (("skip",), ("skip",), ("skip",))))
    needed = needed_cells(net, positions(net), cells)
    # row 2 of layer 2 reads only "same" = (1, 2), which reads (0, 1): all needed; nothing reads (1, 1)'s
    # output except (2, 1) — so every cell here is read and none pruned
    assert len(needed) == len(cells)
    cells[positions(net).index((2, 1))] = CellArch(("finer",), cells[0].ops)  # now (1, 1) is read by nobody
    needed = needed_cells(net, positions(net), cells)
    assert positions(net).index((1, 1)) not in needed


def test_supernet_selection_equals_the_derived_net_with_inherited_weights():
    torch.manual_seed(1)
    supernet = ThreeMSupernet(small_space(), 17)
    with torch.no_grad():  # a definite selection: 2 ops on some edges, several inputs
        supernet.alpha.normal_()
        supernet.beta.normal_()
        supernet.m_alpha.normal_()
        supernet.m_beta.normal_()
    arch = supernet.derive(prune=False)
    model = build_threem(arch, 17)
    model.load_state_dict(derived_state_dict(supernet, arch))
    supernet.eval()
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(supernet(x), model(x), atol=1e-5)


def test_dyn_egs_keeps_exactly_the_learned_number_of_ops():
    """A count logit far ahead picks that count: exactly top-i entries weigh 1, the rest 0, and
    both alpha and m get gradients (straight-through)."""
    torch.manual_seed(0)
    logits = torch.randn(50, 9, requires_grad=True)
    for count in (1, 2, 3):
        m = torch.full((50, 3), -30.0)
        m[:, count - 1] = 30.0
        m.requires_grad_(True)
        w, top = dyn_egs(logits, m, tau=1.0)
        kept = w.detach() != 0  # straight-through: exactly 0 off the selection, 1 up to rounding on it
        assert torch.equal(kept.sum(-1), torch.full((50,), count))
        assert torch.allclose(w.detach()[kept], torch.ones(50 * count), atol=1e-6)
        assert top.shape == (50, 3)
        (w * torch.randn(50, 9)).sum().backward()
        assert logits.grad.abs().sum() > 0
        logits.grad = None
    # without noise, the kept entries are the top-i of alpha itself
    m = torch.tensor([[0.0, 5.0, 0.0]])
    w, _ = dyn_egs(torch.tensor([[0.1, 3.0, -1.0, 2.0]]), m, tau=1.0, noise=False)
    assert w.tolist() == [[0.0, 1.0, 0.0, 1.0]]


def test_dyn_egs_never_keeps_a_missing_input():
    torch.manual_seed(0)
    supernet = ThreeMSupernet(small_space(), 17)
    with torch.no_grad():
        supernet.m_beta.copy_(torch.tensor([0.0, 25.0, 50.0]))  # ask for as many inputs as can be
    for _ in range(5):
        s = supernet.sample(noise=True)
        kept = s.inputs.detach() != 0
        assert not (kept & ~supernet.input_mask).any()
        # a cell keeps as many inputs as exist (at most 3)
        assert torch.equal(kept.sum(1), supernet.input_mask.sum(1))


def test_derived_cells_differ_in_density_as_m_says():
    torch.manual_seed(0)
    supernet = ThreeMSupernet(small_space(), 17)
    with torch.no_grad():
        supernet.m_alpha.zero_()
        supernet.m_alpha[0, :, 1] = 5.0  # cell 0: two ops per edge; the others one
        supernet.m_alpha[1:, :, 0] = 5.0
    arch = supernet.derive(prune=False)
    assert [len(o) for o in arch.cells[0].ops] == [2, 2, 2]
    assert all(len(o) == 1 for c in arch.cells[1:] for o in c.ops)


def test_cost_table_macs_equal_count_macs_of_the_sampled_net():
    """The FLOP loss's MACs of a 0/1 sampling are exactly count_macs of that (unpruned) net."""
    torch.manual_seed(2)
    supernet = ThreeMSupernet(small_space(), 17)
    table = cost_table(supernet, (64, 64))
    for _ in range(3):
        with torch.no_grad():
            for p in supernet.arch_parameters():
                p.normal_()
        chosen = supernet.sample(noise=False)
        net = build_threem(supernet.derive(prune=False), 17)
        assert float(table.macs(chosen).detach()) == pytest.approx(count_macs(net, (64, 64))[0], rel=1e-6)


def test_flop_loss_by_hand():
    s = ThreeMSearchConfig()
    g = torch.tensor(16.63)
    # epoch 7: scale 1e-4 x 10^2 = 1e-2; weight 1e-3; (16.63 / 47.8) ** 0.15
    assert float(s.flop_loss(g, 7.0)) == pytest.approx(1e-3 * 1e-2 * (16.63 / 47.8) ** 0.15, rel=1e-6)
    assert s.flop_scale(0) == 1e-4 and s.flop_scale(2.99) == 1e-4 and s.flop_scale(3) == pytest.approx(1e-3)
    assert s.flop_scale(100) == 1.0  # the ceiling


def test_multi_exit_model_supervises_every_exit():
    """Training output: one output per exit; the bottom-up loss sums over them (switching an exit's
    target off changes the loss)."""
    from posenas.engine.task import BottomUpTask

    torch.manual_seed(0)
    model = build_threem(ThreeMSupernet(small_space(), 17).derive(), 17).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, ExitOutputs) and len(out) == 2
    batch = {"heatmaps_0": torch.rand(2, 17, 16, 16), "mask_0": torch.ones(2, 16, 16),
             "joints": torch.zeros(2, 30, 17, 2, dtype=torch.long)}
    task = BottomUpTask()
    both = task.loss(model, out, batch)
    last = task.loss(model, out[1], batch)
    first = task.loss(model, out[0], batch)
    both, first, last = float(both.detach()), float(first.detach()), float(last.detach())
    assert both == pytest.approx(first + last, rel=1e-6)
    assert first > 0.01 * both  # the early exit is a real part of the loss
    model.eval()
    with torch.no_grad():  # eval: static inference, the last exit
        x = torch.randn(1, 3, 64, 64)
        assert torch.allclose(model(x), ExitModel(model, 1)(x))


def test_exit_config_errors():
    with pytest.raises(PosenasError, match="exits"):
        ThreeMSupernetConfig(exits=(10,))
    with pytest.raises(PosenasError, match="sampling"):
        ThreeMSupernetConfig(sampling="dense")
    with pytest.raises(PosenasError, match="teacher"):
        ThreeMSearchConfig(teacher="/no/such/file.pt")


def test_gumbel_baseline_derives_one_op_and_one_input():
    torch.manual_seed(0)
    supernet = ThreeMSupernet(small_space(), 17, sampling="gumbel")
    s = supernet.sample(noise=True)
    assert all(len(edge) == len(OPS) for cell in s.active_ops for edge in cell)  # dense supernet
    arch = supernet.derive(prune=False)
    assert all(len(c.inputs) == 1 and all(len(o) == 1 for o in c.ops) for c in arch.cells)


def test_the_thesis_architecture_of_table_a1_costs_what_the_thesis_reports():
    """configs/3m-pose/thesis-a1.json is Table A.1 (cells numbered layer by layer, "above" the finer
    row). Published at 512: 16.63 GFLOPs at the last layer (Tables 4.1, 4.3), 17.79 M params; at
    640: 25.98. Measured here: 16.656 and 26.025 GMACs (0.2 % off), 18.60 M params (4.5 % more)."""
    from posenas.arch import load_arch_file
    from posenas.cost import count_params
    from posenas.resources import resolve_config

    arch = load_arch_file(resolve_config("3m-pose/thesis-a1", "arch"))
    assert sum(c is None for c in arch.cells) == 1 and arch.cells[2] is None  # Table A.1's cell 2 is "-"
    model = build_model(arch, 17)
    assert count_macs(model, (512, 512))[0] / 1e9 == pytest.approx(16.63, rel=0.01)
    assert count_params(model) / 1e6 == pytest.approx(17.79, rel=0.06)


def test_every_parameter_of_a_derived_net_is_used_in_training():
    """DDP (torchrun) refuses a model with parameters the loss does not reach: a Split conv for a
    row the next layer does not read was one (a derived net builds Split convs for read rows only).
    Here the exit at layer 2 fuses rows 0-2, but no layer-3 cell reads row 2."""
    net = small_space()
    cells = []
    for layer, row in positions(net):
        inputs = ("finer",) if (layer, row) == (0, 1) or layer == 1 and row == 2 else ("same",)
        if layer == 2 and row == 2:
            inputs = ("finer",)  # reads row 1: row 2 of layer 2 goes unread past the Split
        cells.append(CellArch(inputs, (("conv_3x3",), ("skip",), ("skip",))))
    arch = ThreeMArch(net, tuple(cells))
    model = build_threem(arch, 17).train()
    assert sorted(model.split[0].convs) == ["0", "1"]
    out = model(torch.randn(2, 3, 64, 64))
    sum(o.square().mean() for o in out).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
