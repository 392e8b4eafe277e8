"""The engine's memories: model and G words per lane group, the row buffer, the epoch losses.

Every block RAM's read data goes straight into a register (its *output register*, part of
the read latency stated here) and every write comes from a register, so that no path
has both a block RAM and logic far from it. Every read and write address comes from a
register copy of its own per memory (``keep``), loaded with the beat clamped into that
memory's depth: no logic between the register and the address pins.

A block RAM leaves a read of the word its write port writes in the same cycle undefined;
the engine never uses such a read (it forwards G words itself, and reads a model word
after its write). With ``poison=True`` such reads return the word inverted, so a test
shows it (``collisions``: one registered flag per read port and word, high when it
happened).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from zipsgd.contract import ACC, LOSS_ACC, LOSS_SAMPLE, MODEL

from .decode import engine_lanes, modes
from .pipe import REP_LANES, copies, delay

#: Bits of a G word (the gradient sum of a batch, ACC format).
G_BITS = ACC.width
#: The model as the memories store it. The ports convert to and from the contract's
#: ``MODEL`` format (the same format today: a later issue stores the model in fewer bits).
MODEL_STORE = MODEL


def model_to_store(value):
    """A MODEL word as the model memory stores it."""
    assert MODEL_STORE == MODEL
    return value


def model_from_store(word):
    """A stored model word as a MODEL value (signed)."""
    assert MODEL_STORE == MODEL
    return word.as_signed()


def lane_groups(word_bits: int, dim_max: int, lanes: int | None = None):
    """Lane groups ``(first_lane, n_lanes, depth)`` of the model / G memories.

    Lanes that share the narrowest mode using them share a memory of depth
    ``ceil(dim_max / F_min)``; words are addressed ``(beat, lane)`` in the current mode, so
    a model is read back in feature order by stepping the lane and then the beat."""
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


def _read_word(m, rp, wp, j, bits, poison, collisions):
    """Word ``j`` of a read port's data (inverted when written in the same cycle and
    ``poison``; see the module docstring)."""
    word = rp.data[j * bits:(j + 1) * bits]
    if not poison:
        return word
    hit = Signal(name=f"collide{len(collisions)}")
    m.d.sync += hit.eq(wp.en[j if len(wp.en) > 1 else 0] & (wp.addr == rp.addr))
    collisions.append(hit)
    return word ^ hit.replicate(bits)


def _clamped(beat, depth):
    """Beat address clamped into a memory's depth (lanes past it are never valid)."""
    aw = ceil_log2(depth)
    if depth == 1 << aw:
        return beat[:aw] if aw else Const(0, 0)
    return Mux(beat < depth, beat[:aw], 0)


def write_layout(beat_bits: int, lanes: int):
    """A lane memory's write request: the beat, and lanes ``0 .. nvalid-1`` written (with
    ``one``: lane ``nvalid - 1`` alone, a host's model word)."""
    return data.StructLayout({"en": 1, "beat": beat_bits, "nvalid": range(lanes + 1), "one": 1})


