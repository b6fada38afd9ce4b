"""Reads PyTorch `.pth` checkpoints without torch and without running code from the file.

Both containers `torch.save` writes are supported: the zip format (torch >= 1.6: `<name>/data.pkl`
plus one raw file per storage under `<name>/data/`) and the legacy pickle sequence (magic number,
protocol, sys_info, the object pickle, the storage key list, then each raw storage preceded by
its int64 element count). The unpickler resolves only the globals a state_dict (and an optimizer
dict) needs; any other global is refused before it is imported. Tensors become numpy arrays.
"""

import dataclasses
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
  "DoubleStorage": np.float64,
  "FloatStorage": np.float32,
  "HalfStorage": np.float16,
  "BFloat16Storage": ml_dtypes.bfloat16,
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "UntypedStorage": np.uint8,
  "BoolStorage": np.bool_,
}


class UnsafeCheckpointError(pickle.UnpicklingError):
  """The pickle names a global outside the state_dict allow-list."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
  dtype: Any


@dataclasses.dataclass(frozen=True)
class _StorageRef:
  key: str
  dtype: Any
  numel: int


@dataclasses.dataclass(frozen=True)
class _TensorRef:
  storage: _StorageRef
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args):
  """torch._utils._rebuild_tensor(_v2): records the view; data is attached after unpickling."""
  if not isinstance(storage, _StorageRef):
    raise pickle.UnpicklingError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
  return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *unused_args):
  return data


_ALLOWED = {
  ("collections", "OrderedDict"): OrderedDict,
  ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
} | {("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()}


class _Unpickler(pickle.Unpickler):
  """Allow-list unpickler; `storages` collects the storages the pickle refers to."""

  def __init__(self, file, path: Path):
    super().__init__(file)
    self.path = path
    self.storages: dict[str, _StorageRef] = {}

  def find_class(self, module: str, name: str):
    if (module, name) not in _ALLOWED:
      raise UnsafeCheckpointError(
        f"{self.path}: refusing to load the global '{module}.{name}': a checkpoint may only "
        "hold tensors, dicts, lists and numbers (allowed globals: "
        f"{', '.join(sorted('.'.join(k) for k in _ALLOWED))})"
      )
    return _ALLOWED[module, name]

  def persistent_load(self, pid):
    if not (
      isinstance(pid, tuple)
      and len(pid) >= 5
      and pid[0] == "storage"
      and isinstance(pid[1], _StorageType)
    ):
      raise pickle.UnpicklingError(f"{self.path}: unsupported persistent id {pid!r:.200}")
    if len(pid) > 5 and pid[5] is not None:
      raise pickle.UnpicklingError(f"{self.path}: storage views (pre-1.0 torch) are unsupported")
    ref = _StorageRef(str(pid[2]), pid[1].dtype, int(pid[4]))
    self.storages[ref.key] = ref
    return ref


def _materialize(obj, arrays: dict[str, np.ndarray], path: Path):
  """Replaces every _TensorRef in a nested dict/list/tuple by a numpy array."""
  if isinstance(obj, _TensorRef):
    data = arrays[obj.storage.key]
    if not obj.shape:
      return np.array(data[obj.offset])
    extent = obj.offset + sum((n - 1) * s for n, s in zip(obj.shape, obj.stride, strict=True))
    if min(obj.shape) > 0 and extent >= data.size:
      raise pickle.UnpicklingError(
        f"{path}: a tensor reads past the end of storage {obj.storage.key}"
      )
    view = np.lib.stride_tricks.as_strided(
      data[obj.offset :], obj.shape, [s * data.itemsize for s in obj.stride], writeable=False
    )
    return np.array(view)
  if isinstance(obj, dict):
    out = type(obj)() if isinstance(obj, OrderedDict) else {}
    for k, v in obj.items():
      out[k] = _materialize(v, arrays, path)
    return out
  if isinstance(obj, list | tuple):
    return type(obj)(_materialize(v, arrays, path) for v in obj)
  return obj


def _load_zip(path: Path):
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise ValueError(f"{path}: a torch zip checkpoint has one <name>/data.pkl; found {pickles}")
    prefix = pickles[0][: -len("data.pkl")]
    if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder") != b"little":
      raise ValueError(f"{path}: only little-endian checkpoints are supported")
    with archive.open(pickles[0]) as f:
      unpickler = _Unpickler(f, path)
      obj = unpickler.load()
    arrays = {}
    for key, ref in unpickler.storages.items():
      name = f"{prefix}data/{key}"
      if name not in names:
        raise ValueError(f"{path}: storage {name} is missing")
      arrays[key] = np.frombuffer(archive.read(name), np.dtype(ref.dtype).newbyteorder("<"))
  return _materialize(obj, arrays, path)


def _load_legacy(path: Path):
  with open(path, "rb") as f:
    if _Unpickler(f, path).load() != LEGACY_MAGIC:
      raise ValueError(f"{path}: not a PyTorch checkpoint (bad magic number)")
    protocol = _Unpickler(f, path).load()
    if protocol != LEGACY_PROTOCOL:
      raise ValueError(f"{path}: unsupported legacy protocol version {protocol}")
    sys_info = _Unpickler(f, path).load()
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian", False)):
      raise ValueError(f"{path}: only little-endian checkpoints are supported")
    unpickler = _Unpickler(f, path)
    obj = unpickler.load()
    keys = _Unpickler(f, path).load()
    arrays = {}
    for key in keys:
      ref = unpickler.storages.get(key)
      if ref is None:
        raise ValueError(f"{path}: storage {key} is not referenced by any tensor")
      dtype = np.dtype(ref.dtype).newbyteorder("<")
      (numel,) = struct.unpack("<q", f.read(8))
      buffer = f.read(numel * dtype.itemsize)
      if len(buffer) != numel * dtype.itemsize:
        raise ValueError(f"{path}: truncated storage {key}")
      arrays[key] = np.frombuffer(buffer, dtype)
    missing = set(unpickler.storages) - set(arrays)
    if missing:
      raise ValueError(f"{path}: storages {sorted(missing)} are missing")
  return _materialize(obj, arrays, path)


def load(path: str | Path) -> Any:
  """Loads a `torch.save` file (zip or legacy format) with tensors as numpy arrays."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such checkpoint file")
  if zipfile.is_zipfile(path):
    return _load_zip(path)
  with open(path, "rb") as f:
    head = f.read(2)
  if head[:1] != b"\x80":
    raise ValueError(f"{path}: neither a torch zip checkpoint nor a legacy torch pickle")
  return _load_legacy(path)
