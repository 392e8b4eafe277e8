"""The compiled engine loop (zipsgd.fastref) against the numpy specification (zipsgd.reference),
bit for bit, and the fallback to numpy where numba does not import."""

import sys

import numpy as np
import pytest

from zipsgd import contract as c
from zipsgd import fastref, job as jobmod, packing, reference, testing
from zipsgd.backends import run_job

needs_numba = pytest.mark.skipif(not fastref.compiled(), reason="numba does not import here (pip install numba)")


def same(a, b):
    """Results equal in every field (a counter the reference gains must be computed here too)."""
    return np.array_equal(a.model, b.model) and a.loss_sums == b.loss_sums and a.beats == b.beats \
        and a.samples == b.samples and a.error == b.error and a.stats == b.stats \
        and a.saturated == b.saturated and a.stopped == b.stopped


def random_jobs(seed, count, W=64, **kw):
    rng = np.random.default_rng(seed)
    params = c.EngineParams(word_bits=W)
    for _ in range(count):
        cfg = testing.random_config(rng, params, **{"n_max": 40, "d_max": 70, "epochs_max": 3, "copies_max": 2, **kw})
        cfg, streams, cb = testing.job_for(rng, cfg)
        # half the jobs start from a random model, some of it at the limits (saturation)
        model0 = None
        if rng.random() < 0.5:
            model0 = rng.integers(c.MODEL.min, c.MODEL.max + 1, size=cfg.dim)
            model0[rng.random(cfg.dim) < 0.2] = c.MODEL.max
            model0[rng.random(cfg.dim) < 0.2] = c.MODEL.min
        yield cfg, streams, cb, model0


@needs_numba
@pytest.mark.parametrize("W", [64, 128])
def test_run_equals_reference_on_random_jobs(W, monkeypatch):
    # small chunks: epochs span several chunks (whole batches each) in both engines
    monkeypatch.setattr(fastref, "CHUNK_SAMPLES", 8)
    seen = set()
    for cfg, streams, cb, model0 in random_jobs(W, 120, W=W):
        want = reference.run(cfg, streams, cb, model0=model0)
        got = fastref.run(cfg, streams, cb, model0=model0)
        assert same(got, want), cfg
        seen.add((c.Encoding(cfg.encoding), cfg.bits, c.Loss(cfg.loss)))
    assert {loss for *_, loss in seen} == set(c.Loss)
    assert {(e, b) for e, b, _ in seen} == set(c.valid_modes())


@needs_numba
def test_run_equals_reference_saturating():
    """Steps far too large for the data: residuals, updates and the model saturate."""
    rng = np.random.default_rng(7)
    params = c.EngineParams()
    saturated = set()
    for loss in c.Loss:
        for batch in (1, 3, 64):
            for decay, l2 in ((0, 0), (1, 3)):
                cfg = c.EngineConfig(n_samples=97, dim=23, bits=4, encoding=c.double_encoding(4), loss=loss,
                                     step_shift=0, step_mult=c.STEP_MULT.max, decay_epochs=decay, l2_shift=l2,
                                     batch=batch, epochs=4, copies=2)
                cfg, streams, cb = testing.job_for(rng, cfg, codebook=testing.random_codebook(rng, 4, ends=True))
                # the classification losses' residuals are bounded: start them at the limits
                model0 = None if loss == c.Loss.SQUARED else rng.choice([c.MODEL.min, c.MODEL.max], cfg.dim)
                want = reference.run(cfg, streams, cb, params=params, model0=model0)
                got = fastref.run(cfg, streams, cb, params=params, model0=model0)
                assert same(got, want), (loss, batch, decay, l2)
                if want.saturated:                       # the SATURATED counter saw it
                    saturated.add(loss)
    assert saturated == set(c.Loss)


