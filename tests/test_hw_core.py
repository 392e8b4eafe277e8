"""Amaranth-simulator tests of ``zipsgd.hw.core.Engine`` against ``zipsgd.reference``.

One simulator per build (compiling a simulation costs seconds); each build runs
many jobs back to back, which also checks that every job (after errors, soft
resets and refusals) starts from a clean state.
"""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from zipsgd import reference
from zipsgd.contract import (
    CONFIG_FIELDS, FEAT, MODEL, STEP_MULT, EngineConfig, EngineParams, Encoding, Error, Loss,
    check_config, valid_modes,
)
from zipsgd.hw.core import BATCH_STALL_BUDGET, COUNTERS, Engine
from zipsgd.hw.decode import modes
from zipsgd.sim.cases import beats_of
from zipsgd.testing import bad_configs, job_for, random_config
from zipsgd.packing import pack

ONE = MODEL.one


# ------------------------------------------------------------------------------------
# Job generation
# ------------------------------------------------------------------------------------
def make_job(rng, word_bits, enc, bits, dim, n, *, loss=Loss.SQUARED, batch=1, epochs=1,
             step_shift=4, step_mult=STEP_MULT.one, decay=0, l2=0, copies=1, pos_class=0, step_mult_neg=0):
    """Random job of this configuration: (cfg, streams, codebook) from zipsgd.testing."""
    cfg = EngineConfig(n_samples=n, dim=dim, bits=bits, encoding=enc, loss=loss,
                       step_shift=step_shift, step_mult=step_mult, decay_epochs=decay,
                       l2_shift=l2, batch=batch, epochs=epochs, copies=copies, word_bits=word_bits,
                       pos_class=pos_class, step_mult_neg=step_mult_neg)
    return job_for(rng, cfg)


def random_model(rng, dim):
    """A model to start from (CTRL.warm): small values, some at the rails (saturating)."""
    x = rng.integers(-2 * ONE, 2 * ONE, size=dim)
    rails = rng.random(dim) < 0.2
    x[rails] = rng.choice([MODEL.min, MODEL.max, MODEL.max - 1, MODEL.min + 1], size=int(rails.sum()))
    return x


