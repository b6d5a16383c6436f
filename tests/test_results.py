"""Tables from stored runs: chosen rates only, paired differences, verdicts by the interval rule."""

import math

import pytest

from finetune_helpers import experiments, results


def record(strategy, seed, acc, lr=1e-3, values=(1e-3,), **extra):
    sweep = {"name": f"vision/{strategy}", "param": "lr", "values": list(values)}
    return {"grid": "g", "task": "vision", "strategy": strategy, "seed": seed,
            "key": f"vision/{strategy},lr={lr}/seed={seed}", "config": f"vision/{strategy},lr={lr}",
            "hparams": {"lr": lr}, "sweep": sweep, "val": [{"accuracy": acc}], "best_epoch": 0,
            "test": {"accuracy": acc}, "wall_s": 10.0, "train_s": 8.0, "train_memory_mib": 100.0,
            "epochs": 3, "trainable_params": 1000, **extra}


@pytest.fixture
def stored(tmp_path):
    path = tmp_path / "g.jsonl"
    recs = [record("full", s, a) for s, a in enumerate((0.70, 0.72, 0.74))]
    recs += [record("top_n", s, a) for s, a in enumerate((0.75, 0.78, 0.80))]     # +5.7, tight
    recs += [record("head", s, a) for s, a in enumerate((0.60, 0.80, 0.71))]      # noisy
    # A losing learning rate of "head": selection only, never in the table.
    recs.append(record("head", 0, 0.10, lr=1e-4, values=(1e-4, 1e-3)))
    recs.append(record("pixels_logreg", 0, 0.65, lr=0.1, values=(0.1,)))
    (tmp_path / "memory.json").write_text(
        '{"steps": 3, "tasks": {"g": {"full": {"train_memory_mib": 300.0}, '
        '"head": {"train_memory_mib": 90.0}}}}')
    for r in recs:
        if r["strategy"] == "head":
            r["sweep"]["values"] = [1e-4, 1e-3]
        experiments.append(path, r)
    return tmp_path


def test_rows_show_the_chosen_rate_and_paired_differences(stored):
    table = results.rows("g", results_dir=stored)
    by = {r.strategy: r for r in table}
    assert set(by) == {"full", "top_n", "head", "pixels_logreg"}
    assert by["head"].lr == 1e-3 and by["head"].accuracy.n == 3      # 1e-4 lost the selection
    assert by["top_n"].accuracy.mean == pytest.approx(77.666, abs=1e-2)
    d = by["top_n"].difference
    assert d.mean == pytest.approx(5.666, abs=1e-2) and d.excludes_zero
    assert by["top_n"].verdict("full") == "better than fine-tune all layers"
    assert by["head"].verdict("full") == "no difference detected at this precision"
    assert by["full"].verdict("full") == "reference"
    # Memory comes from memory.json (fresh processes), not the in-process record (100.0).
    assert by["full"].memory_mib == 300.0 and by["top_n"].memory_mib is None


def test_show_prints_each_grid_status_and_its_table_of_the_asked_strategies(stored, capsys):
    results.show(["head"], grids=("g", "absent"), results_dir=stored)
    out = capsys.readouterr().out
    assert out.startswith("g: 11 runs stored (not a grid of the book")
    assert "new head only" in out and "fine-tune all layers" in out and "raw pixels" in out
    assert "top layers" not in out
    assert "memory (MiB)" in out and "No stored runs yet for absent" in out


def test_frame_and_compare_say_only_what_the_interval_supports(stored):
    table = results.rows("g", results_dir=stored)
    df = results.frame(table)
    row = df.loc["fine-tune the top layers (微调顶层)"]
    assert row["test accuracy (%)"] == "77.7 ± 1.5 (n=3)"
    assert row["vs. reference (points, 95 % CI)"].startswith("+5.7 [")
    assert row["verdict"] == "better than fine-tune all layers"
    sentence = results.compare("g", "head", "full", results_dir=stored)
    assert sentence.startswith("new head only (transfer learning) vs fine-tune all layers: "
                               "no difference detected at this precision")
    assert results.compare("g", "top_n", "full", results_dir=stored).startswith(
        "fine-tune the top layers is better than fine-tune all layers: +5.7 points")
    with pytest.raises(KeyError, match="no reported results for \\['lora'\\]"):
        results.compare("g", "lora", "full", results_dir=stored)


