"""finetune_helpers.strategies: which parameters train, with what learning rate, when.

Every strategy is checked by training: several AdamW steps (with weight decay) in train mode,
then every frozen parameter is bit-identical, every trainable one changed, BatchNorm statistics
move exactly where the BatchNorm policy says, and the trainable count equals a hand count over
parameter names. The policy's outcome is checked over every order of calls. Also checked here:
the Paddle behaviour the module relies on or works around.
"""

import itertools

import numpy as np
import paddle
import pytest
from paddle import nn

from finetune_helpers import layers, strategies as st

pytestmark = pytest.mark.filterwarnings("ignore")

STATS = ("._mean", "._variance")


# ---------------------------------------------------------------------------------------------
# models, data, training steps

def resnet():
    return paddle.vision.models.resnet18(pretrained=False, num_classes=10)


def bert():
    from paddlenlp.transformers import BertConfig, BertForSequenceClassification
    return BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def llama():
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
        tie_word_embeddings=True))


BUILD = {"resnet": resnet, "bert": bert, "llama": llama}


def loss_of(kind, model, seed):
    rng = np.random.default_rng(seed)
    if kind == "resnet":
        x = paddle.to_tensor(rng.standard_normal((4, 3, 32, 32)).astype("float32"))
        y = paddle.to_tensor(rng.integers(0, 10, 4))
        return nn.functional.cross_entropy(model(x), y)
    if kind == "bert":
        ids = paddle.to_tensor(rng.integers(1, 100, (4, 8)))
        y = paddle.to_tensor(rng.integers(0, 3, 4))
        return nn.functional.cross_entropy(model(ids), y)
    ids = paddle.to_tensor(rng.integers(0, 64, (2, 9)))
    return model(input_ids=ids[:, :-1], labels=ids[:, 1:])[0]


def train_steps(kind, model, optimizer, steps=3, seed=0):
    model.train()
    for i in range(steps):
        loss = loss_of(kind, model, seed + i)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()


def adamw(model_or_groups, lr=1e-3):
    params = model_or_groups.parameters() if isinstance(model_or_groups, nn.Layer) \
        else model_or_groups
    return paddle.optimizer.AdamW(learning_rate=lr, parameters=params, weight_decay=0.01)


def snapshot(model):
    return {n: p.numpy().copy() for n, p in model.named_parameters()}


def learnable_names(model):
    return [n for n, _ in model.named_parameters() if not n.endswith(STATS)]


def hand_count(model, prefixes):
    """Sum of numel over parameters whose name starts with one of the prefixes (stats excluded)."""
    return sum(int(np.prod(p.shape)) for n, p in model.named_parameters()
               if n.startswith(tuple(prefixes)) and not n.endswith(STATS))


def changed(before, model):
    return {n for n, p in model.named_parameters() if not np.array_equal(before[n], p.numpy())}


def apply(model, name, **kw):
    """Apply a strategy by its short name; returns the callbacks the training loop needs."""
    if name == "gradual":
        callback = st.GradualUnfreezing(model, **kw)
        callback.apply(0)
        return [callback]
    {"full": st.fine_tune_all, "top": st.train_top, "freeze_bottom": st.freeze_bottom,
     "head": st.new_head_only}[name](model, **kw)
    return []


def batch_norms(model):
    return [(n, s) for n, s in model.named_sublayers() if layers.is_batch_norm(s)]


# ---------------------------------------------------------------------------------------------
# each strategy, on a CNN with BatchNorm and on Transformers

