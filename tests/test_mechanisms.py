"""Search and training mechanisms, each pinned by its effect so that switching it off fails a
test: in-place distillation, BN re-calibration before scoring, the budget on every drawn
candidate, PNFS beta normalised per cell, target weights in every loss, the flip test's
1-px shift, weights-only checkpoint loading, drop-path, the first-order DARTS alternation,
the lr schedule, the best checkpoint and exact resume. Every comparison is made on a
signal checked to be far above its tolerance (tiny untrained heads output ~1e-8, so the
models here have scrambled weights or the comparison is relative)."""

from __future__ import annotations

import copy
import json
import math
import os
import random

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from posenas.checkpoint import FORMAT, FORMAT_VERSION, load_checkpoint, model_from_checkpoint
from posenas.cli import main
from posenas.codecs.heatmap import HeatmapCodec
from posenas.config import from_dict
from posenas.data.layout import load_dataset
from posenas.engine import predict as predict_module
from posenas.engine import train as train_module
from posenas.engine.config import ExperimentConfig, OptimConfig
from posenas.engine.distributed import World
from posenas.engine.predict import heatmaps_with_flip
from posenas.engine.task import heatmap_loss, model_loss
from posenas.engine.train import Interrupted, Objective, lr_lambda, train
from posenas.errors import PosenasError
from posenas.keypoints import COCO17
from posenas.search import candidates, strategies
from posenas.search import vipnas as vipnas_search
from posenas.search.candidates import Evaluator, arch_key
from posenas.search.darts import FirstOrderObjective
from posenas.search.sandwich import SandwichObjective
from posenas.search.strategies import evolution_search, random_search
from posenas.search.vipnas_config import SearchConfig, SearchExperimentConfig
from posenas.spaces.efficientpose import SETTINGS, MixedOp, drop_path
from posenas.spaces.pnfs import Fabric, scale_channels
from posenas.spaces.vipnas import SPACES, ViPNASSupernet, derive, parse_choices, sample_arch

from conftest import make_dataset
from test_vipnas_search import TINY_CHOICES
from test_vipnas_space import scramble

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = World(0, 1, torch.device("cpu"))
SPACE = "vipnas-resnet"
CHOICES = parse_choices(SPACES[SPACE], TINY_CHOICES, "choices")
CODEC32 = HeatmapCodec((32, 32), (8, 8))
TINY_ARCH = {"space": "simplebaseline", "backbone": "resnet18", "width_mult": 0.125,
             "head": {"widths": [16, 16, 16], "kernels": [4, 4, 4]}}


def mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The target-weighted heatmap MSE written out here, independent of the code under test."""
    return 0.5 * (weight[:, :, None, None] * (pred - target) ** 2).mean()


def batch(n: int = 2, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, targets and target weights with every third joint unlabelled (weight 0)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    target = torch.rand(n, 17, size // 4, size // 4, generator=g)
    weight = torch.ones(n, 17)
    weight[:, ::3] = 0.0
    return images, target, weight


def with_garbage(target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``target`` with huge values on the joints of weight 0: a loss that ignores the weights sees them."""
    out = target.clone()
    out[weight == 0] = 50.0
    return out


def sandwich(distill: bool = True, num_random: int = 1) -> tuple[SandwichObjective, ViPNASSupernet]:
    """A tiny ViPNAS supernet with scrambled weights (sub-nets give O(1) heatmaps that differ)."""
    objective = SandwichObjective(SPACE, CHOICES, num_random, distill=distill, seed=0)
    torch.manual_seed(0)
    model = objective.build(17)
    scramble(model, 1)
    return objective, model


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name, g in expected.items():
        scale = float(g.abs().max())
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-5 * scale + 1e-12, msg=name)


# ---------------------------------------------------------------- 1. sandwich rule with in-place distillation

