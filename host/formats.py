"""Number formats for the model and the gradient, with stochastic and nearest rounding.

A *format* is a finite set of values and a rule that rounds any real onto it. Formats are
named by strings (:func:`parse`); each quantizes with ``rounding="stochastic"`` (unbiased:
``E[Q(v)] = v`` inside the format's range) or ``"nearest"``. The random bits of stochastic
rounding come from :func:`random_bits`, a counter-based hash of (seed, counter, index)
that hardware reproduces bit for bit. Everything here is integer arithmetic on int64 /
uint32 (a float64 input is read exactly: it is a dyadic rational), so results do not
depend on the platform. Low-precision SGD, SVRG and HALP on these formats are
:mod:`zipsgd.solvers`.

Formats
-------
============================== ============ ==============================================
string                          bits         values
============================== ============ ==============================================
``fixed<B>``, ``fixed<B>.<F>``  ``B``        ``c * 2**-F``, ``c`` signed B-bit two's complement
                                             (``-2**(B-1) <= c <= 2**(B-1) - 1``);
                                             ``F`` defaults to ``(3*B) // 4`` (below)
``float:e<E>m<M>[:bias=<K>]``   ``1 + E + M`` sign, E-bit exponent code ``x``, M-bit mantissa
                                             ``f``: ``x >= 1``: ``(1 + f/2**M) 2**(x-K)``;
                                             ``x == 0``: ``(f/2**M) 2**(1-K)`` (denormals);
                                             every code is finite (no inf/NaN codes);
                                             ``K`` defaults to ``2**(E-1) - 1``
``log<B>[:top=<T>]``            ``B``        0 and ``+-2**(T - j)``, ``0 <= j <= 2**(B-1) - 2``:
                                             sign + (B-1)-bit exponent code; it is
                                             ``float:e<B-1>m0`` with bias ``2**(B-1)-1-T``;
                                             ``T`` defaults to ``B - 1 - (3*B)//4``
============================== ============ ==============================================

Default scales: ``fixed<B>`` keeps ``(3*B)//4`` fractional bits, so the range grows with
the width: ``fixed8`` = [-2, 2) in steps of 2**-6, ``fixed16`` = [-8, 8) in steps of
2**-12, and ``fixed32`` = [-128, 128) in steps of 2**-24 — exactly the engine's MODEL
format (``contract.MODEL``: s32, 24 fractional bits). ``log<B>``'s largest magnitude is
then ``fixed<B>``'s (``log8``: 2, down to 2**-125). Weights live in the job's scaled units
(features in [-1, 1], a squared-loss target in [-1, 1]): choose ``fixed<B>.<F>``,
``:bias=`` or ``:top=`` when the model's weights are much smaller or larger.

Limits: fixed 1 <= B <= 32 and F in [-16, 62 - B]; float 1 <= E <= 8, 0 <= M <= 23;
log 2 <= B <= 9 (base 2: more bits add range, not resolution).

Rounding (the exact rule)
-------------------------
Let ``e`` be the exponent of the grid step at ``v`` (fixed: ``-F``; float and log:
``max(floor(log2|v|), 1 - K) - M``, so the denormals share the smallest normal binade's
step). Before rounding, ``v`` is clamped to the format's range (saturation: nothing
wraps, nothing becomes infinite). Then, with ``G = 32`` guard bits:

=========== ================================= =================================================
format      truncated value ``t`` (integer)   rounded code ``q``; result
=========== ================================= =================================================
fixed       ``t = floor(v * 2**(G - e))``     nearest: ``q = (t + 2**31) >> G`` (half up);
            (two's complement)                stochastic: ``q = (t + r) >> G``; ``v' = q 2**e``
float, log  ``t = floor(|v| * 2**(G - e))``   the same on the magnitude (nearest: half away
            (sign and magnitude)              from zero); ``v' = sign(v) * min(q 2**e, max)``
=========== ================================= =================================================

``r`` is one uint32 of :func:`random_bits` per value. Stochastic rounding rounds up with
probability ``(t mod 2**32) / 2**32``: the fraction of the step truncated to 32 bits, so
``|E[Q(v)] - v| < 2**(e-32)`` (unbiased to 2**-32 of a step) for ``v`` inside the range.
A carry out of the mantissa (``q = 2**(M+1)``) is the next binade's first value; past the
largest value the result saturates. Log rounding interpolates linearly between the two
neighbouring powers of two (that is what keeps it unbiased); nearest picks the linearly
closer one.

Random bits (counter-based; what hardware must reproduce)
---------------------------------------------------------
All arithmetic is modulo 2**32 on uint32; ``>>`` is a logical shift.

================ ==========================================================================
name             definition
================ ==========================================================================
``mix32(x)``     ``x ^= x >> 16; x *= 0x7FEB352D; x ^= x >> 15; x *= 0x846CA68B;``
                 ``x ^= x >> 16`` (a bijection of uint32)
``key(s, c)``    ``mix32(mix32(s) ^ c)``: once per update, shared by every lane
``r(s, c, i)``   ``mix32(key(s, c) + 0x9E3779B9 * (i + 1))``: lane ``i`` (feature index)
``counter(t,k)`` ``(4 t + k) mod 2**32``: update ``t`` (0, 1, ... over the whole job),
                 stream ``k`` (:data:`STREAM_GRAD` 0: the gradient;
                 :data:`STREAM_MODEL` 1: the model; :data:`STREAM_ANCHOR` 2: re-centring;
                 :data:`STREAM_L2` 3: the L2 shrink of a fixed-point model)
``s``            the job's seed modulo 2**32
================ ==========================================================================
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from .contract import MODEL

__all__ = [
    "ROUNDINGS", "GUARD_BITS", "STREAM_GRAD", "STREAM_MODEL", "STREAM_ANCHOR", "STREAM_L2",
    "mix32", "key32", "random_bits", "counter", "RandomBits", "round_shift", "round_float", "Format", "FixedFormat", "FloatFormat", "LogFormat",
    "parse", "ENGINE_MODEL",
]

ROUNDINGS = ("stochastic", "nearest")
#: Bits of the truncated fraction below a format's step that stochastic rounding compares.
GUARD_BITS = 32
_GUARD = np.int64(GUARD_BITS)
_HALF = np.int64(1 << (GUARD_BITS - 1))

#: Streams of :func:`counter`: which quantity a random word rounds.
STREAM_GRAD, STREAM_MODEL, STREAM_ANCHOR, STREAM_L2 = 0, 1, 2, 3

_M1, _M2, _GOLDEN = np.uint32(0x7FEB352D), np.uint32(0x846CA68B), np.uint32(0x9E3779B9)


# --------------------------------------------------------------------------------------
# Random bits
# --------------------------------------------------------------------------------------
def mix32(x) -> np.ndarray:
    """The 32-bit xorshift-multiply mix of the module docstring (uint32 in, uint32 out)."""
    x = np.array(x, dtype=np.uint32, ndmin=1)
    x ^= x >> np.uint32(16)
    x *= _M1
    x ^= x >> np.uint32(15)
    x *= _M2
    x ^= x >> np.uint32(16)
    return x


def _mix32_int(x: int) -> int:
    """:func:`mix32` of one Python int (the same arithmetic, for per-update keys)."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def key32(seed: int, ctr: int) -> np.uint32:
    """``mix32(mix32(seed) ^ ctr)``: the per-update key every lane shares."""
    return np.uint32(_mix32_int(_mix32_int(int(seed)) ^ (int(ctr) & 0xFFFFFFFF)))


