"""``python benchmarks/bench.py``: what each fine-tuning strategy costs per epoch, and why.

For the two standard tasks (:mod:`finetune_helpers.tasks`: EfficientNet-Lite0 on Fashion-MNIST
at 32 px, MiniLM on tweet sentiment at 32 tokens), on a small subset, this measures in one run
the wall time of one training epoch (the same examples, batches built beforehand, evaluation
excluded) for

* ``full``: :func:`~finetune_helpers.strategies.fine_tune_all`;
* ``freeze bottom k``: :func:`~finetune_helpers.strategies.freeze_bottom`, ``k`` = half the
  blocks (rounded down);
* ``train top n``: :func:`~finetune_helpers.strategies.train_top`, the head and ``n = 2``
  blocks below it;
* ``head, through backbone``: :func:`~finetune_helpers.strategies.new_head_only`, every
  epoch running the frozen backbone;
* ``head, cached features``: the same head trained on features extracted once
  (:func:`finetune_helpers.features.extract_features`); the one-off extraction is timed and
  printed separately (it is one forward pass over the data).

Every strategy trains with AdamW over the model's parameters through
:func:`finetune_helpers.train.fit`, with the strategies' BatchNorm policy ``bn="frozen_blocks"``
(running statistics in frozen blocks only), the setting this benchmark has always measured. Each strategy is warmed up by one step first (the first
steps allocate), then the strategies run one epoch each, in turn, for ``--rounds`` rounds; the
table shows the median epoch, so load from other processes hits all of them alike.

Two ideal ratios (strategy cost / full fine-tuning cost) come with each row; both use the cost
rule of :mod:`finetune_helpers.flops` (trainable block: forward + full backward; frozen block
above the lowest trainable one: forward + input-gradient backward; below it: forward only):

* ``ideal FLOPs``: counted forward FLOPs per block, backward 2x (trainable) or 1x (frozen
  above), optimizer update not counted;
* ``ideal time``: the same rule over per-block forward/backward times measured in this run
  (full fine-tuning; all frozen with gradients flowing; all frozen without), which shows how far
  FLOPs are from time on this machine (depthwise convolutions, small matrices, per-op overhead).

A per-block table shows each block's share of the forward FLOPs and of the measured time.

The last line is ``cached head speedup: N.Nx; freeze-bottom time/ideal: N.NN`` where the speedup
is (head through backbone) / (head on cached features) per epoch, and time/ideal is
freeze-bottom's measured ratio to full divided by its FLOP-counted ideal ratio. With both tasks
it reports the worse task for each number (smaller speedup, larger time/ideal) and says which
on the line before. Targets (benchmark, not tests): speedup >= 10, time/ideal <= 1.3.

A script outside the package (no chapter uses it): run it from the repository root with the
book's environment, ``.venv/bin/python benchmarks/bench.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

TASK_NAMES = ("vision", "text")
#: BatchNorm policy of every strategy call (see finetune_helpers.strategies).
BN = "frozen_blocks"
SPEEDUP_TARGET = 10.0
TIME_IDEAL_TARGET = 1.3


@dataclass
class Sizes:
    """How much work one run does."""

    vision_examples: int = 128
    text_examples: int = 128
    batch_size: int = 32
    rounds: int = 3
    profile_steps: int = 3
    top_n: int = 2
    lr: float = 1e-4


QUICK = Sizes(vision_examples=4, text_examples=4, batch_size=4, rounds=1, profile_steps=1)


@dataclass
class BlockTimes:
    """Median seconds per training step, per block (input to output), in three settings."""

    forward_train: list[float]     # full fine-tuning: forward
    backward_full: list[float]     # full fine-tuning: weight + input gradients
    forward_grad: list[float]      # everything frozen, gradients flowing from block 0 up
    backward_input: list[float]    # same: input gradients only
    forward_frozen: list[float]    # everything frozen, no gradients: forward only
    step_full: float               # whole training step of full fine-tuning
    optimizer_full: float          # AdamW step + clear_grad of full fine-tuning

    def per_case(self) -> list[tuple[float, float, float]]:
        """Per block: (cost with no backward, frozen with input gradients, trained)."""
        return [(c, g + i, f + b) for c, g, i, f, b in zip(
            self.forward_frozen, self.forward_grad, self.backward_input, self.forward_train,
            self.backward_full)]


@dataclass
class Row:
    strategy: str
    trainable_pct: float
    seconds: list[float] = field(default_factory=list)
    ideal_flops: float = float("nan")
    ideal_time: float = float("nan")

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@dataclass
class TaskResult:
    task: str
    model: str
    examples: int
    batch_size: int
    block_names: list[str]
    k: int
    n: int
    rows: list[Row]
    flops: list[int]
    times: BlockTimes
    extraction_seconds: float
    rounds: int = 1

    def row(self, strategy: str) -> Row:
        return next(r for r in self.rows if r.strategy.startswith(strategy))

    @property
    def cached_speedup(self) -> float:
        return self.row("head, through").median / self.row("head, cached").median

    @property
    def freeze_bottom_time_over_ideal(self) -> float:
        fb = self.row("freeze bottom")
        return fb.median / self.row("full").median / fb.ideal_flops


# ---------------------------------------------------------------------------------------------
# Tasks: data, model, and where the frozen part ends.

@dataclass
class Setup:
    """A task ready to time: the model, the epoch's batches, and the model split for caching."""

    task: Any
    model: Any
    batches: list[Any]
    features: Callable[..., Any]   # frozen part: inputs -> features (the head's input)
    head: Any                      # the layers applied to those features (dropout + linear)


