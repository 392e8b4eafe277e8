"""Bit-exact numpy model of the engine: the specification the RTL must match.

It consumes exactly what the engine consumes — the configuration registers
(:class:`~zipsgd.contract.EngineConfig`), the codebook and one packed stream per
epoch — and produces exactly what the engine reports: the final model (MODEL
integers), the per-epoch loss sums (LOSS_ACC integers) and the beat/sample
counts. The arithmetic (formats, rounding, saturation, losses) is documented in
:mod:`zipsgd.contract`; all of it is integer numpy on int64, which holds every
intermediate exactly (the contract's bounds guarantee it).

This is the readable specification; :mod:`zipsgd.fastref` runs the same loop compiled
(numba), tested equal to it bit for bit, and the cpu backend uses that where numba imports.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .contract import (
    FEAT, LOSS_ACC, LOSS_SAMPLE, MODEL, SIGMOID_SEGMENTS, SOFTPLUS_ENTRIES, SOFTPLUS_SHIFT,
    SOFTPLUS_TABLE, STEP_MULT, EngineConfig, EngineParams, Error, Loss, check_config, check_registers,
    rshift_round,
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


def schedule_key(cfg: EngineConfig) -> tuple:
    """What jobs must share to step together in :func:`run_many` (the encoding, codebook,
    data, labels (POS_CLASS) and step multipliers may differ)."""
    return (cfg.n_samples, cfg.dim, int(cfg.loss), cfg.step_shift, cfg.decay_epochs, cfg.l2_shift, cfg.batch,
            cfg.epochs)


def run(cfg: EngineConfig, streams: Sequence[np.ndarray] | Callable[[int], np.ndarray],
        codebook=None, params: EngineParams | None = None, model0=None, stop=None, sample_mult=None) -> Result:
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
        Initial model: the engine's START with ``warm`` after the host wrote it (default:
        zero, a plain START).
    stop : callable (epoch, loss_sum) -> bool, optional
        Asked after each epoch with its loss sum (LOSS_ACC): true ends the job there, as
        the engine's STOP between epochs does (``Result.stopped``).
    sample_mult : sequence of arrays or callable epoch -> array, optional
        Host-side only (the engine has no such input): a per-sample weight in STEP_MULT's
        fixed point (1.0 = 2**15, not bounded by its 16 bits) for each sample of each copy, in
        stream order. A sample's multiplier becomes ``rshift_round(m * w, STEP_MULT.frac)``,
        ``m`` its class's (weight 1.0 leaves it).
    """
    return run_many([cfg], [streams], [codebook], params=params,
                    model0=None if model0 is None else [model0],
                    stop=None if stop is None else (lambda k, e, lo: stop(e, lo)), sample_mult=sample_mult)[0]


def _getter(s):
    return None if s is None else s if callable(s) else (lambda e, s=s: s[e % len(s)])


