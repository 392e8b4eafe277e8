"""cocotb tests of ``zipsgd_top`` (run through :func:`zipsgd.sim.runner.run_cocotb`).

Not collected by pytest: ``tests/test_sim_top.py`` builds the simulation and runs
these. Settings come from the environment:

``ZIPSGD_PARAMS``   build parameters (set by the runner)
``ZIPSGD_CORE``     ``engine`` (real datapath) or ``stub`` (interface stand-in)
``ZIPSGD_SWEEP``    number of random configurations of the differential test (50)
``ZIPSGD_SEED``     seed of the random configurations (1)
``ZIPSGD_ICARUS_FAST``  (set for Icarus) shorter protocol tests
"""

from __future__ import annotations

import os
import time

import cocotb
import numpy as np
from cocotb.simtime import get_sim_time

from zipsgd import contract as c
from zipsgd import reference
from zipsgd.sim.runner import params_from_env
from zipsgd.sim.tb import CLOCK_NS, TB, describe, random_codebook, random_job, random_model, random_stream
from zipsgd.testing import bad_configs

PARAMS = params_from_env()
CORE = os.environ.get("ZIPSGD_CORE", "engine")
IS_STUB = CORE == "stub"
SWEEP = int(os.environ.get("ZIPSGD_SWEEP", "50"))
SEED = int(os.environ.get("ZIPSGD_SEED", "1"))


async def _tb(dut) -> TB:
    tb = TB(dut, PARAMS)
    await tb.reset()
    return tb


def _log(dut, msg):
    dut._log.info(msg)


# ------------------------------------------------------------------------------------
# Registers
# ------------------------------------------------------------------------------------
@cocotb.test()
async def test_id_registers(dut):
    """MAGIC, VERSION, BUILD_HASH and PARAM_* read their contract values."""
    tb = await _tb(dut)
    p = PARAMS
    expect = {
        "MAGIC": c.MAGIC, "VERSION": c.version_word(), "BUILD_HASH": c.build_hash(p),
        "PARAM_WORD_BITS": p.word_bits, "PARAM_DIM_MAX": p.dim_max, "PARAM_BATCH_MAX": p.batch_max,
        "PARAM_EPOCHS_MAX": p.epochs_max, "PARAM_MODES": p.modes_mask, "PARAM_LANES": p.lanes,
    }
    for name, v in expect.items():
        got = await tb.read_reg(name)
        assert got == v, f"{name}: read 0x{got:08X}, expected 0x{v:08X}"
    # Writes to read-only registers are ignored.
    await tb.write_reg("MAGIC", 0)
    assert await tb.read_reg("MAGIC") == c.MAGIC
    # Unmapped addresses read 0, writes to them are ignored; write-only registers read 0.
    for addr in range(4 * len(c.REGISTERS), c.REG_SPACE_BYTES, 4):
        await tb.write_addr(addr, 0xFFFFFFFF)
        assert await tb.read_addr(addr) == 0, f"unmapped 0x{addr:03X} reads non-zero"
    for r in c.REGISTERS:
        if r.access == "w":
            assert await tb.read_reg(r.name) == 0, f"write-only {r.name} reads non-zero"
    st = await tb.status()
    assert st == {"busy": 0, "done": 0, "stopped": 0, "error": 0}, st
    assert int(dut.irq.value) == 0