# ------------------------------------------------------------------------------------
# Simulator driver
# ------------------------------------------------------------------------------------
class Driver:
    """Async-testbench helpers around one Engine."""

    def __init__(self, dut: Engine, ctx):
        self.dut, self.ctx = dut, ctx

    async def pulse(self, sig):
        self.ctx.set(sig, 1)
        await self.ctx.tick()
        self.ctx.set(sig, 0)

    async def start(self, warm=False):
        """A start pulse (``warm``: from the model in memory)."""
        self.ctx.set(self.dut.warm, int(warm))
        await self.pulse(self.dut.start)
        self.ctx.set(self.dut.warm, 0)

    async def write_model(self, words):
        """Rewind the model pointer and write ``words`` (in the layout of the configuration
        set), one per cycle; wait until the last has reached the memory."""
        ctx, d = self.ctx, self.dut
        await self.pulse(d.model_rewind)
        for v in words:
            ctx.set(d.model_wdata, int(v) & 0xFFFFFFFF)
            await self.pulse(d.model_we)
        await ctx.tick().repeat(d.MODEL_WRITE_LATENCY + 1)

    async def set_cfg(self, cfg: EngineConfig):
        for name in CONFIG_FIELDS:
            self.ctx.set(getattr(self.dut.cfg, name), int(getattr(cfg, name)) & 0xFFFFFFFF)
        await self.ctx.tick().repeat(self.dut.CFG_SETTLE)     # the decoded configuration settles

    async def write_codebook(self, codebook):
        if codebook is None:
            return
        for a, v in enumerate(codebook):
            self.ctx.set(self.dut.cb_addr, a)
            self.ctx.set(self.dut.cb_data, int(v) & ((1 << FEAT.width) - 1))
            self.ctx.set(self.dut.cb_we, 1)
            await self.ctx.tick()
        self.ctx.set(self.dut.cb_we, 0)

    async def send(self, beats, lasts, rng=None, gap_p=0.0, max_wait=100000):
        """Send beats; returns the number of beats sent before done rose (if it did)."""
        ctx, d = self.ctx, self.dut
        for i, (b, last) in enumerate(zip(beats, lasts)):
            while rng is not None and gap_p and rng.random() < gap_p:
                ctx.set(d.i_data.valid, 0)
                await ctx.tick()
            ctx.set(d.i_data.payload.data, b)
            ctx.set(d.i_data.payload.last, last)
            ctx.set(d.i_data.valid, 1)
            for _ in range(max_wait):
                r = ctx.get(d.i_data.ready)
                await ctx.tick()
                if r:
                    break
                if not ctx.get(d.busy):
                    ctx.set(d.i_data.valid, 0)
                    return i
            else:
                raise AssertionError("beat never accepted")
        ctx.set(d.i_data.valid, 0)
        return len(beats)

    async def wait_done(self, max_cycles=100000):
        for _ in range(max_cycles):
            if not self.ctx.get(self.dut.busy):
                return
            await self.ctx.tick()
        raise AssertionError("engine still busy")

    async def read_model(self, dim):
        ctx, d = self.ctx, self.dut
        await self.pulse(d.model_rewind)
        out = []
        for i in range(dim):
            await ctx.tick().repeat(d.READBACK_LATENCY)
            v = ctx.get(d.model_data)
            out.append(v - (1 << 32) if v >= 1 << 31 else v)
            await self.pulse(d.model_next)
        return np.array(out, dtype=np.int64)

    async def read_losses(self, epochs):
        ctx, d = self.ctx, self.dut
        out = []
        for e in range(epochs):
            ctx.set(d.loss_addr, e)
            await ctx.tick().repeat(d.LOSS_READ_LATENCY)
            out.append(ctx.get(d.loss_data))
        return out

    def counters(self):
        return {name: self.ctx.get(getattr(self.dut, name)) for name in COUNTERS}

    async def result(self, epochs, dim):
        """The status, counters, model and losses of the job that ended."""
        ctx, d = self.ctx, self.dut
        res = {"error": ctx.get(d.error), "done": ctx.get(d.done), "stopped": ctx.get(d.stopped),
               "counters": self.counters(), "epochs_done": ctx.get(d.epochs_done)}
        res["model"] = await self.read_model(dim)
        res["losses"] = await self.read_losses(epochs)
        return res

    async def run_job(self, cfg, streams, codebook, rng=None, gap_p=0.0, tlast_every=0, model0=None):
        """Configure, start, stream every epoch, wait; returns a result dict.
        ``tlast_every``: TLAST also on the last beat of every ``tlast_every``-th sample
        (an epoch sent in several DMA transfers). ``model0``: written through the model
        write port, then a warm start."""
        ctx, d = self.ctx, self.dut
        await self.write_codebook(codebook)
        await self.set_cfg(cfg)
        if model0 is not None:
            await self.write_model(model0)
        await self.start(warm=model0 is not None)
        res = {"error": ctx.get(d.error), "done": ctx.get(d.done), "busy": ctx.get(d.busy)}
        if res["error"] != Error.NONE:
            return res
        for e in range(cfg.epochs):
            beats = beats_of(streams[e % len(streams)], cfg.word_bits)
            lasts = [0] * (len(beats) - 1) + [1]
            if tlast_every:
                bps = cfg.layout.beats_per_sample
                for i in range(tlast_every * bps - 1, len(beats), tlast_every * bps):
                    lasts[i] = 1
            await self.send(beats, lasts, rng, gap_p)
        await self.wait_done()
        res.update(await self.result(cfg.epochs, cfg.dim))
        return res


def run_sim(params, body, vcd=None, poison=False):
    """Run ``body(driver)`` (an async function) on a fresh Engine simulation; ``poison``:
    reads of a word written in the same cycle return it inverted (their count is
    ``dut.collision_count``)."""
    dut = Engine(params, poison_collisions=poison)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    out = {}
    if poison:
        dut.collision_count = 0

        async def count(ctx):
            async for _, _, *hits in ctx.tick().sample(*dut.collisions):
                dut.collision_count += sum(hits)
        sim.add_process(count)

    async def tb(ctx):
        out["value"] = await body(Driver(dut, ctx))

    sim.add_testbench(tb)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return dut, out.get("value")


