"""The AP ceiling of each codec and input size on the synthetic val split (`posenas eval --oracle`).

Run: .venv/bin/python benchmarks/codec_oracle.py [--data data/synthetic/coco] [--out runs/codec_oracle]

No model is trained: the ground truth is encoded into the training targets (top-down crops'
heatmaps; bottom-up whole-image heatmaps + ideal tags) and decoded with the real decoders, then
scored with COCO OKS AP. The data is made (`data synth`, default settings) when absent. Each (codec, size) result is appended to OUT/results.jsonl as it finishes, so a rerun
continues; the table printed at the end is the one docs/benchmarks.md records.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from posenas.data.layout import load_dataset
from posenas.engine.oracle import evaluate_oracle
from posenas.engine.precision import cpu_flags
from posenas.jsonio import JsonlLog

#: Input sizes (height, width) per codec: the field's and smaller ones a CPU can afford.
SIZES = {
    "topdown": [(256, 192), (128, 96), (96, 72), (64, 48)],
    "bottomup": [(512, 512), (384, 384), (256, 256), (192, 192), (128, 128)],
}


def ensure_data(root: Path) -> None:
    if (root / "annotations").exists():
        return
    from posenas.synthetic.generate import default_spec, synthesize

    synthesize(root, default_spec("coco"), progress=True)  # the demo's dataset: `make demo` reuses it


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/synthetic/coco")
    ap.add_argument("--out", default="runs/codec_oracle")
    args = ap.parse_args()
    root, out = Path(args.data), Path(args.out)
    ensure_data(root)
    dataset = load_dataset(root, "val")
    out.mkdir(parents=True, exist_ok=True)
    log = JsonlLog(out / "results.jsonl")
    done = {(r["codec"], tuple(r["input"])): r for r in log.records}
    print(f"machine: {platform.processor() or platform.machine()}, flags: {cpu_flags()}")
    print(f"{len(dataset.images)} val images, {len(dataset.instances())} people")
    for codec, sizes in SIZES.items():
        for size in sizes:
            if (codec, size) in done:
                continue
            start = time.perf_counter()
            _, result, _ = evaluate_oracle(dataset, codec, size, progress=False)
            row = {"codec": codec, "input": list(size), "seconds": round(time.perf_counter() - start, 1),
                   **{k: result[k] for k in ("AP", "AP50", "AP75", "APM", "APL", "AR")}}
            log.append(row)
            done[(codec, size)] = row
            print(json.dumps(row))
    print("\n| codec | input | heatmap | AP | AP50 | AP75 | APM | APL | AR |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for codec, sizes in SIZES.items():
        for h, w in sizes:
            r = done[(codec, (h, w))]
            print(f"| {codec} | {h}×{w} | {h // 4}×{w // 4} | " + " | ".join(
                f"{r[k]:.3f}" for k in ("AP", "AP50", "AP75", "APM", "APL", "AR")) + " |")


if __name__ == "__main__":
    main()
