"""Target boards: the one table the bitstream flow, the driver and the benchmarks read."""

from __future__ import annotations

from dataclasses import dataclass

from .contract import REG_SPACE_BYTES, default_lanes


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
        Engine clock: the PL clock the block design asks the PS for, the period the
        routed design must meet (the build stops on negative slack) and the one figure
        every projected time or throughput uses. A default a design of the engine's size
        should meet on that part, **assumed, not measured** while ``clock_assumed``.
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
    clock_assumed : bool
        True while ``clock_mhz`` is an assumption that no Vivado run has checked (no
        bitstream has been routed yet): 100 MHz on the xc7z020 (-1), which the engine fills
        to a large part, and 200 MHz on the xczu7ev (-2). Set it to False, with the
        figure, once a routed build has met timing at that clock.
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
    clock_assumed: bool = True

    def __post_init__(self):
        if not self.lanes:
            object.__setattr__(self, "lanes", default_lanes(self.word_bits))


_Z7020 = {"LUT": 53_200, "FF": 106_400, "DSP": 220, "BRAM36": 140}

BOARDS = {
    b.name: b for b in (
        BoardSpec("pynq-z1", "xc7z020clg400-1", "www.digilentinc.com:pynq-z1:part0:1.0", "zynq7", 64, 100.0, 2.1,
                  _Z7020, 0x43C0_0000, 0x4040_0000),
        BoardSpec("pynq-z2", "xc7z020clg400-1", "tul.com.tw:pynq-z2:part0:1.0", "zynq7", 64, 100.0, 2.1, _Z7020,
                  0x43C0_0000, 0x4040_0000),
        BoardSpec("zcu104", "xczu7ev-ffvc1156-2-e", "xilinx.com:zcu104:part0:1.1", "zynqmp", 128, 200.0, 19.2,
                  {"LUT": 230_400, "FF": 460_800, "DSP": 1_728, "BRAM36": 312}, 0xA000_0000, 0xA001_0000,
                  lanes=128),
    )
}

#: Name of the Vivado block-design wrapper module around zipsgd_top (an RTL module reference).
BD_MODULE = "zipsgd"
#: Name of the block design (``create_bd_design``). It must differ from ``BD_MODULE``:
#: Vivado generates an HDL module of the block design's name (and ``<name>_wrapper``)
#: into the same fileset as the module reference. The outputs are still ``zipsgd.bit``
#: and ``zipsgd.hwh`` (PYNQ loads a same-named pair); the build copies
#: ``<BD_DESIGN>.hwh`` to ``zipsgd.hwh``.
BD_DESIGN = "zipsgd_bd"
#: VLNV under which the engine appears in the overlay's .hwh (PYNQ binds its driver to it).
ENGINE_VLNV = f"xilinx.com:module_ref:{BD_MODULE}:1.0"
#: Instance names in the block design: PYNQ exposes them as ``overlay.<name>``.
ENGINE_NAME = "zipsgd_0"
DMA_NAME = "axi_dma_0"
#: Width of the AXI DMA's length register (``c_sg_length_width``, 8..26): one transfer
#: holds at most 2**DMA_LENGTH_WIDTH - 1 bytes (PYNQ's ``buffer_max_size``).
DMA_LENGTH_WIDTH = 26
#: Sizes of the two windows the block design maps at ``engine_addr`` and ``dma_addr``
#: (the engine's register space rounded up to the 4 KB minimum; the DMA's 64 KB).
ENGINE_RANGE = max(REG_SPACE_BYTES, 0x1000)
DMA_RANGE = 0x1_0000
#: Vivado release the TCL is written for.
VIVADO_VERSION = "2022.1"


def board(name: str) -> BoardSpec:
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}: choose one of {sorted(BOARDS)}") from None
