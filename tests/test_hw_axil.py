"""Amaranth-simulator tests of the AXI4-Lite slave and the register block (fast, no HDL simulator).

The slave is driven by a small AXI4-Lite master model that can present AW and W in
either order, with gaps, and with back-pressure on B and R; the register block is
the real one (``Top`` with the stub core of ``zipsgd.sim.stub_core``).
"""

from __future__ import annotations

import random

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from zipsgd import contract as c
from zipsgd.hw.axil import AxiLiteSlave
from zipsgd.hw.top import Top
from zipsgd.sim.stub_core import STUB_LOSS_MULT, STUB_MODEL_BASE, StubEngine

PARAMS = c.EngineParams(word_bits=64, dim_max=256, batch_max=64, epochs_max=16)


class Master:
    """AXI4-Lite master model on flat ``prefix + name`` signals of ``dut``."""

    def __init__(self, ctx, dut, prefix="s_axil_", rng=None):
        self.ctx, self.dut, self.p = ctx, dut, prefix
        self.rng = rng or random.Random(0)

    def s(self, name):
        return getattr(self.dut, self.p + name)

    async def _wait(self, n):
        for _ in range(n):
            await self.ctx.tick()

    async def until(self, name, *values, within=100, what="handshake"):
        """Tick until ``name`` is high at a clock edge; returns ``values`` sampled at that edge."""
        for _ in range(within):
            _, _, hit, *got = await self.ctx.tick().sample(self.s(name), *map(self.s, values))
            if hit:
                return got
        raise TimeoutError(f"{what}: no {name} in {within} cycles")

    async def write(self, addr, data, strb=0xF, order="together", bready_delay=0):
        """One write; ``order``: 'together', 'aw_first', 'w_first'. Returns BRESP."""
        ctx = self.ctx
        aw_done = w_done = False

        def present_aw():
            ctx.set(self.s("awaddr"), addr)
            ctx.set(self.s("awvalid"), 1)

        def present_w():
            ctx.set(self.s("wdata"), data)
            ctx.set(self.s("wstrb"), strb)
            ctx.set(self.s("wvalid"), 1)

        if order in ("together", "aw_first"):
            present_aw()
        if order in ("together", "w_first"):
            present_w()
        for cycle in range(100):
            # sample handshakes at the clock edge
            _, _, awr, wr, awv, wv = await ctx.tick().sample(
                self.s("awready"), self.s("wready"), self.s("awvalid"), self.s("wvalid"))
            if awv and awr:
                aw_done = True
                ctx.set(self.s("awvalid"), 0)
            if wv and wr:
                w_done = True
                ctx.set(self.s("wvalid"), 0)
            if cycle == 2 and order == "aw_first" and not w_done:
                present_w()
            if cycle == 2 and order == "w_first" and not aw_done:
                present_aw()
            if aw_done and w_done:
                break
        else:
            raise TimeoutError("write address/data not accepted")
        await self._wait(bready_delay)
        ctx.set(self.s("bready"), 1)
        (resp,) = await self.until("bvalid", "bresp", what="write response")
        ctx.set(self.s("bready"), 0)
        return resp

    async def read(self, addr, rready_delay=0):
        """One read; returns (data, RRESP)."""
        ctx = self.ctx
        ctx.set(self.s("araddr"), addr)
        ctx.set(self.s("arvalid"), 1)
        await self.until("arready", what="read address")
        ctx.set(self.s("arvalid"), 0)
        await self._wait(rready_delay)
        ctx.set(self.s("rready"), 1)
        rd, rr = await self.until("rvalid", "rdata", "rresp", what="read data")
        ctx.set(self.s("rready"), 0)
        return rd, rr


def _run(top, bench, *monitors):
    """Simulate ``Top``: its ``sync`` clock is the ``aclk`` port, toggled here."""
    sim = Simulator(top)

    async def aclk(ctx):
        while True:
            ctx.set(top.aclk, 0)
            await ctx.delay(5e-9)
            ctx.set(top.aclk, 1)
            await ctx.delay(5e-9)
    sim.add_process(aclk)
    sim.add_testbench(bench)
    for mon in monitors:
        sim.add_process(mon)
    sim.run()


def pulse_counter(sig, into: dict, key: str, extra=()):
    """Background process: ``into[key]`` = list of (extra values) at each cycle ``sig`` is high."""
    into[key] = []

    async def mon(ctx):
        async for _, _, v, *rest in ctx.tick().sample(sig, *extra):
            if v:
                into[key].append(tuple(rest))
    return mon


