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

from .decode import Decoder, engine_lanes, lane_code_bits, modes, mult_lanes
from .scalar import ACC_ROUND, Scalar
from .scalar import sat as _sat

#: Configuration register fields the core sees (32-bit unsigned each).
CFG_FIELDS = CONFIG_FIELDS
CFG_LAYOUT = data.StructLayout({name: 32 for name in CFG_FIELDS})
#: Cycles the configuration must be stable before a start (see ``Engine.CFG_SETTLE``).
CFG_SETTLE = 3
#: Cycles from a move of the model read-back pointer (``model_rewind``/``model_next``
#: seen) to ``model_data`` (the beat register, the address registers, block RAM, registered
#: words, two registered multiplexer steps); from a ``loss_addr`` change to ``loss_data``.
READBACK_LATENCY = 5
LOSS_READ_LATENCY = 2


def counter_port(name: str) -> str:
    """Engine port of a contract counter name (``"BEATS"`` -> ``"cnt_beats"``)."""
    return f"cnt_{name.lower()}"


#: The counter ports, in the contract's order.
COUNTERS = tuple(counter_port(n) for n in COUNTER_NAMES)

#: Bits of G / model words.
G_BITS = ACC.width
X_BITS = MODEL.width
#: |H| clamp: beyond this the update saturates the same way whatever the value.
H_CLAMP = 1 << (MODEL.width + 1)


