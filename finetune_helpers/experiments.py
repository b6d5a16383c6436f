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
from typing import Any, Callable, Iterable, Mapping, Sequence

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


@dataclass(frozen=True)
class Sweep:
    """A configuration whose ``param`` (the learning rate) is chosen on validation.

    The protocol: at the grid's first seed, one run per value in ``values`` (ascending); the
    value whose run scores best on validation (at its best epoch; ties go to the smaller value)
    is the configuration's. If it is the smallest or the largest value tried, the range grows
    by one more value in that direction (the same ratio as between the first two values),
    at most ``extend`` times per direction, so a choice at the edge of the range is not taken
    for an optimum. The other seeds then run at the chosen value only.
    """

    task: str
    strategy: str
    values: tuple[Any, ...]
    param: str = "lr"
    hparams: tuple[tuple[str, Any], ...] = ()
    extend: int = 1

    @classmethod
    def make(cls, task: str, strategy: str, values: Sequence[Any], param: str = "lr",
             extend: int = 1, **hparams: Any) -> Sweep:
        if len(values) < 2 or len(set(values)) != len(values) or list(values) != sorted(values):
            raise ValueError(f"{task}/{strategy}: values must be at least two distinct values "
                             f"in ascending order, got {values!r}")
        return cls(task, strategy, tuple(values), param, tuple(sorted(hparams.items())), extend)

    @property
    def name(self) -> str:
        """The configuration without the chosen value, e.g. ``vision/top_n,n=2``."""
        return ",".join([f"{self.task}/{self.strategy}", *(f"{k}={v}" for k, v in self.hparams)])

    def spec(self, grid: str, seed: int, value: Any) -> RunSpec:
        return RunSpec.make(grid, self.task, self.strategy, seed,
                            **dict(self.hparams), **{self.param: value})

    def step(self, value: Any, direction: int) -> Any:
        """The next value beyond ``value`` (direction -1: smaller, +1: larger), one significant
        digit: 1e-4 -> 3e-5, 1e-3 -> 3e-3."""
        ratio = self.values[1] / self.values[0]
        return float(f"{value * ratio ** direction:.0e}")


@dataclass
class Grid:
    """A named set of runs and the function that trains one of them.

    ``runs`` are fixed runs; each of ``sweeps`` adds its selection runs (every value at
    ``seeds[0]``) and, once those are recorded, the chosen value at the other ``seeds``.
    ``train(spec)`` returns a dict with at least ``test`` (a dict of test metrics); by
    convention also ``val`` (one dict of validation metrics per epoch), ``best_epoch`` (the
    epoch whose weights were tested) and ``steps``. ``select`` is the validation metric that
    chooses a sweep's value (higher is better).
    """

    name: str
    runs: list[RunSpec]
    train: Callable[[RunSpec], dict[str, Any]]
    description: str = ""
    sweeps: list[Sweep] = field(default_factory=list)
    seeds: tuple[int, ...] = (0, 1, 2)
    select: str = "accuracy"

    def __post_init__(self) -> None:
        keys = [r.key for r in self.runs]
        if len(set(keys)) != len(keys):
            raise ValueError(f"grid {self.name!r} lists a run twice; every (configuration, seed) "
                             "must be unique")
        wrong = {r.grid for r in self.runs} - {self.name}
        if wrong:
            raise ValueError(f"grid {self.name!r} holds runs of other grids: {sorted(wrong)}")
        names = [s.name for s in self.sweeps]
        if len(set(names)) != len(names):
            raise ValueError(f"grid {self.name!r} lists a sweep twice: {names}")
        if not self.seeds:
            raise ValueError(f"grid {self.name!r} has no seeds")

    def planned(self, records: Sequence[dict[str, Any]]) -> list[RunSpec]:
        """Every run the grid needs, given what is recorded (a sweep's extensions and
        replicates appear once the selection runs they depend on are recorded)."""
        specs = list(self.runs)
        for sweep in self.sweeps:
            tried, chosen = selection(sweep, records, self.select, self.seeds[0])
            specs += [sweep.spec(self.name, self.seeds[0], v) for v in tried]
            if chosen is not None:
                specs += [sweep.spec(self.name, s, chosen) for s in self.seeds[1:]]
        return specs


def validation_score(record: dict[str, Any], metric: str) -> float:
    """The run's validation ``metric`` at the epoch whose weights were kept (else its best)."""
    val = record.get("val") or []
    if not val:
        raise ValueError(f"{record.get('key')}: no validation metrics recorded")
    best = record.get("best_epoch")
    if best is not None:
        return float(val[best][metric])
    return max(float(v[metric]) for v in val)


