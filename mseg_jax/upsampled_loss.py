"""Cross entropy of logits upsampled 4x (HRNet's align_corners head), one band of rows at a time.

The official loss upsamples the (N, h, w, C) quarter-resolution logits to the crop and takes the
cross entropy there. Written directly, the full-size logits, their softmax, its gradient and
the upsample's scatter-add backward are several (N, H, W, C) fp32 buffers (0.69 GB each for
2 x 473^2 x 194 classes; 2 GB for 5 x 713^2) kept or built for the backward pass.
`pixel_sums` computes the same sums and gradient band by band: the forward keeps only
the quarter logits, the backward recomputes each band's logits and maps its gradient back to
quarter resolution: columns with the transposed interpolation taps (a gather, no scatter),
rows by a matrix product on the few quarter rows the band reads. Bands are laid out (W, BAND,
N, C), so that every gather runs along the leading axis (XLA:CPU otherwise transposes each
band).
"""

import jax
import jax.numpy as jnp
import numpy as np

from mseg_jax.models.resize import bilinear_taps

BAND = 32  # full-resolution rows per step


def _transposed_taps(out_n: int, in_n: int) -> tuple[np.ndarray, np.ndarray]:
  """For each input index, the output indices that read it and their weights, padded with
  weight 0: (in_n, k) int32 and (in_n, k) float32, with out = sum_k w[i, k] * g[idx[i, k]]."""
  i0, i1, frac = bilinear_taps(out_n, in_n, align_corners=True)
  pairs = [[] for _ in range(in_n)]
  for o in range(out_n):
    pairs[i0[o]].append((o, 1 - frac[o]))
    pairs[i1[o]].append((o, frac[o]))
  k = max(len(p) for p in pairs)
  index, weight = np.zeros((in_n, k), np.int32), np.zeros((in_n, k), np.float32)
  for i, p in enumerate(pairs):
    for j, (o, w) in enumerate(p):
      index[i, j], weight[i, j] = o, w
  return index, weight


def _bands(height: int, in_h: int):
  """Per band of BAND output rows: the row taps (y0, y1, wy), each (bands, BAND); the first of
  the `span` input rows the band reads, (bands,); and its row-interpolation matrix on those
  rows, (bands, span, BAND)."""
  y0, y1, wy = bilinear_taps(height, in_h, align_corners=True)
  pad = -height % BAND
  y0, y1, wy = (np.pad(t, (0, pad), mode="edge").reshape(-1, BAND) for t in (y0, y1, wy))
  span = int((y1.max(axis=1) - y0.min(axis=1)).max()) + 1
  first = np.minimum(y0.min(axis=1), in_h - span)
  rows = np.zeros((len(y0), span, BAND), np.float32)
  bands, cols = np.indices(y0.shape)
  real = (bands * BAND + cols < height).astype(np.float32)  # padding rows read nothing
  np.add.at(rows, (bands, y0 - first[:, None], cols), (1 - wy) * real)
  np.add.at(rows, (bands, y1 - first[:, None], cols), wy * real)
  return y0, y1, wy.astype(np.float32), first.astype(np.int32), rows


def _band_logits(quarter_t, y0, y1, wy, width: int):
  """Rows y0/y1 of the upsample of `quarter_t`, the (h, w, N, C) transpose of the logits, as
  (width, BAND, N, C): the values of resize_bilinear(align_corners=True) (rows, then columns),
  each interpolation a gather along the leading axis, which XLA:CPU does without transposes."""
  wy = wy[:, None, None, None]
  x = jnp.swapaxes(quarter_t[y0] * (1 - wy) + quarter_t[y1] * wy, 0, 1)  # (w, BAND, N, C)
  x0, x1, wx = bilinear_taps(width, x.shape[0], align_corners=True)
  wx = jnp.asarray(wx, x.dtype)[:, None, None, None]
  return x[x0] * (1 - wx) + x[x1] * wx


