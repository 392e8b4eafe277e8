"""cocotb test module of the simulated board: runs the driver's jobs (see zipsgd.sim.board)."""

from zipsgd.sim.board import board_test_entry

run_driver_jobs = board_test_entry()
