"""`make demo`: the end-to-end demo on the built-in synthetic data.

Generates the synthetic COCO-format dataset if absent, validates it, trains the small
SimpleBaseline for a few minutes on the CPU (resuming an interrupted demo run), reports
the final validation (flip test) and writes a short report into the run directory: the AP table,
the training curve and drawn example predictions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from posenas.config import load_config
from posenas.data.check import check_images
from posenas.data.layout import load_dataset
from posenas.engine.config import ExperimentConfig
from posenas.engine.predict import InstancePrediction
from posenas.engine.train import resolve_arch, train
from posenas.jsonio import read_json, read_text, write_text
from posenas.report import draw_predictions, plot_training
from posenas.resources import resolve_config
from posenas.synthetic.generate import default_spec, ensure_synthetic
from posenas.visualize import show_dataset


#: Drawn examples: the same first images of val, once with ground truth and once with predictions.
EXAMPLES = 8


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run_demo(out: Path, data: Path, config: Path) -> dict:
    root = data / "coco"
    # The config (a path or a shipped name) and its model are checked before minutes of data generation.
    cfg = load_config(ExperimentConfig, resolve_config(config), [f"data.root={root}"])
    resolve_arch(cfg.model)
    _step(f"synthetic people (COCO format) in {root}")
    report = ensure_synthetic(root, default_spec("coco"))
    print(f"generated in {report['seconds']:.1f} s ({report['images_per_second']:.0f} images/s)"
          if "seconds" in report else "already there (same settings)")
    val = load_dataset(root, "val")
    check_images(val)
    print("val split: " + ", ".join(f"{k} {v}" for k, v in val.counts().items()))
    show_dataset(val, out / "examples" / "ground_truth", limit=EXAMPLES, progress=False)

    run = out / "train"
    _step(f"training {cfg.model.name if cfg.model.arch is None else 'model'} from {config} into {run}")
    if (run / "results.json").exists():
        print("already trained (delete the run folder to train again)")  # results.json: final validation done
    else:
        train(cfg, run, resume=(run / "checkpoints" / "last.pt").exists())

    # Training ends with a validation of the final model on all of val (GT boxes, flip test
    # as configured): the demo reports it rather than predicting the same crops again.
    _step("validation of the trained model (GT boxes)")
    result = read_json(run / "results.json")
    table = read_text(run / "results.txt").rstrip()
    preds = [InstancePrediction(r["image_id"], -1, np.asarray(r["keypoints"], np.float32).reshape(-1, 3), r["score"], None)
             for r in read_json(run / "val_predictions.json")]
    print(table)
    plot = plot_training(run / "metrics.jsonl", out / "training_curve.png")
    drawn = draw_predictions(val, preds, out / "examples" / "predictions", limit=EXAMPLES)

    lines = [
        "# posenas demo report", "",
        f"Model: `{cfg.model.name}` trained with `{config}` on `{root}` "
        f"(input {cfg.data.input_size[0]}×{cfg.data.input_size[1]}).", "",
        f"## Validation (GT boxes{', flip test' if cfg.train.flip_test else ''})", "", "```", table, "```", "",
        "## Training curve", "", f"![training curve]({plot.name})", "",
        "## Example predictions", "",
        *[f"![{p.name}]({p.relative_to(out).as_posix()})" for p in drawn], "",
        f"Ground-truth examples: `examples/ground_truth/`. Predictions: `train/val_predictions.json`. "
        f"Checkpoints: `train/checkpoints/` (evaluate again with `posenas eval --checkpoint "
        f"{run / 'checkpoints' / 'last.pt'} --data {root} --flip-test`).", "",
    ]
    write_text(out / "report.md", "\n".join(lines))
    _step(f"done: report in {out / 'report.md'}")
    return result
