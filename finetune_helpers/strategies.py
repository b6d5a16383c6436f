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
    print(strategies.block_table(model))       # per block: parameters, trainable, BatchNorm mode

**Counting blocks: n and k.** Both count the blocks of :func:`finetune_helpers.layers.blocks`
*other than the head*; the head (the last block) always trains and is never counted. With
``B`` blocks, ``train_top(model, n)`` trains the ``n`` blocks just below the head and the head
(``n`` in ``0..B-1``; ``n = 0`` is :func:`new_head_only`), and ``freeze_bottom(model, k)``
freezes the ``k`` blocks from the input and trains the rest (``k`` in ``0..B-1``; ``k = 0``
trains everything). So ``train_top(model, n)`` trains what ``freeze_bottom(model, B - 1 - n)``
trains. A Transformer's embeddings are block 0, so "the embeddings and the bottom L layers" is
``k = L + 1``:

=========================================  ============================  =====================
model (its B blocks)                       call                          frozen blocks
=========================================  ============================  =====================
EfficientNet-Lite0 (10: stem, stage1..7,   ``train_top(m, 2)``           stem..stage6
head_conv, fc)                             ``freeze_bottom(m, 4)``       stem..stage3
MiniLM classifier (9: bert.embeddings,     ``train_top(m, 2)``           embeddings..layers.4
bert.encoder.layers.0..5, bert.pooler,     ``freeze_bottom(m, 4)``       embeddings..layers.2
classifier)
SmolLM2 (33: llama.embed_tokens,           ``freeze_bottom(m, L + 1)``   embeddings and
llama.layers.0..29, llama.norm, lm_head)                                 layers.0..L-1 (and
                                                                         the tied lm_head)
=========================================  ============================  =====================

**BatchNorm policy** (``bn=``, every strategy function). BatchNorm running statistics are
parameters in Paddle (``_mean``, ``_variance``, always ``stop_gradient=True``) and they update in
every train-mode forward pass, frozen or not. ``stop_gradient`` alone therefore does not freeze
a BatchNorm layer; its mode is the attribute ``_use_global_stats``: ``True`` normalises with,
and keeps, the running statistics even after ``model.train()`` ("running stats"); ``None``
(Paddle's default) uses batch statistics in train mode and updates the running ones ("batch
stats"). Each strategy call sets EVERY BatchNorm layer of the model from the policy and the
set of training blocks only, so the result never depends on earlier calls:

===================  ============================  ============================================
``bn=``              BatchNorm in frozen blocks    BatchNorm in training blocks
===================  ============================  ============================================
``"inference"``      running stats, affine frozen  running stats, affine trains
(default)
``"frozen_blocks"``  running stats, affine frozen  batch stats, affine trains
``"train"``          batch stats, affine TRAINS    batch stats, affine trains
===================  ============================  ============================================

``"inference"`` is the book's recipe (:func:`finetune_helpers.recipe.batchnorm_inference`: small
batches of a new domain would replace the pretrained statistics with noisy ones) and the
default, because every stored result of the book trained that way. ``"frozen_blocks"`` is the
classic "freeze what is frozen" setting; ``"train"`` is fastai's ``train_bn=True``. BatchNorm
layers in no block count as frozen. :func:`block_table` shows each block's actual mode (read
from the layers). Models without BatchNorm (Transformers) are unaffected. Counts never include
the running statistics. ``SyncBatchNorm`` ignores ``_use_global_stats`` (its kernel always gets
False), so a policy that gives one running statistics raises ``NotImplementedError``: use
``bn="train"``.

What Paddle does underneath (verified on paddlepaddle 3.3.1, see the tests):

* Freezing is ``param.stop_gradient = True``. Every optimizer skips such parameters in
  ``step()`` (no update, no weight decay), and Adam/AdamW/Momentum create their moment buffers
  lazily at a parameter's first update. So build ONE optimizer over ``model.parameters()`` at
  the start: parameters unfrozen later are updated from then on. Exception: ``use_multi_tensor=
  True`` caches the trainable set at the first step and then fails with "The size of
  Input(grad) must be equal to Input(param)" after an unfreeze; :class:`GradualUnfreezing`
  refuses such an optimizer.
* A parameter group's ``learning_rate`` is a multiplier of the optimizer's learning rate (also
  of an ``LRScheduler``), and Paddle stores it ON THE PARAMETER (``param.optimize_attr``): it
  stays in force for any optimizer built later over a plain parameter list. Call
  :func:`clear_lr_multipliers` before building a plain optimizer on a model that had groups.
* ``stop_gradient``, the BatchNorm mode and the multipliers are not in ``state_dict()``:
  :mod:`finetune_helpers.checkpoints` saves and restores them with the optimizer state.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import paddle
from paddle import nn

from finetune_helpers import layers
from finetune_helpers.layers import (BlocksLike, fixed_parameters, is_batch_norm,
                                     learnable_parameters, numel, unwrap)

