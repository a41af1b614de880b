"""Everyday use: scores printed with enough digits, warnings where a search result means
nothing, phase headings and the retrain command, `train`'s final table, drawings, video input."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest

from posenas.cli import build_parser, main
from posenas.display import format_score, retrain_command, ties
from posenas.keypoints import COCO17
from posenas.visualize import draw_predictions

from conftest import make_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def test_scores_keep_their_digits():
    assert format_score(3.5e-5) == "3.5e-05"
    assert format_score(0.12345) == "0.1235"
    assert format_score(0.0) == "0.0000"
    assert ties([0.1, 0.1, 0.1]) and not ties([0.1, 0.1000001]) and not ties([0.3])


def _vipnas_summary(scores):
    records = [{"score": s, "gmacs": 0.01, "params_m": 0.1, "latency_ms": 1.0, "metric": "coco"} for s in scores]
    best = max(records, key=lambda r: r["score"])
    return {"metric": "coco", "best": best, "evaluations": len(scores), "scores": scores}


class _Cfg:
    class data:
        root = "data/synthetic/coco"
        input_size = (128, 96)


def test_vipnas_report_warns_on_ties_and_prints_the_retrain_command(tmp_path, capsys):
    from posenas.search.vipnas import print_summary

    print_summary(_vipnas_summary([0.0, 0.0, 0.0]), tmp_path, _Cfg)
    out, err = capsys.readouterr()
    assert "warning: all 3 candidates scored coco 0.0000" in err
    assert "retrain it: posenas train --arch" in out
    print_summary(_vipnas_summary([0.2, 0.2, 0.1]), tmp_path, _Cfg)
    assert "shared by 2 candidates" in capsys.readouterr().err
    print_summary(_vipnas_summary([3.5e-5, 0.1, 0.2]), tmp_path, _Cfg)
    out, err = capsys.readouterr()
    assert err == "" and "coco 0.2000" in out


def test_efficientpose_report_warns_when_alpha_did_not_move(tmp_path, capsys):
    from posenas.search.efficientpose import print_summary

    summary = {"table_cost": 0.1, "cost_unit": "GMACs", "cost_kind": "macs", "gmacs": 0.1, "params_m": 1.0,
               "probabilities": [[0.25, 0.25, 0.25, 0.25], [0.2502, 0.2499, 0.25, 0.2499]]}
    print_summary(summary, tmp_path, _Cfg)
    assert "alpha did not move" in capsys.readouterr().err
    summary["probabilities"][1] = [0.4, 0.2, 0.2, 0.2]
    print_summary(summary, tmp_path, _Cfg)
    assert capsys.readouterr().err == ""
    random = {"strategy": "random", "evaluations": 2, "steps_each": 5,
              "best": {"metric": "coco", "score": 0.0, "gmacs": 0.1}, "records": [{"score": 0.0}, {"score": 0.0}]}
    print_summary(random, tmp_path, _Cfg)
    assert "all 2 random archs scored" in capsys.readouterr().err


def test_pnfs_report_warns_on_unmoved_alpha_and_empty_pruning(tmp_path, capsys):
    from posenas.search.pnfs import print_summary

    r = {"metric": "coco", "score": 0.1, "params_m": 1.0, "gmacs": 0.1}
    summary = {"strategy": "synchronous", "dense": r, "pruned": {**r, "threshold": 0.2}, "alpha_spread": 0.003}
    print_summary(summary, tmp_path, _Cfg)
    err = capsys.readouterr().err
    assert "alpha did not move" in err and "pruning at 0.2 removed nothing" in err
    summary.update(alpha_spread=0.3, pruned={**r, "params_m": 0.8, "threshold": 0.2})
    print_summary(summary, tmp_path, _Cfg)
    assert capsys.readouterr().err == ""


def test_retrain_command_parses_as_a_train_command(tmp_path):
    cmd = retrain_command(tmp_path / "best_arch.json", "data/x", (64, 48), init_from=tmp_path / "last.pt")
    args = build_parser().parse_args(shlex.split(cmd)[1:])
    assert args.command == "train" and args.arch == str(tmp_path / "best_arch.json")
    assert args.init_from == str(tmp_path / "last.pt") and args.out == str(tmp_path / "retrain")
    assert args.overrides == ["data.root=data/x", "data.input_size=[64,48]"]


def test_search_prints_its_phases_and_train_prints_the_eval_table(tmp_path, capsys):
    root = tmp_path / "data"
    make_dataset("coco", root, images=4, people=1)
    cfg = {"supernet": {"space": "pnfs", "backbone": "fabric", "backbone_layers": 3, "backbone_ops": ["skip"],
                        "layers": 1, "hidden": 1, "channels": 2, "parts": 1, "vector_dim": 2, "ops": ["skip"]},
           "data": {"root": str(root), "train_split": "val", "val_split": "val", "input_size": [32, 32],
                    "batch_size": 2, "workers": 0},
           "optim": {"warmup_steps": 0}, "train": {"epochs": 1, "device": "cpu", "val_every": 0, "flip_test": False}}
    (tmp_path / "s.yaml").write_text(json.dumps(cfg))
    assert main(["search", "--config", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "s"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.index("== fabric training") < out.index("== export") < out.index("retrain it: posenas train")

    train_cfg = {"model": {"name": "simplebaseline-small"}, "data": cfg["data"], "optim": cfg["optim"],
                 "train": {**cfg["train"], "max_steps": 1}}
    (tmp_path / "t.yaml").write_text(json.dumps(train_cfg))
    assert main(["train", "--config", str(tmp_path / "t.yaml"), "--out", str(tmp_path / "t"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "t" / "results.txt").read_text().strip() in out


def _person(x0: float, y0: float) -> np.ndarray:
    kp = np.zeros((17, 3), np.float32)
    kp[:, 0], kp[:, 1], kp[:, 2] = x0 + np.arange(17), y0 + np.arange(17), 0.9
    return kp


def test_joint_scores_are_off_by_default_and_box_labels_stay_inside():
    blank = np.zeros((120, 160, 3), np.uint8)
    kp = _person(40, 40)
    plain = draw_predictions(blank.copy(), [(kp, None, 0.8)], COCO17)
    labelled = draw_predictions(blank.copy(), [(kp, None, 0.8)], COCO17, joint_scores=True)
    assert (labelled != plain).any(axis=2).sum() > 50  # the numbers are drawn only when asked for
    # a box past the top-right corner: its score label is drawn whole, inside the image
    from posenas.visualize import draw_person

    def label_pixels(box) -> int:
        box = np.asarray(box, np.float32)
        no_label = draw_person(blank.copy(), kp, COCO17, box=box, min_score=1.0, scored=True)
        label = draw_person(blank.copy(), kp, COCO17, box=box, label="0.80", min_score=1.0, scored=True)
        return int((label != no_label).any(axis=2).sum())

    whole = label_pixels([60, 50, 40, 40])
    assert whole > 50
    assert label_pixels([150, -20, 60, 80]) >= 0.9 * whole
    assert label_pixels([-30, -30, 50, 50]) >= 0.9 * whole


def test_infer_on_a_corrupt_video_file_says_so(tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 64)
    assert main(["infer", "--checkpoint", str(tmp_path / "none.pt"), str(video), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "clip.mp4: cannot" in err and "video" in err and "cannot decode image" not in err
    assert not (tmp_path / "o").exists()


def _pnfs_search_config(root) -> dict:
    return {"supernet": {"space": "pnfs", "backbone": "fabric", "backbone_layers": 3, "backbone_ops": ["skip"],
                         "layers": 1, "hidden": 1, "channels": 2, "parts": 1, "vector_dim": 2, "ops": ["skip"]},
            "data": {"root": str(root), "train_split": "val", "val_split": "val", "input_size": [32, 32],
                     "batch_size": 2, "workers": 0},
            "optim": {"warmup_steps": 0}, "train": {"epochs": 1, "device": "cpu", "val_every": 0, "flip_test": False}}


def test_a_search_that_fails_late_leaves_nothing_that_blocks_the_retry(tmp_path, capsys):
    root = tmp_path / "data"
    make_dataset("coco", root, images=4, people=1)
    cfg = _pnfs_search_config(root)
    cfg["search"] = {"strategy": "darts", "warmup_epochs": 50}  # found only once training starts
    (tmp_path / "bad.yaml").write_text(json.dumps(cfg))
    out = tmp_path / "run"
    assert main(["search", "--config", str(tmp_path / "bad.yaml"), "--out", str(out), "--quiet"]) == 2
    assert "warm" in capsys.readouterr().err
    assert not out.exists()
    cfg["search"]["warmup_epochs"] = 0
    (tmp_path / "good.yaml").write_text(json.dumps(cfg))
    assert main(["search", "--config", str(tmp_path / "good.yaml"), "--out", str(out), "--quiet"]) == 0
    # a folder that held a config before the failing start keeps it
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "config.yaml").write_text(json.dumps(cfg))
    assert main(["search", "--config", str(tmp_path / "bad.yaml"), "--out", str(kept), "--quiet"]) == 2
    assert (kept / "config.yaml").is_file()

    # resuming a search folder with `train` says which command continues it
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"holds a search" in err and f"posenas search --resume --out {out}" in err and "unknown key" not in err


def test_profile_takes_the_joint_count_from_a_pnfs_arch(tmp_path, capsys):
    assert main(["profile", "--arch", "pnfs/mobilenetv2-p3-mpii", "--no-latency", "--input", "64x64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] > 0
