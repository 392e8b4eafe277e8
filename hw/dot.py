"""The dot product: each sample's ``sum_i Q1_i * x_i``, one beat per cycle, never stalling.

A beat's lanes are summed two ways at once, and the mode's lanes use one of them:

* Multiplier lanes (the first ``mult_lanes(W)``, every mode): the lane's level (the
  codebook's value for its Q1 code, or the FULL value; 0 for a lane without a feature, or
  in the job's first batch, when the model is still 0) times its model word, each product
  cut into 17 x 18 partial products (one DSP each), then a registered adder tree.
* Bucket lanes (the rest, used by the bucket modes only: codes of at most
  ``BUCKET_BITS_MAX`` bits, more features per beat than multipliers): ``S_t``, the sum of
  the model words of the lanes whose code selects level ``t``, for each of ``LEVELS``
  levels, then ``level_t * S_t`` in partial products. With fewer code bits (b = 1), the
  bucket lanes form ``LEVELS / 2**b`` groups and tree ``t`` sums code ``t % 2**b`` of group
  ``t // 2**b``.

The shorter path is delayed to meet the other, a final tree adds both, and the sample
accumulator adds the beats of a sample, starting at the rounding constant of ``z``
(:data:`~zipsgd.hw.scalar.ACC_ROUND`).

Stages, from the cycle ``A`` a beat is taken (the model read for it is issued at ``A``
too, and its words come ``words_delay`` cycles later from the memory's output register):

* ``A``: the beat's Q1 codes decoded and registered, with its flags and a copy of its
  live-lane count per group of lanes.
* ``A+1``: codebook read, the lane's level registered (``A+2``); bucket selects registered.
* ``OPERANDS``: the model words registered again, next to the multipliers and trees,
  meeting the levels and selects.
* ``MULT_SUM``: the multiplier lanes' sum; ``BUCKET_PARTS``: the bucket partial products;
  ``DOT_JOIN``: the later of the two.
* ``LATENCY``: the accumulator holds the beat (``acc.valid`` with a sample's last beat).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from zipsgd.contract import ACC, FEAT, FULL_BITS, MODEL, EngineParams

from .codebook import LEVELS, WRITE, lane_codebook
from .config import settings_layout
from .decode import BUCKET_BITS_MAX, engine_lanes, lane_code_bits, mult_lanes, registered_decoder
from .pipe import REP_LANES, adder_tree, adder_tree_stages, copies, delay, pieces, split_mul
from .scalar import ACC_ROUND
from .stream_in import beat_layout

#: A sample's dot sum (pre-rounded, see ``ACC_ROUND``) and its label.
SUM_LAYOUT = data.StructLayout({"acc": signed(ACC.width), "y": signed(MODEL.width)})


class DotProduct(wiring.Component):
    """The dot product of each sample with the model.

    Parameters
    ----------
    params : EngineParams
    words_delay : int
        Cycles from a beat to its model words (the memory's read latency).

    Members
    -------
    beat : In(stream, always_ready)
        The beat the engine takes (:func:`~zipsgd.hw.stream_in.beat_layout`).
    flush : In(1)
        Drop every beat in flight.
    job : In(settings_layout)
        The job's settings (mode, ``full``, ``b1``).
    words : In(ArrayLayout(signed(MODEL.width), lanes))
        The beat's model words, ``words_delay`` cycles after the beat.
    codebook : In(ArrayLayout(WRITE, mult lanes))
        Codebook writes, one per multiplier lane's copy.
    levels : In(ArrayLayout(signed(FEAT.width), LEVELS))
        The bucket modes' levels (static during a job).
    sum : Out(stream, always_ready)
        The sample's sum and label (:data:`SUM_LAYOUT`), ``LATENCY`` cycles after its last
        beat; held until the next.
    """

    def __init__(self, params: EngineParams, words_delay: int):
        W = params.word_bits
        self.params = params
        self.lanes = engine_lanes(W, params.lanes)
        self.n_mult = mult_lanes(W)
        self.n_bucket = self.lanes - self.n_mult
        self.words_delay = words_delay
        #: Stage of the operands (model words registered after the memory, levels delayed).
        self.OPERANDS = max(words_delay + 1, 2)
        #: Stage of the multiplier lanes' sum: partial products, products, tree.
        self.MULT_SUM = self.OPERANDS + 2 + adder_tree_stages(self.n_mult)
        #: Bits of a bucket sum S (the first tree level adds pairs of lanes).
        self.s_bits = MODEL.width + 1 + ceil_log2(self.n_bucket // 2)
        self.s_pieces = len(pieces(self.s_bits))
        #: Stage of the bucket partial products: first tree level, the rest, level * S.
        self.BUCKET_PARTS = self.OPERANDS + 1 + adder_tree_stages(self.n_bucket // 2) + 1
        self.DOT_JOIN = max(self.MULT_SUM, self.BUCKET_PARTS)
        #: Stages of the final tree (the bucket partial products and the multiplier sum).
        self.FINAL_TREE = adder_tree_stages(LEVELS * self.s_pieces + 1)
        #: Cycles from a beat to the accumulator holding it.
        self.LATENCY = self.DOT_JOIN + self.FINAL_TREE + 1
        super().__init__({
            "beat": In(stream.Signature(beat_layout(W), always_ready=True)),
            "flush": In(1),
            "job": In(settings_layout(params)),
            "words": In(data.ArrayLayout(signed(MODEL.width), self.lanes)),
            "codebook": In(data.ArrayLayout(WRITE, self.n_mult)),
            "levels": In(data.ArrayLayout(signed(FEAT.width), LEVELS)),
            "sum": Out(stream.Signature(SUM_LAYOUT, always_ready=True)),
        })

    def elaborate(self, platform):
        m = Module()
        W = self.params.word_bits
        L, M = self.lanes, self.n_mult
        XW = MODEL.width
        job, flush, beat = self.job, self.flush, self.beat.payload
        groups = -(-L // REP_LANES)         # lane groups reading their own register copies

        # A: the beat's flags registered, Q1 codes decoded and registered with them
        beat_valid = Signal()
        beat_first = Signal()
        beat_last = Signal()
        beat_label = Signal(signed(XW), reset_less=True)
        m.d.sync += [beat_valid.eq(self.beat.valid & ~flush), beat_first.eq(beat.first),
                     beat_last.eq(beat.last), beat_label.eq(beat.label)]
        code, full = registered_decoder(m, W, 1, beat.data, job.mode, L)
        # A+1: per lane, does it carry a feature (and is the model not still 0)?
        live = [Signal(name=f"live1_{l}") for l in range(L)]
        nvalid_k = copies(m, beat.nvalid, groups, "d1nv")
        zero_k = copies(m, beat.zero, groups, "d1z")
        for l in range(L):
            g = l // REP_LANES
            m.d.comb += live[l].eq((nvalid_k[g] > l) & ~zero_k[g])

        # the model words registered again at OPERANDS, next to the multipliers and trees
        x_op = [delay(m, self.words[l], self.OPERANDS - self.words_delay, f"xo{l}") for l in range(L)]
        level_delay = self.OPERANDS - 2          # levels and selects are registered at A+2

        # multiplier lanes: the level (0 without a feature), partial products, products, tree
        prods = []
        for l in range(M):
            rp = lane_codebook(m, self.codebook[l], lane_code_bits(W, l, only_mult=True), f"cb1_{l}")
            m.d.comb += rp.addr.eq(code[l][:len(rp.addr)])
            q = Mux(job.full, full[l], rp.data) if l < W // FULL_BITS else rp.data
            level = Signal(signed(FEAT.width), name=f"level{l}", reset_less=True)
            m.d.sync += level.eq(Mux(live[l], q, 0))
            psum, _ = split_mul(m, delay(m, level, level_delay, f"level{l}"), x_op[l], f"mp{l}")
            prod = Signal(signed(FEAT.width + XW), name=f"mp{l}", reset_less=True)
            m.d.sync += prod.eq(psum)
            prods.append(prod)
        mult_sum, mult_stages = adder_tree(m, prods, "mtree")
        assert self.OPERANDS + 2 + mult_stages == self.MULT_SUM

        # bucket lanes: per level t, the select of each lane (registered at A+2, delayed to
        # the operands), S_t, then level_t * S_t in partial products
        BL = list(range(M, L))
        bucket_sel = {}
        for i, j in enumerate(BL):
            for t in range(LEVELS):
                # the widest codes (BUCKET_BITS_MAX bits) unless a narrower mode's flag is set
                c = live[j] & (code[j][:BUCKET_BITS_MAX] == t)
                for b in range(BUCKET_BITS_MAX - 1, 0, -1):
                    flag = job[f"b{b}"]
                    if i * (LEVELS >> b) // len(BL) == t >> b:     # the lane is in tree t's group
                        c = Mux(flag, live[j] & (code[j][:b] == t % (1 << b)), c)
                    else:
                        c = c & ~flag
                sel = Signal(name=f"sel{t}_{j}", reset_less=True)
                m.d.sync += sel.eq(c)
                bucket_sel[j, t] = delay(m, sel, level_delay, f"sel{t}_{j}")
        parts = []
        for t in range(LEVELS):
            ins = [Mux(bucket_sel[j, t], x_op[j], 0) for j in BL]
            first = []
            for j in range(0, len(ins), 2):
                r = Signal(signed(XW + 1), name=f"bt{t}_{j}", reset_less=True)
                m.d.sync += r.eq(ins[j] + ins[j + 1])
                first.append(r)
            bucket_sum, bucket_stages = adder_tree(m, first, f"btree{t}")
            assert bucket_sum.shape().width == self.s_bits
            # the tree's level (static during a job): level t, or t % 2**b with b-bit codes
            level = self.levels[t]
            for b in range(BUCKET_BITS_MAX - 1, 0, -1):
                level = Mux(job[f"b{b}"], self.levels[t % (1 << b)], level)
            bucket_level = Signal(signed(FEAT.width), name=f"blv{t}", reset_less=True)
            m.d.sync += bucket_level.eq(level)
            _, level_parts = split_mul(m, bucket_level, bucket_sum, f"bp{t}")           # level * S in pieces: 1 stage
            parts += [(r << lo if lo else r) for r, lo in level_parts]
        assert self.OPERANDS + 1 + bucket_stages + 1 == self.BUCKET_PARTS and len(parts) == LEVELS * self.s_pieces

        # the two paths joined, the final tree; the beat's flags meet its sum
        join = self.DOT_JOIN
        mult_sum_d = delay(m, mult_sum, join - self.MULT_SUM, "mult_sum")
        parts = [delay(m, v, join - self.BUCKET_PARTS, f"bpp{i}") for i, v in enumerate(parts)]
        beat_sum, final_stages = adder_tree(m, parts + [mult_sum_d], "ftree")
        assert final_stages == self.FINAL_TREE
        path = join + final_stages - 1            # the flags: registered at A (A+1) -> the beat's sum
        sum_valid = delay(m, beat_valid, path, "sv", flush)
        sum_first = delay(m, beat_first, path, "sfirst")
        sum_last = delay(m, beat_last, path, "slast")
        sum_label = delay(m, beat_label, path, "label")

        # the sample accumulator, started at the rounding constant of z
        acc = Signal(signed(ACC.width), reset_less=True)
        acc_valid = Signal()
        acc_label = Signal(signed(XW), reset_less=True)
        with m.If(sum_valid):
            m.d.sync += acc.eq(Mux(sum_first, ACC_ROUND, acc) + beat_sum)
        m.d.sync += [acc_valid.eq(sum_valid & sum_last & ~flush)]
        with m.If(sum_valid & sum_last):
            m.d.sync += acc_label.eq(sum_label)
        assert join + final_stages + 1 == self.LATENCY
        m.d.comb += [self.sum.valid.eq(acc_valid), self.sum.payload.acc.eq(acc), self.sum.payload.y.eq(acc_label)]
        return m