@needs_numba
def test_run_equals_reference_with_stop_and_sample_multipliers(monkeypatch):
    monkeypatch.setattr(fastref, "CHUNK_SAMPLES", 8)
    for cfg, streams, cb, model0 in random_jobs(11, 40, epochs_max=4):
        rng = np.random.default_rng(cfg.n_samples)
        weights = [rng.integers(0, 4 * c.STEP_MULT.one, size=cfg.n_samples) for _ in streams]
        last = int(rng.integers(0, cfg.epochs))
        kw = dict(model0=model0, sample_mult=weights, stop=lambda e, lo: e == last)
        want = reference.run(cfg, streams, cb, **kw)
        assert same(fastref.run(cfg, streams, cb, **kw), want), cfg
        assert len(want.loss_sums) == last + 1


@needs_numba
def test_run_equals_reference_large_job():
    """More samples than one chunk, batches that straddle nothing, every epoch's step shift."""
    rng = np.random.default_rng(3)
    cfg = c.EngineConfig(n_samples=3000, dim=91, bits=4, encoding=c.double_encoding(4), loss=c.Loss.SQUARED,
                         step_shift=6, decay_epochs=1, batch=7, epochs=3, copies=3)
    cfg, streams, cb = testing.job_for(rng, cfg)
    assert same(fastref.run(cfg, streams, cb), reference.run(cfg, streams, cb))


@needs_numba
def test_run_takes_a_callable_and_checks_the_stream():
    rng = np.random.default_rng(4)
    cfg, streams, cb = testing.job_for(rng, c.EngineConfig(n_samples=9, dim=5, bits=2, encoding=c.Encoding.PAIR,
                                                          epochs=3, batch=2))
    calls = []

    def get(e):
        calls.append(e)
        return streams[0]
    assert same(fastref.run(cfg, get, cb), reference.run(cfg, streams, cb))
    assert calls == [0, 1, 2]
    with pytest.raises(ValueError, match="stream holds"):
        fastref.run(cfg, [streams[0][:-1]], cb)


@needs_numba
def test_run_refuses_bad_configs_as_the_reference_does():
    params = c.EngineParams()
    for label, cfg in testing.bad_configs(params):
        with pytest.raises(ValueError) as want:
            reference.run(cfg, [np.zeros(1, dtype=np.uint64)], np.zeros(16, dtype=np.int64), params=params)
        with pytest.raises(ValueError) as got:
            fastref.run(cfg, [np.zeros(1, dtype=np.uint64)], np.zeros(16, dtype=np.int64), params=params)
        assert str(got.value) == str(want.value), label


@needs_numba
@pytest.mark.parametrize("W", [64, 128])
def test_decode_equals_packing_decode(W):
    rng = np.random.default_rng(11)
    for enc, bits in c.valid_modes():
        for d in (1, 5, 33, 130):
            cfg = c.EngineConfig(n_samples=13, dim=d, bits=bits, encoding=enc, word_bits=W,
                                 loss=c.Loss(int(rng.integers(3))))
            cfg, (stream,), cb = testing.job_for(rng, cfg, copies=1)
            for a, b in zip(fastref.decode(cfg.layout, stream, cb), packing.decode(cfg.layout, stream, cb)):
                assert np.array_equal(a, b), (enc, bits, d)


def check_quantized():
    """fastref.quantized: the levels of the packed codes (FEAT values in FULL)."""
    rng = np.random.default_rng(12)
    for enc, bits in c.valid_modes():
        cfg, (stream,), cb = testing.job_for(rng, c.EngineConfig(n_samples=9, dim=21, bits=bits, encoding=enc),
                                             copies=1)
        lv = None if cb is None else c.FEAT.to_float(cb)
        q1, q2 = fastref.quantized(cfg.layout, stream, lv)
        w1, w2, _ = packing.decode(cfg.layout, stream, cb)
        assert np.array_equal(q1, c.FEAT.to_float(w1)) and np.array_equal(q2, c.FEAT.to_float(w2)), (enc, bits)
        assert q1.dtype == q2.dtype == np.float64


@needs_numba
def test_quantized_reads_the_levels_back():
    check_quantized()


