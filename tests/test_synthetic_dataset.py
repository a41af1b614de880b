"""`posenas data synth` end to end: formats, determinism, labels, atomic output."""

import hashlib
import json

import numpy as np
import pytest

from posenas.cli import main
from posenas.data.check import check_images
from posenas.data.layout import load_dataset, load_splits
from posenas.errors import PosenasError
from posenas.synthetic.generate import default_spec, synthesize


def _digest(root):
    """Hash of every file (name and bytes) under root."""
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("fmt, count", [("coco", 6), ("mpii", 6), ("posetrack", 2)])
def test_each_format_is_readable_and_complete(tmp_path, fmt, count):
    spec = default_spec(fmt, train=count, val=count // 2, frames=4)
    synthesize(tmp_path / "ds", spec, workers=1, progress=False)
    splits = load_splits(tmp_path / "ds")
    assert set(splits) == {"train", "val"}
    for ds in splits.values():
        assert ds.format == fmt
        check_images(ds, progress=False)
        for img in ds.images:
            for p in img.people:
                kp = p.keypoints
                assert set(np.unique(kp[:, 2])) <= {0.0, 1.0, 2.0}
                inside = kp[kp[:, 2] > 0, :2]
                assert (inside >= -0.5).all() and (inside[:, 0] <= spec.width - 0.5).all() and (inside[:, 1] <= spec.height - 0.5).all()
                assert (kp[kp[:, 2] == 0, :2] == 0).all()
                if fmt != "mpii":
                    x, y, w, h = p.bbox
                    assert 0 <= x and 0 <= y and x + w <= img.width + 1e-3 and y + h <= img.height + 1e-3
                    assert 0 < p.area <= w * h + 1e-3
                assert p.head_box is not None
    if fmt == "posetrack":
        videos = splits["train"].videos()
        assert len(videos) == 2 and all(len(f) == 4 for f in videos.values())
        tracks = [{p.track_id for p in f.people} for f in next(iter(videos.values()))]
        assert all(t <= set(range(spec.max_people)) for t in tracks)


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    spec = default_spec("coco", train=8, val=4)
    synthesize(tmp_path / "a", spec, workers=1, progress=False)
    synthesize(tmp_path / "b", spec, workers=2, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    synthesize(tmp_path / "c", default_spec("coco", train=8, val=4, seed=1), workers=1, progress=False)
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_labels_are_honest_about_occlusion(tmp_path):
    synthesize(tmp_path / "ds", default_spec("coco", train=0, val=30), workers=2, progress=False)
    v = np.concatenate([p.keypoints[:, 2] for img in load_dataset(tmp_path / "ds").images for p in img.people])
    # all three kinds occur, and most labelled joints are visible
    assert (v == 0).any() and (v == 1).any() and (v == 2).sum() > (v == 1).sum()


def test_existing_output_is_kept_or_refused(tmp_path, capsys):
    out = tmp_path / "ds"
    spec = default_spec("mpii", train=2, val=2)
    synthesize(out, spec, workers=1, progress=False)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    again = synthesize(out, spec, workers=1, progress=False)  # same settings: nothing to do
    assert "seconds" not in again and (out / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(PosenasError, match="already exists .* pass --overwrite"):
        synthesize(out, default_spec("mpii", train=3, val=2), workers=1, progress=False)
    synthesize(out, default_spec("mpii", train=3, val=2), workers=1, overwrite=True, progress=False)
    assert json.loads((out / "manifest.json").read_text())["spec"]["train"] == 3
    assert not list(tmp_path.glob(".*partial"))


def test_cli_synth_and_bad_arguments(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "ds"), "--train", "2", "--val", "1", "--quiet",
                 "--size", "128x96", "--max-people", "2"]) == 0
    ds = load_dataset(tmp_path / "ds", "train")
    assert {(img.width, img.height) for img in ds.images} == {(128, 96)}
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--max-people", "0"]) == 2
    assert "--max-people: must be between 1 and 12" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_proxy_scene_preset_makes_large_fully_visible_people(tmp_path, capsys):
    heights = {}
    for scenes in ("default", "proxy"):
        out = tmp_path / scenes
        assert main(["data", "synth", "--out", str(out), "--train", "24", "--val", "0", "--quiet", "--workers", "1",
                     "--scenes", scenes, "--max-people", "2"]) == 0
        ds = load_dataset(out, "train")
        people = [p for img in ds.images for p in img.people]
        heights[scenes] = np.mean([p.bbox[3] / img.height for img in ds.images for p in img.people])
        if scenes == "proxy":
            assert json.loads((out / "manifest.json").read_text())["spec"]["scenes"] == "proxy"
            inside = [((p.keypoints[:, 2] == 0) | ((p.keypoints[:, 0] >= 0) & (p.keypoints[:, 0] < img.width)
                                                   & (p.keypoints[:, 1] >= 0) & (p.keypoints[:, 1] < img.height))).all()
                      for img in ds.images for p in img.people]
            assert all(inside) and len(people) >= 24  # nobody placed partly outside the frame
    assert heights["proxy"] > 1.3 * heights["default"]
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--scenes", "hard"]) == 2
    assert "--scenes: unknown preset 'hard'; allowed: default, proxy" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
