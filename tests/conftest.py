"""Shared fixtures: small datasets written to tmp_path in each format, with real images."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from posenas.data.images import encode_jpeg
from posenas.data.layout import write_annotations
from posenas.data.posetrack import frame_image_id
from posenas.data.records import ImageRecord, Person, PoseDataset
from posenas.keypoints import COCO17, MPII16, POSETRACK18

SCHEMAS = {"coco": COCO17, "mpii": MPII16, "posetrack": POSETRACK18}


def make_dataset(fmt: str, root, images: int = 3, people: int = 2, seed: int = 0) -> PoseDataset:
    """A random but valid dataset of ``fmt`` written under ``root`` (annotations + images)."""
    rng = np.random.default_rng(seed)
    schema = SCHEMAS[fmt]
    records = []
    for i in range(images):
        w, h = 64, 48
        if fmt == "posetrack":
            image_id, file_name = frame_image_id(1, i), f"images/val/000001/{i:06d}.jpg"
            image_dir = root
        elif fmt == "mpii":
            image_id, file_name, image_dir = i, f"val/{i:06d}.jpg", root / "images"
        else:
            image_id, file_name, image_dir = i + 1, f"{i + 1:06d}.jpg", root / "images" / "val"
        img = ImageRecord(id=image_id, file_name=file_name, width=w, height=h,
                          video_id="000001" if fmt == "posetrack" else None, frame_id=i if fmt == "posetrack" else None)
        for k in range(people):
            kp = np.zeros((schema.num_joints, 3), np.float32)
            kp[:, 0] = rng.uniform(0, w - 1, schema.num_joints).round(2)
            kp[:, 1] = rng.uniform(0, h - 1, schema.num_joints).round(2)
            kp[:, 2] = rng.integers(0, 3, schema.num_joints)
            kp[kp[:, 2] == 0, :2] = 0
            p = Person(id=image_id * 100 + k + 1, keypoints=kp, bbox=np.array([2, 3, 40, 30], np.float32),
                       area=900.0, head_box=np.array([5, 5, 15, 17], np.float32),
                       track_id=k if fmt == "posetrack" else None)
            if fmt == "mpii":
                p.center, p.scale = np.array([22.0, 18.0], np.float32), 0.2
            img.people.append(p)
        path = image_dir / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_jpeg(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)))
        records.append(img)
    ds = PoseDataset(fmt, schema, root, records, root)
    write_annotations(ds, root, "val")
    return ds


@pytest.fixture(params=["coco", "mpii", "posetrack"])
def written_dataset(request, tmp_path):
    return make_dataset(request.param, tmp_path)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is much faster than several on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


#: A small vipnas-resnet space for search tests (fast supernet, distinct sub-nets).
TINY_VIPNAS_CHOICES = {
    "stem": {"widths": [16, 24]},
    "stages": [{"depths": [1, 2], "widths": [16, 32], "expansions": [1, 2], "kernels": [3, 5], "groups": [2, 4]},
               {"depths": [1], "widths": [32], "expansions": [1, 2], "kernels": [3], "groups": [2, 4]},
               {"depths": [1], "widths": [64], "expansions": [1, 2], "kernels": [3], "groups": [2, 4]},
               {"depths": [1, 2], "widths": [128, 144], "expansions": [1, 2], "kernels": [3, 5], "groups": [2, 4]}],
    "head": {"widths": [16, 32], "groups": [2, 4], "kernels": [2, 4]},
}


def torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``posenas ARGS --quiet`` as 2 CPU ranks under torchrun (one thread each). On a timeout
    the whole process group goes (torchrun's workers too), so a hung run leaves no orphans
    that would slow every later test, and the error shows what the run printed."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")  # as in CI: ranks' lines must not mix
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "posenas", *args, "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun {' '.join(args)} still running after {timeout} s:\n{out[-2000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
