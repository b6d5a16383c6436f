"""Few-shot classification without fine-tuning: an instruct causal LM reads a prompt with k
labelled demonstrations and is scored on the label words.

The prompt is a chat (the model's own template, :func:`finetune_helpers.zoo.qwen2.chat_prompt`):
a system turn with the instruction, then each demonstration as a user turn ``评论：<review>``
answered by an assistant turn holding its label word, then the query as a user turn, and the
assistant turn opened (``<|im_start|>assistant\\n``) so that the next token is the answer.
Demonstrations come from the split the caller passes (the train split: never the test split),
balanced per class, in a seeded order (:func:`select_examples`).

No text is generated: each label word is scored by its log-probability after the prompt, with
teacher forcing when it is several tokens (the sum of its tokens' log-probabilities), and the
prediction is the argmax over the label words only. Qwen2.5 encodes "正面" and "负面" as one
token each, so there the score is the next-token log-probability. :func:`evaluate_fewshot`
also reports the predictions after contextual calibration (Zhao et al. 2021, "Calibrate before
use"): the label probabilities for a content-free query ("N/A") estimate the prompt's own bias,
and each query's label probabilities are divided by them before the argmax.

Cost: everything before the query (system turn and demonstrations) is the same for every query,
so :class:`FewShotScorer` runs it once and keeps PaddleNLP's key/value cache; each query then
costs only its own tokens (one query per forward by default; right-padded batches on request).
Reviews are cut to :data:`MAX_QUERY_CHARS` characters (3 % of the test split is longer).
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple, Sequence

import numpy as np

from finetune_helpers.progress import progress_bar, progress_enabled

#: The system turn: what to do and which words to answer with.
INSTRUCTION = "判断下面评论的情感是正面还是负面，只回答“正面”或“负面”。"
#: Answer word of each label id (``data.chinese_reviews``: 0 negative, 1 positive).
LABEL_WORDS = ("负面", "正面")
#: A user turn: the review after a short cue.
QUERY_TEMPLATE = "评论：{text}"
#: Content-free queries for contextual calibration (Zhao et al. use "N/A", "" and "[MASK]").
CONTENT_FREE = ("N/A",)
#: Reviews longer than this are cut (characters), so that every query's cost is bounded.
MAX_QUERY_CHARS = 200

Example = tuple[str, int]


# ---------------------------------------------------------------------------------------------
# Demonstrations and prompts


def select_examples(dataset: Any, k: int, seed: int = 0, *,
                    max_chars: int | None = None) -> list[Example]:
    """``k`` (text, label) demonstrations from ``dataset``: ``k / classes`` per class, drawn and
    ordered by ``seed`` (the same seed gives the same list).

    Pass the train split: demonstrations must never come from the split that is evaluated.
    ``max_chars`` cuts each text (:func:`truncate`), which bounds the prompt's length.
    """
    n_classes = len(dataset.label_names)
    if not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k={k!r}: the number of demonstrations must be an int >= 0")
    if k % n_classes:
        raise ValueError(f"k={k} is not a multiple of the {n_classes} classes; balanced "
                         f"demonstrations need k = 0, {n_classes}, {2 * n_classes}, ...")
    per_class = k // n_classes
    labels = np.asarray(dataset.labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c, name in enumerate(dataset.label_names):
        pool = np.flatnonzero(labels == c)
        if per_class > len(pool):
            raise ValueError(f"k={k} needs {per_class} demonstrations per class but class "
                             f"{name!r} has only {len(pool)} examples in this split; use "
                             f"k <= {n_classes * len(pool)} or a larger split")
        chosen.append(rng.choice(pool, per_class, replace=False))
    order = rng.permutation(np.concatenate(chosen)) if k else []
    return [(truncate(dataset.texts[i], max_chars), int(labels[i])) for i in order]


def truncate(text: str, max_chars: int | None) -> str:
    """``text`` cut to ``max_chars`` characters (``None``: unchanged)."""
    if max_chars is None:
        return text
    if max_chars < 1:
        raise ValueError(f"max_chars={max_chars}: it must be at least 1, or None for no cut")
    return text[:max_chars]


def check_label_words(label_words: Sequence[str]) -> tuple[str, ...]:
    """``label_words`` as a tuple, after checking there are at least two, none empty, no repeat."""
    words = tuple(label_words)
    if len(words) < 2:
        raise ValueError(f"label_words={words!r}: give one word per class, at least two")
    empty = [i for i, w in enumerate(words) if not w.strip()]
    if empty:
        raise ValueError(f"label word(s) at position {empty} are empty: each class needs a "
                         f"non-empty answer word, e.g. {LABEL_WORDS}")
    if len(set(words)) != len(words):
        raise ValueError(f"label_words={words!r} repeat a word: the classes could not be told "
                         f"apart")
    return words


def prompt_messages(examples: Sequence[Example], query: str | None, *,
                    instruction: str = INSTRUCTION,
                    label_words: Sequence[str] = LABEL_WORDS) -> list[dict[str, str]]:
    """The chat: system turn ``instruction``, a user/assistant pair per demonstration (review,
    label word), then the query as a user turn (left out when ``query`` is None)."""
    words = check_label_words(label_words)
    messages = [{"role": "system", "content": instruction}]
    for text, label in examples:
        if not 0 <= label < len(words):
            raise ValueError(f"demonstration label {label} has no label word ({len(words)} "
                             f"given: {words})")
        messages.append({"role": "user", "content": QUERY_TEMPLATE.format(text=text)})
        messages.append({"role": "assistant", "content": words[label]})
    if query is not None:
        messages.append({"role": "user", "content": QUERY_TEMPLATE.format(text=query)})
    return messages


def build_prompt(examples: Sequence[Example], query: str, *, tokenizer: Any,
                 instruction: str = INSTRUCTION,
                 label_words: Sequence[str] = LABEL_WORDS) -> str:
    """The whole prompt as text, ending with the assistant turn opened: its next token is the
    answer. Rendered with the tokenizer's chat template."""
    return tokenizer.apply_chat_template(
        prompt_messages(examples, query, instruction=instruction, label_words=label_words),
        add_generation_prompt=True)


