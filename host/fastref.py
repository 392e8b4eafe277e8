"""The reference engine compiled: :func:`zipsgd.reference.run` bit for bit, about as fast as
scikit-learn's SGD on one core.

:func:`run` takes the same arguments and returns the same :class:`~zipsgd.result.Result`
as :func:`zipsgd.reference.run`, which stays the readable specification. Each epoch's
packed stream is decoded chunk by chunk (whole batches, :data:`CHUNK_SAMPLES` samples at
most, so memory stays bounded whatever n is) and the chunk's batches run in a loop
compiled by numba (``zipsgd._fastkernels``: int64 arithmetic, the contract's rounding,
saturation and loss tables, compiled once per machine and cached on disk).

Where numba does not import (no wheel for the platform, e.g. a PYNQ board's ARM, or
not installed: ``pip install 'zipsgd[fast]'``), :func:`run` is the numpy reference
itself; :func:`compiled` tells which one runs.
"""

from __future__ import annotations

import importlib
from typing import Callable, Sequence

import numpy as np

from . import contract as c
from . import packing, reference
from .result import Result

#: Samples decoded at a time (rounded to whole batches): small enough to stay in cache.
CHUNK_SAMPLES = 1 << 10

_KERNELS = None  # the compiled module, False when numba does not import, None: not tried yet


def kernels():
    """The compiled kernels (module ``zipsgd._fastkernels``), or None where numba does not
    import."""
    global _KERNELS
    if _KERNELS is None:
        try:
            _KERNELS = importlib.import_module(f"{__package__}._fastkernels")
        except ImportError:
            _KERNELS = False
    return _KERNELS or None


def compiled() -> bool:
    """Does :func:`run` use the compiled loop here (numba imports)?"""
    return kernels() is not None


def _layout_array(lay: c.Layout) -> np.ndarray:
    return np.array([int(lay.encoding), lay.bits, lay.dim, lay.feature_bits, lay.features_per_beat,
                     lay.beats_per_sample, lay.host_words_per_beat, lay.label_shift, c.HOST_WORD_BITS,
                     c.LABEL_BITS, int(c.Encoding.FULL), int(c.Encoding.SINGLE), int(c.Encoding.PAIR)],
                    dtype=np.int64)


#: The logistic loss's tables from the contract, as the kernel takes them.
_SEG_THR = np.array([t for t, _, _ in c.SIGMOID_SEGMENTS], dtype=np.int64)
_SEG_SHIFT = np.array([-1 if s is None else s for _, s, _ in c.SIGMOID_SEGMENTS], dtype=np.int64)
_SEG_OFF = np.array([o for _, _, o in c.SIGMOID_SEGMENTS], dtype=np.int64)
_SOFTPLUS = np.array(c.SOFTPLUS_TABLE + (0,), dtype=np.int64)


def _constants(cfg: c.EngineConfig, epoch: int) -> np.ndarray:
    return np.array([int(cfg.loss), cfg.batch, int(cfg.step_mult), c.STEP_MULT.frac + cfg.epoch_shift(epoch),
                     cfg.l2_shift, c.FEAT.frac, c.MODEL.min, c.MODEL.max, c.MODEL.one, c.MODEL.frac,
                     c.LOSS_SAMPLE.max, c.SOFTPLUS_SHIFT, c.SOFTPLUS_ENTRIES, int(c.Loss.SQUARED),
                     int(c.Loss.LOGISTIC), int(c.Loss.HINGE)], dtype=np.int64)


