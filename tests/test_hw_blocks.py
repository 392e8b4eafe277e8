"""Unit tests of the engine's blocks: beat decoder and scalar unit."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from zipsgd.hw.decode import Decoder, modes
from zipsgd.hw.scalar import ACC_ROUND, Scalar
from zipsgd.sim.cases import decoder_cases, scalar_cases, scalar_expected


@pytest.mark.parametrize("word_bits", [64, 128])
def test_decoder_all_modes(word_bits):
    """Both decoders (Q1, Q2) against ``packing.unpack`` in every mode."""
    for which in (1, 2):
        d = Decoder(word_bits, which)
        cases = decoder_cases(word_bits, which)
        assert cases and {c.mode_index for c in cases} == {md.index for md in modes(word_bits)}

        async def tb(ctx):
            for cs in cases:
                ctx.set(d.mode, 1 << cs.mode_index)
                ctx.set(d.beat, cs.beat)
                for lane, v in cs.values.items():
                    assert ctx.get(d.value[lane]) == v, (cs.mode_index, lane)
                for lane, v in cs.codes.items():
                    assert ctx.get(d.code[lane]) == v, (cs.mode_index, lane)
                if cs.label is not None:
                    assert ctx.get(d.label) == cs.label
        sim = Simulator(d)
        sim.add_testbench(tb)
        sim.run()


def test_scalar_against_reference():
    rng = np.random.default_rng(3)
    cases = scalar_cases(rng)
    dut = Scalar()
    got_rp, got_lo = [], []

    async def tb(ctx):
        pending = list(cases)
        cycles = 0
        while len(got_lo) < len(cases):
            if pending:
                a, y, loss, mult, k = pending.pop(0)
                ctx.set(dut.i_valid, 1)
                ctx.set(dut.acc, a + ACC_ROUND)       # the core pre-rounds the sum
                ctx.set(dut.y, y)
                ctx.set(dut.loss, loss)
                ctx.set(dut.step_mult, mult)
                ctx.set(dut.k, k)
            else:
                ctx.set(dut.i_valid, 0)
            await ctx.tick()
            cycles += 1
            if ctx.get(dut.rp_valid):
                got_rp.append(ctx.get(dut.rp))
            if ctx.get(dut.loss_valid):
                got_lo.append(ctx.get(dut.loss_out))
        assert cycles == len(cases) + max(Scalar.LATENCY_RP, Scalar.LATENCY_LOSS) - 1

    # The loss / mult / k inputs are per-job (k per epoch) in the engine but per-sample here: check that
    # stage 1 and 2 capture them (the test feeds a new value every cycle).
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    for case, rp, lo in zip(cases, got_rp, got_lo):
        assert (rp, lo) == scalar_expected(case), case


def test_constant_compares_on_the_high_bits_are_exact():
    """``ge_const``/``le_const`` (the scalar unit's short compares: only the bits above the
    constant's trailing zeros go through a comparator) agree with ``>=``/``<=`` for every
    12-bit value and constants of every kind: zero, odd, with trailing zeros, both signs,
    the extremes."""
    from amaranth.hdl import Module, Signal, signed

    from zipsgd.hw.scalar import ge_const, le_const

    consts = [0, 1, -1, 3, -3, 16, -16, 48, -48, 40, -40, 5 * 64, -5 * 64, 2047, -2048, 1024, -1024]
    v = Signal(signed(12))
    m = Module()
    outs = []
    for i, c in enumerate(consts):
        g, le = Signal(name=f"ge{i}"), Signal(name=f"le{i}")
        m.d.comb += [g.eq(ge_const(v, c)), le.eq(le_const(v, c))]
        outs.append((c, g, le))
    wrong = []

    async def bench(ctx):
        for x in range(-2048, 2048):
            ctx.set(v, x)
            wrong.extend((x, c) for c, g, le in outs if (ctx.get(g), ctx.get(le)) != (x >= c, x <= c))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert not wrong, wrong[:5]


def test_scalar_class_labels_and_class_multipliers():
    """POS_CLASS and STEP_MULT_NEG in the scalar unit: the label the engine trains on is
    ``EngineConfig.label_value`` of the word, the multiplier ``EngineConfig.sample_mult`` of
    that label (``zipsgd.sim.components.scalar_class_cases``: class indices at the edges of
    the signed word), every loss, new values every cycle."""
    from zipsgd.sim.components import scalar_class_cases

    cases = scalar_class_cases(np.random.default_rng(4))
    hits = sum(1 for (_, w, _, _, _, pc, _), _ in cases if pc and w == pc - 1)
    assert hits > 20
    dut = Scalar()
    got = []

    async def tb(ctx):
        pending = [c for c, _ in cases]
        rp_seen, lo_seen = [], []
        while len(lo_seen) < len(cases):
            if pending:
                a, word, loss, mult, k, pc, neg = pending.pop(0)
                ctx.set(dut.i_valid, 1)
                ctx.set(dut.acc, a + ACC_ROUND)
                ctx.set(dut.y, word)
                ctx.set(dut.loss, loss)
                ctx.set(dut.step_mult, mult)
                ctx.set(dut.step_mult_neg, neg)
                ctx.set(dut.pos_class, pc)
                ctx.set(dut.k, k)
            else:
                ctx.set(dut.i_valid, 0)
            await ctx.tick()
            if ctx.get(dut.rp_valid):
                rp_seen.append(ctx.get(dut.rp))
            if ctx.get(dut.loss_valid):
                lo_seen.append(ctx.get(dut.loss_out))
        got.extend(zip(rp_seen, lo_seen))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    bad = [(case, g, want) for (case, want), g in zip(cases, got) if g != want]
    assert not bad, (len(bad), bad[:3])