def split_prompt(examples: Sequence[Example], *, tokenizer: Any, instruction: str = INSTRUCTION,
                 label_words: Sequence[str] = LABEL_WORDS) -> tuple[str, str]:
    """``(prefix, query_template)``: the text shared by every query (system turn and
    demonstrations) and the rest with ``{query}`` in place of the review, so that
    ``prefix + query_template.format(query=q) == build_prompt(examples, q, ...)``.

    Raises ``ValueError`` if the chat template does not render the shared part as a prefix.
    """
    marker = "\x00QUERY\x00"
    prefix = tokenizer.apply_chat_template(
        prompt_messages(examples, None, instruction=instruction, label_words=label_words),
        add_generation_prompt=False)
    full = build_prompt(examples, marker, tokenizer=tokenizer, instruction=instruction,
                        label_words=label_words)
    if not full.startswith(prefix) or full.count(marker) != 1:
        raise ValueError("the chat template does not render the demonstrations as a prefix of "
                         "the prompt, so their key/value cache cannot be shared between queries")
    rest = full[len(prefix):].replace("{", "{{").replace("}", "}}")
    return prefix, rest.replace(marker, "{query}")


# ---------------------------------------------------------------------------------------------
# Scoring with a shared key/value cache


def _base_and_head(model: Any) -> tuple[Any, Any]:
    """The decoder stack and the LM head of a PaddleNLP causal LM (``model.qwen2``,
    ``model.lm_head``), to apply the head only where a score is read."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = getattr(model, "lm_head", None)
    if base is None or head is None:
        raise TypeError(f"{type(model).__name__} has no base_model_prefix decoder and lm_head; "
                        f"pass a PaddleNLP causal LM such as Qwen2ForCausalLM")
    return base, head


class _Row(NamedTuple):
    """One row of a forward batch: the query it scores, its label (None: all labels at once),
    its token ids after the prefix, and where to read which token ids."""

    query: int
    label: int | None
    ids: list[int]
    reads: list[tuple[int, list[int]]]


class FewShotScorer:
    """Scores queries against the label words after a fixed prompt prefix, whose key/value
    cache is computed once (:attr:`prefix_tokens`, :attr:`prefix_seconds`).

    PaddleNLP 3.0.0b4's cache (``use_cache=True``, ``past_key_values``) is a tuple with one
    ``(key, value)`` pair per layer, each ``[batch, tokens, kv_heads, head_dim]``; a forward
    with it attends to the cached tokens. Positions must be passed explicitly
    (``prefix_tokens + arange``): without ``position_ids`` PaddleNLP numbers the new tokens from
    0. For a batch, the cache is expanded along the batch axis and queries are right-padded: a
    real token never attends to the padding after it (causal mask), and each query's scores are
    read at its own last real position, so padding changes nothing.

    ``batch_size`` defaults to 1: on CPU, batches were slower per query (Qwen2.5-0.5B, 16
    reviews, two cores: 1.45 / 1.37 / 1.96 s at batch 1 / 4 / 8 with a 23-token prefix, 1.73 /
    2.32 / 3.35 s with a 920-token one), since the padding is computed like real tokens and the
    expanded prefix cache is copied in every layer. Batches may pay off on a GPU.
    """

    def __init__(self, model: Any, tokenizer: Any, examples: Sequence[Example], *,
                 instruction: str = INSTRUCTION, label_words: Sequence[str] = LABEL_WORDS,
                 batch_size: int = 1) -> None:
        import paddle

        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: it must be at least 1")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.examples = list(examples)
        self.label_words = check_label_words(label_words)
        self.label_ids = [tokenizer.encode(w) for w in self.label_words]
        for w, ids in zip(self.label_words, self.label_ids):
            if not ids:
                raise ValueError(f"label word {w!r} encodes to no token")
        prefix, self.query_template = split_prompt(self.examples, tokenizer=tokenizer,
                                                   instruction=instruction,
                                                   label_words=self.label_words)
        self.prefix, self.prefix_ids = prefix, tokenizer.encode(prefix)
        limit = model.config.max_position_embeddings
        if len(self.prefix_ids) >= limit:
            raise ValueError(f"the prompt prefix is {len(self.prefix_ids)} tokens, beyond the "
                             f"context length {limit}: use fewer demonstrations or cut them "
                             f"(select_examples(..., max_chars=...))")
        self._base, self._head = _base_and_head(model)
        start = time.perf_counter()
        with paddle.no_grad():
            ids = paddle.to_tensor([self.prefix_ids], dtype="int64")
            out = self._base(input_ids=ids, position_ids=paddle.arange(ids.shape[1]).unsqueeze(0),
                             use_cache=True, return_dict=True)
        self.cache = tuple((k, v) for k, v in out.past_key_values)
        self.prefix_seconds = time.perf_counter() - start

    @property
    def prefix_tokens(self) -> int:
        """Tokens computed once and shared: system turn and demonstrations."""
        return len(self.prefix_ids)

    @property
    def single_token(self) -> bool:
        """True when every label word is one token: one forward row per query."""
        return all(len(ids) == 1 for ids in self.label_ids)

    def query_ids(self, query: str, check: bool = True) -> list[int]:
        """Token ids of a query's part of the prompt (its user turn and the opened assistant
        turn). With ``check``, raises if the whole prompt does not tokenize as prefix ids +
        query ids (then cached scores would differ from uncached ones)."""
        part = self.query_template.format(query=query)
        ids = self.tokenizer.encode(part)
        if check and self.tokenizer.encode(self.prefix + part) != self.prefix_ids + ids:
            raise ValueError(f"the prompt for query {query[:30]!r} does not tokenize as prefix + "
                             f"query: the tokenizer merges tokens across the boundary")
        return ids

    def score(self, queries: Sequence[str]) -> np.ndarray:
        """Log-probability of each label word after each query: ``[len(queries), labels]``.

        Full-vocabulary log-probabilities (they need not sum to 1 over the label words: the
        rest is the mass on other tokens). A label word of several tokens is scored with
        teacher forcing, the sum of its tokens' log-probabilities; then each query takes one
        row per label word.
        """
        rows: list[_Row] = []
        for q, query in enumerate(queries):
            ids = self.query_ids(query)
            if not ids:
                raise ValueError(f"query {q} encodes to no token")
            if self.single_token:  # one row; every label read at the last position
                rows.append(_Row(q, None, ids, [(len(ids) - 1, [w[0] for w in self.label_ids])]))
            else:  # one row per label word: the query, then that word but its last token
                for lab, word in enumerate(self.label_ids):
                    reads = [(len(ids) - 1 + j, [t]) for j, t in enumerate(word)]
                    rows.append(_Row(q, lab, ids + word[:-1], reads))
        room = self.model.config.max_position_embeddings - self.prefix_tokens
        longest = max((len(r.ids) for r in rows), default=0)
        if longest > room:
            raise ValueError(f"a query is {longest} tokens and the prefix {self.prefix_tokens}: "
                             f"beyond the context length; cut the queries (max_query_chars)")
        scores = np.zeros((len(queries), len(self.label_words)))
        order = sorted(range(len(rows)), key=lambda r: len(rows[r].ids))  # less padding
        for start in range(0, len(order), self.batch_size):
            batch = [rows[r] for r in order[start:start + self.batch_size]]
            for row, logp in zip(batch, self._forward(batch)):
                if row.label is None:
                    scores[row.query] = logp[0]
                else:
                    scores[row.query, row.label] = float(logp.sum())
        return scores

    def _forward(self, batch: list[_Row]) -> list[np.ndarray]:
        """One cached forward of right-padded rows; per row, the log-probabilities of the
        requested token ids at the requested positions (``[reads, ids]``)."""
        import paddle

        width = max(len(row.ids) for row in batch)
        n, p = len(batch), self.prefix_tokens
        pad = self.tokenizer.pad_token_id or 0
        x = np.full((n, width), pad, dtype=np.int64)
        mask = np.zeros((n, p + width), dtype=np.int64)
        mask[:, :p] = 1
        for r, row in enumerate(batch):
            x[r, :len(row.ids)] = row.ids
            mask[r, p:p + len(row.ids)] = 1
        flat = [r * width + pos for r, row in enumerate(batch) for pos, _ in row.reads]
        with paddle.no_grad():
            past = [(k.expand([n] + k.shape[1:]), v.expand([n] + v.shape[1:]))
                    for k, v in self.cache]
            positions = paddle.arange(p, p + width, dtype="int64").unsqueeze(0).expand([n, width])
            out = self._base(input_ids=paddle.to_tensor(x), position_ids=positions,
                             attention_mask=paddle.to_tensor(mask), past_key_values=past,
                             use_cache=False, return_dict=True)
            hidden = out.last_hidden_state.reshape([n * width, -1])
            picked = paddle.gather(hidden, paddle.to_tensor(flat, dtype="int64"))
            logits = self._head(picked).astype("float32")
            # Not F.log_softmax: on CPU, Paddle 3.3's takes ~5 s for 3 rows of 151,936 logits
            # (300 times softmax's time); logsumexp takes 10 ms.
            logp = (logits - paddle.logsumexp(logits, axis=-1, keepdim=True)).numpy()
        result, i = [], 0
        for row in batch:
            result.append(np.array([[logp[i + j, t] for t in ids]
                                    for j, (_, ids) in enumerate(row.reads)]))
            i += len(row.reads)
        return result


def label_probabilities(scores: np.ndarray) -> np.ndarray:
    """Label-word log-probabilities normalised over the label words only (rows sum to 1)."""
    scores = np.asarray(scores, dtype=np.float64)
    z = scores - scores.max(axis=-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)


def calibrate(scores: np.ndarray, content_free_scores: np.ndarray) -> np.ndarray:
    """Contextual calibration (Zhao et al. 2021): each row's label probabilities divided by the
    mean label probabilities of the content-free queries, renormalised."""
    p_cf = label_probabilities(content_free_scores).mean(axis=0)
    return label_probabilities(np.log(label_probabilities(scores)) - np.log(p_cf))


# ---------------------------------------------------------------------------------------------
# Evaluation


def _recalls(pred: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    return {name: float(np.mean(pred[labels == c] == c)) if np.any(labels == c) else float("nan")
            for c, name in enumerate(names)}


def evaluate_fewshot(model: Any, tokenizer: Any, dataset: Any, examples: Sequence[Example], *,
                     instruction: str = INSTRUCTION, label_words: Sequence[str] = LABEL_WORDS,
                     max_query_chars: int | None = MAX_QUERY_CHARS,
                     content_free: Sequence[str] = CONTENT_FREE, batch_size: int = 1,
                     progress: bool | None = None) -> dict[str, Any]:
    """Accuracy of prompting ``model`` with ``examples`` on every text of ``dataset``.

    Returns ``k``, ``n``, ``accuracy``, ``recall`` (per class name), the same two after
    contextual calibration (``accuracy_calibrated``, ``recall_calibrated``, with
    ``content_free_probs``; empty ``content_free`` skips it), ``label_mass`` (mean probability
    the model puts on the label words at all), ``seconds_per_example`` (wall time of scoring
    the queries, excluding the one-off prefix: ``prefix_seconds``), ``prefix_tokens``,
    ``mean_query_tokens``, ``n_truncated`` (reviews cut to ``max_query_chars`` characters),
    ``single_token_labels``, and ``predictions`` / ``predictions_calibrated``.

    Raises ``ValueError`` if a demonstration's text is in ``dataset``: demonstrations must come
    from another split than the one evaluated.
    """
    words = check_label_words(label_words)
    names = tuple(dataset.label_names)
    if len(dataset) == 0:
        raise ValueError("the data set to evaluate is empty")
    if len(words) != len(names):
        raise ValueError(f"{len(words)} label words {words} for {len(names)} classes {names}: "
                         f"give one word per class, in label order")
    leaked = set(t for t, _ in examples) & set(dataset.texts)
    if leaked:
        raise ValueError(f"{len(leaked)} demonstration(s) are in the evaluated data set, e.g. "
                         f"{next(iter(leaked))[:30]!r}: draw them from the train split")
    texts = [truncate(t, max_query_chars) for t in dataset.texts]
    labels = np.asarray(dataset.labels)
    scorer = FewShotScorer(model, tokenizer, examples, instruction=instruction,
                           label_words=words, batch_size=batch_size)
    scores = np.zeros((len(texts), len(words)))
    bar = progress_bar(len(texts), f"few-shot k={len(examples)}", progress_enabled(progress))
    # Batches of similar lengths: right padding is computed like real tokens, so a batch of a
    # 10- and a 200-character review would cost two long ones.
    order = np.argsort([len(t) for t in texts], kind="stable")
    start = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        chunk = order[i:i + batch_size]
        scores[chunk] = scorer.score([texts[j] for j in chunk])
        bar.update(len(chunk))
    seconds = time.perf_counter() - start
    bar.close()
    pred = scores.argmax(axis=1)
    result: dict[str, Any] = {
        "k": len(examples), "n": len(texts), "accuracy": float(np.mean(pred == labels)),
        "recall": _recalls(pred, labels, names),
        "label_mass": float(np.exp(scores).sum(axis=1).mean()),
        "seconds_per_example": seconds / max(len(texts), 1),
        "prefix_seconds": scorer.prefix_seconds, "prefix_tokens": scorer.prefix_tokens,
        "mean_query_tokens": float(np.mean([len(scorer.query_ids(t, check=False))
                                            for t in texts])),
        "max_query_chars": max_query_chars,
        "n_truncated": sum(len(t) != len(o) for t, o in zip(texts, dataset.texts)),
        "single_token_labels": scorer.single_token, "predictions": pred.tolist(),
    }
    if content_free:
        cf = scorer.score(list(content_free))
        cal = calibrate(scores, cf).argmax(axis=1)
        result.update({
            "accuracy_calibrated": float(np.mean(cal == labels)),
            "recall_calibrated": _recalls(cal, labels, names),
            "content_free_probs": dict(zip(words, label_probabilities(cf).mean(axis=0).tolist())),
            "predictions_calibrated": cal.tolist(),
        })
    return result
