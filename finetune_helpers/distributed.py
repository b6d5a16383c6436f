"""Data parallelism with ``paddle.distributed``: the book's training loop on several processes.

Start any training script with Paddle's own launcher and :func:`finetune_helpers.train.fit` turns
data parallel by itself (nothing in the script changes)::

    python -m paddle.distributed.launch --nproc_per_node 2 train.py      # 2 CPU processes (gloo)
    python -m paddle.distributed.launch --gpus 0,1,2,3 train.py          # 4 GPUs (NCCL)

Under the launcher (``PADDLE_TRAINERS_NUM > 1``) ``fit`` calls ``init_parallel_env()``, wraps
the model in ``paddle.DataParallel`` (:func:`wrap`), gives each process its share of every batch
(:func:`shard_loader`), averages the metrics over the processes, and shows the progress bar on
rank 0 only. Checkpoints and prints belong to rank 0 too (:func:`save_checkpoint`,
:func:`print_main`). :func:`launch` starts a script that way from Python and collects its logs.

**Same global batch, same result.** The loader's batch size stays the *global* batch: each batch
is cut into contiguous pieces, one per process, whose sizes differ by at most one
(:class:`ShardedBatchSampler`). The processes' pieces at one step are exactly the batch one
process would see, and each process scales its loss by ``local_weight * world / global_weight``
(weight: examples, or counted tokens for ``task="lm"``), so the averaged gradient equals the
one-process gradient even when the pieces differ in size. Two runs agree to float rounding
(the tests state the tolerance); dropout draws different masks, so turn it off to compare.
A batch with fewer examples than processes (a short last batch) is skipped by every process:
a process with no example cannot join the gradient all-reduce. For ``task="lm"`` the weight
assumes the model's loss is the mean over counted tokens, as PaddleNLP's causal-LM criterion
computes it (and as ``train.evaluate`` assumes). Pitfall: ``paddle.nn.functional.cross_entropy(
..., ignore_index=-100)`` with ``reduction="mean"`` divides by ALL positions, ignored ones
included (paddle 3.3.1 counts the non-ignored labels only when ``ignore_index >= 0``); a model
with such a loss gets a per-position mean, and unequal pieces then differ slightly from one
process.

**What ``paddle.DataParallel`` does with frozen parameters** (paddlepaddle 3.3.1, verified on
2 CPU processes with gloo; ``tests/test_distributed.py`` keeps checking it):

* Building the wrapper broadcasts every parameter and buffer from rank 0 once, frozen ones
  included. Its gradient *reducer* then holds only the parameters that are trainable at that
  moment (``not stop_gradient``, i.e. ``param.trainable``). Frozen parameters are never
  communicated and stay bit-identical.
* A parameter unfrozen AFTER the wrapper was built is not in the reducer: its gradient is
  never all-reduced, each process applies its own, and the copies drift apart silently (no
  error, no warning). ``find_unused_parameters=True`` does not change that: it only affects
  parameters already in the reducer.
* A parameter frozen after the wrapper was built, with ``find_unused_parameters=False`` (the
  default): the reducer waits for a gradient that never comes, that step's all-reduce never
  completes, and the next forward raises "A serious error has occurred here. Please set
  find_unused_parameters=True ...". With ``True`` it works, but every step walks the autograd
  graph, and frozen parameters still travel in the fused all-reduce buckets as zeros
  (``reducer.cc``, ``MarkVarReady``): freezing then saves no communication.
* ``DataParallel.init_reducer()`` rebuilds the reducer from the current trainable set. The old
  reducer's gradient hooks stay registered on the parameters and call it through a raw
  pointer: once the old reducer is garbage-collected, the next backward pass crashes with a
  segmentation fault. Kept alive, they do nothing (it is idle between steps).

So :func:`sync_trainable` (called by ``fit`` after ``on_train_begin`` and every
``on_epoch_begin``, where strategies change what trains) checks that every process trains the
same parameters, and rebuilds the reducer when the trainable set changed, keeping the old
reducers alive. Frozen parameters cost no communication, newly unfrozen ones are synchronised
from their first step. BatchNorm running statistics are buffers, never synchronised: each
process keeps its own unless the layer normalises with its running statistics (the strategies'
default BatchNorm policy, ``bn="inference"``, keeps them fixed) or is converted to
``paddle.nn.SyncBatchNorm``.

Single process (no launcher, or ``--nproc_per_node 1``): every function here is a no-op, and
``fit`` runs exactly as before.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import paddle

from finetune_helpers.batches import IGNORE_INDEX

#: Set by ``paddle.distributed.launch`` in every worker: the number of processes and this rank.
WORLD_ENV = "PADDLE_TRAINERS_NUM"
RANK_ENV = "PADDLE_TRAINER_ID"
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CPU_NUM")
_RETIRED = "_ft_retired_reducers"      # old reducers kept alive (their hooks point at them)
_REDUCER_KEY = "_ft_reducer_key"       # names of the parameters the current reducer holds
_WRAPPER = "_ft_data_parallel"         # the DataParallel built for a model, kept with it


# ---------------------------------------------------------------------------------------------
# Where am I?

def launched() -> bool:
    """True in a worker that ``paddle.distributed.launch`` started with 2 or more processes."""
    try:
        return int(os.environ.get(WORLD_ENV, "1")) > 1
    except ValueError:
        return False


def active() -> bool:
    """True when this process trains data parallel now: launched and the process group is up."""
    return launched() and paddle.distributed.is_initialized()


def world_size() -> int:
    """Number of processes training together (1 outside the launcher)."""
    return int(os.environ.get(WORLD_ENV, "1")) if launched() else 1


def rank() -> int:
    """This process's rank, 0 to ``world_size() - 1`` (0 outside the launcher)."""
    return int(os.environ.get(RANK_ENV, "0")) if launched() else 0