ALL = ("",)
CASES = [
    ("resnet", "full", {}, ALL),
    ("resnet", "top", {"n": 2}, ("layer3.", "layer4.", "fc.")),
    ("resnet", "freeze_bottom", {"k": 2}, ("layer2.", "layer3.", "layer4.", "fc.")),
    ("resnet", "head", {}, ("fc.",)),
    ("resnet", "gradual", {}, ("fc.",)),
    ("bert", "full", {}, ALL),
    ("bert", "top", {"n": 2}, ("bert.encoder.layers.1.", "bert.pooler.", "classifier.")),
    ("bert", "freeze_bottom", {"k": 1}, ("bert.encoder.", "bert.pooler.", "classifier.")),
    ("bert", "head", {}, ("classifier.",)),
    ("bert", "gradual", {"start": 2}, ("bert.pooler.", "classifier.")),
    # tied embeddings: the lm_head owns nothing, freezing the embeddings freezes it too
    ("llama", "full", {}, ALL),
    ("llama", "top", {"n": 1}, ("llama.norm.",)),
    ("llama", "freeze_bottom", {"k": 1}, ("llama.layers.", "llama.norm.")),
    ("llama", "gradual", {"start": 3}, ("llama.layers.1.", "llama.norm.")),
]


@pytest.mark.parametrize("kind, name, kw, prefixes", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_strategy_trains_exactly_the_chosen_parameters(kind, name, kw, prefixes):
    paddle.seed(1)
    model = BUILD[kind]()
    callbacks = apply(model, name, **kw)
    assert len(callbacks) == (name == "gradual")
    optimizer = adamw(model)
    model.train()  # must not undo the frozen BatchNorm behaviour
    before = snapshot(model)
    train_steps(kind, model, optimizer)

    expected = {n for n in learnable_names(model) if n.startswith(prefixes)}
    trainable = {n for n, p in model.named_parameters() if not p.stop_gradient}
    assert trainable == expected
    moved = changed(before, model)
    learnable = set(learnable_names(model))
    assert moved & learnable == expected          # trainable changed, frozen bit-identical
    assert st.count_parameters(model) == (hand_count(model, prefixes), hand_count(model, ALL))

    if kind == "resnet":
        # the default policy, bn="inference": no running statistic moves, frozen or not
        assert not {n for n in moved if n.endswith(STATS)}
        assert all(bn._use_global_stats is True for _, bn in batch_norms(model))
    if kind == "llama":
        assert model.lm_head.weight is model.llama.embed_tokens.weight


def test_head_only_counts_and_block_table_modes():
    model = paddle.vision.models.resnet18(pretrained=False, num_classes=1000)
    assert st.count_parameters(model) == (11_689_512, 11_689_512)
    assert st.train_top(model, 0) == ["fc"]
    assert st.count_parameters(model) == (513_000, 11_689_512)
    assert st.trainable_summary(model) == "trainable: 513,000 / 11,689,512 (4.4%)"
    assert st.new_head_only(model) == ["fc"]
    assert st.freeze_bottom(model, 5) == ["fc"]
    assert st.train_top(model, 5) == layers.block_names(model)
    table = st.block_table(model)
    assert table.count("running stats kept") == 5 and table.endswith("(100.0%)")
    st.train_top(model, 5, bn="frozen_blocks")
    assert "running stats kept" not in st.block_table(model)
    st.train_top(model, 1, bn="frozen_blocks")
    lines = st.block_table(model).splitlines()
    assert lines[1].split()[1:] == ["stem", "9,536", "0", "running", "stats", "kept"]
    assert lines[5].split()[1:] == ["layer4", "8,393,728", "8,393,728", "batch", "stats"]
    assert lines[6].split()[1:] == ["fc", "513,000", "513,000", "-"]


def test_block_table_reads_the_layers_own_batchnorm_mode():
    model = resnet()
    for _, bn in batch_norms(model):
        bn._use_global_stats = True          # the recipe set by hand, no strategy involved
    assert st.block_table(model).count("running stats kept") == 5
    model.layer2[0].bn1._use_global_stats = None
    assert st.block_table(model).splitlines()[3].split()[-2:] == ["4/5", "kept"]  # layer2


# ---------------------------------------------------------------------------------------------
# the BatchNorm policy: a function of the policy and the training blocks, never of history

def expected_flag(policy, training):
    return {"inference": True, "frozen_blocks": None if training else True,
            "train": None}[policy]


CALLS = {"freeze_bottom(2)": lambda m, bn: st.freeze_bottom(m, 2, bn=bn),
         "fine_tune_all": lambda m, bn: (st.fine_tune_all(m, bn=bn), layers.block_names(m))[1],
         "train_top(1)": lambda m, bn: st.train_top(m, 1, bn=bn),
         "recipe by hand": None}  # every BatchNorm set to running statistics between calls


@pytest.mark.parametrize("policy", st.BN_POLICIES)
def test_batchnorm_mode_is_the_policys_in_every_call_order(policy):
    model = resnet()
    owner = {id(bn): name for name, block in layers.blocks(model)
             for bn in block.sublayers(include_self=True) if layers.is_batch_norm(bn)}
    for order in itertools.permutations(CALLS):
        for call in order:
            if CALLS[call] is None:
                for _, bn in batch_norms(model):
                    bn._use_global_stats = True
                continue
            training = set(CALLS[call](model, policy))
            got = {n: bn._use_global_stats for n, bn in batch_norms(model)}
            want = {n: expected_flag(policy, owner[id(bn)] in training)
                    for n, bn in batch_norms(model)}
            assert got == want, (order, call)
            affine = {n: bn.weight.stop_gradient for n, bn in batch_norms(model)}
            assert affine == {n: policy != "train" and owner[id(bn)] not in training
                              for n, bn in batch_norms(model)}, (order, call)


@pytest.mark.parametrize("policy, moves", [("inference", "none"),
                                           ("frozen_blocks", "training blocks"),
                                           ("train", "all")])
def test_frozen_blocks_keep_their_statistics_bit_identical(policy, moves):
    paddle.seed(2)
    model = resnet()
    st.freeze_bottom(model, 3, bn=policy)       # stem, layer1, layer2 frozen
    optimizer = adamw(model)
    before = snapshot(model)
    train_steps("resnet", model, optimizer)     # train mode throughout
    stats = {n for n in before if n.endswith(STATS)}
    frozen = {n for n in stats if n.startswith(("bn1.", "layer1.", "layer2."))}
    moved = changed(before, model) & stats
    expected = {"none": set(), "training blocks": stats - frozen, "all": stats}[moves]
    assert moved == expected


def test_n_and_k_count_blocks_below_the_head():
    """The documented convention, on the grids' calls: train_top(n) = freeze_bottom(B - 1 - n)."""
    from finetune_helpers.zoo.efficientnet import EfficientNetLite0
    model = EfficientNetLite0(num_classes=10)
    names = layers.block_names(model)
    assert st.train_top(model, 2) == ["stage7", "head_conv", "fc"]
    assert st.freeze_bottom(model, 4) == names[4:] and names[:4] == ["stem", "stage1", "stage2",
                                                                      "stage3"]
    for n in range(len(names)):
        st.train_top(model, n)
        top = [p.stop_gradient for p in model.parameters()]
        st.freeze_bottom(model, len(names) - 1 - n)
        assert [p.stop_gradient for p in model.parameters()] == top, n


def test_head_only_on_tied_lm_is_refused():
    model = llama()
    with pytest.raises(ValueError, match=r"no parameter would train.*\['lm_head'\].*train_top"):
        st.new_head_only(model)
    with pytest.raises(ValueError, match=r"start=2"):
        st.GradualUnfreezing(model)
    with pytest.raises(ValueError, match=r"stage 0"):
        st.GradualUnfreezing(model, mode="chain_thaw")


def test_bn_train_policy_trains_batchnorm_affine_in_frozen_blocks():
    paddle.seed(2)
    model = resnet()
    st.new_head_only(model, bn="train")
    bn_names = {n for n, s in model.named_sublayers() if isinstance(s, nn.BatchNorm2D)}
    bn_affine = tuple(f"{n}.{w}" for n in bn_names for w in ("weight", "bias"))
    expected = {n for n in learnable_names(model) if n.startswith(("fc.",) + bn_affine)}
    assert st.count_parameters(model)[0] == hand_count(model, ("fc.",) + bn_affine)
    optimizer = adamw(model)
    before = snapshot(model)
    train_steps("resnet", model, optimizer)
    moved = changed(before, model)
    assert moved & set(learnable_names(model)) == expected
    stats = {n for n in before if n.endswith(STATS)}
    assert stats <= moved                         # statistics update everywhere


def test_freeze_and_unfreeze_layers_and_parameters():
    paddle.seed(3)
    model = resnet()
    st.freeze(model.layer1)
    bn = model.layer1[0].bn1
    assert bn._use_global_stats is True and st.bn_mode(bn) == "running stats"
    assert all(p.stop_gradient for p in model.layer1.parameters())
    model.train()
    before = snapshot(model)
    model(paddle.randn([2, 3, 32, 32]))
    moved = changed(before, model)
    assert not any(n.startswith("layer1.") for n in moved)    # frozen stats survive train()
    assert "bn1._mean" in moved and "layer2.0.bn1._mean" in moved
    # in train mode, a frozen BN computes exactly what eval mode computes
    x = paddle.randn([2, 64, 8, 8])
    y_train = bn(x).numpy()
    bn.eval()
    np.testing.assert_array_equal(y_train, bn(x).numpy())

    st.unfreeze(model.layer1)
    assert bn._use_global_stats is True                # the default policy: inference
    st.unfreeze(model.layer1, bn="frozen_blocks")
    assert bn._use_global_stats is None and st.bn_mode(bn) == "batch stats"
    assert not bn.weight.stop_gradient
    assert bn._mean.stop_gradient and bn._variance.stop_gradient  # statistics never train

    st.freeze(model.fc.weight)
    assert model.fc.weight.stop_gradient and not model.fc.bias.stop_gradient
    st.unfreeze([model.fc.weight])
    assert not model.fc.weight.stop_gradient
    st.freeze(model.layer2, bn="train")
    assert model.layer2[0].conv1.weight.stop_gradient
    assert not model.layer2[0].bn1.weight.stop_gradient
    assert st.bn_mode(model.layer2[0].bn1) == "batch stats"
    st.fine_tune_all(model, bn="frozen_blocks")
    assert st.count_parameters(model)[0] == st.count_parameters(model)[1]
    assert all(st.bn_mode(s) == "batch stats" for _, s in batch_norms(model))


def test_sync_batch_norm_cannot_keep_running_statistics():
    layer = nn.Sequential(nn.Conv2D(3, 4, 1), nn.SyncBatchNorm(4))
    with pytest.raises(NotImplementedError, match="bn='train'"):
        st.freeze(layer)
    assert not layer[0].weight.stop_gradient      # nothing half-done
    assert layer[1]._use_global_stats is None
    blocks = [("conv", layer[0]), ("norm", layer[1])]
    for policy in ("inference", "frozen_blocks"):
        with pytest.raises(NotImplementedError, match="SyncBatchNorm ignores _use_global_stats"):
            st.train_blocks(layer, ["conv"], blocks=blocks, bn=policy)   # SyncBN frozen
    with pytest.raises(NotImplementedError):
        st.fine_tune_all(layer)                   # "inference" wants running stats everywhere
    assert not layer[0].weight.stop_gradient
    st.freeze(layer, bn="train")
    assert layer[0].weight.stop_gradient and not layer[1].weight.stop_gradient
    st.train_blocks(layer, ["norm"], blocks=blocks, bn="frozen_blocks")  # SyncBN trains
    assert layer[1]._use_global_stats is None


# ---------------------------------------------------------------------------------------------
# Paddle's optimizer behaviour the strategies rely on

@pytest.mark.parametrize("make", [
    lambda p: paddle.optimizer.AdamW(0.01, parameters=p, weight_decay=0.1),
    lambda p: paddle.optimizer.Adam(0.01, parameters=p),
    lambda p: paddle.optimizer.Momentum(0.01, parameters=p),
    lambda p: paddle.optimizer.SGD(0.01, parameters=p),
    lambda p: paddle.optimizer.AdamW(0.01, weight_decay=0.1,
                                     parameters=[{"params": p[:2], "learning_rate": 0.5},
                                                 {"params": p[2:]}]),
], ids=["adamw", "adam", "momentum", "sgd", "adamw-groups"])
def test_optimizer_built_while_frozen_updates_after_unfreeze(make):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    st.freeze(model[0])
    optimizer = make(model.parameters())
    w0 = model[0].weight.numpy().copy()
    for _ in range(2):
        model(paddle.randn([8, 4])).pow(2).mean().backward()
        optimizer.step()
        optimizer.clear_grad()
    np.testing.assert_array_equal(w0, model[0].weight.numpy())   # skipped, no weight decay
    st.unfreeze(model[0])
    model(paddle.randn([8, 4])).pow(2).mean().backward()
    optimizer.step()
    assert not np.array_equal(w0, model[0].weight.numpy())       # state created lazily


def test_multi_tensor_optimizer_fails_after_unfreeze_and_is_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    st.freeze(model[0])
    optimizer = paddle.optimizer.Adam(0.01, parameters=model.parameters(), use_multi_tensor=True)
    model(paddle.randn([8, 4])).pow(2).mean().backward()
    optimizer.step()
    optimizer.clear_grad()
    st.unfreeze(model[0])
    model(paddle.randn([8, 4])).pow(2).mean().backward()
    with pytest.raises(ValueError, match="must be equal to Input"):   # Paddle's own failure
        optimizer.step()
    cb = st.GradualUnfreezing(model, blocks=[("a", model[0]), ("b", model[1])])
    with pytest.raises(ValueError, match="use_multi_tensor=False"):
        cb.on_train_begin(model, optimizer)


def test_gradual_refuses_optimizer_without_frozen_parameters():
    model = resnet()
    st.new_head_only(model)
    optimizer = adamw([p for p in model.parameters() if not p.stop_gradient])
    cb = st.GradualUnfreezing(model)
    with pytest.raises(ValueError, match=r"does not hold the parameters of block\(s\) \['stem'"):
        cb.on_epoch_begin(0, model, optimizer)
    [applied] = apply(model, "gradual")   # epoch 0 already applied: still checked
    with pytest.raises(ValueError, match="does not hold the parameters"):
        applied.on_epoch_begin(0, model, optimizer)
    applied.on_epoch_begin(0, model, adamw(model))
    assert [e["epoch"] for e in applied.log] == [0]


def test_strategies_accept_data_parallel():
    model = resnet()
    wrapped = paddle.DataParallel(model)
    assert st.train_top(wrapped, 1) == ["layer4", "fc"]
    assert st.count_parameters(wrapped) == (hand_count(model, ("layer4.", "fc.")),
                                            hand_count(model, ALL))
    assert model.layer1[0].bn1._use_global_stats is True


def test_lr_multiplier_sticks_to_parameters():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    paddle.optimizer.SGD(1.0, parameters=[{"params": model[0].parameters(), "learning_rate": 0.1},
                                          {"params": model[1].parameters()}])
    plain = paddle.optimizer.SGD(1.0, parameters=model.parameters())

    def rate():
        w = model[0].weight.numpy().copy()
        model(paddle.randn([8, 4])).pow(2).mean().backward()
        g = model[0].weight.grad.numpy().copy()
        plain.step()
        plain.clear_grad()
        return np.abs(w - model[0].weight.numpy()).sum() / np.abs(g).sum()

    assert rate() == pytest.approx(0.1, rel=1e-4)     # the old group's multiplier still applies
    st.clear_lr_multipliers(model)
    assert rate() == pytest.approx(1.0, rel=1e-4)


# ---------------------------------------------------------------------------------------------
# gradual unfreezing

def test_ulmfit_schedule_and_updates_with_one_optimizer():
    paddle.seed(4)
    model = bert()
    names = layers.block_names(model)
    cb = st.GradualUnfreezing(model)
    assert cb.schedule() == [names[4:], names[3:], names[2:], names[1:], names]
    assert cb.schedule(7)[-2:] == [names, names]
    assert st.GradualUnfreezing(model, every=2).schedule()[:4] == \
        [names[4:], names[4:], names[3:], names[3:]]
    optimizer = adamw(model)             # built once, at the start, over every parameter
    cb.on_train_begin(model, optimizer)
    for epoch in range(6):
        cb.on_epoch_begin(epoch, model, optimizer)
        before = snapshot(model)
        train_steps("bert", model, optimizer, steps=2, seed=10 * epoch)
        training = tuple(n + "." for n in cb.schedule(6)[epoch])
        assert changed(before, model) == {n for n in learnable_names(model)
                                          if n.startswith(training)}
    assert [e["unfrozen"] for e in cb.log] == [[n] for n in reversed(names)] + [[]]
    assert [e["epoch"] for e in cb.log] == list(range(6))
    assert all(e["frozen"] == [] for e in cb.log)


def test_chain_thaw_order_and_updates():
    paddle.seed(5)
    model = resnet()
    cb = st.GradualUnfreezing(model, mode="chain_thaw", bn="frozen_blocks")
    names = layers.block_names(model)
    expected = [["fc"], ["stem"], ["layer1"], ["layer2"], ["layer3"], ["layer4"], names]
    assert cb.schedule() == expected and cb.epochs_to_full == 7
    optimizer = adamw(model)
    cb.on_train_begin(model, optimizer)
    prefix = {"stem": ("conv1.", "bn1."), "fc": ("fc.",)}
    for epoch, stage in enumerate(expected):
        cb.on_epoch_begin(epoch, model, optimizer)
        before = snapshot(model)
        train_steps("resnet", model, optimizer, steps=1, seed=epoch)
        training = tuple(x for n in stage for x in prefix.get(n, (n + ".",)))
        moved = changed(before, model)
        assert moved == {n for n in before if n.startswith(training)}  # incl. BN statistics
    assert cb.log[2]["unfrozen"] == ["layer1"] and cb.log[2]["frozen"] == ["stem"]


# ---------------------------------------------------------------------------------------------
# discriminative learning rates

def test_discriminative_groups_sgd_update_ratio():
    paddle.seed(6)
    model = resnet()
    groups = st.discriminative_lr_groups(model)
    assert [g["name"] for g in groups] == layers.block_names(model)
    covered = [id(p) for g in groups for p in g["params"]]
    assert len(covered) == len(set(covered)) == len(layers.learnable_parameters(model))
    optimizer = paddle.optimizer.SGD(learning_rate=1.0, parameters=groups)
    before = [[p.numpy().copy() for p in g["params"]] for g in groups]
    loss_of("resnet", model, 0).backward()
    grads = [[p.grad.numpy().astype("float64") for p in g["params"]] for g in groups]
    optimizer.step()
    rates = np.array([
        sum(np.abs(p.numpy().astype("float64") - w).sum() for p, w in zip(g["params"], b))
        / sum(np.abs(x).sum() for x in gr)
        for g, b, gr in zip(groups, before, grads)])
    np.testing.assert_allclose(rates[1:] / rates[:-1], 2.6, rtol=1e-4)
    assert rates[-1] == pytest.approx(1.0, rel=1e-4)
    table = st.lr_table(groups, 1e-3).splitlines()
    assert table[0].split() == ["block", "multiplier", "lr", "params"]
    assert table[-1].split() == ["fc", "1", "0.001", "5,130"]
    assert table[-2].split()[:3] == ["layer4", "0.3846", "0.000385"]


def test_discriminative_groups_with_scheduler_and_head_multiplier():
    paddle.seed(7)
    model = bert()
    groups = st.discriminative_lr_groups(model, factor=2.0, head_multiplier=10.0)
    assert [g["learning_rate"] for g in groups] == [1 / 16, 1 / 8, 1 / 4, 1 / 2, 10.0]
    scheduler = paddle.optimizer.lr.StepDecay(0.5, step_size=1, gamma=0.1)
    optimizer = paddle.optimizer.SGD(learning_rate=scheduler, parameters=groups)
    head, below = model.classifier.weight, model.bert.pooler.dense.weight
    for step, base in enumerate([0.5, 0.05]):
        w = [head.numpy().copy(), below.numpy().copy()]
        loss_of("bert", model, step).backward()
        g = [head.grad.numpy().copy(), below.grad.numpy().copy()]
        optimizer.step()
        optimizer.clear_grad()
        scheduler.step()
        got = [np.abs(p.numpy() - w0).sum() / np.abs(g0).sum()
               for p, w0, g0 in zip((head, below), w, g)]
        assert got == pytest.approx([base * 10.0, base * 0.5], rel=1e-4)


def test_discriminative_groups_tied_lm():
    model = llama()
    groups = st.discriminative_lr_groups(model)
    assert [g["name"] for g in groups] == layers.block_names(model)[:-1]   # lm_head owns nothing
    assert groups[-1]["learning_rate"] == pytest.approx(1 / 2.6)           # norm: one below top
    assert sum(layers.numel(g["params"]) for g in groups) == st.count_parameters(model)[1]


# ---------------------------------------------------------------------------------------------
# bad input: the error names the valid range or names

@pytest.fixture(scope="module")
def small_resnet():
    return resnet()


@pytest.mark.parametrize("call, message", [
    (lambda m: st.train_top(m, 6), r"n \(blocks trained below the head\) must be an int in 0\.\.5"),
    (lambda m: st.train_top(m, -1), r"in 0\.\.5 .*6 blocks: stem, layer1"),
    (lambda m: st.train_top(m, 1.5), r"in 0\.\.5"),
    (lambda m: st.freeze_bottom(m, 6),
     r"k \(frozen blocks from the input\) must be an int in 0\.\.5"),
    (lambda m: st.freeze_bottom(m, -2), r"0\.\.5"),
    (lambda m: st.train_top(m, 1, bn="eval"),
     r"bn must be one of \['inference', 'frozen_blocks', 'train'\], got 'eval'"),
    (lambda m: st.GradualUnfreezing(m, bn=True), r"bn must be one of"),
    (lambda m: st.discriminative_lr_groups(m, factor=0), r"factor must be a number > 0"),
    (lambda m: st.discriminative_lr_groups(m, factor=-2.6), r"factor must be a number > 0"),
    (lambda m: st.discriminative_lr_groups(m, head_multiplier=0), "head_multiplier must be > 0"),
    (lambda m: st.discriminative_lr_groups(m, blocks=[("fc", m.fc)]),
     r"belong to no block.*pass blocks= covering"),
    (lambda m: st.GradualUnfreezing(m, start=7),
     r"start \(blocks trained at epoch 0\) must be an int in 1\.\.6"),
    (lambda m: st.GradualUnfreezing(m, start=0), r"1\.\.6"),
    (lambda m: st.GradualUnfreezing(m, every=0), r"every \(epochs per stage\) must be an int >= 1"),
    (lambda m: st.GradualUnfreezing(m, mode="slanted"), r"valid modes: \['ulmfit', 'chain_thaw'\]"),
    (lambda m: st.GradualUnfreezing(m, mode="chain_thaw", start=2), "mode='ulmfit' only"),
    (lambda m: st.GradualUnfreezing(m).trainable_at(-1), "epoch must be an int >= 0"),
    (lambda m: st.train_blocks(m, ["fc", "layer9"]),
     r"unknown block name\(s\) \['layer9'\]; valid names: \['stem'"),
    (lambda m: st.train_top(nn.Linear(2, 2), 0), r"pass the blocks explicitly"),
])
def test_bad_input_names_the_valid_range(small_resnet, call, message):
    with pytest.raises(ValueError, match=message):
        call(small_resnet)


def test_explicit_blocks_for_an_unknown_model():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))
    blocks = [("inp", model[0]), ("mid", model[2]), ("out", model[3])]
    assert st.train_top(model, 1, blocks=blocks) == ["mid", "out"]
    assert st.count_parameters(model) == (72 + 18, 40 + 72 + 18)
    cb = st.GradualUnfreezing(model, blocks=blocks)
    assert cb.schedule() == [["out"], ["mid", "out"], ["inp", "mid", "out"]]
    # parameters outside the given blocks are frozen by the strategies
    assert st.train_top(model, 0, blocks=blocks[1:]) == ["out"]
    assert model[0].weight.stop_gradient
