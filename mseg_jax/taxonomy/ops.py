"""Jitted taxonomy ops: label remapping by lookup table and test-taxonomy projection."""

import jax
import jax.numpy as jnp
import numpy as np

IGNORE = 255  # the ignore label of every taxonomy; exported as taxonomy.IGNORE


def _lookup(labels: jax.Array, lut: jax.Array) -> jax.Array:
  """lut[labels]; ids past the end of `lut` (or negative) give IGNORE."""
  dtype = np.dtype(labels.dtype)
  if dtype.kind == "u" and lut.shape[-1] >= 2 ** (8 * dtype.itemsize):
    return lut.at[labels].get(mode="promise_in_bounds")
  labels = labels.astype(jnp.int32)
  labels = jnp.where(labels < 0, lut.shape[-1], labels)
  return lut.at[labels].get(mode="fill", fill_value=IGNORE)


@jax.jit
def remap_labels(
  labels: jax.Array, lut: jax.Array, dataset_index: jax.Array | None = None
) -> jax.Array:
  """Maps label ids through a lookup table (a jitted gather).

  Args:
    labels: integer label map(s) of any shape; uint8 is fastest.
    lut: (L,) table for every label, or (n, L) tables stacked (see `stacked_luts`).
    dataset_index: with a stacked `lut`, (N,) ints: row of `lut` for each of the N samples of
      `labels` (N, ...).

  Returns:
    lut[labels] in the table's dtype (uint8 for the universal LUTs, uint16 for the naive ones);
    ids >= L become 255.
  """
  lut = jnp.asarray(lut)
  if dataset_index is None:
    if lut.ndim != 1:
      raise ValueError(f"remap_labels: a stacked lut {lut.shape} needs dataset_index")
    return _lookup(labels, lut)
  if lut.ndim != 2 or dataset_index.shape != labels.shape[:1]:
    raise ValueError(
      f"remap_labels: need lut (n, L) and dataset_index (N,) for labels (N, ...); got lut "
      f"{lut.shape}, dataset_index {dataset_index.shape}, labels {labels.shape}"
    )
  return jax.vmap(_lookup)(labels, lut[dataset_index])


@jax.jit
def project_probs(probs: jax.Array, matrix: jax.Array) -> jax.Array:
  """Sums universal class probabilities into test classes: (..., U) x (U, K) -> (..., K).

  `matrix` is the binary `projection_matrix(test_dataset)`; universal classes without a test
  class are dropped, so the outputs need not sum to 1 (as in mseg-api).
  """
  matrix = jnp.asarray(matrix, probs.dtype)
  return jnp.einsum("...u,uk->...k", probs, matrix, precision=jax.lax.Precision.HIGHEST)