def check_job(res, cfg, streams, codebook, params, model0=None, epochs_run=None, stopped=False):
    """The job's results equal the reference's (``epochs_run``: a job stopped after that
    many epochs equals the job of that many epochs)."""
    epochs_run = cfg.epochs if epochs_run is None else epochs_run
    ran = EngineConfig(**{**cfg.__dict__, "epochs": epochs_run})
    ref = reference.run(ran, streams, codebook, params, model0=model0)
    assert res["error"] == Error.NONE, Error(res["error"]).name
    assert res["done"] == 1
    assert res["stopped"] == int(stopped)
    np.testing.assert_array_equal(res["model"], ref.model, err_msg=f"model mismatch for {cfg}")
    assert res["losses"][:epochs_run] == [int(v) for v in ref.loss_sums], f"loss mismatch for {cfg}"
    assert res["counters"]["cnt_beats"] == ref.beats
    assert res["counters"]["cnt_samples"] == ref.samples
    assert res["counters"]["cnt_saturated"] == ref.saturated, f"SATURATED mismatch for {cfg}"
    assert res["epochs_done"] == epochs_run
    return ref


# ------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------
P64 = EngineParams(word_bits=64, dim_max=256, batch_max=64, epochs_max=16)
P128 = EngineParams(word_bits=128, dim_max=256, batch_max=64, epochs_max=16)
#: Full-lane build (lanes = W): every mode at one beat per cycle.
P64F = EngineParams(word_bits=64, dim_max=256, batch_max=64, epochs_max=16, lanes=64)


def _mode_jobs(rng, word_bits, dims):
    """One job per (mode, loss, batch) combination, cycling the dims and options."""
    jobs = []
    i = 0
    for enc, bits in valid_modes():
        for loss in Loss:
            batch = (1, 3, 8)[i % 3]
            dim = dims[i % len(dims)]
            jobs.append(make_job(rng, word_bits, enc, bits, dim, n=int(rng.integers(5, 10)),
                                 loss=loss, batch=batch, epochs=2 if i % 4 == 0 else 1,
                                 step_shift=int(rng.integers(0, 6)),
                                 step_mult=int(rng.integers(1, STEP_MULT.max + 1)) if i % 5 == 0 else STEP_MULT.one,
                                 decay=1 if i % 4 == 0 else 0, l2=(0, 3, 7)[i % 3]))
            i += 1
    return jobs


@pytest.mark.parametrize("params,dims", [
    (P64, (3, 64, 33, 100, 7)),
    (P128, (5, 128, 97, 200)),
    (P64F, (3, 64, 33, 100, 7)),
], ids=["W64", "W128", "W64-full-lanes"])
def test_all_modes_bit_exact(params, dims):
    rng = np.random.default_rng(params.word_bits)
    jobs = _mode_jobs(rng, params.word_bits, dims)

    async def body(drv):
        results = []
        for cfg, streams, cb in jobs:
            results.append(await drv.run_job(cfg, streams, cb, rng, gap_p=0.2))
        return results

    _, results = run_sim(params, body)
    for (cfg, streams, cb), res in zip(jobs, results):
        check_job(res, cfg, streams, cb, params)


def test_same_cycle_reads_of_written_words_are_never_used():
    """Every memory read of a word its write port writes in the same cycle is inverted
    (``poison_collisions``): the results stay bit-exact, so the engine never uses such a
    read (block RAMs leave it undefined; the synthesis flows drop Yosys' collision logic).
    One-beat samples and batches of 1 and 2 make the reads meet the writes."""
    rng = np.random.default_rng(11)
    jobs = [make_job(rng, 64, enc, bits, dim, n=8, loss=Loss.SQUARED, batch=batch, epochs=2, l2=3)
            for (enc, bits, dim, batch) in ((Encoding.SINGLE, 2, 3, 1), (Encoding.SINGLE, 8, 7, 2),
                                           (Encoding.SINGLE, 1, 40, 1), (Encoding.FULL, 32, 20, 2))]

    async def body(drv):
        return [await drv.run_job(cfg, streams, cb) for cfg, streams, cb in jobs]

    dut, results = run_sim(P64, body, poison=True)
    for (cfg, streams, cb), res in zip(jobs, results):
        check_job(res, cfg, streams, cb, P64)
    assert dut.collision_count > 0, "no read met a write: the test shows nothing"


