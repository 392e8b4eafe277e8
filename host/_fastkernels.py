"""The engine's loop compiled with numba (imported only by :mod:`zipsgd.fastref`, which
falls back to the numpy specification :mod:`zipsgd.reference` where numba is missing).

Everything here is integer arithmetic on int64/uint64, the same operations in the same
order as :func:`zipsgd.reference.run_many`; every constant comes in as an argument built
from :mod:`zipsgd.contract` by :mod:`zipsgd.fastref` (nothing is retyped here). The
functions are compiled once per machine and cached on disk (``cache=True``).
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True, boundscheck=False)
#: small helpers, inlined into their callers by numba itself
_inline = numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")


@_inline
def _sat(v, lo, hi):
    return lo if v < lo else (hi if v > hi else v)


@_inline
def _rsr(v, s):
    """rshift_round: arithmetic right shift by s rounding half up (s == 0: identity)."""
    if s == 0:
        return v
    return (v + (np.int64(1) << (s - 1))) >> s


@_jit
def code_tables(lay, codebook):
    """What each value of a feature slot decodes to: (Q1 table, Q2 table, bad table) over
    the ``2**feature_bits`` slot values of a codebook encoding (SINGLE, PAIR, COMPACT);
    ``bad[f]`` is 1 where a code points past the codebook (those entries hold level 0)."""
    enc, bits, fb, PAIR, SINGLE = lay[0], lay[1], lay[3], lay[12], lay[11]
    size = np.int64(1) << fb
    cmask = (np.int64(1) << bits) - 1
    ncb = codebook.shape[0]
    t1 = np.zeros(size, dtype=np.int64)
    t2 = np.zeros(size, dtype=np.int64)
    bad = np.zeros(size, dtype=np.int64)
    for f in range(size):
        if enc == SINGLE:
            c1 = np.int64(f)
            c2 = np.int64(f)
        elif enc == PAIR:
            c1 = f & cmask
            c2 = (f >> bits) & cmask
        else:
            j = f & cmask
            c1 = j + ((f >> bits) & 1)
            c2 = j + ((f >> (bits + 1)) & 1)
        if c1 >= ncb or c2 >= ncb:
            bad[f] = 1
        else:
            t1[f] = codebook[c1]
            t2[f] = codebook[c2]
    return t1, t2, bad


@_jit
def _placement(d, F, fb, hw, HW):
    """Where each of the ``d`` features sits in its sample: host word, bit offset, bits
    left in that word, and whether its field straddles into the next word."""
    widx = np.empty(d, dtype=np.int64)
    offs = np.empty(d, dtype=np.uint64)
    back = np.empty(d, dtype=np.uint64)
    strad = np.zeros(d, dtype=np.bool_)
    for i in range(d):
        lo = (i % F) * fb
        widx[i] = (i // F) * hw + lo // HW
        offs[i] = np.uint64(lo % HW)
        back[i] = np.uint64(HW - lo % HW)
        strad[i] = lo % HW + fb > HW
    return widx, offs, back, strad


@_jit
def decode_chunk(words, lay, t1, t2, bad, q1, q2, y):
    """Decode the samples of ``words`` (uint64 host words, whole samples) into FEAT
    integers ``q1``, ``q2`` (samples, d) and MODEL labels ``y``, as
    :func:`zipsgd.packing.decode` does. ``lay``: int64 array (encoding, bits, dim,
    feature_bits, features_per_beat, beats_per_sample, host_words_per_beat, label_shift,
    host word bits, label bits, FULL, SINGLE, PAIR); ``t1``, ``t2``, ``bad``: the
    :func:`code_tables` (unused in FULL). Returns the number of codes that point past the
    codebook (0 for any stream the packer writes)."""
    enc, d, fb, F, B, hw = lay[0], lay[2], lay[3], lay[4], lay[5], lay[6]
    lshift, HW, LB, FULL = lay[7], lay[8], lay[9], lay[10]
    per = B * hw
    n = words.shape[0] // per
    fmask = (np.uint64(1) << np.uint64(fb)) - np.uint64(1)
    sign = np.int64(1) << (fb - 1)
    full = np.int64(1) << fb
    lw = lshift // HW
    loff = np.uint64(lshift % HW)
    lmask = (np.uint64(1) << np.uint64(LB)) - np.uint64(1)
    lsign = np.int64(1) << (LB - 1)
    lfull = np.int64(1) << LB
    # where feature i sits: host word (within its sample), bit offset, straddles the next word
    widx, offs, back, strad = _placement(d, F, fb, hw, HW)
    straddle = strad.any()
    nbad = 0
    for s in range(n):
        base = s * per
        for i in range(d):
            at = base + widx[i]
            v = words[at] >> offs[i]
            if straddle and offs[i] + np.uint64(fb) > np.uint64(HW):
                v |= words[at + 1] << back[i]
            f = np.int64(v & fmask)
            if enc == FULL:
                a = f - full if f >= sign else f
                q1[s, i] = a
                q2[s, i] = a
            else:
                q1[s, i] = t1[f]
                q2[s, i] = t2[f]
                nbad += bad[f]
        lab = np.int64((words[base + (B - 1) * hw + lw] >> loff) & lmask)
        y[s] = lab - lfull if lab >= lsign else lab
    return nbad


@_jit
def train_chunk(q1, q2, y, mult, x, g, cst, seg_thr, seg_shift, seg_off, softplus):
    """Run the batches of one decoded chunk (a whole number of batches, the last one
    possibly short) on model ``x`` (int64, updated in place); ``g`` is scratch of
    length d. ``y``: the labels the engine trains on (POS_CLASS applied); ``mult``: each
    sample's step multiplier. ``cst``: int64 array (loss, batch, (unused), shift = STEP_MULT.frac + k,
    l2_shift, FEAT.frac, MODEL.min, MODEL.max, MODEL.one, MODEL.frac, LOSS_SAMPLE.max,
    SOFTPLUS_SHIFT, SOFTPLUS_ENTRIES, SQUARED, LOGISTIC, HINGE). The sigmoid segments come as
    three arrays (shift -1 for the constant segment); ``softplus`` is the table plus a
    trailing 0. Returns the chunk's sum of per-sample losses (each saturated to
    LOSS_SAMPLE; a chunk's sum fits int64) and its number of batches whose update saturated."""
    loss, batch, shift, l2s = cst[0], cst[1], cst[3], cst[4]
    ffrac, mmin, mmax, one, mfrac = cst[5], cst[6], cst[7], cst[8], cst[9]
    lsmax, spshift, spn = cst[10], cst[11], cst[12]
    SQUARED, LOGISTIC = cst[13], cst[14]
    n, d = q1.shape[0], q1.shape[1]
    nseg = seg_thr.shape[0]
    total = np.int64(0)
    nsat = np.int64(0)
    rps = np.empty(batch, dtype=np.int64)
    for b0 in range(0, n, batch):
        b1 = min(b0 + batch, n)
        # dot products, residuals and losses of the batch, all on the model left by the last batch
        for s in range(b0, b1):
            acc = np.int64(0)
            for i in range(d):
                acc += q1[s, i] * x[i]
            z = _sat(_rsr(acc, ffrac), mmin, mmax)
            yy = y[s]
            if loss == SQUARED:
                r = _sat(z - yy, mmin, mmax)
                lo = _rsr(r * r, mfrac + 1)
            elif loss == LOGISTIC:
                u = min(abs(z), mmax)
                sg = np.int64(0)
                for k in range(nseg):
                    if u >= seg_thr[k]:
                        sg = seg_off[k] if seg_shift[k] < 0 else (u >> seg_shift[k]) + seg_off[k]
                        break
                if z < 0:
                    sg = one - sg
                r = _sat(sg - yy, mmin, mmax)
                t = z if yy == 0 else _sat(-z, mmin, mmax)
                idx = min(min(abs(t), mmax) >> spshift, spn)
                lo = max(t, 0) + softplus[idx]
            else:
                mg = z if yy >= 0 else _sat(-z, mmin, mmax)
                if mg < one:
                    r = -one if yy >= 0 else one
                else:
                    r = np.int64(0)
                lo = max(np.int64(0), one - mg)
            total += _sat(lo, 0, lsmax)
            rps[s - b0] = _sat(_rsr(r * mult[s], shift), mmin, mmax)
        # the batch's gradient and the model update (one sample: its gradient is its own term,
        # no sum to gather first)
        if b1 - b0 == 1:
            rp = rps[0]
            hit = np.int64(0)
            for i in range(d):
                l2 = _rsr(x[i], l2s) if l2s else np.int64(0)
                v = x[i] - _rsr(rp * q2[b0, i], ffrac) - l2
                xn = _sat(v, mmin, mmax)
                hit |= xn ^ v
                x[i] = xn
            if hit != 0:
                nsat += 1
            continue
        for i in range(d):
            g[i] = 0
        for s in range(b0, b1):
            rp = rps[s - b0]
            if rp != 0:
                for i in range(d):
                    g[i] += rp * q2[s, i]
        hit = np.int64(0)
        for i in range(d):
            l2 = _rsr(x[i], l2s) if l2s else np.int64(0)
            v = x[i] - _rsr(g[i], ffrac) - l2
            xn = _sat(v, mmin, mmax)
            hit |= xn ^ v
            x[i] = xn
        if hit != 0:
            nsat += 1
    return total, nsat


