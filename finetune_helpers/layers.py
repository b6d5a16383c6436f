"""A model as an ordered list of blocks, from input to output: the unit that fine-tuning freezes.

Every fine-tuning strategy in the book (train the head, train the top n blocks, freeze the
bottom k, gradual unfreezing, discriminative learning rates) is a decision per *block*. This
module says what the blocks of a model are, so the same strategy code serves CNNs and
Transformers::

    >>> [name for name, _ in blocks(resnet18)]
    ['stem', 'layer1', 'layer2', 'layer3', 'layer4', 'fc']

How :func:`blocks` finds them, first rule that applies (no import of the models' packages here):

1. ``blocks=[(name, layer), ...]`` given by the caller: validated and used as given.
2. **The blocks protocol.** A model whose class defines a method ``blocks()`` returning
   ``[(name, layer), ...]`` from input to output, the head last, is asked for them (e.g.
   :class:`finetune_helpers.heads.MeanPoolClassifier`). Write such a method for any model of
   your own; the list is validated like rule 1.
3. **Known CNNs**, recognised by their attributes:

   ====================================  ===============================================
   model                                 blocks
   ====================================  ===============================================
   EfficientNet-Lite0 (``zoo``)          stem, stage1..stage7, head_conv, fc
   ``paddle.vision`` ResNet              stem (conv1 + bn1), layer1..layer4, fc
   ``paddle.vision`` MobileNetV2         features.0..features.18, classifier
   ====================================  ===============================================

4. **Any Transformer** (every PaddleNLP model: BERT, ERNIE, XLM-R, GPT, Llama, Qwen2...): the
   model's children in registration order (PaddleNLP registers them input to output), each
   child with parameters one block, except that the *layer stack* (an ``nn.LayerList`` of
   layers of one type, found at most three attributes deep) gives one block per layer, and a
   child holding the stack is opened up the same way. Examples (tiny configs, tested):

   ===================================  ====================================================
   model                                blocks
   ===================================  ====================================================
   ``BertModel``, ``ErnieModel``        embeddings, encoder.layers.0..L-1, pooler
   ``XLMRobertaModel``                  embeddings, encoder.layer.0..L-1, pooler
   ``BertForSequenceClassification``    bert.embeddings, bert.encoder.layers.*, bert.pooler,
                                        classifier (ERNIE: ernie.*)
   ``GPTModel``                         embeddings, decoder.layers.0..L-1, decoder.norm
   ``GPTForCausalLM``                   gpt.embeddings, gpt.decoder.layers.*, gpt.decoder.norm,
                                        lm_head
   ``LlamaModel``, ``Qwen2Model``       embed_tokens, layers.0..L-1, norm
   ``LlamaForCausalLM``                 llama.embed_tokens, llama.layers.*, llama.norm, lm_head
                                        (Qwen2: qwen2.*)
   ===================================  ====================================================

   A base model's last block (``pooler``, ``norm``) counts as its head. Children without
   parameters (dropout, activations, a loss ``criterion``) are in no block.
5. Anything else: ``ValueError`` saying how to pass the blocks (rule 1 or 2).

Names are the attribute paths (the prefixes of ``model.state_dict()`` keys), except for
EfficientNet-Lite0 (``stageN`` counts from 1 like the paper) and ResNet's ``stem``, which groups
two attributes. ``paddle.DataParallel`` wrappers are unwrapped.

**Passing blocks.** Every function here and in :mod:`finetune_helpers.strategies` takes the
blocks as the keyword ``blocks=``. (:func:`blocks` and :func:`block_parameters` also accept it
as their second positional argument, which :mod:`finetune_helpers.flops` still uses.)

**Tied weights.** A parameter shared by two blocks (SmolLM2's and GPT's ``lm_head`` reuse the
token embedding: ``tie_word_embeddings=True``) belongs to the *first* block that holds it. The
tied ``lm_head`` block therefore owns no parameter: freezing the embeddings also freezes the
output projection, and "train only the head" trains nothing (the strategies say so).
"""

from __future__ import annotations

from typing import Iterable, Sequence, Union

import paddle
from paddle import nn

Block = tuple[str, nn.Layer]
BlocksLike = Union[Sequence[Block], Sequence[nn.Layer]]

_HOW_TO = ("pass the blocks explicitly to any strategy function: blocks=[(name, layer), ...] "
           "from input to output, the last one being the head, e.g. "
           "blocks=[(\"backbone\", model.backbone), (\"head\", model.head)]")