@needs_numba
def test_codes_past_the_codebook_are_refused():
    lay = c.Layout(64, c.Encoding.COMPACT, 4, 3)
    word = np.array([(15 | (1 << 4))], dtype=np.uint64)     # j = 15 (top), e1 = 1: level 16
    cb = np.arange(16, dtype=np.int64)
    with pytest.raises(IndexError):
        packing.decode(lay, word, cb)
    with pytest.raises(IndexError):
        fastref.decode(lay, word, cb)


# ---- the packing path (job.pack_copy) --------------------------------------------------
def numpy_pack_copy(monkeypatch, *args):
    """job.pack_copy's numpy path, whatever job.pack_copy would choose."""
    with monkeypatch.context() as m:
        m.setattr(fastref, "_KERNELS", False)
        jobmod.pack_copy(*args)


@needs_numba
@pytest.mark.parametrize("sampling", ["double", "single", "nearest", "full"])
def test_pack_copy_equals_the_numpy_path(sampling, monkeypatch):
    monkeypatch.setattr(fastref, "PACK_BLOCK_VALUES", 50)        # several blocks per chunk
    for bits in ((c.FULL_BITS,) if sampling == "full" else c.BITS_ALLOWED):
        for W in (64, 128):
            rng = np.random.default_rng(bits * W)
            n, d = 157, int(rng.integers(1, 40))
            X = np.clip(rng.normal(0, 0.6, size=(n, d)), -1, 1)
            X[rng.random((n, d)) < 0.05] = 1.0                   # values on the levels' ends
            lv = None if bits == c.FULL_BITS else c.FEAT.to_float(testing.random_codebook(rng, bits, ends=True))
            if lv is not None:
                X[: n // 4] = lv[rng.integers(0, lv.size, size=(n // 4, d))]   # values on the levels
            enc = c.encoding_for("double" if sampling == "full" else sampling, bits)
            lay = c.Layout(W, enc, bits, d)
            labels = testing.random_labels(rng, c.Loss.SQUARED, n)
            perm = rng.permutation(n)
            words = n * lay.beats_per_sample * lay.host_words_per_beat
            for chunk_rows in (n, 40):
                outs, rngs = [], []
                for fast in (True, False):
                    out = np.full(words, 0xA5A5A5A5A5A5A5A5, dtype=np.uint64)    # as np.empty may hold
                    q = np.random.default_rng([bits, W, chunk_rows])
                    args = (out, lay, labels, lambda idx: X[idx], perm, "double" if sampling == "full" else sampling,
                            lv, q, chunk_rows)
                    if fast:
                        assert fastref.pack_copy(*args)
                    else:
                        numpy_pack_copy(monkeypatch, *args)
                    outs.append(out)
                    rngs.append(q.random(4))                     # the generators end in the same state
                assert np.array_equal(outs[0], outs[1]), (sampling, bits, W, chunk_rows)
                assert np.array_equal(rngs[0], rngs[1]), (sampling, bits, W, chunk_rows)


@needs_numba
def test_pack_copy_raises_the_numpy_errors(monkeypatch):
    lay = c.Layout(64, c.Encoding.SINGLE, 2, 3)
    X = np.zeros((4, 3))
    X[2, 1] = np.nan
    lv = np.array([-1.0, -0.5, 0.5, 1.0])
    args = (np.zeros(4, dtype=np.uint64), lay, np.zeros(4, dtype=np.int64), lambda idx: X[idx], np.arange(4),
            "single", lv, np.random.default_rng(0), 4)
    with pytest.raises(ValueError) as want:
        numpy_pack_copy(monkeypatch, *args)
    with pytest.raises(ValueError) as got:
        fastref.pack_copy(*args)
    assert str(got.value) == str(want.value)
    full = c.Layout(64, c.Encoding.FULL, c.FULL_BITS, 3)
    X[2, 1] = 1.5                                                  # outside [-1, 1]
    args = (np.zeros(8, dtype=np.uint64), full) + args[2:6] + (None,) + args[7:]
    with pytest.raises(ValueError) as want:
        numpy_pack_copy(monkeypatch, *args)
    with pytest.raises(ValueError) as got:
        fastref.pack_copy(*args)
    assert str(got.value) == str(want.value)


@needs_numba
def test_pack_copy_leaves_other_generators_to_numpy():
    lay = c.Layout(64, c.Encoding.PAIR, 2, 3)
    q = np.random.Generator(np.random.MT19937(0))
    assert not fastref.pack_copy(np.zeros(4, dtype=np.uint64), lay, np.zeros(4, dtype=np.int64),
                                 lambda idx: np.zeros((len(idx), 3)), np.arange(4), "double",
                                 np.array([-1.0, 0, 0.5, 1.0]), q, 4)


# ---- the cpu backend, and the fallback -------------------------------------------------
def small_job():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 6))
    return jobmod.prepare_job(X, X @ rng.normal(size=6), bits=4, epochs=3, batch_size=4, step=0.1)