def test_bad_config_codes_then_good_job():
    """Refused configurations: same code and order as contract.check_config; then a
    normal job runs."""
    params = P64
    rng = np.random.default_rng(7)
    good, streams, cb = make_job(rng, 64, Encoding.SINGLE, 2, 20, 4, batch=2)
    bad = [(cfg, check_config(cfg, params)) for _, cfg in bad_configs(params)]
    assert all(code != Error.NONE for _, code in bad)

    async def body(drv):
        codes = []
        for c, _ in bad:
            res = await drv.run_job(c, streams, cb)
            codes.append((res["error"], res["done"], res["busy"]))
        return codes, await drv.run_job(good, streams, cb)

    _, (codes, res) = run_sim(params, body)
    assert codes == [(int(code), 1, 0) for _, code in bad]
    check_job(res, good, streams, cb, params)


@pytest.mark.parametrize("every", [1, 3])
def test_tlast_at_sample_boundaries_splits_an_epoch(every):
    """An epoch may arrive in several transfers: TLAST on the last beat of any sample is
    not a fault, and the job equals the reference (contract 2.1)."""
    params = P64
    rng = np.random.default_rng(30 + every)
    cfg, streams, cb = make_job(rng, 64, Encoding.SINGLE, 4, 40, 7, batch=2, epochs=2)
    assert cfg.layout.beats_per_sample > 1

    async def body(drv):
        return await drv.run_job(cfg, streams, cb, rng, gap_p=0.2, tlast_every=every)

    _, res = run_sim(params, body)
    assert res["error"] == Error.NONE
    check_job(res, cfg, streams, cb, params)


def test_stream_faults_and_soft_reset():
    """STREAM_SHORT stops at once; STREAM_LONG drains to TLAST; soft_reset aborts a
    running job; start while busy is ignored; after each a clean job matches."""
    params = P64
    rng = np.random.default_rng(8)
    cfg, streams, cb = make_job(rng, 64, Encoding.SINGLE, 4, 40, 6, batch=3, epochs=2, l2=5)
    beats = beats_of(streams[0], 64)

    async def body(drv):
        ctx, d = drv.ctx, drv.dut
        out = {}
        # STREAM_SHORT: TLAST on beat 4 of the epoch, inside sample 1 (3 beats a sample).
        await drv.write_codebook(cb)
        await drv.set_cfg(cfg)
        await drv.pulse(d.start)
        sent = await drv.send(beats[:5], [0, 0, 0, 0, 1])
        await ctx.tick()
        out["short"] = (sent, ctx.get(d.busy), ctx.get(d.done), ctx.get(d.error), ctx.get(d.i_data.ready))
        out["short_job"] = await drv.run_job(cfg, streams, cb)
        # STREAM_LONG: no TLAST on the final beat; 5 extra beats, TLAST on the last.
        await drv.pulse(d.start)
        extra = beats[:5]
        await drv.send(beats + extra, [0] * (len(beats) + 4) + [1])
        await ctx.tick()
        out["long"] = (ctx.get(d.busy), ctx.get(d.done), ctx.get(d.error), ctx.get(d.cnt_beats))
        out["long_job"] = await drv.run_job(cfg, streams, cb, rng, gap_p=0.3)
        # soft reset in the middle of the second epoch, start pulses while busy.
        await drv.pulse(d.start)
        await drv.send(beats, [0] * (len(beats) - 1) + [1])
        await drv.pulse(d.start)                     # ignored: busy
        await drv.send(beats[:7], [0] * 7)
        await drv.pulse(d.soft_reset)
        out["reset"] = (ctx.get(d.busy), ctx.get(d.done), ctx.get(d.error), ctx.get(d.i_data.ready))
        out["reset_job"] = await drv.run_job(cfg, streams, cb, rng, gap_p=0.1)
        # start while busy in the middle of a normal job: ignored
        await drv.pulse(d.start)
        for e in range(cfg.epochs):
            await drv.send(beats[:3], [0] * 3)
            await drv.pulse(d.start)
            await drv.send(beats[3:], [0] * (len(beats) - 4) + [1])
        await drv.wait_done()
        out["busy_job"] = await drv.result(cfg.epochs, cfg.dim)
        return out

    _, out = run_sim(params, body)
    assert out["short"] == (5, 0, 1, Error.STREAM_SHORT, 0)
    assert out["long"] == (0, 1, Error.STREAM_LONG, len(beats) + 5)
    assert out["reset"] == (0, 0, Error.NONE, 0)
    for key in ("short_job", "long_job", "reset_job", "busy_job"):
        check_job(out[key], cfg, streams, cb, params)