def unwrap(model: nn.Layer) -> nn.Layer:
    """The model inside ``paddle.DataParallel`` wrappers (``._layers``), else the model itself."""
    while isinstance(model, paddle.DataParallel) or (
            type(model).__name__ == "DataParallel" and hasattr(model, "_layers")):
        model = model._layers
    return model


def _has_params(layer: nn.Layer) -> bool:
    return len(layer.parameters()) > 0


def _is_efficientnet(m: nn.Layer) -> bool:
    parts = ("stem", "stages", "head", "fc")
    return all(isinstance(getattr(m, a, None), nn.Layer) for a in parts) \
        and isinstance(m.stages, nn.LayerList)


def _is_resnet(m: nn.Layer) -> bool:
    return all(isinstance(getattr(m, a, None), nn.Layer)
               for a in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4"))


def _is_mobilenet_v2(m: nn.Layer) -> bool:
    return isinstance(getattr(m, "features", None), nn.Sequential) and \
        isinstance(getattr(m, "classifier", None), nn.Layer)


def _cnn_blocks(m: nn.Layer) -> list[Block] | None:
    """Blocks of the known CNN families (rule 3 of the module notes), else None."""
    if _is_efficientnet(m):
        out = [("stem", m.stem)]
        out += [(f"stage{i + 1}", stage) for i, stage in enumerate(m.stages)]
        out += [("head_conv", m.head), ("fc", m.fc)]
        return out
    if _is_resnet(m):
        # conv1 and bn1 are two attributes: group them in a LayerList that is not attached to
        # the model (it only holds references; the model's structure is unchanged).
        out = [("stem", nn.LayerList([m.conv1, m.bn1]))]
        out += [(f"layer{i}", getattr(m, f"layer{i}")) for i in range(1, 5)]
        if isinstance(getattr(m, "fc", None), nn.Layer):
            out.append(("fc", m.fc))
        return out
    if _is_mobilenet_v2(m):
        out = [(f"features.{i}", layer) for i, layer in enumerate(m.features) if _has_params(layer)]
        if _has_params(m.classifier):
            out.append(("classifier", m.classifier))
        return out
    return None


#: How many attributes deep the layer stack of a Transformer may sit (``bert.encoder.layers``).
STACK_DEPTH = 3


def _is_stack(layer: nn.Layer) -> bool:
    """A Transformer's repeated layers: a non-empty LayerList of layers of one type, each with
    parameters."""
    return isinstance(layer, nn.LayerList) and len(layer) > 0 \
        and len({type(sub) for sub in layer}) == 1 and all(_has_params(sub) for sub in layer)


def _holds_stack(layer: nn.Layer, depth: int) -> bool:
    if depth <= 0:
        return False
    return any(_is_stack(child) or _holds_stack(child, depth - 1)
               for _, child in layer.named_children())


def _open_up(layer: nn.Layer, prefix: str, depth: int) -> list[Block]:
    """Children with parameters in registration order; the stack and its holders opened up."""
    out: list[Block] = []
    for name, child in layer.named_children():
        if not _has_params(child):
            continue
        path = prefix + name
        if _is_stack(child):
            out += [(f"{path}.{i}", sub) for i, sub in enumerate(child)]
        elif depth > 1 and _holds_stack(child, depth - 1):
            out += _open_up(child, path + ".", depth - 1)
        else:
            out.append((path, child))
    return out


def _transformer_blocks(m: nn.Layer) -> list[Block] | None:
    """Blocks of a model with a layer stack (rule 4 of the module notes), else None."""
    if not _holds_stack(m, STACK_DEPTH):
        return None
    return _open_up(m, "", STACK_DEPTH)


def _protocol_blocks(m: nn.Layer) -> list[Block] | None:
    """``m.blocks()`` if the model's class defines such a method (rule 2), else None."""
    method = getattr(m, "blocks", None)
    if not callable(method) or isinstance(method, nn.Layer):
        return None  # e.g. a LayerList attribute named "blocks" (ViT): not the protocol
    try:
        return _as_blocks(method())
    except ValueError as err:
        raise ValueError(f"{type(m).__name__}.blocks() must return [(name, layer), ...] from "
                         f"input to output, the head last: {err}") from None


def _as_blocks(items: BlocksLike) -> list[Block]:
    out: list[Block] = []
    for i, item in enumerate(items):
        if isinstance(item, nn.Layer):
            out.append((f"block{i}", item))
        elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], nn.Layer):
            out.append((str(item[0]), item[1]))
        else:
            raise ValueError(f"blocks[{i}] is {type(item).__name__}: each block must be a "
                             f"(name, paddle.nn.Layer) pair (or a Layer); {_HOW_TO}")
    if not out:
        raise ValueError(f"blocks is empty; {_HOW_TO}")
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"block names must be unique, got {names}")
    return out


