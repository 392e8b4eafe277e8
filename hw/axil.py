"""AXI4-Lite slave that turns bus transactions into a simple register bus.

The slave accepts one transaction at a time (32-bit data, byte addresses of
``contract.REG_ADDR_BITS`` bits). Write address and write data may arrive in
any order (or together); reads and writes are served one after the other, a
write first when both are ready. Every response is OKAY: unmapped addresses read
0 and ignore writes (that is decided by the register block behind the bus).

Register bus (all in the ``sync`` domain, seen from the register block):

``bus_addr``
    Word-aligned byte address of the current transaction (valid with a strobe; a
    register, loaded by the address handshake).
``w_stb``, ``w_data``, ``w_strb``
    One-cycle write strobe with data and byte enables. A write always completes in
    that cycle.
``r_stb``
    Read request: high from the cycle after the AR handshake until the register
    block answers with ``r_ack``.
``r_ack``, ``r_data``
    The register block's answer (combinational, may be given in the first
    ``r_stb`` cycle or held off for wait states). ``r_data`` is sampled with
    ``r_ack``; the read has side effects (if any) in exactly that cycle.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from zipsgd.contract import REG_ADDR_BITS

#: AXI response code OKAY.
RESP_OKAY = 0


class AxiLiteSlave(wiring.Component):
    """AXI4-Lite slave front end (flat AXI-named members plus a register bus).

    Parameters
    ----------
    addr_bits : int
        Byte address width (default ``contract.REG_ADDR_BITS``).

    Attributes
    ----------
    awaddr, awprot, awvalid, awready, wdata, wstrb, wvalid, wready, bresp, bvalid,
    bready, araddr, arprot, arvalid, arready, rdata, rresp, rvalid, rready : Signal
        The AXI4-Lite channels (names without the ``s_axil_`` prefix).
    bus_addr, w_stb, w_data, w_strb, r_stb, r_ack, r_data : Signal
        The register bus (see the module docstring).
    """

    def __init__(self, addr_bits: int = REG_ADDR_BITS):
        self.addr_bits = addr_bits
        super().__init__({
            "awaddr": In(addr_bits), "awprot": In(3), "awvalid": In(1), "awready": Out(1),
            "wdata": In(32), "wstrb": In(4), "wvalid": In(1), "wready": Out(1),
            "bresp": Out(2), "bvalid": Out(1), "bready": In(1),
            "araddr": In(addr_bits), "arprot": In(3), "arvalid": In(1), "arready": Out(1),
            "rdata": Out(32), "rresp": Out(2), "rvalid": Out(1), "rready": In(1),
            "bus_addr": Out(addr_bits),
            "w_stb": Out(1), "w_data": Out(32), "w_strb": Out(4),
            "r_stb": Out(1), "r_ack": In(1), "r_data": In(32),
        })

    def elaborate(self, platform):
        m = Module()
        aw_full = Signal()          # write address captured
        w_full = Signal()           # write data captured
        w_data = Signal(32, reset_less=True)
        w_strb = Signal(4, reset_less=True)
        rd_busy = Signal()          # read accepted, waiting for r_ack
        wr_go = Signal()

        m.d.comb += [self.bresp.eq(RESP_OKAY), self.rresp.eq(RESP_OKAY),
                     self.w_data.eq(w_data), self.w_strb.eq(w_strb)]

        # Idle: nothing accepted that has not been answered.
        resp_pending = Signal()
        m.d.comb += resp_pending.eq(self.bvalid | self.rvalid | rd_busy)
        # Write channels: accept while no read is in flight and no response is pending.
        can_w = ~resp_pending & ~wr_go
        m.d.comb += [
            self.awready.eq(can_w & ~aw_full),
            self.wready.eq(can_w & ~w_full),
        ]
        aw_hs = self.awvalid & self.awready
        w_hs = self.wvalid & self.wready
        word = ~0b11 & ((1 << self.addr_bits) - 1)
        # the bus address is a register, loaded by either handshake (a read and a write are
        # never accepted in the same cycle, nor while the other is in flight)
        with m.If(aw_hs):
            m.d.sync += [aw_full.eq(1), self.bus_addr.eq(self.awaddr & word)]
        with m.If(w_hs):
            m.d.sync += [w_full.eq(1), w_data.eq(self.wdata), w_strb.eq(self.wstrb)]

        # Both halves captured: one write strobe, then the response.
        m.d.comb += wr_go.eq(aw_full & w_full)
        with m.If(wr_go):
            m.d.sync += [aw_full.eq(0), w_full.eq(0), self.bvalid.eq(1)]
        with m.If(self.bvalid & self.bready):
            m.d.sync += self.bvalid.eq(0)

        # Reads: only when no write is partly captured (a write has priority).
        m.d.comb += self.arready.eq(~resp_pending & ~aw_full & ~w_full & ~self.awvalid & ~self.wvalid)
        with m.If(self.arvalid & self.arready):
            m.d.sync += [rd_busy.eq(1), self.bus_addr.eq(self.araddr & word)]
        m.d.comb += self.r_stb.eq(rd_busy)
        with m.If(rd_busy & self.r_ack):
            m.d.sync += [rd_busy.eq(0), self.rvalid.eq(1), self.rdata.eq(self.r_data)]
        with m.If(self.rvalid & self.rready):
            m.d.sync += self.rvalid.eq(0)

        m.d.comb += self.w_stb.eq(wr_go)
        return m
