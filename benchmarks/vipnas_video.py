"""T-ViPNAS on the synthetic videos: the method against its ablations at equal average GMACs, over seeds.

Run: .venv/bin/python benchmarks/vipnas_video.py [--seeds 0,1,2] [--out runs/vipnas-video]
     [--summary docs/vipnas_video.json] [--set KEY=VALUE ...]

Data: the proxy-scene PoseTrack-format videos of configs/vipnas/tiny-video.yaml (made here if
missing: 120 train and 10 val videos of 30 frames). For each seed s (``train.seed`` and
``search.seed`` = s) one whole `posenas search` of that config runs into ``--out/seed{s}`` (a
stopped one resumes): the key frame's S-ViPNet, the T-ViPNet supernet by propagation, then
16 sequences per variant under the same average-GMACs budget (half the key net's):

- ``t-vipnas``  frame-specialised archs with fusion (the method);
- ``no-fusion`` the same archs, fusion removed (Fig. 6a);
- ``shared``    one arch and fusion for all frames (Fig. 6b);
- ``per-frame`` one arch, no fusion: image nets on every frame (Table 3's comparison);
- and the key net on every frame (twice the budget) as the reference.

Every score is PoseTrack mAP (Total, %) on all val videos by propagation on GT boxes, with
the supernet's weights (BN re-calibrated through propagation); frames/s is batch-1, one
thread, PyTorch, (T + 1) frames over the summed median latencies of the key net and the T
nets. The summary (``--summary``) gets each seed as it finishes (a later run skips seeds
already there), and the mean, the seed standard deviation (the noise floor) and the mean
paired difference of each ablation to t-vipnas with its standard error; per seed, the paired
gain of fusion over all t-vipnas sequences (each against its own fusion-free twin).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
from dataclasses import asdict
import sys
from pathlib import Path

from posenas.config import load_config
from posenas.engine.precision import cpu_flags
from posenas.jsonio import read_json, read_jsonl, write_json
from posenas.search.vipnas_video import VARIANTS, VideoSearchExperimentConfig, print_summary, run_video_search
from posenas.synthetic.generate import default_spec, ensure_synthetic

CONFIG = "configs/vipnas/tiny-video.yaml"
SPEC = default_spec("posetrack", train=120, val=10, frames=30, scenes="proxy")


def one_seed(seed: int, args) -> dict:
    cfg = load_config(VideoSearchExperimentConfig, CONFIG, [f"train.seed={seed}", f"search.seed={seed}", *args.set])
    ensure_synthetic(cfg.data.root, SPEC)
    out = Path(args.out) / f"seed{seed}"
    summary = run_video_search(cfg, out, resume=(out / "config.yaml").exists())
    print_summary(summary, out, cfg)
    best = summary["best_per_variant"]
    row = {v: {"mAP": round(best[v]["score"], 3), "AP": round(best[v]["AP"], 4), "gmacs": round(best[v]["gmacs"], 5),
               "frame_gmacs": [round(g, 5) for g in best[v]["frame_gmacs"]], "fps": summary["speed"][v]["fps"],
               "fusions": [f["fusion"] for f in best[v]["arch"]["frames"]]} for v in best}
    twin = summary.get("winner_without_fusion")
    if twin:
        row["winner-without-fusion"] = {"mAP": round(twin["score"], 3), "AP": round(twin["AP"], 4),
                                        "gmacs": round(twin["gmacs"], 5), "fps": None}
    key = summary["key_every_frame"]
    row["key-every-frame"] = {"mAP": round(key["score"], 3), "AP": round(key["AP"], 4), "gmacs": round(key["gmacs"], 5),
                              "fps": key["fps"]}
    supernet = read_json(out / "supernet" / "results.json")
    row["supernet_largest_mAP"] = round(supernet["Total"], 3)
    row["paired_fusion_gain"] = paired_fusion_gain(out)
    return row


def paired_fusion_gain(run: Path) -> dict:
    """Over ALL t-vipnas sequences of a run (not only the best): mAP with its fusions minus
    the same archs without them (the no-fusion twin of the same index), mean and s.e."""
    records = read_jsonl(run / "candidates.jsonl")
    fused = {r["index"]: r["score"] for r in records if r["variant"] == "t-vipnas"}
    plain = {r["index"]: r["score"] for r in records if r["variant"] == "no-fusion"}
    diffs = [fused[i] - plain[i] for i in fused if i in plain]
    return {"mean": round(statistics.mean(diffs), 3), "se": round(statistics.stdev(diffs) / math.sqrt(len(diffs)), 3),
            "positive": sum(d > 0 for d in diffs), "pairs": len(diffs)}


def aggregate(seeds: dict[str, dict]) -> dict:
    out = {}
    names = [*VARIANTS, "winner-without-fusion", "key-every-frame"]
    for v in names:
        scores = [s[v]["mAP"] for s in seeds.values() if v in s]
        if not scores:
            continue
        out[v] = {"mAP_mean": round(statistics.mean(scores), 3),
                  "mAP_sd": round(statistics.stdev(scores), 3) if len(scores) > 1 else None,
                  "gmacs_mean": round(statistics.mean(s[v]["gmacs"] for s in seeds.values() if v in s), 5),
                  "fps_mean": (round(statistics.mean(s[v]["fps"] for s in seeds.values() if v in s), 1)
                               if all(s[v]["fps"] is not None for s in seeds.values() if v in s) else None)}
        if v not in ("t-vipnas", "key-every-frame"):
            diffs = [s["t-vipnas"]["mAP"] - s[v]["mAP"] for s in seeds.values() if v in s]
            out[v]["t_vipnas_minus_this"] = round(statistics.mean(diffs), 3)
            out[v]["se"] = round(statistics.stdev(diffs) / math.sqrt(len(diffs)), 3) if len(diffs) > 1 else None
    return out


def table(agg: dict, n: int) -> str:
    lines = [f"| variant | mAP (mean of {n} seeds) | seed sd | t-vipnas − this (± s.e.) | avg GMACs | frames/s (1 thread) |",
             "|---|---:|---:|---:|---:|---:|"]
    for v, a in agg.items():
        diff = (f"{a['t_vipnas_minus_this']:+.2f} ± {a['se']:.2f}" if a.get("se") is not None else
                f"{a['t_vipnas_minus_this']:+.2f}" if "t_vipnas_minus_this" in a else "")
        sd = f"{a['mAP_sd']:.2f}" if a["mAP_sd"] is not None else "-"
        fps = f"{a['fps_mean']:.0f}" if a["fps_mean"] is not None else "-"
        lines.append(f"| {v} | {a['mAP_mean']:.2f} | {sd} | {diff} | {a['gmacs_mean']:.4f} | {fps} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default="runs/vipnas-video")
    p.add_argument("--summary", default="docs/vipnas_video.json")
    p.add_argument("--set", nargs="*", default=[], help="config overrides KEY=VALUE for every seed")
    args = p.parse_args()
    summary_path = Path(args.summary)
    summary = read_json(summary_path) if summary_path.exists() else {}
    if summary.get("settings", {}).get("set", args.set) != args.set:
        print(f"{summary_path}: holds seeds made with other --set; pass another --summary", file=sys.stderr)
        return 2
    summary.setdefault("seeds", {})
    summary["settings"] = {"config": CONFIG, "set": args.set, "data": asdict(SPEC),
                           "machine": f"{platform.processor() or platform.machine()}; {cpu_flags()}"}
    for seed in (int(s) for s in args.seeds.split(",")):
        if str(seed) in summary["seeds"]:
            print(f"seed {seed}: in {summary_path} already")
            summary["seeds"][str(seed)]["paired_fusion_gain"] = paired_fusion_gain(Path(args.out) / f"seed{seed}")
            continue
        summary["seeds"][str(seed)] = one_seed(seed, args)
        summary["aggregate"] = aggregate(summary["seeds"])
        write_json(summary_path, summary, indent=2)  # each seed kept as it finishes
    summary["aggregate"] = aggregate(summary["seeds"])
    write_json(summary_path, summary, indent=2)
    print(table(summary["aggregate"], len(summary["seeds"])))
    for seed, row in summary["seeds"].items():
        g = row["paired_fusion_gain"]
        print(f"seed {seed}: fusion gain over all {g['pairs']} t-vipnas sequences (same archs without fusion): "
              f"{g['mean']:+.2f} ± {g['se']:.2f} mAP, positive in {g['positive']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