def blocks(model: nn.Layer, *, blocks: BlocksLike | None = None) -> list[Block]:
    """The model's blocks, input to output, as ``(name, layer)``; the last one is the head.

    ``blocks`` given: validated and returned (plain Layers get names ``block0``, ``block1``...).
    Otherwise found by the rules of the module notes (the model's own ``blocks()`` method, the
    known CNNs, any Transformer); for another model a ``ValueError`` says how to pass them.
    """
    if blocks is not None:
        return _as_blocks(blocks)
    inner = unwrap(model)
    found = _protocol_blocks(inner) or _cnn_blocks(inner) or _transformer_blocks(inner)
    if not found:
        raise ValueError(
            f"finetune_helpers.layers does not know the blocks of {type(inner).__name__}: it is "
            "not one of the known CNNs (EfficientNet-Lite0, paddle.vision ResNet and "
            "MobileNetV2) and has no Transformer layer stack (an nn.LayerList of layers of one "
            f"type at most {STACK_DEPTH} attributes deep); {_HOW_TO}, or give the model's class "
            "a method blocks() returning that list")
    return found


# The same function under a name that the ``blocks=`` parameter of the functions below does
# not shadow.
_resolve = blocks


def block_names(model: nn.Layer, *, blocks: BlocksLike | None = None) -> list[str]:
    """Names of :func:`blocks`, input to output."""
    return [name for name, _ in _resolve(model, blocks=blocks)]


def head(model: nn.Layer, *, blocks: BlocksLike | None = None) -> nn.Layer:
    """The last block (the task head: ``fc``, ``classifier``, ``lm_head``...)."""
    return _resolve(model, blocks=blocks)[-1][1]


def fixed_parameters(layer: nn.Layer) -> list[paddle.Tensor]:
    """Parameters that are never trained: BatchNorm running mean/variance (Paddle stores them as
    parameters with ``stop_gradient=True``) and the constant affine of a BatchNorm built with
    ``weight_attr=False``/``bias_attr=False``. Unfreezing must leave these alone."""
    out, seen = [], set()
    for sub in layer.sublayers(include_self=True):
        if not is_batch_norm(sub):
            continue
        names = ["_mean", "_variance"]
        if getattr(sub, "_weight_attr", None) is False:
            names.append("weight")
        if getattr(sub, "_bias_attr", None) is False:
            names.append("bias")
        for n in names:
            p = getattr(sub, n, None)
            if isinstance(p, paddle.Tensor) and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def learnable_parameters(layer: nn.Layer) -> list[paddle.Tensor]:
    """``layer.parameters()`` (each shared tensor once) minus :func:`fixed_parameters`."""
    fixed = {id(p) for p in fixed_parameters(layer)}
    return [p for p in layer.parameters() if id(p) not in fixed]


def is_batch_norm(layer: nn.Layer) -> bool:
    """BatchNorm1D/2D/3D, SyncBatchNorm and the legacy ``paddle.nn.BatchNorm``."""
    return isinstance(layer, (nn.layer.norm._BatchNormBase, nn.BatchNorm))


def block_parameters(model: nn.Layer, *, blocks: BlocksLike | None = None
                     ) -> list[tuple[str, list[paddle.Tensor]]]:
    """Learnable parameters owned by each block: a parameter held by several blocks (tied
    weights) belongs to the first of them, so every parameter is listed at most once."""
    seen: set[int] = set()
    out = []
    for name, layer in _resolve(model, blocks=blocks):
        own = [p for p in learnable_parameters(layer) if id(p) not in seen]
        seen.update(id(p) for p in own)
        out.append((name, own))
    return out


def uncovered_parameters(model: nn.Layer, *, blocks: BlocksLike | None = None) -> list[str]:
    """Structured names of the model's learnable parameters that belong to no block."""
    covered = {id(p) for _, ps in block_parameters(model, blocks=blocks) for p in ps}
    inner = unwrap(model)
    fixed = {id(p) for p in fixed_parameters(inner)}
    return [n for n, p in inner.named_parameters()
            if id(p) not in covered and id(p) not in fixed]


def numel(params: Iterable[paddle.Tensor]) -> int:
    """Total number of elements (exact integer)."""
    total = 0
    for p in params:
        n = 1
        for d in p.shape:
            n *= int(d)
        total += n
    return total
