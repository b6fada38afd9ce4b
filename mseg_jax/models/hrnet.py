"""HRNetV2 for semantic segmentation (the official MSeg `seg_hrnet.py`), NHWC in Flax linen.

Every convolution and BatchNorm is a direct child of `HRNet`, named by its PyTorch module path
("layer1.0.conv1", "stage3.1.fuse_layers.2.0.1.0", "last_layer.3"), so the variables mirror
the official state_dict one to one (see `convert.py`).
"""

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mseg_jax.models import winograd
from mseg_jax.models.resize import resize_bilinear

STEM_WIDTH = 64
BOTTLENECK_EXPANSION = 4
# On CPU, 3x3 convolutions with at least this many input and output channels run as Winograd
# products (`winograd.py`), in training and inference; below it XLA:CPU's own are faster.
WINOGRAD_MIN_CHANNELS = 192


@dataclasses.dataclass(frozen=True)
class HRNetConfig:
  """Architecture of an HRNetV2 segmentation network.

  Stage 1 is `stage1_blocks` Bottlenecks of `stage1_planes` planes (4x that many channels out).
  Stages 2, 3, 4 have `stage_modules[k]` HighResolutionModules whose branch b runs
  `stage_blocks[k][b]` BasicBlocks of width `stage_widths[k][b]`; each stage adds one branch.
  """

  num_classes: int = 194
  stage1_blocks: int = 4
  stage1_planes: int = 64
  stage_modules: tuple[int, ...] = (1, 4, 3)
  stage_blocks: tuple[tuple[int, ...], ...] = ((4, 4), (4, 4, 4), (4, 4, 4, 4))
  stage_widths: tuple[tuple[int, ...], ...] = ((48, 96), (48, 96, 192), (48, 96, 192, 384))

  def __post_init__(self):
    n = len(self.stage_modules)
    if len(self.stage_blocks) != n or len(self.stage_widths) != n:
      raise ValueError(f"stage_modules, stage_blocks, stage_widths differ in length: {self}")
    for k, (blocks, widths) in enumerate(zip(self.stage_blocks, self.stage_widths, strict=True)):
      if len(blocks) != k + 2 or len(widths) != k + 2:
        raise ValueError(f"stage {k + 2} must have {k + 2} branches (blocks and widths): {self}")

  @property
  def head_width(self) -> int:
    return sum(self.stage_widths[-1])

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "HRNetConfig":
    return cls(
      num_classes=int(d["num_classes"]),
      stage1_blocks=int(d["stage1_blocks"]),
      stage1_planes=int(d["stage1_planes"]),
      stage_modules=tuple(int(m) for m in d["stage_modules"]),
      stage_blocks=tuple(tuple(int(b) for b in s) for s in d["stage_blocks"]),
      stage_widths=tuple(tuple(int(w) for w in s) for s in d["stage_widths"]),
    )


def _standard(width: int, num_classes: int) -> HRNetConfig:
  widths = tuple(width * 2**b for b in range(4))
  return HRNetConfig(
    num_classes=num_classes,
    stage_widths=(widths[:2], widths[:3], widths),
  )


def preset(name: str, num_classes: int = 194) -> HRNetConfig:
  """ "hrnet_w48" (the released MSeg model), "hrnet_w32", "hrnet_w18", or "small" (golden)."""
  if name in ("hrnet_w18", "hrnet_w32", "hrnet_w48"):
    return _standard(int(name[len("hrnet_w") :]), num_classes)
  if name == "small":
    return HRNetConfig(
      num_classes=num_classes,
      stage1_blocks=2,
      stage_modules=(1, 2, 2),
      stage_blocks=((2, 2), (2, 2, 2), (2, 2, 2, 2)),
      stage_widths=((18, 36), (18, 36, 72), (18, 36, 72, 144)),
    )
  raise ValueError(f"unknown HRNet preset {name!r}; use hrnet_w48, hrnet_w32, hrnet_w18 or small")


