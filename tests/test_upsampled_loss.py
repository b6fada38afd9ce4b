"""The banded loss of upsampled logits equals the loss of the upsampled logits, with gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mseg_jax import train, upsampled_loss
from mseg_jax.models.resize import resize_bilinear


@pytest.mark.parametrize("quarter_hw,out_hw", [((17, 17), (65, 65)), ((9, 12), (70, 45))])
def test_banded_loss_and_gradient_equal_the_full_size_loss(quarter_hw, out_hw):
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  quarter = 3 * jax.random.normal(k1, (3, *quarter_hw, 11))
  labels = jax.random.randint(k2, (3, *out_hw), 0, 11).astype(jnp.uint8)
  labels = jnp.where(jax.random.uniform(k3, labels.shape) < 0.2, 255, labels)  # ignored pixels
  dataset = jnp.array([0, 1, 0])

  def full(q):
    logits = resize_bilinear(q, out_hw, align_corners=True)
    return train.multi_dataset_loss(logits, labels, dataset, 2)[0]

  def banded(q):
    return train.dataset_loss_and_accuracy_quarter(q, labels, dataset, 2)[0]

  (loss, grad), (expected, expected_grad) = (
    jax.jit(jax.value_and_grad(f))(quarter) for f in (banded, full)
  )
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
  scale = np.abs(np.asarray(expected_grad)).max()
  np.testing.assert_allclose(np.asarray(grad), np.asarray(expected_grad), atol=1e-6 * scale)


def test_transposed_taps_are_the_transpose_of_the_interpolation():
  index, weight = upsampled_loss._transposed_taps(37, 10)
  g = np.random.default_rng(0).normal(size=37)
  dense = np.asarray(
    jax.jacobian(lambda x: resize_bilinear(x, (1, 37), True))(jnp.zeros((1, 1, 10, 1)))
  )
  np.testing.assert_allclose((g[index] * weight).sum(1), dense.reshape(37, 10).T @ g, atol=1e-6)


@pytest.mark.parametrize("quarter_hw,out_hw", [((17, 17), (65, 65)), ((9, 12), (70, 45))])
def test_banded_pixel_accuracy_equals_the_accuracy_of_the_upsampled_logits(quarter_hw, out_hw):
  k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
  quarter = 3 * jax.random.normal(k1, (3, *quarter_hw, 5))
  logits = resize_bilinear(quarter, out_hw, align_corners=True)
  labels = jnp.argmax(logits, axis=-1).astype(jnp.uint8)  # right everywhere ...
  wrong = jax.random.uniform(k2, labels.shape) < 0.3
  labels = jnp.where(wrong, (labels + 1) % 5, labels)  # ... but here
  labels = jnp.where(jax.random.uniform(k3, labels.shape) < 0.2, 255, labels)
  dataset = jnp.array([0, 1, 0])
  expected = train.dataset_pixel_accuracy(logits, labels, dataset, 2)
  banded = train.dataset_loss_and_accuracy_quarter(quarter, labels, dataset, 2)[2]
  np.testing.assert_allclose(np.asarray(banded), np.asarray(expected), rtol=1e-6)
  assert 0.5 < float(expected[0]) < 0.9
