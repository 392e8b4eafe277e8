"""Control and counters of the engine: the job's state machine and its cycle counters.

:class:`Control` starts a job (or refuses its configuration at once), ends it when the
update writes the job's last model beat, and handles the stream faults, the soft reset
and the stop request (a job ends early at an epoch boundary: the stream input marks the
epoch's last beat as the job's, or ends the job between epochs, ``stop_end``). A fault or a soft reset *flushes* the pipeline: every valid bit in flight is
cleared the next cycle (data registers keep their values; nothing uses them).

:class:`Counters` counts the contract's per-job events (``COUNTER_NAMES``): each cycle's
events are registered, then added, so the 64-bit adders stay off the stream's TREADY
path; a start clears them. ``busy`` and ``done`` show one cycle after the last counted
cycle, when the counts are complete.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from zipsgd.contract import COUNTER_NAMES, Error

from .pipe import copies


def counter_port(name: str) -> str:
    """Engine port of a contract counter name (``"BEATS"`` -> ``"cnt_beats"``)."""
    return f"cnt_{name.lower()}"


#: The counter ports, in the contract's order.
COUNTERS = tuple(counter_port(n) for n in COUNTER_NAMES)
#: One bit per counter: the event it counts happened this cycle.
EVENTS = data.StructLayout({n.lower(): 1 for n in COUNTER_NAMES})


class Counters(wiring.Component):
    """The contract's job counters (64 bits each, ``COUNTER_NAMES``).

    Members
    -------
    events : In(EVENTS)
        This cycle's events, one bit per counter.
    clear : In(1)
        A job starts: every counter restarts at 0 (one cycle later: the start cycle has no
        events, the engine being idle in it).
    cnt_<name> : Out(64)
        The counts, ``LATENCY`` cycles behind the events.
    """

    #: Cycles from an event to its count (the event registered, then added).
    LATENCY = 2

    def __init__(self):
        super().__init__({
            "events": In(EVENTS),
            "clear": In(1),
            **{name: Out(64) for name in COUNTERS},
        })

    def elaborate(self, platform):
        m = Module()
        # each counter's clear from a register copy of its own, next to the counter
        clr = dict(zip(COUNTERS, copies(m, self.clear, len(COUNTERS), "cntclr")))
        for name, count_name in zip(COUNTER_NAMES, COUNTERS):
            event = Signal(name=f"ev_{count_name}")
            m.d.sync += event.eq(self.events[name.lower()])
            count = getattr(self, count_name)
            m.d.sync += count.eq(Mux(clr[count_name], 0, count + event))
        return m


class Control(wiring.Component):
    """The job's state machine: idle, running, tail (every beat taken, the last update in
    flight), draining (after STREAM_LONG: beats are taken and dropped up to TLAST).

    Members
    -------
    start, soft_reset, stop : In(1)
        Pulses from the register block (a start while busy is ignored, a stop while idle).
    warm : In(1)
        With ``start``: the job starts from the model in memory.
    check, check_ok : In
        The configuration's validation code (see :class:`~zipsgd.hw.config.Config`).
    beat_taken, job_last, stop_last : In(1)
        A beat of the running job is taken; it is the job's last; ... on a stop request.
    stop_end : In(1)
        A stop request between epochs: the job ends now.
    x_written : In(1)
        A model word is written (by an update or the host).
    fault_short, fault_long, drain_last : In(1)
        TLAST inside a sample; no TLAST on the epoch's last beat; TLAST while draining.
    job_end : In(1)
        The update writes the job's last model beat.
    idle, run, drain, running : Out(1)
        The state (``running``: not idle).
    load : Out(1)
        A job starts (its configuration passed the check): latch the settings, restart
        the counts.
    clear : Out(1)
        A start in idle, refused or not: the counters and the epoch losses restart.
    flush : Out(1)
        Every valid bit in flight is cleared (a start, a soft reset, or the cycle after a
        stream fault).
    busy, done, error, stopped : Out
        The status: ``done`` and the end of ``busy`` come ``DONE_DELAY`` cycles after the
        last counted cycle, when the counters have caught up; ``stopped``: the job ended
        early on a stop request (with ``done``).
    stopping : Out(1)
        A stop was requested during the running job (a register).
    model_zero : Out(1)
        The model is zero: a job started from zero has written none of it (a job stopped
        before its first beat); a warm start then starts from zero too.
    """

    IDLE, RUN, TAIL, DRAIN = range(4)
    #: Cycles from the end of a job to ``done`` (the counters add registered events).
    DONE_DELAY = Counters.LATENCY - 1

    def __init__(self):
        super().__init__({
            "start": In(1), "soft_reset": In(1), "stop": In(1), "warm": In(1),
            "check": In(8), "check_ok": In(1),
            "beat_taken": In(1), "job_last": In(1), "stop_last": In(1), "stop_end": In(1),
            "fault_short": In(1), "fault_long": In(1), "drain_last": In(1),
            "job_end": In(1), "x_written": In(1),
            "idle": Out(1), "run": Out(1), "drain": Out(1), "running": Out(1),
            "load": Out(1), "clear": Out(1), "flush": Out(1),
            "busy": Out(1), "done": Out(1), "error": Out(8), "stopped": Out(1),
            "stopping": Out(1), "model_zero": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        assert self.DONE_DELAY == 1
        state = Signal(2)
        running_d = Signal()
        done_i = Signal()             # done as the control sets it (the port is one cycle later)
        stopped_i = Signal()          # ... stopped
        cut = Signal()                # the job's last beat was taken on the stop request
        m.d.comb += [
            self.idle.eq(state == self.IDLE), self.run.eq(state == self.RUN),
            self.drain.eq(state == self.DRAIN), self.running.eq(state != self.IDLE),
        ]
        m.d.sync += [running_d.eq(self.running), self.done.eq(done_i), self.stopped.eq(stopped_i)]
        m.d.comb += self.busy.eq(self.running | running_d)

        abort = Signal()            # stream fault (the cycle after): drop everything in flight
        m.d.sync += abort.eq(self.fault_short | self.fault_long)     # (keeps TLAST off the flush net)
        m.d.comb += [
            self.flush.eq(self.soft_reset | (self.start & self.idle) | abort),
            self.clear.eq(~self.soft_reset & self.idle & self.start),
            self.load.eq(~self.soft_reset & self.idle & self.start & self.check_ok),
        ]

        # the model is zero from a start without warm until a word of it is written
        with m.If(self.load):
            m.d.sync += self.model_zero.eq(self.model_zero | ~self.warm)
        with m.Elif(self.x_written):
            m.d.sync += self.model_zero.eq(0)

        with m.If(self.soft_reset):
            m.d.sync += [state.eq(self.IDLE), done_i.eq(0), self.done.eq(0), self.error.eq(Error.NONE),
                         running_d.eq(0), stopped_i.eq(0), self.stopped.eq(0), self.stopping.eq(0)]
        with m.Elif(self.idle):
            with m.If(self.start):
                m.d.sync += [done_i.eq(0), self.done.eq(0), self.error.eq(self.check),
                             stopped_i.eq(0), self.stopped.eq(0), self.stopping.eq(0), cut.eq(0)]
                with m.If(~self.check_ok):                     # refused at once (nothing to count)
                    m.d.sync += [done_i.eq(1), self.done.eq(1)]
                with m.Else():
                    m.d.sync += state.eq(self.RUN)
        with m.Elif(self.drain):
            with m.If(self.drain_last):
                m.d.sync += [state.eq(self.IDLE), done_i.eq(1)]
        with m.Else():
            with m.If(self.stop):
                m.d.sync += self.stopping.eq(1)
            with m.If(self.job_end):
                m.d.sync += [state.eq(self.IDLE), done_i.eq(1), stopped_i.eq(cut)]
            with m.If(self.run & self.stop_end):
                m.d.sync += [state.eq(self.IDLE), done_i.eq(1), stopped_i.eq(1)]
            with m.If(self.beat_taken):
                with m.If(self.job_last):
                    m.d.sync += [state.eq(self.TAIL), cut.eq(self.stop_last)]
                with m.If(self.fault_short):           # (the last assignment wins)
                    m.d.sync += [state.eq(self.IDLE), done_i.eq(1), self.error.eq(Error.STREAM_SHORT)]
                with m.Elif(self.fault_long):
                    m.d.sync += [state.eq(self.DRAIN), self.error.eq(Error.STREAM_LONG)]
        return m
