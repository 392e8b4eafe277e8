"""The zipsgd training engine core: ``Engine(params)``.

One beat per clock in steady state. Data flow (cycle numbers are relative to the
cycle ``A`` in which the *last* beat of a sample is accepted; every latency is a
class attribute so the tests and the report can read it).

Timing rules (for 125 MHz on the open-source ECP5 estimate, a slow part): every
block-RAM output goes straight into a register; every multiplication is cut into
17 x 18 pieces whose partial products are registered (one DSP each), then summed;
a stage holds at most one carry chain plus a few LUT levels (two chained adds in
the adder trees); stream control (TREADY, acceptance) depends on registered flags
only; counters add last cycle's registered events; data registers take no reset (valid
bits, control and configuration do), so the reset net stays small.

Dot path (one beat per cycle, never stalls)
    ``A``      beat accepted and decoded (Q1 codes, registered); beat written into the
               row buffer.
    ``A+1``    model read (port ``dot``) issued at the beat address (registers loaded
               from the beat counter); codebook look-up with lane masking (feature index
               >= d, or first batch of the job: the codebook value is 0), registered at
               ``A+2`` with, for the bucket lanes, four bucket-select bits per lane.
    ``A+3``    model words in the memory's output register.
    ``A+4``    operands registered again, next to the multipliers and trees.
    multiplier path   partial products of ``q1 * x`` (``A+5``), products (``A+6``),
                      registered adder tree (2 levels/stage): ``MULT_SUM``;
    bucket path       first masked tree level (``A+5``), rest of the tree, partial
                      products ``level * S`` (S in 17-bit pieces): ``BUCKET_PARTS``;
    the shorter path is delayed to ``DOT_JOIN``; a final tree adds the bucket
    partial products and the multiplier sum; then the sample accumulator, which
    starts every sample at the rounding constant of ``z`` (``scalar.ACC_ROUND``).
    ``DOT_LATENCY`` = cycles from acceptance of a beat to the accumulator holding it.
Scalar unit (:class:`~zipsgd.hw.scalar.Scalar`)
    ``z``, residual, ``r'`` (``Scalar.LATENCY_RP`` = 7 stages) and the sample loss.
Replay / gradient / update (one beat per cycle, starts ``REPLAY_START`` cycles
after ``A`` so that its multiplier stage meets ``r'``)
    ``R0`` row-buffer read; ``R1`` its word registered; ``R2`` Q2 codes decoded
    (registered), model read for the update issued; ``R3`` codebook look-up, G read
    issued; ``R4`` partial products of ``r' * q2`` (DSP lanes; for b <= 2 the 4 lanes
    compute the level table ``r' * level_k``), the update's model word in the memory's
    output register; ``R5`` products, the G word in the memory's output register, the
    model word registered again; ``x >> l2`` and its rounding bit, forwarding decided;
    the G word registered again (a word computed three or four cycles before ``P``
    replaces it; one or two cycles before ``P``, it is taken from the forwarding registers
    at ``P``); ``R6`` (lanes 0-3: the level table registered once, then copied to the lane
    groups at ``R7``; the other multiplier lanes: operands registered again next to the
    DSP); ``R7`` select per lane (the lane's product or its code's table entry, registered);
    ``P`` add to the G accumulator (or to the rounding constant
    ``2**15`` at the first sample of a batch), registered; G written back from that
    register at ``P+1`` (not on the last sample of the batch); ``x - (x >> l2) - bit``
    (one carry chain); ``U1`` ``G >> 16``
    (wiring: the step shift ``k`` is applied to ``r'`` in the scalar unit, once per
    sample) clamped; ``U2`` subtract and saturate (registered); ``U3`` the model word
    written. ``UPDATE_LATENCY`` = R0 -> U3. Every block RAM's read goes through its
    output register and one more register, and every write comes from a register, so
    no path has both a block RAM and logic far from it.
Batch boundary
    The first beat of the next batch is accepted in the cycle the update writes
    beat 0 of the model and read the cycle after (the sweep writes one beat per cycle,
    so every later beat is read after it is written: no forwarding): ``BATCH_STALL``
    cycles with ``ready`` low per boundary (epoch boundaries cost the same): 24 at
    W = 64 (``DOT_LATENCY`` 11 + scalar 7 + 6 update stages after ``r'`` is used), 25 at
    W = 128 or with W lanes.
Configuration
    Decoded every cycle into registers (mode, its constants, the validation code,
    first-beat flags), ``CFG_SETTLE`` cycles deep: the configuration must be stable that
    long before ``start`` (the register block delays its start pulse accordingly).
    Codebook writes reach the lanes' LUT-RAM copies through a registered tree
    (``CB_WRITE_LATENCY`` cycles after ``cb_we``; a start comes later than that: one bus
    transfer plus the register block's start delay).
Status
    ``busy`` and ``done`` show one cycle after the last counted cycle (the counters
    add registered events); a refused configuration shows ``done`` at once. A stream
    fault flushes the pipeline the cycle after the faulty beat.
Fan-out
    No register drives every lane: each lane group (``REP_LANES`` lanes) or lane reads its
    own copy of r', the level table, the G-forwarding hits, the first-sample and zero
    flags, the L2 shift, the features-left count and the beat address, and each memory
    group its own copy of every address (``_copies``: loaded with the same value, marked
    ``keep`` so that synthesis does not merge them; the placer puts each next to its loads).
    Block-RAM reads of a word written in the same cycle are never used (the core forwards
    written G words itself; the dot port reads a model word after its write);
    ``poison_collisions`` inverts them in simulation to show it.

Model and G memories are one memory per *lane group*: lanes that share the
narrowest mode using them share a depth ``ceil(dim_max / F_min)``; words are
addressed ``(beat, lane)`` in the current mode, so a model is read back in
feature order by stepping the lane and then the beat.
"""

