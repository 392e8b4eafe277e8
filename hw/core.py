"""The zipsgd training engine: ``Engine(params)``, its stages wired together.

One beat per clock in steady state, along this dataflow (one component per stage, each
stating its latency; docs/engine.md describes them and the design's history):

    stream input ─► dot product ─► scalar unit ─► replay ─► gradient sum ─► update
    (stream_in.py)  (dot.py)       (scalar.py)    (replay.py) (gradient.py) (update.py)

* :class:`~.stream_in.StreamIn` takes the beats (a split mode's in halves) and knows where
  each sits in its sample, batch, epoch and job; every beat is also written to the row
  buffer.
* :class:`~.dot.DotProduct` sums ``Q1_i * x_i`` over each sample, reading the model at the
  beat's index.
* :class:`~.scalar.Scalar` turns the sum into ``r'`` (and the sample's loss, summed per
  epoch by :class:`~.memories.LossLog`).
* :class:`~.replay.Replay` reads the sample back from the row buffer once ``r'`` is
  known and forms each lane's term ``r' * Q2_i``.
* :class:`~.gradient.GradientSum` adds the terms into ``G`` over the batch (forwarding
  sums that have not reached the G memory yet).
* :class:`~.update.ModelUpdate`, at the batch's last sample, writes
  ``x - round(G >> 16) - round(x >> l2)`` (saturated) back to the model.

Beside them: :class:`~.config.Config` (the configuration decoded, checked and latched),
:class:`~.control.Control` (the job's state), :class:`~.codebook.Codebook`, the memories
(:mod:`.memories`) and :class:`~.control.Counters`.

Latencies (cycles; each from its components' attributes):

``DOT_LATENCY``
    A beat taken -> the sample accumulator holding it.
``REPLAY_START``
    A sample's last beat taken -> its replay starts, timed so that the replay's multipliers
    meet ``r'``: ``DOT_LATENCY + Scalar.LATENCY_RP - Replay.RP_STAGE``.
``UPDATE_LATENCY``
    A replayed beat's row-buffer read -> its model write.
``BATCH_STALL``
    Cycles with TREADY low at a batch (or epoch) boundary. The next batch's first beat
    waits for the update to write model beat 0 (``StreamIn``'s gate): it is taken in that
    cycle and reads the model the cycle after, and the update writes one beat per cycle,
    so every later beat is read after its write too (no forwarding). So
    ``BATCH_STALL = REPLAY_START + UPDATE_LATENCY - 1``; ``BATCH_STALL_BUDGET`` is the
    figure the design keeps to.

Design rules (for 125 MHz on the open-source ECP5 estimate, a slow part): every block-RAM
output goes straight into a register and every write comes from one; every
multiplication is cut into 17 x 18 pieces whose partial products are registered (one DSP
each); a stage holds at most one carry chain plus a few LUT levels (two chained adds in
the adder trees); stream control (TREADY, acceptance) depends on registered flags only;
data registers take no reset (valid bits, control and configuration do). No register
drives every lane: each lane, group of ``REP_LANES`` lanes or memory reads its own copy
(:func:`~.pipe.copies`, marked ``keep``), and each component holds the copies it reads.
"""

from __future__ import annotations

from amaranth.hdl import Module, ResetInserter
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from zipsgd.contract import FEAT, EngineParams, beats_per_sample

from .codebook import Codebook
from .config import CFG_LAYOUT, Config
from .control import COUNTERS, Control, Counters, counter_port  # noqa: F401 (counter_port: re-exported)
from .decode import engine_lanes, modes, mult_lanes
from .dot import DotProduct
from .gradient import GradientSum
from .memories import LaneMemories, LossLog, ModelReadBack, RowBuffer
from .pipe import REP_LANES, delay
from .replay import Replay
from .scalar import Scalar
from .stream_in import StreamIn, token_layout
from .update import ModelUpdate

