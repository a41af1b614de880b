"""Run reports: the training curve plot and drawn example predictions."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on these machines
import matplotlib.pyplot as plt  # noqa: E402

from posenas.data.images import encode_jpeg, read_image  # noqa: E402
from posenas.data.records import PoseDataset  # noqa: E402
from posenas.engine.predict import PRIMARY_METRIC, InstancePrediction, by_image, primary_value  # noqa: E402
from posenas.jsonio import read_jsonl, write_bytes  # noqa: E402
from posenas.visualize import draw_predictions as draw_on, output_name  # noqa: E402

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
        name = PRIMARY_METRIC[metric][1]
        values = [primary_value(metric, r["val"]) for r in val]
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in val], values, "o-", color="tab:red", label=f"val {name}")
        ax2.set_ylabel(f"val {name}", color="tab:red")
    ax.set_title("training curve")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def draw_predictions(dataset: PoseDataset, preds: list[InstancePrediction], out: Path, limit: int = 8,
                     min_score: float = 0.2) -> list[Path]:
    """Draw the predictions of the first ``limit`` images that have any."""
    grouped = by_image(preds)
    written = []
    for img in dataset.images:
        if img.id not in grouped:
            continue
        canvas = read_image(dataset.image_path(img))
        draw_on(canvas, ((p.keypoints, None, p.score) for p in grouped[img.id]), dataset.schema, min_score)
        target = out / output_name(img.file_name)
        write_bytes(target, encode_jpeg(canvas))
        written.append(target)
        if len(written) >= limit:
            break
    return written