def lane_groups(word_bits: int, dim_max: int, lanes: int | None = None):
    """Lane groups ``(first_lane, n_lanes, depth)`` of the model / G memories."""
    ms = modes(word_bits, lanes)
    groups = []
    for lane in range(engine_lanes(word_bits, lanes)):
        f_min = min(md.elanes for md in ms if md.elanes > lane)
        depth = -(-dim_max // f_min)
        if groups and groups[-1][2] == depth:
            lo, n, d = groups[-1]
            groups[-1] = (lo, n + 1, d)
        else:
            groups.append((lane, 1, depth))
    return groups


def _tree(m, inputs, name, levels_per_stage=2):
    """Registered adder tree; returns (sum signal, stages). ``inputs`` are values."""
    level = list(inputs)
    stages = 0
    while len(level) > 1:
        for _ in range(levels_per_stage):
            if len(level) == 1:
                break
            nxt = []
            for i in range(0, len(level) - 1, 2):
                nxt.append(level[i] + level[i + 1])
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        regs = []
        for i, v in enumerate(level):
            r = Signal(v.shape(), name=f"{name}_s{stages}_{i}", reset_less=True)
            m.d.sync += r.eq(v)
            regs.append(r)
        level = regs
        stages += 1
    return level[0], stages


def _delay(m, value, n, name, flush=None):
    """``value`` delayed by ``n`` registers (cleared by ``flush`` and by reset when given: a
    valid bit; data registers take no reset, which keeps the reset net's fan-out small)."""
    prev = value
    for i in range(n):
        r = Signal(prev.shape(), name=f"{name}_d{i + 1}", reset_less=flush is None)
        m.d.sync += r.eq(prev if flush is None else Mux(flush, 0, prev))
        prev = r
    return prev


#: Lanes that read one copy of a register every lane needs (see :func:`_copies`).
REP_LANES = 4
#: Copies of a lane's table-select registers (codes and bucket flag), one per slice of the
#: table multiplexer they drive.
SEL_COPIES = 4
#: Copies each register of the codebook write tree feeds (see :func:`_fanout_tree`).
CB_BRANCH = 4


def _copies(m, value, n, name, en=None):
    """``n`` registers all loaded with ``value`` (when ``en``): copies of one register for
    the lane groups. A single register read by every lane drives 1,000-2,000 loads spread
    over the whole chip; each copy drives one lane group's and is placed next to it.
    ``keep`` stops Vivado from merging them (the Yosys flows mark their flip-flops, see
    ``build.KEEP_COPIES``). Data registers: no reset."""
    regs = [Signal(value.shape(), name=f"{name}_k{i}", reset_less=True, attrs={"keep": 1})
            for i in range(n)]
    upd = [r.eq(value) for r in regs]
    if en is None:
        m.d.sync += upd
    else:
        with m.If(en):
            m.d.sync += upd
    return regs


def _tree_sizes(n, branch):
    """Copies per level of :func:`_fanout_tree`, from the leaves up."""
    sizes = [n]
    while sizes[-1] > branch:
        sizes.append(-(-sizes[-1] // branch))
    return sizes


def _fanout_tree(m, value, n, name, branch):
    """``n`` copies of ``value`` through a tree of registered copies, each feeding at most
    ``branch`` of the next level; returns (leaves, levels = cycles of latency)."""
    sizes = _tree_sizes(n, branch)
    level = [value]
    for depth, size in enumerate(reversed(sizes)):
        nxt = []
        for i in range(size):
            parent = level[i * len(level) // size]
            nxt += _copies(m, parent, 1, f"{name}_t{depth}_{i}")
        level = nxt
    return level, len(sizes)


#: Unsigned bits of the low pieces of a split multiplication (17 x 18 fits one DSP).
PIECE = 17


def _tree2(m, value, n, name):
    """``n`` copies of ``value`` two cycles later, through a two-level registered tree."""
    branch = 1
    while branch * branch < n:
        branch += 1
    leaves, levels = _fanout_tree(m, value, n, name, branch)
    assert levels == 2 and len(leaves) == n
    return leaves


def _pieces(width: int):
    """(lo, hi) bit ranges splitting a signed ``width``-bit operand into 17-bit unsigned
    pieces and a signed top piece of at most 18 bits."""
    out, lo = [], 0
    while width - lo > 18:
        out.append((lo, lo + PIECE))
        lo += PIECE
    out.append((lo, width))
    return out


def _split_mul(m, a, b, name):
    """Registered partial products of ``a * b`` (``b`` cut into :func:`_pieces`); returns
    their shifted sum as an expression (the caller registers it: 2 stages in all)."""
    parts = []
    bw = b.shape().width
    pcs = _pieces(bw)
    for i, (lo, hi) in enumerate(pcs):
        piece = b[lo:hi].as_signed() if hi == bw else Cat(b[lo:hi], Const(0, 1)).as_signed()
        r = Signal(signed(a.shape().width + piece.shape().width), name=f"{name}_p{i}", reset_less=True)
        m.d.sync += r.eq(a * piece)
        parts.append((r, lo))
    acc = None
    for r, lo in parts:
        v = r << lo if lo else r
        acc = v if acc is None else acc + v
    return acc, parts


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
        # bucket sums S: X_BITS + log2(lanes per tree) bits, multiplied in 17-bit pieces
        self.s_bits = X_BITS + 1 + ceil_log2((self.lanes - self.n_mult) // 2)
        self.s_pieces = len(_pieces(self.s_bits))
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
        # Cycles are counted from A, the cycle a beat is accepted. A+1: beat register and
        # model words (EBR out); A+2: operands registered (codes decoded, codebook read,
        # model words registered); A+3: partial products (17 x 17 pieces, one DSP each);
        # A+4: products; then the registered adder tree (2 levels per stage).
        # A+3: the model word (or the forwarded one) registered again, next to the
        # multipliers and the bucket trees (the block RAMs may sit far from them), with the
        # codebook value and the bucket selects; A+4: partial products; A+5: products.
        self.MULT_SUM = 6 + -(-ceil_log2(self.n_mult) // 2)          # msum registered
        # bucket lanes (past the multipliers): first tree level at A+4, the rest of the
        # tree, then the partial products level * S (S in 17-bit pieces) one stage later
        n_bl = (self.lanes - self.n_mult) // 2
        self.BUCKET_PARTS = 6 + -(-ceil_log2(n_bl) // 2)
        self.DOT_JOIN = max(self.MULT_SUM, self.BUCKET_PARTS)
        # codebook writes: the input registers, then the tree to the lanes' copies
        self.CB_WRITE_LATENCY = 1 + len(_tree_sizes(2 * self.n_mult, CB_BRANCH))
        # A beat reads the codebook at A+1 >= start+2; behind the register block a start
        # comes >= CFG_SETTLE + 1 cycles after the last codebook write (a bus transfer, the
        # pulse register, the start delay): the write has landed if this holds.
        assert self.CB_WRITE_LATENCY - 1 <= CFG_SETTLE + 1
        # final tree: the bucket partial products and msum; then the sample accumulator
        self.FINAL_TREE = -(-ceil_log2(4 * self.s_pieces + 1) // 2)
        self.DOT_LATENCY = self.DOT_JOIN + self.FINAL_TREE + 1
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

        # ============================ configuration latch ===========================
        cfg = self.cfg
        st_idle, st_run, st_tail, st_drain = range(4)
        state = Signal(2)
        flush = Signal()              # clears every pipeline valid bit
        running = Signal()            # a job is in the engine
        running_d = Signal()
        done_i = Signal()             # done as the control sets it (the port is one cycle later,
        m.d.comb += running.eq(state != st_idle)       # when the counters have caught up)
        m.d.sync += [running_d.eq(running), self.done.eq(done_i)]
        m.d.comb += self.busy.eq(running | running_d)

        mode = Signal(NM, reset_less=True)
        dim = Signal(range(p.dim_max + 1), reset_less=True)
        loss_sel = Signal(2, reset_less=True)
        step_mult = Signal(STEP_MULT.width, reset_less=True)
        decay = Signal(32, reset_less=True)
        l2s = Signal(range(L2_SHIFT_MAX + 1), reset_less=True)
        lanes_f = Signal(range(W + 1), reset_less=True)      # features per (engine) beat
        is_split = Signal(reset_less=True)                 # beats are taken in two halves
        skip_high = Signal(reset_less=True)  # ... but a last beat whose upper half is the label alone
        is_full = Signal(reset_less=True)
        is_bucket = Signal(reset_less=True)
        is_b1 = Signal(reset_less=True)

        lanes_f_m1 = Signal(range(W + 1), reset_less=True)   # lanes_f - 1 (read-back pointer)
        lanes_ffl = Signal(range(2 * W + 1), reset_less=True)  # lanes_f + label-beat slots
        lanes_ffh = Signal(range(2 * W + 1), reset_less=True)  # lanes_f + upper-half label slots

        # Configuration-derived values are registered every cycle (the configuration is
        # static for CFG_SETTLE cycles before a start, see the class docstring), so a start
        # latches them without any decode or compare in its path.
        mode_hit_c = Signal(NM)
        for md in MS:
            m.d.comb += mode_hit_c[md.index].eq((cfg.encoding == int(md.encoding)) & (cfg.bits == md.bits))
        mode_hit = Signal(NM, reset_less=True)
        m.d.sync += mode_hit.eq(mode_hit_c)

        # Mode-derived constants: registers latched with the mode at start (AND-OR of
        # constants over the configuration's one-hot mode), so no datapath or stream
        # control decision waits for a decode of the mode.
        def by_hit(fn):
            acc = 0
            for md in MS:
                acc = acc | Mux(mode_hit[md.index], fn(md), 0)
            return acc
        fh_of = lambda md: max(md.label_lanes - md.elanes, 0) if md.split else 0
        mode_consts = [
            (lanes_f, lambda md: md.elanes),
            (lanes_f_m1, lambda md: md.elanes - 1),
            (lanes_ffl, lambda md: md.elanes + md.label_lanes),
            (lanes_ffh, lambda md: md.elanes + fh_of(md)),
            (is_split, lambda md: int(md.split)),
            (skip_high, lambda md: int(not md.split or md.label_lanes <= md.elanes)),
            (is_full, lambda md: int(md.full)),
            (is_bucket, lambda md: int(md.bucket)),
            (is_b1, lambda md: int(md.bucket and md.bits == 1)),
        ]
        cst = {}                                  # the constants of the configured mode
        for reg_, fn in mode_consts:
            cst[reg_.name] = Signal.like(reg_, name=f"cfg_{reg_.name}")
            m.d.sync += cst[reg_.name].eq(by_hit(fn))
        # feature slots of the label beat (its lower half when split) / of a split label
        # beat's upper half; the first beat of a sample is its last when dim <= those
        cfg_fl = Signal(range(W + 1), reset_less=True)
        cfg_fh = Signal(range(W + 1), reset_less=True)
        m.d.sync += [cfg_fl.eq(by_hit(lambda md: md.label_lanes)), cfg_fh.eq(by_hit(fh_of))]
        first_last_l = Signal(reset_less=True)
        first_last_h = Signal(reset_less=True)
        cfg_fll = Signal(name="cfg_first_last_l", reset_less=True)
        cfg_flh = Signal(name="cfg_first_last_h", reset_less=True)
        m.d.sync += [cfg_fll.eq(cfg.dim <= cfg_fl), cfg_flh.eq(cfg.dim <= cfg_fh)]
        # the validation code: each test registered, then the first failing one (registered)
        tests = [
            (Error.BAD_ENCODING, cfg.encoding > max(Encoding)),
            (Error.BAD_BITS, mode_hit_c == 0),
            (Error.BAD_DIM, (cfg.dim < 1) | (cfg.dim > p.dim_max)),
            (Error.BAD_N, cfg.n_samples < 1),
            (Error.BAD_BATCH, (cfg.batch < 1) | (cfg.batch > p.batch_max)),
            (Error.BAD_LOSS, cfg.loss > max(Loss)),
            (Error.BAD_EPOCHS, (cfg.epochs < 1) | (cfg.epochs > p.epochs_max)),
            (Error.BAD_STEP, (cfg.step_mult < 1) | (cfg.step_mult > STEP_MULT.max)
             | (cfg.step_shift > STEP_SHIFT_MAX) | (cfg.l2_shift > L2_SHIFT_MAX)),
        ]
        bad = Signal(len(tests), reset_less=True)
        m.d.sync += [bad[i].eq(t) for i, (_, t) in enumerate(tests)]
        check_c = Signal(8)
        check = Signal(8, reset_less=True)
        check_ok = Signal(reset_less=True)              # check == NONE, registered beside it
        m.d.sync += [check.eq(check_c), check_ok.eq(check_c == Error.NONE)]
        m.d.comb += check_c.eq(Error.NONE)
        for i, (code, _) in reversed(list(enumerate(tests))):     # the first failing test wins
            with m.If(bad[i]):
                m.d.comb += check_c.eq(code)

        cfg_decay_m1 = Signal(32, reset_less=True)
        cfg_n_one, cfg_b_one, cfg_e_one = (Signal(reset_less=True) for _ in range(3))
        cfg_n_m2, cfg_b_m2, cfg_e_m2 = (Signal(signed(34), reset_less=True) for _ in range(3))
        m.d.sync += [
            cfg_decay_m1.eq(cfg.decay_epochs - 1),
            cfg_n_one.eq(cfg.n_samples == 1), cfg_b_one.eq(cfg.batch == 1), cfg_e_one.eq(cfg.epochs == 1),
            cfg_n_m2.eq(cfg.n_samples - 2), cfg_b_m2.eq(cfg.batch - 2), cfg_e_m2.eq(cfg.epochs - 2),
        ]

        # ============================ codebook ======================================
        lvl = Array(Signal(signed(FEAT.width), name=f"lvl{k}", reset_less=True) for k in range(4))
        # codebook writes registered once (they fan out to every lane's copy)
        cb_we = Signal()
        cb_addr = Signal.like(self.cb_addr, reset_less=True)
        cb_data = Signal.like(self.cb_data, reset_less=True)
        m.d.sync += [cb_we.eq(self.cb_we), cb_addr.eq(self.cb_addr), cb_data.eq(self.cb_data)]
        with m.If(cb_we & (cb_addr < 4)):
            m.d.sync += lvl[cb_addr[:2]].eq(cb_data.as_signed())

        # every copy of the codebook (two per multiplier lane) takes its writes from a leaf
        # of a registered tree: the engine is idle while the host writes the codebook
        cb_bus = Cat(cb_we, cb_addr, cb_data)
        cb_leaves, cb_levels = _fanout_tree(m, cb_bus, 2 * M, "cbw", CB_BRANCH)
        assert 1 + cb_levels == self.CB_WRITE_LATENCY

        def codebook_port(lane, name, leaf):
            """A LUT-RAM copy of the codebook for one multiplier lane (async read)."""
            bits = lane_code_bits(W, lane, only_mult=True)
            # LUT-RAM (a block RAM would put its slow clock-to-out before a multiplier)
            mem = Memory(shape=signed(FEAT.width), depth=1 << bits, init=[],
                         attrs={"ram_style": "distributed"})
            m.submodules[name] = mem
            wp = mem.write_port()
            rp = mem.read_port(domain="comb")
            we, addr, dat = leaf[0], leaf[1:9], leaf[9:]
            m.d.comb += [wp.addr.eq(addr[:bits]), wp.data.eq(dat.as_signed()),
                         wp.en.eq(we & (addr < (1 << bits)))]
            return rp, bits

        # ============================ memories ======================================
        def read_word(rp, wp, j, bits):
            """Word ``j`` of a read port's data (see ``poison_collisions``)."""
            word = rp.data[j * bits:(j + 1) * bits]
            if not self.poison_collisions:
                return word
            hit = Signal(name=f"collide{len(collisions)}")
            m.d.sync += hit.eq(wp.en[j if len(wp.en) > 1 else 0] & (wp.addr == rp.addr))
            collisions.append(hit)
            return word ^ hit.replicate(bits)
        collisions = self.collisions = []      # (the test counts them)

        x_dot = [None] * W          # model word per lane, dot port (valid A+1)
        x_upd = [None] * W          # model word per lane, update port
        g_rd = [None] * W           # G word per lane
        mem_ports = []
        for gi, (lo, n, depth) in enumerate(self.groups):
            xm = Memory(shape=unsigned(X_BITS * n), depth=depth, init=[])
            gm = Memory(shape=unsigned(G_BITS * n), depth=depth, init=[])
            m.submodules[f"model{gi}"] = xm
            m.submodules[f"gacc{gi}"] = gm
            x_wr = xm.write_port(granularity=X_BITS)
            # (the dot port reads model beat i no earlier than the cycle after the update
            # writes it: no bypass, no forwarding)
            ports = dict(
                x_rd_dot=xm.read_port(), x_rd_upd=xm.read_port(), x_wr=x_wr,
                g_rd=gm.read_port(), g_wr=gm.write_port(granularity=G_BITS), lo=lo, n=n, depth=depth)
            mem_ports.append(ports)
            for j in range(n):
                x_dot[lo + j] = read_word(ports["x_rd_dot"], x_wr, j, X_BITS).as_signed()
                x_upd[lo + j] = read_word(ports["x_rd_upd"], x_wr, j, X_BITS).as_signed()
                g_rd[lo + j] = read_word(ports["g_rd"], ports["g_wr"], j, G_BITS).as_signed()

        def group_addr(beat, depth):
            """Beat address clamped into a group's depth (lanes past it are never valid)."""
            aw = ceil_log2(depth)
            if depth == 1 << aw:
                return beat[:aw] if aw else Const(0, 0)
            return Mux(beat < depth, beat[:aw], 0)

        def addr_regs(beat, name):
            """A register per memory group loaded with ``beat`` clamped into the group's
            depth (no logic between the register and the block RAMs' address pins)."""
            return [_copies(m, group_addr(beat, ports["depth"]), 1, f"{name}{gi}")[0]
                    for gi, ports in enumerate(mem_ports)]

        rbuf = Memory(shape=unsigned(W), depth=self.rb_depth, init=[])
        m.submodules.rbuf = rbuf
        rb_wr = rbuf.write_port()
        rb_rd = rbuf.read_port()

        loss_mem = Memory(shape=unsigned(LOSS_ACC.width), depth=p.epochs_max, init=[])
        m.submodules.loss_mem = loss_mem
        lm_wr = loss_mem.write_port()
        lm_rd = loss_mem.read_port()
        m.d.comb += lm_rd.addr.eq(self.loss_addr)
        loss_q = Signal.like(self.loss_data, reset_less=True)
        m.d.sync += loss_q.eq(read_word(lm_rd, lm_wr, 0, LOSS_ACC.width))   # block RAM output registered
        m.d.comb += self.loss_data.eq(loss_q)

        # ============================ input side ====================================
        beat_w = ceil_log2(self.beats_max + 1)
        in_beat = Signal(beat_w, reset_less=True)
        decay_m1 = Signal(32, reset_less=True)
        in_sb = Signal(range(p.batch_max + 1), reset_less=True)
        in_se = Signal(32, reset_less=True)
        in_epoch = Signal(range(p.epochs_max + 1), reset_less=True)
        in_k = Signal(range(STEP_SHIFT_MAX + 1), reset_less=True)
        in_dcnt = Signal(32, reset_less=True)
        in_zero = Signal(reset_less=True)          # first batch of the job: model is still zero
        wptr = Signal(ceil_log2(self.rb_depth), reset_less=True)
        in_rbstart = Signal(ceil_log2(self.rb_depth), reset_less=True)
        pending = Signal()          # a batch-end update has not written beat 0 yet

        # split modes: the upper half of the bus beat is next (``keep``: its copies for the
        # beat multiplexer below load the same value, and synthesis would merge it into one)
        in_half = Signal(reset_less=True, attrs={"keep": 1})
        in_half_nx = Signal()                      # its next value (set by the control)
        m.d.comb += in_half_nx.eq(in_half)
        m.d.sync += in_half.eq(in_half_nx)
        VB = 4                                     # copies of in_half for the beat multiplexer
        in_half_k = _copies(m, in_half_nx, VB, "inhalf")
        real_last = Signal()        # the bus beat is the sample's last
        in_last_beat = Signal()     # the beat entering the engine is the sample's last
        in_nvalid = Signal(range(W + 1))
        last_in_epoch = Signal()
        last_in_batch = Signal()
        final_beat = Signal()
        final_job = Signal()
        # Flags kept one step ahead (registers), so that TREADY and the acceptance of a
        # beat depend on a few gates of registers only:
        # dim - first feature of the beat
        in_rem = Signal(signed(ceil_log2(p.dim_max + 2 * W + 1) + 2), reset_less=True)
        in_rl = Signal(reset_less=True)  # in_rem <= label-beat slots (the beat or its lower half is last)
        in_rh = Signal(reset_less=True)  # in_rem <= upper-half label slots (its upper half is the last)
        le_r = Signal(reset_less=True)             # the sample is the last of its epoch
        lb_r = Signal(reset_less=True)   # ... the last of its batch (within the epoch)
        lj_r = Signal(reset_less=True)             # the epoch is the job's last
        n_one = Signal(reset_less=True)
        b_one = Signal(reset_less=True)
        n_m2 = Signal(signed(34), reset_less=True)
        b_m2 = Signal(signed(34), reset_less=True)
        e_m2 = Signal(signed(34), reset_less=True)
        m.d.comb += [
            real_last.eq(Mux(in_half, in_rh, in_rl)),
            in_last_beat.eq(real_last & (in_half | skip_high)),
            in_nvalid.eq(Mux(in_rem <= 0, 0, Mux(in_rem >= lanes_f, lanes_f, in_rem))),
            last_in_epoch.eq(le_r),
            last_in_batch.eq(lb_r | le_r),
            final_beat.eq(in_last_beat & last_in_epoch),
            final_job.eq(final_beat & lj_r),
        ]

        ready = Signal()            # the engine can take a beat (or half a beat)
        w0_now = Signal()           # the update writes model beat 0 this cycle (registered)
        hold = Signal()             # taking the lower half of a split beat: no transfer yet
        m.d.comb += [
            ready.eq(((state == st_run) & (~pending | w0_now)) | (state == st_drain)),
            hold.eq((state == st_run) & is_split & ~in_half & ~in_last_beat),
            self.i_data.ready.eq(ready & ~hold),
        ]
        take = Signal()             # a beat (or half a beat) enters the engine
        accept = Signal()           # a bus transfer
        m.d.comb += [take.eq(ready & self.i_data.valid), accept.eq(take & ~hold)]
        beat_in = self.i_data.payload.data
        tlast = self.i_data.payload.last
        vbeat = Signal(W)           # the engine's beat: the bus beat or its upper half shifted down
        hi_half = beat_in >> (W // 2)
        m.d.comb += vbeat.eq(Cat(*[Mux(in_half_k[i], hi_half[i * W // VB:(i + 1) * W // VB],
                                       beat_in[i * W // VB:(i + 1) * W // VB]) for i in range(VB)]))
        fault_short = Signal()
        fault_long = Signal()
        m.d.comb += [fault_short.eq(accept & (state == st_run) & tlast & ~in_last_beat),
                     fault_long.eq(accept & (state == st_run) & final_beat & ~tlast)]
        run_accept = Signal()       # a beat that enters the pipeline (a faulty one is flushed
        m.d.comb += run_accept.eq(take & (state == st_run))    # the next cycle with all in flight)

        # Row buffer write: every beat of a running job the engine takes.
        m.d.comb += [rb_wr.addr.eq(wptr), rb_wr.data.eq(vbeat), rb_wr.en.eq(run_accept)]

        # ============================ readback pointer ===============================
        # The dot port reads at in_beat (through a register per memory group); an idle
        # engine's in_beat follows the read-back pointer, so no multiplexer sits in the
        # address.
        rdb_beat = Signal(beat_w)
        rdb_beat_nx = Signal(beat_w)
        rdb_lane = Signal(range(LANES))
        m.d.comb += rdb_beat_nx.eq(rdb_beat)
        m.d.sync += rdb_beat.eq(rdb_beat_nx)
        with m.If(self.model_rewind):
            m.d.comb += rdb_beat_nx.eq(0)
            m.d.sync += rdb_lane.eq(0)
        with m.Elif(self.model_next):
            with m.If(rdb_lane == lanes_f_m1):
                m.d.comb += rdb_beat_nx.eq(rdb_beat + 1)
                m.d.sync += rdb_lane.eq(0)
            with m.Else():
                m.d.sync += rdb_lane.eq(rdb_lane + 1)
        in_beat_nx = Signal(beat_w)
        m.d.comb += in_beat_nx.eq(Mux(state == st_idle, rdb_beat_nx, in_beat))   # (the control overrides)
        m.d.sync += in_beat.eq(in_beat_nx)
        # The dot read is issued at A+1 from registers loaded with in_beat (a register): no
        # stream control logic before the address, and the update has written beat i by the
        # time beat i of the next batch is read (it writes one beat per cycle, and the next
        # batch's beat i is accepted no earlier than the write of beat i): no forwarding.
        dot_addr = addr_regs(in_beat, "dotaddr")
        for gi, ports in enumerate(mem_ports):
            m.d.comb += ports["x_rd_dot"].addr.eq(dot_addr[gi])

        # ============================ dot path ======================================
        # D1 (A+1): beat register, per-beat flags.
        d1_v = Signal()
        d1_first = Signal()
        d1_last = Signal()
        d1_label = Signal(signed(MODEL.width), reset_less=True)     # the label field of the bus beat
        m.d.sync += [
            d1_v.eq(run_accept & ~flush),
            d1_first.eq(in_beat == 0),
            d1_last.eq(in_last_beat),
            d1_label.eq(beat_in[W - MODEL.width:].as_signed()),
        ]
        # Sample token (captured with the last beat of a sample).
        tok_layout = data.StructLayout({
            "fb": 1, "lb": 1, "le": 1, "lj": 1, "zero": 1,
            "k": range(STEP_SHIFT_MAX + 1), "rbstart": ceil_log2(self.rb_depth),
        })
        tok0 = Signal(tok_layout)
        m.d.comb += [
            tok0.fb.eq(in_sb == 0), tok0.lb.eq(last_in_batch), tok0.le.eq(last_in_epoch),
            tok0.lj.eq(final_job), tok0.zero.eq(in_zero), tok0.k.eq(in_k),
            tok0.rbstart.eq(Mux(in_beat == 0, wptr, in_rbstart)),
        ]
        tok_v0 = Signal()
        m.d.comb += tok_v0.eq(run_accept & in_last_beat)

        # Q1 codes decoded from the beat entering the engine (cycle A) and registered with it
        dec1 = Decoder(W, which=1)
        m.submodules.dec1 = dec1
        m.d.comb += [dec1.beat.eq(vbeat), dec1.mode.eq(mode)]
        c1 = [Signal(8, name=f"c1_{l}", reset_less=True) for l in range(LANES)]
        v1 = [Signal(signed(FEAT.width), name=f"fv1_{l}", reset_less=True) for l in range(W // FULL_BITS)]
        m.d.sync += [c1[l].eq(dec1.code[l]) for l in range(LANES)]
        m.d.sync += [v1[l].eq(dec1.value[l]) for l in range(W // FULL_BITS)]
        # A+1: per lane, does it carry a feature?
        live1 = [Signal(name=f"live1_{l}") for l in range(LANES)]
        nv_k = _copies(m, in_nvalid, NG, "d1nv")
        zero_k = _copies(m, in_zero, NG, "d1z")
        for l in range(LANES):
            m.d.comb += live1[l].eq((nv_k[grp(l)] > l) & ~zero_k[grp(l)])

        # Model words: the memory's output register (A+3), registered again next to the
        # multipliers and trees (A+4).
        xop = {}
        mraw = {}
        for l in range(LANES):
            mraw[l] = Signal(signed(X_BITS), name=f"mx{l}" if l < M else f"bx{l}", reset_less=True)
            m.d.sync += mraw[l].eq(x_dot[l])
            xop[l] = Signal(signed(X_BITS), name=f"xo{l}", reset_less=True)      # A+4
            m.d.sync += xop[l].eq(mraw[l])

        # --- multiplier lanes: operands at A+2 (the codebook value is 0 for a lane without
        # a feature), partial products at A+3, products at A+4, then the tree ---
        prods = []
        for l in range(M):
            rp, bits = codebook_port(l, f"cb1_{l}", cb_leaves[l])
            m.d.comb += rp.addr.eq(c1[l][:bits])
            q = Mux(is_full, v1[l], rp.data) if l < W // FULL_BITS else rp.data
            mq = Signal(signed(FEAT.width), name=f"mq{l}", reset_less=True)
            m.d.sync += mq.eq(Mux(live1[l], q, 0))
            psum, _ = _split_mul(m, _delay(m, mq, 2, f"mq{l}"), xop[l], f"mp{l}")
            pr = Signal(signed(FEAT.width + X_BITS), name=f"mp{l}", reset_less=True)
            m.d.sync += pr.eq(psum)
            prods.append(pr)
        msum, mstages = _tree(m, prods, "mtree")
        assert 6 + mstages == self.MULT_SUM

        # --- bucket trees over the lanes past the multipliers (bucket modes only):
        # S_t = sum of x over the lanes whose Q1 code selects bucket t. b = 2: tree t
        # sums the lanes whose code is t; b = 1: trees 0/1 take codes 0/1 of the lower
        # half of these lanes, trees 2/3 those of the upper half. A+2: model words and the
        # four select bits per lane registered; A+3: first tree level.
        BL = list(range(M, LANES))
        bsel = {}
        for i, j in enumerate(BL):
            for t in range(4):
                c_b2 = live1[j] & (c1[j][:2] == t)
                if (i >= len(BL) // 2) == (t >= 2):
                    c_b1 = live1[j] & (c1[j][0] == (t % 2))
                    c = Mux(is_b1, c_b1, c_b2)
                else:
                    c = c_b2 & ~is_b1
                bs = Signal(name=f"bs{t}_{j}", reset_less=True)
                m.d.sync += bs.eq(c)
                bsel[j, t] = _delay(m, bs, 2, f"bs{t}_{j}")         # with the operands (A+4)
        # model read-back: the lane's word from the registered dot-port words (valid
        # READBACK_LATENCY cycles after the pointer moves)
        # in two registered steps (a lane of each group, then the group), so that the words
        # need not travel to one place
        rdbl1 = _delay(m, rdb_lane, 1, "rdbl")
        rdb_lane2 = _copies(m, rdbl1, NG, "rdbl2")          # a copy per lane group
        rdb_grp3 = _delay(m, _delay(m, rdbl1 // REP_LANES, 1, "rdbg"), 1, "rdbg2")
        rb_sel = []
        for g in range(NG):
            ws = [mraw[l] for l in range(g * REP_LANES, min(LANES, (g + 1) * REP_LANES))]
            r = Signal(signed(X_BITS), name=f"rdbw{g}", reset_less=True)
            m.d.sync += r.eq(Array(ws)[rdb_lane2[g] % REP_LANES] if len(ws) > 1 else ws[0])
            rb_sel.append(r)
        model_q = Signal.like(self.model_data, reset_less=True)
        m.d.sync += model_q.eq(Array(rb_sel)[rdb_grp3])
        m.d.comb += self.model_data.eq(model_q)
        parts = []
        for t in range(4):
            ins = [Mux(bsel[j, t], xop[j], 0) for j in BL]
            first = []
            for j in range(0, len(ins), 2):
                r = Signal(signed(X_BITS + 1), name=f"bt{t}_{j}", reset_less=True)
                m.d.sync += r.eq(ins[j] + ins[j + 1])
                first.append(r)
            s_t, bst = _tree(m, first, f"btree{t}")
            assert s_t.shape().width == self.s_bits
            lv = Signal(signed(FEAT.width), name=f"blv{t}", reset_less=True)          # static during a job
            m.d.sync += lv.eq(Mux(is_b1, lvl[t % 2], lvl[t]))
            _, pp = _split_mul(m, lv, s_t, f"bp{t}")           # level * S in pieces: 1 stage
            parts += [(r << lo if lo else r) for r, lo in pp]
        assert 5 + bst + 1 == self.BUCKET_PARTS and len(parts) == 4 * self.s_pieces
        join = self.DOT_JOIN
        msum_a = _delay(m, msum, join - self.MULT_SUM, "msum")
        parts = [_delay(m, v, join - self.BUCKET_PARTS, f"bpp{i}") for i, v in enumerate(parts)]
        bsum, fst = _tree(m, parts + [msum_a], "ftree")
        assert fst == self.FINAL_TREE
        path = join + fst - 1            # beat flags: D1 (A+1) -> the beat sum (A + join + fst)
        s_v = _delay(m, d1_v, path, "sv", flush)
        s_first = _delay(m, d1_first, path, "sfirst")
        s_last = _delay(m, d1_last, path, "slast")
        label_d = _delay(m, d1_label, path, "label")

        # --- sample accumulator (1 stage), started at the rounding constant of z ---
        acc = Signal(signed(ACC.width), reset_less=True)
        acc_v = Signal()
        acc_y = Signal(signed(MODEL.width), reset_less=True)
        with m.If(s_v):
            m.d.sync += acc.eq(Mux(s_first, ACC_ROUND, acc) + bsum)
        m.d.sync += [acc_v.eq(s_v & s_last & ~flush)]
        with m.If(s_v & s_last):
            m.d.sync += acc_y.eq(label_d)
        assert join + fst + 1 == self.DOT_LATENCY

        # ============================ scalar unit ====================================
        scalar = ResetInserter(flush)(Scalar(copies=-(-M // REP_LANES)))
        m.submodules.scalar = scalar
        m.d.comb += [scalar.i_valid.eq(acc_v), scalar.acc.eq(acc), scalar.y.eq(acc_y),
                     scalar.loss.eq(loss_sel), scalar.step_mult.eq(step_mult),
                     scalar.k.eq(_delay(m, tok0.k, self.DOT_LATENCY, "tokk"))]

        # Sample tokens: to the replay start and to the loss stage.
        tok_rp_v = _delay(m, tok_v0, self.REPLAY_START, "tokrv", flush)
        tok_rp = _delay(m, tok0, self.REPLAY_START, "tokr")
        tok_lo_v = _delay(m, tok_v0, self.DOT_LATENCY + Scalar.LATENCY_LOSS, "toklv", flush)
        tok_lo = _delay(m, tok0, self.DOT_LATENCY + Scalar.LATENCY_LOSS, "tokl")

        # ============================ loss sums ======================================
        loss_acc = Signal(LOSS_ACC.width, reset_less=True)
        epochs_done = Signal(32)
        m.d.comb += self.epochs_done.eq(epochs_done)
        lsum = Signal(LOSS_ACC.width + 1)
        m.d.comb += lsum.eq(loss_acc + scalar.loss_out)
        lsat = Mux(lsum > LOSS_ACC.max, LOSS_ACC.max, lsum)
        m.d.comb += [lm_wr.addr.eq(epochs_done), lm_wr.data.eq(lsat),
                     lm_wr.en.eq(scalar.loss_valid & tok_lo_v & tok_lo.le)]
        with m.If(scalar.loss_valid & tok_lo_v):
            with m.If(tok_lo.le):
                m.d.sync += [loss_acc.eq(0), epochs_done.eq(epochs_done + 1)]
            with m.Else():
                m.d.sync += loss_acc.eq(lsat)

        # ============================ replay =========================================
        ra_active = Signal()
        ra_beat = Signal(beat_w, reset_less=True)
        ra_addr = Signal(ceil_log2(self.rb_depth), reset_less=True)
        ra_tok = Signal(tok_layout, reset_less=True)
        cur_v = Signal()
        cur_beat = Signal(beat_w)
        cur_rem = Signal.like(in_rem)
        cur_addr = Signal(ceil_log2(self.rb_depth))
        cur_tok = Signal(tok_layout)
        ra_half = Signal(reset_less=True)
        cur_half = Signal()
        cur_real_last = Signal()
        cur_last = Signal()
        cur_nvalid = Signal(range(W + 1))
        ra_rem = Signal.like(in_rem, reset_less=True)
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
            rb_rd.addr.eq(cur_addr),
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
        rbq = Signal(W, reset_less=True)
        m.d.sync += rbq.eq(read_word(rb_rd, rb_wr, 0, W))
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
            rp, bits = codebook_port(l, f"cb2_{l}", cb_leaves[M + l])
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
        codes2 = [_copies(m, _delay(m, c2[l][:2], R7 - R3 - 1, f"c2_{l}"), SEL_COPIES, f"c2s{l}")
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
                a_op, b_op = _delay(m, a_op, 1, f"gq{l}"), _delay(m, b_op, 1, f"rp{l}")
            psum, _ = _split_mul(m, a_op, b_op, f"gp{l}")
            r = Signal(signed(FEAT.width + X_BITS), name=f"gp{l}", reset_less=True)
            m.d.sync += r.eq(psum)
            if l < 4:
                for g, c in enumerate(_copies(m, r, NG, f"lvtab{l}")):
                    tab_k[g].append(c)
                r = tab_k[grp(l)][l]           # (the lane's own product: its group's copy)
            gp.append(r)

        # G read issued at P-3 (data at P-2, the memory's output register at P-1, one more
        # register for P, which takes in a word written three cycles before P); the model
        # read for the update issued at P-4 (data at P-3, output register at P-2, registered
        # for P-1): a register between each block RAM and the logic it feeds, which may sit far
        # apart. (Every memory address of the replay comes from a copy of the beat per memory.)
        beat_g = addr_regs(metas[P - 4].beat, "beatg")
        beat_xu = addr_regs(metas[P - 5].beat, "beatxu")
        for gi, ports in enumerate(mem_ports):
            m.d.comb += [ports["g_rd"].addr.eq(beat_g[gi]), ports["x_rd_upd"].addr.eq(beat_xu[gi])]
        g4 = [Signal(signed(G_BITS), name=f"g4_{l}", reset_less=True) for l in range(LANES)]
        xq0 = [Signal(signed(X_BITS), name=f"xqm{l}", reset_less=True) for l in range(LANES)]
        xq = [Signal(signed(X_BITS), name=f"xq{l}", reset_less=True) for l in range(LANES)]
        m.d.sync += [g4[l].eq(g_rd[l]) for l in range(LANES)]
        m.d.sync += [xq0[l].eq(x_upd[l]) for l in range(LANES)]
        m.d.sync += [xq[l].eq(xq0[l]) for l in range(LANES)]

        # P-1: the L2 term x >> l2 and its rounding bit (x = 0 in the job's first batch);
        # P: x - (x >> l2) - bit (one carry chain, the bit as carry-in), ready at U1.
        # (the L2 shift is static during a job, set at start: a copy per lane through a
        # tree of registered copies, REP_LANES per register, which may take as many cycles
        # as it needs to cross the die: the first P-1 comes REPLAY_START + R7 cycles after the
        # first beat at the earliest)
        l2s_k, lv = _fanout_tree(m, l2s, LANES, "l2s", REP_LANES)
        l2s_m1_k, _ = _fanout_tree(m, (l2s - 1)[:len(l2s)], LANES, "l2sm1", REP_LANES)  # the rounding bit
        l2_on_k, _ = _fanout_tree(m, l2s != 0, LANES, "l2on", REP_LANES)
        assert lv < self.REPLAY_START + R7, "the L2 shift's copies must settle before its first use"
        zero_k5 = _copies(m, metas[P - 2].zero, LANES, "zero5")       # metas[P - 1].zero
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
            ua.append(_delay(m, a_, 1, f"ua{l}"))

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
        hit1_k = _tree2(m, we_p1 & ~flush & (metas[P - 1].beat == metas[P - 2].beat), 2 * LANES, "hit1")
        hit2_k = _tree2(m, g_we & ~flush & (mp.beat == metas[P - 2].beat), 2 * LANES, "hit2")
        hit3_k = _tree2(m, g_we & ~flush & (mp.beat == metas[P - 3].beat), 2 * LANES, "hit3")
        hit4_k = _tree2(m, fwd_v & ~flush & (fwd_addr == metas[P - 3].beat), 2 * LANES, "hit4")
        fb_k = _tree2(m, metas[P - 2].fb, 2 * LANES, "fbp")
        bucket_k = [_copies(m, is_bucket, SEL_COPIES, f"isbk{l}") for l in range(LANES)]
        # G is written at P+1 from the register after the adder (fwd): enables and address
        # in copies loaded at P
        beat_p = addr_regs(mp.beat, "beatp")
        t_p = []
        w_p = []
        lane_we = []
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
            lane_we += _copies(m, g_we & ~flush & (mp.nvalid > l), 1, f"gwe{l}")   # one copy per lane
        for gi, ports in enumerate(mem_ports):
            lo, n = ports["lo"], ports["n"]
            m.d.comb += [
                ports["g_wr"].addr.eq(beat_p[gi]),
                ports["g_wr"].data.eq(Cat(*[w_p[lo + j] for j in range(n)])),
                ports["g_wr"].en.eq(Cat(*[lane_we[lo + j] for j in range(n)])),
            ]

        # U1: G >> 16 (wiring) clamped to +-2**33 (beyond, the update saturates alike).
        hs = []
        for l in range(LANES):
            (tu,) = _copies(m, t_p[l], 1, f"tu{l}")     # (kept apart from fwd, which feeds G)
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
        x_we = Signal()
        m.d.comb += x_we.eq(mvs[U3] & mu3.lb)
        # (the lanes' write enables and the beat: copies loaded at U2, as at P)
        xwe_u = Mux(flush, 0, mvs[U2]) & metas[U2].lb                # x_we one cycle early
        lane_xwe = []
        for l in range(LANES):                                             # one copy per lane
            lane_xwe += _copies(m, xwe_u & (metas[U2].nvalid > l), 1, f"xwe{l}")
        addr_u3 = addr_regs(metas[U2].beat, "addru3")
        for gi, ports in enumerate(mem_ports):
            lo, n = ports["lo"], ports["n"]
            m.d.comb += [
                ports["x_wr"].addr.eq(addr_u3[gi]),
                ports["x_wr"].data.eq(Cat(*[xn[lo + j] for j in range(n)])),
                ports["x_wr"].en.eq(Cat(*[lane_xwe[lo + j] for j in range(n)])),
            ]
        upd_w0 = Signal()
        job_end = Signal()
        m.d.comb += [upd_w0.eq(x_we & (mu3.beat == 0)),
                     job_end.eq(mvs[U3] & mu3.lj & mu3.last)]
        # upd_w0 computed one stage early and registered (keeps TREADY off the meta path)
        m.d.sync += w0_now.eq(~flush & mvs[U2] & metas[U2].lb & (metas[U2].beat == 0))

        # ============================ control ========================================
        abort = Signal()            # stream fault (the cycle after): drop everything in flight
        m.d.sync += abort.eq(fault_short | fault_long)     # (keeps TLAST off the flush net)
        m.d.comb += flush.eq(self.soft_reset | (self.start & (state == st_idle)) | abort)
        with m.If(upd_w0):
            m.d.sync += pending.eq(0)

        with m.If(self.soft_reset):
            m.d.sync += [state.eq(st_idle), done_i.eq(0), self.done.eq(0), self.error.eq(Error.NONE),
                         pending.eq(0), running_d.eq(0)]
        with m.Elif(state == st_idle):
            with m.If(self.start):
                m.d.sync += [done_i.eq(0), self.done.eq(0), self.error.eq(check), epochs_done.eq(0),
                             loss_acc.eq(0)]
                with m.If(~check_ok):                     # refused at once (nothing to count)
                    m.d.sync += [done_i.eq(1), self.done.eq(1)]
                with m.Else():
                    m.d.comb += in_beat_nx.eq(0)
                    m.d.comb += in_half_nx.eq(0)
                    m.d.sync += [
                        state.eq(st_run),
                        mode.eq(mode_hit), dim.eq(cfg.dim), loss_sel.eq(cfg.loss),
                        step_mult.eq(cfg.step_mult), decay.eq(cfg.decay_epochs), l2s.eq(cfg.l2_shift),
                        in_sb.eq(0), in_se.eq(0), in_epoch.eq(0),
                        in_k.eq(cfg.step_shift), in_dcnt.eq(0), in_zero.eq(1), pending.eq(0),
                        wptr.eq(0),
                        decay_m1.eq(cfg_decay_m1),
                        in_rem.eq(cfg.dim), in_rl.eq(cfg_fll), in_rh.eq(cfg_flh),
                        first_last_l.eq(cfg_fll), first_last_h.eq(cfg_flh),
                        le_r.eq(cfg_n_one), lb_r.eq(cfg_b_one), lj_r.eq(cfg_e_one),
                        n_one.eq(cfg_n_one), b_one.eq(cfg_b_one),
                        n_m2.eq(cfg_n_m2), b_m2.eq(cfg_b_m2), e_m2.eq(cfg_e_m2),
                    ]
                    m.d.sync += [reg.eq(cst[reg.name]) for reg, _ in mode_consts]
        with m.Elif(state == st_drain):
            with m.If(accept & tlast):
                m.d.sync += [state.eq(st_idle), done_i.eq(1)]
        with m.Else():
            with m.If(job_end):
                m.d.sync += [state.eq(st_idle), done_i.eq(1)]
            with m.If(take & (state == st_run)):
                # the beat's updates do not wait for the fault tests (TLAST stays off their
                # enables): after a fault the job ends, and a start sets them all again
                m.d.sync += wptr.eq(wptr + 1)
                m.d.comb += in_half_nx.eq(hold)
                with m.If(in_beat == 0):
                    m.d.sync += in_rbstart.eq(wptr)
                with m.If(~in_last_beat):
                    m.d.comb += in_beat_nx.eq(in_beat + 1)
                    m.d.sync += [in_rem.eq(in_rem - lanes_f),
                                 in_rl.eq(in_rem <= lanes_ffl), in_rh.eq(in_rem <= lanes_ffh)]
                with m.Else():
                    m.d.comb += in_beat_nx.eq(0)
                    m.d.sync += [in_rem.eq(dim), in_rl.eq(first_last_l),
                                 in_rh.eq(first_last_h)]
                    with m.If(last_in_batch):
                        m.d.sync += [in_sb.eq(0), pending.eq(1), in_zero.eq(0), lb_r.eq(b_one)]
                    with m.Else():
                        m.d.sync += [in_sb.eq(in_sb + 1), lb_r.eq(in_sb == b_m2)]
                    with m.If(last_in_epoch):
                        m.d.sync += [in_se.eq(0), in_epoch.eq(in_epoch + 1), le_r.eq(n_one),
                                     lj_r.eq(in_epoch == e_m2)]
                        with m.If(decay != 0):
                            with m.If(in_dcnt == decay_m1):
                                m.d.sync += [in_dcnt.eq(0),
                                             in_k.eq(Mux(in_k >= STEP_SHIFT_MAX, in_k, in_k + 1))]
                            with m.Else():
                                m.d.sync += in_dcnt.eq(in_dcnt + 1)
                    with m.Else():
                        m.d.sync += [in_se.eq(in_se + 1), le_r.eq(in_se == n_m2)]
                    with m.If(final_job):
                        m.d.sync += state.eq(st_tail)
                with m.If(fault_short):           # (the last assignment wins)
                    m.d.sync += [state.eq(st_idle), done_i.eq(1), self.error.eq(Error.STREAM_SHORT),
                                 pending.eq(0)]
                with m.Elif(fault_long):
                    m.d.sync += [state.eq(st_drain), self.error.eq(Error.STREAM_LONG), pending.eq(0)]


        # ============================ counters =======================================
        # Each cycle's events are registered, then added (keeps the 64-bit adders off the
        # TREADY path); busy and done show one cycle late, when the counts are complete.
        # A start clears them one cycle late, from a registered copy per counter (the
        # start cycle has no events: the engine is idle in it).
        ev = {name: Signal(name=f"ev_{name}") for name in COUNTERS}
        clr = dict(zip(COUNTERS, _copies(m, self.start & (state == st_idle) & ~self.soft_reset,
                                         len(COUNTERS), "cntclr")))
        m.d.sync += [
            ev["cnt_cycles"].eq(running),
            ev["cnt_stalls"].eq(running & ~self.i_data.ready),
            ev["cnt_idles"].eq(running & self.i_data.ready & ~self.i_data.valid),
            ev["cnt_beats"].eq(accept),
            ev["cnt_samples"].eq(scalar.loss_valid & tok_lo_v),
        ]
        for name in COUNTERS:
            cnt = getattr(self, name)
            m.d.sync += cnt.eq(Mux(clr[name], 0, cnt + ev[name]))
        return m
