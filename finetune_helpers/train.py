"""A small, honest training loop used by every chapter: ``fit``, ``evaluate``, ``predict``.

What "honest" means here:

* it measures what the book compares: training loss, an evaluation metric (accuracy for
  classification; loss and perplexity for language modelling), wall seconds per epoch, examples
  and steps seen, and the peak memory of the process during the run
  (:class:`finetune_helpers.memory.PeakMemory`);
* it hides nothing: one optimizer step per batch, the optimizer's own learning-rate scheduler
  stepped where you say, callbacks called at fixed points (``model.train()`` runs *before*
  ``on_epoch_begin``, so a callback may put frozen BatchNorm layers back into eval mode);
* it is reproducible: ``fit(..., seed=0)`` seeds Python, numpy (which drives the shuffling of
  ``paddle.io.DataLoader``) and paddle (dropout), so two runs in one process give bit-identical
  losses on CPU.

Evaluation: with ``eval_loader`` the model is scored after every epoch (``eval_at="epoch"``, the
default), or only after the last one (``eval_at="end"``: cheaper when epochs are short); either
way the last epoch's record holds the ``eval_*`` metrics that :func:`finetune_helpers.report.report`
reads.

Batches (tuples or dicts) and model outputs are read by :mod:`finetune_helpers.batches`. With
``task="lm"`` the labels are passed to the model too and the model's own loss is used.
PaddleNLP's ``LlamaForCausalLM`` expects labels *already shifted* (``input_ids = ids[:-1]``,
``labels = ids[1:]``): the data pipeline does that, this loop only forwards them. Label
:data:`finetune_helpers.batches.IGNORE_INDEX` (-100) marks tokens that do not count. Progress
bars: :mod:`finetune_helpers.progress`.

Data parallel: started by ``python -m paddle.distributed.launch --nproc_per_node N script.py``,
``fit`` and ``evaluate`` need no change in the script. ``fit`` then trains through a
:class:`finetune_helpers.distributed.FitRun` instead of a one-process run (the same loop; the
run object wraps the model in ``paddle.DataParallel``, gives each process its share of every
batch, keeps the gradient synchronisation in step with freezing and unfreezing, and records
metrics over all processes); the progress bar shows on rank 0 only. See
:mod:`finetune_helpers.distributed`.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import paddle

from finetune_helpers import distributed
from finetune_helpers.batches import (IGNORE_INDEX, batch_size, call_model, output_field,
                                      split_batch, to_device)
from finetune_helpers.memory import PeakMemory
from finetune_helpers.progress import progress_bar, progress_enabled
from finetune_helpers.runtime import seed_everything
from finetune_helpers.schedules import slanted_triangular

# Names that chapters and other modules import from here (their homes: batches, memory,
# progress, schedules).
__all__ = ["TASKS", "EVAL_AT", "History", "fit", "evaluate", "predict", "eval_mode",
           "split_batch", "call_model", "to_device", "progress_bar", "progress_enabled",
           "PeakMemory", "slanted_triangular"]

TASKS = ("classification", "lm")
#: When ``fit`` evaluates on ``eval_loader``: after every epoch, or after the last one only.
EVAL_AT = ("epoch", "end")
_POSTFIX_EVERY = 10  # steps between progress-bar loss updates (each one syncs a GPU)


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Put ``model`` in eval mode and restore each sublayer's own mode afterwards.

    Restoring per sublayer (not a blanket ``model.train()``) keeps a frozen BatchNorm that a
    strategy put in eval mode in eval mode.
    """
    if not isinstance(model, paddle.nn.Layer):
        yield
        return
    modes = [(layer, layer.training) for layer in model.sublayers(include_self=True)]
    model.eval()
    try:
        yield
    finally:
        for layer, training in modes:
            layer.training = training


def _call(callbacks: Sequence[Any], name: str, *args: Any) -> None:
    for callback in callbacks:
        method = getattr(callback, name, None)
        if callable(method):
            method(*args)


# ---------------------------------------------------------------------------------------------
# History.

