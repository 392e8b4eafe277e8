"""The simulated board as a PYNQ device: the unmodified ``pynq`` package drives the engine's RTL.

:class:`SimPynqDevice` is a ``pynq.Device`` with PYNQ's ``REGISTER_RW`` capability, the
kind of device PYNQ itself uses where it cannot map registers into memory. With it,
PYNQ's ``Overlay`` parses the design's ``.hwh`` (:mod:`zipsgd.sim.hwh`), binds its
drivers (``ZipsgdIP`` by the engine's VLNV, its own ``pynq.lib.dma.DMA`` by the DMA's),
reads and sets the PL clock through the processing system's clock registers, and
``pynq.allocate`` hands out buffers — and :class:`zipsgd.pynq_board.PynqBoard`, the code a
PYNQ board runs, drives the engine's RTL under Verilator through all of it.

What the device serves, by physical address:

- the engine's register window and the AXI DMA's: AXI4-Lite transactions on the simulated
  board (``sim/sim_board.v``), through :class:`zipsgd.sim.board.CocotbBoard`;
- the processing system's clock registers (Zynq-7000 SLCR, Zynq UltraScale+ CRL/CRF):
  a register file with the PLLs' reset values, so ``pynq.Clocks`` reads and sets the PL
  clock as on a board;
- anything else: a bus error (``pynq`` has no business there).

Buffers are ``pynq.buffer.PynqBuffer`` objects at physical addresses of the board memory;
``flush()`` copies a buffer's bytes into that memory (data not flushed never reaches the
DMA, as on a board with caches), ``invalidate()`` does nothing (the engine never writes
memory), and freeing a buffer returns its space to the allocator. Loading a bitstream
(``Overlay(..., download=True)``) resets the programmable logic: the engine and the DMA.
"""

from __future__ import annotations

import functools
import struct

import numpy as np

#: Processing-system clock registers: (base address, size) per architecture, and the
#: reset values PYNQ's ``Clocks`` reads the PL clock from (IO PLL 1000 MHz on Zynq-7000,
#: 50 MHz reference x 20; 1500 MHz on Zynq UltraScale+, 33.333 MHz x 90 / 2; PL clock 0 = 100 MHz).
PS_REGS = {
    "armv7l": {0xF800_0000 + 0x108: 20 << 12,                              # IO_PLL_CTRL: PLL_FDIV 20
               0xF800_0000 + 0x100: 40 << 12, 0xF800_0000 + 0x104: 32 << 12,
               0xF800_0000 + 0x120: (2 << 8) | (0 << 4),
               **{0xF800_0000 + 0x170 + 0x10 * i: (1 << 20) | (10 << 8) for i in range(4)}},
    "aarch64": {0xFF5E_0000 + 0x20: 90 << 8 | 1 << 16,                      # IOPLL_CTRL: FBDIV 90, DIV2
                0xFF5E_0000 + 0x30: 45 << 8 | 1 << 16,
                **{0xFF5E_0000 + 0xC0 + 4 * i: (1 << 24) | (1 << 16) | (15 << 8) for i in range(4)},
                0xFD1A_0000 + 0x20: 72 << 8 | 1 << 16, 0xFD1A_0000 + 0x2C: 64 << 8 | 1 << 16,
                0xFD1A_0000 + 0x38: 64 << 8 | 1 << 16, 0xFD1A_0000 + 0x60: 1 << 8},
}
PS_WINDOWS = {"armv7l": [(0xF800_0000, 0x200)], "aarch64": [(0xFF5E_0000, 0x100), (0xFD1A_0000, 0x100)]}


