// The simulated board: the engine's top level (zipsgd_top) fed by a behavioural
// memory-to-stream DMA, so that a whole epoch streams at the simulator's own speed
// with no Python per beat. Test-bench only (not synthesised).
//
// Memory: MEM_WORDS words of W bits. The host loads a region by writing it, raw and
// big-endian (W/8 bytes per word, word mem_lo first), to the file named by the
// plusarg +ZIPSGD_MEMFILE=<path> and pulsing mem_load for one cycle; the board
// $freads words mem_lo..mem_hi from it (binary: no text to format or parse).
// DMA: pulsing dma_push queues (dma_addr, dma_len) in words of W bits; transfers
// run in order, one beat per cycle while TREADY is high, TLAST on each transfer's
// last beat. dma_idle is high when the queue is empty and nothing streams.
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
    parameter QUEUE_LOG2 = 11
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
    // DMA and memory control (driven by the host model)
    input  wire                 dma_push,
    input  wire [31:0]          dma_addr,
    input  wire [31:0]          dma_len,
    output wire                 dma_idle,
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

    // descriptor queue
    reg [31:0] q_addr [0:(1<<QUEUE_LOG2)-1];
    reg [31:0] q_len  [0:(1<<QUEUE_LOG2)-1];
    reg [QUEUE_LOG2:0] q_wr, q_rd;
    wire q_empty = (q_wr == q_rd);

    reg        active;
    reg [31:0] ptr, left;
    reg [15:0] lfsr;
    reg [3:0]  throttle_r;
    wire       gap = (throttle_r != 4'd0) && (lfsr[3:0] < throttle_r);

    wire [W-1:0] tdata = mem[ptr[MEM_WORDS_LOG2-1:0]];
    wire tlast = (left == 32'd1);
    wire tready;
    wire tvalid = active && !gap;
    wire fire = tvalid && tready;

    assign dma_idle = q_empty && !active;

    // Reset and throttle pass through a register: no input port feeds logic combinationally
    // (the engine's next-state logic reads its reset), so evaluating the model on the
    // clock's falling edge and on register accesses stays cheap.
    reg        rstn_r = 1'b0;
    always @(posedge aclk) begin
        rstn_r     <= aresetn;
        throttle_r <= throttle;
    end

    always @(posedge aclk) begin
        if (!rstn_r) begin
            q_wr <= 0; q_rd <= 0; active <= 1'b0; ptr <= 0; left <= 0; lfsr <= 16'hACE1;
        end else begin
            lfsr <= {lfsr[14:0], lfsr[15] ^ lfsr[13] ^ lfsr[12] ^ lfsr[10]};
            if (dma_push) begin
                q_addr[q_wr[QUEUE_LOG2-1:0]] <= dma_addr;
                q_len[q_wr[QUEUE_LOG2-1:0]]  <= dma_len;
                q_wr <= q_wr + 1'b1;
            end
            if (!active || (fire && tlast)) begin
                if (!q_empty) begin
                    active <= (q_len[q_rd[QUEUE_LOG2-1:0]] != 0);
                    ptr    <= q_addr[q_rd[QUEUE_LOG2-1:0]];
                    left   <= q_len[q_rd[QUEUE_LOG2-1:0]];
                    q_rd   <= q_rd + 1'b1;
                end else begin
                    active <= 1'b0;
                end
            end else if (fire) begin
                ptr  <= ptr + 1;
                left <= left - 1;
            end
        end
    end

    zipsgd_top engine (
        .aclk(aclk), .aresetn(rstn_r),
        .s_axis_tdata(tdata), .s_axis_tvalid(tvalid), .s_axis_tready(tready), .s_axis_tlast(tlast),
        .s_axil_awaddr(s_axil_awaddr[A-1:0]), .s_axil_awprot(s_axil_awprot), .s_axil_awvalid(s_axil_awvalid),
        .s_axil_awready(s_axil_awready), .s_axil_wdata(s_axil_wdata), .s_axil_wstrb(s_axil_wstrb),
        .s_axil_wvalid(s_axil_wvalid), .s_axil_wready(s_axil_wready), .s_axil_bresp(s_axil_bresp),
        .s_axil_bvalid(s_axil_bvalid), .s_axil_bready(s_axil_bready), .s_axil_araddr(s_axil_araddr[A-1:0]),
        .s_axil_arprot(s_axil_arprot), .s_axil_arvalid(s_axil_arvalid), .s_axil_arready(s_axil_arready),
        .s_axil_rdata(s_axil_rdata), .s_axil_rresp(s_axil_rresp), .s_axil_rvalid(s_axil_rvalid),
        .s_axil_rready(s_axil_rready), .irq(irq)
    );
endmodule
