"""Read a PyTorch state dict (.pth) into numpy arrays without torch and without trusting the file.

Both torch.save formats: legacy (torch < 1.6: pickles, then the raw storages) and zip (torch >= 1.6:
``<name>/data.pkl`` and a ``<name>/data/<key>`` entry a storage). The pickles are read by an
unpickler that resolves only the globals a state dict of tensors needs (``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` and ``_rebuild_parameter``, the ``torch.<Type>Storage``
classes),
each to a harmless stand-in, and refuses any other with a ``ValueError`` before anything is called.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a legacy torch.save file


class _Storage:
    """One storage: its dtype, its declared length in elements and, once read, its data."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel, self.data = dtype, numel, None

    def fill(self, raw: bytes, path: str) -> None:
        if len(raw) != self.numel * self.dtype.itemsize:
            raise ValueError(
                f"{path}: a storage holds {len(raw)} bytes, {self.numel} x {self.dtype.itemsize} "
                "declared"
            )
        self.data = np.frombuffer(raw, self.dtype)


class _Tensor:
    """A tensor as the pickle describes it (``_rebuild_tensor_v2``'s arguments); ``array`` copies it
    out of its storage once that is read, after checking that it lies inside."""

    def __init__(
        self, storage: tuple[_Storage, int], offset: int, size: tuple, stride: tuple, *_: Any
    ):
        self.storage, view_offset = storage
        self.offset, self.size, self.stride = view_offset + offset, tuple(size), tuple(stride)

    def __setstate__(self, state: Any) -> None:
        raise ValueError("a tensor with pickled state is not part of a state dict")

    def array(self, path: str) -> np.ndarray:
        data = self.storage.data
        if (
            data is None
            or len(self.size) != len(self.stride)
            or min((*self.size, *self.stride, self.offset), default=0) < 0
        ):
            raise ValueError(
                f"{path}: malformed tensor (size {self.size}, stride {self.stride}, offset "
                f"{self.offset})"
            )
        if 0 in self.size:
            return np.empty(self.size, data.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= data.size:
            raise ValueError(
                f"{path}: a tensor reaches past the end of its storage ({last} >= {data.size})"
            )
        strides = [s * data.itemsize for s in self.stride]
        return np.lib.stride_tricks.as_strided(
            data[self.offset :], self.size, strides, writeable=False
        ).copy()


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _Tensor,
    ("torch._utils", "_rebuild_parameter"): lambda data, *_: data,
    **{
        ("torch", f"{kind}Storage"): np.dtype(code)
        for kind, code in [  # each typed storage class stands for its dtype
            ("Double", "<f8"),
            ("Float", "<f4"),
            ("Half", "<f2"),
            ("Long", "<i8"),
            ("Int", "<i4"),
            ("Short", "<i2"),
            ("Char", "i1"),
            ("Byte", "u1"),
            ("Bool", "?"),
        ]
    },
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a state dict, collecting its storages; refuses any other global and any foreign
    persistent id."""

    def __init__(self, file: Any, path: str, storages: dict[str, _Storage]):
        super().__init__(file)
        self.path, self.storages = path, storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _GLOBALS:
            raise ValueError(
                f"{self.path}: refusing to unpickle global {module}.{name}; only a state dict of "
                "tensors is accepted"
            )
        return _GLOBALS[module, name]

    def persistent_load(self, pid: Any) -> tuple[_Storage, int]:
        if not (
            isinstance(pid, tuple)
            and len(pid) in (5, 6)
            and pid[0] == "storage"
            and isinstance(pid[1], np.dtype)
        ):
            raise ValueError(f"{self.path}: unexpected persistent id {pid!r:.200}")
        _, dtype, key, _location, numel, *view = pid
        storage = self.storages.setdefault(str(key), _Storage(dtype, int(numel)))
        # a legacy storage view is (view key, offset, size) into the root storage
        return storage, int(view[0][1]) if view and view[0] is not None else 0


def _read_zip(path: str) -> Any:
    storages: dict[str, _Storage] = {}
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") and n.count("/") == 1), None)
        if pkl is None:
            raise ValueError(f"{path}: a zip file without <name>/data.pkl is not a torch.save file")
        prefix = pkl[: -len("data.pkl")]
        if prefix + "byteorder" in names and archive.read(prefix + "byteorder") != b"little":
            raise ValueError(f"{path}: only little-endian files are supported")
        with archive.open(pkl) as f:
            obj = _RestrictedUnpickler(f, path, storages).load()
        for key, storage in storages.items():
            storage.fill(archive.read(f"{prefix}data/{key}"), path)
    return obj


def _read_legacy(path: str) -> Any:
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as f:
        load = _RestrictedUnpickler(f, path, storages).load
        if load() != LEGACY_MAGIC:
            raise ValueError(
                f"{path}: not a torch.save file (neither a zip nor the legacy magic number)"
            )
        load()  # protocol version
        info = load()
        if not (isinstance(info, dict) and info.get("little_endian")):
            raise ValueError(f"{path}: only little-endian files are supported")
        obj = load()
        # the storage keys, in the order their data follows: each an int64 length, then the elements
        for key in load():
            storage = storages[str(key)]
            (numel,) = struct.unpack("<q", f.read(8))
            storage.fill(f.read(max(numel, 0) * storage.dtype.itemsize), path)
    return obj


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of the state dict that ``torch.save`` wrote at ``path``, name by name, as
    contiguous
    numpy arrays of the stored dtype (tensors that share a storage become separate copies).
    ``ValueError`` for a file that is not such a state dict, or whose pickle names any other global
    (nothing in it is executed)."""
    path = os.fspath(path)
    obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, _Tensor) for k, v in obj.items()
    ):
        raise ValueError(f"{path}: not a state dict (a mapping of names to tensors)")
    return {name: tensor.array(path) for name, tensor in obj.items()}