class LaneMemories(wiring.Component):
    """The model and the G words, one memory of each per lane group (:func:`lane_groups`).

    Three read ports (each: the beat in, every lane's word out ``READ_LATENCY`` cycles later
    from the memory's output register) and two write ports (the request registered, the
    words written ``WRITE_LATENCY`` cycles later: the data must come then, from a register).

    Parameters
    ----------
    word_bits, dim_max, lanes
        As in :class:`~zipsgd.contract.EngineParams`.
    beat_bits : int
        Bits of a beat address.
    poison : bool
        See the module docstring.

    Members
    -------
    dot_beat : In(beat_bits)
        Model read for the dot product; ``dot_words`` (MODEL per lane).
    upd_beat : In(beat_bits)
        Model read for the update; ``upd_words``.
    g_beat : In(beat_bits)
        G read; ``g_words`` (ACC per lane).
    x_write, g_write : In(write_layout)
        Write requests of the model and of G; ``x_write_data`` / ``g_write_data`` carry the
        words ``WRITE_LATENCY`` cycles later.
    """

    #: Cycles from a read port's beat to its words (address copies, block RAM, output
    #: register).
    READ_LATENCY = 3
    #: Cycles from a write request to the write (the address and enable copies).
    WRITE_LATENCY = 1

    def __init__(self, word_bits: int, dim_max: int, lanes: int, beat_bits: int, poison: bool = False):
        self.groups = lane_groups(word_bits, dim_max, lanes)
        self.lanes = engine_lanes(word_bits, lanes)
        self.poison = poison
        self.collisions = []
        L = self.lanes
        words = lambda shape: data.ArrayLayout(shape, L)
        super().__init__({
            "dot_beat": In(beat_bits),
            "dot_words": Out(words(signed(MODEL.width))),
            "upd_beat": In(beat_bits),
            "upd_words": Out(words(signed(MODEL.width))),
            "g_beat": In(beat_bits),
            "g_words": Out(words(signed(G_BITS))),
            "x_write": In(write_layout(beat_bits, L)),
            "x_write_data": In(words(signed(MODEL.width))),
            "g_write": In(write_layout(beat_bits, L)),
            "g_write_data": In(words(signed(G_BITS))),
        })

    def elaborate(self, platform):
        m = Module()
        XS, L = MODEL_STORE.width, self.lanes
        self.collisions = coll = []

        def addr_regs(beat, name):
            """A register per memory group loaded with ``beat`` clamped into its depth."""
            return [copies(m, _clamped(beat, depth), 1, f"{name}{gi}")[0]
                    for gi, (_, _, depth) in enumerate(self.groups)]

        def lane_enables(req, name):
            """The write enable of each lane (lanes below ``nvalid``, or lane ``nvalid - 1``
            alone with ``one``), a register each."""
            en = []
            for lane in range(L):
                sel = Mux(req.one, req.nvalid == lane + 1, req.nvalid > lane)
                en += copies(m, req.en & sel, 1, f"{name}{lane}")
            return en

        dot_addr = addr_regs(self.dot_beat, "dotaddr")
        upd_addr = addr_regs(self.upd_beat, "beatxu")
        g_addr = addr_regs(self.g_beat, "beatg")
        # write requests: the address and lane enables registered (a copy per memory / lane)
        g_wr_addr = addr_regs(self.g_write.beat, "beatp")
        g_wr_en = lane_enables(self.g_write, "gwe")
        x_wr_addr = addr_regs(self.x_write.beat, "addru3")
        x_wr_en = lane_enables(self.x_write, "xwe")

        x_dot = [None] * L
        x_upd = [None] * L
        g_rd = [None] * L
        for gi, (lo, n, depth) in enumerate(self.groups):
            xm = Memory(shape=unsigned(XS * n), depth=depth, init=[])
            gm = Memory(shape=unsigned(G_BITS * n), depth=depth, init=[])
            m.submodules[f"model{gi}"] = xm
            m.submodules[f"gacc{gi}"] = gm
            x_wr = xm.write_port(granularity=XS)
            x_rd_dot, x_rd_upd = xm.read_port(), xm.read_port()
            g_rd_p = gm.read_port()
            g_wr = gm.write_port(granularity=G_BITS)
            lanes = range(lo, lo + n)
            m.d.comb += [
                x_rd_dot.addr.eq(dot_addr[gi]), x_rd_upd.addr.eq(upd_addr[gi]), g_rd_p.addr.eq(g_addr[gi]),
                x_wr.addr.eq(x_wr_addr[gi]),
                x_wr.data.eq(Cat(*[model_to_store(self.x_write_data[j]) for j in lanes])),
                x_wr.en.eq(Cat(*[x_wr_en[j] for j in lanes])),
                g_wr.addr.eq(g_wr_addr[gi]),
                g_wr.data.eq(Cat(*[self.g_write_data[j] for j in lanes])),
                g_wr.en.eq(Cat(*[g_wr_en[j] for j in lanes])),
            ]
            for j in range(n):
                x_dot[lo + j] = model_from_store(_read_word(m, x_rd_dot, x_wr, j, XS, self.poison, coll))
                x_upd[lo + j] = model_from_store(_read_word(m, x_rd_upd, x_wr, j, XS, self.poison, coll))
                g_rd[lo + j] = _read_word(m, g_rd_p, g_wr, j, G_BITS, self.poison, coll).as_signed()

        # the output registers (each block RAM's data straight into a register)
        for lane in range(L):
            dot_q = Signal(signed(MODEL.width), name=f"xdot{lane}", reset_less=True)
            upd_q = Signal(signed(MODEL.width), name=f"xupd{lane}", reset_less=True)
            g_q = Signal(signed(G_BITS), name=f"grd{lane}", reset_less=True)
            m.d.sync += [dot_q.eq(x_dot[lane]), upd_q.eq(x_upd[lane]), g_q.eq(g_rd[lane])]
            m.d.comb += [self.dot_words[lane].eq(dot_q), self.upd_words[lane].eq(upd_q),
                         self.g_words[lane].eq(g_q)]
        return m


