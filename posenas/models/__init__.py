"""Network building blocks, backbones, heads and the hand-crafted baselines.

Turning arch JSON into a model goes through :mod:`posenas.arch` (``arch_from_json``,
``build_model``, ``named_arch``); this package holds the modules themselves.
"""

from posenas.models.backbones import BACKBONES, MobileNetV2, ResNet, build_backbone, mobilenetv2, resnet18, resnet50
from posenas.models.blocks import (ACTIVATIONS, BasicBlock, Bottleneck, ContextBlock, ConvBNAct, DeconvBNAct,
                                   InvertedResidual, Resample, SqueezeExcite, init_backbone_weights,
                                   make_activation, make_divisible)
from posenas.models.heads import DeconvHead
from posenas.models.hrnet import HRNet, HRNetArch, build_hrnet
from posenas.models.simplebaseline import SimpleBaseline, SimpleBaselineArch, build_simplebaseline

__all__ = [
    "ACTIVATIONS", "BACKBONES", "BasicBlock", "Bottleneck", "ContextBlock", "ConvBNAct", "DeconvBNAct", "DeconvHead",
    "HRNet", "HRNetArch", "InvertedResidual", "MobileNetV2", "ResNet", "Resample", "SimpleBaseline",
    "SimpleBaselineArch", "SqueezeExcite", "build_backbone", "build_hrnet", "build_simplebaseline",
    "init_backbone_weights", "make_activation", "make_divisible", "mobilenetv2", "resnet18", "resnet50",
]
