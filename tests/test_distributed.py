"""finetune_helpers.distributed: data-parallel fine-tuning on 2 CPU processes stays exact.

One real ``paddle.distributed.launch`` run (2 processes, gloo on loopback) trains a tiny
BERT-shaped model three ways (full fine-tuning, freeze the bottom 2 blocks, gradual unfreezing)
with the unchanged ``train.fit``, and the same worker code runs here in one process as the
reference. Checked: weights bit-identical across ranks, frozen weights bit-identical to the
start, and the same weights, losses and accuracy as one process with the same global batch
(within TOLERANCE: float rounding of a gradient averaged in a different order). The worker also
records what plain ``paddle.DataParallel`` does when a block is unfrozen after the wrapper was
built (it does not synchronise it), and that ranks disagreeing on what trains is an error.
"""

import importlib.util
import json
import textwrap
from pathlib import Path

import numpy as np
import paddle
import pytest

from finetune_helpers import data, distributed
from finetune_helpers.distributed import ShardedBatchSampler

ROOT = Path(__file__).resolve().parents[1]
# Max abs difference between the 2-process and 1-process weights after 3 epochs of AdamW
# (lr 1e-2, 12 steps). Measured: at most 4e-7 (float32 weights of size ~0.1-1), losses to 1e-6.
TOLERANCE = 2e-5
# Except the attention key bias: adding a constant to every key score of a query leaves the
# softmax unchanged, so its gradient is exactly zero, and what is computed is float noise
# (~1e-10) that Adam divides by its own square root: steps of about lr in a random direction,
# different for any two runs that round differently (measured up to 3e-2 here). Not a
# data-parallel effect; SGD would leave it at zero.
ZERO_GRADIENT = ".self_attn.k_proj.bias"
STRATEGIES = ("full", "freeze_bottom", "gradual")

