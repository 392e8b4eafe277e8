"""A Vivado hardware handoff (``.hwh``) of the zipsgd block design, written from the board table.

PYNQ's ``Overlay`` learns every address, parameter and driver binding from the ``.hwh``
beside a bitstream. Vivado writes it on a real build (``bitstreams/build.tcl``); the tests
need one without Vivado, so this module writes the parts of it PYNQ reads, from the same
source of truth as the TCL: :mod:`zipsgd.boards` (part, processing system, stream width,
clock, the engine's and the DMA's addresses and instance names, the engine's VLNV, the
DMA's length width) and the contract's register window.

The design it describes is the one ``build.tcl`` builds: the processing system (Zynq-7000
``processing_system7`` or Zynq UltraScale+ ``zynq_ultra_ps_e``) whose general-purpose
master reaches the engine's AXI4-Lite window and the AXI DMA's registers; the DMA (MM2S
only, no scatter-gather) reading the PS's high-performance port and feeding the engine's
AXI4-Stream input; the engine's and the DMA's interrupts into the PS; one PL clock.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import quoteattr

from zipsgd import axi_dma
from zipsgd import contract as c
from zipsgd.boards import (BD_MODULE, DMA_LENGTH_WIDTH, DMA_NAME, DMA_RANGE, ENGINE_NAME, ENGINE_RANGE, ENGINE_VLNV,
                           BoardSpec)

DMA_VLNV = "xilinx.com:ip:axi_dma:7.1"
PS = {
    "zynq7": {"instance": "processing_system7_0", "modtype": "processing_system7",
              "vlnv": "xilinx.com:ip:processing_system7:5.5", "arch": "zynq", "master": "M_AXI_GP0",
              "slave": "S_AXI_HP0", "clk": "FCLK_CLK0", "irq": "IRQ_F2P"},
    "zynqmp": {"instance": "zynq_ultra_ps_e_0", "modtype": "zynq_ultra_ps_e",
               "vlnv": "xilinx.com:ip:zynq_ultra_ps_e:3.4", "arch": "zynquplus", "master": "M_AXI_HPM0_FPD",
               "slave": "S_AXI_HP0_FPD", "clk": "pl_clk0", "irq": "pl_ps_irq0"},
}


def _el(tag, attrs=None, children=(), indent=0):
    pad = "  " * indent
    a = "".join(f" {k}={quoteattr(str(v))}" for k, v in (attrs or {}).items())
    kids = [k for k in children if k]
    if not kids:
        return f"{pad}<{tag}{a}/>"
    return f"{pad}<{tag}{a}>\n" + "\n".join(kids) + f"\n{pad}</{tag}>"


def _params(values: dict, indent: int) -> str:
    return _el("PARAMETERS", children=[_el("PARAMETER", {"NAME": k, "VALUE": v}, indent=indent + 1)
                                       for k, v in values.items()], indent=indent)


def _port(name, direction, connections=(), indent=4, **attrs):
    conns = _el("CONNECTIONS", children=[_el("CONNECTION", {"INSTANCE": i, "PORT": p}, indent=indent + 2)
                                         for i, p in connections], indent=indent + 1) if connections else ""
    return _el("PORT", {"DIR": direction, "NAME": name, **attrs}, [conns], indent=indent)


def _bus(name, kind, vlnv, busname, params=None, portmaps=(), indent=4):
    kids = [_el("PARAMETER", {"NAME": k, "VALUE": v}, indent=indent + 1) for k, v in (params or {}).items()]
    if portmaps:
        kids.append(_el("PORTMAPS", children=[_el("PORTMAP", {"LOGICAL": lg, "PHYSICAL": ph}, indent=indent + 2)
                                              for lg, ph in portmaps], indent=indent + 1))
    return _el("BUSINTERFACE", {"BUSNAME": busname, "NAME": name, "TYPE": kind, "VLNV": vlnv}, kids, indent=indent)


def _module(instance, modtype, vlnv, children, **attrs):
    return _el("MODULE", {"FULLNAME": f"/{instance}", "INSTANCE": instance, "IPTYPE": "PERIPHERAL",
                          "IS_ENABLE": "1", "MODCLASS": "PERIPHERAL", "MODTYPE": modtype, "VLNV": vlnv, **attrs},
               children, indent=2)


def _memrange(instance, slave_bus, base, size, master):
    return _el("MEMRANGE", {"ADDRESSBLOCK": "Reg", "BASENAME": "C_BASEADDR", "BASEVALUE": f"0x{base:08X}",
                            "HIGHNAME": "C_HIGHADDR", "HIGHVALUE": f"0x{base + size - 1:08X}",
                            "INSTANCE": instance, "IS_DATA": "TRUE", "IS_INSTRUCTION": "TRUE",
                            "MASTERBUSINTERFACE": master, "MEMTYPE": "REGISTER", "SLAVEBUSINTERFACE": slave_bus},
               indent=4)


def _regblock(interface, size, registers):
    regs = [_el("REGISTER", {"NAME": name}, [
        _el("PROPERTY", {"NAME": "DESCRIPTION", "VALUE": desc}, indent=8),
        _el("PROPERTY", {"NAME": "ADDRESS_OFFSET", "VALUE": f"0x{off:X}"}, indent=8),
        _el("PROPERTY", {"NAME": "SIZE", "VALUE": "32"}, indent=8),
        _el("PROPERTY", {"NAME": "ACCESS", "VALUE": access}, indent=8),
        _el("PROPERTY", {"NAME": "IS_ENABLED", "VALUE": "true"}, indent=8),
    ], indent=7) for name, off, access, desc in registers]
    return _el("ADDRESSBLOCKS", children=[_el("ADDRESSBLOCK", {
        "ACCESS": "read-write", "INTERFACE": interface, "NAME": "Reg", "RANGE": str(size), "USAGE": "register"},
        [_el("REGISTERS", children=regs, indent=6)], indent=5)], indent=4)


def _ps_clock_params(board: BoardSpec) -> dict:
    """The PS parameters PYNQ reads for PL clock 0 (enable, source, divisors, frequency)."""
    mhz = board.clock_mhz
    if board.ps == "zynq7":
        # IO PLL at 1000 MHz; FCLK0 = 1000 / (d0 * d1)
        d0, d1 = _divisors(1000.0, mhz)
        return {"PCW_FPGA0_PERIPHERAL_FREQMHZ": f"{mhz:g}", "PCW_ACT_FPGA0_PERIPHERAL_FREQMHZ": f"{1000 / (d0 * d1):.6f}",
                "PCW_FPGA_FCLK0_ENABLE": "1", "PCW_FCLK0_PERIPHERAL_CLKSRC": "IO PLL",
                "PCW_FCLK0_PERIPHERAL_DIVISOR0": str(d0), "PCW_FCLK0_PERIPHERAL_DIVISOR1": str(d1),
                **{f"PCW_FPGA_FCLK{i}_ENABLE": "0" for i in (1, 2, 3)},
                **{f"PCW_FCLK{i}_PERIPHERAL_CLKSRC": "IO PLL" for i in (1, 2, 3)},
                **{f"PCW_FCLK{i}_PERIPHERAL_DIVISOR{j}": "1" for i in (1, 2, 3) for j in (0, 1)},
                "PCW_USE_S_AXI_HP0": "1", "PCW_S_AXI_HP0_DATA_WIDTH": str(board.word_bits),
                "PCW_USE_FABRIC_INTERRUPT": "1", "PCW_IRQ_F2P_INTR": "1"}
    # IO PLL at 1500 MHz; PL0 = 1500 / (d0 * d1)
    d0, d1 = _divisors(1500.0, mhz)
    return {"PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ": f"{mhz:g}",
            "PSU__CRL_APB__PL0_REF_CTRL__ACT_FREQMHZ": f"{1500 / (d0 * d1):.6f}",
            "PSU__FPGA_PL0_ENABLE": "1", "PSU__CRL_APB__PL0_REF_CTRL__SRCSEL": "IOPLL",
            "PSU__CRL_APB__PL0_REF_CTRL__DIVISOR0": str(d0), "PSU__CRL_APB__PL0_REF_CTRL__DIVISOR1": str(d1),
            **{f"PSU__FPGA_PL{i}_ENABLE": "0" for i in (1, 2, 3)},
            **{f"PSU__CRL_APB__PL{i}_REF_CTRL__SRCSEL": "IOPLL" for i in (1, 2, 3)},
            **{f"PSU__CRL_APB__PL{i}_REF_CTRL__DIVISOR{j}": "1" for i in (1, 2, 3) for j in (0, 1)},
            "PSU__USE__S_AXI_GP2": "1", "PSU__SAXIGP2__DATA_WIDTH": str(board.word_bits), "PSU__USE__IRQ0": "1"}


def _divisors(source_mhz: float, target_mhz: float) -> tuple[int, int]:
    """The two 6-bit PL clock divisors closest to ``target_mhz`` (as Vivado picks them)."""
    best = min(((a, b) for a in range(1, 64) for b in range(1, 64)),
               key=lambda ab: (abs(source_mhz / (ab[0] * ab[1]) - target_mhz), ab[1]))
    return best


def hwh(board: BoardSpec, design: str = "zipsgd") -> str:
    """The ``.hwh`` text of the zipsgd block design on ``board``."""
    ps = PS[board.ps]
    clk_hz = str(int(round(board.clock_mhz * 1e6)))
    clk_net = f"{ps['instance']}_{ps['clk']}"
    beat_bytes = board.word_bits // 8

    ps_module = _module(ps["instance"], ps["modtype"], ps["vlnv"], [
        _params(_ps_clock_params(board), 4),
        _el("PORTS", children=[
            _port(ps["clk"], "O", [(ENGINE_NAME, "aclk"), (DMA_NAME, "s_axi_lite_aclk")], SIGIS="clk",
                  CLKFREQUENCY=clk_hz, SIGNAME=clk_net),
            _port(ps["irq"], "I", [("irq_concat", "dout")], LEFT="1", RIGHT="0", SIGIS="INTERRUPT",
                  SENSITIVITY="LEVEL_HIGH", SIGNAME="irq_concat_dout"),
        ], indent=3),
        _el("BUSINTERFACES", children=[
            _bus(ps["master"], "MASTER", "xilinx.com:interface:aximm:1.0", f"{ps['instance']}_{ps['master']}",
                 {"DATA_WIDTH": "32", "PROTOCOL": "AXI4", "FREQ_HZ": clk_hz}),
            _bus(ps["slave"], "SLAVE", "xilinx.com:interface:aximm:1.0", f"{DMA_NAME}_M_AXI_MM2S",
                 {"DATA_WIDTH": str(board.word_bits), "PROTOCOL": "AXI4", "FREQ_HZ": clk_hz}),
        ], indent=3),
        _el("MEMORYMAP", children=[
            _memrange(DMA_NAME, "S_AXI_LITE", board.dma_addr, DMA_RANGE, ps["master"]),
            _memrange(ENGINE_NAME, "s_axil", board.engine_addr, ENGINE_RANGE, ps["master"]),
        ], indent=3),
    ], IS_PL="FALSE")

    dma_params = {
        "C_INCLUDE_SG": "0", "C_SG_LENGTH_WIDTH": str(DMA_LENGTH_WIDTH), "C_MICRO_DMA": "0",
        "C_INCLUDE_MM2S": "1", "C_INCLUDE_S2MM": "0", "C_M_AXI_MM2S_DATA_WIDTH": str(board.word_bits),
        "C_M_AXIS_MM2S_TDATA_WIDTH": str(board.word_bits), "C_INCLUDE_MM2S_DRE": "0", "C_MM2S_BURST_SIZE": "64",
        "C_ADDR_WIDTH": "32" if board.ps == "zynq7" else "64",
    }
    dma_params.update({k.lower(): v for k, v in dma_params.items()})      # Vivado writes both spellings
    dma_module = _module(DMA_NAME, "axi_dma", DMA_VLNV, [
        _regblock("S_AXI_LITE", DMA_RANGE, [
            ("MM2S_DMACR", axi_dma.DMACR, "read-write", "MM2S DMA Control Register"),
            ("MM2S_DMASR", axi_dma.DMASR, "read-write", "MM2S DMA Status Register"),
            ("MM2S_SA", axi_dma.SA, "read-write", "MM2S Source Address"),
            ("MM2S_SA_MSB", axi_dma.SA_MSB, "read-write", "MM2S Source Address (upper 32 bits)"),
            ("MM2S_LENGTH", axi_dma.LENGTH, "read-write", "MM2S Transfer Length (bytes)"),
        ]),
        _params(dma_params, 4),
        _el("PORTS", children=[
            _port("s_axi_lite_aclk", "I", [(ps["instance"], ps["clk"])], SIGIS="clk", CLKFREQUENCY=clk_hz,
                  SIGNAME=clk_net),
            _port("mm2s_introut", "O", [("irq_concat", "In1")], SIGIS="INTERRUPT", SENSITIVITY="LEVEL_HIGH",
                  SIGNAME=f"{DMA_NAME}_mm2s_introut"),
        ], indent=3),
        _el("BUSINTERFACES", children=[
            _bus("S_AXI_LITE", "SLAVE", "xilinx.com:interface:aximm:1.0", f"{ps['instance']}_{ps['master']}",
                 {"DATA_WIDTH": "32", "PROTOCOL": "AXI4LITE", "FREQ_HZ": clk_hz, "ADDR_WIDTH": "10"}),
            _bus("M_AXI_MM2S", "MASTER", "xilinx.com:interface:aximm:1.0", f"{DMA_NAME}_M_AXI_MM2S",
                 {"DATA_WIDTH": str(board.word_bits), "PROTOCOL": "AXI4", "FREQ_HZ": clk_hz,
                  "READ_WRITE_MODE": "READ_ONLY"}),
            _bus("M_AXIS_MM2S", "INITIATOR", "xilinx.com:interface:axis:1.0", f"{DMA_NAME}_M_AXIS_MM2S",
                 {"TDATA_NUM_BYTES": str(beat_bytes), "HAS_TLAST": "1", "HAS_TKEEP": "1", "FREQ_HZ": clk_hz}),
        ], indent=3),
    ])

    engine_regs = [(r.name, c.REG[r.name], {"r": "read-only", "w": "write-only"}.get(r.access, "read-write"), r.doc)
                   for r in c.REGISTERS]
    engine_module = _module(ENGINE_NAME, BD_MODULE, ENGINE_VLNV, [
        _regblock("s_axil", ENGINE_RANGE, engine_regs),
        _params({"Component_Name": f"{design}_{ENGINE_NAME}_0", "EDK_IPTYPE": "PERIPHERAL",
                 "C_BASEADDR": f"0x{board.engine_addr:08X}",
                 "C_HIGHADDR": f"0x{board.engine_addr + ENGINE_RANGE - 1:08X}"}, 4),
        _el("PORTS", children=[
            _port("aclk", "I", [(ps["instance"], ps["clk"])], SIGIS="clk", CLKFREQUENCY=clk_hz, SIGNAME=clk_net),
            _port("irq", "O", [("irq_concat", "In0")], SIGIS="INTERRUPT", SENSITIVITY="LEVEL_HIGH",
                  SIGNAME=f"{ENGINE_NAME}_irq"),
        ], indent=3),
        _el("BUSINTERFACES", children=[
            _bus("s_axil", "SLAVE", "xilinx.com:interface:aximm:1.0", f"{ps['instance']}_{ps['master']}",
                 {"DATA_WIDTH": "32", "PROTOCOL": "AXI4LITE", "FREQ_HZ": clk_hz,
                  "ADDR_WIDTH": str(c.REG_ADDR_BITS)}),
            _bus("s_axis", "TARGET", "xilinx.com:interface:axis:1.0", f"{DMA_NAME}_M_AXIS_MM2S",
                 {"TDATA_NUM_BYTES": str(beat_bytes), "HAS_TLAST": "1", "FREQ_HZ": clk_hz}),
        ], indent=3),
    ])

    concat = _el("MODULE", {"FULLNAME": "/irq_concat", "INSTANCE": "irq_concat", "IPTYPE": "PERIPHERAL",
                            "IS_ENABLE": "1", "MODCLASS": "PERIPHERAL", "MODTYPE": "xlconcat",
                            "VLNV": "xilinx.com:ip:xlconcat:2.1"}, [
        _params({"NUM_PORTS": "2"}, 4),
        _el("PORTS", children=[
            _port("In0", "I", [(ENGINE_NAME, "irq")], SIGNAME=f"{ENGINE_NAME}_irq"),
            _port("In1", "I", [(DMA_NAME, "mm2s_introut")], SIGNAME=f"{DMA_NAME}_mm2s_introut"),
            _port("dout", "O", [(ps["instance"], ps["irq"])], LEFT="1", RIGHT="0", SIGNAME="irq_concat_dout"),
        ], indent=3),
    ], indent=2)

    m = re.fullmatch(r"xc(7z\d+|zu\d+\w+?)-?([a-z]+\d+)-(\d)(?:-\w)?", board.part)
    if m is None:
        raise ValueError(f"cannot read device, package and speed grade from part {board.part!r}")
    device, package, speed = m.group(1), m.group(2), "-" + m.group(3)
    system = _el("SYSTEMINFO", {"ARCH": ps["arch"], "BOARD": board.board_part, "DEVICE": device,
                                "NAME": design, "PACKAGE": package, "SPEEDGRADE": speed}, indent=1)
    return ('<?xml version="1.0" encoding="UTF-8" standalone="no" ?>\n'
            + _el("EDKSYSTEM", {"EDWVERSION": "1.2", "VIVADOVERSION": "2022.1"}, [
                system, _el("EXTERNALPORTS", indent=1), _el("EXTERNALINTERFACES", indent=1),
                _el("MODULES", children=[ps_module, dma_module, engine_module, concat], indent=1),
            ]) + "\n")
