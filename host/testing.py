"""Random jobs and bad configurations for every test tier (one home, seeded).

The Amaranth-simulator tests, the cocotb benches, the simulated board, the packer's and
the reference's tests and the engine benchmark draw their jobs here, so that "a random
job" means the same thing at every level. Everything is drawn from a
``numpy.random.Generator`` the caller seeds.
"""

from __future__ import annotations

import numpy as np

from . import contract as c
from .packing import pack


def random_labels(rng, loss: c.Loss, n: int) -> np.ndarray:
    """MODEL-integer labels as each loss expects them: any value in [-2, 2) for squared,
    {0, 1} for logistic, {-1, +1} for hinge."""
    one = c.MODEL.one
    if loss == c.Loss.SQUARED:
        return rng.integers(-2 * one, 2 * one, size=n)
    if loss == c.Loss.LOGISTIC:
        return rng.integers(0, 2, size=n) * one
    return rng.choice([-one, one], size=n)


def random_codes(rng, encoding: c.Encoding, bits: int, n: int, d: int) -> dict:
    """Keyword arguments of :func:`zipsgd.packing.pack` for ``n`` x ``d`` random features:
    FULL values, SINGLE codes, PAIR code pairs, COMPACT pairs one level apart at most."""
    enc = c.Encoding(encoding)
    if enc == c.Encoding.FULL:
        return {"values": rng.integers(-c.FEAT.one, c.FEAT.one + 1, size=(n, d))}
    if enc == c.Encoding.SINGLE:
        return {"codes1": rng.integers(0, 1 << bits, size=(n, d))}
    if enc == c.Encoding.PAIR:
        return {"codes1": rng.integers(0, 1 << bits, size=(n, d)), "codes2": rng.integers(0, 1 << bits, size=(n, d))}
    j = rng.integers(0, (1 << bits) - 1, size=(n, d))
    return {"codes1": j + rng.integers(0, 2, size=(n, d)), "codes2": j + rng.integers(0, 2, size=(n, d))}


def random_codebook(rng, bits: int, ends: bool | None = None) -> np.ndarray:
    """Sorted random levels (FEAT integers within [-1, 1]); ``ends``: force -1 and +1 at the
    ends (None: half the time)."""
    lv = np.sort(rng.choice(2 * c.FEAT.one + 1, size=1 << bits, replace=False) - c.FEAT.one)
    if ends if ends is not None else rng.random() < 0.5:
        lv[0], lv[-1] = -c.FEAT.one, c.FEAT.one
    return lv


def random_class_labels(rng, n: int, classes: int = 4) -> np.ndarray:
    """Class-index label words (POS_CLASS jobs): mostly ``0 .. classes-1``, some words no
    class has (negative, large, the MODEL range's ends)."""
    y = rng.integers(0, classes, size=n)
    odd = rng.random(n) < 0.1
    y[odd] = rng.choice([-1, classes, c.MODEL.max, c.MODEL.min, c.MODEL.one], size=int(odd.sum()))
    return y


def random_stream(rng, cfg: c.EngineConfig) -> np.ndarray:
    """One packed epoch of random samples for ``cfg`` (labels by its loss, or class indices
    when it sets POS_CLASS)."""
    y = (random_class_labels(rng, cfg.n_samples) if cfg.pos_class
         else random_labels(rng, c.Loss(cfg.loss), cfg.n_samples))
    return pack(cfg.layout, y, **random_codes(rng, cfg.encoding, cfg.bits, cfg.n_samples, cfg.dim))


def job_for(rng, cfg: c.EngineConfig, copies: int | None = None, codebook=None):
    """A job of configuration ``cfg``: (cfg, streams, codebook), ``copies`` random copies
    (default ``cfg.copies``) and a random codebook unless one is given (None in FULL)."""
    if c.Encoding(cfg.encoding) != c.Encoding.FULL and codebook is None:
        codebook = random_codebook(rng, cfg.bits, ends=False)
    elif c.Encoding(cfg.encoding) == c.Encoding.FULL:
        codebook = None
    return cfg, [random_stream(rng, cfg) for _ in range(copies or cfg.copies or 1)], codebook


def random_config(rng, params: c.EngineParams, n_max: int = 40, d_max: int = 100, epochs_max: int = 3,
                  copies_max: int = 1) -> c.EngineConfig:
    """A random configuration the engine accepts, small enough for RTL simulation."""
    modes = c.valid_modes()
    enc, bits = modes[int(rng.integers(len(modes)))]
    n = int(rng.integers(1, n_max + 1))
    d = int(rng.integers(1, min(d_max, params.dim_max) + 1))
    batch = int(min(params.batch_max, rng.choice([1, 1, 2, 3, int(rng.integers(1, n + 3))])))
    epochs = int(rng.integers(1, min(epochs_max, params.epochs_max) + 1))
    return c.EngineConfig(
        n_samples=n, dim=d, bits=bits, encoding=enc, loss=c.Loss(int(rng.integers(len(c.Loss)))),
        step_shift=int(rng.integers(0, 12)),
        step_mult=int(c.STEP_MULT.one if rng.random() < 0.5 else rng.integers(1, c.STEP_MULT.max + 1)),
        decay_epochs=int(rng.choice([0, 0, 1, 2])),
        l2_shift=int(rng.choice([0, 0, int(rng.integers(1, c.L2_SHIFT_MAX + 1))])),
        batch=batch, epochs=epochs, copies=int(rng.integers(1, copies_max + 1)), word_bits=params.word_bits,
        pos_class=int(rng.integers(1, 5)) if rng.random() < 0.25 else 0,
        step_mult_neg=int(rng.integers(1, c.STEP_MULT.max + 1)) if rng.random() < 0.25 else 0)


def bad_configs(params: c.EngineParams):
    """(label, EngineConfig) pairs that ``contract.check_config`` rejects, one or more per
    error code, for every tier's refusal tests."""
    W = params.word_bits
    base = dict(n_samples=4, dim=3, bits=4, encoding=c.Encoding.SINGLE, word_bits=W)
    cases = [
        ("encoding", dict(encoding=len(c.Encoding))),
        ("encoding_big", dict(encoding=0xFFFFFFFF)),
        ("bits", dict(bits=3)),
        ("full_bits", dict(encoding=c.Encoding.FULL, bits=8)),
        ("dim0", dict(dim=0)),
        ("dim_big", dict(dim=params.dim_max + 1)),
        ("dim_huge", dict(dim=0xFFFFFFFF)),
        ("n0", dict(n_samples=0)),
        ("batch0", dict(batch=0)),
        ("batch_big", dict(batch=params.batch_max + 1)),
        ("loss", dict(loss=len(c.Loss))),
        ("epochs0", dict(epochs=0)),
        ("epochs_big", dict(epochs=params.epochs_max + 1)),
        ("step_mult0", dict(step_mult=0)),
        ("step_mult_big", dict(step_mult=c.STEP_MULT.max + 1)),
        ("step_shift", dict(step_shift=c.STEP_SHIFT_MAX + 1)),
        ("l2_shift", dict(l2_shift=c.L2_SHIFT_MAX + 1)),
        ("step_mult_neg_big", dict(step_mult_neg=c.STEP_MULT.max + 1)),
        ("several", dict(dim=0, n_samples=0, loss=7)),          # several faults: the first check wins
    ]
    for label, over in cases:
        yield label, c.EngineConfig(**{**base, **over})