@needs_numba
def test_cpu_backend_runs_the_compiled_loop(monkeypatch):
    job = small_job()
    calls = []
    k = fastref.kernels()
    monkeypatch.setattr(fastref, "_KERNELS", type("K", (), {
        "code_tables": staticmethod(k.code_tables), "decode_chunk": staticmethod(k.decode_chunk),
        "train_chunk": staticmethod(lambda *a: calls.append(1) or k.train_chunk(*a))}))
    res = run_job(job, "cpu")
    assert calls
    want = reference.run(job.config, job.streams, job.codebook)
    assert res.stats == {"saturated": want.saturated}          # the counter, as the boards report it
    res.stats = {}
    assert same(res, want)


def test_fallback_to_numpy_without_numba(monkeypatch):
    job = small_job()
    want = fastref.run(job.config, job.streams, job.codebook)
    monkeypatch.setitem(sys.modules, "numba", None)                # `import numba` raises ImportError
    monkeypatch.delitem(sys.modules, "zipsgd._fastkernels", raising=False)
    monkeypatch.setattr(fastref, "_KERNELS", None)
    assert not fastref.compiled()
    calls = []
    spec = reference.run
    monkeypatch.setattr(reference, "run", lambda *a, **k: calls.append(1) or spec(*a, **k))
    res = run_job(job, "cpu")
    assert calls == [1]
    assert res.stats == {"saturated": want.saturated}
    res.stats = {}
    assert same(res, want)
    assert not fastref.pack_copy(np.zeros(1, dtype=np.uint64), job.layout, np.zeros(1, dtype=np.int64),
                                 lambda idx: np.zeros((1, job.dim)), np.arange(1), "double", job.levels_float,
                                 np.random.default_rng(0), 1)
    for a, b in zip(fastref.decode(job.layout, job.streams[0], job.codebook),
                    packing.decode(job.layout, job.streams[0], job.codebook)):
        assert np.array_equal(a, b)
    check_quantized()


# ---- the benchmark (`zipsgd bench cpu`) --------------------------------------------------
def test_bench_cpu_is_wired(monkeypatch, tmp_path):
    from zipsgd import bench_cpu, cli

    seen = {}
    monkeypatch.setattr(bench_cpu, "main", lambda **kw: seen.update(kw) or 0)
    assert cli.main(["bench", "cpu", "--quick", "--out", str(tmp_path), "--quiet"]) == 0
    assert seen == {"quick": True, "out": str(tmp_path), "quiet": True}


@needs_numba
def test_bench_cpu_runs_and_reports():
    from zipsgd import bench_cpu

    data = bench_cpu.run(n=600, d=6, epochs=2, batches=(1, 8), repeats=1)
    assert [r["batch"] for r in data["rows"]] == [1, 8]
    assert all(r["bit_exact"] and r["fit_seconds"] > 0 and r["ratio"] > 0 for r in data["rows"])
    assert data["pack_copy"]["same_words"]
    assert data["prepare_peak_bytes"] > 0
    text = bench_cpu.format_report(data)
    assert "ratio" in text and "prepare_job peak memory" in text
