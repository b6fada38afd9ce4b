"""Initialization from a converted checkpoint: an ImageNet backbone or a model to fine-tune."""

from pathlib import Path

import jax
import numpy as np

from mseg_jax.models.checkpoint import load_checkpoint

PRETRAINED_KINDS = ("none", "imagenet", "finetune")


def merge_pretrained(
  variables: dict, pretrained: dict, *, strict: bool, source: str
) -> tuple[dict, list[str]]:
  """Takes every array of `pretrained` whose path and shape match `variables`.

  strict: every array of `variables` must come from `pretrained` (fine-tuning); otherwise the
  unmatched ones keep their initial value (ImageNet backbone: the head stays random).
  Returns (merged variables, paths kept from the initialization).
  """
  flat_pre = {
    jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(pretrained)[0]
  }
  kept = []

  def pick(path, init):
    key = jax.tree_util.keystr(path)
    value = flat_pre.get(key)
    if value is not None and np.shape(value) == np.shape(init):
      return np.asarray(value, np.asarray(init).dtype)
    if strict:
      found = "missing" if value is None else f"shape {np.shape(value)}"
      raise ValueError(f"{source}: {key} is {found}, the model needs shape {np.shape(init)}")
    kept.append(key)
    return init

  return jax.tree_util.tree_map_with_path(pick, variables), kept


def load_pretrained(variables: dict, kind: str, checkpoint: str | Path) -> tuple[dict, list[str]]:
  """`variables` merged with the model directory `checkpoint` (kind "imagenet": the arrays
  that fit; "finetune": all of them). Returns (merged variables, paths kept from `variables`)."""
  if kind not in PRETRAINED_KINDS[1:]:
    raise ValueError(f"pretrained kind {kind!r}: use one of {PRETRAINED_KINDS[1:]}")
  _, pretrained = load_checkpoint(checkpoint)
  return merge_pretrained(variables, pretrained, strict=kind == "finetune", source=str(checkpoint))
