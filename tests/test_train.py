"""finetune_helpers.train: the loop learns, measures, repeats exactly, evaluates when asked,
and evaluation never changes what trains."""

import json
import math

import numpy as np
import paddle
import pytest
from paddle import nn
from sklearn.datasets import load_digits

from finetune_helpers.batches import IGNORE_INDEX, output_field
from finetune_helpers.report import report
from finetune_helpers.schedules import slanted_triangular
from finetune_helpers.train import History, evaluate, fit, predict


class ArrayDataset(paddle.io.Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__()
        self.x, self.y = x.astype(np.float32), y.astype(np.int64)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], data.target[order]
    return ArrayDataset(x[:1400], y[:1400]), ArrayDataset(x[1400:], y[1400:])


def mlp(dropout: float = 0.0) -> nn.Layer:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, 10))


def loader(ds, batch_size=64, shuffle=False):
    return paddle.io.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=0)


def test_fit_learns_digits_and_records_history(digits):
    train_ds, test_ds = digits
    paddle.seed(0)
    model = mlp()
    opt = paddle.optimizer.Adam(learning_rate=3e-3, parameters=model.parameters())
    h = fit(model, loader(train_ds, shuffle=True), opt, 4, eval_loader=loader(test_ds),
            progress=False, seed=0)
    assert h.last()["eval_accuracy"] > 0.93, h.epochs  # real learning, held-out data
    assert [r["epoch"] for r in h.epochs] == [0, 1, 2, 3]
    assert all(r["steps"] == 22 and r["examples"] == 1400 for r in h.epochs)  # ceil(1400/64)
    assert len(h.step_losses) == 88
    assert h.series("train_loss")[-1] < h.series("train_loss")[0] / 3
    for r in h.epochs:
        assert r["seconds"] > 0 and r["eval_seconds"] > 0 and r["lr"] == pytest.approx(3e-3)
        # the epoch's train loss is the batch-size-weighted mean of its step losses
        steps = h.step_losses[r["epoch"] * 22:(r["epoch"] + 1) * 22]
        sizes = [64] * 21 + [1400 - 21 * 64]
        assert r["train_loss"] == pytest.approx(np.dot(steps, sizes) / 1400, rel=1e-12)
    assert h.metric_name == "accuracy"
    assert h.best()["eval_accuracy"] == max(h.series("eval_accuracy"))
    assert h.best("train_loss")["train_loss"] == min(h.series("train_loss"))
    assert h.examples_seen == 5600 and h.seconds_per_epoch > 0
    assert h.peak_rss_mib >= h.start_rss_mib > 0 and h.memory_method == "VmHWM"
    assert h.device == "cpu" and h.peak_gpu_mib is None
    assert json.loads(json.dumps(h.as_dict()))["epochs"][0]["steps"] == 22
    assert list(h.to_frame().columns[:2]) == ["train_loss", "eval_accuracy"]
    # evaluate() agrees with the history and restores train mode
    model.train()
    metrics = evaluate(model, loader(test_ds, batch_size=100), progress=False)
    assert metrics["accuracy"] == h.last()["eval_accuracy"] and metrics["examples"] == 397
    assert model.training
    logits = predict(model, loader(test_ds, batch_size=50), progress=False)
    assert logits.shape == (397, 10)
    assert (logits.argmax(1) == test_ds.y).mean() == pytest.approx(metrics["accuracy"])


def test_seeded_runs_are_bit_identical(digits):
    train_ds, _ = digits

    def run(seed):
        paddle.seed(123)  # same initial weights every time
        model = mlp(dropout=0.3)
        opt = paddle.optimizer.AdamW(learning_rate=1e-2, parameters=model.parameters())
        h = fit(model, loader(train_ds, batch_size=128, shuffle=True), opt, 2, progress=False,
                seed=seed)
        return np.array(h.step_losses), model.state_dict()["3.weight"].numpy()

    losses_a, w_a = run(0)
    losses_b, w_b = run(0)
    losses_c, _ = run(1)
    assert np.array_equal(losses_a, losses_b) and np.array_equal(w_a, w_b)
    assert not np.array_equal(losses_a, losses_c)  # the seed does drive shuffling and dropout


