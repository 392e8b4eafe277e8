"""The replay: each sample's beats read back from the row buffer once its ``r'`` is known,
and each lane's gradient term ``r' * Q2_i``.

A sample's token arrives (``sample``) when its first beat is to be replayed, timed so that
the multipliers meet ``r'`` (stage ``RP_STAGE``); the sample's beats then follow one per
cycle (a split mode's halves as the stream input took them). Every replayed beat carries a
tag (:func:`meta_layout`: its index, lanes, and the sample's place in its batch and job)
for the gradient sum and the update downstream.

Stages, from the cycle ``R0`` a beat's row-buffer read is issued:

* ``R0 + ROWBUF_LATENCY`` (R2): the beat's Q2 codes decoded, registered.
* R3: codebook read (the FULL value; in the bucket modes, the first ``LEVELS`` lanes read
  level ``l`` instead: their products form the level table), registered.
* R4 (``RP_STAGE``): ``level * r'`` in partial products (each group of ``REP_LANES`` lanes
  reads its own copy of ``r'``); the table lanes' products at R6, a copy per lane group at
  R7; the other lanes' operands are registered again next to their multiplier first (their
  products at R7).
* R7: each lane's term chosen, registered: its own product, or in the bucket modes its
  code's entry of the level table (``LATENCY`` = 8: the term at ``P`` = R8).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from zipsgd.contract import FEAT, FULL_BITS, MODEL, EngineParams

from .codebook import LEVELS, WRITE, lane_codebook
from .config import settings_layout
from .decode import BUCKET_BITS_MAX, engine_lanes, lane_code_bits, mult_lanes, registered_decoder
from .pipe import REP_LANES, copies, delay, split_mul
from .stream_in import remaining_shape, token_layout

#: Copies of a lane's table-select registers (codes and bucket flag), one per slice of the
#: table multiplexer they drive.
SEL_COPIES = 4
#: Bits of a gradient term (a level times r').
TERM_BITS = FEAT.width + MODEL.width


def meta_layout(beat_bits: int, word_bits: int) -> data.StructLayout:
    """A replayed beat's tag."""
    return data.StructLayout({
        "beat": beat_bits,               # its index in the sample
        "nvalid": range(word_bits + 1),  # lanes that carry a feature
        "fb": 1,                         # the sample is the first of its batch
        "lb": 1,                         # ... the last of its batch
        "le": 1,                         # ... the last of its epoch
        "lj": 1,                         # ... the last of the job
        "zero": 1,                       # ... in the job's first batch (the model is 0)
        "last": 1,                       # the beat is the sample's last
    })