#: Length the kernels' binary searches take their sorted arrays padded to (2**8 levels at most).
SEARCH_SIZE = 256


@_inline
def _last_le(arr, a):
    """The last index ``j`` with ``arr[j] <= a``, given ``arr[0] <= a``; ``arr`` increasing,
    padded with +inf to :data:`SEARCH_SIZE`. Eight steps whatever the levels, without
    branches (guards on the true length make LLVM branch, three times slower)."""
    j = np.int64(0)
    j += 128 * np.int64(arr[j + 128] <= a)
    j += 64 * np.int64(arr[j + 64] <= a)
    j += 32 * np.int64(arr[j + 32] <= a)
    j += 16 * np.int64(arr[j + 16] <= a)
    j += 8 * np.int64(arr[j + 8] <= a)
    j += 4 * np.int64(arr[j + 4] <= a)
    j += 2 * np.int64(arr[j + 2] <= a)
    j += np.int64(arr[j + 1] <= a)
    return j


@_inline
def _last_lt(arr, a):
    """:func:`_last_le` with ``<``: the last index ``j`` with ``arr[j] < a``, given ``arr[0] < a``."""
    j = np.int64(0)
    j += 128 * np.int64(arr[j + 128] < a)
    j += 64 * np.int64(arr[j + 64] < a)
    j += 32 * np.int64(arr[j + 32] < a)
    j += 16 * np.int64(arr[j + 16] < a)
    j += 8 * np.int64(arr[j + 8] < a)
    j += 4 * np.int64(arr[j + 4] < a)
    j += 2 * np.int64(arr[j + 2] < a)
    j += np.int64(arr[j + 1] < a)
    return j


