"""Target codecs: keypoints ↔ network outputs (heatmaps, tags), flip test, back-projection, rescoring."""

from typing import Any

from posenas.codecs.associative import AssociativeEmbeddingCodec
from posenas.codecs.heatmap import HeatmapCodec, back_project, flip_back, instance_scores

#: Codec ``type`` (as checkpoints and exported files store it) -> class: top-down heatmaps, bottom-up AE.
CODECS = {"heatmap": HeatmapCodec, "associative_embedding": AssociativeEmbeddingCodec}


def codec_from_dict(d: Any) -> HeatmapCodec | AssociativeEmbeddingCodec:
    """A stored codec by its ``type`` (``heatmap`` when absent: checkpoints before bottom-up models)."""
    kind = d.get("type", "heatmap") if isinstance(d, dict) else "heatmap"
    return CODECS.get(kind, HeatmapCodec).from_dict(d)  # an unknown type: HeatmapCodec names the field


__all__ = ["CODECS", "AssociativeEmbeddingCodec", "HeatmapCodec", "back_project", "codec_from_dict", "flip_back",
           "instance_scores"]
