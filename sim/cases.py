"""Test vectors of the engine's blocks, shared by the Amaranth-simulator unit tests
(``tests/test_hw_blocks.py``) and the cocotb component benches (``sim/test_components.py``).

Each case carries its expected outputs, computed from the contract's own models
(:func:`zipsgd.packing.unpack` for the decoder, :func:`zipsgd.reference.residual_and_loss`
for the scalar unit), never from the gateware.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zipsgd import reference
from zipsgd.contract import (
    ACC, FEAT, HOST_WORD_BITS, MODEL, SIGMOID_SEGMENTS, SOFTPLUS_SHIFT, STEP_MULT, STEP_SHIFT_MAX, Encoding,
    Layout, Loss, rshift_round,
)
from zipsgd.packing import pack, unpack


def beats_of(stream, word_bits: int) -> list[int]:
    """Host words -> list of W-bit ints (low host word first)."""
    hw = word_bits // HOST_WORD_BITS
    w = np.asarray(stream, dtype=np.uint64).reshape(-1, hw)
    return [sum(int(w[i, j]) << (HOST_WORD_BITS * j) for j in range(hw)) for i in range(w.shape[0])]


# ------------------------------------------------------------------------------------
# Decoder
# ------------------------------------------------------------------------------------
@dataclass
class DecoderBeat:
    """One beat presented to the decoder in one mode, with what it must produce."""

    mode_index: int
    full: bool
    beat: int
    codes: dict         # lane -> expected code (which = 1 or 2 chosen at construction)
    values: dict        # lane -> expected FULL value
    label: int | None   # expected label on a sample's last beat


def decoder_cases(word_bits: int, which: int, seed: int | None = None) -> list[DecoderBeat]:
    """Three full beats plus the label beat of two samples, in every mode at ``word_bits``.

    ``which`` = 1 expects the first samples' codes (``Q1``), 2 the second (``Q2``).
    """
    from zipsgd.hw.decode import modes

    rng = np.random.default_rng(word_bits if seed is None else seed)
    out = []
    for md in modes(word_bits):
        dim = 3 * md.lanes + md.label_lanes            # three full beats + the label beat
        lay = Layout(word_bits, md.encoding, md.bits, dim)
        n = 2
        y = rng.integers(-2**31, 2**31, size=n)
        top = 1 << md.bits if not md.full else 0
        if md.full:
            s = pack(lay, y, values=rng.integers(-FEAT.one, FEAT.one + 1, size=(n, dim)))
        elif md.encoding == Encoding.COMPACT:
            j = rng.integers(0, top - 1, size=(n, dim))
            s = pack(lay, y, codes1=j + rng.integers(0, 2, size=(n, dim)), codes2=j + rng.integers(0, 2, size=(n, dim)))
        else:
            s = pack(lay, y, codes1=rng.integers(0, top, size=(n, dim)), codes2=rng.integers(0, top, size=(n, dim)))
        u = unpack(lay, s)
        key = "codes1" if which == 1 or "codes2" not in u else "codes2"
        B = lay.beats_per_sample
        for i, beat in enumerate(beats_of(s, word_bits)):
            smp, b = divmod(i, B)
            codes, values = {}, {}
            for lane in range(md.lanes):
                f = b * md.lanes + lane
                if f >= lay.dim:
                    continue
                if md.full:
                    values[lane] = int(u["values"][smp, f])
                else:
                    codes[lane] = int(u[key][smp, f])
            label = int(u["labels"][smp]) if b == B - 1 else None
            out.append(DecoderBeat(md.index, md.full, beat, codes, values, label))
    return out


# ------------------------------------------------------------------------------------
# Scalar unit
# ------------------------------------------------------------------------------------
def scalar_cases(rng) -> list[tuple]:
    """(acc, y, loss, m, k) inputs: rounding edges of z, sigmoid and softplus segment
    edges, saturation, random values, every loss, extreme step multipliers and shifts."""
    one = MODEL.one
    zs = [0, 1, -1, one, -one, MODEL.max, MODEL.min, 5 * one, -5 * one]
    zs += [t + dt for t, _, _ in SIGMOID_SEGMENTS for dt in (-1, 0, 1)]
    zs += [-(t + dt) for t, _, _ in SIGMOID_SEGMENTS for dt in (-1, 0, 1)]
    zs += [(k << SOFTPLUS_SHIFT) + dt for k in (1, 7, 63, 64, 65) for dt in (-1, 0)]
    zs += list(rng.integers(-8 * one, 8 * one, size=40))
    accs = []
    for z in zs:                                    # acc hitting z exactly / rounding edges
        accs += [int(z) << FEAT.frac, (int(z) << FEAT.frac) - (1 << (FEAT.frac - 1)),
                 (int(z) << FEAT.frac) + (1 << (FEAT.frac - 1)) - 1]
    accs += [ACC.max >> 2, ACC.min >> 2, ACC.max >> 8, -(ACC.max >> 8)]
    out = []
    for a in accs:
        for loss in Loss:
            if loss == Loss.SQUARED:
                y = int(rng.choice([0, one, -3 * one, MODEL.max, MODEL.min, int(rng.integers(-4 * one, 4 * one))]))
            elif loss == Loss.LOGISTIC:
                y = int(rng.choice([0, one]))
            else:
                y = int(rng.choice([-one, one]))
            mult = int(rng.choice([STEP_MULT.one, STEP_MULT.max, 1, int(rng.integers(1, STEP_MULT.max + 1))]))
            k = int(rng.choice([0, 0, 1, 5, 17, 33, STEP_SHIFT_MAX, int(rng.integers(0, STEP_SHIFT_MAX + 1))]))
            out.append((int(a), y, Loss(loss), mult, k))
    return out


def scalar_expected(case) -> tuple[int, int]:
    """(r', sample loss) the contract gives for one :func:`scalar_cases` input."""
    a, y, loss, mult, k = case
    z = MODEL.saturate(rshift_round(a, FEAT.frac))
    r, lo = reference.residual_and_loss(loss, np.array([z]), np.array([y]))
    rp = MODEL.saturate(rshift_round(int(r[0]) * mult, STEP_MULT.frac + k))
    return int(rp), int(lo[0])
