"""Reference predictions: ground truth with controlled noise, to exercise the evaluators.

The evaluation tests use them as predictions of known quality. The noise is scaled like
OKS (per-joint sigma × object scale), so ``noise`` means the same for every joint and
person size. The entries are those of a predictions file, so they are in the annotation
file's frame (:attr:`PoseDataset.file_origin`: MPII 1-based).
"""

from __future__ import annotations

import numpy as np

from posenas.data.records import PoseDataset, to_file_frame


def jittered_keypoints(dataset: PoseDataset, noise: float = 0.5, seed: int = 0) -> list[tuple[int, int, np.ndarray]]:
    """``(image_id, person_id, keypoints (K, 3) with a score)`` per instance (non-crowd, ≥ 1 labelled joint), GT moved by Gaussian noise.

    Per axis the displacement has std ``noise × 2σ_j × sqrt(w·h)`` of the person box.
    Unlabelled joints are put at the box centre with a low score.
    """
    rng = np.random.default_rng(seed)
    k = 2.0 * np.asarray(dataset.schema.sigmas, dtype=np.float64)
    out = []
    for img, person in dataset.instances():
        x, y, w, h = person.box()
        scale = float(np.sqrt(max(w * h, 1.0)))
        kp = person.keypoints.astype(np.float64)
        labelled = kp[:, 2] > 0
        pred = np.empty_like(kp)
        pred[:, :2] = kp[:, :2] + rng.normal(size=(len(kp), 2)) * (noise * k * scale)[:, None]
        pred[~labelled, :2] = (x + w / 2, y + h / 2)
        pred[:, 2] = np.where(labelled, 0.9, 0.05)
        out.append((img.id, person.id, pred.astype(np.float32)))
    return out


def _in_file_frame(dataset: PoseDataset, kp: np.ndarray) -> np.ndarray:
    return to_file_frame(kp, dataset.file_origin)


def coco_results(dataset: PoseDataset, noise: float = 0.5, seed: int = 0) -> list[dict]:
    """COCO results JSON entries; the instance score is the mean joint score."""
    return [
        {
            "image_id": image_id,
            "category_id": 1,
            "keypoints": [round(float(v), 2) for v in _in_file_frame(dataset, kp).reshape(-1)],
            "score": round(float(kp[:, 2].mean()), 4),
        }
        for image_id, _, kp in jittered_keypoints(dataset, noise, seed)
    ]


def pckh_records(dataset: PoseDataset, noise: float = 0.5, seed: int = 0) -> list[dict]:
    """PCKh prediction records ``{"id", "keypoints": [[x, y, score], ...]}`` for every person."""
    return [
        {"id": pid, "keypoints": [[round(float(v), 2) for v in row] for row in _in_file_frame(dataset, kp)]}
        for _, pid, kp in jittered_keypoints(dataset, noise, seed)
    ]
