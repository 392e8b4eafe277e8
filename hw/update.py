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

Saturation (the SATURATED counter): each lane's flag (the subtraction left MODEL's range,
lanes below ``nvalid`` only) is registered with the word at ``WRITE_STAGE``, where an OR over
the lanes, sticky over the sample's beats, gives one event at the batch's last model beat.

The host's model words (``host``, while the engine is idle: the update's write port is
free) take the same port: a request for one lane of one beat (``one``), the word loaded
into every lane's write register in place of the update's (a multiplexer input merged into
the saturation's), ``HOST_WRITE_LATENCY`` cycles from ``host.en`` to the memory's write.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
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
#: Lanes that read one copy of the host's model word.
HOST_DATA_LANES = 16


def host_layout(beat_bits: int, lanes: int) -> data.StructLayout:
    """A host's model word: its beat and lane, and the word (MODEL)."""
    return data.StructLayout({"en": 1, "beat": beat_bits, "lane": range(lanes), "data": signed(MODEL.width)})


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
    epoch_written : Out(1)
        The update writes the last model beat of an epoch this cycle.
    saturated : Out(1)
        The update writes the last model beat of a batch this cycle, and some word of the
        batch's update saturated (an event for the SATURATED counter).
    host : In(host_layout)
        A host's model word (``en`` for one cycle; only while no update is in flight).
    """

    #: Cycles from ``host.en`` to the memory write of the word (the request registered
    #: here, then the memory's ``WRITE_LATENCY``).
    HOST_WRITE_LATENCY = 2

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
            "epoch_written": Out(1),
            "saturated": Out(1),
            "host": In(host_layout(beat_bits, L)),
        })

    def elaborate(self, platform):
        m = Module()
        L, flush, XW = self.lanes, self.flush, MODEL.width
        P, U3 = self.SUM_DELAY, self.WRITE_STAGE
        U2 = U3 - 1
        # the tags of stages 0 .. U3 (0: the model read is issued)
        tags, valids = [self.meta.payload], [self.meta.valid]
        for i in range(1, U3 + 1):
            tags.append(delay(m, tags[-1], 1, f"tag{i}"))
            valids.append(delay(m, valids[-1], 1, f"tag_valid{i}", flush))
        m.d.comb += self.x_read.eq(tags[0].beat)
        X1 = self.read_latency + 1                       # the model word registered again
        assert X1 == P - 1
        x1 = [delay(m, self.x_words[l], 1, f"x_word{l}") for l in range(L)]

        # X1: the L2 term x >> l2 and its rounding bit (x = 0 in the job's first batch);
        # P: x - (x >> l2) - bit (one carry chain, the bit as carry-in)
        l2s = self.job.l2_shift
        l2s_k, levels = fanout_tree(m, l2s, L, "l2s", REP_LANES)
        l2s_m1_k, _ = fanout_tree(m, (l2s - 1)[:len(l2s)], L, "l2sm1", REP_LANES)  # the rounding bit
        l2_on_k, _ = fanout_tree(m, l2s != 0, L, "l2on", REP_LANES)
        assert levels == self.L2_SETTLE
        zero_k = copies(m, tags[X1 - 1].zero, L, "zero")           # the zero flag at X1
        x_less_l2 = []
        for l in range(L):
            x = Mux(zero_k[l], 0, x1[l])
            x_p = Signal(signed(XW), name=f"x{l}", reset_less=True)
            l2_term = Signal(signed(XW), name=f"l2_term{l}", reset_less=True)    # x >> l2
            l2_bit = Signal(name=f"l2_bit{l}", reset_less=True)                 # ... its rounding bit
            m.d.sync += [x_p.eq(x), l2_term.eq(Mux(l2_on_k[l], x >> l2s_k[l], 0)),
                         l2_bit.eq(l2_on_k[l] & x.bit_select(l2s_m1_k[l], 1))]
            diff = Signal(signed(XW + 2), name=f"x_less_l2_{l}", reset_less=True)
            m.d.sync += diff.eq(x_p + ~l2_term + ~l2_bit)            # x - l2_term - l2_bit
            x_less_l2.append(delay(m, diff, 1, f"x_less_l2_{l}"))             # (at U2)

        # P + 1: G >> 16 (wiring) clamped
        step = []
        for l in range(L):
            (g_copy,) = copies(m, self.sum[l], 1, f"g_copy{l}")     # (kept apart from the gradient's fwd1)
            g_int = g_copy[FEAT.frac:]
            top = g_int[ceil_log2(H_CLAMP):]
            in_range = (top == 0) | (top == (1 << len(top)) - 1)
            h = Signal(signed(ceil_log2(H_CLAMP) + 1), name=f"g_step{l}", reset_less=True)
            m.d.sync += h.eq(Mux(in_range, g_int[:len(h)].as_signed(), Mux(g_int[-1], -H_CLAMP, H_CLAMP - 1)))
            step.append(h)

        # the host's word: its request registered (at U2 of no update), the word and the
        # select in copies (a select per REP_LANES lanes, a word per HOST_DATA_LANES)
        host = self.host
        h_en = Signal(name="host_en")
        h_beat = Signal.like(host.beat, name="host_beat", reset_less=True)
        h_nvalid = Signal(range(L + 1), name="host_nvalid", reset_less=True)
        m.d.sync += [h_en.eq(host.en), h_beat.eq(host.beat), h_nvalid.eq(host.lane + 1)]
        h_sel = copies(m, host.en, -(-L // REP_LANES), "host_sel")
        h_word = copies(m, host.data, -(-L // HOST_DATA_LANES), "host_word")

        # U2: subtract and saturate (registered) or the host's word; U3: written into the
        # model (a register between the update's logic and the model's block RAMs, which
        # may sit far apart); each live lane's saturation flag registered beside it
        sat_u3 = []
        for l in range(L):
            x_new = Signal(signed(XW), name=f"x_new{l}", reset_less=True)
            diff = Signal(signed(XW + 3), name=f"x_diff{l}")
            m.d.comb += diff.eq(x_less_l2[l] - step[l])
            m.d.sync += x_new.eq(Mux(h_sel[l // REP_LANES], h_word[l // HOST_DATA_LANES],
                                     sat(m, diff, MODEL, f"x_sat{l}")))
            m.d.comb += self.x_write_data[l].eq(x_new)
            top = diff[XW - 1:]
            out = Signal(name=f"x_out{l}", reset_less=True)
            m.d.sync += out.eq(~((top == 0) | (top == (1 << len(top)) - 1)) & (tags[U2].nvalid > l))
            sat_u3.append(out)
        upd_en = Mux(flush, 0, valids[U2]) & tags[U2].lb
        m.d.comb += [self.x_write.en.eq(upd_en | h_en),
                     self.x_write.beat.eq(Mux(h_en, h_beat, tags[U2].beat)),
                     self.x_write.nvalid.eq(Mux(h_en, h_nvalid, tags[U2].nvalid)),
                     self.x_write.one.eq(h_en)]
        m.d.comb += [self.job_end.eq(valids[U3] & tags[U3].lj & tags[U3].last),
                     self.epoch_written.eq(valids[U3] & tags[U3].le & tags[U3].last)]

        # U3: the batch saturated if a word of any of its last sample's beats did
        beat_sat = Signal(name="beat_sat")
        m.d.comb += beat_sat.eq(Cat(*sat_u3).any())
        sticky = Signal(name="sat_sticky")
        at_u3 = valids[U3] & tags[U3].lb
        with m.If(flush):
            m.d.sync += sticky.eq(0)
        with m.Elif(at_u3):
            m.d.sync += sticky.eq(~tags[U3].last & (sticky | beat_sat))
        m.d.comb += self.saturated.eq(at_u3 & tags[U3].last & (sticky | beat_sat))
        # "beat 0 written", computed a stage early and registered (keeps TREADY off the tags)
        w0 = Signal(name="w0_now")
        m.d.sync += w0.eq(~flush & valids[U2] & tags[U2].lb & (tags[U2].beat == 0))
        m.d.comb += self.w0_now.eq(w0)
        return m
