"""A small, honest training loop used by every chapter: ``fit``, ``evaluate``, ``predict``, STLR.

What "honest" means here:

* it measures what the book compares: training loss, an evaluation metric (accuracy for
  classification; loss and perplexity for language modelling), wall seconds per epoch, examples
  and steps seen, and the peak memory of the process during the run;
* it hides nothing: one optimizer step per batch, the scheduler stepped where you say, callbacks
  called at fixed points (``model.train()`` runs *before* ``on_epoch_begin``, so a callback may
  put frozen BatchNorm layers back into eval mode);
* it is reproducible: ``fit(..., seed=0)`` seeds Python, numpy (which drives the shuffling of
  ``paddle.io.DataLoader``) and paddle (dropout), so two runs in one process give bit-identical
  losses on CPU.

Batches are either tuples ``(x, y)`` (images) or dicts (text). For dicts every key except
``labels`` is passed to the model as a keyword argument. With ``task="lm"`` the labels are passed
to the model too and the model's own loss is used. PaddleNLP's ``LlamaForCausalLM`` expects labels
*already shifted* (``input_ids = ids[:-1]``, ``labels = ids[1:]``): the data pipeline does that,
this loop only forwards them. Label ``-100`` marks tokens that do not count.

Progress bars (``tqdm.auto``: a widget in Jupyter, text on stderr elsewhere) are on unless
``progress=False`` or the environment variable ``FINETUNE_HELPERS_PROGRESS=0``. Why this is safe
for nbval: in a notebook the bar is one ``display_data`` output holding the widget view (which
nbval 0.11 never compares, its model id is random) and a ``text/plain`` form rendered *once, when
the bar is created*, e.g. ``train 1/3:   0%|          | 0/48 [00:00<?, ?it/s]``. That text has no
timings and depends only on the number of steps, so it is the same on every run. Later updates
change widget state, not the stored output. Without ipywidgets the bar would be stderr text full
of timings; the book's environment pins ipywidgets. Notebooks must be executed and checked with
the same value of ``FINETUNE_HELPERS_PROGRESS`` (with the bar off there is no such output).

Data parallel: started by ``python -m paddle.distributed.launch --nproc_per_node N script.py``,
``fit`` and ``evaluate`` need no change in the script. ``fit`` wraps the model in
``paddle.DataParallel``, gives each process its share of every batch (the loader's batch size is
the global batch), keeps the gradient synchronisation in step with freezing and unfreezing, and
records metrics over all processes; the progress bar shows on rank 0 only. See
:mod:`finetune_helpers.distributed`. In a single process none of that code runs.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import paddle

from finetune_helpers import distributed
from finetune_helpers.runtime import seed_everything

PROGRESS_ENV = "FINETUNE_HELPERS_PROGRESS"
IGNORE_INDEX = -100  # label value that PaddleNLP's losses skip (padding, prompt tokens)
TASKS = ("classification", "lm")
_POSTFIX_EVERY = 10  # steps between progress-bar loss updates (each one syncs a GPU)


# ---------------------------------------------------------------------------------------------
# Small helpers: progress bars, devices, batches, model outputs.

def progress_enabled(progress: bool | None = None) -> bool:
    """``progress`` if given, else False when ``$FINETUNE_HELPERS_PROGRESS`` is 0/false/off."""
    if progress is not None:
        return bool(progress)
    return os.environ.get(PROGRESS_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def progress_bar(total: int | None, desc: str, enabled: bool):
    """A ``tqdm.auto`` bar (widget in Jupyter, stderr text elsewhere), or a disabled one."""
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled, leave=True)


def _on_gpu() -> bool:
    return paddle.get_device().startswith("gpu")


def to_device(obj: Any) -> Any:
    """Move tensors (and numpy arrays) in ``obj`` to paddle's current device; no-op on CPU."""
    if isinstance(obj, dict):
        return {k: to_device(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return paddle.to_tensor(obj)
    if isinstance(obj, paddle.Tensor) and _on_gpu() and not obj.place.is_gpu_place():
        return obj.cuda()
    return obj


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, labels)`` from a dict batch (labels under ``"labels"``) or a tuple ``(x, y)``."""
    if isinstance(batch, dict):
        return {k: v for k, v in batch.items() if k != "labels"}, batch.get("labels")
    if isinstance(batch, (list, tuple)):
        if len(batch) == 2:
            return batch[0], batch[1]
        if len(batch) == 1:
            return batch[0], None
        raise ValueError(f"a tuple batch must be (inputs, labels) or (inputs,), got {len(batch)} "
                         "items; return a dict from the collate function to pass several inputs")
    return batch, None


def call_model(model: Callable, inputs: Any, **extra: Any) -> Any:
    """``model(**inputs, **extra)`` for dict inputs, ``model(inputs, **extra)`` otherwise."""
    if isinstance(inputs, dict):
        return model(**inputs, **extra)
    return model(inputs, **extra)


def output_field(output: Any, name: str) -> paddle.Tensor | None:
    """Take ``"logits"`` or ``"loss"`` from what a model returned, whatever its form.

    Handles a plain tensor (logits), PaddleNLP output objects (attributes), dicts, and tuples
    ``(loss, logits, ...)`` / ``(logits, ...)`` where the loss, if present, is the 0-d first item.
    Returns ``None`` when the field is absent.
    """
    if name not in ("logits", "loss"):
        raise ValueError(f"name must be 'logits' or 'loss', got {name!r}")
    if isinstance(output, paddle.Tensor):
        return output if name == "logits" else None
    value = getattr(output, name, None)
    if isinstance(value, paddle.Tensor):
        return value
    if isinstance(output, dict):  # PaddleNLP ModelOutput is a dict; the attribute was None
        return output.get(name)
    if isinstance(output, (list, tuple)):
        tensors = [t for t in output if isinstance(t, paddle.Tensor)]
        has_loss = bool(tensors) and tensors[0].size == 1 and tensors[0].ndim <= 1
        if name == "loss":
            return tensors[0] if has_loss else None
        rest = tensors[1:] if has_loss else tensors
        return rest[0] if rest else None
    raise TypeError(f"cannot read {name!r} from a model output of type {type(output).__name__}; "
                    "return a tensor, a tuple or an object with .logits/.loss")


def _batch_size(inputs: Any, labels: Any) -> int:
    for t in (labels, inputs):
        if isinstance(t, dict):
            t = next(iter(t.values()), None)
        if isinstance(t, (list, tuple)):
            t = t[0] if t else None
        if t is not None and hasattr(t, "shape") and len(t.shape) > 0:
            return int(t.shape[0])
    return 1


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
# Peak memory.

def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def current_rss_mib() -> float:
    """Resident memory of this process now, in MiB (/proc, else psutil, else the lifetime peak)."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib / 1024
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class PeakMemory:
    """Peak resident memory (RSS) of the process between :meth:`start` and :meth:`stop`.

    On Linux the kernel's own high-water mark is used: writing ``5`` to
    ``/proc/self/clear_refs`` resets ``VmHWM`` to the current RSS, and ``VmHWM`` read at the end
    is the true peak, including short spikes inside a step. Elsewhere (or if that file cannot be
    written) the RSS is sampled after every step, which misses spikes inside a step. On a GPU the
    peak of paddle's allocated device memory is recorded too.
    """

    def __init__(self) -> None:
        self.method = ""
        self.start_mib = 0.0
        self._sampled = 0.0

    def start(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM"
        except OSError:
            self.method = "sampled RSS"
        self.start_mib = self._sampled = current_rss_mib()
        if _on_gpu():
            paddle.device.cuda.reset_max_memory_allocated()

    def sample(self) -> None:
        if self.method != "VmHWM":
            self._sampled = max(self._sampled, current_rss_mib())

    def stop(self) -> dict[str, Any]:
        peak = _status_kib("VmHWM") if self.method == "VmHWM" else None
        peak_mib = peak / 1024 if peak is not None else max(self._sampled, current_rss_mib())
        gpu = paddle.device.cuda.max_memory_allocated() / 2**20 if _on_gpu() else None
        return {"peak_rss_mib": round(peak_mib, 1), "start_rss_mib": round(self.start_mib, 1),
                "peak_gpu_mib": None if gpu is None else round(gpu, 1),
                "memory_method": self.method}


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


def _resolve_scheduler(optimizer: Any, lr_scheduler: Any) -> Any:
    own = getattr(optimizer, "_learning_rate", None)
    own = own if isinstance(own, paddle.optimizer.lr.LRScheduler) else None
    if lr_scheduler is None:
        return own  # the optimizer's own schedule: stepping it is what the caller means
    if lr_scheduler is not own:
        raise ValueError("lr_scheduler is not the optimizer's learning rate, so stepping it "
                         "would change nothing; build the optimizer with "
                         "learning_rate=<the scheduler>")
    return lr_scheduler


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

def fit(model: paddle.nn.Layer, train_loader: Iterable, optimizer: paddle.optimizer.Optimizer,
        epochs: int, *, eval_loader: Iterable | None = None, task: str = "classification",
        loss_fn: Callable | None = None, lr_scheduler: Any = None, scheduler_step: str = "batch",
        callbacks: Sequence[Any] = (), desc: str = "train", max_steps_per_epoch: int | None = None,
        progress: bool | None = None, seed: int | None = None) -> History:
    """Train ``model`` for ``epochs`` epochs and return a :class:`History`.

    ``task="classification"``: ``loss_fn(logits, labels)`` (default cross-entropy), metric
    accuracy. ``task="lm"``: labels go to the model, its returned loss is used (unless
    ``loss_fn`` is given), metrics loss and perplexity. ``lr_scheduler`` defaults to the
    optimizer's own scheduler if it has one; it is stepped after every batch
    (``scheduler_step="batch"``) or every epoch (``"epoch"``). ``callbacks`` may define any of
    ``on_train_begin(model, optimizer)``, ``on_epoch_begin(epoch, model, optimizer)`` (called
    after ``model.train()``), ``on_epoch_end(epoch, model, optimizer, logs)`` and
    ``on_train_end(model, optimizer, history)``; ``epoch`` counts from 0. A callback whose
    ``stop_training`` attribute is true after ``on_epoch_end`` ends training there
    (:class:`finetune_helpers.callbacks.EarlyStopping`). ``seed`` re-seeds
    Python, numpy and paddle first and sets a sampler's ``set_epoch(epoch)`` if it has one, so
    shuffling and dropout repeat exactly, even on a loader used before.

    Under ``paddle.distributed.launch`` with several processes (see the module notes) the
    history holds the metrics of the global batches, the same on every process; ``seconds``
    and memory are this process's own.
    """
    _check_task(task)
    if scheduler_step not in ("batch", "epoch"):
        raise ValueError(f"scheduler_step must be 'batch' or 'epoch', got {scheduler_step!r}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if max_steps_per_epoch is not None and max_steps_per_epoch < 1:
        raise ValueError(f"max_steps_per_epoch must be >= 1 or None, got {max_steps_per_epoch}")
    scheduler = _resolve_scheduler(optimizer, lr_scheduler)
    if seed is not None:
        seed_everything(seed)

    # Data parallel (launched with several processes): the wrapped model and this process's
    # share of the batches. Callbacks and evaluation keep the caller's model.
    run = distributed.FitRun(model, train_loader) if distributed.launched() else None
    net, train_loader = (run.model, run.train_loader) if run is not None else (model, train_loader)
    history = History(task=task, device=paddle.get_device())
    steps = _steps_per_epoch(train_loader, max_steps_per_epoch)
    memory = PeakMemory()
    memory.start()
    _call(callbacks, "on_train_begin", model, optimizer)
    if run is not None:
        run.sync()  # the strategy may have changed what trains
    bar = progress_bar(None if steps is None else steps * epochs, f"{desc} 1/{epochs}",
                       progress_enabled(progress) and distributed.is_main_process())
    try:
        for epoch in range(epochs):
            model.train()
            if seed is not None:
                _set_sampler_epoch(train_loader, epoch)
            _call(callbacks, "on_epoch_begin", epoch, model, optimizer)
            if run is not None:
                run.sync()
            if epoch:
                bar.set_description(f"{desc} {epoch + 1}/{epochs}", refresh=False)
            start = time.perf_counter()
            losses: list[paddle.Tensor] = []
            sizes: list[int] = []
            for step, batch in enumerate(train_loader):
                if max_steps_per_epoch is not None and step >= max_steps_per_epoch:
                    break
                inputs, labels = split_batch(to_device(batch))
                loss, _ = _forward_loss(net, inputs, labels, task, loss_fn)
                if run is None:
                    loss.backward()
                else:
                    run.scaled_loss(loss, labels, _batch_size(inputs, labels), task).backward()
                optimizer.step()
                optimizer.clear_grad()
                if scheduler is not None and scheduler_step == "batch":
                    scheduler.step()
                losses.append(loss.detach())
                sizes.append(_batch_size(inputs, labels))
                memory.sample()
                bar.update(1)
                if not bar.disable and (step + 1) % _POSTFIX_EVERY == 0:
                    bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
            if scheduler is not None and scheduler_step == "epoch":
                scheduler.step()
            if not losses:
                raise ValueError("the training loader yielded no batch; check its length and "
                                 "drop_last")
            step_losses = paddle.stack(losses).reshape([-1]).astype("float64").numpy()  # syncs
            seconds = time.perf_counter() - start
            weights = np.asarray(sizes, dtype=np.float64)
            if run is not None:  # the losses and sizes of the global batches
                step_losses, weights = run.epoch_losses(step_losses, sizes)
            record: dict[str, Any] = {
                "epoch": epoch,
                "train_loss": float(np.sum(step_losses * weights) / weights.sum()),
            }
            if not math.isfinite(record["train_loss"]):
                raise FloatingPointError(f"training loss became {record['train_loss']} in epoch "
                                         f"{epoch}; lower the learning rate or check the labels")
            eval_seconds = 0.0
            if eval_loader is not None:
                eval_start = time.perf_counter()
                metrics = evaluate(model, eval_loader, task, loss_fn=loss_fn, progress=False)
                eval_seconds = time.perf_counter() - eval_start
                record.update({f"eval_{k}": v for k, v in metrics.items() if k != "examples"})
            record.update({"seconds": seconds, "eval_seconds": eval_seconds,
                           "examples": int(weights.sum()), "steps": len(losses),
                           "lr": float(optimizer.get_lr())})
            history.epochs.append(record)
            history.step_losses.extend(step_losses.tolist())
            postfix = {"loss": f"{record['train_loss']:.4f}"}
            if "eval_accuracy" in record:
                postfix["acc"] = f"{record['eval_accuracy']:.2%}"
            elif "eval_perplexity" in record:
                postfix["ppl"] = f"{record['eval_perplexity']:.2f}"
            bar.set_postfix(postfix, refresh=True)
            _call(callbacks, "on_epoch_end", epoch, model, optimizer, record)
            if any(getattr(cb, "stop_training", False) for cb in callbacks):
                break  # e.g. EarlyStopping: validation stopped improving
    finally:
        bar.close()
    for key, value in memory.stop().items():
        setattr(history, key, value)
    _call(callbacks, "on_train_end", model, optimizer, history)
    return history


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
                n = _batch_size(inputs, labels)
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


# ---------------------------------------------------------------------------------------------
# Learning-rate schedules.

def slanted_triangular(base_lr: float, total_steps: int, cut_frac: float = 0.1,
                       ratio: float = 32) -> paddle.optimizer.lr.OneCycleLR:
    """ULMFiT's slanted triangular learning rate (Howard & Ruder 2018, eq. 3) as a Paddle scheduler.

    The rate rises linearly from ``base_lr / ratio`` to ``base_lr`` over the first
    ``cut = floor(total_steps * cut_frac)`` steps, then falls linearly back to
    ``base_lr / ratio`` at step ``total_steps``. Step it once per batch.

    Built from Paddle's own ``OneCycleLR`` with linear annealing and two phases: its phase ends
    are at ``phase_pct * N - 1`` and ``N - 1``, so ``N = total_steps + 1`` and
    ``phase_pct = (cut + 1) / N`` put them at ``cut`` and ``total_steps``. The decay runs over
    ``total_steps - cut`` steps. The paper writes that length as ``cut * (1/cut_frac - 1)``,
    which is the same number when ``total_steps * cut_frac`` is whole; otherwise the paper's
    form overshoots and ends below ``base_lr / ratio`` (negative for small step counts), so
    the exact length is used.
    """
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
    if not 0.0 < cut_frac < 1.0:
        raise ValueError(f"cut_frac must be in (0, 1), got {cut_frac}")
    if ratio < 1:
        raise ValueError(f"ratio must be >= 1 (lowest rate = base_lr / ratio), got {ratio}")
    cut = math.floor(total_steps * cut_frac)
    if cut < 1 or cut >= total_steps:
        raise ValueError(f"total_steps * cut_frac = {total_steps * cut_frac:g} gives {cut} warm-up "
                         f"steps out of {total_steps}; need at least 1 and fewer than all: raise "
                         f"total_steps to >= {math.ceil(1 / cut_frac)} or change cut_frac")
    n = total_steps + 1
    return paddle.optimizer.lr.OneCycleLR(
        max_learning_rate=float(base_lr), total_steps=n, divide_factor=float(ratio),
        end_learning_rate=float(base_lr) / ratio, phase_pct=(cut + 1) / n,
        anneal_strategy="linear", three_phase=False)
