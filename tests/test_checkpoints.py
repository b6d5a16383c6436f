"""finetune_helpers.checkpoints: a fine-tuning run saved and resumed exactly.

The round trip restores weights, frozen flags, BatchNorm modes, learning-rate multipliers and the
optimizer state into NEW model and optimizer objects, and training then continues
bit-identically. Also checked: why Paddle's own optimizer reload does not do it, and that files
of the first format and plain state dicts are handled.
"""

import numpy as np
import paddle
import pytest
from paddle import nn

from finetune_helpers import checkpoints, layers, strategies as st

pytestmark = pytest.mark.filterwarnings("ignore")


def resnet():
    return paddle.vision.models.resnet18(pretrained=False, num_classes=10)


def train_steps(model, optimizer, steps=1, seed=0):
    model.train()
    for i in range(steps):
        rng = np.random.default_rng(seed + i)
        x = paddle.to_tensor(rng.standard_normal((4, 3, 32, 32)).astype("float32"))
        y = paddle.to_tensor(rng.integers(0, 10, 4))
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.clear_grad()


def test_plain_paddle_optimizer_reload_fails_in_process(tmp_path):
    """Why save_checkpoint exists: Paddle matches optimizer state by generated names."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    optimizer = paddle.optimizer.AdamW(0.01, parameters=model.parameters())
    model(paddle.randn([8, 4])).pow(2).mean().backward()
    optimizer.step()
    paddle.save(optimizer.state_dict(), str(tmp_path / "o.pdopt"))
    again = paddle.optimizer.AdamW(0.01, parameters=model.parameters())  # same model, new object
    again.set_state_dict(paddle.load(str(tmp_path / "o.pdopt")))
    model(paddle.randn([8, 4])).pow(2).mean().backward()
    with pytest.raises(AssertionError, match="should in state dict"):
        again.step()


def test_checkpoint_round_trip_continues_bit_identically(tmp_path):
    """ULMFiT recipe (gradual unfreezing + discriminative rates, one optimizer with a scheduler):
    save after epoch 1, reload into NEW model and optimizer objects, continue into epoch 2 (a
    block that never had optimizer state unfreezes): identical to never having stopped."""
    def setup(seed):
        paddle.seed(seed)
        model = resnet()
        scheduler = paddle.optimizer.lr.StepDecay(1e-3, step_size=1, gamma=0.5)
        optimizer = paddle.optimizer.AdamW(scheduler, weight_decay=0.01,
                                           parameters=st.discriminative_lr_groups(model))
        return model, optimizer, scheduler, st.GradualUnfreezing(model, start=2,
                                                                 bn="frozen_blocks")

    model, optimizer, scheduler, cb = setup(8)
    cb.on_train_begin(model, optimizer)
    for epoch in range(2):
        cb.on_epoch_begin(epoch, model, optimizer)
        train_steps(model, optimizer, steps=1, seed=epoch)
        scheduler.step()
    path = str(tmp_path / "ckpt.pdparams")
    checkpoints.save_checkpoint(path, model, optimizer, epoch=1)

    model2, optimizer2, scheduler2, cb2 = setup(9)
    assert checkpoints.load_checkpoint(path, model2, optimizer2) == {"epoch": 1}
    # frozen flags, BatchNorm modes, multipliers and weights are back, before any callback
    for (n, p), (n2, p2) in zip(model.named_parameters(), model2.named_parameters()):
        assert n == n2 and p.stop_gradient == p2.stop_gradient
        assert p.optimize_attr["learning_rate"] == p2.optimize_attr["learning_rate"]
        np.testing.assert_array_equal(p.numpy(), p2.numpy())
    bns = [(s, s2) for s, s2 in zip(model.sublayers(), model2.sublayers())
           if layers.is_batch_norm(s)]
    modes = [s._use_global_stats for s, _ in bns]
    assert [s2._use_global_stats for _, s2 in bns] == modes
    assert True in modes and None in modes       # frozen blocks kept, training ones batch stats
    assert scheduler2.last_epoch == scheduler.last_epoch

    for m, opt, c in ((model, optimizer, cb), (model2, optimizer2, cb2)):
        c.on_epoch_begin(2, m, opt)
        train_steps(m, opt, steps=2, seed=2)
    assert cb2.log[-1]["trainable"] == ["layer2", "layer3", "layer4", "fc"]
    for (n, p), p2 in zip(model.named_parameters(), model2.parameters()):
        np.testing.assert_array_equal(p.numpy(), p2.numpy(), err_msg=n)


def test_load_checkpoint_rejects_plain_state_dict(tmp_path):
    model = nn.Linear(2, 2)
    path = str(tmp_path / "plain.pdparams")
    paddle.save(model.state_dict(), path)
    with pytest.raises(ValueError, match="not a checkpoint written by save_checkpoint"):
        checkpoints.load_checkpoint(path, model)


def test_first_format_files_still_load(tmp_path):
    """Format 1 stored each BatchNorm's mode in a dict ("use_global_stats", "frozen", ...)."""
    model = resnet()
    st.freeze_bottom(model, 2, bn="frozen_blocks")
    path = str(tmp_path / "new.ckpt")
    checkpoints.save_checkpoint(path, model)
    state = paddle.load(path)
    state["format"] = "finetune_helpers.checkpoint/1"
    state["bn"] = {n: {"use_global_stats": v, "frozen": v is True, "own_flag": None}
                   for n, v in state["bn"].items()}
    paddle.save(state, str(tmp_path / "old.ckpt"))
    fresh = resnet()
    checkpoints.load_checkpoint(str(tmp_path / "old.ckpt"), fresh)
    assert [s._use_global_stats for s in fresh.sublayers() if layers.is_batch_norm(s)] == \
        [s._use_global_stats for s in model.sublayers() if layers.is_batch_norm(s)]
    assert st.count_parameters(fresh) == st.count_parameters(model)
