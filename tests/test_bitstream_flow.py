"""The Vivado flow checked without Vivado: names, widths, variables and the address window."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from zipsgd import contract as c
from zipsgd.boards import BD_MODULE, BOARDS, VIVADO_VERSION
from zipsgd.hw import vivado

ROOT = Path(__file__).resolve().parents[1]
TCL = (ROOT / "bitstreams" / "build.tcl").read_text()


def test_tcl_connects_exactly_the_wrapper_interfaces():
    used = set(re.findall(r"zipsgd_0/(\w+)", TCL))
    assert used == set(vivado.INTERFACES)


def test_tcl_variables_are_all_defined_by_the_board_file():
    spec = BOARDS["pynq-z2"]
    defined = set(re.findall(r"^set (zipsgd_\w+)", vivado.board_tcl(spec, ["a.v"], "/tmp/x"), re.M))
    used = set(re.findall(r"\$(zipsgd_\w+)", TCL)) - set(re.findall(r"^\s*set (zipsgd_\w+)", TCL, re.M))
    assert used <= defined, used - defined
    assert "zipsgd_reg_bytes" in used          # the register window comes from the contract


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_board_file_carries_the_board_table(name):
    spec = BOARDS[name]
    text = vivado.board_tcl(spec, ["x.v"], "/out")
    assert f"set zipsgd_word_bits {spec.word_bits}" in text
    assert f"set zipsgd_part {{{spec.part}}}" in text
    assert f"set zipsgd_reg_bytes {c.REG_SPACE_BYTES}" in text


def test_bitstream_readme_matches_board_table():
    readme = (ROOT / "bitstreams" / "README.md").read_text()
    for spec in BOARDS.values():
        row = next(line for line in readme.splitlines() if line.startswith(f"| {spec.name} |"))
        cells = [x.strip() for x in row.strip("|").split("|")]
        assert cells[1] == spec.part and cells[3] == str(spec.word_bits)
        assert cells[4] == f"{spec.clock_mhz:g} MHz"
        assert cells[6] == str(spec.lanes)


def _ports(verilog: str, module: str) -> dict:
    body = verilog.split(f"module {module}(", 1)[-1].split(f"module {module} (", 1)[-1].split("endmodule", 1)[0]
    out = {}
    for m in re.finditer(r"^[ \t]*(input|output)[ \t]+(?:wire[ \t]+|reg[ \t]+)?(?:\[(\d+):0\][ \t]+)?(\w+)[ \t]*[;,]?", body, re.M):
        out[m.group(3)] = (m.group(1), int(m.group(2)) + 1 if m.group(2) else 1)
    return out


@pytest.mark.parametrize("W", c.WORD_BITS_ALLOWED)
def test_wrapper_ports_match_the_engine_top(W, tmp_path):
    from zipsgd.hw.build import write_verilog

    top = Path(write_verilog(c.EngineParams(word_bits=W, dim_max=256), tmp_path / "top.v")).read_text()
    top_ports = _ports(top, vivado.TOP)
    wrap_ports = _ports(vivado.bd_wrapper_verilog(W, 150.0), BD_MODULE)
    assert wrap_ports == top_ports
    assert {n: w for n, (_, w) in top_ports.items()} == vivado.port_widths(W)
    assert {n for n, (d, _) in top_ports.items() if d == "output"} == vivado.OUTPUTS


def test_without_vivado_the_build_stops_with_a_clear_message(tmp_path):
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "zipsgd.hw.bitstream", "--board", "pynq-z2", "--out",
                          str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2
    assert "no `vivado` on PATH" in out.stderr and VIVADO_VERSION in out.stderr
    assert not (tmp_path / "o").exists()      # nothing half-written
