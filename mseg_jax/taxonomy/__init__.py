"""MSeg's taxonomies: the universal taxonomy, the 33 dataset taxonomies and the maps between them.

Data: `data/taxonomy.json`, built from mseg-api by `tools/import_mseg_taxonomy.py` (with
`taxonomy/importer.py`; set MSEG_JAX_TAXONOMY=path/to/taxonomy.json to use a custom one).
Arrays returned here are fresh numpy copies; `remap_labels` and `project_probs` are the jitted
ops that apply them.
"""

import functools
import json
import os
from pathlib import Path

import numpy as np

from mseg_jax.taxonomy.ops import IGNORE, project_probs, remap_labels

__all__ = [
  "DATA_FILE",
  "NAIVE",
  "FORMAT",
  "IGNORE",
  "NUM_UNIVERSAL",
  "UNRELABELED_TRAIN_DATASETS",
  "RELABELED_TRAIN_DATASETS",
  "TRAIN_DATASETS",
  "TEST_DATASETS",
  "NAIVE_NUM_LOGITS",
  "universal_names",
  "dataset_names",
  "class_names",
  "class_id",
  "label_dtype",
  "universal_id",
  "to_universal_lut",
  "stacked_luts",
  "remap_labels",
  "projection_matrix",
  "project_probs",
  "projection_sources",
  "pairwise_lut",
  "pairwise_pairs",
  "naive_names",
  "naive_logit_names",
  "naive_lut",
  "naive_projection_matrix",
  "palette",
]

DATA_FILE = Path(
  os.environ.get("MSEG_JAX_TAXONOMY") or Path(__file__).parent / "data" / "taxonomy.json"
)
FORMAT = "mseg-jax taxonomy 1"  # of taxonomy.json (written by taxonomy/importer.py)
UNIVERSAL = "universal"
NAIVE = "naive"  # the naive-merge model's output taxonomy (`naive_logit_names`)
NAIVE_UNUSED = "(unused)"  # the name of its logit 255


@functools.cache
def _data() -> dict:
  try:
    data = json.loads(DATA_FILE.read_text(encoding="utf-8"))
  except (OSError, json.JSONDecodeError) as e:
    raise RuntimeError(f"cannot read taxonomy data {DATA_FILE}: {e}") from e
  if data.get("format") != FORMAT:
    raise RuntimeError(f"{DATA_FILE}: not an mseg-jax taxonomy (format {data.get('format')!r})")
  return data


NUM_UNIVERSAL: int = len(_data()["universal"])
UNRELABELED_TRAIN_DATASETS: tuple[str, ...] = tuple(_data()["unrelabeled_train_datasets"])
RELABELED_TRAIN_DATASETS: tuple[str, ...] = tuple(_data()["relabeled_train_datasets"])
# Every dataset column of the master TSV that is not a test column: the groups above plus
# cityscapes-34 (mseg-api can map it; MSeg does not train on it).
TRAIN_DATASETS: tuple[str, ...] = tuple(_data()["train_datasets"])
TEST_DATASETS: tuple[str, ...] = tuple(_data()["test_datasets"])
# mseg-api's naive-merge model has one logit per naive class plus an unused logit 255.
NAIVE_NUM_LOGITS: int = len(_data()["naive"]) + (len(_data()["naive"]) > IGNORE)


def _choose(kind: str, name: str, valid) -> None:
  if name not in valid:
    raise ValueError(f"unknown {kind} {name!r}; choose from {', '.join(valid)}")


def universal_names() -> list[str]:
  """The universal class names in logit order (id = index)."""
  return list(_data()["universal"])


def dataset_names() -> list[str]:
  """The dataset taxonomies (mseg-api names, sorted), without "universal"."""
  return sorted(_data()["classes"])


def class_names(dataset: str) -> list[str]:
  """Class names of `dataset` (one of `dataset_names()`, "universal" or "naive"); index = id."""
  if dataset == UNIVERSAL:
    return universal_names()
  if dataset == NAIVE:
    return naive_logit_names()
  _choose("dataset", dataset, dataset_names())
  return list(_data()["classes"][dataset])


def class_id(dataset: str, name: str) -> int:
  """Label id of class `name` in `dataset` (first one if a name repeats)."""
  names = class_names(dataset)
  if name not in names:
    raise ValueError(f"{dataset} has no class {name!r}")
  return names.index(name)


def universal_id(name: str) -> int:
  return class_id(UNIVERSAL, name)


@functools.cache
def _to_universal(dataset: str) -> np.ndarray:
  _choose("training dataset", dataset, TRAIN_DATASETS)
  lut = np.full(256, IGNORE, np.uint8)
  ids = _data()["to_universal"][dataset]
  lut[: len(ids)] = ids
  return lut


