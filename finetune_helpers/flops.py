"""Counting forward FLOPs per block, and the ideal cost of training only some blocks.

Why by hand: ``paddle.flops`` (Paddle 3.3.1) counts multiply-accumulates rather than FLOPs
(a Linear 8->4 on one row gives 32, not 64), skips the attention matmuls (they are
``paddle.matmul`` calls inside ``MultiHeadAttention``, not layers), feeds the model a single
float ``paddle.randn`` input (a BERT needs integer token ids and a mask), reports per leaf layer
rather than per block, and prints to stdout. The counter below is a few forward hooks.

What is counted (FLOPs = 2 x multiply-accumulates): ``Conv1D/2D/3D`` (``2 * output elements *
in/groups * kernel size``), ``Linear`` (``2 * rows * in * out``) and the two matmuls of
``paddle.nn.MultiHeadAttention`` (``Q K^T`` and ``P V``: ``4 * batch * Lq * Lk * embed``).
Biases, normalisation, activations, softmax, pooling and embedding lookups are not counted:
they are linear in the activations, so they add little to the FLOPs, though on a CPU they can
add much to the time.

The training cost model (:func:`training_cost`), per block ``i`` with forward cost ``f_i``:

* a trainable block runs forward and a backward that computes weight gradients and input
  gradients: ``f_i + 2 f_i``;
* a frozen block *above* the lowest trainable block still passes gradients down to it, input
  gradients only: ``f_i + f_i``;
* a frozen block *below* the lowest trainable block needs no backward at all (its input and
  parameters all have ``stop_gradient=True``, so its output has too and Paddle records no
  backward for it): ``f_i``.

The lowest trainable block is charged 2x although its very first op needs no input gradient
(a small over-estimate). The optimizer update is not counted (AdamW is about 15 FLOPs per
trainable parameter per step: under 2 % of a step of either bench model). The same rule takes
measured per-block times instead of FLOPs (:func:`step_cost`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import paddle
from paddle import nn

from finetune_helpers.layers import BlocksLike, block_parameters, blocks as get_blocks
from finetune_helpers.train import call_model, eval_mode

_CONVS = (nn.Conv1D, nn.Conv2D, nn.Conv3D)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def conv_flops(layer: nn.Layer, output: paddle.Tensor) -> int:
    """``2 * output elements * (in_channels / groups) * kernel elements`` of a ConvND."""
    # weight is [out, in/groups, *kernel]: one output element is that many multiply-adds.
    return 2 * _numel(output.shape) * _numel(layer.weight.shape[1:])


def linear_flops(layer: nn.Layer, output: paddle.Tensor) -> int:
    """``2 * rows * in * out`` of a Linear (Paddle's weight is ``[in, out]``)."""
    rows = _numel(output.shape[:-1])
    fan_in, fan_out = (int(d) for d in layer.weight.shape)
    return 2 * rows * fan_in * fan_out


def attention_flops(query: paddle.Tensor, key: paddle.Tensor | None) -> int:
    """The two matmuls of scaled dot-product attention over all heads: ``Q K^T`` and ``P V``.

    ``query`` ``[batch, Lq, embed]`` and ``key`` ``[batch, Lk, embed]`` (``None``: self-attention).
    Each matmul is ``2 * batch * Lq * Lk * embed`` (heads x head size = embed).
    """
    key = query if key is None else key
    batch, lq, embed = (int(d) for d in query.shape)
    lk = int(key.shape[1])
    return 2 * (2 * batch * lq * lk * embed)


@dataclass
class FlopCount:
    """Forward FLOPs of one batch: per block (input to output) and outside every block."""

    blocks: list[tuple[str, int]]
    other: int = 0

    @property
    def total(self) -> int:
        return sum(f for _, f in self.blocks) + self.other

    def forward(self) -> list[int]:
        """Per-block forward FLOPs, input to output."""
        return [f for _, f in self.blocks]


def count_forward_flops(model: nn.Layer, inputs: Any, *,
                        blocks: BlocksLike | None = None) -> FlopCount:
    """Run ``model(inputs)`` once (eval mode, no gradients) and count FLOPs per block.

    ``inputs`` is what the model takes (a dict is passed as keyword arguments). Blocks are
    those of :func:`finetune_helpers.layers.blocks` (or ``blocks=``). Each counted layer
    belongs to the first block that holds it; counted layers in no block go to ``other``.
    """
    named = get_blocks(model, blocks=blocks)
    owner: dict[int, int] = {}
    for index, (_, block) in enumerate(named):
        for sub in block.sublayers(include_self=True):
            owner.setdefault(id(sub), index)
    counts = [0] * len(named)
    other = [0]

    def add(layer: nn.Layer, flops: int) -> None:
        index = owner.get(id(layer))
        if index is None:
            other[0] += flops
        else:
            counts[index] += flops

    def on_conv(layer: nn.Layer, args: Any, output: paddle.Tensor) -> None:
        add(layer, conv_flops(layer, output))

    def on_linear(layer: nn.Layer, args: Any, output: paddle.Tensor) -> None:
        add(layer, linear_flops(layer, output))

    def on_attention(layer: nn.Layer, args: Any, output: Any) -> None:
        query = args[0]
        key = args[1] if len(args) > 1 and isinstance(args[1], paddle.Tensor) else None
        add(layer, attention_flops(query, key))

    handles = []
    for sub in model.sublayers(include_self=True):
        if isinstance(sub, _CONVS):
            handles.append(sub.register_forward_post_hook(on_conv))
        elif isinstance(sub, nn.Linear):
            handles.append(sub.register_forward_post_hook(on_linear))
        elif isinstance(sub, nn.MultiHeadAttention):
            handles.append(sub.register_forward_post_hook(on_attention))
    try:
        with eval_mode(model), paddle.no_grad():
            call_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return FlopCount(blocks=[(name, c) for (name, _), c in zip(named, counts)], other=other[0])


# ---------------------------------------------------------------------------------------------
# The cost model.

def backward_factors(trainable: Sequence[bool]) -> list[int]:
    """Per block, the backward cost in units of its forward cost: 2 for a trainable block, 1 for
    a frozen block above the lowest trainable one, 0 below it (and everywhere if none trains)."""
    flags = [bool(t) for t in trainable]
    if True not in flags:
        return [0] * len(flags)
    lowest = flags.index(True)
    return [0 if i < lowest else (2 if t else 1) for i, t in enumerate(flags)]


def step_cost(per_case: Sequence[tuple[float, float, float]], trainable: Sequence[bool]) -> float:
    """Cost of one training step from per-block costs ``(no backward, frozen with input
    gradients, trained)``, picked per block by :func:`backward_factors` (0, 1, 2)."""
    if len(trainable) != len(per_case):
        raise ValueError(f"trainable has {len(trainable)} flags for {len(per_case)} blocks; give "
                         "one flag per block, input to output")
    return float(sum(costs[factor]
                     for costs, factor in zip(per_case, backward_factors(trainable))))


def flop_cases(forward: Sequence[float]) -> list[tuple[float, float, float]]:
    """The FLOP rule as :func:`step_cost` cases: ``(f, f + f, f + 2 f)`` per block."""
    return [(f, 2 * f, 3 * f) for f in forward]


def training_cost(forward: Sequence[float], trainable: Sequence[bool]) -> float:
    """Forward plus backward FLOPs of one step training the blocks flagged in ``trainable``."""
    return step_cost(flop_cases(forward), trainable)


def ideal_ratio(forward: Sequence[float], trainable: Sequence[bool]) -> float:
    """``training_cost(strategy) / training_cost(every block trainable)`` from forward FLOPs."""
    full = training_cost(forward, [True] * len(forward))
    if full <= 0:
        raise ValueError("the full fine-tuning cost is 0: the counter found no FLOPs in these "
                         "blocks (are they Conv/Linear/MultiHeadAttention layers?)")
    return training_cost(forward, trainable) / full


def trainable_blocks(model: nn.Layer, *, blocks: BlocksLike | None = None) -> list[bool]:
    """Per block: does it hold a parameter that trains (``stop_gradient=False``)?"""
    return [any(not p.stop_gradient for p in params)
            for _, params in block_parameters(model, blocks=blocks)]
