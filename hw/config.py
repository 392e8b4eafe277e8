"""The configuration: decoded and checked every cycle, latched for the job at its start.

The configuration registers (``contract.CONFIG_FIELDS``) are static for ``LATENCY`` cycles
before a start (the register block delays its start pulse by that much), so everything
derived from them -- the one-hot mode, the mode's constants, the validation code, the
first-beat flags -- is registered here, and a start latches it without any decode or
compare in its path: no datapath or stream-control decision waits for a decode of the
mode.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from zipsgd.contract import (
    CONFIG_FIELDS, L2_SHIFT_MAX, STEP_MULT, STEP_SHIFT_MAX, EngineParams, Encoding, Error, Loss,
)

from .decode import BUCKET_BITS_MAX, modes

#: The configuration registers as the engine sees them (32-bit unsigned each).
CFG_LAYOUT = data.StructLayout({name: 32 for name in CONFIG_FIELDS})


def _first_high(md) -> int:
    """Feature slots of a split mode's label-beat upper half (0 when not split)."""
    return max(md.label_lanes - md.elanes, 0) if md.split else 0


#: Constants of a mode (one register each, chosen by the one-hot mode): name -> value.
MODE_CONSTANTS = {
    "lanes_f": lambda md: md.elanes,                     # features per (engine) beat
    "lanes_f_m1": lambda md: md.elanes - 1,              # ... minus one (read-back pointer)
    "lanes_ffl": lambda md: md.elanes + md.label_lanes,  # ... plus the label beat's slots
    "lanes_ffh": lambda md: md.elanes + _first_high(md),  # ... plus the upper half's label slots
    "split": lambda md: int(md.split),                   # beats are taken in two halves
    "skip_high": lambda md: int(not md.split or md.label_lanes <= md.elanes),  # ... but a last
    #                                       beat whose upper half is the label alone is taken whole
    "full": lambda md: int(md.full),
    "bucket": lambda md: int(md.bucket),
    # a bucket mode with fewer code bits than BUCKET_BITS_MAX: b1, ...
    **{f"b{b}": (lambda md, b=b: int(md.bucket and md.bits == b)) for b in range(1, BUCKET_BITS_MAX)},
}


def settings_layout(params: EngineParams) -> data.StructLayout:
    """The job's settings: configuration fields, the mode and its constants, and the
    sequencing values the stream input counts with."""
    W = params.word_bits
    return data.StructLayout({
        "mode": len(modes(W, params.lanes)),             # one-hot, in valid_modes() order
        "dim": range(params.dim_max + 1),
        "loss": 2,
        "step_mult": STEP_MULT.width,
        "step_mult_neg": STEP_MULT.width,                # (0: STEP_MULT, see Scalar)
        "pos_class": 32,                                 # (0: the label word is the label)
        "step_shift": range(STEP_SHIFT_MAX + 1),
        "decay": 32,
        "decay_m1": 32,
        "l2_shift": range(L2_SHIFT_MAX + 1),
        "lanes_f": range(W + 1),
        "lanes_f_m1": range(W + 1),
        "lanes_ffl": range(2 * W + 1),
        "lanes_ffh": range(2 * W + 1),
        "split": 1, "skip_high": 1, "full": 1, "bucket": 1,
        **{f"b{b}": 1 for b in range(1, BUCKET_BITS_MAX)},
        "first_last_l": 1,      # the first beat (or its lower half) of a sample is its last
        "first_last_h": 1,      # ... its upper half is the last (split modes)
        "n_one": 1, "b_one": 1, "e_one": 1,              # N, batch, epochs == 1
        "n_m2": signed(34), "b_m2": signed(34), "e_m2": signed(34),   # ... - 2
    })