def test_callbacks_are_called_in_order(digits):
    train_ds, test_ds = digits
    events = []

    class Recorder:
        def on_train_begin(self, model, optimizer):
            events.append(("train_begin",))

        def on_epoch_begin(self, epoch, model, optimizer):
            events.append(("epoch_begin", epoch, model.training))
            model.eval()  # like a frozen-BatchNorm callback: must survive until the steps run

        def on_epoch_end(self, epoch, model, optimizer, logs):
            events.append(("epoch_end", epoch, sorted(logs)))

        def on_train_end(self, model, optimizer, history):
            events.append(("train_end", len(history.epochs)))

    class OnlyBegin:  # optional methods: the others are simply not called
        def on_epoch_begin(self, epoch, model, optimizer):
            events.append(("only", epoch))

    paddle.seed(0)
    model = mlp(dropout=0.5)
    opt = paddle.optimizer.SGD(learning_rate=0.1, parameters=model.parameters())
    fit(model, loader(train_ds), opt, 2, eval_loader=loader(test_ds), callbacks=[Recorder(),
        OnlyBegin()], progress=False, max_steps_per_epoch=3)
    keys = ["epoch", "eval_accuracy", "eval_loss", "eval_seconds", "examples", "lr", "seconds",
            "steps", "train_loss"]
    assert events == [("train_begin",),
                      ("epoch_begin", 0, True), ("only", 0), ("epoch_end", 0, keys),
                      ("epoch_begin", 1, True), ("only", 1), ("epoch_end", 1, keys),
                      ("train_end", 2)]


def sched_at(lr, total, t):
    sched = slanted_triangular(lr, total_steps=total)
    for _ in range(t):
        sched.step()
    return sched()


def test_max_steps_and_scheduler_stepping(digits):
    train_ds, _ = digits
    paddle.seed(0)
    model = mlp()
    sched = slanted_triangular(0.01, total_steps=20)
    opt = paddle.optimizer.SGD(learning_rate=sched, parameters=model.parameters())
    h = fit(model, loader(train_ds), opt, 2, max_steps_per_epoch=10, progress=False)
    assert h.series("steps") == [10, 10] and h.series("examples") == [640, 640]
    # stepped once per batch: after 10 steps the rate is STLR's value at t=10, after 20 at t=20
    assert h.series("lr") == pytest.approx([sched_at(0.01, 20, 10), sched_at(0.01, 20, 20)],
                                           rel=1e-12)
    step_lr = paddle.optimizer.lr.StepDecay(0.1, step_size=1, gamma=0.5)
    opt = paddle.optimizer.SGD(learning_rate=step_lr, parameters=model.parameters())
    h = fit(model, loader(train_ds), opt, 3, scheduler_step="epoch", max_steps_per_epoch=2,
            progress=False)
    assert h.series("lr") == pytest.approx([0.05, 0.025, 0.0125])


def test_bad_arguments_name_the_fix(digits):
    train_ds, _ = digits
    model = mlp()
    opt = paddle.optimizer.SGD(learning_rate=0.1, parameters=model.parameters())
    with pytest.raises(ValueError, match="task must be one of"):
        fit(model, loader(train_ds), opt, 1, task="regression")
    with pytest.raises(ValueError, match="scheduler_step must be"):
        fit(model, loader(train_ds), opt, 1, scheduler_step="step")
    with pytest.raises(ValueError, match=r"eval_at must be one of \('epoch', 'end'\).*no "
                                         r"eval_loader"):
        fit(model, loader(train_ds), opt, 1, eval_at="never")
    unlabeled = paddle.io.DataLoader(paddle.io.TensorDataset([paddle.rand([8, 64])]), batch_size=4)
    with pytest.raises(ValueError, match="has no labels"):
        fit(model, unlabeled, opt, 1, progress=False)


