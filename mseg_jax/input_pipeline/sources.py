"""List files -> records -> decoded uint8 arrays, with errors that say where the bad input is.

A list file holds one `rgb_relpath [label_relpath]` line per sample, relative to the dataset
root (test lists may hold images only). Images decode with OpenCV (BGR -> RGB, uint8); labels
are single-channel uint8 PNGs in the dataset's own ids, 255 = ignore.
"""

import dataclasses
from pathlib import Path

import cv2
import grain
import numpy as np

from mseg_jax.taxonomy import IGNORE


class InputError(ValueError):
  """A bad list line, a missing or unreadable file, or a label that does not fit."""


def _parse_list(list_file: Path) -> list[tuple[int, str, str | None]]:
  """(line number, rgb relpath, label relpath or None) for each non-blank line."""
  if not list_file.is_file():
    raise InputError(f"{list_file}: list file not found")
  records = []
  with open(list_file, encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      parts = line.split()
      if not parts:
        continue
      if len(parts) > 2:
        raise InputError(
          f"{list_file}:{line_no}: expected 'rgb_relpath [label_relpath]', got {line.strip()!r}"
        )
      records.append((line_no, parts[0], parts[1] if len(parts) == 2 else None))
  return records


def read_list(list_file: str | Path, root: str | Path) -> list[tuple[Path, Path | None]]:
  """(image path, label path or None) per line of `list_file`, joined to the dataset root."""
  root = Path(root)
  return [
    (root / rgb, None if label is None else root / label)
    for _, rgb, label in _parse_list(Path(list_file))
  ]


def load_image(path: str | Path) -> np.ndarray:
  """An image file as uint8 RGB (H, W, 3)."""
  path = Path(path)
  if not path.is_file():
    raise InputError(f"{path}: image file not found")
  image = cv2.imread(str(path), cv2.IMREAD_COLOR)
  if image is None:
    raise InputError(f"{path}: unreadable image")
  return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_label(path: str | Path) -> np.ndarray:
  """A single-channel uint8 label PNG as (H, W) uint8."""
  path = Path(path)
  if not path.is_file():
    raise InputError(f"{path}: label file not found")
  label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
  if label is None:
    raise InputError(f"{path}: unreadable label image")
  if label.ndim != 2 or label.dtype != np.uint8:
    raise InputError(
      f"{path}: label must be a single-channel uint8 PNG, got shape {label.shape} {label.dtype}"
    )
  return label


def invalid_label_values(label: np.ndarray, num_classes: int) -> np.ndarray:
  """The values of a uint8 label that are neither a class id (< num_classes) nor 255."""
  # uint8 label + 1 wraps 255 to 0, so one add and one max (far cheaper than a bincount:
  # BENCHMARKS.md) clear a valid label; only invalid ones pay for the full histogram.
  if int(np.add(label, 1, dtype=np.uint8).max()) <= num_classes:
    return np.zeros((0,), np.uint8)
  counts = np.bincount(label.ravel(), minlength=256)
  counts[IGNORE] = 0
  return np.flatnonzero(counts[num_classes:]).astype(np.uint8) + num_classes


def check_pair(image: np.ndarray, label: np.ndarray, label_path: Path, num_classes: int) -> None:
  """Raises InputError when the label's size or values do not fit the image and taxonomy."""
  if image.shape[:2] != label.shape:
    raise InputError(
      f"{label_path}: label size {label.shape[1]}x{label.shape[0]} differs from the image's "
      f"{image.shape[1]}x{image.shape[0]} (width x height)"
    )
  bad = invalid_label_values(label, num_classes)
  if bad.size:
    raise InputError(
      f"{label_path}: label values {bad.tolist()} are neither class ids 0..{num_classes - 1} "
      "nor 255"
    )


class ListSource(grain.sources.RandomAccessDataSource):
  """A list file as a grain source of records {"image", "label", "where"} (paths as str)."""

  def __init__(self, list_file: str | Path, root: str | Path, require_labels: bool = True):
    self.list_file = Path(list_file)
    root = Path(root)
    self._records = []
    for line_no, rgb, label in _parse_list(self.list_file):
      if label is None and require_labels:
        raise InputError(f"{self.list_file}:{line_no}: line has no label path")
      self._records.append(
        {
          "image": str(root / rgb),
          "label": None if label is None else str(root / label),
          "where": f"{self.list_file}:{line_no}",
        }
      )
    if not self._records:
      raise InputError(f"{self.list_file}: list file has no samples")

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    return self._records[index]


def decode_record(record: dict, num_classes: int) -> dict[str, np.ndarray]:
  """Reads and checks one record; errors start with `list_file:line:`."""
  try:
    image = load_image(record["image"])
    if record["label"] is None:
      return {"image": image}
    label = load_label(record["label"])
    check_pair(image, label, Path(record["label"]), num_classes)
  except InputError as e:
    raise InputError(f"{record['where']}: {e}") from None
  return {"image": image, "label": label}


@dataclasses.dataclass(frozen=True)
class Decode(grain.transforms.Map):
  """Record -> {"image": uint8 (H, W, 3) RGB, "label": uint8 (H, W)}, checked against the
  dataset's class count (`invalid_label_values` is cheap for a valid label)."""

  num_classes: int

  def map(self, element: dict) -> dict[str, np.ndarray]:
    return decode_record(element, self.num_classes)
