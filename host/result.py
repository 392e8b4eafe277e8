"""What a finished job reports, whatever ran it (the reference, the simulated board, a board)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .contract import LOSS_ACC, Error


@dataclass
class Result:
    """What a finished job reports (the same fields whatever runs it)."""

    model: np.ndarray                 # MODEL integers, shape (d,)
    loss_sums: list                   # LOSS_ACC integers, one per epoch
    beats: int = 0
    samples: int = 0
    error: Error = Error.NONE
    saturated: int = 0                # batches whose update saturated a model word (SATURATED)
    stopped: bool = False             # ended early on a stop request (STATUS.stopped)
    stats: dict = field(default_factory=dict)  # backend extras (cycles, stalls, ...)

    def loss_curve(self, n_samples: int) -> np.ndarray:
        """Mean per-sample loss of each epoch, as floats."""
        return np.array([LOSS_ACC.to_float(s) / n_samples for s in self.loss_sums])
