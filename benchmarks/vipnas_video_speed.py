"""Single-thread frames/s of paper-sized T-ViPNAS sequences vs S-ViPNAS-Res50 on every frame.

Run: .venv/bin/python benchmarks/vipnas_video_speed.py [--sequences 3] [--runs 20] [--seed 0]

The paper (Table 1): T-ViPNAS-Res50 runs at 41 fps at 0.82 GFLOPs (average over the key and
the T = 3 non-key frames, 256x192, one CPU core), S-ViPNAS-Res50 at 1.44 GFLOPs per frame.
Here: ``--sequences`` frame-arch sequences drawn (seeded) from configs/vipnas/paper-posetrack.yaml's
supernet under its 0.82 average-GMACs budget, key net S-ViPNAS-Res50, untrained weights
(speed does not depend on them); each net timed at batch 1, one thread, median of ``--runs``,
in PyTorch eager and in ONNX Runtime (the exported graphs `posenas export` writes: the key
net rewritten, the T-ViPNets as they are). fps = (T + 1) / (key ms + the T nets' ms).
"""

from __future__ import annotations

import argparse
import json
import random
import sys

import torch

from posenas.config import load_config
from posenas.cost import count_macs, time_calls
from posenas.engine.precision import cpu_flags
from posenas.export import onnx_bytes
from posenas.runtime import OnnxPoseModel
from posenas.search.vipnas_video import VideoSearchExperimentConfig
from posenas.spaces.vipnas import derive
from posenas.spaces.vipnas_video import TemporalNet, average_gmacs, frame_macs, sample_frames

CONFIG = "configs/vipnas/paper-posetrack.yaml"


def latency_ms(call, x, runs: int) -> float:
    with torch.inference_mode():
        return time_calls(call, x, 3, runs)["median"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sequences", type=int, default=3)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(VideoSearchExperimentConfig, CONFIG)
    s, size = cfg.supernet, tuple(cfg.data.input_size)
    k = 17
    key_arch = cfg.key_arch()
    key = derive(key_arch, k).eval()
    key_gmacs = count_macs(key, size)[0] / 1e9
    x = torch.randn(1, 3, *size)
    heat = torch.rand(1, k, size[0] // 4, size[1] // 4)
    key_onnx = OnnxPoseModel.from_bytes(onnx_bytes(key, size), threads=1)
    key_ms = {"torch": latency_ms(key, x, args.runs), "onnx": latency_ms(key_onnx, x, args.runs)}
    rows = [{"model": "S-ViPNAS-Res50 every frame", "gmacs": round(key_gmacs, 3),
             **{f"{rt}_fps": round(1000 / ms, 1) for rt, ms in key_ms.items()}}]
    rng = random.Random(f"video-speed:{args.seed}")
    drawn = 0
    while drawn < args.sequences:
        frames = sample_frames(s.spatial, s.parsed_choices(), s.frames, s.fusion_stages, s.fusion_ops, rng)
        gmacs = average_gmacs(key_gmacs, [frame_macs(f, k, size) / 1e9 for f in frames])
        if gmacs > cfg.search.max_gmacs:
            continue
        drawn += 1
        ms = {rt: [key_ms[rt]] for rt in key_ms}
        for f in frames:
            net = TemporalNet(f, k).eval()
            ms["torch"].append(latency_ms(lambda i, n=net: n(i, heat), x, args.runs))
            graph = OnnxPoseModel.from_bytes(onnx_bytes(net, size, heatmap_input=(k, *heat.shape[-2:])), threads=1)
            ms["onnx"].append(latency_ms(lambda i, g=graph: g(i, heat), x, args.runs))
        rows.append({"model": f"T-ViPNAS sequence {drawn} (fusions {[fr.fusion.to_json() for fr in frames]})",
                     "gmacs": round(gmacs, 3),
                     **{f"{rt}_fps": round(1000 * len(v) / sum(v), 1) for rt, v in ms.items()},
                     "frame_ms_torch": [round(v, 2) for v in ms["torch"]],
                     "frame_ms_onnx": [round(v, 2) for v in ms["onnx"]]})
    print(f"machine: {cpu_flags()}; 1 thread, batch 1, {size[0]}x{size[1]}, median of {args.runs}")
    print("| model | avg GMACs | PyTorch fps | ONNX Runtime fps |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['gmacs']} | {r['torch_fps']} | {r['onnx_fps']} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
