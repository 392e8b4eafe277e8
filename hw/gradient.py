"""The gradient sum: per beat and lane, ``G += r' * Q2_i`` over the samples of a batch.

``G`` lives in a memory (one word per beat and lane, :class:`~zipsgd.hw.memories.LaneMemories`)
and is read for each replayed beat, the term added (stage ``P``), and written back --
except at the batch's last sample, whose sum goes to the update instead. The batch's
first sample starts from the rounding constant of ``G >> FEAT.frac`` rather than the
memory.

*Forwarding.* A beat of the same index can come again before its last sum reaches the
memory (samples of one or two beats): the word added to at ``P`` is the newest of the
sums computed one (``hit1``), two (``hit2``), three (``hit3``) or four (``hit4``) cycles
before, else the memory's. The memory is read ``READ_LATENCY`` + 1 cycles before ``P`` and
written the cycle after ``P`` (from the register after the adder, ``fwd1``), so sums four
or fewer cycles old are not in it. ``hit3``/``hit4`` are merged into the register after the
memory's output register one cycle before ``P``; ``P`` then chooses among the constant,
``fwd1``, ``fwd2`` and that register (a wider merge behind the block RAM's output register
cost clock speed, see docs/engine.md). The flags are decided two cycles before their use
and reach every lane and 32-bit half through a two-level tree of registered copies (one
register cannot reach them all in one cycle).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from zipsgd.contract import FEAT, EngineParams

from .decode import engine_lanes
from .memories import G_BITS, write_layout
from .pipe import delay, fanout_tree2
from .replay import TERM_BITS, meta_layout

#: G's start at a batch's first sample: the rounding constant of ``G >> FEAT.frac``.
G_ROUND = 1 << (FEAT.frac - 1)


class GradientSum(wiring.Component):
    """Sum of each lane's gradient terms over a batch, with forwarding.

    Parameters
    ----------
    params : EngineParams
    beat_bits : int
    read_latency : int
        Cycles from ``g_read`` to ``g_words`` (the memory's).

    Members
    -------
    meta : In(stream, always_ready)
        A replayed beat's tag (:func:`~zipsgd.hw.replay.meta_layout`), ``TERM_DELAY`` cycles
        before its terms.
    flush : In(1)
    term : In(ArrayLayout(signed(TERM_BITS), lanes))
        The beat's terms (stage ``P``).
    g_read : Out(beat_bits), g_words : In
        The G memory's read port (the read issued with the tag).
    g_write : Out(write_layout), g_write_data : Out
        Its write port: the request at ``P``, the words at ``P + 1``.
    sum : Out(ArrayLayout(signed(G_BITS), lanes))
        The beat's new G words at ``P`` (the batch's sums at its last sample).
    """

    def __init__(self, params: EngineParams, beat_bits: int, read_latency: int):
        W = params.word_bits
        self.params, self.beat_bits = params, beat_bits
        self.lanes = engine_lanes(W, params.lanes)
        self.read_latency = read_latency
        #: Cycles from a beat's tag to its terms (``P``): the memory read, then one
        #: register where the older forwarded words are merged in.
        self.TERM_DELAY = read_latency + 1
        L = self.lanes
        super().__init__({
            "meta": In(stream.Signature(meta_layout(beat_bits, W), always_ready=True)),
            "flush": In(1),
            "term": In(data.ArrayLayout(signed(TERM_BITS), L)),
            "g_read": Out(beat_bits),
            "g_words": In(data.ArrayLayout(signed(G_BITS), L)),
            "g_write": Out(write_layout(beat_bits, L)),
            "g_write_data": Out(data.ArrayLayout(signed(G_BITS), L)),
            "sum": Out(data.ArrayLayout(signed(G_BITS), L)),
        })

    def elaborate(self, platform):
        m = Module()
        L, flush = self.lanes, self.flush
        P = self.TERM_DELAY
        assert P >= 4, "the forwarding below reads the tags of stages P-1 .. P-3"
        # the tags of stages 0 .. P (0: the G read is issued)
        tags, valids = [self.meta.payload], [self.meta.valid]
        for i in range(1, P + 1):
            tags.append(delay(m, tags[-1], 1, f"tag{i}"))
            valids.append(delay(m, valids[-1], 1, f"tag_valid{i}", flush))
        m.d.comb += self.g_read.eq(tags[0].beat)
        tag_p = tags[P]

        g_we = Signal()                               # P's sum is written back to G
        m.d.comb += g_we.eq(valids[P] & ~tag_p.lb)
        wrote = Signal()                              # a G write in the previous cycle
        wrote_beat = Signal(self.beat_bits, reset_less=True)
        m.d.sync += [wrote.eq(g_we & ~flush), wrote_beat.eq(tag_p.beat)]
        # The hit flags, decided two cycles before their use, in terms of that cycle's
        # stages: a sum is written in a cycle when the beat at P is valid and not of its
        # batch's last sample (g_we); the beat at P one cycle later is the one at P-1 now.
        # (A flush in between invalidates the beat that would use them.)
        g_we_next = valids[P - 1] & ~tags[P - 1].lb                # g_we of the next cycle
        n = 2 * L                                            # a copy per lane and 32-bit half
        hit1 = fanout_tree2(m, g_we_next & ~flush & (tags[P - 1].beat == tags[P - 2].beat), n, "hit1")
        hit2 = fanout_tree2(m, g_we & ~flush & (tag_p.beat == tags[P - 2].beat), n, "hit2")
        hit3 = fanout_tree2(m, g_we & ~flush & (tag_p.beat == tags[P - 3].beat), n, "hit3")
        hit4 = fanout_tree2(m, wrote & ~flush & (wrote_beat == tags[P - 3].beat), n, "hit4")
        first = fanout_tree2(m, tags[P - 2].fb, n, "first")

        halves = [(0, G_BITS // 2), (G_BITS // 2, G_BITS)]
        for l in range(L):
            # (``keep``: fwd1 and the update's copy of the sum load the same value, and
            # synthesis would merge a plain register into a kept copy: fwd1 feeds G's write
            # port and the forwarding multiplexers, the update's copy the update)
            fwd1 = Signal(signed(G_BITS), name=f"fwd1_{l}", reset_less=True, attrs={"keep": 1})
            fwd2 = Signal(signed(G_BITS), name=f"fwd2_{l}", reset_less=True)
            fwd3 = Signal(signed(G_BITS), name=f"fwd3_{l}", reset_less=True)
            g_mem = Signal(signed(G_BITS), name=f"g_mem{l}", reset_less=True)  # memory, hit3, hit4
            k = [2 * l + h for h in range(2)]
            m.d.sync += g_mem.eq(Cat(*[Mux(hit3[k[h]], fwd2[a:b], Mux(hit4[k[h]], fwd3[a:b], self.g_words[l][a:b]))
                                       for h, (a, b) in enumerate(halves)]))
            base = Cat(*[Mux(first[k[h]], (G_ROUND >> a) & ((1 << (b - a)) - 1), Mux(hit1[k[h]], fwd1[a:b], Mux(hit2[k[h]], fwd2[a:b], g_mem[a:b])))
                         for h, (a, b) in enumerate(halves)]).as_signed()
            gsum = Signal(signed(G_BITS), name=f"gsum{l}")
            m.d.comb += gsum.eq(base + self.term[l])
            m.d.sync += [fwd1.eq(gsum), fwd2.eq(fwd1), fwd3.eq(fwd2)]
            m.d.comb += [self.sum[l].eq(gsum), self.g_write_data[l].eq(fwd1)]
        m.d.comb += [self.g_write.en.eq(g_we & ~flush), self.g_write.beat.eq(tag_p.beat),
                     self.g_write.nvalid.eq(tag_p.nvalid)]
        return m