# --------------------------------------------------------------------------------------------
# Text: dict batches (tiny BERT classifier) and a causal LM (tiny Llama).

def tiny_bert_batches(n=256, length=8, vocab=50, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, (n, length))
    ids[:, 0] = 2  # [CLS]-like
    labels = (ids[:, 1] >= (vocab + 5) // 2).astype(np.int64)  # class = which half token 1 is in
    batches = []
    for i in range(0, n, 32):
        batches.append({"input_ids": paddle.to_tensor(ids[i:i + 32]),
                        "token_type_ids": paddle.zeros([len(ids[i:i + 32]), length], "int64"),
                        "attention_mask": paddle.ones([len(ids[i:i + 32]), length], "int64"),
                        "labels": paddle.to_tensor(labels[i:i + 32])})
    return batches


def test_dict_batches_train_a_tiny_bert():
    from paddlenlp.transformers import BertConfig, BertForSequenceClassification
    paddle.seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=16, num_labels=2)
    model = BertForSequenceClassification(cfg)
    opt = paddle.optimizer.AdamW(learning_rate=3e-3, parameters=model.parameters())
    train_b, test_b = tiny_bert_batches(), tiny_bert_batches(n=128, seed=1)
    h = fit(model, train_b, opt, 6, eval_loader=test_b, progress=False, seed=0)
    assert h.last()["eval_accuracy"] > 0.85, h.series("eval_accuracy")
    assert h.series("examples") == [256] * 6
    logits = predict(model, test_b, progress=False)
    with paddle.no_grad():
        model.eval()
        direct = output_field(model(**{k: v for k, v in test_b[0].items() if k != "labels"}),
                              "logits")
    np.testing.assert_allclose(logits[:32], direct.numpy(), rtol=1e-5, atol=1e-6)


def test_lm_task_trains_a_tiny_llama_and_scores_counted_tokens_only():
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM
    paddle.seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg)
    # sequences count up modulo 32 from a random start: the next token is predictable
    rng = np.random.default_rng(0)
    starts = rng.integers(0, 32, 96)
    seqs = (starts[:, None] + np.arange(17)[None, :]) % 32

    def batches(rows):
        out = []
        for i in range(0, len(rows), 16):
            ids = rows[i:i + 16]
            labels = ids[:, 1:].copy()
            labels[:, :3] = IGNORE_INDEX  # prompt-like tokens that do not count
            out.append({"input_ids": paddle.to_tensor(ids[:, :-1]),  # labels already shifted
                        "labels": paddle.to_tensor(labels)})
        return out

    train_b, eval_b = batches(seqs[:64]), batches(seqs[64:])
    before = evaluate(model, eval_b, "lm", progress=False)
    opt = paddle.optimizer.AdamW(learning_rate=1e-2, parameters=model.parameters())
    h = fit(model, train_b, opt, 3, eval_loader=eval_b, task="lm", progress=False, seed=0)
    assert h.metric_name == "perplexity"
    losses = [before["loss"]] + h.series("eval_loss")
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert h.last()["eval_loss"] < before["loss"] / 2
    assert h.last()["eval_perplexity"] == pytest.approx(math.exp(h.last()["eval_loss"]))
    # the eval loss is the mean over counted tokens: check against the logits by hand
    logits = predict(model, [{"input_ids": b["input_ids"]} for b in eval_b], progress=False)
    labels = np.concatenate([b["labels"].numpy() for b in eval_b])
    mask = labels != IGNORE_INDEX
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, np.where(mask, labels, 0)[..., None], -1)[..., 0]
    assert h.last()["eval_loss"] == pytest.approx(nll[mask].mean(), rel=1e-4)


# --------------------------------------------------------------------------------------------
# When to evaluate.

def _run(digits, **kw):
    train_ds, test_ds = digits
    paddle.seed(123)
    model = mlp(dropout=0.3)
    opt = paddle.optimizer.AdamW(learning_rate=1e-2, parameters=model.parameters())
    h = fit(model, loader(train_ds, batch_size=128, shuffle=True), opt, 3, progress=False, seed=0,
            **kw)
    return model, h


