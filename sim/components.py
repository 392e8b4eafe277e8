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
