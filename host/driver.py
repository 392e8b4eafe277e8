"""The zipsgd driver: registers + DMA + buffers, the same code on every board.

A :class:`Board` gives the driver four things: 32-bit register reads and writes,
DMA-able buffers, a memory-to-stream DMA that ends each transfer with TLAST, and a
clock to wait on. A PYNQ board (:mod:`zipsgd.pynq_board`) and the simulated board
(:mod:`zipsgd.sim.board`, the engine's RTL under Verilator) both implement it;
:class:`Engine` is the only code that talks to the engine, so what runs on a board
is what the tests run.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from . import contract as c
from .reference import Result


class DriverError(RuntimeError):
    """Base class of driver failures."""


class BitstreamMismatch(DriverError):
    """The engine behind the board is not the one this host library expects."""


class EngineTimeout(DriverError):
    """The engine did not finish in time (the message carries its counters)."""


class EngineFault(DriverError):
    """The engine refused or aborted the job (the message names the error code)."""


class Board(abc.ABC):
    """What the driver needs from a board."""

    name: str = "board"
    #: Engine clock in Hz.
    clock_hz: float = 100e6
    #: Largest single DMA transfer in bytes (one TLAST-terminated stream).
    dma_max_bytes: int = 1 << 26

    @abc.abstractmethod
    def read(self, offset: int) -> int:
        """Read the 32-bit engine register at byte ``offset``."""

    @abc.abstractmethod
    def write(self, offset: int, value: int) -> None:
        """Write the 32-bit engine register at byte ``offset``."""

    @abc.abstractmethod
    def allocate(self, n_words: int):
        """A DMA-able buffer of ``n_words`` uint64 (numpy-like; ``flush()``, ``free()``)."""

    @abc.abstractmethod
    def dma_send(self, buffer, start_word: int, n_words: int) -> None:
        """Stream ``n_words`` of ``buffer`` from ``start_word`` to the engine (TLAST at the end).

        May return before the transfer ends; transfers run in call order."""

    @abc.abstractmethod
    def dma_wait(self, timeout_s: float) -> bool:
        """Wait until every queued transfer has finished; False on timeout."""

    @abc.abstractmethod
    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` of board time pass."""

    @abc.abstractmethod
    def time(self) -> float:
        """Board time in seconds (wall time on hardware, simulated time in simulation)."""

    def close(self) -> None:
        """Release the board."""


@dataclass
class Counters:
    cycles: int
    beats: int
    stalls: int
    idles: int
    samples: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _status(value: int) -> dict:
    return {f.name: c.field_value(c.STATUS_FIELDS, f.name, value) for f in c.STATUS_FIELDS}