def counter(step: int, stream: int) -> int:
    """``(4 step + stream) mod 2**32``."""
    if stream not in (STREAM_GRAD, STREAM_MODEL, STREAM_ANCHOR, STREAM_L2):
        raise ValueError(f"unknown random stream {stream!r}")
    return (4 * int(step) + int(stream)) & 0xFFFFFFFF


def random_bits(seed: int, ctr: int, index) -> np.ndarray:
    """uint32 random words ``r(seed, ctr, i)`` for feature indices ``index`` (any shape)."""
    idx = np.asarray(index, dtype=np.int64)
    lane = (idx.astype(np.uint64) + np.uint64(1)).astype(np.uint32)   # mod 2**32
    k = key32(seed, ctr)
    return mix32(lane * _GOLDEN + k).reshape(idx.shape)


def _check_rounding(rounding: str, rbits):
    if rounding not in ROUNDINGS:
        raise ValueError(f"unsupported rounding={rounding!r}: choose one of {ROUNDINGS}")
    if rounding == "stochastic" and rbits is None:
        raise ValueError("stochastic rounding needs random bits (formats.random_bits)")


def _round_t(t: np.ndarray, rounding: str, rbits) -> np.ndarray:
    """``(t + r) >> 32`` or ``(t + 2**31) >> 32`` on int64 ``t`` (floor: arithmetic shift)."""
    if rounding == "nearest":
        return (t + _HALF) >> _GUARD
    r = np.broadcast_to(np.asarray(rbits, dtype=np.uint32), t.shape).astype(np.int64)
    return (t + r) >> _GUARD