class Replay(wiring.Component):
    """Replay of each sample's beats and their gradient terms.

    Parameters
    ----------
    params : EngineParams
    beat_bits : int
    rb_depth : int
        Words of the row buffer.
    rowbuf_latency : int
        Cycles from ``rb_addr`` to ``rb_data``.

    Members
    -------
    sample : In(stream, always_ready)
        A sample's token (:func:`~zipsgd.hw.stream_in.token_layout`): replay its beats.
    flush : In(1)
    job : In(settings_layout)
    rb_addr : Out, rb_data : In
        The row buffer's read port.
    rp : In(ArrayLayout(signed(MODEL.width), groups))
        ``r'`` of the sample, a copy per group of ``REP_LANES`` multiplier lanes, valid from
        ``RP_STAGE`` cycles after the sample's token.
    codebook : In(ArrayLayout(WRITE, mult lanes)), levels : In
        Codebook writes for the lanes' copies; the bucket modes' levels.
    meta : Out(stream, always_ready)
        The tag of the beat whose read is issued (:func:`meta_layout`), at R0.
    term : Out(ArrayLayout(signed(TERM_BITS), lanes))
        The beat's gradient terms, ``LATENCY`` cycles after its tag.
    """

    #: Stage whose multipliers read ``r'``.
    RP_STAGE = 4
    #: Cycles from a beat's tag to its terms.
    LATENCY = 8

    def __init__(self, params: EngineParams, beat_bits: int, rb_depth: int, rowbuf_latency: int):
        W = params.word_bits
        self.params, self.beat_bits, self.rb_depth = params, beat_bits, rb_depth
        self.rowbuf_latency = rowbuf_latency
        self.lanes = engine_lanes(W, params.lanes)
        self.n_mult = mult_lanes(W)
        if self.n_mult < LEVELS:
            raise ValueError(f"Replay: word_bits={W} gives {self.n_mult} multiplier lanes, "
                             f"need >= {LEVELS} (the level table)")
        self.groups = -(-self.n_mult // REP_LANES)
        rb_bits = ceil_log2(rb_depth)
        super().__init__({
            "sample": In(stream.Signature(token_layout(rb_bits), always_ready=True)),
            "flush": In(1),
            "job": In(settings_layout(params)),
            "rb_addr": Out(rb_bits),
            "rb_data": In(W),
            "rp": In(data.ArrayLayout(signed(MODEL.width), self.groups)),
            "codebook": In(data.ArrayLayout(WRITE, self.n_mult)),
            "levels": In(data.ArrayLayout(signed(FEAT.width), LEVELS)),
            "meta": Out(stream.Signature(meta_layout(beat_bits, W), always_ready=True)),
            "term": Out(data.ArrayLayout(signed(TERM_BITS), self.lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        p, job, flush = self.params, self.job, self.flush
        W = p.word_bits
        L, M = self.lanes, self.n_mult
        groups = -(-L // REP_LANES)
        grp = lambda lane: lane // REP_LANES
        rb_bits = ceil_log2(self.rb_depth)
        tok_valid, tok = self.sample.valid, self.sample.payload

        # ---- the sequencer: a sample's first beat from its token, the next from registers
        replaying = Signal()                    # a sample's beats are being replayed
        next_beat = Signal(self.beat_bits, reset_less=True)
        next_addr = Signal(rb_bits, reset_less=True)
        next_tok = Signal(token_layout(rb_bits), reset_less=True)
        next_half = Signal(reset_less=True)
        next_rem = Signal(remaining_shape(p), reset_less=True)
        next_last_lo = Signal(reset_less=True)
        next_last_hi = Signal(reset_less=True)
        cur_v = Signal()
        cur_beat = Signal(self.beat_bits)
        cur_rem = Signal(remaining_shape(p))
        cur_addr = Signal(rb_bits)
        cur_tok = Signal(token_layout(rb_bits))
        cur_half = Signal()
        cur_last_bus = Signal()
        cur_last = Signal()
        cur_nvalid = Signal(range(W + 1))
        m.d.comb += [
            cur_v.eq(tok_valid | replaying),
            cur_beat.eq(Mux(tok_valid, 0, next_beat)),
            cur_rem.eq(Mux(tok_valid, job.dim, next_rem)),
            cur_addr.eq(Mux(tok_valid, tok.rbstart, next_addr)),
            cur_tok.eq(Mux(tok_valid, tok.as_value(), next_tok)),
            cur_half.eq(Mux(tok_valid, 0, next_half)),
            cur_last_bus.eq(Mux(cur_half, Mux(tok_valid, job.first_last_h, next_last_hi),
                                 Mux(tok_valid, job.first_last_l, next_last_lo))),
            cur_last.eq(cur_last_bus & (cur_half | job.skip_high)),
            cur_nvalid.eq(Mux(cur_rem <= 0, 0, Mux(cur_rem >= job.lanes_f, job.lanes_f, cur_rem))),
            self.rb_addr.eq(cur_addr),
        ]
        with m.If(flush):
            m.d.sync += replaying.eq(0)
        with m.Elif(cur_v):
            m.d.sync += [replaying.eq(~cur_last), next_beat.eq(cur_beat + 1), next_half.eq(job.split & ~cur_half),
                         next_rem.eq(cur_rem - job.lanes_f), next_last_lo.eq(cur_rem <= job.lanes_ffl),
                         next_last_hi.eq(cur_rem <= job.lanes_ffh), next_addr.eq(cur_addr + 1), next_tok.eq(cur_tok)]
        meta = self.meta.payload
        m.d.comb += [self.meta.valid.eq(cur_v & ~flush),
                     meta.beat.eq(cur_beat), meta.nvalid.eq(cur_nvalid), meta.fb.eq(cur_tok.fb),
                     meta.lb.eq(cur_tok.lb), meta.le.eq(cur_tok.le), meta.lj.eq(cur_tok.lj), meta.zero.eq(cur_tok.zero),
                     meta.last.eq(cur_last)]

        # ---- the beat's Q2 codes (R2, registered at R3), the lanes' levels (R4)
        R2 = self.rowbuf_latency
        R3, R4, R7 = R2 + 1, R2 + 2, self.LATENCY - 1
        assert R4 == self.RP_STAGE
        code, full = registered_decoder(m, W, 2, self.rb_data, job.mode, L)
        level = []
        for l in range(M):
            bits = lane_code_bits(W, l, only_mult=True)
            rp = lane_codebook(m, self.codebook[l], bits, f"cb2_{l}")
            m.d.comb += rp.addr.eq(code[l][:bits])
            q = rp.data
            if l < W // FULL_BITS:
                q = Mux(job.full, full[l], q)
            if l < LEVELS:                         # the level table's lanes
                q = Mux(job.bucket, self.levels[l], q)
            r = Signal(signed(FEAT.width), name=f"q2_level{l}", reset_less=True)
            m.d.sync += r.eq(q)
            level.append(r)
        # the lanes' codes at R7, in SEL_COPIES copies (one per slice of the table
        # multiplexer they select)
        sel_codes = [copies(m, delay(m, code[l][:BUCKET_BITS_MAX], R7 - R3 - 1, f"c2d_{l}"), SEL_COPIES, f"sel_code{l}")
                     for l in range(L)]

        # ---- level * r' (R4): the table lanes first (products at R6, a copy per lane
        # group at R7), the others with their operands registered again next to the
        # multiplier (products at R7)
        prod = []
        table = [[] for _ in range(groups)]        # each lane group's copy of the level table
        for l in range(M):
            a_op, b_op = level[l], self.rp[grp(l)]
            if l >= LEVELS:
                a_op, b_op = delay(m, a_op, 1, f"q2_level{l}"), delay(m, b_op, 1, f"rp{l}")
            psum, _ = split_mul(m, a_op, b_op, f"q2_prod{l}")
            r = Signal(signed(TERM_BITS), name=f"q2_prod{l}", reset_less=True)
            m.d.sync += r.eq(psum)
            if l < LEVELS:
                for g, c in enumerate(copies(m, r, groups, f"table{l}")):
                    table[g].append(c)
                r = table[grp(l)][l]           # (the lane's own product: its group's copy)
            prod.append(r)

        # ---- R7: each lane's term, registered (a slice per copy of its selects)
        bucket_k = [copies(m, job.bucket, SEL_COPIES, f"sel_bucket{l}") for l in range(L)]
        cuts = [TERM_BITS * i // SEL_COPIES for i in range(SEL_COPIES + 1)]
        for l in range(L):
            g = grp(l)
            slices = []
            for i in range(SEL_COPIES):
                lo, hi = cuts[i], cuts[i + 1]
                sel = Array(t[lo:hi] for t in table[g])[sel_codes[l][i]]
                slices.append(Mux(bucket_k[l][i], sel, prod[l][lo:hi]) if l < M else sel)
            term = Signal(signed(TERM_BITS), name=f"term{l}", reset_less=True)
            m.d.sync += term.eq(Cat(*slices))
            m.d.comb += self.term[l].eq(term)
        return m
