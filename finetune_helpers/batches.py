"""What a batch is, for every loop of the book: its inputs, its labels, and what the model returns.

Batches are either tuples ``(x, y)`` (images) or dicts (text: every key except ``labels`` is a
keyword argument of the model). A model may return a tensor of logits, a tuple ``(loss, logits,
...)``, a dict, or a PaddleNLP output object; :func:`output_field` reads any of them.

:data:`IGNORE_INDEX` lives here, the one module that the training loop
(:mod:`finetune_helpers.train`), the data-parallel code (:mod:`finetune_helpers.distributed`)
and the language-model helpers (:mod:`finetune_helpers.zoo.smollm2`) all import, so the value
is defined once and no two of them import each other for it. Importing this module loads
neither paddle nor numpy (the language-model helpers import it before ``runtime.setup()`` may
have run); the functions import them when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import paddle

#: Label value that PaddleNLP's losses skip (padding, prompt tokens): such tokens do not count.
IGNORE_INDEX = -100


def on_gpu() -> bool:
    """True when paddle's current device is a GPU."""
    import paddle
    return paddle.get_device().startswith("gpu")


def to_device(obj: Any) -> Any:
    """Move tensors (and numpy arrays) in ``obj`` to paddle's current device; no-op on CPU."""
    import numpy as np
    import paddle

    if isinstance(obj, dict):
        return {k: to_device(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return paddle.to_tensor(obj)
    if isinstance(obj, paddle.Tensor) and on_gpu() and not obj.place.is_gpu_place():
        return obj.cuda()
    return obj


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, labels)`` from a dict batch (labels under ``"labels"``) or a tuple ``(x, y)``."""
    if isinstance(batch, dict):
        return {k: v for k, v in batch.items() if k != "labels"}, batch.get("labels")
    if isinstance(batch, (list, tuple)):
        if len(batch) == 2:
            return batch[0], batch[1]
        if len(batch) == 1:
            return batch[0], None
        raise ValueError(f"a tuple batch must be (inputs, labels) or (inputs,), got {len(batch)} "
                         "items; return a dict from the collate function to pass several inputs")
    return batch, None


def call_model(model: Callable, inputs: Any, **extra: Any) -> Any:
    """``model(**inputs, **extra)`` for dict inputs, ``model(inputs, **extra)`` otherwise."""
    if isinstance(inputs, dict):
        return model(**inputs, **extra)
    return model(inputs, **extra)


def output_field(output: Any, name: str) -> paddle.Tensor | None:
    """Take ``"logits"`` or ``"loss"`` from what a model returned, whatever its form.

    Handles a plain tensor (logits), PaddleNLP output objects (attributes), dicts, and tuples
    ``(loss, logits, ...)`` / ``(logits, ...)`` where the loss, if present, is the 0-d first item.
    Returns ``None`` when the field is absent.
    """
    import paddle

    if name not in ("logits", "loss"):
        raise ValueError(f"name must be 'logits' or 'loss', got {name!r}")
    if isinstance(output, paddle.Tensor):
        return output if name == "logits" else None
    value = getattr(output, name, None)
    if isinstance(value, paddle.Tensor):
        return value
    if isinstance(output, dict):  # PaddleNLP ModelOutput is a dict; the attribute was None
        return output.get(name)
    if isinstance(output, (list, tuple)):
        tensors = [t for t in output if isinstance(t, paddle.Tensor)]
        has_loss = bool(tensors) and tensors[0].size == 1 and tensors[0].ndim <= 1
        if name == "loss":
            return tensors[0] if has_loss else None
        rest = tensors[1:] if has_loss else tensors
        return rest[0] if rest else None
    raise TypeError(f"cannot read {name!r} from a model output of type {type(output).__name__}; "
                    "return a tensor, a tuple or an object with .logits/.loss")


def batch_size(inputs: Any, labels: Any) -> int:
    """Number of examples in a batch: the first dimension of its labels, else of its inputs."""
    for t in (labels, inputs):
        if isinstance(t, dict):
            t = next(iter(t.values()), None)
        if isinstance(t, (list, tuple)):
            t = t[0] if t else None
        if t is not None and hasattr(t, "shape") and len(t.shape) > 0:
            return int(t.shape[0])
    return 1
