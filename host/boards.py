"""Target boards: the one table the bitstream flow, the driver and the benchmarks read."""

from __future__ import annotations

from dataclasses import dataclass

from .contract import default_lanes


@dataclass(frozen=True)
class BoardSpec:
    """A PYNQ board the engine is built for.

    Parameters
    ----------
    name : str
        Board name used by ``make bitstream BOARD=...`` and ``backend='pynq'``.
    part : str
        Xilinx part.
    board_part : str
        Vivado board-file id (used when the board files are installed).
    ps : str
        'zynq7' (processing_system7) or 'zynqmp' (zynq_ultra_ps_e).
    word_bits : int
        Stream width W: the PS-PL data port width of the board.
    clock_mhz : float
        Engine clock the build targets.
    ddr_gbytes_per_s : float
        Peak PS DDR bandwidth (memory limit of the data stream).
    resources : dict
        LUT, FF, DSP and BRAM36 of the part.
    engine_addr, dma_addr : int
        Where the block design maps the engine's register window and the DMA's control
        registers on the PS master port (the TCL assigns them; the test ``.hwh`` carries them).
    lanes : int
        Engine datapath lanes (``EngineParams.lanes``): ``W/2`` fits the xc7z020 (1-bit
        single/nearest at half rate), ``W`` runs every mode at one beat per cycle.
    """

    name: str
    part: str
    board_part: str
    ps: str
    word_bits: int
    clock_mhz: float
    ddr_gbytes_per_s: float
    resources: dict
    engine_addr: int
    dma_addr: int
    lanes: int = 0

    def __post_init__(self):
        if not self.lanes:
            object.__setattr__(self, "lanes", default_lanes(self.word_bits))


_Z7020 = {"LUT": 53_200, "FF": 106_400, "DSP": 220, "BRAM36": 140}

BOARDS = {
    b.name: b for b in (
        BoardSpec("pynq-z1", "xc7z020clg400-1", "www.digilentinc.com:pynq-z1:part0:1.0", "zynq7", 64, 150.0, 2.1,
                  _Z7020, 0x43C0_0000, 0x4040_0000),
        BoardSpec("pynq-z2", "xc7z020clg400-1", "tul.com.tw:pynq-z2:part0:1.0", "zynq7", 64, 150.0, 2.1, _Z7020,
                  0x43C0_0000, 0x4040_0000),
        BoardSpec("zcu104", "xczu7ev-ffvc1156-2-e", "xilinx.com:zcu104:part0:1.0", "zynqmp", 128, 250.0, 19.2,
                  {"LUT": 230_400, "FF": 460_800, "DSP": 1_728, "BRAM36": 312}, 0xA000_0000, 0xA001_0000,
                  lanes=128),
    )
}

#: Name of the Vivado block-design wrapper module around zipsgd_top (an RTL module reference).
BD_MODULE = "zipsgd"
#: VLNV under which the engine appears in the overlay's .hwh (PYNQ binds its driver to it).
ENGINE_VLNV = f"xilinx.com:module_ref:{BD_MODULE}:1.0"
#: Instance names in the block design: PYNQ exposes them as ``overlay.<name>``.
ENGINE_NAME = "zipsgd_0"
DMA_NAME = "axi_dma_0"
#: Width of the AXI DMA's length register (``c_sg_length_width``, 8..26): one transfer
#: holds at most 2**DMA_LENGTH_WIDTH - 1 bytes (PYNQ's ``buffer_max_size``).
DMA_LENGTH_WIDTH = 26
#: Vivado release the TCL is written for.
VIVADO_VERSION = "2022.1"


def board(name: str) -> BoardSpec:
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}: choose one of {sorted(BOARDS)}") from None
