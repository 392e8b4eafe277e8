# zipsgd — every target sets itself up on a fresh Debian 12 / Python 3.11 machine.
# `make demo` is the main job; `make test` runs every test.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.zipsgd-installed
W      ?= 64
DIM_MAX ?= 4096
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
	$(PY) -m zipsgd.hw.build verilog --word-bits $(W) --dim-max $(DIM_MAX)

synth: setup
	$(PY) -m zipsgd.hw.build synth --word-bits $(W) --dim-max $(DIM_MAX)

timing: setup
	$(PY) -m zipsgd.hw.build timing --word-bits $(W) --dim-max $(DIM_MAX)

bitstream: setup
	$(MAKE) -C bitstreams BOARD=$(BOARD) PY=$(abspath $(PY))

clean:
	rm -rf build .pytest_cache .hypothesis

distclean: clean
	rm -rf $(VENV) .iverilog-ok
