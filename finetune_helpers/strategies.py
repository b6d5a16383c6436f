"""Fine-tuning strategies: WHICH parameters train, with WHAT learning rate, WHEN.

The five strategies of the book differ only in those three choices, and they act on the blocks
of :mod:`finetune_helpers.layers` (input to output, the head last), so one line serves a CNN
and a Transformer alike::

    strategies.new_head_only(model)            # frozen backbone, the head trains
    strategies.train_top(model, 2)             # the head and the 2 blocks below it train
    strategies.freeze_bottom(model, 3)         # the bottom 3 blocks are frozen, the rest trains
    strategies.fine_tune_all(model)            # everything trains
    cb = strategies.GradualUnfreezing(model)   # ULMFiT: one more block per epoch (a callback)
    print(strategies.trainable_summary(model)) # trainable: 1,234 / 5,678 (21.7%)

What Paddle does underneath (verified on paddlepaddle 3.3.1, see the tests):

* Freezing is ``param.stop_gradient = True``. Every optimizer skips such parameters in
  ``step()`` (no update, no weight decay), and Adam/AdamW/Momentum create their moment buffers
  lazily at a parameter's first update. So build ONE optimizer over ``model.parameters()`` at
  the start: parameters unfrozen later are updated from then on. Exception: ``use_multi_tensor=
  True`` caches the trainable set at the first step and then fails with "The size of
  Input(grad) must be equal to Input(param)" after an unfreeze; :class:`GradualUnfreezing`
  refuses such an optimizer.
* BatchNorm running statistics are parameters in Paddle (``_mean``, ``_variance``, always
  ``stop_gradient=True``) and they update in every train-mode forward pass, frozen or not. A
  frozen block's BatchNorm layers therefore get ``_use_global_stats = True``: they normalise
  with, and keep, their running statistics even after ``model.train()``. ``train_bn=True``
  (fastai's ``train_bn``) instead lets BatchNorm in frozen blocks keep training its affine
  weight/bias and updating its statistics. Counts never include the running statistics.
* A parameter group's ``learning_rate`` is a multiplier of the optimizer's learning rate (also
  of an ``LRScheduler``), and Paddle stores it ON THE PARAMETER (``param.optimize_attr``): it
  stays in force for any optimizer built later over a plain parameter list. Call
  :func:`clear_lr_multipliers` before building a plain optimizer on a model that had groups.
* ``stop_gradient``, the BatchNorm switch and the multipliers are not in ``state_dict()``. And
  ``optimizer.set_state_dict`` matches tensors by generated names (``linear_3.w_0_moment1_0``)
  that change with every new model or optimizer object in a process, and it fails with
  "Optimizer set error ... should in state dict" when a parameter that had no state at save time
  (frozen then) is updated first. :func:`save_checkpoint` / :func:`load_checkpoint` store all of
  it by structured parameter name and restore it exactly.
* ``SyncBatchNorm`` ignores ``_use_global_stats`` (its kernel always gets False), so freezing a
  block that holds one raises ``NotImplementedError`` unless ``train_bn=True``.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import paddle
from paddle import nn

from finetune_helpers.layers import (BlocksLike, block_parameters, blocks as get_blocks,
                                     fixed_parameters, is_batch_norm, learnable_parameters, numel,
                                     uncovered_parameters, unwrap)

#: Names accepted by :func:`apply_strategy`.
STRATEGIES = ("full", "top", "freeze_bottom", "head", "gradual")
#: Modes of :class:`GradualUnfreezing`.
GRADUAL_MODES = ("ulmfit", "chain_thaw")
CHECKPOINT_FORMAT = "finetune_helpers.checkpoint/1"

_SAVED_STATS_FLAG = "_ft_saved_use_global_stats"  # BN's own flag, kept while we force True


# ---------------------------------------------------------------------------------------------
# BatchNorm in frozen blocks

def _check_freezable(bns: Iterable[nn.Layer]) -> None:
    if any(isinstance(bn, nn.SyncBatchNorm) for bn in bns):
        raise NotImplementedError(
            "SyncBatchNorm ignores _use_global_stats (paddle 3.3.1 always passes False to its "
            "kernel), so a frozen block cannot keep its statistics: freeze with train_bn=True, "
            "or fine-tune before paddle.nn.SyncBatchNorm.convert_sync_batchnorm")


def _bn_freeze(bn: nn.Layer) -> None:
    """Normalise with, and keep, the running statistics, also in train mode."""
    _check_freezable([bn])
    if not hasattr(bn, _SAVED_STATS_FLAG):
        setattr(bn, _SAVED_STATS_FLAG, bn._use_global_stats)
    bn._use_global_stats = True


def _bn_thaw(bn: nn.Layer) -> None:
    """Undo :func:`_bn_freeze`: the layer's own setting again (batch statistics in train mode)."""
    if hasattr(bn, _SAVED_STATS_FLAG):
        bn._use_global_stats = getattr(bn, _SAVED_STATS_FLAG)
        delattr(bn, _SAVED_STATS_FLAG)


