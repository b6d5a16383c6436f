"""The book's training recipe, in one place: the optimizer with a head group, and BatchNorm.

Chapter 03 writes these lines out in plain Paddle; every later chapter (and the experiment
grids) calls them by name:

* :func:`optimizer`: AdamW over ALL parameters of the model (Paddle skips frozen ones, and
  creates a parameter's moments at its first update, so one optimizer serves schedules that
  unfreeze later) in two groups: the pretrained body at ``lr`` and the new head at
  ``head_multiplier`` times that (Paddle's group ``learning_rate`` is a multiplier).
* :func:`batchnorm_inference`: every BatchNorm layer normalises with its pretrained running
  statistics, also in train mode (``_use_global_stats = True``), and keeps them. Small
  batches of a new domain would otherwise replace ImageNet's statistics with noisy ones; the
  freeze-the-bottom chapter shows the collapse.
"""

from __future__ import annotations

from typing import Iterable

import paddle
from paddle import nn

from finetune_helpers.layers import is_batch_norm

#: AdamW's decoupled weight decay, the same in every run of the book.
WEIGHT_DECAY = 0.01
#: The new head learns this many times faster than the pretrained body.
HEAD_MULTIPLIER = 10.0


def optimizer(model: nn.Layer, lr: float, head: nn.Layer | Iterable[paddle.Tensor], *,
              head_multiplier: float = HEAD_MULTIPLIER,
              weight_decay: float = WEIGHT_DECAY) -> paddle.optimizer.AdamW:
    """AdamW with two parameter groups: the body at ``lr``, ``head`` at ``head_multiplier x lr``.

    ``head`` is the new head (a Layer or its parameters); every other parameter of ``model`` is
    the body, frozen ones included.
    """
    head_params = list(head.parameters() if isinstance(head, nn.Layer) else head)
    if not head_params:
        raise ValueError("the head has no parameters; pass the new classification layer "
                         "(e.g. model.fc or model.classifier)")
    in_head = {id(p) for p in head_params}
    body = [p for p in model.parameters() if id(p) not in in_head]
    missing = in_head - {id(p) for p in model.parameters()}
    if missing:
        raise ValueError(f"{len(missing)} head parameter(s) are not parameters of the model; "
                         "pass the head layer of this model")
    groups = [{"params": head_params, "learning_rate": head_multiplier}]
    if body:
        groups.insert(0, {"params": body})
    return paddle.optimizer.AdamW(learning_rate=lr, parameters=groups,
                                  weight_decay=weight_decay)


def batchnorm_inference(model: nn.Layer) -> int:
    """Every BatchNorm layer of ``model`` normalises with (and keeps) its running statistics,
    also in train mode. Returns how many layers were set."""
    norms = [m for m in model.sublayers(include_self=True) if is_batch_norm(m)]
    for bn in norms:
        bn._use_global_stats = True
    return len(norms)


def precise_batchnorm(model: nn.Layer, loader: Iterable) -> int:
    """Precise BatchNorm (Wu & Johnson, 2021): set every BatchNorm layer's running statistics to
    those of the whole of ``loader``'s images, in one pass; returns how many layers were set.

    For a network trained from scratch on few steps, whose running averages still hold mostly
    their initial values (Paddle: ``running = momentum * running + (1 - momentum) * batch``).
    With ``momentum = 0`` one train-mode pass over all images at once makes the running
    statistics exactly that batch's. The model is left in eval mode, momentum restored.
    """
    images = paddle.concat([x for x, _ in loader])
    norms = [m for m in model.sublayers(include_self=True) if is_batch_norm(m)]
    saved = [bn._momentum for bn in norms]
    for bn in norms:
        bn._momentum = 0.0  # running = 0 * running + 1 * (this batch)
    model.train()
    with paddle.no_grad():
        model(images)
    for bn, momentum in zip(norms, saved):
        bn._momentum = momentum
    model.eval()
    return len(norms)
