"""Evaluation regimes (mseg_semantic/tool/test_*_tax.py): the taxonomy predictions are made and
scored in, and how the model's outputs and the ground truth get there.

`zero_shot`: a universal model on a test dataset, probabilities summed into the test taxonomy;
`oracle`: a model trained on the dataset's own taxonomy; `training`: a universal model on a
training dataset, the ground truth mapped to universal ids and the universal classes the dataset
cannot contain left out of the mean; `naive`: a naive-merge model (NAIVE_NUM_LOGITS outputs) on a
test dataset, probabilities summed into the test classes of the same lower-cased name
(test_naive_tax.py). A test class that no model output feeds is never predicted.
"""

import dataclasses

import numpy as np

from mseg_jax import taxonomy

REGIMES = ("zero_shot", "oracle", "training", "naive")


@dataclasses.dataclass(frozen=True, eq=False)
class Regime:
  """How one model is evaluated in one taxonomy."""

  name: str
  class_names: tuple[str, ...]  # of the evaluation taxonomy; index = id
  projection: np.ndarray | None = None  # (model classes, K) summed into it; None: identity
  label_lut: np.ndarray | None = None  # (256,) ground truth -> evaluation ids; None: identity
  excluded: tuple[int, ...] = ()  # ids left out of the mean
  predictable: np.ndarray | None = None  # bool (K,); None: see inference.Predictor


def excluded_universal_ids(dataset: str) -> tuple[int, ...]:
  """Universal ids the unrelabeled version of a training dataset never maps to (left out of the
  mean, as test_universal_tax.py does)."""
  unrelabeled = dataset.removesuffix("-relabeled")
  lut = taxonomy.to_universal_lut(unrelabeled)
  mapped = set(lut[lut != taxonomy.IGNORE].tolist())
  return tuple(u for u in range(taxonomy.NUM_UNIVERSAL) if u not in mapped)


def _zero_shot(dataset: str, num_model_classes: int) -> Regime:
  if dataset not in taxonomy.TEST_DATASETS:
    raise ValueError(
      f"zero_shot evaluates the test datasets {taxonomy.TEST_DATASETS}, not "
      f"{dataset!r} (use --regime training for a training dataset)"
    )
  if num_model_classes != taxonomy.NUM_UNIVERSAL:
    hint = "naive" if num_model_classes == taxonomy.NAIVE_NUM_LOGITS else "oracle"
    raise ValueError(
      f"zero_shot needs a universal model ({taxonomy.NUM_UNIVERSAL} classes); "
      f"this one has {num_model_classes} (use --regime {hint})"
    )
  names = tuple(taxonomy.class_names(dataset))
  return Regime("zero_shot", names, projection=taxonomy.projection_matrix(dataset))


def _oracle(dataset: str, num_model_classes: int) -> Regime:
  names = tuple(taxonomy.class_names(dataset))
  if num_model_classes != len(names):
    raise ValueError(
      f"oracle needs a model trained on {dataset} ({len(names)} classes); "
      f"this one has {num_model_classes}"
    )
  return Regime("oracle", names)


def _training(dataset: str, num_model_classes: int) -> Regime:
  if dataset not in taxonomy.TRAIN_DATASETS:
    raise ValueError(f"the training regime needs one of {taxonomy.TRAIN_DATASETS}, not {dataset!r}")
  if num_model_classes != taxonomy.NUM_UNIVERSAL:
    raise ValueError(
      f"the training regime needs a universal model "
      f"({taxonomy.NUM_UNIVERSAL} classes); this one has {num_model_classes}"
    )
  return Regime(
    "training",
    tuple(taxonomy.universal_names()),
    label_lut=taxonomy.to_universal_lut(dataset),
    excluded=excluded_universal_ids(dataset),
  )


def _naive(dataset: str, num_model_classes: int) -> Regime:
  if dataset not in taxonomy.TEST_DATASETS:
    raise ValueError(f"naive evaluates the test datasets {taxonomy.TEST_DATASETS}, not {dataset!r}")
  if num_model_classes != taxonomy.NAIVE_NUM_LOGITS:
    raise ValueError(
      f"naive needs a naive-merge model ({taxonomy.NAIVE_NUM_LOGITS} classes); "
      f"this one has {num_model_classes}"
    )
  names = tuple(taxonomy.class_names(dataset))
  return Regime("naive", names, projection=taxonomy.naive_projection_matrix(dataset))


_BUILDERS = {"zero_shot": _zero_shot, "oracle": _oracle, "training": _training, "naive": _naive}


def make_regime(name: str, dataset: str, num_model_classes: int) -> Regime:
  """The regime `name` for a model with `num_model_classes` outputs on `dataset`, checked."""
  if name not in _BUILDERS:
    raise ValueError(f"unknown regime {name!r}; choose from {', '.join(REGIMES)}")
  return _BUILDERS[name](dataset, num_model_classes)


def output_regime(taxonomy_name: str, num_model_classes: int) -> Regime:
  """Predictions of a model in `taxonomy_name` (the demo's choice): the model's own taxonomy
  as it is (naive: never the unused logit 255), or a test taxonomy by projection of a universal
  (zero-shot) or naive-merge model."""
  names = tuple(taxonomy.class_names(taxonomy_name))
  if num_model_classes == len(names):
    predictable = None
    if taxonomy_name == taxonomy.NAIVE:  # logit 255 is no class
      predictable = np.arange(len(names)) != taxonomy.IGNORE
    return Regime("own", names, predictable=predictable)
  if taxonomy_name in taxonomy.TEST_DATASETS:
    if num_model_classes == taxonomy.NUM_UNIVERSAL:
      return _zero_shot(taxonomy_name, num_model_classes)
    if num_model_classes == taxonomy.NAIVE_NUM_LOGITS:
      return _naive(taxonomy_name, num_model_classes)
  raise ValueError(
    f"a model with {num_model_classes} classes can't be evaluated in "
    f"{taxonomy_name!r} ({len(names)} classes): it is not trained on that taxonomy, and only "
    f"a universal ({taxonomy.NUM_UNIVERSAL}) or naive-merge ({taxonomy.NAIVE_NUM_LOGITS}) model "
    "predicts a test taxonomy"
  )
