"""The official MSeg test-time procedure (`mseg_semantic/tool/inference_task.py`), on device.

Per scale: resize the image so its short side is round(scale * base_size) (cv2 INTER_LINEAR on
the float32 image, as the official code), pad it centred with the mean colour to at least the
crop, slide a crop window with stride ceil(crop * 2/3) (the last window aligned to the border),
run every crop and its horizontal flip in one batch, softmax (then, for a universal model on a
test dataset, sum the probabilities into the test classes), average each crop with its flip,
average overlapping windows, remove the padding and resize the probability map to the raw image
size (bilinear, half-pixel, no antialias = cv2 INTER_LINEAR). Scales are averaged in order and
the argmax (ties to the first class) is the label map: uint8, or uint16 past 256 classes (the
official code casts to uint8).

Compiled pieces, keyed by shape: the network per (batch, crop) — one for a whole dataset —
and small window / accumulate / resize functions per image size. Crops never leave the device;
the host gets one array per image back.
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from mseg_jax import models, taxonomy
from mseg_jax.normalization import normalize

SINGLE_SCALE = (1.0,)
MULTI_SCALE = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
STRIDE_RATE = 2 / 3


def scales_from_name(name: str) -> tuple[float, ...]:
  """ "ss" -> (1.0,), "ms" -> the official multi-scale list."""
  if name not in ("ss", "ms"):
    raise ValueError(f"scales must be 'ss' or 'ms', got {name!r}")
  return SINGLE_SCALE if name == "ss" else MULTI_SCALE


def scaled_size(height: int, width: int, base_size: int, scale: float) -> tuple[int, int]:
  """Official `resize_by_scaled_short_side`: short side round(scale * base_size), Python round."""
  short = round(scale * base_size)
  if height > width:
    return round(short / width * height), short
  return short, round(short / height * width)


def window_starts(size: int, crop: int, stride_rate: float = STRIDE_RATE) -> tuple[int, ...]:
  """Window offsets along one padded axis of length `size` >= crop (official rule)."""
  if size < crop:
    raise ValueError(f"padded size {size} is smaller than the crop {crop}")
  stride = int(math.ceil(crop * stride_rate))
  grid = int(math.ceil((size - crop) / stride) + 1)
  return tuple(min(i * stride + crop, size) - crop for i in range(grid))


class Layout(NamedTuple):
  """Where an image of size (height, width) sits in its padded canvas, and the windows."""

  height: int
  width: int
  crop: int
  pad_top: int
  pad_left: int
  padded_height: int
  padded_width: int
  starts: tuple[tuple[int, int], ...]  # (y, x) per window, row-major as the official loops


def window_layout(height: int, width: int, crop: int) -> Layout:
  """Centred padding to at least `crop` (top = pad // 2) and the sliding-window grid."""
  pad_h, pad_w = max(crop - height, 0), max(crop - width, 0)
  ph, pw = height + pad_h, width + pad_w
  starts = tuple((y, x) for y in window_starts(ph, crop) for x in window_starts(pw, crop))
  return Layout(height, width, crop, pad_h // 2, pad_w // 2, ph, pw, starts)


def window_counts(layout: Layout) -> np.ndarray:
  """float32 (padded_height, padded_width): how many windows cover each pixel."""
  counts = np.zeros((layout.padded_height, layout.padded_width), np.float32)
  for y, x in layout.starts:
    counts[y : y + layout.crop, x : x + layout.crop] += 1
  return counts


def net_process(
  apply_fn: Callable, variables, images: jax.Array, projection: jax.Array | None = None
) -> jax.Array:
  """Official `net_process` with flip: (B, h, w, 3) normalized -> (B, h, w, K) probabilities.

  The crops and their horizontal flips run as one batch; softmax over the model classes, then
  (if given) the (C, K) projection sums them into the evaluation taxonomy, then each crop's
  probabilities are averaged with its flip's (flipped back).
  """
  b = images.shape[0]
  x = jnp.concatenate([images, images[:, :, ::-1]], axis=0)
  logits = apply_fn(variables, x, train=False).astype(jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1)
  if projection is not None:
    probs = taxonomy.project_probs(probs, projection)
  return (probs[:b] + probs[b:, :, ::-1]) / 2


@functools.lru_cache(maxsize=8)
def compiled_net(model) -> Callable:
  """jit(net_process) of a model, shared by equal models so a new Predictor recompiles nothing."""
  return jax.jit(
    functools.partial(net_process, model.apply), compiler_options=models.compiler_options()
  )


@functools.partial(jax.jit, static_argnames=("layout", "batch"))
def _windows(image: jax.Array, layout: Layout, batch: int) -> jax.Array:
  """float32 image (h, w, 3) in 0..255 -> normalized windows (n rounded up to `batch`, c, c, 3).

  Padding after normalization with 0 equals the official mean-colour padding before it."""
  x = normalize(image)
  x = jnp.pad(
    x,
    (
      (layout.pad_top, layout.padded_height - layout.height - layout.pad_top),
      (layout.pad_left, layout.padded_width - layout.width - layout.pad_left),
      (0, 0),
    ),
  )
  c = layout.crop
  crops = [x[y : y + c, s : s + c] for y, s in layout.starts]
  crops += [jnp.zeros_like(crops[0])] * (-len(crops) % batch)
  return jnp.stack(crops)


@functools.partial(jax.jit, donate_argnums=0)
def _accumulate(
  total: jax.Array, probs: jax.Array, starts: jax.Array, valid: jax.Array
) -> jax.Array:
  """Adds window probabilities (b, c, c, K) at `starts` (b, 2) into total, where valid (b,)."""
  c, k = probs.shape[1], probs.shape[3]
  for i in range(probs.shape[0]):
    y, x = starts[i, 0], starts[i, 1]
    window = jax.lax.dynamic_slice(total, (y, x, 0), (c, c, k))
    update = jnp.where(valid[i], window + probs[i], window)
    total = jax.lax.dynamic_update_slice(total, update, (y, x, 0))
  return total


@functools.partial(jax.jit, static_argnames=("layout", "out_hw"))
def _finish_scale(
  total: jax.Array, counts: jax.Array, layout: Layout, out_hw: tuple[int, int]
) -> jax.Array:
  """Window average, padding removed, resized to the raw size (cv2 INTER_LINEAR semantics)."""
  probs = total / counts[..., None]
  probs = probs[
    layout.pad_top : layout.pad_top + layout.height,
    layout.pad_left : layout.pad_left + layout.width,
  ]
  if (layout.height, layout.width) != tuple(out_hw):
    probs = models.resize_bilinear(probs[None], out_hw, align_corners=False)[0]
  return probs


@functools.partial(jax.jit, donate_argnums=0)
def _add(total: jax.Array, probs: jax.Array) -> jax.Array:
  return total + probs


@functools.partial(jax.jit, static_argnames=("num_scales",))
def _mean_and_argmax(
  total: jax.Array, num_scales: int, predictable: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
  """Mean over scales, and its argmax over the `predictable` classes (all if None) as uint8, or
  uint16 past 256 classes."""
  probs = total / num_scales
  scores = probs if predictable is None else jnp.where(predictable, probs, -1.0)
  labels = jnp.argmax(scores, axis=-1).astype(taxonomy.label_dtype(probs.shape[-1]))
  return probs, labels


class Predictor:
  """The official multi-scale, sliding-window, flip-averaged inference for one model.

  `predictor(image)` takes a uint8 RGB image (H, W, 3) and returns the label map (H, W) as a
  device array (uint8, or uint16 past 256 classes: `taxonomy.label_dtype`);
  `predictor.probs(image)` returns the (H, W, K) probabilities too. `batch_size` windows (plus
  their flips: 2x the network batch) run per network call. Only the `predictable` classes (bool
  (K,); default: with a `projection`, the classes some model output feeds, else all) are ever
  predicted, as in the official zero-shot and naive-merge evaluations. With `device`, the
  variables live there and every call computes there (a Predictor per device runs from its own
  thread in parallel: `evaluate.Evaluator`); without, on the default device.
  """

  def __init__(
    self,
    model,
    variables,
    *,
    base_size: int = 360,
    scales: Sequence[float] = SINGLE_SCALE,
    crop: int = 713,
    projection: np.ndarray | None = None,
    predictable: np.ndarray | None = None,
    batch_size: int = 8,
    dtype=jnp.float32,
    device: jax.Device | None = None,
  ):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(model, models.PSPNet) and (crop - 1) % 8:
      # The official PSPNet asserts (H-1) % 8 == 0; every window is a crop x crop input.
      raise ValueError(f"PSPNet needs crop - 1 divisible by 8 (473, 593, 713), got crop={crop}")
    if isinstance(model, (models.HRNet, models.PSPNet)) and not model.bn_folded:
      # Inference only: each BN folded into its conv gives the same logits, faster.
      model, variables = models.fold_batch_norm(model, variables)
    if jnp.dtype(dtype) != jnp.dtype(model.dtype):
      model = model.clone(dtype=dtype)
    self.device = device
    self.model, self.variables = model, jax.device_put(variables, device)
    self.base_size, self.scales, self.crop = base_size, tuple(scales), crop
    self.batch_size = batch_size
    if predictable is None and projection is not None:
      predictable = np.asarray(projection).any(axis=0)
    if projection is not None:
      projection = jax.device_put(np.asarray(projection, np.float32), device)
    self.projection = projection
    if predictable is not None:
      predictable = jax.device_put(np.asarray(predictable, bool), device)
    self.predictable = predictable
    self.net = compiled_net(model)
    self._counts: dict[Layout, jax.Array] = {}

  def _counts_for(self, layout: Layout) -> jax.Array:
    if layout not in self._counts:
      self._counts[layout] = jax.device_put(window_counts(layout), self.device)
    return self._counts[layout]

  def scale_probs(self, image: np.ndarray, scale: float) -> jax.Array:
    """(H, W, K) probabilities of one scale for a float32 RGB image (H, W, 3) in 0..255."""
    raw_h, raw_w = image.shape[:2]
    h, w = scaled_size(raw_h, raw_w, self.base_size, scale)
    if (h, w) != (raw_h, raw_w):
      image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    layout = window_layout(h, w, self.crop)
    n = len(layout.starts)
    b = min(self.batch_size, n)
    windows = _windows(jnp.asarray(image), layout, b)
    starts = np.zeros((len(windows), 2), np.int32)
    starts[:n] = layout.starts
    valid = np.arange(len(windows)) < n
    total = None
    for i in range(0, len(windows), b):
      probs = self.net(self.variables, windows[i : i + b], self.projection)
      if total is None:
        total = jnp.zeros((layout.padded_height, layout.padded_width, probs.shape[-1]), jnp.float32)
      total = _accumulate(total, probs, starts[i : i + b], valid[i : i + b])
    return _finish_scale(total, self._counts_for(layout), layout, (raw_h, raw_w))

  def probs(self, image: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """uint8 RGB (H, W, 3) -> (probabilities (H, W, K) float32, labels (H, W))."""
    if image.ndim != 3 or image.shape[2] != 3:
      raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    image = np.asarray(image, np.float32)
    total = None
    with jax.default_device(self.device):
      for scale in self.scales:
        p = self.scale_probs(image, scale)
        total = p if total is None else _add(total, p)
      return _mean_and_argmax(total, len(self.scales), self.predictable)

  def __call__(self, image: np.ndarray) -> jax.Array:
    """uint8 RGB (H, W, 3) -> label map (H, W), on device."""
    return self.probs(image)[1]