def _setup(name: str, sizes: Sizes) -> Setup:
    import paddle

    from finetune_helpers import data, tasks, zoo

    if name == "vision":
        task = replace(tasks.VISION, n_train=sizes.vision_examples, batch_size=sizes.batch_size)
        dataset = data.fashion_mnist("train", n=task.n_train, image_size=task.image_size,
                                     seed=task.seed)
        collate = None
    else:
        task = replace(tasks.TEXT, n_train=sizes.text_examples, batch_size=sizes.batch_size)
        dataset = data.tweets("train", n=task.n_train, seed=task.seed)
        collate = data.TextCollate(zoo.load_tokenizer(task.model), task.max_length)
    loader = data.make_loader(dataset, task.batch_size, shuffle=False, collate_fn=collate)
    batches = list(loader)  # built once: every strategy sees the same tensors
    model = zoo.load_model(task.model, num_classes=task.num_classes)
    if name == "vision":
        features = model.forward_features
        head = paddle.nn.Sequential(model.dropout, model.fc)
    else:
        def features(**kw: Any) -> Any:
            return model.bert(**kw)[1]  # pooled output: what dropout + classifier take
        head = paddle.nn.Sequential(model.dropout, model.classifier)
    return Setup(task=task, model=model, batches=batches, features=features, head=head)


# ---------------------------------------------------------------------------------------------
# Timing.

def _optimizer(params: Sequence[Any], lr: float) -> Any:
    import paddle
    return paddle.optimizer.AdamW(learning_rate=lr, parameters=list(params))


def epoch_seconds(model: Any, batches: Sequence[Any], optimizer: Any,
                  max_steps: int | None = None) -> float:
    """Wall seconds of one training pass (:func:`finetune_helpers.train.fit`, no evaluation)."""
    from finetune_helpers.train import fit
    history = fit(model, batches, optimizer, 1, progress=False, max_steps_per_epoch=max_steps)
    return float(history.epochs[0]["seconds"])


def _first_tensor(output: Any) -> Any:
    import paddle
    if isinstance(output, paddle.Tensor):
        return output
    if isinstance(output, (list, tuple)):
        return next((t for t in output if isinstance(t, paddle.Tensor)), None)
    return None


