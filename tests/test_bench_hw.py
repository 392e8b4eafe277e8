"""The engine benchmark's arithmetic and report (pure Python, no simulator)."""

from __future__ import annotations

import pytest

from zipsgd import bench_hw as bh
from zipsgd.boards import BOARDS


def test_projection_engine_bound_on_pynq_z2():
    b = BOARDS["pynq-z2"]
    p = bh.project(46.19, 46, b.word_bits, b.clock_mhz, b.ddr_gbytes_per_s)
    assert p["bytes_per_sample"] == 46 * 8
    assert p["engine_samples_per_s"] == pytest.approx(b.clock_mhz * 1e6 / 46.19)
    assert p["memory_samples_per_s"] == pytest.approx(2.1e9 / 368)
    assert p["samples_per_s"] == p["engine_samples_per_s"] and p["bound"] == "engine"
    # one 64-bit beat per cycle at 150 MHz reads 1.2 GB/s
    assert bh.project(1, 1, 64, 150, 2.1)["engine_bytes_per_s"] == pytest.approx(1.2e9)


def test_projection_memory_bound_and_tie():
    p = bh.project(1.0, 1, 128, 250.0, 2.0)            # 4 GB/s of demand against 2 GB/s
    assert p["bound"] == "memory" and p["samples_per_s"] == pytest.approx(2e9 / 16)
    assert p["engine_samples_per_s"] == pytest.approx(250e6)
    tie = bh.project(2.0, 1, 64, 200.0, 0.8)          # both 100 M samples/s
    assert tie["engine_samples_per_s"] == pytest.approx(tie["memory_samples_per_s"]) and tie["bound"] == "engine"
    with pytest.raises(ValueError):
        bh.project(0, 1, 64, 150, 2.1)


def test_speedup_against_ideal():
    s = bh.speedup(busy_32=4600 + 19, busy_b=1600 + 19, beats_32=4600, beats_b=1600)
    assert s["ideal"] == pytest.approx(46 / 16)
    assert s["speedup"] == pytest.approx(4619 / 1619)
    assert s["of_ideal"] == pytest.approx(s["speedup"] / s["ideal"]) and 0.95 < s["of_ideal"] < 1


def test_numpy_baseline_measures_the_same_job():
    r = bh.numpy_sgd(200, 9, 16, epochs=2, min_seconds=0.0)
    assert (r["n"], r["d"], r["batch"], r["epochs"]) == (200, 9, 16, 2) and r["runs"] == 1
    assert r["samples_per_s"] == pytest.approx(400 / r["seconds"])


def _fake_data():
    b = BOARDS["pynq-z2"]
    rows, proj = [], []
    for bits, beats in ((32, 46), (8, 16), (4, 10)):
        rows.append({"mode": f"m{bits}", "bits": bits, "d": 90, "batch": 64, "beats_per_sample": beats,
                     "beats": beats * 100, "stalls": 20, "stall_per_boundary": 12.0, "efficiency": 0.99,
                     "target_applies": True, **bh.speedup(4620, beats * 100 + 20, 4600, beats * 100)})
        cyc = beats + 0.19
        proj.append({"mode": f"m{bits}", "bits": bits, "n": 50_000, "d": 90, "batch": 64, "beats_per_sample": beats,
                     "cycles_per_sample": cyc, "vs_numpy": 1.0,
                     **bh.project(cyc, beats, b.word_bits, b.clock_mhz, b.ddr_gbytes_per_s),
                     **bh.speedup(46.19, cyc, 46, beats)})
    speed = {"label": "x", "simulator": "verilator", "cycles": 10, "wall_seconds": 1.0, "startup_seconds": 0.5,
             "cycles_per_second": 10.0, "cycles_per_job_second": 20.0, "cycles_per_cpu_second": 11.0, "note": "n"}
    return {"rows": rows, "projection": proj, "sim_speed": [speed],
            "numpy": {"n": 50_000, "d": 90, "batch": 64, "epochs": 1, "seconds": 0.01, "runs": 3,
                      "samples_per_s": 5e6},
            "published": bh.PUBLISHED, "board": {"name": "pynq-z2", "clock_mhz": b.clock_mhz, "word_bits": 64,
                                                 "ddr_gbytes_per_s": b.ddr_gbytes_per_s},
            "machine": {"cpus": 2, "load_before": (1.0, 1.0, 1.0), "load_after": (1.5, 1, 1), "seconds": 3.0}}


def test_report_labels_published_figures_and_bounds():
    text = bh.format_report(_fake_data())
    assert "published figures (cited, not measured here)" in text
    assert "2.8x" in text and "6.5x" in text and "YearPredictionMSD" in text
    assert "the engine, not the memory, bounds every mode" in text
    assert "8-bit double vs 32-bit on the same shape: 2.85x" in text
    assert "numpy float64 SGD on this machine" in text and "load average 1.00" in text
    # a memory-bound mode is named as such
    data = _fake_data()
    data["projection"][2].update(bound="memory")
    assert "the memory bounds: m4" in bh.format_report(data)