class Config(wiring.Component):
    """Configuration decode, check and job latch.

    Members
    -------
    cfg : In(CFG_LAYOUT)
        The configuration registers.
    load : In(1)
        A job starts (or the host writes a model word while idle, in the layout of the
        current configuration): ``job`` takes ``decoded``.
    decoded : Out(settings_layout)
        The settings of the current configuration (``LATENCY`` cycles after it changed).
    check : Out(8), check_ok : Out(1)
        Its validation code (``Error``; the first failing test in the contract's order) and
        whether it is ``Error.NONE``.
    job : Out(settings_layout)
        The settings latched at the job's start (static during the job).
    """

    #: Cycles from a configuration change to ``decoded`` and ``check``: the configuration
    #: must be stable that long before a start.
    LATENCY = 3

    def __init__(self, params: EngineParams):
        if not isinstance(params, EngineParams):
            raise TypeError(f"Config: params must be an EngineParams, not {params!r}")
        self.params = params
        self.modes = modes(params.word_bits, params.lanes)
        layout = settings_layout(params)
        super().__init__({
            "cfg": In(CFG_LAYOUT),
            "load": In(1),
            "decoded": Out(layout),
            "check": Out(8),
            "check_ok": Out(1),
            "job": Out(layout),
        })

    def elaborate(self, platform):
        m = Module()
        p, cfg, dec = self.params, self.cfg, self.decoded

        def reg(value, name, shape):
            r = Signal(shape, name=name, reset_less=True)
            m.d.sync += r.eq(value)
            return r

        mode_hit_c = Signal(len(self.modes))
        for md in self.modes:
            m.d.comb += mode_hit_c[md.index].eq((cfg.encoding == int(md.encoding)) & (cfg.bits == md.bits))
        mode_hit = reg(mode_hit_c, "mode_hit", len(self.modes))

        def by_mode(fn):
            """``fn(mode)`` of the configured mode: an AND-OR of constants."""
            acc = 0
            for md in self.modes:
                acc = acc | Mux(mode_hit[md.index], fn(md), 0)
            return acc

        m.d.comb += dec.mode.eq(mode_hit)
        for name, fn in MODE_CONSTANTS.items():
            m.d.comb += dec[name].eq(reg(by_mode(fn), f"cfg_{name}", dec[name].shape()))
        # feature slots of the label beat (its lower half when split) / of a split label
        # beat's upper half; the first beat of a sample is its last when dim <= those
        W = p.word_bits
        slots_l = reg(by_mode(lambda md: md.label_lanes), "cfg_fl", range(W + 1))
        slots_h = reg(by_mode(_first_high), "cfg_fh", range(W + 1))
        m.d.comb += [dec.first_last_l.eq(reg(cfg.dim <= slots_l, "cfg_first_last_l", 1)),
                     dec.first_last_h.eq(reg(cfg.dim <= slots_h, "cfg_first_last_h", 1))]
        # fields taken as they are, and the sequencing values
        m.d.comb += [dec.dim.eq(cfg.dim), dec.loss.eq(cfg.loss), dec.step_mult.eq(cfg.step_mult),
                     dec.step_mult_neg.eq(cfg.step_mult_neg), dec.pos_class.eq(cfg.pos_class),
                     dec.step_shift.eq(cfg.step_shift), dec.decay.eq(cfg.decay_epochs),
                     dec.l2_shift.eq(cfg.l2_shift)]
        for name, value in (("decay_m1", cfg.decay_epochs - 1),
                            ("n_one", cfg.n_samples == 1), ("b_one", cfg.batch == 1),
                            ("e_one", cfg.epochs == 1), ("n_m2", cfg.n_samples - 2),
                            ("b_m2", cfg.batch - 2), ("e_m2", cfg.epochs - 2)):
            m.d.comb += dec[name].eq(reg(value, f"cfg_{name}", dec[name].shape()))

        # the validation code: each test registered, then the first failing one (registered)
        tests = [
            (Error.BAD_ENCODING, cfg.encoding > max(Encoding)),
            (Error.BAD_BITS, mode_hit_c == 0),
            (Error.BAD_DIM, (cfg.dim < 1) | (cfg.dim > p.dim_max)),
            (Error.BAD_N, cfg.n_samples < 1),
            (Error.BAD_BATCH, (cfg.batch < 1) | (cfg.batch > p.batch_max)),
            (Error.BAD_LOSS, cfg.loss > max(Loss)),
            (Error.BAD_EPOCHS, (cfg.epochs < 1) | (cfg.epochs > p.epochs_max)),
            (Error.BAD_STEP, (cfg.step_mult < 1) | (cfg.step_mult > STEP_MULT.max)
             | (cfg.step_shift > STEP_SHIFT_MAX) | (cfg.l2_shift > L2_SHIFT_MAX)
             | (cfg.step_mult_neg > STEP_MULT.max)),
        ]
        bad = Signal(len(tests), reset_less=True)
        m.d.sync += [bad[i].eq(t) for i, (_, t) in enumerate(tests)]
        check_c = Signal(8)
        m.d.comb += check_c.eq(Error.NONE)
        for i, (code, _) in reversed(list(enumerate(tests))):     # the first failing test wins
            with m.If(bad[i]):
                m.d.comb += check_c.eq(code)
        m.d.comb += [self.check.eq(reg(check_c, "check", 8)),
                     self.check_ok.eq(reg(check_c == Error.NONE, "check_ok", 1))]

        # the job's settings: latched at its start
        for name in dec.shape().members:
            field = dec[name]
            r = Signal(field.shape(), name=f"job_{name}", reset_less=True)
            with m.If(self.load):
                m.d.sync += r.eq(field)
            m.d.comb += self.job[name].eq(r)
        return m
