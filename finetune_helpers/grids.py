"""The book's experiment grids: each strategy on each task, in its model's regime, replicated.

One grid per task. A run trains one strategy at one learning rate from one seed and returns its
per-epoch validation metrics and its test metrics (:mod:`finetune_helpers.experiments` stores
them). The protocol, stated once here and on the pages that show the results:

* **Data.** Vision: Fashion-MNIST at 96 px (EfficientNet-Lite0's last stage then sees 3x3
  maps), 1,000 training images drawn by the seed, a fixed validation set of 500 carved from the
  official training split, a fixed test set of 2,000 from the official test split (balanced).
  Text: 1,000 / 500 / 1,500 from the corpus's de-duplicated train / validation / test splits
  (tweets with MiniLM; Chinese reviews with multilingual-e5-small), at most 64 tokens, the
  sentence vector the mean of the last hidden states over real tokens.
* **Seed.** Changes the training subset, the new head's initialisation, the data order and
  dropout. Validation and test sets never change.
* **Recipe.** AdamW (weight decay 0.01), the new head at 10x the body's rate, every BatchNorm
  in inference mode (:mod:`finetune_helpers.recipe`), batch 32.
* **Stopping.** Score the validation set after every epoch; stop after 2 epochs without a
  better validation accuracy (gradual schedules: not before every block trains), at most
  :attr:`Regime.max_epochs`; test the weights of the best epoch (the ``EarlyStopping`` rule).
* **Learning rate.** Chosen on validation from three values at seed 0, one more value tried
  when the best is at the edge of the range; seeds 1 and 2 run at the chosen value
  (:class:`finetune_helpers.experiments.Sweep`).
* **Caching.** When a strategy keeps the bottom blocks frozen for the whole run, their outputs
  are computed once per data set (frozen blocks in inference mode give the same output every
  epoch) and only the upper blocks run in training; the result is the same training, faster.
  (Text "head only" caches the encoder in inference mode, i.e. without its dropout: the
  usual linear probe. Other text strategies run their frozen layers in train mode.)

A fourth grid, ``fewshot_zh``, trains nothing: Qwen2.5-0.5B-Instruct classifies the Chinese
reviews from a prompt with k = 0, 4 or 16 demonstrations (drawn by the seed from that seed's
training subset), scored on a fixed 300-review subset of text_zh's test split; the text grids
record every test prediction, so the fine-tuned encoders are compared on the same reviews.

Two poem grids fine-tune causal LMs on Tang and Song poems (64 poems drawn by the seed, 64
tokens each; validation loss chooses the rate and stops training; test perplexity per token):
``poems_qwen`` (Qwen2.5-0.5B: full, freeze the embedding and the bottom 12 or 20 of 24 layers,
LoRA, QLoRA with the projections in NF4) and ``poems_smollm2`` (SmolLM2-135M: full, freeze
bottom 15 of 30, LoRA, and RMSNorm-gain tuning, since a Llama has no biases for BitFit).

Run a grid with ``python -m finetune_helpers.experiments run vision`` (resumable).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from finetune_helpers.experiments import Grid, RunSpec, Sweep

#: Compute frozen bottoms once and train only the upper blocks (the same training, faster).
#: :func:`measure_memory` turns it off to measure what a strategy costs without the cache.
CACHE_FROZEN = True
#: Learning rates every strategy chooses from (the head trains at 10x these).
LEARNING_RATES = (1e-4, 3e-4, 1e-3)
#: Inverse regularisation strengths the raw-pixel logistic regression chooses from.
LOGREG_C = (0.01, 0.1, 1.0)
SEEDS = (0, 1, 2)
#: Training losses of a run's first steps kept in its record: the drift test re-runs a slow
#: run for these steps only (tests/test_grids.py), a fraction of its first epoch's cost.
FIRST_STEPS = 4
#: The drift test re-runs a record faster than this (``wall_s``) whole, a slower one for its first
#: steps; ``scripts/backfill_first_losses.py`` gives first losses to the slower ones only.
WHOLE_RUN_SECONDS = 30.0


@dataclass(frozen=True)
class Regime:
    """Data sizes and the training budget of one task's grid."""

    n_train: int
    n_val: int
    n_test: int
    batch_size: int
    max_epochs: int
    patience: int
    image_size: int | None = None
    max_length: int | None = None


VISION = Regime(n_train=1000, n_val=500, n_test=2000, batch_size=32, max_epochs=8, patience=2,
                image_size=96)
#: EfficientNet-Lite0's blocks: stem, stage1..stage7, head_conv, fc (fc = the new head).
VISION_BLOCKS = 10

#: Vision strategies: name -> (what trains, first block index that ever trains).
VISION_STRATEGIES = {
    "head": "the new head only (linear probe on frozen features)",
    "top_n": "the head and the top n = 2 blocks (stage7, head_conv)",
    "freeze_bottom": "all but the bottom k = 4 blocks (stem..stage3 frozen)",
    "full": "every block",
    "gradual_ulmfit": "ULMFiT's top-down gradual unfreezing: one more block per epoch",
    "gradual_bottom_up": "chain-thaw, bottom-up: the head, then each block alone from the "
                         "stem upward, then all (the article's 逐层微调)",
    "lp_ft": "LP-FT (Kumar et al. 2022): the head alone first (early-stopped, on cached "
             "features, at LP_LR), then every block from that head",
}
#: The probe stage of LP-FT trains the head at this rate (x10, as always), early-stopped.
LP_LR = 1e-3


# ---------------------------------------------------------------------------------------------
# Vision: data, model pieces, one run.

@functools.lru_cache(maxsize=2)
def vision_data(seed: int) -> dict[str, Any]:
    """The train / validation / test image sets of ``seed`` (validation and test are fixed)."""
    from finetune_helpers import data

    r = VISION
    return data.fashion_mnist_splits(r.n_train, r.n_val, r.n_test, r.image_size, seed)


def _vision_prefix(net: Any, start: int) -> Any:
    """A function computing the output of blocks ``0..start-1`` (the frozen bottom)."""
    def run(x: Any) -> Any:
        if start >= VISION_BLOCKS - 1:  # everything below fc: the pooled features
            return net.forward_features(x)
        h = net.stem(x)
        for i, stage in enumerate(net.stages, 1):
            if i >= start:
                break
            h = stage(h)
        return h

    return run


def _vision_suffix(net: Any, start: int) -> Any:
    """A Layer running blocks ``start..`` of ``net`` on the prefix's output (shares weights)."""
    import paddle

    class Suffix(paddle.nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, h: Any) -> Any:
            n = self.net
            if start < VISION_BLOCKS - 1:
                for i, stage in enumerate(n.stages, 1):
                    if i >= start:
                        h = stage(h)
                h = paddle.flatten(n.pool(n.head(h)), 1)
            return n.fc(n.dropout(h))

    return Suffix()