def _channel_sum(x: jnp.ndarray, rows: jnp.ndarray | None = None) -> jnp.ndarray:
  """Per-channel sum of (N, H, W, C) fp32 `x`, each image weighted by `rows` (N,) if given.

  On CPU as a matrix-vector product (XLA:CPU runs a large reduction over the major axes as a
  slow tree of reduce-windows: 3-6x slower, BENCHMARKS.md issue 17); elsewhere a reduction.
  """
  c = x.shape[-1]
  if jax.default_backend() != "cpu":
    return jnp.sum(x if rows is None else x * rows[:, None, None, None], axis=(0, 1, 2))
  weights = (
    jnp.ones(x.size // c, x.dtype) if rows is None else jnp.repeat(rows, x.size // (c * len(rows)))
  )
  return jnp.dot(weights, x.reshape(-1, c), precision=jax.lax.Precision.HIGHEST)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _batch_norm_train(x, scale, bias, rows, epsilon):
  return _batch_norm_fwd(x, scale, bias, rows, epsilon)[0]


def _batch_norm_fwd(x, scale, bias, rows, epsilon):
  """Normalizes `x` (N, H, W, C) with the mean and biased variance of the images `rows` (N,)
  weights, in fp32, returning (y in x's dtype, mean, var); keeps only `x` (in its own dtype)
  and the statistics for the backward."""
  x32 = x.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(rows) * (x.size // (x.shape[-1] * x.shape[0])), 1)
  mean = _channel_sum(x32, rows) / n
  centered = x32 - mean
  var = _channel_sum(centered * centered, rows) / n
  inv = jax.lax.rsqrt(var + epsilon)
  y = centered * (inv * scale) + bias
  return (y.astype(x.dtype), mean, var), (x, rows, n, mean, inv, scale)


def _batch_norm_bwd(epsilon, res, cotangents):
  """The gradient of y through the batch statistics (mean and var are outputs for the running
  averages only: their cotangents are ignored)."""
  x, rows, n, mean, inv, scale = res
  dy = cotangents[0].astype(jnp.float32)
  xhat = (x.astype(jnp.float32) - mean) * inv
  dbias = _channel_sum(dy)
  dscale = _channel_sum(dy * xhat)
  w = rows[:, None, None, None]
  dx = (scale * inv) * (dy - w * (dbias + xhat * dscale) / n)
  return dx.astype(x.dtype), dscale, dbias, jnp.zeros_like(rows)


_batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd)


class BatchNorm(nn.Module):
  """BatchNorm over the last axis with PyTorch semantics.

  Train: normalizes with the biased variance of the whole batch it sees (no axis_name; under
  jit with a sharded batch XLA makes the statistics global) and updates the running variance
  with the unbiased one, n/(n-1), as torch. `momentum` is Flax-style (torch 0.01 = 0.99).
  Statistics are computed in fp32 whatever the compute dtype, with a hand-written backward
  (BENCHMARKS.md, issue 17). `mask` (N,) marks the rows that count: the others (padding) are
  left out of the statistics, as if absent.
  """

  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool, mask: jnp.ndarray | None = None) -> jnp.ndarray:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
    if not train:
      mul = scale * jax.lax.rsqrt(running_var.value + self.epsilon)
      shift = bias - running_mean.value * mul
      return x * mul.astype(self.dtype) + shift.astype(self.dtype)
    rows = jnp.ones(x.shape[0], jnp.float32) if mask is None else mask.astype(jnp.float32)
    y, mean, var = _batch_norm_train(x, scale, bias, rows, self.epsilon)
    if not self.is_initializing():
      n = jnp.sum(rows) * (x.size // (c * x.shape[0]))
      m = self.momentum
      running_mean.value = m * running_mean.value + (1 - m) * mean
      running_var.value = m * running_var.value + (1 - m) * var * n / jnp.maximum(n - 1, 1)
    return y.astype(self.dtype)


def _opaque_one(x: jnp.ndarray) -> jnp.ndarray:
  """A 1 (x's shape and dtype) that XLA cannot constant-fold, computed from `x`: exact for every
  value of x, inf and NaN included, and without gradient."""
  return jax.lax.stop_gradient(jnp.where(jnp.isfinite(x), x * 0, 0) + 1)


def materialize(x: jnp.ndarray) -> jnp.ndarray:
  """`x` unchanged, but computed once into its own buffer rather than fused into each consumer.

  XLA:CPU fuses a cheap elementwise result into every consumer and recomputes it there. In
  HRNet each residual sum and fuse sum feeds both a conv and the next sum, so the whole chain
  of sums along a branch would be recomputed at every step (quadratic in depth: 40% of a W48
  forward at 713x713). XLA never duplicates a division, and `jax.lax.optimization_barrier` is
  removed before fusion on CPU, so this divides by a 1 that XLA cannot constant-fold (exact
  for every value, inf and NaN included; its gradient is exactly the incoming one).
  """
  return x / _opaque_one(x)


def conv_after_gradient(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  precision=None,
):
  """`lax.conv_general_dilated` whose backward reads its input and kernel only once the output
  gradient exists.

  XLA:CPU runs the weight-gradient and input-gradient convolutions on transposed copies of the
  input and kernel; with plain autodiff it makes those copies as soon as the forward has the
  input, so every activation is kept twice until the backward (BENCHMARKS.md, issue 17). Here
  the backward divides them by a 1 computed from the gradient first, which moves the copies
  to the backward. The kernel gradient of a stride-1 (dilated too) or 2 convolution is matrix
  products (`_flat_kernel_gradient`) and the input gradient of a stride-2 one from its phases
  (`_phase_conv`), both faster than XLA:CPU's own. A wide stride-1 3x3 convolution is computed,
  with both gradients, as Winograd products (`_has_winograd`). Same values and gradients, up to
  float rounding for the Winograd ones. HRNet and PSPNet use it on CPU (`backend_conv`).
  """
  params = (
    tuple(window_strides),
    padding if isinstance(padding, str) else tuple(tuple(p) for p in padding),
    None if lhs_dilation is None else tuple(lhs_dilation),
    None if rhs_dilation is None else tuple(rhs_dilation),
    dimension_numbers,
    feature_group_count,
    precision,
  )
  return _late_conv(params, lhs, rhs)


def backend_conv():
  """`nn.Conv(conv_general_dilated=...)` for HRNet and PSPNet: `conv_after_gradient` on CPU,
  the default (None) elsewhere."""
  return conv_after_gradient if jax.default_backend() == "cpu" else None


def _plain_conv(params, lhs, rhs):
  strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, groups, precision = params
  return jax.lax.conv_general_dilated(
    lhs,
    rhs,
    strides,
    padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=groups,
    precision=precision,
  )


def _fast_conv(params, lhs, rhs):
  """The convolution as Winograd products where `_has_winograd`, else XLA's."""
  if _has_winograd(params, lhs, rhs):
    return winograd.conv3x3(lhs, rhs)
  return _plain_conv(params, lhs, rhs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _late_conv(params, lhs, rhs):
  return _fast_conv(params, lhs, rhs)


def _late_conv_fwd(params, lhs, rhs):
  return _fast_conv(params, lhs, rhs), (lhs, rhs)


def _late_conv_bwd(params, res, g):
  one = _opaque_one(g.reshape(-1)[0])
  lhs, rhs = (r / one.astype(r.dtype) for r in res)
  if _has_winograd(params, lhs, rhs):
    dlhs, drhs = winograd.conv3x3_gradients(lhs, rhs, g)
  elif not _has_flat_kernel_gradient(params, rhs.shape):
    dlhs, drhs = jax.vjp(functools.partial(_plain_conv, params), lhs, rhs)[1](g)
  else:
    stride, padding, precision = params[0][0], params[1], params[-1]
    dilation = _dilation(params)
    if stride == 2:
      conv = functools.partial(
        _phase_conv, w=rhs, padding=padding, out_hw=g.shape[1:3], precision=precision
      )
    else:
      conv = functools.partial(
        _stride1_conv, w=rhs, padding=padding, dilation=dilation, precision=precision
      )
    (dlhs,) = jax.vjp(conv, lhs)[1](g)
    drhs = _flat_kernel_gradient(lhs, g, rhs.shape, stride, padding, precision, dilation)
    drhs = drhs.astype(rhs.dtype)
  # The kernel's gradient waits for the input's, whose convolution reads the kernel: then a
  # donated step's in-place update of the kernel comes after every read of it, and XLA does
  # not copy all the params at the start of the step to keep the old values.
  return dlhs, drhs * _opaque_one(dlhs.reshape(-1)[0]).astype(drhs.dtype)


def _dilation(params) -> int:
  """The kernel dilation of `params`, the same on both axes (0 where they differ)."""
  rows, cols = params[3] or (1, 1)
  return rows if rows == cols else 0


def _has_flat_kernel_gradient(params, kernel_shape) -> bool:
  """Whether `params` describe a convolution `_flat_kernel_gradient` (and, at stride 2,
  `_phase_conv`) handles: flax's NHWC/HWIO, ungrouped, stride 1 (any kernel dilation, as
  PSPNet's) or 2 (undilated) on both axes, a square kernel with explicit padding (none for
  1x1)."""
  strides, padding, lhs_dilation, _, numbers, groups, _ = params
  k, dilation = kernel_shape[0], _dilation(params)
  return (
    numbers == jax.lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))
    and groups == 1
    and ((strides == (1, 1) and dilation > 0) or (strides == (2, 2) and dilation == 1))
    and set(lhs_dilation or (1,)) == {1}
    and kernel_shape[1] == k
    and not isinstance(padding, str)
    and (k > 1 or padding == ((0, 0), (0, 0)))
  )


