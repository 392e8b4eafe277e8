"""The zipsgd data contract: stream layout, fixed-point formats, register map.

This module is the single home of every number that the gateware (``zipsgd.hw``),
the bit-exact reference model (``zipsgd.reference``), the packer
(``zipsgd.packing``) and the drivers share. Nothing here is typed a second time
anywhere else: import it.

Stream
------
The engine reads a stream of ``W``-bit words (``W`` = 64 by default, 128 allowed),
one word (a *beat*) per clock. A *sample* is ``beats_per_sample`` beats. Feature
``i`` of a sample lives in beat ``i // F``, slot ``i % F``, where ``F`` is the
number of features per beat; slot ``s`` occupies bits ``[s*fb, (s+1)*fb)`` of its
beat (``fb`` = bits per feature). The label is a signed 32-bit word in the top 32
bits ``[W-32, W)`` of the sample's last beat; the feature slots of that beat that
overlap the label are never used, so a sample is the least number of beats whose
slots hold ``d`` features below the label. Unused slots are zero and are ignored
by the engine (it masks lanes ``i >= d``). An epoch is ``n`` samples; it may arrive
in several TLAST-terminated transfers (an AXI DMA ends each transfer with TLAST), so
TLAST may come on the last beat of any sample, and must come on the last beat of each
epoch: TLAST inside a sample is STREAM_SHORT, none on the epoch's last beat
STREAM_LONG. On the host a beat is stored as ``W/64``
little-endian ``uint64`` words (low half first), which is the byte order of an
AXI4-Stream ``TDATA`` bus in memory.

Encodings (what one feature slot holds)
---------------------------------------
======== ========================== =============================================
encoding field (LSB first)           values
======== ========================== =============================================
FULL     ``v`` (32 bits)             ``v``: signed FEAT value, two's complement
SINGLE   ``c`` (b bits)              ``Q1 = Q2 = level[c]`` (single and nearest)
PAIR     ``c1`` (b), ``c2`` (b)      ``Q1 = level[c1]``, ``Q2 = level[c2]``
COMPACT  ``j`` (b), ``e1``, ``e2``   ``Q1 = level[j+e1]``, ``Q2 = level[j+e2]``
======== ========================== =============================================

Double sampling stores two independent stochastic roundings of each feature.
Both lie on the two ends of one codebook interval, so COMPACT stores the interval
``j`` plus two choice bits (``b+2`` bits) instead of two codes (``2b`` bits);
``double_encoding(b)`` picks whichever is smaller (PAIR on a tie).
``Q1`` feeds the dot product, ``Q2`` the gradient.

Fixed-point formats and arithmetic (the engine's exact semantics)
-----------------------------------------------------------------
All shifts round half up: ``rshift_round(v, s) = (v + 2**(s-1)) >> s``
(arithmetic shift). ``sat(v, F)`` clamps to the signed range of format ``F``;
nothing ever wraps around.

============= ======== ======= ===================================================
quantity      width    frac    rule
============= ======== ======= ===================================================
level/feature s18      16      ``|v| <= 1``; codebook entries and FULL features
model x       s32      24      zero at job start (or the host's, CTRL.warm); saturating updates
label y       s32      24      squared: any; logistic: 0 or 1; hinge: -1 or +1 (see POS_CLASS)
dot acc       s64      40      exact sum of ``Q1_i * x_i`` over the sample
z             s32      24      ``sat(rshift_round(acc, 16))``
residual r    s32      24      by loss, see below
step mult m   u16      15      ``r' = sat(rshift_round(r * m, 15 + k))``, ``m`` by class
gradient G    s64      40      exact ``sum_batch r' * Q2_i``
update        s32      24      ``x = sat(x - rshift_round(G, 16) - L2)``
L2 term       s32      24      ``rshift_round(x, l2_shift)`` if ``l2_shift`` else 0
sample loss   u40      24      by loss, see below
epoch loss    u64      24      saturating sum of sample losses
============= ======== ======= ===================================================

``m`` is STEP_MULT for a sample whose label ``y`` is above zero, STEP_MULT_NEG for the others
(STEP_MULT when STEP_MULT_NEG is 0): one step multiplier per class (``class_weight``).

Labels (POS_CLASS): 0 means the label word is ``y``. ``c > 0`` means the label word holds a
class index (a plain integer) and ``y = ONE`` when it equals ``c - 1``, else ``-ONE`` (hinge) or 0
(logistic, squared): one packed stream serves every one-vs-rest job of a multiclass problem.

Saturation: a batch's update *saturates* when ``x - rshift_round(G, 16) - L2`` leaves MODEL's
range for at least one of the ``d`` model words; the SATURATED counter counts such batches.

Warm start and early stop: a START written with ``warm = 1`` starts from the model in the
engine's memory (written by the host through MODEL_DATA, or left by the last job) instead of
zero; the first batch then reads it and applies the L2 term to it. A STOP ends the running job
at an epoch boundary: the engine takes no beat of an epoch it has not begun, finishes the
epoch in progress (if it has taken any beat of it), then ends the job as if EPOCHS had been the
number of epochs run (EPOCHS_DONE; STATUS.stopped set). A STOP between epochs ends it at once.

``k`` is the epoch's step shift: ``min(step_shift + (e // decay_epochs), STEP_SHIFT_MAX)``
(no decay when ``decay_epochs`` is 0). The step ``m * 2**-(15 + k)`` scales the residual
once per sample (one shifter in the engine, not one per feature lane). A mini-batch is ``batch`` consecutive samples
of an epoch (the last one may be shorter); all of its dot products read the model
left by the previous batch; the model is updated once at its end.

Losses (``z`` the dot product, ``y`` the label, both s32 frac 24; ``ONE = 2**24``):

* squared: ``r = sat(z - y)``; loss ``= rshift_round(r*r, 25)`` (that is ``r**2/2``).
* logistic (y in {0, 1}): ``r = sigmoid_hat(z) - y``;
  loss ``= softplus_hat(t)``, ``t = z`` if ``y == 0`` else ``sat(-z)``.
  ``sigmoid_hat`` is the PLAN piecewise-linear sigmoid on ``u = |z|``:
  ``u >= 5``: 1; ``u >= 2.375``: ``u>>5 + 0.84375``; ``u >= 1``: ``u>>3 + 0.625``;
  else ``u>>2 + 0.5``; mirrored as ``ONE - s`` for ``z < 0``.
  ``softplus_hat(t) = max(t, 0) + SOFTPLUS_TABLE[|t| >> 21]`` (0 past the table).
* hinge (y in {-1, +1}): ``m = sat(y*z)``; ``r = -y`` if ``m < ONE`` else 0;
  loss ``= max(0, ONE - m)``.

Registers
---------
32-bit AXI4-Lite registers at ``4 * index`` in ``REGISTERS`` order; see
``register_table()`` (rendered into the README).
"""

