"""``zipsgd_top``: the engine with an AXI4-Stream data input and AXI4-Lite registers.

Ports (flat, AXI-named, so that Vivado infers the interfaces and cocotbext-axi's
``from_prefix`` finds them): ``aclk``, ``aresetn`` (active-low synchronous reset),
``s_axis_t{data,valid,ready,last}``, the 19 ``s_axil_*`` signals of an AXI4-Lite
slave with ``contract.REG_ADDR_BITS``-bit byte addresses, and ``irq`` (level,
``STATUS.done``: the engine's ``done``, low while a start is on its way to it).

The design has a single clock domain, ``sync``, whose clock is ``aclk`` and whose
reset is ``~aresetn`` registered once (so the reset takes effect, and ends, one cycle
after ``aresetn`` changes); :func:`convert` emits it as Verilog module ``zipsgd_top``.
"""

from __future__ import annotations

from amaranth.back import verilog
from amaranth.hdl import ClockDomain, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from zipsgd.contract import COUNTER_NAMES, REG_ADDR_BITS, EngineParams

from .axil import AxiLiteSlave
from .core import counter_port
from .regs import Registers

TOP_NAME = "zipsgd_top"
#: AXI4-Lite signals of the slave (without the ``s_axil_`` prefix).
AXIL_SIGNALS = ("awaddr", "awprot", "awvalid", "awready", "wdata", "wstrb", "wvalid", "wready",
                "bresp", "bvalid", "bready", "araddr", "arprot", "arvalid", "arready",
                "rdata", "rresp", "rvalid", "rready")


def _default_core():
    from .core import Engine
    return Engine


class Top(wiring.Component):
    """Engine + AXI4-Lite register block + AXI4-Stream input, with AXI port names.

    Parameters
    ----------
    params : EngineParams
        Build parameters.
    core : callable, optional
        ``core(params)`` returns the engine component (default
        :class:`zipsgd.hw.core.Engine`); tests may pass a stand-in with the same
        interface.
    """

    def __init__(self, params: EngineParams, core=None):
        if not isinstance(params, EngineParams):
            raise TypeError(f"Top: params must be an EngineParams, not {params!r}")
        self.params = params
        self.core = (core or _default_core())(params)
        W = params.word_bits
        axil = AxiLiteSlave(REG_ADDR_BITS)
        members = {"aclk": In(1), "aresetn": In(1),
                   "s_axis_tdata": In(W), "s_axis_tvalid": In(1), "s_axis_tready": Out(1),
                   "s_axis_tlast": In(1)}
        for name in AXIL_SIGNALS:
            members[f"s_axil_{name}"] = axil.signature.members[name]
        members["irq"] = Out(1)
        #: The AXI4-Lite slave and the register block (attributes for tests).
        self.axil = axil
        self.regs = Registers(params, self.core.signature.members["cfg"].shape)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = cd = ClockDomain("sync")
        # The reset is registered once (active high): every flip-flop then takes the same
        # reset net as is (an inverted aresetn would cost an inverter per flip-flop on an
        # ECP5, and a reset net per flip-flop that two flip-flops of a slice cannot share).
        rst_q = Signal(reset_less=True)
        m.d.sync += rst_q.eq(~self.aresetn)
        m.d.comb += [cd.clk.eq(self.aclk), cd.rst.eq(rst_q)]

        core, axil, regs = self.core, self.axil, self.regs
        m.submodules.core = core
        m.submodules.axil = axil
        m.submodules.regs = regs

        # AXI4-Lite pins <-> slave
        for name in AXIL_SIGNALS:
            port = getattr(self, f"s_axil_{name}")
            inner = getattr(axil, name)
            if axil.signature.members[name].flow == In:
                m.d.comb += inner.eq(port)
            else:
                m.d.comb += port.eq(inner)
        # slave <-> register block
        m.d.comb += [
            regs.bus_addr.eq(axil.bus_addr), regs.w_stb.eq(axil.w_stb), regs.w_data.eq(axil.w_data),
            regs.w_strb.eq(axil.w_strb), regs.r_stb.eq(axil.r_stb),
            axil.r_ack.eq(regs.r_ack), axil.r_data.eq(regs.r_data),
        ]
        # register block <-> engine
        for name in ("cfg", "start", "soft_reset", "stop", "warm", "cb_we", "cb_addr", "cb_data", "model_rewind",
                     "model_next", "model_we", "model_wdata", "loss_addr"):
            m.d.comb += getattr(core, name).eq(getattr(regs, name))
        for name in ("busy", "done", "stopped", "error", "model_data", "loss_data", "epochs_done",
                     *(counter_port(n) for n in COUNTER_NAMES)):
            m.d.comb += getattr(regs, name).eq(getattr(core, name))
        # stream
        m.d.comb += [
            core.i_data.valid.eq(self.s_axis_tvalid),
            core.i_data.payload.data.eq(self.s_axis_tdata),
            core.i_data.payload.last.eq(self.s_axis_tlast),
            self.s_axis_tready.eq(core.i_data.ready),
            self.irq.eq(regs.irq),
        ]
        return m


def convert(params: EngineParams, core=None) -> str:
    """Verilog text of ``zipsgd_top`` for ``params`` (the top module comes last)."""
    top = Top(params, core)
    text = verilog.convert(top, name=TOP_NAME, emit_src=False)
    return _top_last(text)


def _top_last(text: str) -> str:
    """Move the ``(* top = 1 *)`` module to the end of the file (submodules first)."""
    start = text.find("(* top =")
    end = text.find("endmodule\n", start)
    if start < 0 or end < 0:
        return text
    end += len("endmodule\n")
    return text[:start] + text[end:].lstrip("\n") + "\n" + text[start:end]
