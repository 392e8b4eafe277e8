"""The simulated board: the engine's RTL under Verilator (or Icarus) behind the
same :class:`zipsgd.driver.Board` interface as a PYNQ board.

Inside the simulator, :class:`CocotbBoard` serves register reads and writes over
AXI4-Lite (a minimal master of its own: one transaction at a time, three cycles),
buffers in the board memory of ``sim_board.v`` (loaded with one ``$fread`` of a
binary file) and DMA transfers queued into its behavioural DMA, which streams them
at one beat per cycle. The unchanged
:class:`zipsgd.driver.Engine` runs in a cocotb *bridge* thread, so each of its
blocking calls advances simulated time.

No Python runs per cycle while a job streams: the clock toggles in the simulator's
C++ (cocotb's GPI clock), the DMA is Verilog, and the driver waits for the job with
one trigger (the rising edge of the engine's ``irq``, :attr:`CocotbBoard.irq_wait`).
Python runs per register access only, and a sequence of accesses
(:meth:`zipsgd.driver.Board.batch`: configuration, model and loss read-back) costs
one switch between the driver's thread and the simulator's.

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
#: Memory of the simulated board: log2 of its size in W-bit words, per simulator
#: (Verilator: 4 Mi beats, room for one epoch of 50,000 x 90 at 32 bits; Icarus,
#: which runs small jobs only, keeps sim_board.v's default).
MEM_WORDS_LOG2 = {"verilator": 22, "icarus": 21}
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

    def __init__(self, dut, workdir: Path, throttle: int = 0, word_bits: int = c.WORD_BITS_DEFAULT,
                 mem_words_log2: int = MEM_WORDS_LOG2["icarus"]):
        from cocotb.task import resume

        from .runner import BOARD_MEMFILE

        self.dut = dut
        self.word_bits = word_bits
        self.hpb = self.word_bits // c.HOST_WORD_BITS
        self.memfile = Path(workdir) / BOARD_MEMFILE
        self.throttle = throttle
        self._next_beat = 0
        self.mem_words = 1 << mem_words_log2
        self.dma_max_bytes = self.mem_words * self.word_bits // 8
        self._read_b = resume(self._read)
        self._write_b = resume(self._write)
        self._batch_b = resume(self._batch)
        self._sleep_b = resume(self._sleep)
        self._wait_irq_b = resume(self._wait_irq)
        self._send = resume(self._dma_push)
        self._wait_idle = resume(self._dma_idle)
        self._load_mem = resume(self._mem_load)

    async def start(self):
        from cocotb.clock import Clock
        from cocotb.triggers import ClockCycles, RisingEdge

        d = self.dut
        self._edge = RisingEdge(d.aclk)
        # The clock toggles in the simulator's C++ (GPI), not in a Python task: no
        # Python runs per cycle.
        Clock(d.aclk, SIM_PERIOD_NS, unit="ns", impl="gpi").start()
        for sig in (d.dma_push, d.mem_load):
            sig.value = 0
        d.dma_addr.value = 0
        d.dma_len.value = 0
        d.mem_lo.value = 0
        d.mem_hi.value = 0
        d.throttle.value = self.throttle
        for name in ("awaddr", "awprot", "awvalid", "wdata", "wvalid", "bready", "araddr", "arprot", "arvalid",
                     "rready"):
            getattr(d, f"s_axil_{name}").value = 0
        d.s_axil_wstrb.value = 0xF
        d.aresetn.value = 0
        await ClockCycles(d.aclk, 8)
        d.aresetn.value = 1
        await ClockCycles(d.aclk, 4)

    # -- registers -------------------------------------------------------------------
    def read(self, offset):
        return self._read_b(offset)

    def write(self, offset, value):
        self._write_b(offset, value)

    def batch(self, ops):
        # one switch to the simulator's thread for the whole sequence
        return self._batch_b(list(ops))

    def sleep(self, seconds):
        self._sleep_b(seconds)

    # AXI4-Lite master: one transaction at a time, in order. Signals are sampled at
    # each rising edge (before the edge's updates, as in any cocotb bus model) and the
    # master's own changes land after the edge.
    AXIL_TIMEOUT_CYCLES = 1000

    async def _handshake(self, *pairs):
        """Hold each (valid, ready) pair's valid high until its ready is seen at an edge."""
        left = list(pairs)
        for _ in range(self.AXIL_TIMEOUT_CYCLES):
            await self._edge
            for valid, ready in list(left):
                if ready.value:
                    valid.value = 0
                    left.remove((valid, ready))
            if not left:
                return
        raise RuntimeError(f"AXI4-Lite: no handshake within {self.AXIL_TIMEOUT_CYCLES} cycles")

    async def _response(self, valid, resp, data=None):
        """Wait for a response (its ready is held high); returns the read data."""
        for _ in range(self.AXIL_TIMEOUT_CYCLES):
            await self._edge
            if valid.value:
                if int(resp.value) != 0:
                    raise RuntimeError(f"AXI4-Lite: response {int(resp.value)} (not OKAY)")
                return None if data is None else int(data.value)
        raise RuntimeError(f"AXI4-Lite: no response within {self.AXIL_TIMEOUT_CYCLES} cycles")

    async def _read(self, offset):
        d = self.dut
        d.s_axil_araddr.value = offset
        d.s_axil_arvalid.value = 1
        d.s_axil_rready.value = 1
        await self._handshake((d.s_axil_arvalid, d.s_axil_arready))
        value = await self._response(d.s_axil_rvalid, d.s_axil_rresp, d.s_axil_rdata)
        d.s_axil_rready.value = 0
        return value

    async def _write(self, offset, value):
        d = self.dut
        d.s_axil_awaddr.value = offset
        d.s_axil_wdata.value = int(value) & 0xFFFFFFFF
        d.s_axil_awvalid.value = 1
        d.s_axil_wvalid.value = 1
        d.s_axil_bready.value = 1
        await self._handshake((d.s_axil_awvalid, d.s_axil_awready), (d.s_axil_wvalid, d.s_axil_wready))
        await self._response(d.s_axil_bvalid, d.s_axil_bresp)
        d.s_axil_bready.value = 0

    async def _batch(self, ops):
        out = []
        for op in ops:
            if op[0] == "w":
                await self._write(op[1], op[2])
            elif op[0] == "r":
                out.append(await self._read(op[1]))
            else:
                raise ValueError(f"unknown register operation {op!r}")
        return out

    # -- buffers and DMA -------------------------------------------------------------
    def allocate(self, n_words):
        beats = -(-n_words // self.hpb)
        if self._next_beat + beats > self.mem_words:
            self._next_beat = 0          # buffers are short-lived: wrap the bump allocator
        if beats > self.mem_words:
            raise MemoryError(f"{n_words} words do not fit the simulated board memory")
        buf = np.zeros(n_words, dtype=np.uint64).view(SimBuffer)
        buf._board, buf.beat_address = self, self._next_beat
        self._next_beat += beats
        return buf

    def _load(self, buf):
        words = np.asarray(buf, dtype=np.uint64)
        pad = (-words.size) % self.hpb
        if pad:
            words = np.concatenate([words, np.zeros(pad, np.uint64)])
        # one W-bit word per beat, most significant host word first, big-endian bytes
        beats = words.reshape(-1, self.hpb)[:, ::-1]
        beats.astype(">u8").tofile(self.memfile)
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
        from cocotb.triggers import First, ReadOnly, RisingEdge, Timer

        await ReadOnly()
        if not int(self.dut.dma_idle.value):
            await First(RisingEdge(self.dut.dma_idle), Timer(self._ns(timeout_s), unit="ns"))
            await ReadOnly()
        idle = bool(int(self.dut.dma_idle.value))
        await RisingEdge(self.dut.aclk)     # leave the read-only phase
        return idle

    # -- time ------------------------------------------------------------------------
    async def _sleep(self, seconds):
        from cocotb.triggers import Timer

        await Timer(self._ns(seconds), unit="ns")

    irq_wait = True

    def wait_irq(self, seconds):
        self._wait_irq_b(seconds)

    async def _wait_irq(self, seconds):
        """One trigger: the rising edge of ``irq`` or the end of ``seconds``."""
        from cocotb.triggers import First, RisingEdge, Timer

        if int(self.dut.irq.value):
            await Timer(SIM_PERIOD_NS, unit="ns")
        else:
            await First(RisingEdge(self.dut.irq), Timer(self._ns(seconds), unit="ns"))

    @staticmethod
    def _ns(seconds):
        """``seconds`` in ns, a whole number of clock periods, at least one."""
        return max(1, int(round(seconds * 1e9 / SIM_PERIOD_NS))) * SIM_PERIOD_NS

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

    Each result's ``stats`` also holds the simulation's own figures: ``simulator``,
    ``sim_wall_seconds`` (the whole run: start-up, every job, exit),
    ``sim_cpu_seconds`` (CPU time of the simulator process over the run),
    ``sim_startup_seconds`` (launch until the first job starts) and
    ``sim_job_seconds`` (this job in the driver: load, stream, read back).
    """
    import resource

    from .runner import board_build, run_board

    params = params or c.EngineParams(word_bits=jobs[0][0].word_bits)
    board_build(simulator, params, waves=waves)      # (re)built before the timed run
    with tempfile.TemporaryDirectory(prefix="zipsgd-sim-") as tmp:
        tmp = Path(tmp)
        (tmp / "jobs.pkl").write_bytes(pickle.dumps({"jobs": jobs, "throttle": throttle,
                                                     "word_bits": params.word_bits,
                                                     "mem_words_log2": MEM_WORDS_LOG2[simulator]}))
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        os.environ["ZIPSGD_SIM_T0"] = repr(time.time())
        try:
            run_board(simulator, params, tmp, waves=waves)
        finally:
            os.environ.pop("ZIPSGD_SIM_T0", None)
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
        out = tmp / "results.pkl"
        if not out.exists():
            raise RuntimeError(f"the {simulator} simulation ended without results; see its log above")
        results = pickle.loads(out.read_bytes())
    for r in results:
        if isinstance(r, BaseException):
            raise r
        r.stats["simulator"] = simulator
        r.stats["sim_wall_seconds"] = wall
        r.stats["sim_cpu_seconds"] = cpu
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
        board = CocotbBoard(dut, workdir, throttle=spec["throttle"], word_bits=spec["word_bits"],
                            mem_words_log2=spec["mem_words_log2"])
        await board.start()
        started = time.time()
        startup = started - float(os.environ.get("ZIPSGD_SIM_T0", started))

        def drive():
            engine = Engine(board)
            out = []
            for cfg, streams, codebook in spec["jobs"]:
                t0 = time.perf_counter()
                try:
                    res = engine.run(cfg, streams, codebook)
                except Exception as exc:  # handed back to the host process
                    out.append(exc)
                    continue
                res.stats["sim_job_seconds"] = dt = time.perf_counter() - t0
                res.stats["sim_cycles_per_second"] = res.stats["cycles"] / max(dt, 1e-9)
                res.stats["sim_startup_seconds"] = startup
                out.append(res)
            return out

        results = await bridge(drive)()
        (workdir / "results.pkl").write_bytes(pickle.dumps(results))

    return run_driver_jobs
