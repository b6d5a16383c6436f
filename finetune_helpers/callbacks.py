"""Training-loop callbacks: stop when validation stops improving, and keep the best weights.

:func:`finetune_helpers.train.fit` calls ``on_train_begin``, ``on_epoch_end`` and
``on_train_end`` of every callback, and ends training after an epoch in which a callback's
``stop_training`` is true (Keras' convention, written here because Paddle's own
``paddle.callbacks.EarlyStopping`` belongs to the high-level ``paddle.Model`` loop, which the
book does not use).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import paddle


class EarlyStopping:
    """Stop after ``patience`` epochs without improvement of ``monitor``; restore the best epoch.

    The rule the book states: after every epoch the model is scored on the validation set; an
    epoch improves when its ``monitor`` value (a key of the epoch's record, e.g.
    ``"eval_accuracy"``) beats the best so far by more than ``min_delta`` (ties keep the earlier
    epoch); training stops when ``patience`` epochs in a row did not improve (but not before
    ``min_epochs`` epochs, e.g. until a gradual schedule trains every block), or at the epoch
    limit, and the weights of the best epoch are put back (``restore_best``). ``best_epoch`` and
    ``best`` say which epoch won; ``stopped_epoch`` where training ended (``None``: at the limit).

    The best weights are kept as numpy copies of the whole ``state_dict`` (parameters and
    BatchNorm statistics), so schedules that freeze and unfreeze blocks restore exactly.
    """

    def __init__(self, monitor: str = "eval_accuracy", *, mode: str = "max", patience: int = 2,
                 min_delta: float = 0.0, min_epochs: int = 0, restore_best: bool = True) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an int >= 1 (epochs without improvement), "
                             f"got {patience!r}")
        self.monitor, self.mode, self.patience = monitor, mode, patience
        if isinstance(min_epochs, bool) or not isinstance(min_epochs, int) or min_epochs < 0:
            raise ValueError(f"min_epochs must be an int >= 0, got {min_epochs!r}")
        self.min_delta, self.restore_best = float(min_delta), restore_best
        self.min_epochs = min_epochs
        self.best = -math.inf if mode == "max" else math.inf
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.stop_training = False
        self._wait = 0
        self._state: dict[str, np.ndarray] | None = None

    def _improves(self, value: float) -> bool:
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_train_begin(self, model: paddle.nn.Layer, optimizer: Any) -> None:
        self.__init__(self.monitor, mode=self.mode, patience=self.patience,  # type: ignore[misc]
                      min_delta=self.min_delta, min_epochs=self.min_epochs,
                      restore_best=self.restore_best)

    def on_epoch_end(self, epoch: int, model: paddle.nn.Layer, optimizer: Any,
                     logs: dict[str, Any]) -> None:
        if self.monitor not in logs:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r}, which this epoch's record "
                           f"lacks (keys: {sorted(logs)}); pass eval_loader= to fit()")
        value = float(logs[self.monitor])
        if self._improves(value):
            self.best, self.best_epoch, self._wait = value, epoch, 0
            if self.restore_best:
                self._state = {k: np.array(v.numpy(), copy=True)
                               for k, v in model.state_dict().items()}
        else:
            self._wait += 1
            if self._wait >= self.patience and epoch + 1 >= self.min_epochs:
                self.stop_training = True
                self.stopped_epoch = epoch

    def on_train_end(self, model: paddle.nn.Layer, optimizer: Any, history: Any) -> None:
        if self.restore_best and self._state is not None:
            model.set_state_dict({k: paddle.to_tensor(v) for k, v in self._state.items()})
            self._state = None
        history.best_epoch = self.best_epoch