WORKER = textwrap.dedent('''
    """Trains a tiny BERT-shaped classifier three ways with train.fit; run by the launcher
    (data parallel) or imported (one process). Writes weights and histories to OUT."""
    import json
    import sys
    from pathlib import Path

    N_TRAIN, N_EVAL, BATCH, EPOCHS, VOCAB, LENGTH = 51, 21, 16, 3, 50, 8


    def tiny_bert():
        import paddle
        from paddle import nn

        class Embeddings(nn.Layer):
            def __init__(self, hidden):
                super().__init__()
                self.word = nn.Embedding(VOCAB, hidden)
                self.position = nn.Embedding(LENGTH, hidden)
                self.norm = nn.LayerNorm(hidden)

            def forward(self, ids):
                return self.norm(self.word(ids) + self.position(paddle.arange(ids.shape[1])))

        class Base(nn.Layer):  # the shape finetune_helpers.layers knows as BERT-like
            def __init__(self, hidden=16, layers=2):
                super().__init__()
                self.embeddings = Embeddings(hidden)
                self.encoder = nn.TransformerEncoder(
                    nn.TransformerEncoderLayer(hidden, 2, 32, dropout=0.0), layers)
                self.pooler = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())

            def forward(self, ids):
                return self.pooler(self.encoder(self.embeddings(ids))[:, 0])

        class Classifier(nn.Layer):
            def __init__(self):
                super().__init__()
                self.bert = Base()
                self.classifier = nn.Linear(16, 3)

            def forward(self, ids):
                return self.classifier(self.bert(ids))

        return Classifier()


    def datasets():
        import numpy as np
        import paddle

        class Tokens(paddle.io.Dataset):
            def __init__(self, ids, labels):
                super().__init__()
                self.ids, self.labels = ids, labels

            def __len__(self):
                return len(self.ids)

            def __getitem__(self, i):
                return self.ids[i], self.labels[i]

        rng = np.random.default_rng(0)
        ids = rng.integers(1, VOCAB, size=(N_TRAIN + N_EVAL, LENGTH)).astype(np.int64)
        labels = ids[:, 1] % 3  # learnable: the label is in token 1
        return Tokens(ids[:N_TRAIN], labels[:N_TRAIN]), Tokens(ids[N_TRAIN:], labels[N_TRAIN:])


    def run(strategy, out):
        import numpy as np
        import paddle
        from finetune_helpers import data, distributed, layers, strategies, train

        paddle.seed(0)
        model = tiny_bert()
        callbacks = []
        if strategy == "full":
            strategies.fine_tune_all(model)
        elif strategy == "freeze_bottom":
            strategies.freeze_bottom(model, 2)  # embeddings and encoder layer 0
        else:  # head + pooler first, then one encoder layer more per epoch
            callbacks = [strategies.GradualUnfreezing(model, start=2)]
            callbacks[0].apply(0)
        start = {k: v.numpy().copy() for k, v in model.state_dict().items()}
        opt = paddle.optimizer.AdamW(learning_rate=1e-2, parameters=model.parameters())
        train_ds, eval_ds = datasets()
        history = train.fit(model, data.make_loader(train_ds, BATCH, shuffle=True, seed=0), opt,
                            EPOCHS, eval_loader=data.make_loader(eval_ds, 8), seed=0,
                            callbacks=callbacks, progress=strategy == "gradual")
        tag = f"{strategy}.rank{distributed.rank()}"
        if strategy == "gradual":
            save_and_reload(model, opt, out, tag)
        np.savez(out / f"{tag}.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
        if distributed.is_main_process():
            np.savez(out / f"{strategy}.start.npz", **start)
        (out / f"{tag}.json").write_text(json.dumps({
            "epochs": history.epochs, "step_losses": history.step_losses,
            "frozen_params": [n for n, p in model.named_parameters() if p.stop_gradient],
            "frozen_blocks": [n for n, ps in layers.block_parameters(model)
                              if all(p.stop_gradient for p in ps)],
            "log": [e["unfrozen"] for e in callbacks[0].log] if callbacks else []}))


    def save_and_reload(model, opt, out, tag):
        """distributed.save_checkpoint: rank 0 writes; every rank can read it right after."""
        import paddle
        from finetune_helpers import checkpoints, distributed, features
        calls = []
        real = checkpoints.save_checkpoint
        checkpoints.save_checkpoint = lambda *a, **k: (calls.append(1), real(*a, **k))
        try:
            distributed.save_checkpoint(str(out / "gradual.ckpt"), model, opt, epoch=EPOCHS)
        finally:
            checkpoints.save_checkpoint = real
        paddle.seed(1)
        fresh = tiny_bert()
        extra = checkpoints.load_checkpoint(str(out / "gradual.ckpt"), fresh)
        same = features.weights_fingerprint(fresh) == features.weights_fingerprint(model)
        (out / f"{tag}.ckpt.json").write_text(json.dumps(
            {"writes": len(calls), "reloaded_equal": same, "extra": extra}))


    class TinyLM:
        """A causal-LM-shaped model: returns (loss, logits); the loss is the mean over counted
        tokens (label != -100) as in PaddleNLP's criterion, so the processes' token counts
        differ and must be weighted. (F.cross_entropy(ignore_index=-100) would average over
        ALL positions: paddle 3.3.1 counts non-ignored labels only for ignore_index >= 0.)"""

        @staticmethod
        def build():
            import paddle
            from paddle import nn

            class Model(nn.Layer):
                def __init__(self):
                    super().__init__()
                    self.embed = nn.Embedding(VOCAB, 16)
                    self.hidden = nn.Linear(16, 16)
                    self.head = nn.Linear(16, VOCAB)

                def forward(self, ids, labels=None):
                    logits = self.head(paddle.tanh(self.hidden(self.embed(ids))))
                    if labels is None:
                        return logits
                    per_token = nn.functional.cross_entropy(
                        logits.reshape([-1, VOCAB]), labels.reshape([-1, 1]),
                        ignore_index=-100, reduction="none")
                    counted = (labels != -100).astype(per_token.dtype).sum()
                    return per_token.sum() / counted, logits

            return Model()


    def run_lm(out):
        import numpy as np
        import paddle
        from finetune_helpers import data, distributed, train

        class Pairs(paddle.io.Dataset):
            def __init__(self, x, y):
                super().__init__()
                self.x, self.y = x, y

            def __len__(self):
                return len(self.x)

            def __getitem__(self, i):
                return self.x[i], self.y[i]

        rng = np.random.default_rng(1)
        ids = rng.integers(1, VOCAB, size=(34, LENGTH + 1)).astype(np.int64)
        x, y = ids[:, :-1].copy(), ids[:, 1:].copy()
        for row, keep in zip(y, rng.integers(1, LENGTH + 1, size=len(y))):
            row[keep:] = -100  # 1 to 8 counted tokens per example
        paddle.seed(0)
        model = TinyLM.build()
        opt = paddle.optimizer.AdamW(learning_rate=1e-2, parameters=model.parameters())
        history = train.fit(model, data.make_loader(Pairs(x[:26], y[:26]), 8, shuffle=True,
                                                    seed=0), opt, 2, task="lm", seed=0,
                            eval_loader=data.make_loader(Pairs(x[26:], y[26:]), 3),
                            progress=False)
        tag = f"lm.rank{distributed.rank()}"
        np.savez(out / f"{tag}.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
        (out / f"{tag}.json").write_text(json.dumps(
            {"epochs": history.epochs, "step_losses": history.step_losses}))


    def unseeded_order(out):
        """A loader whose order differs between the processes must be refused, not used."""
        import numpy as np
        import paddle
        from finetune_helpers import distributed, train
        np.random.seed(distributed.rank())  # paddle's RandomSampler draws from numpy
        paddle.seed(0)
        model = tiny_bert()
        loader = paddle.io.DataLoader(datasets()[0], batch_size=BATCH, shuffle=True)
        opt = paddle.optimizer.SGD(learning_rate=0.1, parameters=model.parameters())
        try:
            train.fit(model, loader, opt, 1, progress=False)  # no seed=: orders differ
            message = "no error"
        except RuntimeError as exc:
            message = str(exc)
        (out / f"order.rank{distributed.rank()}.txt").write_text(message)


    def plain_dataparallel_unfreeze(out):
        """Paddle alone: a block unfrozen after DataParallel was built is not synchronised."""
        import numpy as np
        import paddle
        import paddle.distributed as dist
        from paddle import nn
        paddle.seed(0)
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
        for p in model[0].parameters():
            p.stop_gradient = True
        dp = paddle.DataParallel(model)
        opt = paddle.optimizer.SGD(learning_rate=0.1, parameters=model.parameters())
        rng = np.random.default_rng(dist.get_rank())  # different data on each rank
        for step in range(3):
            if step == 1:
                for p in model[0].parameters():
                    p.stop_gradient = False
            x = paddle.to_tensor(rng.normal(size=(4, 8)).astype("float32"))
            y = paddle.to_tensor(rng.integers(0, 3, size=(4,)))
            nn.functional.cross_entropy(dp(x), y).backward()
            opt.step()
            opt.clear_grad()
        np.savez(out / f"plain.rank{dist.get_rank()}.npz", w0=model[0].weight.numpy(),
                 w2=model[2].weight.numpy())


    def disagreeing_ranks(out):
        """Rank 1 freezes one more block than rank 0: wrapping must refuse."""
        from finetune_helpers import distributed, strategies
        import paddle
        paddle.seed(0)
        model = tiny_bert()
        strategies.freeze_bottom(model, 1 + distributed.rank())
        try:
            distributed.wrap(model)
            message = "no error"
        except RuntimeError as exc:
            message = str(exc)
        (out / f"mismatch.rank{distributed.rank()}.txt").write_text(message)


    if __name__ == "__main__":
        sys.path.insert(0, sys.argv[2])
        from finetune_helpers import runtime
        runtime.setup(seed=0, verbose=False)  # before paddle is imported
        out = Path(sys.argv[1])
        for name in ("full", "freeze_bottom", "gradual"):
            run(name, out)
        run_lm(out)
        unseeded_order(out)
        plain_dataparallel_unfreeze(out)
        disagreeing_ranks(out)
        from finetune_helpers import distributed
        distributed.print_main("worker done")
''')


