"""Checkpoints that keep what fine-tuning changes besides the weights, and the optimizer state.

A fine-tuning run is more than ``model.state_dict()``: which parameters are frozen
(``stop_gradient``), each BatchNorm layer's mode (``_use_global_stats``), the learning-rate
multipliers that parameter groups leave on the parameters (``param.optimize_attr``), and the
optimizer's moments. None of the first three is in ``state_dict()``. And Paddle's own
``optimizer.set_state_dict`` matches tensors by generated names (``linear_3.w_0_moment1_0``) that
change with every new model or optimizer object in a process, and it fails with "Optimizer set
error ... should in state dict" when a parameter that had no state at save time (frozen then) is
updated first. :func:`save_checkpoint` / :func:`load_checkpoint` store all of it by structured
parameter name and restore it exactly, into new objects, in this process or another (verified
on paddlepaddle 3.3.1: training continues bit-identically, see the tests). Under data parallel
use :func:`finetune_helpers.distributed.save_checkpoint` (rank 0 writes).
"""

from __future__ import annotations

from typing import Any

import paddle
from paddle import nn

from finetune_helpers.layers import is_batch_norm, learnable_parameters, unwrap

CHECKPOINT_FORMAT = "finetune_helpers.checkpoint/2"
#: Older formats :func:`load_checkpoint` still reads (1: BatchNorm mode under "use_global_stats").
_READABLE = ("finetune_helpers.checkpoint/1", CHECKPOINT_FORMAT)


def _struct_names(model: nn.Layer) -> dict[str, str]:
    """Generated parameter name (``linear_3.w_0``) -> structured name (``fc.weight``)."""
    return {p.name: n for n, p in unwrap(model).named_parameters()}


def _held_ids(optimizer: paddle.optimizer.Optimizer) -> set[int]:
    ids: set[int] = set()
    for group in optimizer._param_groups or []:
        params = group["params"] if isinstance(group, dict) else [group]
        ids.update(id(p) for p in params)
    return ids


def save_checkpoint(path: str, model: nn.Layer,
                    optimizer: paddle.optimizer.Optimizer | None = None, **extra: Any) -> None:
    """Save weights, frozen flags, BatchNorm modes, learning-rate multipliers and the optimizer
    state (by structured parameter name) in one ``paddle.save`` file. ``extra`` (epoch, metrics)
    comes back from :func:`load_checkpoint`."""
    inner = unwrap(model)
    learnable = {id(p) for p in learnable_parameters(inner)}
    state: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "model": inner.state_dict(),
        "trainable": [n for n, p in inner.named_parameters()
                      if id(p) in learnable and not p.stop_gradient],
        "bn": {n: s._use_global_stats
               for n, s in inner.named_sublayers(include_self=True) if is_batch_norm(s)},
        "lr_multipliers": {n: float(p.optimize_attr.get("learning_rate", 1.0))
                           for n, p in inner.named_parameters()
                           if isinstance(p.optimize_attr.get("learning_rate", 1.0), (int, float))},
        "extra": extra,
    }
    if optimizer is not None:
        if getattr(optimizer, "_master_weights", None):
            raise NotImplementedError("optimizers with multi_precision master weights are not "
                                      "supported by save_checkpoint; save optimizer.state_dict() "
                                      "and reload it in a fresh process with the same code")
        names = _struct_names(inner)
        accumulators = {}
        for acc, per_param in optimizer._accumulators.items():
            accumulators[acc] = {names[pname]: var for pname, var in per_param.items()
                                 if pname in names}
        opt_state: dict[str, Any] = {"accumulators": accumulators}
        if isinstance(optimizer._learning_rate, paddle.optimizer.lr.LRScheduler):
            opt_state["LR_Scheduler"] = optimizer._learning_rate.state_dict()
        state["optimizer"] = opt_state
    paddle.save(state, path)


def load_checkpoint(path: str, model: nn.Layer,
                    optimizer: paddle.optimizer.Optimizer | None = None) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` saved into ``model`` (and ``optimizer``, which must be
    built over the same model). Works for new model/optimizer objects, in this process or
    another. Returns the ``extra`` values."""
    state = paddle.load(path)
    if not isinstance(state, dict) or state.get("format") not in _READABLE:
        raise ValueError(f"{path} is not a checkpoint written by save_checkpoint "
                         f"(format {CHECKPOINT_FORMAT}); for a plain state_dict use "
                         "model.set_state_dict(paddle.load(path))")
    inner = unwrap(model)
    missing, unexpected = inner.set_state_dict(state["model"])
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {list(missing)[:5]}, "
                         f"unexpected {list(unexpected)[:5]}; build the same architecture first")
    params = dict(inner.named_parameters())
    learnable = {id(p) for p in learnable_parameters(inner)}
    trainable = set(state["trainable"])
    for n, p in params.items():
        if id(p) in learnable:
            p.stop_gradient = n not in trainable
    sublayers = dict(inner.named_sublayers(include_self=True))
    for n, flag in state["bn"].items():
        sublayers[n]._use_global_stats = flag["use_global_stats"] if isinstance(flag, dict) \
            else flag  # format 1 stored a dict per layer
    for n, mult in state["lr_multipliers"].items():
        params[n].optimize_attr["learning_rate"] = mult
    if optimizer is not None and "optimizer" in state:
        _load_optimizer_state(optimizer, params, state["optimizer"])
    return dict(state.get("extra", {}))


def _load_optimizer_state(optimizer: paddle.optimizer.Optimizer,
                          params: dict[str, paddle.Tensor], saved: dict[str, Any]) -> None:
    # Paddle's set_state_dict matches generated names, which differ between objects, and it
    # asserts when a parameter without saved state is updated first. So create the state
    # tensors for the parameters that have saved state now (private API, paddle 3.3.1) and
    # copy the values in; parameters without state get it lazily, as usual.
    held = _held_ids(optimizer)
    names = set()
    for per_param in saved["accumulators"].values():
        names.update(per_param)
    unknown = sorted(n for n in names if n not in params or id(params[n]) not in held)
    if unknown:
        raise ValueError(f"optimizer state for parameters {unknown[:5]} that this optimizer "
                         "does not hold; build it over the same parameters as when saving")
    with_state = [params[n] for n in sorted(names)]
    block = paddle.static.default_main_program().global_block()
    optimizer._create_accumulators(block, with_state)
    for acc, per_param in saved["accumulators"].items():
        if acc not in optimizer._accumulators:
            raise ValueError(f"optimizer state {acc!r} is unknown to {type(optimizer).__name__}: "
                             "load into the same kind of optimizer as when saving")
        for n, value in per_param.items():
            optimizer._accumulators[acc][params[n].name].set_value(value)
    if "LR_Scheduler" in saved and isinstance(optimizer._learning_rate,
                                              paddle.optimizer.lr.LRScheduler):
        optimizer._learning_rate.set_state_dict(saved["LR_Scheduler"])
