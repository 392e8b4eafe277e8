"""The Vivado flow checked without Vivado.

Two kinds of checks. The static ones parse bitstreams/build.tcl, the board variables
(``vivado.board_tcl``) and the wrapper Verilog: names, widths, variables, the address
map, the guards and the order of the timing check and the bitstream write. The stub
runs execute build.tcl in a plain ``tclsh`` with every Vivado command replaced by a
recording stub (skipped without ``tclsh``): they show that the script parses, which
commands it issues with the table's values, that a negative slack stops it before any
bitstream exists, and that the clock automation runs only for an unconnected clock.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zipsgd import contract as c
from zipsgd.boards import (BD_DESIGN, BD_MODULE, BOARDS, DMA_LENGTH_WIDTH, DMA_NAME, DMA_RANGE, ENGINE_NAME,
                           ENGINE_RANGE, ENGINE_VLNV, VIVADO_VERSION)
from zipsgd.flows import vivado
from zipsgd.hw.verilog import ROOT

TCL_PATH = ROOT / "bitstreams" / "build.tcl"
TCL = TCL_PATH.read_text()


def _code(tcl: str) -> str:
    """The TCL without its comment lines (comments may name anything)."""
    return "\n".join(line for line in tcl.splitlines() if not line.lstrip().startswith("#"))


CODE = _code(TCL)


def _board_vars(name: str) -> dict:
    """The variables board_tcl defines for ``name``, braces stripped."""
    text = vivado.board_tcl(BOARDS[name], ["a.v"], "/out")
    out = {}
    for m in re.finditer(r"^set (zipsgd_\w+) (.*)$", text, re.M):
        v = m.group(2).strip()
        out[m.group(1)] = v[1:-1] if v.startswith("{") and v.endswith("}") else v
    return out


def _resolve(token: str, variables: dict) -> str:
    """``$zipsgd_x`` -> its value; anything else as written."""
    m = re.fullmatch(r"\$\{?(zipsgd_\w+)\}?", token)
    assert m, f"{token!r} is not a board variable"
    return variables[m.group(1)]


def _enclosing_condition(tcl: str, pos: int) -> str | None:
    """Condition of the innermost ``if {...} {`` block around ``pos`` (None at top level)."""
    depth = 0
    for i in range(pos - 1, -1, -1):
        ch = tcl[i]
        if ch == "}":
            depth += 1
        elif ch == "{":
            if depth == 0:
                head = tcl[tcl.rfind("\n", 0, i) + 1:i].strip()
                m = re.fullmatch(r"(?:\}\s*else)?if\s+\{(.*)\}", head)
                return m.group(1) if m else head
            depth -= 1
    return None


def _lines_with(pattern: str, text: str = CODE) -> list:
    return [m for m in re.finditer(pattern, text)]


# ---- names -------------------------------------------------------------------------------------
def test_tcl_connects_exactly_the_wrapper_interfaces():
    used = set(re.findall(r"zipsgd_0/(\w+)", CODE))
    assert used == set(vivado.INTERFACES)


def test_instance_names_are_the_tables():
    cells = dict((m.group(2), m.group(1)) for m in re.finditer(
        r"create_bd_cell -type (\w+) (?:-vlnv \S+ |-reference \S+ )(\w+)\]", CODE))
    assert cells[ENGINE_NAME] == "module" and cells[DMA_NAME] == "ip"


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_block_design_and_module_names_are_distinct(name):
    v = _board_vars(name)
    [bd] = re.findall(r"^create_bd_design (\S+)$", CODE, re.M)
    [ref] = re.findall(r"create_bd_cell -type module -reference (\S+) ", CODE)
    bd, module = _resolve(bd, v), _resolve(ref, v)
    assert (bd, module) == (BD_DESIGN, BD_MODULE)
    # Vivado generates modules <bd> and <bd>_wrapper into the fileset holding <module>.
    assert module not in (bd, f"{bd}_wrapper")
    [top] = re.findall(r"set_property top (\S+) \[current_fileset\]", CODE)
    assert top == "${zipsgd_bd}_wrapper"
    # the wrapper the build adds is the one make_wrapper returns for this block design
    assert "add_files -norecurse [make_wrapper -files [get_files $zipsgd_bd.bd] -top]" in CODE


def test_engine_vlnv_is_the_wrapper_module():
    assert ENGINE_VLNV == f"xilinx.com:module_ref:{BD_MODULE}:1.0"
    for W in c.WORD_BITS_ALLOWED:
        assert re.findall(r"^module (\w+)", vivado.bd_wrapper_verilog(W), re.M) == [BD_MODULE]
    # the module-reference cell the TCL creates is that module
    assert _resolve(re.search(r"-reference (\S+) ", CODE).group(1), _board_vars("pynq-z2")) == BD_MODULE


def test_outputs_keep_the_pynq_names():
    assert "write_bitstream -force [file join $zipsgd_out zipsgd.bit]" in CODE
    assert "[file join $zipsgd_out zipsgd.hwh]" in CODE
    # the handoff Vivado writes is named after the block design
    assert "hw_handoff $zipsgd_bd.hwh" in CODE


# ---- board part --------------------------------------------------------------------------------
def test_board_parts_come_from_the_table():
    assert not re.search(r"[\w.]+:[\w.-]+:part0:[\d.]+", TCL), "a board part is written in build.tcl"
    assert "set_property board_part $zipsgd_board_part [current_project]" in CODE
    for name, spec in BOARDS.items():
        assert _board_vars(name)["zipsgd_board_part"] == spec.board_part
    assert BOARDS["zcu104"].board_part == "xilinx.com:zcu104:part0:1.1"


def test_missing_board_files_are_reported():
    m = re.search(r"if \{\[lsearch -exact \[get_board_parts -quiet\] \$zipsgd_board_part\] >= 0\} \{"
                  r"(?P<found>.*?)\n\} else \{(?P<missing>.*?)\n\}", CODE, re.S)
    assert m, "the board-part lookup has no else branch"
    assert "set_property board_part" in m.group("found")
    assert re.search(r'puts "WARNING: .*board files', m.group("missing"))
    # the PS automation asks for the board preset only when the board part is set
    assert "apply_board_preset $board_preset" in CODE
    assert "set board_preset 1" in m.group("found") and "set board_preset 0" in m.group("missing")


# ---- clock -------------------------------------------------------------------------------------
def test_clock_automation_is_guarded():
    hits = _lines_with(r"apply_bd_automation -rule xilinx\.com:bd_rule:clkrst")
    assert hits
    for h in hits:
        cond = _enclosing_condition(CODE, h.start())
        assert cond is not None, "clkrst automation runs unconditionally"
        pin = re.search(r"\[get_bd_pins (\S+)\]\s*$", CODE[h.start():CODE.index("\n", h.start())]).group(1)
        assert cond == f"[llength [get_bd_nets -quiet -of_objects [get_bd_pins {pin}]]] == 0", cond


def test_reset_connection_is_guarded():
    h = _lines_with(r"connect_bd_net \[get_bd_pins -of_objects \[get_bd_cells -filter \{VLNV =~ \*proc_sys_reset")
    assert h and _enclosing_condition(CODE, h[0].start()) == \
        "[llength [get_bd_nets -quiet -of_objects [get_bd_pins zipsgd_0/aresetn]]] == 0"


def test_wrapper_leaves_the_frequency_to_vivado():
    for W in c.WORD_BITS_ALLOWED:
        text = vivado.bd_wrapper_verilog(W)
        assert "FREQ_HZ" not in text
        assert 'ASSOCIATED_BUSIF s_axis:s_axil, ASSOCIATED_RESET aresetn"' in text


def test_engine_clock_comes_from_the_table():
    assert "CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ $zipsgd_clock_mhz" in CODE
    assert "CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ $zipsgd_clock_mhz" in CODE
    for name, spec in BOARDS.items():
        assert float(_board_vars(name)["zipsgd_clock_mhz"]) == spec.clock_mhz


def test_clocks_are_stated_assumptions():
    assert BOARDS["pynq-z1"].clock_mhz == BOARDS["pynq-z2"].clock_mhz == 100.0
    assert BOARDS["zcu104"].clock_mhz == 200.0
    readme = (ROOT / "bitstreams" / "README.md").read_text()
    for spec in BOARDS.values():
        row = next(line for line in readme.splitlines() if line.startswith(f"| {spec.name} |"))
        assert ("assumed" in row) == spec.clock_assumed, row


# ---- timing before the bitstream ---------------------------------------------------------------
def test_slack_check_precedes_the_bitstream():
    assert "-to_step write_bitstream" not in CODE       # implementation stops at route_design
    assert not re.search(r"file copy[^\n]*\.bit", CODE)  # no bitstream from the run directory
    write = CODE.index("write_bitstream")
    assert CODE.count("write_bitstream") == 1 and _enclosing_condition(CODE, write) is None
    opened = CODE.index("open_run impl_1")
    setup = CODE.index("get_timing_paths -max_paths 1 -nworst 1 -setup")
    slack = re.search(r"set (\w+) \[get_property SLACK \$setup_path\]", CODE)
    assert slack
    wns = slack.group(1)
    check = re.search(r"\nif \{\$" + wns + r" < 0\} \{\n\s*error \"(?P<msg>[^\"]*)\"", CODE)
    assert check, "no error on negative setup slack"
    assert CODE.index("wait_on_run impl_1") < opened < setup < slack.start() < check.start() < write
    msg = check.group("msg")
    assert f"${wns}" in msg and "$wns_clock" in msg and "No bitstream written" in msg
    assert re.search(r"set wns_clock \[get_property ENDPOINT_CLOCK \$setup_path\]", CODE)
    # the handoff is copied after the bitstream, so a failed build leaves neither
    assert write < CODE.index("file copy -force [lindex $hwh 0]")
    assert CODE.index("file delete -force [file join $zipsgd_out zipsgd.bit]") < CODE.index("create_project")


# ---- addresses and the DMA ---------------------------------------------------------------------
def test_addresses_and_dma_width_come_from_the_board_variables():
    for seg, addr, rng in (("zipsgd_0/s_axil/reg0", "zipsgd_engine_addr", "zipsgd_engine_range"),
                           ("axi_dma_0/S_AXI_LITE/Reg", "zipsgd_dma_addr", "zipsgd_dma_range")):
        pat = (rf"assign_bd_address -offset \${addr} -range \${rng} \\\n\s*-target_address_space \$ps_space "
               rf"\[get_bd_addr_segs {re.escape(seg)}\] -force")
        assert re.search(pat, CODE), seg
    assert re.search(r"CONFIG\.c_sg_length_width \$zipsgd_dma_length_width ", CODE)
    assert not re.search(r"0x[0-9A-Fa-f]+", CODE), "an address is written in build.tcl"
    for name, spec in BOARDS.items():
        v = _board_vars(name)
        assert int(v["zipsgd_engine_addr"], 16) == spec.engine_addr
        assert int(v["zipsgd_dma_addr"], 16) == spec.dma_addr
        assert int(v["zipsgd_engine_range"], 16) == ENGINE_RANGE >= c.REG_SPACE_BYTES
        assert int(v["zipsgd_dma_range"], 16) == DMA_RANGE
        assert int(v["zipsgd_dma_length_width"]) == DMA_LENGTH_WIDTH


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_address_windows_are_aligned_and_apart(name):
    spec = BOARDS[name]
    assert spec.engine_addr % ENGINE_RANGE == 0 and spec.dma_addr % DMA_RANGE == 0
    windows = sorted([(spec.engine_addr, ENGINE_RANGE), (spec.dma_addr, DMA_RANGE)])
    assert windows[0][0] + windows[0][1] <= windows[1][0]
    assert 8 <= DMA_LENGTH_WIDTH <= 26


def test_tcl_variables_are_all_defined_by_the_board_file():
    spec = BOARDS["pynq-z2"]
    defined = set(re.findall(r"^set (zipsgd_\w+)", vivado.board_tcl(spec, ["a.v"], "/tmp/x"), re.M))
    used = set(re.findall(r"\$\{?(zipsgd_\w+)", CODE)) - set(re.findall(r"^\s*set (zipsgd_\w+)", CODE, re.M))
    assert used <= defined, used - defined
    assert {"zipsgd_engine_addr", "zipsgd_dma_addr", "zipsgd_dma_length_width", "zipsgd_bd",
            "zipsgd_module", "zipsgd_engine_range"} <= used


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_board_file_carries_the_board_table(name):
    spec = BOARDS[name]
    text = vivado.board_tcl(spec, ["x.v"], "/out")
    assert f"set zipsgd_word_bits {spec.word_bits}" in text
    assert f"set zipsgd_part {{{spec.part}}}" in text
    assert f"set zipsgd_engine_range 0x{ENGINE_RANGE:X}" in text


def test_bitstream_readme_matches_board_table():
    readme = (ROOT / "bitstreams" / "README.md").read_text()
    for spec in BOARDS.values():
        row = next(line for line in readme.splitlines() if line.startswith(f"| {spec.name} |"))
        cells = [x.strip() for x in row.strip("|").split("|")]
        assert cells[1] == spec.part and cells[3] == str(spec.word_bits)
        assert cells[4].split(" (")[0] == f"{spec.clock_mhz:g} MHz"
        assert cells[6] == f"0x{spec.engine_addr:08X}" and cells[7] == f"0x{spec.dma_addr:08X}"
        assert cells[8] == str(spec.lanes)
        assert cells[9] == f"`{spec.board_part}`"


def _ports(verilog: str, module: str) -> dict:
    body = verilog.split(f"module {module}(", 1)[-1].split(f"module {module} (", 1)[-1].split("endmodule", 1)[0]
    out = {}
    for m in re.finditer(r"^[ \t]*(input|output)[ \t]+(?:wire[ \t]+|reg[ \t]+)?(?:\[(\d+):0\][ \t]+)?(\w+)[ \t]*[;,]?", body, re.M):
        out[m.group(3)] = (m.group(1), int(m.group(2)) + 1 if m.group(2) else 1)
    return out


@pytest.mark.parametrize("W", c.WORD_BITS_ALLOWED)
def test_wrapper_ports_match_the_engine_top(W, tmp_path):
    from zipsgd.hw.verilog import write_verilog

    top = Path(write_verilog(c.EngineParams(word_bits=W, dim_max=256), tmp_path / "top.v")).read_text()
    top_ports = _ports(top, vivado.TOP)
    wrap_ports = _ports(vivado.bd_wrapper_verilog(W), BD_MODULE)
    assert wrap_ports == top_ports
    assert {n: w for n, (_, w) in top_ports.items()} == vivado.port_widths(W)
    assert {n for n, (d, _) in top_ports.items() if d == "output"} == vivado.OUTPUTS


def test_without_vivado_the_build_stops_with_a_clear_message(tmp_path):
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "zipsgd.flows", "bitstream", "--board", "pynq-z2", "--out",
                          str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2
    assert "no `vivado` on PATH" in out.stderr and VIVADO_VERSION in out.stderr
    assert "assumed" in out.stderr and "100 MHz" in out.stderr
    assert not (tmp_path / "o").exists()      # nothing half-written


def test_a_dry_run_writes_the_sources_and_the_board_variables(tmp_path):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))
    out = subprocess.run([sys.executable, "-m", "zipsgd.flows", "bitstream", "--board", "pynq-z2", "--dry-run",
                          "--dim-max", "256", "--out", str(tmp_path / "o")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    src = tmp_path / "o" / "src"
    assert sorted(p.name for p in src.iterdir()) == sorted(["zipsgd_top.v", f"{BD_MODULE}.v", "board_vars.tcl"])
    assert re.findall(r"^module (\w+)", (src / f"{BD_MODULE}.v").read_text(), re.M) == [BD_MODULE]
    assert f"set zipsgd_out {{{(tmp_path / 'o').resolve()}}}" in (src / "board_vars.tcl").read_text()
    assert not (tmp_path / "o" / "zipsgd.bit").exists()


# ---- build.tcl run in tclsh with Vivado's commands stubbed -------------------------------------
TCLSH = shutil.which("tclsh")
needs_tclsh = pytest.mark.skipif(TCLSH is None, reason="tclsh is not installed (Debian's `tcl`; "
                                 "`make test` installs it)")

#: Vivado's commands as recording stubs. Unknown commands are logged and return "";
#: the few whose results the script branches on answer from environment variables.
STUBS = r"""
set ::stub_log [open $::env(STUB_LOG) w]
proc stub_record {args} { puts $::stub_log $args; flush $::stub_log }
proc unknown {args} {
    stub_record {*}$args
    # get_* answers with the object it was asked for, every other command with ""
    if {[string match get_* [lindex $args 0]]} { return [lindex $args end] }
    return ""
}
proc get_board_parts {args} { stub_record get_board_parts {*}$args; return $::env(STUB_BOARD_PARTS) }
proc get_bd_pins {args} { stub_record get_bd_pins {*}$args; return [lindex $args end] }
proc get_bd_nets {args} {
    stub_record get_bd_nets {*}$args
    if {[lsearch -exact $::env(STUB_CONNECTED) [lindex $args end]] >= 0} { return net }
    return ""
}
proc get_timing_paths {args} {
    stub_record get_timing_paths {*}$args
    if {[lsearch -exact $args -hold] >= 0} { return hold_path }
    return setup_path
}
proc get_property {name obj} {
    stub_record get_property $name $obj
    switch -- $name {
        SLACK { if {$obj eq "setup_path"} { return $::env(STUB_WNS) } else { return 0.021 } }
        ENDPOINT_CLOCK { return clk_fpga_0 }
        PROGRESS { return 100% }
        CONFIG.FREQ_HZ { return $::env(STUB_FREQ_HZ) }
        default { return "" }
    }
}
proc make_wrapper {args} { stub_record make_wrapper {*}$args; return /gen/wrapper.v }
proc launch_runs {args} {
    stub_record launch_runs {*}$args
    # Vivado writes the hardware handoff while it generates the block design's outputs.
    set d [file join $::proj_dir $::proj_name.gen sources_1 bd $::zipsgd_bd hw_handoff]
    file mkdir $d
    close [open [file join $d $::zipsgd_bd.hwh] w]
}
proc write_bitstream {args} { stub_record write_bitstream {*}$args; close [open [lindex $args end] w] }
source [lindex $argv 1]
"""


def _stub_run(tmp_path, board="pynq-z2", wns="0.125", connected=("zipsgd_0/aclk", "zipsgd_0/aresetn"),
              board_files=True, freq_hz=None):
    spec = BOARDS[board]
    out = tmp_path / "out"
    out.mkdir()
    (out / "zipsgd.bit").write_text("an earlier build")     # must not survive a failed build
    variables = tmp_path / "board_vars.tcl"
    variables.write_text(vivado.board_tcl(spec, [str(tmp_path / "zipsgd_top.v")], str(out)))
    stubs = tmp_path / "stubs.tcl"
    stubs.write_text(STUBS)
    log = tmp_path / "log.txt"
    env = dict(os.environ, STUB_LOG=str(log), STUB_WNS=wns, STUB_CONNECTED=" ".join(connected),
               STUB_BOARD_PARTS=f"{spec.board_part} other:board:part0:1.0" if board_files else "other:board:part0:1.0",
               STUB_FREQ_HZ=str(freq_hz if freq_hz is not None else int(spec.clock_mhz * 1e6)))
    r = subprocess.run([TCLSH, str(stubs), str(variables), str(TCL_PATH)], capture_output=True, text=True,
                       env=env, timeout=60, cwd=tmp_path)
    calls = log.read_text().splitlines() if log.exists() else []
    return r, calls, out


def _index(calls, prefix):
    return next(i for i, line in enumerate(calls) if line.startswith(prefix))


@needs_tclsh
@pytest.mark.parametrize("board", sorted(BOARDS))
def test_stub_build_meeting_timing_writes_the_pair(tmp_path, board):
    spec = BOARDS[board]
    r, calls, out = _stub_run(tmp_path, board)
    assert r.returncode == 0, r.stderr
    assert (out / "zipsgd.bit").read_text() == "" and (out / "zipsgd.hwh").exists()
    assert "WARNING" not in r.stdout
    text = "\n".join(calls)
    assert f"create_bd_design {BD_DESIGN}" in calls
    assert f"create_bd_cell -type module -reference {BD_MODULE} {ENGINE_NAME}" in calls
    assert f"set_property board_part {spec.board_part} " in text
    assert not any("bd_rule:clkrst" in line for line in calls)      # aclk was already connected
    assert (f"assign_bd_address -offset 0x{spec.engine_addr:08X} -range 0x{ENGINE_RANGE:X} -target_address_space "
            f"ps/Data zipsgd_0/s_axil/reg0 -force") in calls
    assert (f"assign_bd_address -offset 0x{spec.dma_addr:08X} -range 0x{DMA_RANGE:X} -target_address_space "
            f"ps/Data axi_dma_0/S_AXI_LITE/Reg -force") in calls
    assert f"CONFIG.c_sg_length_width {DMA_LENGTH_WIDTH}" in text
    assert f"{spec.clock_mhz:g}" in next(line for line in calls if "FREQMHZ" in line)
    assert "launch_runs impl_1 -jobs 2" in calls
    assert _index(calls, "get_property SLACK setup_path") < _index(calls, "write_bitstream")
    assert f"write_bitstream -force {out / 'zipsgd.bit'}" in calls


@needs_tclsh
def test_stub_build_failing_timing_stops_without_a_bitstream(tmp_path):
    r, calls, out = _stub_run(tmp_path, wns="-0.412")
    assert r.returncode != 0
    assert "timing not met" in r.stderr and "-0.412 ns" in r.stderr and "clk_fpga_0" in r.stderr
    assert "No bitstream written" in r.stderr
    assert not any(line.startswith("write_bitstream") for line in calls)
    assert not (out / "zipsgd.bit").exists() and not (out / "zipsgd.hwh").exists()


@needs_tclsh
def test_stub_build_connects_an_unconnected_clock_and_warns(tmp_path):
    spec = BOARDS["pynq-z2"]
    r, calls, out = _stub_run(tmp_path, connected=(), board_files=False, freq_hz=142_857_132)
    assert r.returncode == 0, r.stderr
    assert "apply_bd_automation -rule xilinx.com:bd_rule:clkrst -config {Clk Auto} zipsgd_0/aclk" in calls
    assert any(line.startswith("connect_bd_net") and line.endswith("zipsgd_0/aresetn") for line in calls)
    assert f"WARNING: zipsgd: board files for {spec.board_part} are not installed" in r.stdout
    assert not any(line.startswith("set_property board_part") for line in calls)
    assert any("apply_board_preset 0" in line for line in calls)
    assert "WARNING: zipsgd: the PS delivers 142.857132 MHz" in r.stdout