def to_universal_lut(dataset: str) -> np.ndarray:
  """uint8 (256,) table: `dataset` label id -> universal id; 255 and unmapped ids -> 255."""
  return _to_universal(dataset).copy()


def stacked_luts(datasets) -> np.ndarray:
  """uint8 (len(datasets), 256): the `to_universal_lut`s, for `remap_labels(..., dataset_index)`."""
  return np.stack([_to_universal(d) for d in datasets])


@functools.cache
def _projection(dataset: str) -> np.ndarray:
  _choose("test dataset", dataset, TEST_DATASETS)
  test_ids = np.asarray(_data()["from_universal"][dataset])
  matrix = np.zeros((NUM_UNIVERSAL, len(_data()["classes"][dataset])), np.float32)
  rows = np.flatnonzero(test_ids >= 0)
  matrix[rows, test_ids[rows]] = 1.0
  return matrix


def projection_matrix(test_dataset: str) -> np.ndarray:
  """float32 (NUM_UNIVERSAL, K) binary: [u, k] = 1 iff universal class u feeds test class k."""
  return _projection(test_dataset).copy()


def projection_sources(test_dataset: str) -> dict[str, list[str]]:
  """{test class: universal classes summed into it} in test-id order ([] = unreachable)."""
  matrix, universal = _projection(test_dataset), universal_names()
  return {
    name: [universal[u] for u in np.flatnonzero(matrix[:, k])]
    for k, name in enumerate(class_names(test_dataset))
  }


def pairwise_pairs() -> list[tuple[str, str]]:
  """(src, dst) of every pairwise remap (mseg-api's class_remapping_files)."""
  return [tuple(key.split(">")) for key in _data()["pairwise"]]


def pairwise_lut(src: str, dst: str) -> np.ndarray:
  """uint8 table src id -> dst id ("unlabeled" targets -> 255), as remap_dataset.py applies.

  (256,) entries, 255 -> 255; for pascal-context-460 (460 classes, 255 a real class) (460,).
  """
  key = f"{src}>{dst}"
  _choose("pairwise remap", key, list(_data()["pairwise"]))
  return np.asarray(_data()["pairwise"][key], np.uint8)


def naive_names() -> list[str]:
  """The naive-merge taxonomy: lower-cased union of the unrelabeled training datasets' names."""
  return list(_data()["naive"])


def _naive_logit(i: int) -> int:
  return i if i < IGNORE else i + 1  # mseg-api skips logit 255


def naive_logit_names() -> list[str]:
  """The naive model's NAIVE_NUM_LOGITS output names: `naive_names` with NAIVE_UNUSED at 255."""
  names = naive_names()
  return names[:IGNORE] + [NAIVE_UNUSED] + names[IGNORE:] if len(names) > IGNORE else names


def label_dtype(num_classes: int) -> np.dtype:
  """The unsigned dtype of label maps with `num_classes` ids: uint8 up to 256, else uint16."""
  if num_classes <= 256:
    return np.dtype(np.uint8)
  if num_classes <= 65536:
    return np.dtype(np.uint16)
  raise ValueError(f"{num_classes} classes do not fit a uint16 label map")


def naive_lut(dataset: str) -> np.ndarray:
  """uint16 (256,) table: `dataset` id -> naive logit index (mseg-api's; logit 255 unused)."""
  _choose("naive training dataset", dataset, UNRELABELED_TRAIN_DATASETS)
  naive = _data()["naive"]
  lut = np.full(256, IGNORE, np.uint16)
  for i, name in enumerate(class_names(dataset)):
    lut[i] = _naive_logit(naive.index(name.lower()))
  return lut


def naive_projection_matrix(test_dataset: str) -> np.ndarray:
  """float32 (NAIVE_NUM_LOGITS, K): naive logit -> test class by exact lower-case name."""
  _choose("test dataset", test_dataset, TEST_DATASETS)
  naive, names = _data()["naive"], class_names(test_dataset)
  matrix = np.zeros((NAIVE_NUM_LOGITS, len(names)), np.float32)
  for k, name in enumerate(names):
    if name.lower() in naive:
      matrix[_naive_logit(naive.index(name.lower())), k] = 1.0
  return matrix


def palette(n: int = NUM_UNIVERSAL) -> np.ndarray:
  """uint8 (n, 3) RGB, all distinct: the PASCAL VOC colormap from its entry 1 (no black).

  Colour k spreads the bits of k + 1 over the high bits of R, G and B (VOC devkit
  `labelcolormap`), so any n < 2**24 colours differ.
  """
  k = np.arange(1, n + 1)
  colors = np.zeros((n, 3), np.int64)
  for bit in range(8):
    for channel in range(3):
      colors[:, channel] |= ((k >> (3 * bit + channel)) & 1) << (7 - bit)
  return colors.astype(np.uint8)