@cocotb.test()
async def test_config_readback(dut):
    """Configuration registers hold any 32-bit value; byte strobes apply."""
    tb = await _tb(dut)
    rng = np.random.default_rng(SEED)
    cfg_names = [r.name for r in c.REGISTERS if r.access == "rw" and r.name.lower() in
                 {f for f in c.EngineConfig.__dataclass_fields__}]
    assert len(cfg_names) == len(c.CONFIG_FIELDS) == 14, cfg_names
    values = {n: int(rng.integers(0, 1 << 32)) for n in cfg_names}
    for n, v in values.items():
        await tb.write_reg(n, v)
    for n, v in values.items():
        got = await tb.read_reg(n)
        assert got == v, f"{n}: read 0x{got:08X}, wrote 0x{v:08X}"
    # byte strobes: write byte 1 only
    n = cfg_names[0]
    await tb.axil.write(c.REG[n] + 1, b"\xAB")
    v = (values[n] & ~0xFF00) | 0xAB00
    got = await tb.read_reg(n)
    assert got == v, f"byte write: 0x{got:08X} != 0x{v:08X}"
    # CODEBOOK_ADDR auto-increments on CODEBOOK_DATA writes; MODEL_ADDR counts reads.
    await tb.write_reg("CODEBOOK_ADDR", 3)
    for _ in range(5):
        await tb.write_reg("CODEBOOK_DATA", 0)
    assert await tb.read_reg("CODEBOOK_ADDR") == 8
    await tb.write_reg("MODEL_ADDR", 0)
    for _ in range(3):
        await tb.read_reg("MODEL_DATA")
    assert await tb.read_reg("MODEL_ADDR") == 3
    await tb.write_reg("LOSS_ADDR", 5)
    assert await tb.read_reg("LOSS_ADDR") == 5


