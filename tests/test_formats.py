import json

import numpy as np
import pytest

from posenas.cli import main
from posenas.data.check import check_images
from posenas.data.layout import find_splits, load_dataset, load_splits
from posenas.errors import PosenasError

from conftest import make_dataset


def _people(ds):
    return {p.id: (img.id, p) for img in ds.images for p in img.people}


def test_round_trip_records_file_records(written_dataset):
    back = load_dataset(written_dataset.source)
    assert back.format == written_dataset.format
    assert back.schema is written_dataset.schema
    assert [i.file_name for i in back.images] == [i.file_name for i in written_dataset.images]
    orig, read = _people(written_dataset), _people(back)
    assert set(orig) == set(read)
    for pid, (_, p) in orig.items():
        q = read[pid][1]
        np.testing.assert_array_equal(p.keypoints, q.keypoints)
        np.testing.assert_allclose(p.head_box, q.head_box)
        if written_dataset.format != "mpii":
            np.testing.assert_allclose(p.bbox, q.bbox)
            assert q.area == p.area and q.track_id == p.track_id
        else:
            np.testing.assert_allclose(p.center, q.center)
            assert q.scale == pytest.approx(p.scale)
    check_images(back, progress=False)  # images are found where the layout says


def test_posetrack_videos_are_ordered_sequences(tmp_path):
    ds = make_dataset("posetrack", tmp_path, images=4)
    back = load_dataset(tmp_path)
    videos = back.videos()
    assert list(videos) == ["000001"]
    assert [f.frame_id for f in videos["000001"]] == [0, 1, 2, 3]
    assert back.counts()["tracks"] == 2
    assert ds.counts()["images"] == 4


def test_split_discovery(tmp_path):
    make_dataset("coco", tmp_path)
    assert {k: v[0] for k, v in find_splits(tmp_path).items()} == {"val": "coco"}
    assert list(load_splits(tmp_path)) == ["val"]
    with pytest.raises(PosenasError, match="no split 'train'; found: val"):
        load_dataset(tmp_path, "train")


def _coco_file(tmp_path):
    make_dataset("coco", tmp_path)
    path = tmp_path / "annotations" / "person_keypoints_val.json"
    return path, json.loads(path.read_text())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["annotations"][1].update(keypoints=[0] * 50), r"annotations\[1\] \(id 102\): field 'keypoints': expected 3×17 = 51 numbers, got 50"),
        (lambda d: d["annotations"][0].update(bbox=[1, 1, 0, 5]), r"annotations\[0\] \(id 101\): field 'bbox': negative or zero-size"),
        (lambda d: d["annotations"][0].update(bbox=[1, 1, 5, -2]), r"field 'bbox': negative or zero-size"),
        (lambda d: d["annotations"][2].update(image_id=99), r"annotations\[2\] \(id 201\): field 'image_id': unknown image id 99"),
        (lambda d: d["annotations"][3].update(id=101), r"annotations\[3\]: duplicate id 101 \(first at annotations\[0\]\)"),
        (lambda d: d["images"][2].update(id=1), r"images\[2\]: duplicate id 1"),
        (lambda d: d["images"][0].pop("file_name"), r"images\[0\] \(id 1\): field 'file_name': missing"),
        (lambda d: d["annotations"][0]["keypoints"].__setitem__(2, 3), r"field 'keypoints': joint 0: visibility must be 0, 1 or 2"),
        (lambda d: d["annotations"][0]["keypoints"].__setitem__(0, "x"), r"field 'keypoints': expected 3×17 = 51 numbers, found 'x'"),
        (lambda d: d["categories"][0]["keypoints"].pop(), r"categories\[0\]: field 'keypoints': unknown joint layout \(16 joints\)"),
    ],
)
def test_bad_coco_records_name_file_record_and_field(tmp_path, mutate, message):
    path, data = _coco_file(tmp_path)
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(PosenasError, match=message) as e:
        load_dataset(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_json_syntax_error_has_line_and_column(tmp_path):
    path, _ = _coco_file(tmp_path)
    path.write_text('{"images": [\n  {"id": 1,, "file_name": "a.jpg"}\n], "annotations": []}')
    with pytest.raises(PosenasError, match=r"invalid JSON at line 2, column 12"):
        load_dataset(path)


def test_bad_mpii_records(tmp_path):
    make_dataset("mpii", tmp_path)
    path = tmp_path / "annotations" / "mpii_val.json"
    data = json.loads(path.read_text())
    data[1]["joints"] = data[1]["joints"][:15]
    path.write_text(json.dumps(data))
    with pytest.raises(PosenasError, match=r"records\[1\] \(id 2\): field 'joints': expected 16 \[x, y\] pairs, got 15"):
        load_dataset(path)
    data[1]["joints"] = data[0]["joints"]
    data[1]["headbox"] = [10, 10, 5, 20]
    path.write_text(json.dumps(data))
    with pytest.raises(PosenasError, match=r"field 'headbox': negative or zero-size"):
        load_dataset(path)


def test_check_reports_missing_and_undecodable_images(tmp_path):
    make_dataset("coco", tmp_path)
    ds = load_dataset(tmp_path)
    first = ds.image_path(ds.images[0])
    first.write_bytes(b"not a jpeg")
    with pytest.raises(PosenasError, match=r"image id 1 \('000001.jpg'\): .*cannot decode image"):
        check_images(load_dataset(tmp_path), progress=False)
    first.unlink()
    with pytest.raises(PosenasError, match=r"image id 1 \('000001.jpg'\): .*image file not found"):
        check_images(load_dataset(tmp_path), progress=False)


def test_cli_check_and_show(tmp_path, capsys):
    make_dataset("coco", tmp_path / "ds")
    assert main(["data", "check", str(tmp_path / "ds"), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)["val"]
    assert counts["images"] == 3 and counts["people"] == 6 and counts["schema"] == "coco17"
    assert main(["data", "show", str(tmp_path / "ds"), "--out", str(tmp_path / "drawn")]) == 0
    assert len(list((tmp_path / "drawn").glob("*.jpg"))) == 3


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    path, data = _coco_file(tmp_path)
    data["annotations"][0]["keypoints"] = [1, 2]
    path.write_text(json.dumps(data))
    assert main(["data", "check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("posenas: error: ") and "field 'keypoints'" in err
    assert main(["data", "check", str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_mpii_files_are_one_based_with_hrnet_centre(tmp_path):
    """Real MPII JSON (HRNet/MMPose) counts pixels from 1 and puts the centre high."""
    rec = {"id": 7, "image": "a.jpg", "center": [50.0, 60.0], "scale": 2.0,
           "joints": [[10.0, 20.0]] + [[-1.0, -1.0]] * 15, "joints_vis": [1] + [0] * 15,
           "headbox": [31.0, 11.0, 61.0, 41.0]}
    (tmp_path / "mpii_val.json").write_text(json.dumps([rec]))
    person = load_dataset(tmp_path / "mpii_val.json").images[0].people[0]
    np.testing.assert_allclose(person.keypoints[0], [9.0, 19.0, 2.0])
    np.testing.assert_allclose(person.center, [49.0, 59.0 + 15 * 2.0])
    np.testing.assert_allclose(person.head_box, [30.0, 10.0, 60.0, 40.0])
    x, y, w, h = person.box()
    assert h == 400.0 and y == pytest.approx(89.0 - 200.0)
