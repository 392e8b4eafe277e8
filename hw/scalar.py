"""Per-sample scalar unit: dot accumulator -> step-scaled residual r' and sample loss.

Implements exactly ``reference.residual_and_loss`` followed by
``r' = sat(rshift_round(r * m, STEP_MULT.frac + k))`` (see :mod:`zipsgd.contract`).

Pipeline (each line one register stage; LATENCY is counted from ``i_valid``):

1. ``z = sat(rshift_round(acc, FEAT.frac))`` and, from it in the same stage, the
   residual ``r`` for every loss (squared / PLAN sigmoid / hinge) and the loss
   operands (``t`` for softplus, ``m`` for hinge).
2. ``r * m`` (DSP) and ``r * r`` (DSP) / softplus table look-up.
3. ``r' = sat(rshift_round(r * m, 15 + k))`` (``((r*m >> 14) >> k) + 1 >> 1``: one
   barrel shifter for the whole engine); sample loss selected and saturated.

So ``LATENCY_RP`` = ``LATENCY_LOSS`` = 3 cycles. The residual stage is on the
critical batch-boundary loop, so it is kept short.
"""

from __future__ import annotations

from amaranth.hdl import Array, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from zipsgd.contract import (
    ACC, FEAT, LOSS_SAMPLE, MODEL, SIGMOID_SEGMENTS, SOFTPLUS_ENTRIES, SOFTPLUS_SHIFT,
    SOFTPLUS_TABLE, STEP_MULT, STEP_SHIFT_MAX, Loss,
)


def sat(m, value, fmt, name):
    """Combinational saturation of ``value`` to ``fmt``; returns a new Signal."""
    out = Signal(signed(fmt.width) if fmt.signed else unsigned(fmt.width), name=name)
    m.d.comb += out.eq(Mux(value > fmt.max, fmt.max, Mux(value < fmt.min, fmt.min, value)))
    return out


def rshift_round(value, s: int):
    """``(value + 2**(s-1)) >> s`` for a constant ``s`` (expression, one bit wider)."""
    if s == 0:
        return value
    return (value + (1 << (s - 1))) >> s


def sat_abs(m, v, name):
    """|v| saturated to MODEL (v is s32)."""
    return sat(m, Mux(v < 0, -v, v), MODEL, name)