def _top():
    top = Top(PARAMS, StubEngine)
    return top


def test_ids_and_unmapped():
    top = _top()

    async def bench(ctx):
        ctx.set(top.aresetn, 1)
        m = Master(ctx, top)
        assert await m.read(c.REG["MAGIC"]) == (c.MAGIC, 0)
        assert await m.read(c.REG["VERSION"]) == (c.version_word(), 0)
        assert await m.read(c.REG["BUILD_HASH"]) == (c.build_hash(PARAMS), 0)
        assert await m.read(c.REG["PARAM_MODES"]) == (PARAMS.modes_mask, 0)
        assert await m.read(c.REG["PARAM_DIM_MAX"]) == (PARAMS.dim_max, 0)
        top_addr = 4 * len(c.REGISTERS)
        assert await m.write(top_addr, 0x12345678) == 0          # OKAY, ignored
        assert await m.read(top_addr) == (0, 0)
        assert await m.read(c.REG_SPACE_BYTES - 4) == (0, 0)
        assert await m.read(c.REG["CTRL"]) == (0, 0)            # write-only reads 0

    _run(top, bench)


@pytest.mark.parametrize("order", ["together", "aw_first", "w_first"])
def test_write_orders_and_backpressure(order):
    top = _top()

    async def bench(ctx):
        ctx.set(top.aresetn, 1)
        m = Master(ctx, top)
        for i, name in enumerate(("N_SAMPLES", "DIM", "BATCH", "STEP_MULT")):
            v = 0x1000 * (i + 1) + 7
            assert await m.write(c.REG[name], v, order=order, bready_delay=i) == 0
            assert await m.read(c.REG[name], rready_delay=i) == (v, 0)
            assert ctx.get(getattr(top.core.cfg, name.lower())) == v
        # byte strobes
        await m.write(c.REG["DIM"], 0xAABBCCDD, strb=0b0101, order=order)
        assert (await m.read(c.REG["DIM"]))[0] == (0x2007 & 0xFF00FF00) | 0x00BB00DD

    _run(top, bench)


def test_one_outstanding_and_pulses():
    """AR and AW/W presented together: both complete, one after the other; CTRL pulses once."""
    top = _top()

    async def bench(ctx):
        ctx.set(top.aresetn, 1)
        m = Master(ctx, top)
        # reset values are EngineConfig's defaults
        assert (await m.read(c.REG["STEP_MULT"]))[0] == c.STEP_MULT.one
        assert (await m.read(c.REG["BATCH"]))[0] == 1
        # simultaneous read and write
        ctx.set(top.s_axil_araddr, c.REG["MAGIC"])
        ctx.set(top.s_axil_arvalid, 1)
        ctx.set(top.s_axil_awaddr, c.REG["EPOCHS"])
        ctx.set(top.s_axil_awvalid, 1)
        ctx.set(top.s_axil_wdata, 9)
        ctx.set(top.s_axil_wstrb, 0xF)
        ctx.set(top.s_axil_wvalid, 1)
        ctx.set(top.s_axil_rready, 1)
        ctx.set(top.s_axil_bready, 1)
        got_r = got_b = False
        outstanding = 0
        for _ in range(40):
            _, _, arv, arr, awv, awr, wv, wr, bv, rv, rd = await ctx.tick().sample(
                top.s_axil_arvalid, top.s_axil_arready, top.s_axil_awvalid, top.s_axil_awready,
                top.s_axil_wvalid, top.s_axil_wready, top.s_axil_bvalid, top.s_axil_rvalid, top.s_axil_rdata)
            if arv and arr:
                ctx.set(top.s_axil_arvalid, 0)
                outstanding += 1
            if awv and awr:
                ctx.set(top.s_axil_awvalid, 0)
            if wv and wr:
                ctx.set(top.s_axil_wvalid, 0)
                outstanding += 1
            if rv:
                assert rd == c.MAGIC
                got_r = True
                outstanding -= 1
            if bv:
                got_b = True
                outstanding -= 1
            assert outstanding <= 1, "more than one transaction in flight"
        assert got_r and got_b
        ctx.set(top.s_axil_rready, 0)
        ctx.set(top.s_axil_bready, 0)
        assert (await m.read(c.REG["EPOCHS"]))[0] == 9
        # CTRL.start gives exactly one start pulse, after which the stub is busy
        await m.write(c.REG["DIM"], 1)
        await m.write(c.REG["CTRL"], c.field_bits(c.CTRL_FIELDS, start=1))
        await m._wait(3)
        assert len(seen["start"]) == 1, seen["start"]
        st = (await m.read(c.REG["STATUS"]))[0]
        assert c.field_value(c.STATUS_FIELDS, "busy", st) == 1
        # counters run while busy; HI reads the value latched by LO
        lo1 = (await m.read(c.REG["CYCLES_LO"]))[0]
        assert (await m.read(c.REG["CYCLES_HI"]))[0] == 0
        lo2 = (await m.read(c.REG["CYCLES_LO"]))[0]
        assert lo2 > lo1 > 0
        await m.write(c.REG["CTRL"], c.field_bits(c.CTRL_FIELDS, soft_reset=1))
        await m._wait(3)
        assert len(seen["soft_reset"]) == 1 and len(seen["start"]) == 1
        assert (await m.read(c.REG["STATUS"]))[0] == 0

    seen = {}
    _run(top, bench, pulse_counter(top.core.start, seen, "start"),
         pulse_counter(top.core.soft_reset, seen, "soft_reset"))