#: BatchNorm policies of the strategies (``bn=``), see the module notes.
BN_POLICIES = ("inference", "frozen_blocks", "train")
#: The default policy: the book's recipe, every BatchNorm on its running statistics.
DEFAULT_BN = "inference"
#: Modes of :class:`GradualUnfreezing`.
GRADUAL_MODES = ("ulmfit", "chain_thaw")


# ---------------------------------------------------------------------------------------------
# BatchNorm

def _check_bn(bn: str) -> None:
    if bn not in BN_POLICIES:
        raise ValueError(
            f"bn must be one of {list(BN_POLICIES)}, got {bn!r}: 'inference' = every BatchNorm "
            "on its running statistics (the book's recipe), 'frozen_blocks' = only BatchNorm in "
            "frozen blocks, 'train' = batch statistics and trainable affine everywhere")


def _stats_flag(bn: str, training: bool) -> bool | None:
    """``_use_global_stats`` for a BatchNorm layer in a training (or frozen) block."""
    if bn == "train":
        return None
    if bn == "inference":
        return True
    return None if training else True


def _bn_layers(layer: nn.Layer) -> list[nn.Layer]:
    return [s for s in layer.sublayers(include_self=True) if is_batch_norm(s)]


def _bn_affine(bn: nn.Layer) -> list[paddle.Tensor]:
    fixed = {id(p) for p in fixed_parameters(bn)}
    return [p for p in (getattr(bn, "weight", None), getattr(bn, "bias", None))
            if isinstance(p, paddle.Tensor) and id(p) not in fixed]


def _set_bn(settings: Sequence[tuple[nn.Layer, bool | None]]) -> None:
    """Give each BatchNorm layer its ``_use_global_stats``, after checking that none of the
    layers that need running statistics is a SyncBatchNorm (so nothing is half-done)."""
    if any(isinstance(bn, nn.SyncBatchNorm) and flag for bn, flag in settings):
        raise NotImplementedError(
            "SyncBatchNorm ignores _use_global_stats (paddle 3.3.1 always passes False to its "
            "kernel), so it cannot keep its running statistics: pass bn='train' (batch "
            "statistics everywhere), or fine-tune before "
            "paddle.nn.SyncBatchNorm.convert_sync_batchnorm")
    for bn, flag in settings:
        bn._use_global_stats = flag


def bn_mode(bn: nn.Layer) -> str:
    """``"running stats"`` (normalises with and keeps its running statistics, also in train
    mode) or ``"batch stats"`` (Paddle's default: batch statistics in train mode), read from the
    layer's ``_use_global_stats``."""
    return "running stats" if bn._use_global_stats is True else "batch stats"


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


def _set_trainable(items: Sequence[nn.Layer | paddle.Tensor], training: bool, bn: str) -> None:
    _check_bn(bn)
    layers_ = [x for x in items if isinstance(x, nn.Layer)]
    _set_bn([(b, _stats_flag(bn, training)) for x in layers_ for b in _bn_layers(x)])
    for item in items:
        if isinstance(item, paddle.Tensor):
            item.stop_gradient = not training
            continue
        keep = {id(p) for b in _bn_layers(item) for p in _bn_affine(b)} if bn == "train" else set()
        for p in learnable_parameters(item):
            p.stop_gradient = not training and id(p) not in keep


def freeze(*layers_or_params: nn.Layer | paddle.Tensor, bn: str = DEFAULT_BN) -> None:
    """Stop training these layers / parameters (``stop_gradient = True``).

    The BatchNorm layers inside a frozen layer get the policy's frozen-block mode (module
    notes): running statistics, or with ``bn="train"`` batch statistics and a trainable affine
    weight/bias. Freezing one side of a tied weight freezes both (it is one tensor).
    """
    _set_trainable(_flatten(layers_or_params), False, bn)


