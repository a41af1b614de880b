"""Synthetic-people generation speed: render only, and the full `data synth` per format.

Run: .venv/bin/python benchmarks/synthetic_speed.py [--images N]
Prints a Markdown table for docs/benchmarks.md. Everything is measured in one run so the
rows compare on the same (shared, noisy) machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from posenas.synthetic.generate import default_spec, synthesize
from posenas.synthetic.scene import SceneConfig, render_image


def render_rate(n: int, config: SceneConfig) -> float:
    start = time.perf_counter()
    for i in range(n):
        render_image(i, config)
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400, help="images per measurement")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores, Python {platform.python_version()}")
    print()
    print("| what | images | workers | seconds | images/s |")
    print("|---|---:|---:|---:|---:|")
    rate = render_rate(args.images, SceneConfig())
    print(f"| render only, 256×256, ≤3 people | {args.images} | 1 | {args.images / rate:.2f} | {rate:.0f} |")
    for fmt in ("coco", "mpii", "posetrack"):
        count = {"train": 0, "val": args.images} if fmt != "posetrack" else {"train": 0, "val": max(1, args.images // 30)}
        for workers in sorted({1, cores}):
            with tempfile.TemporaryDirectory() as tmp:
                report = synthesize(Path(tmp) / "ds", default_spec(fmt, **count), workers=workers, progress=False)
            frames = report["counts"]["val"]["images"]
            print(f"| `data synth --format {fmt}` (render + JPEG + JSON) | {frames} | {workers} | "
                  f"{report['seconds']:.2f} | {report['images_per_second']:.0f} |")
    with tempfile.TemporaryDirectory() as tmp:
        report = synthesize(Path(tmp) / "ds", default_spec("coco"), progress=False)
    n = sum(c["images"] for c in report["counts"].values())
    print(f"| default demo dataset (`data synth --format coco`, train+val) | {n} | {report['workers']} | "
          f"{report['seconds']:.2f} | {report['images_per_second']:.0f} |")


if __name__ == "__main__":
    main()
