"""Read a legacy (pre-1.6, non-zip) ``torch.save`` state dict into numpy arrays, without torch.

Why by hand: the book's offline CNN weights ship only as such a file, torch is not a dependency
of the book, and no maintained library reads this format without importing torch (safetensors,
numpy and paddle do not). ``paddle.load`` does not read it either.

The legacy format is a sequence of pickles followed by raw bytes:

1. the magic number ``0x1950a86a20f9469cfc6c``, 2. the protocol version ``1001``,
3. a dict of system info (byte order, type sizes),
4. the object itself (here an ``OrderedDict`` of tensors); each tensor is pickled as
   ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` and each storage as
   the persistent id ``('storage', <torch.XStorage>, key, location, numel, view_metadata)``,
5. the list of storage keys, then for each key, in that order, an 8-byte little-endian element
   count followed by the storage's raw bytes.

Unpickling runs code named by the file, so the unpickler here resolves only the three kinds of
names that a plain state dict needs (``collections.OrderedDict``, ``_rebuild_tensor_v2``, the
storage types) to harmless local stand-ins and refuses every other global; persistent ids and
tensor geometry are validated against the storage sizes before any bytes are viewed.
"""

from __future__ import annotations

import collections
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

#: torch storage type name -> little-endian numpy dtype.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}

_ZIP_MAGIC = b"PK\x03\x04"


class TorchFileError(ValueError):
    """The file is not a readable legacy ``torch.save`` state dict (wrong format, truncated)."""


class _Sealed:
    """Base of the records the unpickler creates: pickle's BUILD opcode (``__setstate__``) could
    otherwise rewrite a record after it was validated (e.g. a negative stride)."""

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"pickle state on {type(self).__name__} is not allowed")


@dataclass(frozen=True)
class _StorageType(_Sealed):
    name: str
    dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef(_Sealed):
    """A storage (or a view into one) named by a persistent id; bytes are read later."""

    key: str
    dtype: np.dtype
    numel: int
    view_offset: int = 0
    view_numel: int | None = None


@dataclass(frozen=True)
class _PendingTensor(_Sealed):
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_tuple(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(_is_int(v) and v >= 0 for v in value):
        raise pickle.UnpicklingError(f"tensor {what} must be a tuple of non-negative ints, "
                                     f"got {value!r}")
    return value


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None) -> _PendingTensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: records the geometry, copies nothing."""
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v2 expects a storage, got {type(storage)}")
    if not _is_int(storage_offset) or storage_offset < 0:
        raise pickle.UnpicklingError(f"bad storage offset {storage_offset!r}")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor size {size} and stride {stride} differ in length")
    return _PendingTensor(storage, storage_offset, size, stride)


class ForbiddenGlobalError(pickle.UnpicklingError):
    """The file names a global (function or class) that a plain state dict never needs."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the names a plain tensor state dict needs; every other global is refused."""

    def __init__(self, file, storages: dict[str, _StorageRef]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name, STORAGE_DTYPES[name])
        raise ForbiddenGlobalError(
            f"forbidden global {module}.{name}: this reader only allows collections.OrderedDict, "
            f"torch._utils._rebuild_tensor_v2 and torch.{{{','.join(STORAGE_DTYPES)}}}; the file "
            "is not a plain tensor state dict (or is malicious). Do not load it with torch either.")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r} (expected a storage)")
        _, stype, key, _location, numel, view = pid
        if not isinstance(stype, _StorageType) or stype.name not in STORAGE_DTYPES \
                or not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise pickle.UnpicklingError(f"malformed storage id {pid!r}")
        dtype = STORAGE_DTYPES[stype.name]
        root = self._storages.setdefault(key, _StorageRef(key, dtype, numel))
        if (root.dtype, root.numel) != (dtype, numel):
            raise pickle.UnpicklingError(f"storage {key} is declared twice with different types")
        if view is None:
            return root
        # Pre-0.4 files may name a slice of a storage: (view_key, offset, numel).
        if not (isinstance(view, tuple) and len(view) == 3 and _is_int(view[1]) and
                _is_int(view[2]) and 0 <= view[1] and 0 <= view[2] and view[1] + view[2] <= numel):
            raise pickle.UnpicklingError(f"malformed storage view {view!r} of storage {key}")
        return _StorageRef(key, dtype, numel, view[1], view[2])


