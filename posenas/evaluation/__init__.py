"""Evaluation: COCO OKS AP / AR (through pycocotools' COCOeval), MPII PCKh and PoseTrack's per-joint mAP."""

from pathlib import Path

from posenas.data.records import PoseDataset
from posenas.errors import PosenasError
from posenas.jsonio import read_json

from posenas.evaluation.coco import (
    COCO_METRIC_KEYS,
    coco_ground_truth,
    coco_predictions,
    evaluate_coco,
    format_coco_table,
    load_coco_predictions,
)
from posenas.evaluation.pckh import PCKH_ROWS, format_pckh_table, load_pckh_predictions, pckh, pckh_predictions
from posenas.evaluation.posetrack import POSETRACK_COLUMNS, format_posetrack_table, posetrack_joint_ap, posetrack_map

#: Metrics ``score`` / ``evaluate_records`` know; ``posetrack`` takes COCO results, like ``coco``.
METRICS = ("coco", "pckh", "posetrack")

__all__ = [
    "COCO_METRIC_KEYS",
    "METRICS",
    "PCKH_ROWS",
    "POSETRACK_COLUMNS",
    "coco_ground_truth",
    "coco_predictions",
    "default_metric",
    "evaluate_file",
    "evaluate_records",
    "score",
    "evaluate_coco",
    "format_coco_table",
    "format_pckh_table",
    "format_posetrack_table",
    "load_coco_predictions",
    "load_pckh_predictions",
    "pckh",
    "pckh_predictions",
    "posetrack_joint_ap",
    "posetrack_map",
]


def default_metric(dataset: PoseDataset) -> str:
    """PCKh for MPII-style data (head boxes, single-person records), COCO OKS AP otherwise."""
    return "pckh" if dataset.format == "mpii" else "coco"


def score(dataset: PoseDataset, metric: str, predictions) -> tuple[dict, str]:
    """(result, printable table) for in-memory predictions: a COCO results list for
    ``coco`` and ``posetrack``, ``{person id: (K, 3) array}`` for ``pckh``."""
    if metric == "coco":
        stats = evaluate_coco(dataset, predictions)
        return stats, format_coco_table(stats)
    if metric == "pckh":
        result = pckh(dataset, predictions)
        return result, format_pckh_table(result)
    if metric == "posetrack":
        result = posetrack_map(dataset, predictions)
        return result, format_posetrack_table(result)
    raise PosenasError(f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")


def evaluate_records(dataset: PoseDataset, records: object, metric: str | None = None,
                     where: str = "predictions") -> tuple[str, dict, str]:
    """Score a predictions file's content (file frame, see :attr:`PoseDataset.file_origin`):
    (metric, result dict, printable table). Runs that write a predictions file score it
    through here, so that the file evaluates to exactly the numbers they report."""
    metric = metric or default_metric(dataset)
    if metric not in METRICS:
        raise PosenasError(f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
    parse = pckh_predictions if metric == "pckh" else coco_predictions
    return (metric, *score(dataset, metric, parse(records, dataset, where)))


def evaluate_file(dataset: PoseDataset, pred_path: Path, metric: str | None = None) -> tuple[str, dict, str]:
    """Evaluate a predictions file: returns (metric, result dict, printable table)."""
    return evaluate_records(dataset, read_json(pred_path), metric, str(pred_path))
