"""Training objective: the multi-dataset loss, the poly schedule, the optimizer."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mseg_jax import train


def _hand_ce(logits: np.ndarray, label: int) -> float:
  z = logits.astype(np.float64)
  return float(np.log(np.exp(z - z.max()).sum()) + z.max() - z[label])


def _hand_loss(logits, labels, dataset, num_datasets):
  """Official multi-GPU loss by hand: mean over each dataset's valid pixels, then over datasets."""
  per_dataset = []
  for d in range(num_datasets):
    ces = [
      _hand_ce(logits[n, i, j], labels[n, i, j])
      for n in range(len(dataset))
      if dataset[n] == d
      for i in range(labels.shape[1])
      for j in range(labels.shape[2])
      if labels[n, i, j] != 255
    ]
    if ces:
      per_dataset.append(np.mean(ces))
  return np.mean(per_dataset)


@pytest.fixture
def small_case():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 3, 5, 6)).astype(np.float32) * 3
  labels = rng.integers(0, 6, size=(4, 3, 5)).astype(np.uint8)
  labels[0, :2] = 255  # dataset 0 loses 10 of its 30 pixels
  labels[1, 1, 3] = 255
  labels[2, :, :4] = 255  # dataset 1 keeps 3 of 15
  dataset = np.array([0, 0, 1, 2], np.int32)
  return logits, labels, dataset


def test_multi_dataset_loss_matches_hand_computation(small_case):
  logits, labels, dataset = small_case
  loss, per_dataset, counts = train.multi_dataset_loss(
    jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(dataset), 3
  )
  np.testing.assert_allclose(loss, _hand_loss(logits, labels, dataset, 3), rtol=1e-6)
  np.testing.assert_array_equal(counts, [(labels[:2] != 255).sum(), 3, 15])
  # each dataset weighs the same, whatever its pixel count: not the pooled pixel mean
  pooled = _hand_loss(logits, labels, np.zeros(4, np.int32), 1)
  assert abs(float(loss) - pooled) > 1e-3
  assert per_dataset.shape == (3,)


def test_one_dataset_is_the_plain_mean_over_valid_pixels(small_case):
  logits, labels, _ = small_case
  loss, _, _ = train.multi_dataset_loss(
    jnp.asarray(logits), jnp.asarray(labels), jnp.zeros(4, jnp.int32), 1
  )
  valid = labels != 255
  ces = [_hand_ce(z, y) for z, y in zip(logits[valid], labels[valid], strict=True)]
  np.testing.assert_allclose(loss, np.mean(ces), rtol=1e-6)


def test_dataset_without_valid_pixels_gets_no_weight(small_case):
  logits, labels, dataset = small_case
  labels = labels.copy()
  labels[3] = 255  # dataset 2: nothing valid
  loss, per_dataset, _ = train.multi_dataset_loss(
    jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(dataset), 4
  )  # dataset 3 absent
  assert np.isfinite(loss)
  np.testing.assert_allclose(loss, _hand_loss(logits, labels, dataset, 4), rtol=1e-6)
  assert per_dataset[2] == 0 and per_dataset[3] == 0


def test_poly_schedule_follows_the_official_formula():
  schedule = train.poly_schedule(0.01, 600_000, 0.9)
  for k in (1, 2, 10, 1234, 300_000, 599_999, 600_000):  # 1-based step k uses count k-1
    np.testing.assert_allclose(schedule(k - 1), 0.01 * (1 - (k - 1) / 600_000) ** 0.9, rtol=1e-5)
  np.testing.assert_allclose(train.poly_schedule(0.01, 10, 0.9)(1), 0.009095325760829623, rtol=1e-6)


def test_sgd_puts_weight_decay_into_the_momentum_buffer():
  optim = ml_collections.ConfigDict(dict(base_lr=0.1, momentum=0.9, weight_decay=0.5, power=1.0))
  tx, _ = train.create_optimizer(optim, max_iter=4)
  p, g = jnp.array([2.0]), [jnp.array([1.0]), jnp.array([-3.0])]
  state = tx.init(p)
  buf, expect = None, 2.0
  for k, gk in enumerate(g):
    d = float(gk[0]) + 0.5 * expect  # torch: d = g + wd*p; buf = d, then 0.9*buf + d
    buf = d if buf is None else 0.9 * buf + d
    expect -= 0.1 * (1 - k / 4) * buf
    updates, state = tx.update(gk, state, p)
    p = optax.apply_updates(p, updates)
  np.testing.assert_allclose(p, [expect], rtol=1e-6)