class Engine:
    """Driver of one zipsgd engine on a :class:`Board`.

    Attaching reads the ID registers and refuses an engine whose magic, contract
    version or build hash differ from this library's contract.
    """

    #: Polls per expected job duration.
    POLLS = 50

    def __init__(self, board: Board):
        self.board = board
        magic = board.read(c.REG["MAGIC"])
        if magic != c.MAGIC:
            raise BitstreamMismatch(
                f"no zipsgd engine on {board.name}: MAGIC reads 0x{magic:08X}, expected 0x{c.MAGIC:08X} "
                "(wrong bitstream loaded, or the engine is not at the expected address)")
        version = board.read(c.REG["VERSION"])
        if version != c.version_word():
            raise BitstreamMismatch(
                f"engine on {board.name} implements contract {version >> 16}.{version & 0xFFFF}, this host "
                f"library speaks {c.CONTRACT_VERSION[0]}.{c.CONTRACT_VERSION[1]}: rebuild the bitstream "
                "(make bitstream) or install the matching zipsgd")
        self.params = c.EngineParams(
            word_bits=board.read(c.REG["PARAM_WORD_BITS"]), dim_max=board.read(c.REG["PARAM_DIM_MAX"]),
            batch_max=board.read(c.REG["PARAM_BATCH_MAX"]), epochs_max=board.read(c.REG["PARAM_EPOCHS_MAX"]))
        got = board.read(c.REG["BUILD_HASH"])
        if got != c.build_hash(self.params):
            raise BitstreamMismatch(
                f"engine on {board.name} was built from a different contract (BUILD_HASH 0x{got:08X}, expected "
                f"0x{c.build_hash(self.params):08X} for {self.params}): rebuild the bitstream")
        self.modes = board.read(c.REG["PARAM_MODES"])

    # -- registers ---------------------------------------------------------------------
    def _w(self, name: str, value: int) -> None:
        self.board.write(c.REG[name], int(value) & 0xFFFFFFFF)

    def _r(self, name: str) -> int:
        return self.board.read(c.REG[name])

    def _r64(self, name: str) -> int:
        lo = self._r(f"{name}_LO")
        return lo | self._r(f"{name}_HI") << 32

    def status(self) -> dict:
        return _status(self._r("STATUS"))

    def counters(self) -> Counters:
        return Counters(*(self._r64(n) for n in c.COUNTER_NAMES))

    def soft_reset(self) -> None:
        self._w("CTRL", c.field_bits(c.CTRL_FIELDS, soft_reset=1))

    # -- a job -------------------------------------------------------------------------
    def expected_cycles(self, cfg: c.EngineConfig) -> int:
        """A generous bound on a job's cycles: beats plus per-batch and per-epoch latency."""
        beats = cfg.n_samples * cfg.layout.beats_per_sample
        batches = -(-cfg.n_samples // cfg.batch)
        return cfg.epochs * (beats + 64 * batches + 4096)

    def configure(self, cfg: c.EngineConfig, codebook=None) -> None:
        if cfg.word_bits != self.params.word_bits:
            raise ValueError(f"job packed for W={cfg.word_bits}, engine streams W={self.params.word_bits}")
        err = c.check_config(cfg, self.params)
        if err != c.Error.NONE:
            raise ValueError(f"configuration refused before sending: {err.name}: {c.ERROR_TEXT[err]}")
        for reg in ("n_samples", "dim", "bits", "encoding", "loss", "step_shift", "step_mult",
                    "decay_epochs", "l2_shift", "batch", "epochs", "copies"):
            self._w(reg.upper(), int(getattr(cfg, reg)))
        if codebook is not None:
            self._w("CODEBOOK_ADDR", 0)
            for level in np.asarray(codebook, dtype=np.int64):
                self._w("CODEBOOK_DATA", int(level))

    def read_model(self, dim: int) -> np.ndarray:
        self._w("MODEL_ADDR", 0)
        raw = np.array([self._r("MODEL_DATA") for _ in range(dim)], dtype=np.int64)
        return np.where(raw >= 1 << 31, raw - (1 << 32), raw)

    def read_losses(self, epochs: int) -> list:
        out = []
        for e in range(epochs):
            self._w("LOSS_ADDR", e)
            out.append(self._r("LOSS_LO") | self._r("LOSS_HI") << 32)
        return out

    def run(self, cfg: c.EngineConfig, streams, codebook=None, timeout_s: float | None = None) -> Result:
        """Run one job: configure, stream every epoch, wait, read the results back.

        ``streams`` holds the packed copies (epoch ``e`` streams copy ``e % K``).
        The buffer is freed on every path; on a timeout or Ctrl-C the engine is
        soft-reset (left idle) before the exception propagates.
        """
        streams = [np.asarray(s, dtype=np.uint64) for s in streams]
        per_epoch = cfg.n_samples * cfg.layout.beats_per_sample * cfg.layout.host_words_per_beat
        for k, s in enumerate(streams):
            if s.size != per_epoch:
                raise ValueError(f"copy {k} holds {s.size} words; n={cfg.n_samples} samples of this layout "
                                 f"take {per_epoch}")
        if per_epoch * 8 > self.board.dma_max_bytes:
            raise ValueError(f"one epoch is {per_epoch * 8} bytes, over the DMA's largest transfer "
                             f"({self.board.dma_max_bytes} bytes) on {self.board.name}")
        self.configure(cfg, codebook)
        cycles = self.expected_cycles(cfg)
        timeout_s = timeout_s if timeout_s is not None else 4 * cycles / self.board.clock_hz + 1.0
        buf = self.board.allocate(per_epoch * len(streams))
        try:
            for k, s in enumerate(streams):
                buf[k * per_epoch:(k + 1) * per_epoch] = s
            buf.flush()
            self._w("CTRL", c.field_bits(c.CTRL_FIELDS, start=1))
            st = self.status()
            if st["done"] and st["error"]:
                raise EngineFault(self._fault_text(st["error"]))
            t0 = self.board.time()
            for e in range(cfg.epochs):
                self.board.dma_send(buf, (e % len(streams)) * per_epoch, per_epoch)
            poll = max(cycles / self.board.clock_hz / self.POLLS, 1e-6)
            while True:
                st = self.status()
                if st["done"]:
                    break
                if self.board.time() - t0 > timeout_s:
                    cnt = self.counters()
                    self.soft_reset()
                    raise EngineTimeout(
                        f"engine did not finish within {timeout_s:.3g} s of board time ({cfg.epochs} epochs of "
                        f"{cfg.n_samples} x {cfg.dim}); at that moment: epochs done {self._r('EPOCHS_DONE')}, "
                        + ", ".join(f"{k} {v}" for k, v in cnt.as_dict().items()) + "; engine soft-reset")
                self.board.sleep(poll)
            if st["error"]:
                raise EngineFault(self._fault_text(st["error"]))
            self.board.dma_wait(timeout_s)
            cnt = self.counters()
            model = self.read_model(cfg.dim)
            losses = self.read_losses(cfg.epochs)
        except KeyboardInterrupt:
            self.soft_reset()
            raise
        finally:
            buf.free()
        return Result(model=model, loss_sums=losses, beats=cnt.beats, samples=cnt.samples,
                      stats=hw_stats(cnt, self.board.clock_hz))

    def _fault_text(self, code: int) -> str:
        try:
            err = c.Error(code)
            return f"engine reported error {code} ({err.name}): {c.ERROR_TEXT[err]}"
        except ValueError:
            return f"engine reported unknown error code {code}"


def hw_stats(cnt: Counters, clock_hz: float) -> dict:
    """The figures a user sees in ``hw_stats_``."""
    busy = cnt.beats + cnt.stalls
    return {
        **cnt.as_dict(),
        "efficiency": cnt.beats / busy if busy else 0.0,
        "clock_mhz": clock_hz / 1e6,
        "projected_board_seconds": busy / clock_hz,
    }
