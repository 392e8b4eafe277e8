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
    w0_now : In(1)
        The update writes model beat 0 this cycle (a register): a batch may start.
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
            "w0_now": In(1),
            "readback_beat": In(beat_bits),
            "beat": Out(stream.Signature(beat_layout(W), always_ready=True)),
            "beat_addr": Out(beat_bits),
            "sample": Out(stream.Signature(token_layout(rb_bits), always_ready=True)),
            "rb_addr": Out(rb_bits),
            "accepted": Out(1), "job_last": Out(1),
            "fault_short": Out(1), "fault_long": Out(1), "drain_last": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p, job, dec = self.params, self.job, self.decoded
        W = p.word_bits
        rb_bits = ceil_log2(self.rb_depth)

        in_beat = Signal(self.beat_bits, reset_less=True)       # the beat's index in its sample
        in_sb = Signal(range(p.batch_max + 1), reset_less=True)  # sample in its batch
        in_se = Signal(32, reset_less=True)                      # sample in its epoch
        in_epoch = Signal(range(p.epochs_max + 1), reset_less=True)
        in_k = Signal(range(STEP_SHIFT_MAX + 1), reset_less=True)  # the epoch's step shift
        in_dcnt = Signal(32, reset_less=True)                    # epochs since the last decay
        in_zero = Signal(reset_less=True)          # first batch of the job: model is still zero
        wptr = Signal(rb_bits, reset_less=True)                  # row-buffer write pointer
        in_rbstart = Signal(rb_bits, reset_less=True)            # ... at the sample's first beat
        pending = Signal()          # a batch-end update has not written beat 0 yet

        # split modes: the upper half of the bus beat is next (``keep``: its copies for the
        # beat multiplexer below load the same value, and synthesis would merge it into one)
        in_half = Signal(reset_less=True, attrs={"keep": 1})
        in_half_nx = Signal()
        m.d.comb += in_half_nx.eq(in_half)
        m.d.sync += in_half.eq(in_half_nx)
        in_half_k = copies(m, in_half_nx, HALF_COPIES, "inhalf")
        in_beat_nx = Signal(self.beat_bits)
        m.d.comb += in_beat_nx.eq(Mux(self.idle, self.readback_beat, in_beat))
        m.d.sync += in_beat.eq(in_beat_nx)

        real_last = Signal()        # the bus beat is the sample's last
        in_last_beat = Signal()     # the beat entering the engine is the sample's last
        in_nvalid = Signal(range(W + 1))
        last_in_epoch = Signal()
        last_in_batch = Signal()
        final_beat = Signal()
        final_job = Signal()
        # the flags kept one step ahead: dim - first feature of the beat, and whether the
        # beat or its lower half (in_rl) / its upper half (in_rh) is the sample's last
        in_rem = Signal(remaining_shape(p), reset_less=True)
        in_rl = Signal(reset_less=True)
        in_rh = Signal(reset_less=True)
        le_r = Signal(reset_less=True)             # the sample is the last of its epoch
        lb_r = Signal(reset_less=True)             # ... the last of its batch (within the epoch)
        lj_r = Signal(reset_less=True)             # the epoch is the job's last
        m.d.comb += [
            real_last.eq(Mux(in_half, in_rh, in_rl)),
            in_last_beat.eq(real_last & (in_half | job.skip_high)),
            in_nvalid.eq(Mux(in_rem <= 0, 0, Mux(in_rem >= job.lanes_f, job.lanes_f, in_rem))),
            last_in_epoch.eq(le_r),
            last_in_batch.eq(lb_r | le_r),
            final_beat.eq(in_last_beat & last_in_epoch),
            final_job.eq(final_beat & lj_r),
        ]

        # acceptance
        ready = Signal()            # the engine can take a beat (or half a beat)
        hold = Signal()             # taking the lower half of a split beat: no transfer yet
        m.d.comb += [
            ready.eq((self.run & (~pending | self.w0_now)) | self.drain),
            hold.eq(self.run & job.split & ~in_half & ~in_last_beat),
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
        m.d.comb += vbeat.eq(Cat(*[Mux(in_half_k[i], hi_half[i * W // n:(i + 1) * W // n],
                                       beat_in[i * W // n:(i + 1) * W // n]) for i in range(n)]))
        m.d.comb += [
            self.accepted.eq(accept),
            self.job_last.eq(final_job),
            self.fault_short.eq(accept & self.run & tlast & ~in_last_beat),
            self.fault_long.eq(accept & self.run & final_beat & ~tlast),
            self.drain_last.eq(accept & tlast),
        ]

        # the beat and its sample's token
        m.d.comb += [
            self.beat.valid.eq(run_accept),
            self.beat.payload.data.eq(vbeat),
            self.beat.payload.label.eq(beat_in[W - MODEL.width:].as_signed()),
            self.beat.payload.first.eq(in_beat == 0),
            self.beat.payload.last.eq(in_last_beat),
            self.beat.payload.nvalid.eq(in_nvalid),
            self.beat.payload.zero.eq(in_zero),
            self.beat_addr.eq(in_beat),
            self.rb_addr.eq(wptr),
        ]
        tok = self.sample.payload
        m.d.comb += [
            self.sample.valid.eq(run_accept & in_last_beat),
            tok.fb.eq(in_sb == 0), tok.lb.eq(last_in_batch), tok.le.eq(last_in_epoch),
            tok.lj.eq(final_job), tok.zero.eq(in_zero), tok.k.eq(in_k),
            tok.rbstart.eq(Mux(in_beat == 0, wptr, in_rbstart)),
        ]

        # the counts: restarted by a job's start, advanced by every beat taken
        with m.If(self.w0_now):
            m.d.sync += pending.eq(0)
        with m.If(self.soft_reset):
            m.d.sync += pending.eq(0)
        with m.Elif(self.load):
            m.d.comb += [in_beat_nx.eq(0), in_half_nx.eq(0)]
            m.d.sync += [
                in_sb.eq(0), in_se.eq(0), in_epoch.eq(0), in_k.eq(dec.step_shift), in_dcnt.eq(0),
                in_zero.eq(1), pending.eq(0), wptr.eq(0),
                in_rem.eq(dec.dim), in_rl.eq(dec.first_last_l), in_rh.eq(dec.first_last_h),
                le_r.eq(dec.n_one), lb_r.eq(dec.b_one), lj_r.eq(dec.e_one),
            ]
        with m.Elif(run_accept):
            # (the beat's updates do not wait for the fault tests: TLAST stays off their
            # enables; after a fault the job ends, and a start sets them all again)
            m.d.sync += wptr.eq(wptr + 1)
            m.d.comb += in_half_nx.eq(hold)
            with m.If(in_beat == 0):
                m.d.sync += in_rbstart.eq(wptr)
            with m.If(~in_last_beat):
                m.d.comb += in_beat_nx.eq(in_beat + 1)
                m.d.sync += [in_rem.eq(in_rem - job.lanes_f),
                             in_rl.eq(in_rem <= job.lanes_ffl), in_rh.eq(in_rem <= job.lanes_ffh)]
            with m.Else():
                m.d.comb += in_beat_nx.eq(0)
                m.d.sync += [in_rem.eq(job.dim), in_rl.eq(job.first_last_l), in_rh.eq(job.first_last_h)]
                with m.If(last_in_batch):
                    m.d.sync += [in_sb.eq(0), pending.eq(1), in_zero.eq(0), lb_r.eq(job.b_one)]
                with m.Else():
                    m.d.sync += [in_sb.eq(in_sb + 1), lb_r.eq(in_sb == job.b_m2)]
                with m.If(last_in_epoch):
                    m.d.sync += [in_se.eq(0), in_epoch.eq(in_epoch + 1), le_r.eq(job.n_one),
                                 lj_r.eq(in_epoch == job.e_m2)]
                    with m.If(job.decay != 0):
                        with m.If(in_dcnt == job.decay_m1):
                            m.d.sync += [in_dcnt.eq(0),
                                         in_k.eq(Mux(in_k >= STEP_SHIFT_MAX, in_k, in_k + 1))]
                        with m.Else():
                            m.d.sync += in_dcnt.eq(in_dcnt + 1)
                with m.Else():
                    m.d.sync += [in_se.eq(in_se + 1), le_r.eq(in_se == job.n_m2)]
            with m.If(self.fault_short | self.fault_long):
                m.d.sync += pending.eq(0)
        return m
