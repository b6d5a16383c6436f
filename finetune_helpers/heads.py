"""A new classification head on mean-pooled sentence vectors, for any PaddleNLP encoder.

Sentence-embedding models (all-MiniLM-L6-v2, multilingual-e5) were trained to represent a text
by the MEAN of their last hidden states over its real tokens, not by the ``[CLS]`` pooler that
``BertForSequenceClassification`` reads (MiniLM's pooler was never trained for this model). So
the book's text tasks classify from the mean-pooled vector: encoder -> mean over tokens where
``attention_mask`` is 1 -> dropout -> a new ``Linear``. PaddleNLP has no such head (its
``*ForSequenceClassification`` classes all read the pooler), hence this small class.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import paddle
from paddle import nn


class MeanPoolClassifier(nn.Layer):
    """``encoder`` + mean pooling over real tokens + dropout + a new linear ``classifier``.

    The classifier is initialised from ``seed`` (normal, std ``initializer_range``, zero bias)
    without touching paddle's global random state. ``config`` is the encoder's (PaddleNLP's
    ``LoRAModel`` reads it). The encoder's pooler, if it has one, is unused and stays frozen
    under every strategy (it is in no block).
    """

    def __init__(self, encoder: nn.Layer, num_classes: int, *, dropout: float = 0.1,
                 seed: int = 0) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.encoder = encoder
        self.config = encoder.config
        hidden = int(self.config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)
        rng = np.random.default_rng(seed)
        std = float(getattr(self.config, "initializer_range", 0.02))
        self.classifier.weight.set_value(
            paddle.to_tensor(rng.normal(0.0, std, (hidden, num_classes)).astype("float32")))
        self.classifier.bias.set_value(paddle.zeros([num_classes], dtype="float32"))

    def pooled(self, input_ids: paddle.Tensor, token_type_ids: paddle.Tensor | None = None,
               attention_mask: paddle.Tensor | None = None, **_: Any) -> paddle.Tensor:
        """Mean of the last hidden states over real tokens, ``(batch, hidden)``."""
        if attention_mask is None:
            attention_mask = paddle.ones_like(input_ids)
        kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.encoder(input_ids, **kwargs)
        hidden = out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state
        mask = attention_mask.astype(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(axis=1) / mask.sum(axis=1).clip(min=1.0)

    def forward(self, input_ids: paddle.Tensor, token_type_ids: paddle.Tensor | None = None,
                attention_mask: paddle.Tensor | None = None, **kw: Any) -> paddle.Tensor:
        """Class logits ``(batch, num_classes)``."""
        return self.classifier(self.dropout(self.pooled(input_ids, token_type_ids,
                                                        attention_mask, **kw)))

    def blocks(self) -> list[tuple[str, nn.Layer]]:
        """Embeddings, each Transformer layer, the new classifier: input to output."""
        enc = self.encoder
        # BERT-like encoders keep the stack in ``encoder.layers``; PaddleNLP's XLMRobertaEncoder
        # in ``encoder.layer``. Names follow the attribute path inside the encoder.
        attr = "layers" if hasattr(enc.encoder, "layers") else "layer"
        stack = getattr(enc.encoder, attr)
        return [("embeddings", enc.embeddings),
                *((f"encoder.{attr}.{i}", layer) for i, layer in enumerate(stack)),
                ("classifier", self.classifier)]


class LinearHead(nn.Layer):
    """Dropout + the classifier of a :class:`MeanPoolClassifier`, applied to cached pooled
    vectors (the frozen encoder ran once, in inference mode)."""

    def __init__(self, model: MeanPoolClassifier) -> None:
        super().__init__()
        self.dropout, self.classifier = model.dropout, model.classifier

    def forward(self, pooled: paddle.Tensor) -> paddle.Tensor:
        return self.classifier(self.dropout(pooled))