from __future__ import annotations

from amaranth.hdl import (
    Array, Cat, Const, Module, Mux, ResetInserter, Signal, signed, unsigned,
)
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from zipsgd.contract import (
    CONFIG_FIELDS, COUNTER_NAMES,
    ACC, FEAT, FULL_BITS, L2_SHIFT_MAX, LOSS_ACC, MODEL, STEP_MULT, STEP_SHIFT_MAX,
    EngineParams, Encoding, Error, Loss, beats_per_sample,
)

from .control import COUNTERS, Control, Counters, counter_port  # noqa: F401 (re-exported)
from .pipe import (
    REP_LANES, adder_tree, copies, delay, fanout_tree, fanout_tree2, pieces, split_mul, tree_sizes,
)
from .codebook import LEVELS, Codebook, lane_codebook
from .config import CFG_LAYOUT, Config
from .dot import DotProduct
from .stream_in import StreamIn, remaining_shape, token_layout
from .memories import ModelReadBack, G_BITS, LaneMemories, LossLog, RowBuffer, lane_groups
from .decode import Decoder, engine_lanes, lane_code_bits, modes, mult_lanes
from .scalar import ACC_ROUND, Scalar
from .scalar import sat as _sat

#: Cycles the configuration must be stable before a start (see ``Engine.CFG_SETTLE``).
CFG_SETTLE = Config.LATENCY
#: Cycles from a move of the model read-back pointer (``model_rewind``/``model_next``
#: seen) to ``model_data`` (the beat register, the address registers, block RAM, registered
#: words, two registered multiplexer steps); from a ``loss_addr`` change to ``loss_data``.
READBACK_LATENCY = 5
LOSS_READ_LATENCY = 2


#: Bits of model words.
X_BITS = MODEL.width
#: |H| clamp: beyond this the update saturates the same way whatever the value.
H_CLAMP = 1 << (MODEL.width + 1)


#: Copies of a lane's table-select registers (codes and bucket flag), one per slice of the
#: table multiplexer they drive.
SEL_COPIES = 4
#: Copies each register of the codebook write tree feeds (see :func:`fanout_tree`).
CB_BRANCH = 4


