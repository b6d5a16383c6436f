"""Replicated results as tables and plots: what the chapters show from ``book/results/``.

A chapter does not re-run the grid (hours on a laptop); it reads the stored records
(:mod:`finetune_helpers.experiments`) and renders them: per strategy the mean test accuracy
over seeds with its standard error, the seed-paired difference from a reference strategy with
its 95 % interval, and a verdict that follows the book's rule: a ranking only where the paired
interval excludes zero, otherwise "no difference detected at this precision".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from finetune_helpers import experiments
from finetune_helpers.experiments import Estimate

#: How each strategy of the grids is named on the page (English, Chinese).
LABELS = {
    "full": ("fine-tune all layers", "微调所有层"),
    "top_n": ("fine-tune the top layers", "微调顶层"),
    "freeze_bottom": ("freeze the bottom layers", "冻结底层"),
    "gradual_ulmfit": ("gradual unfreezing, top-down (ULMFiT)", "逐层微调（自顶向下）"),
    "gradual_bottom_up": ("layer-wise, bottom-up (chain-thaw)", "逐层微调（自底向上）"),
    "head": ("new head only (transfer learning)", "迁移学习（只训新头）"),
    "lora": ("LoRA r=8", "低秩适配"),
    "bitfit": ("BitFit (biases)", "只训偏置"),
    "lp_ft": ("LP-FT: linear probe, then fine-tune all", "先线性探针后微调"),
    "qlora": ("QLoRA r=8 (NF4 base)", "量化低秩适配"),
    "norm_tuning": ("RMSNorm gains only", "只训归一化增益"),
    "pixels_logreg": ("baseline: logistic regression on raw pixels", "基线：像素逻辑回归"),
    "probe_logreg": ("baseline: logistic regression on frozen mean-pooled vectors",
                     "基线：冻结特征逻辑回归"),
    "pretrained": ("baseline: the pretrained model, not fine-tuned", "基线：未微调的预训练模型"),
}
#: Strategies that are baselines rather than fine-tuning.
BASELINES = ("pixels_logreg", "probe_logreg", "pretrained")
#: Test metrics where a smaller value is the better one (the poem grids' perplexity).
LOWER_IS_BETTER = ("perplexity", "loss")


def _scale(metric: str) -> float:
    """Accuracy is shown in percent (differences in points); other metrics as they are."""
    return 100.0 if metric == "accuracy" else 1.0


def _select_metric(grid: str) -> str:
    """The validation metric that chose the grid's learning rates (accuracy if unknown)."""
    from finetune_helpers import grids as grid_defs

    g = grid_defs.registry().get(grid)
    return g.select if g is not None else "accuracy"


@dataclass
class Row:
    """One reported configuration of a grid, summarised over its seeds."""

    strategy: str
    config: str
    accuracy: Estimate            # the test metric over seeds (accuracy: in percent)
    difference: Estimate | None   # seed-paired difference from the reference, in points
    seeds: list[int]
    lr: Any
    trainable_params: int | None
    epochs: float | None
    train_s: float                # training loop (epochs + validation), mean over seeds
    memory_mib: float | None      # memory the training loop adds (memory.json), MiB
    hit_limit: int = 0            # seeds whose run was stopped by the epoch limit
    deterministic: bool = False   # nothing random in it (the pretrained model): one run
    lower_is_better: bool = False  # the metric's direction (perplexity: lower)
    detail: str = ""              # e.g. "k=12" where a grid runs a strategy in several variants
    variant: str = ""             # the strategy and its fixed settings, e.g. "freeze_bottom,k=12"

    @property
    def label(self) -> str:
        english, chinese = LABELS.get(self.strategy, (self.strategy, ""))
        if self.detail:
            english = f"{english}, {self.detail}"
        return f"{english} ({chinese})" if chinese else english

    def verdict(self, reference: str) -> str:
        """The sentence the book may write about this row against ``reference``."""
        d = self.difference
        if d is None:
            return "reference" if reference in (self.strategy, self.variant) else ""
        if d.n < 2:
            return "one seed: no interval"
        if d.excludes_zero:
            word = "better" if (d.mean > 0) != self.lower_is_better else "worse"
            return f"{word} than {_name(reference)}"
        return "no difference detected at this precision"