def _cached_split(split: str, seed: int, start: int) -> Any:
    """Frozen-bottom outputs of one data set (validation/test: the same for every seed)."""
    return _frozen_outputs(split, seed if split == "train" else 0, start)  # one entry per set


@functools.lru_cache(maxsize=8)
def _frozen_outputs(split: str, data_seed: int, start: int) -> Any:
    from finetune_helpers import data, features, recipe, zoo

    images = vision_data(data_seed)[split]
    net = zoo.load_model("efficientnet_lite0", num_classes=10)
    recipe.batchnorm_inference(net)
    loader = data.make_loader(images, 64)
    feats, labels = features.extract_features(_vision_prefix(net, start), loader, model=net,
                                              progress=False)
    return features.FeatureDataset(feats, labels)


def _history_record(history: Any, stopper: Any) -> dict[str, Any]:
    val = [{"epoch": e["epoch"], "accuracy": e["eval_accuracy"], "loss": e["eval_loss"],
            "train_loss": e["train_loss"], "seconds": round(e["seconds"] + e["eval_seconds"], 2)}
           for e in history.epochs]
    memory = None
    if history.peak_rss_mib is not None and history.start_rss_mib is not None:
        memory = round(history.peak_rss_mib - history.start_rss_mib, 1)
    return {"val": val, "best_epoch": stopper.best_epoch, "epochs": len(val),
            "steps": int(sum(e["steps"] for e in history.epochs)),
            "first_losses": history.step_losses[:FIRST_STEPS],
            # Stopped by the epoch limit rather than by the validation rule.
            "hit_limit": stopper.stopped_epoch is None,
            # The training loop alone (epochs and their validation), without data preparation.
            "train_s": round(sum(e["seconds"] + e["eval_seconds"] for e in history.epochs), 1),
            # Memory the training loop added (activations, gradients, optimizer state): what
            # freezing saves. Approximate: freed memory of earlier runs in the process is reused.
            "train_memory_mib": memory}


def _first_steps(model: Any, train_loader: Any, optimizer: Any, callbacks: list[Any],
                 seed: int, max_steps: int, task: str = "classification") -> dict[str, Any]:
    """A step-limited check run (the drift test's): the first ``max_steps`` training steps of
    epoch one, exactly as the whole run takes them, and their losses. Nothing is validated or
    tested, so neither set is prepared: on 2 cores that is most of such a check's cost."""
    from finetune_helpers import train

    history = train.fit(model, train_loader, optimizer, 1, task=task, callbacks=callbacks,
                        seed=seed, progress=False, max_steps_per_epoch=max_steps)
    return {"steps": int(sum(e["steps"] for e in history.epochs)),
            "first_losses": history.step_losses[:FIRST_STEPS]}


def _probe_stage(net: Any, head_model: Any, sets: dict[str, Any], head: Any, seed: int,
                 regime: Regime, blocks: Any = None) -> dict[str, Any]:
    """LP-FT's first stage: the head alone on cached features, early-stopped; returns its
    validation curve (the weights of its best epoch stay in ``net``)."""
    from finetune_helpers import callbacks, data, recipe, strategies, train

    strategies.new_head_only(net, blocks=blocks)
    optimizer = recipe.optimizer(net, LP_LR, head)
    stopper = callbacks.EarlyStopping("eval_accuracy", patience=regime.patience)
    history = train.fit(head_model, data.make_loader(sets["train"], regime.batch_size,
                                                     shuffle=True, seed=seed),
                        optimizer, regime.max_epochs,
                        eval_loader=data.make_loader(sets["validation"], 64),
                        callbacks=[stopper], seed=seed, progress=False)
    return {"lp_" + k: v for k, v in _history_record(history, stopper).items()}


def train_vision(spec: RunSpec, max_epochs: int | None = None,
                 evaluate_test: bool = True, max_steps: int | None = None) -> dict[str, Any]:
    """Train one vision run of the grid and return its record's results.

    ``max_epochs`` overrides the epoch limit and ``evaluate_test=False`` skips the test set: the
    drift test re-runs a recorded run's first epoch that way. ``max_steps`` makes it a check run
    instead: the first ``max_steps`` steps, no validation, only ``steps`` and ``first_losses``
    returned (compared with ``record["first_losses"]``).
    """
    from finetune_helpers import callbacks, data, recipe, strategies, train, zoo

    if spec.strategy == "pixels_logreg":
        return _pixels_logreg(spec)
    hp = dict(spec.hparams)
    lr = float(hp["lr"])
    net = zoo.load_model("efficientnet_lite0", num_classes=10)  # head seeded by the run's seed
    recipe.batchnorm_inference(net)  # the recipe first: the strategies keep it
    extra: list[Any] = []
    min_epochs = 0
    start = 0  # the first block that ever trains; the ones below are computed once
    probe: dict[str, Any] = {}
    if spec.strategy == "full":
        strategies.fine_tune_all(net)
    elif spec.strategy == "lp_ft":
        last = VISION_BLOCKS - 1
        probe = _probe_stage(net, _vision_suffix(net, last),
                             {s: _cached_split(s, spec.seed, last) for s in ("train", "validation")},
                             net.fc, spec.seed, VISION)
        strategies.fine_tune_all(net)
    elif spec.strategy == "head":
        strategies.new_head_only(net)
        start = VISION_BLOCKS - 1
    elif spec.strategy == "top_n":
        strategies.train_top(net, int(hp["n"]))
        start = VISION_BLOCKS - 1 - int(hp["n"])
    elif spec.strategy == "freeze_bottom":
        strategies.freeze_bottom(net, int(hp["k"]))
        start = int(hp["k"])
    elif spec.strategy in ("gradual_ulmfit", "gradual_bottom_up"):
        mode = "ulmfit" if spec.strategy == "gradual_ulmfit" else "chain_thaw"
        schedule = strategies.GradualUnfreezing(net, mode=mode)
        extra.append(schedule)
        min_epochs = schedule.epochs_to_full
    else:
        raise ValueError(f"unknown vision strategy {spec.strategy!r}; known: "
                         f"{', '.join(VISION_STRATEGIES)}, pixels_logreg")
    optimizer = recipe.optimizer(net, lr, net.fc)
    r = VISION
    if max_epochs is None:
        max_epochs = max(r.max_epochs, min_epochs + r.patience)
    splits = ("train",) if max_steps else ("train", "validation", "test")
    if start and CACHE_FROZEN:
        model = _vision_suffix(net, start)
        sets = {s: _cached_split(s, spec.seed, start) for s in splits}
    else:
        model = net
        sets = vision_data(spec.seed)
    train_loader = data.make_loader(sets["train"], r.batch_size, shuffle=True, seed=spec.seed)
    if max_steps:
        return _first_steps(model, train_loader, optimizer, extra, spec.seed, max_steps)
    val_loader = data.make_loader(sets["validation"], 64)
    test_loader = data.make_loader(sets["test"], 64)
    stopper = callbacks.EarlyStopping("eval_accuracy", patience=r.patience,
                                      min_epochs=min_epochs)
    history = train.fit(model, train_loader, optimizer, max_epochs, eval_loader=val_loader,
                        callbacks=[*extra, stopper], seed=spec.seed, progress=False,
                        max_steps_per_epoch=max_steps)
    test = (train.evaluate(model, test_loader, progress=False) if evaluate_test
            else {"accuracy": None, "loss": None})
    trainable, total = strategies.count_parameters(net)
    return {**_history_record(history, stopper), **probe,
            "test": {"accuracy": test["accuracy"], "loss": test["loss"]},
            "trainable_params": trainable, "total_params": total,
            "cached_blocks": start}