def sandwich_by_hand(model, objective, images, target, weight, step: int, distill: bool):
    """The sandwich step written out: every sub-net learns the ground truth; all but the largest
    also learn the largest's detached heatmaps. Backwards it; returns (total, distillation part)."""
    total, part, teacher = torch.zeros(()), torch.zeros(()), None
    for i, arch in enumerate(objective.subnets(step)):
        model.set_active(arch)
        out = model(images)
        loss = mse(out, target, weight)
        if i == 0:
            teacher = out.detach()
        elif distill:
            term = mse(out, teacher, weight)
            part += term.detach()
            loss = loss + term
        loss.backward()
        total += loss.detach()
    return total, part


def test_sandwich_step_distils_the_other_subnets_from_the_largest():
    objective, model = sandwich()
    images, target, weight = batch()
    reference, plain = copy.deepcopy(model), copy.deepcopy(model)
    total = objective.step(model, {"image": images, "target": target, "target_weight": weight}, 3, CPU)
    expected, part = sandwich_by_hand(reference, objective, images, target, weight, 3, distill=True)
    without, _ = sandwich_by_hand(plain, objective, images, target, weight, 3, distill=False)
    assert float(part) > 0.05 * float(expected)  # the distillation terms are a real share of the loss
    assert float(total) == pytest.approx(float(expected), rel=1e-5)
    assert abs(float(total) - float(without)) > 1e3 * 1e-5 * float(expected)
    assert_same_grads(grads(model), grads(reference))
    # and the gradients with distillation are not those without it
    g, g0 = grads(reference), grads(plain)
    assert max(float((g[n] - g0[n]).abs().max() / g[n].abs().max()) for n in g) > 1e-2
    assert model.arch == objective.arch  # left on the largest sub-net (validation, checkpoint)


def test_sandwich_without_distillation_learns_the_ground_truth_only():
    objective, model = sandwich(distill=False)
    images, target, weight = batch()
    reference = copy.deepcopy(model)
    total = objective.step(model, {"image": images, "target": target, "target_weight": weight}, 3, CPU)
    expected, _ = sandwich_by_hand(reference, objective, images, target, weight, 3, distill=False)
    assert float(total) == pytest.approx(float(expected), rel=1e-5)
    assert_same_grads(grads(model), grads(reference))


def test_vipnas_search_trains_its_supernet_with_distillation_by_default(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(vipnas_search, "train", lambda cfg, run, **kw: seen.append(kw["objective"]))
    base = {"supernet": {"space": SPACE, "choices": TINY_CHOICES}}
    cfg = from_dict(SearchExperimentConfig, base)
    assert cfg.supernet.distill is True
    vipnas_search.train_supernet(cfg, tmp_path / "on", progress=False)
    off = from_dict(SearchExperimentConfig, {"supernet": {**base["supernet"], "distill": False, "random_subnets": 3}})
    vipnas_search.train_supernet(off, tmp_path / "off", progress=False)
    assert [(o.distill, o.num_random) for o in seen] == [(True, 2), (False, 3)]


# ---------------------------------------------------------------- 2. BN re-calibration before a candidate is scored

def test_candidates_are_scored_after_bn_recalibration(tmp_path, monkeypatch):
    _, supernet = sandwich()
    for m in supernet.modules():  # statistics far from any sub-net's, as a trained supernet's blend is
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(3.0)
            m.running_var.fill_(50.0)
            m.num_batches_tracked.fill_(1000)  # a cumulative average that is not reset stays near these
    supernet.eval()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(4, 3, 32, 32, generator=g) * 2 + 0.5 for _ in range(2)]
    scored = {}

    def fake_evaluate_model(model, dataset, codec, device, **kwargs):
        scored["model"], scored["kwargs"] = copy.deepcopy(model), kwargs
        return "coco", {"AP": 0.25}, "", []

    monkeypatch.setattr(candidates, "evaluate_model", fake_evaluate_model)
    monkeypatch.setattr(Evaluator, "cost", lambda self, arch: {"gmacs": 0.0})
    val = make_dataset("coco", tmp_path, images=1)
    evaluator = Evaluator(supernet, val, CODEC32, torch.device("cpu"), calib,
                          SearchConfig(val_max_images=None, flip_test=True))
    arch = sample_arch(SPACE, CHOICES, random.Random(3))
    record = evaluator.evaluate(arch)
    assert record["score"] == 0.25 and record["metric"] == "coco"
    assert scored["kwargs"]["flip_test"] is True  # search.flip_test reaches the scoring

    expected = derive(arch, 17, supernet)
    for m in expected.modules():  # Once-for-All's re-estimation written out: fresh statistics, plain average
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        expected.train()
        for images in calib:
            expected(images)
    expected.eval()
    stale = derive(arch, 17, supernet).eval()  # the supernet's statistics, not re-estimated
    x = calib[0]
    with torch.no_grad():
        y, y_ref, y_stale = scored["model"].eval()(x), expected(x), stale(x)
    scale = float(y_ref.abs().max())
    assert scale > 1e-2 and float((y_ref - y_stale).abs().max()) > 0.1 * scale  # re-calibration matters here
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5 * scale)


