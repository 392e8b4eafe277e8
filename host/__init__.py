"""zipsgd: low-precision, double-sampled SGD for linear models on FPGAs."""

__version__ = "0.1.0"
