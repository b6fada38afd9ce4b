"""Batched single-crop inference: the official `batched_inference_task.py` (its
`universal_demo_batched.py`), for video and large folders of equally sized frames.

No sliding window and one scale: each frame is resized (training's truncating ResizeShort) so
that its long side fits the crop, short side floor(short * crop / long)
(`determine_max_possible_base_size`), normalized, zero-padded centred to crop x crop, and run
with its horizontal flip; softmax (or the projection into a test taxonomy), flip average,
padding removed, probabilities resized to the frame size (bilinear, align_corners=True as the
official `F.interpolate`) and argmax. Many frames run in one network call; the resize and the
argmax run in bands of rows, so the full-resolution probabilities never exist in memory.
"""

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mseg_jax import inference, models
from mseg_jax.input_pipeline import transforms
from mseg_jax.normalization import normalize


def max_base_size(height: int, width: int, crop: int) -> int:
  """Official `determine_max_possible_base_size`: the short side that fits the long one in crop."""
  return math.floor(min(height, width) * crop / max(height, width))


def resized_size(height: int, width: int, crop: int) -> tuple[int, int]:
  """(h, w) of a frame after the official loader's ResizeShort(max_base_size)."""
  size = max_base_size(height, width, crop)
  if height <= width:
    return size, int(width * (size / float(height)))
  return int(height * (size / float(width))), size


def _labels(net, variables, frames, projection, predictable, crop: int, out_hw):
  """float32 frames (N, h, w, 3) resized, 0..255 -> label maps (N, *out_hw)."""
  _, h, w, _ = frames.shape
  top, left = (crop - h) // 2, (crop - w) // 2
  x = jnp.pad(normalize(frames), ((0, 0), (top, crop - h - top), (left, crop - w - left), (0, 0)))
  probs = net(variables, x, projection)[:, top : top + h, left : left + w]
  return inference.resize_argmax(probs, out_hw, True, predictable)


@functools.lru_cache(maxsize=8)
def _compiled_labels(model) -> Callable:
  """jit(_labels) of a model, shared by equal models."""
  return jax.jit(
    functools.partial(_labels, inference.model_net_process(model)),
    static_argnames=("crop", "out_hw"),
    compiler_options=models.compiler_options(),
  )


class SingleCropPredictor:
  """`predictor(frames)`: uint8 RGB frames (N, H, W, 3) of one size -> label maps (N, H, W).

  The official batched single-crop mode (module docstring) with the same model handling,
  projection and `predictable` classes as `inference.Predictor`. One network call per call
  (2N images with the flips): pass as many frames as the device holds.
  """

  def __init__(
    self,
    model,
    variables,
    *,
    crop: int = 713,
    projection: np.ndarray | None = None,
    predictable: np.ndarray | None = None,
    dtype=jnp.float32,
  ):
    # Reuse Predictor's model preparation (BN folding, dtype, PSPNet crop check, jitted net).
    base = inference.Predictor(
      model,
      variables,
      crop=crop,
      projection=projection,
      predictable=predictable,
      batch_size=1,
      dtype=dtype,
    )
    self.crop, self.variables = crop, base.variables
    self.projection, self.predictable = base.projection, base.predictable
    self._labels = _compiled_labels(base.model)

  def __call__(self, frames: np.ndarray) -> jax.Array:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3:
      raise ValueError(f"expected RGB frames (N, H, W, 3) of one size, got shape {frames.shape}")
    _, height, width, _ = frames.shape
    h, w = resized_size(height, width, self.crop)
    size = max_base_size(height, width, self.crop)
    resized = np.stack(
      [transforms.resize_short(f.astype(np.float32), None, size)[0] for f in frames]
    )
    if resized.shape[1:3] != (h, w):
      raise AssertionError(f"resized to {resized.shape[1:3]}, expected {(h, w)}")
    return self._labels(
      self.variables,
      jnp.asarray(resized),
      self.projection,
      self.predictable,
      self.crop,
      (height, width),
    )
