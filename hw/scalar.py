"""Per-sample scalar unit: dot accumulator -> step-scaled residual r' and sample loss.

Implements exactly ``reference.residual_and_loss`` followed by
``r' = sat(rshift_round(r * m, STEP_MULT.frac + k))`` (see :mod:`zipsgd.contract`).

The accumulator input is *pre-rounded*: ``acc = dot + 2**(FEAT.frac - 1)`` (the core starts
every sample's sum at that constant), so ``z = sat(acc >> FEAT.frac)`` needs no adder.

Pipeline (each line one register stage, at most one carry chain and a few LUT levels
deep, for 125 MHz on a slow ECP5; LATENCY is counted from ``i_valid``):

1. ``z`` (saturated) and, from the raw ``acc`` bits in parallel, the residual of the
   squared loss ``sat(z - y)`` or of the hinge loss (constant compares of ``z``), and the
   PLAN sigmoid ``sigma(z)`` (each segment of both signs is one constant add of ``z``, the
   segment is chosen by constant compares of ``z``).
2. ``r`` for the job's loss (saturations and selection), the softplus argument ``t`` and the
   hinge margin.
3. Partial products ``r_hi * m``, ``r_lo * m`` and those of ``r * r`` (17x17, one DSP each);
   ``-t`` for the softplus; hinge loss.
4. ``r * m`` and ``r * r`` summed; softplus table index.
5. ``(r * m) >> (14 + k)`` (one barrel shifter); squared loss rounded; softplus table read
   (a ROM, possibly a block RAM: its word is registered once more at 6).
6. ``r' = sat((h + 1) >> 1)``.
7. Softplus summed.
8. Sample loss selected and saturated (the loss is off the batch-boundary loop).

So ``LATENCY_RP`` = 6 and ``LATENCY_LOSS`` = 8 cycles.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.utils import ceil_log2
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from zipsgd.contract import (
    ACC, FEAT, LOSS_SAMPLE, MODEL, SIGMOID_SEGMENTS, SOFTPLUS_ENTRIES, SOFTPLUS_SHIFT,
    SOFTPLUS_TABLE, STEP_MULT, STEP_SHIFT_MAX, Loss,
)

#: The constant the core adds to every sample's dot sum (rounding of ``acc >> FEAT.frac``).
ACC_ROUND = 1 << (FEAT.frac - 1)


def sat(m, value, fmt, name):
    """Combinational saturation of ``value`` to ``fmt``; returns a new Signal.

    Decided from the bits above the format (all equal to the sign: in range), so it
    costs a few LUT levels after whatever computes ``value``, no comparator chain."""
    out = Signal(signed(fmt.width) if fmt.signed else unsigned(fmt.width), name=name)
    v = Value.cast(value)
    w, n, sv = len(v), fmt.width, v.shape().signed
    if fmt.signed:
        if not sv:                                   # unsigned: only too big
            v = Cat(v, Const(0, 1)).as_signed()
            w += 1
        if w <= n:
            m.d.comb += out.eq(v)
            return out
        top = v[n - 1:]
        ok = (top == 0) | (top == (1 << len(top)) - 1)
        m.d.comb += out.eq(Mux(ok, v[:n], Mux(v[-1], fmt.min, fmt.max)))
    else:
        if sv:                                       # negative -> 0, too big -> max
            ok = v[n:] == 0 if w > n else ~v[-1]
            m.d.comb += out.eq(Mux(ok, v[:n], Mux(v[-1], 0, fmt.max)))
        elif w <= n:
            m.d.comb += out.eq(v)
        else:
            m.d.comb += out.eq(Mux(v[n:] == 0, v[:n], fmt.max))
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
        ``r'`` (MODEL), ``LATENCY_RP`` cycles after ``i_valid``, held until the next.
    rp_copies : list of Out
        ``copies`` more registers holding ``r'`` (the engine's lane groups read one each, so
        no single register drives every multiplier of the engine; see ``core._copies``).
    loss_valid, loss_out : Out
        Sample loss (LOSS_SAMPLE), ``LATENCY_LOSS`` cycles after ``i_valid``.
    """

    LATENCY_RP = 6
    LATENCY_LOSS = 8

    def __init__(self, copies: int = 0):
        self.copies = copies
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
            **{f"rp_c{i}": Out(signed(MODEL.width)) for i in range(copies)},
        })
        self.rp_copies = [getattr(self, f"rp_c{i}") for i in range(copies)]

    def elaborate(self, platform):
        m = Module()
        one = MODEL.one
        MW = MODEL.width
        F = FEAT.frac

        def reg(value, name, shape=None):
            # data registers take no reset (valid bits, v1..v7, do): a small reset net
            r = Signal(shape if shape is not None else value.shape(), name=name,
                       reset_less=not name.startswith("v"))
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
        # squared: sat(z - y) for z in range, else sat(MAX - y) / sat(MIN - y)
        r_sq = Mux(ovf, sat(m, Mux(neg, MODEL.min, MODEL.max) - y, MODEL, "r_sq_o"),
                   sat(m, zr - y, MODEL, "r_sq_i"))
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
        # hinge: margin mg = z (y >= 0) or sat(-z); mg < one <=> z < one / z > -one
        zlt = Mux(ovf, neg, zr < one)
        zgt = Mux(ovf, ~neg, zr > -one)
        r_hg = Mux(~y[-1], Mux(zlt, -one, 0), Mux(zgt, one, 0))        # sign bits, not compares
        # the residual of the squared and hinge losses is final here; the logistic one
        # needs sigma(z) - y next stage
        rot1 = reg(Mux(self.loss == Loss.SQUARED, r_sq, r_hg), "rot1", signed(MW))
        ls1 = reg(self.loss, "ls1")
        llg1 = reg(self.loss == Loss.LOGISTIC, "llg1")
        sm1 = reg(self.step_mult, "sm1")
        k1 = reg(self.k, "k1")
        v1 = reg(self.i_valid, "v1")

        # ---- stage 2: r, softplus argument, hinge margin -----------------------------
        r_lg = sat(m, sig1 - y1, MODEL, "r_lg")
        neg_z = sat(m, -z1, MODEL, "neg_z")
        r2 = reg(Mux(llg1, r_lg, rot1), "r2", signed(MW))
        t2 = reg(Mux(y1 == 0, z1, neg_z), "t2", signed(MW))        # softplus argument
        mg2 = reg(Mux(~y1[-1], z1, neg_z), "mg2", signed(MW))      # hinge margin
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
        tn3 = reg(-t2, "tn3", signed(MW + 1))                    # |t| = max(t, -t) next stage
        t3 = reg(t2, "t3")
        hg3 = reg(one - mg2, "hg3", signed(MW + 2))             # hinge loss max(0, one - mg) next
        ls3, k3, v3 = reg(ls2, "ls3"), reg(k2, "k3"), reg(v2, "v3")

        # ---- stage 4: sums of partial products, softplus table ------------------------
        rm4 = reg((pm_hi << H) + pm_lo, "rm4", signed(MW + STEP_MULT.width + 1))
        sq4 = reg(((ps_hh << MW) + (ps_hl << (H + 1)) + ps_ll).as_unsigned(), "sq4", unsigned(2 * MW))
        # softplus table index min(|t| >> SHIFT, ENTRIES) (|t| unsaturated: same index)
        ta = Mux(t3[-1], tn3, t3).as_unsigned()
        ib = ceil_log2(SOFTPLUS_ENTRIES)
        idx4 = reg(Mux(ta[SOFTPLUS_SHIFT + ib:] != 0, SOFTPLUS_ENTRIES, ta[SOFTPLUS_SHIFT:SOFTPLUS_SHIFT + ib]),
                   "idx4", unsigned(ib + 1))
        tp4 = reg(Mux(t3[-1], 0, t3), "tp4", signed(MW))                # max(t, 0)
        hg4 = reg(Mux(hg3[-1], 0, hg3), "hg4", signed(MW + 2))
        ls4, k4, v4 = reg(ls3, "ls4"), reg(k3, "k4"), reg(v3, "v4")

        # ---- stage 5: barrel shift by k, squared loss rounded, softplus summed ---------
        # rshift_round(v, 15 + k) == ((v >> 14 >> k) + 1) >> 1 (arithmetic shifts)
        hk5 = reg(rm4[STEP_MULT.frac - 1:].as_signed() >> k4, "hk5",
                  signed(rm4.shape().width - (STEP_MULT.frac - 1)))
        lsq5 = reg(rshift_round(sq4, MODEL.frac + 1), "lsq5", unsigned(2 * MW))
        table = Array(Const(v, unsigned(MW)) for v in SOFTPLUS_TABLE + (0,))
        tab5 = reg(table[idx4], "tab5", unsigned(MW))
        tp5 = reg(tp4, "tp5")
        hg5 = reg(hg4, "hg5")
        ls5, v5 = reg(ls4, "ls5"), reg(v4, "v5")

        # ---- stage 6: r' -------------------------------------------------------------------
        rp = sat(m, (hk5 + 1) >> 1, MODEL, "rp_next")
        m.d.sync += self.rp_valid.eq(v5)
        copies = []
        for i in range(self.copies):           # kept apart by synthesis (``keep``)
            c = Signal(signed(MODEL.width), name=f"rpk{i}", reset_less=True, attrs={"keep": 1})
            m.d.comb += self.rp_copies[i].eq(c)
            copies.append(c)
        with m.If(v5):
            m.d.sync += [self.rp.eq(rp)] + [c.eq(rp) for c in copies]
        # (the table may be a block-RAM ROM: its word is registered once more)
        tab6 = reg(tab5, "tab6")
        tp6 = reg(tp5, "tp6")
        lsq6 = reg(lsq5, "lsq6")
        hg6 = reg(hg5, "hg6")
        ls6, v6 = reg(ls5, "ls6"), reg(v5, "v6")

        # ---- stage 7: softplus summed ------------------------------------------------------
        sp7 = reg(tp6 + tab6, "sp7", signed(MW + 2))
        lsq7, hg7 = reg(lsq6, "lsq7"), reg(hg6, "hg7")
        ls7, v7 = reg(ls6, "ls7"), reg(v6, "v7")

        # ---- stage 8: the sample loss selected and saturated ----------------------------
        lo = Mux(ls7 == Loss.SQUARED, lsq7, Mux(ls7 == Loss.LOGISTIC, sp7, hg7))
        lo_sat = sat(m, lo, LOSS_SAMPLE, "loss_sat")
        m.d.sync += [self.loss_valid.eq(v7), self.loss_out.eq(lo_sat)]
        return m
