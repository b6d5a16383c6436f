"""Experiments as data: resumable grids, one atomic record per run, seed-paired statistics."""

import json
import math

import pytest

from finetune_helpers import experiments
from finetune_helpers.experiments import Grid, RunSpec


def fake_grid(calls: list, fail_on: str | None = None) -> Grid:
    """Two strategies x two learning rates x three seeds; the 'accuracy' is made up but exact."""
    runs = [RunSpec.make("toy", "vision", strategy, seed, lr=lr)
            for strategy in ("full", "top_n") for lr in (1e-3, 1e-2) for seed in range(3)]

    def train(spec: RunSpec) -> dict:
        calls.append(spec.key)
        if spec.key == fail_on:
            raise RuntimeError("training diverged")
        bonus = 0.05 if spec.strategy == "top_n" else 0.0
        return {"test": {"accuracy": 0.6 + bonus + 0.01 * spec.seed},
                "val": [{"accuracy": 0.5}, {"accuracy": 0.55}], "steps": 40}

    return Grid("toy", runs, train, "a grid for the tests")


def test_run_grid_records_every_run_once_and_resumes(tmp_path):
    calls = []
    first = experiments.run_grid(fake_grid(calls), tmp_path, max_runs=5, progress=False)
    assert len(first) == 5 and len(calls) == 5
    rest = experiments.run_grid(fake_grid(calls), tmp_path, progress=False)
    assert len(rest) == 7 and len(calls) == 12          # only the missing runs ran
    assert experiments.run_grid(fake_grid(calls), tmp_path, progress=False) == []
    records = experiments.load(tmp_path / "toy.jsonl")
    assert len({r["key"] for r in records}) == 12 == len(records)


def test_record_holds_configuration_metrics_cost_and_provenance(tmp_path):
    record = experiments.run_grid(fake_grid([]), tmp_path, max_runs=1, progress=False)[0]
    assert record["config"] == "vision/full,lr=0.001" and record["seed"] == 0
    assert record["hparams"] == {"lr": 0.001} and record["steps"] == 40
    assert record["test"] == {"accuracy": 0.6} and len(record["val"]) == 2
    assert record["wall_s"] >= 0 and record["peak_rss_mib"] > 0
    for key in ("arithmetic", "threads", "fingerprint", "cpu", "isa", "versions", "commit"):
        assert key in record, key
    assert record["arithmetic"] == "reproducible" and record["threads"] == 2
    assert record["versions"]["paddlepaddle"]
    # The stored line is the record itself.
    assert json.loads((tmp_path / "toy.jsonl").read_text()) == record


def test_a_failing_run_leaves_no_record_and_no_temporary_file(tmp_path):
    grid = fake_grid([], fail_on="vision/full,lr=0.001/seed=1")
    with pytest.raises(RuntimeError, match="diverged"):
        experiments.run_grid(grid, tmp_path, progress=False)
    assert [r["seed"] for r in experiments.load(tmp_path / "toy.jsonl")] == [0]
    assert [p.name for p in tmp_path.iterdir()] == ["toy.jsonl"]


def test_a_hand_damaged_line_is_reported_with_its_place(tmp_path):
    experiments.run_grid(fake_grid([]), tmp_path, max_runs=2, progress=False)
    path = tmp_path / "toy.jsonl"
    path.write_text(path.read_text() + '{"grid": "toy", "key"\n')
    with pytest.raises(ValueError, match=r"toy\.jsonl, line 3: not a JSON record"):
        experiments.load(path)


def test_save_replaces_the_records_byte_for_byte_and_leaves_no_temporary_file(tmp_path):
    experiments.run_grid(fake_grid([]), tmp_path, max_runs=3, progress=False)
    path = tmp_path / "toy.jsonl"
    before = path.read_bytes()
    records = experiments.load(path)
    experiments.save(path, records)
    assert path.read_bytes() == before                   # unchanged records: the same bytes
    records[1]["first_losses"] = [2.3, 2.1]
    experiments.save(path, records)
    assert experiments.load(path) == records
    assert [p.name for p in tmp_path.iterdir()] == ["toy.jsonl"]