@pytest.mark.parametrize("batch,bits,params", [(1, 2, P64), (4, 2, P64), (1, 1, P64), (4, 1, P64), (4, 1, P64F)],
                         ids=["b2-batch1", "b2-batch4", "b1-batch1", "b1-batch4", "b1-batch4-full-lanes"])
def test_throughput(batch, bits, params):
    """Input always valid: no stall inside a batch, exactly BATCH_STALL cycles at every
    batch (and epoch) boundary, BATCH_STALL + (engine beats per sample) after the last
    beat. SINGLE b = 1 (64 features per beat, more than the engine's 32 lanes) is split:
    one more stall before every beat but a sample's last (half the beat rate), unless
    the engine is built with W lanes."""
    rng = np.random.default_rng(9)
    cfg, streams, cb = make_job(rng, 64, Encoding.SINGLE, bits, 150, 10, batch=batch, epochs=2, copies=2)
    B = cfg.layout.beats_per_sample
    md = next(md for md in modes(64, params.lanes) if md.encoding == Encoding.SINGLE and md.bits == bits)
    VB = Engine.engine_beats(md, cfg.dim)
    assert md.split == (bits == 1 and params.lanes == 32) and (VB == 2 * B - 1 if md.split else VB == B)

    async def body(drv):
        ctx, d = drv.ctx, drv.dut
        await drv.write_codebook(cb)
        await drv.set_cfg(cfg)
        await drv.pulse(d.start)
        accepted, trace = 0, []
        beats = []
        for e in range(cfg.epochs):
            bs = beats_of(streams[e % len(streams)], 64)
            beats += [(b, int(i == len(bs) - 1)) for i, b in enumerate(bs)]
        while ctx.get(d.busy):
            if accepted < len(beats):
                ctx.set(d.i_data.payload.data, beats[accepted][0])
                ctx.set(d.i_data.payload.last, beats[accepted][1])
                ctx.set(d.i_data.valid, 1)
            else:
                ctx.set(d.i_data.valid, 0)
            r = ctx.get(d.i_data.ready)
            trace.append((accepted, r))
            await ctx.tick()
            if r and accepted < len(beats):
                accepted += 1
        ctx.set(d.i_data.valid, 0)
        return trace, drv.counters(), await drv.read_model(cfg.dim)

    dut, (trace, cnt, model) = run_sim(params, body)
    ref = reference.run(cfg, streams, cb, params)
    np.testing.assert_array_equal(model, ref.model)
    # stall runs, keyed by the number of beats accepted before them
    runs = {}
    for acc, r in trace:
        if not r:
            runs[acc] = runs.get(acc, 0) + 1
    total = cfg.epochs * cfg.n_samples * B
    spb = B * batch
    expect = {}
    if md.split:
        for k in range(total):
            if k % B != B - 1:
                expect[k] = 1
    for e in range(cfg.epochs):
        for s0 in range(0, cfg.n_samples, batch):
            end = e * cfg.n_samples * B + min(s0 + batch, cfg.n_samples) * B
            expect[end] = expect.get(end, 0) + dut.BATCH_STALL
    expect[total] = dut.BATCH_STALL + VB     # the job ends when the last model beat is written
    # busy shows one cycle longer than the job runs (the counters catch up): one more
    # not-ready cycle in the trace than the stall counter counts
    seen = {**expect, total: expect[total] + 1}
    assert runs == seen, (runs, seen, spb)
    assert cnt["cnt_stalls"] == sum(expect.values())
    assert cnt["cnt_idles"] == 0 and cnt["cnt_beats"] == total
    assert cnt["cnt_cycles"] == total + cnt["cnt_stalls"]
    assert dut.BATCH_STALL <= BATCH_STALL_BUDGET[dut.lanes]      # the documented figure