def _timed_steps(model: Any, batches: Sequence[Any], steps: int, optimizer: Any | None,
                 backward: bool, grad_from_first_block: bool = False
                 ) -> tuple[list[list[float]], list[list[float]], list[float], list[float]]:
    """Run ``steps`` steps with hooks; per step: block forward times, block backward times,
    step time, optimizer time. Backward time of block i is the gap between the gradient of
    block i's output and that of block i-1's (Paddle's eager backward on CPU is synchronous and
    the blocks form a chain); the lowest block's ends when ``backward()`` returns."""
    import paddle
    import paddle.nn.functional as F

    from finetune_helpers.layers import blocks as get_blocks
    from finetune_helpers.batches import call_model, output_field, split_batch

    named = get_blocks(model)
    n = len(named)
    clock = time.perf_counter
    state: dict[str, Any] = {}

    def pre(i: int) -> Callable:
        def hook(layer: Any, args: Any) -> None:
            state["start"][i] = clock()
        return hook

    def post(i: int) -> Callable:
        def hook(layer: Any, args: Any, output: Any) -> Any:
            state["fwd"][i] += clock() - state["start"][i]
            out = _first_tensor(output)
            if out is None:
                return None
            if i == 0 and grad_from_first_block:
                out.stop_gradient = False  # input gradients flow from here up
            if backward and not out.stop_gradient:
                out.register_hook(lambda g, i=i: state["mark"].__setitem__(i, clock()))
            return None
        return hook

    handles = []
    for i, (_, layer) in enumerate(named):
        handles.append(layer.register_forward_pre_hook(pre(i)))
        handles.append(layer.register_forward_post_hook(post(i)))
    fwd_all, bwd_all, step_all, opt_all = [], [], [], []
    try:
        for s in range(steps):
            batch = batches[s % len(batches)]
            state.update(start=[0.0] * n, fwd=[0.0] * n, mark={})
            inputs, labels = split_batch(batch)
            t0 = clock()
            if backward:
                logits = output_field(call_model(model, inputs), "logits")
                loss = F.cross_entropy(logits, labels)
                loss.backward()
                t_end = clock()
                if optimizer is not None:
                    optimizer.step()
                    optimizer.clear_grad()
                else:
                    model.clear_gradients()
            else:
                with paddle.no_grad():
                    call_model(model, inputs)
                t_end = clock()
            t_step = clock()
            marks = state["mark"]
            bwd = [0.0] * n
            below = t_end
            for i in range(n):  # input to output: block i's backward ends where i-1's starts
                if i in marks:
                    bwd[i] = below - marks[i]
                    below = marks[i]
            fwd_all.append(state["fwd"])
            bwd_all.append(bwd)
            step_all.append(t_step - t0)
            opt_all.append(t_step - t_end)
    finally:
        for handle in handles:
            handle.remove()
    return fwd_all, bwd_all, step_all, opt_all


def _median_columns(rows: list[list[float]]) -> list[float]:
    return [statistics.median(col) for col in zip(*rows)]


def profile_blocks(model: Any, batches: Sequence[Any], optimizer: Any, steps: int) -> BlockTimes:
    """Per-block forward/backward seconds: full fine-tuning, all frozen with gradients flowing
    (input-gradient backward), all frozen without (forward only). One warm-up step each."""
    from finetune_helpers import strategies

    strategies.fine_tune_all(model, bn=BN)
    model.train()
    _timed_steps(model, batches, 1, optimizer, backward=True)
    fa, ba, step, opt = _timed_steps(model, batches, steps, optimizer, backward=True)
    strategies.freeze(model, bn=BN)
    model.train()
    _timed_steps(model, batches, 1, None, backward=True, grad_from_first_block=True)
    fg, bg, _, _ = _timed_steps(model, batches, steps, None, backward=True,
                                grad_from_first_block=True)
    _timed_steps(model, batches, 1, None, backward=False)
    fc, _, _, _ = _timed_steps(model, batches, steps, None, backward=False)
    strategies.fine_tune_all(model, bn=BN)
    scale = len(batches)  # per epoch, like the table
    col = _median_columns
    return BlockTimes(
        forward_train=[x * scale for x in col(fa)], backward_full=[x * scale for x in col(ba)],
        forward_grad=[x * scale for x in col(fg)], backward_input=[x * scale for x in col(bg)],
        forward_frozen=[x * scale for x in col(fc)],
        step_full=statistics.median(step) * scale, optimizer_full=statistics.median(opt) * scale)


def count_epoch_flops(model: Any, batches: Sequence[Any]) -> list[int]:
    """Forward FLOPs per block summed over the epoch's batches (text batches differ in length)."""
    from finetune_helpers.flops import count_forward_flops
    from finetune_helpers.batches import split_batch

    total: list[int] | None = None
    for batch in batches:
        inputs, _ = split_batch(batch)
        counts = count_forward_flops(model, inputs).forward()
        total = counts if total is None else [a + b for a, b in zip(total, counts)]
    return total or []


