"""QLoRA on CPU: a frozen base kept as 4-bit NormalFloat (NF4) under PaddleNLP's LoRA adapters.

QLoRA (Dettmers et al., 2023) trains LoRA adapters on a base model whose weights are stored in
4 bits and dequantised block by block when a layer runs. PaddleNLP 3.0.0b4 has that path
(``QuantizationConfig(weight_quantize_algo="nf4")`` in ``from_pretrained``, then ``LoRAModel``),
but **none of it runs on a CPU** (checked with paddlepaddle 3.3.1, CPU wheel):

* ``nf4`` / ``fp4``: ``paddlenlp.quantization.qlora`` imports PaddleSlim's CUDA-only custom ops
  (``paddleslim_ops``, built from ``.cu`` files by ``setup_cuda.py``): ``ModuleNotFoundError: No
  module named 'paddleslim'``, and ``QuantizationLinear(..., "nf4", ...)`` raises ``ImportError:
  Please run the following commands to install: qlora related package first``.
* ``weight_only_int8`` / ``weight_only_int4`` / ``llm.int8``: ``from_pretrained`` overrides the
  dtype to float16 and calls ``paddle.nn.quant.weight_quantize``, which fails with
  ``ValueError: (InvalidArgument) Currently, arch only support 70, 75, 80, 86, 89, 90, 100.``
  (a CPU has no CUDA arch; on float32 the kernel is not even registered: ``RuntimeError:
  (NotFound) The kernel with key (CPU, Undefined(AnyLayout), float32) of kernel
  `weight_quantize` is not registered``). Forcing ``arch=80`` quantises on the CPU, but the
  layer's forward, ``weight_only_linear``, has no CPU kernel: ``RuntimeError: (NotFound) The
  kernel `weight_only_linear` is not registered.`` (``weight_dequantize`` neither).

So this module writes by hand the one part no maintained library does on a CPU, the NF4 weight
storage and its dequantising matmul, and keeps everything else PaddleNLP's:

* :func:`quantize_nf4` / :func:`dequantize_nf4`: the QLoRA paper's NF4 format. The weight (Paddle
  layout ``[in, out]``) is flattened row-major (as PaddleNLP's ``qlora_weight_quantize`` does) and
  cut into blocks of 64; each block is divided by its absolute maximum and every value replaced
  by the nearest of the 16 levels :data:`NF4_LEVELS` (codes 0..15). Two codes share a byte (the
  first in the high nibble, as in PaddleSlim and bitsandbytes), the scales stay float32: 4 bits
  per weight plus 32 bits per 64 weights = 4.5 bits. **No double quantisation** of the scales
  (it would save another 0.37 bit per weight, about 17 MB on Qwen2.5-0.5B's projections, for a
  second quantiser to get right).
* :class:`NF4Linear`: a frozen Linear stored that way (codes and scales are buffers, not
  parameters: nothing can train them), the bias kept as it was.
* :class:`NF4LoRALinear`: PaddleNLP's own ``LoRALinear`` whose frozen weight is replaced by NF4
  storage. The adapters (``lora_A`` Kaiming-uniform, ``lora_B`` zeros, scaling ``alpha / r``),
  ``mark_only_lora_as_trainable``, ``save_pretrained`` / ``from_pretrained`` and
  ``disable_lora`` all stay ``paddlenlp.peft``'s, which is why LoRA is applied FIRST, on the
  float32 model, and the base quantised afterwards (``LoRAModel`` refuses layers that are not
  ``nn.Linear``, so the other order fails inside PaddleNLP).
* :func:`quantize_model`: swaps the matching layers in place and reports the bytes saved.

Both layers multiply through :class:`_DequantMatmul`, which keeps no float32 weight for the
backward pass: the input gradient dequantises the weight a second time instead (what
bitsandbytes' 4-bit matmul does too). Otherwise autograd would hold every layer's float32
weight between forward and backward, and training would need the memory QLoRA is meant to save.
The price is speed: every forward dequantises all quantised weights, every backward again.

Measured on Qwen2.5-0.5B (all 168 attention and MLP projections; embeddings and LM head stay
float32): those weights shrink from 1,365 MiB to 192 MiB, and a LoRA r=8 forward + backward on
4 x 60 tokens took about 22 s instead of 12-15 s (2 busy cores). Quality is the real cost on
this small, already twice-quantised checkpoint: per-character perplexity on 4 held-out poems
rose from 108 to 241 (NF4 in blocks of 32: 174; a uniform 4-bit grid in blocks of 64: 187).

Usage (QLoRA, Qwen2/Llama projection names)::

    from paddlenlp.peft import LoRAConfig, LoRAModel
    from finetune_helpers import quant

    lora = LoRAModel(model, LoRAConfig(target_modules=list(quant.PROJECTIONS), r=8,
                                       lora_alpha=16, tensor_parallel_degree=1))
    lora.mark_only_lora_as_trainable()
    print(quant.quantize_model(lora, quant.PROJECTIONS))  # LoRA layers and plain Linear alike
    lora.save_pretrained(folder)                          # the adapters only
"""

