"""Bit-exact numpy model of the engine: the specification the RTL must match.

It consumes exactly what the engine consumes — the configuration registers
(:class:`~zipsgd.contract.EngineConfig`), the codebook and one packed stream per
epoch — and produces exactly what the engine reports: the final model (MODEL
integers), the per-epoch loss sums (LOSS_ACC integers) and the beat/sample
counts. The arithmetic (formats, rounding, saturation, losses) is documented in
:mod:`zipsgd.contract`; all of it is integer numpy on int64, which holds every
intermediate exactly (the contract's bounds guarantee it).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .contract import (
    FEAT, LOSS_ACC, LOSS_SAMPLE, MODEL, SIGMOID_SEGMENTS, SOFTPLUS_ENTRIES, SOFTPLUS_SHIFT,
    SOFTPLUS_TABLE, STEP_MULT, EngineConfig, EngineParams, Error, Loss, check_config, rshift_round,
)
from .packing import decode
from .result import Result  # noqa: F401  (re-exported: reference.Result)

_SOFTPLUS = np.array(SOFTPLUS_TABLE + (0,), dtype=np.int64)


def sat_abs(v):
    """|v| saturated to MODEL."""
    return MODEL.saturate(np.abs(v))


def sigmoid_hat(z):
    """The contract's piecewise-linear sigmoid of MODEL integers (returns MODEL ints)."""
    z = np.asarray(z, dtype=np.int64)
    u = sat_abs(z)
    s = np.zeros_like(u)
    done = np.zeros(u.shape, dtype=bool)
    for threshold, shift, offset in SIGMOID_SEGMENTS:
        hit = (u >= threshold) & ~done
        s = np.where(hit, offset if shift is None else (u >> shift) + offset, s)
        done |= hit
    return np.where(z >= 0, s, MODEL.one - s)


def softplus_hat(t):
    """The contract's softplus log(1 + e^t) of MODEL integers (returns MODEL ints)."""
    t = np.asarray(t, dtype=np.int64)
    idx = np.minimum(sat_abs(t) >> SOFTPLUS_SHIFT, SOFTPLUS_ENTRIES)
    return np.maximum(t, 0) + _SOFTPLUS[idx]


def residual_and_loss(loss: Loss, z, y):
    """Per-sample residual r (MODEL) and loss (LOSS_SAMPLE) for dot products z, labels y."""
    z = np.asarray(z, dtype=np.int64)
    y = np.asarray(y, dtype=np.int64)
    one = MODEL.one
    if loss == Loss.SQUARED:
        r = MODEL.saturate(z - y)
        lo = rshift_round(r * r, MODEL.frac + 1)
    elif loss == Loss.LOGISTIC:
        r = MODEL.saturate(sigmoid_hat(z) - y)
        t = np.where(y == 0, z, MODEL.saturate(-z))
        lo = softplus_hat(t)
    elif loss == Loss.HINGE:
        m = np.where(y >= 0, z, MODEL.saturate(-z))
        r = np.where(m < one, np.where(y >= 0, -one, one), 0)
        lo = np.maximum(0, one - m)
    else:
        raise ValueError(f"unknown loss {loss!r}")
    return r, LOSS_SAMPLE.saturate(lo)


#: Samples the reference decodes at a time (rounded to whole batches).
CHUNK_SAMPLES = 1 << 14


def run(cfg: EngineConfig, streams: Sequence[np.ndarray] | Callable[[int], np.ndarray],
        codebook=None, params: EngineParams | None = None, model0=None) -> Result:
    """Run a job on the reference engine.

    Parameters
    ----------
    cfg : EngineConfig
        The configuration registers.
    streams : sequence of uint64 arrays, or callable epoch -> array
        Packed stream per copy; epoch ``e`` reads ``streams[e % len(streams)]``.
    codebook : array of 2**b FEAT integers, optional
        Levels (not used in FULL encoding).
    params : EngineParams, optional
        Build parameters whose limits apply (default build).
    model0 : array of MODEL integers, optional
        Initial model (the engine starts from zero).
    """
    params = params or EngineParams(word_bits=cfg.word_bits)
    err = check_config(cfg, params)
    if err != Error.NONE:
        raise ValueError(f"engine configuration rejected: {err.name}")
    layout = cfg.layout
    get = streams if callable(streams) else (lambda e: streams[e % len(streams)])
    x = np.zeros(cfg.dim, dtype=np.int64) if model0 is None else np.asarray(model0, dtype=np.int64).copy()
    loss_sums, beats, samples = [], 0, 0
    m = int(cfg.step_mult)
    words = layout.beats_per_sample * layout.host_words_per_beat
    # whole batches of about CHUNK_SAMPLES samples decoded at a time: memory stays bounded
    # whatever n is (a memory-mapped packed file is read chunk by chunk)
    chunk = max(1, CHUNK_SAMPLES // cfg.batch) * cfg.batch
    for epoch in range(cfg.epochs):
        stream = get(epoch)
        if len(stream) != cfg.n_samples * words:
            raise ValueError(f"epoch {epoch}: stream holds {len(stream) / words:g} samples, config says "
                             f"{cfg.n_samples}")
        shift = STEP_MULT.frac + cfg.epoch_shift(epoch)
        total = 0
        for at in range(0, cfg.n_samples, chunk):
            q1, q2, y = decode(layout, np.asarray(stream[at * words:(at + chunk) * words]), codebook)
            for start in range(0, q1.shape[0], cfg.batch):
                sl = slice(start, start + cfg.batch)
                acc = q1[sl] @ x
                z = MODEL.saturate(rshift_round(acc, FEAT.frac))
                r, lo = residual_and_loss(cfg.loss, z, y[sl])
                total += int(lo.sum())
                rp = MODEL.saturate(rshift_round(r * m, shift))
                g = rp @ q2[sl]
                l2 = rshift_round(x, cfg.l2_shift) if cfg.l2_shift else 0
                x = MODEL.saturate(x - rshift_round(g, FEAT.frac) - l2)
        loss_sums.append(min(total, LOSS_ACC.max))
        beats += cfg.n_samples * layout.beats_per_sample
        samples += cfg.n_samples
    return Result(model=x, loss_sums=loss_sums, beats=beats, samples=samples)
