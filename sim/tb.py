"""cocotb test bench of ``zipsgd_top``: clock, reset, AXI4-Lite master, AXI4-Stream source.

Every register address comes from :data:`zipsgd.contract.REG`; every field from
the contract's field tables. The stream is driven by cocotbext-axi's
``AxiStreamSource`` (one frame per epoch, TLAST on its last beat) with an optional
random pause generator for input gaps.
"""

from __future__ import annotations

import itertools
import logging
import random

import numpy as np

from zipsgd import contract as c

CLOCK_NS = 10


def _signed32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def random_pauses(prob: float, seed: int = 0):
    """Endless pause pattern: each cycle paused with probability ``prob``."""
    rng = random.Random(seed)
    # A long precomputed pattern, cycled: no Python RNG call per cycle.
    pattern = [rng.random() < prob for _ in range(4093)]
    return itertools.cycle(pattern)


class TB:
    """Test bench around a ``zipsgd_top`` DUT.

    Parameters
    ----------
    dut : cocotb handle
        The top level (``zipsgd_top``).
    params : EngineParams, optional
        Build parameters (only used for bookkeeping; the width is read from the DUT).
    """

    def __init__(self, dut, params: c.EngineParams | None = None):
        from cocotb.clock import Clock
        from cocotbext.axi import AxiLiteBus, AxiLiteMaster, AxiStreamBus, AxiStreamSource

        self.dut = dut
        self.word_bits = len(dut.s_axis_tdata)
        self.params = params or c.EngineParams(word_bits=self.word_bits)
        Clock(dut.aclk, CLOCK_NS, unit="ns").start()
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.aclk, dut.aresetn,
                                  reset_active_level=False)
        self.axis = AxiStreamSource(AxiStreamBus.from_prefix(dut, "s_axis"), dut.aclk, dut.aresetn,
                                    reset_active_level=False)
        # Frame logging at INFO formats whole frames: far too slow for long streams.
        # (and a flushed frame is logged whole as a warning: see flush_stream).
        self.axis.log.setLevel(logging.ERROR)
        for log in (self.axil.write_if.log, self.axil.read_if.log):
            log.setLevel(logging.WARNING)

    # ---------------------------------------------------------------- basics
    async def cycles(self, n: int):
        """Wait ``n`` clock cycles (one timer, no Python per cycle)."""
        from cocotb.triggers import RisingEdge, Timer

        if n > 1:
            await Timer(CLOCK_NS * (n - 1), unit="ns")
        await RisingEdge(self.dut.aclk)

    async def reset(self, cycles: int = 8):
        """Hold ``aresetn`` low for ``cycles`` cycles."""
        from cocotb.triggers import RisingEdge

        self.dut.aresetn.value = 0
        self.dut.s_axis_tvalid.value = 0
        for _ in range(cycles):
            await RisingEdge(self.dut.aclk)
        self.dut.aresetn.value = 1
        for _ in range(4):
            await RisingEdge(self.dut.aclk)

    def set_gaps(self, prob: float, seed: int = 0):
        """Random input gaps: TVALID withheld with probability ``prob`` per cycle."""
        if prob > 0:
            self.axis.set_pause_generator(random_pauses(prob, seed))
        else:
            self.axis.clear_pause_generator()
            self.axis.pause = False

    # ---------------------------------------------------------------- registers
    async def read_reg(self, name: str) -> int:
        """Read register ``name`` (unsigned 32-bit)."""
        return int(await self.axil.read_dword(c.REG[name]))

    async def read_addr(self, addr: int) -> int:
        return int(await self.axil.read_dword(addr))

    async def write_reg(self, name: str, value: int):
        """Write register ``name``."""
        await self.axil.write_dword(c.REG[name], int(value) & 0xFFFFFFFF)

    async def write_addr(self, addr: int, value: int):
        await self.axil.write_dword(addr, int(value) & 0xFFFFFFFF)

    async def status(self) -> dict:
        """STATUS register decoded into its fields."""
        v = await self.read_reg("STATUS")
        return {f.name: c.field_value(c.STATUS_FIELDS, f.name, v) for f in c.STATUS_FIELDS}

    # ---------------------------------------------------------------- job control
    async def configure(self, cfg: c.EngineConfig, codebook=None):
        """Write the configuration registers and the codebook."""
        for name in c.CONFIG_FIELDS:
            await self.write_reg(name.upper(), int(getattr(cfg, name)))
        if codebook is not None:
            await self.write_reg("CODEBOOK_ADDR", 0)
            for lv in codebook:
                await self.write_reg("CODEBOOK_DATA", int(lv) & 0xFFFFFFFF)

    async def ctrl(self, **fields):
        """Write CTRL with the given fields (``start=1`` / ``soft_reset=1`` / ``stop=1``...)."""
        await self.write_reg("CTRL", c.field_bits(c.CTRL_FIELDS, **fields))
        await self.cycles(3)        # let the pulse reach the engine

    async def start(self, warm: bool = False):
        """START (``warm``: from the model in memory)."""
        await self.ctrl(start=1, warm=int(warm))

    async def soft_reset(self):
        await self.ctrl(soft_reset=1)

    async def stop(self):
        await self.ctrl(stop=1)

    async def write_model(self, words):
        """Rewind the model pointer and write ``words`` (MODEL integers) through MODEL_DATA,
        in the layout of the configuration registers."""
        await self.write_reg("MODEL_ADDR", 0)
        for v in words:
            await self.write_reg("MODEL_DATA", int(v))

    async def wait_done(self, timeout_cycles: int = 1_000_000) -> dict:
        """Wait for ``irq`` (= STATUS.done); returns the decoded STATUS.

        Raises TimeoutError after ``timeout_cycles`` cycles.
        """
        from cocotb.triggers import First, ReadOnly, RisingEdge, Timer

        await ReadOnly()
        if not int(self.dut.irq.value):
            t = Timer(CLOCK_NS * timeout_cycles, unit="ns")
            r = await First(RisingEdge(self.dut.irq), t)
            if r is t:
                raise TimeoutError(f"engine not done after {timeout_cycles} cycles: {await self.status()}")
        await RisingEdge(self.dut.aclk)
        return await self.status()

    def send_epoch(self, words, tlast: bool = True):
        """Queue one epoch (host ``uint64`` words) as one AXI-Stream frame.

        The frame's last beat carries TLAST (``tlast=False`` is not possible with a
        frame: pass extra beats instead, see the protocol tests).
        """
        data = np.asarray(words, dtype="<u8").tobytes()
        self.axis.send_nowait(data)

    def flush_stream(self):
        """Drop everything queued or in flight in the stream source."""
        self.axis.clear()
        self.axis._handle_reset(True)       # no public abort of the current frame
        self.axis._handle_reset(False)

    async def stream_idle(self, timeout_cycles: int = 100_000):
        """Wait until the stream source has sent everything (polled every 8 cycles)."""
        for _ in range(0, timeout_cycles, 8):
            if self.axis.idle():
                return
            await self.cycles(8)
        raise TimeoutError(f"stream source still busy after {timeout_cycles} cycles")

    # ---------------------------------------------------------------- results
    async def read_model(self, dim: int) -> np.ndarray:
        """Rewind and read ``dim`` model words (signed MODEL integers)."""
        await self.write_reg("MODEL_ADDR", 0)
        out = np.empty(dim, dtype=np.int64)
        for i in range(dim):
            out[i] = _signed32(await self.read_reg("MODEL_DATA"))
        return out

    async def read_losses(self, epochs: int) -> list:
        """Epoch loss sums (LOSS_ACC integers) of epochs ``0..epochs-1``."""
        out = []
        for e in range(epochs):
            await self.write_reg("LOSS_ADDR", e)
            lo = await self.read_reg("LOSS_LO")
            hi = await self.read_reg("LOSS_HI")
            out.append(hi << 32 | lo)
        return out

    async def read_counter(self, name: str) -> int:
        """64-bit counter ``name`` (one of ``contract.COUNTER_NAMES``): LO then HI."""
        lo = await self.read_reg(f"{name}_LO")
        hi = await self.read_reg(f"{name}_HI")
        return hi << 32 | lo

    async def read_counters(self) -> dict:
        """All counters, by contract name."""
        return {n: await self.read_counter(n) for n in c.COUNTER_NAMES}

    async def run_job(self, cfg: c.EngineConfig, streams, codebook=None, timeout_cycles=None, frame_samples=0,
                      model0=None):
        """Configure, start, stream every epoch, wait; returns the status.

        ``frame_samples``: send each epoch as frames of that many samples (TLAST on each
        frame's last beat, as a DMA that splits an epoch into transfers does); 0: one frame.
        ``model0``: written through MODEL_DATA, then a warm start.
        """
        await self.configure(cfg, codebook)
        if model0 is not None:
            await self.write_model(model0)
        await self.start(warm=model0 is not None)
        words = cfg.layout.beats_per_sample * cfg.layout.host_words_per_beat
        step = frame_samples * words if frame_samples else None
        for e in range(cfg.epochs):
            epoch = streams[e % len(streams)]
            for at in range(0, len(epoch), step or len(epoch)):
                self.send_epoch(epoch[at:at + step] if step else epoch)
        beats = cfg.epochs * cfg.n_samples * cfg.layout.beats_per_sample
        st = await self.wait_done(timeout_cycles or 20 * beats + 100 * cfg.epochs * cfg.n_samples + 10_000)
        return st