# ---------------------------------------------------------------- 3. the budget holds for every candidate drawn

@pytest.fixture(scope="module")
def budget_evaluator(tmp_path_factory):
    """An evaluator over the tiny supernet at 32x32 with a GMACs budget at the median of random sub-nets."""
    supernet = ViPNASSupernet(SPACE, CHOICES, 17)
    val = make_dataset("coco", tmp_path_factory.mktemp("val"), images=1)
    probe = Evaluator(supernet, val, CODEC32, torch.device("cpu"), [], SearchConfig(val_max_images=None))
    rng = random.Random(0)
    macs = sorted(probe.cost_macs_only(sample_arch(SPACE, CHOICES, rng)) for _ in range(15))
    budget = macs[len(macs) // 2]
    evaluator = Evaluator(supernet, val, CODEC32, torch.device("cpu"), [],
                          SearchConfig(val_max_images=None, max_gmacs=budget))
    evaluator._macs.update(probe._macs)
    return evaluator, budget


@pytest.mark.parametrize("strategy", ["random", "evolution"])
def test_every_candidate_drawn_fits_the_gmacs_budget(budget_evaluator, strategy):
    evaluator, budget = budget_evaluator
    evaluated, rejected = [], []

    def fits(arch) -> bool:
        ok = evaluator.fits(arch)
        if not ok:
            rejected.append(len(evaluated))  # how many were evaluated when this draw was refused
        return ok

    def evaluate(arch, name, index):
        evaluated.append(arch)
        # scored by size: evolution breeds from the largest that fit, so its children press on the budget
        return {"score": evaluator.cost_macs_only(arch), "_arch": arch}

    if strategy == "random":
        random_search(SPACE, CHOICES, 6, 0, fits, evaluate)
    else:
        evolution_search(SPACE, CHOICES, 10, 0, fits, evaluate, population=4, parents=2, mutate_prob=0.5)
    assert len(evaluated) == (6 if strategy == "random" else 10)
    over = [evaluator.cost_macs_only(a) for a in evaluated if evaluator.cost_macs_only(a) > budget]
    assert not over, f"{len(over)} candidates over the {budget} GMACs budget"
    assert rejected, "the budget refused no draw: it was not binding"
    if strategy == "evolution":
        assert any(n >= 4 for n in rejected), "no child was checked against the budget"


def test_latency_budget_is_checked_too(budget_evaluator, monkeypatch):
    evaluator, _ = budget_evaluator
    a, b = (sample_arch(SPACE, CHOICES, random.Random(s)) for s in (1, 2))
    latency = {arch_key(a): 9.0, arch_key(b): 1.0}
    monkeypatch.setattr(Evaluator, "cost", lambda self, arch: {"latency_ms": latency[arch_key(arch)]})
    timed = Evaluator(evaluator.supernet, evaluator.val, CODEC32, torch.device("cpu"), [],
                      SearchConfig(val_max_images=None, max_latency_ms=5.0))
    assert not timed.fits(a) and timed.fits(b)


def test_evolution_breeds_from_the_best_scored_parents(monkeypatch):
    score = {}

    def evaluate(arch, name, index):
        score[arch_key(arch)] = random.Random(arch_key(arch)).random()
        return {"score": score[arch_key(arch)], "_arch": arch}

    parents_used = []
    real_mutate, real_cross = strategies.mutate_arch, strategies.crossover_arch

    def mutate(arch, *args):
        parents_used.append(arch_key(arch))
        return real_mutate(arch, *args)

    def cross(a, b, *args):
        parents_used.extend([arch_key(a), arch_key(b)])
        return real_cross(a, b, *args)

    monkeypatch.setattr(strategies, "mutate_arch", mutate)
    monkeypatch.setattr(strategies, "crossover_arch", cross)
    records = evolution_search(SPACE, CHOICES, 6, 0, lambda a: True, evaluate, population=4, parents=2,
                               mutate_prob=0.5)
    first = sorted(records[:4], key=lambda r: -r["score"])
    best = {arch_key(r["_arch"]) for r in first[:2]}
    assert first[1]["score"] > first[2]["score"]
    assert parents_used and set(parents_used) <= best, "a child was bred from a parent outside the best two"


def test_evolution_falls_back_to_a_random_child_when_breeding_finds_nothing_new(monkeypatch):
    """Parents whose every mutation and crossover is already seen (here: the parent itself) used to
    stop the search with "found no new sub-net"; the child is then a fresh random sub-net."""
    monkeypatch.setattr(strategies, "MAX_TRIES", 20)
    monkeypatch.setattr(strategies, "mutate_arch", lambda arch, *args: arch)
    monkeypatch.setattr(strategies, "crossover_arch", lambda a, b, *args: a)
    evaluate = lambda arch, name, index: {"score": random.Random(arch_key(arch)).random(), "_arch": arch}  # noqa: E731
    records = evolution_search(SPACE, CHOICES, 8, 0, lambda a: True, evaluate, population=4, parents=2,
                               mutate_prob=0.5)
    assert len(records) == 8 and len({arch_key(r["_arch"]) for r in records}) == 8


# ---------------------------------------------------------------- 4. PNFS beta: softmax over each cell's inputs

def test_fabric_beta_is_normalised_over_each_cells_inputs():
    torch.manual_seed(0)
    fabric = Fabric(2, 3, 1, 2, ["skip", "sep_conv_3x3", "avg_pool_3x3"], inputs=[0, 1, 2], outputs=[0]).eval()
    with torch.no_grad():
        fabric.alpha.normal_(0, 1)
        fabric.beta.normal_(0, 1)
    alpha, beta = fabric.weights()
    assert beta.shape == (len(fabric.positions), 3) == (3, 3)
    torch.testing.assert_close(beta, torch.softmax(fabric.beta, dim=1))
    torch.testing.assert_close(beta.sum(1), torch.ones(3))
    torch.testing.assert_close(alpha.sum(1), torch.ones(alpha.shape[0]))

    g = torch.Generator().manual_seed(1)
    pyramid = {k: torch.randn(1, scale_channels(2, k), 16 >> k, 16 >> k, generator=g) for k in range(3)}
    sizes = {k: (16 >> k, 16 >> k) for k in range(3)}

    def run() -> torch.Tensor:
        with torch.no_grad():
            return fabric(pyramid, sizes)[0]

    out = run()
    scale = float(out.abs().max())
    assert scale > 0.1
    with torch.no_grad():  # a constant added to one cell's beta (one edge's alpha) leaves its softmax alone
        fabric.beta[1] += 3.0
        fabric.alpha[0] += 2.0
    torch.testing.assert_close(run(), out, rtol=1e-5, atol=1e-5 * scale)
    with torch.no_grad():  # favouring one input in every cell changes every cell's mixture
        fabric.beta[:, 1] += 3.0
    assert float((run() - out).abs().max()) > 1e-2 * scale


# ---------------------------------------------------------------- 5. target weights in every loss

def test_heatmap_loss_by_hand_and_blind_to_unweighted_joints():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 5, 4, 4, generator=g), torch.rand(2, 5, 4, 4, generator=g)
    weight = torch.tensor([[1.0, 0.0, 1.0, 0.5, 0.0], [0.0, 1.0, 1.0, 1.0, 0.0]])
    by_hand = sum(0.5 * float(weight[n, k]) * float(((pred[n, k] - target[n, k]) ** 2).sum())
                  for n in range(2) for k in range(5)) / pred.numel()
    assert float(heatmap_loss(pred, target, weight)) == pytest.approx(by_hand, rel=1e-6)
    garbage = with_garbage(target, weight)
    assert float(heatmap_loss(pred, garbage, weight)) == pytest.approx(by_hand, rel=1e-6)
    assert float(heatmap_loss(pred, garbage, torch.ones_like(weight))) > 100 * by_hand


