"""Pack quantized samples into the engine's stream and back (vectorised numpy).

The layout is defined in :mod:`zipsgd.contract`; this module only moves bits.
A packed stream is a 1-D ``uint64`` array of ``n * beats_per_sample * W/64`` host
words (a ``W``-bit beat is ``W/64`` little-endian words, low half first).

Inputs per encoding (``n`` samples of ``d`` features):

* FULL: ``values`` — signed FEAT integers.
* SINGLE: ``codes1`` — level indices.
* PAIR / COMPACT: ``codes1`` (for Q1, the dot product) and ``codes2`` (for Q2,
  the gradient); COMPACT needs ``|codes1 - codes2| <= 1`` elementwise.

``labels`` are signed MODEL integers.
"""

from __future__ import annotations

import numpy as np

from .contract import FEAT, HOST_WORD_BITS, LABEL_BITS, Encoding, Layout

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _slot_fields(layout: Layout, codes1, codes2, values) -> np.ndarray:
    """The ``fb``-bit field of each feature, as uint64 of shape (n, d)."""
    enc, b = layout.encoding, layout.bits
    if enc == Encoding.FULL:
        if values is None:
            raise ValueError("FULL encoding needs `values` (FEAT integers)")
        v = np.asarray(values, dtype=np.int64)
        if v.size and (v.min() < -FEAT.one or v.max() > FEAT.one):
            raise ValueError("FULL values must lie in [-1, 1] (FEAT integers within +-2**FEAT.frac)")
        return (v & ((1 << layout.feature_bits) - 1)).astype(np.uint64)
    if codes1 is None:
        raise ValueError(f"{enc.name} encoding needs `codes1`")
    c1 = np.asarray(codes1, dtype=np.int64)
    top = (1 << b) - 1
    if c1.size and (c1.min() < 0 or c1.max() > top):
        raise ValueError(f"codes must lie in [0, {top}] for bits={b}")
    if enc == Encoding.SINGLE:
        return c1.astype(np.uint64)
    if codes2 is None:
        raise ValueError(f"{enc.name} encoding needs `codes2` (the second sample)")
    c2 = np.asarray(codes2, dtype=np.int64)
    if c2.shape != c1.shape:
        raise ValueError(f"codes1 {c1.shape} and codes2 {c2.shape} differ in shape")
    if c2.size and (c2.min() < 0 or c2.max() > top):
        raise ValueError(f"codes must lie in [0, {top}] for bits={b}")
    if enc == Encoding.PAIR:
        return (c1 | (c2 << b)).astype(np.uint64)
    # COMPACT: interval index j plus two choice bits.
    if c1.size and np.abs(c1 - c2).max() > 1:
        raise ValueError("COMPACT encoding needs both samples on one interval (|codes1 - codes2| <= 1)")
    j = np.minimum(np.minimum(c1, c2), top - 1)
    return (j | ((c1 - j) << b) | ((c2 - j) << (b + 1))).astype(np.uint64)


def pack(layout: Layout, labels, codes1=None, codes2=None, values=None) -> np.ndarray:
    """Pack ``n`` samples into a stream of host words.

    Parameters
    ----------
    layout : Layout
        Stream layout (word width, encoding, bits, dimension).
    labels : array of int, shape (n,)
        Labels as MODEL integers (saturated to 32 bits by the caller).
    codes1, codes2, values : array of int, shape (n, d)
        Slot contents, see the module docstring.

    Returns
    -------
    numpy.ndarray of uint64, shape (n * beats_per_sample * W/64,)
    """
    fields = _slot_fields(layout, codes1, codes2, values)
    if fields.ndim != 2 or fields.shape[1] != layout.dim:
        raise ValueError(f"expected samples of shape (n, {layout.dim}), got {fields.shape}")
    n = fields.shape[0]
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (n,):
        raise ValueError(f"expected {n} labels, got shape {labels.shape}")
    fb, F, B = layout.feature_bits, layout.features_per_beat, layout.beats_per_sample
    hw = layout.host_words_per_beat
    slots = np.zeros((n, B * F), dtype=np.uint64)
    slots[:, : layout.dim] = fields
    slots = slots.reshape(n, B, F)
    words = np.zeros((n, B, hw), dtype=np.uint64)
    for s in range(F):
        lo = s * fb
        w, off = divmod(lo, HOST_WORD_BITS)
        col = slots[:, :, s]
        words[:, :, w] |= (col << np.uint64(off)) & _MASK64
        if off + fb > HOST_WORD_BITS:  # slot straddles two host words
            words[:, :, w + 1] |= col >> np.uint64(HOST_WORD_BITS - off)
    lw, loff = divmod(layout.label_shift, HOST_WORD_BITS)
    lab = (labels & ((1 << LABEL_BITS) - 1)).astype(np.uint64)
    words[:, B - 1, lw] |= lab << np.uint64(loff)
    return words.reshape(-1)


