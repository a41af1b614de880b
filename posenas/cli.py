"""The `posenas` command. Each subcommand is a thin layer over a Python function.

Every :class:`~posenas.errors.PosenasError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from posenas import __version__
from posenas.errors import PosenasError


def _size(text: str) -> tuple[int, int]:
    """``WxH`` → (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 256x256, got {text!r}") from None
    return w, h


# ---------------------------------------------------------------- data
def cmd_data_synth(args: argparse.Namespace) -> int:
    from posenas.synthetic.generate import default_spec, synthesize

    width, height = args.size if args.size else (None, None)
    spec = default_spec(
        args.format, train=args.train, val=args.val, seed=args.seed, max_people=args.max_people,
        width=width, height=height, frames=args.frames,
    )
    report = synthesize(args.out, spec, workers=args.workers, overwrite=args.overwrite, progress=not args.quiet)
    if "seconds" not in report:
        print(f"{args.out}: up to date (same settings), nothing to do")
    else:
        print(f"{args.out}: {spec.format} dataset, {report['seconds']:.1f} s, "
              f"{report['images_per_second']:.0f} images/s with {report['workers']} worker(s)")
    for split, counts in report["counts"].items():
        print(f"  {split}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from posenas.data.check import check_images
    from posenas.data.layout import load_dataset, load_splits

    if args.split or args.images:
        datasets = {args.split or "dataset": load_dataset(args.path, args.split, args.images)}
    else:
        datasets = load_splits(args.path)
    summary = {}
    for name, ds in datasets.items():
        if not args.no_images:
            check_images(ds, progress=not args.json)
        summary[name] = {"format": ds.format, "schema": ds.schema.name, "annotations": str(ds.source), **ds.counts()}
    if args.json:
        print(json.dumps(summary))
    else:
        for name, s in summary.items():
            print(f"{name}: {s['format']} ({s['schema']}) from {s['annotations']}")
            print("  " + ", ".join(f"{k} {v}" for k, v in s.items() if isinstance(v, int)))
        print("OK" + (" (images not decoded)" if args.no_images else ", every image decodes"))
    return 0


def cmd_data_show(args: argparse.Namespace) -> int:
    from posenas.data.layout import load_dataset
    from posenas.visualize import show_dataset

    ds = load_dataset(args.path, args.split, args.images)
    written = show_dataset(ds, Path(args.out), limit=args.limit)
    print(f"wrote {len(written)} image(s) to {args.out}")
    return 0


# ---------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    from posenas.data.layout import load_dataset
    from posenas.evaluation import evaluate_file

    dataset = load_dataset(args.gt, args.split, None)
    metric, result, table = evaluate_file(dataset, Path(args.pred), args.metric)
    print(json.dumps(result) if args.json else table)
    return 0


# ---------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from posenas.demo import run_demo

    run_demo(Path(args.out), Path(args.data))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posenas", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"posenas {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="generate, check and draw datasets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    s = dsub.add_parser("synth", help="render the synthetic-people dataset")
    s.add_argument("--out", required=True, help="dataset folder to create")
    s.add_argument("--format", default="coco", choices=["coco", "mpii", "posetrack"])
    s.add_argument("--train", type=int, help="training images (videos for posetrack); default per format")
    s.add_argument("--val", type=int, help="validation images (videos for posetrack); default per format")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-people", type=int, help="people per image are 1..N; default per format")
    s.add_argument("--size", type=_size, help="image size WxH (default 256x256)")
    s.add_argument("--frames", type=int, help="frames per video (posetrack; default 30)")
    s.add_argument("--workers", type=int, help="render processes (default: all cores)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing dataset made with other settings")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_data_synth)

    def dataset_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("path", help="dataset root, annotation file, or PoseTrack annotation folder")
        q.add_argument("--split", help="split of a dataset root (default: all for check, val for show)")
        q.add_argument("--images", help="image folder, when it is not where the layout puts it")

    c = dsub.add_parser("check", help="validate a dataset (annotations and images) and print counts")
    dataset_args(c)
    c.add_argument("--no-images", action="store_true", help="skip decoding the images")
    c.add_argument("--json", action="store_true", help="print the counts as JSON")
    c.set_defaults(func=cmd_data_check)

    w = dsub.add_parser("show", help="draw ground-truth skeletons onto images")
    dataset_args(w)
    w.add_argument("--out", required=True, help="folder for the drawn images")
    w.add_argument("--limit", type=int, default=20, help="draw the first N images (0: all; default 20)")
    w.set_defaults(func=cmd_data_show)

    e = sub.add_parser("eval", help="evaluate predictions against ground truth (COCO OKS AP or PCKh)")
    e.add_argument("--gt", required=True, help="ground truth: dataset root or annotation file")
    e.add_argument("--pred", required=True, help="predictions JSON (COCO results, or PCKh records)")
    e.add_argument("--metric", choices=["coco", "pckh"], help="default: pckh for MPII data, coco otherwise")
    e.add_argument("--split", help="split of a dataset root (default val)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="the end-to-end demo on the built-in synthetic data")
    d.add_argument("--out", default="runs/demo", help="run folder")
    d.add_argument("--data", default="data/synthetic", help="where the synthetic datasets live (made if absent)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PosenasError as e:
        print(f"posenas: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("posenas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