def bench_task(name: str, sizes: Sizes, log: Callable[[str], None] = print) -> TaskResult:
    """Time the five strategies on one task (``"vision"`` or ``"text"``)."""
    from finetune_helpers import strategies
    from finetune_helpers.data import make_loader
    from finetune_helpers.features import FeatureDataset, extract_features
    from finetune_helpers.flops import ideal_ratio, step_cost, trainable_blocks, training_cost
    from finetune_helpers.layers import block_names

    setup = _setup(name, sizes)
    model, batches, task = setup.model, setup.batches, setup.task
    names = block_names(model)
    k, n = len(names) // 2, sizes.top_n
    log(f"[{name}] {task.model}: {len(batches)} batches of {task.batch_size}; blocks: "
        f"{', '.join(names)}")

    flops = count_epoch_flops(model, batches)
    full_opt = _optimizer(model.parameters(), sizes.lr)
    times = profile_blocks(model, batches, full_opt, sizes.profile_steps)
    per_case = times.per_case()
    all_on = [True] * len(names)

    strategy_fns: list[tuple[str, Callable[[], Any]]] = [
        ("full", lambda: strategies.fine_tune_all(model, bn=BN)),
        (f"freeze bottom {k}", lambda: strategies.freeze_bottom(model, k, bn=BN)),
        (f"train top {n}", lambda: strategies.train_top(model, n, bn=BN)),
        ("head, through backbone", lambda: strategies.new_head_only(model, bn=BN)),
    ]
    rows: list[Row] = []
    optimizers: list[Any] = []
    for label, apply in strategy_fns:
        apply()
        mask = trainable_blocks(model)
        trainable, total = strategies.count_parameters(model)
        rows.append(Row(label, 100.0 * trainable / total, ideal_flops=ideal_ratio(flops, mask),
                        ideal_time=step_cost(per_case, mask) / step_cost(per_case, all_on)))
        optimizers.append(full_opt if label == "full" else _optimizer(model.parameters(), sizes.lr))
        epoch_seconds(model, batches, optimizers[-1], max_steps=1)  # warm-up

    # Cached features: one forward pass over the same examples, then the head alone.
    strategies.new_head_only(model, bn=BN)
    start = time.perf_counter()
    feats, labels = extract_features(setup.features, batches, model=model, progress=False)
    extraction = time.perf_counter() - start
    feature_batches = list(make_loader(FeatureDataset(feats, labels), task.batch_size))
    head_opt = _optimizer(setup.head.parameters(), sizes.lr)
    epoch_seconds(setup.head, feature_batches, head_opt, max_steps=1)  # warm-up
    # Only the head runs, forward and backward: its "trained" cost over full fine-tuning's.
    rows.append(Row("head, cached features", rows[-1].trainable_pct,
                    ideal_flops=training_cost(flops[-1:], [True]) / training_cost(flops, all_on),
                    ideal_time=per_case[-1][2] / step_cost(per_case, all_on)))

    for r in range(sizes.rounds):
        for (label, apply), row, opt in zip(strategy_fns, rows, optimizers):
            apply()
            row.seconds.append(epoch_seconds(model, batches, opt))
        strategies.new_head_only(model, bn=BN)  # the head's parameters train
        rows[-1].seconds.append(epoch_seconds(setup.head, feature_batches, head_opt))
        log(f"[{name}] round {r + 1}/{sizes.rounds}: "
            + ", ".join(f"{row.seconds[-1]:.3g}" for row in rows) + " s")
    strategies.fine_tune_all(model, bn=BN)
    return TaskResult(task=task.name, model=task.model, examples=task.n_train,
                      batch_size=task.batch_size, block_names=names, k=k, n=n, rows=rows,
                      flops=flops, times=times, extraction_seconds=extraction,
                      rounds=sizes.rounds)


# ---------------------------------------------------------------------------------------------
# Output.

