# zipsgd block design and bitstream for a PYNQ board (Vivado batch mode).
#   vivado -mode batch -source bitstreams/build.tcl -tclargs <board_vars.tcl>
# The board variables (part, PS type, stream width, clock, sources, output folder) are
# written by `python -m zipsgd.hw.bitstream --board <name>` from zipsgd.boards; nothing
# board-specific is typed here.
#
# Block design: processing system -> AXI DMA (memory to stream, width W) -> zipsgd_0
# (s_axis); PS master port -> AXI interconnect -> zipsgd_0/s_axil and the DMA's
# control port; zipsgd_0/irq and the DMA interrupt -> PS interrupt; one PL clock
# (the engine clock) for everything. Output: <out>/zipsgd.bit and <out>/zipsgd.hwh.

source [lindex $argv 0]

set proj_dir [file join $zipsgd_out vivado]
create_project zipsgd_$zipsgd_board $proj_dir -part $zipsgd_part -force
if {[lsearch [get_board_parts -quiet] $zipsgd_board_part] >= 0} {
    set_property board_part $zipsgd_board_part [current_project]
}
add_files -norecurse $zipsgd_sources
update_compile_order -fileset sources_1

create_bd_design zipsgd

# ---- processing system ---------------------------------------------------------------
if {$zipsgd_ps eq "zynq7"} {
    set ps [create_bd_cell -type ip -vlnv xilinx.com:ip:processing_system7 ps]
    apply_bd_automation -rule xilinx.com:bd_rule:processing_system7 \
        -config {make_external "FIXED_IO, DDR" apply_board_preset "1"} $ps
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
    apply_bd_automation -rule xilinx.com:bd_rule:zynq_ultra_ps_e -config {apply_board_preset "1"} $ps
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

# ---- engine (RTL module reference of the wrapper) -------------------------------------
set engine [create_bd_cell -type module -reference $zipsgd_module zipsgd_0]

# ---- DMA: memory to stream only, 26-bit length (64 MB per TLAST-terminated transfer) ----
set dma [create_bd_cell -type ip -vlnv xilinx.com:ip:axi_dma axi_dma_0]
set_property -dict [list \
    CONFIG.c_include_sg {0} \
    CONFIG.c_sg_length_width {26} \
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
apply_bd_automation -rule xilinx.com:bd_rule:clkrst -config {Clk Auto} [get_bd_pins zipsgd_0/aclk]
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

# ---- address map: the engine's register window ------------------------------------------
assign_bd_address
set seg [get_bd_addr_segs -of_objects [get_bd_addr_spaces -of_objects [get_bd_intf_pins $ps_master]] \
    -filter {NAME =~ *zipsgd_0*}]
set_property range [expr {max($zipsgd_reg_bytes, 4096)}] $seg

validate_bd_design
save_bd_design

# ---- synthesis, implementation, bitstream ---------------------------------------------
set bd_file [get_files zipsgd.bd]
make_wrapper -files $bd_file -top
add_files -norecurse [file join $proj_dir zipsgd_$zipsgd_board.gen sources_1 bd zipsgd hdl zipsgd_wrapper.v]
set_property top zipsgd_wrapper [current_fileset]
update_compile_order -fileset sources_1
launch_runs impl_1 -to_step write_bitstream -jobs 2
wait_on_run impl_1
if {[get_property PROGRESS [get_runs impl_1]] ne "100%"} {
    error "implementation did not finish: see $proj_dir"
}
file copy -force [file join $proj_dir zipsgd_$zipsgd_board.runs impl_1 zipsgd_wrapper.bit] \
    [file join $zipsgd_out zipsgd.bit]
file copy -force [file join $proj_dir zipsgd_$zipsgd_board.gen sources_1 bd zipsgd hw_handoff zipsgd.hwh] \
    [file join $zipsgd_out zipsgd.hwh]
open_run impl_1
set timing [get_timing_paths -max_paths 1 -nworst 1 -setup]
puts "zipsgd: wrote [file join $zipsgd_out zipsgd.bit] (worst setup slack [get_property SLACK $timing] ns)"