def assert_blind_to_unweighted(loss_of, n: int = 2) -> None:
    """``loss_of(target, weight)``: equal with garbage on the weight-0 joints, far larger if all count."""
    _, target, weight = batch(n)
    value = lambda t, w: float(torch.as_tensor(loss_of(t, w)).detach())  # noqa: E731
    clean = value(target, weight)
    garbage = with_garbage(target, weight)
    assert value(garbage, weight) == pytest.approx(clean, rel=1e-5)
    assert value(garbage, torch.ones_like(weight)) > 100 * clean


def test_plain_training_step_ignores_unweighted_joints():
    from posenas.arch import arch_from_json

    objective = Objective(arch_from_json(TINY_ARCH))
    torch.manual_seed(0)
    model = objective.build(17).train()
    images = batch()[0]
    assert_blind_to_unweighted(lambda t, w: objective.step(model, {"image": images, "target": t, "target_weight": w}, 0, CPU))
    assert_blind_to_unweighted(lambda t, w: model_loss(model, model(images), t, w))


def test_sandwich_step_ignores_unweighted_joints():
    objective, model = sandwich()
    images = batch()[0]
    assert_blind_to_unweighted(lambda t, w: objective.step(model, {"image": images, "target": t, "target_weight": w}, 0, CPU))