def _has_winograd(params, lhs, rhs) -> bool:
  """Whether `_late_conv` computes this convolution and its gradients as `winograd.conv3x3`:
  fp32, stride 1, 3x3 with padding 1, and at least `WINOGRAD_MIN_CHANNELS` channels in and
  out."""
  return (
    _has_flat_kernel_gradient(params, rhs.shape)
    and rhs.shape[0] == 3
    and params[0] == (1, 1)
    and params[1] == ((1, 1), (1, 1))
    and _dilation(params) == 1
    and lhs.dtype == rhs.dtype == jnp.float32
    and min(rhs.shape[2:]) >= WINOGRAD_MIN_CHANNELS
  )


def _phases(x, k: int, s: int, padding, out_hw: tuple[int, int]) -> jnp.ndarray:
  """`x` (N, H, W, C) padded, then cut or zero-extended to the s (h + e) x s (w + e) pixels that
  a stride-s k x k convolution with output (h, w) reads (e = (k - 1) // s), split into its s x s
  phases: (s * s, N, h + e, w + e, C), phase a s + b holding pixels (s y + a, s x + b).

  Tap (i, j) reads the padded input at (s y + i, s x + j) = s (y + i // s, x + j // s) +
  (i % s, j % s): pixel (y, x) of phase (i % s, j % s) shifted by (i // s, j // s)."""
  n, rows, cols, c = x.shape
  e = (k - 1) // s
  hq, wq = out_hw[0] + e, out_hw[1] + e
  (top, _), (left, _) = padding
  bottom, right = s * hq - rows - top, s * wq - cols - left
  x = jax.lax.pad(
    x, jnp.zeros((), x.dtype), ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0))
  )
  return x.reshape(n, hq, s, wq, s, c).transpose(2, 4, 0, 1, 3, 5).reshape(s * s, n, hq, wq, c)


