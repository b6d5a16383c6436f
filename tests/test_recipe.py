"""The recipe: AdamW with a head group at 10x, and BatchNorm on running statistics."""

import numpy as np
import paddle
import pytest
from paddle import nn

from finetune_helpers import recipe


def small_cnn():
    paddle.seed(0)
    return nn.Sequential(nn.Conv2D(3, 4, 3), nn.BatchNorm2D(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 2))


def test_the_head_group_learns_at_the_multiplied_rate():
    model = small_cnn()
    head = model[4]
    opt = recipe.optimizer(model, 1e-3, head, head_multiplier=10.0, weight_decay=0.0)
    before = {id(p): p.numpy().copy() for p in model.parameters()}
    x = paddle.to_tensor(np.random.default_rng(0).normal(size=(4, 3, 8, 8)).astype("float32"))
    model(x).sum().backward()
    opt.step()
    # Adam's first step moves every coordinate with a non-zero gradient by about lr.
    body_step = np.abs(model[0].weight.numpy() - before[id(model[0].weight)]).max()
    head_step = np.abs(head.weight.numpy() - before[id(head.weight)]).max()
    assert body_step == pytest.approx(1e-3, rel=1e-2)
    assert head_step == pytest.approx(1e-2, rel=1e-2)
    assert opt._weight_decay == 0.0
    assert recipe.optimizer(model, 1e-3, head)._weight_decay == recipe.WEIGHT_DECAY


def test_a_head_that_is_not_part_of_the_model_is_refused():
    with pytest.raises(ValueError, match="not parameters of the model"):
        recipe.optimizer(small_cnn(), 1e-3, nn.Linear(2, 2))
    with pytest.raises(ValueError, match="the head has no parameters"):
        recipe.optimizer(small_cnn(), 1e-3, nn.ReLU())


def test_batchnorm_inference_keeps_the_running_statistics_in_train_mode():
    model = small_cnn()
    bn = model[1]
    assert recipe.batchnorm_inference(model) == 1
    mean = bn._mean.numpy().copy()
    model.train()
    model(paddle.ones([4, 3, 8, 8]) * 5)
    np.testing.assert_array_equal(bn._mean.numpy(), mean)


def test_precise_batchnorm_sets_the_statistics_of_all_images_and_restores_momentum():
    model = small_cnn()
    bn = model[1]
    momentum = bn._momentum
    paddle.seed(1)
    batches = [(paddle.randn([4, 3, 8, 8]) * 3 + 2, paddle.zeros([4], "int64")) for _ in range(3)]
    assert recipe.precise_batchnorm(model, batches) == 1
    with paddle.no_grad():
        conv = model[0](paddle.concat([x for x, _ in batches])).numpy()
    np.testing.assert_allclose(bn._mean.numpy(), conv.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)
    assert not np.allclose(bn._mean.numpy(), 0)  # not the initial statistics any more
    assert bn._momentum == momentum and not model.training
