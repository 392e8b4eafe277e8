"""Full-precision (float64) SGD on the job's schedule: the yardstick of every precision.

:func:`sgd` replays a :class:`~zipsgd.job.Job` in float64 on the *scaled*,
unquantized data: the same sample orders (epoch ``e`` uses copy ``e % copies``'s
permutation), the same per-epoch step the engine applies (``m * 2**-(15+k)``, halving
every ``decay`` epochs), the same mini-batches (one update per batch, the gradient
summed over it, every dot product reading the model left by the previous batch),
the same L2 shrink (``x -= x * 2**-l2_shift`` per batch) and the same loss, with the
exact sigmoid (logistic) and the exact subgradient (hinge). Its loss curve uses
the engine's definition: the mean over the epoch of each sample's loss taken before
its batch's update ("progressive" loss).

:func:`objective` is the exact training loss of a model on the scaled data, used
to compare the final models of different precisions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .contract import Loss

_NAMES = {Loss.SQUARED: "squared", Loss.LOGISTIC: "logistic", Loss.HINGE: "hinge"}


def _loss_name(loss) -> str:
    if isinstance(loss, Loss):
        return _NAMES[loss]
    if isinstance(loss, (int, np.integer)) and not isinstance(loss, str):
        return _NAMES[Loss(int(loss))]
    if loss not in _NAMES.values():
        raise ValueError(f"unknown loss {loss!r}")
    return loss


def residual_and_loss(loss, z, y) -> tuple[np.ndarray, np.ndarray]:
    """Float64 residual ``dL/dz`` and per-sample loss.

    squared: ``r = z - y``, ``0.5 r**2``; logistic (y in {0, 1}): ``r = sigmoid(z) - y``,
    ``log(1 + e**z) - y z``; hinge (y in {-1, +1}): ``r = -y`` where ``y z < 1`` else 0,
    ``max(0, 1 - y z)``.
    """
    loss = _loss_name(loss)
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if loss == "squared":
        r = z - y
        return r, 0.5 * r * r
    if loss == "logistic":
        # sigmoid without overflow: exp of a non-positive argument only
        e = np.exp(-np.abs(z))
        sig = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        return sig - y, np.logaddexp(0.0, z) - y * z
    m = y * z
    return np.where(m < 1.0, -y, 0.0), np.maximum(0.0, 1.0 - m)


def objective(loss, Xs, ys, w) -> float:
    """Exact mean training loss of the scaled-units model ``w`` on the scaled data (no L2 term)."""
    Xs = np.asarray(Xs, dtype=np.float64)
    _, lo = residual_and_loss(loss, Xs @ np.asarray(w, dtype=np.float64), ys)
    return float(np.mean(lo))


@dataclass
class BaselineResult:
    """Float64 SGD outcome, in scaled units."""

    model: np.ndarray          # weights of the scaled problem (length dim, intercept last)
    loss_curve: np.ndarray     # progressive mean loss per epoch
    final_loss: float          # objective() at the final model

    def __iter__(self):  # (model, loss_curve) unpacking
        return iter((self.model, self.loss_curve))


def sgd_raw(loss, Xs, ys, perms, steps, batch_size: int = 1, l2_factor: float = 0.0,
            w0=None) -> tuple[np.ndarray, np.ndarray]:
    """Float64 mini-batch SGD.

    Parameters
    ----------
    loss : str or Loss
    Xs, ys : scaled data (n, d) and labels (n,)
    perms : sequence of permutations; epoch ``e`` visits samples in ``perms[e % len(perms)]``
    steps : per-epoch per-sample steps (the update is ``step * sum_batch r_i x_i``)
    batch_size : samples per update
    l2_factor : fraction of the model removed per batch (0: off)

    Returns
    -------
    (model, loss_curve)
    """
    Xs = np.asarray(Xs, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    n, d = Xs.shape
    w = np.zeros(d) if w0 is None else np.array(w0, dtype=np.float64)
    curve = []
    b = int(batch_size)
    for e, step in enumerate(steps):
        perm = perms[e % len(perms)]
        Xp, yp = Xs[perm], ys[perm]
        total = 0.0
        if b == 1 and _loss_name(loss) == "squared":
            # the hot path, scalar arithmetic on rows
            for i in range(n):
                xi = Xp[i]
                r = xi @ w - yp[i]
                total += 0.5 * r * r
                if l2_factor:
                    w = w - (step * r) * xi - l2_factor * w
                else:
                    w -= (step * r) * xi
        else:
            for s in range(0, n, b):
                Xb = Xp[s:s + b]
                r, lo = residual_and_loss(loss, Xb @ w, yp[s:s + b])
                total += float(lo.sum())
                g = r @ Xb
                w = w - step * g - (l2_factor * w if l2_factor else 0.0)
        curve.append(total / n)
    return w, np.array(curve)


def sgd(job, epochs: int | None = None) -> BaselineResult:
    """Float64 SGD on ``job``'s scaled data and schedule (see the module docstring)."""
    epochs = job.epochs if epochs is None else int(epochs)
    steps = [job.epoch_step(e) for e in range(epochs)]
    w, curve = sgd_raw(job.loss, job.X_scaled, job.y_scaled, job.perms, steps, job.batch_size, job.l2_factor)
    return BaselineResult(model=w, loss_curve=curve, final_loss=objective(job.loss, job.X_scaled,
                                                                          job.y_scaled, w))
