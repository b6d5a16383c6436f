"""Stored results cannot drift from the code: recorded runs are re-run and must match.

For every grid with records, each task's and strategy's cheapest recorded run is re-run. A run
that took under 30 seconds is re-run whole (its validation curve and test metrics must equal the
record). A longer one is re-run for its first :data:`DRIFT_STEPS` training steps when its record
keeps their losses (``first_losses``: records made since that field exists, and older ones given
them by ``scripts/backfill_first_losses.py`` from a verified re-run), else for its first epoch:
the losses, or the first epoch's validation accuracy and loss, must equal the record's. Either
way the same code path (data, seed, strategy, freezing, recipe, optimizer, loop) runs at a
fraction of the cost; the evaluation and stopping code is checked by the whole re-runs.
Records are bit-comparable only on a machine of the records' arithmetic class (the fingerprint
of :mod:`finetune_helpers.fingerprint`); elsewhere the test skips and says so.
"""

from __future__ import annotations

import pytest

from finetune_helpers import experiments, fingerprint, grids
from finetune_helpers.experiments import RunSpec

pytestmark = pytest.mark.slow

#: Recorded first losses a slow run is re-run for. The first loss checks the data order, the
#: seeding, the model and the loss; the second, the first update (which parameters train, at
#: what rate, with which optimizer). Records keep grids.FIRST_STEPS = 4; the last two add little
#: and cost up to ~25 s each when the 0.5 B language model trains whole on 2 cores.
DRIFT_STEPS = 2


def _cost(record: dict) -> tuple[bool, float]:
    """Sort key: records that need a whole first epoch re-run last, else the fastest first."""
    first_epoch = record["wall_s"] >= grids.WHOLE_RUN_SECONDS and not record.get("first_losses")
    return (first_epoch, record["wall_s"])


def _cases() -> list:
    cases = []
    for name in grids.registry():
        # Per task and strategy: a grid of several tasks (pretraining: vision and text) runs
        # different code for each.
        cheapest: dict[tuple[str, str], dict] = {}
        for record in experiments.load(experiments.results_path(name)):
            what = (record["task"], record["strategy"])
            best = cheapest.get(what)
            if best is None or _cost(record) < _cost(best):
                cheapest[what] = record
        cases += [pytest.param(name, r["key"],
                               id=f"{name}:{s}" if task == name else f"{name}:{task}/{s}")
                  for (task, s), r in sorted(cheapest.items())]
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
    if record["wall_s"] < grids.WHOLE_RUN_SECONDS:
        result = train(spec)
        assert _strip(result["val"]) == _strip(record["val"])
        assert result["best_epoch"] == record["best_epoch"]
        assert result["test"] == record["test"]
    elif record.get("first_losses"):
        steps = min(len(record["first_losses"]), DRIFT_STEPS)
        result = train(spec, max_epochs=1, evaluate_test=False, max_steps=steps)
        assert result["first_losses"] == record["first_losses"][:steps]
    else:
        result = train(spec, max_epochs=1, evaluate_test=False)
        assert _strip(result["val"][:1]) == _strip(record["val"][:1])


def test_a_few_steps_reproduce_the_first_steps_of_a_whole_run(monkeypatch):
    """The few-step re-run is the same computation as the start of the recorded run: stopping
    an epoch early changes neither the data order, the seeding nor the first updates."""
    import dataclasses

    from finetune_helpers.runtime import seed_everything

    small = dataclasses.replace(grids.VISION, n_train=6 * grids.VISION.batch_size, n_val=64,
                                n_test=64)
    monkeypatch.setattr(grids, "VISION", small)
    grids.vision_data.cache_clear()
    spec = RunSpec.make("vision", "vision", "full", 1, lr=3e-4)
    try:
        seed_everything(spec.seed)
        whole = grids.train_vision(spec, max_epochs=1, evaluate_test=False)
        seed_everything(spec.seed)
        few = grids.train_vision(spec, max_epochs=1, evaluate_test=False,
                                 max_steps=grids.FIRST_STEPS)
    finally:
        grids.vision_data.cache_clear()
    assert whole["steps"] == 6 and few["steps"] == grids.FIRST_STEPS
    assert len(whole["first_losses"]) == grids.FIRST_STEPS
    assert few["first_losses"] == whole["first_losses"]