def bn_frozen(bn: nn.Layer) -> bool:
    """Whether :func:`freeze` put this BatchNorm layer into inference behaviour."""
    return hasattr(bn, _SAVED_STATS_FLAG)


def _bn_layers(layer: nn.Layer) -> list[nn.Layer]:
    return [s for s in layer.sublayers(include_self=True) if is_batch_norm(s)]


def _bn_affine(bn: nn.Layer) -> list[paddle.Tensor]:
    fixed = {id(p) for p in fixed_parameters(bn)}
    return [p for p in (getattr(bn, "weight", None), getattr(bn, "bias", None))
            if isinstance(p, paddle.Tensor) and id(p) not in fixed]


# ---------------------------------------------------------------------------------------------
# freeze / unfreeze / counts

def _flatten(items: Iterable[Any]) -> list[Any]:
    out = []
    for item in items:
        if isinstance(item, (nn.Layer, paddle.Tensor)):
            out.append(item)
        elif isinstance(item, (list, tuple)):
            out.extend(_flatten(item))
        else:
            raise TypeError(f"expected paddle.nn.Layer or parameter (or lists of them), got "
                            f"{type(item).__name__}")
    return out


def freeze(*layers_or_params: nn.Layer | paddle.Tensor, train_bn: bool = False) -> None:
    """Stop training these layers / parameters (``stop_gradient = True``).

    The BatchNorm layers inside a frozen layer keep their running statistics even in train mode
    (``_use_global_stats = True``, undone by :func:`unfreeze`). With ``train_bn=True`` their
    affine weight/bias stay trainable and their statistics keep updating instead (fastai).
    Freezing one side of a tied weight freezes both (it is one tensor).
    """
    for item in _flatten(layers_or_params):
        if isinstance(item, paddle.Tensor):
            item.stop_gradient = True
            continue
        keep = set()
        if not train_bn:
            _check_freezable(_bn_layers(item))
        for bn in _bn_layers(item):
            if train_bn:
                _bn_thaw(bn)
                keep.update(id(p) for p in _bn_affine(bn))
            else:
                _bn_freeze(bn)
        for p in learnable_parameters(item):
            p.stop_gradient = id(p) not in keep


def unfreeze(*layers_or_params: nn.Layer | paddle.Tensor) -> None:
    """Train these layers / parameters again (``stop_gradient = False``), BatchNorm in its normal
    behaviour. BatchNorm running statistics stay non-trainable."""
    for item in _flatten(layers_or_params):
        if isinstance(item, paddle.Tensor):
            item.stop_gradient = False
            continue
        for bn in _bn_layers(item):
            _bn_thaw(bn)
        for p in learnable_parameters(item):
            p.stop_gradient = False


def count_parameters(model: nn.Layer) -> tuple[int, int]:
    """``(trainable, total)`` numbers of learnable parameters, exact.

    Each tied tensor is counted once; BatchNorm running statistics are not counted (they are
    Paddle parameters but never learn), so ResNet-18 gives the usual 11,689,512.
    """
    params = learnable_parameters(unwrap(model))
    return numel(p for p in params if not p.stop_gradient), numel(params)


def trainable_summary(model: nn.Layer) -> str:
    """``"trainable: 1,234 / 5,678 (21.7%)"``."""
    trainable, total = count_parameters(model)
    share = 100.0 * trainable / total if total else 0.0
    return f"trainable: {trainable:,} / {total:,} ({share:.1f}%)"


