"""Experiments as data: grids of training runs, run resumably, one stored record per run.

A ranking of fine-tuning strategies is a claim about training *procedures*, so it needs
replicated runs (seeds), and runs that take hours on a laptop CPU cannot be re-run inside a
notebook. So a grid is defined in code (a list of :class:`RunSpec` and a function that trains
one), :func:`run_grid` runs whatever is not recorded yet, and each finished run appends one
JSON record to ``book/results/<grid>.jsonl``, which is committed with the book. The chapters
render their comparison tables from these files; a test re-runs a few records to keep the
data from drifting away from the code.

A record holds the run's configuration (task, strategy, hyper-parameters, seed), what the
training function returned (per-epoch validation metrics, test metrics, steps), its wall time
and the peak memory of that run alone, and its provenance: the arithmetic mode and fingerprint
(:mod:`finetune_helpers.fingerprint`: records from machines of another arithmetic class are
not bit-comparable), threads, CPU, package versions and the git commit.

Statistics (:func:`mean_se`, :func:`paired_difference`) follow the book's rule: a ranking
sentence only where the seed-paired 95 % interval excludes zero.

Command line::

    python -m finetune_helpers.experiments summary    # last line: grids, configurations, seeds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
#: Where the records live (committed with the book).
RESULTS_DIR = ROOT / "book" / "results"
#: Package versions recorded with every run.
VERSIONED = ("paddlepaddle", "paddlenlp", "numpy", "scikit-learn")


@dataclass(frozen=True)
class RunSpec:
    """One training run of a grid: a configuration (task, strategy, hyper-parameters) and a seed.

    The seed is meant to change everything random in the run: the new head's initialisation,
    the data order and the training subset.
    """

    grid: str
    task: str
    strategy: str
    seed: int
    hparams: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def make(cls, grid: str, task: str, strategy: str, seed: int, **hparams: Any) -> RunSpec:
        return cls(grid, task, strategy, seed, tuple(sorted(hparams.items())))

    @property
    def config(self) -> str:
        """The configuration without the seed, e.g. ``vision/top_n,lr=0.001,n=2``."""
        return ",".join([f"{self.task}/{self.strategy}", *(f"{k}={v}" for k, v in self.hparams)])

    @property
    def key(self) -> str:
        """Unique within a grid: the configuration and the seed."""
        return f"{self.config}/seed={self.seed}"


@dataclass
class Grid:
    """A named set of runs and the function that trains one of them.

    ``train(spec)`` returns a dict with at least ``test`` (a dict of test metrics); by
    convention also ``val`` (one dict of validation metrics per epoch) and ``steps``.
    """

    name: str
    runs: list[RunSpec]
    train: Callable[[RunSpec], dict[str, Any]]
    description: str = ""

    def __post_init__(self) -> None:
        keys = [r.key for r in self.runs]
        if len(set(keys)) != len(keys):
            raise ValueError(f"grid {self.name!r} lists a run twice; every (configuration, seed) "
                             "must be unique")
        wrong = {r.grid for r in self.runs} - {self.name}
        if wrong:
            raise ValueError(f"grid {self.name!r} holds runs of other grids: {sorted(wrong)}")


# ---------------------------------------------------------------------------------------------
# Storage: one JSON object per line, the whole file replaced atomically on every append.

def results_path(grid: str, results_dir: Path | None = None) -> Path:
    return Path(results_dir or RESULTS_DIR) / f"{grid}.jsonl"


def load(path: Path) -> list[dict[str, Any]]:
    """The records in ``path`` (empty if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {n}: not a JSON record ({err.msg}); the runner never "
                             "writes half a line, so this was edited by hand: fix or delete that "
                             "line and re-run the grid (missing runs are redone)") from None
    return records


def append(path: Path, record: dict[str, Any]) -> None:
    """Add one record: write the old lines and the new one to a temporary file, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(old + json.dumps(record, sort_keys=True) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Provenance.

def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty",
                              "--abbrev=12"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance() -> dict[str, Any]:
    """Where and how a run was computed (threads, arithmetic, CPU, versions, commit)."""
    from finetune_helpers import fingerprint, runtime

    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {"arithmetic": os.environ.get(runtime.MODE_ENV, "unset"),
            "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0),
            "fingerprint": fingerprint.combine(fingerprint.compute()), **fingerprint.machine(),
            "versions": versions, "commit": _git_commit()}


# ---------------------------------------------------------------------------------------------
# Running.

def pending(grid: Grid, results_dir: Path | None = None) -> list[RunSpec]:
    """The runs of ``grid`` that have no record yet, in the grid's order."""
    done = {r.get("key") for r in load(results_path(grid.name, results_dir))}
    return [spec for spec in grid.runs if spec.key not in done]