def test_readback_holdoff_and_latches():
    """MODEL_DATA steps the stub's word index with hold-off; a MODEL_ADDR write of any
    value rewinds it; LOSS_* follow LOSS_ADDR."""
    top = _top()

    async def bench(ctx):
        ctx.set(top.aresetn, 1)
        m = Master(ctx, top)
        await m.write(c.REG["MODEL_ADDR"], 0)
        words = [(await m.read(c.REG["MODEL_DATA"]))[0] for _ in range(6)]
        assert words == [STUB_MODEL_BASE + i for i in range(6)]
        assert (await m.read(c.REG["MODEL_ADDR"]))[0] == 6
        await m.write(c.REG["MODEL_ADDR"], 0x1234)           # a write of any value rewinds
        assert (await m.read(c.REG["MODEL_ADDR"]))[0] == 0
        assert (await m.read(c.REG["MODEL_DATA"]))[0] == STUB_MODEL_BASE
        for e in (3, 0, 7):
            await m.write(c.REG["LOSS_ADDR"], e)
            lo = (await m.read(c.REG["LOSS_LO"]))[0]
            hi = (await m.read(c.REG["LOSS_HI"]))[0]
            assert hi << 32 | lo == ((e + 1) * STUB_LOSS_MULT) & ((1 << 64) - 1)
        # every MODEL_DATA read samples model_data >= 4 cycles after the last model pulse
        assert len(pulses) == 2 + 7 and len(acks) == 7
        for a in acks:
            last = max(p for p in pulses if p < a)
            assert a - last >= 4, (a, last)

    pulses, acks = [], []

    async def monitor(ctx):
        cycle = 0
        async for _, _, nxt, rew, ack, addr in ctx.tick().sample(
                top.core.model_next, top.core.model_rewind, top.regs.r_ack, top.regs.bus_addr):
            cycle += 1
            if nxt or rew:
                pulses.append(cycle)
            if ack and addr == c.REG["MODEL_DATA"]:
                acks.append(cycle - 1)          # (sampled the cycle before r_ack)
    _run(top, bench, monitor)


def test_slave_alone_wait_states():
    """The slave holds RVALID until r_ack: a register block may insert wait states."""
    dut = AxiLiteSlave()
    m_ = Module()
    m_.submodules.dut = dut

    async def bench(ctx):
        m = Master(ctx, dut, prefix="")
        # r_ack low: the read must not complete
        ctx.set(dut.r_data, 0xCAFE)
        ctx.set(dut.araddr, 0x14)
        ctx.set(dut.arvalid, 1)
        await ctx.tick()
        ctx.set(dut.arvalid, 0)
        ctx.set(dut.rready, 1)
        for _ in range(5):
            _, _, rv, stb, addr = await ctx.tick().sample(dut.rvalid, dut.r_stb, dut.bus_addr)
            assert not rv and stb and addr == 0x14
        ctx.set(dut.r_ack, 1)
        assert await m.until("rvalid", "rdata", within=3, what="read data after r_ack") == [0xCAFE]
        ctx.set(dut.rready, 0)
        # writes: one w_stb per transaction, word-aligned address, both channel orders
        for order in ("w_first", "aw_first", "together"):
            assert await m.write(0x23, 0x55, strb=0b0010, order=order) == 0
        await m._wait(2)
        assert seen["w"] == [(0x20, 0x55, 0b0010)] * 3, seen["w"]

    seen = {}
    sim = Simulator(m_)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.add_process(pulse_counter(dut.w_stb, seen, "w", (dut.bus_addr, dut.w_data, dut.w_strb)))
    sim.run()