def is_main_process() -> bool:
    """True on rank 0, which alone prints, shows progress bars and writes checkpoints."""
    return rank() == 0


def init() -> bool:
    """Start the process group once if launched (gloo on CPU, NCCL on GPUs); return :func:`active`.

    Safe to call again, and a no-op in a single process.
    """
    if launched() and not paddle.distributed.is_initialized():
        paddle.distributed.init_parallel_env()
    return active()


def print_main(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only (flushed, so the launcher's log keeps the order)."""
    if is_main_process():
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def barrier() -> None:
    """Wait until every process gets here (no-op in a single process)."""
    if active():
        paddle.distributed.barrier()


def save_checkpoint(path: str, model: paddle.nn.Layer,
                    optimizer: paddle.optimizer.Optimizer | None = None, **extra: Any) -> None:
    """:func:`finetune_helpers.checkpoints.save_checkpoint` written by rank 0 only.

    Every process must call it; the others wait until the file is complete, so any of them may
    read it right after. The weights are the same on every rank, so one copy is the checkpoint.
    """
    from finetune_helpers import checkpoints

    if is_main_process():
        checkpoints.save_checkpoint(path, model, optimizer, **extra)
    barrier()


# ---------------------------------------------------------------------------------------------
# Collectives used by the training loop.

def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Sum each number over the processes (float64); identity in a single process."""
    if not active():
        return [float(v) for v in values]
    tensor = paddle.to_tensor(np.asarray(values, dtype=np.float64))
    paddle.distributed.all_reduce(tensor)
    return tensor.numpy().tolist()


def _all_gather_ints(values: Sequence[int]) -> list[list[int]]:
    tensor = paddle.to_tensor(np.asarray(values, dtype=np.int64))
    gathered: list[paddle.Tensor] = []
    paddle.distributed.all_gather(gathered, tensor)
    return [g.numpy().tolist() for g in gathered]


# ---------------------------------------------------------------------------------------------
# The model: DataParallel and its gradient reducer.

def _reducer_key(dp: paddle.DataParallel) -> tuple[str, ...]:
    """Names of the parameters ``DataParallel.init_reducer`` would put in the reducer now."""
    return tuple(name for name, p in dp._layers.named_parameters()
                 if p.trainable and not getattr(p, "no_sync", False))


def _digest(names: Sequence[str]) -> int:
    return zlib.crc32("\n".join(names).encode())


def sync_trainable(model: paddle.nn.Layer) -> bool:
    """Make a ``DataParallel``'s gradient reducer hold exactly the parameters that train now.

    Call on every process at the same point, after changing ``stop_gradient`` (``fit`` does it
    after ``on_train_begin`` and each ``on_epoch_begin``). Raises if the processes do not train
    the same parameters. Returns True when the reducer was rebuilt. The old reducers stay
    alive on the wrapper: their hooks call them through a raw pointer (see the module notes).
    No-op (False) for a plain model or in a single process.
    """
    if not isinstance(model, paddle.DataParallel) or not active() \
            or model._strategy.nranks < 2:
        return False
    key = _reducer_key(model)
    count, digest = len(key), _digest(key)
    views = _all_gather_ints([count, digest])
    if any(v != views[0] for v in views):
        per_rank = ", ".join(f"rank {r}: {v[0]} tensors (digest {v[1]:08x})"
                             for r, v in enumerate(views))
        raise RuntimeError(
            f"the processes do not train the same parameters ({per_rank}); apply the strategy "
            "identically on every rank, at the same epoch (a callback must not depend on the "
            "rank or on data that differs between ranks)")
    if model.__dict__.get(_REDUCER_KEY) == key:
        return False
    if not key:
        raise ValueError("no parameter trains, so DataParallel has nothing to synchronise; "
                         "unfreeze at least the head (e.g. strategies.new_head_only(model))")
    model.__dict__.setdefault(_RETIRED, []).append(model._reducer)
    model.init_reducer()
    model.__dict__[_REDUCER_KEY] = key
    return True


def wrap(model: paddle.nn.Layer, *, find_unused_parameters: bool = False) -> paddle.nn.Layer:
    """``paddle.DataParallel(model)`` when training data parallel; ``model`` itself otherwise.

    One wrapper per model: calling again returns the same wrapper (re-synchronised with
    :func:`sync_trainable`). A second wrapper around the same parameters would leave the first
    one's gradient hooks pointing at a freed reducer. The wrapper is stored on the model, so it
    lives as long as the model. ``find_unused_parameters`` is Paddle's option; it is not needed
    for freezing (see the module notes).
    """
    if isinstance(model, paddle.DataParallel):
        sync_trainable(model)
        return model
    if not init():
        return model
    existing = model.__dict__.get(_WRAPPER)
    if existing is not None:
        sync_trainable(existing)
        return existing
    if not any(p.trainable for p in model.parameters()):
        raise ValueError("no parameter trains, so DataParallel has nothing to synchronise; "
                         "unfreeze at least the head before training")
    dp = paddle.DataParallel(model, find_unused_parameters=find_unused_parameters)
    dp.__dict__[_REDUCER_KEY] = _reducer_key(dp)
    object.__setattr__(model, _WRAPPER, dp)  # a plain attribute, not a registered sublayer
    sync_trainable(dp)  # checks that every rank trains the same parameters
    return dp


# ---------------------------------------------------------------------------------------------
# The data: each process's share of every batch.

class ShardedBatchSampler:
    """This process's share of every batch that another batch sampler yields.

    Each batch (a list of indices, the *global* batch) is cut into ``world`` contiguous pieces
    whose sizes differ by at most one, and rank ``r`` gets piece ``r``: at every step the
    pieces together are exactly the batch one process would use. The order comes from the
    inner sampler, so it must be the same on every process (``data.make_loader(...,
    shuffle=True, seed=...)`` is; ``set_epoch`` is passed on).

    ``lockstep=True`` (training): every process must take every step, so a batch with fewer
    examples than processes is skipped by all of them. ``lockstep=False`` (evaluation, no
    collective per step): a process simply gets no piece of such a batch. ``seen`` holds a
    checksum of every global batch drawn in the current pass, for :func:`check_same_order`.
    """

    def __init__(self, batch_sampler: Any, rank: int, world: int, *, lockstep: bool = True
                 ) -> None:
        if not isinstance(world, int) or world < 1:
            raise ValueError(f"world must be a positive int, got {world!r}")
        if not isinstance(rank, int) or not 0 <= rank < world:
            raise ValueError(f"rank must be an int in 0..{world - 1}, got {rank!r}")
        size = getattr(batch_sampler, "batch_size", None)
        if lockstep and isinstance(size, int) and size < world:
            raise ValueError(f"a global batch of {size} cannot be shared by {world} processes "
                             f"(each needs at least one example); use a batch size >= {world}")
        self.inner = batch_sampler
        self.rank, self.world, self.lockstep = rank, world, lockstep
        self.batch_size = size  # the global batch size, as the inner sampler says
        self.drop_last = getattr(batch_sampler, "drop_last", False)
        self.seen: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch to the inner (batch) sampler, so every process shuffles alike."""
        for obj in (self.inner, getattr(self.inner, "sampler", None)):
            if callable(getattr(obj, "set_epoch", None)):
                obj.set_epoch(epoch)
                return

    def piece(self, batch: Sequence[int]) -> list[int]:
        """This rank's contiguous piece of one global batch (sizes differ by at most one)."""
        n = len(batch)
        start = self.rank * (n // self.world) + min(self.rank, n % self.world)
        stop = start + n // self.world + (1 if self.rank < n % self.world else 0)
        return list(batch[start:stop])

    def __iter__(self) -> Iterator[list[int]]:
        self.seen = []
        for batch in self.inner:
            self.seen.append(zlib.crc32(np.asarray(list(batch), dtype=np.int64).tobytes()))
            if len(batch) < self.world and self.lockstep:
                continue
            piece = self.piece(batch)
            if piece:
                yield piece

    def _last_batch(self) -> int | None:
        """Size of the inner sampler's last batch, if it can be known without iterating."""
        sampler = getattr(self.inner, "sampler", None)
        size = self.batch_size
        try:
            n = len(sampler)
        except TypeError:
            return None
        if not isinstance(size, int) or size < 1:
            return None
        rest = n % size
        return size if rest == 0 or self.drop_last else rest

    def __len__(self) -> int:
        n = len(self.inner)
        last = self._last_batch()
        if n and last is not None and last <= (self.rank if not self.lockstep else
                                               self.world - 1):
            n -= 1
        return n


def shard_loader(loader: Any, *, lockstep: bool = True) -> Any:
    """The same ``paddle.io.DataLoader`` giving this process its share of every batch.

    Returns ``loader`` unchanged in a single process, or when it is already split (a
    :class:`ShardedBatchSampler` or Paddle's ``DistributedBatchSampler``, whose batch size is
    per process). Otherwise a shallow copy whose batch sampler is a :class:`ShardedBatchSampler`
    over the original one: the batch size stays the global batch.
    """
    if not active():
        return loader
    batch_sampler = getattr(loader, "batch_sampler", None)
    if isinstance(batch_sampler, (ShardedBatchSampler, paddle.io.DistributedBatchSampler)):
        return loader
    if not isinstance(loader, paddle.io.DataLoader) or batch_sampler is None:
        raise TypeError(
            f"cannot split a {type(loader).__name__} between processes: data parallel training "
            "needs a paddle.io.DataLoader with a batch sampler (finetune_helpers.data."
            "make_loader, or paddle.io.DataLoader(dataset, batch_size=..., shuffle=...)); or "
            "give each process its own data with paddle.io.DistributedBatchSampler")
    sharded = copy.copy(loader)
    sharded.batch_sampler = ShardedBatchSampler(batch_sampler, rank(), world_size(),
                                                lockstep=lockstep)
    sharded._iterator = None  # a persistent-worker iterator belongs to the original loader
    return sharded


def check_same_order(loader: Any, batches: int | None = None) -> None:
    """Raise if the processes drew different global batches from ``loader`` (a collective).

    Sharing a batch only works if every process cuts the SAME batch. Compares checksums of the
    first ``batches`` global batches of the last pass (all of them if None). No-op unless the
    loader was split by :func:`shard_loader` and data parallel is active.
    """
    sampler = getattr(loader, "batch_sampler", None)
    if not active() or not isinstance(sampler, ShardedBatchSampler):
        return
    seen = sampler.seen if batches is None else sampler.seen[:batches]
    views = _all_gather_ints([len(seen), zlib.crc32(np.asarray(seen, np.int64).tobytes())])
    if any(v != views[0] for v in views):
        raise RuntimeError(
            "the processes drew different batches from the loader (its order is not the same "
            "in every process), so their pieces overlap and miss examples; give it a seeded "
            "order: finetune_helpers.data.make_loader(..., shuffle=True, seed=0), or "
            "fit(..., seed=0) for a paddle.io.DataLoader(shuffle=True)")


# ---------------------------------------------------------------------------------------------
# What fit() needs under data parallel.

class FitRun:
    """The data-parallel side of :func:`finetune_helpers.train.fit` (used only when launched).

    Holds the wrapped model and the split training loader; scales each process's loss so the
    averaged gradient is the one-process gradient of the global batch; turns the per-process
    step losses into global ones at the end of an epoch. ``fit`` calls the same four members
    (``model``/``train_loader``, :meth:`sync`, :meth:`backward`, :meth:`epoch_losses`) on its
    one-process run, where they do nothing beyond the plain step.
    """

    def __init__(self, model: paddle.nn.Layer, train_loader: Any) -> None:
        init()
        self.world = world_size()
        self.model = wrap(model)
        self.train_loader = shard_loader(train_loader, lockstep=True)
        self._weights: list[paddle.Tensor] = []

    def sync(self) -> None:
        """After callbacks that may freeze or unfreeze: see :func:`sync_trainable`."""
        sync_trainable(self.model)

    def scaled_loss(self, loss: paddle.Tensor, labels: Any, examples: int,
                    task: str) -> paddle.Tensor:
        """``loss * local_weight * world / global_weight`` (one scalar all-reduce, on device).

        The weight is the number of examples, or of counted tokens (label != -100) for
        ``task="lm"``: the losses are assumed to be means over those (see the module notes).
        Equal pieces give a factor of exactly 1.0.
        """
        if task == "lm" and isinstance(labels, paddle.Tensor):
            weight = (labels != IGNORE_INDEX).astype("float64").sum()
        else:
            weight = paddle.to_tensor(float(examples), dtype="float64")
        total = weight.clone()
        paddle.distributed.all_reduce(total)
        self._weights.append(weight)
        factor = (weight * self.world / total).astype(loss.dtype)
        return loss * factor

    def backward(self, loss: paddle.Tensor, labels: Any, examples: int, task: str) -> None:
        """Backward pass of this process's :meth:`scaled_loss` (DataParallel all-reduces)."""
        self.scaled_loss(loss, labels, examples, task).backward()

    def epoch_losses(self, step_losses: np.ndarray, sizes: Sequence[int]
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Global per-step losses and global batch sizes for the epoch just trained.

        Step loss: the weight-weighted mean of the processes' losses, i.e. the loss of the
        whole global batch. One all-reduce per epoch, after checking that every process cut
        the same batches (:func:`check_same_order`).
        """
        check_same_order(self.train_loader, len(sizes))
        weights = paddle.stack(self._weights).reshape([-1]).numpy()
        self._weights = []
        local = np.stack([np.asarray(step_losses, np.float64) * weights, weights,
                          np.asarray(sizes, np.float64)])
        tensor = paddle.to_tensor(local)
        paddle.distributed.all_reduce(tensor)
        total = tensor.numpy()
        return total[0] / np.maximum(total[1], 1e-300), total[2]


# ---------------------------------------------------------------------------------------------
# Starting a script with paddle.distributed.launch.

@dataclass
class LaunchResult:
    """What :func:`launch` saw: exit code, wall seconds, and every log.

    ``launcher_output`` is the launcher's own log (with timestamps: keep it out of notebook
    output); ``worker_logs[r]`` is everything rank ``r`` printed.
    """

    returncode: int
    seconds: float
    command: list[str]
    log_dir: Path
    launcher_output: str
    worker_logs: list[str] = field(default_factory=list)

    def lines(self, prefix: str, rank: int = 0) -> list[str]:
        """The lines of rank ``rank``'s log that start with ``prefix``."""
        return [line for line in self.worker_logs[rank].splitlines() if line.startswith(prefix)]

    def check(self) -> "LaunchResult":
        """Raise ``RuntimeError`` with the end of every log if the run failed; else self."""
        if self.returncode != 0:
            tails = "\n".join(f"--- rank {r} (last lines) ---\n" + "\n".join(
                log.splitlines()[-25:]) for r, log in enumerate(self.worker_logs))
            launcher = "\n".join(self.launcher_output.splitlines()[-15:])
            raise RuntimeError(f"{' '.join(self.command)} failed with exit code "
                               f"{self.returncode}\n{tails}\n--- launcher ---\n{launcher}")
        return self


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def launch(script: str | os.PathLike, args: Sequence[str] = (), *, nproc: int = 2,
           threads: int | None = None, log_dir: str | os.PathLike | None = None,
           env: dict[str, str] | None = None, timeout: float = 600) -> LaunchResult:
    """Run ``python -m paddle.distributed.launch --nproc_per_node nproc script args`` and wait.

    Everything stays on this machine: ``--host 127.0.0.1`` makes the launcher and the workers
    use loopback addresses (by default it resolves the host name, which may give a LAN
    address). ``--max_restart 0``: a failed worker fails the run instead of restarting it.
    Each worker gets ``threads`` math-library threads (default: the threads of one process
    divided by ``nproc``: 2 in the reproducible arithmetic mode, the available cores in the fast
    one), so the processes do not fight over the cores, and the workers' ``runtime.setup()``
    keeps that count. Logs go to ``log_dir`` (default:
    a new temporary folder). Raises ``subprocess.TimeoutExpired`` after stopping the launcher's
    process group if it runs longer than ``timeout`` seconds; call ``.check()`` on the result
    to raise on a failed run.
    """
    from finetune_helpers import runtime

    script = Path(script)
    if not script.is_file():
        raise FileNotFoundError(f"no training script at {script}; write it first (the launcher "
                                "runs a file, not a notebook cell)")
    if not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a positive int, got {nproc!r}")
    mode = runtime.resolve_mode()
    one_process = (runtime.REPRODUCIBLE_THREADS if mode == "reproducible"
                   else runtime.available_cores())
    threads = threads or max(1, one_process // nproc)
    folder = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="dp_logs_"))
    folder.mkdir(parents=True, exist_ok=True)
    child_env = runtime.apply_environment(dict(os.environ), threads, mode)
    child_env.update({k: str(threads) for k in _THREAD_VARS})
    child_env[runtime.THREADS_ENV] = str(threads)
    child_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
               "--host", "127.0.0.1", "--max_restart", "0", "--log_dir", str(folder),
               str(script), *map(str, args)]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=child_env, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the launcher and the workers it started
        proc.communicate()
        raise
    seconds = time.perf_counter() - start
    logs = [_read(folder / f"workerlog.{r}") for r in range(nproc)]
    return LaunchResult(proc.returncode, seconds, command, folder, output, logs)
