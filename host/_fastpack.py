"""prepare_job's quantizer and packer compiled with numba (imported only by
:func:`zipsgd.job.pack_rows`, which runs the numpy path of :mod:`zipsgd.quant` and
:mod:`zipsgd.packing` where numba does not import; both write the same words bit for bit).

One call quantizes rows of scaled features for one or more packed copies and writes every
sample straight to its place in each copy: a value's codebook interval and rounding
probability are found once and shared by the copies, only the random bits differ. The
random bits are SplitMix64 outputs addressed by a counter (:func:`zipsgd.quant.counter_bits`:
copy key, packed position, feature), so no generator state is carried between calls and
the rows may come in any order and any chunking. Every constant comes in as an argument
(nothing of the contract is retyped here); compiled once per machine, cached on disk.
"""

from __future__ import annotations

import numpy as np

# the compiled engine's decorators and binary search: one of each in the package
from ._fastkernels import SEARCH_SIZE, _inline, _jit, _placement  # noqa: F401  (SEARCH_SIZE: padded length)
from ._fastkernels import _last_lt as _count_below    # the last index j with arr[j] < a (arr[0] = -inf)


@_inline
def _mix(z):
    """SplitMix64's output function (Steele, Lea, Flood 2014; Stafford's mix13 constants)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@_jit
def pack_rows(X, center, half, icpt, xs_out, pos, keys, labels, lv, guess, inv, mids, sq, mode, lay, feat_one,
              outs):
    """Scale rows ``X`` (r, nf) float64, quantize them and write them with their ``labels``
    (MODEL integers) into each copy ``k``: row ``t`` goes to sample position ``pos[k, t]``
    of ``outs[k]`` (uint64 host words), its random bits addressed by ``keys[k]`` and that
    position. ``mode``: 0 FULL (FEAT integers), 1 double sampling, 2 single, 3 nearest.

    Scaling as :func:`zipsgd.job.scaled_matrix`: ``clip((x - center) / half, -1, 1)``
    (``x / half - center / half`` where that overflows), then the constant 1.0 when
    ``icpt``; the scaled rows are written to ``xs_out`` (r, d) unless it has no rows.
    Already scaled rows come with center 0 and half 1 (the same values).

    ``lv``: the codebook as floats; ``guess``/``inv``: the last level at or below each of
    ``len(guess)`` equal buckets over [lv[0], lv[-1]] (``inv`` buckets per unit), a first
    guess walked to the exact interval; ``mids``: -inf, the midpoints of ``lv``, +inf up
    to :data:`SEARCH_SIZE` (nearest rounding); ``sq``: each level's FEAT integer squared
    (the data statistics). ``lay``: int64 (encoding, bits, dim, feature_bits,
    features_per_beat, beats_per_sample, host_words_per_beat, label_shift, host word
    bits, label bits, FULL, SINGLE, PAIR).

    Returns (error, largest s1 * s2): error 0, 1 when a value is not finite, 2 when a FULL
    value lies outside [-1, 1]; ``s1``, ``s2`` a sample's sums of squared FEAT integers of
    Q1 and Q2 (exact integers), largest over the rows and copies written."""
    enc, bits, d, fb, F, B, hw = lay[0], lay[1], lay[2], lay[3], lay[4], lay[5], lay[6]
    lshift, HW, LB, PAIR = lay[7], lay[8], lay[9], lay[12]
    per = B * hw
    r, nf = X.shape[0], X.shape[1]
    write = xs_out.shape[0] > 0
    ncopies = keys.shape[0]
    top = (np.int64(1) << bits) - 1
    fmask = (np.int64(1) << fb) - 1
    lw = lshift // HW
    loff = np.uint64(lshift % HW)
    lmask = (np.int64(1) << LB) - 1
    fone = np.float64(feat_one)
    two32 = np.float64(4294967296.0)
    m32 = np.uint64(0xFFFFFFFF)
    gamma = np.uint64(0x9E3779B97F4A7C15)
    s = lv.shape[0]
    lo0, hi0 = lv[0], lv[s - 1]
    nb = guess.shape[0]
    # where feature i sits in its sample: host word, bit offset, and the straddle into the next word
    widx, offs, back, strad = _placement(d, F, fb, hw, HW)
    any_strad = strad.any()
    xrow = np.empty(d)
    js = np.empty(d, dtype=np.int64)
    tint = np.empty(d, dtype=np.int64)
    c1 = np.empty(d, dtype=np.int64)
    c2 = np.empty(d, dtype=np.int64)
    fields = np.empty(d, dtype=np.uint64)
    steps = np.empty(d, dtype=np.uint64)
    for i in range(d):
        steps[i] = np.uint64(i) * gamma
    lvp = np.empty(s + 1)                 # the levels padded with +inf: the walk up needs no bound
    lvp[:s] = lv
    lvp[s] = np.inf
    lab_at = (B - 1) * hw + lw
    best = 0.0
    for row in range(r):
        # the row scaled
        probe = 0.0
        for i in range(nf):                 # branch-free: vectorised
            v = (X[row, i] - center[i]) / half[i]
            probe += v * 0.0                # NaN once any v is not finite
            xrow[i] = v
        if probe != 0.0:                    # rare: overflow (safe_affine) or a value not finite
            for i in range(nf):
                x = X[row, i]
                if not np.isfinite(x):
                    return 1, best
                if not np.isfinite(xrow[i]):
                    xrow[i] = x / half[i] - center[i] / half[i]
        for i in range(nf):
            v = xrow[i]
            xrow[i] = -1.0 if v < -1.0 else (1.0 if v > 1.0 else v)
        if icpt:
            xrow[nf] = 1.0
        if write:
            for i in range(d):
                xs_out[row, i] = xrow[i]
        # each value's interval and threshold, shared by the copies
        for i in range(d):
            a = xrow[i]
            if mode == 0:
                fv = np.floor(a * fone + 0.5)
                if fv < -fone or fv > fone:
                    return 2, best
                js[i] = np.int64(fv)
            elif mode == 3:
                js[i] = _count_below(mids, a)
            else:
                # _fastkernels._interval's walk, written out with its loop invariants hoisted:
                # calling it costs prepare_job about 10 % (measured, bench cpu)
                ac = lo0 if a < lo0 else (hi0 if a > hi0 else a)
                g = np.int64((ac - lo0) * inv)
                j = guess[0 if g < 0 else (nb - 1 if g >= nb else g)]
                while lvp[j + 1] <= ac:
                    j += 1
                while j > 0 and lv[j] > ac:
                    j -= 1
                if j > s - 2:
                    j = s - 2
                lo = lv[j]
                js[i] = j
                # u < p * 2**32 for an integer u: u < ceil(p * 2**32)
                tint[i] = np.int64(np.ceil((ac - lo) / (lv[j + 1] - lo) * two32))
        lab = np.uint64(labels[row] & lmask) << loff
        for k in range(ncopies):
            out = outs[k]
            p = pos[k, row]
            base = p * per
            key = keys[k] + np.uint64(p * d + 1) * gamma    # SplitMix64's state at counter p * d
            s1 = np.int64(0)
            s2 = np.int64(0)
            # the codes (vectorisable passes), then the fields
            if mode == 1 or mode == 2:
                for i in range(d):
                    h = _mix(key + steps[i])
                    c1[i] = js[i] + np.int64(np.int64(h & m32) < tint[i])
                    c2[i] = js[i] + np.int64(np.int64(h >> np.uint64(32)) < tint[i])
                if mode == 2:
                    for i in range(d):
                        s1 += sq[c1[i]]
                        fields[i] = np.uint64(c1[i])
                    s2 = s1
                else:
                    for i in range(d):
                        s1 += sq[c1[i]]
                        s2 += sq[c2[i]]
                    if enc == PAIR:
                        for i in range(d):
                            fields[i] = np.uint64(c1[i] | (c2[i] << bits))
                    else:
                        for i in range(d):
                            jj = min(min(c1[i], c2[i]), top - 1)
                            fields[i] = np.uint64(jj | ((c1[i] - jj) << bits) | ((c2[i] - jj) << (bits + 1)))
            elif mode == 3:
                for i in range(d):
                    s1 += sq[js[i]]
                    fields[i] = np.uint64(js[i])
                s2 = s1
            else:
                for i in range(d):
                    s1 += js[i] * js[i]
                    fields[i] = np.uint64(js[i] & fmask)
                s2 = s1
            # the sample's words, built in registers: ``acc`` the current host word, ``nxt``
            # the bits a straddling field carries into the next one
            for w in range(per):
                out[base + w] = 0
            cur = np.int64(0)
            acc = np.uint64(0)
            nxt = np.uint64(0)
            for i in range(d):
                w = widx[i]
                if w != cur:
                    out[base + cur] = acc
                    if w == cur + 1:
                        acc = nxt
                    else:
                        if nxt:
                            out[base + cur + 1] = nxt
                        acc = np.uint64(0)
                    nxt = np.uint64(0)
                    cur = w
                fu = fields[i]
                acc |= fu << offs[i]
                if any_strad and strad[i]:
                    nxt |= fu >> back[i]
            out[base + cur] = acc
            if nxt:
                out[base + cur + 1] = nxt
            out[base + lab_at] |= lab
            prod = np.float64(s1) * np.float64(s2)
            if prod > best:
                best = prod
    return 0, best