def _variant(runs: Sequence[dict]) -> str:
    """The strategy with its fixed hyper-parameters, without the swept one: ``"freeze_bottom,k=12"``
    for the runs of ``poems_qwen/freeze_bottom,k=12,lr=0.0001``; ``"full"`` for plain ones."""
    sweep = runs[0].get("sweep")
    name = sweep["name"] if sweep else runs[0]["config"]
    return name.split("/", 1)[-1]


def _variants(shown: dict[str, list[dict]]) -> dict[str, tuple[str, list[dict]]]:
    """Reported configurations by variant: ``{variant: (config, runs)}``."""
    return {_variant(runs): (config, runs) for config, runs in shown.items()}


def _find(variants: dict[str, tuple[str, list[dict]]], name: str, grid: str
          ) -> tuple[str, list[dict]] | None:
    """The configuration ``name`` stands for: a variant (``"freeze_bottom,k=12"``), or a strategy
    the grid runs in one variant only (``"full"``). None when the grid has no such result; a
    ``ValueError`` when a strategy name is ambiguous."""
    if name in variants:
        return variants[name]
    matches = [v for v, (_, runs) in variants.items() if runs[0]["strategy"] == name]
    if len(matches) > 1:
        raise ValueError(f"grid {grid!r} reports {name!r} in several variants: "
                         f"{', '.join(sorted(matches))}; name one of them")
    return variants[matches[0]] if matches else None


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


#: Memory of the strategies that train like another one (a gradual schedule ends training
#: everything; LP-FT's second stage is full fine-tuning).
MEMORY_AS = {"gradual_ulmfit": "full", "gradual_bottom_up": "full", "lp_ft": "full"}


def memory(results_dir: Path | None = None) -> dict[str, dict[str, float]]:
    """Memory each strategy's training loop adds, in MiB, by grid and strategy, from
    ``memory.json`` (``python -m finetune_helpers.grids memory``, each strategy measured in a
    fresh process); empty when that file does not exist."""
    import json

    path = Path(results_dir or experiments.RESULTS_DIR) / "memory.json"
    if not path.exists():
        return {}
    stored = json.loads(path.read_text())["tasks"]
    return {task: {s: float(v["train_memory_mib"]) for s, v in by.items()}
            for task, by in stored.items()}


def rows(grid: str, *, reference: str = "full", metric: str = "accuracy",
         strategies: Sequence[str] | None = None,
         results_dir: Path | None = None) -> list[Row]:
    """The reported configurations of ``grid`` (chosen learning rates only), in grid order;
    only ``strategies`` (and the baselines) when given. ``metric`` is the test metric shown
    (accuracy in percent; e.g. ``"perplexity"`` for the poem grids).

    A strategy the grid runs in several variants (``freeze_bottom`` with k = 12 and k = 20) gives
    one row per variant, labelled with its setting; ``strategies`` may name the strategy (all its
    variants) or one variant (``"freeze_bottom,k=12"``), and so may ``reference``."""
    records = experiments.load(experiments.results_path(grid, results_dir))
    if not records:
        raise FileNotFoundError(
            f"no records for grid {grid!r} in {experiments.results_path(grid, results_dir)}; "
            f"run `python -m finetune_helpers.experiments run {grid}` first")
    shown, _ = experiments.reported(records, _select_metric(grid))
    variants = _variants(shown)
    ref = _find(variants, reference, grid)
    per_strategy = Counter(runs[0]["strategy"] for _, runs in variants.values())
    mib = memory(results_dir).get(grid, {})
    out = []
    for variant, (config, runs) in variants.items():
        strategy = runs[0]["strategy"]
        if (strategies is not None and strategy not in strategies and variant not in strategies
                and strategy not in BASELINES):
            continue
        scores = _by_seed(runs, metric)
        diff = None
        if ref is not None and config != ref[0]:
            diff = _paired(runs, ref[1], metric)
        sweep = runs[0].get("sweep") or {}
        out.append(Row(
            strategy=strategy, config=config,
            accuracy=experiments.mean_se([scores[s] for s in sorted(scores)]),
            difference=diff, seeds=sorted(scores),
            lr=runs[0]["hparams"].get(sweep.get("param", "lr")),
            trainable_params=runs[0].get("trainable_params"),
            epochs=_mean([r.get("epochs") for r in runs]),
            # LP-FT's time includes its first stage (the probe on cached features).
            train_s=_mean([r.get("train_s", r["wall_s"]) + r.get("lp_train_s", 0.0)
                           for r in runs]) or 0.0,
            memory_mib=mib.get(MEMORY_AS.get(strategy, strategy)),
            hit_limit=sum(bool(r.get("hit_limit")) for r in runs),
            deterministic=_deterministic(runs),
            lower_is_better=metric in LOWER_IS_BETTER, variant=variant,
            detail=variant.split(",", 1)[1] if per_strategy[strategy] > 1 and "," in variant
            else ""))
    return out