def run_many(cfgs: Sequence[EngineConfig], streams: Sequence, codebooks: Sequence, params: EngineParams | None = None,
             model0=None, stop=None, sample_mult=None) -> list[Result]:
    """Run K jobs that share a schedule (:func:`schedule_key`) in step, vectorised over K:
    the engine's arithmetic, written once (``run`` is the case K = 1). Each job's result
    equals its own run bit for bit. Streams are decoded in chunks of whole batches, so
    memory stays bounded whatever n is (a memory-mapped packed file is read chunk by chunk).
    ``stop(k, epoch, loss_sum)`` ends job ``k`` after an epoch (the others go on);
    ``sample_mult`` (as in :func:`run`) serves every job.
    """
    cfg = cfgs[0]
    for other in cfgs:
        if schedule_key(other) != schedule_key(cfg):
            raise ValueError("run_many: the jobs do not share a schedule (n, dim, loss, step, decay, L2, batch, "
                             "epochs)")
        check_registers(other)
        err = check_config(other, params or EngineParams(word_bits=other.word_bits))
        if err != Error.NONE:
            raise ValueError(f"engine configuration rejected: {err.name}")
    K, n, d, b = len(cfgs), cfg.n_samples, cfg.dim, cfg.batch
    layouts = [c.layout for c in cfgs]
    words = [lay.beats_per_sample * lay.host_words_per_beat for lay in layouts]
    gets = [_getter(s) for s in streams]
    get_w = _getter(sample_mult)
    x = np.zeros((K, d), dtype=np.int64) if model0 is None else np.array(model0, dtype=np.int64).reshape(K, d)
    if K == 1:
        x = x[0]
    loss_sums = [[] for _ in range(K)]
    saturated = np.zeros(K, dtype=np.int64)
    active = np.ones(K, dtype=bool)
    m_pos = np.array([c.step_mult for c in cfgs], dtype=np.int64)
    m_neg = np.array([c.step_mult_neg or c.step_mult for c in cfgs], dtype=np.int64)
    if K == 1:
        m_pos, m_neg = m_pos[0], m_neg[0]
    else:
        m_pos, m_neg = m_pos[:, None], m_neg[:, None]
    chunk = max(1, CHUNK_SAMPLES // b) * b
    for epoch in range(cfg.epochs):
        epoch_streams = [get(epoch) for get in gets]
        for k, (stream, w) in enumerate(zip(epoch_streams, words)):
            if len(stream) != n * w:
                raise ValueError(f"epoch {epoch}: stream holds {len(stream) / w:g} samples, config says {n}"
                                 + (f" (job {k})" if K > 1 else ""))
        weights = None if get_w is None else np.asarray(get_w(epoch), dtype=np.int64)
        if weights is not None and weights.shape != (n,):
            raise ValueError(f"epoch {epoch}: {weights.size} sample multipliers for {n} samples")
        shift = STEP_MULT.frac + cfg.epoch_shift(epoch)
        total = np.zeros(K, dtype=np.int64)
        for at in range(0, n, chunk):
            dec = [decode(lay, np.asarray(st[at * w:(at + chunk) * w]), cb)
                   for lay, st, w, cb in zip(layouts, epoch_streams, words, codebooks)]
            # (K, samples, d) and (K, samples); one job keeps no K axis (the same
            # expressions below serve both shapes, and a single job runs faster)
            Q1, Q2, Y = (np.stack(part) if K > 1 else part[0] for part in zip(*dec))
            Q1, Q2 = Q1.astype(np.int64), Q2.astype(np.int64)
            Y = np.stack([c.label_value(y) for c, y in zip(cfgs, Y)]) if K > 1 else cfg.label_value(Y)
            M = np.where(Y > 0, m_pos, m_neg)                                # ([K,] samples)
            if weights is not None:
                M = rshift_round(M * weights[at:at + chunk], STEP_MULT.frac)
            for start in range(0, Q1.shape[-2], b):
                q1, q2, yb = Q1[..., start:start + b, :], Q2[..., start:start + b, :], Y[..., start:start + b]
                acc = (q1 @ x[..., None])[..., 0]                           # ([K,] batch)
                z = MODEL.saturate(rshift_round(acc, FEAT.frac))
                r, lo = residual_and_loss(cfg.loss, z, yb)
                total += lo.sum(axis=-1)
                rp = MODEL.saturate(rshift_round(r * M[..., start:start + b], shift))
                g = (rp[..., None, :] @ q2)[..., 0, :]                     # ([K,] d)
                l2 = rshift_round(x, cfg.l2_shift) if cfg.l2_shift else 0
                new = x - rshift_round(g, FEAT.frac) - l2
                x_new = MODEL.saturate(new)
                hit = (x_new != new).any(axis=-1)
                if K == 1:
                    if active[0]:
                        x = x_new
                        saturated += hit
                else:
                    x = np.where(active[:, None], x_new, x)
                    saturated += hit & active
        for k in range(K):
            if active[k]:
                loss_sums[k].append(min(int(total[k]), LOSS_ACC.max))
                if stop is not None and epoch + 1 < cfg.epochs and stop(k, epoch, loss_sums[k][-1]):
                    active[k] = False
        if not active.any():
            break
    x = x.reshape(K, d)
    return [Result(model=x[k].copy(), loss_sums=loss_sums[k],
                   beats=len(loss_sums[k]) * n * layouts[k].beats_per_sample, samples=len(loss_sums[k]) * n,
                   saturated=int(saturated[k]), stopped=len(loss_sums[k]) < cfg.epochs) for k in range(K)]
