"""3x3 stride-1 convolutions as Winograd F(2x2, 3x3) matrix products (Lavin and Gray, 2016).

Each 2x2 output tile is A^T [(G w G^T) * (B^T d B)] A, with d the 4x4 input tile around it:
16 products of (tiles, C) x (C, D), 2.25x fewer multiplications than the direct convolution.
The gradients are the transposes of the same steps, so they keep that saving. The values
differ from the direct convolution by float rounding only (about 1e-6 relative in fp32). On
CPU, training and inference use it for HRNet's 3x3 convolutions with 192 or more channels, where
it is faster than XLA:CPU's (BENCHMARKS.md, issue 17).
"""

import jax
import jax.numpy as jnp
import numpy as np

_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])  # input, 4 x 4
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])  # output, 2 x 4
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])  # kernel, 4 x 3


def _mix(coefs: np.ndarray, terms: list[jnp.ndarray]) -> jnp.ndarray:
  """The stack over rows r of sum_i coefs[r, i] terms[i], skipping zero coefficients."""
  rows = []
  for row in coefs:
    total = None
    for c, t in zip(row, terms, strict=True):
      if c:
        t = t if c == 1 else -t if c == -1 else float(c) * t
        total = t if total is None else total + t
    rows.append(total)
  return jnp.stack(rows)


def _mix_fused(coefs: np.ndarray, terms: list[jnp.ndarray]) -> jnp.ndarray:
  """`_mix` as one elementwise pass over all rows: faster for the kernel transforms, whose 16
  rows of C x D each XLA:CPU would otherwise write in 16 passes and then concatenate."""
  total = 0
  for column, t in zip(coefs.T, terms, strict=True):
    if column.any():
      total = total + jnp.asarray(column, t.dtype).reshape(-1, *[1] * t.ndim) * t
  return total


def _tiles(x: jnp.ndarray) -> jnp.ndarray:
  """B^T d B for the 4x4 tiles d (stride 2) of `x` (N, H, W, C) zero-padded by 1: (16, N, th,
  tw, C), th = ceil(H / 2), tw = ceil(W / 2)."""
  n, h, w, _ = x.shape
  th, tw = -(-h // 2), -(-w // 2)
  xp = jnp.pad(x, ((0, 0), (1, 2 * th + 1 - h), (1, 2 * tw + 1 - w), (0, 0)))
  d = [xp[:, i : i + 2 * th : 2, j : j + 2 * tw : 2] for i in range(4) for j in range(4)]
  return _mix(np.kron(_BT, _BT), d)


def _tiles_transpose(dv: jnp.ndarray, h: int, w: int) -> jnp.ndarray:
  """The transpose of `_tiles`: (N, h, w, C) from (16, N, th, tw, C).

  Padded-input pixel (2 T + p, 2 U + q) is element (p + 2 a, q + 2 b) of tile (T - a, U - b),
  so each of the four pixel phases (p, q) sums four shifted tile grids."""
  _, n, th, tw, c = dv.shape
  dvp = jnp.pad(dv, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
  shifted = [dvp[:, :, 1 - a : th + 2 - a, 1 - b : tw + 2 - b] for a in (0, 1) for b in (0, 1)]
  bt = np.kron(_BT, _BT).reshape(16, 4, 4)  # [tile element k, i, j]
  coefs = np.array(
    [
      [bt[k, p + 2 * a, q + 2 * b] for a in (0, 1) for b in (0, 1) for k in range(16)]
      for p in (0, 1)
      for q in (0, 1)
    ]
  )  # [phase (p, q), term (a, b, k)]
  phases = _mix(coefs, [s[k] for s in shifted for k in range(16)])
  xp = phases.reshape(2, 2, n, th + 1, tw + 1, c).transpose(2, 3, 0, 4, 1, 5)
  return xp.reshape(n, 2 * th + 2, 2 * tw + 2, c)[:, 1 : 1 + h, 1 : 1 + w]


def _untile(m: jnp.ndarray, h: int, w: int) -> jnp.ndarray:
  """A^T m A per tile: (N, h, w, D) from (16, N, th, tw, D)."""
  _, n, th, tw, d = m.shape
  y = _mix(np.kron(_AT, _AT), list(m)).reshape(2, 2, n, th, tw, d).transpose(2, 3, 0, 4, 1, 5)
  return y.reshape(n, 2 * th, 2 * tw, d)[:, :h, :w]


def _untile_transpose(g: jnp.ndarray) -> jnp.ndarray:
  """The transpose of `_untile`: (16, N, th, tw, D) from (N, h, w, D)."""
  n, h, w, d = g.shape
  th, tw = -(-h // 2), -(-w // 2)
  gp = jnp.pad(g, ((0, 0), (0, 2 * th - h), (0, 2 * tw - w), (0, 0)))
  gp = gp.reshape(n, th, 2, tw, 2, d)
  return _mix(np.kron(_AT, _AT).T, [gp[:, :, a, :, b] for a in (0, 1) for b in (0, 1)])


def _kernel(w: jnp.ndarray) -> jnp.ndarray:
  """G w G^T: (16, C, D) from (3, 3, C, D)."""
  return _mix_fused(np.kron(_G, _G), [w[i, j] for i in range(3) for j in range(3)])


def _kernel_transpose(du: jnp.ndarray) -> jnp.ndarray:
  """The transpose of `_kernel`: (3, 3, C, D) from (16, C, D)."""
  return _mix_fused(np.kron(_G, _G).T, list(du)).reshape(3, 3, *du.shape[1:])


_BATCHED = (((4,), (1,)), ((0,), (0,)))  # (16, N, th, tw, C) x (16, C, D)


def conv3x3(x: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
  """The stride-1 convolution of `x` (N, H, W, C) by `w` (3, 3, C, D) with zero padding 1."""
  return _untile(jax.lax.dot_general(_tiles(x), _kernel(w), _BATCHED), *x.shape[1:3])


def conv3x3_gradients(
  x: jnp.ndarray, w: jnp.ndarray, g: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The input and kernel gradients of `conv3x3(x, w)` for the output gradient `g`."""
  dm = _untile_transpose(g)
  dv = jax.lax.dot_general(dm, _kernel(w), (((4,), (2,)), ((0,), (0,))))
  du = jax.lax.dot_general(_tiles(x), dm, (((1, 2, 3), (1, 2, 3)), ((0,), (0,))))
  return _tiles_transpose(dv, *x.shape[1:3]), _kernel_transpose(du)