@dataclass
class History:
    """What :func:`fit` measured.

    ``epochs`` holds one record per epoch (``epoch`` counts from 0, as in the callbacks) with
    ``train_loss``, ``eval_*`` metrics (``eval_accuracy`` and ``eval_loss`` for classification,
    ``eval_loss`` and ``eval_perplexity`` for lm), ``seconds`` (wall time of the training part),
    ``eval_seconds``, ``examples``, ``steps`` and ``lr`` (the rate after the epoch).
    ``step_losses`` has every batch's loss. Memory is for the whole run, in MiB.
    """

    task: str
    epochs: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    peak_rss_mib: float | None = None
    start_rss_mib: float | None = None
    peak_gpu_mib: float | None = None
    memory_method: str = ""
    device: str = "cpu"
    best_epoch: int | None = None  # set by EarlyStopping: the epoch whose weights were kept

    @property
    def metric_name(self) -> str | None:
        """``"accuracy"`` or ``"perplexity"`` if the run was evaluated, else ``None``."""
        name = "accuracy" if self.task == "classification" else "perplexity"
        return name if self.epochs and f"eval_{name}" in self.epochs[-1] else None

    def series(self, key: str) -> list[Any]:
        """One value per epoch, e.g. ``series("train_loss")``."""
        return [record.get(key) for record in self.epochs]

    def last(self) -> dict[str, Any]:
        """The record of the last epoch."""
        if not self.epochs:
            raise ValueError("the history is empty: fit() ran no epoch")
        return dict(self.epochs[-1])

    def best(self, key: str | None = None) -> dict[str, Any]:
        """The epoch with the best ``key`` (default: the eval metric, else ``train_loss``).

        Accuracy is maximised; losses and perplexity are minimised.
        """
        if not self.epochs:
            raise ValueError("the history is empty: fit() ran no epoch")
        key = key or (f"eval_{self.metric_name}" if self.metric_name else "train_loss")
        if key not in self.epochs[-1]:
            raise KeyError(f"{key!r} is not recorded; recorded keys: {sorted(self.epochs[-1])}")
        sign = -1.0 if "accuracy" in key else 1.0
        return dict(min(self.epochs, key=lambda r: sign * r[key]))

    @property
    def seconds_per_epoch(self) -> float:
        """Mean wall seconds of the training part of an epoch."""
        return float(np.mean(self.series("seconds"))) if self.epochs else float("nan")

    @property
    def examples_seen(self) -> int:
        return int(sum(self.series("examples")))

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict of everything recorded."""
        return asdict(self)

    def to_frame(self):
        """The per-epoch records as a pandas DataFrame (includes timings: vary between runs)."""
        import pandas as pd
        return pd.DataFrame(self.epochs).set_index("epoch")


# ---------------------------------------------------------------------------------------------
# Losses and metrics for one batch.

def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def _forward_loss(model: Callable, inputs: Any, labels: Any, task: str,
                  loss_fn: Callable | None) -> tuple[paddle.Tensor, Any]:
    """Forward one batch; return ``(mean loss, raw output)``."""
    if labels is None:
        raise ValueError("the batch has no labels: yield (inputs, labels) tuples or dicts with a "
                         "'labels' key")
    if task == "lm" and loss_fn is None:
        output = call_model(model, inputs, labels=labels)
        loss = output_field(output, "loss")
        if loss is None:
            raise ValueError("task='lm' but the model returned no loss for the given labels; use "
                             "a model that computes its loss from labels (PaddleNLP "
                             "*ForCausalLM) or pass loss_fn=")
        return loss.reshape([]), output
    output = call_model(model, inputs)
    logits = output_field(output, "logits")
    if logits is None:
        raise ValueError("the model returned no logits")
    fn = loss_fn or paddle.nn.functional.cross_entropy
    return fn(logits, labels).reshape([]), output


def _scheduler_of(optimizer: Any) -> Any:
    """The optimizer's own ``LRScheduler``, or None for a constant rate."""
    own = getattr(optimizer, "_learning_rate", None)
    return own if isinstance(own, paddle.optimizer.lr.LRScheduler) else None


