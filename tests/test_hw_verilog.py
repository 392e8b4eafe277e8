"""The engine's generated Verilog (:mod:`zipsgd.hw.verilog`): its cache key, and what
synthesis makes of the engine's register copies.

The copies guard runs Debian's Yosys on the whole engine (about two minutes; ``make test``
installs Yosys). The synthesis flows themselves are tested in bitstreams/flows/tests.
"""

import pytest

from zipsgd import contract as c
from zipsgd.flows.yosys import merged_into_copies, native_yosys
from zipsgd.hw import verilog as v

NATIVE = native_yosys()


def test_every_build_parameter_keys_the_verilog_cache():
    base = c.EngineParams(word_bits=64, dim_max=256)
    keys = {v.source_hash(base), v.source_hash(c.EngineParams(word_bits=64, dim_max=256, lanes=64)),
            v.source_hash(c.EngineParams(word_bits=64, dim_max=512)), v.source_hash(base, core="stub")}
    assert len(keys) == 4


def test_the_cache_key_covers_every_file_of_the_design_and_nothing_else():
    files = v.design_files()
    assert set(v.HW_DIR.rglob("*.py")) | {v.CONTRACT} == set(files)
    assert {"core.py", "top.py", "verilog.py", "contract.py"} <= {p.name for p in files}
    assert all(p.is_relative_to(v.HW_DIR) or p == v.CONTRACT for p in files)     # no tooling in the key


@pytest.mark.skipif(NATIVE is None,
                    reason="no native Yosys with yosys-abc on PATH (Debian's `yosys` package; `make test` installs it)")
def test_no_engine_register_is_merged_into_a_register_copy(tmp_path):
    """The engine's register copies split fan-outs only if no other register loading the
    same value is folded into them (found: the G write register merged with the update's
    copy, 2,048 flip-flops, and the stream's half flag with a beat multiplexer copy)."""
    top = v.write_verilog(c.EngineParams(), tmp_path / "top.v")
    assert merged_into_copies(top, yosys=NATIVE) == []