class RowBuffer(wiring.Component):
    """The beats of the samples in flight, replayed for the gradient (one block RAM).

    Members
    -------
    w_addr, w_data, w_en : In
        Write port (the beat the engine takes, written in that cycle).
    r_addr : In
        Read address; ``r_data`` is the word ``READ_LATENCY`` cycles later (block RAM, output
        register).
    """

    READ_LATENCY = 2

    def __init__(self, width: int, depth: int, poison: bool = False):
        self.width, self.depth, self.poison = width, depth, poison
        self.collisions = []
        super().__init__({
            "w_addr": In(range(depth)), "w_data": In(width), "w_en": In(1),
            "r_addr": In(range(depth)), "r_data": Out(width),
        })

    def elaborate(self, platform):
        m = Module()
        self.collisions = []
        mem = Memory(shape=unsigned(self.width), depth=self.depth, init=[])
        m.submodules.rbuf = mem
        wr, rd = mem.write_port(), mem.read_port()
        m.d.comb += [wr.addr.eq(self.w_addr), wr.data.eq(self.w_data), wr.en.eq(self.w_en),
                     rd.addr.eq(self.r_addr)]
        q = Signal(self.width, name="rbq", reset_less=True)
        m.d.sync += q.eq(_read_word(m, rd, wr, 0, self.width, self.poison, self.collisions))
        m.d.comb += self.r_data.eq(q)
        return m


