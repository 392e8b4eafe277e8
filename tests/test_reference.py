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


def slow_label(cfg, word):
    """POS_CLASS: the label word is the label (0) or a class index (c > 0)."""
    if not cfg.pos_class:
        return word
    return ONE if word == cfg.pos_class - 1 else (-ONE if cfg.loss == c.Loss.HINGE else 0)


def slow_run(cfg, streams, codebook, saturations=None, model0=None):
    x = [0] * cfg.dim if model0 is None else [int(v) for v in model0]
    sums = []
    saturations = [] if saturations is None else saturations
    for e in range(cfg.epochs):
        q1, q2, y = p.decode(cfg.layout, streams[e % len(streams)], codebook)
        k = min(cfg.step_shift + (e // cfg.decay_epochs if cfg.decay_epochs else 0), c.STEP_SHIFT_MAX)
        total = 0
        for b0 in range(0, cfg.n_samples, cfg.batch):
            g = [0] * cfg.dim
            for s in range(b0, min(b0 + cfg.batch, cfg.n_samples)):
                acc = sum(int(q1[s, i]) * x[i] for i in range(cfg.dim))
                z = sat(rnd(acc, 16))
                label = slow_label(cfg, int(y[s]))
                r, lo = slow_loss(cfg.loss, z, label)
                total += min(lo, (1 << 40) - 1)
                m = cfg.step_mult if label > 0 or not cfg.step_mult_neg else cfg.step_mult_neg
                rp = sat(rnd(r * m, 15 + k))
                for i in range(cfg.dim):
                    g[i] += rp * int(q2[s, i])
            new = [x[i] - rnd(g[i], 16) - (rnd(x[i], cfg.l2_shift) if cfg.l2_shift else 0) for i in range(cfg.dim)]
            x = [sat(v) for v in new]
            saturations.append(x != new)
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
    model0 = None
    if seed % 2:        # a warm start, some words at the rails
        model0 = rng.choice([c.MODEL.min, c.MODEL.max, 0, ONE, -ONE], size=cfg.dim)
    res = ref.run(cfg, streams, cb, model0=model0)
    saturations = []
    x, sums = slow_run(cfg, streams, cb, saturations, model0=model0)
    assert res.model.tolist() == x
    assert res.loss_sums == sums
    assert res.saturated == sum(saturations)
    assert res.beats == cfg.n_samples * cfg.layout.beats_per_sample * cfg.epochs
    assert not res.stopped


@pytest.mark.parametrize("bits", [3, 5, 6, 7])
def test_reference_matches_slow_model_at_widths_only_the_cpu_runs(bits):
    """Codes at every b from 1 to 8: the widths no engine build decodes follow the same
    contract (PAIR 2b or COMPACT b+2, whichever is smaller; SINGLE b)."""
    rng = np.random.default_rng(bits)
    params = c.EngineParams(word_bits=64).for_cpu()
    for enc in (c.Encoding.SINGLE, c.double_encoding(bits)):
        cfg = testing.random_config(rng, params, n_max=24, d_max=39, epochs_max=2, copies_max=2)
        cfg = c.EngineConfig(**{**cfg.__dict__, "bits": bits, "encoding": enc})
        cfg, streams, cb = testing.job_for(rng, cfg)
        with pytest.raises(ValueError, match="BAD_BITS"):
            ref.run(cfg, streams, cb)                        # an engine build refuses it
        res = ref.run(cfg, streams, cb, params=params)
        x, sums = slow_run(cfg, streams, cb)
        assert res.model.tolist() == x and res.loss_sums == sums


def test_slow_model_sees_every_new_field():
    """The random jobs above cover class labels, class multipliers, warm starts and
    saturated updates (else the comparison proves nothing about them)."""
    seen = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        cfg, streams, cb = random_config(rng, W=int(rng.choice(c.WORD_BITS_ALLOWED)))
        seen.add("pos_class" if cfg.pos_class else "labels")
        seen.add("mult_neg" if cfg.step_mult_neg else "mult")
        model0 = rng.choice([c.MODEL.min, c.MODEL.max, 0, ONE, -ONE], size=cfg.dim) if seed % 2 else None
        if ref.run(cfg, streams, cb, model0=model0).saturated:
            seen.add("saturated")
    assert seen == {"pos_class", "labels", "mult_neg", "mult", "saturated"}


def small_job(seed=0, **over):
    rng = np.random.default_rng(seed)
    cfg = c.EngineConfig(**{**dict(n_samples=30, dim=7, bits=4, encoding=c.Encoding.COMPACT, loss=c.Loss.LOGISTIC,
                                   step_shift=2, batch=3, epochs=5, copies=2), **over})
    return testing.job_for(rng, cfg)


def test_stop_ends_the_job_as_fewer_epochs_would():
    cfg, streams, cb = small_job()
    asked = []
    res = ref.run(cfg, streams, cb, stop=lambda e, lo: asked.append((e, lo)) or e == 1)
    short = ref.run(c.EngineConfig(**{**cfg.__dict__, "epochs": 2}), streams, cb)
    assert res.stopped and res.model.tolist() == short.model.tolist() and res.loss_sums == short.loss_sums
    assert [e for e, _ in asked] == [0, 1] and [lo for _, lo in asked] == short.loss_sums
    assert res.samples == 2 * cfg.n_samples
    full = ref.run(cfg, streams, cb, stop=lambda e, lo: False)
    assert not full.stopped and len(full.loss_sums) == cfg.epochs
    # run_many: each job stops on its own; the others go on, bit for bit as alone
    cfg2 = c.EngineConfig(**{**cfg.__dict__, "step_mult": c.STEP_MULT.one // 3})
    many = ref.run_many([cfg, cfg2], [streams, streams], [cb, cb], stop=lambda k, e, lo: k == 0 and e == 2)
    assert many[0].stopped and many[0].loss_sums == ref.run(c.EngineConfig(**{**cfg.__dict__, "epochs": 3}),
                                                            streams, cb).loss_sums
    alone = ref.run(cfg2, streams, cb)
    assert not many[1].stopped and many[1].model.tolist() == alone.model.tolist()


def test_pos_class_equals_the_mapped_labels():
    for loss in c.Loss:
        cfg, streams, cb = small_job(1, loss=loss, pos_class=3)
        plain = c.EngineConfig(**{**cfg.__dict__, "pos_class": 0})
        mapped = []
        for s in streams:
            q1, q2, y = p.decode(cfg.layout, s, np.arange(16))
            y2 = np.where(y == 2, ONE, -ONE if loss == c.Loss.HINGE else 0)
            mapped.append(p.pack(cfg.layout, y2, codes1=q1, codes2=q2))
        a, b = ref.run(cfg, streams, cb), ref.run(plain, mapped, cb)
        assert a.model.tolist() == b.model.tolist() and a.loss_sums == b.loss_sums


def test_class_and_sample_multipliers():
    cfg, streams, cb = small_job(2, loss=c.Loss.HINGE, step_mult=c.STEP_MULT.one // 2)
    base = ref.run(cfg, streams, cb)
    # weight 1.0 per sample changes nothing; 2.0 equals a doubled STEP_MULT exactly
    ones = [np.full(cfg.n_samples, c.STEP_MULT.one)] * 2
    assert ref.run(cfg, streams, cb, sample_mult=ones).model.tolist() == base.model.tolist()
    double = ref.run(c.EngineConfig(**{**cfg.__dict__, "step_mult": c.STEP_MULT.one}), streams, cb)
    twos = [np.full(cfg.n_samples, 2 * c.STEP_MULT.one)] * 2
    assert ref.run(cfg, streams, cb, sample_mult=twos).model.tolist() == double.model.tolist()
    # STEP_MULT_NEG equal to STEP_MULT changes nothing; another value changes the model
    same = c.EngineConfig(**{**cfg.__dict__, "step_mult_neg": cfg.step_mult})
    assert ref.run(same, streams, cb).model.tolist() == base.model.tolist()
    other = c.EngineConfig(**{**cfg.__dict__, "step_mult_neg": 1})
    assert ref.run(other, streams, cb).model.tolist() != base.model.tolist()
    with pytest.raises(ValueError, match="sample multipliers"):
        ref.run(cfg, streams, cb, sample_mult=[np.ones(3, dtype=np.int64)])


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