# ---------------------------------------------------------------------------------------------
# The real thing: 2 processes, then the same code in this process.

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dp")
    script = folder / "worker.py"
    script.write_text(WORKER)
    dp_out, ref_out = folder / "dp", folder / "ref"
    dp_out.mkdir()
    ref_out.mkdir()
    result = distributed.launch(script, [dp_out, ROOT], nproc=2, log_dir=folder / "logs",
                                timeout=240).check()
    spec = importlib.util.spec_from_file_location("dp_worker", script)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    for name in STRATEGIES:
        worker.run(name, ref_out)
    worker.run_lm(ref_out)
    return result, dp_out, ref_out


def _weights(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _history(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow  # launches two real processes (the runs fixture)
def test_launch_ran_two_ranks_and_only_rank0_prints(runs):
    result, _, _ = runs
    assert result.lines("worker done", rank=0) == ["worker done"]
    assert result.lines("worker done", rank=1) == []
    assert "gloo" in result.launcher_output.lower()  # CPU processes talk through gloo
    # fit(progress=True) in the gradual run: the bar is drawn by rank 0 only
    assert "train 3/3" in result.worker_logs[0] and "train" not in result.worker_logs[1]


@pytest.mark.slow  # launches two real processes (the runs fixture)
def test_checkpoint_written_by_rank0_only_and_readable_by_all(runs):
    _, dp, _ = runs
    records = [_history(dp / f"gradual.rank{r}.ckpt.json") for r in (0, 1)]
    assert [r["writes"] for r in records] == [1, 0]
    assert all(r["reloaded_equal"] and r["extra"] == {"epoch": 3} for r in records)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.slow  # launches two real processes (the runs fixture)
def test_weights_identical_across_ranks(runs, strategy):
    _, dp, _ = runs
    rank0, rank1 = _weights(dp / f"{strategy}.rank0.npz"), _weights(dp / f"{strategy}.rank1.npz")
    assert rank0.keys() == rank1.keys()
    differing = [k for k in rank0 if not np.array_equal(rank0[k], rank1[k])]
    assert differing == [], f"{strategy}: ranks differ in {differing}"


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.slow  # launches two real processes (the runs fixture)
def test_frozen_weights_unchanged_and_trained_ones_moved(runs, strategy):
    _, dp, _ = runs
    start = _weights(dp / f"{strategy}.start.npz")
    end = _weights(dp / f"{strategy}.rank0.npz")
    record = _history(dp / f"{strategy}.rank0.json")
    assert record["frozen_blocks"] == {"full": [], "gradual": ["bert.embeddings"],
                                       "freeze_bottom": ["bert.embeddings",
                                                         "bert.encoder.layers.0"]}[strategy]
    frozen = set(record["frozen_params"])
    for name in start:
        if name in frozen:
            assert np.array_equal(start[name], end[name]), f"{strategy}: frozen {name} moved"
        else:
            assert not np.array_equal(start[name], end[name]), f"{strategy}: {name} never trained"


@pytest.mark.slow  # launches two real processes (the runs fixture)
def test_gradual_unfreezing_unfroze_the_same_blocks_on_both_ranks(runs):
    _, dp, _ = runs
    logs = [_history(dp / f"gradual.rank{r}.json")["log"] for r in (0, 1)]
    assert logs[0] == logs[1] == [["bert.pooler", "classifier"], ["bert.encoder.layers.1"],
                                  ["bert.encoder.layers.0"]]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.slow  # launches two real processes (the runs fixture)
def test_two_processes_match_one_process_with_the_same_global_batch(runs, strategy):
    _, dp, ref = runs
    two, one = _weights(dp / f"{strategy}.rank0.npz"), _weights(ref / f"{strategy}.rank0.npz")
    checked = [k for k in one if not k.endswith(ZERO_GRADIENT)]
    assert len(one) - len(checked) == 2  # one key bias per encoder layer, nothing else
    worst = max(float(np.max(np.abs(two[k] - one[k]))) for k in checked)
    assert worst < TOLERANCE, f"{strategy}: max |2 processes - 1 process| = {worst:.2e}"
    h2, h1 = _history(dp / f"{strategy}.rank0.json"), _history(ref / f"{strategy}.rank0.json")
    np.testing.assert_allclose(h2["step_losses"], h1["step_losses"], rtol=1e-5, atol=1e-6)
    for e2, e1 in zip(h2["epochs"], h1["epochs"]):
        assert (e2["examples"], e2["steps"]) == (e1["examples"], e1["steps"]) == (51, 4)
        assert e2["eval_accuracy"] == e1["eval_accuracy"]
        assert e2["eval_loss"] == pytest.approx(e1["eval_loss"], rel=1e-5)
        assert e2["train_loss"] == pytest.approx(e1["train_loss"], rel=1e-5)
    first, last = h1["epochs"][0]["train_loss"], h1["epochs"][-1]["train_loss"]
    assert last < first - 0.05, f"{strategy}: training loss {first:.3f} -> {last:.3f}"


@pytest.mark.slow  # launches two real processes (the runs fixture)
def test_language_model_losses_are_weighted_by_counted_tokens(runs):
    # The pieces hold different numbers of counted tokens (labels != -100): without the
    # token weighting the 2-process gradient would differ from the 1-process one.
    _, dp, ref = runs
    rank0, rank1 = _weights(dp / "lm.rank0.npz"), _weights(dp / "lm.rank1.npz")
    assert all(np.array_equal(rank0[k], rank1[k]) for k in rank0)
    one = _weights(ref / "lm.rank0.npz")
    worst = max(float(np.max(np.abs(rank0[k] - one[k]))) for k in one)
    assert worst < TOLERANCE, f"max |2 processes - 1 process| = {worst:.2e}"
    h2, h1 = _history(dp / "lm.rank0.json"), _history(ref / "lm.rank0.json")
    np.testing.assert_allclose(h2["step_losses"], h1["step_losses"], rtol=1e-5, atol=1e-6)
    for e2, e1 in zip(h2["epochs"], h1["epochs"]):
        assert (e2["examples"], e2["steps"]) == (e1["examples"], e1["steps"]) == (26, 4)
        assert e2["eval_perplexity"] == pytest.approx(e1["eval_perplexity"], rel=1e-5)


@pytest.mark.slow  # launches two real processes (the runs fixture)
def test_batches_drawn_in_different_orders_are_an_error(runs):
    _, dp, _ = runs
    for r in (0, 1):
        message = (dp / f"order.rank{r}.txt").read_text()
        assert "drew different batches" in message and "seed=0" in message, message


@pytest.mark.slow  # launches two real processes (the runs fixture)
def test_plain_dataparallel_does_not_sync_a_block_unfrozen_later(runs):
    # The Paddle behaviour that fit() works around (distributed.sync_trainable): if this starts
    # failing, Paddle began to synchronise such blocks by itself.
    _, dp, _ = runs
    rank0, rank1 = _weights(dp / "plain.rank0.npz"), _weights(dp / "plain.rank1.npz")
    assert np.array_equal(rank0["w2"], rank1["w2"])  # trainable when wrapped: synchronised
    assert not np.array_equal(rank0["w0"], rank1["w0"])  # unfrozen later: drifted apart


@pytest.mark.slow  # launches two real processes (the runs fixture)
def test_ranks_training_different_parameters_is_an_error(runs):
    _, dp, _ = runs
    for r in (0, 1):
        message = (dp / f"mismatch.rank{r}.txt").read_text()
        assert "do not train the same parameters" in message and "rank 1" in message


# ---------------------------------------------------------------------------------------------
# Pieces that need no second process.

def _inner(n: int, batch: int, seed: int = 0) -> paddle.io.BatchSampler:
    return data.make_loader(list(range(n)), batch, shuffle=True, seed=seed).batch_sampler


@pytest.mark.parametrize("n,batch,world", [(51, 16, 2), (50, 16, 3), (33, 8, 4), (16, 16, 2)])
def test_sharded_pieces_rebuild_each_global_batch(n, batch, world):
    inner = [list(b) for b in _inner(n, batch)]
    shards = [list(ShardedBatchSampler(_inner(n, batch), r, world)) for r in range(world)]
    kept = [b for b in inner if len(b) >= world]
    assert all(len(s) == len(kept) for s in shards)
    for step, batch_ in enumerate(kept):
        pieces = [s[step] for s in shards]
        assert sum(pieces, []) == batch_  # contiguous, in order, nothing lost or repeated
        assert max(map(len, pieces)) - min(map(len, pieces)) <= 1
    assert [len(ShardedBatchSampler(_inner(n, batch), r, world)) for r in range(world)] == \
        [len(kept)] * world


def test_short_last_batch_is_skipped_in_lockstep_and_shared_in_evaluation():
    # 17 examples, batch 8: batches 8, 8, 1. One example cannot be shared by 2 processes.
    train = [ShardedBatchSampler(_inner(17, 8), r, 2) for r in (0, 1)]
    assert [len(list(s)) for s in train] == [len(s) for s in train] == [2, 2]
    evals = [ShardedBatchSampler(_inner(17, 8), r, 2, lockstep=False) for r in (0, 1)]
    assert [len(list(s)) for s in evals] == [len(s) for s in evals] == [3, 2]
    assert sorted(sum((sum(list(s), []) for s in evals), [])) == list(range(17))


def test_set_epoch_reaches_the_seeded_sampler_on_every_rank():
    shards = [ShardedBatchSampler(_inner(40, 8), r, 2) for r in (0, 1)]
    for s in shards:
        s.set_epoch(3)
    epoch3 = [list(s) for s in shards]
    for s in shards:
        s.set_epoch(3)
    assert [list(s) for s in shards] == epoch3  # same epoch, same order
    for s in shards:
        s.set_epoch(4)
    assert [list(s) for s in shards] != epoch3
    assert sorted(sum(epoch3[0] + epoch3[1], [])) == list(range(40))


def test_bad_arguments_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="use a batch size >= 4"):
        ShardedBatchSampler(_inner(10, 2), 0, 4)
    with pytest.raises(ValueError, match=r"rank must be an int in 0\.\.1"):
        ShardedBatchSampler(_inner(10, 2), 2, 2)
    with pytest.raises(FileNotFoundError, match="write it first"):
        distributed.launch(tmp_path / "missing.py")


def test_single_process_is_a_no_op():
    assert (distributed.launched(), distributed.active()) == (False, False)
    assert (distributed.world_size(), distributed.rank(), distributed.is_main_process()) == \
        (1, 0, True)
    model = paddle.nn.Linear(2, 2)
    loader = data.make_loader(list(range(4)), 2)
    assert distributed.wrap(model) is model
    assert distributed.shard_loader(loader) is loader
    assert distributed.sync_trainable(model) is False
    assert distributed.all_reduce_sum([1, 2.5]) == [1.0, 2.5]


def test_failed_run_raises_with_the_workers_log(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import sys\nprint('about to fail', flush=True)\nsys.exit(3)\n")
    result = distributed.launch(script, nproc=1, log_dir=tmp_path / "logs", timeout=120)
    assert result.returncode != 0
    assert result.lines("about to fail") == ["about to fail"]
    with pytest.raises(RuntimeError, match="(?s)failed with exit code.*about to fail"):
        result.check()
