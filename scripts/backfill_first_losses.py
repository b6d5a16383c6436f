"""Give older grid records the losses of their first training steps, from a verified re-run.

Records made since ``first_losses`` exists keep the losses of their first
:data:`finetune_helpers.grids.FIRST_STEPS` training steps, and the drift test
(``tests/test_grids.py``) re-runs just those steps. Older records lack them, so the drift test
re-ran their whole first epoch: about a minute per strategy for the vision grid on 2 cores.

For each strategy of each grid none of whose records keeps ``first_losses``, this script takes
the record the drift test would pick (the cheapest), re-runs its first epoch exactly as the
drift test does, and requires the epoch's validation metrics to equal the record's. Only then
does it store the first losses of that same re-run in the record, with ``first_losses_source``
saying where they came from. The re-run is the computation the record was made by (it
reproduced the recorded validation metrics bit for bit), so its first losses are the record's.

Usage: python scripts/backfill_first_losses.py [GRID ...]   (default: every grid)
Needs a machine of the records' arithmetic class (their fingerprint), like the drift test.
"""

from __future__ import annotations

import sys
import time
from datetime import date

from finetune_helpers import experiments, fingerprint, grids, results, runtime
from finetune_helpers.experiments import RunSpec


def _strip(epochs: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in epochs]


def backfill(grid_name: str, machine: str) -> int:
    """Backfill one grid; returns how many records gained ``first_losses``."""
    path = experiments.results_path(grid_name)
    records = experiments.load(path)
    by_strategy: dict[str, list[dict]] = {}
    for r in records:
        by_strategy.setdefault(r["strategy"], []).append(r)
    done = 0
    for strategy, runs in sorted(by_strategy.items()):
        if any(r.get("first_losses") for r in runs):
            continue
        record = min(runs, key=lambda r: r["wall_s"])
        if record["wall_s"] < grids.WHOLE_RUN_SECONDS or strategy in results.BASELINES:
            continue  # the drift test re-runs it whole; a baseline trains no network
        if record["fingerprint"] != machine:
            print(f"{record['key']}: recorded on arithmetic {record['fingerprint']}, this machine "
                  f"computes {machine}; skipped")
            continue
        spec = RunSpec(grid_name, record["task"], record["strategy"], record["seed"],
                       tuple(sorted(record["hparams"].items())))
        assert spec.key == record["key"]
        start = time.perf_counter()
        runtime.seed_everything(spec.seed)  # as run_grid and the drift test do
        result = grids.registry()[grid_name].train(spec, max_epochs=1, evaluate_test=False)
        if _strip(result["val"][:1]) != _strip(record["val"][:1]):
            raise SystemExit(f"{record['key']}: the first epoch does not reproduce the record "
                             f"({result['val'][:1]} vs {record['val'][:1]}): the code has "
                             "drifted from this record, so its first losses cannot be backfilled")
        if "first_losses" not in result:
            raise SystemExit(f"{record['key']}: its training function returns no first losses")
        record["first_losses"] = result["first_losses"]
        record["first_losses_source"] = (
            f"backfilled on {date.today().isoformat()} at commit {experiments.provenance()['commit']}"
            " from a re-run of the first epoch whose validation metrics equalled the record's")
        experiments.save(path, records)  # after each record: an interruption loses nothing
        done += 1
        print(f"{record['key']}: first epoch reproduced in {time.perf_counter() - start:.0f} s; "
              f"first losses {record['first_losses']}")
    return done


def main(argv: list[str]) -> int:
    runtime.setup(seed=None)
    machine = fingerprint.combine(fingerprint.compute())
    names = argv or list(grids.registry())
    total = sum(backfill(name, machine) for name in names)
    print(f"records given first_losses: {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
