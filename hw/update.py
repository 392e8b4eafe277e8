"""The model update, once per batch and beat: ``x = sat(x - round(G >> 16) - round(x >> l2))``.

For each beat of a batch's last sample (the only one whose G sums are final), the
model's words are read early enough to meet the sums (``SUM_DELAY``), the L2 term is taken
off them (``x = 0`` in the job's first batch: the model starts at zero and is never read
there), then ``G >> FEAT.frac`` -- a wiring shift: the sums start at the rounding constant
(:data:`~zipsgd.hw.gradient.G_ROUND`) -- clamped, subtracted, saturated and written back.

Stages, from the cycle a beat's tag arrives (its model read is issued then):

* ``read_latency`` + 1: the model word registered again (next to this logic, which
  may sit far from the block RAMs); ``x >> l2`` and its rounding bit registered.
* ``SUM_DELAY`` (``P``): ``x - (x >> l2) - bit`` (one carry chain, the bit as carry in);
  the G sums arrive and are copied (a register apart from the gradient's, next to this
  logic).
* ``P + 1``: ``G >> 16`` clamped to ``+-H_CLAMP`` (beyond, the update saturates alike).
* ``P + 2``: subtracted and saturated, registered; the write requested.
* ``WRITE_STAGE`` (``P + 3``): the word written.

The L2 shift is static during a job: each lane reads its own copy, through a tree of
registered copies (``REP_LANES`` per register) that takes ``L2_SETTLE`` cycles after a start.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from zipsgd.contract import FEAT, MODEL, EngineParams

from .config import settings_layout
from .decode import engine_lanes
from .memories import G_BITS, write_layout
from .pipe import REP_LANES, copies, delay, fanout_tree, tree_sizes
from .replay import meta_layout
from .scalar import sat

#: |G >> 16| clamp: beyond this the update saturates the same way whatever the value.
H_CLAMP = 1 << (MODEL.width + 1)


class ModelUpdate(wiring.Component):
    """The model update of each beat of a batch's last sample.

    Parameters
    ----------
    params : EngineParams
    beat_bits : int
    read_latency : int
        Cycles from ``x_read`` to ``x_words`` (the memory's).

    Members
    -------
    meta : In(stream, always_ready)
        A replayed beat's tag (:func:`~zipsgd.hw.replay.meta_layout`), ``SUM_DELAY`` cycles
        before its G sums.
    flush : In(1)
    job : In(settings_layout)
        The job's settings (``l2_shift``).
    x_read : Out(beat_bits), x_words : In
        The model memory's read port (the read issued with the tag).
    sum : In(ArrayLayout(signed(G_BITS), lanes))
        The beat's G sums.
    x_write : Out(write_layout), x_write_data : Out
        The model memory's write port: the request at ``WRITE_STAGE - 1``, the words at
        ``WRITE_STAGE``.
    w0_now : Out(1)
        The update writes beat 0 of the model this cycle (a register): the next batch may
        start.
    job_end : Out(1)
        The update writes the job's last model beat this cycle.
    """

    def __init__(self, params: EngineParams, beat_bits: int, read_latency: int):
        W = params.word_bits
        self.params, self.beat_bits, self.read_latency = params, beat_bits, read_latency
        self.lanes = engine_lanes(W, params.lanes)
        #: Cycles from a beat's tag to its G sums: the memory read, the word registered
        #: again, then the L2 term.
        self.SUM_DELAY = read_latency + 2
        #: Cycles from a beat's tag to the model write: the clamp, the subtraction, the
        #: write register.
        self.WRITE_STAGE = self.SUM_DELAY + 3
        #: Cycles from a start to every lane's copy of the L2 shift.
        self.L2_SETTLE = len(tree_sizes(self.lanes, REP_LANES))
        L = self.lanes
        words = data.ArrayLayout(signed(MODEL.width), L)
        super().__init__({
            "meta": In(stream.Signature(meta_layout(beat_bits, W), always_ready=True)),
            "flush": In(1),
            "job": In(settings_layout(params)),
            "x_read": Out(beat_bits),
            "x_words": In(words),
            "sum": In(data.ArrayLayout(signed(G_BITS), L)),
            "x_write": Out(write_layout(beat_bits, L)),
            "x_write_data": Out(words),
            "w0_now": Out(1),
            "job_end": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        L, flush, XW = self.lanes, self.flush, MODEL.width
        P, U3 = self.SUM_DELAY, self.WRITE_STAGE
        U2 = U3 - 1
        # the tags of stages 0 .. U3 (0: the model read is issued)
        metas, mvs = [self.meta.payload], [self.meta.valid]
        for i in range(1, U3 + 1):
            metas.append(delay(m, metas[-1], 1, f"umeta{i}"))
            mvs.append(delay(m, mvs[-1], 1, f"umetav{i}", flush))
        m.d.comb += self.x_read.eq(metas[0].beat)
        X1 = self.read_latency + 1                       # the model word registered again
        assert X1 == P - 1
        x1 = [delay(m, self.x_words[l], 1, f"xq{l}") for l in range(L)]

        # X1: the L2 term x >> l2 and its rounding bit (x = 0 in the job's first batch);
        # P: x - (x >> l2) - bit (one carry chain, the bit as carry-in)
        l2s = self.job.l2_shift
        l2s_k, levels = fanout_tree(m, l2s, L, "l2s", REP_LANES)
        l2s_m1_k, _ = fanout_tree(m, (l2s - 1)[:len(l2s)], L, "l2sm1", REP_LANES)  # the rounding bit
        l2_on_k, _ = fanout_tree(m, l2s != 0, L, "l2on", REP_LANES)
        assert levels == self.L2_SETTLE
        zero_k = copies(m, metas[X1 - 1].zero, L, "zero5")           # the zero flag at X1
        ua = []
        for l in range(L):
            l2_on, l2s_m1 = l2_on_k[l], l2s_m1_k[l]
            xin = Mux(zero_k[l], 0, x1[l])
            x5 = Signal(signed(XW), name=f"xp{l}", reset_less=True)
            sh = Signal(signed(XW), name=f"l2h{l}", reset_less=True)
            rb = Signal(name=f"l2r{l}", reset_less=True)
            m.d.sync += [x5.eq(xin), sh.eq(Mux(l2_on, xin >> l2s_k[l], 0)),
                         rb.eq(l2_on & xin.bit_select(l2s_m1, 1))]
            a_ = Signal(signed(XW + 2), name=f"ua{l}", reset_less=True)
            m.d.sync += a_.eq(x5 + ~sh + ~rb)            # x - sh - rb
            ua.append(delay(m, a_, 1, f"ua{l}"))         # (at U2)

        # P + 1: G >> 16 (wiring) clamped
        hs = []
        for l in range(L):
            (tu,) = copies(m, self.sum[l], 1, f"tu{l}")     # (kept apart from the gradient's fwd1)
            hf = tu[FEAT.frac:]
            top = hf[ceil_log2(H_CLAMP):]
            ok = (top == 0) | (top == (1 << len(top)) - 1)
            h = Signal(signed(ceil_log2(H_CLAMP) + 1), name=f"h{l}", reset_less=True)
            m.d.sync += h.eq(Mux(ok, hf[:len(h)].as_signed(), Mux(hf[-1], -H_CLAMP, H_CLAMP - 1)))
            hs.append(h)

        # U2: subtract and saturate (registered); U3: written into the model (a register
        # between the update's logic and the model's block RAMs, which may sit far apart)
        for l in range(L):
            xr = Signal(signed(XW), name=f"xw{l}", reset_less=True)
            m.d.sync += xr.eq(sat(m, ua[l] - hs[l], MODEL, f"xn{l}"))
            m.d.comb += self.x_write_data[l].eq(xr)
        m.d.comb += [self.x_write.en.eq(Mux(flush, 0, mvs[U2]) & metas[U2].lb),
                     self.x_write.beat.eq(metas[U2].beat), self.x_write.nvalid.eq(metas[U2].nvalid)]
        m.d.comb += self.job_end.eq(mvs[U3] & metas[U3].lj & metas[U3].last)
        # "beat 0 written", computed a stage early and registered (keeps TREADY off the tags)
        w0 = Signal(name="w0_now")
        m.d.sync += w0.eq(~flush & mvs[U2] & metas[U2].lb & (metas[U2].beat == 0))
        m.d.comb += self.w0_now.eq(w0)
        return m