# ---------------------------------------------------------------- first-order DARTS: a toy model with alpha

class ToyMixture(nn.Module):
    """Two convs at stride 4 mixed by softmax(alpha), drop-path on the second in training."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 17, 3, padding=1), nn.Conv2d(3, 17, 1)])
        self.alpha = nn.Parameter(torch.tensor([0.3, -0.2]))
        self.drop_prob = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x, 4)
        p = torch.softmax(self.alpha, 0)
        second = self.convs[1](x)
        if self.training:
            second = drop_path(second, self.drop_prob)
        return p[0] * self.convs[0](x) + p[1] * second


class ToyDarts(FirstOrderObjective):
    def __init__(self, penalty: float = 0.0, warmup_epochs: float = 0.0):
        super().__init__(0.5, warmup_epochs, arch_lr=0.05, arch_weight_decay=0.0, seed=0)
        self.penalty = penalty

    def checkpoint_fields(self) -> dict:
        return {"arch": {"space": "toy"}}  # never rebuilt from the file

    def build(self, num_joints: int) -> nn.Module:
        model = ToyMixture()
        model.drop_prob = 0.5
        return model

    def arch_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [model.alpha]

    def arch_penalty(self, model: nn.Module) -> torch.Tensor:
        return self.penalty * torch.softmax(model.alpha, 0)[0]


def toy_darts(penalty: float = 0.0, arch_start: int = 0):
    """A ToyDarts objective set up by hand (no dataset): its architecture batch is fixed."""
    objective = ToyDarts(penalty)
    torch.manual_seed(0)
    model = objective.build(17).train()
    objective.arch_opt = torch.optim.Adam([model.alpha], lr=objective.arch_lr, betas=objective.betas)
    objective.arch_start = arch_start
    images, target, weight = batch(4, seed=5)
    objective.arch_batch = lambda step, world: {"image": images, "target": target, "target_weight": weight}
    return objective, model


def test_darts_arch_step_moves_alpha_only_with_its_penalty_and_no_drop_path():
    objective, model = toy_darts(penalty=0.7)
    arch = objective.arch_batch(0, CPU)
    model.drop_prob = 0.0
    with torch.no_grad():
        expected = float(mse(model(arch["image"]), arch["target"], arch["target_weight"])
                         + 0.7 * torch.softmax(model.alpha, 0)[0])
    model.drop_prob = 0.9
    alpha_before = model.alpha.detach().clone()
    images, target, weight = batch(4, seed=6)
    torch.manual_seed(1)
    objective.step(model, {"image": images, "target": target, "target_weight": weight}, 0, CPU)
    assert objective.last_arch_loss == pytest.approx(expected, rel=1e-5)  # the penalty counts, drop-path is off
    assert model.drop_prob == 0.9  # and back on for the weight steps
    assert float((model.alpha.detach() - alpha_before).abs().max()) > 1e-3
    # the weights' gradients are the weight batch's alone, at the updated alpha
    reference = copy.deepcopy(model)
    reference.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    mse(reference(images), target, weight).backward()
    got = {n: g for n, g in grads(model).items() if n != "alpha"}
    assert_same_grads(got, {n: g for n, g in grads(reference).items() if n != "alpha"})


def test_darts_weight_steps_leave_alpha_alone_and_wait_for_warmup():
    objective, model = toy_darts(arch_start=2)
    optimizer = torch.optim.SGD(objective.parameters(model), lr=0.5)
    assert all(p is not model.alpha for p in objective.parameters(model))
    images, target, weight = batch(4, seed=6)
    for step in range(2):  # warm-up: weight steps only
        alpha, conv = model.alpha.detach().clone(), model.convs[0].weight.detach().clone()
        optimizer.zero_grad(set_to_none=True)
        objective.step(model, {"image": images, "target": target, "target_weight": weight}, step, CPU)
        optimizer.step()
        assert torch.equal(model.alpha.detach(), alpha)
        assert not torch.equal(model.convs[0].weight.detach(), conv)
    objective.step(model, {"image": images, "target": target, "target_weight": weight}, 2, CPU)
    assert not torch.equal(model.alpha.detach(), alpha)  # the first architecture step


def test_darts_losses_ignore_unweighted_joints():
    objective, model = toy_darts()
    images = batch(4)[0]

    def arch_loss(t, w):
        objective.arch_batch = lambda step, world: {"image": images, "target": t, "target_weight": w}
        alpha = model.alpha.detach().clone()
        objective.arch_step(model, 0, CPU)
        with torch.no_grad():
            model.alpha.copy_(alpha)
        return objective.last_arch_loss

    model.drop_prob = 0.0
    assert_blind_to_unweighted(arch_loss, 4)
    objective.arch_start = 10**9
    assert_blind_to_unweighted(lambda t, w: objective.step(model, {"image": images, "target": t, "target_weight": w}, 0, CPU), 4)


def test_darts_weight_and_arch_splits_are_disjoint(tmp_path):
    make_dataset("coco", tmp_path, images=6)
    ds = load_dataset(tmp_path, "val")
    objective = ToyDarts()
    weights = objective.weight_split(ds)
    ids = {im.id for im in weights.images}
    arch_ids = {im.id for im in objective.arch_set.images}
    assert ids and arch_ids and not ids & arch_ids and len(ids | arch_ids) == 6


# ---------------------------------------------------------------- drop-path

def test_drop_path_drops_whole_samples_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(4000, 2, 3, 3)
    y = drop_path(x, 0.25).flatten(1)
    dropped = (y == 0).all(1)
    kept = (y == 1 / 0.75).all(1)
    assert bool((dropped | kept).all())
    assert float(dropped.float().mean()) == pytest.approx(0.25, abs=0.03)
    assert float(y.mean()) == pytest.approx(1.0, abs=0.05)
    assert drop_path(x, 0.0) is x


def test_mixed_op_drops_mbconv_paths_in_training_only():
    pos = next(p for p in SETTINGS["small"].positions if p.can_skip)
    torch.manual_seed(0)
    mixed = MixedOp(pos)
    x = torch.randn(4, pos.in_channels, 8, 8)
    conv_only = torch.tensor([1.0 if name != "skip" and i == 0 else 0.0 for i, name in enumerate(mixed.names)])
    skip_only = torch.tensor([1.0 if name == "skip" else 0.0 for name in mixed.names])
    mixed.train()
    torch.manual_seed(1)
    with torch.no_grad():
        full = mixed(x, conv_only, 0.0)
        dropped = mixed(x, conv_only, 0.9)
        scale = float(full.abs().max())
        assert scale > 0.1 and float((dropped - full).abs().max()) > 0.1 * scale
        assert torch.equal(mixed(x, skip_only, 0.9), x)  # the identity path is never dropped
        mixed.eval()
        torch.testing.assert_close(mixed(x, conv_only, 0.9), mixed(x, conv_only, 0.0))


def test_efficientpose_supernet_applies_its_drop_path():
    from posenas.search.efficientpose import DNASExperimentConfig, DNASObjective

    cfg = from_dict(DNASExperimentConfig, {"supernet": {"drop_path": 0.3, "head": {"widths": [16, 16]}}})
    torch.manual_seed(0)
    supernet = DNASObjective(cfg, None).build(17)
    assert supernet.drop_prob == 0.3
    supernet.train()
    x = torch.randn(2, 3, 32, 32)
    supernet.drop_prob = 0.0
    plain = supernet(x).detach()
    supernet.drop_prob = 0.9
    torch.manual_seed(1)
    dropped = supernet(x).detach()
    scale = float(plain.abs().max())
    assert scale > 0 and float((dropped - plain).abs().max()) > 1e-2 * scale


# ---------------------------------------------------------------- 6. the flip test's 1-px shift

def test_flip_test_averages_with_the_mirrored_prediction_shifted_one_pixel():
    torch.manual_seed(0)
    model = nn.Sequential(nn.AvgPool2d(4), nn.Conv2d(3, 17, 3, padding=1)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = heatmaps_with_flip(model, x, COCO17.flip_index, flip_test=True)
        direct = model(x)
        mirrored = model(torch.flip(x, dims=[3]))
        assert torch.equal(heatmaps_with_flip(model, x, COCO17.flip_index, flip_test=False), direct)
    back = mirrored[:, list(COCO17.flip_index)].flip(-1)  # mirror x, swap left and right
    shifted = back.clone()
    shifted[..., 1:] = back[..., :-1]  # one pixel to the right, first column kept
    expected = (direct + shifted) / 2
    scale = float(expected.abs().max())
    tol = 1e-5 * scale
    assert float(((direct + back) / 2 - expected).abs().max()) > 1e3 * tol  # the shift is far above the tolerance
    torch.testing.assert_close(got, expected, rtol=0, atol=tol)


# ---------------------------------------------------------------- 7. checkpoints load with weights_only=True

class _Payload:
    """Unpickling this runs ``os.mkdir(marker)``: what an unsafe ``torch.load`` would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_checkpoint_holding_a_pickled_object_is_refused_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "arch": TINY_ARCH, "schema": "coco17",
                "codec": CODEC32.to_dict(), "state_dict": {}, "payload": _Payload(str(marker))}, path)
    with pytest.raises(PosenasError, match="evil.pt"):
        load_checkpoint(path)
    with pytest.raises(PosenasError, match="evil.pt"):
        model_from_checkpoint(path)
    assert main(["eval", "--checkpoint", str(path), "--data", str(tmp_path)]) == 2
    assert "evil.pt" in capsys.readouterr().err
    assert not marker.exists(), "loading the checkpoint ran the pickled code"
    torch.load(path, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()


# ---------------------------------------------------------------- engine: lr schedule, best checkpoint, resume

def test_lr_schedule_by_hand():
    warm = lr_lambda(OptimConfig(lr=0.1, warmup_steps=4, schedule="cosine"), steps_per_epoch=10, total_steps=100)
    cosine = lambda s: 0.5 * (1 + math.cos(math.pi * s / 100))  # noqa: E731
    for s, w in [(0, 0.25), (1, 0.5), (2, 0.75), (3, 1.0), (10, 1.0), (50, 1.0), (99, 1.0), (100, 1.0)]:
        assert warm(s) == pytest.approx(w * cosine(s), abs=1e-12), s
    assert warm(50) == pytest.approx(0.5) and warm(100) == pytest.approx(0.0, abs=1e-12)
    step = lr_lambda(OptimConfig(schedule="step", warmup_steps=0, milestones=(2, 3), gamma=0.1), 10, 100)
    assert [step(s) for s in (0, 19, 20, 29, 30, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def engine_config(root, **train) -> ExperimentConfig:
    return from_dict(ExperimentConfig, {
        "model": {"arch": TINY_ARCH},
        "data": {"root": str(root), "train_split": "val", "val_split": "val", "input_size": [32, 32],
                 "batch_size": 2, "workers": 0},
        "optim": {"lr": 0.01, "warmup_steps": 3},
        "train": {"epochs": 3, "device": "cpu", "threads": 1, "log_every": 1, "checkpoint_every": 0,
                  "val_every": 1, "flip_test": False, "seed": 1, **train},
    })


def test_best_checkpoint_survives_resume_and_lr_follows_the_schedule(tmp_path, monkeypatch):
    root = tmp_path / "data"
    make_dataset("coco", root, images=2, people=2)  # 4 instances: 2 steps an epoch
    scores = iter([0.2, 0.6, 0.4])  # after epoch 0, after epoch 1, final

    def validate(model, cfg, val, codec, world, progress, precision=None, task=None):
        return "coco", {"AP": next(scores)}, "table", []

    monkeypatch.setattr(train_module, "validate", validate)
    cfg = engine_config(root)
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(cfg, run, progress=False, stop_at_step=4)  # validated after epochs 0 and 1
    train(cfg, run, resume=True, progress=False)
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["metrics"]["AP"] == 0.6 and best["train_state"]["step"] == 4
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["train_state"]["step"] == 6 and last["train_state"]["best"] == 0.6
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in lines if "lr" in r}
    factor = lr_lambda(cfg.optim, 2, 6)
    assert sorted(lrs) == list(range(1, 7))
    for s, lr in lrs.items():  # the lr after s optimiser steps, across the resume
        assert lr == pytest.approx(0.01 * factor(s), rel=1e-9), s
    assert [r["val"]["AP"] for r in lines if "val" in r] == [0.2, 0.6, 0.4]


def test_darts_run_with_drop_path_resumes_exactly(tmp_path):
    """Drop-path draws from the global torch RNG and alpha has its own Adam: both must be restored."""
    root = tmp_path / "data"
    make_dataset("coco", root, images=4, people=2)  # 2 weight images of 2 people: 2 steps an epoch
    cfg = engine_config(root, val_every=0, epochs=2)
    train(cfg, tmp_path / "full", progress=False, objective=ToyDarts(penalty=0.1))
    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "cut", progress=False, stop_at_step=3, objective=ToyDarts(penalty=0.1))
    train(cfg, tmp_path / "cut", resume=True, progress=False, objective=ToyDarts(penalty=0.1))
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    cut = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert full["train_state"]["step"] == cut["train_state"]["step"] == 4
    assert not torch.equal(full["state_dict"]["alpha"], torch.tensor([0.3, -0.2]))  # alpha moved
    for key, value in full["state_dict"].items():
        assert torch.equal(value, cut["state_dict"][key]), key


def test_validation_uses_the_configured_flip_test(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(predict_module, "evaluate_model", lambda *a, **kw: seen.append(kw["flip_test"]))
    for flip in (True, False):
        cfg = engine_config(tmp_path, flip_test=flip)
        train_module.validate(nn.Identity(), cfg, None, CODEC32, CPU, progress=False)
    assert seen == [True, False]
