"""Latency-table calibration (issue 17, item 5): the least-squares fit, the corrected table the
DNAS and ``predict`` read, the header / cache key, and malformed calibration blocks. Timing
is faked with deterministic costs, so nothing here depends on the machine's speed."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
import torch

import posenas.search.cost_table as ct
from posenas.config import from_dict
from posenas.errors import PosenasError
from posenas.search.cost_table import (Calibration, cached_cost_table, calibration_archs, fit_calibration,
                                       load_cost_table, read_cost_table, save_cost_table, table_header)
from posenas.search.efficientpose import DNASExperimentConfig, sample_arch
from posenas.spaces.efficientpose import OPS, SKIP, EfficientPoseSupernet, HeadArch, derive

# the fake machine: an op alone costs its parameter count x UNIT ms; a whole network costs
# SCALE x its parameters x UNIT + OVERHEAD per module a table times (each MBConv, stem, head)
UNIT, SCALE, OVERHEAD = 1e-5, 0.7, 0.05


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def fake_network_ms(model: torch.nn.Module) -> float:
    mbconvs = sum(not isinstance(b, torch.nn.Identity) for b in model.backbone.blocks)
    return SCALE * _params(model) * UNIT + OVERHEAD * (mbconvs + 2)


def fake_schedule(calls: dict | None = None):
    """A stand-in for the interleaved timing: deterministic costs of the fake machine."""
    def timed(header, items, progress=False):
        if calls is not None:
            calls["ops"] += sum(not network for _, _, network in items)
            calls["networks"] += sum(network for _, _, network in items)
        return [fake_network_ms(m) if network else _params(m) * UNIT for m, _, network in items]
    return timed


@pytest.fixture
def fake_timer(monkeypatch):
    calls = {"ops": 0, "networks": 0}
    monkeypatch.setattr(ct, "_time_schedule", fake_schedule(calls))
    return calls


@pytest.fixture(scope="module")
def calibrated_file(tmp_path_factory):
    """One calibrated table file (fake timer), built once for the malformed-entry cases."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ct, "_time_schedule", fake_schedule())
        return cached_cost_table(tmp_path_factory.mktemp("table"), header(8))[0]


def header(calibration: int = 8) -> dict:
    return table_header("cpu_latency", "small", HeadArch(), (32, 32), 17, runs=1, warmup=0,
                        calibration_archs=calibration)


def test_fit_recovers_a_known_scale_and_call_overhead():
    rng = np.random.default_rng(0)
    raw = rng.uniform(10, 30, 8)
    calls = rng.integers(10, 31, 8)
    exact = [(float(r), int(n), 0.87 * r - 0.21 * n) for r, n in zip(raw, calls)]
    fit = fit_calibration(exact)
    assert (fit.scale, fit.call_overhead) == pytest.approx((0.87, -0.21), abs=1e-9)
    assert fit.points == tuple(exact) and fit.predict(20.0, 25) == pytest.approx(0.87 * 20 - 0.21 * 25)
    noisy = [(r, n, m * (1 + 0.002 * rng.standard_normal())) for r, n, m in exact]  # 0.2 % timing noise
    fit = fit_calibration(noisy)
    assert fit.scale == pytest.approx(0.87, abs=0.02) and fit.call_overhead == pytest.approx(-0.21, abs=0.03)
    with pytest.raises(PosenasError, match="2 archs; at least 3 needed"):
        fit_calibration(exact[:2])


def test_a_fit_that_would_make_an_op_free_falls_back_to_the_scale_alone(capsys):
    points = [(r, n, 0.4 * r + 0.1 * n) for r, n in ((20.0, 24), (10.0, 10), (25.0, 26), (15.0, 16))]
    two = fit_calibration(points, cheapest_call=0.2)
    assert (two.scale, two.call_overhead) == pytest.approx((0.4, 0.1)) and capsys.readouterr().err == ""
    steep = [(r, n, 2.0 * r - 0.5 * n) for r, n, _ in points]  # a 0.2 ms op would cost 2 x 0.2 - 0.5 < 0
    fit = fit_calibration(steep, cheapest_call=0.2)
    x, y = np.array([p[0] for p in steep]), np.array([p[2] for p in steep])
    assert fit.call_overhead == 0.0 and fit.scale == pytest.approx(float(x @ y / (x @ x)))
    assert "fitting the scale alone" in capsys.readouterr().err
    assert fit_calibration(steep, cheapest_call=1.0).call_overhead == pytest.approx(-0.5)  # 2 x 1.0 - 0.5 > 0: kept
    assert fit_calibration(steep).call_overhead == pytest.approx(-0.5)  # no table to check against
    backwards = fit_calibration([(r, n, 5.0 * n - 0.1 * r) for r, n, _ in points])  # the two-term scale < 0
    assert backwards.call_overhead == 0.0 and backwards.scale > 0 and "fitting the scale alone" in capsys.readouterr().err