# ------------------------------------------------------------------------------------
# Random jobs (generated in Python with a seed; compared with zipsgd.reference)
# ------------------------------------------------------------------------------------
from zipsgd.testing import random_codebook, random_config, random_stream  # noqa: E402,F401  (the one home)


def random_job(rng, params: c.EngineParams, n_max: int = 40, d_max: int = 100, epochs_max: int = 3):
    """A random valid job: (cfg, streams, codebook), small enough for RTL simulation
    (:mod:`zipsgd.testing`: up to two copies, a codebook with forced ends half the time)."""
    cfg = random_config(rng, params, n_max, d_max, epochs_max, copies_max=2)
    codebook = None if cfg.encoding == c.Encoding.FULL else random_codebook(rng, cfg.bits)
    return cfg, [random_stream(rng, cfg) for _ in range(cfg.copies)], codebook


def random_model(rng, dim: int) -> np.ndarray:
    """A model to start from (CTRL.warm): small values, some at the rails (saturating)."""
    one = c.MODEL.one
    x = rng.integers(-2 * one, 2 * one, size=dim)
    rails = rng.random(dim) < 0.2
    x[rails] = rng.choice([c.MODEL.min, c.MODEL.max], size=int(rails.sum()))
    return x


def describe(cfg: c.EngineConfig) -> str:
    """One-line summary of a configuration."""
    return (f"W={cfg.word_bits} {c.Encoding(cfg.encoding).name}/{cfg.bits} n={cfg.n_samples} d={cfg.dim} "
            f"batch={cfg.batch} loss={c.Loss(cfg.loss).name} k={cfg.step_shift} m={cfg.step_mult} "
            f"m_neg={cfg.step_mult_neg} class={cfg.pos_class} decay={cfg.decay_epochs} l2={cfg.l2_shift} "
            f"epochs={cfg.epochs} copies={cfg.copies}")