@cocotb.test(skip=not IS_STUB)
async def test_stub_readback(dut):
    """(stub core) MODEL_DATA steps through words, LOSS_* and LO/HI latching."""
    from zipsgd.sim.stub_core import STUB_LOSS_MULT, STUB_MODEL_BASE

    tb = await _tb(dut)
    m = await tb.read_model(10)
    assert list(m) == [STUB_MODEL_BASE + i for i in range(10)], m
    m = await tb.read_model(3)
    assert list(m) == [STUB_MODEL_BASE + i for i in range(3)], m
    losses = await tb.read_losses(4)
    assert losses == [(e + 1) * STUB_LOSS_MULT & ((1 << 64) - 1) for e in range(4)], losses
    cfg = c.EngineConfig(n_samples=1, dim=1, bits=32, encoding=c.Encoding.FULL, word_bits=PARAMS.word_bits)
    await tb.configure(cfg)
    await tb.start()
    tb.send_epoch(np.arange(37 * PARAMS.word_bits // 64, dtype=np.uint64))
    st = await tb.wait_done(10_000)
    assert st == {"busy": 0, "done": 1, "stopped": 0, "error": 0}, st
    cnt = await tb.read_counters()
    assert cnt["BEATS"] == 37 and cnt["SAMPLES"] == 1, cnt
    assert await tb.read_reg("EPOCHS_DONE") == 1


# ------------------------------------------------------------------------------------
# Bad configurations
# ------------------------------------------------------------------------------------
@cocotb.test()
async def test_bad_config(dut):
    """Each invalid configuration ends at once with STATUS.error = check_config's code."""
    tb = await _tb(dut)
    seen = set()
    for label, cfg in bad_configs(PARAMS):
        want = c.check_config(cfg, PARAMS)
        assert want != c.Error.NONE, label
        if IS_STUB and label != "dim0":
            continue
        await tb.configure(cfg)
        await tb.start()
        st = await tb.wait_done(1000)
        assert st == {"busy": 0, "done": 1, "stopped": 0, "error": int(want)}, f"{label}: {st}, expected {want.name}"
        assert await tb.read_counter("BEATS") == 0, label
        assert int(dut.s_axis_tready.value) == 0, f"{label}: the engine accepts data"
        seen.add(want)
    if not IS_STUB:
        expected = {e for e in c.Error if e.name.startswith("BAD_")}
        assert seen == expected, f"untested codes: {expected - seen}"


# ------------------------------------------------------------------------------------
# Differential test against the reference
# ------------------------------------------------------------------------------------
async def check_job(tb: TB, cfg, streams, codebook, gaps=0.0, gap_seed=0, label="", frame_samples=0,
                    model0=None):
    """Run one job (``model0``: written through MODEL_DATA, then a warm start) and compare
    everything with zipsgd.reference; returns (mismatches, cycles)."""
    ref = reference.run(cfg, streams, codebook, params=PARAMS, model0=model0)
    tb.set_gaps(gaps, gap_seed)
    st = await tb.run_job(cfg, streams, codebook, frame_samples=frame_samples, model0=model0)
    tb.set_gaps(0)
    return await compare(tb, cfg, ref, st, label)


async def compare(tb: TB, cfg, ref, st, label="", stopped=False):
    """Compare the engine's results (after its job ended with STATUS ``st``) with the
    reference's ``ref``; returns (mismatches, cycles)."""
    bad = []
    epochs = len(ref.loss_sums)
    if st != {"busy": 0, "done": 1, "stopped": int(stopped), "error": 0}:
        bad.append(f"status {st}")
    model = await tb.read_model(cfg.dim)
    if not np.array_equal(model, ref.model):
        idx = np.nonzero(model != ref.model)[0]
        bad.append(f"model differs at {len(idx)} of {cfg.dim} (first {idx[0]}: rtl {model[idx[0]]} "
                   f"ref {ref.model[idx[0]]})")
    losses = await tb.read_losses(epochs)
    if losses != [int(v) for v in ref.loss_sums]:
        bad.append(f"losses rtl {losses} ref {ref.loss_sums}")
    cnt = await tb.read_counters()
    if cnt["BEATS"] != ref.beats:
        bad.append(f"BEATS {cnt['BEATS']} != {ref.beats}")
    if cnt["SAMPLES"] != ref.samples:
        bad.append(f"SAMPLES {cnt['SAMPLES']} != {ref.samples}")
    if cnt["SATURATED"] != ref.saturated:
        bad.append(f"SATURATED {cnt['SATURATED']} != {ref.saturated}")
    if cnt["CYCLES"] != cnt["BEATS"] + cnt["STALLS"] + cnt["IDLES"]:
        bad.append(f"CYCLES {cnt['CYCLES']} != BEATS + STALLS + IDLES {cnt}")
    ed = await tb.read_reg("EPOCHS_DONE")
    if ed != epochs:
        bad.append(f"EPOCHS_DONE {ed} != {epochs}")
    if not tb.axis.idle():
        bad.append("stream source not drained")
        tb.flush_stream()
    return [f"{label}{describe(cfg)}: {b}" for b in bad], cnt["CYCLES"]


@cocotb.test(skip=IS_STUB)
async def test_differential(dut):
    """ZIPSGD_SWEEP random jobs (seed ZIPSGD_SEED) compared bit-exactly with the reference."""
    tb = await _tb(dut)
    rng = np.random.default_rng(SEED)
    failures = []
    cycles = 0
    t0 = time.perf_counter()
    sim0 = get_sim_time("ns")
    for i in range(SWEEP):
        cfg, streams, codebook = random_job(rng, PARAMS)
        gaps = float(rng.choice([0.0, 0.0, 0.1, 0.4]))
        model0 = random_model(rng, cfg.dim) if i % 4 == 3 else None        # a warm start
        bad, cyc = await check_job(tb, cfg, streams, codebook, gaps, i, model0=model0,
                                   label=f"job {i} gaps={gaps}{' warm' if model0 is not None else ''}: ")
        cycles += cyc
        failures += bad
        if bad:
            for b in bad:
                dut._log.error(b)
    wall = time.perf_counter() - t0
    sim_cycles = (get_sim_time("ns") - sim0) / CLOCK_NS
    _log(dut, f"differential: {SWEEP} jobs, {cycles} busy cycles, {sim_cycles:.0f} simulated cycles in "
              f"{wall:.1f} s ({sim_cycles / max(wall, 1e-9):.0f} cycles/s)")
    report = os.environ.get("ZIPSGD_REPORT")
    if report:
        with open(report, "a") as f:
            f.write(f"{SWEEP} {sim_cycles:.0f} {wall:.2f}\n")
    assert not failures, f"{len(failures)} mismatches:\n" + "\n".join(failures[:20])


# ------------------------------------------------------------------------------------
# Protocol faults
# ------------------------------------------------------------------------------------
def _small_job(rng, n=6, d=None, epochs=2, loss=c.Loss.SQUARED):
    W = PARAMS.word_bits
    enc, bits = c.double_encoding(2), 2
    d = d or int(rng.integers(20, 60))
    cfg = c.EngineConfig(n_samples=n, dim=d, bits=bits, encoding=enc, loss=loss, step_shift=3,
                         batch=2, epochs=epochs, copies=1, word_bits=W)
    cb = random_codebook(rng, bits)
    return cfg, [random_stream(rng, cfg)], cb


async def _good_job_after(tb, rng, what):
    cfg, streams, cb = random_job(rng, PARAMS, n_max=12, d_max=40, epochs_max=2)
    bad, _ = await check_job(tb, cfg, streams, cb, gaps=0.2, label=f"after {what}: ")
    assert not bad, "\n".join(bad)


@cocotb.test(skip=IS_STUB)
async def test_epoch_in_several_transfers(dut):
    """TLAST at sample boundaries inside an epoch (an epoch split into DMA transfers of
    1, 2 or 5 samples): no fault, every job exact against the reference."""
    tb = await _tb(dut)
    rng = np.random.default_rng(SEED + 99)
    bad = []
    for frame in (1, 2, 5):
        cfg, streams, cb = random_job(rng, PARAMS, n_max=12, d_max=40, epochs_max=2)
        b, _ = await check_job(tb, cfg, streams, cb, gaps=0.2, label=f"frames of {frame}: ", frame_samples=frame)
        bad += b
    assert not bad, "\n".join(bad)


async def _stream_fault(tb, rng, cfg, cb, words, error, beats, what):
    """Stream ``words`` as the epoch of ``cfg``: the job ends with ``error`` having taken
    ``beats`` beats (drained up to and including TLAST); then a good job works."""
    await tb.configure(cfg, cb)
    await tb.start()
    tb.send_epoch(words)
    st = await tb.wait_done(50_000)
    assert st == {"busy": 0, "done": 1, "stopped": 0, "error": int(error)}, (what, st)
    await tb.stream_idle(1000)
    assert await tb.read_counter("BEATS") == beats, what
    await _good_job_after(tb, rng, what)


@cocotb.test(skip=IS_STUB)
async def test_stream_short(dut):
    """TLAST inside a sample: STREAM_SHORT; then a good job works."""
    tb = await _tb(dut)
    rng = np.random.default_rng(SEED + 100)
    for cut in ("first beat", "mid"):
        cfg, streams, cb = _small_job(rng)
        hpb = cfg.layout.host_words_per_beat
        bps = cfg.layout.beats_per_sample
        beats = len(streams[0]) // hpb
        keep = beats - bps + 1 if cut == "first beat" else beats - bps - max(1, bps // 2)
        await _stream_fault(tb, rng, cfg, cb, streams[0][: keep * hpb], c.Error.STREAM_SHORT, keep,
                            f"STREAM_SHORT ({cut})")


@cocotb.test(skip=IS_STUB)
async def test_stream_long(dut):
    """No TLAST on the last beat of an epoch: STREAM_LONG, drained to TLAST; then a good job works."""
    tb = await _tb(dut)
    rng = np.random.default_rng(SEED + 200)
    for extra in (1, 7):
        cfg, streams, cb = _small_job(rng, epochs=1)
        hpb = cfg.layout.host_words_per_beat
        junk = rng.integers(0, 1 << 63, size=extra * hpb, dtype=np.uint64)
        await _stream_fault(tb, rng, cfg, cb, np.concatenate([streams[0], junk]), c.Error.STREAM_LONG,
                            len(streams[0]) // hpb + extra, f"STREAM_LONG (+{extra})")


@cocotb.test(skip=IS_STUB)
async def test_soft_reset(dut):
    """SOFT_RESET mid-epoch returns to idle; the next job matches the reference."""
    tb = await _tb(dut)
    rng = np.random.default_rng(SEED + 300)
    for when in (0.3, 0.8):
        cfg, streams, cb = _small_job(rng, n=10, epochs=2)
        beats = len(streams[0]) // cfg.layout.host_words_per_beat
        await tb.configure(cfg, cb)
        await tb.start()
        tb.send_epoch(streams[0])
        tb.send_epoch(streams[0])
        await tb.cycles(int(beats * (1 + when)))
        st = await tb.status()
        assert st["busy"] == 1, f"not busy mid-job: {st}"
        await tb.soft_reset()
        st = await tb.status()
        assert st == {"busy": 0, "done": 0, "stopped": 0, "error": 0}, st
        assert int(dut.s_axis_tready.value) == 0
        # the rest of the job's stream waits at TREADY = 0: the engine cannot tell it from
        # the next job's, so whoever feeds it must drop it (on a board the driver resets the
        # DMA before the soft reset: tests/test_pynq_sim.py, with no flush of its own)
        tb.flush_stream()
        await tb.cycles(5)
        await _good_job_after(tb, rng, f"soft reset at {when}")


@cocotb.test(skip=IS_STUB)
async def test_start_while_busy(dut):
    """START written mid-job is ignored (contract: CTRL.start): the job runs on, unchanged,
    and ends without error, its results equal to the reference."""
    tb = await _tb(dut)
    rng = np.random.default_rng(SEED + 400)
    cfg, streams, cb = _small_job(rng, n=8, epochs=2)
    ref = reference.run(cfg, streams, cb, params=PARAMS)
    beats = len(streams[0]) // cfg.layout.host_words_per_beat
    await tb.configure(cfg, cb)
    await tb.start()
    tb.send_epoch(streams[0])
    await tb.cycles(beats // 2)
    await tb.start()                         # while busy
    st = await tb.status()
    assert st == {"busy": 1, "done": 0, "stopped": 0, "error": 0}, f"STATUS after a START while busy: {st}"
    tb.send_epoch(streams[0])
    st = await tb.wait_done(50_000)
    assert st == {"busy": 0, "done": 1, "stopped": 0, "error": int(c.Error.NONE)}, st
    assert await tb.read_reg("EPOCHS_DONE") == cfg.epochs
    assert await tb.read_counter("BEATS") == cfg.epochs * beats
    model = await tb.read_model(cfg.dim)
    assert np.array_equal(model, ref.model), "model differs after START while busy"
    assert await tb.read_losses(cfg.epochs) == [int(v) for v in ref.loss_sums]


def edge_jobs(rng, params: c.EngineParams):
    """Hand-picked jobs at the build limits: DIM_MAX, BATCH_MAX, EPOCHS_MAX, one feature."""
    W = params.word_bits
    E = c.Encoding
    specs = [
        dict(encoding=E.FULL, bits=c.FULL_BITS, dim=params.dim_max, n_samples=3, batch=2),
        dict(encoding=E.SINGLE, bits=1, dim=params.dim_max, n_samples=3, batch=1, loss=c.Loss.HINGE),
        dict(encoding=c.double_encoding(8), bits=8, dim=params.dim_max, n_samples=2, batch=2),
        dict(encoding=E.SINGLE, bits=2, dim=1, n_samples=params.batch_max + 5, batch=params.batch_max),
        dict(encoding=E.FULL, bits=c.FULL_BITS, dim=1, n_samples=2, epochs=params.epochs_max,
             decay_epochs=1, step_shift=2, loss=c.Loss.LOGISTIC),
        dict(encoding=c.double_encoding(4), bits=4, dim=17, n_samples=5, step_shift=0,
             step_mult=c.STEP_MULT.max, l2_shift=1),          # saturating updates
        dict(encoding=c.double_encoding(2), bits=2, dim=3, n_samples=4, step_shift=c.STEP_SHIFT_MAX,
             l2_shift=c.L2_SHIFT_MAX, epochs=3, decay_epochs=1),  # largest shifts, k clamps
    ]
    for spec in specs:
        cfg = c.EngineConfig(word_bits=W, **{"step_shift": 4, **spec})
        cb = None if cfg.encoding == E.FULL else random_codebook(rng, cfg.bits)
        yield cfg, [random_stream(rng, cfg)], cb


@cocotb.test(skip=IS_STUB)
async def test_edge_jobs(dut):
    """Jobs at the build limits (DIM_MAX, BATCH_MAX, EPOCHS_MAX), saturation and largest shifts."""
    tb = await _tb(dut)
    rng = np.random.default_rng(SEED + 500)
    failures = []
    for i, (cfg, streams, cb) in enumerate(edge_jobs(rng, PARAMS)):
        bad, _ = await check_job(tb, cfg, streams, cb, gaps=0.1 * (i % 3), gap_seed=i, label=f"edge {i}: ")
        failures += bad
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------------
# Contract 3.0: warm start, stop, class labels
# ------------------------------------------------------------------------------------
def _class_job(rng, epochs=4):
    """A POS_CLASS job (class indices in the stream) with a multiplier for the negatives."""
    W = PARAMS.word_bits
    cfg = c.EngineConfig(n_samples=9, dim=int(rng.integers(30, 80)), bits=4, encoding=c.double_encoding(4),
                         loss=c.Loss.HINGE, step_shift=0, step_mult=c.STEP_MULT.max, l2_shift=12, batch=2,
                         epochs=epochs, copies=2,
                         pos_class=3, step_mult_neg=c.STEP_MULT.one // 3, word_bits=W)
    cb = random_codebook(rng, cfg.bits)
    return cfg, [random_stream(rng, cfg) for _ in range(cfg.copies)], cb


@cocotb.test(skip=IS_STUB)
async def test_warm_start_stop_and_class_labels(dut):
    """A model written through MODEL_DATA (read back unchanged), a START with warm, class
    labels (POS_CLASS) and STEP_MULT_NEG; a STOP inside epoch 1 (the rest of the epoch is
    taken, then the job ends: STATUS.stopped, EPOCHS_DONE 2), equal to the reference run of
    two epochs from that model. Then a STOP between epochs (after epoch 0, the engine
    waiting for epoch 1) ends a job at once; a STOP while idle changes nothing; a START
    clears stopped."""
    tb = await _tb(dut)
    rng = np.random.default_rng(SEED + 600)
    cfg, streams, cb = _class_job(rng)
    x0 = random_model(rng, cfg.dim)
    words = cfg.layout.beats_per_sample * cfg.layout.host_words_per_beat
    failures = []

    # warm start, stop inside epoch 1
    await tb.configure(cfg, cb)
    await tb.write_model(x0)
    back = await tb.read_model(cfg.dim)
    if not np.array_equal(back, x0):
        failures.append(f"model read back after MODEL_DATA writes differs at {np.nonzero(back != x0)[0][:5]}")
    await tb.start(warm=True)
    tb.send_epoch(streams[0])
    tb.send_epoch(streams[1][:4 * words])              # 4 samples of epoch 1 (TLAST: a transfer)
    await tb.stream_idle()
    await tb.stop()
    tb.send_epoch(streams[1][4 * words:])
    tb.send_epoch(streams[0])                          # epoch 2: never taken
    st = await tb.wait_done(50_000)
    ref = reference.run(c.EngineConfig(**{**cfg.__dict__, "epochs": 2}), streams, cb, params=PARAMS, model0=x0)
    assert ref.saturated and len(ref.loss_sums) == 2
    if tb.axis.idle():
        failures.append("the engine took beats of epoch 2")
    tb.flush_stream()                                  # (the host drops the next epoch's stream)
    bad, _ = await compare(tb, cfg, ref, st, "warm + stop inside epoch 1: ", stopped=True)
    failures += bad

    # cold start, stop between epochs (the engine waits for epoch 1)
    await tb.start()
    tb.send_epoch(streams[0])
    await tb.stream_idle()
    await tb.cycles(200)
    st = await tb.status()
    if st != {"busy": 1, "done": 0, "stopped": 0, "error": 0}:
        failures.append(f"between epochs: {st}")
    await tb.stop()
    st = await tb.wait_done(10_000)
    ref = reference.run(c.EngineConfig(**{**cfg.__dict__, "epochs": 1}), streams, cb, params=PARAMS)
    bad, _ = await compare(tb, cfg, ref, st, "stop between epochs: ", stopped=True)
    failures += bad

    # STOP while idle: nothing; then a good job (its START clears stopped)
    await tb.stop()
    st = await tb.status()
    if st != {"busy": 0, "done": 1, "stopped": 1, "error": 0}:
        failures.append(f"STOP while idle changed STATUS: {st}")
    assert not failures, "\n".join(failures)
    await _good_job_after(tb, rng, "stopped jobs")
