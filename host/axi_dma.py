"""The AXI DMA's memory-to-stream channel in direct-register mode, as Xilinx PG021 defines it.

The one home of the DMA's register offsets and bits on the host side: the simulated
board's DMA model (``sim/sim_board.v``) implements them, the simulated board drives them
(:class:`Mm2s`), and the PYNQ board uses them beside PYNQ's own driver to read the error
bits and to reset the channel after a failed job.

Out of reset the channel is halted (``DMASR.Halted`` = 1) and **not idle**
(``DMASR.Idle`` = 0): Idle rises only when a transfer completes, so a driver must not wait
for Idle before its first transfer (PYNQ's ``_SDMAChannel`` keeps a first-transfer flag
for this).
"""

from __future__ import annotations

from .driver import DriverError

#: MM2S register offsets (bytes from the DMA's base address).
DMACR, DMASR, SA, SA_MSB, LENGTH = 0x00, 0x04, 0x18, 0x1C, 0x28

#: MM2S_DMACR bits.
CR_RS, CR_RESET, CR_IOC_IRQ_EN, CR_ERR_IRQ_EN = 1 << 0, 1 << 2, 1 << 12, 1 << 14

#: MM2S_DMASR bits.
SR_HALTED, SR_IDLE, SR_IOC_IRQ, SR_ERR_IRQ = 1 << 0, 1 << 1, 1 << 12, 1 << 14
SR_ERRORS = {
    1 << 4: "DMAIntErr (internal error: a zero LENGTH, or a stream that ended early)",
    1 << 5: "DMASlvErr (slave error: the memory refused a read)",
    1 << 6: "DMADecErr (decode error: the source address is not mapped to memory)",
}
SR_ERROR_MASK = sum(SR_ERRORS)


class DmaError(DriverError):
    """The DMA reported an error (the message names the DMASR error bits)."""


def error_text(dmasr: int) -> str:
    """The DMASR error bits set in ``dmasr``, named; empty when there is none."""
    return "; ".join(text for bit, text in SR_ERRORS.items() if dmasr & bit)


def check(dmasr: int, where: str) -> None:
    """Raise :class:`DmaError` naming the error bits of ``dmasr`` if any is set."""
    if dmasr & SR_ERROR_MASK:
        raise DmaError(f"{where}: DMA MM2S_DMASR 0x{dmasr:08X}: {error_text(dmasr)}")


class Mm2s:
    """A driver of the MM2S channel over 32-bit register accesses.

    Parameters
    ----------
    read, write : callables
        ``read(offset) -> int`` and ``write(offset, value)`` on the DMA's registers.
    max_bytes : int
        Largest transfer (``2**c_sg_length_width - 1``).
    """

    #: DMACR polls before a reset or a start is declared stuck.
    POLLS = 64

    def __init__(self, read, write, max_bytes: int):
        self.read, self.write, self.max_bytes = read, write, max_bytes
        self.started = False

    def start(self) -> None:
        """Run the channel (interrupts on completion and on error enabled)."""
        self.write(DMACR, CR_RS | CR_IOC_IRQ_EN | CR_ERR_IRQ_EN)
        for _ in range(self.POLLS):
            sr = self.read(DMASR)
            check(sr, "starting the DMA")
            if not sr & SR_HALTED:
                self.started = True
                return
        raise DmaError(f"the DMA stayed halted after RS was set (MM2S_DMASR 0x{sr:08X})")

    def transfer(self, address: int, nbytes: int) -> None:
        """Start one transfer of ``nbytes`` from physical ``address`` (the channel must not be busy)."""
        if not 0 < nbytes <= self.max_bytes:
            raise ValueError(f"a DMA transfer holds 1 to {self.max_bytes} bytes, not {nbytes}")
        if not self.started:
            self.start()
        self.write(DMASR, SR_IOC_IRQ | SR_ERR_IRQ)          # clear the last completion
        self.write(SA, address & 0xFFFFFFFF)
        self.write(SA_MSB, address >> 32)
        self.write(LENGTH, nbytes)

    def status(self) -> int:
        return self.read(DMASR)

    def reset(self) -> None:
        """Abort whatever is in flight and return the channel to its reset state (halted)."""
        self.write(DMACR, CR_RESET)
        for _ in range(self.POLLS):
            if not self.read(DMACR) & CR_RESET:
                break
        else:
            raise DmaError("the DMA's soft reset did not complete (MM2S_DMACR.Reset stayed 1)")
        sr = self.read(DMASR)
        if not sr & SR_HALTED:
            raise DmaError(f"the DMA is not halted after its reset (MM2S_DMASR 0x{sr:08X})")
        self.started = False
