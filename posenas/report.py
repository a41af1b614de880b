"""Run reports: the training curve plot and drawn example predictions."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on these machines
import matplotlib.pyplot as plt  # noqa: E402

from posenas.data.images import encode_jpeg, read_image  # noqa: E402
from posenas.data.records import PoseDataset  # noqa: E402
from posenas.engine.predict import InstancePrediction  # noqa: E402
from posenas.jsonio import read_jsonl, write_bytes  # noqa: E402
from posenas.visualize import draw_person, output_name  # noqa: E402

PRIMARY_KEYS = {"coco": "AP", "pckh": "PCKh@0.5"}


def plot_training(metrics_path: Path, out: Path) -> Path:
    """Loss against step (log scale) and the validation metric against step, one figure."""
    rows = read_jsonl(metrics_path)
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", lw=1, label="train loss")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("heatmap MSE loss", color="tab:blue")
    if val:
        metric = val[0]["val"]["metric"]
        key = PRIMARY_KEYS[metric]
        values = [r["val"][key]["mean"] if metric == "pckh" else r["val"][key] for r in val]
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in val], values, "o-", color="tab:red", label=f"val {key}")
        ax2.set_ylabel(f"val {key}", color="tab:red")
    ax.set_title("training curve")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def draw_predictions(dataset: PoseDataset, preds: list[InstancePrediction], out: Path, limit: int = 8,
                     min_score: float = 0.2) -> list[Path]:
    """Draw the predictions of the first ``limit`` images that have any."""
    by_image: dict[int, list[InstancePrediction]] = {}
    for p in preds:
        by_image.setdefault(p.image_id, []).append(p)
    written = []
    for img in dataset.images:
        if img.id not in by_image:
            continue
        canvas = read_image(dataset.image_path(img))
        for p in by_image[img.id]:
            draw_person(canvas, p.keypoints, dataset.schema, label=f"{p.score:.2f}", min_score=min_score, show_scores=True)
        target = out / output_name(img.file_name)
        write_bytes(target, encode_jpeg(canvas))
        written.append(target)
        if len(written) >= limit:
            break
    return written
