"""The stream input: which beats the engine takes, and where each sits in the job.

One beat per cycle in steady state. A beat of a *split* mode (more features than the
engine has lanes, see :class:`~zipsgd.hw.decode.Mode`) is taken in two halves, the upper
half shifted down; the bus transfer happens with the second. The last beat of a batch
closes the gate until the update writes beat 0 of the model (``w0_now``): the next
batch's beat ``i`` is then read after the update has written it, with no forwarding.

Where a beat sits (its index in the sample, the features left, the last of its sample,
batch, epoch, job) is kept one step ahead in registers, so that TREADY and the acceptance
of a beat depend on a few gates of registers only.

Out of a job, the beat address follows the model read-back pointer (``readback_beat``),
so no multiplexer sits in the model memory's address.

A job started warm (``warm`` with ``load``) reads the model memory from its first batch on
(the ``zero`` flag stays 0). A stop request (``stopping``) ends the job at an epoch
boundary: no beat of an epoch not yet begun is taken; the last beat of the epoch in
progress becomes the job's last (``job_last``, ``stop_last``), or, when the request comes
between epochs, ``stop_end`` ends the job once the epoch's last model beat is written
(``epoch_written``).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from zipsgd.contract import MODEL, STEP_SHIFT_MAX, EngineParams

from .config import settings_layout
from .pipe import copies

#: Copies of the half flag, one per slice of the beat multiplexer.
HALF_COPIES = 4


def remaining_shape(params: EngineParams):
    """Features left in a sample from a beat on (``dim`` - the beat's first feature; goes
    negative past the last beat's slots)."""
    return signed(ceil_log2(params.dim_max + 2 * params.word_bits + 1) + 2)


def beat_layout(word_bits: int) -> data.StructLayout:
    """A beat entering the engine (the bus beat, or its upper half shifted down)."""
    return data.StructLayout({
        "data": word_bits,
        "label": signed(MODEL.width),        # the label field of the bus beat
        "first": 1,                          # the sample's first beat
        "last": 1,                           # ... its last
        "nvalid": range(word_bits + 1),      # lanes that carry a feature
        "zero": 1,                           # the job's first batch: the model is still 0
    })


def token_layout(rb_bits: int) -> data.StructLayout:
    """A sample's token, taken with its last beat: what the scalar unit, the replay and the
    update need to know about it."""
    return data.StructLayout({
        "fb": 1,            # first sample of its batch
        "lb": 1,            # last sample of its batch (within the epoch)
        "le": 1,            # last sample of its epoch
        "lj": 1,            # last sample of the job
        "zero": 1,          # in the job's first batch
        "k": range(STEP_SHIFT_MAX + 1),      # the epoch's step shift
        "rbstart": rb_bits,                  # its first beat's row-buffer address
    })


class StreamIn(wiring.Component):
    """Stream acceptance and the position of each beat in the job.

    Parameters
    ----------
    params : EngineParams
    beat_bits : int
        Bits of a beat address.
    rb_depth : int
        Words of the row buffer (a power of two; its write pointer wraps).

    Members
    -------
    i_data : In(stream)
        The engine's AXI4-Stream input (payload ``data``, ``last``).
    idle, run, drain : In(1)
        The control's state (see :class:`~zipsgd.hw.control.Control`).
    soft_reset, load : In(1)
        Abort (nothing advances); a job starts (every count restarts).
    decoded, job : In(settings_layout)
        The configuration's settings (for ``load``) and the job's.
    warm : In(1)
        With ``load``: the job starts from the model in memory (the first batch reads it).
    stopping : In(1)
        A stop was requested (a register): end the job at the next epoch boundary.
    w0_now : In(1)
        The update writes model beat 0 this cycle (a register): a batch may start.
    epoch_written : In(1)
        The update writes the last model beat of an epoch this cycle.
    readback_beat : In(beat_bits)
        The read-back pointer's next beat.
    beat : Out(stream, always_ready)
        The beat entering the pipeline (:func:`beat_layout`), in the cycle it is taken.
    beat_addr : Out(beat_bits)
        The beat's index in its sample (the read-back pointer while idle), a register.
    sample : Out(stream, always_ready)
        A sample's token (:func:`token_layout`), with its last beat.
    rb_addr : Out
        The row-buffer address the beat is written to.
    accepted, job_last, fault_short, fault_long, drain_last : Out(1)
        A bus transfer; the beat taken is the job's last; TLAST inside a sample; no TLAST
        on the epoch's last beat; TLAST while draining.
    stop_last : Out(1)
        With ``job_last``: the job ends early, on the stop request (epochs remained).
    stop_end : Out(1)
        On a stop request between epochs: no beat of the next epoch was taken and every
        update of the last one is written: the job ends now.
    """

    #: Cycles from a change of ``readback_beat`` to ``beat_addr``.
    ADDR_LATENCY = 1

    def __init__(self, params: EngineParams, beat_bits: int, rb_depth: int):
        self.params, self.beat_bits, self.rb_depth = params, beat_bits, rb_depth
        W = params.word_bits
        rb_bits = ceil_log2(rb_depth)
        settings = settings_layout(params)
        super().__init__({
            "i_data": In(stream.Signature(data.StructLayout({"data": W, "last": 1}))),
            "idle": In(1), "run": In(1), "drain": In(1),
            "soft_reset": In(1), "load": In(1),
            "decoded": In(settings), "job": In(settings),
            "warm": In(1), "stopping": In(1),
            "w0_now": In(1), "epoch_written": In(1),
            "readback_beat": In(beat_bits),
            "beat": Out(stream.Signature(beat_layout(W), always_ready=True)),
            "beat_addr": Out(beat_bits),
            "sample": Out(stream.Signature(token_layout(rb_bits), always_ready=True)),
            "rb_addr": Out(rb_bits),
            "accepted": Out(1), "job_last": Out(1),
            "fault_short": Out(1), "fault_long": Out(1), "drain_last": Out(1),
            "stop_last": Out(1), "stop_end": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p, job, dec = self.params, self.job, self.decoded
        W = p.word_bits
        rb_bits = ceil_log2(self.rb_depth)

        beat_index = Signal(self.beat_bits, reset_less=True)      # the beat's index in its sample
        sample_in_batch = Signal(range(p.batch_max + 1), reset_less=True)
        sample_in_epoch = Signal(32, reset_less=True)
        epoch = Signal(range(p.epochs_max + 1), reset_less=True)
        step_shift = Signal(range(STEP_SHIFT_MAX + 1), reset_less=True)  # the epoch's step shift
        decay_count = Signal(32, reset_less=True)                # epochs since the last decay
        model_zero = Signal(reset_less=True)       # first batch of the job: the model is still 0
        wptr = Signal(rb_bits, reset_less=True)                  # row-buffer write pointer
        wptr_first = Signal(rb_bits, reset_less=True)            # ... at the sample's first beat
        pending = Signal()          # a batch-end update has not written model beat 0 yet
        epoch_start = Signal(reset_less=True)   # the next beat is an epoch's first (none taken)
        quiet = Signal(reset_less=True)         # no update in flight (every beat taken is written)

        # split modes: the upper half of the bus beat is next (``keep``: its copies for the
        # beat multiplexer below load the same value, and synthesis would merge it into one)
        half = Signal(reset_less=True, attrs={"keep": 1})
        half_next = Signal()
        m.d.comb += half_next.eq(half)
        m.d.sync += half.eq(half_next)
        half_k = copies(m, half_next, HALF_COPIES, "inhalf")
        beat_next = Signal(self.beat_bits)
        m.d.comb += beat_next.eq(Mux(self.idle, self.readback_beat, beat_index))
        m.d.sync += beat_index.eq(beat_next)

        bus_last = Signal()         # the bus beat is the sample's last
        sample_last = Signal()      # the beat entering the engine is the sample's last
        nvalid = Signal(range(W + 1))
        batch_last = Signal()      # the sample ends its batch (or its epoch)
        epoch_last_beat = Signal()  # the beat is its epoch's last
        job_last_beat = Signal()    # ... the job's
        # the flags kept one step ahead: dim - first feature of the beat, and whether the
        # beat or its lower half (last_lo) / its upper half (last_hi) is the sample's last
        remaining = Signal(remaining_shape(p), reset_less=True)
        last_lo = Signal(reset_less=True)
        last_hi = Signal(reset_less=True)
        last_of_epoch = Signal(reset_less=True)    # the sample is the last of its epoch
        last_of_batch = Signal(reset_less=True)    # ... the last of its batch (within the epoch)
        last_epoch = Signal(reset_less=True)       # the epoch is the job's last
        m.d.comb += [
            bus_last.eq(Mux(half, last_hi, last_lo)),
            sample_last.eq(bus_last & (half | job.skip_high)),
            nvalid.eq(Mux(remaining <= 0, 0, Mux(remaining >= job.lanes_f, job.lanes_f, remaining))),
            batch_last.eq(last_of_batch | last_of_epoch),
            epoch_last_beat.eq(sample_last & last_of_epoch),
            job_last_beat.eq(epoch_last_beat & (last_epoch | self.stopping)),
        ]

        # acceptance
        ready = Signal()            # the engine can take a beat (or half a beat)
        hold = Signal()             # taking the lower half of a split beat: no transfer yet
        m.d.comb += [
            ready.eq((self.run & (~pending | self.w0_now) & ~(self.stopping & epoch_start)) | self.drain),
            hold.eq(self.run & job.split & ~half & ~sample_last),
            self.i_data.ready.eq(ready & ~hold),
        ]
        take = Signal()             # a beat (or half a beat) enters the engine
        accept = Signal()           # a bus transfer
        run_accept = Signal()       # a beat enters the pipeline (a faulty one is flushed the
        m.d.comb += [take.eq(ready & self.i_data.valid), accept.eq(take & ~hold),  # next cycle)
                     run_accept.eq(take & self.run)]
        beat_in = self.i_data.payload.data
        tlast = self.i_data.payload.last
        vbeat = Signal(W)           # the engine's beat: the bus beat or its upper half shifted down
        hi_half = beat_in >> (W // 2)
        n = HALF_COPIES
        m.d.comb += vbeat.eq(Cat(*[Mux(half_k[i], hi_half[i * W // n:(i + 1) * W // n],
                                       beat_in[i * W // n:(i + 1) * W // n]) for i in range(n)]))
        m.d.comb += [
            self.accepted.eq(accept),
            self.job_last.eq(job_last_beat),
            self.fault_short.eq(accept & self.run & tlast & ~sample_last),
            self.fault_long.eq(accept & self.run & epoch_last_beat & ~tlast),
            self.drain_last.eq(accept & tlast),
            self.stop_last.eq(self.stopping & ~last_epoch),
            self.stop_end.eq(self.run & self.stopping & epoch_start & quiet),
        ]

        # the beat and its sample's token
        m.d.comb += [
            self.beat.valid.eq(run_accept),
            self.beat.payload.data.eq(vbeat),
            self.beat.payload.label.eq(beat_in[W - MODEL.width:].as_signed()),
            self.beat.payload.first.eq(beat_index == 0),
            self.beat.payload.last.eq(sample_last),
            self.beat.payload.nvalid.eq(nvalid),
            self.beat.payload.zero.eq(model_zero),
            self.beat_addr.eq(beat_index),
            self.rb_addr.eq(wptr),
        ]
        tok = self.sample.payload
        m.d.comb += [
            self.sample.valid.eq(run_accept & sample_last),
            tok.fb.eq(sample_in_batch == 0), tok.lb.eq(batch_last), tok.le.eq(last_of_epoch),
            tok.lj.eq(job_last_beat), tok.zero.eq(model_zero), tok.k.eq(step_shift),
            tok.rbstart.eq(Mux(beat_index == 0, wptr, wptr_first)),
        ]

        # the counts: restarted by a job's start, advanced by every beat taken
        with m.If(self.w0_now):
            m.d.sync += pending.eq(0)
        with m.If(self.epoch_written):          # (a beat taken in the same cycle wins, below)
            m.d.sync += quiet.eq(1)
        with m.If(self.soft_reset):
            m.d.sync += pending.eq(0)
        with m.Elif(self.load):
            m.d.comb += [beat_next.eq(0), half_next.eq(0)]
            m.d.sync += [
                sample_in_batch.eq(0), sample_in_epoch.eq(0), epoch.eq(0), step_shift.eq(dec.step_shift), decay_count.eq(0),
                model_zero.eq(~self.warm), pending.eq(0), wptr.eq(0), epoch_start.eq(1), quiet.eq(1),
                remaining.eq(dec.dim), last_lo.eq(dec.first_last_l), last_hi.eq(dec.first_last_h),
                last_of_epoch.eq(dec.n_one), last_of_batch.eq(dec.b_one), last_epoch.eq(dec.e_one),
            ]
        with m.Elif(run_accept):
            # (the beat's updates do not wait for the fault tests: TLAST stays off their
            # enables; after a fault the job ends, and a start sets them all again)
            m.d.sync += [wptr.eq(wptr + 1), epoch_start.eq(epoch_last_beat), quiet.eq(0)]
            m.d.comb += half_next.eq(hold)
            with m.If(beat_index == 0):
                m.d.sync += wptr_first.eq(wptr)
            with m.If(~sample_last):
                m.d.comb += beat_next.eq(beat_index + 1)
                m.d.sync += [remaining.eq(remaining - job.lanes_f),
                             last_lo.eq(remaining <= job.lanes_ffl), last_hi.eq(remaining <= job.lanes_ffh)]
            with m.Else():
                m.d.comb += beat_next.eq(0)
                m.d.sync += [remaining.eq(job.dim), last_lo.eq(job.first_last_l), last_hi.eq(job.first_last_h)]
                with m.If(batch_last):
                    m.d.sync += [sample_in_batch.eq(0), pending.eq(1), model_zero.eq(0), last_of_batch.eq(job.b_one)]
                with m.Else():
                    m.d.sync += [sample_in_batch.eq(sample_in_batch + 1), last_of_batch.eq(sample_in_batch == job.b_m2)]
                with m.If(last_of_epoch):
                    m.d.sync += [sample_in_epoch.eq(0), epoch.eq(epoch + 1), last_of_epoch.eq(job.n_one),
                                 last_epoch.eq(epoch == job.e_m2)]
                    with m.If(job.decay != 0):
                        with m.If(decay_count == job.decay_m1):
                            m.d.sync += [decay_count.eq(0),
                                         step_shift.eq(Mux(step_shift >= STEP_SHIFT_MAX, step_shift, step_shift + 1))]
                        with m.Else():
                            m.d.sync += decay_count.eq(decay_count + 1)
                with m.Else():
                    m.d.sync += [sample_in_epoch.eq(sample_in_epoch + 1), last_of_epoch.eq(sample_in_epoch == job.n_m2)]
            with m.If(self.fault_short | self.fault_long):
                m.d.sync += pending.eq(0)
        return m