def unfreeze(*layers_or_params: nn.Layer | paddle.Tensor, bn: str = DEFAULT_BN) -> None:
    """Train these layers / parameters again (``stop_gradient = False``), their BatchNorm layers
    in the policy's training-block mode. BatchNorm running statistics stay non-trainable."""
    _set_trainable(_flatten(layers_or_params), True, bn)


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
    """One line per block: index, name, parameters it owns, how many train, and the actual mode
    of its BatchNorm layers (``running stats kept``, ``batch stats``, ``k/n kept`` when mixed,
    ``-`` without BatchNorm)."""
    owned = layers.block_parameters(model, blocks=blocks)
    by_name = dict(layers.blocks(model, blocks=blocks))
    width = max(len(n) for n, _ in owned)
    lines = [f"{'#':>3}  {'block':<{width}}  {'params':>12}  {'trainable':>12}  batchnorm"]
    for i, (name, params) in enumerate(owned):
        bns = _bn_layers(by_name[name])
        kept = sum(bn_mode(b) == "running stats" for b in bns)
        if not bns:
            bn_text = "-"
        elif kept == len(bns):
            bn_text = "running stats kept"
        else:
            bn_text = "batch stats" if kept == 0 else f"{kept}/{len(bns)} kept"
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
                 bn: str = DEFAULT_BN) -> list[str]:
    """Train exactly the named blocks; freeze every other parameter of the model.

    The building block of all strategies. Parameters in no block are frozen too. A block trains
    the parameters it owns (see :func:`finetune_helpers.layers.block_parameters`); every
    BatchNorm layer of the model gets the mode of the ``bn`` policy (module notes). Returns the
    names of the training blocks.
    """
    _check_bn(bn)
    all_blocks = layers.blocks(model, blocks=blocks)
    valid = [n for n, _ in all_blocks]
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown block name(s) {unknown}; valid names: {valid}")
    chosen = set(names)
    owned = layers.block_parameters(model, blocks=blocks)
    trainable = {id(p) for n, ps in owned if n in chosen for p in ps}
    if not trainable:
        raise ValueError(_empty_error(owned, list(names)))
    inner = unwrap(model)
    # Each BatchNorm layer belongs to the first block holding it; the ones in no block count as
    # frozen.
    bn_owner: dict[int, str] = {}
    for name, layer in all_blocks:
        for b in _bn_layers(layer):
            bn_owner.setdefault(id(b), name)
    bns = _bn_layers(inner)
    _set_bn([(b, _stats_flag(bn, bn_owner.get(id(b)) in chosen)) for b in bns])
    if bn == "train":
        trainable.update(id(p) for b in bns for p in _bn_affine(b))
    for p in learnable_parameters(inner):
        p.stop_gradient = id(p) not in trainable
    return [n for n in valid if n in chosen]


def fine_tune_all(model: nn.Layer, *, bn: str = DEFAULT_BN) -> None:
    """Full fine-tuning: every learnable parameter trains (also those in no block), BatchNorm
    as the ``bn`` policy says for training blocks."""
    unfreeze(unwrap(model), bn=bn)


def _short(names: Sequence[str]) -> str:
    shown = list(names) if len(names) <= 8 else [*names[:3], "...", *names[-3:]]
    return ", ".join(shown)


def _check_count(value: int, what: str, low: int, high: int, names: list[str]) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} must be an int in {low}..{high} for this model "
                         f"({len(names)} blocks: {_short(names)}), got {value!r}")


def train_top(model: nn.Layer, n: int, *, blocks: BlocksLike | None = None,
              bn: str = DEFAULT_BN) -> list[str]:
    """The head and the ``n`` blocks below it train; the rest is frozen.

    ``n`` counts blocks below the head, which always trains (module notes):
    ``train_top(model, 0)`` is :func:`new_head_only`, ``n = len(blocks) - 1`` trains every block.
    """
    names = layers.block_names(model, blocks=blocks)
    _check_count(n, "n (blocks trained below the head)", 0, len(names) - 1, names)
    return train_blocks(model, names[len(names) - 1 - n:], blocks=blocks, bn=bn)


def freeze_bottom(model: nn.Layer, k: int, *, blocks: BlocksLike | None = None,
                  bn: str = DEFAULT_BN) -> list[str]:
    """The bottom ``k`` blocks (from the input, block 0 = stem or embeddings) are frozen; the
    rest trains.

    ``k`` in ``0..len(blocks) - 1``: the head always trains (``k = len - 1`` is head only).
    """
    names = layers.block_names(model, blocks=blocks)
    _check_count(k, "k (frozen blocks from the input)", 0, len(names) - 1, names)
    return train_blocks(model, names[k:], blocks=blocks, bn=bn)


def new_head_only(model: nn.Layer, *, blocks: BlocksLike | None = None,
                  bn: str = DEFAULT_BN) -> list[str]:
    """Feature extraction: a frozen backbone, only the head trains."""
    return train_top(model, 0, blocks=blocks, bn=bn)


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
    training blocks per epoch. Each stage is applied with :func:`train_blocks` and the ``bn``
    policy (module notes), so BatchNorm follows the policy at every stage.
    """

    def __init__(self, model: nn.Layer, *, start: int = 1, every: int = 1,
                 blocks: BlocksLike | None = None, mode: str = "ulmfit",
                 bn: str = DEFAULT_BN) -> None:
        _check_bn(bn)
        if mode not in GRADUAL_MODES:
            raise ValueError(f"unknown mode {mode!r}; valid modes: {list(GRADUAL_MODES)}")
        self.model = model
        self.blocks = layers.blocks(model, blocks=blocks)
        self.names = [n for n, _ in self.blocks]
        self.mode = mode
        self.bn = bn
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
        owned = dict(layers.block_parameters(model, blocks=self.blocks))
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
        train_blocks(self.model, names, blocks=self.blocks, bn=self.bn)
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
        missing = [n for n, ps in layers.block_parameters(self.model, blocks=self.blocks)
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
    missing = layers.uncovered_parameters(model, blocks=blocks)
    if missing:
        raise ValueError(f"{len(missing)} parameter(s) belong to no block, e.g. {missing[:5]}; "
                         "they would never train: pass blocks= covering the whole model")
    owned = layers.block_parameters(model, blocks=blocks)
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
