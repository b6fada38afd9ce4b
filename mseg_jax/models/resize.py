"""Bilinear resizing with PyTorch's align_corners semantics, without antialiasing.

`jax.image.resize` has no align_corners mode and antialiases when it shrinks; this gather
version matches `torch.nn.functional.interpolate(mode="bilinear")` for both settings, and with
align_corners=False also cv2.resize(INTER_LINEAR) for float images, up and down.
"""

import jax.numpy as jnp
import numpy as np


def _source_coords(out_n: int, in_n: int, align_corners: bool) -> np.ndarray:
  o = np.arange(out_n, dtype=np.float64)
  if align_corners:
    return o * ((in_n - 1) / (out_n - 1)) if out_n > 1 else np.zeros(1)
  return np.maximum((o + 0.5) * (in_n / out_n) - 0.5, 0.0)


def bilinear_taps(out_n: int, in_n: int, align_corners: bool):
  """Per output index: the two source indices and the weight of the second."""
  src = _source_coords(out_n, in_n, align_corners)
  i0 = np.minimum(np.floor(src).astype(np.int32), in_n - 1)
  i1 = np.minimum(i0 + 1, in_n - 1)
  return i0, i1, src - i0


def resize_bilinear(x: jnp.ndarray, out_hw: tuple[int, int], align_corners: bool) -> jnp.ndarray:
  """Resizes NHWC `x` to `out_hw` (static) by bilinear interpolation, in x's dtype.

  align_corners=True: source = dst * (in - 1) / (out - 1).
  align_corners=False: source = (dst + 0.5) * in / out - 0.5, clamped at 0 (half-pixel).
  """
  _, h, w, _ = x.shape
  out_h, out_w = int(out_hw[0]), int(out_hw[1])
  if (out_h, out_w) == (h, w):
    return x
  y0, y1, wy = bilinear_taps(out_h, h, align_corners)
  x0, x1, wx = bilinear_taps(out_w, w, align_corners)
  wy = jnp.asarray(wy, x.dtype)[None, :, None, None]
  wx = jnp.asarray(wx, x.dtype)[None, None, :, None]
  x = x[:, y0] * (1 - wy) + x[:, y1] * wy  # separable: rows, then columns
  return x[:, :, x0] * (1 - wx) + x[:, :, x1] * wx
