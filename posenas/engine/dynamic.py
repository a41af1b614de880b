"""3M-Pose's dynamic inference (Hoang, 2021, Sec. 3.1.4, Table 4.3): a multi-exit network
stops early for the images whose heatmaps at an early escape layer (EEL) look good enough.

The confidence of an exit's output (Eqs. 3.1-3.4) is built from the skew and kurtosis of
each detected joint's heatmap: a trained net's heatmap of a found joint is a sharp Gaussian
bump on a flat background, so its values are strongly right-skewed and heavy-tailed; a poor
map is flat or noisy. :class:`DynamicExits` runs a batch to the first exit, lets the images
that pass go, continues the rest (:meth:`posenas.spaces.threem.ExitState.select`), and so on;
the last exit takes whoever is left. :func:`evaluate_dynamic` gives Table 4.3: every exit
alone (static) and dynamic inference, GMACs and AP.

Where the thesis is silent or contradicts itself (our choices):

- "N is the total number of detected keypoints" but Eq. 3.4 has no sum: conf is Eq. 3.4's
  value averaged over the detected joints' maps; a joint is detected when its map's maximum
  is >= the codec's ``detection_threshold`` (the value the decoder keeps joints by);
- Eq. 3.4 is applied to the raw heatmap channels of the exit's output (no flip averaging:
  with the flip test the mirrored copy is just another image of the batch and picks its exit
  itself, so a view, not an image, is what leaves at an exit);
- an image with N = 0 at an exit stops there ("if N = 0, we automatically stop"), unless
  ``stop_on_empty`` is off (then it continues: there is nothing to judge it by);
- an early exit's cost in dynamic inference includes the heads of the earlier exits it was
  tested at (:func:`exit_macs` with ``tested``); the static per-exit GMACs do not.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from posenas.errors import PosenasError

#: The thesis' settings for its two EELs (layers 4 and 7 of 10): (c0, c1, c2) and threshold.
THESIS_COEFFS = ((1.0, 1.0, 1.0), (2.0, 1.0, 1.0))
THESIS_THRESHOLDS = (1.0, 0.6)
#: The detection threshold when no codec gives one (the associative-embedding codec's default).
DEFAULT_DETECTION_THRESHOLD = 0.1


# ---------------------------------------------------------------- confidence (Eqs. 3.1-3.4)
def moments(values: torch.Tensor, orders: Sequence[int] = (2, 3, 4)) -> list[torch.Tensor]:
    """Eq. 3.3: the population central moments ``1/n sum (x_i - mean)^k`` over the last dim, one per order."""
    centred = values - values.mean(-1, keepdim=True)
    return [(centred**k).mean(-1) for k in orders]


def skew_kurtosis(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Skew (Eq. 3.1, ``m3 / m2^1.5``) and kurtosis (Eq. 3.2, ``m4 / m2^2``, Pearson's, not the
    excess) of the values of each map ``(..., h, w)``: two tensors of shape ``(...)``. Population
    moments (Eq. 3.3), as ``scipy.stats.skew`` / ``kurtosis(fisher=False)`` with ``bias=True``.
    A constant map gives skew = kurtosis = 0 (not NaN). (The thesis says both "fall between -1
    and 1"; Pearson's kurtosis is >= 1 + skew^2, so a sharp heatmap's is in the tens.)

    Computed in float64 (float32 on MPS) with each map's deviations divided by their largest
    magnitude first: both ratios are scale-invariant, and the tiny maps of an untrained net
    would otherwise underflow ``m2^2``."""
    dtype = torch.float32 if maps.device.type == "mps" else torch.float64
    flat = maps.flatten(-2).to(dtype)
    constant = flat.amax(-1) == flat.amin(-1)
    centred = flat - flat.mean(-1, keepdim=True)
    scale = centred.abs().amax(-1, keepdim=True)
    m2, m3, m4 = moments(centred / torch.where(scale > 0, scale, torch.ones_like(scale)))
    flat_map = constant | (m2 <= 0)
    m2 = torch.where(flat_map, torch.ones_like(m2), m2)
    zero = torch.zeros_like(m2)
    skew = torch.where(flat_map, zero, m3 / m2**1.5)
    kurt = torch.where(flat_map, zero, m4 / m2**2)
    return skew.to(maps.dtype), kurt.to(maps.dtype)