def format_estimate(e: Estimate, digits: int = 1, deterministic: bool = False) -> str:
    """``"84.6 ± 0.3 (n=3)"``: mean ± standard error over ``n`` runs; ``"84.6 (one run)"``;
    ``"84.6 (deterministic)"`` for a run with nothing random in it."""
    if deterministic and e.n == 1:
        return f"{e.mean:.{digits}f} (deterministic)"
    if e.n < 2:
        return f"{e.mean:.{digits}f} (one run)"
    return f"{e.mean:.{digits}f} ± {e.se:.{digits}f} (n={e.n})"


def format_difference(d: Estimate | None) -> str:
    """``"+1.6 [+0.5, +2.7]"``: a paired difference and its 95 % interval; ``"+1.6 (one seed)"``
    without an interval; ``"—"`` when there is nothing to pair."""
    if d is None:
        return "—"
    if d.n < 2:
        return f"{d.mean:+.1f} (one seed)"
    return f"{d.mean:+.1f} [{d.low:+.1f}, {d.high:+.1f}]"


def display_frame(table: Any) -> None:
    """Display a DataFrame in full: an HTML table in the book, every column in nbval's text."""
    import pandas as pd
    from IPython.display import display

    with pd.option_context("display.max_columns", None, "display.width", 250,
                           "display.max_colwidth", 80):
        display(table)


def frame(table: Sequence[Row], *, reference: str = "full", metric: str = "accuracy") -> Any:
    """The table as a pandas DataFrame, one row per strategy: the test metric mean ± s.e. over
    seeds, the seed-paired difference from ``reference`` with its 95 % interval, the verdict,
    the chosen learning rate (or C), trainable parameters, epochs, seconds per run and, where
    measured, the memory training adds.

    A DataFrame rather than Markdown: a notebook shows it as an HTML table in the book (the
    book renders Markdown outputs without table support) and as text in nbval, and its cells
    are data, not prose for the translation catalogues.
    """
    import pandas as pd

    shown = f"test {metric}" + (" (%)" if metric == "accuracy" else "")
    unit = "points, " if metric == "accuracy" else ""
    with_memory = any(r.memory_mib is not None for r in table)
    out = []
    for r in table:
        baseline = r.strategy in BASELINES
        row = {
            "strategy": r.label,
            shown: format_estimate(r.accuracy, deterministic=r.deterministic),
            f"vs. reference ({unit}95 % CI)": format_difference(r.difference),
            "verdict": r.verdict(reference),
            "chosen lr (C)": "—" if r.lr is None else f"{r.lr:g}",
            "trainable": f"{r.trainable_params:,}" if r.trainable_params else "—",
            "epochs": f"{r.epochs:.1f}" if r.epochs is not None and not baseline else "—",
            "s / run": f"{r.train_s:.0f}",  # the training loop
        }
        if with_memory:
            row["memory (MiB)"] = f"{r.memory_mib:.0f}" if r.memory_mib is not None else "—"
        out.append(row)
    return pd.DataFrame(out).set_index("strategy")