class Scalar(wiring.Component):
    """Scalar residual/loss pipeline for one sample per cycle at most.

    Attributes
    ----------
    i_valid, acc, y : In
        Sample dot accumulator (ACC) and label (MODEL).
    loss : In(2)
        Loss selector (``Loss``), held for the job.
    step_mult : In(16)
        Step multiplier ``m`` (u16, frac 15), held for the job.
    k : In(range(STEP_SHIFT_MAX + 1))
        Step shift of the sample's epoch, valid with ``i_valid``.
    rp_valid, rp : Out
        ``r'`` (MODEL), ``LATENCY_RP`` cycles after ``i_valid``.
    loss_valid, loss_out : Out
        Sample loss (LOSS_SAMPLE), ``LATENCY_LOSS`` cycles after ``i_valid``.
    """

    LATENCY_RP = 3
    LATENCY_LOSS = 3

    def __init__(self):
        super().__init__({
            "i_valid": In(1),
            "acc": In(signed(ACC.width)),
            "y": In(signed(MODEL.width)),
            "loss": In(2),
            "step_mult": In(STEP_MULT.width),
            "k": In(range(STEP_SHIFT_MAX + 1)),
            "rp_valid": Out(1),
            "rp": Out(signed(MODEL.width)),
            "loss_valid": Out(1),
            "loss_out": Out(LOSS_SAMPLE.width),
        })

    def elaborate(self, platform):
        m = Module()
        one = MODEL.one
        # ---- stage 1 (comb into register 1): z, residual r, loss operands -----------
        z = sat(m, rshift_round(self.acc, FEAT.frac), MODEL, "z")
        y = self.y
        # squared
        r_sq = sat(m, z - y, MODEL, "r_sq")
        # logistic: PLAN sigmoid on u = |z|
        u = sat_abs(m, z, "u")
        s = Signal(signed(MODEL.width + 1))
        seg = None
        for threshold, shift, offset in reversed(SIGMOID_SEGMENTS):
            val = Const(offset, signed(MODEL.width + 1)) if shift is None else (u >> shift) + offset
            seg = val if seg is None else Mux(u >= threshold, val, seg)
        m.d.comb += s.eq(seg)
        sig = Mux(z >= 0, s, one - s)
        r_lg = sat(m, sig - y, MODEL, "r_lg")
        neg_z = sat(m, -z, MODEL, "neg_z")
        t_lg = Signal(signed(MODEL.width))
        m.d.comb += t_lg.eq(Mux(y == 0, z, neg_z))
        # hinge
        mg = Signal(signed(MODEL.width))
        m.d.comb += mg.eq(Mux(y >= 0, z, neg_z))
        r_hg = Mux(mg < one, Mux(y >= 0, -one, one), 0)

        r1 = Signal(signed(MODEL.width))
        v1 = Signal()
        t1 = Signal(signed(MODEL.width))       # softplus argument (logistic)
        mg1 = Signal(signed(MODEL.width))      # margin (hinge)
        ls1 = Signal(2)
        sm1 = Signal(STEP_MULT.width)
        k1 = Signal.like(self.k)
        m.d.sync += [
            sm1.eq(self.step_mult), k1.eq(self.k),
            v1.eq(self.i_valid),
            r1.eq(Mux(self.loss == Loss.SQUARED, r_sq, Mux(self.loss == Loss.LOGISTIC, r_lg, r_hg))),
            t1.eq(t_lg), mg1.eq(mg), ls1.eq(self.loss),
        ]

        # ---- stage 2: r*m, r*r, softplus look-up ---------------------------------------
        v2 = Signal()
        rm2 = Signal(signed(MODEL.width + STEP_MULT.width + 1))
        sq2 = Signal(unsigned(2 * MODEL.width))
        sp2 = Signal(signed(MODEL.width + 2))
        hg2 = Signal(signed(MODEL.width + 2))
        ls2 = Signal(2)
        k2 = Signal.like(self.k)
        table = Array(Const(v, unsigned(MODEL.width)) for v in SOFTPLUS_TABLE + (0,))
        ta = sat_abs(m, t1, "t_abs")
        idx = Signal(range(SOFTPLUS_ENTRIES + 1))
        m.d.comb += idx.eq(Mux((ta >> SOFTPLUS_SHIFT) >= SOFTPLUS_ENTRIES, SOFTPLUS_ENTRIES, ta >> SOFTPLUS_SHIFT))
        m.d.sync += [
            v2.eq(v1), k2.eq(k1),
            rm2.eq(r1 * sm1),
            sq2.eq((r1 * r1).as_unsigned()),
            sp2.eq(Mux(t1 > 0, t1, 0) + table[idx]),
            hg2.eq(Mux(mg1 < one, one - mg1, 0)),
            ls2.eq(ls1),
        ]

        # ---- stage 3: r' and the sample loss -------------------------------------------
        # rshift_round(v, 15 + k) == ((v >> 14 >> k) + 1) >> 1 (arithmetic shifts)
        hk = Signal(signed(rm2.shape().width - (STEP_MULT.frac - 1)))
        m.d.comb += hk.eq(rm2[STEP_MULT.frac - 1:].as_signed() >> k2)
        rp = sat(m, (hk + 1) >> 1, MODEL, "rp_next")
        lo_sq = rshift_round(sq2, MODEL.frac + 1)
        lo = Mux(ls2 == Loss.SQUARED, lo_sq, Mux(ls2 == Loss.LOGISTIC, sp2, hg2))
        lo_sat = sat(m, lo, LOSS_SAMPLE, "loss_sat")
        m.d.sync += [
            self.rp_valid.eq(v2), self.loss_valid.eq(v2),
            self.loss_out.eq(lo_sat),
        ]
        with m.If(v2):
            m.d.sync += self.rp.eq(rp)
        return m
