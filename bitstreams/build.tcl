# zipsgd block design and bitstream for a PYNQ board (Vivado batch mode).
#   vivado -mode batch -source bitstreams/build.tcl -tclargs <board_vars.tcl>
# The board variables (part, board part, PS type, stream width, clock, module and
# block-design names, addresses, DMA length width, sources, output folder) are written by
# `python -m zipsgd.flows bitstream --board <name>` from zipsgd.boards; nothing
# board-specific is typed here.
#
# Block design $zipsgd_bd (not named like the engine's module $zipsgd_module: Vivado
# generates an HDL module of the block design's name into the same fileset):
# processing system -> AXI DMA (memory to stream, width W) -> zipsgd_0 (s_axis); PS
# master port -> AXI interconnect -> zipsgd_0/s_axil and the DMA's control port, at the
# table's addresses; zipsgd_0/irq and the DMA interrupt -> PS interrupt; one PL clock
# (the engine clock) for everything.
# Implementation runs to route_design; the bitstream is written only when the routed
# design meets timing (worst setup and hold slack >= 0), else the build stops with an
# error naming the slack and the clock. Output: <out>/zipsgd.bit and <out>/zipsgd.hwh
# (PYNQ loads a same-named pair).

source [lindex $argv 0]

# A failed build must not leave an earlier build's files looking like its output.
file delete -force [file join $zipsgd_out zipsgd.bit] [file join $zipsgd_out zipsgd.hwh]

set proj_name zipsgd_$zipsgd_board
set proj_dir [file join $zipsgd_out vivado]
create_project $proj_name $proj_dir -part $zipsgd_part -force
if {[lsearch -exact [get_board_parts -quiet] $zipsgd_board_part] >= 0} {
    set_property board_part $zipsgd_board_part [current_project]
    set board_preset 1
} else {
    # Chosen: go on with the bare part and say so. PYNQ configures the PS from its own
    # boot image and sets the PL clock from the .hwh, so such a bitstream can still
    # load; but its PS settings (DDR, MIO, reference clock) are Vivado's defaults.
    puts "WARNING: zipsgd: board files for $zipsgd_board_part are not installed: using the bare\
          part $zipsgd_part. The PS presets (DDR, MIO, reference clock) are Vivado's defaults,\
          not the board's; install the board files (Vivado's board store or the board vendor)\
          for a build that matches the board."
    set board_preset 0
}
add_files -norecurse $zipsgd_sources
update_compile_order -fileset sources_1

create_bd_design $zipsgd_bd

# ---- processing system ---------------------------------------------------------------
if {$zipsgd_ps eq "zynq7"} {
    set ps [create_bd_cell -type ip -vlnv xilinx.com:ip:processing_system7 ps]
    apply_bd_automation -rule xilinx.com:bd_rule:processing_system7 \
        -config [list make_external "FIXED_IO, DDR" apply_board_preset $board_preset] $ps
    set_property -dict [list \
        CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ $zipsgd_clock_mhz \
        CONFIG.PCW_USE_S_AXI_HP0 {1} \
        CONFIG.PCW_S_AXI_HP0_DATA_WIDTH $zipsgd_word_bits \
        CONFIG.PCW_USE_FABRIC_INTERRUPT {1} \
        CONFIG.PCW_IRQ_F2P_INTR {1}] $ps
    set ps_master /ps/M_AXI_GP0
    set ps_slave /ps/S_AXI_HP0
    set ps_clk [get_bd_pins ps/FCLK_CLK0]
    set ps_irq [get_bd_pins ps/IRQ_F2P]
} else {
    set ps [create_bd_cell -type ip -vlnv xilinx.com:ip:zynq_ultra_ps_e ps]
    apply_bd_automation -rule xilinx.com:bd_rule:zynq_ultra_ps_e \
        -config [list apply_board_preset $board_preset] $ps
    set_property -dict [list \
        CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ $zipsgd_clock_mhz \
        CONFIG.PSU__USE__M_AXI_GP0 {1} \
        CONFIG.PSU__USE__M_AXI_GP1 {0} \
        CONFIG.PSU__USE__S_AXI_GP2 {1} \
        CONFIG.PSU__SAXIGP2__DATA_WIDTH $zipsgd_word_bits \
        CONFIG.PSU__USE__IRQ0 {1}] $ps
    set ps_master /ps/M_AXI_HPM0_FPD
    set ps_slave /ps/S_AXI_HP0_FPD
    set ps_clk [get_bd_pins ps/pl_clk0]
    set ps_irq [get_bd_pins ps/pl_ps_irq0]
}
# The PS master's address space (the PS7's and the MPSoC's are both called Data).
set ps_space [get_bd_addr_spaces ps/Data]

