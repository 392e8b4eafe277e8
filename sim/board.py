"""The simulated board: the engine's RTL under Verilator (or Icarus) behind the
same :class:`zipsgd.driver.Board` interface as a PYNQ board.

Inside the simulator, :class:`CocotbBoard` serves register reads and writes over
AXI4-Lite (a minimal master of its own: one transaction at a time, three cycles),
buffers in the board memory of ``sim_board.v`` (loaded with one ``$fread`` of a
binary file) and DMA transfers through the registers of the board's model of an AXI
DMA (PG021's memory-to-stream channel, :mod:`zipsgd.axi_dma`), which streams each at
one beat per cycle. The unchanged
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

from zipsgd import axi_dma
from zipsgd import contract as c
from zipsgd.driver import Board

#: Simulated clock period (ns); board projections use the target board's clock instead.
SIM_PERIOD_NS = 10
#: Memory of the simulated board: log2 of its size in W-bit words, per simulator
#: (Verilator: 4 Mi beats, room for one epoch of 50,000 x 90 at 32 bits; Icarus,
#: which runs small jobs only, keeps sim_board.v's default).
MEM_WORDS_LOG2 = {"verilator": 22, "icarus": 21}
#: Physical byte address of the board memory's first word (sim_board.v's MEM_BASE).
MEM_BASE = 0x1000_0000
#: Local address bit that selects the DMA's registers on the board's one AXI4-Lite port
#: (sim_board.v's DMA_SEL_BIT); below it, the engine's.
DMA_SEL = 1 << 16
#: sim_board.v's parameters that the host must agree with.
VERILOG_PARAMS = {"MEM_BASE": MEM_BASE, "DMA_SEL_BIT": DMA_SEL.bit_length() - 1}


class _Space:
    """A reserved region of the simulated board memory."""

    def __init__(self, physical_address):
        self.physical_address = physical_address


class SimBuffer(np.ndarray):
    """A uint64 buffer in the simulated board memory at ``physical_address`` (bytes)."""

    def flush(self):
        self._board.load_bytes(self.physical_address, np.asarray(self).view(np.uint8))

    def invalidate(self):
        pass

    def free(self):
        self._board.free_bytes(self.physical_address)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()


class CocotbBoard(Board):
    """Board served by a running cocotb simulation of ``zipsgd_sim_board``."""

    name = "simulated board"
    clock_hz = 1e9 / SIM_PERIOD_NS
    timeout_slack_s = 1e4 * SIM_PERIOD_NS * 1e-9       # 10,000 cycles

    def __init__(self, dut, workdir: Path, throttle: int = 0, word_bits: int = c.WORD_BITS_DEFAULT,
                 mem_words_log2: int = MEM_WORDS_LOG2["icarus"]):
        from cocotb.task import resume

        from .runner import BOARD_MEMFILE

        self.dut = dut
        self.word_bits = word_bits
        self.hpb = self.word_bits // c.HOST_WORD_BITS
        self.memfile = Path(workdir) / BOARD_MEMFILE
        self.throttle = throttle
        self.beat_bytes = self.word_bits // 8
        self._allocs, self._image = {}, None
        self.peak_beats = 0                 # most board memory held at once (beats)
        self.mem_words = 1 << mem_words_log2
        from zipsgd.boards import DMA_LENGTH_WIDTH
        self.dma_max_bytes = min((1 << DMA_LENGTH_WIDTH) - 1, self.mem_words * self.word_bits // 8)
        self.dma_budget_bytes = self.mem_words * self.beat_bytes * 3 // 4
        self.dma = axi_dma.Mm2s(lambda off: self.read(DMA_SEL | off), lambda off, v: self.write(DMA_SEL | off, v),
                                self.dma_max_bytes)
        self._read_b = resume(self._read)
        self._write_b = resume(self._write)
        self._batch_b = resume(self._batch)
        self._sleep_b = resume(self._sleep)
        self._wait_irq_b = resume(self._wait_irq)
        self._dma_wait_b = resume(self._dma_wait)
        self._load_mem = resume(self._mem_load)
        self._reset_b = resume(self._reset)

    async def start(self):
        from cocotb.clock import Clock
        from cocotb.triggers import ClockCycles, RisingEdge

        d = self.dut
        self._edge = RisingEdge(d.aclk)
        # The clock toggles in the simulator's C++ (GPI), not in a Python task: no
        # Python runs per cycle.
        Clock(d.aclk, SIM_PERIOD_NS, unit="ns", impl="gpi").start()
        d.mem_load.value = 0
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
    # Board memory: first-fit allocation in whole beats; a host-side image of it, so that a
    # flush of any byte range loads the whole beats it touches.
    def allocate_bytes(self, nbytes):
        """Reserve ``nbytes`` of board memory; returns an object with its ``physical_address``."""
        beats = max(1, -(-int(nbytes) // self.beat_bytes))
        start = 0
        for at, size in sorted(self._allocs.items()):
            if at - start >= beats:
                break
            start = at + size
        if start + beats > self.mem_words:
            raise MemoryError(f"{nbytes} bytes do not fit the simulated board memory ({self.mem_words} beats of "
                              f"{self.beat_bytes} bytes, {sum(self._allocs.values())} in use)")
        self._allocs[start] = beats
        self.peak_beats = max(self.peak_beats, self.allocated_beats)
        return _Space(MEM_BASE + start * self.beat_bytes)

    def free_bytes(self, physical_address):
        at = (physical_address - MEM_BASE) // self.beat_bytes
        if self._allocs.pop(at, None) is None:
            raise RuntimeError(f"free of 0x{physical_address:X}: not an allocated buffer (freed twice?)")

    @property
    def allocated_beats(self) -> int:
        """Beats of board memory held by buffers not yet freed."""
        return sum(self._allocs.values())

    def load_bytes(self, physical_address, data):
        """Write ``data`` (bytes) to board memory at ``physical_address``."""
        data = np.asarray(data, dtype=np.uint8).reshape(-1)
        off = physical_address - MEM_BASE
        if off < 0 or off + data.size > self.mem_words * self.beat_bytes:
            raise MemoryError(f"0x{physical_address:X} + {data.size} bytes is outside the simulated board memory")
        if self._image is None:
            self._image = np.zeros(self.mem_words * self.beat_bytes, dtype=np.uint8)
        self._image[off:off + data.size] = data
        lo, hi = off // self.beat_bytes, -(-(off + data.size) // self.beat_bytes)
        # one W-bit word per beat, big-endian bytes (little-endian memory, each beat reversed)
        self._image[lo * self.beat_bytes:hi * self.beat_bytes].reshape(-1, self.beat_bytes)[:, ::-1] \
            .tofile(self.memfile)
        self._load_mem(lo, hi - 1)

    def allocate(self, n_words):
        space = self.allocate_bytes(n_words * 8)
        buf = np.zeros(n_words, dtype=np.uint64).view(SimBuffer)
        buf._board, buf.physical_address = self, space.physical_address
        return buf

    def reset_pl(self):
        """Reset the programmable logic (the engine and the DMA), as loading a bitstream does."""
        self._reset_b()

    async def _reset(self):
        from cocotb.triggers import ClockCycles

        self.dut.aresetn.value = 0
        await ClockCycles(self.dut.aclk, 8)
        self.dut.aresetn.value = 1
        await ClockCycles(self.dut.aclk, 4)
        self.dma.started = False

    async def _mem_load(self, lo, hi):
        from cocotb.triggers import RisingEdge

        d = self.dut
        await RisingEdge(d.aclk)
        d.mem_lo.value, d.mem_hi.value, d.mem_load.value = lo, hi, 1
        await RisingEdge(d.aclk)
        d.mem_load.value = 0

    def dma_send(self, buffer, start_word, n_words):
        self.dma.transfer(buffer.physical_address + start_word * 8, n_words * 8)

    def dma_wait(self, timeout_s):
        return self._dma_wait_b(timeout_s)

    async def _dma_wait(self, timeout_s):
        """One trigger: the DMA's interrupt (completion or error), the engine's, or the time."""
        from cocotb.triggers import First, RisingEdge, Timer

        d = self.dut
        if not (int(d.mm2s_introut.value) or int(d.irq.value)):
            await First(RisingEdge(d.mm2s_introut), RisingEdge(d.irq), Timer(self._ns(timeout_s), unit="ns"))
        sr = await self._read(DMA_SEL | axi_dma.DMASR)
        axi_dma.check(sr, f"{self.name}'s DMA")
        return bool(sr & axi_dma.SR_IOC_IRQ)

    def dma_reset(self):
        self.dma.reset()

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


class FaultyBoard(Board):
    """A board that passes everything to ``inner`` and injects one fault into a job.

    ``fault`` (with ``at``, the epoch it strikes in, 0-based):

    - ``"interrupt"``: Ctrl-C (KeyboardInterrupt) while the epoch's transfer streams;
    - ``"short"``: the epoch's transfer is one beat short (TLAST inside the stream: the
      engine faults with STREAM_SHORT while the DMA still holds data);
    - ``"soft_reset"``: someone soft-resets the engine while the transfer streams (the
      job never finishes: the driver times out).

    A timeout alone needs no fault: give the job a ``timeout_s`` shorter than it takes.
    """

    def __init__(self, inner: Board, fault: str, at: int = 0, words_per_beat: int = 1):
        if fault not in ("interrupt", "short", "soft_reset"):
            raise ValueError(f"unknown fault {fault!r}")
        self.inner, self.fault, self.at, self.epoch = inner, fault, at, -1
        self.words_per_beat = words_per_beat
        for name in ("name", "clock_hz", "dma_max_bytes", "timeout_slack_s", "irq_wait"):
            setattr(self, name, getattr(inner, name))

    def read(self, offset):
        return self.inner.read(offset)

    def write(self, offset, value):
        self.inner.write(offset, value)

    def batch(self, ops):
        return self.inner.batch(ops)

    def allocate(self, n_words):
        return self.inner.allocate(n_words)

    def dma_send(self, buffer, start_word, n_words):
        self.epoch += 1
        if self.fault == "short" and self.epoch == self.at:
            n_words -= self.words_per_beat
        self.inner.dma_send(buffer, start_word, n_words)

    def dma_wait(self, timeout_s):
        if self.epoch == self.at and self.fault in ("interrupt", "soft_reset"):
            self.inner.sleep(2e-7)                  # 20 cycles into the transfer
            if self.fault == "interrupt":
                raise KeyboardInterrupt
            self.inner.write(c.REG["CTRL"], c.field_bits(c.CTRL_FIELDS, soft_reset=1))
            self.fault = None
        return self.inner.dma_wait(timeout_s)

    def dma_reset(self):
        self.inner.dma_reset()

    def sleep(self, seconds):
        self.inner.sleep(seconds)

    def wait_irq(self, seconds):
        self.inner.wait_irq(seconds)

    def time(self):
        return self.inner.time()


def run_jobs(jobs, *, simulator: str = "verilator", params: c.EngineParams | None = None,
             throttle: int = 0, waves: bool = False, pynq: str | None = None, raise_errors: bool = True) -> list:
    """Run driver jobs on the simulated board.

    Parameters
    ----------
    jobs : list of (EngineConfig, list of streams or the path of a .zsgd file, codebook or None[, options])
        ``options`` (a dict, optional): ``timeout_s``, ``ring_bytes``, ``model0`` and
        ``stop`` (picklable) for :meth:`Engine.run`, ``fault`` and ``at`` for a
        :class:`FaultyBoard`.
    simulator : 'verilator' or 'icarus'
    params : EngineParams of the engine to build (default build at the jobs' W)
    throttle : 0..15, random input gaps of the board's DMA (0: never stalls)
    pynq : board name (e.g. 'pynq-z2', 'zcu104') or None
        Run the jobs through PYNQ: the ``pynq`` package's ``Overlay`` loads a ``.hwh`` of
        that board's design (:mod:`zipsgd.sim.hwh`) on a :mod:`zipsgd.sim.pynq_device`,
        and :class:`zipsgd.pynq_board.PynqBoard` drives the engine, as on the board.
        None: the driver talks to the simulated board directly.
    raise_errors : bool
        Re-raise the first job's exception (default); False returns exceptions in place.

    Returns
    -------
    list of Result (or of the exception a job raised)

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
        (tmp / "jobs.pkl").write_bytes(pickle.dumps({"jobs": jobs, "throttle": throttle, "pynq": pynq,
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
            if raise_errors:
                raise r
            continue
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
            driven = board if spec.get("pynq") is None else _pynq_board(board, spec["pynq"], workdir)
            engine = Engine(driven)
            out = []
            for job in spec["jobs"]:
                cfg, streams, codebook = job[:3]
                opts = job[3] if len(job) > 3 else {}
                if isinstance(streams, (str, Path)):          # a packed file, memory-mapped here
                    from zipsgd.packfile import open_packed
                    streams = open_packed(streams).streams
                board.peak_beats = board.allocated_beats
                engine.board = (FaultyBoard(driven, opts["fault"], opts.get("at", 0), cfg.layout.host_words_per_beat)
                                if "fault" in opts else driven)
                t0 = time.perf_counter()
                try:
                    res = engine.run(cfg, streams, codebook, timeout_s=opts.get("timeout_s"),
                                     ring_bytes=opts.get("ring_bytes"), model0=opts.get("model0"),
                                     stop=opts.get("stop"))
                except BaseException as exc:  # handed back to the host process (Ctrl-C too)
                    out.append(exc)
                    continue
                finally:
                    engine.board = driven
                res.stats["_peak"] = board.peak_beats * board.beat_bytes
                res.stats["sim_job_seconds"] = dt = time.perf_counter() - t0
                res.stats["sim_cycles_per_second"] = res.stats["cycles"] / max(dt, 1e-9)
                res.stats["sim_startup_seconds"] = startup
                out.append(res)
            return out

        results = await bridge(drive)()
        for r in results:
            if not isinstance(r, BaseException):
                r.stats["board_beats_allocated"] = board.allocated_beats
                r.stats["board_peak_bytes"] = r.stats.pop("_peak", 0)
                r.stats["driver"] = "pynq" if spec.get("pynq") else "native"
        (workdir / "results.pkl").write_bytes(pickle.dumps(results))

    return run_driver_jobs


def _pynq_board(board: CocotbBoard, name: str, workdir: Path):
    """PYNQ's own classes on the simulated board: a ``.hwh`` of ``name``'s design beside an
    (empty) ``.bit``, a :class:`~zipsgd.sim.pynq_device.SimPynqDevice`, and the
    :class:`~zipsgd.pynq_board.PynqBoard` that ``PynqBoard.open`` makes of them."""
    from zipsgd.boards import board as board_spec
    from zipsgd.pynq_board import PynqBoard

    from .hwh import hwh
    from .pynq_device import SimPynqDevice

    spec = board_spec(name)
    folder = Path(workdir) / "bitstreams" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zipsgd.hwh").write_text(hwh(spec))
    (folder / "zipsgd.bit").write_bytes(b"")
    return PynqBoard.open(str(folder / "zipsgd.bit"), device=SimPynqDevice(board, spec))
