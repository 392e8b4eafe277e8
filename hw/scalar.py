"""Per-sample scalar unit: dot accumulator -> step-scaled residual r' and sample loss.

Implements exactly ``reference.residual_and_loss`` followed by
``r' = sat(rshift_round(r * m, STEP_MULT.frac + k))`` (see :mod:`zipsgd.contract`), on the
label ``EngineConfig.label_value`` gives (POS_CLASS: a class index mapped to ``ONE`` or
``-ONE``/0) with the sample's multiplier ``EngineConfig.sample_mult`` (STEP_MULT for a label
above zero, else STEP_MULT_NEG unless it is 0).

The accumulator input is *pre-rounded*: ``acc = dot + 2**(FEAT.frac - 1)`` (the core starts
every sample's sum at that constant), so ``z = sat(acc >> FEAT.frac)`` needs no adder.

Pipeline (each line one register stage, at most one carry chain and a few LUT levels
deep, for 125 MHz on a slow ECP5; LATENCY is counted from ``i_valid``):

0. From the raw ``acc`` bits in parallel: whether ``z`` is out of range, ``sat(z - y)``
   and ``sat(MAX - y)`` / ``sat(MIN - y)``, each PLAN sigmoid segment's value (one constant
   add of ``z`` for both signs) and its compare (on the bits of ``z`` above the
   threshold's trailing zeros), the hinge compares; whether the label word is the
   positive class (``y == POS_CLASS - 1``, a short carry chain on the static POS_CLASS and a
   compare) and whether ``y > 0``. (The stage starts at the core's accumulator register; with
   the choices below in the same stage it ran at ~95-106 MHz.)
1. ``z`` (saturated), the residual of the squared or hinge loss, ``sigma(z)`` (the segment
   chosen by the compares); the label mapped (POS_CLASS) and the sample's multiplier chosen.
   With POS_CLASS the squared loss's residual ``sat(z - y)`` is not taken from stage 0 (it
   saw the label word, not the label): ``z`` takes the place of ``sigma(z)`` and the
   logistic loss's subtraction at 2 gives it.
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

So ``LATENCY_RP`` = 7 and ``LATENCY_LOSS`` = 9 cycles (counting stage 0).
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


def ge_const(v, c: int):
    """``v >= c`` for a constant ``c``, compared on the bits of ``v`` above the trailing zeros
    of ``c`` (``v >= C * 2**k`` <=> ``v >> k >= C``): a short compare instead of a carry chain
    as wide as ``v``."""
    if c == 0:
        return ~v[-1]
    k = (c & -c).bit_length() - 1
    return v[k:].as_signed() >= (c >> k)


def le_const(v, c: int):
    """``v <= c`` for a constant ``c`` (see :func:`ge_const`): ``v >> k < C``, or ``== C`` with
    the ``k`` low bits of ``v`` zero."""
    if c == 0:
        return v[-1] | (v == 0)
    k = (c & -c).bit_length() - 1
    hi = v[k:].as_signed()
    return (hi < (c >> k)) | ((hi == (c >> k)) & (v[:k] == 0))


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
        and label word (MODEL, or a class index when ``pos_class`` is set).
    loss : In(2)
        Loss selector (``Loss``), held for the job.
    pos_class : In(32)
        POS_CLASS (0: ``y`` is the label; ``c``: the label is ``ONE`` when ``y == c - 1``,
        else ``-ONE`` for the hinge loss, 0 for the others), held for the job.
    step_mult, step_mult_neg : In(16)
        Step multipliers ``m`` (u16, frac 15) of samples whose label is above zero / of the
        others (0: ``step_mult``), held for the job.
    k : In(range(STEP_SHIFT_MAX + 1))
        Step shift of the sample's epoch, valid with ``i_valid``.
    rp_valid, rp : Out
        ``r'`` (MODEL), ``LATENCY_RP`` cycles after ``i_valid``, held until the next.
    rp_copies : list of Out
        ``copies`` more registers holding ``r'`` (the engine's lane groups read one each, so
        no single register drives every multiplier of the engine; see ``pipe.copies``).
    loss_valid, loss_out : Out
        Sample loss (LOSS_SAMPLE), ``LATENCY_LOSS`` cycles after ``i_valid``.
    """

    LATENCY_RP = 7
    LATENCY_LOSS = 9

    def __init__(self, copies: int = 0):
        self.copies = copies
        super().__init__({
            "i_valid": In(1),
            "acc": In(signed(ACC.width)),
            "y": In(signed(MODEL.width)),
            "loss": In(2),
            "pos_class": In(32),
            "step_mult": In(STEP_MULT.width),
            "step_mult_neg": In(STEP_MULT.width),
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

        def reg(value, name, shape=None, reset=False):
            # Data registers take no reset, only the valid bits do (``reset=True``): a
            # small reset net, and a reset never leaves a stale sample marked valid.
            r = Signal(shape if shape is not None else value.shape(), name=name, reset_less=not reset)
            m.d.sync += r.eq(value)
            return r

        def valid(value, name):
            return reg(value, name, reset=True)

        # ---- stage 0: compares, adds and subtracts of z, in parallel from acc --------------
        # (the stage starts at the core's accumulator register, which may sit far away:
        # one carry chain or a few LUT levels, every result registered)
        acc, y = self.acc, self.y
        zr = Signal(signed(MW))                     # z bits, valid unless out of range
        m.d.comb += zr.eq(acc[F:F + MW].as_signed())
        hi = acc[F + MW - 1:]                       # must be sign extension of zr
        z0 = reg(zr, "z0")
        ovf0 = reg(~((hi == 0) | (hi == (1 << len(hi)) - 1)), "ovf0")
        neg0 = reg(acc[-1], "neg0")                 # z < 0 (saturated or not)
        neg = acc[-1]
        y0 = reg(y, "y0")
        # squared: sat(z - y) for z in range, else sat(MAX - y) / sat(MIN - y)
        rsq_i0 = reg(sat(m, zr - y, MODEL, "r_sq_i"), "rsq_i0", signed(MW))
        rsq_o0 = reg(sat(m, Mux(neg, MODEL.min, MODEL.max) - y, MODEL, "r_sq_o"), "rsq_o0", signed(MW))
        # logistic: the first segment whose threshold <= |z|; z >= 0: s(z), z < 0: one - s(-z)
        # (one - off) - ((-z) >> s) == (z + 2**s - 1 + (one - off) * 2**s) >> s: one adder per
        # segment, its constant chosen by the sign of z; |z| >= threshold compared on the
        # bits above the threshold's trailing zeros (short compares, no 32-bit chain)
        cands, hits = [], []
        for i, (threshold, shift, offset) in enumerate(SIGMOID_SEGMENTS):
            if shift is None:
                cand = Mux(neg, Const(0, signed(MW + 1)), Const(one, signed(MW + 1)))
            else:
                kp = offset << shift
                kn = ((1 << shift) - 1) + ((one - offset) << shift)
                cand = (zr + Mux(neg, kn, kp)) >> shift
            cands.append(reg(cand, f"sgc{i}_0", signed(MW + 1)))
            if threshold:
                hits.append(reg(Mux(neg, le_const(zr, -threshold), ge_const(zr, threshold)), f"sgh{i}_0"))
            else:
                hits.append(Const(1))
        # hinge: margin mg = z (y >= 0) or sat(-z); mg < one <=> z < one / z > -one
        zlt0 = reg(~ge_const(zr, one), "zlt0")
        zgt0 = reg(~le_const(zr, -one), "zgt0")
        ls0, sm0, k0 = reg(self.loss, "ls0"), reg(self.step_mult, "sm0"), reg(self.k, "k0")
        # POS_CLASS: is the label word the positive class (a signed word equal to c - 1, which
        # is >= 0)? the multipliers: is y > 0, is STEP_MULT_NEG set
        pc = self.pos_class
        pc_on0 = reg(pc != 0, "pc_on0")
        hit0 = reg((y.as_unsigned() == (pc - 1)[:MW]) & ~y[-1], "pc_hit0")
        ypos0 = reg(~y[-1] & (y != 0), "ypos0")
        smn0 = reg(self.step_mult_neg, "smn0")
        smn_on0 = reg(self.step_mult_neg != 0, "smn_on0")
        v0 = valid(self.i_valid, "v0")

        # ---- stage 1: z saturated, the residual candidates --------------------------------
        z_sat = Mux(ovf0, Mux(neg0, MODEL.min, MODEL.max), z0)
        z1 = reg(z_sat, "z1", signed(MW))
        # the label: the word, or (POS_CLASS) ONE for the class, else -ONE (hinge) or 0
        hinge0 = ls0 == Loss.HINGE
        y1 = reg(Mux(pc_on0, Mux(hit0, one, Mux(hinge0, -one, 0)), y0), "y1", signed(MW))
        y_neg = Mux(pc_on0, ~hit0, y0[-1])             # (hinge: the mapped label is -ONE)
        sq_pc = pc_on0 & (ls0 == Loss.SQUARED)         # squared with POS_CLASS: sat(z - y) at 2
        sig = 0
        for i, cand in enumerate(cands):            # the first segment whose compare holds
            sel = ovf0 | hits[i] if i == 0 else ~ovf0 & hits[i]
            for h in hits[:i]:
                sel = sel & ~h
            sig = sig | Mux(sel, cand, 0)
        sig1 = reg(Mux(sq_pc, z_sat, sig), "sig1", signed(MW + 1))
        zlt = Mux(ovf0, neg0, zlt0)
        zgt = Mux(ovf0, ~neg0, zgt0)
        r_hg = Mux(~y_neg, Mux(zlt, -one, 0), Mux(zgt, one, 0))         # sign bits, not compares
        # the residual of the squared (label word) and hinge losses is final here; the
        # logistic one (and the squared one of a mapped label) needs sigma(z) - y (z - y)
        # next stage
        rot1 = reg(Mux(ls0 == Loss.SQUARED, Mux(ovf0, rsq_o0, rsq_i0), r_hg), "rot1", signed(MW))
        ls1 = reg(ls0, "ls1")
        llg1 = reg((ls0 == Loss.LOGISTIC) | sq_pc, "llg1")
        # the sample's multiplier: STEP_MULT if its label is above zero, else STEP_MULT_NEG
        # (STEP_MULT when that is 0)
        pos = Mux(pc_on0, hit0, ypos0)
        sm1 = reg(Mux(pos | ~smn_on0, sm0, smn0), "sm1")
        k1 = reg(k0, "k1")
        v1 = valid(v0, "v1")

        # ---- stage 2: r, softplus argument, hinge margin -----------------------------
        r_lg = sat(m, sig1 - y1, MODEL, "r_lg")
        neg_z = sat(m, -z1, MODEL, "neg_z")
        r2 = reg(Mux(llg1, r_lg, rot1), "r2", signed(MW))
        t2 = reg(Mux(y1 == 0, z1, neg_z), "t2", signed(MW))        # softplus argument
        mg2 = reg(Mux(~y1[-1], z1, neg_z), "mg2", signed(MW))      # hinge margin
        ls2, sm2, k2, v2 = reg(ls1, "ls2"), reg(sm1, "sm2"), reg(k1, "k2"), valid(v1, "v2")

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
        ls3, k3, v3 = reg(ls2, "ls3"), reg(k2, "k3"), valid(v2, "v3")

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
        ls4, k4, v4 = reg(ls3, "ls4"), reg(k3, "k4"), valid(v3, "v4")

        # ---- stage 5: barrel shift by k, squared loss rounded, softplus summed ---------
        # rshift_round(v, 15 + k) == ((v >> 14 >> k) + 1) >> 1 (arithmetic shifts)
        hk5 = reg(rm4[STEP_MULT.frac - 1:].as_signed() >> k4, "hk5",
                  signed(rm4.shape().width - (STEP_MULT.frac - 1)))
        lsq5 = reg(rshift_round(sq4, MODEL.frac + 1), "lsq5", unsigned(2 * MW))
        table = Array(Const(v, unsigned(MW)) for v in SOFTPLUS_TABLE + (0,))
        tab5 = reg(table[idx4], "tab5", unsigned(MW))
        tp5 = reg(tp4, "tp5")
        hg5 = reg(hg4, "hg5")
        ls5, v5 = reg(ls4, "ls5"), valid(v4, "v5")

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
        ls6, v6 = reg(ls5, "ls6"), valid(v5, "v6")

        # ---- stage 7: softplus summed ------------------------------------------------------
        sp7 = reg(tp6 + tab6, "sp7", signed(MW + 2))
        lsq7, hg7 = reg(lsq6, "lsq7"), reg(hg6, "hg7")
        ls7, v7 = reg(ls6, "ls7"), valid(v6, "v7")

        # ---- stage 8: the sample loss selected and saturated ----------------------------
        lo = Mux(ls7 == Loss.SQUARED, lsq7, Mux(ls7 == Loss.LOGISTIC, sp7, hg7))
        lo_sat = sat(m, lo, LOSS_SAMPLE, "loss_sat")
        m.d.sync += [self.loss_valid.eq(v7), self.loss_out.eq(lo_sat)]
        return m
