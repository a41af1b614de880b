"""`posenas eval --checkpoint`: run a checkpoint over a dataset's GT boxes or detections and score it."""

from __future__ import annotations

from pathlib import Path

import torch

from posenas.runtime import load_model
from posenas.data.boxes import load_detections
from posenas.data.layout import load_dataset
from posenas.engine.distributed import resolve_device
from posenas.engine.predict import InstancePrediction, prediction_records
from posenas.engine.task import task_of_codec
from posenas.errors import PosenasError
from posenas.evaluation import default_metric
from posenas.jsonio import write_json, write_text


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    split: str | None = None,
    flip_test: bool = False,
    boxes: str | Path | None = None,
    headboxes: str | Path | None = None,
    metric: str | None = None,
    device: str = "auto",
    runtime: str = "torch",
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = True,
) -> tuple[str, dict, str, list[InstancePrediction]]:
    """Predict and score; writes ``predictions.json``, ``metrics.json`` and ``metrics.txt`` into ``out``.

    ``headboxes``: MPII's ground-truth .mat for MPII JSON without head boxes (PCKh needs
    them). ``predictions.json`` is in the frame of ``data``'s annotation files (MPII:
    1-based), so ``posenas eval --gt data --pred predictions.json`` gives the same numbers.
    Returns (metric, result, printable table, predictions).
    """
    loaded = load_model(checkpoint, runtime)
    dataset = load_dataset(data, split, headboxes=headboxes)
    if dataset.schema != loaded.schema:
        raise PosenasError(
            f"{checkpoint}: the model predicts {loaded.schema.name} joints but {dataset.source} is {dataset.schema.name}"
        )
    metric = metric or default_metric(dataset)
    detections = None
    if boxes is not None:
        if metric == "pckh":
            raise PosenasError(f"{boxes}: PCKh scores each GT person and needs the GT boxes; drop --boxes")
        detections = load_detections(boxes, image_ids={img.id for img in dataset.images})
    dev = resolve_device(device) if runtime == "torch" else torch.device("cpu")
    metric, result, table, preds = task_of_codec(loaded.codec, loaded.arch).evaluate(
        loaded.model.to(dev), dataset, loaded.codec, dev, metric, boxes=detections, flip_test=flip_test,
        batch_size=batch_size, workers=workers, progress=progress,
    )
    out = Path(out)
    write_json(out / "predictions.json", prediction_records(preds, metric))
    write_json(out / "metrics.json", {"metric": metric, "runtime": runtime, "flip_test": flip_test,
                                      "boxes": str(boxes) if boxes else "gt",
                                      **({"headboxes": str(headboxes)} if headboxes else {}), **result}, indent=2)
    write_text(out / "metrics.txt", table + "\n")
    return metric, result, table, preds
