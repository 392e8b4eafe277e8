"""The reference engine against a slow, obvious scalar model written from the contract's words."""

import math

import numpy as np
import pytest

from zipsgd import contract as c
from zipsgd import testing
from zipsgd import packing as p
from zipsgd import reference as ref

ONE = c.MODEL.one


def sat(v, fmt=c.MODEL):
    return max(fmt.min, min(fmt.max, v))


def rnd(v, s):
    return v if s == 0 else (v + (1 << (s - 1))) // (1 << s)   # floor division == arithmetic shift


def slow_sigmoid(z):
    u = sat(abs(z))
    if u >= 5 * ONE:
        s = ONE
    elif u >= int(2.375 * ONE):
        s = (u >> 5) + int(0.84375 * ONE)
    elif u >= ONE:
        s = (u >> 3) + int(0.625 * ONE)
    else:
        s = (u >> 2) + ONE // 2
    return s if z >= 0 else ONE - s


def slow_softplus(t):
    j = sat(abs(t)) * 8 // ONE
    corr = round(math.log1p(math.exp(-(j + 0.5) / 8)) * ONE) if j < 64 else 0
    return max(t, 0) + corr


def slow_loss(loss, z, y):
    if loss == c.Loss.SQUARED:
        r = sat(z - y)
        return r, rnd(r * r, 25)
    if loss == c.Loss.LOGISTIC:
        return sat(slow_sigmoid(z) - y), slow_softplus(z if y == 0 else sat(-z))
    m = z if y >= 0 else sat(-z)
    return ((-ONE if y >= 0 else ONE) if m < ONE else 0), max(0, ONE - m)


def slow_run(cfg, streams, codebook):
    x = [0] * cfg.dim
    sums = []
    for e in range(cfg.epochs):
        q1, q2, y = p.decode(cfg.layout, streams[e % len(streams)], codebook)
        k = min(cfg.step_shift + (e // cfg.decay_epochs if cfg.decay_epochs else 0), c.STEP_SHIFT_MAX)
        total = 0
        for b0 in range(0, cfg.n_samples, cfg.batch):
            g = [0] * cfg.dim
            for s in range(b0, min(b0 + cfg.batch, cfg.n_samples)):
                acc = sum(int(q1[s, i]) * x[i] for i in range(cfg.dim))
                z = sat(rnd(acc, 16))
                r, lo = slow_loss(cfg.loss, z, int(y[s]))
                total += min(lo, (1 << 40) - 1)
                rp = sat(rnd(r * cfg.step_mult, 15 + k))
                for i in range(cfg.dim):
                    g[i] += rp * int(q2[s, i])
            x = [sat(x[i] - rnd(g[i], 16) - (rnd(x[i], cfg.l2_shift) if cfg.l2_shift else 0))
                 for i in range(cfg.dim)]
        sums.append(total)
    return x, sums


def random_config(rng, W=64):
    """A random job of zipsgd.testing (up to two copies, random codebook)."""
    params = c.EngineParams(word_bits=W)
    return testing.job_for(rng, testing.random_config(rng, params, n_max=24, d_max=39, epochs_max=3, copies_max=2))


@pytest.mark.parametrize("seed", range(40))
def test_reference_matches_slow_model(seed):
    rng = np.random.default_rng(seed)
    cfg, streams, cb = random_config(rng, W=int(rng.choice(c.WORD_BITS_ALLOWED)))
    res = ref.run(cfg, streams, cb)
    x, sums = slow_run(cfg, streams, cb)
    assert res.model.tolist() == x
    assert res.loss_sums == sums
    assert res.beats == cfg.n_samples * cfg.layout.beats_per_sample * cfg.epochs


def test_saturation_never_wraps():
    # a huge step drives the model to the rails; it must stick there, not wrap
    layout = c.Layout(64, c.Encoding.FULL, 32, 3)
    X = np.full((8, 3), c.FEAT.one)
    y = np.full(8, c.MODEL.max)
    cfg = c.EngineConfig(n_samples=8, dim=3, bits=32, encoding=c.Encoding.FULL, step_shift=0,
                         step_mult=c.STEP_MULT.max, epochs=3)
    res = ref.run(cfg, [p.pack(layout, y, values=X)])
    assert (res.model == c.MODEL.max).all()
    cfg.loss = c.Loss.SQUARED
    res = ref.run(cfg, [p.pack(layout, np.full(8, c.MODEL.min), values=X)])
    assert (res.model < c.MODEL.min // 2).all()        # pinned near the bottom rail, not wrapped


def test_sigmoid_and_softplus_track_the_real_functions():
    z = np.linspace(-12, 12, 4001)
    zi = c.MODEL.to_fixed(z)
    s = c.MODEL.to_float(ref.sigmoid_hat(zi))
    assert np.abs(s - 1 / (1 + np.exp(-z))).max() < 0.02
    assert np.all(np.diff(s) >= -0.004)     # monotone but for PLAN's known 0.0039 step at |z| = 2.375
    sp = c.MODEL.to_float(ref.softplus_hat(zi))
    assert np.abs(sp - np.logaddexp(0, z)).max() < 0.035   # 1/8-step table: <= slope/16


def test_rejected_configuration_names_the_error():
    cfg = c.EngineConfig(n_samples=1, dim=5000, bits=4, encoding=c.Encoding.SINGLE)
    assert c.check_config(cfg, c.EngineParams()) == c.Error.BAD_DIM
    with pytest.raises(ValueError, match="BAD_DIM"):
        ref.run(cfg, [np.zeros(1, dtype=np.uint64)], np.zeros(16, dtype=np.int64))
    cfg = c.EngineConfig(n_samples=1, dim=5, bits=4, encoding=c.Encoding.PAIR)
    assert c.check_config(cfg, c.EngineParams()) == c.Error.BAD_BITS