def _split(a: jax.Array, fill) -> jax.Array:
  """(N, H, W) -> (bands, W, BAND, N), padded with `fill`: the layout of `_band_logits`."""
  pad = -a.shape[1] % BAND
  a = jnp.pad(a, ((0, 0), (0, pad), (0, 0)), constant_values=fill)
  return a.reshape(a.shape[0], -1, BAND, a.shape[2]).transpose(1, 3, 2, 0)


def _sums(quarter, target, valid):
  n, height, width = target.shape
  y0, y1, wy, _, _ = _bands(height, quarter.shape[1])
  quarter_t = quarter.transpose(1, 2, 0, 3)

  def band(totals, xs):
    y0, y1, wy, t, v = xs
    logits = _band_logits(quarter_t, y0, y1, wy, width)
    picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
    loss = jnp.where(v, jax.nn.logsumexp(logits, axis=-1) - picked, 0.0)
    hits = v & (picked >= jnp.max(logits, axis=-1))  # argmax == t but for exact ties
    return (totals[0] + loss.sum(axis=(0, 1)), totals[1] + hits.sum((0, 1), jnp.float32)), None

  xs = (jnp.asarray(y0), jnp.asarray(y1), jnp.asarray(wy), _split(target, 0), _split(valid, False))
  zeros = jnp.zeros((n,), jnp.float32)
  return jax.lax.scan(band, (zeros, zeros), xs)[0]


@jax.custom_vjp
def pixel_sums(
  quarter: jax.Array, target: jax.Array, valid: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Per image, the summed cross entropy over `valid` pixels of the logits upsampled to the
  label size (bilinear, align_corners=True), without the full-size logits in memory; and the
  `valid` pixels where their argmax is `target` (no gradient; a tie for the maximum counts as
  correct), from the same pass.

  Args:
    quarter: (N, h, w, C) float32 logits.
    target: (N, H, W) int32 classes in [0, C) (anything where not valid).
    valid: (N, H, W) bool.

  Returns:
    (loss sums, correct pixels), (N,) float32 each.
  """
  return _sums(quarter, target, valid)


def _fwd(quarter, target, valid):
  return _sums(quarter, target, valid), (quarter, target, valid)


def _bwd(res, cotangents):
  quarter, target, valid = res
  g = cotangents[0]  # the correct-pixel counts have no gradient
  n, height, width = target.shape
  _, in_h, in_w, c = quarter.shape
  y0, y1, wy, first, rows = _bands(height, in_h)
  col_index, col_weight = _transposed_taps(width, in_w)
  col_weight = jnp.asarray(col_weight)[:, :, None, None, None]
  quarter_t = quarter.transpose(1, 2, 0, 3)

  def band(grad, xs):
    y0, y1, wy, first, rows, t, v = xs
    logits = _band_logits(quarter_t, y0, y1, wy, width)
    d = jax.nn.softmax(logits, axis=-1) - jax.nn.one_hot(t, c, dtype=logits.dtype)
    d = jnp.where(v[..., None], d, 0.0) * g[:, None]
    d = (d[col_index] * col_weight).sum(axis=1)  # (w, BAND, N, C): columns transposed
    d = jnp.swapaxes(d, 0, 1).reshape(BAND, -1)
    d = jnp.dot(rows, d, precision="highest").reshape(-1, in_w, n, c)  # rows transposed
    at = (first, 0, 0, 0)
    update = jax.lax.dynamic_slice(grad, at, d.shape) + d
    return jax.lax.dynamic_update_slice(grad, update, at), None

  xs = tuple(map(jnp.asarray, (y0, y1, wy, first, rows))) + (
    _split(target, 0),
    _split(valid, False),
  )
  grad = jax.lax.scan(band, jnp.zeros_like(quarter_t), xs)[0]
  return grad.transpose(2, 0, 1, 3), None, None


pixel_sums.defvjp(_fwd, _bwd)
