"""The register block, generated from ``zipsgd.contract.REGISTERS``.

It sits between the register bus of :class:`zipsgd.hw.axil.AxiLiteSlave` and the
control/readback ports of :class:`zipsgd.hw.core.Engine`. Every address, field
position and constant comes from :mod:`zipsgd.contract`; elaboration fails if the
contract gains a register this block does not know how to implement.

Behaviour
---------
* ID / parameter registers (``MAGIC``, ``VERSION``, ``BUILD_HASH``, ``PARAM_*``)
  are constants.
* Configuration registers (``rw``, named like the fields of the engine's ``cfg``
  struct) hold their value and drive ``cfg``; reset values are the defaults of
  :class:`~zipsgd.contract.EngineConfig` (0 where it has none). Byte enables apply.
* ``CTRL`` writes give one-cycle ``start`` / ``soft_reset`` / ``stop`` pulses
  (``contract.CTRL_FIELDS``; ``start``, with ``warm``, comes ``CFG_SETTLE`` cycles after the
  write, when the engine's registered decode of the configuration has settled); ``STATUS``
  shows ``busy``, ``done``, ``stopped``, ``error`` (``contract.STATUS_FIELDS``), and busy, not
  done nor stopped, while a start is on its way to the engine (a STATUS read after a START
  never sees the last job).
* ``CODEBOOK_DATA`` writes pulse ``cb_we`` at ``CODEBOOK_ADDR``, which then
  increments.
* A write to ``MODEL_ADDR`` rewinds the model pointer (any value; reads of
  ``MODEL_ADDR`` give the number of ``MODEL_DATA`` reads and writes since). A ``MODEL_DATA``
  read returns the current word, then pulses ``model_next``; a write while not busy pulses
  ``model_we`` with the word ``CFG_SETTLE`` cycles later (as a start: the configuration's
  layout has settled), a write while busy is dropped.
* ``LOSS_ADDR`` selects the epoch shown by ``LOSS_LO`` / ``LOSS_HI``.
* Reading a counter's ``*_LO`` latches its upper half, which ``*_HI`` returns.
* Wait states: after a model pulse or a ``LOSS_ADDR`` write, reads are held off
  for ``HOLD_CYCLES`` cycles so the engine's registered read ports have settled
  (``HOLD_WRITE_CYCLES`` after a ``MODEL_DATA`` write: the word reaches the memory first).
* Both directions are registered (no bus decode and no read multiplexer shares a cycle
  with the slave's logic): a write lands the cycle after ``w_stb``; a read is sampled,
  with its side effects, in its first cycle past the hold and answered (``r_ack``)
  the next.
* Unmapped addresses read 0 and ignore writes.
"""

from __future__ import annotations

import dataclasses

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from zipsgd.contract import (
    COUNTER_NAMES, CTRL_FIELDS, FEAT, MAGIC, REG, REG_ADDR_BITS, REGISTERS, STATUS_FIELDS,
    EngineConfig, EngineParams, build_hash, version_word,
)

from .core import CFG_SETTLE, LOSS_READ_LATENCY, READBACK_LATENCY, counter_port
from .update import ModelUpdate

#: Cycles a read waits after a model pulse or a LOSS_ADDR write: the pulse (or the loss
#: address) is registered here, the engine's read pointer moves the cycle it sees the
#: pulse, then its read-back latency; a MODEL_DATA read is acknowledged at the earliest
#: HOLD_CYCLES + 1 cycles after its pulse.
HOLD_CYCLES = max(READBACK_LATENCY, LOSS_READ_LATENCY) + 2
#: Cycles a read waits after a MODEL_DATA write: the write's way to the engine
#: (``CFG_SETTLE``), to the model memory (the update's write port), then as a model pulse.
HOLD_WRITE_CYCLES = CFG_SETTLE + ModelUpdate.HOST_WRITE_LATENCY + HOLD_CYCLES

#: Constant registers: name -> function of EngineParams.
CONSTANTS = {
    "MAGIC": lambda p: MAGIC,
    "VERSION": lambda p: version_word(),
    "BUILD_HASH": build_hash,
    "PARAM_WORD_BITS": lambda p: p.word_bits,
    "PARAM_DIM_MAX": lambda p: p.dim_max,
    "PARAM_BATCH_MAX": lambda p: p.batch_max,
    "PARAM_EPOCHS_MAX": lambda p: p.epochs_max,
    "PARAM_MODES": lambda p: p.modes_mask,
    "PARAM_LANES": lambda p: p.lanes,
}
#: Registers with hand-written behaviour (everything else must be a constant, a
#: configuration register or a counter half).
SPECIAL = ("CTRL", "STATUS", "CODEBOOK_ADDR", "CODEBOOK_DATA", "MODEL_ADDR", "MODEL_DATA",
           "LOSS_ADDR", "LOSS_LO", "LOSS_HI", "EPOCHS_DONE")