def _logreg_record(arrays: dict[str, tuple[Any, Any]], C: float, max_iter: int
                   ) -> dict[str, Any]:
    """A baseline's record: logistic regression (inverse regularisation ``C``) fitted on
    ``arrays["train"]``, scored on validation (the choice of C) and test."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=C, max_iter=max_iter)
    start = time.perf_counter()
    clf.fit(*arrays["train"])
    seconds = time.perf_counter() - start
    val_acc = float(clf.score(*arrays["validation"]))
    return {"val": [{"epoch": 0, "accuracy": val_acc}], "best_epoch": 0, "epochs": 1,
            "steps": int(clf.n_iter_.max()), "train_s": round(seconds, 1),
            "test": {"accuracy": float(clf.score(*arrays["test"]))}}


def _pixels_logreg(spec: RunSpec) -> dict[str, Any]:
    """The linear baseline: logistic regression on the raw 28x28 pixels (0..1)."""
    import numpy as np

    from finetune_helpers import data

    r = VISION
    sets = data.fashion_mnist_splits(r.n_train, r.n_val, r.n_test, 28, spec.seed,
                                     normalize="unit", channels=1)
    arrays = {}
    for split, ds in sets.items():
        images, labels = ds.arrays()
        arrays[split] = (images.reshape(len(images), -1).astype(np.float64), labels)
    return _logreg_record(arrays, float(dict(spec.hparams)["C"]), max_iter=2000)


#: Strategies the vision grid runs. The bottom-up schedule runs on the text tasks only: the
#: source article's 逐层微调 is a language-model training loop, and at 8-13 epochs per run it
#: is the costliest vision strategy (the grids' compute budget; chapter 06 shows it on text).
VISION_GRID_STRATEGIES = ("head", "top_n", "freeze_bottom", "full", "gradual_ulmfit", "lp_ft")


def vision_grid() -> Grid:
    """Six strategies and the raw-pixel baseline on Fashion-MNIST at 96 px."""
    sweeps = [Sweep.make("vision", "pixels_logreg", LOGREG_C, param="C")]
    for name in VISION_GRID_STRATEGIES:
        extra = {"n": 2} if name == "top_n" else {"k": 4} if name == "freeze_bottom" else {}
        sweeps.append(Sweep.make("vision", name, LEARNING_RATES, **extra))
    return Grid("vision", [], train_vision, "EfficientNet-Lite0 -> Fashion-MNIST, 96 px",
                sweeps=sweeps, seeds=SEEDS)


# ---------------------------------------------------------------------------------------------
# Text: MiniLM on English tweets (and, with the same code, a Chinese encoder on reviews).

TEXT = Regime(n_train=1000, n_val=500, n_test=1500, batch_size=32, max_epochs=6, patience=2,
              max_length=64)
#: LoRA and BitFit train few parameters and choose from higher rates.
PEFT_LEARNING_RATES = (3e-4, 1e-3, 3e-3)


@dataclass(frozen=True)
class TextTask:
    """A text classification task of the grids: its model, its labelled corpus, its strategies.

    ``k``: blocks frozen by ``freeze_bottom`` — the embeddings and the bottom half of the
    encoder's layers, as in the source article's method 3 (``i < 6`` of 12 layers).
    ``strategies``: the subset of :data:`TEXT_STRATEGIES` this task runs (``None``: all).
    """

    model: str
    dataset: str  # a function of finetune_helpers.data: tweets, chinese_reviews
    num_classes: int
    k: int
    strategies: tuple[str, ...] | None = None


TEXT_TASKS = {
    "text": TextTask("minilm_l6", "tweets", 3, k=4),
    # multilingual-e5-small has 12 layers (twice MiniLM's) and 2.3x its cost per step, so the
    # Chinese grid runs the five strategies the chapters compare on it (not the two gradual
    # schedules and BitFit, which the English grid covers): the compute budget of the grids.
    "text_zh": TextTask("multilingual_e5_small", "chinese_reviews", 2, k=7,
                        strategies=("head", "top_n", "freeze_bottom", "full", "lora")),
}

#: Text strategies (blocks: embeddings, encoder.layers.0..5, classifier).
TEXT_STRATEGIES = {
    "head": "the new head only (linear probe on frozen mean-pooled vectors)",
    "top_n": "the head and the top n = 2 Transformer layers",
    "freeze_bottom": "all but the bottom k blocks (the embeddings and the bottom half of the "
                     "layers frozen)",
    "full": "every block",
    "gradual_ulmfit": "ULMFiT's top-down gradual unfreezing: one more block per epoch",
    "gradual_bottom_up": "chain-thaw, bottom-up: the head, then each block alone from the "
                         "embeddings upward, then all (the article's 逐层微调)",
    "lora": "LoRA (r = 8, alpha = 16) on W_q and W_v, and the head",
    "bitfit": "BitFit: every bias of the encoder, and the head",
    "lp_ft": VISION_STRATEGIES["lp_ft"],
}


@functools.lru_cache(maxsize=2)
def text_data(task: str, seed: int) -> dict[str, Any]:
    """Train (``seed``'s subset) / validation / test sets of a text task (the last two fixed)."""
    from finetune_helpers import data

    load = getattr(data, TEXT_TASKS[task].dataset)
    r = TEXT
    return {"train": load("train", n=r.n_train, seed=seed),
            "validation": load("validation", n=r.n_val, seed=0),
            "test": load("test", n=r.n_test, seed=0)}


@functools.lru_cache(maxsize=2)
def _tokenizer(model: str) -> Any:
    from finetune_helpers import zoo

    return zoo.load_tokenizer(model)


def text_model(task: str, seed: int) -> Any:
    """The pretrained encoder of ``task`` with a new mean-pooling head seeded by ``seed``."""
    from finetune_helpers import zoo
    from finetune_helpers.heads import MeanPoolClassifier

    t = TEXT_TASKS[task]
    return MeanPoolClassifier(zoo.load_model(t.model), t.num_classes, seed=seed)


def _pooled_split(task: str, split: str, seed: int) -> Any:
    """Mean-pooled vectors of the frozen encoder (inference mode) for one data set."""
    return _pooled(task, split, seed if split == "train" else 0)  # one cache entry per set


@functools.lru_cache(maxsize=8)
def _pooled(task: str, split: str, data_seed: int) -> Any:
    from finetune_helpers import data, features

    texts = text_data(task, data_seed)[split]
    model = text_model(task, 0)
    loader = data.make_loader(texts, 64, collate_fn=data.TextCollate(
        _tokenizer(TEXT_TASKS[task].model), TEXT.max_length))
    feats, labels = features.extract_features(model.pooled, loader, progress=False)
    return features.FeatureDataset(feats, labels)


#: W_q and W_v under the names of PaddleNLP's encoders: ``q_proj``/``v_proj`` (BERT-style
#: MiniLM) and ``attention.self.query``/``value`` (XLM-RoBERTa, multilingual-e5).
TEXT_LORA_TARGETS = (r".*\.q_proj", r".*\.v_proj", r".*\.self\.query", r".*\.self\.value")


def lora_model(model: Any, targets: tuple[str, ...], targets_name: str,
               trainable_modules: list[str] | None = None) -> Any:
    """Wrap ``model`` in PaddleNLP's ``LoRAModel`` (r = 8, alpha = 16) on the layers whose names
    match ``targets``; raise if it adapted none.

    ``LoRAModel`` silently adapts nothing when no layer name matches; the run would then train
    only ``trainable_modules`` under LoRA's name (it happened: text_zh's first LoRA runs).
    ``targets_name`` names the constant of this module that holds ``targets``, for the error."""
    from paddlenlp.peft import LoRAConfig, LoRAModel

    config = LoRAConfig(target_modules=list(targets), r=8, lora_alpha=16,
                        trainable_modules=trainable_modules, tensor_parallel_degree=1)
    wrapped = LoRAModel(model, config)
    if not any(hasattr(layer, "lora_A") for layer in model.sublayers()):
        raise ValueError(f"LoRA matched no layer of {type(model).__name__}: none of its "
                         f"sublayer names matches {targets}; add the names of the projections "
                         f"to adapt to grids.{targets_name}")
    return wrapped


def _lora(model: Any) -> Any:
    """LoRA on W_q and W_v of a text model; the adapters and the classifier train."""
    return lora_model(model, TEXT_LORA_TARGETS, "TEXT_LORA_TARGETS",
                      trainable_modules=[r"classifier\..*"])


def train_text(spec: RunSpec, max_epochs: int | None = None,
               evaluate_test: bool = True, max_steps: int | None = None) -> dict[str, Any]:
    """Train one text run of the grid and return its record's results (``max_epochs``,
    ``evaluate_test`` and ``max_steps``: as in :func:`train_vision`)."""
    from finetune_helpers import callbacks, data, heads, recipe, strategies, train

    if spec.strategy == "probe_logreg":
        return _probe_logreg(spec)
    hp = dict(spec.hparams)
    lr = float(hp["lr"])
    r = TEXT
    net = text_model(spec.task, spec.seed)
    blocks = net.blocks()
    model: Any = net
    extra: list[Any] = []
    min_epochs = 0
    cached = False
    probe: dict[str, Any] = {}
    if spec.strategy == "full":
        strategies.train_blocks(net, [n for n, _ in blocks], blocks=blocks)
    elif spec.strategy == "lp_ft":
        probe = _probe_stage(net, heads.LinearHead(net),
                             {s: _pooled_split(spec.task, s, spec.seed)
                              for s in ("train", "validation")},
                             net.classifier, spec.seed, TEXT, blocks=blocks)
        strategies.train_blocks(net, [n for n, _ in blocks], blocks=blocks)
    elif spec.strategy == "head":
        strategies.new_head_only(net, blocks=blocks)
        if CACHE_FROZEN:
            model, cached = heads.LinearHead(net), True
    elif spec.strategy == "top_n":
        strategies.train_top(net, int(hp["n"]), blocks=blocks)
    elif spec.strategy == "freeze_bottom":
        strategies.freeze_bottom(net, int(hp["k"]), blocks=blocks)
    elif spec.strategy in ("gradual_ulmfit", "gradual_bottom_up"):
        mode = "ulmfit" if spec.strategy == "gradual_ulmfit" else "chain_thaw"
        schedule = strategies.GradualUnfreezing(net, mode=mode, blocks=blocks)
        extra.append(schedule)
        min_epochs = schedule.epochs_to_full
    elif spec.strategy == "lora":
        model = _lora(net)  # marks only the adapters and the classifier as trainable
    elif spec.strategy == "bitfit":
        head_ids = {id(p) for p in net.classifier.parameters()}
        for name, p in net.named_parameters():
            p.stop_gradient = not (name.endswith(".bias") or id(p) in head_ids)
        for p in net.encoder.pooler.parameters() if hasattr(net.encoder, "pooler") else []:
            p.stop_gradient = True  # unused by mean pooling
    else:
        raise ValueError(f"unknown text strategy {spec.strategy!r}; known: "
                         f"{', '.join(TEXT_STRATEGIES)}, probe_logreg")
    optimizer = recipe.optimizer(model, lr, net.classifier)
    if cached:
        splits = ("train",) if max_steps else ("train", "validation", "test")
        sets = {s: _pooled_split(spec.task, s, spec.seed) for s in splits}
        collate = None
    else:
        sets = text_data(spec.task, spec.seed)
        collate = data.TextCollate(_tokenizer(TEXT_TASKS[spec.task].model), r.max_length)
    train_loader = data.make_loader(sets["train"], r.batch_size, shuffle=True, seed=spec.seed,
                                    collate_fn=collate)
    if max_steps:
        return _first_steps(model, train_loader, optimizer, extra, spec.seed, max_steps)
    val_loader = data.make_loader(sets["validation"], 64, collate_fn=collate)
    test_loader = data.make_loader(sets["test"], 64, collate_fn=collate)
    stopper = callbacks.EarlyStopping("eval_accuracy", patience=r.patience,
                                      min_epochs=min_epochs)
    if max_epochs is None:
        max_epochs = max(r.max_epochs, min_epochs + r.patience)
    history = train.fit(model, train_loader, optimizer, max_epochs, eval_loader=val_loader,
                        callbacks=[*extra, stopper], seed=spec.seed, progress=False,
                        max_steps_per_epoch=max_steps)
    test = (train.evaluate(model, test_loader, progress=False) if evaluate_test
            else {"accuracy": None, "loss": None})
    trainable, total = strategies.count_parameters(net)
    result = {**_history_record(history, stopper), **probe,
              "test": {"accuracy": test["accuracy"], "loss": test["loss"]},
              "trainable_params": trainable, "total_params": total, "cached_blocks": int(cached)}
    if evaluate_test:
        # The class predicted for each test example (the fixed test split, in order): lets
        # another method be compared with this run on any subset of the same examples
        # (chapter 12 scores few-shot prompting on a 300-review subset: ~1-2 s per review).
        logits = train.predict(model, test_loader, progress=False)
        result["test_predictions"] = logits.argmax(axis=-1).astype(int).tolist()
    if spec.strategy == "lora":
        result["lora_delta_norm"] = _lora_delta_norm(net)
    return result


def _lora_delta_norm(net: Any) -> float:
    """Frobenius norm of the summed LoRA updates (alpha / r) A B over all adapted matrices:
    zero at the start (B = 0), so it shows whether the adapters learned at all."""
    import paddle

    total = 0.0
    for layer in net.sublayers():
        if hasattr(layer, "lora_A") and hasattr(layer, "lora_B"):
            delta = paddle.matmul(layer.lora_A, layer.lora_B) * layer.scaling
            total += float((delta * delta).sum())
    return round(total ** 0.5, 6)


def _probe_logreg(spec: RunSpec) -> dict[str, Any]:
    """The linear baseline: logistic regression on the frozen encoder's mean-pooled vectors."""
    arrays = {s: (ds.features.astype("float64"), ds.labels)
              for s in ("train", "validation", "test")
              for ds in [_pooled_split(spec.task, s, spec.seed)]}
    return _logreg_record(arrays, float(dict(spec.hparams)["C"]), max_iter=5000)


#: Inverse regularisation strengths of the frozen-probe logistic regression.
PROBE_C = (0.1, 1.0, 10.0)


def text_grid(task: str = "text") -> Grid:
    """Eight strategies and the frozen mean-pooled probe on one text task."""
    t = TEXT_TASKS[task]
    sweeps = [Sweep.make(task, "probe_logreg", PROBE_C, param="C")]
    for name in t.strategies or TEXT_STRATEGIES:
        extra = {"n": 2} if name == "top_n" else {"k": t.k} if name == "freeze_bottom" else {}
        rates = PEFT_LEARNING_RATES if name in ("lora", "bitfit") else LEARNING_RATES
        sweeps.append(Sweep.make(task, name, rates, **extra))
    return Grid(task, [], train_text, f"{t.model} -> {t.dataset}, mean pooling",
                sweeps=sweeps, seeds=SEEDS)


# ---------------------------------------------------------------------------------------------
# Few-shot prompting of a Chinese instruct LM on the same reviews (no fine-tuning at all).

#: Reviews of text_zh's fixed test split that few-shot prompting is scored on: a stratified,
#: seed-0 subset. Each review costs ~2 s of Qwen2.5-0.5B on 2 cores (the whole split would take
#: ~50 min per run); the fine-tuned encoders' recorded test predictions give their accuracy on
#: exactly these reviews (chapter 12 pairs them by seed).
FEWSHOT_N_TEST = 300
#: Demonstrations per prompt; k = 0 draws none, so it runs at one seed only.
FEWSHOT_K = (0, 4, 16)
#: The drift test's cheap check: the accuracy on the first reviews of the subset.
FEWSHOT_CHECK = 16


def fewshot_subset() -> list[int]:
    """Positions in text_zh's test split (``text_data("text_zh", 0)["test"]``) of the reviews
    that few-shot prompting is scored on, in the order they are scored."""
    from finetune_helpers import data

    test = text_data("text_zh", 0)["test"]
    return [int(i) for i in data.subset_indices(test.labels, FEWSHOT_N_TEST, seed=0,
                                                 what="the text_zh test split")]


@functools.lru_cache(maxsize=1)
def _qwen() -> tuple[Any, Any]:
    from finetune_helpers.zoo import qwen2

    return qwen2.load_qwen2(), qwen2.load_qwen2_tokenizer()


def train_fewshot(spec: RunSpec, max_epochs: int | None = None,
                  evaluate_test: bool = True, max_steps: int | None = None) -> dict[str, Any]:
    """Prompt Qwen2.5-0.5B-Instruct with ``k`` demonstrations drawn by the seed from that seed's
    training subset, and score it on :func:`fewshot_subset` (:mod:`finetune_helpers.fewshot`).

    Nothing trains; the record keeps the grids' shape: ``val`` holds the accuracy on the first
    :data:`FEWSHOT_CHECK` reviews (what the drift test re-runs: ``evaluate_test=False``), ``test``
    the accuracy on all of them, plain and after contextual calibration.
    (``max_epochs`` and ``max_steps`` are accepted for the grids' common signature and unused.)
    """
    import numpy as np

    from finetune_helpers import data, fewshot

    k = int(dict(spec.hparams)["k"])
    model, tokenizer = _qwen()
    test = text_data("text_zh", 0)["test"]
    idx = fewshot_subset()
    if not evaluate_test:
        idx = idx[:FEWSHOT_CHECK]
    subset = data.TextDataset([test.texts[i] for i in idx], test.labels[idx], test.label_names)
    demos = fewshot.select_examples(text_data("text_zh", spec.seed)["train"], k, seed=spec.seed,
                                    max_chars=fewshot.MAX_QUERY_CHARS)
    start = time.perf_counter()
    out = fewshot.evaluate_fewshot(model, tokenizer, subset, demos, progress=False)
    seconds = time.perf_counter() - start
    check = float(np.mean(np.asarray(out["predictions"][:FEWSHOT_CHECK])
                          == subset.labels[:FEWSHOT_CHECK]))
    result: dict[str, Any] = {"val": [{"epoch": 0, "accuracy": check}], "best_epoch": 0,
                              "epochs": 0, "steps": 0, "train_s": 0.0,
                              "deterministic": k == 0}  # no demonstrations: nothing to draw
    if evaluate_test:
        result.update({
            "test": {"accuracy": out["accuracy"],
                     "accuracy_calibrated": out["accuracy_calibrated"]},
            "test_subset": idx, "test_predictions": out["predictions"],
            "test_predictions_calibrated": out["predictions_calibrated"],
            "seconds_per_example": round(out["seconds_per_example"], 3),
            "prefix_seconds": round(out["prefix_seconds"], 2),
            "prefix_tokens": out["prefix_tokens"],
            "mean_query_tokens": round(out["mean_query_tokens"], 1),
            "n_truncated": out["n_truncated"], "label_mass": round(out["label_mass"], 4),
            "score_s": round(seconds, 1), "demonstrations": [list(d) for d in demos]})
    return result


def fewshot_grid() -> Grid:
    """Qwen2.5-0.5B-Instruct prompted with k = 0, 4, 16 reviews on a subset of text_zh's test."""
    runs = [RunSpec.make("fewshot_zh", "text_zh", "fewshot", seed, k=k)
            for k in FEWSHOT_K for seed in (SEEDS[:1] if k == 0 else SEEDS)]
    return Grid("fewshot_zh", runs, train_fewshot,
                f"qwen2_5_0_5b prompted with k reviews -> chinese_reviews, "
                f"{FEWSHOT_N_TEST} test reviews", seeds=SEEDS)


# ---------------------------------------------------------------------------------------------
# Causal language models on Chinese poems: the article's method 3 (冻结底层) as it meant it.

@dataclass(frozen=True)
class PoemTask:
    """A causal LM fine-tuned on poems, and the strategies its grid compares."""

    model: str                     # zoo name
    strategies: tuple[str, ...]
    k_values: tuple[int, ...]      # decoder layers freeze_bottom freezes (the embedding too)


#: LoRA's adapters on every projection of every decoder layer (PaddleNLP's Qwen2/Llama names),
#: rank 8, alpha 16; QLoRA keeps those projections in NF4 under the same adapters.
LM_LORA_TARGETS = (r".*\.(q|k|v|o)_proj", r".*\.(gate|up|down)_proj")
POEM_TASKS = {
    # SmolLM2 (Llama layout) has no bias vectors at all, so BitFit trains nothing there; the
    # bias-free analogue is tuning the RMSNorm gains only ("norm_tuning", Zhao et al. 2024).
    "poems_smollm2": PoemTask("smollm2_135m", ("full", "freeze_bottom", "lora", "norm_tuning"),
                              (15,)),
    "poems_qwen": PoemTask("qwen2_5_0_5b", ("full", "freeze_bottom", "lora", "qlora"), (12, 20)),
}
#: 64 training poems drawn by the seed from the training pool, cut to 64 tokens (a quatrain and
#: more for Qwen at ~1.1 tokens per character); at most 3 epochs, stop after 1 without a lower
#: validation loss. A full Qwen2.5-0.5B step of 8 poems takes ~15 s on 2 cores.
POEMS = Regime(n_train=64, n_val=41, n_test=41, batch_size=8, max_epochs=3, patience=1,
               max_length=64)
#: Full fine-tuning and freezing move pretrained weights: smaller rates than adapters.
POEM_LEARNING_RATES = (1e-5, 3e-5, 1e-4)
POEM_ADAPTER_LEARNING_RATES = (1e-4, 3e-4, 1e-3)
#: The greedy continuation each run records after training (the start of 登鹳雀楼).
POEM_PROMPT = "白日依山尽，"


def poem_data(seed: int) -> dict[str, list[str]]:
    """Train (``seed``'s 64 poems) / validation / test poems; the held-out 20 % of the Tang and
    Song collections is fixed and split in two."""
    import numpy as np

    from finetune_helpers import data

    pool, held = data.chinese_poem_splits(seed=0, val_fraction=0.2)
    rng = np.random.default_rng(seed)
    train = [pool[i] for i in sorted(rng.choice(len(pool), POEMS.n_train, replace=False))]
    return {"train": train, "validation": held[:POEMS.n_val],
            "test": held[POEMS.n_val:POEMS.n_val + POEMS.n_test]}


def _poem_model(task: str) -> tuple[Any, Any, Any]:
    """(model, tokenizer, zoo module) of a poem task, freshly loaded (runs change weights)."""
    from finetune_helpers.zoo import qwen2, smollm2

    if POEM_TASKS[task].model == "qwen2_5_0_5b":
        return qwen2.load_qwen2(), qwen2.load_qwen2_tokenizer(), qwen2
    return smollm2.load_smollm2(), smollm2.load_smollm2_tokenizer(), smollm2


def train_poems(spec: RunSpec, max_epochs: int | None = None,
                evaluate_test: bool = True, max_steps: int | None = None) -> dict[str, Any]:
    """Fine-tune a causal LM on poems with one strategy; validation and test perplexity per
    token, plus the greedy continuation of :data:`POEM_PROMPT` after training (``max_epochs``,
    ``evaluate_test`` and ``max_steps``: as in :func:`train_vision`).

    Strategy ``pretrained`` is the baseline: the model as it comes, evaluated on the same
    validation and test poems without a training step (deterministic: one run, seed 0)."""
    import paddle

    from finetune_helpers import callbacks, data, quant, strategies, train

    hp = dict(spec.hparams)
    model, tokenizer, zoo_module = _poem_model(spec.task)
    if spec.strategy == "pretrained":
        return _evaluate_pretrained(model, tokenizer, zoo_module, evaluate_test)
    lr = float(hp["lr"])
    net, extra = model, {}
    if spec.strategy == "full":
        strategies.fine_tune_all(model)
    elif spec.strategy == "freeze_bottom":
        strategies.fine_tune_all(model)
        strategies.freeze_bottom(model, int(hp["k"]) + 1)  # block 0 is the embedding
    elif spec.strategy in ("lora", "qlora"):
        paddle.seed(spec.seed)  # the adapters' A matrices
        # freezes everything but the adapters
        net = lora_model(model, LM_LORA_TARGETS, "LM_LORA_TARGETS")
        if spec.strategy == "qlora":
            report = quant.quantize_model(net, list(LM_LORA_TARGETS))
            extra["base_projection_mib"] = {"float32": round(report.bytes_before / 2**20, 1),
                                            "nf4": round(report.bytes_after / 2**20, 1)}
    elif spec.strategy == "norm_tuning":
        for name, p in model.named_parameters():
            p.stop_gradient = "norm" not in name
    else:
        raise ValueError(f"unknown poem strategy {spec.strategy!r}; known: "
                         f"{', '.join(POEM_TASKS[spec.task].strategies)}")
    sets = poem_data(spec.seed)
    collate = zoo_module.lm_collate(tokenizer, POEMS.max_length)
    train_loader = data.make_loader(sets["train"], POEMS.batch_size, shuffle=True,
                                    seed=spec.seed, collate_fn=collate)
    val_loader = data.make_loader(sets["validation"], 16, collate_fn=collate)
    test_loader = data.make_loader(sets["test"], 16, collate_fn=collate)
    trainable = [p for p in net.parameters() if not p.stop_gradient]
    optimizer = paddle.optimizer.AdamW(learning_rate=lr, parameters=trainable,
                                       weight_decay=0.01)
    if max_steps:
        return _first_steps(net, train_loader, optimizer, [], spec.seed, max_steps, task="lm")
    stopper = callbacks.EarlyStopping("eval_loss", mode="min", patience=POEMS.patience)
    history = train.fit(net, train_loader, optimizer, max_epochs or POEMS.max_epochs,
                        eval_loader=val_loader, task="lm", callbacks=[stopper],
                        seed=spec.seed, progress=False, max_steps_per_epoch=max_steps)
    val = [{"epoch": e["epoch"], "loss": e["eval_loss"], "neg_loss": -e["eval_loss"],
            "perplexity": e["eval_perplexity"], "train_loss": e["train_loss"],
            "seconds": round(e["seconds"] + e["eval_seconds"], 2)} for e in history.epochs]
    n_trainable = sum(int(p.numel()) for p in trainable)
    result: dict[str, Any] = {
        "val": val, "best_epoch": stopper.best_epoch, "epochs": len(val),
        "steps": int(sum(e["steps"] for e in history.epochs)),
        "first_losses": history.step_losses[:FIRST_STEPS],
        "hit_limit": stopper.stopped_epoch is None,
        "train_s": round(sum(e["seconds"] + e["eval_seconds"] for e in history.epochs), 1),
        "trainable_params": n_trainable, **extra}
    if evaluate_test:
        test = train.evaluate(net, test_loader, task="lm", progress=False)
        result["test"] = {"loss": test["loss"], "perplexity": test["perplexity"]}
        text = zoo_module.generate_greedy(model, tokenizer, POEM_PROMPT, max_new_tokens=24,
                                          chat=False)
        result["sample"] = text.rstrip("\ufffd")
    return result


def _evaluate_pretrained(model: Any, tokenizer: Any, zoo_module: Any,
                         evaluate_test: bool) -> dict[str, Any]:
    """The poem grids' baseline record: the untrained model on the same validation and test
    poems (seed 0's sets; only the training poems depend on the seed)."""
    from finetune_helpers import data, train

    sets = poem_data(0)
    collate = zoo_module.lm_collate(tokenizer, POEMS.max_length)
    start = time.perf_counter()
    val = train.evaluate(model, data.make_loader(sets["validation"], 16, collate_fn=collate),
                         task="lm", progress=False)
    result: dict[str, Any] = {
        "val": [{"epoch": 0, "loss": val["loss"], "neg_loss": -val["loss"],
                 "perplexity": val["perplexity"],
                 "seconds": round(time.perf_counter() - start, 2)}],
        "best_epoch": 0, "epochs": 0, "steps": 0, "hit_limit": False, "train_s": 0.0,
        "trainable_params": 0, "deterministic": True}  # nothing trains, nothing is drawn
    if evaluate_test:
        test = train.evaluate(model, data.make_loader(sets["test"], 16, collate_fn=collate),
                              task="lm", progress=False)
        result["test"] = {"loss": test["loss"], "perplexity": test["perplexity"]}
        text = zoo_module.generate_greedy(model, tokenizer, POEM_PROMPT, max_new_tokens=24,
                                          chat=False)
        result["sample"] = text.rstrip("\ufffd")
    return result


def poem_grid(task: str) -> Grid:
    """The strategies of a poem task, each with its rate chosen on validation loss."""
    t = POEM_TASKS[task]
    sweeps = []
    for name in t.strategies:
        rates = POEM_ADAPTER_LEARNING_RATES if name in ("lora", "qlora", "norm_tuning") \
            else POEM_LEARNING_RATES
        for extra in ([{"k": k} for k in t.k_values] if name == "freeze_bottom" else [{}]):
            sweeps.append(Sweep.make(task, name, rates, **extra))
    # The baseline: the pretrained model without training, one deterministic run.
    baseline = [RunSpec.make(task, task, "pretrained", SEEDS[0])]
    return Grid(task, baseline, train_poems, f"{t.model} -> Tang and Song poems, {POEMS.n_train} "
                f"poems of {POEMS.max_length} tokens", sweeps=sweeps, seeds=SEEDS,
                select="neg_loss")


# ---------------------------------------------------------------------------------------------
# Pretrained versus from scratch at the teaching budget (chapter 03's replicated check).

#: Seeds per task. The CNN's runs spread widely from seed to seed (a first pass with three
#: seeds left its interval too wide to say anything), so five there; three for the Transformer.
PRETRAINING_SEEDS = {"vision": (0, 1, 2, 3, 4), "text": (0, 1, 2)}
#: The from-scratch runs' one learning rate: the CNN at 10x its fine-tuning rate (every layer is
#: new, nothing needs protecting), BERT at its own pretraining rate.
SCRATCH_LR = {"vision": 3e-3, "text": 1e-4}


def _teaching_task(kind: str, seed: int) -> Any:
    import dataclasses

    from finetune_helpers import tasks

    if kind not in PRETRAINING_SEEDS:
        raise ValueError(f"unknown pretraining task {kind!r}; known: "
                         f"{', '.join(PRETRAINING_SEEDS)}")
    return dataclasses.replace(tasks.VISION if kind == "vision" else tasks.TEXT, seed=seed)


def scratch_model(kind: str, num_classes: int) -> Any:
    """The pretrained model's architecture with random weights (Paddle's / PaddleNLP's default
    initialisers, drawn from the global seed)."""
    if kind == "vision":
        from finetune_helpers.zoo.efficientnet import EfficientNetLite0

        return EfficientNetLite0(num_classes=num_classes)
    from paddlenlp.transformers import BertConfig, BertForSequenceClassification

    from finetune_helpers import zoo

    config = BertConfig(**{**zoo.minilm.config(), "num_labels": num_classes, "use_cache": False})
    return BertForSequenceClassification(config)


def train_pretraining(spec: RunSpec, max_epochs: int | None = None,
                      evaluate_test: bool = True, max_steps: int | None = None) -> dict[str, Any]:
    """One run of chapter 03's teaching task (``spec.task``: vision or text) at its fixed budget:
    ``pretrained`` is full fine-tuning with the book's recipe, ``scratch`` the same architecture
    with random weights, one parameter group at :data:`SCRATCH_LR`, BatchNorm training normally
    and recalibrated by :func:`recipe.precise_batchnorm` before the CNN is evaluated. Nothing is
    selected on the held-out set, so its accuracy is the record's ``test``.
    (``max_epochs``, ``evaluate_test`` and ``max_steps``: as in :func:`train_vision`.)
    """
    import paddle

    from finetune_helpers import layers, recipe, strategies, tasks, train, zoo

    if spec.strategy not in ("pretrained", "scratch"):
        raise ValueError(f"unknown pretraining strategy {spec.strategy!r}; known: "
                         "pretrained, scratch")
    task = _teaching_task(spec.task, spec.seed)
    tokenizer = None if spec.task == "vision" else _tokenizer(task.model)
    train_loader, held_out = tasks.loaders(task, tokenizer)
    paddle.seed(spec.seed)
    if spec.strategy == "pretrained":
        net = zoo.load_model(task.model, num_classes=task.num_classes)
        strategies.fine_tune_all(net)
        if spec.task == "vision":
            recipe.batchnorm_inference(net)
        optimizer = recipe.optimizer(net, task.lr, layers.head(net))
    else:
        net = scratch_model(spec.task, task.num_classes)
        optimizer = paddle.optimizer.AdamW(learning_rate=SCRATCH_LR[spec.task],
                                           parameters=net.parameters(),
                                           weight_decay=recipe.WEIGHT_DECAY)
    epochs = task.epochs if max_epochs is None else min(max_epochs, task.epochs)
    if max_steps:
        return _first_steps(net, train_loader, optimizer, [], spec.seed, max_steps)
    history = train.fit(net, train_loader, optimizer, epochs, progress=False, seed=spec.seed)
    result: dict[str, Any] = {"val": [], "best_epoch": None, "epochs": epochs,
                              "steps": len(history.step_losses),
                              "first_losses": history.step_losses[:FIRST_STEPS],
                              "train_s": round(sum(e["seconds"] for e in history.epochs), 1)}
    if not evaluate_test:
        result["test"] = {"accuracy": None, "loss": None}
        return result
    if spec.strategy == "scratch" and spec.task == "vision":
        recipe.precise_batchnorm(net, train_loader)
    test = train.evaluate(net, held_out, progress=False)
    trainable, total = strategies.count_parameters(net)
    result.update({"test": {"accuracy": test["accuracy"], "loss": test["loss"]},
                   "trainable_params": trainable, "total_params": total})
    return result


def pretraining_grid() -> Grid:
    """Chapter 03: full fine-tuning of the pretrained model versus the same network from
    scratch, at the teaching budget, seed-paired (a seed draws the data subsets and order, the
    new head and the scratch network's weights)."""
    runs = [RunSpec.make("pretraining", kind, strategy, seed)
            for kind, seeds in PRETRAINING_SEEDS.items() for seed in seeds
            for strategy in ("pretrained", "scratch")]
    return Grid("pretraining", runs, train_pretraining,
                "pretrained vs from scratch at the teaching budget (tasks.VISION, tasks.TEXT)",
                seeds=PRETRAINING_SEEDS["vision"])


def registry() -> dict[str, Grid]:
    """Every grid of the book, by name."""
    return {g.name: g for g in (vision_grid(), text_grid("text"), text_grid("text_zh"),
                                fewshot_grid(), poem_grid("poems_smollm2"),
                                poem_grid("poems_qwen"), pretraining_grid())}


# ---------------------------------------------------------------------------------------------
# Memory per strategy, each in a fresh process.

#: Strategies whose memory is measured (gradual schedules end as "full"; LP-FT is "head" then
#: "full"; the baselines train no network).
MEMORY_STRATEGIES = ("head", "top_n", "freeze_bottom", "full", "lora", "bitfit")
STEPS_FOR_MEMORY = 3


def _memory_child(task: str, strategy: str) -> dict[str, Any]:
    """In this (fresh) process: train ``strategy`` for a few steps without the frozen-feature
    cache and return the memory the training loop added."""
    import dataclasses

    global CACHE_FROZEN, VISION, TEXT
    CACHE_FROZEN = False
    grid = registry()[task]
    sweep = next(s for s in grid.sweeps if s.strategy == strategy)
    spec = sweep.spec(grid.name, 0, sweep.values[0])
    regime = VISION if task == "vision" else TEXT
    small = dataclasses.replace(regime, n_train=STEPS_FOR_MEMORY * regime.batch_size,
                                n_val=64, n_test=64, max_epochs=1)
    if task == "vision":
        VISION = small
    else:
        TEXT = small
    result = grid.train(spec, max_epochs=1)
    return {"train_memory_mib": result["train_memory_mib"], "steps": result["steps"],
            "trainable_params": result.get("trainable_params")}


def measure_memory(path: Any = None, only: tuple[str, ...] = ()) -> dict[str, Any]:
    """Memory each strategy's training loop adds (MiB), each measured in a fresh process.

    Within one process the allocator reuses what earlier runs freed, so a run's own peak
    cannot be read there (the grids' records show ~0 MiB after the first run). Each child
    trains ``STEPS_FOR_MEMORY`` steps without the frozen-feature cache (so freezing's saving
    is its own, not the cache's) and reports its peak RSS minus its RSS when training began.
    The results go to ``book/results/memory.json`` (written atomically). ``only`` names
    ``task/strategy`` entries to measure again, keeping the file's others (after a fix to one
    strategy, say); the file's provenance then describes the latest measurement.
    """
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from finetune_helpers import experiments

    path = Path(path or experiments.RESULTS_DIR / "memory.json")
    # The classification grids only: _memory_child shrinks the vision and text regimes.
    plan = list(dict.fromkeys((task, s.strategy) for task, grid in registry().items()
                              if task == "vision" or task in TEXT_TASKS
                              for s in grid.sweeps if s.strategy in MEMORY_STRATEGIES))
    if only:
        unknown = sorted(set(only) - {f"{task}/{strategy}" for task, strategy in plan})
        if unknown:
            raise ValueError(f"no memory entry named {', '.join(unknown)}; known: "
                             f"{', '.join(f'{t}/{s}' for t, s in plan)}")
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist yet, so there is nothing to update: "
                                    "measure every strategy first with "
                                    "python -m finetune_helpers.grids memory")
        out: dict[str, Any] = json.loads(path.read_text())
        plan = [(task, strategy) for task, strategy in plan if f"{task}/{strategy}" in only]
    else:
        out = {"steps": STEPS_FOR_MEMORY, "tasks": {}}
    for task, strategy in plan:
        proc = subprocess.run([sys.executable, "-m", "finetune_helpers.grids", "_memory",
                               task, strategy], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"memory of {task}/{strategy} failed:\n{proc.stderr[-2000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        out["tasks"].setdefault(task, {})[strategy] = result
        print(f"{task}/{strategy}: {result['train_memory_mib']:.0f} MiB", flush=True)
    out.update(experiments.provenance())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m finetune_helpers.grids memory [task/strategy ...]``: measure every
    strategy's memory, or only the named ones."""
    import json
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    from finetune_helpers import runtime

    if args[:1] == ["_memory"] and len(args) == 3:
        runtime.setup(seed=0, verbose=False)
        print(json.dumps(_memory_child(args[1], args[2])))
        return 0
    if args[:1] == ["memory"]:
        runtime.setup(seed=0, verbose=True)
        measure_memory(only=tuple(args[1:]))
        return 0
    print("usage: python -m finetune_helpers.grids memory [task/strategy ...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