def test_calibration_archs_are_seeded_and_span_dense_to_skip_heavy():
    archs = calibration_archs("small", HeadArch(), 8)
    assert [a.blocks for a in archs] == [a.blocks for a in calibration_archs("small", HeadArch(), 8)]
    ops = [sum(op != SKIP for op in a.blocks) for a in archs]
    assert ops[0] == 28 and ops[-1] < 14  # no skip at all ... skip at ~90 % of the positions that allow it
    uniform = {sample_arch("small", HeadArch(), random.Random(0)).blocks for _ in range(1)}
    assert not uniform & {a.blocks for a in archs}


def test_calibrated_table_predicts_the_networks_and_differs_from_the_raw(tmp_path, fake_timer):
    path, table = cached_cost_table(tmp_path, header(8))
    assert fake_timer["networks"] == 8
    saved, raw, calibration = read_cost_table(path)
    assert saved == header(8) and saved["calibration_archs"] == 8
    assert (calibration.scale, calibration.call_overhead) == pytest.approx((SCALE, OVERHEAD), rel=1e-6)
    rng = random.Random(1)
    for _ in range(3):  # held-out archs: the corrected table predicts the (fake) network, the raw one does not
        arch = sample_arch("small", HeadArch(), rng)
        truth = fake_network_ms(derive(arch, 17))
        assert table.predict(arch) == pytest.approx(truth, rel=1e-6)
        assert raw.predict(arch) == pytest.approx(_params(derive(arch, 17)) * UNIT, rel=1e-6)
        assert abs(raw.predict(arch) - truth) / truth > 0.05
    # switched off: the file read uncalibrated gives the raw costs
    assert load_cost_table(path, calibrated=False)[1] == raw
    assert load_cost_table(path)[1] == table != raw
    # the DNAS cost term reads the corrected per-op costs (one-hot alpha: exactly the corrected prediction)
    supernet = EfficientPoseSupernet("small", HeadArch(), 17)
    arch = sample_arch("small", HeadArch(), rng)
    with torch.no_grad():
        supernet.alpha.fill_(-1e4)
        for i, op in enumerate(arch.blocks):
            supernet.alpha[i, OPS.index(op)] = 0.0
    assert float(supernet.expected_cost(table).detach()) == pytest.approx(fake_network_ms(derive(arch, 17)), rel=1e-5)
    # a run folder's copy (what run_dnas writes) keeps the measured costs and the calibration
    copy = tmp_path / "run" / "cost_table.json"
    save_cost_table(copy, *read_cost_table(path))
    assert read_cost_table(copy) == (saved, raw, calibration) and load_cost_table(copy)[1] == table