def _beats(layout: Layout, stream) -> tuple[np.ndarray, int]:
    words = np.asarray(stream, dtype=np.uint64)
    per_sample = layout.beats_per_sample * layout.host_words_per_beat
    if words.ndim != 1 or words.size % per_sample:
        raise ValueError(f"stream of {words.size} words is not a whole number of "
                         f"{per_sample}-word samples")
    n = words.size // per_sample
    return words.reshape(n, layout.beats_per_sample, layout.host_words_per_beat), n


def unpack_fields(layout: Layout, stream) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of the bit placement: (fields uint64 (n, d), labels int64 (n,))."""
    words, n = _beats(layout, stream)
    fb, F, B = layout.feature_bits, layout.features_per_beat, layout.beats_per_sample
    mask = np.uint64((1 << fb) - 1)
    slots = np.empty((n, B, F), dtype=np.uint64)
    for s in range(F):
        lo = s * fb
        w, off = divmod(lo, HOST_WORD_BITS)
        v = words[:, :, w] >> np.uint64(off)
        if off + fb > HOST_WORD_BITS:
            v = v | ((words[:, :, w + 1] << np.uint64(HOST_WORD_BITS - off)) & _MASK64)
        slots[:, :, s] = v & mask
    fields = slots.reshape(n, B * F)[:, : layout.dim]
    lw, loff = divmod(layout.label_shift, HOST_WORD_BITS)
    lab = ((words[:, B - 1, lw] >> np.uint64(loff)) & np.uint64((1 << LABEL_BITS) - 1)).astype(np.int64)
    lab = np.where(lab >= 1 << (LABEL_BITS - 1), lab - (1 << LABEL_BITS), lab)
    return fields, lab


def unpack(layout: Layout, stream) -> dict:
    """Unpack a stream into its slot contents.

    Returns a dict with ``labels`` and, by encoding, ``values`` (FULL),
    ``codes1`` (SINGLE, and Q1 of double encodings) and ``codes2``.
    """
    fields, labels = unpack_fields(layout, stream)
    f = fields.astype(np.int64)
    enc, b = layout.encoding, layout.bits
    out = {"labels": labels}
    if enc == Encoding.FULL:
        sign = 1 << (layout.feature_bits - 1)
        out["values"] = np.where(f >= sign, f - (1 << layout.feature_bits), f)
    elif enc == Encoding.SINGLE:
        out["codes1"] = f
    elif enc == Encoding.PAIR:
        m = (1 << b) - 1
        out["codes1"], out["codes2"] = f & m, (f >> b) & m
    else:
        j = f & ((1 << b) - 1)
        out["codes1"], out["codes2"] = j + ((f >> b) & 1), j + ((f >> (b + 1)) & 1)
    return out


def decode(layout: Layout, stream, codebook=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the engine sees: (Q1, Q2, labels) as FEAT / MODEL integers (int64).

    ``codebook`` is the array of 2**b FEAT integers (ignored for FULL).
    """
    u = unpack(layout, stream)
    if layout.encoding == Encoding.FULL:
        return u["values"], u["values"], u["labels"]
    cb = np.asarray(codebook, dtype=np.int64)
    if cb.shape != (1 << layout.bits,):
        raise ValueError(f"codebook must have {1 << layout.bits} entries for bits={layout.bits}, got {cb.shape}")
    q1 = cb[u["codes1"]]
    q2 = cb[u["codes2"]] if "codes2" in u else q1
    return q1, q2, u["labels"]