def block_table(model: nn.Layer, *, blocks: BlocksLike | None = None) -> str:
    """One line per block: index, name, parameters it owns, how many train, BatchNorm mode."""
    owned = block_parameters(model, blocks)
    layers = dict(get_blocks(model, blocks))
    width = max(len(n) for n, _ in owned)
    lines = [f"{'#':>3}  {'block':<{width}}  {'params':>12}  {'trainable':>12}  batchnorm"]
    for i, (name, params) in enumerate(owned):
        bns = _bn_layers(layers[name])
        frozen = sum(bn_frozen(b) for b in bns)
        if not bns:
            bn_text = "-"
        elif frozen == len(bns):
            bn_text = "running stats kept"
        else:
            bn_text = "batch stats" if frozen == 0 else f"{frozen}/{len(bns)} kept"
        trainable = numel(p for p in params if not p.stop_gradient)
        lines.append(f"{i:>3}  {name:<{width}}  {numel(params):>12,}  {trainable:>12,}  {bn_text}")
    lines.append(trainable_summary(model))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Strategies

def _empty_error(owned: list[tuple[str, list]], names: Sequence[str]) -> str:
    empty = [n for n, ps in owned if n in names and not ps]
    why = (f"block(s) {empty} own no parameter of their own (a tied weight belongs to the first "
           "block that holds it, e.g. lm_head's weight to embed_tokens)") if empty else \
        "the chosen blocks have no parameters"
    return f"no parameter would train: {why}; train more blocks, e.g. train_top(model, 1)"


def train_blocks(model: nn.Layer, names: Sequence[str], *, blocks: BlocksLike | None = None,
                 train_bn: bool = False) -> list[str]:
    """Train exactly the named blocks; freeze every other parameter of the model.

    The building block of all strategies. Parameters in no block are frozen too. A block trains
    the parameters it owns (see :func:`finetune_helpers.layers.block_parameters`), and its
    BatchNorm layers use batch statistics; BatchNorm in frozen blocks keeps its running
    statistics unless ``train_bn=True``. Returns the names of the training blocks.
    """
    all_blocks = get_blocks(model, blocks)
    valid = [n for n, _ in all_blocks]
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown block name(s) {unknown}; valid names: {valid}")
    chosen = set(names)
    owned = block_parameters(model, blocks)
    trainable = {id(p) for n, ps in owned if n in chosen for p in ps}
    if not trainable:
        raise ValueError(_empty_error(owned, list(names)))
    inner = unwrap(model)
    # Each BatchNorm layer belongs to the first block holding it; the ones in no block count as
    # frozen.
    bn_owner: dict[int, str] = {}
    for name, layer in all_blocks:
        for bn in _bn_layers(layer):
            bn_owner.setdefault(id(bn), name)
    bns = _bn_layers(inner)
    frozen_bns = [bn for bn in bns if bn_owner.get(id(bn)) not in chosen and not train_bn]
    _check_freezable(frozen_bns)
    frozen_ids = {id(bn) for bn in frozen_bns}
    for bn in bns:
        if id(bn) in frozen_ids:
            _bn_freeze(bn)
        else:
            _bn_thaw(bn)
            if train_bn:
                trainable.update(id(p) for p in _bn_affine(bn))
    for p in learnable_parameters(inner):
        p.stop_gradient = id(p) not in trainable
    return [n for n in valid if n in chosen]


def fine_tune_all(model: nn.Layer) -> None:
    """Full fine-tuning: every learnable parameter trains, BatchNorm uses batch statistics."""
    unfreeze(unwrap(model))


def _short(names: Sequence[str]) -> str:
    shown = list(names) if len(names) <= 8 else [*names[:3], "...", *names[-3:]]
    return ", ".join(shown)


def _check_count(value: int, what: str, low: int, high: int, names: list[str]) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} must be an int in {low}..{high} for this model "
                         f"({len(names)} blocks: {_short(names)}), got {value!r}")


