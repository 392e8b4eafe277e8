"""The driver (zipsgd.driver.Engine) against a register-level fake board (pure Python, fast).

The fake models what the driver relies on: identification registers, the
auto-incrementing MODEL_DATA port, LOSS_ADDR/LOSS_LO/LOSS_HI, 64-bit counters read
LO then HI, START/SOFT_RESET and STATUS.done raised a given board time after START,
and board time that advances only when the driver sleeps or waits.

Its DMA is a register model of the AXI DMA's memory-to-stream channel in direct-register
mode as Xilinx PG021 defines it (:class:`Pg021Mm2s`): halted and *not* idle out of reset,
RS, a self-clearing soft reset, the error bits, write-1-to-clear interrupt bits, LENGTH
masked to its width and starting a transfer that takes board time. The fake board drives
it with the host's own channel driver (:class:`zipsgd.axi_dma.Mm2s`); the PYNQ board test
drives it with PYNQ's own ``_SDMAChannel``.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from zipsgd import axi_dma
from zipsgd import contract as c
from zipsgd.axi_dma import (CR_ERR_IRQ_EN, CR_IOC_IRQ_EN, CR_RESET, CR_RS, DMACR, DMASR, LENGTH, SA, SA_MSB,
                            SR_ERR_IRQ, SR_HALTED, SR_IDLE, SR_IOC_IRQ, DmaError)
from zipsgd.driver import Board, BitstreamMismatch, Engine, EngineFault, EngineTimeout

NAMES = {off: name for name, off in c.REG.items()}
PARAMS = c.EngineParams()
SOFT_RESET = c.field_bits(c.CTRL_FIELDS, soft_reset=1)
START = c.field_bits(c.CTRL_FIELDS, start=1)

DMA_NAMES = {DMACR: "DMACR", DMASR: "DMASR", SA: "SA", SA_MSB: "SA_MSB", LENGTH: "LENGTH"}
INT_ERR, SLV_ERR, DEC_ERR = 1 << 4, 1 << 5, 1 << 6
#: Where the fake's buffers live: above 4 GiB, so a transfer needs SA_MSB.
PHYS_BASE = 0x8_0000_0000
DMA_RESET = ("dma", "w", "DMACR", CR_RESET)


class Pg021Mm2s:
    """PG021's MM2S channel (direct-register mode) as 32-bit registers.

    ``board`` gives board time (``time()``, ``clock_hz``) and memory
    (``dma_read(address, nbytes)`` -> 0, or the DMASR error bit of a failed read).
    Every access is appended to ``events`` as ``("dma", "r"|"w", name, value)``.
    """

    #: The reset completes at this DMACR read after Reset is written (until then Reset reads 1).
    RESET_READS = 2

    def __init__(self, board, width: int = 26, events=None):
        self.board, self.width = board, width
        self.max_bytes = (1 << width) - 1
        self.events = events if events is not None else []
        self.stall = False            # True: a started transfer never ends (the stream is not accepted)
        self.lengths = []             # (DMASR before the write, address, length) of each LENGTH that started
        self._power_on()

    def _power_on(self):
        self.cr, self.sr = 0, SR_HALTED          # halted, and Idle = 0 until a transfer completes
        self.sa = self.sa_msb = self.length = 0
        self.end = None                          # board time the transfer in flight ends; None: none
        self.reset_reads = 0

    def _tick(self):
        if self.end is not None and self.board.time() >= self.end:
            self.end = None
            self.sr |= SR_IDLE | SR_IOC_IRQ
            if not self.cr & CR_RS:
                self.sr |= SR_HALTED

    @property
    def in_flight(self) -> bool:
        self._tick()
        return self.end is not None

    @property
    def introut(self) -> bool:
        """The channel's interrupt line: an interrupt bit of DMASR whose enable is set in DMACR."""
        self._tick()
        return bool(self.sr & self.cr & (SR_IOC_IRQ | SR_ERR_IRQ))

    def read(self, offset):
        self._tick()
        if offset == DMACR:
            if self.cr & CR_RESET:
                self.reset_reads -= 1
                if self.reset_reads <= 0:        # reset complete: Reset self-clears
                    self._power_on()
            value = self.cr
        elif offset == DMASR:
            value = self.sr
        elif offset == SA:
            value = self.sa
        elif offset == SA_MSB:
            value = self.sa_msb
        elif offset == LENGTH:
            value = self.length
        else:
            raise AssertionError(f"read of an MM2S register the driver has no business with: 0x{offset:02X}")
        self.events.append(("dma", "r", DMA_NAMES[offset], value))
        return value

    def write(self, offset, value):
        self._tick()
        self.events.append(("dma", "w", DMA_NAMES.get(offset, hex(offset)), value))
        if offset == DMACR:
            if value & CR_RESET:                 # soft reset: the transfer in flight is dropped
                self._power_on()
                self.cr, self.reset_reads = CR_RESET, self.RESET_READS
                return
            if self.cr & CR_RESET:
                return                           # ignored until the reset completes
            self.cr = value & (CR_RS | CR_IOC_IRQ_EN | CR_ERR_IRQ_EN)
            if value & CR_RS:
                self.sr &= ~SR_HALTED
            elif self.end is None:
                self.sr |= SR_HALTED
        elif offset == DMASR:
            self.sr &= ~(value & (SR_IOC_IRQ | SR_ERR_IRQ))     # W1C; the other bits are read-only
        elif offset == SA:
            self.sa = value & 0xFFFFFFFF
        elif offset == SA_MSB:
            self.sa_msb = value & 0xFFFFFFFF
        elif offset == LENGTH:
            self.length = value & self.max_bytes
            if self.sr & SR_HALTED:
                return                           # no effect while halted
            assert self.end is None, "LENGTH written while a transfer is in flight (PG021: undefined)"
            address = self.sa_msb << 32 | self.sa
            self.lengths.append((self.sr, address, self.length))
            err = INT_ERR if self.length == 0 else self.board.dma_read(address, self.length)
            if err:                              # the channel halts: RS cleared, Halted set
                self.sr |= err | SR_ERR_IRQ | SR_HALTED
                self.cr &= ~CR_RS
                return
            self.sr &= ~SR_IDLE
            self.end = math.inf if self.stall else self.board.time() + self.length / 8 / self.board.clock_hz
        else:
            raise AssertionError(f"write of an MM2S register the driver has no business with: 0x{offset:02X}")


