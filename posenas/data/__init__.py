"""Datasets: one record type, readers and writers for COCO, MPII and PoseTrack files."""