def test_header_and_cache_key_include_the_calibration(tmp_path, fake_timer):
    assert "calibration_archs" not in table_header("macs", "small", HeadArch(), (32, 32), 17)
    off, _ = cached_cost_table(tmp_path, header(0))
    assert fake_timer["networks"] == 0 and "calibration" not in json.loads(off.read_text())
    on, _ = cached_cost_table(tmp_path, header(8))
    other, _ = cached_cost_table(tmp_path, header(3))
    assert len({off, on, other}) == 3 and fake_timer["networks"] == 8 + 3
    ops_before = fake_timer["ops"]
    assert cached_cost_table(tmp_path, header(8))[0] == on and fake_timer["ops"] == ops_before  # reused, not re-measured
    with pytest.raises(PosenasError, match=r"calibration_archs: expected 0 \(no calibration\) or an integer >= 3, got 2"):
        header(2)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["calibration"].update(scale=-1.0), r"calibration\.scale: expected a positive finite number, got -1\.0"),
    (lambda d: d["calibration"].update(call_overhead="fast"), r"calibration\.call_overhead: expected a finite number, got 'fast'"),
    (lambda d: d["calibration"].update(call_overhead=True), r"calibration\.call_overhead: expected a finite number, got True"),
    (lambda d: d["calibration"].update(scale=float("nan")), r"calibration\.scale: expected a positive finite number, got nan"),
    (lambda d: d["calibration"]["points"].pop(), r"calibration\.points: expected 8 \(header\.calibration_archs\), got 7"),
    (lambda d: d["calibration"]["points"].__setitem__(0, [1.0, 2]), r"calibration\.points: expected a list of \[table"),
    (lambda d: d.pop("calibration"), r"calibration: missing \(header\.calibration_archs is 8\)"),
    (lambda d: d["calibration"].pop("call_overhead"), r"calibration: expected an object with the keys scale, call_"),
    (lambda d: d["calibration"].update(offset=1.0), r"calibration: expected an object with the keys scale, call_"),
    (lambda d: d["header"].update(calibration_archs=0), r"calibration: present, but header\.calibration_archs is 0"),
    (lambda d: d["header"].update(calibration_archs="8"), r"header\.calibration_archs: expected 0"),
])
def test_a_malformed_calibration_entry_is_a_one_line_error_naming_file_and_field(tmp_path, calibrated_file, edit,
                                                                                 message):
    data = json.loads(calibrated_file.read_text())
    load_cost_table(calibrated_file)  # the file as written loads
    edit(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(PosenasError, match=message) as err:
        load_cost_table(bad)
    assert str(err.value).startswith(f"{bad}: ") and "\n" not in str(err.value)


def test_search_config_validates_the_calibration_count():
    cfg = from_dict(DNASExperimentConfig, {"search": {"latency_calibration_archs": 0}}, "config")
    assert cfg.search.latency_calibration_archs == 0
    assert DNASExperimentConfig().search.latency_calibration_archs == 8
    for bad, message in ((2, "expected 0 (no calibration) or an integer >= 3, got 2"), (-1, "expected 0"),
                         (True, "expected an integer, got True"), (2.5, "expected an integer")):
        with pytest.raises(PosenasError, match=f"^config.search.latency_calibration_archs: {re.escape(message)}"):
            from_dict(DNASExperimentConfig, {"search": {"latency_calibration_archs": bad}}, "config")


def test_calibration_round_trips_through_json():
    c = Calibration(0.9, -0.03, ((20.0, 25, 19.1), (12.5, 11, 13.0)))
    assert Calibration.from_json(json.loads(json.dumps(c.to_json())), "x") == c


class Recorder(torch.nn.Module):
    """Logs its calls (and the flushes between them) into a shared list."""

    def __init__(self, name: str, log: list):
        super().__init__()
        self.name, self.log = name, log

    def forward(self, x):
        self.log.append(self.name)
        return x


@pytest.mark.parametrize("cold", [True, False])
def test_the_schedule_interleaves_every_module_once_per_round(monkeypatch, cold):
    log: list[str] = []
    monkeypatch.setattr(torch, "zeros", lambda n: type("Buffer", (), {"add_": lambda self, v: log.append("flush")})())
    items = [(Recorder(n, log), torch.zeros_like(torch.empty(1)), n.startswith("net")) for n in ("a", "b", "c", "net")]
    hdr = {"kind": "cpu_latency", "runs": 4, "warmup": 1, "cold_cache": cold, "flush_bytes": 64}
    times = ct._time_schedule(hdr, items)
    assert len(times) == 4 and all(t >= 0 for t in times)
    # every module: once untimed (or a flush) + once timed per round, in 5 rounds; each round holds every module
    pairs = [tuple(log[i:i + 2]) for i in range(0, len(log), 2)]
    assert len(pairs) == 5 * 4
    for r in range(5):
        assert sorted(p[1] for p in pairs[4 * r:4 * r + 4]) == ["a", "b", "c", "net"]
    for before, timed in pairs:  # ops: flushed (cold) or warmed by an untimed call; the network always warmed
        assert before == ("flush" if cold and timed != "net" else timed)
    assert [p[1] for p in pairs[:4]] != [p[1] for p in pairs[4:8]] or [p[1] for p in pairs[4:8]] != [
        p[1] for p in pairs[8:12]]  # the order is shuffled between rounds


def test_probes_are_timed_in_the_same_schedule_and_not_fitted(fake_timer):
    probe = derive(sample_arch("small", HeadArch(), random.Random(5)), 17)
    table, calibration, probes = ct.measure_cost_table(header(3), probes=[probe])
    assert probes == [pytest.approx(fake_network_ms(probe))] and len(calibration.points) == 3
    assert fake_timer["networks"] == 4
    assert ct.build_cost_table(header(3)) == table and fake_timer["networks"] == 4  # build: the ops alone
