import json

import numpy as np

from posenas.data.layout import load_dataset
from posenas.engine.predict import InstancePrediction
from posenas.report import draw_predictions, plot_training

from conftest import make_dataset


def test_training_curve_plot_from_metrics(tmp_path):
    rows = [{"step": s, "epoch": 0, "loss": 0.005 / s, "lr": 1e-3} for s in range(1, 20)]
    rows.append({"step": 19, "epoch": 0, "val": {"metric": "pckh", "PCKh@0.5": {"mean": 40.0}}})
    rows.append({"step": 38, "epoch": 1, "val": {"metric": "pckh", "PCKh@0.5": {"mean": None}}})
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 40, "lo')  # torn last line
    png = plot_training(path, tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_draw_predictions_writes_images_with_predictions(tmp_path):
    make_dataset("coco", tmp_path / "ds", images=3, people=1)
    ds = load_dataset(tmp_path / "ds")
    kp = np.zeros((17, 3), np.float32)
    kp[:, :2], kp[:, 2] = 10.0, 0.9
    preds = [InstancePrediction(image_id=2, person_id=201, keypoints=kp, score=0.8, box=np.array([0, 0, 20, 20]))]
    written = draw_predictions(ds, preds, tmp_path / "out")
    assert [p.name for p in written] == ["000002.jpg"]
