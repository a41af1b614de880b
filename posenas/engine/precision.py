"""Training and evaluation precision: FP32 or bf16 autocast, NCHW or channels-last.

Why a choice at all: on a CPU with native bf16 (AVX512-BF16, AMX) a bf16 matmul runs 4-6x
faster than FP32 and a channels-last bf16 3x3 conv ~6x faster than FP32 NCHW, so a training
step is 1.5-2.3x faster; on a CPU without it (AVX2 only) bf16 is emulated and ~25x *slower*,
while channels-last FP32 still helps some model families. So ``auto`` decides from the CPU's
capabilities at run time and from per-family measurements (:data:`CHANNELS_LAST_FP32`,
``benchmarks/train_throughput.py``), never from the machine the code was written on.

What stays FP32 under bf16 autocast: the weights, the optimiser state, the loss (the model's
output is cast back before the heatmap MSE, whose squared errors of ~1e-3 bf16 would round
away), BatchNorm statistics, and everything after the model (decoding, evaluation). A run's
validation runs the model in FP32 too (engine/train.py ``validate``): its AP is its weights' AP.
A search's candidate scoring keeps the supernet's precision (speed; one ranking, one precision).
fp16 is not offered: it needs loss scaling through every objective's own backward, and bf16
(FP32's exponent range) needs none; CUDA devices from Ampere on have bf16.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from posenas.errors import PosenasError

PRECISIONS = ("auto", "fp32", "bf16")
CHANNELS_LAST = ("auto", True, False)

#: Model families whose FP32 training step is faster channels-last, measured by
#: ``benchmarks/train_throughput.py`` (docs/benchmarks.md, "Training throughput"; channels-last /
#: NCHW samples/s) on a 2-core AVX2 AMD EPYC (Zen 3): SimpleBaseline-ResNet 1.07 (width 0.375) to
#: 4.0 (ResNet-18: its NCHW transposed-conv head is slow), SimpleBaseline-MobileNetV2 1.31, the
#: supernet steps of ViPNAS-ResNet 1.17, ViPNAS-MobileNetV3 1.45, EfficientPose 1.95, PNFS 1.21;
#: and on a 2-core AVX512-BF16 AMD EPYC (Zen 5): the same, plus SimpleBaseline-ResNet-50 1.40 and
#: the plain training of searched nets (S-ViPNAS-Res50 1.75, S-ViPNAS-MobileNetV3 2.3,
#: EfficientPose k3e6-small 1.28); and on a 2-core Intel Xeon with AMX the AutoPose supernet step
#: 1.14-1.15. A family not listed (not measured) trains NCHW in FP32.
#: A supernet's step is a family of its own (``<space>-supernet``, :meth:`Objective.family`);
#: PNFS trains the same fabric model in its search and after it, so one key serves both.
CHANNELS_LAST_FP32: frozenset[str] = frozenset({
    "simplebaseline-resnet18", "simplebaseline-mobilenetv2", "simplebaseline-resnet50",
    "vipnas-resnet", "vipnas-mobilenetv3", "efficientpose", "pnfs-mobilenetv2",
    "vipnas-resnet-supernet", "vipnas-mobilenetv3-supernet", "efficientpose-supernet", "autopose-supernet"})

#: Families that ``auto`` keeps in FP32 (channels-last) even on a CPU with native bf16, because
#: their bf16 channels-last step measured slower than the FP32 channels-last one there (2-core
#: AVX512-BF16 AMD EPYC, Zen 5; bf16-cl / fp32-cl samples/s): every supernet step (ViPNAS-ResNet
#: 0.78, ViPNAS-MobileNetV3 0.98, EfficientPose DNAS 0.85, PNFS 0.81: sliced weights, mixed ops
#: and few channels per group leave oneDNN's bf16 kernels little to gain over the casts they
#: add) and the plain training of ViPNAS-MobileNetV3 nets (0.80-0.94). Every other family
#: measured (the SimpleBaselines 1.5-1.6, S-ViPNAS-Res50 1.2-1.7, EfficientPose 1.57) trains
#: faster in bf16. The AutoPose supernet, measured later on an AMX Xeon only (bf16-cl / fp32-cl
#: 1.04-1.06, within noise), is kept in FP32 with them. On CUDA, bf16 is used wherever the GPU has it.
FP32_ON_BF16_CPUS: frozenset[str] = frozenset({
    "vipnas-resnet-supernet", "vipnas-mobilenetv3-supernet", "efficientpose-supernet", "pnfs-mobilenetv2",
    "vipnas-mobilenetv3", "autopose-supernet"})

#: Of those, the families whose bf16 channels-last step is faster than FP32 channels-last where the
#: CPU has AMX (its bf16 tile units, beside AVX512-BF16), measured on a 2-core Intel Xeon with
#: AMX-BF16: the ViPNAS-ResNet supernet step 1.26-1.27 (0.78 on the AVX512-BF16 Zen 5). The
#: others stayed within noise or slower there (ViPNAS-MobileNetV3 supernet 1.02-1.03, AutoPose
#: 1.04-1.06, PNFS 0.89-0.97, EfficientPose DNAS 0.76, S-ViPNAS-MobileNetV3 plain 0.73), so they
#: keep FP32 on every CPU.
BF16_ON_AMX_CPUS: frozenset[str] = frozenset({"vipnas-resnet-supernet"})


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 runs in hardware here (CPU: oneDNN's check for AVX512-BF16 / AMX; CUDA: Ampere+)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _cpu_capabilities() -> dict[str, Any]:
    """torch's own reading of this CPU (model name, instruction sets); empty where torch has none."""
    return torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}


