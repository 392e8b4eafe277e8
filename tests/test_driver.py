"""The driver (zipsgd.driver.Engine) against a register-level fake board (pure Python, fast).

The fake models what the driver relies on: identification registers, the
auto-incrementing MODEL_DATA port, LOSS_ADDR/LOSS_LO/LOSS_HI, 64-bit counters read
LO then HI, START/SOFT_RESET and STATUS.done raised a given board time after START,
and board time that advances only when the driver sleeps or waits.
"""

from __future__ import annotations

import numpy as np
import pytest

from zipsgd import contract as c
from zipsgd.driver import Board, BitstreamMismatch, Engine, EngineTimeout

NAMES = {off: name for name, off in c.REG.items()}
PARAMS = c.EngineParams()


class FakeBuffer(np.ndarray):
    def flush(self):
        self.flushed = True

    def free(self):
        self.freed = True


class FakeBoard(Board):
    name = "fake board"
    clock_hz = 100e6

    def __init__(self, job_seconds=5e-5, hang=False, irq=False, magic=c.MAGIC):
        self.job_seconds, self.hang, self.irq_wait, self.magic = job_seconds, hang, irq, magic
        self.log, self.sleeps, self.waits, self.buffers, self.sent = [], [], [], [], []
        self.t, self.t_done, self.model_ptr, self.loss_addr = 0.0, None, 0, 0
        self.model = np.array([(i * 7919 - 5000) & 0xFFFFFFFF for i in range(64)], dtype=np.int64)
        self.losses = [(e + 1) << 33 | e for e in range(8)]
        self.counts = {"CYCLES": 5 << 32 | 7, "BEATS": 1000, "STALLS": 12, "IDLES": 0, "SAMPLES": 30}
        self.latched = {}
        self.overrides = {}                   # register name -> value read instead

    # registers
    def read(self, offset):
        name = NAMES[offset]
        self.log.append(("r", name))
        fixed = {"MAGIC": self.magic, "VERSION": c.version_word(), "PARAM_WORD_BITS": PARAMS.word_bits,
                 "PARAM_DIM_MAX": PARAMS.dim_max, "PARAM_BATCH_MAX": PARAMS.batch_max,
                 "PARAM_EPOCHS_MAX": PARAMS.epochs_max, "BUILD_HASH": c.build_hash(PARAMS),
                 "PARAM_MODES": 0xFFFF, "PARAM_LANES": PARAMS.lanes, "EPOCHS_DONE": 0}
        fixed.update(self.overrides)
        if name in fixed:
            return fixed[name]
        if name == "STATUS":
            done = self.t_done is not None and self.t >= self.t_done
            return c.field_bits(c.STATUS_FIELDS, done=int(done), busy=int(not done))
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
        self.log.append(("w", name, value))
        if name == "CTRL" and value & 1:
            self.t_done = None if self.hang else self.t + self.job_seconds
        elif name == "MODEL_ADDR":
            self.model_ptr = value
        elif name == "LOSS_ADDR":
            self.loss_addr = value

    # buffers, DMA, time
    def allocate(self, n_words):
        buf = np.zeros(n_words, dtype=np.uint64).view(FakeBuffer)
        buf.flushed = buf.freed = False
        self.buffers.append(buf)
        return buf

    def dma_send(self, buffer, start_word, n_words):
        self.sent.append((start_word, n_words))

    def dma_wait(self, timeout_s):
        return True

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


def _job(n=30, d=5, epochs=2):
    cfg = c.EngineConfig(n_samples=n, dim=d, bits=4, encoding=c.Encoding.COMPACT, batch=4, epochs=epochs)
    words = n * cfg.layout.beats_per_sample * cfg.layout.host_words_per_beat
    return cfg, [np.arange(words, dtype=np.uint64)], c.FEAT.to_fixed(np.linspace(-1, 1, 16))