def test_grid_refuses_duplicate_runs_and_foreign_runs():
    spec = RunSpec.make("toy", "vision", "full", 0, lr=1e-3)
    with pytest.raises(ValueError, match="lists a run twice"):
        Grid("toy", [spec, spec], lambda s: {})
    with pytest.raises(ValueError, match="runs of other grids"):
        Grid("other", [spec], lambda s: {})


def test_mean_se_and_paired_difference_match_a_hand_computation(tmp_path):
    experiments.run_grid(fake_grid([]), tmp_path, progress=False)
    records = experiments.load(tmp_path / "toy.jsonl")
    full = experiments.mean_se(list(experiments.metric_by_seed(
        records, "vision/full,lr=0.001", "accuracy").values()))
    assert full.mean == pytest.approx(0.61) and full.n == 3
    assert full.se == pytest.approx(0.01 / math.sqrt(3))          # s.d. of 0.60, 0.61, 0.62
    assert full.high - full.mean == pytest.approx(4.302653 * full.se, rel=1e-6)  # t(2) 97.5 %
    diff = experiments.paired_difference(records, "vision/top_n,lr=0.001",
                                         "vision/full,lr=0.001", "accuracy")
    assert diff.mean == pytest.approx(0.05) and diff.se == pytest.approx(0, abs=1e-12)
    assert diff.excludes_zero
    noisy = experiments.mean_se([0.02, -0.01, 0.03])
    assert not noisy.excludes_zero


def test_pairing_needs_shared_seeds():
    records = [{"config": "a", "seed": 0, "test": {"accuracy": 1.0}},
               {"config": "b", "seed": 1, "test": {"accuracy": 1.0}}]
    with pytest.raises(ValueError, match="share no seed"):
        experiments.paired_difference(records, "a", "b", "accuracy")


def test_summary_last_line_counts_grids_configurations_and_seeds(tmp_path):
    experiments.run_grid(fake_grid([]), tmp_path, max_runs=8, progress=False)
    lines = experiments.summary(tmp_path, grids={})
    assert lines[0] == "toy: 8 runs, 3 configurations reported, 0 selection-only runs"
    assert lines[-1] == "grids: 1; configurations: 3; min seeds per configuration: 2"
    assert "  vision/full,lr=0.001: 3 seeds; accuracy 0.61 ± 0.0058" in lines
    assert experiments.summary(tmp_path / "empty", grids={})[-1] == (
        "grids: 0; configurations: 0; min seeds per configuration: 0")


def test_summary_lists_a_defined_grid_with_nothing_stored(tmp_path):
    lines = experiments.summary(tmp_path, grids={"swept": sweep_grid([])})
    # The sweep's three seed-0 runs are all that can be planned before a choice is made.
    assert lines == ["swept: 0 runs (nothing stored yet), 3 planned runs not yet recorded",
                     "grids: 0; configurations: 0; min seeds per configuration: 0"]


def sweep_grid(calls: list) -> Grid:
    """One sweep over three learning rates; validation peaks at lr=0.01, test follows seeds."""
    def train(spec: RunSpec) -> dict:
        calls.append(spec.key)
        lr = dict(spec.hparams)["lr"]
        val = {0.001: 0.5, 0.01: 0.7, 0.1: 0.6}[lr]
        return {"val": [{"accuracy": val - 0.1}, {"accuracy": val}], "best_epoch": 1,
                "test": {"accuracy": val + 0.01 * spec.seed}}

    sweep = experiments.Sweep.make("vision", "full", (0.001, 0.01, 0.1))
    return Grid("swept", [], train, sweeps=[sweep], seeds=(0, 1, 2))