# ---- engine (RTL module reference of the wrapper) -------------------------------------
set engine [create_bd_cell -type module -reference $zipsgd_module zipsgd_0]

# ---- DMA: memory to stream only; its length register (c_sg_length_width) bounds one
# ---- TLAST-terminated transfer to 2**width - 1 bytes --------------------------------
set dma [create_bd_cell -type ip -vlnv xilinx.com:ip:axi_dma axi_dma_0]
set_property -dict [list \
    CONFIG.c_include_sg {0} \
    CONFIG.c_sg_length_width $zipsgd_dma_length_width \
    CONFIG.c_include_s2mm {0} \
    CONFIG.c_m_axi_mm2s_data_width $zipsgd_word_bits \
    CONFIG.c_m_axis_mm2s_tdata_width $zipsgd_word_bits \
    CONFIG.c_mm2s_burst_size {64}] $dma
connect_bd_intf_net [get_bd_intf_pins axi_dma_0/M_AXIS_MM2S] [get_bd_intf_pins zipsgd_0/s_axis]

# ---- AXI connections and clocking (one clock: the PS's first PL clock) ------------------
apply_bd_automation -rule xilinx.com:bd_rule:axi4 \
    -config [list Master $ps_master Clk_master Auto Clk_slave Auto Clk_xbar Auto] \
    [get_bd_intf_pins zipsgd_0/s_axil]
apply_bd_automation -rule xilinx.com:bd_rule:axi4 \
    -config [list Master $ps_master Clk_master Auto Clk_slave Auto Clk_xbar Auto] \
    [get_bd_intf_pins axi_dma_0/S_AXI_LITE]
apply_bd_automation -rule xilinx.com:bd_rule:axi4 \
    -config [list Slave $ps_slave Clk_master Auto Clk_slave Auto Clk_xbar Auto] \
    [get_bd_intf_pins axi_dma_0/M_AXI_MM2S]
# The AXI automation above normally connects aclk and aresetn already (they are
# associated with s_axil); in batch mode a rule that no longer applies stops the build,
# so the clock and reset are connected only if they still have no net.
if {[llength [get_bd_nets -quiet -of_objects [get_bd_pins zipsgd_0/aclk]]] == 0} {
    apply_bd_automation -rule xilinx.com:bd_rule:clkrst -config {Clk Auto} [get_bd_pins zipsgd_0/aclk]
}
if {[llength [get_bd_nets -quiet -of_objects [get_bd_pins zipsgd_0/aresetn]]] == 0} {
    connect_bd_net [get_bd_pins -of_objects [get_bd_cells -filter {VLNV =~ *proc_sys_reset*}] \
        -filter {NAME == peripheral_aresetn}] [get_bd_pins zipsgd_0/aresetn]
}

# ---- interrupts ------------------------------------------------------------------------
set irqs [create_bd_cell -type ip -vlnv xilinx.com:ip:xlconcat irq_concat]
set_property CONFIG.NUM_PORTS {2} $irqs
connect_bd_net [get_bd_pins zipsgd_0/irq] [get_bd_pins irq_concat/In0]
connect_bd_net [get_bd_pins axi_dma_0/mm2s_introut] [get_bd_pins irq_concat/In1]
connect_bd_net [get_bd_pins irq_concat/dout] $ps_irq

# ---- address map: the table's addresses (zipsgd.boards engine_addr, dma_addr) ----------
# The test .hwh carries the same ones, so the driver sees on the board what it was
# tested against.
assign_bd_address
assign_bd_address -offset $zipsgd_engine_addr -range $zipsgd_engine_range \
    -target_address_space $ps_space [get_bd_addr_segs zipsgd_0/s_axil/reg0] -force