def train_top(model: nn.Layer, n: int, *, blocks: BlocksLike | None = None,
              train_bn: bool = False) -> list[str]:
    """The head and the ``n`` blocks below it train; the rest is frozen.

    ``n`` counts blocks below the head, which always trains: ``train_top(model, 0)`` is
    :func:`new_head_only`, ``n = len(blocks) - 1`` trains every block.
    """
    names = [name for name, _ in get_blocks(model, blocks)]
    _check_count(n, "n (blocks trained below the head)", 0, len(names) - 1, names)
    return train_blocks(model, names[len(names) - 1 - n:], blocks=blocks, train_bn=train_bn)


def freeze_bottom(model: nn.Layer, k: int, *, blocks: BlocksLike | None = None,
                  train_bn: bool = False) -> list[str]:
    """The bottom ``k`` blocks (from the input) are frozen; the rest trains.

    ``k`` in ``0..len(blocks) - 1``: the head always trains (``k = len - 1`` is head only).
    """
    names = [name for name, _ in get_blocks(model, blocks)]
    _check_count(k, "k (frozen blocks from the input)", 0, len(names) - 1, names)
    return train_blocks(model, names[k:], blocks=blocks, train_bn=train_bn)


def new_head_only(model: nn.Layer, *, blocks: BlocksLike | None = None,
                  train_bn: bool = False) -> list[str]:
    """Feature extraction: a frozen backbone (BatchNorm statistics kept), only the head trains."""
    return train_top(model, 0, blocks=blocks, train_bn=train_bn)


def apply_strategy(model: nn.Layer, name: str, **kw: Any) -> list[Any]:
    """Apply a strategy by name (Part III's comparison); returns the callbacks it needs.

    ``"full"`` (:func:`fine_tune_all`), ``"top"`` (:func:`train_top`, needs ``n=``),
    ``"freeze_bottom"`` (:func:`freeze_bottom`, needs ``k=``), ``"head"``
    (:func:`new_head_only`), ``"gradual"`` (:class:`GradualUnfreezing`, epoch 0 applied now).
    Static strategies return ``[]``; ``"gradual"`` returns ``[callback]`` for the training loop.
    """
    if name == "full":
        if kw:
            raise ValueError(f"strategy 'full' takes no options, got {sorted(kw)}")
        fine_tune_all(model)
        return []
    if name == "top":
        train_top(model, **kw)
        return []
    if name == "freeze_bottom":
        freeze_bottom(model, **kw)
        return []
    if name == "head":
        new_head_only(model, **kw)
        return []
    if name == "gradual":
        callback = GradualUnfreezing(model, **kw)
        callback.apply(0)
        return [callback]
    raise ValueError(f"unknown strategy {name!r}; valid names: {list(STRATEGIES)}")


# ---------------------------------------------------------------------------------------------
# Gradual unfreezing

def _optimizer_param_ids(optimizer: paddle.optimizer.Optimizer) -> set[int]:
    ids: set[int] = set()
    for group in optimizer._param_groups or []:
        params = group["params"] if isinstance(group, dict) else [group]
        ids.update(id(p) for p in params)
    return ids


