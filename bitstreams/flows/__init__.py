"""Synthesis, timing and bitstream flows around the engine's Verilog (tooling, not design).

``python -m zipsgd.flows {verilog,synth,timing,bitstream}`` (:mod:`.cli`; the Makefile's
``verilog``, ``synth``, ``timing`` and ``bitstream`` targets call it):

- :mod:`.yosys`: finding and running Yosys, and the passes every flow applies (register
  copies kept apart, block-RAM collisions don't-care); :func:`.yosys.merged_into_copies`.
- :mod:`.synth`: Yosys ``synth_xilinx`` resource counts against the xc7z020.
- :mod:`.ecp5`: the open-source stand-in for place and route: ``synth_ecp5``, netlist
  fix-ups, nextpnr-ecp5 on an LFE5U-85F and the parsers of its log and report.
- :mod:`.analysis`: rough timing analyses of ECP5 netlists (unplaced, and after placement).
- :mod:`.timing`: the ``make timing`` flow and its text report. The ECP5 figures are a
  relative proxy (the engine fills most of that die); the target is the Zynq, and Vivado
  gives the real numbers.
- :mod:`.vivado`, :mod:`.bitstream`: the Vivado flow's Python side (block-design wrapper,
  board variables) and the batch build of a PYNQ bitstream (``bitstreams/build.tcl``).

The engine's Verilog itself comes from :mod:`zipsgd.hw.verilog`.
"""