def _phase_conv(x, w, padding, out_hw: tuple[int, int], precision) -> jnp.ndarray:
  """The stride-2 convolution of `x` (N, H, W, C) by `w` (k, k, C, D) with output `out_hw`, as
  the sum over `x`'s 2 x 2 phases (`_phases`) of a stride-1 convolution by the taps that read
  it, w[a::2, b::2]. Same values; its input gradient is made of stride-1 convolutions, which
  XLA:CPU runs 3-4x faster at HRNet's larger stride-2 convolutions than their own input
  gradient (a generic convolution of the zero-dilated output gradient; BENCHMARKS.md, issue
  17)."""
  k = w.shape[0]
  phases = _phases(x, k, 2, padding, out_hw)
  y = 0
  for a in range(min(k, 2)):
    for b in range(min(k, 2)):
      part = _stride1_conv(phases[2 * a + b], w[a::2, b::2], ((0, 0), (0, 0)), 1, precision)
      y = y + part[:, : out_hw[0], : out_hw[1]]
  return y


def _hwio_conv(x, w, padding, dilation, precision) -> jnp.ndarray:
  return jax.lax.conv_general_dilated(
    x,
    w,
    (1, 1),
    padding,
    rhs_dilation=(dilation, dilation),
    precision=precision,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _stride1_conv(x, w, padding, dilation, precision) -> jnp.ndarray:
  """The stride-1 convolution of `x` (N, H, W, C) by `w` (kh, kw, C, D) with explicit `padding`
  and kernel `dilation`, whose input gradient XLA:CPU runs as an Eigen convolution inside loops
  too.

  JAX's input gradient reads the kernel with its in and out axes swapped (HWOI). XLA:CPU's
  ConvCanonicalization transposes such kernels for Eigen only in the entry computation; in a
  loop body (MGDA's per-dataset backward, micro-batches) the convolution ran as generic code,
  several times slower (BENCHMARKS.md, issue 17). Here the backward transposes the flipped
  kernel itself, so the input gradient is an HWIO convolution wherever it runs. Same values.
  """
  return _hwio_conv(x, w, padding, dilation, precision)


def _stride1_conv_fwd(x, w, padding, dilation, precision):
  return _hwio_conv(x, w, padding, dilation, precision), (x, w)


def _stride1_conv_bwd(padding, dilation, precision, res, g):
  x, w = res
  reach = [dilation * (k - 1) for k in w.shape[:2]]
  pads = [(r - lo, r - hi) for r, (lo, hi) in zip(reach, padding, strict=True)]
  dx = _hwio_conv(g, jnp.flip(w, (0, 1)).swapaxes(2, 3), pads, dilation, precision)
  # dead code where only dx is asked for, as in `_late_conv_bwd`
  (dw,) = jax.vjp(lambda w: _hwio_conv(x, w, padding, dilation, precision), w)[1](g)
  return dx, dw


_stride1_conv.defvjp(_stride1_conv_fwd, _stride1_conv_bwd)


def _flat_kernel_gradient(
  x, g, kernel_shape, stride, padding, precision, dilation: int = 1
) -> jnp.ndarray:
  """The kernel gradient (k, k, C, D) of a convolution (stride 1 or 2, kernel `dilation` r) of
  `x` (N, H, W, C) whose output gradient is `g` (N, h, w, D), in fp32: one matrix product per
  tap on flattened rows.

  Tap (i, j) reads the padded input at (s y + r i, s x + r j): pixel (y, x) of phase
  (r i % s, r j % s) (`_phases`, (h + e) x (w + e) pixels each) shifted by (r i // s, r j // s).
  With g zero-padded on the right and bottom to that grid too, tap (i, j) pairs g's flat row q
  with the phase's flat row q + (r i // s) (w + e) + r j // s: a contiguous slice. Images stay
  apart until the final sum, so a batch sharded over devices needs one reduction, after the
  loop. XLA:CPU's own weight-gradient convolution is 1.5-3x slower than this at HRNet's shapes
  and as fast at PSPNet's dilated ones (BENCHMARKS.md, issue 17).
  """
  k, _, c, d = kernel_shape
  n, h, w, _ = g.shape
  s = stride
  if k == 1:
    rows, grads = x[:, : s * h : s, : s * w : s].reshape(n, -1, c), g.reshape(n, -1, d)
    # XLA:CPU copies the left operand of a product over its leading axes into a transposed
    # layout: make that the one with fewer channels.
    first, second = (grads, rows) if d < c else (rows, grads)
    dims = (((0, 1), (0, 1)), ((), ()))
    kernel = jax.lax.dot_general(first, second, dims, precision, jnp.float32)
    return (kernel.T if d < c else kernel).reshape(kernel_shape)
  phases = _phases(x, dilation * (k - 1) + 1, s, padding, (h, w))
  hq, wq = phases.shape[2:4]
  e = hq - h
  phases = phases.reshape(s * s, n, -1, c)
  grads = jnp.pad(g, ((0, 0), (0, e), (0, e), (0, 0))).reshape(n, -1, d)
  m = hq * wq - (e * wq + e)  # g's later rows are all padding
  grads_t = jnp.swapaxes(grads[:, :m], 1, 2)  # (N, D, m)
  taps_ij = [(i, j) for i in range(k) for j in range(k)]
  r = dilation
  phase = jnp.array([r * i % s * s + r * j % s for i, j in taps_ij])
  offset = jnp.array([r * i // s * wq + r * j // s for i, j in taps_ij])
  dims = (((2,), (1,)), ((0,), (0,)))

  def tap(t, taps):
    window = jax.lax.dynamic_slice(phases, (phase[t], 0, offset[t], 0), (1, n, m, c))[0]
    return taps.at[t].set(jax.lax.dot_general(grads_t, window, dims, precision, jnp.float32))

  # The loop's buffer is zeros times a 1 from g: a constant one would be made in the forward
  # and held until the backward.
  empty = jnp.zeros((k * k, n, d, c), jnp.float32) * _opaque_one(g.reshape(-1)[0]).astype(
    jnp.float32
  )
  taps = jax.lax.fori_loop(0, k * k, tap, empty).sum(axis=1)  # (k * k, D, C)
  return jnp.swapaxes(taps, 1, 2).reshape(kernel_shape)


_late_conv.defvjp(_late_conv_fwd, _late_conv_bwd)


def _torch_bias_init(fan_in: int):
  bound = 1 / math.sqrt(fan_in)
  return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


class BranchwiseHeadConv(nn.Module):
  """The head's first 1x1 conv (with bias) applied to the branches before their upsampling.

  conv1x1(concat(x0, up(x1), up(x2), ...)) == x0 @ k0 + up(x1 @ k1) + up(x2 @ k2) + ... + bias,
  where k_b are the kernel's input-channel slices, because the bilinear upsampling is linear
  and acts on space only. The wide conv (720 -> 720 for W48) then runs on the low-resolution
  branches: 13 of 163 GFLOP less per 473x473 forward, and no upsampled concat in memory.
  Same params as the conv it replaces ({"kernel": (1, 1, sum(widths), features), "bias"}).
  """

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, xs: list[jnp.ndarray]) -> jnp.ndarray:
    widths = [x.shape[-1] for x in xs]
    fan_in = sum(widths)
    kernel = self.param(
      "kernel", nn.initializers.normal(0.001), (1, 1, fan_in, self.features), jnp.float32
    )
    bias = self.param("bias", _torch_bias_init(fan_in), (self.features,), jnp.float32)
    kernels = jnp.split(kernel[0, 0].astype(self.dtype), np.cumsum(widths)[:-1])
    size = xs[0].shape[1:3]
    y = bias.astype(self.dtype)
    for x, k in zip(xs, kernels, strict=True):
      y = y + resize_bilinear(x @ k, size, align_corners=False)
    return y


class HRNet(nn.Module):
  """HRNetV2-W* segmentation network; `__call__` returns fp32 logits (N, H, W, num_classes).

  Input: normalized NHWC images of any size. The official code asserts (H-1) % 8 == 0 and
  (W-1) % 8 == 0 (crops 473, 593, 713); this port accepts any size and computes exactly what
  the official forward would (stride-2 convs give ceil(n/2), resizes target explicit sizes).
  Params are fp32; `dtype` is the compute dtype (bf16 on accelerators). In training, `mask`
  (N,) leaves the rows it marks False (padding) out of every BatchNorm's statistics.
  Activations are sown into "intermediates" (stem_out, layer1_out, stage{s}_in_{b},
  stage{s}_out_{b}, concat, logits_quarter) for `mutable=["intermediates"]`; the
  inference-only `bn_folded` variant (see `fold_batch_norm`) never builds "concat".
  """

  config: HRNetConfig
  dtype: Any = jnp.float32
  bn_folded: bool = False  # inference-only variant made by fold_batch_norm

  def _conv(
    self, x, name: str, features: int, kernel: int = 3, stride: int = 1, bias: bool = False
  ):
    fan_in = x.shape[-1] * kernel * kernel
    return nn.Conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=[(kernel // 2, kernel // 2)] * 2,
      use_bias=bias,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=nn.initializers.normal(0.001),
      bias_init=_torch_bias_init(fan_in),
      conv_general_dilated=backend_conv(),
      name=name,
    )(x)

  def _conv_bn(
    self,
    x,
    conv: str,
    bn: str,
    features: int,
    kernel: int,
    stride: int,
    train: bool,
    mask: jnp.ndarray | None,
    bias: bool = False,
  ):
    """Conv then BatchNorm; one conv with bias when the BN is folded into it."""
    if self.bn_folded:
      if train:
        raise ValueError("HRNet with bn_folded=True is inference-only (use train=False)")
      return self._conv(x, conv, features, kernel, stride, bias=True)
    x = self._conv(x, conv, features, kernel, stride, bias)
    return BatchNorm(dtype=self.dtype, name=bn)(x, train, mask)

  def _bottleneck(self, x, name: str, planes: int, train: bool, mask):
    width = planes * BOTTLENECK_EXPANSION
    out = nn.relu(self._conv_bn(x, f"{name}.conv1", f"{name}.bn1", planes, 1, 1, train, mask))
    out = nn.relu(self._conv_bn(out, f"{name}.conv2", f"{name}.bn2", planes, 3, 1, train, mask))
    out = self._conv_bn(out, f"{name}.conv3", f"{name}.bn3", width, 1, 1, train, mask)
    if x.shape[-1] != width:
      x = self._conv_bn(x, f"{name}.downsample.0", f"{name}.downsample.1", width, 1, 1, train, mask)
    return materialize(nn.relu(out + x))

  def _basic_block(self, x, name: str, train: bool, mask):
    width = x.shape[-1]
    out = nn.relu(self._conv_bn(x, f"{name}.conv1", f"{name}.bn1", width, 3, 1, train, mask))
    out = self._conv_bn(out, f"{name}.conv2", f"{name}.bn2", width, 3, 1, train, mask)
    return materialize(nn.relu(out + x))

  def _sequential(self, x, name: str, features: int, kernel: int, stride: int, train: bool, mask):
    """Sequential(conv, BN) under `name.0`, `name.1`."""
    return self._conv_bn(x, f"{name}.0", f"{name}.1", features, kernel, stride, train, mask)

  def _transition(self, xs, name: str, widths: tuple[int, ...], train: bool, mask):
    """Adapts existing branches to `widths` and adds the new one from the lowest resolution."""
    out = []
    for b, width in enumerate(widths):
      if b < len(xs):
        x = xs[b]
        if x.shape[-1] != width:
          x = nn.relu(self._sequential(x, f"{name}.{b}", width, 3, 1, train, mask))
      else:
        x = nn.relu(self._sequential(xs[-1], f"{name}.{b}.0", width, 3, 2, train, mask))
      out.append(x)
    return out

  def _fuse_term(self, x, name: str, i: int, j: int, target, train: bool, mask):
    """F(i, j): branch j brought to branch i's resolution and width."""
    if j > i:
      x = self._sequential(x, name, target.shape[-1], 1, 1, train, mask)
      return resize_bilinear(x, target.shape[1:3], align_corners=False)
    for k in range(i - j):
      last = k == i - j - 1
      x = self._sequential(
        x, f"{name}.{k}", target.shape[-1] if last else x.shape[-1], 3, 2, train, mask
      )
      if not last:
        x = nn.relu(x)
    return x

  def _hr_module(self, xs, name: str, blocks: tuple[int, ...], train: bool, mask):
    """HighResolutionModule: BasicBlocks per branch, then the all-to-all SUM fuse."""
    xs = list(xs)
    for b, num in enumerate(blocks):
      for k in range(num):
        xs[b] = self._basic_block(xs[b], f"{name}.branches.{b}.{k}", train, mask)
    out = []
    for i in range(len(xs)):
      y = (
        xs[0]
        if i == 0
        else self._fuse_term(xs[0], f"{name}.fuse_layers.{i}.0", i, 0, xs[i], train, mask)
      )
      for j in range(1, len(xs)):
        y = y + (
          xs[j]
          if i == j
          else self._fuse_term(xs[j], f"{name}.fuse_layers.{i}.{j}", i, j, xs[i], train, mask)
        )
      out.append(materialize(nn.relu(y)))
    return out

  @nn.compact
  def __call__(
    self,
    x: jnp.ndarray,
    train: bool = False,
    return_quarter: bool = False,
    mask: jnp.ndarray | None = None,
  ) -> jnp.ndarray:
    cfg = self.config
    h, w = x.shape[1:3]
    x = x.astype(self.dtype)
    x = nn.relu(self._conv_bn(x, "conv1", "bn1", STEM_WIDTH, 3, 2, train, mask))
    x = nn.relu(self._conv_bn(x, "conv2", "bn2", STEM_WIDTH, 3, 2, train, mask))
    self.sow("intermediates", "stem_out", x)
    for b in range(cfg.stage1_blocks):
      x = self._bottleneck(x, f"layer1.{b}", cfg.stage1_planes, train, mask)
    self.sow("intermediates", "layer1_out", x)
    xs = [x]
    for k, (modules, blocks, widths) in enumerate(
      zip(cfg.stage_modules, cfg.stage_blocks, cfg.stage_widths, strict=True)
    ):
      stage = k + 2
      xs = self._transition(xs, f"transition{stage - 1}", widths, train, mask)
      for b, xb in enumerate(xs):
        self.sow("intermediates", f"stage{stage}_in_{b}", xb)
      for m in range(modules):
        xs = self._hr_module(xs, f"stage{stage}.{m}", blocks, train, mask)
      for b, xb in enumerate(xs):
        self.sow("intermediates", f"stage{stage}_out_{b}", xb)

    if self.bn_folded:
      x = nn.relu(BranchwiseHeadConv(cfg.head_width, dtype=self.dtype, name="last_layer.0")(xs))
    else:
      size = xs[0].shape[1:3]
      x = jnp.concatenate(
        [xs[0]] + [resize_bilinear(xb, size, align_corners=False) for xb in xs[1:]], axis=-1
      )
      self.sow("intermediates", "concat", x)
      x = nn.relu(
        self._conv_bn(
          x, "last_layer.0", "last_layer.1", cfg.head_width, 1, 1, train, mask, bias=True
        )
      )
    x = self._conv(x, "last_layer.3", cfg.num_classes, 1, bias=True).astype(jnp.float32)
    self.sow("intermediates", "logits_quarter", x)
    if return_quarter:
      return x
    return resize_bilinear(x, (h, w), align_corners=True)


def _conv_of(bn: str) -> str:
  """The conv a BatchNorm follows: "x.K" <- "x.K-1" (Sequential), "x.bnK" <- "x.convK"."""
  prefix, _, last = bn.rpartition(".")
  if last.isdigit():
    return f"{prefix}.{int(last) - 1}"
  return f"{prefix}.conv{last[2:]}" if prefix else f"conv{last[2:]}"


def fold_batch_norm(
  model: nn.Module, variables: dict[str, Any]
) -> tuple[nn.Module, dict[str, Any]]:
  """An inference-only (model, variables) with every eval-mode BN folded into its conv.

  For HRNet and PSPNet (any model with a `bn_folded` field whose BNs follow their conv).

  kernel' = kernel * s and bias' = (bias - running_mean) * s + beta with
  s = gamma / sqrt(running_var + eps), computed in float64; same logits up to rounding, and
  faster on CPU (one conv + bias per layer, and the head's first conv runs per branch before
  the upsampling: `BranchwiseHeadConv`).
  """
  params = jax.device_get(variables["params"])
  batch_stats = jax.device_get(variables["batch_stats"])
  folded = {name: leaves for name, leaves in params.items() if "kernel" in leaves}
  for bn, stats in batch_stats.items():
    conv = _conv_of(bn)
    kernel = np.asarray(params[conv]["kernel"], np.float64)
    bias = np.asarray(params[conv].get("bias", 0.0), np.float64)
    s = np.asarray(params[bn]["scale"], np.float64) / np.sqrt(
      np.asarray(stats["var"], np.float64) + BatchNorm.epsilon
    )
    shift = (bias - np.asarray(stats["mean"], np.float64)) * s + params[bn]["bias"]
    folded[conv] = {"kernel": (kernel * s).astype(np.float32), "bias": shift.astype(np.float32)}
  return model.clone(bn_folded=True), {"params": folded}


# XLA:CPU's experimental YNN fusions make HRNet slower on x86 (BENCHMARKS.md, "HRNet forward");
# the logits are the same. Process-wide: XLA_FLAGS=<flag>= does the same.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options() -> dict[str, Any] | None:
  """`jax.jit(..., compiler_options=...)` for an HRNet forward or train step on the default
  backend (BENCHMARKS.md, issue 17: the step's convolutions ran as YNN fusions)."""
  return dict(CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else None