@_inline
def _interval(lv, lvp, guess, inv, a):
    """The codebook interval of ``a`` as :func:`zipsgd.quant._interval` finds it: ``a`` clipped
    to [lv[0], lv[-1]]; ``j`` = (how many levels are <= a) - 1, at most len(lv) - 2; the
    upper probability ``p``. ``lvp``: ``lv`` padded with +inf; ``guess[g]``: a level index
    near bucket ``g`` of ``len(guess)`` equal buckets over [lv[0], lv[-1]] (``inv``: buckets
    per unit), walked to the exact index (one step at most for an even codebook)."""
    s = lv.shape[0]
    ac = lv[0] if a < lv[0] else (lv[s - 1] if a > lv[s - 1] else a)
    g = np.int64((ac - lv[0]) * inv)
    nb = guess.shape[0]
    j = guess[0 if g < 0 else (nb - 1 if g >= nb else g)]
    while lvp[j + 1] <= ac:
        j += 1
    while j > 0 and lv[j] > ac:
        j -= 1
    if j > s - 2:
        j = s - 2
    lo = lv[j]
    return j, (ac - lo) / (lv[j + 1] - lo)


@_jit
def quantize_pack(xs, labels, u1, u2, lv, lvp, guess, inv, mids, mode, lay, feat_one, out):
    """Quantize rows ``xs`` (r, d) float64 and pack them with their ``labels`` (MODEL ints)
    into ``out`` (r samples of host words), as :func:`zipsgd.job.pack_copy` does with
    :mod:`zipsgd.quant` and :func:`zipsgd.packing.pack`: ``mode`` 0 FULL (FEAT.to_fixed),
    1 double sampling (codes1 from uniforms ``u1``, codes2 from ``u2``), 2 single
    (``u1``), 3 nearest (``mids``: -inf, the midpoints of ``lv``, +inf up to
    :data:`SEARCH_SIZE`; a code is how many midpoints lie below the value); ``lvp``,
    ``guess``, ``inv``: ``lv`` padded with +inf, and the bucket guesses of :func:`_interval`. ``u1``/``u2`` are flat
    (r * d), row-major, as ``rng.random((r, d))`` draws them. Returns 0, or 1 when a value is not finite, 2 when a FULL value lies outside
    [-1, 1] (the caller then raises the numpy path's error)."""
    enc, bits, d, fb, F, B, hw = lay[0], lay[1], lay[2], lay[3], lay[4], lay[5], lay[6]
    lshift, HW, LB, PAIR = lay[7], lay[8], lay[9], lay[12]
    per = B * hw
    r = xs.shape[0]
    top = (np.int64(1) << bits) - 1
    fmask = (np.int64(1) << fb) - 1
    lw = lshift // HW
    loff = np.uint64(lshift % HW)
    lmask = (np.int64(1) << LB) - 1
    fone = np.float64(feat_one)
    widx, offs, back, strad = _placement(d, F, fb, hw, HW)
    any_strad = strad.any()
    for k in range(r * per):
        out[k] = 0
    fields = np.empty(d, dtype=np.int64)
    for row in range(r):
        for i in range(d):
            if not np.isfinite(xs[row, i]):
                return 1
        # the slot field of every feature of the row, by mode
        if mode == 0:
            for i in range(d):
                fv = np.floor(xs[row, i] * fone + 0.5)
                if fv < -fone or fv > fone:
                    return 2
                fields[i] = np.int64(fv) & fmask
        elif mode == 3:
            for i in range(d):
                fields[i] = _last_lt(mids, xs[row, i])
        elif mode == 2:
            for i in range(d):
                j, p = _interval(lv, lvp, guess, inv, xs[row, i])
                fields[i] = j + (1 if u1[row * d + i] < p else 0)
        elif enc == PAIR:
            for i in range(d):
                j, p = _interval(lv, lvp, guess, inv, xs[row, i])
                c1 = j + (1 if u1[row * d + i] < p else 0)
                c2 = j + (1 if u2[row * d + i] < p else 0)
                fields[i] = c1 | (c2 << bits)
        else:
            for i in range(d):
                j, p = _interval(lv, lvp, guess, inv, xs[row, i])
                c1 = j + (1 if u1[row * d + i] < p else 0)
                c2 = j + (1 if u2[row * d + i] < p else 0)
                jj = min(min(c1, c2), top - 1)
                fields[i] = jj | ((c1 - jj) << bits) | ((c2 - jj) << (bits + 1))
        base = row * per
        for i in range(d):
            fu = np.uint64(fields[i])
            at = base + widx[i]
            out[at] |= fu << offs[i]
            if any_strad and strad[i]:
                out[at + 1] |= fu >> back[i]
        out[base + (B - 1) * hw + lw] |= np.uint64(labels[row] & lmask) << loff
    return 0
