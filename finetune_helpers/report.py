"""The standard row every chapter prints: what a strategy trained, what it cost, what it reached.

A row has two kinds of columns:

* **stable**: strategy, trainable and total parameters (and the trainable percentage), the final
  metric (accuracy in % or perplexity, stored rounded to 2 decimals; a perplexity prints with 1)
  and the budget. On one machine these repeat exactly (seeded training), so nbval can check them;
* **measured**: seconds per epoch and peak memory (process RSS, and GPU memory on a GPU). They
  change from run to run and machine to machine, so nbval must not compare them.

:func:`report` therefore prints only the stable part, and a notebook shows the measured part in
its own cell marked ``# NBVAL_IGNORE_OUTPUT``::

    row = report("head only", model, history, budget="512 examples x 3 epochs")
    # head only | trainable 5,130 of 11,181,642 (0.0459%) | accuracy 81.25% | 512 examples x 3 epochs

    # NBVAL_IGNORE_OUTPUT
    row.show("measured")
    # head only | 3.4 s/epoch | peak memory 812.3 MiB

A :class:`ReportTable` collects rows; ``frame()`` / ``markdown()`` render them (with
``stable=True`` for a checked cell).

Two helpers the chapters share for the accuracy they report: :func:`binomial_se` (one standard
error of an accuracy measured on ``n`` examples) and :func:`confusion_figure` (the held-out
confusion matrix, counts in the cells).

Parameters are counted by :func:`finetune_helpers.strategies.count_parameters`: trainable =
learnable parameters with ``stop_gradient=False``; total = learnable parameters, i.e. without
the BatchNorm running statistics that Paddle stores as (never trained) parameters, so ResNet-18
gives the usual 11,689,512, not Paddle's 11,699,112. Tied parameters count once.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import paddle

from finetune_helpers.strategies import count_parameters  # the one parameter count of the book

STABLE_KEYS = ("strategy", "trainable_params", "total_params", "trainable_pct", "metric_name",
               "metric", "budget")
MEASURED_KEYS = ("seconds_per_epoch", "peak_memory_mib", "peak_gpu_mib")
# metric name -> (key in History.epochs records, factor applied for display)
_METRICS = {"accuracy": ("eval_accuracy", 100.0), "perplexity": ("eval_perplexity", 1.0),
            "loss": ("eval_loss", 1.0), "train_loss": ("train_loss", 1.0)}
# metric name -> decimals printed: a perplexity, exp(loss), gets one
_DECIMALS = {"accuracy": 2, "perplexity": 1, "loss": 2, "train_loss": 2}


class ReportRow(dict):
    """One row: a plain dict (JSON-ready) that can print its stable and measured parts."""

    def stable(self) -> dict[str, Any]:
        """The columns that repeat between runs (nbval may compare them)."""
        return {k: self.get(k) for k in STABLE_KEYS}

    def measured(self) -> dict[str, Any]:
        """Timing and memory: they vary between runs; show them under NBVAL_IGNORE_OUTPUT."""
        return {k: self.get(k) for k in MEASURED_KEYS}

    def line(self, part: str = "stable") -> str:
        """One human line: ``part`` is ``"stable"``, ``"measured"`` or ``"all"``."""
        if part not in ("stable", "measured", "all"):
            raise ValueError(f"part must be 'stable', 'measured' or 'all', got {part!r}")
        fields = [str(self["strategy"])]
        if part in ("stable", "all"):
            fields.append(f"trainable {self['trainable_params']:,} of {self['total_params']:,} "
                          f"({_pct(self['trainable_pct'])})")
            fields.append(_metric_text(self["metric_name"], self["metric"]))
            fields.append(str(self["budget"]))
        if part in ("measured", "all"):
            fields.append(f"{self['seconds_per_epoch']:.1f} s/epoch")
            fields.append(f"peak memory {self['peak_memory_mib']:.1f} MiB")
            if self.get("peak_gpu_mib") is not None:
                fields.append(f"GPU {self['peak_gpu_mib']:.1f} MiB")
        return " | ".join(fields)

    def show(self, part: str = "stable") -> None:
        """Print :meth:`line`."""
        print(self.line(part))


def _pct(value: float) -> str:
    return f"{value:.3g}%" if value < 100 else "100%"


def _metric_text(name: str, value: float | None) -> str:
    if value is None:
        return f"{name} n/a"
    text = f"{value:.{_DECIMALS.get(name, 2)}f}"
    return f"accuracy {text}%" if name == "accuracy" else f"{name} {text}"


def report(strategy: str, model: paddle.nn.Layer, history: Any, *, budget: str,
           metric_name: str | None = None, show: str | None = "stable") -> ReportRow:
    """Build, print (``show``: ``"stable"``, ``"measured"``, ``"all"`` or ``None``) and return a row.

    ``history`` is :class:`finetune_helpers.train.History`. ``metric_name`` is one of
    ``accuracy`` (eval accuracy, in %), ``perplexity``, ``loss`` (eval loss) or ``train_loss``;
    the default is the history's eval metric, else ``train_loss``. The metric is the final
    epoch's. ``budget`` says how much data and training was spent, e.g.
    ``"512 examples x 3 epochs"``.
    """
    if not history.epochs:
        raise ValueError("the history is empty: report after fit() has run at least one epoch")
    name = metric_name or history.metric_name or "train_loss"
    if name not in _METRICS:
        raise ValueError(f"metric_name must be one of {sorted(_METRICS)}, got {name!r}")
    key, factor = _METRICS[name]
    last = history.last()
    if key not in last:
        raise ValueError(f"the history has no {key!r} (recorded: {sorted(last)}); pass "
                         "eval_loader= to fit() or choose metric_name='train_loss'")
    trainable, total = count_parameters(model)
    row = ReportRow(
        strategy=strategy,
        trainable_params=trainable,
        total_params=total,
        trainable_pct=100.0 * trainable / total if total else 0.0,
        metric_name=name,
        metric=round(float(last[key]) * factor, 2),
        budget=budget,
        seconds_per_epoch=round(history.seconds_per_epoch, 1),
        peak_memory_mib=history.peak_rss_mib,
        peak_gpu_mib=history.peak_gpu_mib,
    )
    if show is not None:
        row.show(show)
    return row


class ReportTable:
    """Rows from several strategies (or chapters), rendered together."""

    def __init__(self, rows: Iterable[dict[str, Any]] = ()) -> None:
        self.rows: list[ReportRow] = [ReportRow(r) for r in rows]

    def add(self, row: dict[str, Any]) -> ReportRow:
        """Append a row (as returned by :func:`report`) and return it."""
        missing = [k for k in STABLE_KEYS + MEASURED_KEYS if k not in row]
        if missing:
            raise ValueError(f"not a report row, missing {missing}; use the dict report() returns")
        self.rows.append(ReportRow(row))
        return self.rows[-1]

    def __len__(self) -> int:
        return len(self.rows)

    def _keys(self, stable: bool) -> tuple[str, ...]:
        return STABLE_KEYS if stable else STABLE_KEYS + MEASURED_KEYS

    def frame(self, stable: bool = False):
        """A pandas DataFrame, one row per strategy (``stable=True``: no timing/memory)."""
        import pandas as pd
        return pd.DataFrame([{k: r.get(k) for k in self._keys(stable)} for r in self.rows])

    def markdown(self, stable: bool = False) -> str:
        """A GitHub-style markdown table (written here: pandas needs ``tabulate`` for this)."""
        head = ["strategy", "trainable", "total", "trainable %", "metric", "budget"]
        if not stable:
            head += ["s/epoch", "peak MiB"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [str(r["strategy"]), f"{r['trainable_params']:,}", f"{r['total_params']:,}",
                     _pct(r["trainable_pct"]), _metric_text(r["metric_name"], r["metric"]),
                     str(r["budget"])]
            if not stable:
                cells += [f"{r['seconds_per_epoch']:.1f}", f"{r['peak_memory_mib']:.1f}"]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Uncertainty of an accuracy, and where the errors are.

def binomial_se(accuracy: float, n: int) -> float:
    """One binomial standard error of an accuracy measured on ``n`` examples:
    ``sqrt(p (1 - p) / n)``, a fraction like ``accuracy`` (times 100: percentage points).

    Each example is right or wrong, so the count of right answers is binomial: an accuracy
    near 80 % on 300 examples is uncertain by about 2.3 points, which is the scale on which two
    strategies' accuracies can be told apart.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be the number of examples scored, an int >= 1, got {n!r}")
    p = float(accuracy)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"accuracy must be a fraction in [0, 1] (0.81, not 81), got {accuracy!r}")
    return math.sqrt(p * (1 - p) / int(n))


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int],
                     num_classes: int) -> np.ndarray:
    """Counts ``[true class, predicted class]``, shape ``(num_classes, num_classes)``."""
    y, p = np.asarray(labels).reshape(-1), np.asarray(predictions).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length ({y.size} vs {p.size}); pass "
                         "one prediction per labelled example")
    for name, values in (("labels", y), ("predictions", p)):
        if values.size and (values.min() < 0 or values.max() >= num_classes
                            or not np.issubdtype(values.dtype, np.integer)):
            raise ValueError(f"{name} must be class indices in 0..{num_classes - 1} (one per "
                             "class name); pass logits.argmax(-1), not the logits")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y, p), 1)
    return matrix


def confusion_figure(labels: Sequence[int], predictions: Sequence[int],
                     class_names: Sequence[str], *, title: str | None = None,
                     ax: Any = None, colorbar: bool = True) -> Any:
    """The confusion matrix as a matplotlib figure: true class down, predicted class across,
    each non-zero count written in its cell.

    ``title`` defaults to ``"held-out confusion matrix (81.3% correct)"``. Pass ``ax`` to draw
    into an existing axes (e.g. next to a loss curve); the figure holding it is returned.
    """
    import matplotlib.pyplot as plt

    k = len(class_names)
    matrix = confusion_matrix(labels, predictions, k)
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.6, 4.6))
    else:
        fig = ax.figure
    image = ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, int(count), ha="center", va="center", fontsize=7 if k > 5 else 10,
                    color="white" if count > matrix.max() / 2 else "black")
    ax.set_xticks(range(k), list(class_names), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), list(class_names), fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    correct = np.trace(matrix) / max(int(matrix.sum()), 1)
    ax.set_title(title if title is not None else
                 f"held-out confusion matrix ({correct:.1%} correct)")
    if colorbar:
        fig.colorbar(image, ax=ax, label="examples")
    return fig
