"""`posenas eval` end to end on written datasets: JSON output, default metric, errors."""

import json

import pytest

from posenas.cli import main
from posenas.data.layout import load_dataset
from posenas.evaluation import COCO_METRIC_KEYS, PCKH_ROWS, evaluate_coco
from posenas.evaluation.reference import coco_results, pckh_records
from posenas.jsonio import write_json

from conftest import make_dataset


def test_coco_json_output_matches_api(tmp_path, capsys):
    make_dataset("coco", tmp_path / "ds", images=4, people=3)
    ds = load_dataset(tmp_path / "ds")
    preds = coco_results(ds, noise=0.3, seed=1)
    write_json(tmp_path / "pred.json", preds)
    assert main(["eval", "--gt", str(tmp_path / "ds"), "--pred", str(tmp_path / "pred.json"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # stdout is one JSON object, nothing else
    assert list(out) == list(COCO_METRIC_KEYS)
    assert out == evaluate_coco(ds, preds)
    assert 0.0 < out["AP"] < 1.0


def test_exact_reference_predictions_score_perfectly(tmp_path, capsys):
    make_dataset("mpii", tmp_path / "ds", images=3, people=2)
    ds = load_dataset(tmp_path / "ds")
    write_json(tmp_path / "pred.json", pckh_records(ds, noise=0.0))
    assert main(["eval", "--gt", str(tmp_path / "ds"), "--pred", str(tmp_path / "pred.json"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # MPII data defaults to PCKh
    assert set(out) == {"PCKh@0.5", "PCKh@0.1"}
    assert set(out["PCKh@0.5"]) == set(PCKH_ROWS)
    assert all(v == 100.0 for v in out["PCKh@0.1"].values() if v is not None)


@pytest.mark.parametrize("noise", [0.2, 1.0])
def test_more_noise_lowers_ap(tmp_path, noise):
    make_dataset("coco", tmp_path, images=4, people=3)
    ds = load_dataset(tmp_path)
    low = evaluate_coco(ds, coco_results(ds, noise=noise / 4, seed=0))["AP"]
    high = evaluate_coco(ds, coco_results(ds, noise=noise, seed=0))["AP"]
    assert high < low


def test_eval_errors_are_one_line(tmp_path, capsys):
    make_dataset("coco", tmp_path / "ds")
    (tmp_path / "pred.json").write_text('[{"image_id": 1, "category_id": 1, "keypoints": [1, 2, 3], "score": 1}]')
    assert main(["eval", "--gt", str(tmp_path / "ds"), "--pred", str(tmp_path / "pred.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pred.json: record 0: field 'keypoints'" in err
    assert main(["eval", "--gt", str(tmp_path / "ds"), "--pred", str(tmp_path / "pred.json"), "--metric", "pckh"]) == 2
    assert "PCKh needs the joints head_top, which schema coco17 does not have" in capsys.readouterr().err
