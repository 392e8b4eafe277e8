// The simulated board: the engine's top level (zipsgd_top) fed by a model of a Xilinx
// AXI DMA's memory-to-stream channel in direct-register mode (PG021), so that a whole
// transfer streams at the simulator's own speed with no Python per beat. Test-bench
// only (not synthesised).
//
// Registers: one AXI4-Lite port. Local address bit DMA_SEL_BIT picks the target: 0 the
// engine's register window (low A bits), 1 the DMA's (low 7 bits). The host maps the
// physical windows of the block design (zipsgd.boards) onto these local addresses.
//
// DMA (MM2S only, the registers and bits PG021 defines for direct-register mode):
//   0x00 MM2S_DMACR  bit 0 RS (run/stop), bit 2 Reset (self-clearing), bit 12 IOC_IrqEn,
//                    bit 14 Err_IrqEn; reads 0x0001_0002 out of reset
//   0x04 MM2S_DMASR  bit 0 Halted (1 out of reset), bit 1 Idle (0 out of reset: it rises
//                    when the first transfer completes), bit 4 DMAIntErr, bit 5 DMASlvErr,
//                    bit 6 DMADecErr, bit 12 IOC_Irq, bit 14 Err_Irq (both write 1 to clear)
//   0x18 MM2S_SA, 0x1C MM2S_SA_MSB  source address
//   0x28 MM2S_LENGTH  bytes, LEN_WIDTH bits; writing it while running starts a transfer
// A transfer streams ceil(LENGTH / (W/8)) beats from board memory, TLAST on the last
// beat (a partial last beat carries the bytes after the buffer, as TKEEP would mark).
// LENGTH 0 sets DMAIntErr, a source outside board memory or not W/8-aligned DMADecErr;
// an error halts the channel (RS cleared, Halted set). RS written 0 halts the channel
// and ends a transfer in flight; Reset aborts everything and restores reset values.
// mm2s_introut = IOC_Irq & IOC_IrqEn | Err_Irq & Err_IrqEn.
//
// Memory: MEM_WORDS words of W bits at physical byte address MEM_BASE. The host loads a
// region by writing it, raw and big-endian (W/8 bytes per word, word mem_lo first), to
// the file named by the plusarg +ZIPSGD_MEMFILE=<path> and pulsing mem_load for one
// cycle; the board $freads words mem_lo..mem_hi from it (binary: no text to format or
// parse).
// throttle (0..15, sampled every cycle): when non-zero, TVALID is withheld on cycles
// where a 16-bit LFSR's low nibble is below it (random gaps for tests; 0 = a
// never-stalling memory).
//
// Reset: the engine and the DMA see aresetn one cycle late (registered).
// Speed: only the ports are visible to cocotb (see zipsgd.sim.runner), and neither
// the reset nor throttle feeds logic combinationally (both are registered), so the
// engine's logic is evaluated on clock edges only.
`timescale 1ns/1ps
module zipsgd_sim_board #(
    parameter W = 64,
    parameter A = 8,          // register address bits of zipsgd_top
    parameter MEM_WORDS_LOG2 = 21,
    parameter MEM_BASE = 32'h1000_0000,
    parameter LEN_WIDTH = 26,
    parameter DMA_SEL_BIT = 16
) (
    input  wire                 aclk,
    input  wire                 aresetn,
    // AXI4-Lite to the engine's registers
    input  wire [31:0]          s_axil_awaddr,
    input  wire [2:0]           s_axil_awprot,
    input  wire                 s_axil_awvalid,
    output wire                 s_axil_awready,
    input  wire [31:0]          s_axil_wdata,
    input  wire [3:0]           s_axil_wstrb,
    input  wire                 s_axil_wvalid,
    output wire                 s_axil_wready,
    output wire [1:0]           s_axil_bresp,
    output wire                 s_axil_bvalid,
    input  wire                 s_axil_bready,
    input  wire [31:0]          s_axil_araddr,
    input  wire [2:0]           s_axil_arprot,
    input  wire                 s_axil_arvalid,
    output wire                 s_axil_arready,
    output wire [31:0]          s_axil_rdata,
    output wire [1:0]           s_axil_rresp,
    output wire                 s_axil_rvalid,
    input  wire                 s_axil_rready,
    output wire                 irq,
    output wire                 mm2s_introut,
    // test-bench controls (driven by the host model)
    input  wire [3:0]           throttle,
    input  wire                 mem_load,
    input  wire [31:0]          mem_lo,
    input  wire [31:0]          mem_hi
);
    reg [W-1:0] mem [0:(1<<MEM_WORDS_LOG2)-1];
    reg [8*512-1:0] memfile;
    integer mem_fd, mem_got;
    initial begin
        if (!$value$plusargs("ZIPSGD_MEMFILE=%s", memfile)) memfile = "zipsgd_mem.bin";
    end
    always @(posedge aclk) begin
        if (mem_load) begin
            mem_fd = $fopen(memfile, "rb");
            if (mem_fd == 0) begin
                $display("zipsgd_sim_board: cannot open %0s", memfile);
                $finish;
            end else begin
                mem_got = $fread(mem, mem_fd, mem_lo, mem_hi - mem_lo + 1);
                $fclose(mem_fd);
                if (mem_got != (mem_hi - mem_lo + 1) * (W / 8)) begin
                    $display("zipsgd_sim_board: read %0d bytes of %0s, expected %0d", mem_got, memfile,
                             (mem_hi - mem_lo + 1) * (W / 8));
                    $finish;
                end
            end
        end
    end

    localparam BEAT_BYTES_LOG2 = $clog2(W / 8);

    // Reset and throttle pass through a register: no input port feeds logic combinationally
    // (the engine's next-state logic reads its reset), so evaluating the model on the
    // clock's falling edge and on register accesses stays cheap.
    reg        rstn_r = 1'b0;
    reg [3:0]  throttle_r;
    always @(posedge aclk) begin
        rstn_r     <= aresetn;
        throttle_r <= throttle;
    end

    // ---- AXI4-Lite: split between the engine and the DMA on DMA_SEL_BIT ----------------
    // (the master holds each address until its response: the selects stay put meanwhile)
    wire w_dma = s_axil_awaddr[DMA_SEL_BIT];
    wire r_dma = s_axil_araddr[DMA_SEL_BIT];
    wire e_awready, e_wready, e_bvalid, e_arready, e_rvalid;
    wire [1:0] e_bresp, e_rresp;
    wire [31:0] e_rdata;

    // the DMA's register slave: one transaction at a time, as the engine's
    reg d_aw_full, d_w_full, d_bvalid, d_rd_busy, d_rvalid;
    reg [6:0]  d_waddr, d_raddr;
    reg [31:0] d_wdata, d_rdata;
    wire d_resp_pending = d_bvalid | d_rvalid | d_rd_busy;
    wire d_wr_go = d_aw_full & d_w_full;
    wire d_awready = ~d_resp_pending & ~d_wr_go & ~d_aw_full;
    wire d_wready  = ~d_resp_pending & ~d_wr_go & ~d_w_full;
    wire d_arready = ~d_resp_pending & ~d_aw_full & ~d_w_full;

    assign s_axil_awready = w_dma ? d_awready : e_awready;
    assign s_axil_wready  = w_dma ? d_wready  : e_wready;
    assign s_axil_bvalid  = e_bvalid | d_bvalid;
    assign s_axil_bresp   = d_bvalid ? 2'b00 : e_bresp;
    assign s_axil_arready = r_dma ? d_arready : e_arready;
    assign s_axil_rvalid  = e_rvalid | d_rvalid;
    assign s_axil_rresp   = d_rvalid ? 2'b00 : e_rresp;
    assign s_axil_rdata   = d_rvalid ? d_rdata : e_rdata;

    // ---- DMA state (PG021 MM2S, direct-register mode) ----------------------------------
    reg        rs, ioc_en, err_en, halted, idle, int_err, slv_err, dec_err, ioc_irq, err_irq;
    reg [2:0]  soft_reset;             // DMACR.Reset reads 1 while this counts down
    reg [31:0] sa, sa_msb;
    reg [LEN_WIDTH-1:0] length;
    reg        active;
    reg [31:0] ptr, left;
    reg [15:0] lfsr;
    wire [31:0] dmacr = {8'd0, 8'd1, 1'b0, err_en, 1'b0, ioc_en, 9'd0, soft_reset != 0, 1'b1, rs};
    wire [31:0] dmasr = {17'd0, err_irq, 1'b0, ioc_irq, 5'd0, dec_err, slv_err, int_err, 2'd0, idle, halted};
    assign mm2s_introut = (ioc_irq & ioc_en) | (err_irq & err_en);

    wire gap = (throttle_r != 4'd0) && (lfsr[3:0] < throttle_r);
    wire [W-1:0] tdata = mem[ptr[MEM_WORDS_LOG2-1:0]];
    wire tlast = (left == 32'd1);
    wire tready;
    wire tvalid = active && !gap && soft_reset == 0;
    wire fire = tvalid && tready;

    // a transfer's source and size, checked when LENGTH is written
    wire [31:0] off = sa - MEM_BASE;
    wire [31:0] n_beats = ({{(32-LEN_WIDTH){1'b0}}, d_wdata[LEN_WIDTH-1:0]} + (W / 8 - 1)) >> BEAT_BYTES_LOG2;
    wire src_ok = (sa_msb == 0) && (sa >= MEM_BASE) && (off[BEAT_BYTES_LOG2-1:0] == 0)
                  && ((off >> BEAT_BYTES_LOG2) + n_beats <= (1 << MEM_WORDS_LOG2));

    always @(posedge aclk) begin
        if (!rstn_r) begin
            d_aw_full <= 0; d_w_full <= 0; d_bvalid <= 0; d_rd_busy <= 0; d_rvalid <= 0;
        end
        if (!rstn_r || soft_reset == 3'd1) begin
            rs <= 0; ioc_en <= 0; err_en <= 0; halted <= 1; idle <= 0;
            int_err <= 0; slv_err <= 0; dec_err <= 0; ioc_irq <= 0; err_irq <= 0;
            soft_reset <= 0; sa <= 0; sa_msb <= 0; length <= 0;
            active <= 0; ptr <= 0; left <= 0;
            if (!rstn_r) lfsr <= 16'hACE1;
        end
        if (rstn_r) begin
            lfsr <= {lfsr[14:0], lfsr[15] ^ lfsr[13] ^ lfsr[12] ^ lfsr[10]};
            if (soft_reset != 0) soft_reset <= soft_reset - 1'b1;
            // register slave
            if (s_axil_awvalid && w_dma && d_awready) begin d_aw_full <= 1; d_waddr <= s_axil_awaddr[6:0]; end
            if (s_axil_wvalid && w_dma && d_wready) begin d_w_full <= 1; d_wdata <= s_axil_wdata; end
            if (d_wr_go) begin d_aw_full <= 0; d_w_full <= 0; d_bvalid <= 1; end
            if (d_bvalid && s_axil_bready) d_bvalid <= 0;
            if (s_axil_arvalid && r_dma && d_arready) begin d_rd_busy <= 1; d_raddr <= s_axil_araddr[6:0]; end
            if (d_rd_busy) begin
                d_rd_busy <= 0; d_rvalid <= 1;
                case (d_raddr & 7'h7C)
                    7'h00: d_rdata <= dmacr;
                    7'h04: d_rdata <= dmasr;
                    7'h18: d_rdata <= sa;
                    7'h1C: d_rdata <= sa_msb;
                    7'h28: d_rdata <= {{(32-LEN_WIDTH){1'b0}}, length};
                    default: d_rdata <= 0;
                endcase
            end
            if (d_rvalid && s_axil_rready) d_rvalid <= 0;

            // the stream
            if (fire) begin
                ptr <= ptr + 1;
                left <= left - 1;
                if (tlast) begin active <= 0; idle <= 1; ioc_irq <= 1; end
            end

            // register writes (after the stream: a write wins over a stream update)
            if (d_wr_go && soft_reset == 0) begin
                case (d_waddr & 7'h7C)
                    7'h00: begin
                        ioc_en <= d_wdata[12]; err_en <= d_wdata[14];
                        if (d_wdata[2]) soft_reset <= 3'd4;         // Reset: abort, then reset values
                        else if (d_wdata[0] && !(int_err || slv_err || dec_err)) begin
                            rs <= 1; halted <= 0;
                        end else if (!d_wdata[0]) begin
                            rs <= 0; halted <= 1; active <= 0;     // stop: a transfer in flight ends
                        end
                    end
                    7'h04: begin
                        if (d_wdata[12]) ioc_irq <= 0;
                        if (d_wdata[14]) err_irq <= 0;
                    end
                    7'h18: sa <= d_wdata;
                    7'h1C: sa_msb <= d_wdata;
                    7'h28: if (rs && !halted && !active) begin
                        length <= d_wdata[LEN_WIDTH-1:0];
                        if (d_wdata[LEN_WIDTH-1:0] == 0) begin
                            int_err <= 1; err_irq <= 1; rs <= 0; halted <= 1;
                        end else if (!src_ok) begin
                            dec_err <= 1; err_irq <= 1; rs <= 0; halted <= 1;
                        end else begin
                            active <= 1; idle <= 0;
                            ptr <= off >> BEAT_BYTES_LOG2;
                            left <= n_beats;
                        end
                    end
                    default: ;
                endcase
            end
        end
    end

    zipsgd_top engine (
        .aclk(aclk), .aresetn(rstn_r),
        .s_axis_tdata(tdata), .s_axis_tvalid(tvalid), .s_axis_tready(tready), .s_axis_tlast(tlast),
        .s_axil_awaddr(s_axil_awaddr[A-1:0]), .s_axil_awprot(s_axil_awprot),
        .s_axil_awvalid(s_axil_awvalid & ~w_dma), .s_axil_awready(e_awready), .s_axil_wdata(s_axil_wdata),
        .s_axil_wstrb(s_axil_wstrb), .s_axil_wvalid(s_axil_wvalid & ~w_dma), .s_axil_wready(e_wready),
        .s_axil_bresp(e_bresp), .s_axil_bvalid(e_bvalid), .s_axil_bready(s_axil_bready),
        .s_axil_araddr(s_axil_araddr[A-1:0]), .s_axil_arprot(s_axil_arprot),
        .s_axil_arvalid(s_axil_arvalid & ~r_dma), .s_axil_arready(e_arready), .s_axil_rdata(e_rdata),
        .s_axil_rresp(e_rresp), .s_axil_rvalid(e_rvalid), .s_axil_rready(s_axil_rready), .irq(irq)
    );
endmodule
