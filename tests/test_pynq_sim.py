"""The code a PYNQ board runs, run here: PYNQ's own classes drive the engine's RTL.

``zipsgd.pynq_board.PynqBoard`` under the unmodified ``pynq`` package — ``Overlay`` with its
``.hwh`` parser and driver binding, ``pynq.lib.dma.DMA``, ``pynq.allocate`` — on a
simulated ``pynq.Device`` whose registers and memory are the simulated board's
(``sim/sim_board.v``: the engine's RTL fed by a model of PG021's AXI DMA). Every job
must equal the reference bit for bit, for a Zynq-7000 (pynq-z2) and a Zynq UltraScale+
(zcu104) design; and after a timeout, a Ctrl-C, a stream fault or a soft reset in the
middle of a job, the next job on the same board must be exact too (nothing of the
failed job reaches it) with every buffer freed.
"""

from __future__ import annotations

import numpy as np
import pytest

from zipsgd import contract as c
from zipsgd import reference
from zipsgd.bench_hw import _job
from zipsgd.boards import BOARDS, DMA_LENGTH_WIDTH, DMA_NAME, ENGINE_NAME, ENGINE_VLNV

pytest.importorskip("pynq")
# a warning from PYNQ (a clock it cannot set, an interrupt it cannot create...) is a failure
pytestmark = pytest.mark.filterwarnings("error::UserWarning")


class _RegisterFile:
    """Just enough of a simulated board for PYNQ to load the overlay (no engine behind it)."""

    def __init__(self):
        self.regs, self.t, self.resets = {}, 0.0, 0

    def read(self, offset):
        return self.regs.get(offset, 0)

    def write(self, offset, value):
        self.regs[offset] = value

    def reset_pl(self):
        self.resets += 1

    def sleep(self, seconds):
        self.t += seconds

    def time(self):
        return self.t


@pytest.mark.parametrize("name", ["pynq-z2", "zcu104"])
def test_pynq_loads_the_design_description(name, tmp_path):
    """PYNQ's Overlay parses the generated .hwh, binds ZipsgdIP by the engine's VLNV and its
    own DMA driver by the DMA's, at the board table's addresses, and programs the PL clock."""
    import pynq
    from pynq.lib.dma import DMA

    from zipsgd.pynq_board import PynqBoard
    from zipsgd.sim.hwh import hwh
    from zipsgd.sim.pynq_device import SimPynqDevice

    spec = BOARDS[name]
    (tmp_path / "zipsgd.hwh").write_text(hwh(spec))
    (tmp_path / "zipsgd.bit").write_bytes(b"")
    regs = _RegisterFile()
    board = PynqBoard.open(str(tmp_path / "zipsgd.bit"), device=SimPynqDevice(regs, spec))
    ol = board.overlay
    assert regs.resets == 1                                   # downloading resets the PL
    assert ol.ip_dict[ENGINE_NAME]["phys_addr"] == spec.engine_addr
    assert ol.ip_dict[DMA_NAME]["phys_addr"] == spec.dma_addr
    assert ol.ip_dict[ENGINE_NAME]["type"] == ENGINE_VLNV
    assert type(board.ip).bindto == [ENGINE_VLNV] and isinstance(board.dma, DMA)
    assert board.dma_max_bytes == (1 << DMA_LENGTH_WIDTH) - 1
    # PYNQ started the channel (RS written to DMACR at the DMA's window)
    from zipsgd.sim.board import DMA_SEL
    assert regs.regs[DMA_SEL] & 1
    # the clock PYNQ programmed from the .hwh is within the PS's divisor grid of the table's
    assert abs(pynq.Clocks.fclk0_mhz - spec.clock_mhz) / spec.clock_mhz < 0.07
    assert board.clock_hz == pytest.approx(pynq.Clocks.fclk0_mhz * 1e6)


def _check(job, result, params=None):
    cfg, streams, cb = job[:3]
    ref = reference.run(cfg, streams, cb, params=params)
    assert np.array_equal(result.model, ref.model)
    assert result.loss_sums == ref.loss_sums
    assert result.samples == cfg.n_samples * cfg.epochs and result.beats == ref.beats


def _jobs(rng, word_bits=64):
    return [_job(rng, c.Encoding.COMPACT, 4, 24, 20, 4, epochs=2, word_bits=word_bits),
            _job(rng, c.Encoding.PAIR, 1, 40, 70, 8, epochs=3, word_bits=word_bits),
            _job(rng, c.Encoding.FULL, 32, 10, 7, 3, epochs=1, word_bits=word_bits)]


@pytest.mark.xdist_group("sim_verilator_board")
def test_pynq_z2_trains_bit_exact_under_pynq():
    from zipsgd.sim.board import run_jobs

    jobs = _jobs(np.random.default_rng(11))
    results = run_jobs(jobs, pynq="pynq-z2")
    for job, r in zip(jobs, results):
        _check(job, r)
        assert r.stats["driver"] == "pynq" and r.stats["board_beats_allocated"] == 0


@pytest.mark.xdist_group("sim_verilator_board_w128")
def test_zcu104_trains_bit_exact_under_pynq():
    from zipsgd.sim.board import run_jobs

    spec = BOARDS["zcu104"]
    params = c.EngineParams(word_bits=spec.word_bits, lanes=spec.lanes, dim_max=256, batch_max=64, epochs_max=16)
    jobs = _jobs(np.random.default_rng(12), word_bits=spec.word_bits)
    results = run_jobs(jobs, pynq="zcu104", params=params)
    for job, r in zip(jobs, results):
        _check(job, r, params)
        assert r.stats["driver"] == "pynq" and r.stats["board_beats_allocated"] == 0


