"""cocotb benches of single engine blocks on their generated Verilog.

Run through :func:`zipsgd.sim.runner.run` by ``tests/test_sim_components.py``;
``ZIPSGD_COMPONENT`` names the block (``decoder1``, ``decoder2``, ``scalar``) and
``ZIPSGD_W`` the stream width. Expected values come from :mod:`zipsgd.sim.cases`
(the contract's packer and reference), never from the gateware.
"""

from __future__ import annotations

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge, Timer

from zipsgd import contract as c
from zipsgd.hw.scalar import ACC_ROUND, Scalar
from zipsgd.sim.cases import decoder_cases, scalar_cases, scalar_expected
from zipsgd.sim.components import scalar_class_cases

COMPONENT = os.environ.get("ZIPSGD_COMPONENT", "")
W = int(os.environ.get("ZIPSGD_W", c.WORD_BITS_DEFAULT))
CODE_BITS = 8


def _signed(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


@cocotb.test(skip=not COMPONENT.startswith("decoder"))
async def test_decoder_every_mode(dut):
    """Codes (or FULL values) of every valid lane and the label, in every mode."""
    which = int(COMPONENT[-1]) if COMPONENT else 1
    cases = decoder_cases(W, which)
    checked = 0
    for cs in cases:
        dut.mode.value = 1 << cs.mode_index
        dut.beat.value = cs.beat
        await Timer(1, unit="ns")
        codes = int(dut.code.value)
        values = int(dut.value.value)
        for lane, want in cs.codes.items():
            got = (codes >> (CODE_BITS * lane)) & ((1 << CODE_BITS) - 1)
            assert got == want, f"mode {cs.mode_index} lane {lane}: code {got}, expected {want}"
            checked += 1
        for lane, want in cs.values.items():
            got = _signed(values >> (c.FEAT.width * lane), c.FEAT.width)
            assert got == want, f"FULL lane {lane}: {got}, expected {want}"
            checked += 1
        if cs.label is not None:
            got = _signed(int(dut.label.value), c.LABEL_BITS)
            assert got == cs.label, f"mode {cs.mode_index}: label {got}, expected {cs.label}"
    dut._log.info(f"decoder Q{which} at W={W}: {len(cases)} beats, {checked} lanes checked")
    assert checked > 0


@cocotb.test(skip=COMPONENT != "scalar")
async def test_scalar_stream(dut):
    """One sample per cycle (new loss, m and k every cycle): r' and the sample loss."""
    rng = np.random.default_rng(3)
    cases = scalar_cases(rng)
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    dut.i_valid.value = 0
    dut.pos_class.value = 0              # the label word is the label,
    dut.step_mult_neg.value = 0          # one multiplier (contract 3.0's defaults)
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    got_rp, got_lo, cycles = [], [], 0
    pending = list(cases)
    while len(got_lo) < len(cases):
        await RisingEdge(dut.clk)
        if pending:
            a, y, loss, mult, k = pending.pop(0)
            dut.i_valid.value = 1
            dut.acc.value = a + ACC_ROUND          # the core pre-rounds the sum
            dut.y.value = y
            dut.loss.value = int(loss)
            dut.step_mult.value = mult
            dut.k.value = k
        else:
            dut.i_valid.value = 0
        await ReadOnly()
        cycles += 1
        if int(dut.rp_valid.value):
            got_rp.append(_signed(int(dut.rp.value), c.MODEL.width))
        if int(dut.loss_valid.value):
            got_lo.append(int(dut.loss_out.value))
        assert cycles < len(cases) + 20, "the scalar unit stopped producing results"
    assert len(got_rp) == len(cases)
    bad = [(case, (rp, lo), scalar_expected(case)) for case, rp, lo in zip(cases, got_rp, got_lo)
           if (rp, lo) != scalar_expected(case)]
    assert not bad, f"{len(bad)} of {len(cases)} wrong, first: {bad[0]}"
    assert cycles == len(cases) + max(Scalar.LATENCY_RP, Scalar.LATENCY_LOSS), cycles   # the later output


@cocotb.test(skip=COMPONENT != "scalar")
async def test_scalar_class_labels(dut):
    """POS_CLASS (class-index labels) and STEP_MULT_NEG, new values every cycle: r' and the
    sample loss of the mapped label with its class's multiplier."""
    cases = scalar_class_cases(np.random.default_rng(4))
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    dut.i_valid.value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    got_rp, got_lo = [], []
    pending = [case for case, _ in cases]
    for _ in range(len(cases) + 20):
        await RisingEdge(dut.clk)
        if pending:
            a, word, loss, mult, k, pc, neg = pending.pop(0)
            dut.i_valid.value = 1
            dut.acc.value = a + ACC_ROUND
            dut.y.value = word & 0xFFFFFFFF
            dut.loss.value = int(loss)
            dut.step_mult.value = mult
            dut.step_mult_neg.value = neg
            dut.pos_class.value = pc
            dut.k.value = k
        else:
            dut.i_valid.value = 0
        await ReadOnly()
        if int(dut.rp_valid.value):
            got_rp.append(_signed(int(dut.rp.value), c.MODEL.width))
        if int(dut.loss_valid.value):
            got_lo.append(int(dut.loss_out.value))
        if len(got_lo) == len(cases):
            break
    assert len(got_rp) == len(got_lo) == len(cases)
    bad = [(case, got, want) for (case, want), got in zip(cases, zip(got_rp, got_lo)) if got != want]
    assert not bad, f"{len(bad)} of {len(cases)} wrong, first: {bad[0]}"