def format_task(result: TaskResult) -> str:
    """The strategy table, then the per-block table, of one task."""
    full = result.row("full").median
    lines = [f"== {result.task} ({result.model}): {result.examples} examples, batch "
             f"{result.batch_size}; freeze bottom k={result.k} "
             f"({', '.join(result.block_names[:result.k])}), train top n={result.n} "
             f"({', '.join(result.block_names[-result.n - 1:])}) ==",
             f"s/epoch: median of {result.rounds} interleaved epochs; ratio: to full; ideal: "
             f"FLOP-counted and from measured block times (below)",
             f"{'strategy':<24} {'trainable':>9} {'s/epoch':>8} {'ratio':>6} "
             f"{'ideal FLOPs':>11} {'ideal time':>10} {'time/ideal':>10}"]
    for row in result.rows:
        ratio = row.median / full
        lines.append(f"{row.strategy:<24} {row.trainable_pct:>8.2f}% {row.median:>8.3f} "
                     f"{ratio:>6.3f} {row.ideal_flops:>11.3f} {row.ideal_time:>10.3f} "
                     f"{ratio / row.ideal_flops:>10.2f}")
    head = result.row("head, through").median
    cached = result.row("head, cached").median
    lines.append(f"cached features: one-off extraction {result.extraction_seconds:.3f} s "
                 f"({result.extraction_seconds / head:.2f} epochs through the frozen backbone); "
                 f"head speedup per epoch {head / cached:.1f}x")
    t = result.times
    opt_share = t.optimizer_full / t.step_full
    lines.append(f"per block, full fine-tuning: forward FLOPs share vs measured time share "
                 f"(s/epoch); optimizer {t.optimizer_full:.3f} s/epoch "
                 f"({opt_share:.0%} of a full step)")
    lines.append(f"{'block':<22} {'GFLOP':>8} {'FLOP %':>7} {'fwd s':>7} {'bwd s':>7} "
                 f"{'time %':>7} {'bwd in s':>8} {'frozen fwd':>10}")
    total_flops = sum(result.flops) or 1
    total_time = sum(t.forward_train) + sum(t.backward_full) or 1.0
    for i, name in enumerate(result.block_names):
        share = (t.forward_train[i] + t.backward_full[i]) / total_time
        lines.append(f"{name:<22} {result.flops[i] / 1e9:>8.3f} "
                     f"{100 * result.flops[i] / total_flops:>6.1f}% {t.forward_train[i]:>7.3f} "
                     f"{t.backward_full[i]:>7.3f} {100 * share:>6.1f}% "
                     f"{t.backward_input[i]:>8.3f} {t.forward_frozen[i]:>10.3f}")
    return "\n".join(lines)


def final_line(results: Sequence[TaskResult]) -> tuple[str, str]:
    """(which task each number comes from, the final line). Worse task for each number."""
    worst_speed = min(results, key=lambda r: r.cached_speedup)
    worst_ratio = max(results, key=lambda r: r.freeze_bottom_time_over_ideal)
    which = (f"final line: cached head speedup from {worst_speed.task}, freeze-bottom "
             f"time/ideal from {worst_ratio.task}"
             + (" (the worse of the tasks for each)" if len(results) > 1 else "")
             + f"; targets >= {SPEEDUP_TARGET:g}x and <= {TIME_IDEAL_TARGET:g}")
    line = (f"cached head speedup: {worst_speed.cached_speedup:.1f}x; "
            f"freeze-bottom time/ideal: {worst_ratio.freeze_bottom_time_over_ideal:.2f}")
    return which, line


def _load_line() -> str:
    import os
    try:
        one, five, fifteen = os.getloadavg()
        return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"
    except OSError:
        return "load average unknown"


def main(argv: list[str] | None = None) -> int:
    defaults = Sizes()
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=TASK_NAMES, default=list(TASK_NAMES))
    parser.add_argument("--vision-examples", type=int, default=defaults.vision_examples)
    parser.add_argument("--text-examples", type=int, default=defaults.text_examples)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--rounds", type=int, default=defaults.rounds,
                        help="epochs per strategy, interleaved; the table shows the median")
    parser.add_argument("--profile-steps", type=int, default=defaults.profile_steps,
                        help="steps per setting for the per-block times")
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny sizes for tests ({QUICK.vision_examples} examples, batch "
                             f"{QUICK.batch_size}, 1 round)")
    args = parser.parse_args(argv)
    if args.quick:
        sizes = QUICK
    else:
        sizes = replace(defaults, vision_examples=args.vision_examples,
                        text_examples=args.text_examples, batch_size=args.batch_size,
                        rounds=args.rounds, profile_steps=args.profile_steps)
    for field_name in ("vision_examples", "text_examples", "batch_size", "rounds",
                       "profile_steps"):
        if getattr(sizes, field_name) < 1:
            parser.error(f"--{field_name.replace('_', '-')} must be >= 1")

    import os

    from finetune_helpers import runtime
    if "paddle" in sys.modules:  # a caller (test session, notebook) already configured it
        print("runtime: as configured by the caller: " + ", ".join(
            f"{k}={os.environ.get(k, 'unset')}" for k in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")))
    else:
        print(runtime.setup(seed=0, verbose=False).line())
    print(f"start: {_load_line()}", flush=True)
    started = time.perf_counter()
    results = []
    for name in args.tasks:
        results.append(bench_task(name, sizes, log=lambda s: print(s, flush=True)))
    print()
    for result in results:
        print(format_task(result))
        print()
    print(f"end: {_load_line()}; bench took {time.perf_counter() - started:.0f} s")
    which, line = final_line(results)
    print(which)
    print(line)
    return 0


if __name__ == "__main__":
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
    sys.exit(main())