from __future__ import annotations

import gc
import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import paddle
from paddle import nn
from paddle.autograd import PyLayer
from paddlenlp.peft import LoRAModel
from paddlenlp.peft.lora.lora_layers import LoRALinear

#: The 16 NF4 levels of the QLoRA paper (quantiles of N(0, 1) scaled to [-1, 1], with an exact
#: zero), as used by bitsandbytes and PaddleSlim; the tests derive them again from the paper.
NF4_LEVELS: tuple[float, ...] = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)
#: Weights per absmax scale, the QLoRA paper's choice.
BLOCK_SIZE = 64
#: The attention and MLP projections of PaddleNLP's Qwen2 and Llama models (re.fullmatch).
PROJECTIONS = (r".*\.(q|k|v|o)_proj", r".*\.(gate|up|down)_proj")

_LEVELS32 = np.asarray(NF4_LEVELS, dtype=np.float32)
# A value goes to the nearest level: bucketize against the 15 midpoints (a tie goes down).
_MIDPOINTS32 = (_LEVELS32[1:] + _LEVELS32[:-1]) / np.float32(2)
# Row b holds the two levels byte b encodes, so one gather decodes both nibbles.
_PAIRS32 = np.stack([_LEVELS32[np.arange(256) >> 4], _LEVELS32[np.arange(256) & 15]], axis=1)


def _check_block_size(block_size: int) -> None:
    if not isinstance(block_size, int) or block_size < 2 or block_size % 2:
        raise ValueError(f"block_size must be an even int >= 2 (two codes per byte), got "
                         f"{block_size!r}; QLoRA uses {BLOCK_SIZE}")


def quantize_nf4(weight: paddle.Tensor, block_size: int = BLOCK_SIZE
                 ) -> tuple[paddle.Tensor, paddle.Tensor]:
    """``(codes, scales)``: ``weight`` as packed NF4 codes (uint8, two per byte) and per-block
    absmax scales (float32).

    The weight is flattened row-major and zero-padded to whole blocks; an all-zero block gets
    scale 0 and decodes to zeros. ``codes`` has ``blocks * block_size / 2`` bytes.
    """
    _check_block_size(block_size)
    with paddle.no_grad():
        flat = weight.detach().astype("float32").flatten()
        n = int(flat.shape[0])
        padded = math.ceil(n / block_size) * block_size
        if padded > n:
            flat = paddle.concat([flat, paddle.zeros([padded - n], dtype="float32")])
        blocks = flat.reshape([-1, block_size])
        scales = blocks.abs().max(axis=1)
        safe = paddle.where(scales > 0, scales, paddle.ones_like(scales))
        normed = blocks / safe.unsqueeze(1)
        codes = paddle.bucketize(normed, paddle.to_tensor(_MIDPOINTS32, place=flat.place))
        pairs = codes.astype("int32").reshape([-1, 2])
        packed = (pairs[:, 0] * 16 + pairs[:, 1]).astype("uint8")
    return packed, scales


_PAIR_TABLES: dict[str, paddle.Tensor] = {}


def _pair_table(place: paddle.CPUPlace | paddle.CUDAPlace) -> paddle.Tensor:
    key = str(place)
    if key not in _PAIR_TABLES:
        _PAIR_TABLES[key] = paddle.to_tensor(_PAIRS32, place=place)
    return _PAIR_TABLES[key]


