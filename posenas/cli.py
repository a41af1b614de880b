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


def _dims(expected: str):
    """An argparse type for ``AxB`` pairs of integers, kept in the order written (``expected`` names it)."""

    def parse(text: str) -> tuple[int, int]:
        try:
            a, b = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        return a, b

    return parse


# ---------------------------------------------------------------- data
def cmd_data_synth(args: argparse.Namespace) -> int:
    from posenas.synthetic.generate import default_spec, synthesize

    width, height = args.size if args.size else (None, None)
    spec = default_spec(
        args.format, train=args.train, val=args.val, seed=args.seed, max_people=args.max_people,
        width=width, height=height, frames=args.frames, max_yaw=args.max_yaw, scenes=args.scenes,
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
    if args.thresholds is not None and not args.dynamic:
        raise PosenasError("eval: --thresholds sets dynamic inference's early exits; add --dynamic")
    if args.dynamic and not args.checkpoint:
        raise PosenasError("eval --dynamic: runs a multi-exit checkpoint; give --checkpoint CKPT --data DIR")
    if args.oracle:
        from posenas.data.layout import load_dataset
        from posenas.engine.oracle import evaluate_oracle

        if args.checkpoint or args.pred or args.gt:
            raise PosenasError("eval --oracle: measures a codec on --data DIR alone; drop --checkpoint/--gt/--pred")
        if not args.data:
            raise PosenasError("eval --oracle: --data DIR is required")
        default = (256, 192) if args.oracle == "topdown" else (512, 512)
        size = tuple(args.input) if args.input else default
        if any(v % 4 or v < 32 for v in size):
            raise PosenasError(f"--input: expected HEIGHTxWIDTH, each a multiple of 4 and >= 32, got {size[0]}x{size[1]}")
        dataset = load_dataset(args.data, args.split or "val", headboxes=args.headboxes)
        metric, result, table = evaluate_oracle(dataset, args.oracle, size, progress=not args.json)
        result = {**result, "oracle": args.oracle, "input_size": list(size)}
        print(json.dumps(result) if args.json else f"{args.oracle} codec at {size[0]}x{size[1]}:\n{table}")
        return 0
    if args.checkpoint:
        from posenas.engine.evaluate import evaluate_checkpoint

        if args.pred or args.gt:
            raise PosenasError("eval: give either --checkpoint with --data, or --gt with --pred")
        if not args.data:
            raise PosenasError("eval --checkpoint: --data DIR is required")
        out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / f"eval-{args.split or 'val'}"
        if args.dynamic:
            from posenas.engine.dynamic import evaluate_checkpoint_dynamic

            if args.runtime != "torch":
                raise PosenasError("eval --dynamic: runs the PyTorch checkpoint between its exits; drop --runtime onnx")
            if args.boxes:
                raise PosenasError("a bottom-up model finds every person in whole images and takes no person boxes; "
                                   "drop --boxes")
            report = evaluate_checkpoint_dynamic(
                args.checkpoint, args.data, out, split=args.split, thresholds=args.thresholds,
                flip_test=args.flip_test, headboxes=args.headboxes, metric=args.metric, device=args.device,
                progress=not args.json)
            print(json.dumps({k: v for k, v in report.items() if k != "table"}) if args.json
                  else f"{report['table']}\nwritten to {out / 'dynamic.json'}")
            return 0
        metric, result, table, _ = evaluate_checkpoint(
            args.checkpoint, args.data, out, split=args.split, flip_test=args.flip_test, boxes=args.boxes,
            headboxes=args.headboxes, metric=args.metric, device=args.device, runtime=args.runtime,
            progress=not args.json,
        )
        print(json.dumps(result) if args.json else f"{table}\nwritten to {out}")
        return 0
    from posenas.data.layout import load_dataset
    from posenas.evaluation import evaluate_file

    if not (args.gt and args.pred):
        raise PosenasError("eval: give --gt GT --pred PRED (or --checkpoint CKPT --data DIR)")
    dataset = load_dataset(args.gt, args.split, None, headboxes=args.headboxes)
    metric, result, table = evaluate_file(dataset, Path(args.pred), args.metric)
    print(json.dumps(result) if args.json else table)
    return 0


# ---------------------------------------------------------------- train / search / infer
def _run_config(args: argparse.Namespace, cls: type, command: str, overrides: list[str]):
    """The config of a run: the saved one for ``--resume`` (no overrides then), else the
    YAML (or defaults) with overrides; ``--device`` applies to both."""
    from dataclasses import replace

    from posenas.config import check_resume_command, load_config

    if args.resume:
        if not args.out:
            raise PosenasError(f"{command} --resume: --out RUN (the run directory to continue) is required")
        if overrides:
            raise PosenasError(f"{command} --resume: overrides are not allowed; the run continues with its saved config")
        check_resume_command(args.out, command)  # before the typed load: a search's config is no training config
        cfg = load_config(cls, Path(args.out) / "config.yaml")
    else:
        cfg = load_config(cls, args.config, overrides)
    if args.device:
        cfg = replace(cfg, train=replace(cfg.train, device=args.device))
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from posenas.engine.config import ExperimentConfig
    from posenas.engine.train import Interrupted, train
    from posenas.resources import resolve_config

    overrides = list(args.overrides)
    if args.config and not args.resume:  # a path, or a shipped name such as baselines/tiny
        args.config = str(resolve_config(args.config))
    if args.arch:  # the arch file replaces the config's model
        resolve_config(args.arch, "arch")  # fail now, not after the data is loaded; the engine resolves it again
        overrides += ["model.arch=null", f"model.arch_file={args.arch}"]
    if args.init_from:
        overrides.append(f"train.init_from={args.init_from}")
    if not args.resume and not args.config and not args.arch:
        raise PosenasError("train: --config CFG.yaml or --arch ARCH.json is required (or --resume --out RUN)")
    cfg = _run_config(args, ExperimentConfig, "train", overrides)
    out = args.out or f"runs/{Path(args.config or args.arch).stem}"
    try:
        result = train(cfg, out, resume=args.resume, progress=not args.quiet)
    except (Interrupted, KeyboardInterrupt) as e:
        return _interrupted("train", Path(out), e)
    table = Path(out) / "results.txt"
    if result and table.is_file():  # the final validation, as `posenas eval` prints it
        print(table.read_text().rstrip())
        print(f"results in {out}")
    return 0


def _interrupted(command: str, out: Path, error: BaseException) -> int:
    """One line, ending with the one command that continues the run (exit status 130)."""
    then = (f"continue with: posenas {command} --resume --out {out}" if (out / "config.yaml").is_file()
            else "nothing was written; start it again")
    print(f"posenas: interrupted{f' ({error})' if str(error) else ''}; {then}", file=sys.stderr)
    return 130


def _search_space(config: str | Path) -> str | None:
    """The ``supernet.space`` a search config names (it decides which search runs)."""
    from posenas.config import read_yaml

    data = read_yaml(config)
    supernet = data.get("supernet") if isinstance(data, dict) else None
    return supernet.get("space") if isinstance(supernet, dict) else None


def cmd_search(args: argparse.Namespace) -> int:
    """One command for every search; the config's ``supernet.space`` picks which (``SEARCHES``)."""
    from posenas.engine.train import Interrupted
    from posenas.config import check_resume_command
    from posenas.search.methods import method_for
    from posenas.search.rundir import removed_if_start_fails

    if not args.resume and not args.config:
        raise PosenasError("search: --config CFG.yaml is required (or --resume --out RUN)")
    if args.resume and not args.out:
        raise PosenasError("search --resume: --out RUN (the run directory to continue) is required")
    if not args.resume:  # a path, or a shipped name such as vipnas/tiny-resnet
        from posenas.resources import resolve_config

        args.config = str(resolve_config(args.config))
    out = Path(args.out or f"runs/{Path(args.config).stem}")
    if args.resume:
        check_resume_command(out, "search")
    config_file = out / "config.yaml" if args.resume else args.config
    method = method_for(_search_space(config_file), str(config_file))
    cfg = _run_config(args, method.config, "search", list(args.overrides))
    try:
        with removed_if_start_fails(out, args.resume):
            summary = method.run(cfg, out, resume=args.resume, progress=not args.quiet)
    except (Interrupted, KeyboardInterrupt) as e:  # in any phase
        return _interrupted("search", out, e)
    if summary:  # empty on the other ranks of a torchrun
        method.report(summary, out, cfg)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from posenas.comparison import compare

    compare(args.runs, args.out)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from posenas.export import export_onnx

    if args.int8 and args.precision not in (None, "int8"):
        raise PosenasError(f"export: --int8 and --precision {args.precision} contradict each other; give one")
    precision = "int8" if args.int8 else args.precision or "fp32"
    if precision != "int8" and (args.calib_data is not None or args.calib_images is not None):
        raise PosenasError("export: --calib-data and --calib-images calibrate an int8 export; add --int8")
    if precision != "fp32":
        from posenas.quantize import DEFAULT_CALIB_IMAGES, export_reduced

        r = export_reduced(args.checkpoint, args.onnx, precision, calib_data=args.calib_data,
                           calib_images=DEFAULT_CALIB_IMAGES if args.calib_images is None else args.calib_images,
                           opset=args.opset, dynamic_batch=args.dynamic_batch, rewrite=not args.no_rewrite)
        calib = r.get("calibration")
        print(f"wrote {args.onnx} ({r['bytes'] / 1e6:.2f} MB {precision}, FP32 {r['fp32_bytes'] / 1e6:.2f} MB"
              + (f"; calibrated on {calib['images']} {calib['split']} crops of {calib['data']}" if calib else "")
              + f"); against FP32 on {r['crops']} real crops: max abs heatmap difference {r['max_abs_diff']:.3g} "
              f"({r['relative']:.3g} x FP32's peak), argmax within {r['radius']} heatmap px on "
              f"{r['agreement']:.1%} of {r['joints']} joints")
        return 0
    report = export_onnx(args.checkpoint, args.onnx, opset=args.opset, dynamic_batch=args.dynamic_batch,
                         rewrite=not args.no_rewrite)
    diffs = ", ".join(f"{k} {v:.2e}" for k, v in report["max_abs_diff"].items())
    print(f"wrote {args.onnx} ({report['bytes'] / 1e6:.1f} MB, opset {report['opset']}); "
          f"parity with PyTorch, max abs heatmap difference: {diffs}")
    for entry in report.get("exits", []):  # a multi-exit model: one file per early exit
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in entry["max_abs_diff"].items())
        print(f"wrote {entry['path']} (early exit {entry['exit'] + 1}, layer {entry['layer']}, "
              f"{entry['bytes'] / 1e6:.1f} MB); parity with PyTorch, max abs heatmap difference: {diffs}")
    for entry in report.get("frames", []):  # a video model: one file per T-ViPNet
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in entry["max_abs_diff"].items())
        print(f"wrote {entry['path']} (T-ViPNet {entry['frame']}{', fusion input previous_heatmaps' if entry['fusion'] else ''}, "
              f"{entry['bytes'] / 1e6:.1f} MB); parity with PyTorch, max abs heatmap difference: {diffs}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from posenas.arch import build_model, load_arch_file, named_arch, output_joints
    from posenas.cost import profile_model
    from posenas.resources import resolve_config

    given = [k for k in ("model", "arch", "checkpoint") if getattr(args, k)]
    if len(given) != 1:
        raise PosenasError("profile: give exactly one of --model NAME, --arch ARCH.json, --checkpoint CKPT")
    size, runner = args.input, None
    onnx_file = bool(args.checkpoint) and str(args.checkpoint).endswith(".onnx")
    if args.checkpoint:
        from posenas.runtime import load_model

        loaded = load_model(args.checkpoint, "onnx" if onnx_file else "torch", threads=args.threads)
        size = size or loaded.codec.input_size
        if onnx_file:  # time the exported session; count params/MACs on the same arch in PyTorch
            if args.runtime != "onnx":
                raise PosenasError(f"{args.checkpoint}: an ONNX file; profile it with --runtime onnx")
            if tuple(size) != tuple(loaded.codec.input_size):
                h, w = loaded.codec.input_size
                raise PosenasError(f"--input: the ONNX model {args.checkpoint} takes {h}x{w} inputs")
            runner = loaded.model
            model = build_model(loaded.arch, loaded.schema.num_joints)
        else:
            model = loaded.model
    else:
        arch = named_arch(args.model) if args.model else load_arch_file(resolve_config(args.arch, "arch"))
        model = build_model(arch, output_joints(arch, args.joints))
    size = size or (256, 192)
    if args.runtime == "onnx" and runner is None and not args.no_latency:
        from posenas.cost import check_output_stride
        from posenas.export import onnx_bytes
        from posenas.runtime import OnnxPoseModel

        check_output_stride(model, size)  # a clear error before exporting at a size the model cannot take
        runner = OnnxPoseModel.from_bytes(onnx_bytes(model, size), threads=args.threads)
    result = profile_model(model, size, latency=not args.no_latency, threads=args.threads,
                           runs=args.runs, runner=runner)
    if args.json:
        print(json.dumps(result.to_json(layers=args.layers)))
        return 0
    h, w = result.input
    print(f"input {h}x{w}: {result.params / 1e6:.3f} M params, {result.macs / 1e9:.4f} GMACs")
    if result.latency_ms:
        t = result.latency_ms
        print(f"latency ({t['runtime']}, batch 1, {t['threads']} thread(s), {t['device']}): median {t['median']:.2f} ms "
              f"(p10 {t['p10']:.2f}, p90 {t['p90']:.2f}; {t['runs']} runs)")
    if args.layers:
        for name, macs in sorted(result.layers.items(), key=lambda kv: -kv[1]):
            print(f"  {macs / 1e6:10.2f} MMACs  {name}")
    return 0


def _is_video(path: str) -> bool:
    from posenas.data.images import VIDEO_SUFFIXES

    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def cmd_infer(args: argparse.Namespace) -> int:
    from posenas.infer import run_inference

    videos = [p for p in args.inputs if _is_video(p)]
    if videos or args.video:
        return _infer_videos(args)
    if args.detector or args.fps:
        raise PosenasError("infer: --detector and --fps are for video inputs (a video file, or a folder of frames "
                           "with --video)")
    if args.thresholds is not None and not args.dynamic:
        raise PosenasError("infer: --thresholds sets dynamic inference's early exits; add --dynamic")
    results = run_inference(args.checkpoint, args.inputs, args.out, boxes=args.boxes, flip_test=not args.no_flip,
                            min_score=args.min_score, device=args.device, runtime=args.runtime,
                            joint_scores=args.scores, dynamic=args.dynamic, thresholds=args.thresholds)
    print(f"{len(results)} person(s) in {len(set(r['image'] for r in results))} image(s); drawings and predictions.json in {args.out}")
    if args.dynamic:
        exits = json.loads((Path(args.out) / "predictions.json").read_text())["dynamic"]
        views = "views (each image and its mirrored copy)" if not args.no_flip else "images"
        print(f"dynamic inference, {views} leaving at each exit: "
              + ", ".join(f"layer {layer}: {count}" for layer, count in zip(exits["layers"], exits["counts"])))
    return 0


def _infer_videos(args: argparse.Namespace) -> int:
    """Each input a video (a file, or with --video a folder of frames): online inference and tracking."""
    from posenas.infer_video import run_video_inference

    if args.dynamic:
        raise PosenasError("infer: --dynamic runs on images; drop it for a video")
    for item in args.inputs:
        if not args.video and not _is_video(item):
            raise PosenasError(f"{item}: mixing a video with images; run them apart (a folder of frames is a video "
                               "with --video)")
    for item in args.inputs:
        r = run_video_inference(args.checkpoint, item, args.out, boxes=args.boxes, detector=args.detector,
                                flip_test=not args.no_flip, min_score=args.min_score, fps=args.fps,
                                device=args.device, runtime=args.runtime, joint_scores=args.scores)
        print(f"{item}: {r['frames']} frames ({'key frame every ' + str(r['period']) if r['period'] > 1 else 'every frame a key frame'}), "
              f"{r['people']} poses in {r['tracks']} track(s); {r['fps']:.1f} frames/s overall, "
              + (f"{r['model_fps']:.1f} frames/s in the networks" if r["people"] else "no person found")
              + f"; {r['video']}, {r['json']}")
    return 0


# ---------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from posenas.demo import run_demo

    run_demo(Path(args.out), Path(args.data), Path(args.config))
    return 0


# ---------------------------------------------------------------- configs
def cmd_configs(args: argparse.Namespace) -> int:
    """The shipped configs and architectures: any of these names works as --config / --arch from any directory."""
    from posenas.resources import SHIPPED_ROOT, describe, shipped

    if args.paths:
        for name in shipped():
            print(SHIPPED_ROOT / name)
        return 0
    for kind, title in (("config", "configs (--config NAME)"), ("arch", "architectures (--arch NAME)")):
        names = shipped(kind)
        width = max(map(len, names))
        print(f"{title}:")
        for name in names:
            print(f"  {name:<{width}}  {describe(name)}".rstrip())
    print(f"(in {SHIPPED_ROOT}; the suffix and a leading configs/ may be left out)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    import posenas

    p = argparse.ArgumentParser(prog="posenas", description=posenas.__doc__.strip())
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
    s.add_argument("--size", type=_dims("WIDTHxHEIGHT such as 320x256"), help="image size WxH (default 256x256)")
    s.add_argument("--frames", type=int, help="frames per video (posetrack; default 30)")
    s.add_argument("--max-yaw", type=float, help="people face the camera within +-DEG degrees "
                   "(default 60; 180 adds side and back views, much harder to learn)")
    s.add_argument("--scenes", help="scene difficulty preset: default, or proxy (one or two large, "
                   "fully visible people, little clutter: the benchmark tier for searches on a CPU)")
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

    t = sub.add_parser("train", help="train a model (top-down, heatmaps) from a YAML config")
    t.add_argument("--config", help="experiment YAML: a path, or a shipped name such as baselines/tiny (posenas configs)")
    t.add_argument("--out", help="run directory (default runs/<config name>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--arch", help="architecture JSON to train (e.g. a search's best_arch.json); replaces the config's model")
    t.add_argument("--init-from", help="start from this checkpoint's weights: the same arch's, or a supernet's slices")
    t.add_argument("--device", help="auto (default: CUDA when present), cpu, cuda, cuda:N")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides such as optim.lr=0.002")
    t.set_defaults(func=cmd_train)

    q = sub.add_parser("search", help="architecture search: a ViPNAS supernet searched under a budget, or "
                                      "EfficientPose's differentiable cost-aware search, or PNFS fabrics "
                                      "(by the config's supernet.space)")
    q.add_argument("--config", help="search YAML: a path, or a shipped name such as vipnas/tiny-resnet (posenas configs)")
    q.add_argument("--out", help="run directory (default runs/<config name>)")
    q.add_argument("--resume", action="store_true", help="continue the search in --out")
    q.add_argument("--device", help="auto (default: CUDA when present), cpu, cuda, cuda:N")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides such as search.max_gmacs=0.05")
    q.set_defaults(func=cmd_search)

    m = sub.add_parser("compare", help="compare search and training runs: picks side by side, mean ± std per "
                                       "method, Pareto plots of AP vs GMACs and latency")
    m.add_argument("runs", nargs="+", metavar="RUN", help="run directories (posenas search / posenas train --out)")
    m.add_argument("--out", required=True, help="folder for compare.md, compare.json, pareto_gmacs.png, "
                                                "pareto_latency.png")
    m.set_defaults(func=cmd_compare)

    e = sub.add_parser("eval", help="evaluate predictions (--gt/--pred) or a checkpoint (--checkpoint/--data)")
    e.add_argument("--gt", help="ground truth: dataset root or annotation file")
    e.add_argument("--pred", help="predictions JSON (COCO results, or PCKh records), in the annotation file's "
                                  "pixel frame (MPII: 1-based)")
    e.add_argument("--checkpoint", help="model checkpoint to run")
    e.add_argument("--data", help="dataset root or annotation file to run the checkpoint on")
    e.add_argument("--boxes", help="person detections JSON (default: ground-truth boxes); "
                                   "detections on images the data lacks are skipped with a warning")
    e.add_argument("--headboxes", help="MPII's ground-truth .mat (mpii_gt_val.mat, as HRNet and MMPose ship it) "
                                       "with the head boxes PCKh needs, for MPII JSON records without 'headbox'")
    e.add_argument("--flip-test", action="store_true", help="average with the mirrored image's heatmaps")
    e.add_argument("--out", help="where --checkpoint writes predictions and metrics (default: beside the checkpoint)")
    e.add_argument("--device", default="auto")
    e.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="onnx: --checkpoint is a file made by `posenas export`")
    e.add_argument("--metric", choices=["coco", "pckh", "posetrack"], help="default: pckh for MPII data, coco otherwise")
    e.add_argument("--split", help="split of a dataset root (default val)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--oracle", choices=["topdown", "bottomup"],
                   help="no model: encode --data's ground truth into a codec's training targets, decode them and "
                        "score the result (the AP ceiling of that codec and input size)")
    e.add_argument("--input", type=_dims("HEIGHTxWIDTH such as 256x192"),
                   help="model input size for --oracle (default 256x192 top-down, 512x512 bottom-up)")
    e.add_argument("--dynamic", action="store_true",
                   help="multi-exit (3M-Pose) checkpoint: dynamic inference, each image leaving at the first "
                        "early exit it passes, beside every exit alone (the thesis' Table 4.3); writes "
                        "dynamic.json, dynamic.txt and dynamic_predictions.json into --out")
    e.add_argument("--thresholds", type=float, nargs="+", metavar="T",
                   help="--dynamic: confidence threshold per early exit (inf: never exit there; default: the "
                        "thesis' 1 and 0.6)")
    e.set_defaults(func=cmd_eval)

    q = sub.add_parser("profile", help="parameters, MACs and measured latency of a model")
    q.add_argument("--model", help="a named model (e.g. simplebaseline-resnet50)")
    q.add_argument("--arch", help="architecture JSON of any search space: a path, or a shipped name such as "
                                  "vipnas/s-vipnas-res50 (posenas configs)")
    q.add_argument("--checkpoint", help="a checkpoint (its input size is the default)")
    q.add_argument("--input", type=_dims("HEIGHTxWIDTH such as 256x192 (the papers' order)"),
                   help="input size HxW (default 256x192, or the checkpoint's)")
    q.add_argument("--joints", type=int, help="output joints for --model/--arch (default: the arch's own, "
                                               "e.g. a PNFS arch's parts, else 17)")
    q.add_argument("--threads", type=int, help="torch threads for the latency runs (default: torch's)")
    q.add_argument("--runs", type=int, default=30, help="timed runs after 5 warm-up runs")
    q.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="onnx: time the model in ONNX Runtime (exported on the fly, or --checkpoint MODEL.onnx)")
    q.add_argument("--no-latency", action="store_true", help="count params and MACs only")
    q.add_argument("--layers", action="store_true", help="per-layer MACs breakdown")
    q.add_argument("--json", action="store_true", help='print {"params", "macs", "input", "latency_ms"}')
    q.set_defaults(func=cmd_profile)

    i = sub.add_parser("infer", help="run a checkpoint on images, folders of frames or videos")
    i.add_argument("--checkpoint", required=True)
    i.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files or folders of frames; or video files (.mp4, .avi, ...): online pose estimation "
                        "and tracking, key frame every T + 1 frames for a T-ViPNAS checkpoint")
    i.add_argument("--video", action="store_true", help="each folder of frames is a video (tracked, written as .mp4)")
    i.add_argument("--detector", help="video: a bottom-up checkpoint that finds new people at key frames")
    i.add_argument("--fps", type=float, help="video: frame rate of a folder of frames (default 25) or override")
    i.add_argument("--boxes", help="person boxes JSON, keyed by image file name: a list of {\"image\": NAME, "
                                   "\"bbox\": [x, y, w, h], \"score\": s}, NAME the input's path as given or its base "
                                   "name (or \"image_id\": the input's 0-based position); default: the whole image is "
                                   "one person")
    i.add_argument("--out", required=True, help="folder for drawings and predictions.json")
    i.add_argument("--no-flip", action="store_true", help="skip the flip test (on a video it applies to key frames)")
    i.add_argument("--min-score", type=float, default=0.2, help="joints below this score are not drawn")
    i.add_argument("--scores", action="store_true", help="write each joint's score beside it (the box always "
                                                          "carries the person's score)")
    i.add_argument("--device", default="auto")
    i.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="onnx: --checkpoint is a file made by `posenas export`")
    i.add_argument("--dynamic", action="store_true",
                   help="multi-exit (3M-Pose) checkpoint: dynamic inference (each image leaves at the first early "
                        "exit it passes); prints how many left at each exit")
    i.add_argument("--thresholds", type=float, nargs="+", metavar="T",
                   help="--dynamic: confidence threshold per early exit (inf: never exit there; default: the "
                        "thesis' 1 and 0.6)")
    i.set_defaults(func=cmd_infer)

    x = sub.add_parser("export", help="export a checkpoint to ONNX, checked against PyTorch")
    x.add_argument("checkpoint")
    x.add_argument("--onnx", required=True, help="output .onnx file")
    x.add_argument("--opset", type=int, default=18)
    x.add_argument("--dynamic-batch", action="store_true", help="allow any batch size (default: batch 1)")
    x.add_argument("--no-rewrite", action="store_true", help="export the model's graph as it is, without the "
                                                             "faster equivalent rewrites (to compare or debug)")
    x.add_argument("--int8", action="store_true", help="ONNX Runtime static int8 quantisation (QDQ), calibrated on "
                                                       "train crops; same as --precision int8")
    x.add_argument("--precision", choices=["fp32", "int8", "fp16"],
                   help="fp32 (default); int8; fp16 (float16 weights and arithmetic, float32 input/output)")
    x.add_argument("--calib-data", help="int8: dataset root whose train split gives the calibration crops "
                                        "(default: the checkpoint's training data)")
    x.add_argument("--calib-images", type=int, help="int8: calibration crops (default 64)")
    x.set_defaults(func=cmd_export)

    d = sub.add_parser("demo", help="the end-to-end demo on the built-in synthetic data")
    d.add_argument("--out", default="runs/demo", help="run folder")
    d.add_argument("--data", default="data/synthetic", help="where the synthetic datasets live (made if absent)")
    d.add_argument("--config", default="configs/baselines/tiny.yaml", help="training config of the demo model")
    d.set_defaults(func=cmd_demo)

    g = sub.add_parser("configs", help="list the shipped configs and architecture JSONs (usable by name)")
    g.add_argument("--paths", action="store_true", help="print each file's full path instead")
    g.set_defaults(func=cmd_configs)
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
