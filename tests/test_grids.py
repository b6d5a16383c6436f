"""Stored results cannot drift from the code: recorded runs are re-run and must match.

For every grid with records, each strategy's cheapest recorded run is re-run. A run that took
under a minute is re-run whole (its validation curve and test metrics must equal the record);
a longer one is re-run for its first epoch, whose validation accuracy and loss must equal the
record's first epoch: the same code path (data, seed, strategy, recipe, loop) at a fraction of
the cost. Records are bit-comparable only on a machine of the records' arithmetic class (the
fingerprint of :mod:`finetune_helpers.fingerprint`); elsewhere the test skips and says so.
"""

from __future__ import annotations

import pytest

from finetune_helpers import experiments, fingerprint, grids
from finetune_helpers.experiments import RunSpec

pytestmark = pytest.mark.slow

#: Runs recorded faster than this are re-run whole; slower ones for their first epoch.
WHOLE_RUN_SECONDS = 60.0


def _cases() -> list:
    cases = []
    for name in grids.registry():
        cheapest: dict[str, dict] = {}
        for record in experiments.load(experiments.results_path(name)):
            best = cheapest.get(record["strategy"])
            if best is None or record["wall_s"] < best["wall_s"]:
                cheapest[record["strategy"]] = record
        cases += [pytest.param(name, r["key"], id=f"{name}:{s}")
                  for s, r in sorted(cheapest.items())]
    return cases or [pytest.param(None, None, id="no-records")]


@pytest.fixture(scope="module")
def machine_fingerprint() -> str:
    return fingerprint.combine(fingerprint.compute())


def _strip(epochs: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in epochs]


@pytest.mark.parametrize("grid_name, key", _cases())
def test_a_recorded_run_reproduces(grid_name, key, machine_fingerprint):
    if grid_name is None:
        pytest.skip("no grid has records yet")
    record = next(r for r in experiments.load(experiments.results_path(grid_name))
                  if r["key"] == key)
    if record["fingerprint"] != machine_fingerprint:
        pytest.skip(f"recorded on arithmetic {record['fingerprint']} ({record['cpu']}), this "
                    f"machine computes {machine_fingerprint}: a re-run cannot reproduce its bits")
    spec = RunSpec(grid_name, record["task"], record["strategy"], record["seed"],
                   tuple(sorted(record["hparams"].items())))
    assert spec.key == key
    train = grids.registry()[grid_name].train
    from finetune_helpers.runtime import seed_everything

    seed_everything(spec.seed)  # as run_grid does before every run
    if record["wall_s"] < WHOLE_RUN_SECONDS:
        result = train(spec)
        assert _strip(result["val"]) == _strip(record["val"])
        assert result["best_epoch"] == record["best_epoch"]
        assert result["test"] == record["test"]
    else:
        result = train(spec, max_epochs=1, evaluate_test=False)
        assert _strip(result["val"][:1]) == _strip(record["val"][:1])