def test_beat_edges_and_saturation():
    """Dims that exactly fill the label beat, a full beat plus a full label beat, a
    label-only last beat, d = 1, d = dim_max; and a job that saturates the model."""
    params = P64
    rng = np.random.default_rng(11)
    jobs = []
    for enc, bits in [(Encoding.FULL, 32), (Encoding.SINGLE, 1), (Encoding.COMPACT, 4), (Encoding.PAIR, 2)]:
        lay = EngineConfig(1, 1, bits, enc).layout
        F, Fl = lay.features_per_beat, lay.label_beat_features
        for dim in sorted({1, Fl, F, F + Fl}):
            jobs.append(make_job(rng, 64, enc, bits, dim, 4, batch=2, l2=4))
    jobs.append(make_job(rng, 64, Encoding.SINGLE, 8, params.dim_max, 3, batch=2, epochs=2, decay=1))
    # saturation: huge step (k = 0, m = max), large labels, L2 at its largest shift
    jobs.append(make_job(rng, 64, Encoding.SINGLE, 2, 40, 12, batch=1, epochs=2, step_shift=0,
                         step_mult=STEP_MULT.max, l2=31))
    jobs.append(make_job(rng, 64, Encoding.FULL, 32, 9, 12, batch=3, loss=Loss.HINGE, step_shift=0,
                         step_mult=STEP_MULT.max))
    jobs.append(make_job(rng, 64, Encoding.SINGLE, 4, 9, 6, batch=2, step_shift=40, decay=1, epochs=8))

    async def body(drv):
        return [await drv.run_job(c, s, cb, rng, gap_p=0.1) for c, s, cb in jobs]

    _, results = run_sim(params, body)
    sat_seen = False
    for (cfg, streams, cb), res in zip(jobs, results):
        check_job(res, cfg, streams, cb, params)
        sat_seen |= bool(np.any(np.abs(res["model"]) == MODEL.max) or np.any(res["model"] == MODEL.min))
    assert sat_seen
    assert any(res["counters"]["cnt_saturated"] for res in results)


# ------------------------------------------------------------------------------------
# Contract 3.0: class labels and multipliers, SATURATED, warm start, stop
# ------------------------------------------------------------------------------------
@pytest.mark.parametrize("params", [P64, P128], ids=["W64", "W128"])
def test_random_jobs_with_class_labels_class_multipliers_and_saturation(params):
    """Random jobs of ``zipsgd.testing`` (POS_CLASS and STEP_MULT_NEG among them; here at
    least every other job sets each, POS_CLASS up to 2**32 - 1: a class index no signed
    label word equals, and 2**31: the index MODEL.max), half of them warm from a model at
    the rails: model, losses, counts and SATURATED equal the reference's."""
    rng = np.random.default_rng(21 + params.word_bits)
    jobs = []
    for i in range(14):
        cfg = random_config(rng, params, n_max=10, d_max=70, epochs_max=2)
        over = {}
        if i % 2 == 0:
            over["pos_class"] = int(rng.choice([1, 2, 3, 4, 1 << 31, (1 << 32) - 1]))
        if i % 3 != 2:
            over["step_mult_neg"] = int(rng.integers(1, STEP_MULT.max + 1))
        if i % 4 == 1:
            over.update(step_shift=0, step_mult=STEP_MULT.max)        # saturating steps
        cfg = EngineConfig(**{**cfg.__dict__, **over})
        _, streams, cb = job_for(rng, cfg)
        jobs.append((cfg, streams, cb, random_model(rng, cfg.dim) if i % 2 else None))

    async def body(drv):
        return [await drv.run_job(cfg, streams, cb, rng, gap_p=0.1, model0=x0) for cfg, streams, cb, x0 in jobs]

    _, results = run_sim(params, body)
    seen = set()
    for (cfg, streams, cb, x0), res in zip(jobs, results):
        ref = check_job(res, cfg, streams, cb, params, model0=x0)
        seen |= {"pos_class"} if cfg.pos_class else set()
        seen |= {"step_mult_neg"} if cfg.step_mult_neg else set()
        seen |= {"saturated"} if ref.saturated else set()
        seen |= {"unsaturated"} if not ref.saturated else set()
    assert seen == {"pos_class", "step_mult_neg", "saturated", "unsaturated"}, seen