class Engine(wiring.Component):
    """zipsgd SGD engine core (see the module docstring for the pipeline).

    Parameters
    ----------
    params : EngineParams
        Build parameters (stream width, limits).

    Attributes
    ----------
    DOT_LATENCY, REPLAY_START, UPDATE_LATENCY, BATCH_STALL : int
        Pipeline latencies in cycles (instance attributes; they depend on W).
    """

    def __init__(self, params: EngineParams, poison_collisions: bool = False):
        if not isinstance(params, EngineParams):
            raise TypeError(f"Engine: params must be an EngineParams, not {params!r}")
        self.params = params
        #: Test aid: a memory read of a word written in the same cycle returns that word
        #: inverted, so a test shows that the engine never uses such a read (block RAMs
        #: leave it undefined; the synthesis flows treat it as don't-care).
        self.poison_collisions = poison_collisions
        self._memories = ()
        W = params.word_bits
        self.modes = modes(W, params.lanes)
        self.n_mult = mult_lanes(W)
        if self.n_mult < 4:
            raise ValueError(f"Engine: word_bits={W} gives {self.n_mult} multiplier lanes, need >= 4")
        self.groups = lane_groups(W, params.dim_max, params.lanes)
        self.lanes = engine_lanes(W, params.lanes)
        self.beats_max = max(self.engine_beats(md, params.dim_max) for md in self.modes)
        self.READBACK_LATENCY = READBACK_LATENCY
        self.LOSS_READ_LATENCY = LOSS_READ_LATENCY
        #: Cycles the configuration inputs must be stable before ``start`` (its decoded
        #: form is registered: mode, mode constants, first-beat flags; the register block
        #: delays ``start`` to guarantee it).
        self.CFG_SETTLE = CFG_SETTLE
        # Latencies (filled by _latencies(), checked again in elaborate()).
        self._latencies()
        self.rb_depth = 1 << ceil_log2(self.beats_max + self.REPLAY_START + 8)
        super().__init__({
            "i_data": In(stream.Signature(data.StructLayout({"data": W, "last": 1}))),
            "cfg": In(CFG_LAYOUT),
            "start": In(1),
            "soft_reset": In(1),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(8),
            "cb_we": In(1),
            "cb_addr": In(8),
            "cb_data": In(FEAT.width),
            "model_rewind": In(1),
            "model_next": In(1),
            "model_data": Out(32),
            "loss_addr": In(range(params.epochs_max)),
            "loss_data": Out(64),
            "epochs_done": Out(32),
            **{name: Out(64) for name in COUNTERS},
        })

    @property
    def collisions(self):
        """The memories' collision flags (see ``poison_collisions``), once elaborated."""
        return [hit for mem in self._memories for hit in mem.collisions]

    @staticmethod
    def engine_beats(md, dim: int) -> int:
        """Beats per sample as the engine takes them (a split mode's beats count twice,
        but for a last beat whose upper half holds the label alone)."""
        b = beats_per_sample(md.lanes, md.label_lanes, dim)
        if not md.split:
            return b
        return 2 * b - (1 if md.label_lanes <= md.elanes else 0)

    # ------------------------------------------------------------------------------
    def _latencies(self):
        self.dot = DotProduct(self.params, LaneMemories.READ_LATENCY)
        self.codebook = Codebook(2 * self.n_mult)
        self.CB_WRITE_LATENCY = self.codebook.WRITE_LATENCY
        # A beat reads the codebook at A+1 >= start+2; behind the register block a start
        # comes >= CFG_SETTLE + 1 cycles after the last codebook write (a bus transfer, the
        # pulse register, the start delay): the write has landed if this holds.
        assert self.CB_WRITE_LATENCY - 1 <= CFG_SETTLE + 1
        self.DOT_LATENCY = self.dot.LATENCY
        # Scalar r' is valid LATENCY_RP after the accumulator; the replay multiplier
        # stage (R3) must see it.
        self.REPLAY_START = self.DOT_LATENCY + Scalar.LATENCY_RP - 4
        # R0 -> model write at U3: R1, R2, R3, R4, R5, R6, R7, P, U1, U2, U3.
        self.UPDATE_LATENCY = 11
        # The next batch's first beat is accepted in the cycle the update writes model
        # beat 0 (and read the cycle after).
        self.BATCH_STALL = self.REPLAY_START + self.UPDATE_LATENCY - 1

    # ------------------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        p = self.params
        W = p.word_bits
        MS = self.modes
        NM = len(MS)
        M = self.n_mult
        LANES = self.lanes
        NG = -(-LANES // REP_LANES)         # lane groups reading their own register copies
        grp = lambda lane: lane // REP_LANES

        # ============================ configuration, control ========================
        config = Config(p)
        control = Control()
        m.submodules.config = config
        m.submodules.control = control
        job = config.job
        flush = control.flush
        m.d.comb += [
            config.cfg.eq(self.cfg), config.load.eq(control.load),
            control.start.eq(self.start), control.soft_reset.eq(self.soft_reset),
            control.check.eq(config.check), control.check_ok.eq(config.check_ok),
            self.busy.eq(control.busy), self.done.eq(control.done), self.error.eq(control.error),
        ]
        mode, dim, loss_sel, step_mult, l2s = job.mode, job.dim, job.loss, job.step_mult, job.l2_shift
        lanes_f, lanes_ffl, lanes_ffh = job.lanes_f, job.lanes_ffl, job.lanes_ffh
        is_split, skip_high, is_full, is_bucket, is_b1 = job.split, job.skip_high, job.full, job.bucket, job.b1
        first_last_l, first_last_h = job.first_last_l, job.first_last_h

        # ============================ codebook ======================================
        codebook = self.codebook
        m.submodules.codebook = codebook
        m.d.comb += [codebook.we.eq(self.cb_we), codebook.addr.eq(self.cb_addr), codebook.data.eq(self.cb_data)]
        lvl = codebook.levels

        # ============================ memories ======================================
        beat_w = ceil_log2(self.beats_max + 1)
        poison = self.poison_collisions
        mems = LaneMemories(W, p.dim_max, p.lanes, beat_w, poison)
        rowbuf = RowBuffer(W, self.rb_depth, poison)
        losslog = LossLog(p.epochs_max, poison)
        m.submodules.mems = mems
        m.submodules.rowbuf = rowbuf
        m.submodules.losslog = losslog
        self._memories = (mems, rowbuf, losslog)
        m.d.comb += [losslog.loss_addr.eq(self.loss_addr), self.loss_data.eq(losslog.loss_data),
                     self.epochs_done.eq(losslog.epochs_done)]

        # ============================ stream input, read-back ======================
        stream_in = StreamIn(p, beat_w, self.rb_depth)
        readback = ModelReadBack(W, LANES, beat_w)
        m.submodules.stream_in = stream_in
        m.submodules.readback = readback
        wiring.connect(m, wiring.flipped(self.i_data), stream_in.i_data)
        w0_now = Signal()           # the update writes model beat 0 this cycle (registered)
        job_end = Signal()          # the update writes the job's last model beat
        beat = stream_in.beat
        run_accept = beat.valid
        m.d.comb += [
            stream_in.idle.eq(control.idle), stream_in.run.eq(control.run),
            stream_in.drain.eq(control.drain),
            stream_in.soft_reset.eq(self.soft_reset), stream_in.load.eq(control.load),
            stream_in.decoded.eq(config.decoded), stream_in.job.eq(job),
            stream_in.w0_now.eq(w0_now), stream_in.readback_beat.eq(readback.beat_next),
            control.beat_taken.eq(run_accept), control.job_last.eq(stream_in.job_last),
            control.fault_short.eq(stream_in.fault_short), control.fault_long.eq(stream_in.fault_long),
            control.drain_last.eq(stream_in.drain_last), control.job_end.eq(job_end),
            readback.rewind.eq(self.model_rewind), readback.next.eq(self.model_next),
            readback.lanes_f_m1.eq(job.lanes_f_m1), readback.words.eq(mems.dot_words),
            self.model_data.eq(readback.data),
            mems.dot_beat.eq(stream_in.beat_addr),
            rowbuf.w_addr.eq(stream_in.rb_addr), rowbuf.w_data.eq(beat.payload.data),
            rowbuf.w_en.eq(run_accept),
        ]

        # ============================ dot product ====================================
        dot = self.dot
        m.submodules.dot = dot
        wiring.connect(m, stream_in.beat, dot.beat)
        m.d.comb += [dot.flush.eq(flush), dot.job.eq(job), dot.words.eq(mems.dot_words),
                     dot.levels.eq(codebook.levels)]
        m.d.comb += [dot.codebook[l].eq(codebook.writes[l]) for l in range(M)]
        tok_layout = token_layout(ceil_log2(self.rb_depth))
        tok0 = stream_in.sample.payload
        tok_v0 = stream_in.sample.valid

        # ============================ scalar unit ====================================
        scalar = ResetInserter(flush)(Scalar(copies=-(-M // REP_LANES)))
        m.submodules.scalar = scalar
        m.d.comb += [scalar.i_valid.eq(dot.sum.valid), scalar.acc.eq(dot.sum.payload.acc),
                     scalar.y.eq(dot.sum.payload.y),
                     scalar.loss.eq(loss_sel), scalar.step_mult.eq(step_mult),
                     scalar.k.eq(delay(m, tok0.k, self.DOT_LATENCY, "tokk"))]

        # Sample tokens: to the replay start and to the loss stage.
        tok_rp_v = delay(m, tok_v0, self.REPLAY_START, "tokrv", flush)
        tok_rp = delay(m, tok0, self.REPLAY_START, "tokr")
        tok_lo_v = delay(m, tok_v0, self.DOT_LATENCY + Scalar.LATENCY_LOSS, "toklv", flush)
        tok_lo = delay(m, tok0, self.DOT_LATENCY + Scalar.LATENCY_LOSS, "tokl")

        # ============================ loss sums ======================================
        m.d.comb += [losslog.i_valid.eq(scalar.loss_valid & tok_lo_v), losslog.i_loss.eq(scalar.loss_out),
                     losslog.i_epoch_end.eq(tok_lo.le),
                     losslog.clear.eq(control.clear)]

        # ============================ replay =========================================
        ra_active = Signal()
        ra_beat = Signal(beat_w, reset_less=True)
        ra_addr = Signal(ceil_log2(self.rb_depth), reset_less=True)
        ra_tok = Signal(tok_layout, reset_less=True)
        cur_v = Signal()
        cur_beat = Signal(beat_w)
        cur_rem = Signal(remaining_shape(p))
        cur_addr = Signal(ceil_log2(self.rb_depth))
        cur_tok = Signal(tok_layout)
        ra_half = Signal(reset_less=True)
        cur_half = Signal()
        cur_real_last = Signal()
        cur_last = Signal()
        cur_nvalid = Signal(range(W + 1))
        ra_rem = Signal(remaining_shape(p), reset_less=True)
        ra_rl = Signal(reset_less=True)
        ra_rh = Signal(reset_less=True)
        m.d.comb += [
            cur_v.eq(tok_rp_v | ra_active),
            cur_beat.eq(Mux(tok_rp_v, 0, ra_beat)),
            cur_rem.eq(Mux(tok_rp_v, dim, ra_rem)),
            cur_addr.eq(Mux(tok_rp_v, tok_rp.rbstart, ra_addr)),
            cur_tok.eq(Mux(tok_rp_v, tok_rp.as_value(), ra_tok)),
            cur_half.eq(Mux(tok_rp_v, 0, ra_half)),
            cur_real_last.eq(Mux(cur_half, Mux(tok_rp_v, first_last_h, ra_rh),
                                 Mux(tok_rp_v, first_last_l, ra_rl))),
            cur_last.eq(cur_real_last & (cur_half | skip_high)),
            cur_nvalid.eq(Mux(cur_rem <= 0, 0, Mux(cur_rem >= lanes_f, lanes_f, cur_rem))),
            rowbuf.r_addr.eq(cur_addr),
        ]
        with m.If(flush):
            m.d.sync += ra_active.eq(0)
        with m.Elif(cur_v):
            m.d.sync += [ra_active.eq(~cur_last), ra_beat.eq(cur_beat + 1), ra_half.eq(is_split & ~cur_half),
                         ra_rem.eq(cur_rem - lanes_f), ra_rl.eq(cur_rem <= lanes_ffl),
                         ra_rh.eq(cur_rem <= lanes_ffh), ra_addr.eq(cur_addr + 1), ra_tok.eq(cur_tok)]

        # Per-beat replay metadata pipeline: R1, R2, R3, R4, R5, R6, R7, P, U1, U2, U3 (model write).
        meta_layout = data.StructLayout({
            "beat": beat_w, "nvalid": range(W + 1), "fb": 1, "lb": 1, "lj": 1, "zero": 1,
            "last": 1,
        })
        meta0 = Signal(meta_layout)
        m.d.comb += [meta0.beat.eq(cur_beat), meta0.nvalid.eq(cur_nvalid), meta0.fb.eq(cur_tok.fb),
                     meta0.lb.eq(cur_tok.lb), meta0.lj.eq(cur_tok.lj), meta0.zero.eq(cur_tok.zero),
                     meta0.last.eq(cur_last)]
        R1, R2, R3, R4, R5, R6, R7, P, U1, U2, U3 = range(1, 12)
        assert U3 == self.UPDATE_LATENCY
        metas, mvs = [meta0], [cur_v & ~flush]
        for i in range(1, U3 + 1):
            mr = Signal(meta_layout, name=f"meta{i}", reset_less=True)
            vr = Signal(name=f"metav{i}")
            m.d.sync += [mr.eq(metas[-1]), vr.eq(Mux(flush, 0, mvs[-1]))]
            metas.append(mr)
            mvs.append(vr)

        # R1: the row buffer's word registered (block RAM output straight into a register).
        rbq = rowbuf.r_data
        # R2: decode Q2 codes (registered); R3: codebook look-up, multiplier-lane operands.
        dec2 = Decoder(W, which=2)
        m.submodules.dec2 = dec2
        m.d.comb += [dec2.beat.eq(rbq), dec2.mode.eq(mode)]
        c2 = [Signal(8, name=f"c2r_{l}", reset_less=True) for l in range(LANES)]
        v2 = [Signal(signed(FEAT.width), name=f"fv2_{l}", reset_less=True) for l in range(W // FULL_BITS)]
        m.d.sync += [c2[l].eq(dec2.code[l]) for l in range(LANES)]
        m.d.sync += [v2[l].eq(dec2.value[l]) for l in range(W // FULL_BITS)]
        gq = []
        for l in range(M):
            bits = lane_code_bits(W, l, only_mult=True)
            rp = lane_codebook(m, codebook.writes[M + l], bits, f"cb2_{l}")
            m.d.comb += rp.addr.eq(c2[l][:bits])
            q = rp.data
            if l < W // FULL_BITS:
                q = Mux(is_full, v2[l], q)
            if l < 4:
                q = Mux(is_bucket, lvl[l], q)
            r = Signal(signed(FEAT.width), name=f"gq{l}", reset_less=True)
            m.d.sync += r.eq(q)
            gq.append(r)
        # (the last register of each lane's codes in SEL_COPIES copies, one per slice of
        # the 50-bit table multiplexer it selects, with the lane's bucket flag)
        codes2 = [copies(m, delay(m, c2[l][:2], R7 - R3 - 1, f"c2_{l}"), SEL_COPIES, f"c2s{l}")
                  for l in range(LANES)]

        # r' * q2 at R4 (each lane group reads its own copy of r'). Lanes 0-3, whose
        # products are the level table of the bucket modes (gp[0..3]): partial products at
        # R5, their sum at R6, a copy per lane group at R7. The other lanes: operands
        # registered again at R5 (next to the multiplier), partial products at R6, sum at R7.
        # R7: each lane selects its product or its code's table entry (registered for P).
        gp = []
        tab_k = [[] for _ in range(NG)]
        for l in range(M):
            a_op, b_op = gq[l], scalar.rp_copies[grp(l)]
            if l >= 4:
                a_op, b_op = delay(m, a_op, 1, f"gq{l}"), delay(m, b_op, 1, f"rp{l}")
            psum, _ = split_mul(m, a_op, b_op, f"gp{l}")
            r = Signal(signed(FEAT.width + X_BITS), name=f"gp{l}", reset_less=True)
            m.d.sync += r.eq(psum)
            if l < 4:
                for g, c in enumerate(copies(m, r, NG, f"lvtab{l}")):
                    tab_k[g].append(c)
                r = tab_k[grp(l)][l]           # (the lane's own product: its group's copy)
            gp.append(r)

        # G read issued at P-3 (data at P-2, the memory's output register at P-1, one more
        # register for P, which takes in a word written three cycles before P); the model
        # read for the update issued at P-4 (data at P-3, output register at P-2, registered
        # for P-1): a register between each block RAM and the logic it feeds, which may sit far
        # apart. (Every memory address of the replay comes from a copy of the beat per memory.)
        m.d.comb += [mems.g_beat.eq(metas[P - 4].beat), mems.upd_beat.eq(metas[P - 5].beat)]
        g4 = mems.g_words
        xq0 = mems.upd_words
        xq = [Signal(signed(X_BITS), name=f"xq{l}", reset_less=True) for l in range(LANES)]
        m.d.sync += [xq[l].eq(xq0[l]) for l in range(LANES)]

        # P-1: the L2 term x >> l2 and its rounding bit (x = 0 in the job's first batch);
        # P: x - (x >> l2) - bit (one carry chain, the bit as carry-in), ready at U1.
        # (the L2 shift is static during a job, set at start: a copy per lane through a
        # tree of registered copies, REP_LANES per register, which may take as many cycles
        # as it needs to cross the die: the first P-1 comes REPLAY_START + R7 cycles after the
        # first beat at the earliest)
        l2s_k, lv = fanout_tree(m, l2s, LANES, "l2s", REP_LANES)
        l2s_m1_k, _ = fanout_tree(m, (l2s - 1)[:len(l2s)], LANES, "l2sm1", REP_LANES)  # the rounding bit
        l2_on_k, _ = fanout_tree(m, l2s != 0, LANES, "l2on", REP_LANES)
        assert lv < self.REPLAY_START + R7, "the L2 shift's copies must settle before its first use"
        zero_k5 = copies(m, metas[P - 2].zero, LANES, "zero5")       # metas[P - 1].zero
        ua = []
        for l in range(LANES):
            l2_on, l2s_m1 = l2_on_k[l], l2s_m1_k[l]
            xin = Mux(zero_k5[l], 0, xq[l])
            x5 = Signal(signed(X_BITS), name=f"xp{l}", reset_less=True)
            sh = Signal(signed(X_BITS), name=f"l2h{l}", reset_less=True)
            rb = Signal(name=f"l2r{l}", reset_less=True)
            m.d.sync += [x5.eq(xin), sh.eq(Mux(l2_on, xin >> l2s_k[l], 0)),
                         rb.eq(l2_on & xin.bit_select(l2s_m1, 1))]
            a_ = Signal(signed(X_BITS + 2), name=f"ua{l}", reset_less=True)
            m.d.sync += a_.eq(x5 + ~sh + ~rb)            # x - sh - rb
            ua.append(delay(m, a_, 1, f"ua{l}"))

        # R7: each lane's product or table entry, registered; P: accumulate onto the G word
        # (the memory's, or a newer one forwarded, see below).
        mp = metas[P]
        rc = Signal(signed(G_BITS))
        m.d.comb += rc.eq(1 << (FEAT.frac - 1))       # rounding constant of G >> 16
        g_we = Signal()
        m.d.comb += g_we.eq(mvs[P] & ~mp.lb)
        fwd_v = Signal()                              # a G write in the previous cycle
        fwd_addr = Signal(beat_w, reset_less=True)
        m.d.sync += [fwd_v.eq(g_we & ~flush), fwd_addr.eq(mp.beat)]
        # The G word P adds to: the rounding constant for the batch's first sample (fb);
        # else the newest of a word computed one (hit1), two (hit2), three (hit3) or four
        # (hit4) cycles before P for the same beat, or the memory's word (read at P-3; a
        # word computed at P lands at P+1). hit3 and hit4 are merged at P-1 into the register
        # after the memory's output (the words are then in fwdb, fwdc); P chooses among the
        # constant, fwd, fwdb and that register. (Merging hit2 and fb there too, so that P
        # chose between two words, put a five-way multiplexer behind the block RAM's output
        # register: 50-51 MHz after placement against 57.5-60.6.) Flags: a copy per lane and
        # 32-bit half.
        # The flags are decided two cycles before they are used and reach the lanes through
        # a two-level tree of registered copies (one register cannot reach 64 lane halves
        # spread over the die in one cycle). In terms of the stages two cycles earlier:
        # a G write happens in a cycle when the beat at P is valid and not of the batch's
        # last sample (g_we); the beat at P one cycle later is the one at P-1 now, etc.
        # (A flush in between invalidates the beat that would use them.)
        we_p1 = mvs[P - 1] & ~metas[P - 1].lb                # g_we of the next cycle
        hit1_k = fanout_tree2(m, we_p1 & ~flush & (metas[P - 1].beat == metas[P - 2].beat), 2 * LANES, "hit1")
        hit2_k = fanout_tree2(m, g_we & ~flush & (mp.beat == metas[P - 2].beat), 2 * LANES, "hit2")
        hit3_k = fanout_tree2(m, g_we & ~flush & (mp.beat == metas[P - 3].beat), 2 * LANES, "hit3")
        hit4_k = fanout_tree2(m, fwd_v & ~flush & (fwd_addr == metas[P - 3].beat), 2 * LANES, "hit4")
        fb_k = fanout_tree2(m, metas[P - 2].fb, 2 * LANES, "fbp")
        bucket_k = [copies(m, is_bucket, SEL_COPIES, f"isbk{l}") for l in range(LANES)]
        # G is written at P+1 from the register after the adder (fwd): enables and address
        # in copies loaded at P
        t_p = []
        w_p = []
        for l in range(LANES):
            g = grp(l)
            tw = len(tab_k[g][0])
            cuts = [tw * i // SEL_COPIES for i in range(SEL_COPIES + 1)]
            slices = []
            for i in range(SEL_COPIES):            # each slice selected by its own copies
                lo_, hi_ = cuts[i], cuts[i + 1]
                sel = Array(t[lo_:hi_] for t in tab_k[g])[codes2[l][i]]
                slices.append(Mux(bucket_k[l][i], sel, gp[l][lo_:hi_]) if l < M else sel)
            psel = Signal(signed(tw), name=f"ps{l}", reset_less=True)
            m.d.sync += psel.eq(Cat(*slices))
            # (``keep``: fwd and the update's copy tu below share their input, and synthesis
            # would merge a plain register into a kept copy: fwd feeds G's write port and
            # the forwarding multiplexers, tu the update, which may sit elsewhere)
            f1 = Signal(signed(G_BITS), name=f"fwd{l}", reset_less=True, attrs={"keep": 1})
            f2 = Signal(signed(G_BITS), name=f"fwdb{l}", reset_less=True)
            f3 = Signal(signed(G_BITS), name=f"fwdc{l}", reset_less=True)
            g5 = Signal(signed(G_BITS), name=f"g5_{l}", reset_less=True)
            half = [(0, G_BITS // 2), (G_BITS // 2, G_BITS)]
            k = [2 * l + h for h in range(2)]
            m.d.sync += g5.eq(Cat(*[Mux(hit3_k[k[h]], f2[a:b], Mux(hit4_k[k[h]], f3[a:b], g4[l][a:b]))
                                    for h, (a, b) in enumerate(half)]))
            base = Cat(*[Mux(fb_k[k[h]], rc[a:b], Mux(hit1_k[k[h]], f1[a:b], Mux(hit2_k[k[h]], f2[a:b], g5[a:b])))
                         for h, (a, b) in enumerate(half)]).as_signed()
            t = Signal(signed(G_BITS), name=f"t{l}")
            m.d.comb += t.eq(base + psel)
            m.d.sync += [f1.eq(t), f2.eq(f1), f3.eq(f2)]
            t_p.append(t)
            w_p.append(f1)
        m.d.comb += [mems.g_write.en.eq(g_we & ~flush), mems.g_write.beat.eq(mp.beat),
                     mems.g_write.nvalid.eq(mp.nvalid)]
        m.d.comb += [mems.g_write_data[l].eq(w_p[l]) for l in range(LANES)]

        # U1: G >> 16 (wiring) clamped to +-2**33 (beyond, the update saturates alike).
        hs = []
        for l in range(LANES):
            (tu,) = copies(m, t_p[l], 1, f"tu{l}")     # (kept apart from fwd, which feeds G)
            hf = tu[FEAT.frac:]
            top = hf[ceil_log2(H_CLAMP):]
            ok = (top == 0) | (top == (1 << len(top)) - 1)
            h = Signal(signed(ceil_log2(H_CLAMP) + 1), name=f"h{l}", reset_less=True)
            m.d.sync += h.eq(Mux(ok, hf[:len(h)].as_signed(), Mux(hf[-1], -H_CLAMP, H_CLAMP - 1)))
            hs.append(h)

        # U2: subtract and saturate (registered); U3: written into the model (a register
        # between the update's logic and the model's block RAMs, which may sit far apart).
        mu3 = metas[U3]
        xn = []
        for l in range(LANES):
            xr = Signal(signed(X_BITS), name=f"xw{l}", reset_less=True)
            m.d.sync += xr.eq(_sat(m, ua[l] - hs[l], MODEL, f"xn{l}"))
            xn.append(xr)
        # (the lanes' write enables and the beat: copies loaded at U2, as at P)
        xwe_u = Mux(flush, 0, mvs[U2]) & metas[U2].lb                # the model write (registered)
        m.d.comb += [mems.x_write.en.eq(xwe_u), mems.x_write.beat.eq(metas[U2].beat),
                     mems.x_write.nvalid.eq(metas[U2].nvalid)]
        m.d.comb += [mems.x_write_data[l].eq(xn[l]) for l in range(LANES)]
        m.d.comb += job_end.eq(mvs[U3] & mu3.lj & mu3.last)
        # "beat 0 written" computed one stage early and registered (keeps TREADY off the meta path)
        m.d.sync += w0_now.eq(~flush & mvs[U2] & metas[U2].lb & (metas[U2].beat == 0))

        # ============================ counters =======================================
        counters = Counters()
        m.submodules.counters = counters
        m.d.comb += [
            counters.clear.eq(control.clear),
            counters.events.cycles.eq(control.running),
            counters.events.stalls.eq(control.running & ~self.i_data.ready),
            counters.events.idles.eq(control.running & self.i_data.ready & ~self.i_data.valid),
            counters.events.beats.eq(stream_in.accepted),
            counters.events.samples.eq(scalar.loss_valid & tok_lo_v),
        ]
        m.d.comb += [getattr(self, name).eq(getattr(counters, name)) for name in COUNTERS]
        return m