def selection(sweep: Sweep, records: Iterable[dict[str, Any]], metric: str,
              seed: int | None = None) -> tuple[list[Any], Any | None]:
    """``(values to try at the selection seed, chosen value or None)`` given the records.

    ``seed``: the selection seed (default: the lowest seed recorded for the sweep, else 0).
    """
    mine = [r for r in records if (r.get("sweep") or {}).get("name") == sweep.name]
    if seed is None:
        seed = min((r["seed"] for r in mine), default=0)
    scores = {r["hparams"][sweep.param]: validation_score(r, metric)
              for r in mine if r["seed"] == seed}
    tried = list(sweep.values)
    grown = {-1: 0, 1: 0}
    while True:
        if any(v not in scores for v in tried):
            return tried, None
        ordered = sorted(tried)
        best = max(ordered, key=lambda v: (scores[v], -ordered.index(v)))
        direction = -1 if best == ordered[0] else 1 if best == ordered[-1] else 0
        if direction == 0 or grown[direction] >= sweep.extend:
            return tried, best
        grown[direction] += 1
        tried.append(sweep.step(best, direction))


def chosen_value(sweep: Sweep, records: Iterable[dict[str, Any]], metric: str,
                 seed: int | None = None) -> Any | None:
    """The value of ``sweep.param`` chosen on validation, or ``None`` while selection runs are
    missing (see :func:`selection`)."""
    return selection(sweep, list(records), metric, seed)[1]


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
    old = path.read_text() if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    _write_atomically(path, old + json.dumps(record, sort_keys=True) + "\n")


