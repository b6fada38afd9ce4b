"""Per-pixel confidence of a prediction, saved beside its label map (demo and evaluate).

`--save-probabilities` (mode "max") writes confidence/<stem>.png: the max probability over the
classes, round(255 p), uint8 (the probability of the predicted class). Mode "full" also writes
probabilities/<stem>.npz with `probabilities`, float16 (H, W, K) in the output taxonomy.
"""

import argparse
from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import numpy as np

MODES = ("max", "full")


def add_argument(parser: argparse.ArgumentParser) -> None:
  """`--save-probabilities [full]` (demo and evaluate): None, "max" or "full"."""
  parser.add_argument(
    "--save-probabilities",
    nargs="?",
    const="max",
    choices=MODES,
    help="confidence/<stem>.png: the max probability x 255; 'full' adds "
    "probabilities/<stem>.npz (float16 (H, W, K))",
  )


@jax.jit
def max_probability(probs: jax.Array) -> jax.Array:
  """(H, W, K) probabilities -> uint8 (H, W) round(255 * max over K)."""
  return jnp.round(255 * jnp.max(probs, axis=-1)).astype(jnp.uint8)


def write_probabilities(out_dir: str | Path, stem: str, probs: jax.Array, mode: str) -> None:
  """confidence/<stem>.png and, for mode "full", probabilities/<stem>.npz under `out_dir`."""
  if mode not in MODES:
    raise ValueError(f"probability mode {mode!r}: use one of {', '.join(MODES)}")
  out_dir = Path(out_dir)
  (out_dir / "confidence").mkdir(parents=True, exist_ok=True)
  cv2.imwrite(str(out_dir / "confidence" / f"{stem}.png"), np.asarray(max_probability(probs)))
  if mode == "full":
    (out_dir / "probabilities").mkdir(exist_ok=True)
    full = np.asarray(jnp.asarray(probs, jnp.float16))
    np.savez_compressed(out_dir / "probabilities" / f"{stem}.npz", probabilities=full)
