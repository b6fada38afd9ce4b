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
and small window / accumulate / resize functions per image size. The network returns logits
(HRNet's at 1/4 size); their upsample, softmax, projection, flip average and window sum run
per band of rows, on the image's part of each window only (never on its padding). Crops never
leave the device; the host gets one array per image back.
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
from mseg_jax.models.resize import bilinear_taps
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


ROW_BAND = 32  # output rows per step of the banded resizes


def predicted_labels(probs: jax.Array, predictable: jax.Array | None = None) -> jax.Array:
  """argmax of probabilities (..., K) over the `predictable` classes (bool (K,); None: all),
  ties to the first class, as a label map of `taxonomy.label_dtype(K)`.

  Equal to `jnp.argmax`, and 5x faster on XLA:CPU, which vectorizes plain max and min
  reductions but not argmax's: the label is min(k + K * [p_k < max]) with p_k < max written as
  min((max - p_k) * 2**127, 1), exact whenever the maximum is above 1e-31 (floats below it then
  differ from it by at least 2**-127). Classes that are not predictable score -1.
  """
  k, probs = probs.shape[-1], probs.astype(jnp.float32)
  if predictable is not None:
    keep = jnp.asarray(predictable, jnp.float32)
    probs = probs * keep + (keep - 1)
  below_max = jnp.minimum((jnp.max(probs, axis=-1, keepdims=True) - probs) * 2.0**127, 1.0)
  index = jax.lax.broadcasted_iota(jnp.float32, probs.shape, probs.ndim - 1)
  return jnp.min(below_max * k + index, axis=-1).astype(taxonomy.label_dtype(k))


def banded_rows(fn: Callable, taps: tuple[np.ndarray, np.ndarray, np.ndarray], band: int):
  """fn(y0, y1, wy) over bands of `band` output rows (taps as `bilinear_taps`), concatenated
  along axis 1 of its results (N, band, ...) and cut to the real row count."""
  rows = len(taps[0])
  pad = -rows % band
  taps = [np.pad(t, (0, pad), mode="edge").reshape(-1, band) for t in taps]
  out = jax.lax.map(
    lambda t: fn(*t),
    (jnp.asarray(taps[0]), jnp.asarray(taps[1]), jnp.asarray(taps[2], jnp.float32)),
  )
  out = jnp.moveaxis(out, 0, 1)
  return out.reshape(out.shape[0], -1, *out.shape[3:])[:, :rows]


def _lerp_rows(x: jax.Array, y0, y1, wy) -> jax.Array:
  """Rows y0 and y1 of (N, H, W, C) `x` mixed with weight wy (resize_bilinear's row step)."""
  wy = wy[None, :, None, None]
  return x[:, y0] * (1 - wy) + x[:, y1] * wy


def _lerp_cols(x: jax.Array, width: int, align_corners: bool) -> jax.Array:
  """resize_bilinear's column step of (N, h, w, C) `x` to `width` columns."""
  return _lerp_taps(x, bilinear_taps(width, x.shape[2], align_corners))


def _lerp_taps(x: jax.Array, taps: tuple[np.ndarray, np.ndarray, np.ndarray]) -> jax.Array:
  """Columns x0 and x1 of (N, h, w, C) `x` mixed with weight wx; taps = (x0, x1, wx)."""
  x0, x1, wx = taps
  wx = jnp.asarray(wx, x.dtype)[None, None, :, None]
  return x[:, :, x0] * (1 - wx) + x[:, :, x1] * wx


def window_logits(apply_fn: Callable, quarter: bool, variables, windows: jax.Array) -> jax.Array:
  """Normalized windows (B, c, c, 3) -> float32 logits of the windows, then of their horizontal
  flips (2B, h, w, C): at 1/4 size with `quarter` (HRNet's `return_quarter`), else c x c."""
  x = jnp.concatenate([windows, windows[:, :, ::-1]], axis=0)
  kwargs = {"return_quarter": True} if quarter else {}
  return apply_fn(variables, x, train=False, **kwargs).astype(jnp.float32)


def _column_taps(crop: int, logit_width: int, left: int, width: int):
  """Taps (`bilinear_taps`, align_corners) of crop columns left..left+width from the logits, and
  of the same columns of the flipped crop (crop - 1 - x)."""
  x0, x1, wx = bilinear_taps(crop, logit_width, True)
  cols = np.arange(left, left + width)
  mirror = crop - 1 - cols
  return (x0[cols], x1[cols], wx[cols]), (x0[mirror], x1[mirror], wx[mirror])


def _band_probs(logits, y0, y1, wy, columns, projection) -> jax.Array:
  """(B, band, width, K) flip-averaged probabilities of crop rows (taps y0, y1, wy) at the crop
  columns of `columns` (`_column_taps`), from `window_logits` of B crops: the model's
  align_corners upsample, softmax, projection, then each crop averaged with its flip."""
  b = logits.shape[0] // 2
  rows = _lerp_rows(logits, y0, y1, wy)

  def probs(x, taps):
    p = jax.nn.softmax(_lerp_taps(x, taps), axis=-1)
    return p if projection is None else taxonomy.project_probs(p, projection)

  return (probs(rows[:b], columns[0]) + probs(rows[b:], columns[1])) / 2


def net_process_banded(
  apply_fn: Callable, variables, images: jax.Array, projection: jax.Array | None = None
) -> jax.Array:
  """`net_process` for a model that returns its logits at 1/4 size (`return_quarter`: HRNet).

  The model's align_corners upsample, the softmax, the projection and the flip average run
  per band of ROW_BAND output rows, so the full-size logits and softmax of the crops and their
  flips (2B x h x w x C fp32) never exist in memory: only the (B, h, w, K) result.
  """
  _, h, w, _ = images.shape
  logits = window_logits(apply_fn, True, variables, images)
  columns = _column_taps(w, logits.shape[2], 0, w)
  return banded_rows(
    lambda y0, y1, wy: _band_probs(logits, y0, y1, wy, columns, projection),
    bilinear_taps(h, logits.shape[1], True),
    ROW_BAND,
  )


def model_net_process(model) -> Callable:
  """net_process(variables, images, projection) of a model: banded for HRNet."""
  process = net_process_banded if isinstance(model, models.HRNet) else net_process
  return functools.partial(process, model.apply)


@functools.lru_cache(maxsize=8)
def compiled_logits(model) -> Callable:
  """jit(window_logits) of a model, shared by equal models so a new Predictor recompiles
  nothing: HRNet's at 1/4 size."""
  return jax.jit(
    functools.partial(window_logits, model.apply, isinstance(model, models.HRNet)),
    compiler_options=models.compiler_options(),
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


@functools.partial(jax.jit, static_argnames="layout", donate_argnums=0)
def add_windows(
  total: jax.Array,
  logits: jax.Array,
  starts: jax.Array,
  valid: jax.Array,
  projection: jax.Array | None,
  layout: Layout,
) -> jax.Array:
  """Adds the flip-averaged probabilities of b windows (`window_logits`) at canvas `starts`
  (b, 2), where `valid` (b,), into the image's total (height, width, K), band by band of rows.

  Only crop pixels on the image are computed: with padding there is one window per padded
  axis, and its rows (columns) pad_top.. (pad_left..) land at image row (column) 0.
  """
  c = layout.crop
  rows, cols = min(layout.height, c), min(layout.width, c)
  band = min(ROW_BAND, rows)
  taps = bilinear_taps(c, logits.shape[1], True)
  y0, y1, wy = (jnp.asarray(t[layout.pad_top : layout.pad_top + rows]) for t in taps)
  wy = wy.astype(jnp.float32)
  columns = _column_taps(c, logits.shape[2], layout.pad_left, cols)
  keep = valid.astype(jnp.float32)[:, None, None, None]

  def add_band(j, total):
    # The last band ends at `rows`; its rows before j * band were added by the band before.
    start = jnp.minimum(j * band, rows - band)
    band_taps = [jax.lax.dynamic_slice_in_dim(t, start, band) for t in (y0, y1, wy)]
    new = (start + jnp.arange(band) >= j * band).astype(jnp.float32)[None, :, None, None]
    probs = _band_probs(logits, *band_taps, columns, projection) * (new * keep)
    for i in range(probs.shape[0]):
      at = (starts[i, 0] + start, starts[i, 1], 0)
      window = jax.lax.dynamic_slice(total, at, probs.shape[1:])
      total = jax.lax.dynamic_update_slice(total, window + probs[i], at)
    return total

  return jax.lax.fori_loop(0, -(-rows // band), add_band, total)


@functools.partial(jax.jit, static_argnames="out_hw")
def _finish_scale(total: jax.Array, counts: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """Window average (total (h, w, K), counts (h, w)), resized to the raw size (cv2
  INTER_LINEAR semantics)."""
  probs = total / counts[..., None]
  if probs.shape[:2] != tuple(out_hw):
    probs = models.resize_bilinear(probs[None], out_hw, align_corners=False)[0]
  return probs


def resize_argmax(
  probs: jax.Array,
  out_hw: tuple[int, int],
  align_corners: bool,
  predictable: jax.Array | None,
  counts: jax.Array | None = None,
  band: int = ROW_BAND,
) -> jax.Array:
  """argmax over the `predictable` classes (all if None) of resize_bilinear(probs / counts,
  out_hw), for (N, h, w, K) `probs` and (N, h, w) `counts` (None: 1), one band of output rows
  at a time.

  The labels (ties to the first class) of dividing, resizing and taking the argmax of the whole
  map, with (N, band, W, K) instead of (N, H, W, K) in memory.
  """

  def rows(y):
    return probs[:, y] if counts is None else probs[:, y] / counts[:, y, :, None]

  def one_band(y0, y1, wy):
    wy = wy[None, :, None, None]
    mixed = rows(y0) * (1 - wy) + rows(y1) * wy
    if mixed.shape[2] != out_hw[1]:
      mixed = _lerp_cols(mixed, out_hw[1], align_corners)
    return predicted_labels(mixed, predictable)

  return banded_rows(one_band, bilinear_taps(out_hw[0], probs.shape[1], align_corners), band)


@functools.partial(jax.jit, static_argnames="out_hw")
def _finish_scale_labels(
  total: jax.Array, counts: jax.Array, predictable: jax.Array | None, out_hw: tuple[int, int]
) -> jax.Array:
  """The labels of _finish_scale(...) over the `predictable` classes, without the (H, W, K)
  probabilities in memory (single scale)."""
  return resize_argmax(total[None], out_hw, False, predictable, counts[None])[0]


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
  return probs, predicted_labels(probs, predictable)


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
    self.logits = compiled_logits(model)
    self._counts: dict[Layout, jax.Array] = {}

  def _counts_for(self, layout: Layout) -> jax.Array:
    """Windows covering each image pixel (height, width)."""
    if layout not in self._counts:
      counts = window_counts(layout)[
        layout.pad_top : layout.pad_top + layout.height,
        layout.pad_left : layout.pad_left + layout.width,
      ]
      self._counts[layout] = jax.device_put(counts, self.device)
    return self._counts[layout]

  def scale_probs(self, image: np.ndarray, scale: float) -> jax.Array:
    """(H, W, K) probabilities of one scale for a float32 RGB image (H, W, 3) in 0..255."""
    total, layout = self._window_sum(image, scale)
    return _finish_scale(total, self._counts_for(layout), image.shape[:2])

  def _window_sum(self, image: np.ndarray, scale: float) -> tuple[jax.Array, Layout]:
    """The window probabilities of one scale summed over the resized image, and its layout."""
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
      logits = self.logits(self.variables, windows[i : i + b])
      if total is None:
        k = logits.shape[-1] if self.projection is None else self.projection.shape[1]
        total = jnp.zeros((h, w, k), jnp.float32)
      batch = (starts[i : i + b], valid[i : i + b])
      total = add_windows(total, logits, *batch, self.projection, layout)
    return total, layout

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
    """uint8 RGB (H, W, 3) -> label map (H, W), on device.

    Single scale: the labels of `probs` without the (H, W, K) probabilities in memory."""
    if len(self.scales) > 1:
      return self.probs(image)[1]
    if image.ndim != 3 or image.shape[2] != 3:
      raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    with jax.default_device(self.device):
      total, layout = self._window_sum(np.asarray(image, np.float32), self.scales[0])
      counts = self._counts_for(layout)
      return _finish_scale_labels(total, counts, self.predictable, image.shape[:2])