@pytest.mark.parametrize("irq", [False, True])
def test_run_reads_everything_back(irq):
    board = FakeBoard(irq=irq)
    cfg, streams, cb = _job()
    res = Engine(board).run(cfg, streams, cb)
    m = board.model[:cfg.dim]
    assert np.array_equal(res.model, np.where(m >= 1 << 31, m - (1 << 32), m))
    assert res.loss_sums == board.losses[:cfg.epochs]
    assert res.stats["cycles"] == 5 << 32 | 7 and res.beats == 1000 and res.samples == 30
    assert res.stats["efficiency"] == pytest.approx(1000 / 1012)
    # configuration, then the codebook from address 0, then START
    writes = [e[1] for e in board.log if e[0] == "w"]
    assert writes.index("CODEBOOK_ADDR") < writes.index("CODEBOOK_DATA") < writes.index("CTRL")
    assert writes.count("CODEBOOK_DATA") == 16
    assert board.sent == [(0, streams[0].size)] * cfg.epochs
    assert board.buffers[0].flushed and board.buffers[0].freed
    if irq:      # one wait, up to the timeout, woken by the interrupt
        assert len(board.waits) == 1 and not board.sleeps
    else:        # polling: POLLS per expected job time
        assert not board.waits and 1 <= len(board.sleeps) <= Engine.POLLS + 1


@pytest.mark.parametrize("irq", [False, True])
def test_timeout_soft_resets_and_frees(irq):
    board = FakeBoard(hang=True, irq=irq)
    cfg, streams, cb = _job()
    with pytest.raises(EngineTimeout, match="soft-reset"):
        Engine(board).run(cfg, streams, cb, timeout_s=0.01)
    assert board.t > 0.01
    assert board.log[-1] == ("w", "CTRL", c.field_bits(c.CTRL_FIELDS, soft_reset=1))
    assert board.buffers[0].freed
    if irq:
        assert len(board.waits) <= 2


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
    out = board.batch([("w", c.REG["MODEL_ADDR"], 3), ("r", c.REG["MODEL_DATA"]), ("r", c.REG["MODEL_DATA"]),
                       ("r", c.REG["MAGIC"])])
    assert out == [int(board.model[3]), int(board.model[4]), c.MAGIC]
    with pytest.raises(ValueError, match="unknown register operation"):
        board.batch([("x", 0)])


def test_pynq_board_drives_the_same_register_traffic(monkeypatch):
    """The PYNQ board keeps Board's defaults (batch = reads/writes one by one, no
    interrupt wait): the same job makes exactly the same register accesses as on a
    board that batches."""
    from zipsgd import pynq_board

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

    cfg, streams, cb = _job()
    direct = BatchingBoard(job_seconds=0.0)
    Engine(direct).run(cfg, streams, cb)
    assert direct.batches >= 4

    regs = FakeBoard(job_seconds=0.0)

    class IP:
        read = staticmethod(regs.read)
        write = staticmethod(regs.write)

    class Channel:
        idle = True

        def transfer(self, buffer, start, nbytes):
            regs.sent.append((start // 8, nbytes // 8))

    class DMA:
        sendchannel = Channel()
        buffer_max_size = 1 << 26

    class Buffer(FakeBuffer):
        def freebuffer(self):
            self.freed = True

    class FakePynq:
        class Clocks:
            fclk0_mhz = 150.0

        @staticmethod
        def allocate(shape, dtype):
            buf = np.zeros(shape, dtype=dtype).view(Buffer)
            regs.buffers.append(buf)
            return buf

    monkeypatch.setattr(pynq_board, "_pynq", lambda: FakePynq)
    board = pynq_board.PynqBoard(IP(), DMA())
    assert board.clock_hz == 150e6 and not board.irq_wait
    res = Engine(board).run(cfg, streams, cb)
    assert regs.log == direct.log and regs.sent == direct.sent
    assert np.array_equal(res.model, np.where(regs.model[:cfg.dim] >= 1 << 31, regs.model[:cfg.dim] - (1 << 32),
                                              regs.model[:cfg.dim]))
    assert regs.buffers[0].freed