def _carry(frac32: np.ndarray, rounding: str, rbits) -> np.ndarray:
    """The rounding's carry out of a 32-bit truncated fraction (0 or 1)."""
    if rounding == "nearest":
        return (frac32 + _HALF) >> _GUARD
    r = np.broadcast_to(np.asarray(rbits, dtype=np.uint32), frac32.shape).astype(np.int64)
    return (frac32 + r) >> _GUARD


def round_shift(n, s: int, rounding: str = "nearest", rbits=None) -> np.ndarray:
    """``n * 2**-s`` rounded to an integer by the module's rule (int64 ``n``, no saturation):
    ``floor(n 2**-s)`` plus the carry of its fraction truncated to 32 bits. ``s <= 0`` is an
    exact left shift. Nearest is the contract's ``rshift_round`` (half up)."""
    _check_rounding(rounding, rbits)
    n = np.asarray(n, dtype=np.int64)
    if s <= 0:
        return n << np.int64(-s)
    whole = n >> np.int64(s)
    low = n & np.int64((1 << s) - 1)
    frac32 = low << np.int64(GUARD_BITS - s) if s <= GUARD_BITS else low >> np.int64(s - GUARD_BITS)
    return whole + _carry(frac32, rounding, rbits)


def round_float(v, rounding: str = "nearest", rbits=None) -> np.ndarray:
    """A float64 ``v`` (exact dyadic value) rounded to an int64 by the same rule
    (``floor(v)`` plus the carry of its fraction truncated to 32 bits); |v| < 2**62."""
    _check_rounding(rounding, rbits)
    v = np.asarray(v, dtype=np.float64)
    fl = np.floor(v)
    frac32 = np.floor(np.ldexp(v - fl, GUARD_BITS)).astype(np.int64)    # v - fl is exact
    return fl.astype(np.int64) + _carry(frac32, rounding, rbits)


class RandomBits:
    """:func:`random_bits` for lanes ``0 .. d-1`` with the lane constants precomputed:
    ``rb(t, stream)`` is the uint32 word of every lane for update ``t``."""

    def __init__(self, seed: int, d: int):
        self.seed = int(seed) & 0xFFFFFFFF
        self._lanes = (np.arange(1, d + 1, dtype=np.uint64) & np.uint64(0xFFFFFFFF)).astype(np.uint32) * _GOLDEN

    def __call__(self, step: int, stream: int) -> np.ndarray:
        return mix32(self._lanes + key32(self.seed, counter(step, stream)))


