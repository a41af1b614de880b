"""`make demo`: the end-to-end demo on the built-in synthetic data.

For now (before models exist) it generates the synthetic datasets if absent, validates
them, draws a few annotated examples, and evaluates reference predictions (ground truth
with OKS-scaled noise) with COCO AP and PCKh. Later stages extend it with training.
"""

from __future__ import annotations

from pathlib import Path

from posenas.data.check import check_images
from posenas.data.layout import load_dataset
from posenas.evaluation import evaluate_file
from posenas.evaluation.reference import coco_results, pckh_records
from posenas.jsonio import write_json
from posenas.synthetic.generate import default_spec, synthesize
from posenas.visualize import show_dataset

#: The demo's reference predictions: GT moved by this much OKS-scaled noise.
REFERENCE_NOISE = 0.25


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run_demo(out: Path, data: Path) -> dict:
    specs = {
        "coco": default_spec("coco"),
        "mpii": default_spec("mpii", train=0, val=300),
    }
    metrics = {}
    for fmt, spec in specs.items():
        root = data / fmt
        _step(f"synthetic {fmt} data in {root}")
        report = synthesize(root, spec)
        if "seconds" in report:
            print(f"generated in {report['seconds']:.1f} s ({report['images_per_second']:.0f} images/s)")
        else:
            print("already there (same settings)")
        val = load_dataset(root, "val")
        check_images(val)
        print(f"checked val split: " + ", ".join(f"{k} {v}" for k, v in val.counts().items()))

        examples = show_dataset(val, out / "examples" / fmt, limit=6, progress=False)
        print(f"drew {len(examples)} annotated examples into {out / 'examples' / fmt}")

        _step(f"evaluating reference predictions on {fmt} val (GT + noise {REFERENCE_NOISE})")
        pred_path = out / f"reference_predictions_{fmt}.json"
        preds = coco_results(val, REFERENCE_NOISE) if fmt == "coco" else pckh_records(val, REFERENCE_NOISE)
        write_json(pred_path, preds)
        metric, result, table = evaluate_file(val, pred_path)
        print(table)
        metrics[fmt] = {"metric": metric, **result}
    write_json(out / "metrics.json", metrics, indent=2)
    _step(f"done: results in {out}")
    return metrics