from __future__ import annotations

import enum
import math
import zlib
from dataclasses import dataclass, field, fields

import numpy as np

CONTRACT_VERSION = (3, 0)

#: ASCII "ZSGD", read from the MAGIC register.
MAGIC = int.from_bytes(b"ZSGD", "big")

WORD_BITS_ALLOWED = (64, 128)
WORD_BITS_DEFAULT = 64
#: Host storage unit of a beat.
HOST_WORD_BITS = 64

#: Codebook bits b the contract defines (packer, reference, cpu backend): every b from 1 to 8.
BITS_ALLOWED = tuple(range(1, 9))
#: The widths an engine build decodes (``valid_modes``, PARAM_MODES): the others run on the
#: cpu backend, and an engine refuses them by their missing PARAM_MODES bit.
ENGINE_BITS = (1, 2, 4, 8)
FULL_BITS = 32
SAMPLINGS = ("double", "single", "nearest")

LABEL_BITS = 32


# --------------------------------------------------------------------------------------
# Fixed point
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fixed:
    """A fixed-point format.

    Parameters
    ----------
    name : str
        What it holds.
    width : int
        Total bits, sign included.
    frac : int
        Fractional bits.
    signed : bool
        Two's complement when true.
    """

    name: str
    width: int
    frac: int
    signed: bool = True

    @property
    def min(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def max(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    @property
    def one(self) -> int:
        return 1 << self.frac

    def saturate(self, v):
        """Clamp integer value(s) to the representable range (never wrap)."""
        if isinstance(v, (int, np.integer)):
            return int(min(max(int(v), self.min), self.max))
        return np.clip(v, self.min, self.max)

    def to_fixed(self, x):
        """Round real value(s) to the nearest representable integer code, saturating."""
        x = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{self.name}: cannot convert NaN or infinite values to fixed point")
        q = np.floor(x * float(self.one) + 0.5)
        return np.clip(q, self.min, self.max).astype(np.int64)

    def to_float(self, q):
        """Real value(s) of integer code(s)."""
        return np.asarray(q, dtype=np.float64) / float(self.one)


#: Codebook levels and full-precision features; |v| <= 1.
FEAT = Fixed("feature", 18, 16)
#: Model, dot product result, residual, label.
MODEL = Fixed("model", 32, 24)
#: Optional step multiplier (1.0 == 2**15).
STEP_MULT = Fixed("step multiplier", 16, 15, signed=False)
#: Exact dot-product / gradient accumulators (FEAT x MODEL products).
ACC = Fixed("accumulator", 64, FEAT.frac + MODEL.frac)
#: Loss of one sample.
LOSS_SAMPLE = Fixed("sample loss", 40, MODEL.frac, signed=False)
#: Per-epoch loss sum.
LOSS_ACC = Fixed("epoch loss", 64, MODEL.frac, signed=False)

#: Largest epoch step shift k; FEAT.frac + k must stay below the accumulator width.
STEP_SHIFT_MAX = ACC.width - 2 - FEAT.frac
#: Largest L2 shift.
L2_SHIFT_MAX = MODEL.width - 1


def rshift_round(v, s: int):
    """Arithmetic right shift by ``s`` rounding half up (``s == 0``: identity)."""
    if s == 0:
        return v
    return (v + (1 << (s - 1))) >> s


# Logistic: sigmoid_hat segments (PLAN, Amin et al. 1997), all constants in MODEL format.
# Each row: (threshold on |z|, right shift of |z|, offset) taken in order; the first
# row whose threshold <= |z| applies. Shift None means the constant 1.
SIGMOID_SEGMENTS = (
    (MODEL.to_fixed(5.0).item(), None, MODEL.one),
    (MODEL.to_fixed(2.375).item(), 5, MODEL.to_fixed(0.84375).item()),
    (MODEL.to_fixed(1.0).item(), 3, MODEL.to_fixed(0.625).item()),
    (0, 2, MODEL.to_fixed(0.5).item()),
)

#: softplus correction table index = |t| >> SOFTPLUS_SHIFT (steps of 1/8).
SOFTPLUS_STEP_LOG2 = 3
SOFTPLUS_SHIFT = MODEL.frac - SOFTPLUS_STEP_LOG2
SOFTPLUS_ENTRIES = 64
#: log(1 + exp(-u)) at the middle of each 1/8-wide step of u = |t|, in MODEL format.
SOFTPLUS_TABLE = tuple(
    int(MODEL.to_fixed(math.log1p(math.exp(-(j + 0.5) / (1 << SOFTPLUS_STEP_LOG2)))))
    for j in range(SOFTPLUS_ENTRIES)
)


# --------------------------------------------------------------------------------------
# Enumerations
# --------------------------------------------------------------------------------------
class Encoding(enum.IntEnum):
    """What a feature slot holds (value of the ENCODING register)."""

    FULL = 0
    SINGLE = 1
    PAIR = 2
    COMPACT = 3


class Loss(enum.IntEnum):
    """Loss function (value of the LOSS register)."""

    SQUARED = 0
    LOGISTIC = 1
    HINGE = 2


class Error(enum.IntEnum):
    """Error codes reported in STATUS.error."""

    NONE = 0
    BAD_BITS = 1
    BAD_ENCODING = 2
    BAD_DIM = 3
    BAD_N = 4
    BAD_BATCH = 5
    BAD_LOSS = 6
    BAD_EPOCHS = 7
    BAD_STEP = 8
    STREAM_SHORT = 9
    STREAM_LONG = 10


ERROR_TEXT = {
    Error.NONE: "no error",
    Error.BAD_BITS: "unsupported BITS for this ENCODING",
    Error.BAD_ENCODING: "unsupported ENCODING",
    Error.BAD_DIM: "DIM is 0 or over the engine's capacity (PARAM_DIM_MAX)",
    Error.BAD_N: "N_SAMPLES is 0",
    Error.BAD_BATCH: "BATCH is 0 or over PARAM_BATCH_MAX",
    Error.BAD_LOSS: "unsupported LOSS",
    Error.BAD_EPOCHS: "EPOCHS is 0 or over PARAM_EPOCHS_MAX",
    Error.BAD_STEP: "STEP_MULT is 0, STEP_SHIFT over STEP_SHIFT_MAX or L2_SHIFT over L2_SHIFT_MAX",
    Error.STREAM_SHORT: "TLAST inside a sample (a transfer ended between a sample's beats)",
    Error.STREAM_LONG: "no TLAST on the last beat of the epoch (stream longer than N_SAMPLES x DIM)",
}


# --------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------
def double_encoding(bits: int) -> Encoding:
    """The smaller double-sample encoding for ``bits`` (PAIR on a tie)."""
    return Encoding.PAIR if 2 * bits <= bits + 2 else Encoding.COMPACT


def encoding_for(sampling: str, bits: int) -> Encoding:
    """Encoding used for a sampling scheme ('double', 'single', 'nearest') at ``bits``."""
    if bits == FULL_BITS:
        return Encoding.FULL
    if bits not in BITS_ALLOWED:
        raise ValueError(f"unsupported bits={bits!r}: choose one of {BITS_ALLOWED + (FULL_BITS,)}")
    if sampling == "double":
        return double_encoding(bits)
    if sampling in ("single", "nearest"):
        return Encoding.SINGLE
    raise ValueError(f"unsupported sampling={sampling!r}: choose one of {SAMPLINGS}")


def feature_bits(encoding: Encoding, bits: int) -> int:
    """Bits of one feature slot."""
    encoding = Encoding(encoding)
    if encoding == Encoding.PAIR and bits in BITS_ALLOWED:
        return 2 * bits
    if encoding == Encoding.COMPACT and bits in BITS_ALLOWED:
        return bits + 2
    if encoding == Encoding.FULL:
        if bits != FULL_BITS:
            raise ValueError(f"FULL encoding takes bits={FULL_BITS}, not {bits!r}")
        return FULL_BITS
    if bits not in BITS_ALLOWED:
        raise ValueError(f"unsupported bits={bits!r} for {encoding.name}: choose one of {BITS_ALLOWED}")
    return bits


def all_modes():
    """Every (encoding, bits) pair the contract defines: FULL, SINGLE at every b of
    BITS_ALLOWED, and the smaller double-sample encoding at every b (``double_encoding``).
    Its order numbers the PARAM_MODES bits (:func:`mode_bit`)."""
    modes = [(Encoding.FULL, FULL_BITS)]
    modes += [(Encoding.SINGLE, b) for b in BITS_ALLOWED]
    modes += [(double_encoding(b), b) for b in BITS_ALLOWED]
    return modes


def valid_modes():
    """The modes an engine build decodes: :func:`all_modes` at b in ENGINE_BITS (and FULL),
    in that order."""
    return [(e, b) for e, b in all_modes() if e == Encoding.FULL or b in ENGINE_BITS]


def mode_bit(encoding: Encoding, bits: int) -> int:
    """Bit index of a mode in the PARAM_MODES register (its place in :func:`all_modes`)."""
    return all_modes().index((Encoding(encoding), bits))


@dataclass(frozen=True)
class Layout:
    """Where the fields of one sample sit in the stream.

    Parameters
    ----------
    word_bits : int
        Stream width W (64 or 128).
    encoding : Encoding
        Slot encoding.
    bits : int
        Codebook bits b (1, 2, 4, 8) or 32 for FULL.
    dim : int
        Features per sample d (>= 1).
    """

    word_bits: int
    encoding: Encoding
    bits: int
    dim: int

    def __post_init__(self):
        if self.word_bits not in WORD_BITS_ALLOWED:
            raise ValueError(f"unsupported word_bits={self.word_bits!r}: choose one of {WORD_BITS_ALLOWED}")
        object.__setattr__(self, "encoding", Encoding(self.encoding))
        feature_bits(self.encoding, self.bits)  # validates
        if not isinstance(self.dim, (int, np.integer)) or self.dim < 1:
            raise ValueError(f"dim must be a positive integer, not {self.dim!r}")

    @property
    def feature_bits(self) -> int:
        return feature_bits(self.encoding, self.bits)

    @property
    def features_per_beat(self) -> int:
        return self.word_bits // self.feature_bits

    @property
    def label_beat_features(self) -> int:
        """Slots of the last beat that lie below the label."""
        return (self.word_bits - LABEL_BITS) // self.feature_bits

    @property
    def label_shift(self) -> int:
        return self.word_bits - LABEL_BITS

    @property
    def beats_per_sample(self) -> int:
        return beats_per_sample(self.features_per_beat, self.label_beat_features, self.dim)

    @property
    def host_words_per_beat(self) -> int:
        return self.word_bits // HOST_WORD_BITS

    @property
    def bits_per_feature_effective(self) -> float:
        """Stream bits per feature including padding and label (for d features)."""
        return self.beats_per_sample * self.word_bits / self.dim


def beats_per_sample(features_per_beat: int, label_beat_features: int, dim: int) -> int:
    """Least B with (B-1)*F + F_label >= d (the label shares the last beat)."""
    extra = max(0, dim - label_beat_features)
    return 1 + -(-extra // features_per_beat)


# --------------------------------------------------------------------------------------
# Engine build parameters and job configuration
# --------------------------------------------------------------------------------------
def default_lanes(word_bits: int) -> int:
    """Engine datapath lanes unless a build says otherwise: ``W/2``."""
    return word_bits // 2


@dataclass(frozen=True)
class EngineParams:
    """Build-time parameters of an engine (read back from PARAM_* registers)."""

    word_bits: int = WORD_BITS_DEFAULT
    dim_max: int = 4096
    batch_max: int = 4096
    epochs_max: int = 1024
    #: Lanes of the engine's datapath: W/2 (default; SINGLE b = 1 beats, W features
    #: each, are then taken in two halves at half rate) or W (every mode at one beat per
    #: cycle, about twice the gradient/update logic: for the larger parts).
    lanes: int | None = None
    #: Codebook widths the configuration check accepts (host side; not a register, not in
    #: the build hash): ENGINE_BITS for an engine build, BITS_ALLOWED for the cpu backend
    #: (:meth:`for_cpu`). An engine decodes ``valid_modes()`` whatever this says.
    code_bits: tuple = ENGINE_BITS

    def __post_init__(self):
        if self.word_bits not in WORD_BITS_ALLOWED:
            raise ValueError(f"unsupported word_bits={self.word_bits!r}: choose one of {WORD_BITS_ALLOWED}")
        if self.lanes is None:
            object.__setattr__(self, "lanes", default_lanes(self.word_bits))
        if self.lanes not in (default_lanes(self.word_bits), self.word_bits):
            raise ValueError(f"lanes must be {default_lanes(self.word_bits)} or {self.word_bits} at "
                             f"word_bits={self.word_bits}, not {self.lanes!r}")
        object.__setattr__(self, "code_bits", tuple(sorted(set(int(b) for b in self.code_bits))))
        if not set(self.code_bits) <= set(BITS_ALLOWED):
            raise ValueError(f"code_bits must be among {BITS_ALLOWED}, not {self.code_bits!r}")
        for name in ("dim_max", "batch_max", "epochs_max"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two, not {v!r}")
        # Exactness bound: |Q*x| < 2**(FEAT.frac + MODEL.width - 1); sums must fit ACC.
        if (FEAT.frac + MODEL.width - 1) + max(self.dim_max, self.batch_max).bit_length() > ACC.width - 1:
            raise ValueError("dim_max/batch_max too large for an exact 64-bit accumulator")

    @property
    def modes(self) -> list:
        """The modes a job may use under these parameters (:func:`check_config`)."""
        return [(e, b) for e, b in all_modes() if e == Encoding.FULL or b in self.code_bits]

    @property
    def modes_mask(self) -> int:
        """PARAM_MODES of an engine build: the modes it decodes (``valid_modes()``)."""
        return sum(1 << mode_bit(e, b) for e, b in valid_modes())

    def for_cpu(self) -> "EngineParams":
        """The same limits with every codebook width of the contract (the cpu backend)."""
        return EngineParams(self.word_bits, self.dim_max, self.batch_max, self.epochs_max, self.lanes,
                            code_bits=BITS_ALLOWED)

    def for_engine(self) -> "EngineParams":
        """The same limits with the widths an engine decodes (what a build reports)."""
        return EngineParams(self.word_bits, self.dim_max, self.batch_max, self.epochs_max, self.lanes)


@dataclass
class EngineConfig:
    """One training job as the engine sees it (the configuration registers)."""

    n_samples: int
    dim: int
    bits: int
    encoding: Encoding
    loss: Loss = Loss.SQUARED
    step_shift: int = 0
    step_mult: int = STEP_MULT.one
    decay_epochs: int = 0
    l2_shift: int = 0
    batch: int = 1
    epochs: int = 1
    copies: int = 1
    pos_class: int = 0
    step_mult_neg: int = 0
    word_bits: int = WORD_BITS_DEFAULT

    @property
    def layout(self) -> Layout:
        return Layout(self.word_bits, self.encoding, self.bits, self.dim)

    def label_value(self, label):
        """The label ``y`` (MODEL) the engine trains on, from the stream's label word(s)."""
        if not self.pos_class:
            return label
        pos = np.asarray(label, dtype=np.int64) == self.pos_class - 1
        neg = -MODEL.one if Loss(self.loss) == Loss.HINGE else 0
        return np.where(pos, MODEL.one, neg)

    def sample_mult(self, y):
        """Step multiplier of each sample whose label (after :meth:`label_value`) is ``y``."""
        neg = self.step_mult_neg or self.step_mult
        return np.where(np.asarray(y) > 0, self.step_mult, neg)

    def epoch_shift(self, epoch: int) -> int:
        """Step shift k used in ``epoch`` (0-based)."""
        k = self.step_shift + (epoch // self.decay_epochs if self.decay_epochs else 0)
        return min(k, STEP_SHIFT_MAX)


def check_registers(cfg: EngineConfig) -> None:
    """Refuse a configuration a 32-bit register cannot hold (the host's check before the
    engine's own: a negative POS_CLASS would be another value once written)."""
    for name in CONFIG_FIELDS:
        v = int(getattr(cfg, name))
        if not 0 <= v <= 0xFFFFFFFF:
            raise ValueError(f"{name.upper()} = {v} does not fit its 32-bit register (0 .. 2**32 - 1)")


def check_config(cfg: EngineConfig, params: EngineParams) -> Error:
    """The engine's own validity check, in the order the gateware applies it."""
    try:
        enc = Encoding(cfg.encoding)
    except ValueError:
        return Error.BAD_ENCODING
    if (enc, cfg.bits) not in params.modes:
        return Error.BAD_BITS
    if cfg.dim < 1 or cfg.dim > params.dim_max:
        return Error.BAD_DIM
    if cfg.n_samples < 1:
        return Error.BAD_N
    if cfg.batch < 1 or cfg.batch > params.batch_max:
        return Error.BAD_BATCH
    if cfg.loss not in tuple(Loss):
        return Error.BAD_LOSS
    if cfg.epochs < 1 or cfg.epochs > params.epochs_max:
        return Error.BAD_EPOCHS
    if cfg.step_mult < 1 or cfg.step_mult > STEP_MULT.max or cfg.step_shift > STEP_SHIFT_MAX \
            or cfg.l2_shift > L2_SHIFT_MAX or not 0 <= cfg.step_mult_neg <= STEP_MULT.max:
        return Error.BAD_STEP
    return Error.NONE


# --------------------------------------------------------------------------------------
# Register map
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Register:
    """One 32-bit register: name, access ('r', 'w', 'rw') and what it does."""

    name: str
    access: str
    doc: str
    fields: tuple = field(default=())


@dataclass(frozen=True)
class Field:
    name: str
    lsb: int
    width: int
    doc: str

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.lsb


CTRL_FIELDS = (
    Field("start", 0, 1, "write 1: check the configuration and start the job (ignored while busy)"),
    Field("soft_reset", 1, 1, "write 1: abort, clear state and return to idle"),
    Field("warm", 2, 1, "with start: start from the model in memory (MODEL_DATA writes, or the last job's) "
          "instead of zero"),
    Field("stop", 3, 1, "write 1: end the running job at the next epoch boundary (no beat of a new epoch is "
          "taken; the epoch in progress completes)"),
)
STATUS_FIELDS = (
    Field("busy", 0, 1, "a job is running"),
    Field("done", 1, 1, "the last job finished (cleared by START or SOFT_RESET)"),
    Field("stopped", 2, 1, "the last job ended early on STOP (cleared by START or SOFT_RESET)"),
    Field("error", 8, 8, "Error code of the last job (0: none)"),
)
COUNTER_NAMES = ("CYCLES", "BEATS", "STALLS", "IDLES", "SAMPLES", "SATURATED")

REGISTERS: tuple[Register, ...] = (
    Register("MAGIC", "r", f"ASCII 'ZSGD' (0x{MAGIC:08X}): this is a zipsgd engine"),
    Register("VERSION", "r", "contract version, major << 16 | minor"),
    Register("BUILD_HASH", "r", "CRC-32 of the contract and the build parameters"),
    Register("PARAM_WORD_BITS", "r", "stream width W in bits"),
    Register("PARAM_DIM_MAX", "r", "largest DIM"),
    Register("PARAM_BATCH_MAX", "r", "largest BATCH"),
    Register("PARAM_EPOCHS_MAX", "r", "largest EPOCHS (depth of the loss memory)"),
    Register("PARAM_MODES", "r", "bit mode_bit(encoding, bits) set for each supported mode"),
    Register("CTRL", "w", "control", CTRL_FIELDS),
    Register("STATUS", "r", "status", STATUS_FIELDS),
    Register("N_SAMPLES", "rw", "samples per epoch n"),
    Register("DIM", "rw", "features per sample d"),
    Register("BITS", "rw", "codebook bits b (1, 2, 4, 8) or 32 for FULL"),
    Register("ENCODING", "rw", "slot encoding (Encoding)"),
    Register("LOSS", "rw", "loss (Loss)"),
    Register("STEP_SHIFT", "rw", "step shift k of epoch 0"),
    Register("STEP_MULT", "rw", "step multiplier, u16 with 15 fractional bits"),
    Register("DECAY_EPOCHS", "rw", "the step halves every DECAY_EPOCHS epochs (0: never)"),
    Register("L2_SHIFT", "rw", "L2 decay x -= x >> L2_SHIFT per batch (0: off)"),
    Register("BATCH", "rw", "mini-batch size"),
    Register("EPOCHS", "rw", "epochs (each N_SAMPLES samples, TLAST on its last beat)"),
    Register("COPIES", "rw", "number of packed copies the host cycles through (informational)"),
    Register("POS_CLASS", "rw", "0: the label word is the label; c > 0: it holds a class index, the label is "
             "+1 for class c - 1, else -1 (hinge) or 0"),
    Register("STEP_MULT_NEG", "rw", "step multiplier of samples whose label is not above zero (0: STEP_MULT)"),
    Register("CODEBOOK_ADDR", "rw", "codebook write pointer (auto-increments on CODEBOOK_DATA writes)"),
    Register("CODEBOOK_DATA", "w", "codebook level (FEAT, sign-extended) at CODEBOOK_ADDR"),
    Register("MODEL_ADDR", "rw", "model read pointer: a write (of any value) rewinds it to 0; reads of MODEL_DATA "
             "advance it"),
    Register("MODEL_DATA", "rw", "model word at MODEL_ADDR (MODEL format); a read or a write advances "
             "MODEL_ADDR; a write stores the word in the layout of the configuration registers (idle only; "
             "ignored while busy)"),
    Register("LOSS_ADDR", "rw", "epoch whose loss LOSS_LO/LOSS_HI show"),
    Register("LOSS_LO", "r", "epoch loss sum, bits 31..0 (LOSS_ACC format)"),
    Register("LOSS_HI", "r", "epoch loss sum, bits 63..32"),
    Register("EPOCHS_DONE", "r", "epochs finished in the current/last job"),
    Register("PARAM_LANES", "r", "datapath lanes: W/2 (single/nearest 1-bit beats take two cycles) or W"),
) + tuple(
    Register(f"{name}_{half}", "r",
             f"{name.lower()} counter, bits {'31..0' if half == 'LO' else '63..32'}"
             + (" (reading LO latches HI)" if half == "LO" else ""))
    for name in COUNTER_NAMES for half in ("LO", "HI")
)

COUNTER_DOC = {
    "CYCLES": "clock cycles while busy",
    "BEATS": "input beats accepted",
    "STALLS": "cycles the engine held TREADY low while busy (engine-caused stalls)",
    "IDLES": "cycles TREADY was high but TVALID low while busy (input starved)",
    "SAMPLES": "samples processed",
    "SATURATED": "batches whose model update saturated at least one model word",
}

#: Register name -> byte offset.
REG = {r.name: 4 * i for i, r in enumerate(REGISTERS)}
#: The configuration registers, as EngineConfig field names (lower case), in order.
CONFIG_FIELDS = tuple(f.name for f in fields(EngineConfig) if f.name.upper() in REG)
#: Byte size of the register window (power of two).
REG_SPACE_BYTES = 1 << (4 * len(REGISTERS) - 1).bit_length()
REG_ADDR_BITS = REG_SPACE_BYTES.bit_length() - 1


def field_value(fields, name: str, value: int) -> int:
    """Extract field ``name`` from a register value."""
    for f in fields:
        if f.name == name:
            return (value >> f.lsb) & ((1 << f.width) - 1)
    raise KeyError(name)


def field_bits(fields, **values) -> int:
    """Compose a register value from field values."""
    out = 0
    for f in fields:
        if f.name in values:
            out |= (int(values[f.name]) << f.lsb) & f.mask
    return out


def version_word() -> int:
    return CONTRACT_VERSION[0] << 16 | CONTRACT_VERSION[1]


def build_hash(params: EngineParams) -> int:
    """CRC-32 over everything the host and the engine must agree on."""
    text = repr((
        CONTRACT_VERSION, [(r.name, r.access) for r in REGISTERS],
        [(f.name, f.width, f.frac, f.signed) for f in (FEAT, MODEL, STEP_MULT, ACC, LOSS_SAMPLE, LOSS_ACC)],
        SIGMOID_SEGMENTS, SOFTPLUS_TABLE, [(m, mode_bit(*m)) for m in valid_modes()],
        params.word_bits, params.dim_max, params.batch_max, params.epochs_max, params.lanes,
    ))
    return zlib.crc32(text.encode())


def register_table() -> str:
    """The register map as a Markdown table."""
    rows = ["| offset | name | access | meaning |", "|---|---|---|---|"]
    for r in REGISTERS:
        doc = r.doc
        if r.fields:
            doc += ": " + "; ".join(f"[{f.lsb + f.width - 1}:{f.lsb}] {f.name}: {f.doc}" for f in r.fields)
        if r.name.rsplit("_", 1)[0] in COUNTER_DOC and r.name.endswith("_LO"):
            doc += f" — {COUNTER_DOC[r.name[:-3]]}"
        rows.append(f"| 0x{REG[r.name]:03X} | {r.name} | {r.access} | {doc} |")
    return "\n".join(rows)


def mode_table(word_bits: int = WORD_BITS_DEFAULT) -> str:
    """Bits per feature and features per beat for every mode, as Markdown."""
    rows = ["| sampling | b | encoding | bits/feature (PAIR 2b / COMPACT b+2) | features/beat at W="
            f"{word_bits} | stream bits/feature | samples per beat vs 32-bit |",
            "|---|---|---|---|---|---|---|"]
    full_f = word_bits // FULL_BITS
    for sampling in SAMPLINGS:
        for b in BITS_ALLOWED:
            enc = encoding_for(sampling, b)
            fb = feature_bits(enc, b)
            alt = f"{2 * b} / {b + 2}" if sampling == "double" else "-"
            f = word_bits // fb
            rows.append(f"| {sampling} | {b} | {enc.name} | {fb} ({alt}) | {f} | {word_bits / f:.2f} "
                        f"| {f / full_f:.1f}x |")
    rows.append(f"| full | {FULL_BITS} | FULL | {FULL_BITS} | {full_f} | {FULL_BITS:.2f} | 1.0x |")
    return "\n".join(rows)