def status(grid: str, results_dir: Path | None = None) -> str:
    """One line: the grid's description and whether every planned run is stored."""
    from finetune_helpers import grids as grid_defs

    done = len(experiments.load(experiments.results_path(grid, results_dir)))
    g = grid_defs.registry().get(grid)
    if g is None:
        return f"{grid}: {done} runs stored (not a grid of the book: planned runs unknown)"
    missing = len(experiments.pending(g, results_dir))
    state = ("all planned runs stored" if missing == 0 else
             f"incomplete: {done} runs stored, at least {missing} planned runs still missing")
    return f"{grid}: {g.description}; {state}"


def show(strategies: Sequence[str] | None = None, *,
         grids: Sequence[str] = ("vision", "text", "text_zh"), reference: str = "full",
         metric: str = "accuracy", results_dir: Path | None = None) -> None:
    """For a chapter: per grid with stored records, print its status line and display the
    table (:func:`frame`) of ``strategies`` (all when None), the reference and the baselines;
    then name the grids without records and the command that makes them."""
    empty = []
    for grid in grids:
        if not experiments.load(experiments.results_path(grid, results_dir)):
            empty.append(grid)
            continue
        wanted = None if strategies is None else list(dict.fromkeys([*strategies, reference]))
        table = rows(grid, reference=reference, metric=metric, strategies=wanted,
                     results_dir=results_dir)
        print(status(grid, results_dir))
        display_frame(frame(table, reference=reference, metric=metric))
    if empty:
        print(f"No stored runs yet for {', '.join(empty)}: `python -m "
              "finetune_helpers.experiments run GRID` records them (README, \"Experiments\").")


def samples(grid: str, *, seed: int = 0, results_dir: Path | None = None) -> dict[str, str]:
    """The text each reported configuration of a language-model grid generated after training
    (its records' ``sample``: the greedy continuation of the grid's prompt) at ``seed``, by row
    label in the table's order; empty when the grid has no records yet."""
    records = experiments.load(experiments.results_path(grid, results_dir))
    if not records:
        return {}
    out = {}
    for row in rows(grid, metric="perplexity", results_dir=results_dir):
        sample = next((r.get("sample") for r in records
                       if r["config"] == row.config and r["seed"] == seed), None)
        if sample is not None:
            out[row.label] = sample
    return out


def plot(table: Sequence[Row], *, grid: str, ax: Any = None, results_dir: Path | None = None,
         metric: str = "accuracy", title: str | None = None) -> Any:
    """Each seed's test accuracy (dots) and the mean with its 95 % interval (bar), per strategy;
    baselines as dashed lines. Returns the matplotlib Axes."""
    import matplotlib.pyplot as plt

    records = experiments.load(experiments.results_path(grid, results_dir))
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 0.5 * len(table) + 1.5))
    fine_tuned = [r for r in table if r.strategy not in BASELINES]
    for y, row in enumerate(fine_tuned):
        per_seed = [_scale(metric) * float(rec["test"][metric]) for rec in records
                    if rec["config"] == row.config]
        ax.scatter(per_seed, [y] * len(per_seed), color="tab:blue", alpha=0.6, s=25, zorder=3)
        e = row.accuracy
        if e.n > 1:
            ax.errorbar([e.mean], [y], xerr=[[e.mean - e.low], [e.high - e.mean]], fmt="s",
                        color="black", capsize=4, zorder=4)
    for k, row in enumerate(r for r in table if r.strategy in BASELINES):
        ax.axvline(row.accuracy.mean, color=f"C{k + 1}", linestyle="--", linewidth=1,
                   label=f"{LABELS[row.strategy][0]}: {row.accuracy.mean:.1f}"
                         + (" %" if metric == "accuracy" else ""))
    ax.set_yticks(range(len(fine_tuned)), [r.label for r in fine_tuned])
    ax.invert_yaxis()
    unit = " (%)" if metric == "accuracy" else ""
    ax.set_xlabel(f"test {metric}{unit}: seeds (dots), mean and 95 % interval (black)")
    if title:
        ax.set_title(title)
    if any(r.strategy in BASELINES for r in table):  # below the axes: it hides no seed's dot
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize="small", ncol=2,
                  frameon=False)
    return ax