def _load_pickle(f, storages: dict[str, _StorageRef], path: Path, what: str):
    try:
        return _RestrictedUnpickler(f, storages).load()
    except ForbiddenGlobalError:
        raise
    except Exception as err:  # cut-off data, malformed opcodes, state our records refuse
        raise TorchFileError(f"{path}: truncated or corrupt while reading the {what} ({err}); "
                             "re-download or reinstall the file") from err


def _materialize(t: _PendingTensor, data: dict[str, np.ndarray], name: str) -> np.ndarray:
    base = data[t.storage.key]
    if t.storage.view_numel is not None:
        base = base[t.storage.view_offset:t.storage.view_offset + t.storage.view_numel]
    if 0 in t.size:
        return np.zeros(t.size, dtype=base.dtype)
    last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
    if last >= base.size:  # checked before as_strided, which would read outside the buffer
        raise TorchFileError(f"tensor {name!r} (offset {t.offset}, size {t.size}, stride "
                             f"{t.stride}) reaches past its storage of {base.size} elements")
    view = np.lib.stride_tricks.as_strided(
        base[t.offset:], shape=t.size, strides=[s * base.itemsize for s in t.stride],
        writeable=False)
    return np.array(view, copy=True, order="C")


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a legacy ``torch.save`` file of a flat ``{name: tensor}`` dict, without torch.

    Returns a new, writable, C-contiguous numpy array per tensor, in file order. Raises
    :class:`TorchFileError` for a zip-format (PyTorch >= 1.6) file, a truncated file or a file
    that is not a flat tensor dict, and ``pickle.UnpicklingError`` for any global other than the
    few a state dict needs (e.g. ``os.system`` in a malicious file).
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
        if head == _ZIP_MAGIC:
            raise TorchFileError(
                f"{path} is a zip-format torch file (torch.save in PyTorch >= 1.6, or "
                "TorchScript); "
                "this reader handles only the legacy format. Convert it once where torch is "
                "installed: torch.save(torch.load(p), out, _use_new_zipfile_serialization=False), "
                "or export it to safetensors and read that with the `safetensors` package.")
        f.seek(0)
        storages: dict[str, _StorageRef] = {}
        magic = _load_pickle(f, storages, path, "magic number")
        if magic != MAGIC_NUMBER:
            raise TorchFileError(f"{path} is not a legacy torch.save file (no magic number)")
        protocol = _load_pickle(f, storages, path, "protocol version")
        if protocol != PROTOCOL_VERSION:
            raise TorchFileError(f"{path}: unsupported torch protocol version {protocol!r}")
        sys_info = _load_pickle(f, storages, path, "system info")
        if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
            raise TorchFileError(f"{path}: only little-endian files are supported ({sys_info!r})")
        obj = _load_pickle(f, storages, path, "state dict")
        keys = _load_pickle(f, storages, path, "storage key list")
        if not isinstance(obj, dict) or not all(
                isinstance(k, str) and isinstance(v, _PendingTensor) for k, v in obj.items()):
            raise TorchFileError(f"{path} does not hold a flat dict of tensors (a state_dict); "
                                 "save `model.state_dict()`, not the model or a checkpoint dict")
        if not isinstance(keys, list) or sorted(keys) != sorted(storages):
            raise TorchFileError(f"{path}: the storage key list does not match the tensors")
        data: dict[str, np.ndarray] = {}
        for key in keys:
            ref = storages[key]
            count_bytes = f.read(8)
            if len(count_bytes) < 8:
                raise TorchFileError(f"{path} is truncated: storage {key} is missing; "
                                     "re-download or reinstall the file")
            count = int.from_bytes(count_bytes, "little")
            if count != ref.numel:
                raise TorchFileError(f"{path}: storage {key} has {count} elements, "
                                     f"the header says {ref.numel} (corrupt file)")
            raw = f.read(count * ref.dtype.itemsize)
            if len(raw) < count * ref.dtype.itemsize:
                raise TorchFileError(f"{path} is truncated inside storage {key}; "
                                     "re-download or reinstall the file")
            data[key] = np.frombuffer(raw, dtype=ref.dtype)
        if f.read(1):
            raise TorchFileError(f"{path}: unexpected bytes after the last storage (corrupt file)")
    return {name: _materialize(t, data, name) for name, t in obj.items()}

