"""Target codecs: keypoints ↔ network outputs (heatmaps), flip test, back-projection, rescoring."""

from posenas.codecs.heatmap import HeatmapCodec, back_project, flip_back, instance_scores

__all__ = ["HeatmapCodec", "back_project", "flip_back", "instance_scores"]
