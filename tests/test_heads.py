"""MeanPoolClassifier: the mean over real tokens, a seeded head, blocks for the strategies."""

import numpy as np
import paddle
import pytest

from finetune_helpers import strategies
from finetune_helpers.heads import LinearHead, MeanPoolClassifier


def tiny_encoder():
    from paddlenlp.transformers import BertConfig, BertModel
    paddle.seed(0)
    cfg = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16)
    return BertModel(cfg)


def test_padding_does_not_change_the_pooled_vector():
    model = MeanPoolClassifier(tiny_encoder(), 3)
    model.eval()
    ids = paddle.to_tensor([[2, 7, 8, 9, 3]])
    padded = paddle.to_tensor([[2, 7, 8, 9, 3, 0, 0, 0]])
    mask = paddle.to_tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    with paddle.no_grad():
        short = model.pooled(ids, attention_mask=paddle.ones_like(ids))
        long = model.pooled(padded, attention_mask=mask)
        hidden = model.encoder(ids, attention_mask=paddle.ones_like(ids))[0]
    np.testing.assert_allclose(long.numpy(), short.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(short.numpy(), hidden.numpy().mean(axis=1), rtol=1e-5, atol=1e-6)


def test_the_head_depends_on_the_seed_only():
    a = MeanPoolClassifier(tiny_encoder(), 3, seed=1).classifier.weight.numpy()
    paddle.seed(123)
    b = MeanPoolClassifier(tiny_encoder(), 3, seed=1).classifier.weight.numpy()
    c = MeanPoolClassifier(tiny_encoder(), 3, seed=2).classifier.weight.numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_blocks_serve_the_strategies_and_the_unused_pooler_stays_frozen():
    model = MeanPoolClassifier(tiny_encoder(), 3)
    blocks = model.blocks()
    assert [n for n, _ in blocks] == ["embeddings", "encoder.layers.0", "encoder.layers.1",
                                      "classifier"]
    strategies.train_top(model, 1, blocks=blocks)
    trainable = {n for n, p in model.named_parameters() if not p.stop_gradient}
    assert trainable and all(n.startswith(("encoder.encoder.layers.1.", "classifier."))
                             for n in trainable)
    assert all(p.stop_gradient for p in model.encoder.pooler.parameters())


def test_linear_head_on_cached_vectors_equals_the_whole_model_in_inference_mode():
    model = MeanPoolClassifier(tiny_encoder(), 3)
    model.eval()
    ids = paddle.to_tensor([[2, 7, 8, 3], [2, 5, 3, 0]])
    mask = paddle.to_tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with paddle.no_grad():
        whole = model(ids, attention_mask=mask)
        head = LinearHead(model)
        head.eval()
        cached = head(model.pooled(ids, attention_mask=mask))
    np.testing.assert_array_equal(whole.numpy(), cached.numpy())


def test_too_few_classes_is_refused():
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        MeanPoolClassifier(tiny_encoder(), 1)