def test_evaluation_never_changes_what_trains(digits):
    _, test_ds = digits
    runs = [_run(digits), _run(digits, eval_loader=loader(test_ds)),
            _run(digits, eval_loader=loader(test_ds), eval_at="end")]
    losses = [np.array(h.step_losses) for _, h in runs]
    weights = [m.state_dict()["3.weight"].numpy() for m, _ in runs]
    assert all(np.array_equal(losses[0], x) for x in losses[1:])
    assert all(np.array_equal(weights[0], w) for w in weights[1:])


def test_eval_at_end_fills_the_last_epoch_that_report_reads(digits):
    _, test_ds = digits
    model, h = _run(digits, eval_loader=loader(test_ds), eval_at="end")
    assert [sorted(k for k in r if k.startswith("eval_")) for r in h.epochs] == \
        [["eval_seconds"], ["eval_seconds"], ["eval_accuracy", "eval_loss", "eval_seconds"]]
    assert [r["eval_seconds"] > 0 for r in h.epochs] == [False, False, True]
    metrics = evaluate(model, loader(test_ds), progress=False)
    assert (h.last()["eval_accuracy"], h.last()["eval_loss"]) == (metrics["accuracy"],
                                                                  metrics["loss"])
    row = report("end only", model, h, budget="3 epochs", show=None)
    assert (row["metric_name"], row["metric"]) == ("accuracy",
                                                   round(100 * metrics["accuracy"], 2))
    _, every = _run(digits, eval_loader=loader(test_ds))
    assert all("eval_accuracy" in r for r in every.epochs)        # the default: every epoch
    assert every.last()["eval_accuracy"] == h.last()["eval_accuracy"]


def test_eval_at_end_evaluates_the_epoch_a_callback_stopped_at(digits):
    _, test_ds = digits

    class StopAfterFirst:
        stop_training = False

        def on_epoch_end(self, epoch, model, optimizer, logs):
            self.stop_training = True

    model, h = _run(digits, eval_loader=loader(test_ds), eval_at="end",
                    callbacks=[StopAfterFirst()])
    assert len(h.epochs) == 1 and h.metric_name == "accuracy"
    assert h.last()["eval_accuracy"] == evaluate(model, loader(test_ds), progress=False)["accuracy"]


def test_history_best_and_empty_errors():
    h = History(task="lm")
    with pytest.raises(ValueError, match="empty"):
        h.last()
    h.epochs = [{"epoch": 0, "train_loss": 3.0, "eval_loss": 2.0, "eval_perplexity": 7.4},
                {"epoch": 1, "train_loss": 2.0, "eval_loss": 2.2, "eval_perplexity": 9.0}]
    assert h.best()["epoch"] == 0 and h.best("train_loss")["epoch"] == 1
    with pytest.raises(KeyError, match="recorded keys"):
        h.best("eval_accuracy")


def test_seed_sets_the_epoch_of_a_seeded_sampler(digits):
    train_ds, _ = digits
    calls = []

    class Sampler(paddle.io.Sampler):
        def __init__(self, ds):
            super().__init__(ds)
            self.n = len(ds)

        def set_epoch(self, epoch):
            calls.append(epoch)

        def __iter__(self):
            return iter(range(self.n))

        def __len__(self):
            return self.n

    batches = paddle.io.BatchSampler(sampler=Sampler(train_ds), batch_size=100)
    dl = paddle.io.DataLoader(train_ds, batch_sampler=batches)
    model = mlp()
    opt = paddle.optimizer.SGD(learning_rate=0.1, parameters=model.parameters())
    fit(model, dl, opt, 3, max_steps_per_epoch=1, progress=False)
    assert calls == []  # without seed= the sampler counts epochs itself
    fit(model, dl, opt, 3, max_steps_per_epoch=1, progress=False, seed=0)
    assert calls == [0, 1, 2]