def has_amx() -> bool:
    """Whether this CPU has AMX-BF16 tile units."""
    return bool(_cpu_capabilities().get("amx_bf16"))


def cpu_flags() -> str:
    """The CPU's model and the instruction sets that decide precision (for logs and benchmarks)."""
    caps = _cpu_capabilities()
    flags = [f for f in ("avx2", "avx512_f", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni", "avx_vnni")
             if caps.get(f)]
    return f"{caps.get('cpu_name', 'CPU')} ({', '.join(flags) or 'no AVX2'})"


def model_family(arch: Any) -> str:
    """The key of an arch's measured speed behaviour: its space, and the backbone for SimpleBaselines."""
    space = getattr(arch, "space", type(arch).__name__)
    backbone = getattr(arch, "backbone", None)
    return f"{space}-{backbone}" if backbone else str(space)


def supernet_family(space: str) -> str:
    """The key of a supernet's training step, measured apart from its sub-nets' plain training."""
    return f"{space}-supernet"


@dataclass(frozen=True)
class Precision:
    """A resolved choice: ``dtype`` "fp32" or "bf16" (autocast), ``channels_last`` memory format."""

    dtype: str = "fp32"
    channels_last: bool = False

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model in this memory format (in place; parameters keep their values)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def forward(self, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """``model(images)`` in this precision and layout; the output (each, for a tuple) FP32 and contiguous."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self.autocast(images.device):
            out = model(images)
        if self.dtype == "fp32" and not self.channels_last:
            return out
        if isinstance(out, (tuple, list)):  # a multi-resolution (HigherHRNet) or multi-exit (3M-Pose) model
            return type(out)([o.float().contiguous() for o in out]) if isinstance(out, tuple) else \
                [o.float().contiguous() for o in out]
        return out.float().contiguous()

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "channels_last": self.channels_last}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "Precision":
        if not isinstance(data, dict) or data.get("dtype") not in ("fp32", "bf16") or not isinstance(
                data.get("channels_last"), bool):
            raise PosenasError(f"{where}: precision: expected {{dtype: fp32|bf16, channels_last: true|false}}, got {data!r}")
        return cls(data["dtype"], data["channels_last"])

    def describe(self) -> str:
        return f"{self.dtype}{' autocast' if self.dtype != 'fp32' else ''}, {'channels-last' if self.channels_last else 'NCHW'}"


FP32 = Precision()


def resolve_precision(precision: str, channels_last: str | bool, device: torch.device, family: str) -> Precision:
    """``train.precision`` / ``train.channels_last`` for this device and model family.

    ``auto``: bf16 where the hardware has it, except on a CPU for the families in
    :data:`FP32_ON_BF16_CPUS` (unless in :data:`BF16_ON_AMX_CPUS` on a CPU with AMX), else FP32; channels-last under bf16, and under FP32 for the
    families in :data:`CHANNELS_LAST_FP32`. An explicit ``bf16`` is honoured on any device (slow
    where emulated; the run says so).
    """
    if precision not in PRECISIONS:
        raise PosenasError(f"config.train.precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if channels_last not in CHANNELS_LAST:
        raise PosenasError(f"config.train.channels_last: expected auto, true or false, got {channels_last!r}")
    if precision == "auto":
        faster = device.type == "cuda" or family not in FP32_ON_BF16_CPUS or (family in BF16_ON_AMX_CPUS and has_amx())
        dtype = "bf16" if native_bf16(device) and faster else "fp32"
    else:
        dtype = precision
    if channels_last == "auto":
        channels_last = dtype == "bf16" or family in CHANNELS_LAST_FP32
    return Precision(dtype, bool(channels_last))


def emulation_warning(chosen: Precision, device: torch.device) -> str | None:
    """A line for an explicit bf16 on hardware that emulates it (measured ~25x slower per matmul)."""
    if chosen.dtype == "bf16" and not native_bf16(device):
        return (f"train.precision bf16 on {cpu_flags() if device.type == 'cpu' else device}: this hardware has no "
                "native bf16, so it is emulated and much slower than fp32 (use auto or fp32 for speed)")
    return None