def run_grid(grid: Grid, results_dir: Path | None = None, *, max_runs: int | None = None,
             only: Callable[[RunSpec], bool] | None = None,
             progress: bool = True) -> list[dict[str, Any]]:
    """Run the grid's missing runs (at most ``max_runs``), appending one record after each.

    Already recorded runs are skipped, so an interrupted grid continues where it stopped; a run
    that raises leaves no record and stops the grid. Returns the new records.
    """
    from tqdm.auto import tqdm

    from finetune_helpers.runtime import seed_everything
    from finetune_helpers.train import PeakMemory

    path = results_path(grid.name, results_dir)
    todo = [s for s in pending(grid, results_dir) if only is None or only(s)][:max_runs]
    where = provenance()
    new = []
    for spec in tqdm(todo, desc=grid.name, disable=not progress):
        seed_everything(spec.seed)
        memory = PeakMemory()
        memory.start()
        start = time.perf_counter()
        result = grid.train(spec)
        seconds = time.perf_counter() - start
        if "test" not in result:
            raise ValueError(f"{grid.name}: train() returned no 'test' metrics for {spec.key}")
        record = {"grid": grid.name, "key": spec.key, "config": spec.config, "task": spec.task,
                  "strategy": spec.strategy, "seed": spec.seed, "hparams": dict(spec.hparams),
                  **result, "wall_s": round(seconds, 1),
                  "peak_rss_mib": memory.stop()["peak_rss_mib"], **where}
        append(path, record)
        new.append(record)
    return new


# ---------------------------------------------------------------------------------------------
# Statistics over seeds.

@dataclass
class Estimate:
    """A mean over seeds with its standard error and a 95 % t-interval."""

    mean: float
    se: float
    n: int
    low: float = field(init=False)
    high: float = field(init=False)

    def __post_init__(self) -> None:
        half = _t95(self.n - 1) * self.se if self.n > 1 else math.inf
        self.low, self.high = self.mean - half, self.mean + half

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _t95(dof: int) -> float:
    """Two-sided 95 % quantile of Student's t (scipy's, which scikit-learn already needs)."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def mean_se(values: Sequence[float]) -> Estimate:
    """Mean, standard error (sample s.d. / sqrt(n)) and 95 % interval of replicated values."""
    n = len(values)
    if n == 0:
        raise ValueError("no values: this configuration has no recorded runs")
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return Estimate(mean, sd / math.sqrt(n) if n > 1 else math.nan, n)


def metric_by_seed(records: Iterable[dict], config: str, metric: str) -> dict[int, float]:
    """``{seed: test metric}`` of one configuration."""
    return {r["seed"]: float(r["test"][metric]) for r in records if r["config"] == config}


def paired_difference(records: Iterable[dict], config: str, reference: str,
                      metric: str) -> Estimate:
    """``config`` minus ``reference`` over the seeds both have (seed-paired), with its interval."""
    records = list(records)
    a, b = metric_by_seed(records, config, metric), metric_by_seed(records, reference, metric)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"{config!r} and {reference!r} share no seed: cannot pair them")
    return mean_se([a[s] - b[s] for s in seeds])


# ---------------------------------------------------------------------------------------------
# Summary.

def summary(results_dir: Path | None = None) -> list[str]:
    """What is stored: per grid, each configuration's seeds and mean ± s.e. of its test metrics.

    The last line reads ``grids: G; configurations: C; min seeds per configuration: S``.
    """
    lines, n_configs, min_seeds = [], 0, None
    files = sorted(Path(results_dir or RESULTS_DIR).glob("*.jsonl"))
    for path in files:
        records = load(path)
        configs: dict[str, list[dict]] = {}
        for r in records:
            configs.setdefault(r["config"], []).append(r)
        lines.append(f"{path.stem}: {len(records)} runs, {len(configs)} configurations")
        for config, runs in configs.items():
            seeds = len({r["seed"] for r in runs})
            metrics = ", ".join(
                f"{m} {e.mean:.4g} ± {e.se:.2g}" for m in sorted(runs[0]["test"])
                for e in [mean_se([float(r["test"][m]) for r in runs])])
            lines.append(f"  {config}: {seeds} seeds; {metrics}")
            min_seeds = seeds if min_seeds is None else min(min_seeds, seeds)
        n_configs += len(configs)
    lines.append(f"grids: {len(files)}; configurations: {n_configs}; "
                 f"min seeds per configuration: {min_seeds or 0}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune_helpers.experiments",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["summary"])
    parser.add_argument("--results", type=Path, default=None,
                        help=f"folder of the records (default: {RESULTS_DIR.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    print("\n".join(summary(args.results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