class LossLog(wiring.Component):
    """Epoch loss sums: each sample's loss added (saturating, LOSS_ACC), the sum written to
    the loss memory at the epoch's last sample; ``epochs_done`` counts those writes.

    Members
    -------
    i_valid, i_loss, i_epoch_end : In
        A sample's loss (LOSS_SAMPLE) and whether the sample ends its epoch.
    clear : In(1)
        A start: the sums and ``epochs_done`` restart at 0.
    loss_addr : In
        Epoch to read; ``loss_data`` ``READ_LATENCY`` cycles later.
    epochs_done : Out(32)
    """

    READ_LATENCY = 2

    def __init__(self, epochs_max: int, poison: bool = False):
        self.epochs_max, self.poison = epochs_max, poison
        self.collisions = []
        super().__init__({
            "i_valid": In(1), "i_loss": In(LOSS_SAMPLE.width), "i_epoch_end": In(1),
            "clear": In(1),
            "loss_addr": In(range(epochs_max)), "loss_data": Out(64),
            "epochs_done": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        self.collisions = []
        mem = Memory(shape=unsigned(LOSS_ACC.width), depth=self.epochs_max, init=[])
        m.submodules.loss_mem = mem
        wr, rd = mem.write_port(), mem.read_port()
        m.d.comb += rd.addr.eq(self.loss_addr)
        loss_q = Signal.like(self.loss_data, reset_less=True)
        m.d.sync += loss_q.eq(_read_word(m, rd, wr, 0, LOSS_ACC.width, self.poison, self.collisions))
        m.d.comb += self.loss_data.eq(loss_q)

        loss_acc = Signal(LOSS_ACC.width, reset_less=True)
        lsum = Signal(LOSS_ACC.width + 1)
        m.d.comb += lsum.eq(loss_acc + self.i_loss)
        lsat = Mux(lsum > LOSS_ACC.max, LOSS_ACC.max, lsum)
        m.d.comb += [wr.addr.eq(self.epochs_done), wr.data.eq(lsat),
                     wr.en.eq(self.i_valid & self.i_epoch_end)]
        with m.If(self.i_valid):
            with m.If(self.i_epoch_end):
                m.d.sync += [loss_acc.eq(0), self.epochs_done.eq(self.epochs_done + 1)]
            with m.Else():
                m.d.sync += loss_acc.eq(lsat)
        with m.If(self.clear):                    # (a start: no sample is in flight)
            m.d.sync += [loss_acc.eq(0), self.epochs_done.eq(0)]
        return m


class ModelReadBack(wiring.Component):
    """The model read back in feature order, one word per ``next`` pulse.

    A pointer (beat, lane) steps the lane, then the beat; while the engine is idle the
    model memories' dot port reads at the pointer's beat (see
    :class:`~zipsgd.hw.stream_in.StreamIn`), and the lane's word is picked from the
    memories' registered words in two registered steps (a lane of each group of
    ``REP_LANES``, then the group), so that the words need not travel to one place.

    The host's writes share the pointer: ``write`` gives its (beat, lane) as ``target``
    and steps it as ``next`` does, with the features per beat of the configuration the
    word is written in (``w_lanes_f_m1``).

    Members
    -------
    rewind, next, write : In(1)
        Pointer to feature 0; to the next feature (a read; a write).
    lanes_f_m1, w_lanes_f_m1 : In
        Features per beat minus one: the job's mode (reads), the configuration's (writes).
    beat_next : Out(beat_bits)
        The pointer's beat, as it will be next cycle.
    target_beat, target_lane : Out
        The pointer (the feature a write stores).
    words : In(ArrayLayout)
        The dot port's words (:attr:`LaneMemories.dot_words`).
    zero : In(1)
        The model is zero (a job started from zero wrote none of it): ``data`` reads 0.
    data : Out(32)
        The word, ``LATENCY`` cycles after ``words``.
    """

    #: Cycles from ``words`` to ``data`` (two registered multiplexer steps).
    LATENCY = 2

    def __init__(self, word_bits: int, lanes: int, beat_bits: int):
        self.lanes = lanes
        super().__init__({
            "rewind": In(1), "next": In(1), "write": In(1),
            "lanes_f_m1": In(range(word_bits + 1)), "w_lanes_f_m1": In(range(word_bits + 1)),
            "beat_next": Out(beat_bits),
            "target_beat": Out(beat_bits), "target_lane": Out(range(lanes)),
            "words": In(data.ArrayLayout(signed(MODEL.width), lanes)),
            "zero": In(1),
            "data": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        groups = -(-L // REP_LANES)
        beat = Signal.like(self.beat_next, name="rdb_beat", reset_less=False)
        lane = Signal(range(L), name="rdb_lane")
        m.d.comb += [self.beat_next.eq(beat), self.target_beat.eq(beat), self.target_lane.eq(lane)]
        m.d.sync += beat.eq(self.beat_next)
        with m.If(self.rewind):
            m.d.comb += self.beat_next.eq(0)
            m.d.sync += lane.eq(0)
        with m.Elif(self.next | self.write):
            with m.If(lane == Mux(self.write, self.w_lanes_f_m1, self.lanes_f_m1)):
                m.d.comb += self.beat_next.eq(beat + 1)
                m.d.sync += lane.eq(0)
            with m.Else():
                m.d.sync += lane.eq(lane + 1)
        # the lane's word: words arrive READ_LATENCY + the beat register's cycle after the
        # pointer moves; the lane number follows in step
        lane1 = delay(m, lane, 1, "rdbl")
        lane2 = copies(m, lane1, groups, "rdbl2")               # a copy per lane group
        group3 = delay(m, delay(m, lane1 // REP_LANES, 1, "rdbg"), 1, "rdbg2")
        sel = []
        for g in range(groups):
            ws = [self.words[k] for k in range(g * REP_LANES, min(L, (g + 1) * REP_LANES))]
            r = Signal(signed(MODEL.width), name=f"rdbw{g}", reset_less=True)
            m.d.sync += r.eq(Array(ws)[lane2[g] % REP_LANES] if len(ws) > 1 else ws[0])
            sel.append(r)
        q = Signal(32, name="model_q", reset_less=True)
        m.d.sync += q.eq(Mux(self.zero, 0, Array(sel)[group3]))
        m.d.comb += self.data.eq(q)
        return m
