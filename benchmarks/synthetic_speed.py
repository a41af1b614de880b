"""Synthetic-people generation speed (render only, and the full `data synth` per format) and label statistics.

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

import numpy as np

from posenas.data.layout import load_dataset
from posenas.synthetic.generate import default_spec, synthesize
from posenas.synthetic.scene import SceneConfig, render_image


def render_rate(n: int, config: SceneConfig) -> float:
    start = time.perf_counter()
    for i in range(n):
        render_image(i, config)
    return n / (time.perf_counter() - start)


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def label_statistics(root: Path) -> None:
    """Shares of people per image, visibility kinds, overlapping boxes, people cut by the frame."""
    ds = load_dataset(root, "val")
    n = len(ds.images)
    people = np.array([len(img.people) for img in ds.images])
    v = np.concatenate([p.keypoints[:, 2] for img in ds.images for p in img.people])
    overlapping = sum(
        any(_overlap(a.bbox, b.bbox) for i, a in enumerate(img.people) for b in img.people[i + 1 :]) for img in ds.images
    )
    cut = np.mean([(p.keypoints[:, 2] == 0).any() for img in ds.images for p in img.people])
    counts = " / ".join(f"{100 * np.mean(people == k):.1f} %" for k in range(people.max() + 1))
    print()
    print(f"label statistics over {n} val images of the default coco dataset:")
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| images with {' / '.join(str(k) for k in range(people.max() + 1))} annotated people | {counts} |")
    print(f"| joints visible / occluded / outside the image | {100 * np.mean(v == 2):.1f} % / "
          f"{100 * np.mean(v == 1):.1f} % / {100 * np.mean(v == 0):.1f} % |")
    print(f"| images where person boxes overlap | {100 * overlapping / n:.1f} % |")
    print(f"| people with at least one joint outside the image | {100 * cut:.1f} % |")


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
        label_statistics(Path(tmp) / "ds")


if __name__ == "__main__":
    main()
