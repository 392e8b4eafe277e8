"""A tiny stand-in with the interface of :class:`zipsgd.hw.core.Engine`.

It lets the top level, the register block and the test infrastructure be built
and tested without the real datapath (and fast: it converts in well under a
second). Behaviour:

* ``start`` with ``dim == 0`` finishes at once with ``Error.BAD_DIM``; otherwise the
  stub is busy and accepts one beat per cycle until TLAST, then it is done.
* ``model_data`` is ``STUB_MODEL_BASE + index`` where ``index`` counts ``model_next``
  pulses since ``model_rewind`` (registered, like the real read port).
* ``loss_data`` is ``STUB_LOSS_MULT * (loss_addr + 1)`` (registered twice).
* ``epochs_done`` counts TLAST beats, ``cnt_beats`` / ``cnt_cycles`` count beats and
  busy cycles, ``cnt_samples`` counts TLAST beats too, the rest stay 0.
* ``start`` while busy is ignored (as by the engine); the codebook port is ignored (tests
  of it watch the port itself).
* ``stop`` while busy ends the job at once, ``done`` and ``stopped`` (the engine waits for an
  epoch boundary); ``start`` and ``soft_reset`` clear ``stopped``. ``warm`` and the model
  write port are ignored (tests of them watch the ports).
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring

from zipsgd.contract import EngineParams, Error
from zipsgd.hw.core import COUNTERS, EngineSignature

STUB_MODEL_BASE = 0x1000
STUB_LOSS_MULT = 0x100000001


class StubEngine(wiring.Component):
    """Interface-compatible stand-in for ``Engine(params)`` (see the module docstring)."""

    def __init__(self, params: EngineParams):
        self.params = params
        super().__init__(EngineSignature(params))

    def elaborate(self, platform):
        m = Module()
        idx = Signal(32)
        with m.If(self.model_rewind):
            m.d.sync += idx.eq(0)
        with m.Elif(self.model_next):
            m.d.sync += idx.eq(idx + 1)
        m.d.sync += self.model_data.eq(idx + STUB_MODEL_BASE)
        l1 = Signal(64)
        m.d.sync += [l1.eq((self.loss_addr + 1) * STUB_LOSS_MULT), self.loss_data.eq(l1)]

        m.d.comb += self.i_data.ready.eq(self.busy)
        acc = self.i_data.valid & self.i_data.ready
        with m.If(self.soft_reset):
            m.d.sync += [self.busy.eq(0), self.done.eq(0), self.error.eq(0), self.stopped.eq(0)]
        with m.Elif(self.start & ~self.busy):
            m.d.sync += [self.done.eq(0), self.epochs_done.eq(0), self.stopped.eq(0),
                         *[getattr(self, n).eq(0) for n in COUNTERS]]
            with m.If(self.cfg.dim == 0):
                m.d.sync += [self.error.eq(Error.BAD_DIM), self.done.eq(1)]
            with m.Else():
                m.d.sync += [self.error.eq(0), self.busy.eq(1)]
        with m.Elif(self.busy & self.stop):
            m.d.sync += [self.busy.eq(0), self.done.eq(1), self.stopped.eq(1)]
        with m.Elif(self.busy):
            m.d.sync += self.cnt_cycles.eq(self.cnt_cycles + 1)
            with m.If(acc):
                m.d.sync += self.cnt_beats.eq(self.cnt_beats + 1)
                with m.If(self.i_data.payload.last):
                    m.d.sync += [self.busy.eq(0), self.done.eq(1), self.epochs_done.eq(self.epochs_done + 1),
                                 self.cnt_samples.eq(self.cnt_samples + 1)]
        return m