def _long_job(rng):
    """Four epochs of 2,000 beats: room to strike in the middle of a transfer."""
    return _job(rng, c.Encoding.COMPACT, 8, 200, 60, 8, epochs=4)


@pytest.mark.xdist_group("sim_verilator_board")
@pytest.mark.parametrize("pynq", [None, "pynq-z2"], ids=["native", "pynq-z2"])
def test_nothing_of_a_failed_job_reaches_the_next(pynq):
    """A timeout, a Ctrl-C, a stream fault and a soft reset, each in the middle of a job's
    transfer, each followed on the same board by jobs exact against the reference. Without
    the DMA reset the next START would read the failed job's remaining data."""
    from zipsgd.driver import EngineFault, EngineTimeout
    from zipsgd.sim.board import SIM_PERIOD_NS, run_jobs

    rng = np.random.default_rng(21)
    bad = _long_job(rng)
    cfg = bad[0]
    beats = cfg.n_samples * cfg.layout.beats_per_sample
    faults = [
        ({"timeout_s": 1.5 * beats * SIM_PERIOD_NS * 1e-9}, EngineTimeout, "epoch 2"),
        ({"fault": "interrupt", "at": 1}, KeyboardInterrupt, None),
        ({"fault": "short", "at": 2}, EngineFault, "STREAM_SHORT"),
        ({"fault": "soft_reset", "at": 1, "timeout_s": 3 * beats * cfg.epochs * SIM_PERIOD_NS * 1e-9},
         EngineTimeout, None),
    ]
    jobs, expect = [], []
    for opts, exc, text in faults:
        jobs.append((*bad, opts))
        expect.append((exc, text))
        good = _long_job(rng) if len(jobs) % 4 == 1 else _jobs(rng)[len(jobs) % 3]
        jobs.append(good)
        expect.append(None)
    results = run_jobs(jobs, pynq=pynq, raise_errors=False)
    for job, want, r in zip(jobs, expect, results):
        if want is None:
            assert not isinstance(r, BaseException), r
            _check(job, r)
            assert r.stats["board_beats_allocated"] == 0          # the failed job's buffer was freed
        else:
            exc, text = want
            assert isinstance(r, exc), r
            if text:
                assert text in str(r)


def test_info_reports_the_dma_limit_and_the_cma_budget(tmp_path, monkeypatch):
    """``zipsgd info`` on a board: the DMA's largest transfer read from the bitstream's .hwh,
    and the kernel's contiguous memory for DMA buffers."""
    from zipsgd import info
    from zipsgd.sim.hwh import hwh

    folder = tmp_path / "pynq-z2"
    folder.mkdir()
    text = hwh(BOARDS["pynq-z2"]).replace('"C_SG_LENGTH_WIDTH" VALUE="26"', '"C_SG_LENGTH_WIDTH" VALUE="23"') \
        .replace('"c_sg_length_width" VALUE="26"', '"c_sg_length_width" VALUE="23"')
    (folder / "zipsgd.hwh").write_text(text)
    (folder / "zipsgd.bit").write_bytes(b"")
    assert info.dma_largest_transfer(folder / "zipsgd.bit") == ((1 << 23) - 1, str(folder / "zipsgd.hwh"))
    assert info.dma_largest_transfer(None)[0] == (1 << DMA_LENGTH_WIDTH) - 1
    monkeypatch.setenv("ZIPSGD_BITSTREAMS", str(tmp_path))
    monkeypatch.setenv("ZIPSGD_BOARD", "pynq-z2")
    got = info.collect()
    assert got["dma"]["largest_transfer_bytes"] == (1 << 23) - 1
    assert "largest transfer 8,388,607 bytes" in info.format_info(got)
    meminfo = "MemTotal:  507000 kB\nCmaTotal:  131072 kB\nCmaFree:   120000 kB\n"
    assert info.cma_bytes(meminfo) == {"total": 131072 * 1024, "free": 120000 * 1024}
    assert info.cma_bytes("MemTotal: 1 kB\nCmaTotal: 0 kB\n") is None


@pytest.mark.xdist_group("sim_verilator_board")
def test_packed_file_ten_times_the_ring_streams_bit_exact_under_pynq(tmp_path):
    """A packed file 10x (and more) the ring of DMA buffers, memory-mapped in the board's
    process and streamed through two ring buffers under PYNQ's classes: exact against the
    CPU reference on the same file, board memory never above the ring."""
    from zipsgd import packfile
    from zipsgd.job import job_from_packed
    from zipsgd.sim.board import run_jobs

    rng = np.random.default_rng(31)
    X = rng.normal(size=(1500, 20))
    y = X @ rng.normal(size=20)
    pk = packfile.write(tmp_path / "big.zsgd", X, y, bits=4, copies=2, seed=2)
    job = job_from_packed(pk, epochs=3, batch_size=4, step=2.0 ** -7)
    ring = 6144
    assert pk.nbytes >= 10 * ring
    res = run_jobs([(job.config, str(pk.path), job.codebook, {"ring_bytes": ring})], pynq="pynq-z2")[0]
    ref = reference.run(job.config, job.streams, job.codebook)
    assert np.array_equal(res.model, ref.model) and res.loss_sums == ref.loss_sums
    sample = job.layout.beats_per_sample * job.layout.host_words_per_beat * 8
    per_transfer = (ring // 2) // sample
    assert res.stats["ring"] and res.stats["transfers"] == 3 * -(-job.n_samples // per_transfer)
    assert 0 < res.stats["board_peak_bytes"] <= ring and res.stats["board_beats_allocated"] == 0