class FakeBuffer(np.ndarray):
    def flush(self):
        self.flushed = True

    def free(self):
        self.freed = True
        self.board.events.append(("free", self.index))

    freebuffer = free                         # pynq's name


class FakeBoard(Board):
    name = "fake board"
    clock_hz = 100e6

    def __init__(self, job_seconds=5e-5, hang=False, irq=False, magic=c.MAGIC, dma_width=26, dma_fault=None,
                 slack=1.0):
        self.job_seconds, self.hang, self.irq_wait, self.magic = job_seconds, hang, irq, magic
        self.timeout_slack_s = slack
        self.dma_fault = dma_fault            # None, "slave" (memory refuses the read), "decode" (not mapped)
        self.log, self.sleeps, self.waits, self.buffers, self.sent = [], [], [], [], []
        self.streamed, self.dma_waits = [], []
        self.events = []                      # engine, DMA and buffer events, in order
        self.t, self.t_done, self.model_ptr, self.loss_addr = 0.0, None, 0, 0
        self.model = np.array([(i * 7919 - 5000) & 0xFFFFFFFF for i in range(64)], dtype=np.int64)
        self.losses = [(e + 1) << 33 | e for e in range(8)]
        self.counts = {"CYCLES": 5 << 32 | 7, "BEATS": 1000, "STALLS": 12, "IDLES": 0, "SAMPLES": 30, "SATURATED": 3}
        self.latched = {}
        self.overrides = {}                   # register name -> value read instead
        self.epochs_done = None               # callable: EPOCHS_DONE as the test models it
        self.stopped = False
        self.written_model = []
        self.dma = Pg021Mm2s(self, dma_width, self.events)
        self.mm2s = axi_dma.Mm2s(self.dma.read, self.dma.write, self.dma.max_bytes)
        self.dma_max_bytes = self.dma.max_bytes

    # registers
    def _log(self, entry):
        self.log.append(entry)
        self.events.append(("engine",) + entry)

    def read(self, offset):
        name = NAMES[offset]
        self._log(("r", name))
        fixed = {"MAGIC": self.magic, "VERSION": c.version_word(), "PARAM_WORD_BITS": PARAMS.word_bits,
                 "PARAM_DIM_MAX": PARAMS.dim_max, "PARAM_BATCH_MAX": PARAMS.batch_max,
                 "PARAM_EPOCHS_MAX": PARAMS.epochs_max, "BUILD_HASH": c.build_hash(PARAMS),
                 "PARAM_MODES": 0xFFFF, "PARAM_LANES": PARAMS.lanes, "EPOCHS_DONE": 0}
        fixed.update(self.overrides)
        if name == "EPOCHS_DONE" and self.epochs_done is not None:
            return self.epochs_done()
        if name in fixed:
            return fixed[name]
        if name == "STATUS":
            done = self.t_done is not None and self.t >= self.t_done
            return c.field_bits(c.STATUS_FIELDS, done=int(done), busy=int(not done), stopped=int(self.stopped))
        if name == "MODEL_DATA":
            v = int(self.model[self.model_ptr])
            self.model_ptr += 1
            return v
        if name in ("LOSS_LO", "LOSS_HI"):
            v = self.losses[self.loss_addr]
            return v & 0xFFFFFFFF if name == "LOSS_LO" else v >> 32
        base, half = name.rsplit("_", 1)
        if half == "LO":                      # reading LO latches HI
            self.latched[base] = self.counts[base] >> 32
            return self.counts[base] & 0xFFFFFFFF
        return self.latched.pop(base)         # HI without LO first: KeyError

    def write(self, offset, value):
        name = NAMES[offset]
        self._log(("w", name, value))
        if name == "CTRL" and value & c.field_bits(c.CTRL_FIELDS, stop=1):
            self.stopped = True
            self.t_done = self.t
        elif name == "CTRL" and value & 1:
            self.t_done = None if self.hang else self.t + self.job_seconds
        elif name == "CTRL" and value & SOFT_RESET:
            self.t_done = None
        elif name == "MODEL_ADDR":            # any write rewinds (the contract)
            self.model_ptr = 0
        elif name == "MODEL_DATA":
            self.written_model.append((self.model_ptr, value))
            self.model_ptr += 1
        elif name == "LOSS_ADDR":
            self.loss_addr = value

    # buffers and the memory the DMA reads
    def allocate(self, n_words):
        buf = np.zeros(n_words, dtype=np.uint64).view(FakeBuffer)
        buf.flushed = buf.freed = False
        buf.board, buf.index = self, len(self.buffers)
        buf.physical_address = PHYS_BASE + 0x10_0000 * len(self.buffers)
        self.buffers.append(buf)
        return buf

    def dma_read(self, address, nbytes):
        """The DMA reads ``nbytes`` at physical ``address``: 0, or the DMASR bit of the failure."""
        for buf in self.buffers:
            lo = buf.physical_address
            if not buf.freed and lo <= address and address + nbytes <= lo + buf.nbytes:
                break
        else:
            return DEC_ERR
        if self.dma_fault == "decode":
            return DEC_ERR
        if self.dma_fault == "slave":
            return SLV_ERR
        assert address % 8 == 0 and nbytes % 8 == 0
        start = (address - lo) // 8
        self.sent.append((start, nbytes // 8))
        self.streamed.append(np.array(buf[start:start + nbytes // 8]))
        return 0

    # the DMA, through the host's PG021 channel driver
    def dma_send(self, buffer, start_word, n_words):
        self.mm2s.transfer(buffer.physical_address + start_word * 8, n_words * 8)

    def dma_wait(self, timeout_s):
        """Wake on the DMA's interrupt (completion or error), the engine's (if irq_wait) or the time."""
        self.dma_waits.append(timeout_s)
        wake = self.t + timeout_s
        if self.dma.introut:
            wake = self.t
        elif self.dma.in_flight:
            wake = min(wake, self.dma.end)
        if self.irq_wait and self.t_done is not None:
            wake = min(wake, max(self.t, self.t_done))
        self.t = max(self.t, wake)
        sr = self.mm2s.status()
        axi_dma.check(sr, f"{self.name}'s DMA")
        return bool(sr & SR_IOC_IRQ)

    def dma_reset(self):
        self.mm2s.reset()

    # time
    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.t += seconds

    def wait_irq(self, seconds):
        if not self.irq_wait:
            return super().wait_irq(seconds)
        self.waits.append(seconds)
        if self.t_done is not None and self.t_done - self.t <= seconds:
            self.t = max(self.t, self.t_done)
        else:
            self.t += seconds

    def time(self):
        return self.t


def _job(n=30, d=5, epochs=2, copies=1):
    cfg = c.EngineConfig(n_samples=n, dim=d, bits=4, encoding=c.Encoding.COMPACT, batch=4, epochs=epochs)
    words = n * cfg.layout.beats_per_sample * cfg.layout.host_words_per_beat
    streams = [np.arange(words, dtype=np.uint64) + 1000 * k for k in range(copies)]
    return cfg, streams, c.FEAT.to_fixed(np.linspace(-1, 1, 16))


def _index(events, entry):
    assert entry in events, f"{entry} never happened"
    return events.index(entry)


def _assert_aborted(board, n_buffers=1):
    """The abort sequence ran, in order: DMA reset, then engine soft reset, then the buffer freed
    (last), and the DMA is left halted, nothing in flight, no error bit."""
    ev = board.events
    reset = _index(ev, DMA_RESET)
    soft = _index(ev, ("engine", "w", "CTRL", SOFT_RESET))
    free = _index(ev, ("free", n_buffers - 1))
    assert reset < soft < free == len(ev) - 1
    # no transfer started after the DMA reset
    assert not any(e[:3] == ("dma", "w", "LENGTH") for e in ev[reset:])
    assert not board.dma.in_flight and board.dma.sr == SR_HALTED and not board.dma.cr & CR_RESET
    assert board.buffers[-1].freed and len(board.buffers) == n_buffers


# -- the fake itself -------------------------------------------------------------------

def test_fake_dma_follows_pg021():
    board = FakeBoard(dma_width=12)
    dma = board.dma
    assert dma.read(DMASR) == SR_HALTED                       # out of reset: halted, NOT idle
    assert dma.max_bytes == 4095
    dma.write(LENGTH, 64)                                     # halted: ignored
    assert not dma.in_flight and not dma.lengths
    dma.write(DMACR, CR_RS | CR_IOC_IRQ_EN)
    assert dma.read(DMASR) == 0                               # running, still not idle
    buf = board.allocate(8)
    dma.write(SA, buf.physical_address & 0xFFFFFFFF)
    dma.write(SA_MSB, buf.physical_address >> 32)
    dma.write(LENGTH, 64 | 1 << 12)                           # masked to the 12-bit width
    assert dma.read(LENGTH) == 64 and dma.in_flight and not dma.read(DMASR) & SR_IDLE
    board.t += 64 / 8 / board.clock_hz
    assert dma.read(DMASR) == SR_IDLE | SR_IOC_IRQ and dma.introut
    assert board.sent == [(0, 8)]
    dma.write(DMASR, SR_IOC_IRQ | SR_IDLE | SR_HALTED)        # W1C: only the interrupt bits clear
    assert dma.read(DMASR) == SR_IDLE and not dma.introut
    dma.write(LENGTH, 0)                                      # zero length: DMAIntErr, halted
    assert dma.read(DMASR) == SR_IDLE | INT_ERR | SR_ERR_IRQ | SR_HALTED
    assert not dma.read(DMACR) & CR_RS
    dma.write(DMACR, CR_RESET)
    assert dma.read(DMACR) & CR_RESET                         # the reset takes time, then self-clears
    assert dma.read(DMACR) == 0 and dma.read(DMASR) == SR_HALTED


# -- jobs ------------------------------------------------------------------------------

@pytest.mark.parametrize("irq", [False, True])
def test_run_reads_everything_back(irq):
    board = FakeBoard(irq=irq)
    cfg, streams, cb = _job(epochs=3, copies=2)
    eng = Engine(board)
    res = eng.run(cfg, streams, cb)
    m = board.model[:cfg.dim]
    assert np.array_equal(res.model, np.where(m >= 1 << 31, m - (1 << 32), m))
    assert res.loss_sums == board.losses[:cfg.epochs]
    assert res.stats["cycles"] == 5 << 32 | 7 and res.beats == 1000 and res.samples == 30
    assert res.stats["efficiency"] == pytest.approx(1000 / 1012)
    # configuration, then the codebook from address 0, then START
    writes = [e[1] for e in board.log if e[0] == "w"]
    assert writes.index("CODEBOOK_ADDR") < writes.index("CODEBOOK_DATA") < writes.index("CTRL")
    assert writes.count("CODEBOOK_DATA") == 16
    # one transfer per epoch, in order, epoch e streaming copy e % K, each sent after START
    w = streams[0].size
    assert board.sent == [(0, w), (w, w), (0, w)]
    for e, data in enumerate(board.streamed):
        assert np.array_equal(data, streams[e % len(streams)])
    start = _index(board.events, ("engine", "w", "CTRL", START))
    lengths = [i for i, e in enumerate(board.events) if e[:3] == ("dma", "w", "LENGTH")]
    assert len(lengths) == cfg.epochs and start < lengths[0]
    # each transfer waited for (bounded by the job's timeout) before the next one was sent
    assert len(board.dma_waits) == cfg.epochs
    assert all(0 < t <= eng.default_timeout(cfg) for t in board.dma_waits)
    assert board.buffers[0].flushed and board.buffers[0].freed and board.events[-1] == ("free", 0)
    assert DMA_RESET not in board.events and ("engine", "w", "CTRL", SOFT_RESET) not in board.events
    if irq:      # one wait for the end of the job, up to the timeout, woken by the interrupt
        assert len(board.waits) == 1 and not board.sleeps
    else:        # polling: POLLS per expected job time
        assert not board.waits and 1 <= len(board.sleeps) <= Engine.POLLS + 1


@pytest.mark.parametrize("irq", [False, True])
def test_timeout_resets_dma_then_engine_then_frees(irq):
    board = FakeBoard(hang=True, irq=irq)
    cfg, streams, cb = _job()
    eng = Engine(board)
    with pytest.raises(EngineTimeout, match="every epoch streamed.*DMA reset and engine soft-reset"):
        eng.run(cfg, streams, cb, timeout_s=0.01)
    assert 0.01 <= board.t <= 0.01 + 2e-6         # START at board time 0; an irq wait overshoots 1 us
    assert board.log[-1] == ("w", "CTRL", SOFT_RESET)
    assert len(board.sent) == cfg.epochs
    _assert_aborted(board)
    if irq:
        assert len(board.waits) <= 2
    # the next job starts clean on the same board (the channel is started again)
    board.hang = False
    res = eng.run(cfg, streams, cb)
    assert res.loss_sums == board.losses[:cfg.epochs] and len(board.sent) == 2 * cfg.epochs
    assert board.buffers[1].freed


@pytest.mark.parametrize("irq", [False, True])
def test_a_transfer_that_never_ends_times_out(irq):
    """The engine never takes the stream: the wait for the first transfer is bounded too."""
    board = FakeBoard(hang=True, irq=irq)
    board.dma.stall = True
    cfg, streams, cb = _job()
    with pytest.raises(EngineTimeout, match="epoch 1's DMA transfer still running"):
        Engine(board).run(cfg, streams, cb, timeout_s=0.01)
    assert 0.01 <= board.t <= 0.01 + 2e-6
    assert len(board.dma.lengths) == 1            # the second epoch was never sent
    _assert_aborted(board)                        # and the transfer in flight was dropped


@pytest.mark.parametrize("fault,bit", [("slave", "DMASlvErr"), ("decode", "DMADecErr")])
def test_dma_error_names_the_bit_and_aborts(fault, bit):
    board = FakeBoard(dma_fault=fault)
    cfg, streams, cb = _job()
    eng = Engine(board)
    with pytest.raises(DmaError, match=bit) as info:
        eng.run(cfg, streams, cb)
    assert "MM2S_DMASR" in str(info.value)
    assert len(board.dma.lengths) == 1 and not board.sent     # nothing streamed, nothing more tried
    assert board.t < eng.default_timeout(cfg)                 # the error was not waited out
    _assert_aborted(board)
    board.dma_fault = None                                    # the DMA works again after its reset
    assert eng.run(cfg, streams, cb).loss_sums == board.losses[:cfg.epochs]
    assert board.sent == [(0, streams[0].size)] * cfg.epochs   # (the fake engine finishes without data)


def test_engine_fault_at_start_aborts_before_streaming():
    board = FakeBoard()
    cfg, streams, cb = _job()
    eng = Engine(board)
    read = board.read

    def read_faulting(offset):
        if NAMES[offset] == "STATUS":
            board._log(("r", "STATUS"))
            return c.field_bits(c.STATUS_FIELDS, done=1, error=int(c.Error.BAD_EPOCHS))
        return read(offset)

    board.read = read_faulting
    with pytest.raises(EngineFault, match="BAD_EPOCHS"):
        eng.run(cfg, streams, cb)
    assert not board.dma.lengths
    _assert_aborted(board)


def test_ctrl_c_during_a_transfer_resets_dma_then_engine_then_frees():
    class Interrupted(FakeBoard):
        def dma_wait(self, timeout_s):
            if len(self.dma_waits) == 1:          # the second epoch's transfer is in flight
                assert self.dma.in_flight
                raise KeyboardInterrupt
            return super().dma_wait(timeout_s)

    board = Interrupted()
    cfg, streams, cb = _job(epochs=3)
    with pytest.raises(KeyboardInterrupt):
        Engine(board).run(cfg, streams, cb)
    assert len(board.dma.lengths) == 2
    _assert_aborted(board)


def test_warm_start_writes_the_model_then_starts_warm():
    board = FakeBoard()
    cfg, streams, cb = _job()
    model0 = np.array([1, -1, c.MODEL.max, c.MODEL.min, 0])
    Engine(board).run(cfg, streams, cb, model0=model0)
    log = board.log
    rewind = log.index(("w", "MODEL_ADDR", 0))
    start = log.index(("w", "CTRL", c.field_bits(c.CTRL_FIELDS, start=1, warm=1)))
    last_cfg = max(i for i, e in enumerate(log) if e[0] == "w" and e[1].lower() in c.CONFIG_FIELDS)
    assert last_cfg < rewind < start
    assert board.written_model == [(i, int(v) & 0xFFFFFFFF) for i, v in enumerate(model0)]
    # a cold start sets no warm bit; a model of the wrong size or range is refused first
    board = FakeBoard()
    Engine(board).run(cfg, streams, cb)
    assert ("w", "CTRL", c.field_bits(c.CTRL_FIELDS, start=1)) in board.log and not board.written_model
    for bad, match in ((np.zeros(4), "4 words"), (np.array([0, 0, 0, 0, c.MODEL.max + 1]), "MODEL range")):
        board = FakeBoard()
        with pytest.raises(ValueError, match=match):
            Engine(board).run(cfg, streams, cb, model0=bad)
        assert not any(e[:2] == ("w", "CTRL") for e in board.log)


def test_stop_waits_for_each_epoch_then_stops_at_the_boundary():
    board = FakeBoard()
    cfg, streams, cb = _job(epochs=5, copies=2)
    board.epochs_done = lambda: len(board.streamed)        # each epoch ends as its transfer does
    asked = []
    res = Engine(board).run(cfg, streams, cb, stop=lambda e, lo: asked.append((e, lo)) or e == 1)
    assert [e for e, _ in asked] == [0, 1]
    assert [lo for _, lo in asked] == board.losses[:2]
    stop = board.log.index(("w", "CTRL", c.field_bits(c.CTRL_FIELDS, stop=1)))
    assert len(board.streamed) == 2                        # epoch 3 never sent
    assert res.stopped and res.loss_sums == board.losses[:2]
    assert not any(e[:2] == ("w", "LOSS_ADDR") and e[2] >= 2 for e in board.log[stop:])
    assert res.saturated == board.counts["SATURATED"] and res.stats["saturated"] == 3
    # never asked after the last epoch; a stop that never says yes runs every epoch
    board = FakeBoard()
    board.epochs_done = lambda: len(board.streamed)
    asked = []
    res = Engine(board).run(cfg, streams, cb, stop=lambda e, lo: asked.append(e) and False)
    assert asked == [0, 1, 2, 3] and not res.stopped and len(res.loss_sums) == 5


def test_unsupported_mode_is_refused_before_any_configuration():
    board = FakeBoard()
    cfg, streams, cb = _job()
    board.overrides["PARAM_MODES"] = 0xFFFF & ~(1 << c.mode_bit(cfg.encoding, cfg.bits))
    eng = Engine(board)
    attached = len(board.log)
    with pytest.raises(ValueError, match=f"does not support {cfg.encoding.name} {cfg.bits}-bit"):
        eng.run(cfg, streams, cb)
    assert all(e[0] == "r" for e in board.log[attached:])    # no CTRL, config or codebook write
    assert not board.buffers and not any(e[0] == "dma" for e in board.events)


def test_widths_an_engine_does_not_decode_are_refused_by_name():
    """Codes at 3, 5, 6 and 7 bits run on the cpu; an engine build decodes 1, 2, 4 and 8
    (PARAM_MODES says so) and the driver refuses the others before writing anything."""
    board = FakeBoard()
    board.overrides["PARAM_MODES"] = PARAMS.modes_mask
    eng = Engine(board)
    for bits in (3, 5, 6, 7):
        cfg = c.EngineConfig(n_samples=30, dim=5, bits=bits, encoding=c.double_encoding(bits), batch=4)
        words = 30 * cfg.layout.beats_per_sample * cfg.layout.host_words_per_beat
        with pytest.raises(ValueError, match=f"does not support COMPACT {bits}-bit data.*COMPACT 4-bit"):
            eng.run(cfg, [np.zeros(words, dtype=np.uint64)], np.arange(1 << bits))
    assert not any(e[:2] == ("w", "CTRL") for e in board.log)
    assert {b for e, b in c.valid_modes()} == {32, *c.ENGINE_BITS}
    assert c.check_config(cfg, PARAMS) == c.Error.BAD_BITS and c.check_config(cfg, PARAMS.for_cpu()) == c.Error.NONE


def test_epoch_over_the_dma_length_is_split_at_sample_boundaries():
    """An epoch longer than the DMA's largest transfer goes in several transfers, each
    ending on a sample (contract 2.1), each at most the largest transfer."""
    board = FakeBoard(dma_width=7)                # 127 bytes: 15 one-beat samples of this job
    cfg, streams, cb = _job(copies=2, epochs=3)
    sample = cfg.layout.beats_per_sample * cfg.layout.host_words_per_beat
    res = Engine(board).run(cfg, streams, cb)
    per = 127 // (8 * sample)
    chunks = [(at * sample, min(per, cfg.n_samples - at) * sample) for at in range(0, cfg.n_samples, per)]
    per_epoch = cfg.n_samples * sample
    assert board.sent == [(k * per_epoch + off, n) for k in (0, 1, 0) for off, n in chunks]
    assert res.stats["transfers"] == 3 * len(chunks) > 3 and not res.stats["ring"]


def test_sample_over_the_dma_length_is_refused_before_any_write():
    board = FakeBoard(dma_width=3)                # 7 bytes: under one sample
    cfg, streams, cb = _job()
    eng = Engine(board)
    attached = len(board.log)
    with pytest.raises(ValueError, match="one sample is 8 bytes, more than the DMA's largest transfer \\(7 bytes\\)"):
        eng.run(cfg, streams, cb)
    assert all(e[0] == "r" for e in board.log[attached:]) and not board.buffers


def test_ring_streams_copies_larger_than_the_budget():
    """With a ring, two small buffers carry every epoch: refilled in turn, each transfer
    from the slot the host just filled, the data streamed equal to the copies'."""
    board = FakeBoard()
    cfg, streams, cb = _job(copies=2, epochs=3)
    sample = cfg.layout.beats_per_sample * cfg.layout.host_words_per_beat
    ring = 2 * 4 * sample * 8                     # two slots of 4 samples
    res = Engine(board).run(cfg, streams, cb, ring_bytes=ring)
    assert res.stats["ring"] and res.stats["transfers"] == 3 * -(-cfg.n_samples // 4)
    assert len(board.buffers) == 2 and all(b.size == 4 * sample for b in board.buffers)
    assert all(b.freed for b in board.buffers)
    want = np.concatenate([streams[e % 2] for e in range(cfg.epochs)])
    assert np.array_equal(np.concatenate(board.streamed), want)


@pytest.mark.parametrize("slack,irq", [(1e-6, False), (30.0, True)])
def test_default_timeout_is_board_time(slack, irq):
    """(A polling board polls POLLS times per expected job time however long the slack is:
    30 s of slack is waited for here with the interrupt.)"""
    board = FakeBoard(hang=True, slack=slack, irq=irq)
    cfg, streams, cb = _job()
    eng = Engine(board)
    batches = math.ceil(cfg.n_samples / cfg.batch)
    cycles = cfg.epochs * (cfg.n_samples * cfg.layout.beats_per_sample + 64 * batches + 4096)
    expect = 4 * cycles / board.clock_hz + slack
    assert eng.default_timeout(cfg) == pytest.approx(expect)
    wall = time.monotonic()
    with pytest.raises(EngineTimeout, match=f"within {expect:.3g} s of board time"):
        eng.run(cfg, streams, cb)
    assert expect <= board.t <= expect + 2e-6     # START at board time 0
    assert time.monotonic() - wall < 5            # board time, not the host's (30 s of it here)
    _assert_aborted(board)


def test_first_transfer_is_not_held_back_by_idle_low_out_of_reset():
    """Out of reset DMASR.Idle is 0 (it rises only when a transfer completes): a driver that
    waits for Idle before its first transfer never sends it."""
    board = FakeBoard()
    assert board.dma.read(DMASR) == SR_HALTED
    cfg, streams, cb = _job(epochs=3)
    res = Engine(board).run(cfg, streams, cb)
    assert res.loss_sums == board.losses[:cfg.epochs]
    srs = [sr for sr, _, _ in board.dma.lengths]
    assert len(srs) == cfg.epochs
    assert not srs[0] & (SR_IDLE | SR_HALTED)     # running, Idle still 0, and the transfer went
    assert all(sr & SR_IDLE for sr in srs[1:])    # the later ones after the last had completed


# -- registers -------------------------------------------------------------------------

def test_foreign_ip_is_not_read_beyond_magic():
    board = FakeBoard(magic=0x12345678)
    with pytest.raises(BitstreamMismatch, match="MAGIC"):
        Engine(board)
    assert board.log == [("r", "MAGIC")]


@pytest.mark.parametrize("reg,value,match", [
    ("PARAM_LANES", 7, "impossible build parameters"),
    ("PARAM_LANES", PARAMS.word_bits, "BUILD_HASH"),      # a full-lane engine with a half-lane hash
    ("BUILD_HASH", c.build_hash(PARAMS) ^ 1, "BUILD_HASH"),
])
def test_mismatched_build_is_refused(reg, value, match):
    board = FakeBoard()
    board.overrides[reg] = value
    with pytest.raises(BitstreamMismatch, match=match):
        Engine(board)


def test_default_batch_runs_in_order():
    board = FakeBoard()
    out = board.batch([("r", c.REG["MODEL_DATA"]), ("r", c.REG["MODEL_DATA"]), ("w", c.REG["MODEL_ADDR"], 5),
                       ("r", c.REG["MODEL_DATA"]), ("r", c.REG["MAGIC"])])
    assert out == [int(board.model[0]), int(board.model[1]), int(board.model[0]), c.MAGIC]
    with pytest.raises(ValueError, match="unknown register operation"):
        board.batch([("x", 0)])


# -- the PYNQ board --------------------------------------------------------------------

def _pynq_board(monkeypatch, regs):
    """A PynqBoard over ``regs``: its engine registers, and an ``AxiDMA`` stand-in whose send
    channel is PYNQ's real ``_SDMAChannel`` over an mmio serving ``regs``' PG021 model."""
    from pynq.lib.dma import DMA_TYPE_TX, _SDMAChannel

    from zipsgd import pynq_board

    device = object()

    class IP:
        read = staticmethod(regs.read)
        write = staticmethod(regs.write)

    IP.device = device

    class Mmio:
        read = staticmethod(regs.dma.read)
        write = staticmethod(regs.dma.write)

    class DMA:
        mmio = Mmio()
        buffer_max_size = regs.dma.max_bytes
        sendchannel = _SDMAChannel(mmio, buffer_max_size, 8, DMA_TYPE_TX, False)

    class FakePynq:
        class Clocks:
            fclk0_mhz = regs.clock_hz / 1e6

        @staticmethod
        def allocate(shape, dtype, target):
            assert target is device and dtype == np.uint64
            return regs.allocate(shape[0])

    monkeypatch.setattr(pynq_board, "_pynq", lambda: FakePynq)
    return pynq_board.PynqBoard(IP(), DMA(), name="fake PYNQ", clock=regs)


def test_pynq_board_drives_the_same_register_traffic(monkeypatch):
    """The PYNQ board keeps Board's defaults (batch = reads/writes one by one, no
    interrupt wait): the same job makes exactly the same engine register accesses and the
    same transfers as on a board that batches, with PYNQ's own DMA channel driver."""

    class BatchingBoard(FakeBoard):
        batches = 0

        def batch(self, ops):
            self.batches += 1
            out = []
            for op in ops:
                if op[0] == "r":
                    out.append(self.read(op[1]))
                else:
                    self.write(op[1], op[2])
            return out

    cfg, streams, cb = _job(epochs=3, copies=2)
    direct = BatchingBoard(job_seconds=0.0)
    Engine(direct).run(cfg, streams, cb)
    assert direct.batches >= 4

    regs = FakeBoard(job_seconds=0.0)
    board = _pynq_board(monkeypatch, regs)
    assert board.clock_hz == regs.clock_hz and not board.irq_wait
    assert board.dma_max_bytes == (1 << 26) - 1
    res = Engine(board).run(cfg, streams, cb)
    assert regs.log == direct.log and regs.sent == direct.sent
    for a, b in zip(regs.streamed, direct.streamed, strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(res.model, np.where(regs.model[:cfg.dim] >= 1 << 31, regs.model[:cfg.dim] - (1 << 32),
                                              regs.model[:cfg.dim]))
    assert regs.buffers[0].freed
    # PYNQ's first-transfer flag let the first transfer go with Idle 0
    srs = [sr for sr, _, _ in regs.dma.lengths]
    assert len(srs) == cfg.epochs and not srs[0] & SR_IDLE and all(sr & SR_IDLE for sr in srs[1:])


def test_pynq_board_dma_error_aborts_and_recovers(monkeypatch):
    regs = FakeBoard(dma_fault="slave")
    board = _pynq_board(monkeypatch, regs)
    cfg, streams, cb = _job()
    eng = Engine(board)
    with pytest.raises(DmaError, match="DMASlvErr"):
        eng.run(cfg, streams, cb)
    ev = regs.events
    reset = _index(ev, DMA_RESET)
    assert reset < _index(ev, ("engine", "w", "CTRL", SOFT_RESET)) < _index(ev, ("free", 0)) == len(ev) - 1
    assert not any(e[:3] == ("dma", "w", "LENGTH") for e in ev[reset:])
    # PYNQ's channel is running again after the reset (Idle 0 again: its first-transfer flag is set)
    assert board.channel.running and not board.channel.idle
    regs.dma_fault = None
    res = eng.run(cfg, streams, cb)
    assert res.loss_sums == regs.losses[:cfg.epochs] and len(regs.sent) == cfg.epochs
    assert regs.buffers[1].freed