def _set_sampler_epoch(loader: Any, epoch: int) -> None:
    """Tell a seeded sampler (``data.SeededSampler``, ``DistributedBatchSampler``) the epoch."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    for obj in (batch_sampler, getattr(batch_sampler, "sampler", None)):
        if callable(getattr(obj, "set_epoch", None)):
            obj.set_epoch(epoch)
            return


def _steps_per_epoch(loader: Any, max_steps: int | None) -> int | None:
    try:
        n = len(loader)
    except TypeError:
        n = None
    if max_steps is not None:
        n = max_steps if n is None else min(n, max_steps)
    return n


# ---------------------------------------------------------------------------------------------
# The loop.

class _OneProcess:
    """The one-process side of :func:`fit`: the same interface as
    :class:`finetune_helpers.distributed.FitRun`, doing nothing beyond the plain steps."""

    def __init__(self, model: paddle.nn.Layer, train_loader: Iterable) -> None:
        self.model, self.train_loader = model, train_loader

    def sync(self) -> None:
        """Nothing to synchronise in one process."""

    def backward(self, loss: paddle.Tensor, labels: Any, examples: int, task: str) -> None:
        loss.backward()

    def epoch_losses(self, step_losses: np.ndarray, sizes: Sequence[int]
                     ) -> tuple[np.ndarray, np.ndarray]:
        return step_losses, np.asarray(sizes, dtype=np.float64)


def _check_fit_args(task: str, epochs: int, eval_at: str, scheduler_step: str,
                    max_steps_per_epoch: int | None) -> None:
    _check_task(task)
    if scheduler_step not in ("batch", "epoch"):
        raise ValueError(f"scheduler_step must be 'batch' or 'epoch', got {scheduler_step!r}")
    if eval_at not in EVAL_AT:
        raise ValueError(f"eval_at must be one of {EVAL_AT} (evaluate after every epoch, or after "
                         f"the last one only), got {eval_at!r}; pass no eval_loader to skip "
                         "evaluation")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if max_steps_per_epoch is not None and max_steps_per_epoch < 1:
        raise ValueError(f"max_steps_per_epoch must be >= 1 or None, got {max_steps_per_epoch}")


def _train_epoch(run: Any, optimizer: paddle.optimizer.Optimizer, scheduler: Any,
                 scheduler_step: str, task: str, loss_fn: Callable | None,
                 max_steps: int | None, memory: PeakMemory, bar: Any
                 ) -> tuple[np.ndarray, np.ndarray, int, float]:
    """One pass over the training batches: ``(step losses, step weights, steps, seconds)``."""
    start = time.perf_counter()
    losses: list[paddle.Tensor] = []
    sizes: list[int] = []
    for step, batch in enumerate(run.train_loader):
        if max_steps is not None and step >= max_steps:
            break
        inputs, labels = split_batch(to_device(batch))
        loss, _ = _forward_loss(run.model, inputs, labels, task, loss_fn)
        examples = batch_size(inputs, labels)
        run.backward(loss, labels, examples, task)
        optimizer.step()
        optimizer.clear_grad()
        if scheduler is not None and scheduler_step == "batch":
            scheduler.step()
        losses.append(loss.detach())
        sizes.append(examples)
        memory.sample()
        bar.update(1)
        if not bar.disable and (step + 1) % _POSTFIX_EVERY == 0:
            bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
    if scheduler is not None and scheduler_step == "epoch":
        scheduler.step()
    if not losses:
        raise ValueError("the training loader yielded no batch; check its length and drop_last")
    step_losses = paddle.stack(losses).reshape([-1]).astype("float64").numpy()  # syncs
    seconds = time.perf_counter() - start
    step_losses, weights = run.epoch_losses(step_losses, sizes)
    return step_losses, weights, len(losses), seconds


def _eval_record(model: paddle.nn.Layer, eval_loader: Iterable, task: str,
                 loss_fn: Callable | None) -> tuple[dict[str, Any], float]:
    """``eval_*`` metrics of ``model`` on ``eval_loader`` and the seconds they took."""
    start = time.perf_counter()
    metrics = evaluate(model, eval_loader, task, loss_fn=loss_fn, progress=False)
    return ({f"eval_{k}": v for k, v in metrics.items() if k != "examples"},
            time.perf_counter() - start)


def fit(model: paddle.nn.Layer, train_loader: Iterable, optimizer: paddle.optimizer.Optimizer,
        epochs: int, *, eval_loader: Iterable | None = None, eval_at: str = "epoch",
        task: str = "classification", loss_fn: Callable | None = None,
        scheduler_step: str = "batch", callbacks: Sequence[Any] = (), desc: str = "train",
        max_steps_per_epoch: int | None = None, progress: bool | None = None,
        seed: int | None = None) -> History:
    """Train ``model`` for ``epochs`` epochs and return a :class:`History`.

    ``task="classification"``: ``loss_fn(logits, labels)`` (default cross-entropy), metric
    accuracy. ``task="lm"``: labels go to the model, its returned loss is used (unless
    ``loss_fn`` is given), metrics loss and perplexity. With ``eval_loader`` the model is
    evaluated after every epoch (``eval_at="epoch"``) or after the last epoch only
    (``eval_at="end"``); the metrics go into that epoch's record as ``eval_*``. If the optimizer's
    learning rate is an ``LRScheduler`` it is stepped after every batch
    (``scheduler_step="batch"``) or every epoch (``"epoch"``). ``callbacks`` may define any of
    ``on_train_begin(model, optimizer)``, ``on_epoch_begin(epoch, model, optimizer)`` (called
    after ``model.train()``), ``on_epoch_end(epoch, model, optimizer, logs)`` and
    ``on_train_end(model, optimizer, history)``; ``epoch`` counts from 0. A callback whose
    ``stop_training`` attribute is true after ``on_epoch_end`` ends training there
    (:class:`finetune_helpers.callbacks.EarlyStopping`; with ``eval_at="end"`` the epoch where
    it stopped is then evaluated). ``seed`` re-seeds Python, numpy and paddle first and sets a
    sampler's ``set_epoch(epoch)`` if it has one, so shuffling and dropout repeat exactly, even
    on a loader used before.

    Under ``paddle.distributed.launch`` with several processes (see the module notes) the
    history holds the metrics of the global batches, the same on every process; ``seconds``
    and memory are this process's own.
    """
    _check_fit_args(task, epochs, eval_at, scheduler_step, max_steps_per_epoch)
    scheduler = _scheduler_of(optimizer)
    if seed is not None:
        seed_everything(seed)
    # Callbacks and evaluation get the caller's model; training goes through the run (under
    # data parallel: the wrapped model and this process's share of the batches).
    run = (distributed.FitRun(model, train_loader) if distributed.launched()
           else _OneProcess(model, train_loader))
    history = History(task=task, device=paddle.get_device())
    steps = _steps_per_epoch(run.train_loader, max_steps_per_epoch)
    memory = PeakMemory()
    memory.start()
    _call(callbacks, "on_train_begin", model, optimizer)
    run.sync()  # the strategy may have changed what trains
    bar = progress_bar(None if steps is None else steps * epochs, f"{desc} 1/{epochs}",
                       progress_enabled(progress) and distributed.is_main_process())
    try:
        for epoch in range(epochs):
            model.train()
            if seed is not None:
                _set_sampler_epoch(run.train_loader, epoch)
            _call(callbacks, "on_epoch_begin", epoch, model, optimizer)
            run.sync()
            if epoch:
                bar.set_description(f"{desc} {epoch + 1}/{epochs}", refresh=False)
            step_losses, weights, n_steps, seconds = _train_epoch(
                run, optimizer, scheduler, scheduler_step, task, loss_fn, max_steps_per_epoch,
                memory, bar)
            record: dict[str, Any] = {
                "epoch": epoch,
                "train_loss": float(np.sum(step_losses * weights) / weights.sum()),
            }
            if not math.isfinite(record["train_loss"]):
                raise FloatingPointError(f"training loss became {record['train_loss']} in epoch "
                                         f"{epoch}; lower the learning rate or check the labels")
            eval_seconds = 0.0
            if eval_loader is not None and (eval_at == "epoch" or epoch == epochs - 1):
                metrics, eval_seconds = _eval_record(model, eval_loader, task, loss_fn)
                record.update(metrics)
            record.update({"seconds": seconds, "eval_seconds": eval_seconds,
                           "examples": int(weights.sum()), "steps": n_steps,
                           "lr": float(optimizer.get_lr())})
            history.epochs.append(record)
            history.step_losses.extend(step_losses.tolist())
            _show_epoch(bar, record)
            _call(callbacks, "on_epoch_end", epoch, model, optimizer, record)
            if any(getattr(cb, "stop_training", False) for cb in callbacks):
                break  # e.g. EarlyStopping: validation stopped improving
    finally:
        bar.close()
    last = history.epochs[-1]
    if eval_loader is not None and eval_at == "end" and "eval_loss" not in last:
        metrics, last["eval_seconds"] = _eval_record(model, eval_loader, task, loss_fn)
        last.update(metrics)  # stopped early by a callback: evaluate the epoch it stopped at
    for key, value in memory.stop().items():
        setattr(history, key, value)
    _call(callbacks, "on_train_end", model, optimizer, history)
    return history


def _show_epoch(bar: Any, record: dict[str, Any]) -> None:
    postfix = {"loss": f"{record['train_loss']:.4f}"}
    if "eval_accuracy" in record:
        postfix["acc"] = f"{record['eval_accuracy']:.2%}"
    elif "eval_perplexity" in record:
        postfix["ppl"] = f"{record['eval_perplexity']:.2f}"
    bar.set_postfix(postfix, refresh=True)


@paddle.no_grad()
def evaluate(model: Callable, loader: Iterable, task: str = "classification", *,
             loss_fn: Callable | None = None, progress: bool | None = None,
             desc: str = "eval") -> dict[str, float]:
    """Metrics of ``model`` on ``loader`` in eval mode without gradients.

    Classification: ``accuracy`` (fraction) and ``loss`` (mean over examples). LM: ``loss``
    (mean over counted tokens, i.e. labels != -100) and ``perplexity = exp(loss)``. Also
    ``examples``. Under data parallel each process evaluates its share of every batch and the
    sums are added over the processes: every process gets the metrics of the whole loader.
    """
    _check_task(task)
    total_loss = paddle.zeros([], dtype="float64")
    correct = paddle.zeros([], dtype="int64")
    count = paddle.zeros([], dtype="float64")  # examples (classification) or tokens (lm)
    examples = 0
    loader = distributed.shard_loader(loader, lockstep=False)  # unchanged in one process
    bar = progress_bar(_steps_per_epoch(loader, None), desc,
                       progress_enabled(progress) and distributed.is_main_process())
    with eval_mode(model):
        try:
            for batch in loader:
                inputs, labels = split_batch(to_device(batch))
                loss, output = _forward_loss(model, inputs, labels, task, loss_fn)
                n = batch_size(inputs, labels)
                examples += n
                if task == "lm":
                    weight = (labels != IGNORE_INDEX).astype("float64").sum()
                else:
                    logits = output_field(output, "logits")
                    predicted = logits.argmax(axis=-1).reshape([-1])
                    correct += (predicted == labels.reshape([-1]).astype(predicted.dtype)
                                ).astype("int64").sum()
                    weight = paddle.to_tensor(float(n), dtype="float64")
                total_loss += loss.astype("float64") * weight
                count += weight
                bar.update(1)
        finally:
            bar.close()
    if distributed.active():  # each process saw its share: add the sums up
        distributed.check_same_order(loader)
        sums = distributed.all_reduce_sum([float(total_loss), int(correct), float(count), examples])
        total_loss, count = (paddle.to_tensor(v, dtype="float64") for v in (sums[0], sums[2]))
        correct, examples = paddle.to_tensor(int(sums[1]), dtype="int64"), int(sums[3])
    if examples == 0:
        raise ValueError("the evaluation loader yielded no batch")
    mean_loss = float(total_loss / count.clip(min=1.0))
    if task == "lm":
        return {"loss": mean_loss, "perplexity": float(math.exp(min(mean_loss, 700.0))),
                "examples": examples}
    return {"accuracy": int(correct) / examples, "loss": mean_loss, "examples": examples}


@paddle.no_grad()
def predict(model: Callable, loader: Iterable, *, progress: bool | None = None,
            desc: str = "predict") -> np.ndarray:
    """Logits for every example of ``loader`` (labels, if any, are ignored), in eval mode."""
    chunks: list[np.ndarray] = []
    bar = progress_bar(_steps_per_epoch(loader, None), desc, progress_enabled(progress))
    with eval_mode(model):
        try:
            for batch in loader:
                inputs, _ = split_batch(to_device(batch))
                logits = output_field(call_model(model, inputs), "logits")
                if logits is None:
                    raise ValueError("the model returned no logits")
                chunks.append(logits.numpy())
                bar.update(1)
        finally:
            bar.close()
    if not chunks:
        raise ValueError("the loader yielded no batch")
    return np.concatenate(chunks, axis=0)