def test_missing_results_name_the_command_that_makes_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="experiments run nothing"):
        results.rows("nothing", results_dir=tmp_path)


def test_plot_draws_every_seed(stored):
    import matplotlib
    matplotlib.use("Agg")
    ax = results.plot(results.rows("g", results_dir=stored), grid="g", results_dir=stored)
    points = sum(len(c.get_offsets()) for c in ax.collections if hasattr(c, "get_offsets"))
    assert points >= 9 and not math.isnan(points)


def test_lower_perplexity_is_the_better_verdict(tmp_path):
    for strategy, ppl in (("full", (20.0, 21.0, 22.0)), ("lora", (18.0, 18.5, 19.5))):
        for seed, value in enumerate(ppl):
            r = record(strategy, seed, 0.5)
            r["test"] = {"perplexity": value}
            experiments.append(tmp_path / "lm.jsonl", r)
    by = {r.strategy: r for r in results.rows("lm", metric="perplexity", results_dir=tmp_path)}
    assert by["lora"].accuracy.mean == pytest.approx(18.6667, abs=1e-3)   # not scaled by 100
    assert by["lora"].verdict("full") == "better than fine-tune all layers"
    sentence = results.compare("lm", "lora", "full", metric="perplexity", results_dir=tmp_path)
    assert sentence.startswith("LoRA r=8 is better than fine-tune all layers: -2.3 in test "
                               "perplexity")
    columns = list(results.frame(list(by.values()), metric="perplexity").columns)
    assert columns[:2] == ["test perplexity", "vs. reference (95 % CI)"]


def test_a_strategy_run_in_several_variants_gets_a_row_each(tmp_path):
    # poems_qwen runs freeze_bottom with k = 12 and k = 20: two rows, each named by its k.
    for k, ppl in ((None, (20.0, 21.0, 22.0)), (12, (21.0, 22.5, 23.0)), (20, (25.0, 26.0, 28.0))):
        for seed, value in enumerate(ppl):
            strategy = "full" if k is None else "freeze_bottom"
            r = record(strategy, seed, 0.5)
            if k is not None:
                r["sweep"]["name"] = f"vision/freeze_bottom,k={k}"
                r["config"] = f"vision/freeze_bottom,k={k},lr=0.001"
                r["key"] = f"{r['config']}/seed={seed}"
                r["hparams"]["k"] = k
            r["test"] = {"perplexity": value}
            experiments.append(tmp_path / "lm.jsonl", r)
    table = results.rows("lm", metric="perplexity", results_dir=tmp_path)
    labels = [r.label for r in table]
    assert labels == ["fine-tune all layers (微调所有层)", "freeze the bottom layers, k=12 (冻结底层)",
                      "freeze the bottom layers, k=20 (冻结底层)"]
    assert [r.accuracy.mean for r in table][1:] == [pytest.approx(22.1667, abs=1e-3),
                                                    pytest.approx(26.3333, abs=1e-3)]
    only_20 = results.rows("lm", metric="perplexity", strategies=["freeze_bottom,k=20"],
                           results_dir=tmp_path)
    assert [r.variant for r in only_20] == ["freeze_bottom,k=20"]
    assert results.compare("lm", "freeze_bottom,k=20", "freeze_bottom,k=12", metric="perplexity",
                           results_dir=tmp_path).startswith(
        "freeze the bottom layers, k=20 is worse than freeze the bottom layers, k=12: +4.2")
    by_k12 = results.rows("lm", metric="perplexity", reference="freeze_bottom,k=12",
                          results_dir=tmp_path)
    assert [r.verdict("freeze_bottom,k=12") for r in by_k12][1] == "reference"
    with pytest.raises(ValueError, match="several variants: freeze_bottom,k=12, freeze_bottom,k=20"):
        results.compare("lm", "freeze_bottom", "full", metric="perplexity", results_dir=tmp_path)


