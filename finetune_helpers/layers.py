"""A model as an ordered list of blocks, from input to output: the unit that fine-tuning freezes.

Every fine-tuning strategy in the book (train the head, train the top n blocks, freeze the
bottom k, gradual unfreezing, discriminative learning rates) is a decision per *block*. This
module says what the blocks of the book's models are, so the same strategy code serves CNNs and
Transformers::

    >>> [name for name, _ in blocks(resnet18)]
    ['stem', 'layer1', 'layer2', 'layer3', 'layer4', 'fc']

Known models, recognised by their structure (no import of their packages here):

====================================  ===================================================
model                                 blocks
====================================  ===================================================
EfficientNet-Lite0 (``zoo``)          stem, stage1..stage7, head_conv, fc
``paddle.vision`` ResNet              stem (conv1 + bn1), layer1..layer4, fc
``paddle.vision`` MobileNetV2         features.0..features.18, classifier
PaddleNLP BERT-like ``*Model``        embeddings, encoder.layers.0..L-1, pooler
``BertFor...`` (and ERNIE, ...)       bert.embeddings, bert.encoder.layers.*, bert.pooler,
                                      classifier
PaddleNLP ``LlamaModel``              embed_tokens, layers.0..L-1, norm
``LlamaForCausalLM``                  llama.embed_tokens, llama.layers.*, llama.norm, lm_head
====================================  ===================================================

Names are the attribute paths (the prefixes of ``model.state_dict()`` keys), except for
EfficientNet-Lite0 (``stageN`` counts from 1 like the paper) and ResNet's ``stem``, which groups
two attributes. Layers without parameters (pooling, dropout, activations, loss) are in no block.
``paddle.DataParallel`` wrappers are unwrapped. For any other model pass ``blocks=`` yourself: a
list of ``(name, layer)`` from input to output, the last one being the head.

**Tied weights.** A parameter shared by two blocks (SmolLM2's ``lm_head`` reuses
``embed_tokens.weight``: ``tie_word_embeddings=True``) belongs to the *first* block that holds
it. The tied ``lm_head`` block therefore owns no parameter: freezing the embeddings also freezes
the output projection, and "train only the head" trains nothing (the strategies say so).
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


def _layer_list(layer: nn.Layer) -> list[nn.Layer] | None:
    """The repeated layers of a Transformer stack: a LayerList, or a container's ``.layers``."""
    if isinstance(layer, nn.LayerList):
        return list(layer)
    inner = getattr(layer, "layers", None)
    if isinstance(inner, nn.LayerList):
        return list(inner)
    return None


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


def _is_bert_like(m: nn.Layer) -> bool:
    enc = getattr(m, "encoder", None)
    return isinstance(getattr(m, "embeddings", None), nn.Layer) and isinstance(enc, nn.Layer) \
        and _layer_list(enc) is not None


def _is_llama_like(m: nn.Layer) -> bool:
    return isinstance(getattr(m, "embed_tokens", None), nn.Layer) and \
        isinstance(getattr(m, "layers", None), nn.LayerList) and \
        isinstance(getattr(m, "norm", None), nn.Layer)


def _backbone_blocks(m: nn.Layer, prefix: str) -> list[Block] | None:
    """Blocks of a Transformer base model (BERT-like or Llama-like), or None if not one."""
    if _is_bert_like(m):
        stacked = isinstance(getattr(m.encoder, "layers", None), nn.LayerList)
        enc_name = "encoder.layers" if stacked else "encoder"
        out = [(prefix + "embeddings", m.embeddings)]
        out += [(f"{prefix}{enc_name}.{i}", layer)
                for i, layer in enumerate(_layer_list(m.encoder))]
        pooler = getattr(m, "pooler", None)
        if isinstance(pooler, nn.Layer) and _has_params(pooler):
            out.append((prefix + "pooler", pooler))
        return out
    if _is_llama_like(m):
        out = [(prefix + "embed_tokens", m.embed_tokens)]
        out += [(f"{prefix}layers.{i}", layer) for i, layer in enumerate(m.layers)]
        out.append((prefix + "norm", m.norm))
        return out
    return None


def _known_blocks(m: nn.Layer) -> list[Block] | None:
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
    direct = _backbone_blocks(m, "")
    if direct is not None:
        return direct
    # A task model wrapping one Transformer base (BertForSequenceClassification.bert,
    # LlamaForCausalLM.llama): the base's blocks, then every other child with parameters
    # (classifier, lm_head) in registration order.
    children = list(m.named_children())
    for name, child in children:
        inner = _backbone_blocks(child, name + ".")
        if inner is not None:
            rest = [(n, c) for n, c in children if c is not child and _has_params(c)]
            return inner + rest
    return None


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


def blocks(model: nn.Layer, blocks: BlocksLike | None = None) -> list[Block]:
    """The model's blocks, input to output, as ``(name, layer)``; the last one is the head.

    ``blocks`` given: validated and returned (plain Layers get names ``block0``, ``block1``...).
    Unknown model and no ``blocks``: ``ValueError`` saying how to pass them.
    """
    if blocks is not None:
        return _as_blocks(blocks)
    inner = unwrap(model)
    found = _known_blocks(inner)
    if not found:
        raise ValueError(
            f"finetune_helpers.layers does not know the blocks of {type(inner).__name__} "
            "(it knows EfficientNetLite0, paddle.vision ResNet and MobileNetV2, PaddleNLP "
            f"BERT-like and Llama models); {_HOW_TO}")
    return found


def block_names(model: nn.Layer, blocks_: BlocksLike | None = None) -> list[str]:
    """Names of :func:`blocks`, input to output."""
    return [name for name, _ in blocks(model, blocks_)]


def head(model: nn.Layer, blocks_: BlocksLike | None = None) -> nn.Layer:
    """The last block (the task head: ``fc``, ``classifier``, ``lm_head``...)."""
    return blocks(model, blocks_)[-1][1]


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


def block_parameters(model: nn.Layer, blocks_: BlocksLike | None = None
                     ) -> list[tuple[str, list[paddle.Tensor]]]:
    """Learnable parameters owned by each block: a parameter held by several blocks (tied
    weights) belongs to the first of them, so every parameter is listed at most once."""
    seen: set[int] = set()
    out = []
    for name, layer in blocks(model, blocks_):
        own = [p for p in learnable_parameters(layer) if id(p) not in seen]
        seen.update(id(p) for p in own)
        out.append((name, own))
    return out


def uncovered_parameters(model: nn.Layer, blocks_: BlocksLike | None = None) -> list[str]:
    """Structured names of the model's learnable parameters that belong to no block."""
    covered = {id(p) for _, ps in block_parameters(model, blocks_) for p in ps}
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