#: Cycles the configuration must be stable before a start (its decoded form is registered:
#: the register block delays its start pulse by this much).
CFG_SETTLE = Config.LATENCY
#: Cycles from a ``loss_addr`` change to ``loss_data``.
LOSS_READ_LATENCY = LossLog.READ_LATENCY
#: Cycles from the cycle after a move of the model read-back pointer (``model_rewind`` /
#: ``model_next`` seen) to ``model_data``: the beat address, the memory read, the word's
#: two multiplexer registers.
READBACK_LATENCY = StreamIn.ADDR_LATENCY + LaneMemories.READ_LATENCY + ModelReadBack.LATENCY - 1
#: Batch-boundary stalls the design keeps to, by engine lanes (32: W = 64's default; 64 or
#: 128: one more, from the deeper trees of the dot product). A test checks ``BATCH_STALL``.
BATCH_STALL_BUDGET = {32: 24, 64: 25, 128: 25}
#: Row-buffer words beyond a sample and the replay's delay (writes that may come before a
#: beat is read back).
ROWBUF_MARGIN = 8


class EngineSignature(wiring.Signature):
    """The engine's ports (the core, the stub core and the top level share them).

    Members
    -------
    i_data : In(stream)
        AXI4-Stream beats (payload ``data``, ``last``).
    cfg : In(CFG_LAYOUT)
        The configuration registers.
    start, soft_reset, stop : In(1)
        Pulses (a start while busy is ignored; a stop ends the job at an epoch boundary).
    warm : In(1)
        With ``start``: start from the model in memory instead of zero.
    busy, done, error, stopped : Out
        Status.
    cb_we, cb_addr, cb_data : In
        Codebook writes.
    model_rewind, model_next : In(1), model_data : Out(32)
        The model, read back in feature order.
    model_we : In(1), model_wdata : In(32)
        A model word written at the read-back pointer (in the layout of ``cfg``, stable
        ``CFG_SETTLE`` cycles before), which then advances; ignored while busy.
    loss_addr : In, loss_data : Out(64)
        Epoch loss sums.
    epochs_done : Out(32)
    cnt_<name> : Out(64)
        The contract's counters.
    """

    def __init__(self, params: EngineParams):
        super().__init__({
            "i_data": In(stream.Signature(data.StructLayout({"data": params.word_bits, "last": 1}))),
            "cfg": In(CFG_LAYOUT),
            "start": In(1),
            "soft_reset": In(1),
            "stop": In(1),
            "warm": In(1),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(8),
            "stopped": Out(1),
            "cb_we": In(1),
            "cb_addr": In(8),
            "cb_data": In(FEAT.width),
            "model_rewind": In(1),
            "model_next": In(1),
            "model_data": Out(32),
            "model_we": In(1),
            "model_wdata": In(32),
            "loss_addr": In(range(params.epochs_max)),
            "loss_data": Out(64),
            "epochs_done": Out(32),
            **{name: Out(64) for name in COUNTERS},
        })


