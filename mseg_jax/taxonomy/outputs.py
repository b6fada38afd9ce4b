"""The taxonomy a model predicts in, and the ways its universal outputs reach other class sets.

A model's taxonomy is "universal", "naive" or a dataset name (`dataset_names()`); checkpoints
record it. Universal predictions reach a test dataset by the zero-shot projection
(`projection_matrix`), a training dataset by `training_projection` (the inverse of its
`to_universal_lut`) and a subset of classes by `subset_lut`.
"""

import numpy as np

from mseg_jax import taxonomy

UNIVERSAL = "universal"
NAIVE = "naive"


def taxonomy_names() -> list[str]:
  """Every taxonomy a model can be trained in."""
  return [UNIVERSAL, NAIVE, *taxonomy.dataset_names()]


def num_outputs(name: str) -> int:
  """How many logits a model in taxonomy `name` has."""
  if name == NAIVE:
    return taxonomy.NAIVE_NUM_LOGITS
  if name != UNIVERSAL and name not in taxonomy.dataset_names():
    raise ValueError(f"unknown taxonomy {name!r}; use universal, naive or a dataset name")
  return len(taxonomy.class_names(name))


def taxonomies_with(num_classes: int) -> list[str]:
  """The taxonomies whose models have `num_classes` logits (e.g. 21: voc2012, bdd-relabeled,
  cityscapes-19-relabeled)."""
  return [name for name in taxonomy_names() if num_outputs(name) == num_classes]


def infer_taxonomy(num_classes: int, where: str) -> str:
  """The one taxonomy with `num_classes` logits; a ValueError naming `where` if none or several."""
  names = taxonomies_with(num_classes)
  if len(names) != 1:
    found = f"could be any of {', '.join(names)}" if names else "matches no taxonomy"
    raise ValueError(
      f"{where}: a model with {num_classes} classes {found}; name its taxonomy with --taxonomy"
    )
  return names[0]


def check_taxonomy(name: str, num_classes: int, where: str) -> None:
  """Raises a ValueError naming `where` unless a `name` model has `num_classes` logits."""
  if num_outputs(name) != num_classes:
    raise ValueError(
      f"{where}: a {name} model has {num_outputs(name)} classes, this one {num_classes}"
    )


def _same_name(a: str, b: str) -> bool:
  def norm(s):
    return s.lower().replace("_", " ").replace("-", " ")

  return norm(a) == norm(b)


def training_classes(dataset: str) -> dict[int, list[int]]:
  """{universal id: the ids of `dataset` that map to it, the one predicted first}.

  Where several classes of the training dataset share a universal class, the one whose name is
  the universal name (ignoring case, '_' and '-') is predicted, else the lowest id; the others
  are never predicted (`training_collisions` lists them).
  """
  lut = taxonomy.to_universal_lut(dataset)[: len(taxonomy.class_names(dataset))]
  names, universal = taxonomy.class_names(dataset), taxonomy.universal_names()
  sources: dict[int, list[int]] = {}
  for d, u in enumerate(lut.tolist()):
    if u != taxonomy.IGNORE:
      sources.setdefault(u, []).append(d)
  for u, ids in sources.items():
    ids.sort(key=lambda d: (not _same_name(names[d], universal[u]), d))
  return sources


def training_projection(dataset: str) -> np.ndarray:
  """float32 (NUM_UNIVERSAL, K) binary: universal class u feeds the class of training dataset
  `dataset` that `training_classes` picks for it; universal classes `dataset` has no class for
  feed none."""
  matrix = np.zeros((taxonomy.NUM_UNIVERSAL, len(taxonomy.class_names(dataset))), np.float32)
  for u, ids in training_classes(dataset).items():
    matrix[u, ids[0]] = 1.0
  return matrix


def training_collisions(dataset: str) -> dict[str, tuple[str, list[str]]]:
  """{universal class: (the dataset class predicted, the dataset classes never predicted)} for
  the universal classes several classes of `dataset` map to."""
  names, universal = taxonomy.class_names(dataset), taxonomy.universal_names()
  return {
    universal[u]: (names[ids[0]], [names[d] for d in ids[1:]])
    for u, ids in sorted(training_classes(dataset).items())
    if len(ids) > 1
  }


def subset_lut(class_names: list[str], keep: list[str]) -> tuple[np.ndarray, list[str]]:
  """(lut, names): lut[id] maps a label map in `class_names` to `keep` (in the given order) plus
  a last class "other" that every other class becomes; names = keep + ["other"]."""
  unknown = [name for name in keep if name not in class_names]
  if unknown:
    raise ValueError(f"unknown classes {unknown}; choose from {', '.join(class_names)}")
  if len(set(keep)) != len(keep):
    raise ValueError(f"classes repeat in {keep}")
  lut = np.full(len(class_names), len(keep), np.uint8)
  for i, name in enumerate(keep):
    lut[class_names.index(name)] = i
  return lut, [*keep, "other"]
