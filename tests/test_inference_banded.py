"""The banded network call and label path compute what the unbanded ones compute."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_variables, tiny_hrnet_config
from test_inference import _image, _model, official_probs

from mseg_jax import inference, models


@pytest.fixture(scope="module")
def tiny_hrnet():
  config = tiny_hrnet_config(num_classes=7)
  return models.HRNet(config=config), random_variables(config)


@pytest.mark.parametrize("project", [False, True])
def test_banded_net_process_equals_net_process(tiny_hrnet, project):
  model, variables = tiny_hrnet
  x = jax.random.normal(jax.random.key(1), (2, 41, 49, 3))
  projection = None
  if project:
    projection = (
      jnp.zeros((7, 3)).at[jnp.array([0, 1, 2, 3, 4, 5]), jnp.array([0, 0, 1, 2, 2, 2])].set(1)
    )
  expected = jax.jit(functools.partial(inference.net_process, model.apply))(
    variables, x, projection
  )
  got = jax.jit(functools.partial(inference.net_process_banded, model.apply))(
    variables, x, projection
  )
  assert got.shape == expected.shape
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
  "h,w,base,crop,predictable",
  [
    (48, 80, 48, 33, None),  # several windows, no resize
    (80, 52, 40, 33, None),  # portrait, resized
    (41, 70, 30, 65, [True, False, True, True, False]),  # padded, resized up, unpredictable
  ],
)
def test_single_scale_labels_equal_the_argmax_of_the_probabilities(h, w, base, crop, predictable):
  model, variables = _model()
  if predictable is not None:
    predictable = np.array(predictable)
  predictor = inference.Predictor(
    model, variables, base_size=base, crop=crop, batch_size=2, predictable=predictable
  )
  image = _image(h, w, seed=5)
  _, expected = predictor.probs(image)
  labels = predictor(image)
  assert labels.dtype == expected.dtype and labels.shape == (h, w)
  np.testing.assert_array_equal(np.asarray(labels), np.asarray(expected))


@pytest.mark.parametrize(
  "h,w,base,batch,project",
  [
    (30, 45, 30, 1, False),  # padded both ways: only the image part of the crop is computed
    (60, 41, 60, 2, True),  # padded across, 2 windows down; projected
    (50, 75, 50, 2, False),  # 2 x 3 windows, a padded tail batch
  ],
)
def test_hrnet_predictor_equals_official_procedure(tiny_hrnet, h, w, base, batch, project):
  """The quarter-size logits, upsampled per band inside the window sum, give the official
  procedure's probabilities (its model upsamples the logits to the crop first)."""
  model, variables = tiny_hrnet
  projection = None
  if project:
    projection = np.zeros((7, 3), np.float32)
    projection[[0, 1], 0] = projection[[2, 5], 1] = projection[[3, 4], 2] = 1  # 6 unmapped
  image = _image(h, w, seed=7)
  predictor = inference.Predictor(
    model, variables, base_size=base, crop=41, batch_size=batch, projection=projection
  )
  probs, labels = predictor.probs(image)
  folded = models.fold_batch_norm(model, variables)
  expected = official_probs(*folded, image, base, (1.0,), 41, projection)
  np.testing.assert_allclose(np.asarray(probs), expected, atol=2e-5)
  np.testing.assert_array_equal(np.asarray(predictor(image)), np.asarray(labels))


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("with_counts", [False, True])
def test_banded_resize_argmax_equals_dividing_resizing_then_argmax(align_corners, with_counts):
  probs = jax.random.uniform(jax.random.key(0), (2, 23, 31, 7))
  counts = jax.random.randint(jax.random.key(1), (2, 23, 31), 1, 4).astype(jnp.float32)
  predictable = jnp.arange(7) != 3
  averaged = probs / counts[..., None] if with_counts else probs
  full = models.resize_bilinear(averaged, (150, 97), align_corners)
  expected = jnp.argmax(jnp.where(predictable, full, -1.0), -1)
  got = inference.resize_argmax(
    probs, (150, 97), align_corners, predictable, counts if with_counts else None, band=16
  )
  np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