def decode(layout: c.Layout, stream, codebook=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`zipsgd.packing.decode` compiled (numpy's where numba does not import)."""
    k = kernels()
    if k is None:
        from .packing import decode as np_decode
        return np_decode(layout, stream, codebook)
    words = np.ascontiguousarray(stream, dtype=np.uint64)
    per = layout.beats_per_sample * layout.host_words_per_beat
    if words.ndim != 1 or words.size % per:
        raise ValueError(f"stream of {words.size} words is not a whole number of {per}-word samples")
    layv = _layout_array(layout)
    tables = _tables(k, layout, layv, codebook)
    n = words.size // per
    q1 = np.empty((n, layout.dim), dtype=np.int64)
    q2 = np.empty((n, layout.dim), dtype=np.int64)
    y = np.empty(n, dtype=np.int64)
    _check_codes(k.decode_chunk(words, layv, *tables, q1, q2, y))
    return q1, q2, y


def _tables(k, layout: c.Layout, layv: np.ndarray, codebook) -> tuple:
    """The kernel's code tables (Q1, Q2, bad) for the slot values of ``layout`` (FULL
    slots hold values, no codes: empty tables)."""
    if layout.encoding == c.Encoding.FULL:
        return tuple(np.zeros(1, dtype=np.int64) for _ in range(3))
    cb = np.ascontiguousarray(codebook, dtype=np.int64)
    if cb.shape != (1 << layout.bits,):
        raise ValueError(f"codebook must have {1 << layout.bits} entries for bits={layout.bits}, got {cb.shape}")
    return k.code_tables(layv, cb)


def _check_codes(bad: int) -> None:
    if bad:
        raise IndexError(f"{bad} codes of the stream point past the codebook")


def run(cfg: c.EngineConfig, streams: Sequence[np.ndarray] | Callable[[int], np.ndarray],
        codebook=None, params: c.EngineParams | None = None, model0=None, stop=None, sample_mult=None) -> Result:
    """:func:`zipsgd.reference.run`, compiled: the same arguments, the same result bit for
    bit (model, per-epoch loss sums, counts, saturations, stop). The numpy reference runs
    where numba does not import."""
    k = kernels()
    if k is None:
        return reference.run(cfg, streams, codebook, params=params, model0=model0, stop=stop,
                             sample_mult=sample_mult)
    c.check_registers(cfg)
    err = c.check_config(cfg, params or c.EngineParams(word_bits=cfg.word_bits))
    if err != c.Error.NONE:
        raise ValueError(f"engine configuration rejected: {err.name}")
    n, d, b = cfg.n_samples, cfg.dim, cfg.batch
    lay = cfg.layout
    words = lay.beats_per_sample * lay.host_words_per_beat
    get = streams if callable(streams) else (lambda e: streams[e % len(streams)])
    get_w = reference._getter(sample_mult)
    x = np.zeros(d, dtype=np.int64) if model0 is None else np.array(model0, dtype=np.int64).reshape(d)
    layv = _layout_array(lay)
    tables = _tables(k, lay, layv, codebook)
    chunk = max(1, CHUNK_SAMPLES // b) * b
    rows = min(chunk, n)
    q1 = np.empty((rows, d), dtype=np.int64)
    q2 = np.empty((rows, d), dtype=np.int64)
    y = np.empty(rows, dtype=np.int64)
    g = np.zeros(d, dtype=np.int64)
    loss_sums = []
    saturated = 0
    same_mult = np.full(rows, cfg.step_mult, dtype=np.int64)
    for epoch in range(cfg.epochs):
        stream = get(epoch)
        if len(stream) != n * words:
            raise ValueError(f"epoch {epoch}: stream holds {len(stream) / words:g} samples, config says {n}")
        weights = None if get_w is None else np.asarray(get_w(epoch), dtype=np.int64)
        if weights is not None and weights.shape != (n,):
            raise ValueError(f"epoch {epoch}: {weights.size} sample multipliers for {n} samples")
        cst = _constants(cfg, epoch)
        plain = weights is None and not cfg.pos_class and not cfg.step_mult_neg
        total = 0
        for at in range(0, n, chunk):
            m = min(chunk, n - at)
            part = np.ascontiguousarray(stream[at * words:(at + m) * words], dtype=np.uint64)
            _check_codes(k.decode_chunk(part, layv, *tables, q1[:m], q2[:m], y[:m]))
            if plain:                           # labels as streamed, one multiplier: nothing per chunk
                yv, mult = y[:m], same_mult[:m]
            else:
                yv = np.ascontiguousarray(cfg.label_value(y[:m]), dtype=np.int64)
                mult = cfg.sample_mult(yv).astype(np.int64)
                if weights is not None:
                    mult = np.ascontiguousarray(c.rshift_round(mult * weights[at:at + m], c.STEP_MULT.frac))
            lo, hit = k.train_chunk(q1[:m], q2[:m], yv, mult, x, g, cst, _SEG_THR, _SEG_SHIFT, _SEG_OFF,
                                    _SOFTPLUS)
            total += int(lo)
            saturated += int(hit)
        loss_sums.append(min(total, c.LOSS_ACC.max))
        if stop is not None and epoch + 1 < cfg.epochs and stop(epoch, loss_sums[-1]):
            break
    run_n = len(loss_sums)
    return Result(model=x, loss_sums=loss_sums, beats=run_n * n * lay.beats_per_sample, samples=run_n * n,
                  saturated=saturated, stopped=run_n < cfg.epochs)


# --------------------------------------------------------------------------------------
# Quantize and pack (prepare_job's packing path)
# --------------------------------------------------------------------------------------
#: Values (rows x dim) quantized at a time by :func:`pack_copy`: its temporaries (the
#: rows, two blocks of uniforms) stay within a few MiB whatever n is.
PACK_BLOCK_VALUES = 1 << 17

_MODES = {"double": 1, "single": 2, "nearest": 3}
#: Buckets of the quantizer's first guess of a value's codebook interval.
GUESS_BUCKETS = 1 << 10


def _buckets(lv: np.ndarray) -> tuple[np.ndarray, float]:
    """(guess, inv): for ``GUESS_BUCKETS`` equal buckets over [lv[0], lv[-1]] (``inv``
    buckets per unit), the last level at or below each bucket's lower edge. Only a first
    guess: the kernel walks from it to the exact interval."""
    inv = GUESS_BUCKETS / (lv[-1] - lv[0])
    edges = lv[0] + np.arange(GUESS_BUCKETS) / inv
    return np.maximum(np.searchsorted(lv, edges, side="right") - 1, 0).astype(np.int64), float(inv)


def pack_copy(out, layout: c.Layout, labels, rows, perm, sampling: str, levels, rng, chunk_rows: int) -> bool:
    """:func:`zipsgd.job.pack_copy`, compiled, in bounded memory: the same words in ``out``
    and the same state of ``rng`` afterwards (the same uniforms feed the same values),
    quantizing blocks of :data:`PACK_BLOCK_VALUES` values instead of whole chunks of
    ``chunk_rows`` rows. Double sampling draws a chunk's first roundings, then its second
    ones (``rng.random((rows, dim))`` twice): a second PCG64 generator advanced past the
    first draws serves them block by block. Returns False, having done nothing, where it
    cannot run (numba does not import; double sampling from a generator other than PCG64);
    the caller then runs the numpy path."""
    k = kernels()
    if k is None:
        return False
    full = levels is None
    if not full and sampling == "double" and type(rng.bit_generator) is not np.random.PCG64:
        return False
    o = np.asarray(out)
    if o.dtype != np.uint64 or o.ndim != 1 or not o.flags.c_contiguous or not o.flags.writeable:
        return False
    from . import quant

    d = layout.dim
    words = layout.beats_per_sample * layout.host_words_per_beat
    layv = _layout_array(layout)
    mode = 0 if full else _MODES[sampling]
    lv = np.zeros(2) if full else quant._check_levels(levels)
    size = k.SEARCH_SIZE
    if lv.size > size:
        return False
    lvp = np.concatenate((lv, [np.inf]))
    guess, inv = (np.zeros(1, dtype=np.int64), 0.0) if full else _buckets(lv)
    # quant.nearest_round's midpoints, after -inf, padded
    mids = np.concatenate(([-np.inf], (lv[:-1] + lv[1:]) / 2, np.full(size - lv.size, np.inf)))
    labels = np.asarray(labels, dtype=np.int64)
    block = max(1, PACK_BLOCK_VALUES // d)
    u1 = np.empty(block * d) if mode in (1, 2) else np.empty(0)
    u2 = np.empty(block * d) if mode == 1 else np.empty(0)
    for at in range(0, len(perm), chunk_rows):
        idx = perm[at:at + chunk_rows]
        second = None
        if mode == 1:  # the chunk's second roundings start len(idx) * d draws further on
            second = np.random.Generator(np.random.PCG64())
            second.bit_generator.state = rng.bit_generator.state
            second.bit_generator.advance(len(idx) * d)
        for sub in range(0, len(idx), block):
            part = idx[sub:sub + block]
            r = len(part)
            xs = np.ascontiguousarray(rows(part), dtype=np.float64)
            if xs.shape != (r, d):
                raise ValueError(f"expected samples of shape ({r}, {d}), got {xs.shape}")
            if mode in (1, 2):
                rng.random(out=u1[:r * d])
            if mode == 1:
                second.random(out=u2[:r * d])
            start = (at + sub) * words
            err = k.quantize_pack(xs, labels[part], u1, u2, lv, lvp, guess, inv, mids, mode, layv,
                                  c.FEAT.one, o[start:start + r * words])
            if err:  # raise the numpy path's own error
                if full:
                    packing.pack(layout, labels[part], values=c.FEAT.to_fixed(xs))
                else:
                    quant._check_values(xs)
                raise AssertionError(f"quantize_pack reported error {err}, which the numpy path does not raise")
        if mode == 1:  # the generator ends where the second roundings end (its 32-bit buffer kept)
            state, after = rng.bit_generator.state, second.bit_generator.state
            after["has_uint32"], after["uinteger"] = state["has_uint32"], state["uinteger"]
            rng.bit_generator.state = after
    return True


def quantized(layout: c.Layout, words, levels) -> tuple[np.ndarray, np.ndarray]:
    """The quantized values (Q1, Q2 as floats) of packed samples, read back from their
    words: ``levels[codes]`` (``levels``: the codebook as floats), or the FEAT values in
    FULL encoding. They equal what :func:`zipsgd.job.pack_copy`'s numpy path quantizes
    (``levels[c1]``, ``levels[c2]``; ``FEAT.to_float(values)``); SINGLE encoding returns
    one array twice."""
    k = kernels()
    if levels is None:
        q1, _, _ = decode(layout, words)
        q1 = c.FEAT.to_float(q1)
        return q1, q1
    levels = np.asarray(levels, dtype=np.float64)
    if k is None:
        c1, c2, _ = decode(layout, words, np.arange(1 << layout.bits))
        return levels[c1], (levels[c1] if layout.encoding == c.Encoding.SINGLE else levels[c2])
    words = np.ascontiguousarray(words, dtype=np.uint64)
    layv = _layout_array(layout)
    t1, t2, bad = _tables(k, layout, layv, np.arange(1 << layout.bits))
    t1, t2 = levels[t1], levels[t2]          # slot value -> level, as floats (the kernel fills floats)
    n = words.size // (layout.beats_per_sample * layout.host_words_per_beat)
    q1 = np.empty((n, layout.dim))
    q2 = q1 if layout.encoding == c.Encoding.SINGLE else np.empty((n, layout.dim))
    _check_codes(k.decode_chunk(words, layv, t1, t2, bad, q1, q2, np.empty(n, dtype=np.int64)))
    return q1, q2
