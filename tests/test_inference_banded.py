"""The banded network call and label path compute what the unbanded ones compute."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_variables, tiny_hrnet_config
from test_inference import _image, _model

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