# --------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------
class Format:
    """A number format: a finite set of values and its rounding (see the module docstring)."""

    bits: int

    @property
    def name(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def __str__(self) -> str:
        return self.name

    @property
    def max_value(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def quantize(self, v, rounding: str = "nearest", rbits=None) -> np.ndarray:
        """Round float64 value(s) ``v`` onto the format; returns float64 values (exact)."""
        raise NotImplementedError  # pragma: no cover

    def values(self) -> np.ndarray:
        """Every value of the format, sorted (formats of at most 16 bits)."""
        if self.bits > 16:
            raise ValueError(f"{self.name}: too many values to list")
        return np.unique(self.decode(np.arange(1 << self.bits)))

    def scaled_to(self, radius: float) -> "Format":
        """The same format with its scale moved by a power of two: the smallest scale whose
        largest value is at least ``radius`` (HALP's offset grid)."""
        raise NotImplementedError  # pragma: no cover


@dataclass(frozen=True)
class FixedFormat(Format):
    """Signed ``bits``-bit two's complement fixed point with ``frac`` fractional bits."""

    bits: int
    frac: int

    def __post_init__(self):
        if not (1 <= self.bits <= 32):
            raise ValueError(f"fixed point takes 1 to 32 bits, not {self.bits}")
        if not (-16 <= self.frac <= 62 - self.bits):
            raise ValueError(f"fixed{self.bits}: fractional bits must lie in [-16, {62 - self.bits}], not {self.frac}")

    @property
    def name(self) -> str:
        return f"fixed{self.bits}.{self.frac}"

    @property
    def code_min(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def code_max(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def step(self) -> float:
        return math.ldexp(1.0, -self.frac)

    @property
    def max_value(self) -> float:
        return math.ldexp(self.code_max, -self.frac)

    @property
    def min_value(self) -> float:
        return math.ldexp(self.code_min, -self.frac)

    @property
    def is_engine_model(self) -> bool:
        """Is this the engine's MODEL format (s32, 24 fractional bits)?"""
        return self.bits == MODEL.width and self.frac == MODEL.frac

    def codes(self, v, rounding: str = "nearest", rbits=None) -> np.ndarray:
        """Round float64 ``v`` to integer codes (int64; value = code * 2**-frac)."""
        _check_rounding(rounding, rbits)
        v = np.clip(np.asarray(v, dtype=np.float64), self.min_value, self.max_value)
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{self.name}: cannot round NaN")
        t = np.floor(np.ldexp(v, self.frac + GUARD_BITS)).astype(np.int64)   # exact: |t| < 2**63
        return _round_t(t, rounding, rbits)

    def codes_from_int(self, n, frac_in: int, rounding: str = "nearest", rbits=None) -> np.ndarray:
        """Round exact values ``n * 2**-frac_in`` (int64 ``n``) to integer codes (saturating)."""
        _check_rounding(rounding, rbits)
        n = np.asarray(n, dtype=np.int64)
        d = frac_in - self.frac
        # the largest / smallest n inside the range (floor / ceil of the range's ends in input units)
        hi = self.code_max << d if d >= 0 else self.code_max >> -d
        lo = self.code_min << d if d >= 0 else -((-self.code_min) >> -d)
        over = n > hi if hi < (1 << 63) else np.zeros(n.shape, dtype=bool)
        under = n < lo if lo >= -(1 << 63) else np.zeros(n.shape, dtype=bool)
        inside = np.where(over | under, 0, n)
        q = np.clip(round_shift(inside, frac_in - self.frac, rounding, rbits), self.code_min, self.code_max)
        return np.where(over, self.code_max, np.where(under, self.code_min, q))

    def quantize(self, v, rounding: str = "nearest", rbits=None) -> np.ndarray:
        return np.ldexp(self.codes(v, rounding, rbits).astype(np.float64), -self.frac)

    def encode(self, v, rounding: str = "nearest", rbits=None) -> np.ndarray:
        """Bit patterns (B-bit two's complement, as non-negative int64)."""
        return self.codes(v, rounding, rbits) & ((1 << self.bits) - 1)

    def decode(self, bits) -> np.ndarray:
        b = np.asarray(bits, dtype=np.int64) & ((1 << self.bits) - 1)
        c = np.where(b >= 1 << (self.bits - 1), b - (1 << self.bits), b)
        return np.ldexp(c.astype(np.float64), -self.frac)

    def scaled_to(self, radius: float) -> "FixedFormat":
        """``frac = floor(log2(code_max / radius))`` (clamped to the allowed range): the
        step ``2**-frac`` is ``radius / code_max`` rounded up to a power of two."""
        if not (radius > 0) or not math.isfinite(radius):
            frac = 62 - self.bits
        else:
            frac = _floor_log2(self.code_max / radius) if self.code_max >= 1 else 0
        return FixedFormat(self.bits, int(min(max(frac, -16), 62 - self.bits)))


def _floor_log2(x: float) -> int:
    """floor(log2(x)) for a positive float, exactly (frexp)."""
    m, e = math.frexp(x)
    return e - 1


@dataclass(frozen=True)
class FloatFormat(Format):
    """Sign, ``exp`` exponent bits (bias ``bias``), ``man`` mantissa bits, with denormals;
    no infinities or NaN (every code is a finite value); saturating."""

    exp: int
    man: int
    bias: int

    def __post_init__(self):
        if not (1 <= self.exp <= 8):
            raise ValueError(f"float formats take 1 to 8 exponent bits, not {self.exp}")
        if not (0 <= self.man <= 23):
            raise ValueError(f"float formats take 0 to 23 mantissa bits, not {self.man}")
        if not ((1 << self.exp) - 1 - self.bias <= 960 and 1 - self.bias - self.man >= -960):
            raise ValueError(f"float:e{self.exp}m{self.man}: bias {self.bias} puts the format outside float64")

    @property
    def bits(self) -> int:  # type: ignore[override]
        return 1 + self.exp + self.man

    @property
    def name(self) -> str:
        return f"float:e{self.exp}m{self.man}:bias={self.bias}"

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal binade (the denormals' too)."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        return (1 << self.exp) - 1 - self.bias

    @property
    def max_value(self) -> float:
        return math.ldexp((1 << (self.man + 1)) - 1, self.emax - self.man)

    @property
    def min_positive(self) -> float:
        return math.ldexp(1.0, self.emin - self.man)

    def quantize(self, v, rounding: str = "nearest", rbits=None) -> np.ndarray:
        _check_rounding(rounding, rbits)
        v = np.asarray(v, dtype=np.float64)
        if np.any(np.isnan(v)):
            raise ValueError(f"{self.name}: cannot round NaN")
        a = np.minimum(np.abs(v), self.max_value)
        _, ex = np.frexp(a)                           # a = m 2**ex, m in [0.5, 1): floor(log2 a) = ex - 1
        e = np.maximum(ex.astype(np.int64) - 1, self.emin) - self.man
        t = np.floor(np.ldexp(a, (GUARD_BITS - e).astype(np.int32)))
        q = _round_t(t.astype(np.int64), rounding, rbits)
        mag = np.minimum(np.ldexp(q.astype(np.float64), e.astype(np.int32)), self.max_value)
        return np.where(v < 0, -mag, mag)

    def encode(self, v, rounding: str = "nearest", rbits=None) -> np.ndarray:
        """Bit patterns ``sign << (E+M) | x << M | f`` of the rounded values (int64)."""
        return self._pattern(self.quantize(v, rounding, rbits))

    def _pattern(self, q) -> np.ndarray:
        q = np.asarray(q, dtype=np.float64)
        a = np.abs(q)
        _, ex = np.frexp(a)
        k = np.maximum(ex.astype(np.int64) - 1, self.emin)
        normal = (a > 0) & (ex.astype(np.int64) - 1 >= self.emin)
        units = np.ldexp(a, (self.man - k).astype(np.int32)).astype(np.int64)   # mantissa incl. hidden bit
        x = np.where(normal, k + self.bias, 0)
        f = np.where(normal, units - (1 << self.man), units)
        sign = np.signbit(q) & (a > 0)
        return (sign.astype(np.int64) << (self.exp + self.man)) | (x << self.man) | f

    def decode(self, bits) -> np.ndarray:
        b = np.asarray(bits, dtype=np.int64)
        f = b & ((1 << self.man) - 1)
        x = (b >> self.man) & ((1 << self.exp) - 1)
        s = (b >> (self.exp + self.man)) & 1
        units = np.where(x > 0, f + (1 << self.man), f)
        k = np.where(x > 0, x - self.bias, self.emin)
        mag = np.ldexp(units.astype(np.float64), (k - self.man).astype(np.int32))
        return np.where(s == 1, -mag, mag)

    def scaled_to(self, radius: float) -> "FloatFormat":
        """The bias whose largest value is the smallest at least ``radius``."""
        top = (1 << (self.man + 1)) - 1                   # max = top * 2**(emax - man)
        if not (radius > 0) or not math.isfinite(radius):
            return self
        # smallest emax with top * 2**(emax - man) >= radius
        emax = math.ceil(math.log2(radius / top)) + self.man
        while math.ldexp(top, emax - 1 - self.man) >= radius:
            emax -= 1
        while math.ldexp(top, emax - self.man) < radius:
            emax += 1
        return FloatFormat(self.exp, self.man, (1 << self.exp) - 1 - emax)


class LogFormat(FloatFormat):
    """Sign + (B-1)-bit exponent code: 0 and ``+-2**(top - j)``; ``float:e<B-1>m0``."""

    def __init__(self, bits: int, top: int):
        if not (2 <= bits <= 9):
            raise ValueError(f"log formats take 2 to 9 bits, not {bits}")
        object.__setattr__(self, "exp", bits - 1)
        object.__setattr__(self, "man", 0)
        object.__setattr__(self, "bias", (1 << (bits - 1)) - 1 - top)
        self.__post_init__()

    @property
    def top(self) -> int:
        return self.emax

    @property
    def name(self) -> str:
        return f"log{self.bits}:top={self.top}"

    def scaled_to(self, radius: float) -> "LogFormat":
        f = FloatFormat.scaled_to(self, radius)
        return LogFormat(self.bits, f.emax)

    def __repr__(self) -> str:
        return f"LogFormat(bits={self.bits}, top={self.top})"


def default_frac(bits: int) -> int:
    """Fractional bits of ``fixed<B>``: ``(3 B) // 4``."""
    return (3 * bits) // 4


_FIXED = re.compile(r"^fixed(\d+)(?:\.(-?\d+))?$")
_FLOAT = re.compile(r"^float:e(\d+)m(\d+)$")
_LOG = re.compile(r"^log(\d+)$")

#: The engine's model format (``contract.MODEL``).
ENGINE_MODEL = FixedFormat(MODEL.width, MODEL.frac)


def parse(spec) -> Format:
    """A format from its string (module docstring), or a Format unchanged.

    Examples: ``"fixed8"`` (= ``"fixed8.6"``), ``"fixed16.10"``, ``"fixed32"`` (the engine's
    MODEL), ``"float:e4m3"``, ``"float:e5m2:bias=12"``, ``"log8"``, ``"log6:top=0"``.
    """
    if isinstance(spec, Format):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"a number format is a string such as 'fixed8', 'float:e4m3' or 'log8', not {spec!r}")
    text = spec.strip().lower()
    head, opts = text, {}
    parts = text.split(":")
    if parts[0] == "float":
        head, rest = ":".join(parts[:2]), parts[2:]
    else:
        head, rest = parts[0], parts[1:]
    for p in rest:
        k, eq, v = p.partition("=")
        if not eq or not re.fullmatch(r"-?\d+", v):
            raise ValueError(f"bad option {p!r} in format {spec!r} (expected key=integer)")
        opts[k] = int(v)

    def take(allowed):
        bad = set(opts) - set(allowed)
        if bad:
            raise ValueError(f"format {spec!r}: unknown option(s) {sorted(bad)}; allowed: {list(allowed)}")

    m = _FIXED.match(head)
    if m:
        take(("frac",))
        bits = int(m.group(1))
        frac = int(m.group(2)) if m.group(2) is not None else opts.get("frac", default_frac(bits))
        return FixedFormat(bits, frac)
    m = _FLOAT.match(head)
    if m:
        take(("bias",))
        e, man = int(m.group(1)), int(m.group(2))
        return FloatFormat(e, man, opts.get("bias", (1 << (e - 1)) - 1 if e >= 1 else 0))
    m = _LOG.match(head)
    if m:
        take(("top",))
        bits = int(m.group(1))
        return LogFormat(bits, opts.get("top", bits - 1 - default_frac(bits)))
    raise ValueError(f"unknown number format {spec!r}: use 'fixed<B>[.<F>]', 'float:e<E>m<M>[:bias=<K>]' "
                     "or 'log<B>[:top=<T>]'")
