"""The simulated board: the engine's RTL under Verilator (or Icarus) behind the
same :class:`zipsgd.driver.Board` interface as a PYNQ board.

Inside the simulator, :class:`CocotbBoard` serves register reads and writes over
AXI4-Lite (cocotbext-axi), buffers in the board memory of ``sim_board.v`` (loaded
with ``$readmemh``) and DMA transfers queued into its behavioural DMA, which streams
them at one beat per cycle with no Python per beat. The unchanged
:class:`zipsgd.driver.Engine` runs in a cocotb *bridge* thread, so each of its
blocking register accesses advances simulated time.

On the host side, :func:`run_jobs` writes the jobs to a folder, runs the simulator
(built once per configuration by :mod:`zipsgd.sim.runner`) and reads the results.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np

from zipsgd import contract as c
from zipsgd.driver import Board

#: Simulated clock period (ns); board projections use the target board's clock instead.
SIM_PERIOD_NS = 10
#: Memory of the simulated board, in W-bit words (matches sim_board.v's default).
MEM_WORDS_LOG2 = 21
VERILOG = Path(__file__).with_name("sim_board.v")


class SimBuffer(np.ndarray):
    """A uint64 buffer living at ``beat_address`` of the simulated board memory."""

    def flush(self):
        self._board._load(self)

    def invalidate(self):
        pass

    def free(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()


class CocotbBoard(Board):
    """Board served by a running cocotb simulation of ``zipsgd_sim_board``."""

    name = "simulated board"
    clock_hz = 1e9 / SIM_PERIOD_NS

    def __init__(self, dut, workdir: Path, throttle: int = 0):
        from cocotb.task import resume
        from cocotbext.axi import AxiLiteBus, AxiLiteMaster

        self.dut = dut
        self.word_bits = len(dut.engine.s_axis_tdata) if hasattr(dut, "engine") else c.WORD_BITS_DEFAULT
        self.hpb = self.word_bits // c.HOST_WORD_BITS
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.aclk, dut.aresetn,
                                  reset_active_level=False)
        self.memfile = Path(workdir) / "zipsgd_mem.hex"
        self.throttle = throttle
        self._next_beat = 0
        self.dma_max_bytes = (1 << MEM_WORDS_LOG2) * self.word_bits // 8
        self._read_b = resume(self._read)
        self._write_b = resume(self._write)
        self._sleep_b = resume(self._sleep)
        self._send = resume(self._dma_push)
        self._wait_idle = resume(self._dma_idle)
        self._load_mem = resume(self._mem_load)

    async def start(self):
        from cocotb.clock import Clock
        from cocotb.triggers import ClockCycles

        d = self.dut
        Clock(d.aclk, SIM_PERIOD_NS, unit="ns").start()
        for sig in (d.dma_push, d.mem_load):
            sig.value = 0
        d.dma_addr.value = 0
        d.dma_len.value = 0
        d.mem_lo.value = 0
        d.mem_hi.value = 0
        d.throttle.value = self.throttle
        d.aresetn.value = 0
        await ClockCycles(d.aclk, 8)
        d.aresetn.value = 1
        await ClockCycles(d.aclk, 4)

    # -- registers -------------------------------------------------------------------
    def read(self, offset):
        return self._read_b(offset)

    def write(self, offset, value):
        self._write_b(offset, value)

    def sleep(self, seconds):
        self._sleep_b(seconds)

    async def _read(self, offset):
        return int(await self.axil.read_dword(offset))

    async def _write(self, offset, value):
        await self.axil.write_dword(offset, int(value) & 0xFFFFFFFF)

    # -- buffers and DMA -------------------------------------------------------------
    def allocate(self, n_words):
        beats = -(-n_words // self.hpb)
        if self._next_beat + beats > 1 << MEM_WORDS_LOG2:
            self._next_beat = 0          # buffers are short-lived: wrap the bump allocator
        if beats > 1 << MEM_WORDS_LOG2:
            raise MemoryError(f"{n_words} words do not fit the simulated board memory")
        buf = np.zeros(n_words, dtype=np.uint64).view(SimBuffer)
        buf._board, buf.beat_address = self, self._next_beat
        self._next_beat += beats
        return buf

    def _load(self, buf):
        words = np.asarray(buf, dtype=np.uint64)
        pad = (-words.size) % self.hpb
        beats = np.concatenate([words, np.zeros(pad, np.uint64)]).reshape(-1, self.hpb)[:, ::-1]
        lines = np.frombuffer(beats.astype(">u8").tobytes().hex().encode(), dtype=f"S{16 * self.hpb}")
        with open(self.memfile, "wb") as f:
            f.write(f"@{buf.beat_address:x}\n".encode())
            f.write(b"\n".join(lines.tolist()))
            f.write(b"\n")
        self._load_mem(buf.beat_address, buf.beat_address + beats.shape[0] - 1)

    async def _mem_load(self, lo, hi):
        from cocotb.triggers import RisingEdge

        d = self.dut
        await RisingEdge(d.aclk)
        d.mem_lo.value, d.mem_hi.value, d.mem_load.value = lo, hi, 1
        await RisingEdge(d.aclk)
        d.mem_load.value = 0

    def dma_send(self, buffer, start_word, n_words):
        if start_word % self.hpb or n_words % self.hpb:
            raise ValueError("DMA transfers must start and end on beat boundaries")
        self._send(buffer.beat_address + start_word // self.hpb, n_words // self.hpb)

    async def _dma_push(self, addr, length):
        from cocotb.triggers import RisingEdge

        d = self.dut
        await RisingEdge(d.aclk)
        d.dma_addr.value, d.dma_len.value, d.dma_push.value = addr, length, 1
        await RisingEdge(d.aclk)
        d.dma_push.value = 0

    def dma_wait(self, timeout_s):
        return self._wait_idle(timeout_s)

    async def _dma_idle(self, timeout_s):
        from cocotb.triggers import ReadOnly, Timer

        end = self.time() + timeout_s
        while True:
            await ReadOnly()
            if int(self.dut.dma_idle.value):
                await Timer(SIM_PERIOD_NS, unit="ns")
                return True
            if self.time() > end:
                return False
            await Timer(max(SIM_PERIOD_NS, 100 * SIM_PERIOD_NS), unit="ns")

    # -- time ------------------------------------------------------------------------
    async def _sleep(self, seconds):
        from cocotb.triggers import Timer

        ns = max(SIM_PERIOD_NS, int(round(seconds * 1e9 / SIM_PERIOD_NS)) * SIM_PERIOD_NS)
        await Timer(ns, unit="ns")

    def time(self):
        from cocotb.simtime import get_sim_time

        return get_sim_time("ns") * 1e-9


def run_jobs(jobs, *, simulator: str = "verilator", params: c.EngineParams | None = None,
             throttle: int = 0, waves: bool = False) -> list:
    """Run driver jobs on the simulated board.

    Parameters
    ----------
    jobs : list of (EngineConfig, list of streams, codebook or None)
    simulator : 'verilator' or 'icarus'
    params : EngineParams of the engine to build (default build at the jobs' W)
    throttle : 0..15, random input gaps of the board's DMA (0: never stalls)

    Returns
    -------
    list of Result (or the exception each job raised, re-raised here for the first)
    """
    from .runner import run_board

    params = params or c.EngineParams(word_bits=jobs[0][0].word_bits)
    with tempfile.TemporaryDirectory(prefix="zipsgd-sim-") as tmp:
        tmp = Path(tmp)
        (tmp / "jobs.pkl").write_bytes(pickle.dumps({"jobs": jobs, "throttle": throttle}))
        t0 = time.perf_counter()
        run_board(simulator, params, tmp, waves=waves)
        wall = time.perf_counter() - t0
        out = tmp / "results.pkl"
        if not out.exists():
            raise RuntimeError(f"the {simulator} simulation ended without results; see its log above")
        results = pickle.loads(out.read_bytes())
    for r in results:
        if isinstance(r, BaseException):
            raise r
        r.stats["simulator"] = simulator
        r.stats["sim_wall_seconds"] = wall
    return results


def board_test_entry():
    """Body of the cocotb test (see :mod:`zipsgd.sim.board_test`)."""
    import cocotb
    from cocotb.task import bridge

    from zipsgd.driver import Engine

    @cocotb.test()
    async def run_driver_jobs(dut):
        workdir = Path(os.environ["ZIPSGD_WORKDIR"])
        spec = pickle.loads((workdir / "jobs.pkl").read_bytes())
        board = CocotbBoard(dut, workdir, throttle=spec["throttle"])
        await board.start()
        t0 = time.perf_counter()

        def drive():
            engine = Engine(board)
            out = []
            for cfg, streams, codebook in spec["jobs"]:
                try:
                    res = engine.run(cfg, streams, codebook)
                    res.stats["sim_cycles_per_second"] = res.stats["cycles"] / max(time.perf_counter() - t0, 1e-9)
                    out.append(res)
                except Exception as exc:  # handed back to the host process
                    out.append(exc)
            return out

        results = await bridge(drive)()
        (workdir / "results.pkl").write_bytes(pickle.dumps(results))

    return run_driver_jobs