class GradualUnfreezing:
    """Training callback that changes which blocks train at the start of each epoch.

    ``mode="ulmfit"`` (Howard & Ruder 2018): epoch 0 trains the top ``start`` blocks (the head
    when ``start=1``); every ``every`` epochs one more block below trains, until all do.

    ``mode="chain_thaw"`` (Felbo et al. 2017, DeepMoji, sec. 3.3): first the new layer (the head)
    alone, then each other block ALONE in turn starting from the FIRST block (input side), and
    finally all blocks together; each stage lasts ``every`` epochs. (The paper moves on when
    the validation score stops improving; here a stage has a fixed length.)

    The training loop calls ``on_train_begin(model, optimizer)`` and ``on_epoch_begin(epoch,
    model, optimizer)``. Build the optimizer ONCE over ``model.parameters()`` (all of them,
    frozen ones included): Paddle skips frozen parameters and creates their optimizer state when
    they first train. ``log`` records what changed at which epoch; :meth:`schedule` lists the
    training blocks per epoch.
    """

    def __init__(self, model: nn.Layer, *, start: int = 1, every: int = 1,
                 blocks: BlocksLike | None = None, mode: str = "ulmfit",
                 train_bn: bool = False) -> None:
        if mode not in GRADUAL_MODES:
            raise ValueError(f"unknown mode {mode!r}; valid modes: {list(GRADUAL_MODES)}")
        self.model = model
        self.blocks = get_blocks(model, blocks)
        self.names = [n for n, _ in self.blocks]
        self.mode = mode
        self.train_bn = train_bn
        count = len(self.names)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every (epochs per stage) must be an int >= 1, got {every!r}")
        if mode == "ulmfit":
            _check_count(start, "start (blocks trained at epoch 0)", 1, count, self.names)
        elif start != 1:
            raise ValueError("start applies to mode='ulmfit' only; chain_thaw always begins "
                             "with the head alone: leave start=1")
        self.start, self.every = start, every
        self.stages = self._stages()
        owned = dict(block_parameters(model, self.blocks))
        for i, stage in enumerate(self.stages):
            if not any(owned[n] for n in stage):
                raise ValueError(f"stage {i} ({stage}) trains nothing: "
                                 + _empty_error(list(owned.items()), stage)
                                 + (f", or GradualUnfreezing(start={start + 1})"
                                    if mode == "ulmfit" else
                                    ", or pass blocks= without that block"))
        self.log: list[dict[str, Any]] = []
        self._current: list[str] | None = None
        self._checked: int | None = None  # id of the optimizer already checked

    def _stages(self) -> list[list[str]]:
        names = self.names
        if self.mode == "ulmfit":
            return [names[len(names) - k:] for k in range(self.start, len(names) + 1)]
        stages = [[names[-1]]] + [[n] for n in names[:-1]]
        return stages + [list(names)] if len(names) > 1 else stages

    def trainable_at(self, epoch: int) -> list[str]:
        """Names of the blocks that train during ``epoch`` (0-based); after the last stage,
        the last stage (all blocks) continues."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        return list(self.stages[min(epoch // self.every, len(self.stages) - 1)])

    def schedule(self, epochs: int | None = None) -> list[list[str]]:
        """Training block names per epoch; by default until the stage where all blocks train."""
        if epochs is None:
            epochs = len(self.stages) * self.every
        return [self.trainable_at(e) for e in range(epochs)]

    @property
    def epochs_to_full(self) -> int:
        """Epochs before every block trains (the schedule's length)."""
        return len(self.stages) * self.every

    def apply(self, epoch: int) -> list[str]:
        """Set the model to the state of ``epoch``, log the change, return the training blocks."""
        names = self.trainable_at(epoch)
        train_blocks(self.model, names, blocks=self.blocks, train_bn=self.train_bn)
        before = set(self._current or [])
        self.log.append({"epoch": epoch, "trainable": names,
                         "unfrozen": [n for n in names if n not in before],
                         "frozen": [n for n in self.names if n in before and n not in names]})
        self._current = names
        return names

    def check_optimizer(self, optimizer: paddle.optimizer.Optimizer) -> None:
        """Raise if ``optimizer`` cannot follow the schedule (multi-tensor, or it lacks the
        parameters of blocks that will be unfrozen later)."""
        if getattr(optimizer, "_use_multi_tensor", False):
            raise ValueError("this optimizer was built with use_multi_tensor=True, which fixes "
                             "the trainable parameters at its first step and fails after an "
                             "unfreeze; build it with use_multi_tensor=False (the default)")
        held = _optimizer_param_ids(optimizer)
        missing = [n for n, ps in block_parameters(self.model, self.blocks)
                   if any(id(p) not in held for p in ps)]
        if missing:
            raise ValueError(f"the optimizer does not hold the parameters of block(s) {missing}, "
                             "so they would never train once unfrozen; build it over "
                             "model.parameters() (Paddle skips frozen parameters) or over "
                             "discriminative_lr_groups(model)")

    # Training-loop hooks ------------------------------------------------------------------
    def _ensure(self, epoch: int) -> None:
        if not self.log or self.log[-1]["epoch"] != epoch:
            self.apply(epoch)

    def _check_once(self, optimizer: paddle.optimizer.Optimizer) -> None:
        if self._checked != id(optimizer):
            self.check_optimizer(optimizer)
            self._checked = id(optimizer)

    def on_train_begin(self, model: nn.Layer, optimizer: paddle.optimizer.Optimizer) -> None:
        self._check_once(optimizer)
        self._ensure(0)

    def on_epoch_begin(self, epoch: int, model: nn.Layer,
                       optimizer: paddle.optimizer.Optimizer) -> None:
        self._check_once(optimizer)
        self._ensure(epoch)

    def __repr__(self) -> str:
        return (f"GradualUnfreezing(mode={self.mode!r}, start={self.start}, every={self.every}, "
                f"{len(self.names)} blocks, {self.epochs_to_full} epochs to full)")


# ---------------------------------------------------------------------------------------------
# Discriminative learning rates

def discriminative_lr_groups(model: nn.Layer, factor: float = 2.6, *,
                             blocks: BlocksLike | None = None,
                             head_multiplier: float = 1.0) -> list[dict[str, Any]]:
    """Paddle parameter groups with a learning-rate multiplier per block (ULMFiT).

    The head gets ``head_multiplier`` (1: the optimizer's learning rate), the block below it
    ``1 / factor``, the next ``1 / factor**2``... (ULMFiT: eta^(l-1) = eta^l / 2.6). All
    learnable parameters are included, frozen ones too, so one optimizer serves gradual
    unfreezing. Pass the list to any optimizer: ``AdamW(learning_rate=base, parameters=groups)``
    (Paddle multiplies; an LRScheduler base works). Each group also carries its block ``name``
    (Paddle ignores it) for :func:`lr_table`. Blocks owning no parameter (a tied head) get no
    group.
    """
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
        raise ValueError(f"factor must be a number > 0 (ULMFiT uses 2.6; 1 = same rate "
                         f"everywhere), got {factor!r}")
    if not head_multiplier > 0:
        raise ValueError(f"head_multiplier must be > 0, got {head_multiplier!r}")
    missing = uncovered_parameters(model, blocks)
    if missing:
        raise ValueError(f"{len(missing)} parameter(s) belong to no block, e.g. {missing[:5]}; "
                         "they would never train: pass blocks= covering the whole model")
    owned = block_parameters(model, blocks)
    top = len(owned) - 1
    groups = []
    for i, (name, params) in enumerate(owned):
        if not params:
            continue
        mult = float(head_multiplier) if i == top else float(factor) ** -(top - i)
        groups.append({"params": params, "learning_rate": mult, "name": name})
    return groups


def lr_table(groups: Sequence[dict[str, Any]], base_lr: float) -> str:
    """Table of block, multiplier and effective learning rate for a base rate."""
    rows = [(str(g.get("name", f"group{i}")), float(g.get("learning_rate", 1.0)),
             numel(g["params"])) for i, g in enumerate(groups)]
    width = max([len(r[0]) for r in rows] + [5])
    lines = [f"{'block':<{width}}  {'multiplier':>10}  {'lr':>10}  {'params':>12}"]
    lines += [f"{n:<{width}}  {m:>10.4g}  {m * base_lr:>10.3g}  {c:>12,}" for n, m, c in rows]
    return "\n".join(lines)


def clear_lr_multipliers(model: nn.Layer) -> None:
    """Reset every parameter's group multiplier to 1.

    Paddle keeps a group's ``learning_rate`` in ``param.optimize_attr`` and an optimizer built
    later over a plain parameter list does not reset it (verified: the old multiplier still
    scales its updates). Call this before building such an optimizer.
    """
    for p in unwrap(model).parameters():
        if getattr(p, "optimize_attr", None) is not None:
            p.optimize_attr["learning_rate"] = 1.0


# ---------------------------------------------------------------------------------------------
# Checkpoints that keep the frozen state and the optimizer state

def _struct_names(model: nn.Layer) -> dict[str, str]:
    """Generated parameter name (``linear_3.w_0``) -> structured name (``fc.weight``)."""
    return {p.name: n for n, p in unwrap(model).named_parameters()}


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
        "bn": {n: {"use_global_stats": s._use_global_stats,
                   "frozen": bn_frozen(s),
                   "own_flag": getattr(s, _SAVED_STATS_FLAG, None)}
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
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
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
    for n, bn_state in state["bn"].items():
        bn = sublayers[n]
        _bn_thaw(bn)
        if bn_state["frozen"]:
            bn._use_global_stats = bn_state["own_flag"]
            _bn_freeze(bn)
        else:
            bn._use_global_stats = bn_state["use_global_stats"]
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
    held = _optimizer_param_ids(optimizer)
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