def test_status_after_start_never_shows_the_last_job():
    """A STATUS read right after a START write shows busy, not the previous job's done:
    the start takes a few cycles to reach the engine (CFG_SETTLE), and a driver that
    polls STATUS at once must not take the last job's done for this one's."""
    top = _top()

    async def bench(ctx):
        ctx.set(top.aresetn, 1)
        m = Master(ctx, top)
        start = c.field_bits(c.CTRL_FIELDS, start=1)
        await m.write(c.REG["DIM"], 0)                   # the stub refuses it at once: done
        await m.write(c.REG["CTRL"], start)
        await m._wait(8)
        st = (await m.read(c.REG["STATUS"]))[0]
        assert c.field_value(c.STATUS_FIELDS, "done", st) == 1
        assert c.field_value(c.STATUS_FIELDS, "error", st) == c.Error.BAD_DIM
        await m.write(c.REG["DIM"], 1)
        await m.write(c.REG["CTRL"], start)
        st = (await m.read(c.REG["STATUS"]))[0]          # at once
        assert c.field_value(c.STATUS_FIELDS, "done", st) == 0
        assert c.field_value(c.STATUS_FIELDS, "busy", st) == 1
        await m._wait(8)
        st = (await m.read(c.REG["STATUS"]))[0]          # the stub runs (no beats yet)
        assert c.field_value(c.STATUS_FIELDS, "busy", st) == 1

    _run(top, bench)


def test_codebook_writes_reach_the_core():
    """CODEBOOK_DATA writes reach the core's codebook port at CODEBOOK_ADDR, which then
    increments (and reads back); the level is the low FEAT.width bits of the word."""
    top = _top()
    levels = [0, 1, -1, c.FEAT.max, c.FEAT.min, -12345]

    async def bench(ctx):
        ctx.set(top.aresetn, 1)
        m = Master(ctx, top)
        await m.write(c.REG["CODEBOOK_ADDR"], 3)
        for v in levels:
            await m.write(c.REG["CODEBOOK_DATA"], v & 0xFFFFFFFF)      # sign-extended FEAT
        assert (await m.read(c.REG["CODEBOOK_ADDR"]))[0] == 3 + len(levels)
        await m.write(c.REG["CODEBOOK_ADDR"], 0)
        await m.write(c.REG["CODEBOOK_DATA"], 7)
        await m._wait(2)
        mask = (1 << c.FEAT.width) - 1
        assert seen["cb"] == [(3 + i, v & mask) for i, v in enumerate(levels)] + [(0, 7)], seen["cb"]

    seen = {}
    _run(top, bench, pulse_counter(top.core.cb_we, seen, "cb", (top.core.cb_addr, top.core.cb_data)))


def test_ctrl_warm_and_stop_reach_the_core_and_stopped_shows():
    """CTRL.warm comes with its start (the same cycle, CFG_SETTLE after the write), CTRL.stop
    is a pulse of its own; STATUS.stopped shows the core's (the stub stops at once), hidden
    while a start is on its way; a start clears it."""
    top = _top()

    async def bench(ctx):
        ctx.set(top.aresetn, 1)
        m = Master(ctx, top)
        bits = lambda **f: c.field_bits(c.CTRL_FIELDS, **f)
        st = lambda v, name: c.field_value(c.STATUS_FIELDS, name, v)
        await m.write(c.REG["DIM"], 1)
        await m.write(c.REG["CTRL"], bits(start=1, warm=1))
        await m._wait(3)
        await m.write(c.REG["CTRL"], bits(stop=1))
        await m._wait(3)
        v = (await m.read(c.REG["STATUS"]))[0]
        assert (st(v, "busy"), st(v, "done"), st(v, "stopped")) == (0, 1, 1), hex(v)
        await m.write(c.REG["CTRL"], bits(start=1))
        v = (await m.read(c.REG["STATUS"]))[0]             # the start on its way: not stopped
        assert (st(v, "busy"), st(v, "done"), st(v, "stopped")) == (1, 0, 0), hex(v)
        await m._wait(5)
        v = (await m.read(c.REG["STATUS"]))[0]
        assert (st(v, "busy"), st(v, "stopped")) == (1, 0), hex(v)
        await m.write(c.REG["CTRL"], bits(stop=1, warm=1))   # warm without start: nothing
        await m._wait(5)
        assert seen["start"] == [(1,), (0,)], seen["start"]
        assert len(seen["stop"]) == 2 and not seen["warm_alone"], seen

    seen = {}
    _run(top, bench, pulse_counter(top.core.start, seen, "start", (top.core.warm,)),
         pulse_counter(top.core.stop, seen, "stop"),
         pulse_counter(top.core.warm & ~top.core.start, seen, "warm_alone"))