def paired(grid: str, a: str, b: str, *, metric: str = "accuracy",
           results_dir: Path | None = None) -> Estimate:
    """Strategy ``a`` minus strategy ``b`` (test ``metric``; accuracy in points), paired by seed.
    Either may name a variant (``"freeze_bottom,k=12"``) where a grid runs several.

    Raises ``KeyError`` when one has no reported result, ``ValueError`` when the two share no
    seed or a strategy name is ambiguous."""
    records = experiments.load(experiments.results_path(grid, results_dir))
    shown, _ = experiments.reported(records, _select_metric(grid))
    variants = _variants(shown)
    found = {s: _find(variants, s, grid) for s in (a, b)}
    missing = [s for s, f in found.items() if f is None]
    if missing:
        raise KeyError(f"grid {grid!r} has no reported results for {missing}; "
                       f"known: {sorted(variants)}")
    d = _paired(found[a][1], found[b][1], metric)
    if d is None:
        raise ValueError(f"{a!r} and {b!r} share no seed in grid {grid!r}: cannot pair them")
    return d


def _by_seed(runs: Sequence[dict], metric: str) -> dict[int, float]:
    return {r["seed"]: _scale(metric) * float(r["test"][metric]) for r in runs}


def _deterministic(runs: Sequence[dict]) -> bool:
    """A configuration with nothing random in it (e.g. the pretrained model, evaluated as it
    is): its one run is what every seed would give."""
    return all(r.get("deterministic") for r in runs)


def _paired(runs: Sequence[dict], reference: Sequence[dict], metric: str) -> Estimate | None:
    """Mean and interval of (runs - reference) over the seeds both have (accuracy in points).
    A deterministic side's one run stands for every seed of the other side, so the interval
    holds the other side's seed-to-seed spread (the test set is the same for all)."""
    a, b = _by_seed(runs, metric), _by_seed(reference, metric)
    if _deterministic(runs) and not _deterministic(reference):
        a = dict.fromkeys(b, next(iter(a.values())))
    elif _deterministic(reference) and not _deterministic(runs):
        b = dict.fromkeys(a, next(iter(b.values())))
    return experiments.paired_by_seed(a, b)


def _name(variant: str) -> str:
    """``"freeze_bottom,k=12"`` -> ``"freeze the bottom layers, k=12"``."""
    strategy, _, detail = variant.partition(",")
    english = LABELS.get(strategy, (strategy,))[0]
    return f"{english}, {detail}" if detail else english


def compare(grid: str, a: str, b: str, *, metric: str = "accuracy",
            results_dir: Path | None = None) -> str:
    """One sentence comparing strategies ``a`` and ``b`` by their seed-paired difference."""
    d = paired(grid, a, b, metric=metric, results_dir=results_dir)
    name_a, name_b = (_name(v) for v in (a, b))
    unit = " points" if metric == "accuracy" else f" in test {metric}"
    if d.n < 2:
        return f"{name_a} vs {name_b}: {d.mean:+.1f}{unit} on one seed (no interval)"
    span = f"95 % CI {d.low:+.1f} to {d.high:+.1f}, {d.n} paired seeds"
    if d.excludes_zero:
        word = "better" if (d.mean > 0) != (metric in LOWER_IS_BETTER) else "worse"
        return f"{name_a} is {word} than {name_b}: {d.mean:+.1f}{unit} ({span})"
    return (f"{name_a} vs {name_b}: no difference detected at this precision, "
            f"{d.mean:+.1f}{unit} ({span})")
