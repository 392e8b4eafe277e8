"""Amaranth-simulator tests of the engine's stages on their own: the gradient sum with its
forwarding, the model update, and the latency accounts the engine is built from."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from zipsgd.contract import FEAT, MODEL, EngineParams, rshift_round
from zipsgd.hw.core import BATCH_STALL_BUDGET, Engine
from zipsgd.hw.gradient import G_ROUND, GradientSum
from zipsgd.hw.memories import LaneMemories
from zipsgd.hw.replay import TERM_BITS, Replay
from zipsgd.hw.scalar import Scalar
from zipsgd.hw.update import ModelUpdate

PARAMS = EngineParams(word_bits=64, dim_max=256, batch_max=64, epochs_max=16)
BEAT_BITS = 8


def _batches(rng, n_batches):
    """Replayed beats of random batches: per cycle ``None`` (a gap) or
    ``(batch, sample, beat, beats, nvalid, fb, lb)``; samples of 1-5 beats come back to back
    (so a beat's index recurs 1-5 cycles later: every forwarding case), gaps now and then."""
    cycles = []
    for b in range(n_batches):
        beats = int(rng.integers(1, 6))
        size = int(rng.integers(1, 6))
        nvalid = [int(rng.integers(1, 33)) for _ in range(beats)]
        for s in range(size):
            for i in range(beats):
                cycles.append((b, s, i, beats, nvalid[i], s == 0, s == size - 1))
            while rng.random() < 0.2:
                cycles.append(None)
    return cycles


class _GradientBench(wiring.Component):
    """A gradient sum wired to the engine's lane memories (its G memory)."""

    def __init__(self):
        self.mems = LaneMemories(PARAMS.word_bits, PARAMS.dim_max, PARAMS.lanes, BEAT_BITS)
        self.dut = GradientSum(PARAMS, BEAT_BITS, LaneMemories.READ_LATENCY)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mems, m.submodules.dut = self.mems, self.dut
        m.d.comb += [self.mems.g_beat.eq(self.dut.g_read), self.dut.g_words.eq(self.mems.g_words),
                     self.mems.g_write.eq(self.dut.g_write), self.mems.g_write_data.eq(self.dut.g_write_data)]
        return m


def test_gradient_sum_with_forwarding_equals_the_reference_sums():
    """Each batch's last sample sees, per beat and live lane, the rounding constant plus the
    sum of the batch's terms (so ``G >> 16`` is the reference's ``round(g >> 16)``), with
    samples short enough that a beat's sum is forwarded from 1, 2, 3 or 4 cycles before."""
    rng = np.random.default_rng(5)
    cycles = _batches(rng, 40)
    L = PARAMS.lanes
    terms = rng.integers(-(1 << 45), 1 << 45, size=(len(cycles), L))
    bench = _GradientBench()
    dut, P = bench.dut, bench.dut.TERM_DELAY
    got = {}

    async def tb(ctx):
        for c in range(len(cycles) + P + 2):
            cy = cycles[c] if c < len(cycles) else None
            ctx.set(dut.meta.valid, cy is not None)
            if cy is not None:
                _, _, beat, _, nvalid, fb, lb = cy
                ctx.set(dut.meta.payload, {"beat": beat, "nvalid": nvalid, "fb": fb, "lb": lb,
                                           "lj": 0, "zero": 0, "last": 0})
            at = c - P                          # the beat whose terms are due now
            if 0 <= at < len(cycles) and cycles[at] is not None:
                for lane in range(L):
                    ctx.set(dut.term[lane], int(terms[at, lane]))
                if cycles[at][6]:
                    got[at] = [ctx.get(dut.sum[lane]) for lane in range(L)]
            await ctx.tick()

    sim = Simulator(bench)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()

    total = {}
    for c, cy in enumerate(cycles):
        if cy is not None:
            key = (cy[0], cy[2])
            total[key] = total.get(key, 0) + terms[c]
    forwarded = 0
    for at, sums in got.items():
        b, s, beat, beats, nvalid, _, _ = cycles[at]
        g = total[b, beat]
        for lane in range(nvalid):
            assert sums[lane] == int(g[lane]) + G_ROUND, (at, lane)
            assert sums[lane] >> FEAT.frac == rshift_round(int(g[lane]), FEAT.frac)
        forwarded += s > 0 and beats <= 4
    assert len(got) == sum(1 for cy in cycles if cy is not None and cy[6])
    assert forwarded, "no batch short enough to forward"


def test_model_update_equals_the_reference_update():
    """``x = sat(x - round(G >> 16) - round(x >> l2))`` for a batch's last sample only (the
    others write nothing), x read as 0 in the job's first batch, G beyond the clamp
    saturating, every L2 shift; ``w0_now`` with the write of beat 0, ``job_end`` with the
    job's last beat."""
    rng = np.random.default_rng(6)
    L = PARAMS.lanes
    dut = ModelUpdate(PARAMS, BEAT_BITS, LaneMemories.READ_LATENCY)
    X, S, U = LaneMemories.READ_LATENCY, dut.SUM_DELAY, dut.WRITE_STAGE
    n = 300
    beats = []
    for c in range(n):
        if rng.random() < 0.15:
            beats.append(None)
            continue
        beats.append(dict(beat=int(rng.integers(0, 6)), nvalid=int(rng.integers(1, 33)), lb=int(rng.random() < 0.6),
                          zero=int(rng.random() < 0.2), lj=int(rng.random() < 0.3), last=int(rng.random() < 0.3),
                          le=int(rng.random() < 0.3)))
    x = rng.integers(MODEL.min, MODEL.max + 1, size=(n, L))
    x[::7] = MODEL.max                                       # saturating corners
    x[3::7] = MODEL.min
    wide = rng.integers(-(1 << 62), 1 << 62, size=(n, L))    # beyond the clamp
    g = np.where(rng.random((n, L)) < 0.3, wide, rng.integers(-(1 << 50), 1 << 50, size=(n, L)))
    small = (np.arange(n) // 15) % 2 == 0                    # runs of beats whose update stays in range
    x[small] = rng.integers(-(1 << 28), 1 << 28, size=(int(small.sum()), L))
    g[small] = rng.integers(-(1 << 42), 1 << 42, size=(int(small.sum()), L))
    for l2 in (0, 1, 5, 31):
        writes, w0s, ends, sats = {}, [], [], []

        async def tb(ctx, l2=l2):
            ctx.set(dut.job.l2_shift, l2)
            await ctx.tick().repeat(dut.L2_SETTLE + 1)       # a job's start: the copies settle
            for c in range(n + U + 2):
                b = beats[c] if c < n else None
                ctx.set(dut.meta.valid, b is not None)
                if b is not None:
                    ctx.set(dut.meta.payload, {**b, "fb": 0})
                if 0 <= c - X < n:
                    for lane in range(L):
                        ctx.set(dut.x_words[lane], int(x[c - X, lane]))
                if 0 <= c - S < n:
                    for lane in range(L):
                        ctx.set(dut.sum[lane], int(g[c - S, lane]) + G_ROUND)
                if 0 <= c - U < n:
                    writes[c - U] = [ctx.get(dut.x_write_data[lane]) for lane in range(L)]
                    w0s.append((c - U, ctx.get(dut.w0_now)))
                    ends.append((c - U, ctx.get(dut.job_end), ctx.get(dut.epoch_written)))
                    sats.append((c - U, ctx.get(dut.saturated)))
                if 0 <= c - (U - 1) < n:
                    writes[("req", c - U + 1)] = (ctx.get(dut.x_write.en), ctx.get(dut.x_write.beat),
                                                 ctx.get(dut.x_write.nvalid))
                await ctx.tick()

        sim = Simulator(dut)
        sim.add_clock(1e-8)
        sim.add_testbench(tb)
        sim.run()
        sticky, want_sat = False, {}
        for c, b in enumerate(beats):
            en, beat, nvalid = writes["req", c]
            if b is None or not b["lb"]:
                assert not en, c
                want_sat[c] = 0
                continue
            assert (en, beat, nvalid) == (1, b["beat"], b["nvalid"]), c
            out = False
            for lane in range(L):
                x0 = 0 if b["zero"] else int(x[c, lane])
                l2_term = rshift_round(x0, l2) if l2 else 0
                new = x0 - rshift_round(int(g[c, lane]), FEAT.frac) - l2_term
                want = int(MODEL.saturate(new))
                assert writes[c][lane] == want, (l2, c, lane)
                out |= lane < b["nvalid"] and want != new          # (lanes past nvalid never count)
            # SATURATED: one event at the sample's last beat if any of its beats saturated
            sticky |= out
            want_sat[c] = int(bool(b["last"] and sticky))
            if b["last"]:
                sticky = False
        assert [s for _, s in sats] == [want_sat[c] for c, _ in sats]
        assert sum(want_sat.values()) > 5 and sum(1 for c, b in enumerate(beats) if b and b["lb"] and b["last"]
                                                  and not want_sat[c]) > 5
        for c, w0 in w0s:
            b = beats[c]
            assert w0 == (b is not None and b["lb"] and b["beat"] == 0), c
        for c, end, ew in ends:
            b = beats[c]
            assert end == (b is not None and b["lj"] and b["last"]), c
            assert ew == (b is not None and b["le"] and b["last"]), c


@pytest.mark.parametrize("params", [
    EngineParams(word_bits=64), EngineParams(word_bits=64, lanes=64),
    EngineParams(word_bits=128), EngineParams(word_bits=128, lanes=128),
], ids=["W64", "W64-full-lanes", "W128", "W128-full-lanes"])
def test_latencies_add_up_and_the_batch_boundary_keeps_its_budget(params):
    """The engine's latencies are its stages' (nothing typed twice), and the cycles a batch
    boundary costs stay within the documented budget (``BATCH_STALL_BUDGET``; measured
    against the running engine by ``test_hw_core.test_throughput``)."""
    e = Engine(params)
    for obj in [e, *vars(e).values()]:          # read, not elaborated: no UnusedElaboratable
        if isinstance(obj, Elaboratable):
            obj._MustUse__used = True
    assert e.DOT_LATENCY == e.dot.LATENCY
    assert e.REPLAY_START == e.dot.LATENCY + Scalar.LATENCY_RP - Replay.RP_STAGE
    assert e.UPDATE_LATENCY == Replay.LATENCY + e.update.WRITE_STAGE - e.update.SUM_DELAY
    assert e.BATCH_STALL == e.REPLAY_START + e.UPDATE_LATENCY - 1
    assert e.BATCH_STALL <= BATCH_STALL_BUDGET[e.lanes]
    assert TERM_BITS == FEAT.width + MODEL.width


class _HostWriteBench(wiring.Component):
    """A model update wired to the engine's lane memories (its model write port)."""

    def __init__(self):
        self.mems = LaneMemories(PARAMS.word_bits, PARAMS.dim_max, PARAMS.lanes, BEAT_BITS)
        self.dut = ModelUpdate(PARAMS, BEAT_BITS, LaneMemories.READ_LATENCY)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mems, m.submodules.dut = self.mems, self.dut
        m.d.comb += [self.mems.x_write.eq(self.dut.x_write), self.mems.x_write_data.eq(self.dut.x_write_data)]
        return m


def test_host_words_write_one_lane_each():
    """The host's model words take the update's write port: one lane of one beat each, one
    per cycle back to back (the same beat again and again), the other lanes untouched;
    ``HOST_WRITE_LATENCY`` cycles from the request to the memory's write."""
    rng = np.random.default_rng(7)
    bench = _HostWriteBench()
    dut, mems = bench.dut, bench.mems
    L = PARAMS.lanes
    beats = 4
    want = {}
    writes = []
    for _ in range(3):                                       # every word, three times over
        order = [(b, l) for b in range(beats) for l in range(L)]
        if rng.random() < 0.5:
            rng.shuffle(order)
        for b, l in order:
            v = int(rng.integers(MODEL.min, MODEL.max + 1))
            writes.append((b, l, v))
            want[b, l] = v
    got = {}

    async def tb(ctx):
        for b, l, v in writes:
            ctx.set(dut.host.en, 1)
            ctx.set(dut.host.beat, b)
            ctx.set(dut.host.lane, l)
            ctx.set(dut.host.data, v)
            await ctx.tick()
            if rng.random() < 0.2:
                ctx.set(dut.host.en, 0)
                await ctx.tick()
        ctx.set(dut.host.en, 0)
        await ctx.tick().repeat(ModelUpdate.HOST_WRITE_LATENCY + 1)
        for b in range(beats):
            ctx.set(mems.dot_beat, b)
            await ctx.tick().repeat(LaneMemories.READ_LATENCY)
            for l in range(L):
                got[b, l] = ctx.get(mems.dot_words[l])

    sim = Simulator(bench)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert got == want
