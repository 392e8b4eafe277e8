"""Mode table and the beat decoder of the zipsgd engine.

A *mode* is one ``(encoding, bits)`` pair of :func:`zipsgd.contract.valid_modes`.
The engine keeps the mode as a one-hot vector in that order, and every lane
(feature slot of a beat) is a small AND-OR multiplexer over the modes that use
the lane (lane ``l`` exists in mode ``m`` when ``l < F_m``), so high lanes,
which only the narrow-code modes reach, stay cheap.

The decoder is purely combinational (latency 0).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from zipsgd.contract import (
    FEAT, FULL_BITS, LABEL_BITS, Encoding, Layout, default_lanes, feature_bits, valid_modes,
)

#: Width of a decoded code (the largest b).
CODE_BITS = 8
#: Codes of at most this many bits use bucket sums and precomputed level products.
BUCKET_BITS_MAX = 2


@dataclass(frozen=True)
class Mode:
    """Static description of one mode at a stream width.

    Attributes
    ----------
    index : int
        Position in ``valid_modes()`` (bit of the one-hot mode vector).
    encoding : Encoding
    bits : int
    fb : int
        Bits per feature slot.
    lanes : int
        Features per beat ``F``.
    label_lanes : int
        Feature slots of the label beat.
    elanes : int
        Features per beat as the engine takes them, with ``engine_lanes(W)`` lanes: a mode with
        more features per beat (SINGLE at b = 1) is *split*: each beat but a sample's
        last is taken in two halves of ``W/2`` bits (two cycles), the upper half shifted
        down; the last beat (features below the label) is taken whole.
    """

    index: int
    encoding: Encoding
    bits: int
    fb: int
    lanes: int
    label_lanes: int
    elanes: int = 0

    @property
    def split(self) -> bool:
        """Beats are taken in two halves (half the beat rate: see ``elanes``)."""
        return self.elanes < self.lanes

    @property
    def full(self) -> bool:
        return self.encoding == Encoding.FULL

    @property
    def bucket(self) -> bool:
        """Q1/Q2 codes of <= BUCKET_BITS_MAX bits: bucket sums / level-product table."""
        return not self.full and self.bits <= BUCKET_BITS_MAX

    @property
    def mult(self) -> bool:
        """Per-lane multipliers (FULL and b = 4, 8)."""
        return not self.bucket


def engine_lanes(word_bits: int, lanes: int | None = None) -> int:
    """Lanes of the engine's datapath (``EngineParams.lanes``): ``W/2`` by default (every
    mode but SINGLE b = 1 fits), or ``W``."""
    return default_lanes(word_bits) if lanes is None else int(lanes)


def modes(word_bits: int, lanes: int | None = None) -> list[Mode]:
    """Every valid mode at stream width ``word_bits`` (in ``valid_modes()`` order), seen by
    an engine of ``lanes`` lanes (default ``W/2``)."""
    out = []
    cap = engine_lanes(word_bits, lanes)
    for i, (enc, b) in enumerate(valid_modes()):
        lay = Layout(word_bits, enc, b, 1)
        f, fl = lay.features_per_beat, lay.label_beat_features
        if f > 2 * cap or (f > cap and 2 * fl < f):
            raise ValueError(f"mode {Encoding(enc).name} b={b}: {f} features per beat do not split "
                             f"into two halves of {cap} lanes")
        out.append(Mode(i, Encoding(enc), b, feature_bits(enc, b), f, fl, min(f, cap)))
    return out


def mult_lanes(word_bits: int) -> int:
    """Lanes that need a real multiplier (widest multiplier mode)."""
    return max(m.lanes for m in modes(word_bits) if m.mult)


def lane_code_bits(word_bits: int, lane: int, only_mult: bool = False) -> int:
    """Largest code width a lane can see (0 when no code mode uses it)."""
    bs = [m.bits for m in modes(word_bits)
          if not m.full and lane < m.lanes and (m.mult or not only_mult)]
    return max(bs, default=0)


class Decoder(wiring.Component):
    """Combinational decoder of one beat into per-lane codes (and FULL values).

    Parameters
    ----------
    word_bits : int
        Stream width W (64 or 128).
    which : int
        1: the first sample ``Q1`` (dot product); 2: the second sample ``Q2``
        (gradient). For SINGLE both are the same code.

    Attributes
    ----------
    beat : In(W)
        The raw beat.
    mode : In(len(valid_modes()))
        One-hot mode.
    code : Out(ArrayLayout(8, W))
        Codebook index per lane (0 for lanes the mode does not use).
    value : Out(ArrayLayout(signed(18), W // 32))
        FULL feature value per lane (bits [0, 18) of the slot, sign included).
    label : Out(signed(32))
        Label field (top 32 bits of the beat).
    latency : int
        0 (combinational).
    """

    latency = 0

    def __init__(self, word_bits: int, which: int = 1):
        if which not in (1, 2):
            raise ValueError(f"Decoder: which must be 1 or 2, not {which!r}")
        self.word_bits = int(word_bits)
        self.which = which
        self.modes = modes(self.word_bits)
        super().__init__({
            "beat": In(self.word_bits),
            "mode": In(len(self.modes)),
            "code": Out(data.ArrayLayout(CODE_BITS, self.word_bits)),
            "value": Out(data.ArrayLayout(signed(FEAT.width), self.word_bits // FULL_BITS)),
            "label": Out(signed(LABEL_BITS)),
        })

    def _field_code(self, m: Mode, lane: int):
        f = self.beat[lane * m.fb:(lane + 1) * m.fb]
        b = m.bits
        if m.encoding == Encoding.SINGLE:
            return f[:b]
        if m.encoding == Encoding.PAIR:
            return f[:b] if self.which == 1 else f[b:2 * b]
        # COMPACT: interval j plus choice bit e1 (Q1) / e2 (Q2).
        e = f[b] if self.which == 1 else f[b + 1]
        return (f[:b] + e)[:CODE_BITS]

    def elaborate(self, platform):
        m = Module()
        W = self.word_bits
        for lane in range(W):
            terms = []
            for md in self.modes:
                if md.full or lane >= md.lanes:
                    continue
                terms.append(Mux(self.mode[md.index], self._field_code(md, lane), 0))
            if terms:
                acc = terms[0]
                for t in terms[1:]:
                    acc = acc | t
                m.d.comb += self.code[lane].eq(acc)
        full = next(md for md in self.modes if md.full)
        for lane in range(W // FULL_BITS):
            m.d.comb += self.value[lane].eq(self.beat[lane * full.fb:lane * full.fb + FEAT.width].as_signed())
        m.d.comb += self.label.eq(self.beat[W - LABEL_BITS:].as_signed())
        return m


def registered_decoder(m: Module, word_bits: int, which: int, beat, mode, lanes: int) -> tuple[list, list]:
    """A :class:`Decoder` of copy ``which`` (1: the dot product's, 2: the gradient's) on
    ``beat`` in ``mode``, added to ``m`` as ``dec<which>``, with its outputs registered (one
    cycle): returns the ``lanes`` codes and the ``word_bits / 32`` FULL values."""
    dec = Decoder(word_bits, which=which)
    m.submodules[f"dec{which}"] = dec
    m.d.comb += [dec.beat.eq(beat), dec.mode.eq(mode)]
    code = [Signal(CODE_BITS, name=f"c{which}_{lane}", reset_less=True) for lane in range(lanes)]
    full = [Signal(signed(FEAT.width), name=f"fv{which}_{i}", reset_less=True) for i in range(word_bits // FULL_BITS)]
    m.d.sync += [code[lane].eq(dec.code[lane]) for lane in range(lanes)]
    m.d.sync += [full[i].eq(dec.value[i]) for i in range(word_bits // FULL_BITS)]
    return code, full
