"""``make synth`` and the Yosys passes every flow applies (:mod:`zipsgd.flows.synth`, :mod:`zipsgd.flows.yosys`).

The parser runs on a real Yosys log; the live tests push tiny designs through Debian's
Yosys (``make test`` installs it). The engine itself is checked in tests/test_hw_verilog.py.
"""

import pytest
from flow_samples import COUNTER, NATIVE, XILINX_STAT, needs_yosys, numbers, report_line, words

from zipsgd.flows import synth as s
from zipsgd.flows import yosys as y
from zipsgd.flows.ecp5 import synth_ecp5


def test_parse_stat_counts_lut_sites_of_lut_ram_and_the_last_stat_block():
    res = s.parse_stat(XILINX_STAT)
    assert res["cells"]["FDRE"] == 67 and res["cells"]["RAM64M"] == 3
    assert (res["LUT_logic"], res["LUT_ram"], res["LUT_srl"]) == (26, 12, 0)   # RAM64M = 4 LUT6 sites
    assert res["LUT"] == 38
    assert (res["FF"], res["DSP"], res["BRAM"], res["gates"]) == (67, 4, 0.5, 0)


def test_resource_report_gives_each_count_against_the_xc7z020():
    res = {**s.parse_stat(XILINX_STAT), "seconds": 3.0, "tool": "Yosys 0.23"}
    util = s.utilisation(res)
    assert util["LUT"] == (38, 53_200, pytest.approx(100 * 38 / 53_200))
    assert util["BRAM"] == (0.5, 140, pytest.approx(100 * 0.5 / 140))
    text = s.report(res)
    assert numbers(report_line(text, "LUT"))[:5] == [38, 53_200, pytest.approx(0.1), 26, 12]
    assert numbers(report_line(text, "FF"))[:2] == [67, 106_400]
    assert numbers(report_line(text, "DSP"))[:2] == [4, 220]
    assert numbers(report_line(text, "BRAM"))[:2] == [0.5, 140]
    said = words(text)
    assert "26 logic + 12 LUT-RAM + 0 SRL" in said and "3 RAM64M" in said and "Yosys 0.23, 3 s" in said


def test_report_without_lut_mapping_says_why():
    res = s.parse_stat(XILINX_STAT)
    text = s.report({**res, "LUT": None, "gates": 1234})
    assert s.utilisation({**res, "LUT": None})["LUT"] == (None, 53_200, None)
    line = words(report_line(text, "LUT"))
    assert line.startswith("LUT n/a / 53200") and "1234 logic gates" in line


@needs_yosys
def test_native_yosys_maps_luts_on_a_tiny_design(tmp_path):
    assert y.abc_works(NATIVE)
    (tmp_path / "t.v").write_text(COUNTER)
    text = y.run_yosys(f"read_verilog {tmp_path / 't.v'}; synth_xilinx -family xc7 -flatten -top t; stat", NATIVE)
    res = s.parse_stat(text)
    assert res["LUT"] > 0 and res["FF"] >= 24 and res["DSP"] == 1


def test_a_yosys_that_cannot_run_is_not_taken_for_one_with_abc(tmp_path):
    assert y.abc_works(str(tmp_path / "no-such-yosys")) is False


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
    syn = synth_ecp5(tmp_path / "t.v", tmp_path / "t.json", tmp_path / "y.log", top="t", yosys=NATIVE)
    assert syn["cells"]["TRELLIS_FF"] == 8
    plain = y.run_yosys(f"read_verilog {tmp_path / 't.v'}; synth_ecp5 -top t; stat", NATIVE)
    assert y.parse_cells(plain)["TRELLIS_FF"] == 4
    kept = y.run_yosys(f"read_verilog {tmp_path / 't.v'}; {y.KEEP_COPIES}; "
                       f"synth_xilinx -family xc7 -flatten -top t; stat", NATIVE)
    assert s.parse_stat(kept)["FF"] == 8


KEEP_AND_PLAIN = KEEP_TWICE.replace("output [3:0] z);", "output [3:0] z, output [3:0] w);").replace(
    "  always", "  reg [3:0] r3;\n  always @(posedge clk) r3 <= a ^ 4'h5;\n  assign w = r3 + 2;\n  always")


@needs_yosys
def test_a_plain_register_next_to_a_copy_is_found_merged_into_it(tmp_path):
    """Yosys folds a plain register into a kept copy that loads the same value (so the copy
    drives both fan-outs); the check names the pair, and finds none between kept copies."""
    (tmp_path / "t.v").write_text(KEEP_AND_PLAIN)
    ((copy, merged),) = y.merged_into_copies(tmp_path / "t.v", top="t", yosys=NATIVE)
    assert merged == "r3" and copy in ("r1", "r2")
    (tmp_path / "k.v").write_text(KEEP_TWICE)
    assert y.merged_into_copies(tmp_path / "k.v", top="t", yosys=NATIVE) == []