def dequantize_nf4(codes: paddle.Tensor, scales: paddle.Tensor, shape: Sequence[int],
                   block_size: int = BLOCK_SIZE) -> paddle.Tensor:
    """The float32 weight of ``shape`` that :func:`quantize_nf4` codes describe:
    ``level[code] * scale`` of its block. Vectorised: one gather decodes every byte."""
    _check_block_size(block_size)
    n = math.prod(shape)
    if codes.shape[0] * 2 != scales.shape[0] * block_size or codes.shape[0] * 2 < n:
        raise ValueError(f"{codes.shape[0]} code bytes and {scales.shape[0]} scales do not "
                         f"describe a {list(shape)} weight in blocks of {block_size}")
    with paddle.no_grad():
        pairs = paddle.gather(_pair_table(codes.place), codes.astype("int32"))
        flat = (pairs.reshape([-1, block_size]) * scales.unsqueeze(1)).flatten()
        if flat.shape[0] != n:
            flat = flat[:n]
    return flat.reshape(list(shape))


class _DequantMatmul(PyLayer):
    """``x @ W`` for a frozen weight given as a function that dequantises it.

    Written by hand because Paddle's CPU build has no weight-only matmul (see the module
    notes). Autograd keeps only the function, not the float32 ``W``: the backward pass computes
    ``dx = dy @ W^T`` from a fresh dequantisation. There is no gradient for ``W``.
    """

    @staticmethod
    def forward(ctx, x: paddle.Tensor, weight_fn: Callable[[], paddle.Tensor]) -> paddle.Tensor:
        ctx.weight_fn = weight_fn
        weight = weight_fn()
        return paddle.matmul(x, weight if weight.dtype == x.dtype else weight.astype(x.dtype))

    @staticmethod
    def backward(ctx, dy: paddle.Tensor) -> paddle.Tensor:
        weight = ctx.weight_fn()
        return paddle.matmul(dy, weight if weight.dtype == dy.dtype else weight.astype(dy.dtype),
                             transpose_y=True)


def _nf4_linear(x: paddle.Tensor, weight_fn: Callable[[], paddle.Tensor],
                bias: paddle.Tensor | None) -> paddle.Tensor:
    out = _DequantMatmul.apply(x, weight_fn)
    return out if bias is None else out + bias


def _store(layer: nn.Layer, weight: paddle.Tensor, block_size: int) -> None:
    """Put NF4 buffers for ``weight`` on ``layer`` (persistable: they are in its state_dict)."""
    codes, scales = quantize_nf4(weight, block_size)
    layer.register_buffer("nf4_codes", codes, persistable=True)
    layer.register_buffer("nf4_scales", scales, persistable=True)
    layer.nf4_shape = tuple(int(s) for s in weight.shape)
    layer.block_size = block_size


def nf4_nbytes(layer: nn.Layer) -> int:
    """Bytes of a quantised layer's weight storage: packed codes plus float32 scales."""
    return int(layer.nf4_codes.numel()) + 4 * int(layer.nf4_scales.numel())


