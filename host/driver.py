"""The zipsgd driver: registers + DMA + buffers, the same code on every board.

A :class:`Board` gives the driver four things: 32-bit register reads and writes
(one at a time, or a sequence of them in one :meth:`Board.batch` call), DMA-able
buffers, a memory-to-stream DMA that ends each transfer with TLAST, and a clock to
wait on. A PYNQ board (:mod:`zipsgd.pynq_board`) and the simulated board
(:mod:`zipsgd.sim.board`, the engine's RTL under Verilator) both implement it;
:class:`Engine` is the only code that talks to the engine, so what runs on a board
is what the tests run.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from . import contract as c
from .result import Result


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
    dma_max_bytes: int = (1 << 26) - 1
    #: DMA memory a job may hold at once (its copies resident up to this, else a ring).
    dma_budget_bytes: int = 64 << 20
    #: Board time added to a job's expected duration in its default timeout (operating
    #: system and bus latencies on hardware; a simulator needs far less).
    timeout_slack_s: float = 1.0

    @abc.abstractmethod
    def read(self, offset: int) -> int:
        """Read the 32-bit engine register at byte ``offset``."""

    @abc.abstractmethod
    def write(self, offset: int, value: int) -> None:
        """Write the 32-bit engine register at byte ``offset``."""

    def batch(self, ops) -> list:
        """Run register accesses in order; returns the values read, in order.

        ``ops``: a sequence of ``("w", offset, value)`` and ``("r", offset)``. The
        default runs them one by one through :meth:`write` and :meth:`read`; a board
        for which each call has a fixed cost (the simulated board: a switch between
        the driver's thread and the simulator's) does them all in one go.
        """
        out = []
        for op in ops:
            if op[0] == "w":
                self.write(op[1], op[2])
            elif op[0] == "r":
                out.append(self.read(op[1]))
            else:
                raise ValueError(f"unknown register operation {op!r}")
        return out

    @abc.abstractmethod
    def allocate(self, n_words: int):
        """A DMA-able buffer of ``n_words`` uint64 (numpy-like; ``flush()``, ``free()``)."""

    @abc.abstractmethod
    def dma_send(self, buffer, start_word: int, n_words: int) -> None:
        """Start one DMA transfer of ``n_words`` of ``buffer`` from ``start_word`` to the
        engine (TLAST on its last beat). The driver sends the next transfer only after
        :meth:`dma_wait` has seen this one end (an AXI DMA in direct-register mode holds
        one transfer at a time)."""

    @abc.abstractmethod
    def dma_wait(self, timeout_s: float) -> bool:
        """Wait, at most ``timeout_s`` of board time, for the transfer in flight to end.

        True when it ended; False when the time ran out first (or, on a board with
        :attr:`irq_wait`, when the engine raised its interrupt first: a fault). Raises
        :class:`zipsgd.axi_dma.DmaError` naming the DMA's error bits when it reports one."""

    @abc.abstractmethod
    def dma_reset(self) -> None:
        """Abort any transfer in flight and reset the DMA channel (left halted, its data
        no longer read): after it, nothing of the last job reaches the engine."""

    @abc.abstractmethod
    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` of board time pass."""

    #: True when :meth:`wait_irq` returns as soon as the engine raises its interrupt
    #: (the driver then waits for a job with one call instead of polling STATUS).
    irq_wait: bool = False

    def wait_irq(self, seconds: float) -> None:
        """Wait until the engine's interrupt (``irq``, high while STATUS.done) is high,
        for at most ``seconds`` of board time. Without an interrupt line (the default)
        it just sleeps ``seconds``; the driver reads STATUS afterwards either way."""
        self.sleep(seconds)

    @abc.abstractmethod
    def time(self) -> float:
        """Board time in seconds (wall time on hardware, simulated time in simulation)."""

    def close(self) -> None:
        """Release the board."""


@dataclass(frozen=True)
class StreamPlan:
    """How a job's packed copies reach the engine.

    ``resident``: every copy in one buffer, sent from there each epoch; else a ring of
    ``Engine.RING_SLOTS`` buffers of ``slot_words`` each, refilled from the copies.
    ``chunks``: the transfers of one epoch, ``(first word, words)``, ending on sample
    boundaries (contract 2.1 lets TLAST end any sample).
    """

    resident: bool
    per_epoch_words: int
    slot_words: int
    chunks: list


@dataclass
class Counters:
    cycles: int
    beats: int
    stalls: int
    idles: int
    samples: int
    saturated: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _status(value: int) -> dict:
    return {f.name: c.field_value(c.STATUS_FIELDS, f.name, value) for f in c.STATUS_FIELDS}


class Engine:
    """Driver of one zipsgd engine on a :class:`Board`.

    Attaching reads the ID registers and refuses an engine whose magic, contract
    version or build hash differ from this library's contract.
    """

    #: Polls per expected job duration (boards without an interrupt wait, see Board.irq_wait).
    POLLS = 50

    def __init__(self, board: Board):
        self.board = board
        # MAGIC and VERSION alone first: nothing else is read from an IP that is not ours
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
        ids = ("PARAM_WORD_BITS", "PARAM_DIM_MAX", "PARAM_BATCH_MAX", "PARAM_EPOCHS_MAX", "BUILD_HASH", "PARAM_MODES",
               "PARAM_LANES")
        reg = dict(zip(ids, board.batch([("r", c.REG[n]) for n in ids])))
        try:
            self.params = c.EngineParams(
                word_bits=reg["PARAM_WORD_BITS"], dim_max=reg["PARAM_DIM_MAX"],
                batch_max=reg["PARAM_BATCH_MAX"], epochs_max=reg["PARAM_EPOCHS_MAX"], lanes=reg["PARAM_LANES"])
        except ValueError as exc:
            raise BitstreamMismatch(f"engine on {board.name} reports impossible build parameters ({exc}): "
                                    "rebuild the bitstream") from None
        got = reg["BUILD_HASH"]
        if got != c.build_hash(self.params):
            raise BitstreamMismatch(
                f"engine on {board.name} was built from a different contract (BUILD_HASH 0x{got:08X}, expected "
                f"0x{c.build_hash(self.params):08X} for {self.params}): rebuild the bitstream")
        self.modes = reg["PARAM_MODES"]
        #: Buffers of failed jobs whose DMA could not be reset (never freed under a DMA).
        self.unfreed = []

    # -- registers ---------------------------------------------------------------------
    def _w(self, name: str, value: int) -> None:
        self.board.write(c.REG[name], int(value) & 0xFFFFFFFF)

    def _r(self, name: str) -> int:
        return self.board.read(c.REG[name])

    def status(self) -> dict:
        return _status(self._r("STATUS"))

    def counters(self) -> Counters:
        # LO before HI: reading LO latches HI
        v = self.board.batch([("r", c.REG[f"{n}_{h}"]) for n in c.COUNTER_NAMES for h in ("LO", "HI")])
        return Counters(*(v[2 * i] | v[2 * i + 1] << 32 for i in range(len(c.COUNTER_NAMES))))

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
        c.check_registers(cfg)
        err = c.check_config(cfg, self.params)
        if err != c.Error.NONE:
            raise ValueError(f"configuration refused before sending: {err.name}: {c.ERROR_TEXT[err]}")
        ops = [("w", c.REG[reg.upper()], int(getattr(cfg, reg)) & 0xFFFFFFFF) for reg in c.CONFIG_FIELDS]
        if codebook is not None:
            ops.append(("w", c.REG["CODEBOOK_ADDR"], 0))
            ops += [("w", c.REG["CODEBOOK_DATA"], int(level) & 0xFFFFFFFF)
                    for level in np.asarray(codebook, dtype=np.int64)]
        self.board.batch(ops)

    def write_model(self, model) -> None:
        """Write a model (MODEL integers, one per feature) into the engine's memory, in the
        layout of the configuration written last (:meth:`configure` first); a START with
        ``warm`` then trains from it."""
        words = np.asarray(model, dtype=np.int64)
        if words.size and (words.min() < c.MODEL.min or words.max() > c.MODEL.max):
            raise ValueError(f"model words must lie in the MODEL range [{c.MODEL.min}, {c.MODEL.max}]")
        self.board.batch([("w", c.REG["MODEL_ADDR"], 0)]
                         + [("w", c.REG["MODEL_DATA"], int(v) & 0xFFFFFFFF) for v in words])

    def read_model(self, dim: int) -> np.ndarray:
        raw = np.array(self.board.batch([("w", c.REG["MODEL_ADDR"], 0)] + [("r", c.REG["MODEL_DATA"])] * dim),
                       dtype=np.int64)
        return np.where(raw >= 1 << 31, raw - (1 << 32), raw)

    def read_losses(self, epochs: int) -> list:
        return self.read_losses_from(0, epochs)

    def read_losses_from(self, first: int, count: int) -> list:
        """Loss sums of epochs ``first .. first + count - 1``."""
        ops = []
        for e in range(first, first + count):
            ops += [("w", c.REG["LOSS_ADDR"], e), ("r", c.REG["LOSS_LO"]), ("r", c.REG["LOSS_HI"])]
        v = self.board.batch(ops)
        return [v[2 * e] | v[2 * e + 1] << 32 for e in range(count)]

    def default_timeout(self, cfg: c.EngineConfig) -> float:
        """Board seconds a job may take: four times its generous cycle bound, plus the
        board's slack (1 s on hardware, about 10,000 cycles on the simulated board)."""
        return 4 * self.expected_cycles(cfg) / self.board.clock_hz + self.board.timeout_slack_s

    def check_mode(self, cfg: c.EngineConfig) -> None:
        """Refuse a job whose data mode the engine was not built for (PARAM_MODES)."""
        bit = c.mode_bit(cfg.encoding, cfg.bits)
        if not self.modes >> bit & 1:
            have = [f"{e.name} {b}-bit" for e, b in c.all_modes() if self.modes >> c.mode_bit(e, b) & 1]
            raise ValueError(f"the engine on {self.board.name} does not support {cfg.encoding.name} {cfg.bits}-bit "
                             f"data (PARAM_MODES 0x{self.modes:X}: {', '.join(have) or 'none'}): choose another "
                             "bits/sampling or rebuild the engine")

    #: Buffers in the ring when a job's copies do not fit the board's DMA memory budget.
    RING_SLOTS = 2

    def plan(self, cfg: c.EngineConfig, n_copies: int, ring_bytes: int | None = None) -> "StreamPlan":
        """How a job's packed copies reach the engine (see :class:`StreamPlan`).

        Resident when all copies fit the board's DMA budget (``Board.dma_budget_bytes``)
        and ``ring_bytes`` is not given; else a ring of :attr:`RING_SLOTS` buffers of
        ``ring_bytes / RING_SLOTS`` (default: the budget's) that the host refills while the
        DMA streams the other. Transfers end on sample boundaries and hold at most the
        DMA's largest transfer (or a ring slot).
        """
        lay = cfg.layout
        sample_words = lay.beats_per_sample * lay.host_words_per_beat
        per_epoch = cfg.n_samples * sample_words
        total = per_epoch * n_copies * 8
        budget = self.board.dma_budget_bytes
        resident = ring_bytes is None and total <= budget
        limit = self.board.dma_max_bytes
        slot_words = 0
        if not resident:
            slot_bytes = (ring_bytes if ring_bytes is not None else budget) // self.RING_SLOTS
            limit = min(limit, slot_bytes)
        per_transfer = min(cfg.n_samples, limit // (sample_words * 8))
        if per_transfer < 1:
            where = (f"the DMA's largest transfer ({self.board.dma_max_bytes} bytes)" if resident else
                     f"a ring buffer ({limit} bytes: {self.RING_SLOTS} in "
                     f"{ring_bytes if ring_bytes is not None else budget} bytes)")
            raise ValueError(f"one sample is {sample_words * 8} bytes, more than {where} on {self.board.name}: "
                             "use fewer features or bits, or give the job more DMA memory")
        if not resident:
            slot_words = per_transfer * sample_words
        chunks = [(at * sample_words, min(per_transfer, cfg.n_samples - at) * sample_words)
                  for at in range(0, cfg.n_samples, per_transfer)]
        return StreamPlan(resident=resident, per_epoch_words=per_epoch, slot_words=slot_words, chunks=chunks)

    def run(self, cfg: c.EngineConfig, streams, codebook=None, timeout_s: float | None = None,
            ring_bytes: int | None = None, progress=None, model0=None, stop=None) -> Result:
        """Run one job: configure, stream every epoch, wait, read the results back.

        ``streams`` holds the packed copies (epoch ``e`` streams copy ``e % K``): arrays of
        ``uint64`` words, in memory or memory-mapped from a packed file. They reach the
        engine as :meth:`plan` says: from one buffer holding every copy, or through a ring
        of buffers refilled while the DMA streams (host and board memory then stay bounded
        by the ring, whatever the data's size). Each epoch is one or more transfers ending
        on sample boundaries, each sent when the last has ended. Every wait is bounded by
        ``timeout_s`` of board time from START (default :meth:`default_timeout`).

        ``progress`` (optional): called with the engine's EPOCHS_DONE after every transfer
        and with ``cfg.epochs`` when the job is done (the CLI's progress bar).

        ``model0`` (optional): MODEL integers the job starts from (written through
        MODEL_DATA, then START with ``warm``), as :func:`zipsgd.reference.run`'s.

        ``stop`` (optional): ``stop(epoch, loss_sum) -> bool``, asked after each epoch but the
        last with its loss sum (LOSS_ACC), as :func:`zipsgd.reference.run`'s. The next epoch
        is then sent only once the engine has finished this one (a pause of the pipeline's
        depth per epoch); true ends the job there with the engine's STOP.

        On any failure (timeout, engine fault, DMA error, Ctrl-C) the DMA channel is reset
        (nothing more of this job reaches the engine) and the engine soft-reset before the
        buffers are freed and the exception propagates: the next job starts clean. A DMA
        that cannot be reset keeps its buffers (they are not freed under a running DMA).
        """
        streams = [np.asarray(s, dtype=np.uint64) for s in streams]
        plan = self.plan(cfg, len(streams), ring_bytes)
        for k, s in enumerate(streams):
            if s.size != plan.per_epoch_words:
                raise ValueError(f"copy {k} holds {s.size} words; n={cfg.n_samples} samples of this layout "
                                 f"take {plan.per_epoch_words}")
        self.check_mode(cfg)
        self.configure(cfg, codebook)
        if model0 is not None:
            model0 = np.asarray(model0, dtype=np.int64).reshape(-1)
            if model0.size != cfg.dim:
                raise ValueError(f"model0 holds {model0.size} words for dim={cfg.dim}")
            self.write_model(model0)
        cycles = self.expected_cycles(cfg)
        timeout_s = timeout_s if timeout_s is not None else self.default_timeout(cfg)
        bufs, stopped = [], True
        try:
            try:
                if plan.resident:
                    bufs.append(self.board.allocate(plan.per_epoch_words * len(streams)))
                    for k, s in enumerate(streams):
                        bufs[0][k * plan.per_epoch_words:(k + 1) * plan.per_epoch_words] = s
                    bufs[0].flush()
                else:
                    bufs += [self.board.allocate(plan.slot_words) for _ in range(self.RING_SLOTS)]
                transfers = [(e % len(streams), off, n) for e in range(cfg.epochs) for off, n in plan.chunks]

                def place(i):
                    k, off, n = transfers[i]
                    if plan.resident:
                        return bufs[0], k * plan.per_epoch_words + off, n
                    slot = bufs[i % self.RING_SLOTS]
                    slot[:n] = streams[k][off:off + n]
                    slot.flush()
                    return slot, 0, n

                self._w("CTRL", c.field_bits(c.CTRL_FIELDS, start=1, warm=int(model0 is not None)))
                st = self.status()
                if st["done"] and st["error"]:
                    raise EngineFault(self._fault_text(st["error"]))
                deadline = self.board.time() + timeout_s
                poll = max(cycles / self.board.clock_hz / self.POLLS, 1e-6)
                slice_s = poll * self.POLLS / len(transfers)
                prepared = place(0)
                per_epoch = len(plan.chunks)
                for i in range(len(transfers)):
                    self.board.dma_send(*prepared)
                    if i + 1 < len(transfers):
                        prepared = place(i + 1)     # fill the next ring slot while this transfer streams
                    st = self._wait_transfer(cfg, deadline, slice_s, timeout_s, i, len(transfers))
                    if progress is not None and st is None:
                        progress(self._r("EPOCHS_DONE"))
                    if st is not None:
                        if not st["error"]:
                            raise EngineFault(f"the engine finished before its stream ended (transfer {i + 1} of "
                                              f"{len(transfers)} still in the DMA): its configuration does not "
                                              "match the data sent")
                        break
                    epoch = i // per_epoch
                    if stop is not None and (i + 1) % per_epoch == 0 and epoch + 1 < cfg.epochs:
                        self._wait_epochs(epoch + 1, cfg, deadline, poll, timeout_s)
                        if stop(epoch, self.read_losses_from(epoch, 1)[0]):
                            self._w("CTRL", c.field_bits(c.CTRL_FIELDS, stop=1))
                            st = self._wait_done(cfg, deadline, poll, timeout_s)
                            break
                else:
                    st = self._wait_done(cfg, deadline, poll, timeout_s)
                if st["error"]:
                    raise EngineFault(self._fault_text(st["error"]))
                cnt = self.counters()
                model = self.read_model(cfg.dim)
                run_epochs = self._r("EPOCHS_DONE") if st["stopped"] else cfg.epochs
                losses = self.read_losses(run_epochs)
                if progress is not None:
                    progress(cfg.epochs)
            except BaseException:
                stopped = self.abort()
                raise
        finally:
            if stopped:
                for b in bufs:
                    b.free()
            else:
                self.unfreed.extend(bufs)
        stats = hw_stats(cnt, self.board.clock_hz)
        stats.update(transfers=len(transfers), ring=not plan.resident)
        return Result(model=model, loss_sums=losses, beats=cnt.beats, samples=cnt.samples, stats=stats,
                      saturated=cnt.saturated, stopped=bool(st["stopped"]))

    def abort(self) -> bool:
        """Stop everything of the current job: reset the DMA channel (nothing more is
        streamed from the job's buffers), then soft-reset the engine (its input and state
        cleared, left idle). Called on every failure path of :meth:`run`. True when the DMA
        was reset; False when its reset failed (the engine is soft-reset either way, and
        the caller must not free buffers the DMA may still read)."""
        try:
            self.board.dma_reset()
            return True
        except Exception as exc:                    # reported beside the job's own error
            import warnings
            warnings.warn(f"{self.board.name}: the DMA could not be reset ({exc}); its buffers are kept "
                          "(reload the overlay)", RuntimeWarning, stacklevel=3)
            return False
        finally:
            self.soft_reset()

    def _timeout(self, cfg, timeout_s, where) -> EngineTimeout:
        cnt = self.counters()
        epochs_done = self._r("EPOCHS_DONE")
        return EngineTimeout(
            f"engine did not finish within {timeout_s:.3g} s of board time ({cfg.epochs} epochs of "
            f"{cfg.n_samples} x {cfg.dim}; {where}); at that moment: epochs done {epochs_done}, "
            + ", ".join(f"{k} {v}" for k, v in cnt.as_dict().items()) + "; DMA reset and engine soft-reset")

    def _wait_transfer(self, cfg, deadline, slice_s, timeout_s, i, n):
        """Wait for transfer ``i`` (of ``n``); None when it ended, the engine's STATUS when
        the engine finished first (a fault stops its input)."""
        while True:
            left = deadline - self.board.time()
            if left <= 0:
                per = n // cfg.epochs
                raise self._timeout(cfg, timeout_s, f"epoch {i // per + 1}'s DMA transfer still running"
                                    + (f" (transfer {i % per + 1} of {per})" if per > 1 else ""))
            if self.board.dma_wait(min(left, slice_s)):
                return None
            st = self.status()
            if st["done"]:
                return st

    def _wait_done(self, cfg, deadline, poll, timeout_s):
        """Wait for STATUS.done after the last transfer (polls grow 1.5x: a hung engine
        costs a few dozen reads, not one per expected/POLLS up to the deadline)."""
        while True:
            st = self.status()
            if st["done"]:
                return st
            left = deadline - self.board.time()
            if left <= 0:
                raise self._timeout(cfg, timeout_s, "every epoch streamed, the engine still busy")
            # a board with an interrupt wakes when the job ends: one wait up to the deadline
            self.board.wait_irq(left + 1e-6 if self.board.irq_wait else min(poll, left))
            poll *= 1.5

    def _wait_epochs(self, epochs: int, cfg, deadline, poll, timeout_s):
        """Wait until the engine has finished ``epochs`` epochs (EPOCHS_DONE): their model
        updates and losses are final."""
        while self._r("EPOCHS_DONE") < epochs:
            st = self.status()
            if st["done"]:
                if st["error"]:
                    raise EngineFault(self._fault_text(st["error"]))
                return
            left = deadline - self.board.time()
            if left <= 0:
                raise self._timeout(cfg, timeout_s, f"epoch {epochs} streamed, not finished by the engine")
            self.board.sleep(min(poll, left))

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
