"""Per-sample scalar unit: dot accumulator -> step-scaled residual r' and sample loss.

Implements exactly ``reference.residual_and_loss`` followed by
``r' = sat(rshift_round(r * m, STEP_MULT.frac + k))`` (see :mod:`zipsgd.contract`).

The accumulator input is *pre-rounded*: ``acc = dot + 2**(FEAT.frac - 1)`` (the core starts
every sample's sum at that constant), so ``z = sat(acc >> FEAT.frac)`` needs no adder.

Pipeline (each line one register stage, at most one carry chain and a few LUT levels
deep, for 125 MHz on a slow ECP5; LATENCY is counted from ``i_valid``):

1. ``z`` (saturated) and, from the raw ``acc`` bits in parallel, every candidate of the
   residual: ``z - y``, ``MAX - y``, ``MIN - y`` (squared) and the PLAN sigmoid
   ``sigma(z)`` (each segment of both signs is one constant add of ``z``, the segment is
   chosen by constant compares of ``z``).
2. ``r`` for the job's loss (saturations and selection), the softplus argument ``t`` and the
   hinge margin.
3. Partial products ``r_hi * m``, ``r_lo * m`` and those of ``r * r`` (17x17, one DSP each);
   softplus table index; hinge loss.
4. ``r * m`` and ``r * r`` summed; softplus table read.
5. ``(r * m) >> (14 + k)`` (one barrel shifter); squared loss rounded; softplus summed.
6. ``r' = sat((h + 1) >> 1)``; sample loss selected and saturated.

So ``LATENCY_RP`` = ``LATENCY_LOSS`` = 6 cycles.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from zipsgd.contract import (
    ACC, FEAT, LOSS_SAMPLE, MODEL, SIGMOID_SEGMENTS, SOFTPLUS_ENTRIES, SOFTPLUS_SHIFT,
    SOFTPLUS_TABLE, STEP_MULT, STEP_SHIFT_MAX, Loss,
)

#: The constant the core adds to every sample's dot sum (rounding of ``acc >> FEAT.frac``).
ACC_ROUND = 1 << (FEAT.frac - 1)


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


class Scalar(wiring.Component):
    """Scalar residual/loss pipeline for one sample per cycle at most.

    Attributes
    ----------
    i_valid, acc, y : In
        Sample dot accumulator (ACC, pre-rounded: the dot sum plus :data:`ACC_ROUND`)
        and label (MODEL).
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

    LATENCY_RP = 6
    LATENCY_LOSS = 6

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
        MW = MODEL.width
        F = FEAT.frac

        def reg(value, name, shape=None):
            r = Signal(shape if shape is not None else value.shape(), name=name)
            m.d.sync += r.eq(value)
            return r

        # ---- stage 1: z and the residual candidates ------------------------------------
        acc, y = self.acc, self.y
        zr = Signal(signed(MW))                     # z bits, valid unless out of range
        m.d.comb += zr.eq(acc[F:F + MW].as_signed())
        hi = acc[F + MW - 1:]                       # must be sign extension of zr
        ovf = Signal()
        neg = Signal()                              # z < 0 (saturated or not)
        m.d.comb += [ovf.eq(~((hi == 0) | (hi == (1 << len(hi)) - 1))), neg.eq(acc[-1])]
        z1 = reg(Mux(ovf, Mux(neg, MODEL.min, MODEL.max), zr), "z1", signed(MW))
        y1 = reg(y, "y1")
        ovf1 = reg(ovf, "ovf1")
        neg1 = reg(neg, "neg1")
        # squared: sat(z - y) for z in range, else sat(MAX - y) / sat(MIN - y)
        dq1 = reg(zr - y, "dq1", signed(MW + 1))
        dl1 = reg(Mux(neg, MODEL.min, MODEL.max) - y, "dl1", signed(MW + 1))
        # logistic: the first segment whose threshold <= |z|; z >= 0: s(z), z < 0: one - s(-z)
        # (one - off) - ((-z) >> s) == (z + 2**s - 1 + (one - off) * 2**s) >> s
        cands, hits = [], []
        for threshold, shift, offset in SIGMOID_SEGMENTS:
            if shift is None:
                cp, cn = Const(one, signed(MW + 1)), Const(0, signed(MW + 1))
            else:
                cp = (zr + (offset << shift)) >> shift
                cn = (zr + ((1 << shift) - 1) + ((one - offset) << shift)) >> shift
            # |z| >= threshold (an out-of-range z always takes the first segment)
            hit = ovf | Mux(neg, zr <= -threshold, zr >= threshold) if threshold else Const(1)
            cands.append(Mux(neg, cn, cp))
            hits.append(hit)
        sig = cands[-1]
        for c, h in zip(reversed(cands[:-1]), reversed(hits[:-1])):
            sig = Mux(h, c, sig)
        sig1 = reg(sig, "sig1", signed(MW + 1))
        ls1 = reg(self.loss, "ls1")
        sm1 = reg(self.step_mult, "sm1")
        k1 = reg(self.k, "k1")
        v1 = reg(self.i_valid, "v1")

        # ---- stage 2: r, softplus argument, hinge margin -----------------------------
        r_sq = Mux(ovf1, sat(m, dl1, MODEL, "r_sq_o"), sat(m, dq1, MODEL, "r_sq_i"))
        r_lg = sat(m, sig1 - y1, MODEL, "r_lg")
        # hinge: margin mg = z (y >= 0) or sat(-z); mg < one <=> z < one / z > -one
        r_hg = Mux(y1 >= 0, Mux(z1 < one, -one, 0), Mux(z1 > -one, one, 0))
        neg_z = sat(m, -z1, MODEL, "neg_z")
        r2 = reg(Mux(ls1 == Loss.SQUARED, r_sq, Mux(ls1 == Loss.LOGISTIC, r_lg, r_hg)), "r2", signed(MW))
        t2 = reg(Mux(y1 == 0, z1, neg_z), "t2", signed(MW))        # softplus argument
        mg2 = reg(Mux(y1 >= 0, z1, neg_z), "mg2", signed(MW))      # hinge margin
        ls2, sm2, k2, v2 = reg(ls1, "ls2"), reg(sm1, "sm2"), reg(k1, "k2"), reg(v1, "v2")

        # ---- stage 3: partial products (17 x 17 each), softplus index, hinge loss ------
        H = MW // 2
        r_lo = Cat(r2[:H], Const(0, 1)).as_signed()          # unsigned low half
        r_hi = r2[H:].as_signed()
        smx = Cat(sm2, Const(0, 1)).as_signed()
        pm_lo = reg(r_lo * smx, "pm_lo", signed(H + STEP_MULT.width + 2))
        pm_hi = reg(r_hi * smx, "pm_hi", signed(H + STEP_MULT.width + 1))
        ps_ll = reg(r_lo * r_lo, "ps_ll", signed(2 * H + 2))
        ps_hl = reg(r_hi * r_lo, "ps_hl", signed(2 * H + 1))
        ps_hh = reg(r_hi * r_hi, "ps_hh", signed(2 * H + 1))
        ta = sat(m, Mux(t2 < 0, -t2, t2), MODEL, "t_abs")
        idx3 = reg(Mux((ta >> SOFTPLUS_SHIFT) >= SOFTPLUS_ENTRIES, SOFTPLUS_ENTRIES, ta >> SOFTPLUS_SHIFT),
                   "idx3", unsigned(len(Const(SOFTPLUS_ENTRIES))))
        tp3 = reg(Mux(t2 > 0, t2, 0), "tp3", signed(MW))
        hg3 = reg(Mux(mg2 < one, one - mg2, 0), "hg3", signed(MW + 2))
        ls3, k3, v3 = reg(ls2, "ls3"), reg(k2, "k3"), reg(v2, "v3")

        # ---- stage 4: sums of partial products, softplus table ------------------------
        rm4 = reg((pm_hi << H) + pm_lo, "rm4", signed(MW + STEP_MULT.width + 1))
        sq4 = reg(((ps_hh << MW) + (ps_hl << (H + 1)) + ps_ll).as_unsigned(), "sq4", unsigned(2 * MW))
        table = Array(Const(v, unsigned(MW)) for v in SOFTPLUS_TABLE + (0,))
        tab4 = reg(table[idx3], "tab4", unsigned(MW))
        tp4 = reg(tp3, "tp4")
        hg4 = reg(hg3, "hg4")
        ls4, k4, v4 = reg(ls3, "ls4"), reg(k3, "k4"), reg(v3, "v4")

        # ---- stage 5: barrel shift by k, squared loss rounded, softplus summed ---------
        # rshift_round(v, 15 + k) == ((v >> 14 >> k) + 1) >> 1 (arithmetic shifts)
        hk5 = reg(rm4[STEP_MULT.frac - 1:].as_signed() >> k4, "hk5",
                  signed(rm4.shape().width - (STEP_MULT.frac - 1)))
        lsq5 = reg(rshift_round(sq4, MODEL.frac + 1), "lsq5", unsigned(2 * MW))
        sp5 = reg(tp4 + tab4, "sp5", signed(MW + 2))
        hg5 = reg(hg4, "hg5")
        ls5, v5 = reg(ls4, "ls5"), reg(v4, "v5")

        # ---- stage 6: r' and the sample loss -------------------------------------------
        rp = sat(m, (hk5 + 1) >> 1, MODEL, "rp_next")
        lo = Mux(ls5 == Loss.SQUARED, lsq5, Mux(ls5 == Loss.LOGISTIC, sp5, hg5))
        lo_sat = sat(m, lo, LOSS_SAMPLE, "loss_sat")
        m.d.sync += [
            self.rp_valid.eq(v5), self.loss_valid.eq(v5),
            self.loss_out.eq(lo_sat),
        ]
        with m.If(v5):
            m.d.sync += self.rp.eq(rp)
        return m