class NF4Linear(nn.Layer):
    """A frozen Linear whose weight ``[in, out]`` is stored as NF4 (4.5 bits per weight).

    ``forward(x) = x @ dequantize(W) + bias``, dequantising on every call. The codes and scales
    are buffers (no gradient, never in ``parameters()``); the bias is the original parameter,
    whatever its ``stop_gradient``. Build one with :meth:`from_linear`.
    """

    def __init__(self, weight: paddle.Tensor, bias: paddle.Tensor | None = None,
                 block_size: int = BLOCK_SIZE) -> None:
        super().__init__()
        if len(weight.shape) != 2:
            raise ValueError(f"expected a 2-D Linear weight [in, out], got shape {weight.shape}")
        _store(self, weight, block_size)
        self.bias = bias

    @classmethod
    def from_linear(cls, linear: nn.Linear, block_size: int = BLOCK_SIZE) -> "NF4Linear":
        """The NF4 version of ``linear`` (its bias parameter is shared, not copied)."""
        return cls(linear.weight, linear.bias, block_size)

    @property
    def in_features(self) -> int:
        return self.nf4_shape[0]

    @property
    def out_features(self) -> int:
        return self.nf4_shape[1]

    def dequantized_weight(self) -> paddle.Tensor:
        """A fresh float32 ``[in, out]`` copy of the weight as the layer uses it."""
        return dequantize_nf4(self.nf4_codes, self.nf4_scales, self.nf4_shape, self.block_size)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return _nf4_linear(x, self.dequantized_weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nf4 block_size={self.block_size}, bias={self.bias is not None}")


class NF4LoRALinear(LoRALinear):
    """PaddleNLP's ``LoRALinear`` with its frozen weight stored as NF4.

    Made from an existing ``LoRALinear`` by :meth:`convert` (in place: the layer object, its
    ``lora_A``/``lora_B`` parameters and its config stay; only the weight changes storage), so
    every ``LoRAModel`` feature that touches the adapters keeps working. ``forward`` is
    PaddleNLP's plain-LoRA branch over the dequantised base:
    ``x @ W + b + dropout(x) @ A @ B * scaling`` (the LoRA term is skipped after
    ``disable_lora()``). Merging is refused: the merged weight would need requantising.
    """

    @classmethod
    def convert(cls, layer: LoRALinear, block_size: int = BLOCK_SIZE) -> "NF4LoRALinear":
        """Quantise ``layer``'s frozen weight and turn the layer into an ``NF4LoRALinear``."""
        if type(layer) is not LoRALinear:
            raise TypeError(f"expected paddlenlp's LoRALinear, got {type(layer).__name__}")
        unsupported = [name for name, on in (("pissa", layer.pissa), ("use_mora", layer.use_mora),
                                             ("lora_use_mixer", layer.lora_use_mixer),
                                             ("merged", layer.merged)) if on]
        if unsupported:
            raise NotImplementedError(
                f"NF4 base weights support plain LoRA only; this LoRALinear has "
                f"{', '.join(unsupported)} set. Build the LoRAConfig without pissa, use_mora and "
                f"lora_use_mixer, and quantise before merging (or unmerge first)")
        weight = layer.weight
        _store(layer, weight, block_size)
        del layer._parameters["weight"]  # the float32 weight goes with its last reference
        layer.__class__ = cls
        return layer

    def dequantized_weight(self) -> paddle.Tensor:
        """A fresh float32 ``[in, out]`` copy of the frozen base weight."""
        return dequantize_nf4(self.nf4_codes, self.nf4_scales, self.nf4_shape, self.block_size)

    def forward(self, input: paddle.Tensor, *args, **kwargs) -> paddle.Tensor:
        result = _nf4_linear(input, self.dequantized_weight, self.bias)
        if not self.disable_lora:  # PaddleNLP's own expression, for identical arithmetic
            result += (self.lora_dropout(input) @ self.lora_A @ self.lora_B) * self.scaling
        return result

    def merge(self) -> None:
        raise NotImplementedError(
            "cannot merge a LoRA update into an NF4 base weight (the sum would have to be "
            "requantised, losing the update). Save the adapters (LoRAModel.save_pretrained), "
            "load them onto the float32 model with LoRAModel.from_pretrained and merge there")

    def unmerge(self) -> None:
        self.merge()

    def extra_repr(self) -> str:
        return (f"in_features={self.nf4_shape[0]}, out_features={self.nf4_shape[1]}, "
                f"rank={self.r}, nf4 block_size={self.block_size}")


@dataclass(frozen=True)
class QuantReport:
    """What :func:`quantize_model` did: layer names, weights, bytes of the weights before
    (float32) and after (codes + scales). Biases stay float32 and are not counted."""

    layers: tuple[str, ...]
    weights: int
    bytes_before: int
    bytes_after: int
    block_size: int

    @property
    def ratio(self) -> float:
        """How many times smaller the quantised weights are."""
        return self.bytes_before / self.bytes_after

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.bytes_after / self.weights

    def __str__(self) -> str:
        return (f"NF4 (blocks of {self.block_size}): {len(self.layers)} layers, "
                f"{self.weights:,} weights, {self.bytes_before / 2**20:,.1f} MiB -> "
                f"{self.bytes_after / 2**20:,.1f} MiB ({self.ratio:.2f}x smaller, "
                f"{self.bits_per_weight:.2f} bits per weight)")


def _root(model: nn.Layer) -> nn.Layer:
    """The layer whose sublayer names PaddleNLP's LoRA matches (inside a ``LoRAModel``)."""
    return model.model if isinstance(model, LoRAModel) else model


def _patterns(target_modules: str | Sequence[str]) -> list[str]:
    patterns = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if not patterns:
        raise ValueError("target_modules is empty: give regexes of Linear layer names, e.g. "
                         "finetune_helpers.quant.PROJECTIONS")
    return patterns


def _release_freed_memory() -> None:
    """Collect, then hand freed heap pages back to the OS where the C library is glibc.

    glibc keeps freed chunks for reuse, so the RSS hardly shows the float32 weights going.
    Measured on Qwen2.5-0.5B with LoRA (3,495 MiB before; the quantised weights shrink by
    1,173 MiB): 2,965 MiB after quantising and ``gc.collect()``, 2,283 MiB after
    ``malloc_trim(0)``. Elsewhere this is only ``gc.collect()``.
    """
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to trim
        pass


def quantize_model(model: nn.Layer, target_modules: str | Sequence[str],
                   block_size: int = BLOCK_SIZE) -> QuantReport:
    """Store the weights of the Linear layers whose names match ``target_modules`` as NF4,
    in place, and return a :class:`QuantReport`.

    Names are matched as PaddleNLP's ``LoRAConfig.target_modules`` are (``re.fullmatch`` on the
    sublayer name, inside a ``LoRAModel`` on the wrapped model's names). A plain ``nn.Linear``
    becomes an :class:`NF4Linear`; a ``LoRALinear`` (LoRA applied first) becomes an
    :class:`NF4LoRALinear` with its adapters untouched. Anything else that matches is an error,
    raised before any layer changes. Embeddings and the LM head are not Linear layers in
    PaddleNLP's Qwen2/Llama, so :data:`PROJECTIONS` leaves them float32.
    """
    _check_block_size(block_size)
    root = _root(model)
    patterns = _patterns(target_modules)
    matched = [(name, layer) for name, layer in root.named_sublayers()
               if any(re.fullmatch(p, name) for p in patterns)]
    if not matched:
        linears = [n for n, layer in root.named_sublayers() if isinstance(layer, nn.Linear)]
        raise ValueError(
            f"target_modules {patterns} match no layer of {type(root).__name__} (re.fullmatch "
            f"on the whole name). Its Linear layers are named like {linears[:3]}; a pattern "
            fr"such as r'.*\.q_proj' matches every layer's q_proj")
    for name, layer in matched:
        if isinstance(layer, (NF4Linear, NF4LoRALinear)):
            raise ValueError(f"{name} is already NF4; quantise each layer once")
        if type(layer) not in (nn.Linear, LoRALinear):
            raise TypeError(f"{name} is a {type(layer).__name__}; target_modules must match "
                            f"nn.Linear or LoRALinear layers only (narrow the pattern)")
    names, weights, before, after = [], 0, 0, 0
    for name, layer in matched:
        weight = layer.weight
        weights += int(weight.numel())
        before += int(weight.numel()) * weight.element_size()
        if type(layer) is LoRALinear:
            new = NF4LoRALinear.convert(layer, block_size)
        else:
            new = NF4Linear.from_linear(layer, block_size)
            parent = root
            *path, last = name.split(".")
            for part in path:
                parent = getattr(parent, part)
            setattr(parent, last, new)
        after += nf4_nbytes(new)
        names.append(name)
        del weight, layer, new
    _release_freed_memory()
    return QuantReport(tuple(names), weights, before, after, block_size)


def adapter_state_dict(model: nn.Layer) -> dict[str, paddle.Tensor]:
    """Only the LoRA adapters (``lora_A``, ``lora_B``, ...) of ``model``'s state_dict, named as
    in ``LoRAModel.save_pretrained``'s file: what a QLoRA run needs to save."""
    return {k: v for k, v in _root(model).state_dict().items()
            if k.rsplit(".", 1)[-1].startswith("lora_")}