def test_model_data_writes_reach_the_core():
    """MODEL_DATA writes pulse model_we with the word, CFG_SETTLE cycles after the write
    lands (as a start: the configuration's layout has settled); MODEL_ADDR counts reads and
    writes; writes while busy are dropped (no pulse, no count); a read after a write waits
    until the word can have reached the model memory."""
    from zipsgd.hw.core import CFG_SETTLE
    from zipsgd.hw.regs import HOLD_WRITE_CYCLES

    top = _top()
    words = [5, 0xFFFFFFFF, 0x80000000, 0x12345678]

    async def bench(ctx):
        ctx.set(top.aresetn, 1)
        m = Master(ctx, top)
        await m.write(c.REG["MODEL_ADDR"], 0)
        for w in words:
            await m.write(c.REG["MODEL_DATA"], w)
        assert (await m.read(c.REG["MODEL_ADDR"]))[0] == len(words)
        await m.read(c.REG["MODEL_DATA"])
        assert (await m.read(c.REG["MODEL_ADDR"]))[0] == len(words) + 1
        await m.write(c.REG["DIM"], 1)
        await m.write(c.REG["CTRL"], c.field_bits(c.CTRL_FIELDS, start=1))
        await m.write(c.REG["MODEL_DATA"], 99)              # busy: dropped
        assert (await m.read(c.REG["MODEL_ADDR"]))[0] == len(words) + 1
        await m._wait(5)
        assert [v for _, v in seen] == words, seen
        for (at, _), landed in zip(seen, lands):
            assert at - landed == CFG_SETTLE, (at, landed)
        # the read after the last write: sampled HOLD_WRITE_CYCLES after it or later
        assert read_at[0] - lands[len(words) - 1] >= HOLD_WRITE_CYCLES, (read_at, lands)

    seen, lands, read_at = [], [], []

    async def monitor(ctx):
        cycle = 0
        async for _, _, we, wd, wr, rd, addr in ctx.tick().sample(
                top.core.model_we, top.core.model_wdata, top.regs.w_stb, top.regs.r_ack, top.regs.bus_addr):
            cycle += 1
            if we:
                seen.append((cycle, wd))
            if wr and addr == c.REG["MODEL_DATA"]:
                lands.append(cycle + 1)                     # (the write lands the next cycle)
            if rd and len(lands) == len(words) and not read_at:
                read_at.append(cycle - 1)                   # (sampled the cycle before r_ack)
    _run(top, bench, monitor)


@pytest.mark.parametrize("enc,bits,dim", [(c.Encoding.SINGLE, 1, 75), (c.Encoding.COMPACT, 4, 40),
                                          (c.Encoding.FULL, 32, 5)])
def test_model_written_over_the_bus_reads_back(enc, bits, dim):
    """The real engine: a model written word by word through MODEL_DATA (back to back, in the
    layout of the configuration registers) reads back unchanged at once (the read hold-off
    covers the write's way to the memory), after a rewind, and again after another layout's
    configuration is written (reads keep the layout the model was written in)."""
    top = Top(PARAMS)
    rnd = random.Random(dim)
    words = [rnd.randrange(1 << 32) for _ in range(dim)]

    async def bench(ctx):
        ctx.set(top.aresetn, 1)
        m = Master(ctx, top)
        for name, v in (("DIM", dim), ("ENCODING", int(enc)), ("BITS", bits)):
            await m.write(c.REG[name], v)
        await m.write(c.REG["MODEL_ADDR"], 0)
        await m.write(c.REG["MODEL_DATA"], words[0])
        await m.write(c.REG["MODEL_ADDR"], 0)
        assert (await m.read(c.REG["MODEL_DATA"]))[0] == words[0]        # at once after a write
        await m.write(c.REG["MODEL_ADDR"], 0)
        for w in words:
            await m.write(c.REG["MODEL_DATA"], w)
        await m.write(c.REG["MODEL_ADDR"], 0)
        got = [(await m.read(c.REG["MODEL_DATA"]))[0] for _ in words]
        assert got == words
        await m.write(c.REG["ENCODING"], int(c.Encoding.FULL))
        await m.write(c.REG["BITS"], 32)
        await m.write(c.REG["MODEL_ADDR"], 0)
        got = [(await m.read(c.REG["MODEL_DATA"]))[0] for _ in words]
        assert got == words

    _run(top, bench)
