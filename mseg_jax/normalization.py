"""ImageNet normalization as the official MSeg code applies it (RGB, 0..255 scale)."""

import jax.numpy as jnp
import numpy as np

MEAN = np.array([123.675, 116.28, 103.53], np.float32)  # 255 * (0.485, 0.456, 0.406)
STD = np.array([58.395, 57.12, 57.375], np.float32)  # 255 * (0.229, 0.224, 0.225)


def normalize(images: jnp.ndarray, dtype=jnp.float32) -> jnp.ndarray:
  """Maps uint8 or float RGB images in 0..255 (..., H, W, 3) to (x - mean) / std."""
  x = images.astype(jnp.float32)
  return ((x - MEAN) / STD).astype(dtype)