class Engine(wiring.Component):
    """zipsgd SGD engine core (see the module docstring).

    Parameters
    ----------
    params : EngineParams
        Build parameters (stream width, limits).
    poison_collisions : bool
        Test aid: a memory read of a word written in the same cycle returns that word
        inverted (see :mod:`.memories`; ``collisions`` lists the flags).

    Attributes
    ----------
    DOT_LATENCY, REPLAY_START, UPDATE_LATENCY, BATCH_STALL : int
        Latencies in cycles (see the module docstring; they depend on the parameters).
    CFG_SETTLE, READBACK_LATENCY, LOSS_READ_LATENCY, CB_WRITE_LATENCY : int
        Cycles the register block waits for (configuration, read-back, codebook).
    MODEL_WRITE_LATENCY : int
        Cycles from ``model_we`` to the model memory's write of the word.
    """

    def __init__(self, params: EngineParams, poison_collisions: bool = False):
        if not isinstance(params, EngineParams):
            raise TypeError(f"Engine: params must be an EngineParams, not {params!r}")
        self.params = params
        self.poison_collisions = poison_collisions
        W = params.word_bits
        self.modes = modes(W, params.lanes)
        self.lanes = engine_lanes(W, params.lanes)
        self.n_mult = mult_lanes(W)
        self.beats_max = max(self.engine_beats(md, params.dim_max) for md in self.modes)
        self.beat_bits = ceil_log2(self.beats_max + 1)
        self.CFG_SETTLE = CFG_SETTLE
        self.READBACK_LATENCY = READBACK_LATENCY
        self.LOSS_READ_LATENCY = LOSS_READ_LATENCY

        # the stages
        bb, read = self.beat_bits, LaneMemories.READ_LATENCY
        self.dot = DotProduct(params, words_delay=read)
        self.scalar = Scalar(copies=-(-self.n_mult // REP_LANES))
        self.DOT_LATENCY = self.dot.LATENCY
        self.REPLAY_START = self.DOT_LATENCY + Scalar.LATENCY_RP - Replay.RP_STAGE
        self.rb_depth = 1 << ceil_log2(self.beats_max + self.REPLAY_START + ROWBUF_MARGIN)
        self.replay = Replay(params, bb, self.rb_depth, RowBuffer.READ_LATENCY)
        self.gradient = GradientSum(params, bb, read)
        self.update = ModelUpdate(params, bb, read)
        self.UPDATE_LATENCY = Replay.LATENCY - self.update.SUM_DELAY + self.update.WRITE_STAGE
        self.MODEL_WRITE_LATENCY = self.update.HOST_WRITE_LATENCY
        self.BATCH_STALL = self.REPLAY_START + self.UPDATE_LATENCY - 1
        # the replay's tag reaches the update and the gradient sum when their reads are due
        self._meta_to_update = Replay.LATENCY - self.update.SUM_DELAY
        self._meta_to_gradient = Replay.LATENCY - self.gradient.TERM_DELAY
        assert min(self._meta_to_update, self._meta_to_gradient) >= 0
        # every lane's copy of the L2 shift has settled before the first update reads it
        # (a job's first beat comes a cycle after its start at the earliest)
        assert self.update.L2_SETTLE < (self.REPLAY_START + self._meta_to_update
                                        + self.update.SUM_DELAY - 1)

        self.codebook = Codebook(2 * self.n_mult)        # a copy per dot and gradient lane
        self.CB_WRITE_LATENCY = self.codebook.WRITE_LATENCY
        # A beat reads the codebook at A+1 >= start+2; behind the register block a start
        # comes >= CFG_SETTLE + 1 cycles after the last codebook write (a bus transfer, the
        # pulse register, the start delay): the write has landed if this holds.
        assert self.CB_WRITE_LATENCY - 1 <= CFG_SETTLE + 1
        self.config = Config(params)
        self.control = Control()
        self.stream_in = StreamIn(params, bb, self.rb_depth)
        self.memories = LaneMemories(W, params.dim_max, params.lanes, bb, poison_collisions)
        self.rowbuf = RowBuffer(W, self.rb_depth, poison_collisions)
        self.losslog = LossLog(params.epochs_max, poison_collisions)
        self.readback = ModelReadBack(W, self.lanes, bb)
        self.counters = Counters()
        super().__init__(EngineSignature(params))

    @property
    def collisions(self):
        """The memories' collision flags (see ``poison_collisions``), once elaborated."""
        return [hit for mem in (self.memories, self.rowbuf, self.losslog) for hit in mem.collisions]

    @staticmethod
    def engine_beats(md, dim: int) -> int:
        """Beats per sample as the engine takes them (a split mode's beats count twice,
        but for a last beat whose upper half holds the label alone)."""
        b = beats_per_sample(md.lanes, md.label_lanes, dim)
        if not md.split:
            return b
        return 2 * b - (1 if md.label_lanes <= md.elanes else 0)

    # ------------------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        M = self.n_mult
        config, control, codebook = self.config, self.control, self.codebook
        stream_in, dot, replay, gradient, update = self.stream_in, self.dot, self.replay, self.gradient, self.update
        mems, rowbuf, losslog, readback, counters = (
            self.memories, self.rowbuf, self.losslog, self.readback, self.counters)
        # the scalar unit has no flush input: every register it has is cleared instead
        scalar = ResetInserter(control.flush)(self.scalar)
        for name, sub in (("config", config), ("control", control), ("codebook", codebook),
                          ("stream_in", stream_in), ("dot", dot), ("scalar", scalar), ("replay", replay),
                          ("gradient", gradient), ("update", update), ("mems", mems), ("rowbuf", rowbuf),
                          ("losslog", losslog), ("readback", readback), ("counters", counters)):
            m.submodules[name] = sub
        flush, job = control.flush, config.job

        # ---- configuration and control
        # a host's model word (idle only): stored in the configuration's layout, which the
        # job's settings then take (the model reads back in the layout it was written in)
        host_we = self.model_we & control.idle
        m.d.comb += [
            config.cfg.eq(self.cfg), config.load.eq(control.load | host_we),
            control.start.eq(self.start), control.soft_reset.eq(self.soft_reset),
            control.stop.eq(self.stop), control.warm.eq(self.warm),
            control.check.eq(config.check), control.check_ok.eq(config.check_ok),
            control.beat_taken.eq(stream_in.beat.valid), control.job_last.eq(stream_in.job_last),
            control.stop_last.eq(stream_in.stop_last), control.stop_end.eq(stream_in.stop_end),
            control.fault_short.eq(stream_in.fault_short), control.fault_long.eq(stream_in.fault_long),
            control.drain_last.eq(stream_in.drain_last), control.job_end.eq(update.job_end),
            control.x_written.eq(mems.x_write.en),
            self.busy.eq(control.busy), self.done.eq(control.done), self.error.eq(control.error),
            self.stopped.eq(control.stopped),
            codebook.we.eq(self.cb_we), codebook.addr.eq(self.cb_addr), codebook.data.eq(self.cb_data),
        ]

        # ---- stream input: the beats, the row buffer, the dot product's model reads
        wiring.connect(m, wiring.flipped(self.i_data), stream_in.i_data)
        m.d.comb += [
            stream_in.idle.eq(control.idle), stream_in.run.eq(control.run), stream_in.drain.eq(control.drain),
            stream_in.soft_reset.eq(self.soft_reset), stream_in.load.eq(control.load),
            stream_in.decoded.eq(config.decoded), stream_in.job.eq(job),
            stream_in.warm.eq(self.warm & ~control.model_zero), stream_in.stopping.eq(control.stopping),
            stream_in.w0_now.eq(update.w0_now), stream_in.epoch_written.eq(update.epoch_written),
            stream_in.readback_beat.eq(readback.beat_next),
            rowbuf.w_addr.eq(stream_in.rb_addr), rowbuf.w_data.eq(stream_in.beat.payload.data),
            rowbuf.w_en.eq(stream_in.beat.valid),
            mems.dot_beat.eq(stream_in.beat_addr),
        ]
        # the model read back (idle: the dot port reads at the pointer's beat)
        m.d.comb += [
            readback.rewind.eq(self.model_rewind), readback.next.eq(self.model_next),
            readback.write.eq(host_we),
            readback.lanes_f_m1.eq(job.lanes_f_m1), readback.w_lanes_f_m1.eq(config.decoded.lanes_f_m1),
            readback.words.eq(mems.dot_words), readback.zero.eq(control.model_zero),
            self.model_data.eq(readback.data),
            update.host.en.eq(host_we), update.host.beat.eq(readback.target_beat),
            update.host.lane.eq(readback.target_lane), update.host.data.eq(self.model_wdata),
        ]

        # ---- dot product, scalar unit
        wiring.connect(m, stream_in.beat, dot.beat)
        m.d.comb += [dot.flush.eq(flush), dot.job.eq(job), dot.words.eq(mems.dot_words),
                     dot.levels.eq(codebook.levels)]
        m.d.comb += [dot.codebook[l].eq(codebook.writes[l]) for l in range(M)]
        # a sample's token (taken with its last beat) waits for its sum, its r', its loss
        token = stream_in.sample
        m.d.comb += [scalar.i_valid.eq(dot.sum.valid), scalar.acc.eq(dot.sum.payload.acc),
                     scalar.y.eq(dot.sum.payload.y), scalar.loss.eq(job.loss), scalar.step_mult.eq(job.step_mult),
                     scalar.step_mult_neg.eq(job.step_mult_neg), scalar.pos_class.eq(job.pos_class),
                     scalar.k.eq(delay(m, token.payload.k, self.DOT_LATENCY, "tokk"))]
        to_loss = self.DOT_LATENCY + Scalar.LATENCY_LOSS
        loss_v = delay(m, token.valid, to_loss, "toklv", flush)
        loss_tok = delay(m, token.payload, to_loss, "tokl")
        m.d.comb += [losslog.i_valid.eq(scalar.loss_valid & loss_v), losslog.i_loss.eq(scalar.loss_out),
                     losslog.i_epoch_end.eq(loss_tok.le), losslog.clear.eq(control.clear),
                     losslog.loss_addr.eq(self.loss_addr), self.loss_data.eq(losslog.loss_data),
                     self.epochs_done.eq(losslog.epochs_done)]

        # ---- replay, gradient sum, update
        m.d.comb += [
            replay.sample.valid.eq(delay(m, token.valid, self.REPLAY_START, "tokrv", flush)),
            replay.sample.payload.eq(delay(m, token.payload, self.REPLAY_START, "tokr")),
            replay.flush.eq(flush), replay.job.eq(job), replay.levels.eq(codebook.levels),
            rowbuf.r_addr.eq(replay.rb_addr), replay.rb_data.eq(rowbuf.r_data),
        ]
        m.d.comb += [replay.rp[g].eq(c) for g, c in enumerate(scalar.rp_copies)]
        m.d.comb += [replay.codebook[l].eq(codebook.writes[M + l]) for l in range(M)]
        # the replay's tag, delayed to the stages that issue the update's and G's reads
        metas, valids = [replay.meta.payload], [replay.meta.valid]
        for i in range(1, max(self._meta_to_update, self._meta_to_gradient) + 1):
            metas.append(delay(m, metas[-1], 1, f"meta{i}"))
            valids.append(delay(m, valids[-1], 1, f"metav{i}", flush))
        for stage, sub in ((self._meta_to_gradient, gradient), (self._meta_to_update, update)):
            m.d.comb += [sub.meta.valid.eq(valids[stage]), sub.meta.payload.eq(metas[stage]),
                         sub.flush.eq(flush)]
        m.d.comb += [
            gradient.term.eq(replay.term),
            mems.g_beat.eq(gradient.g_read), gradient.g_words.eq(mems.g_words),
            mems.g_write.eq(gradient.g_write), mems.g_write_data.eq(gradient.g_write_data),
            update.job.eq(job), update.sum.eq(gradient.sum),
            mems.upd_beat.eq(update.x_read), update.x_words.eq(mems.upd_words),
            mems.x_write.eq(update.x_write), mems.x_write_data.eq(update.x_write_data),
        ]

        # ---- counters
        m.d.comb += [
            counters.clear.eq(control.clear),
            counters.events.cycles.eq(control.running),
            counters.events.stalls.eq(control.running & ~self.i_data.ready),
            counters.events.idles.eq(control.running & self.i_data.ready & ~self.i_data.valid),
            counters.events.beats.eq(stream_in.accepted),
            counters.events.samples.eq(scalar.loss_valid & loss_v),
            counters.events.saturated.eq(update.saturated),
        ]
        m.d.comb += [getattr(self, name).eq(getattr(counters, name)) for name in COUNTERS]
        return m