assign_bd_address -offset $zipsgd_dma_addr -range $zipsgd_dma_range \
    -target_address_space $ps_space [get_bd_addr_segs axi_dma_0/S_AXI_LITE/Reg] -force

validate_bd_design
save_bd_design

# The PS divides a PLL: the clock obtained can differ from the one asked for (FCLK0
# gives 142.857 MHz for 150). The wrapper leaves FREQ_HZ out so Vivado propagates this
# figure; projections use the table's clock, so say when the two differ.
set clk_hz [get_property CONFIG.FREQ_HZ [get_bd_pins zipsgd_0/aclk]]
puts "zipsgd: engine clock $clk_hz Hz (asked for $zipsgd_clock_mhz MHz)"
if {$clk_hz eq ""} {
    puts "WARNING: zipsgd: no frequency propagated to zipsgd_0/aclk"
} elseif {abs($clk_hz - $zipsgd_clock_mhz * 1e6) > 0.005 * $zipsgd_clock_mhz * 1e6} {
    puts "WARNING: zipsgd: the PS delivers [expr {$clk_hz / 1e6}] MHz, not the table's\
          $zipsgd_clock_mhz MHz: set clock_mhz of $zipsgd_board in zipsgd.boards to the delivered figure."
}

# ---- synthesis and implementation (to route_design) -----------------------------------
add_files -norecurse [make_wrapper -files [get_files $zipsgd_bd.bd] -top]
set_property top ${zipsgd_bd}_wrapper [current_fileset]
update_compile_order -fileset sources_1
launch_runs impl_1 -jobs 2
wait_on_run impl_1
if {[get_property PROGRESS [get_runs impl_1]] ne "100%"} {
    error "zipsgd: implementation did not finish: see $proj_dir"
}

# ---- timing: no bitstream unless the routed design meets the clock ---------------------
open_run impl_1
set setup_path [get_timing_paths -max_paths 1 -nworst 1 -setup]
set hold_path [get_timing_paths -max_paths 1 -nworst 1 -hold]
if {[llength $setup_path] == 0} {
    error "zipsgd: no timed setup path in the routed design (is the engine clock constrained?): no bitstream written"
}
set wns [get_property SLACK $setup_path]
set wns_clock [get_property ENDPOINT_CLOCK $setup_path]
set whs [expr {[llength $hold_path] ? [get_property SLACK $hold_path] : 0.0}]
report_timing_summary -file [file join $proj_dir timing_summary.rpt]
if {$wns < 0} {
    error "zipsgd: timing not met: worst negative slack (WNS) $wns ns on clock $wns_clock\
           ([format %g $zipsgd_clock_mhz] MHz asked for $zipsgd_board). No bitstream written.\
           Lower clock_mhz of $zipsgd_board in zipsgd.boards and build again;\
           report: [file join $proj_dir timing_summary.rpt]"
}
if {$whs < 0} {
    error "zipsgd: hold timing not met: worst hold slack $whs ns. No bitstream written;\
           report: [file join $proj_dir timing_summary.rpt]"
}

# ---- bitstream and hardware handoff ----------------------------------------------------
write_bitstream -force [file join $zipsgd_out zipsgd.bit]
# The hardware handoff is named after the block design; PYNQ wants it beside the
# bitstream under the bitstream's name.
set hwh [glob -nocomplain [file join $proj_dir $proj_name.gen sources_1 bd $zipsgd_bd hw_handoff $zipsgd_bd.hwh] \
    [file join $proj_dir $proj_name.srcs sources_1 bd $zipsgd_bd hw_handoff $zipsgd_bd.hwh]]
if {[llength $hwh] == 0} {
    error "zipsgd: no hardware handoff $zipsgd_bd.hwh under $proj_dir"
}
file copy -force [lindex $hwh 0] [file join $zipsgd_out zipsgd.hwh]
puts "zipsgd: wrote [file join $zipsgd_out zipsgd.bit] and zipsgd.hwh (worst setup slack $wns ns on\
      $wns_clock at $clk_hz Hz)"
