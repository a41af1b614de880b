"""`make demo`: the end-to-end demo on the built-in synthetic data.

Generates the synthetic COCO-format dataset if absent, validates it, trains the small
SimpleBaseline for a few minutes on the CPU (resuming an interrupted demo run), evaluates
it with the flip test, and writes a short report into the run directory: the AP table,
the training curve and drawn example predictions.
"""

from __future__ import annotations

from pathlib import Path

from posenas.config import load_config
from posenas.data.check import check_images
from posenas.data.layout import load_dataset
from posenas.engine.config import ExperimentConfig
from posenas.engine.evaluate import evaluate_checkpoint
from posenas.engine.train import train
from posenas.jsonio import write_text
from posenas.report import draw_predictions, plot_training
from posenas.synthetic.generate import default_spec, synthesize
from posenas.visualize import show_dataset


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run_demo(out: Path, data: Path, config: Path) -> dict:
    root = data / "coco"
    _step(f"synthetic people (COCO format) in {root}")
    report = synthesize(root, default_spec("coco"))
    print(f"generated in {report['seconds']:.1f} s ({report['images_per_second']:.0f} images/s)"
          if "seconds" in report else "already there (same settings)")
    val = load_dataset(root, "val")
    check_images(val)
    print("val split: " + ", ".join(f"{k} {v}" for k, v in val.counts().items()))
    show_dataset(val, out / "examples" / "ground_truth", limit=6, progress=False)

    run = out / "train"
    cfg = load_config(ExperimentConfig, config, [f"data.root={root}"])
    _step(f"training {cfg.model.name if cfg.model.arch is None else 'model'} from {config} into {run}")
    if (run / "results.json").exists():
        print("already trained (delete the run folder to train again)")  # results.json: final validation done
    else:
        train(cfg, run, resume=(run / "checkpoints" / "last.pt").exists())

    _step("evaluating the trained model on val (GT boxes, flip test)")
    metric, result, table, preds = evaluate_checkpoint(run / "checkpoints" / "last.pt", root, out / "eval",
                                                       flip_test=True)
    print(table)
    plot = plot_training(run / "metrics.jsonl", out / "training_curve.png")
    drawn = draw_predictions(val, preds, out / "examples" / "predictions", limit=8)

    lines = [
        "# posenas demo report", "",
        f"Model: `{cfg.model.name}` trained with `{config}` on `{root}` "
        f"(input {cfg.data.input_size[0]}×{cfg.data.input_size[1]}).", "",
        "## Validation (GT boxes, flip test)", "", "```", table, "```", "",
        "## Training curve", "", f"![training curve]({plot.name})", "",
        "## Example predictions", "",
        *[f"![{p.name}]({p.relative_to(out).as_posix()})" for p in drawn], "",
        f"Ground-truth examples: `examples/ground_truth/`. Predictions: `eval/predictions.json`. "
        f"Checkpoints: `train/checkpoints/`.", "",
    ]
    write_text(out / "report.md", "\n".join(lines))
    _step(f"done: report in {out / 'report.md'}")
    return {"metric": metric, **result}
