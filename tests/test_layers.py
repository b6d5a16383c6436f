"""finetune_helpers.layers: the blocks of every model the book fine-tunes, and of any Transformer.

Each model: the block names, the head, and that every parameter (BatchNorm statistics
included) belongs to exactly one block -- except a tied lm_head weight, which belongs to the
embeddings and is held again by the lm_head block (documented in layers.py). Tiny random
PaddleNLP configs (hidden 16, 2 layers, vocabulary 64) of seven Transformer families check the
generic discovery, and ``train_top(model, 1)`` trains exactly the hand-counted parameters.
"""

from collections import Counter

import numpy as np
import paddle
import pytest
from paddle import nn

from finetune_helpers import layers

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tiny_bert(cls_name="BertForSequenceClassification"):
    from paddlenlp import transformers
    config = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=3,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=32, num_labels=3)
    return getattr(transformers, cls_name)(config)


def tiny_llama(cls_name="LlamaForCausalLM", tied=True):
    from paddlenlp import transformers
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=1, max_position_embeddings=32,
                                      tie_word_embeddings=tied)
    return getattr(transformers, cls_name)(config)


def membership(model, blocks):
    """How many blocks hold each parameter (by structured name), and the ones in none.
    Computed from the blocks' own .parameters(), independently of layers.block_parameters."""
    holders = Counter()
    for _, layer in blocks:
        holders.update(id(p) for p in layer.parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    counts = {names[i]: c for i, c in holders.items()}
    missing = sorted(n for n in names.values() if n not in counts)
    return counts, missing


def assert_exact_cover(model, blocks, shared=()):
    counts, missing = membership(model, blocks)
    assert missing == []
    assert {n: c for n, c in counts.items() if c != 1} == {n: 2 for n in shared}


def test_resnet18_blocks_and_counts():
    model = paddle.vision.models.resnet18(pretrained=False, num_classes=1000)
    blocks = layers.blocks(model)
    assert [n for n, _ in blocks] == ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert layers.head(model) is model.fc
    stem = blocks[0][1]
    assert stem[0] is model.conv1 and stem[1] is model.bn1
    assert "stem" not in dict(model.named_children())  # the grouping does not change the model
    assert_exact_cover(model, blocks)
    # BatchNorm running statistics are parameters in Paddle, but not learnable ones.
    fixed = layers.fixed_parameters(model)
    assert len(fixed) == 2 * len([s for s in model.sublayers() if isinstance(s, nn.BatchNorm2D)])
    assert all(p.stop_gradient for p in fixed)
    assert layers.numel(layers.learnable_parameters(model)) == 11_689_512  # the published count
    assert layers.uncovered_parameters(model) == []


def test_mobilenet_v2_blocks():
    model = paddle.vision.models.mobilenet_v2(pretrained=False, num_classes=10)
    names = layers.block_names(model)
    assert names == [f"features.{i}" for i in range(19)] + ["classifier"]
    assert layers.head(model) is model.classifier
    assert_exact_cover(model, layers.blocks(model))


class EfficientNetLike(nn.Layer):
    """Same attributes as zoo.efficientnet.EfficientNetLite0, tiny."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2D(3, 4, 3), nn.BatchNorm2D(4), nn.ReLU6())
        self.stages = nn.LayerList([nn.Sequential(nn.Conv2D(4, 4, 1), nn.BatchNorm2D(4))
                                    for _ in range(7)])
        self.head = nn.Sequential(nn.Conv2D(4, 8, 1), nn.BatchNorm2D(8), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2D(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(8, 3)


EFFICIENTNET_NAMES = ["stem"] + [f"stage{i}" for i in range(1, 8)] + ["head_conv", "fc"]


def test_efficientnet_structure_blocks():
    model = EfficientNetLike()
    blocks = layers.blocks(model)
    assert [n for n, _ in blocks] == EFFICIENTNET_NAMES
    assert blocks[1][1] is model.stages[0] and blocks[8][1] is model.head
    assert_exact_cover(model, blocks)


def test_efficientnet_lite0_blocks():
    try:
        from finetune_helpers.zoo.efficientnet import EfficientNetLite0
    except ImportError as err:
        pytest.skip(f"finetune_helpers.zoo.efficientnet not importable yet: {err}")
    model = EfficientNetLite0(num_classes=1000)
    assert layers.block_names(model) == EFFICIENTNET_NAMES
    assert layers.head(model) is model.fc
    assert_exact_cover(model, layers.blocks(model))
    assert layers.numel(layers.learnable_parameters(model)) == 4_652_008


def test_bert_for_sequence_classification_blocks():
    model = tiny_bert()
    names = layers.block_names(model)
    assert names == ["bert.embeddings"] + [f"bert.encoder.layers.{i}" for i in range(3)] + \
        ["bert.pooler", "classifier"]
    assert layers.head(model) is model.classifier
    # names are the prefixes of the model's own parameter names
    params = [n for n, _ in model.named_parameters()]
    assert all(any(p.startswith(b + ".") for p in params) for b in names)
    assert_exact_cover(model, layers.blocks(model))


def test_bert_model_blocks():
    model = tiny_bert("BertModel")
    assert layers.block_names(model) == ["embeddings"] + \
        [f"encoder.layers.{i}" for i in range(3)] + ["pooler"]
    assert layers.head(model) is model.pooler
    assert_exact_cover(model, layers.blocks(model))


def test_llama_tied_embeddings():
    model = tiny_llama(tied=True)
    assert model.lm_head.weight is model.llama.embed_tokens.weight
    names = layers.block_names(model)
    assert names == ["llama.embed_tokens", "llama.layers.0", "llama.layers.1", "llama.norm",
                     "lm_head"]
    blocks = layers.blocks(model)
    # the tied weight is held by two blocks; every other parameter by exactly one
    assert_exact_cover(model, blocks, shared=["llama.embed_tokens.weight"])
    owned = dict(layers.block_parameters(model))
    assert owned["lm_head"] == []                      # owned by the embeddings
    assert owned["llama.embed_tokens"][0] is model.lm_head.weight
    flat = [id(p) for ps in owned.values() for p in ps]
    assert len(flat) == len(set(flat)) == len(model.parameters())
    assert layers.uncovered_parameters(model) == []


def test_llama_untied_and_base():
    model = tiny_llama(tied=False)
    owned = dict(layers.block_parameters(model))
    assert owned["lm_head"] == [model.lm_head.weight]
    assert_exact_cover(model, layers.blocks(model))
    base = tiny_llama("LlamaModel")
    assert layers.block_names(base) == ["embed_tokens", "layers.0", "layers.1", "norm"]
    assert layers.head(base) is base.norm
    assert_exact_cover(base, layers.blocks(base))


def test_data_parallel_is_unwrapped():
    model = paddle.vision.models.resnet18(pretrained=False, num_classes=10)
    wrapped = paddle.DataParallel(model)
    assert layers.unwrap(wrapped) is model
    assert layers.head(wrapped) is model.fc
    assert layers.block_names(wrapped) == layers.block_names(model)


def test_unknown_model_says_how_to_pass_blocks():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"does not know the blocks of Sequential.*no Transformer "
                                         r"layer stack.*blocks=\[.*method blocks\(\)"):
        layers.blocks(model)
    explicit = layers.blocks(model, blocks=[("body", model[0]), ("head", model[1])])
    assert [n for n, _ in explicit] == ["body", "head"]
    assert layers.block_names(model, blocks=[model[0], model[1]]) == ["block0", "block1"]
    assert layers.head(model, blocks=[("body", model[0]), ("head", model[1])]) is model[1]
    assert layers.uncovered_parameters(model, blocks=[("head", model[1])]) == ["0.weight",
                                                                               "0.bias"]


@pytest.mark.parametrize("bad, message", [
    ([], "blocks is empty"),
    ([("a", 3)], r"blocks\[0\] is tuple"),
    (["x"], r"blocks\[0\] is str"),
])
def test_bad_explicit_blocks(bad, message):
    with pytest.raises(ValueError, match=message):
        layers.blocks(nn.Linear(2, 2), blocks=bad)


def test_duplicate_block_names_rejected():
    lin = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="unique"):
        layers.blocks(lin, blocks=[("a", lin), ("a", nn.Linear(2, 2))])


def test_numel_is_exact():
    params = [paddle.zeros([3, 5]), paddle.zeros([7]), paddle.zeros([2, 3, 4])]
    assert layers.numel(params) == 15 + 7 + 24
    assert layers.numel([]) == 0
    assert layers.numel([paddle.to_tensor(np.zeros((0, 4)))]) == 0


# ---------------------------------------------------------------------------------------------
# Any PaddleNLP Transformer: the layer stack opened up, the other children one block each

SIZES = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=32)
TRANSFORMERS = {
    # class: (config class, extra config, block names, train_top(m, 1) prefixes, tied weights)
    "GPTForCausalLM": (
        "GPTConfig", {"max_position_embeddings": 32},
        ["gpt.embeddings", "gpt.decoder.layers.0", "gpt.decoder.layers.1", "gpt.decoder.norm",
         "lm_head"],
        ("gpt.decoder.norm.",), ["gpt.embeddings.word_embeddings.weight"]),
    "GPTModel": (
        "GPTConfig", {"max_position_embeddings": 32},
        ["embeddings", "decoder.layers.0", "decoder.layers.1", "decoder.norm"],
        ("decoder.layers.1.", "decoder.norm."), []),
    "ErnieModel": (
        "ErnieConfig", {"max_position_embeddings": 32},
        ["embeddings", "encoder.layers.0", "encoder.layers.1", "pooler"],
        ("encoder.layers.1.", "pooler."), []),
    "ErnieForSequenceClassification": (
        "ErnieConfig", {"max_position_embeddings": 32, "num_labels": 3},
        ["ernie.embeddings", "ernie.encoder.layers.0", "ernie.encoder.layers.1", "ernie.pooler",
         "classifier"],
        ("ernie.pooler.", "classifier."), []),
    "Qwen2ForCausalLM": (
        "Qwen2Config", {"max_position_embeddings": 32, "num_key_value_heads": 1},
        ["qwen2.embed_tokens", "qwen2.layers.0", "qwen2.layers.1", "qwen2.norm", "lm_head"],
        ("qwen2.norm.", "lm_head."), []),
    "XLMRobertaModel": (
        "XLMRobertaConfig", {"max_position_embeddings": 40},
        ["embeddings", "encoder.layer.0", "encoder.layer.1", "pooler"],
        ("encoder.layer.1.", "pooler."), []),
    "LlamaForCausalLM": (
        "LlamaConfig", {"max_position_embeddings": 32, "num_key_value_heads": 1,
                        "tie_word_embeddings": True},
        ["llama.embed_tokens", "llama.layers.0", "llama.layers.1", "llama.norm", "lm_head"],
        ("llama.norm.",), ["llama.embed_tokens.weight"]),
    "BertForSequenceClassification": (
        "BertConfig", {"max_position_embeddings": 32, "num_labels": 3},
        ["bert.embeddings", "bert.encoder.layers.0", "bert.encoder.layers.1", "bert.pooler",
         "classifier"],
        ("bert.pooler.", "classifier."), []),
}


def tiny_transformer(cls_name):
    from paddlenlp import transformers
    config_cls, extra, *_ = TRANSFORMERS[cls_name]
    paddle.seed(0)
    return getattr(transformers, cls_name)(getattr(transformers, config_cls)(**SIZES, **extra))


@pytest.mark.parametrize("cls_name", list(TRANSFORMERS))
def test_transformer_blocks_cover_every_parameter_once(cls_name):
    from finetune_helpers import strategies
    _, _, names, top1, tied = TRANSFORMERS[cls_name]
    model = tiny_transformer(cls_name)
    blocks = layers.blocks(model)
    assert [n for n, _ in blocks] == names
    # names are attribute paths: every block's parameters carry its name as prefix
    for name, layer in blocks:
        ids = {id(p) for p in layer.parameters()}
        assert all(n.startswith(name + ".") for n, p in model.named_parameters()
                   if id(p) in ids and n not in tied), name
    assert_exact_cover(model, blocks, shared=tied)
    assert layers.uncovered_parameters(model) == []
    strategies.train_top(model, 1)
    by_hand = sum(int(np.prod(p.shape)) for n, p in model.named_parameters()
                  if n.startswith(top1))
    assert by_hand > 0 and strategies.count_parameters(model)[0] == by_hand


def test_tied_gpt_head_owns_nothing():
    model = tiny_transformer("GPTForCausalLM")
    owned = dict(layers.block_parameters(model))
    assert owned["lm_head"] == []
    assert owned["gpt.embeddings"][0] is model.gpt.embeddings.word_embeddings.weight


class TwoStacks(nn.Layer):
    """A model of no known family with its own blocks() method (the protocol)."""

    def __init__(self):
        super().__init__()
        self.blocks_list = nn.LayerList([nn.Linear(4, 4) for _ in range(3)])
        self.out = nn.Linear(4, 2)

    def blocks(self):
        return [("first", self.blocks_list[0]), ("rest", self.blocks_list[1:]),
                ("out", self.out)]


def test_a_models_own_blocks_method_is_used():
    model = TwoStacks()
    assert layers.block_names(model) == ["first", "rest", "out"]
    assert layers.head(paddle.DataParallel(model)) is model.out
    # MeanPoolClassifier's method wins over the generic discovery (no pooler block: unused)
    from finetune_helpers.heads import MeanPoolClassifier
    classifier = MeanPoolClassifier(tiny_transformer("ErnieModel"), 3)
    assert layers.block_names(classifier) == [n for n, _ in classifier.blocks()] == \
        ["embeddings", "encoder.layers.0", "encoder.layers.1", "classifier"]


def test_a_broken_blocks_method_is_named_in_the_error():
    class Broken(nn.Layer):
        def blocks(self):
            return [("only", 3)]

    with pytest.raises(ValueError, match=r"Broken\.blocks\(\) must return \[\(name, layer\)"):
        layers.blocks(Broken())


def test_a_layer_list_named_blocks_is_a_stack_not_the_protocol():
    class ViTLike(nn.Layer):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(4, 4)
            self.blocks = nn.LayerList([nn.Linear(4, 4) for _ in range(2)])
            self.norm = nn.LayerNorm(4)
            self.head = nn.Linear(4, 2)

    model = ViTLike()
    assert layers.block_names(model) == ["embed", "blocks.0", "blocks.1", "norm", "head"]
    assert_exact_cover(model, layers.blocks(model))
