"""Evaluation: COCO OKS AP / AR (through pycocotools' COCOeval) and MPII PCKh."""

from pathlib import Path

from posenas.data.records import PoseDataset
from posenas.errors import PosenasError

from posenas.evaluation.coco import (
    COCO_METRIC_KEYS,
    coco_ground_truth,
    evaluate_coco,
    format_coco_table,
    load_coco_predictions,
)
from posenas.evaluation.pckh import PCKH_ROWS, format_pckh_table, load_pckh_predictions, pckh

__all__ = [
    "COCO_METRIC_KEYS",
    "PCKH_ROWS",
    "coco_ground_truth",
    "default_metric",
    "evaluate_file",
    "score",
    "evaluate_coco",
    "format_coco_table",
    "format_pckh_table",
    "load_coco_predictions",
    "load_pckh_predictions",
    "pckh",
]


def default_metric(dataset: PoseDataset) -> str:
    """PCKh for MPII-style data (head boxes, single-person records), COCO OKS AP otherwise."""
    return "pckh" if dataset.format == "mpii" else "coco"


def score(dataset: PoseDataset, metric: str, predictions) -> tuple[dict, str]:
    """(result, printable table) for in-memory predictions: a COCO results list for
    ``coco``, ``{person id: (K, 3) array}`` for ``pckh``."""
    if metric == "coco":
        stats = evaluate_coco(dataset, predictions)
        return stats, format_coco_table(stats)
    if metric == "pckh":
        result = pckh(dataset, predictions)
        return result, format_pckh_table(result)
    raise PosenasError(f"unknown metric {metric!r}; allowed: coco, pckh")


def evaluate_file(dataset: PoseDataset, pred_path: Path, metric: str | None = None) -> tuple[str, dict, str]:
    """Evaluate a predictions file: returns (metric, result dict, printable table)."""
    metric = metric or default_metric(dataset)
    load = load_coco_predictions if metric == "coco" else load_pckh_predictions
    return (metric, *score(dataset, metric, load(pred_path, dataset)))