def exit_confidence(heatmaps: torch.Tensor, coeffs: Sequence[float] = THESIS_COEFFS[0],
                    detection_threshold: float = DEFAULT_DETECTION_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3.4 per image of heatmaps ``(N, K, h, w)``: ``conf`` ``(N,)`` and ``detected`` ``(N,)``
    (int: how many joints' maps reach ``detection_threshold`` at their maximum).

    ``conf = sigmoid(c0 * (c1 * skew + c2 * kurtosis) / 2) - 0.5`` of each detected joint's map,
    averaged over the detected joints (the thesis' N); 0 where none is detected.

    As written, Eq. 3.4 lies in (-0.5, 0.5): the thesis' thresholds (layer 4: coeffs (1, 1, 1),
    threshold 1; layer 7: (2, 1, 1), threshold 0.6; the defaults here and in
    :class:`DynamicExits`) can never be met, so its early exits come from the N = 0 rule
    ("if N = 0, we automatically stop"): an image with no detected keypoint stops at that exit
    (Table 4.3's note that layer 4 "can reject most of the negative samples")."""
    if heatmaps.ndim != 4:
        raise PosenasError(f"exit_confidence: expected heatmaps (N, K, h, w), got shape {tuple(heatmaps.shape)}")
    if len(coeffs) != 3:
        raise PosenasError(f"exit_confidence: coeffs are (c0, c1, c2), got {tuple(coeffs)!r}")
    c0, c1, c2 = (float(c) for c in coeffs)
    skew, kurt = skew_kurtosis(heatmaps)
    per_joint = torch.sigmoid(c0 * (c1 * skew.float() + c2 * kurt.float()) / 2) - 0.5
    found = heatmaps.flatten(2).amax(-1) >= detection_threshold
    detected = found.sum(1)
    total = torch.where(found, per_joint, torch.zeros_like(per_joint)).sum(1)
    conf = total / detected.clamp(min=1).to(total.dtype)
    return conf, detected


# ---------------------------------------------------------------- the wrapper
def has_exits(model: Any) -> bool:
    """Whether ``model`` is a multi-exit network dynamic inference can run (begin / advance / exit_count > 1)."""
    return (all(hasattr(model, a) for a in ("begin", "advance", "exit_count"))
            and isinstance(getattr(model, "exit_count", None), int) and model.exit_count > 1)


def require_exits(model: Any, where: str) -> None:
    """One-line error unless :func:`has_exits`."""
    if not has_exits(model):
        raise PosenasError(f"{where}: --dynamic: the model ({type(model).__name__}) has no early exits "
                           "(dynamic inference needs a multi-exit network such as a 3M-Pose one with EELs)")


def exit_layers(net: Any) -> list[int]:
    """The 1-based fabric layer of every exit (3M-Pose: the EELs then the last layer); else 1, 2, ..."""
    layers = getattr(getattr(net, "net", None), "exit_layers", None)
    return list(layers) if layers is not None else list(range(1, net.exit_count + 1))


class DynamicExits(nn.Module):
    """Dynamic inference over a multi-exit network (anything with ``begin`` / ``advance`` /
    ``exit_count``, e.g. :class:`posenas.spaces.threem.ThreeMNet`): ``forward(x)`` gives the
    ``(N, 2K, h, w)`` output each image took, in batch order.

    The batch runs to exit 0; the images whose :func:`exit_confidence` reaches that exit's
    threshold (or that have no detected joint, with ``stop_on_empty``) take its output; the
    others continue; the last exit takes the rest. ``thresholds``: one per early exit
    (``float('inf')``: never exit there, not even by the N = 0 rule, and its head is not run);
    ``coeffs``: one (c0, c1, c2) per early exit. Defaults: the thesis' values for two early
    exits (:data:`THESIS_THRESHOLDS`, :data:`THESIS_COEFFS`), and its first EEL's (threshold 1,
    coeffs (1, 1, 1)) at every early exit of a net with another number of them.

    With the flip test the mirrored copy is just another image of the batch: it picks its exit
    itself. ``counts[e]``: how many images (views) left at exit e since the last :meth:`reset`;
    ``exits``: the exit each image of the last batch took."""

    def __init__(self, net: nn.Module, thresholds: Sequence[float] | None = None,
                 coeffs: Sequence[Sequence[float]] | None = None,
                 detection_threshold: float = DEFAULT_DETECTION_THRESHOLD, stop_on_empty: bool = True):
        super().__init__()
        require_exits(net, "DynamicExits")
        early = net.exit_count - 1
        if thresholds is None:
            thresholds = THESIS_THRESHOLDS if early == len(THESIS_THRESHOLDS) else (THESIS_THRESHOLDS[0],) * early
        if coeffs is None:
            coeffs = THESIS_COEFFS if early == len(THESIS_COEFFS) else (THESIS_COEFFS[0],) * early
        thresholds, coeffs = [float(t) for t in thresholds], [tuple(float(c) for c in cs) for cs in coeffs]
        if len(thresholds) != early:
            raise PosenasError(f"thresholds: expected one per early exit ({early}), got {len(thresholds)}: "
                               f"{thresholds}")
        if len(coeffs) != early or any(len(c) != 3 for c in coeffs):
            raise PosenasError(f"coeffs: expected one (c0, c1, c2) per early exit ({early}), got {coeffs}")
        if any(math.isnan(t) for t in thresholds):
            raise PosenasError(f"thresholds: expected numbers (inf: never exit there), got {thresholds}")
        self.net, self.thresholds, self.coeffs = net, thresholds, coeffs
        self.detection_threshold, self.stop_on_empty = float(detection_threshold), bool(stop_on_empty)
        self.stride = getattr(net, "stride", 4)
        self.train(net.training)
        self.counts: list[int] = [0] * net.exit_count
        self.exits: torch.Tensor | None = None

    def reset(self) -> None:
        self.counts = [0] * self.net.exit_count

    @property
    def tested(self) -> list[bool]:
        """Per early exit, whether images are tested there (its head runs): a finite threshold."""
        return [t != math.inf for t in self.thresholds]

    def leaving(self, output: torch.Tensor, exit_index: int) -> torch.Tensor:
        """Which images of ``output`` (an early exit's, heatmaps then tags) stop at ``exit_index``: a bool mask."""
        k = getattr(self.net, "num_joints", output.shape[1] // 2)
        conf, detected = exit_confidence(output[:, :k], self.coeffs[exit_index], self.detection_threshold)
        leave = (detected > 0) & (conf >= self.thresholds[exit_index])
        if self.stop_on_empty:
            leave |= detected == 0
        return leave

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net, last = self.net, self.net.exit_count - 1
        state = net.begin(x)
        remaining = torch.arange(len(x), device=x.device)
        exits = torch.full((len(x),), last, dtype=torch.long, device=x.device)
        out = None
        for e in range(last + 1):
            tested = e == last or self.tested[e]
            state, y = net.advance(state, e, head=tested)
            if not tested:
                continue
            leave = torch.ones(len(y), dtype=torch.bool, device=y.device) if e == last else self.leaving(y, e)
            if out is None:
                out = y.new_zeros((len(x), *y.shape[1:]))
            taken = remaining[leave]
            out[taken] = y[leave]
            exits[taken] = e
            self.counts[e] += len(taken)
            stay = torch.nonzero(~leave).flatten()
            if len(stay) == 0:
                break
            remaining = remaining[stay]
            state = state.select(stay)
        self.exits = exits
        return out


# ---------------------------------------------------------------- cost
class _PathTo(nn.Module):
    """The computation dynamic inference does for an image leaving at ``exit_index``: every layer
    up to there, that exit's head and the heads of the earlier exits it was ``tested`` at."""

    def __init__(self, net: nn.Module, exit_index: int, tested: Sequence[bool]):
        super().__init__()
        self.net, self.exit_index, self.tested = net, exit_index, list(tested)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self.net.begin(x)
        for e in range(self.exit_index + 1):
            state, out = self.net.advance(state, e, head=e == self.exit_index or self.tested[e])
        return out


def exit_macs(net: nn.Module, input_size: tuple[int, int], tested: Sequence[bool] | None = None) -> list[int]:
    """MACs (batch 1, :func:`posenas.cost.count_macs`) of running to each exit: ``None`` → each exit
    alone (:class:`~posenas.spaces.threem.ExitModel`: static inference at that exit); ``tested``
    (one bool per early exit, :attr:`DynamicExits.tested`) → what dynamic inference spends on an
    image leaving there (the earlier tested exits' heads included)."""
    from posenas.cost import count_macs
    from posenas.spaces.threem import ExitModel

    require_exits(net, "exit_macs")
    if tested is not None and len(tested) != net.exit_count - 1:
        raise PosenasError(f"exit_macs: tested: expected one flag per early exit ({net.exit_count - 1}), got {tested}")
    out = []
    for e in range(net.exit_count):
        path = ExitModel(net, e) if tested is None else _PathTo(net, e, tested)
        out.append(count_macs(path.train(net.training), input_size)[0])  # keeps net's mode
    return out


def average_gmacs(counts: Sequence[int], macs: Sequence[int]) -> float:
    """GMACs per image (view) when ``counts[e]`` images leave at exit e, which costs ``macs[e]``."""
    if len(counts) != len(macs):
        raise PosenasError(f"average_gmacs: {len(counts)} counts for {len(macs)} exits")
    total = sum(counts)
    if total <= 0:
        raise PosenasError("average_gmacs: no image was counted at any exit")
    return sum(c * m for c, m in zip(counts, macs)) / total / 1e9


# ---------------------------------------------------------------- evaluation (Table 4.3)
def _ap(result: dict, key: str) -> float | None:
    value = result.get(key)
    return None if value is None else float(value)


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or value < 0 else f"{value:.{digits}f}"


def _threshold(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:g}"


def dynamic_table(report: dict) -> str:
    """Table 4.3's layout: per exit alone (static) and dynamic, layer | GMACs | AP | AP(M) | AP(L),
    and where dynamic inference's images (views) left."""
    lines = [f"{'layer':<8} {'GMACs':>9} {'AP':>7} {'AP(M)':>7} {'AP(L)':>7}   dynamic: left here (GMACs then)"]
    for row in report["exits"]:
        lines.append(f"{row['layer']:<8} {row['gmacs']:9.4f} {_number(row['AP'], 3):>7} {_number(row['APM'], 3):>7} "
                     f"{_number(row['APL'], 3):>7}   {row['fraction']:6.1%} ({row['count']} views, "
                     f"{row['dynamic_gmacs']:.4f})")
    d = report["dynamic"]
    lines.append(f"{'dynamic':<8} {d['gmacs']:9.4f} {_number(d['AP'], 3):>7} {_number(d['APM'], 3):>7} "
                 f"{_number(d['APL'], 3):>7}   {report['views']} views")
    s = report["static"]
    saved = 1 - d["gmacs"] / s["gmacs"] if s["gmacs"] else 0.0
    thresholds = ", ".join(_threshold(t) for t in report["thresholds"])
    coeffs = ", ".join("(" + ", ".join(f"{c:g}" for c in cs) + ")" for cs in report["coeffs"])
    lines.append(f"dynamic vs static inference (layer {s['layer']}): {saved:+.1%} GMACs saved, AP "
                 + ("-" if s["AP"] is None or d["AP"] is None else f"{d['AP'] - s['AP']:+.3f}")
                 + f"; thresholds {thresholds}, coeffs {coeffs}, detection threshold "
                 f"{report['detection_threshold']:g}, stop on N = 0: {report['stop_on_empty']}")
    return "\n".join(lines)


def evaluate_dynamic(model: nn.Module, dataset: Any, codec: Any, device: torch.device,
                     thresholds: Sequence[float] | None = None, coeffs: Sequence[Sequence[float]] | None = None, *,
                     stop_on_empty: bool = True, detection_threshold: float | None = None, metric: str | None = None,
                     static: bool = True, **predict_options: Any) -> dict:
    """Bottom-up evaluation with dynamic inference (:func:`posenas.engine.bottomup.evaluate_bottomup`
    with :class:`DynamicExits` as the model) and Table 4.3's report beside it.

    Returns a dict: ``exits`` (per exit: ``layer``, ``count`` and ``fraction`` of the views that
    left there, ``gmacs`` of that exit alone, ``dynamic_gmacs`` of an image leaving there, and
    with ``static`` that exit's own ``AP``/``APM``/``APL``, else None), ``dynamic`` (``gmacs``
    averaged per view, ``AP``... and the full ``result``), ``static`` (the last exit's row:
    static inference), ``views``, the settings (an infinite threshold as the string ``"inf"``,
    so the dict is plain JSON), ``table`` (:func:`dynamic_table`), and
    ``predictions`` (the dynamic run's, :class:`~posenas.engine.predict.InstancePrediction`).
    ``detection_threshold`` defaults to the codec's. ``predict_options``: as
    :func:`~posenas.engine.bottomup.predict_images` (``flip_test``, ``batch_size``, ...)."""
    from posenas.engine.bottomup import evaluate_bottomup
    from posenas.spaces.threem import ExitModel

    require_exits(model, "evaluate_dynamic")
    if detection_threshold is None:
        detection_threshold = getattr(codec, "detection_threshold", DEFAULT_DETECTION_THRESHOLD)
    wrapper = DynamicExits(model, thresholds, coeffs, detection_threshold, stop_on_empty)
    metric, result, _, preds = evaluate_bottomup(wrapper, dataset, codec, device, metric, **predict_options)
    counts = list(wrapper.counts)
    size = tuple(codec.input_size)
    alone = exit_macs(model, size)
    path = exit_macs(model, size, wrapper.tested)
    views = sum(counts)
    layers = exit_layers(model)
    rows = []
    for e in range(model.exit_count):
        row = {"exit": e, "layer": layers[e], "count": counts[e], "fraction": counts[e] / views if views else 0.0,
               "gmacs": alone[e] / 1e9, "dynamic_gmacs": path[e] / 1e9, "AP": None, "APM": None, "APL": None}
        if static:
            exit_model = ExitModel(model, e).train(model.training)
            _, own, _, _ = evaluate_bottomup(exit_model, dataset, codec, device, metric, **predict_options)
            row.update(AP=_ap(own, "AP"), APM=_ap(own, "APM"), APL=_ap(own, "APL"), result=own)
        rows.append(row)
    report = {
        "metric": metric, "input_size": list(size), "views": views,
        "thresholds": [t if math.isfinite(t) else str(t) for t in wrapper.thresholds],
        "coeffs": [list(c) for c in wrapper.coeffs],
        "detection_threshold": wrapper.detection_threshold, "stop_on_empty": wrapper.stop_on_empty,
        "exits": rows,
        "dynamic": {"gmacs": average_gmacs(counts, path) if views else 0.0, "AP": _ap(result, "AP"),
                    "APM": _ap(result, "APM"), "APL": _ap(result, "APL"), "result": result},
        "static": {k: rows[-1][k] for k in ("layer", "gmacs", "AP", "APM", "APL")},
    }
    report["table"] = dynamic_table(report)
    report["predictions"] = preds
    return report


def evaluate_checkpoint_dynamic(checkpoint: Any, data: Any, out: Any, *, split: str | None = None,
                                thresholds: Sequence[float] | None = None, flip_test: bool = False,
                                headboxes: Any = None, metric: str | None = None, device: str = "auto",
                                batch_size: int = 64, workers: int = 0, progress: bool = True) -> dict:
    """`posenas eval --checkpoint CKPT --data DIR --dynamic`: load as `posenas eval` does
    (:func:`posenas.runtime.load_model`, PyTorch), :func:`evaluate_dynamic`, and write into ``out``
    ``dynamic.json`` (the report), ``dynamic.txt`` (the table) and ``dynamic_predictions.json``
    (the dynamic run's predictions, in the annotation files' frame) beside eval's own files."""
    from pathlib import Path

    from posenas.data.layout import load_dataset
    from posenas.engine.distributed import resolve_device
    from posenas.engine.predict import prediction_records
    from posenas.jsonio import write_json, write_text
    from posenas.runtime import load_model

    loaded = load_model(checkpoint, "torch")
    require_exits(loaded.model, str(checkpoint))
    dataset = load_dataset(data, split, headboxes=headboxes)
    if dataset.schema != loaded.schema:
        raise PosenasError(
            f"{checkpoint}: the model predicts {loaded.schema.name} joints but {dataset.source} is "
            f"{dataset.schema.name}"
        )
    dev = resolve_device(device)
    report = evaluate_dynamic(loaded.model.to(dev), dataset, loaded.codec, dev, thresholds, metric=metric,
                              flip_test=flip_test, batch_size=batch_size, workers=workers, progress=progress)
    out = Path(out)
    preds = report.pop("predictions")
    write_json(out / "dynamic_predictions.json", prediction_records(preds, report["metric"]))
    report = {"flip_test": flip_test, **report}
    write_json(out / "dynamic.json", {k: v for k, v in report.items() if k != "table"}, indent=2)
    write_text(out / "dynamic.txt", report["table"] + "\n")
    return report
