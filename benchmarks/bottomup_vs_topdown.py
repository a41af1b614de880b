"""Bottom-up vs top-down on the synthetic multi-person data at an equal training budget (issue 20, item 6).

Run: .venv/bin/python benchmarks/bottomup_vs_topdown.py [--minutes 10] [--out runs/bottomup_vs_topdown]

Two models of the same backbone and head, trained for the same wall-clock budget on the default
synthetic COCO data (256×256 images of 1–3 people):

- top-down ``simplebaseline-small`` (configs/baselines/tiny.yaml: 128×96 person crops), evaluated
  on GT boxes (the usual top-down number, a perfect detector) and on one whole-image box per image
  (what ``posenas infer`` does without a detector);
- bottom-up ``simplebaseline-small-ae`` (configs/bottomup/tiny.yaml's recipe at 256×256, the images'
  own size, where the AE codec's ceiling equals the top-down one at 128×96: 0.958 vs 0.957,
  docs/benchmarks.md "Codec ceilings"), evaluated on whole images.

The budget: each model's steps are set so that its training takes ``--minutes`` on this machine,
from a step time calibrated on 20 steps first (written to plan.json, so a resumed run keeps it).
Then inference speed: images/s of each pipeline (the Python API, batch of one image, with the flip
test, 2 threads) on synthetic images of exactly 1, 2, 4, 6 and 8 people — top-down cost grows
with the number of people (one crop each, GT boxes), bottom-up should stay flat. Every stage is
resumable (train runs resume, results are cached in OUT); the tables print at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import posenas
from posenas.config import load_config
from posenas.engine.config import ExperimentConfig
from posenas.engine.evaluate import evaluate_checkpoint
from posenas.engine.precision import cpu_flags
from posenas.engine.train import Interrupted, train
from posenas.jsonio import read_json, read_jsonl, write_json
from posenas.synthetic.scene import SceneConfig, render_image

DATA = "data/synthetic/coco"
PIPELINES = {
    "topdown": ("configs/baselines/tiny.yaml", []),
    "bottomup": ("configs/bottomup/tiny.yaml", ["data.input_size=[256,256]"]),
}
PEOPLE = (1, 2, 4, 6, 8)
CALIBRATION_STEPS = 20


def config(name: str, data: str, steps: int, *more: str) -> ExperimentConfig:
    recipe, extra = PIPELINES[name]
    return load_config(ExperimentConfig, recipe, [f"data.root={data}", "train.epochs=1000", f"train.max_steps={steps}",
                                                  "train.val_every=0", "train.checkpoint_every=200", *extra, *more])


def seconds_per_step(name: str, data: str, out: Path) -> float:
    """Calibrate: the median step time of steps 6..20 of a short run (loader and step together)."""
    run = out / f"calibrate-{name}"
    if not (run / "results.json").exists():
        train(config(name, data, CALIBRATION_STEPS, "train.log_every=1", "data.val_max_images=8"), run, resume=(run / "checkpoints" / "last.pt").exists(),
              progress=False)
    seconds = [r["seconds"] for r in read_jsonl(run / "metrics.jsonl") if "seconds" in r]
    return statistics.median(np.diff(seconds[4:]))


def exact_people_images(n: int, count: int) -> list[np.ndarray]:
    """``count`` synthetic BGR images with exactly ``n`` people each, and their boxes."""
    out, seed = [], 0
    cfg = SceneConfig(max_people=n)
    while len(out) < count:
        rendered = render_image(10_000 * n + seed, cfg)
        seed += 1
        if len(rendered.people) == n:
            out.append((rendered.image, [p.bbox.tolist() for p in rendered.people]))
    return out


def images_per_second(ckpt: Path, images: list, top_down: bool) -> float:
    predictor = posenas.load(ckpt, device="cpu")
    predictor.predict(images[0][0], boxes=images[0][1] if top_down else None)  # warm-up
    times = []
    for image, boxes in images:
        start = time.perf_counter()
        predictor.predict(image, boxes=boxes if top_down else None)
        times.append(time.perf_counter() - start)
    return 1.0 / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--out", default="runs/bottomup_vs_topdown")
    ap.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget per model")
    ap.add_argument("--speed-images", type=int, default=20, help="images per people count in the speed test")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    print(f"machine: {cpu_flags()}; budget {args.minutes:g} min per model")
    plan_path = out / "plan.json"
    plan = read_json(plan_path) if plan_path.exists() else {}
    for name in PIPELINES:
        if name not in plan:
            step = seconds_per_step(name, args.data, out)
            plan[name] = {"seconds_per_step": step, "steps": max(50, int(args.minutes * 60 / step))}
            write_json(plan_path, plan, indent=2)
        print(f"{name}: {plan[name]['seconds_per_step']:.3f} s/step -> {plan[name]['steps']} steps")

    results = read_json(out / "results.json") if (out / "results.json").exists() else {}
    for name in PIPELINES:
        run = out / name
        if not (run / "results.json").exists():
            try:
                train(config(name, args.data, plan[name]["steps"]), run,
                      resume=(run / "checkpoints" / "last.pt").exists())
            except Interrupted:
                raise SystemExit(f"stopped; rerun the same command to continue ({run})")
        ckpt = run / "checkpoints" / "last.pt"
        minutes = max(r["seconds"] for r in read_jsonl(run / "metrics.jsonl") if "seconds" in r) / 60
        evals = {"bottomup": [("whole images", None)],
                 "topdown": [("GT boxes", None), ("whole-image boxes", "whole")]}[name]
        for label, boxes in evals:
            key = f"{name} / {label}"
            if key in results:
                continue
            boxes_file = None
            if boxes == "whole":
                from posenas.data.layout import load_dataset

                val = load_dataset(args.data, "val")
                boxes_file = out / "whole_image_boxes.json"
                write_json(boxes_file, [{"image_id": img.id, "category_id": 1, "score": 1.0,
                                         "bbox": [0, 0, img.width, img.height]} for img in val.images])
            _, stats, _, _ = evaluate_checkpoint(ckpt, args.data, out / "eval" / key.replace(" / ", "-").replace(" ", "_"),
                                                 flip_test=True, boxes=boxes_file, progress=False)
            results[key] = {"minutes": round(minutes, 1), "steps": plan[name]["steps"],
                            **{k: stats[k] for k in ("AP", "AP50", "APM", "APL", "AR")}}
            write_json(out / "results.json", results, indent=2)
        for n in PEOPLE:
            key = f"speed {name} {n}"
            if key not in results:
                results[key] = images_per_second(ckpt, exact_people_images(n, args.speed_images), name == "topdown")
                write_json(out / "results.json", results, indent=2)

    print("\n| model / evaluation | train steps | train min | AP | AP50 | APM | APL | AR |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, r in results.items():
        if not key.startswith("speed"):
            print(f"| {key} | {r['steps']} | {r['minutes']} | " + " | ".join(
                f"{r[k]:.3f}" for k in ("AP", "AP50", "APM", "APL", "AR")) + " |")
    print("\n| people per image | " + " | ".join(map(str, PEOPLE)) + " |")
    print("|---|" + "---:|" * len(PEOPLE))
    for name in PIPELINES:
        print(f"| {name} images/s | " + " | ".join(f"{results[f'speed {name} {n}']:.1f}" for n in PEOPLE) + " |")
    print(json.dumps({"machine": cpu_flags()}))


if __name__ == "__main__":
    main()
