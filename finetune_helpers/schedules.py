"""Learning-rate schedules of the book, as Paddle schedulers: ULMFiT's slanted triangular rate.

Build the optimizer with ``learning_rate=<the scheduler>``; :func:`finetune_helpers.train.fit`
steps the optimizer's own scheduler after every batch (or every epoch, ``scheduler_step``).
"""

from __future__ import annotations

import math

import paddle


def slanted_triangular(base_lr: float, total_steps: int, cut_frac: float = 0.1,
                       ratio: float = 32) -> paddle.optimizer.lr.OneCycleLR:
    """ULMFiT's slanted triangular learning rate (Howard & Ruder 2018, eq. 3) as a Paddle scheduler.

    The rate rises linearly from ``base_lr / ratio`` to ``base_lr`` over the first
    ``cut = floor(total_steps * cut_frac)`` steps, then falls linearly back to
    ``base_lr / ratio`` at step ``total_steps``. Step it once per batch.

    Built from Paddle's own ``OneCycleLR`` with linear annealing and two phases: its phase ends
    are at ``phase_pct * N - 1`` and ``N - 1``, so ``N = total_steps + 1`` and
    ``phase_pct = (cut + 1) / N`` put them at ``cut`` and ``total_steps``. The decay runs over
    ``total_steps - cut`` steps. The paper writes that length as ``cut * (1/cut_frac - 1)``,
    which is the same number when ``total_steps * cut_frac`` is whole; otherwise the paper's
    form overshoots and ends below ``base_lr / ratio`` (negative for small step counts), so
    the exact length is used.
    """
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
    if not 0.0 < cut_frac < 1.0:
        raise ValueError(f"cut_frac must be in (0, 1), got {cut_frac}")
    if ratio < 1:
        raise ValueError(f"ratio must be >= 1 (lowest rate = base_lr / ratio), got {ratio}")
    cut = math.floor(total_steps * cut_frac)
    if cut < 1 or cut >= total_steps:
        raise ValueError(f"total_steps * cut_frac = {total_steps * cut_frac:g} gives {cut} warm-up "
                         f"steps out of {total_steps}; need at least 1 and fewer than all: raise "
                         f"total_steps to >= {math.ceil(1 / cut_frac)} or change cut_frac")
    n = total_steps + 1
    return paddle.optimizer.lr.OneCycleLR(
        max_learning_rate=float(base_lr), total_steps=n, divide_factor=float(ratio),
        end_learning_rate=float(base_lr) / ratio, phase_pct=(cut + 1) / n,
        anneal_strategy="linear", three_phase=False)