def save(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Replace the records in ``path`` with ``records``, atomically (used to add a field to
    stored records, e.g. by ``scripts/backfill_first_losses.py``)."""
    _write_atomically(Path(path), "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
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
    """The runs of ``grid`` that have no record yet and can run now, in the grid's order."""
    records = load(results_path(grid.name, results_dir))
    done = {r.get("key") for r in records}
    return [spec for spec in grid.planned(records) if spec.key not in done]


def _sweep_of(grid: Grid, spec: RunSpec) -> Sweep | None:
    for sweep in grid.sweeps:
        value = dict(spec.hparams).get(sweep.param)
        if sweep.task == spec.task and sweep.strategy == spec.strategy and value is not None \
                and sweep.spec(grid.name, spec.seed, value) == spec:
            return sweep
    return None


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
    where = provenance()
    new: list[dict[str, Any]] = []
    bar = tqdm(desc=grid.name, disable=not progress, unit="run")
    while max_runs is None or len(new) < max_runs:
        # Recomputed after every run: a finished selection adds that sweep's replicates.
        todo = [s for s in pending(grid, results_dir) if only is None or only(s)]
        if not todo:
            break
        spec = todo[0]
        bar.set_postfix_str(spec.key, refresh=True)
        seed_everything(spec.seed)
        memory = PeakMemory()
        memory.start()
        start = time.perf_counter()
        result = grid.train(spec)
        seconds = time.perf_counter() - start
        if "test" not in result:
            raise ValueError(f"{grid.name}: train() returned no 'test' metrics for {spec.key}")
        sweep = _sweep_of(grid, spec)
        mem = memory.stop()
        record = {"grid": grid.name, "key": spec.key, "config": spec.config, "task": spec.task,
                  "strategy": spec.strategy, "seed": spec.seed, "hparams": dict(spec.hparams),
                  "sweep": {"name": sweep.name, "param": sweep.param,
                            "values": list(sweep.values), "extend": sweep.extend}
                  if sweep else None,
                  **result, "wall_s": round(seconds, 1),
                  "peak_rss_mib": mem["peak_rss_mib"], "start_rss_mib": mem["start_rss_mib"],
                  **where}
        append(path, record)
        new.append(record)
        bar.update(1)
    bar.close()
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


def paired_by_seed(a: Mapping[int, float], b: Mapping[int, float]) -> Estimate | None:
    """``a - b`` over the seeds both ``{seed: value}`` mappings have (seed-paired), with its
    interval; ``None`` when they share no seed."""
    seeds = sorted(set(a) & set(b))
    return mean_se([a[s] - b[s] for s in seeds]) if seeds else None


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

def _record_sweep(record: dict[str, Any]) -> Sweep | None:
    info = record.get("sweep")
    if not info:
        return None
    return Sweep(record["task"], record["strategy"], tuple(info["values"]), info["param"],
                 tuple((k, v) for k, v in sorted(record["hparams"].items()) if k != info["param"]),
                 info.get("extend", 0))


def reported(records: Sequence[dict[str, Any]], metric: str = "accuracy"
             ) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """Split records into ``(reported, selection_only)`` configurations.

    A sweep's configuration is reported at its chosen value only (its other values' runs served
    the choice); a sweep still being selected is in neither. Fixed runs are always reported.
    """
    shown: dict[str, list[dict]] = {}
    selection: dict[str, list[dict]] = {}
    chosen: dict[str, Any] = {}
    for r in records:
        sweep = _record_sweep(r)
        if sweep is None:
            shown.setdefault(r["config"], []).append(r)
            continue
        if sweep.name not in chosen:
            chosen[sweep.name] = chosen_value(sweep, records, metric)
        value = chosen[sweep.name]
        if value is None:
            continue
        target = shown if r["hparams"][sweep.param] == value else selection
        target.setdefault(r["config"], []).append(r)
    return shown, selection


def _registry() -> dict[str, Grid]:
    try:
        from finetune_helpers import grids
    except ImportError:
        return {}
    return grids.registry()


def summary(results_dir: Path | None = None, grids: dict[str, Grid] | None = None) -> list[str]:
    """What is stored: per grid, each reported configuration's seeds and mean ± s.e. of its
    test metrics, the sweeps' choices, and how many planned runs are still missing.

    The last line reads ``grids: G; configurations: C; min seeds per configuration: S``
    (grids with stored runs; reported configurations only: a learning rate that lost the
    selection is not one). Grids defined in code with nothing stored are listed above it.
    """
    grids = _registry() if grids is None else grids
    lines, n_configs, min_seeds = [], 0, None
    files = sorted(Path(results_dir or RESULTS_DIR).glob("*.jsonl"))
    for path in files:
        records = load(path)
        grid = grids.get(path.stem)
        shown, selection_only = reported(records, grid.select if grid else "accuracy")
        missing = len(pending(grid, results_dir)) if grid else None
        lines.append(f"{path.stem}: {len(records)} runs, {len(shown)} configurations reported, "
                     f"{sum(map(len, selection_only.values()))} selection-only runs"
                     + (f", {missing} planned runs not yet recorded" if missing is not None else ""))
        for config, runs in shown.items():
            seeds = len({r["seed"] for r in runs})
            if all(r.get("deterministic") for r in runs):
                # Nothing random in this configuration (e.g. a prompt without demonstrations):
                # one run is all there is to measure, and it is not a missing replicate.
                lines.append(f"  {config}: 1 run (deterministic: nothing to replicate); "
                             + ", ".join(f"{m} {float(runs[0]['test'][m]):.4g}"
                                         for m in sorted(runs[0]["test"])))
                n_configs += 1
                continue
            metrics = ", ".join(
                f"{m} {e.mean:.4g} ± {e.se:.2g}" for m in sorted(runs[0]["test"])
                for e in [mean_se([float(r["test"][m]) for r in runs])])
            sweep = _record_sweep(runs[0])
            note = ""
            if sweep is not None:
                value = runs[0]["hparams"][sweep.param]
                tried = sorted(selection(sweep, records, grid.select if grid else "accuracy")[0])
                edge = " (at the edge of the range)" if value in (tried[0], tried[-1]) else ""
                note = (f" [{sweep.param} chosen on validation from "
                        f"{', '.join(f'{v:g}' for v in tried)}{edge}]")
            lines.append(f"  {config}: {seeds} seeds; {metrics}{note}")
            min_seeds = seeds if min_seeds is None else min(min_seeds, seeds)
            n_configs += 1
    for name in sorted(set(grids) - {path.stem for path in files}):
        # A grid defined in code with nothing stored yet: listed, so that the summary shows
        # every grid; it has no configuration to count.
        lines.append(f"{name}: 0 runs (nothing stored yet), "
                     f"{len(pending(grids[name], results_dir))} planned runs not yet recorded")
    lines.append(f"grids: {len(files)}; configurations: {n_configs}; "
                 f"min seeds per configuration: {min_seeds or 0}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune_helpers.experiments",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["summary", "run", "list"],
                        help="summary: what is stored; run: run the missing runs of GRID "
                             "(resumable); list: the runs GRID still needs")
    parser.add_argument("grid", nargs="?", help="grid name (run, list)")
    parser.add_argument("--results", type=Path, default=None,
                        help=f"folder of the records (default: {RESULTS_DIR.relative_to(ROOT)})")
    parser.add_argument("--max-runs", type=int, default=None, help="stop after this many runs")
    parser.add_argument("--only", default=None,
                        help="run only keys containing this text, e.g. 'top_n' or "
                             "'vision/full,lr=0.0003/seed=1' (one row)")
    args = parser.parse_args(argv)
    if args.command == "summary":
        print("\n".join(summary(args.results)))
        return 0
    known = _registry()
    if args.grid not in known:
        parser.error(f"unknown grid {args.grid!r}; grids: {', '.join(known) or 'none'}")
    grid = known[args.grid]
    if args.command == "list":
        for spec in pending(grid, args.results):
            print(spec.key)
        return 0
    from finetune_helpers import runtime

    runtime.setup(seed=None, verbose=True)
    only = (lambda spec: args.only in spec.key) if args.only else None
    new = run_grid(grid, args.results, max_runs=args.max_runs, only=only)
    print(f"{grid.name}: {len(new)} new run(s) recorded in "
          f"{results_path(grid.name, args.results)}; {len(pending(grid, args.results))} "
          "planned run(s) not yet recorded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