def test_samples_are_the_chosen_configurations_text_at_one_seed(tmp_path):
    for strategy, lr, values, val in (("full", 1e-3, (1e-4, 1e-3), -2.0),
                                      ("full", 1e-4, (1e-4, 1e-3), -3.0),   # loses the selection
                                      ("lora", 1e-3, (1e-3,), -2.5)):
        for seed in (0, 1):
            r = record(strategy, seed, 0.5, lr=lr, values=values)
            r["val"] = [{"neg_loss": val, "accuracy": 1 + val / 10}]  # "lm" is no grid of the book: chosen on accuracy
            r["test"] = {"perplexity": 20.0 + seed}
            r["sample"] = f"{strategy} lr={lr:g} seed={seed}"
            experiments.append(tmp_path / "lm.jsonl", r)
    assert results.samples("lm", results_dir=tmp_path) == {
        "fine-tune all layers (微调所有层)": "full lr=0.001 seed=0",
        "LoRA r=8 (低秩适配)": "lora lr=0.001 seed=0"}
    assert results.samples("lm", seed=1, results_dir=tmp_path)["LoRA r=8 (低秩适配)"].endswith("seed=1")
    assert results.samples("nothing", results_dir=tmp_path) == {}


def test_estimates_and_differences_format_as_the_tables_print_them():
    three = experiments.mean_se([84.0, 85.0, 84.8])
    assert results.format_estimate(three) == "84.6 ± 0.3 (n=3)"
    assert results.format_estimate(experiments.mean_se([61.0]), digits=2) == "61.00 (one run)"
    d = experiments.paired_by_seed({0: 27.4, 1: 27.3, 2: 27.5}, {0: 25.6, 1: 26.0, 2: 25.8})
    assert results.format_difference(d).startswith("+1.6 [+") and "]" in results.format_difference(d)
    assert results.format_difference(experiments.paired_by_seed({0: 2.0}, {0: 1.0})) == "+1.0 (one seed)"
    assert results.format_difference(None) == "—"


def test_a_deterministic_baseline_stands_for_every_seed(tmp_path):
    # The poem grids' baseline: the pretrained model, evaluated once (nothing random in it).
    for seed, value in enumerate((20.0, 21.0, 22.0)):
        r = record("full", seed, 0.5)
        r["test"] = {"perplexity": value}
        experiments.append(tmp_path / "lm.jsonl", r)
    base = {"grid": "lm", "task": "vision", "strategy": "pretrained", "seed": 0,
            "key": "vision/pretrained/seed=0", "config": "vision/pretrained", "hparams": {},
            "val": [{"perplexity": 30.0}], "best_epoch": 0, "test": {"perplexity": 30.0},
            "wall_s": 5.0, "train_s": 0.0, "epochs": 0, "trainable_params": 0,
            "deterministic": True}
    experiments.append(tmp_path / "lm.jsonl", base)
    by = {r.strategy: r for r in results.rows("lm", metric="perplexity", results_dir=tmp_path)}
    # Paired over full's three seeds against the one baseline value: 30 - (20, 21, 22).
    d = by["pretrained"].difference
    assert (d.n, d.mean) == (3, pytest.approx(9.0)) and d.excludes_zero
    assert by["pretrained"].verdict("full") == "worse than fine-tune all layers"
    assert results.compare("lm", "full", "pretrained", metric="perplexity",
                           results_dir=tmp_path).startswith(
        "fine-tune all layers is better than baseline: the pretrained model, not fine-tuned: -9.0")
    row = results.frame(list(by.values()), metric="perplexity").loc[
        "baseline: the pretrained model, not fine-tuned (基线：未微调的预训练模型)"]
    assert row["test perplexity"] == "30.0 (deterministic)"
    assert row["chosen lr (C)"] == "—" and row["epochs"] == "—"


def test_stored_memory_was_measured_on_the_strategies_the_records_report():
    # The book's memory.json against its grid records: a memory entry measured on a different
    # model (text_zh's LoRA once adapted nothing and trained the head's 770 parameters) would
    # put a wrong number in every table. Fix: python -m finetune_helpers.grids memory task/strategy
    import json

    memory = json.loads((experiments.RESULTS_DIR / "memory.json").read_text())
    checked = 0
    for task, by_strategy in memory["tasks"].items():
        reported = {row.strategy: row.trainable_params for row in results.rows(task)}
        for strategy, entry in by_strategy.items():
            if reported.get(strategy):
                assert entry["trainable_params"] == reported[strategy], (
                    f"memory.json's {task}/{strategy} trained {entry['trainable_params']:,} "
                    f"parameters, the records {reported[strategy]:,}: measure it again with "
                    f"python -m finetune_helpers.grids memory {task}/{strategy}")
                checked += 1
    assert checked >= 15  # vision 4, text 6, text_zh 5