@functools.cache
def _device_class():
    import pynq

    class SimPynqDevice(pynq.Device):
        """A ``pynq.Device`` served by a simulated board (see the module docstring).

        Parameters
        ----------
        board : CocotbBoard
            The running simulated board (registers, memory, time).
        spec : zipsgd.boards.BoardSpec
            The board the design is built for (addresses, processing system).
        """

        # no _probe_: PYNQ never enumerates it; tests and tools create it and pass it on
        def __init__(self, board, spec):
            super().__init__(f"zipsgd-sim:{spec.name}")
            from zipsgd.boards import DMA_RANGE, ENGINE_RANGE

            from .board import DMA_SEL

            self.board, self.spec = board, spec
            self.name = f"simulated {spec.name}"
            self.arch = "armv7l" if spec.ps == "zynq7" else "aarch64"
            self.capabilities = {"REGISTER_RW": True, "MEMORY_MAPPED": False, "CALLABLE": False}
            self.windows = [(spec.engine_addr, ENGINE_RANGE, 0), (spec.dma_addr, DMA_RANGE, DMA_SEL)]
            self.ps_regs = dict(PS_REGS[self.arch])
            self.timestamp = ""
            self.bitfile_name = ""
            self.board_clock = board        # PynqBoard waits on the board's time, not the host's
            self.dma_budget_bytes = getattr(board, "dma_budget_bytes", None)
            self.freed = []                 # physical addresses given back (tests read it)
            # pynq.Clocks keeps the clock model of the first device it served for the whole
            # process (a board has one); a new simulated board is a new processing system
            if "_real_instance" in vars(pynq.Clocks):
                del pynq.Clocks._real_instance

        # -- registers -------------------------------------------------------------------
        def _target(self, address):
            for base, size, local in self.windows:
                if base <= address < base + size:
                    return "pl", local | (address - base)
            for base, size in PS_WINDOWS[self.arch]:
                if base <= address < base + size:
                    return "ps", address
            raise RuntimeError(f"bus error: nothing at physical address 0x{address:08X} on {self.name}")

        def read_registers(self, address, length):
            out = bytearray()
            for a in range(address, address + length, 4):
                kind, local = self._target(a)
                value = self.board.read(local) if kind == "pl" else self.ps_regs.get(local, 0)
                out += struct.pack("<I", value & 0xFFFFFFFF)
            return bytes(out[:length])

        def write_registers(self, address, data):
            if len(data) % 4:
                raise RuntimeError(f"unaligned register write of {len(data)} bytes at 0x{address:08X}")
            for i, (value,) in enumerate(struct.iter_unpack("<I", bytes(data))):
                kind, local = self._target(address + 4 * i)
                if kind == "pl":
                    self.board.write(local, value)
                else:
                    self.ps_regs[local] = value

        # -- bitstream and metadata ------------------------------------------------------
        def get_bitfile_metadata(self, bitfile_name, partial=False):
            from pathlib import Path

            from pynqmetadata.frontends import Metadata
            from pynqmetadata.views.runtime import RuntimeMetadataParser

            hwh = Path(bitfile_name).with_suffix(".hwh")
            if not hwh.is_file():
                raise RuntimeError(f"{bitfile_name} has no {hwh.name} beside it")
            parser = RuntimeMetadataParser(Metadata(input=hwh))
            parser.refresh_hierarchy_dict()
            return parser

        def download(self, bitstream, parser=None):
            """'Program' the PL: reset the engine and the DMA, as loading a bitstream does."""
            self.board.reset_pl()
            self.post_download(bitstream, parser, self.name)

        # -- memory ----------------------------------------------------------------------
        def allocate(self, shape, dtype, **kwargs):
            from pynq.buffer import PynqBuffer

            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            space = self.board.allocate_bytes(nbytes)
            buf = PynqBuffer(shape, dtype, device=self, device_address=space.physical_address, bo=space,
                             coherent=False)
            buf.memory, buf.pointer, buf.return_to = space, space.physical_address, self
            return buf

        def return_pointer(self, pointer):
            self.freed.append(pointer)
            self.board.free_bytes(pointer)

        def flush(self, bo, offset, vaddr, nbytes):
            self.board.load_bytes(bo.physical_address + offset,
                                  np.ctypeslib.as_array((np.ctypeslib.ctypes.c_uint8 * nbytes).from_address(vaddr)))

        def invalidate(self, bo, offset, vaddr, nbytes):
            pass

    return SimPynqDevice


def SimPynqDevice(board, spec):
    """A :class:`pynq.Device` for the simulated ``board`` of ``spec`` (see the module docstring)."""
    return _device_class()(board, spec)