def test_the_pretraining_grid_pairs_each_seed_and_refuses_unknown_names():
    grid = grids.registry()["pretraining"]
    keys = {r.key for r in grid.runs}
    for kind, seeds in grids.PRETRAINING_SEEDS.items():
        for seed in seeds:
            assert {f"{kind}/pretrained/seed={seed}", f"{kind}/scratch/seed={seed}"} <= keys
    assert len(keys) == 2 * sum(map(len, grids.PRETRAINING_SEEDS.values()))
    from finetune_helpers import tasks

    # Written out (3e-3, not 10 * 3e-4 = 0.0030000000000000005) but tied to the fine-tuning rate.
    assert grids.SCRATCH_LR["vision"] == pytest.approx(10 * tasks.VISION.lr)
    with pytest.raises(ValueError,
                       match="unknown pretraining strategy 'frozen'.*pretrained, scratch"):
        grids.train_pretraining(RunSpec.make("pretraining", "vision", "frozen", 0))
    with pytest.raises(ValueError, match="unknown pretraining task 'audio'.*vision, text"):
        grids.train_pretraining(RunSpec.make("pretraining", "audio", "scratch", 0))


@pytest.mark.parametrize("task", [name for name, t in grids.TEXT_TASKS.items()
                                  if "lora" in (t.strategies or grids.TEXT_STRATEGIES)])
def test_lora_adapts_w_q_and_w_v_of_every_layer_of_each_text_model(task):
    from paddlenlp.peft.lora import LoRALinear

    net = grids.text_model(task, 0)
    # One self-attention block per encoder layer (MiniLM's and XLM-R's names).
    n_layers = sum(1 for name, _ in net.named_sublayers()
                   if name.endswith(("self_attn", "attention.self")))
    assert n_layers in (6, 12)  # MiniLM-L6, multilingual-e5-small
    grids._lora(net)
    adapted = [layer for layer in net.sublayers() if isinstance(layer, LoRALinear)]
    assert len(adapted) == 2 * n_layers  # W_q and W_v in every layer
    trainable = {name for name, p in net.named_parameters() if not p.stop_gradient}
    head = {name for name, _ in net.named_parameters() if ".classifier." in f".{name}"}
    assert head and head <= trainable
    assert {n for n in trainable - head} == {n for n in trainable if ".lora_" in n}
    assert len(trainable - head) == 2 * len(adapted)  # A and B of each adapted matrix


def test_lora_refuses_a_model_whose_projections_it_cannot_find(monkeypatch):
    # What happened to text_zh's first LoRA runs: the names did not match, nothing was adapted.
    monkeypatch.setattr(grids, "TEXT_LORA_TARGETS", (r".*\.q_proj", r".*\.v_proj"))
    with pytest.raises(ValueError, match="LoRA matched no layer of .*TEXT_LORA_TARGETS"):
        grids._lora(grids.text_model("text_zh", 0))


def test_poem_lora_adapts_all_seven_projections_of_every_smollm2_layer():
    from paddlenlp.peft.lora import LoRALinear

    from finetune_helpers.zoo import smollm2

    model = smollm2.load_smollm2()
    net = grids.lora_model(model, grids.LM_LORA_TARGETS, "LM_LORA_TARGETS")
    adapted = [layer for layer in model.sublayers() if isinstance(layer, LoRALinear)]
    assert len(adapted) == 7 * model.config.num_hidden_layers  # q, k, v, o, gate, up, down
    trainable = {name: p for name, p in net.named_parameters() if not p.stop_gradient}
    assert trainable and all(".lora_" in name for name in trainable)
    # 2,442,240: the trainable count the poems_smollm2 records report for LoRA.
    assert sum(int(p.numel()) for p in trainable.values()) == 2_442_240


def test_poem_lora_refuses_a_model_whose_projections_it_cannot_find():
    from finetune_helpers.zoo import smollm2

    with pytest.raises(ValueError, match="LoRA matched no layer of .*grids.LM_LORA_TARGETS"):
        grids.lora_model(smollm2.load_smollm2(), (r".*\.query",), "LM_LORA_TARGETS")


def test_memory_update_names_unknown_entries_and_needs_a_file_to_update(tmp_path):
    with pytest.raises(ValueError,
                       match="no memory entry named text_zh/bitfit; known: .*text/bitfit"):
        grids.measure_memory(tmp_path / "memory.json", only=("text_zh/bitfit",))
    with pytest.raises(FileNotFoundError, match="nothing to update.*grids memory"):
        grids.measure_memory(tmp_path / "memory.json", only=("text_zh/lora",))
    assert not list(tmp_path.iterdir())  # nothing written