def test_pos_class_and_step_mult_neg_for_every_loss():
    """Every loss with a class index (the label mapped to ONE / -ONE / 0) and a multiplier
    for the samples whose label is not above zero; also STEP_MULT_NEG alone on plain labels."""
    rng = np.random.default_rng(22)
    jobs = []
    for loss in Loss:
        for pc, neg in ((2, 0), (3, STEP_MULT.one // 4), (0, 3 * STEP_MULT.one // 2)):
            jobs.append(make_job(rng, 64, Encoding.COMPACT, 4, 21, 9, loss=loss, batch=2, epochs=2, l2=6,
                                 step_shift=2, pos_class=pc, step_mult_neg=neg))

    async def body(drv):
        return [await drv.run_job(c, s, cb) for c, s, cb in jobs]

    _, results = run_sim(P64, body)
    for (cfg, streams, cb), res in zip(jobs, results):
        check_job(res, cfg, streams, cb, P64)
    # the multiplier matters: the same job with STEP_MULT_NEG = 0 gives another model
    cfg, streams, cb = jobs[1]
    plain = reference.run(EngineConfig(**{**cfg.__dict__, "step_mult_neg": 0}), streams, cb)
    assert not np.array_equal(plain.model, results[1]["model"])


@pytest.mark.parametrize("params", [P64, P128, P64F], ids=["W64", "W128", "W64-full-lanes"])
def test_warm_start_from_a_written_model(params):
    """The host writes a model through the model write port (placed as the configuration's
    mode places it: every mode, split beats included), reads it back unchanged, and a
    START with warm trains from it (reference.run(model0=...)); a warm start after a job
    continues from the model that job left."""
    rng = np.random.default_rng(23 + params.word_bits + params.lanes)
    W = params.word_bits
    jobs = []
    for i, (enc, bits) in enumerate(valid_modes()):
        dim = int(rng.choice([1, 7, 40, 97, 130]))
        jobs.append(make_job(rng, W, enc, bits, dim, n=int(rng.integers(3, 7)), loss=Loss(i % 3),
                             batch=int(rng.choice([1, 2, 4])), epochs=1 + i % 2, l2=(0, 5)[i % 2],
                             step_shift=int(rng.integers(0, 6))))
    models = [random_model(rng, cfg.dim) for cfg, _, _ in jobs]

    async def body(drv):
        out = []
        for (cfg, streams, cb), x0 in zip(jobs, models):
            await drv.set_cfg(cfg)
            await drv.write_model(x0)
            back = await drv.read_model(cfg.dim)
            res = await drv.run_job(cfg, streams, cb, rng, gap_p=0.1, model0=x0)
            # a warm start from the model the job left (no write): the same job again
            await drv.start(warm=True)
            for e in range(cfg.epochs):
                beats = beats_of(streams[e % len(streams)], W)
                await drv.send(beats, [0] * (len(beats) - 1) + [1])
            await drv.wait_done()
            again = await drv.result(cfg.epochs, cfg.dim)
            out.append((back, res, again))
        return out

    _, results = run_sim(params, body)
    for (cfg, streams, cb), x0, (back, res, again) in zip(jobs, models, results):
        np.testing.assert_array_equal(back, x0, err_msg=f"model read back after writes, {cfg}")
        ref = check_job(res, cfg, streams, cb, params, model0=x0)
        check_job(again, cfg, streams, cb, params, model0=ref.model)


def test_model_writes_are_ignored_while_busy():
    """A model word written while a job runs changes nothing (nor the pointer)."""
    rng = np.random.default_rng(24)
    cfg, streams, cb = make_job(rng, 64, Encoding.SINGLE, 4, 40, 6, batch=2, epochs=1)
    beats = beats_of(streams[0], 64)

    async def body(drv):
        ctx, d = drv.ctx, drv.dut
        await drv.write_codebook(cb)
        await drv.set_cfg(cfg)
        await drv.start()
        await drv.send(beats[:7], [0] * 7)
        ctx.set(d.model_wdata, 0x12345)
        for _ in range(5):
            await drv.pulse(d.model_we)
        await drv.send(beats[7:], [0] * (len(beats) - 8) + [1])
        await drv.wait_done()
        return await drv.result(cfg.epochs, cfg.dim)

    _, res = run_sim(P64, body)
    check_job(res, cfg, streams, cb, P64)


def _epoch_beats(cfg, streams, e):
    beats = beats_of(streams[e % len(streams)], cfg.word_bits)
    return beats, [0] * (len(beats) - 1) + [1]


@pytest.mark.parametrize("params", [P64, P64F], ids=["W64", "W64-full-lanes"])
def test_stop_ends_the_job_at_an_epoch_boundary(params):
    """CTRL.stop: between epochs (long after the last one's updates, and right after its
    last beat, the updates in flight), inside an epoch (the rest of it is taken, no beat of
    the next), in the last epoch (a normal end), before the first beat (no epoch run), and
    while idle (nothing). Each stopped job equals the reference run for the epochs it ran;
    STATUS.stopped shows it; a START clears it."""
    rng = np.random.default_rng(25)
    cfg, streams, cb = make_job(rng, 64, Encoding.SINGLE, 1, 70, 7, batch=3, epochs=4, l2=5, copies=2,
                                loss=Loss.LOGISTIC, pos_class=2, step_mult_neg=STEP_MULT.one // 3)
    x0 = random_model(rng, cfg.dim)

    async def body(drv):
        ctx, d = drv.ctx, drv.dut
        out = {}

        async def job(when, warm=False):
            """Run ``cfg`` and stop it ``when``: (epoch, beats of it taken before the stop)
            or ``("wait", epoch)``: after the epoch, once idle."""
            await drv.write_codebook(cb)
            await drv.set_cfg(cfg)
            if warm:
                await drv.write_model(x0)
            await drv.start(warm=warm)
            taken_after = None
            for e in range(cfg.epochs):
                beats, lasts = _epoch_beats(cfg, streams, e)
                if when == ("wait", e):
                    await drv.send(beats, lasts)
                    await ctx.tick().repeat(200)
                    await drv.pulse(d.stop)
                    continue
                if isinstance(when, tuple) and when[0] == e:
                    k = when[1]
                    await drv.send(beats[:k], lasts[:k])
                    await drv.pulse(d.stop)
                    sent = await drv.send(beats[k:], lasts[k:])
                    assert sent == (len(beats) - k if k else 0), (when, sent)   # (k = 0: not begun)
                    continue
                if not ctx.get(d.busy):
                    taken_after = 0
                    break
                sent = await drv.send(beats, lasts)
                if sent < len(beats):
                    taken_after = sent
                    break
            await drv.wait_done()
            res = await drv.result(cfg.epochs, cfg.dim)
            res["taken_after"] = taken_after
            return res

        out["between"] = await job(("wait", 1))
        out["after_last_beat"] = await job((0, len(_epoch_beats(cfg, streams, 0)[0])))
        out["inside"] = await job((2, 5), warm=True)
        out["first_beat"] = await job((1, 1))
        out["last_epoch"] = await job((3, 4))
        out["before_any"] = await job((0, 0))
        out["before_any_warm"] = await job((0, 0), warm=True)
        # a plain job after a stopped one (its start clears stopped), then a stop while
        # idle: nothing changes
        out["plain"] = await job(None)
        await drv.pulse(d.stop)
        await ctx.tick().repeat(5)
        out["idle"] = (ctx.get(d.busy), ctx.get(d.done), ctx.get(d.stopped), ctx.get(d.epochs_done),
                       await drv.read_model(cfg.dim))
        return out

    _, out = run_sim(params, body)
    check_job(out["between"], cfg, streams, cb, params, epochs_run=2, stopped=True)
    check_job(out["after_last_beat"], cfg, streams, cb, params, epochs_run=1, stopped=True)
    check_job(out["inside"], cfg, streams, cb, params, epochs_run=3, stopped=True, model0=x0)
    check_job(out["first_beat"], cfg, streams, cb, params, epochs_run=2, stopped=True)
    check_job(out["last_epoch"], cfg, streams, cb, params)
    check_job(out["plain"], cfg, streams, cb, params)
    for key in ("between", "after_last_beat", "inside", "first_beat"):
        assert out[key]["taken_after"] == 0, key          # no beat of the next epoch taken
    for key, x in (("before_any", np.zeros(cfg.dim, dtype=np.int64)), ("before_any_warm", x0)):
        res = out[key]
        assert (res["done"], res["stopped"], res["error"], res["epochs_done"]) == (1, 1, 0, 0), key
        assert res["counters"]["cnt_beats"] == 0 and res["counters"]["cnt_saturated"] == 0, key
        np.testing.assert_array_equal(res["model"], x, err_msg=key)
    assert out["idle"][:4] == (0, 1, 0, cfg.epochs), out["idle"]
    np.testing.assert_array_equal(out["idle"][4], out["plain"]["model"])
