"""EarlyStopping: stops by the stated rule and puts the best epoch's weights back exactly."""

import numpy as np
import paddle
import pytest
from paddle import nn

from finetune_helpers.callbacks import EarlyStopping
from finetune_helpers.train import History, fit


class Scripted:
    """A callback that overwrites each epoch's eval_accuracy with a scripted value."""

    def __init__(self, values):
        self.values = values

    def on_epoch_end(self, epoch, model, optimizer, logs):
        logs["eval_accuracy"] = self.values[epoch]


def batches(n=4):
    rng = np.random.default_rng(0)
    return [(paddle.to_tensor(rng.normal(size=(8, 3)).astype("float32")),
             paddle.to_tensor(rng.integers(0, 2, 8))) for _ in range(n)]


def run(values, **kw):
    paddle.seed(0)
    model = nn.Linear(3, 2)
    opt = paddle.optimizer.SGD(learning_rate=0.1, parameters=model.parameters())
    stopper = EarlyStopping(**kw)
    snapshots = []

    class Snap:
        def on_epoch_end(self, epoch, model, optimizer, logs):
            snapshots.append(model.weight.numpy().copy())

    h = fit(model, batches(), opt, len(values), callbacks=[Scripted(values), Snap(), stopper],
            progress=False, seed=0)
    return model, h, stopper, snapshots


def test_stops_after_patience_epochs_without_improvement_and_restores_the_best_weights():
    model, h, stopper, snaps = run([0.5, 0.7, 0.7, 0.6, 0.9, 0.95], patience=2)
    assert len(h.epochs) == 4                      # epochs 2 and 3 did not beat 0.7
    assert stopper.best_epoch == 1 == h.best_epoch and stopper.best == 0.7
    assert stopper.stopped_epoch == 3
    np.testing.assert_array_equal(model.weight.numpy(), snaps[1])   # bit-identical
    assert not np.array_equal(snaps[1], snaps[3])


def test_min_epochs_keeps_training_until_the_schedule_is_complete():
    _, h, stopper, _ = run([0.9, 0.5, 0.5, 0.5, 0.5, 0.5], patience=1, min_epochs=4)
    assert len(h.epochs) == 4 and stopper.best_epoch == 0


def test_runs_to_the_limit_when_every_epoch_improves():
    model, h, stopper, snaps = run([0.1, 0.2, 0.3], patience=1)
    assert len(h.epochs) == 3 and stopper.stopped_epoch is None and stopper.best_epoch == 2
    np.testing.assert_array_equal(model.weight.numpy(), snaps[2])


def test_a_missing_metric_says_to_pass_an_eval_loader():
    paddle.seed(0)
    model = nn.Linear(3, 2)
    opt = paddle.optimizer.SGD(learning_rate=0.1, parameters=model.parameters())
    with pytest.raises(KeyError, match="pass eval_loader= to fit"):
        fit(model, batches(), opt, 2, callbacks=[EarlyStopping()], progress=False)


@pytest.mark.parametrize("kw, match", [({"patience": 0}, "patience must be"),
                                       ({"mode": "up"}, "mode must be"),
                                       ({"min_epochs": -1}, "min_epochs must be")])
def test_bad_arguments_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping(**kw)


def test_history_without_early_stopping_has_no_best_epoch():
    assert History(task="classification").best_epoch is None
