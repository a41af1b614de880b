"""Evaluating a sub-net of a trained supernet: cost (GMACs, params, measured latency) and
accuracy after BN re-calibration.

Why re-calibrate: the supernet's BN running statistics are a blend over every sub-net
trained, so a sub-net evaluated with them scores near zero. As in Once-for-All, each
candidate's BN statistics are reset and re-estimated (cumulative average) on the same
fixed training batches before it is evaluated.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from posenas.codecs.heatmap import HeatmapCodec
from posenas.cost import count_macs, count_params, measure_latency
from posenas.data.records import PoseDataset
from posenas.data.topdown import TopDownDataset
from posenas.engine.precision import FP32, Precision
from posenas.engine.predict import evaluate_model, primary_value
from posenas.search.vipnas_config import SearchConfig
from posenas.spaces.vipnas import ViPNASArch, ViPNASSupernet, derive


def arch_key(arch: ViPNASArch) -> str:
    """A canonical string of an arch (to recognise candidates already evaluated)."""
    return json.dumps(arch.to_json(), sort_keys=True)


def recalibrate_bn(model: nn.Module, batches: list[torch.Tensor], precision: Precision = FP32) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them as the plain average
    over ``batches`` (forward passes in train mode, no gradients, in ``precision``); the model
    ends in eval mode."""
    with bn_reestimation(model):
        for images in batches:
            precision.forward(model, images)


@contextmanager
def bn_reestimation(model: nn.Module) -> Iterator[None]:
    """Inside: every BatchNorm of ``model`` reset, averaging cumulatively, in train mode, no
    gradients; after: the momenta restored and ``model`` in eval mode (the forward passes
    inside are the caller's: plain batches, or a propagation chain of video frame nets)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.eval()


def calibration_batches(train: PoseDataset, codec: HeatmapCodec, augment, batch_size: int, count: int,
                        seed: int) -> list[torch.Tensor]:
    """``count`` fixed training batches (augmented as in training, a seeded sample) shared by all candidates."""
    data = TopDownDataset(train, codec, augment, seed=seed)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=g)[: count * batch_size].tolist()
    loader = DataLoader(Subset(data, order), batch_size=batch_size, drop_last=False)
    return [batch["image"] for batch in loader]


@dataclass
class Evaluator:
    """Costs and scores sub-nets of one supernet; costs are cached per arch."""

    supernet: ViPNASSupernet
    val: PoseDataset
    codec: HeatmapCodec
    device: torch.device
    calib: list[torch.Tensor]
    cfg: SearchConfig
    batch_size: int = 64
    precision: Precision = FP32  # the supernet run's: candidates are re-calibrated and scored in it
    _costs: dict[str, dict[str, Any]] = field(default_factory=dict)
    _macs: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cfg.val_max_images is not None:
            self.val = replace(self.val, images=self.val.images[: self.cfg.val_max_images])

    def cost(self, arch: ViPNASArch) -> dict[str, Any]:
        key = arch_key(arch)
        if key not in self._costs:
            model = derive(arch, self.supernet.num_joints).eval()
            size = self.codec.input_size
            if key not in self._macs:
                self._macs[key] = count_macs(model, size)[0] / 1e9
            cost = {"gmacs": self._macs[key], "params_m": count_params(model) / 1e6}
            # measured for every candidate: the Pareto plot has a latency axis
            cost["latency_ms"] = measure_latency(model, size, threads=self.cfg.latency_threads, warmup=2,
                                                 runs=self.cfg.latency_runs)["median"]
            self._costs[key] = cost
        return self._costs[key]

    def known_cost(self, arch: ViPNASArch) -> dict[str, Any] | None:
        """The full cost already measured for ``arch`` (a latency budget's check measures it), else None."""
        return self._costs.get(arch_key(arch))

    def adopt_cost(self, arch: ViPNASArch, cost: dict[str, Any]) -> None:
        """Take the cost another rank measured: under torchrun the rank that draws a candidate
        against a latency budget measures it once, and the record of whichever rank scores it
        holds that measurement (the one the budget was checked against)."""
        self._costs[arch_key(arch)] = dict(cost)
        self._macs[arch_key(arch)] = cost["gmacs"]

    def fits(self, arch: ViPNASArch) -> bool:
        """Within the budget (GMACs checked first: it needs no timing)."""
        cfg = self.cfg
        if cfg.max_gmacs is not None and self.cost_macs_only(arch) > cfg.max_gmacs:
            return False
        if cfg.max_latency_ms is not None and self.cost(arch)["latency_ms"] > cfg.max_latency_ms:
            return False
        return True

    def cost_macs_only(self, arch: ViPNASArch) -> float:
        key = arch_key(arch)
        if key not in self._macs:
            model = derive(arch, self.supernet.num_joints).eval()
            self._macs[key] = count_macs(model, self.codec.input_size)[0] / 1e9
        return self._macs[key]

    def evaluate(self, arch: ViPNASArch) -> dict[str, Any]:
        """Inherit weights, re-calibrate BN, score on val: the cost fields plus ``metric``, the
        scores and ``score`` (AP for COCO, PCKh@0.5 for MPII)."""
        model = self.precision.prepare_model(derive(arch, self.supernet.num_joints, self.supernet).to(self.device))
        recalibrate_bn(model, [b.to(self.device) for b in self.calib], self.precision)
        metric, result, _, _ = evaluate_model(model, self.val, self.codec, self.device, flip_test=self.cfg.flip_test,
                                              batch_size=self.batch_size, workers=0, progress=False,
                                              precision=self.precision)
        return {**self.cost(arch), "metric": metric, **result, "score": primary_value(metric, result)}