def test_a_sweep_chooses_on_validation_then_replicates_only_the_chosen_value(tmp_path):
    calls = []
    grid = sweep_grid(calls)
    assert [s.key for s in experiments.pending(grid, tmp_path)] == [
        f"vision/full,lr={lr}/seed=0" for lr in (0.001, 0.01, 0.1)]  # replicates not yet known
    experiments.run_grid(grid, tmp_path, progress=False)
    assert calls == [f"vision/full,lr={lr}/seed=0" for lr in (0.001, 0.01, 0.1)] + [
        "vision/full,lr=0.01/seed=1", "vision/full,lr=0.01/seed=2"]
    records = experiments.load(tmp_path / "swept.jsonl")
    assert records[0]["sweep"] == {"name": "vision/full", "param": "lr",
                                   "values": [0.001, 0.01, 0.1], "extend": 1}
    assert experiments.pending(grid, tmp_path) == []
    lines = experiments.summary(tmp_path, grids={"swept": grid})
    assert lines[0] == ("swept: 5 runs, 1 configurations reported, 2 selection-only runs, "
                        "0 planned runs not yet recorded")
    assert lines[1].startswith("  vision/full,lr=0.01: 3 seeds; accuracy 0.71 ± 0.0058 "
                               "[lr chosen on validation from 0.001, 0.01, 0.1]")
    assert lines[-1] == "grids: 1; configurations: 1; min seeds per configuration: 3"


def test_a_choice_at_the_edge_grows_the_range_once_then_is_flagged(tmp_path):
    calls = []

    def train(spec: RunSpec) -> dict:
        calls.append(spec.key)
        lr = dict(spec.hparams)["lr"]
        return {"val": [{"accuracy": lr}], "best_epoch": 0, "test": {"accuracy": lr}}

    sweep = experiments.Sweep.make("vision", "head", (0.001, 0.003), extend=1)
    grid = Grid("grow", [], train, sweeps=[sweep], seeds=(0, 1))
    experiments.run_grid(grid, tmp_path, progress=False)
    # 0.003 won at the top edge: one larger value (same ratio, 1 digit) was tried, and won too.
    assert calls == ["vision/head,lr=0.001/seed=0", "vision/head,lr=0.003/seed=0",
                     "vision/head,lr=0.009/seed=0", "vision/head,lr=0.009/seed=1"]
    assert experiments.chosen_value(sweep, experiments.load(tmp_path / "grow.jsonl"),
                                    "accuracy") == 0.009
    lines = experiments.summary(tmp_path, grids={"grow": grid})
    assert lines[1].endswith("[lr chosen on validation from 0.001, 0.003, 0.009 "
                             "(at the edge of the range)]")


def test_sweep_values_must_ascend():
    with pytest.raises(ValueError, match="ascending order"):
        experiments.Sweep.make("vision", "full", (0.01, 0.001))
    assert experiments.Sweep.make("v", "f", (1e-4, 3e-4)).step(1e-4, -1) == 3e-5
    assert experiments.Sweep.make("v", "f", (1e-4, 3e-4)).step(1e-3, 1) == 3e-3


def test_a_deterministic_configuration_is_one_run_not_a_missing_replicate(tmp_path):
    def train(spec: RunSpec) -> dict:
        k = dict(spec.hparams)["k"]
        return {"val": [{"accuracy": 0.5}], "best_epoch": 0, "deterministic": k == 0,
                "test": {"accuracy": 0.7 + 0.01 * k + 0.001 * spec.seed}}

    runs = [RunSpec.make("shots", "text_zh", "fewshot", seed, k=k)
            for k in (0, 4) for seed in ((0,) if k == 0 else (0, 1, 2))]
    experiments.run_grid(Grid("shots", runs, train, seeds=(0, 1, 2)), tmp_path, progress=False)
    lines = experiments.summary(tmp_path, grids={})
    assert "  text_zh/fewshot,k=0: 1 run (deterministic: nothing to replicate); accuracy 0.7" in lines
    assert lines[-1] == "grids: 1; configurations: 2; min seeds per configuration: 3"


def test_paired_by_seed_uses_only_the_shared_seeds():
    d = experiments.paired_by_seed({0: 80.0, 1: 82.0, 2: 81.0}, {0: 78.0, 1: 79.0, 5: 1.0})
    assert (d.n, d.mean) == (2, 2.5)
    assert experiments.paired_by_seed({0: 1.0}, {1: 1.0}) is None


def test_each_poem_grid_plans_the_pretrained_model_as_its_baseline(tmp_path):
    from finetune_helpers import grids

    for name in grids.POEM_TASKS:
        planned = [s.key for s in experiments.pending(grids.registry()[name], tmp_path)]
        # One run: the untrained model has nothing a seed could change.
        assert [k for k in planned if "/pretrained" in k] == [f"{name}/pretrained/seed=0"]
