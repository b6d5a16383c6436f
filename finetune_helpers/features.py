"""Caching what is frozen: run a frozen backbone once, then train a head on its outputs.

When a backbone is frozen (and its dropout and BatchNorm are in eval mode) its output for an
example never changes, so computing it in every epoch is wasted work. ``extract_features`` runs
it once over a data set (eval mode, no gradients) and ``FeatureDataset`` serves the results to
``paddle.io.DataLoader``; training a head on them gives the same weights as training
``nn.Sequential(backbone, head)`` with the backbone frozen (tests/test_features.py checks this
to 1e-5). It does *not* hold for data augmentation (each epoch sees other pixels) or for a
BatchNorm left in train mode (it would use batch statistics).

Optional on-disk caching goes through :func:`finetune_helpers.cache.cached_build` (atomic,
checksummed ``features.npy`` / ``labels.npy``). The cache key is the caller's ``key`` (describe
the data and preprocessing there) plus a SHA-256 of the backbone's weights, so new weights
never reuse stale features. With a
cache the progress bar is off by default: a notebook's output must not depend on whether the
features were already on disk (nbval compares it).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import paddle

from finetune_helpers import cache
from finetune_helpers.train import (call_model, eval_mode, progress_bar, progress_enabled,
                                    split_batch, to_device)

FEATURES_VERSION = 1  # bump when the stored format changes


def weights_fingerprint(layer: paddle.nn.Layer) -> str:
    """SHA-256 over the names, shapes, dtypes and values of a layer's state dict."""
    h = hashlib.sha256()
    for name, tensor in sorted(layer.state_dict().items()):
        array = np.ascontiguousarray(tensor.numpy())
        h.update(f"{name}:{array.dtype}:{array.shape};".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def _owning_layer(fn: Callable, model: paddle.nn.Layer | None) -> paddle.nn.Layer:
    """The Layer behind ``fn``: ``model`` if given, ``fn`` itself, or the owner of a method."""
    if model is not None:
        if not isinstance(model, paddle.nn.Layer):
            raise TypeError(f"model= must be a paddle.nn.Layer, got {type(model).__name__}")
        return model
    if isinstance(fn, paddle.nn.Layer):
        return fn
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, paddle.nn.Layer):
        return owner
    raise ValueError("fn is a plain function, so its model cannot be put in eval mode or "
                     "fingerprinted; pass model=<the Layer fn calls>, e.g. "
                     "extract_features(lambda **kw: bert(**kw)[1], loader, model=bert)")


@paddle.no_grad()
def _run(fn: Callable, layer: paddle.nn.Layer, loader: Iterable, desc: str,
         progress: bool) -> tuple[np.ndarray, np.ndarray | None]:
    features: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    bar = progress_bar(total, desc, progress)
    with eval_mode(layer):
        try:
            for batch in loader:
                inputs, y = split_batch(to_device(batch))
                output = call_model(fn, inputs)
                if not isinstance(output, paddle.Tensor):
                    raise TypeError(
                        f"the frozen part returned a {type(output).__name__}, not a tensor; "
                        "pass a function that selects the output to keep, e.g. "
                        "lambda **kw: bert(**kw)[1] for BERT's pooled output")
                features.append(output.astype("float32").numpy())
                if y is not None:
                    labels.append(y.numpy() if isinstance(y, paddle.Tensor) else np.asarray(y))
                bar.update(1)
        finally:
            bar.close()
    if not features:
        raise ValueError("the loader yielded no batch")
    if labels and len(labels) != len(features):
        raise ValueError("some batches have labels and some do not")
    return (np.concatenate(features, axis=0),
            np.concatenate(labels, axis=0) if labels else None)


def extract_features(fn: Callable, loader: Iterable, *, model: paddle.nn.Layer | None = None,
                     desc: str = "features", cache_name: str | None = None,
                     key: dict[str, Any] | None = None,
                     progress: bool | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the frozen ``fn`` once over ``loader``.

    ``fn`` is a Layer, a method of one, or a function that calls ``model`` (then pass
    ``model=``): that Layer is put in eval mode (and each sublayer's mode restored afterwards)
    and its weights are part of the cache key. ``fn`` must return one tensor.

    Returns ``(features, labels)``: float32 features stacked over all examples in loader order,
    and the labels (``None`` if the batches carry none). Dict batches are passed as keyword
    arguments (all keys but ``labels``).

    With ``cache_name`` the arrays are stored under ``<cache dir>/<cache_name>/`` and reused
    while ``key`` (required then: describe data, preprocessing, which part of the model) and the
    weights of ``fn`` are unchanged. Use a non-shuffling loader: the cache stores one order.
    """
    layer = _owning_layer(fn, model)
    if cache_name is None:
        if key is not None:
            raise ValueError("key= only matters with cache_name=; pass both to cache the features")
        return _run(fn, layer, loader, desc, progress_enabled(progress))
    if key is None:
        raise ValueError("cache_name= needs key=: a dict describing the data, the preprocessing "
                         "and the part of the model, so other inputs never reuse this entry")
    full_key = {"kind": "features", "version": FEATURES_VERSION, "key": key,
                "weights_sha256": weights_fingerprint(layer)}
    show = bool(progress) if progress is not None else False

    def build(folder: Path) -> None:
        features, labels = _run(fn, layer, loader, desc, show)
        np.save(folder / "features.npy", features)
        if labels is not None:
            np.save(folder / "labels.npy", labels)

    # verbose=False: a "[cache] building ..." line would make the output differ between runs.
    entry = cache.cached_build(cache_name, full_key, build, verbose=False)
    labels_path = entry / "labels.npy"
    return (np.load(entry / "features.npy"),
            np.load(labels_path) if labels_path.exists() else None)


class FeatureDataset(paddle.io.Dataset):
    """Pre-computed features and their labels as a map-style dataset of ``(feature, label)``."""

    def __init__(self, features: np.ndarray, labels: np.ndarray) -> None:
        if labels is None:
            raise ValueError("FeatureDataset needs labels; extract features from a labelled "
                             "loader")
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} feature rows but {len(labels)} labels; both must "
                             "come from the same extract_features call")
        super().__init__()
        self.features = np.asarray(features, dtype=np.float32)
        self.labels = np.asarray(labels)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.features[index], self.labels[index]