def config_defaults() -> dict:
    """Reset value of each configuration register (EngineConfig defaults, else 0)."""
    out = {}
    for f in dataclasses.fields(EngineConfig):
        out[f.name] = 0 if f.default is dataclasses.MISSING else int(f.default)
    return out


class Registers(wiring.Component):
    """Register block: register bus in, engine control out.

    Parameters
    ----------
    params : EngineParams
        Build parameters (constant registers, loss address width).
    cfg_layout : StructLayout
        Layout of the engine's ``cfg`` port (32-bit fields named like the
        configuration registers, lower case).

    Attributes
    ----------
    bus_addr, w_stb, w_data, w_strb, r_stb, r_ack, r_data : Signal
        Register bus (see :mod:`zipsgd.hw.axil`).
    cfg, start, soft_reset, stop, warm, cb_we, cb_addr, cb_data, model_rewind, model_next,
    model_we, model_wdata, loss_addr : Signal
        Driven towards the engine.
    irq : Signal
        ``STATUS.done`` as shown (low while a start is on its way): the interrupt.
    busy, done, stopped, error, model_data, loss_data, epochs_done, cnt_* : Signal
        Read from the engine.
    """

    def __init__(self, params: EngineParams, cfg_layout: data.StructLayout):
        self.params = params
        self.cfg_layout = cfg_layout
        self.cfg_names = [name for name, _ in cfg_layout]
        self._check_coverage()
        super().__init__({
            "bus_addr": In(REG_ADDR_BITS), "w_stb": In(1), "w_data": In(32), "w_strb": In(4),
            "r_stb": In(1), "r_ack": Out(1), "r_data": Out(32),
            "cfg": Out(cfg_layout),
            "start": Out(1), "soft_reset": Out(1), "stop": Out(1), "warm": Out(1), "irq": Out(1),
            "busy": In(1), "done": In(1), "stopped": In(1), "error": In(8),
            "cb_we": Out(1), "cb_addr": Out(8), "cb_data": Out(FEAT.width),
            "model_rewind": Out(1), "model_next": Out(1), "model_data": In(32),
            "model_we": Out(1), "model_wdata": Out(32),
            "loss_addr": Out(range(params.epochs_max)), "loss_data": In(64),
            "epochs_done": In(32),
            **{counter_port(n): In(64) for n in COUNTER_NAMES},
        })

    def _check_coverage(self):
        counters = {f"{n}_{h}" for n in COUNTER_NAMES for h in ("LO", "HI")}
        for r in REGISTERS:
            known = (r.name in CONSTANTS or r.name in SPECIAL or r.name in counters
                     or (r.access == "rw" and r.name.lower() in self.cfg_names))
            if not known:
                raise ValueError(f"Registers: no implementation for contract register {r.name!r}")
        for name in self.cfg_names:
            if name.upper() not in REG:
                raise ValueError(f"Registers: engine cfg field {name!r} has no register")

    def elaborate(self, platform):
        m = Module()
        p = self.params
        addr = self.bus_addr
        # Write strobes decoded and registered: a write lands the cycle after w_stb (the
        # slave holds w_data, w_strb and bus_addr until the response is taken).
        wr = {r.name: Signal(name=f"wr_{r.name.lower()}") for r in REGISTERS}
        for name, s in wr.items():
            m.d.sync += s.eq(self.w_stb & (addr == REG[name]))

        # ---- configuration registers
        defaults = config_defaults()
        cfg_regs = {}
        for name in self.cfg_names:
            reg = Signal(32, name=f"cfg_{name}", init=defaults.get(name, 0))
            with m.If(wr[name.upper()]):
                m.d.sync += reg.eq(_merge(reg, self.w_data, self.w_strb))
            m.d.comb += getattr(self.cfg, name).eq(reg)
            cfg_regs[name.upper()] = reg

        # ---- CTRL pulses (registered: the engine sees them the cycle after the write;
        # start CFG_SETTLE - 1 cycles later still, so that a configuration written by the
        # previous bus transfer has settled in the engine's registered decode)
        # While a start is on its way (written, not yet seen by the engine), STATUS shows
        # busy and not done: a read that follows a START write never sees the previous job.
        start_way = []
        for f in CTRL_FIELDS:
            pulse = wr["CTRL"] & self.w_data[f.lsb]
            if f.name == "warm":                            # (warm comes with its start only)
                pulse = pulse & self.w_data[next(g.lsb for g in CTRL_FIELDS if g.name == "start")]
            if f.name in ("start", "warm"):
                way = [pulse]
                for i in range(CFG_SETTLE - 1):
                    d = Signal(name=f"{f.name}_d{i}")
                    m.d.sync += d.eq(pulse)
                    pulse = d
                    way.append(d)
                if f.name == "start":
                    start_way += way + [self.start]
            m.d.sync += getattr(self, f.name).eq(pulse)
        starting = Signal()
        m.d.comb += starting.eq(Cat(*start_way).any())
        shown = {f.name: getattr(self, f.name) for f in STATUS_FIELDS}
        shown.update(busy=self.busy | starting, done=self.done & ~starting, stopped=self.stopped & ~starting)
        m.d.comb += self.irq.eq(shown["done"])                 # the interrupt is STATUS.done
        status = Signal(32)
        m.d.comb += status.eq(sum(shown[f.name].as_unsigned() << f.lsb for f in STATUS_FIELDS))

        # ---- codebook
        m.d.comb += [self.cb_data.eq(self.w_data[:FEAT.width]), self.cb_we.eq(wr["CODEBOOK_DATA"])]
        with m.If(wr["CODEBOOK_ADDR"]):
            m.d.sync += self.cb_addr.eq(self.w_data)
        with m.Elif(wr["CODEBOOK_DATA"]):
            m.d.sync += self.cb_addr.eq(self.cb_addr + 1)

        # ---- read acknowledge with hold-off
        # Reads: one wait state. The value is sampled into a register (and the read's side
        # effects happen) in the first cycle of r_stb without hold; r_ack the next.
        hold = Signal(range(HOLD_WRITE_CYCLES + 2))
        sample = Signal()
        ack = Signal()
        m.d.comb += [sample.eq(self.r_stb & (hold == 0) & ~ack), self.r_ack.eq(ack)]
        m.d.sync += ack.eq(sample)
        rd = {r.name: Signal(name=f"rd_{r.name.lower()}") for r in REGISTERS}
        for name, s in rd.items():
            m.d.comb += s.eq(sample & (addr == REG[name]))

        # ---- model readback
        model_ptr = Signal(32)
        m.d.sync += [self.model_rewind.eq(wr["MODEL_ADDR"]), self.model_next.eq(rd["MODEL_DATA"])]
        # a model word written (not while busy, a start on its way included): delayed as a
        # start is, so that the configuration's layout has settled in the engine
        model_w = wr["MODEL_DATA"] & ~shown["busy"]
        with m.If(model_w):
            m.d.sync += self.model_wdata.eq(self.w_data)
        pulse = model_w
        for i in range(CFG_SETTLE - 1):
            d = Signal(name=f"model_we_d{i}")
            m.d.sync += d.eq(pulse)
            pulse = d
        m.d.sync += self.model_we.eq(pulse)
        with m.If(wr["MODEL_ADDR"]):
            m.d.sync += model_ptr.eq(0)
        with m.Elif(rd["MODEL_DATA"] | model_w):
            m.d.sync += model_ptr.eq(model_ptr + 1)

        # ---- loss readback
        with m.If(wr["LOSS_ADDR"]):
            m.d.sync += self.loss_addr.eq(self.w_data)

        with m.If(wr["MODEL_DATA"]):
            m.d.sync += hold.eq(HOLD_WRITE_CYCLES + 1)
        with m.Elif(wr["MODEL_ADDR"] | rd["MODEL_DATA"] | wr["LOSS_ADDR"]):
            m.d.sync += hold.eq(HOLD_CYCLES + 1)
        with m.Elif(hold != 0):
            m.d.sync += hold.eq(hold - 1)

        # ---- counters: LO latches HI
        hi_latch = {}
        for n in COUNTER_NAMES:
            cnt = getattr(self, counter_port(n))
            lat = Signal(32, name=f"hi_{n.lower()}")
            with m.If(rd[f"{n}_LO"]):
                m.d.sync += lat.eq(cnt[32:])
            hi_latch[n] = lat

        # ---- read multiplexer
        values = {name: fn(p) & 0xFFFFFFFF for name, fn in CONSTANTS.items()}
        values.update(cfg_regs)
        values.update({
            "STATUS": status,
            "CODEBOOK_ADDR": self.cb_addr,
            "MODEL_ADDR": model_ptr,
            "MODEL_DATA": self.model_data,
            "LOSS_ADDR": self.loss_addr,
            "LOSS_LO": self.loss_data[:32],
            "LOSS_HI": self.loss_data[32:],
            "EPOCHS_DONE": self.epochs_done,
        })
        for n in COUNTER_NAMES:
            values[f"{n}_LO"] = getattr(self, counter_port(n))[:32]
            values[f"{n}_HI"] = hi_latch[n]
        r_q = Signal(32)
        m.d.comb += self.r_data.eq(r_q)
        with m.If(sample):
            with m.Switch(addr):
                for r in REGISTERS:
                    if "r" in r.access:
                        with m.Case(REG[r.name]):
                            m.d.sync += r_q.eq(values[r.name])
                with m.Default():
                    m.d.sync += r_q.eq(0)
        return m


def _merge(old, new, strb):
    """``old`` with the bytes of ``new`` whose ``strb`` bit is set."""
    return Cat(*[Mux(strb[i], new[8 * i:8 * i + 8], old[8 * i:8 * i + 8]) for i in range(4)])
