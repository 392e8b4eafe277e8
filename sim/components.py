"""Verilog of single engine blocks for their cocotb benches (``sim/test_components.py``).

Each block is converted on its own (flat ports named after its signature members:
``beat``, ``mode``, ``code``...; clocked blocks get ``clk`` and ``rst``) and cached
under ``build/verilog/`` with the same source hash as the engine's Verilog.
"""

from __future__ import annotations

from pathlib import Path

from zipsgd import contract as c

#: name -> (module name, factory(word_bits))
COMPONENTS = {
    "decoder1": ("zipsgd_decoder_q1", lambda W: _decoder(W, 1)),
    "decoder2": ("zipsgd_decoder_q2", lambda W: _decoder(W, 2)),
    "scalar": ("zipsgd_scalar", lambda W: _scalar()),
}


def _decoder(word_bits, which):
    from zipsgd.hw.decode import Decoder
    return Decoder(word_bits, which)


def _scalar():
    from zipsgd.hw.scalar import Scalar
    return Scalar()


def component_verilog(name: str, word_bits: int = c.WORD_BITS_DEFAULT) -> tuple[Path, str]:
    """(Verilog path, module name) of block ``name`` (see :data:`COMPONENTS`)."""
    from amaranth.back import verilog

    from zipsgd.hw.verilog import BUILD_DIR, source_hash

    if name not in COMPONENTS:
        raise ValueError(f"unknown component {name!r}: choose one of {sorted(COMPONENTS)}")
    module, factory = COMPONENTS[name]
    key = source_hash(c.EngineParams(word_bits=word_bits), core=f"component-{name}")
    out = BUILD_DIR / "verilog" / f"{module}_w{word_bits}_{key}.v"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        text = verilog.convert(factory(word_bits), name=module, emit_src=False)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(out)
    return out, module


def scalar_class_cases(rng) -> list[tuple[tuple, tuple[int, int]]]:
    """Scalar-unit cases with POS_CLASS and STEP_MULT_NEG: ``((acc, word, loss, m, k,
    pos_class, m_neg), (r', sample loss))``, the expected values from the contract
    (``EngineConfig.label_value``, ``EngineConfig.sample_mult``) and the reference. Class
    indices at the edges of the signed label word: POS_CLASS 2**31 is the index MODEL.max,
    2**31 + 1 and 2**32 - 1 are indices no signed word equals."""
    from zipsgd.sim.cases import scalar_cases, scalar_expected

    one = c.MODEL.one
    words = [0, 1, 2, 3, -1, -2, one, -one, c.MODEL.max, c.MODEL.min, c.MODEL.max - 1]
    classes = [0, 1, 2, 4, 1 << 31, (1 << 31) + 1, (1 << 32) - 1, one + 1]
    out = []
    for i, (a, y, loss, mult, k) in enumerate(scalar_cases(rng)):
        pc = classes[i % len(classes)]
        word = int(rng.choice(words)) if pc else y
        if pc and rng.random() < 0.3:                 # the class (as a signed word, if one is)
            word = (pc - 1) - (1 << 32) if pc - 1 > c.MODEL.max else pc - 1
        neg = int(rng.choice([0, 0, 1, c.STEP_MULT.max, int(rng.integers(1, c.STEP_MULT.max + 1))]))
        cfg = c.EngineConfig(1, 1, c.FULL_BITS, c.Encoding.FULL, loss=loss, step_mult=mult, pos_class=pc,
                             step_mult_neg=neg)
        label = int(cfg.label_value(word))
        out.append(((a, word, loss, mult, k, pc, neg),
                    scalar_expected((a, label, loss, int(cfg.sample_mult(label)), k))))
    return out
