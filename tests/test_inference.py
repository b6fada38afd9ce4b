"""Inference follows the official test-time procedure (inference_task.py) step by step."""

import math
from typing import Any

import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import shared_path

from mseg_jax import inference
from mseg_jax.models.resize import resize_bilinear
from mseg_jax.normalization import MEAN, STD


class ConvNet(nn.Module):
  """A tiny stand-in segmentation net: 5x5 SAME conv, so crop borders change the output."""

  num_classes: int = 5
  dtype: Any = jnp.float32
  kernel: int = 5

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Conv(self.num_classes, (self.kernel, self.kernel), padding="SAME", dtype=self.dtype)(
      x
    ).astype(jnp.float32)


def _model(kernel=5, num_classes=5, seed=0):
  model = ConvNet(num_classes=num_classes, kernel=kernel)
  variables = model.init(jax.random.key(seed), jnp.zeros((1, 9, 9, 3)))
  variables = jax.tree.map(lambda v: v * 3.0, variables)  # sharper probabilities
  return model, variables


def _image(h, w, seed=0):
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3)).astype(np.uint8)
  return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def official_probs(model, variables, image, base_size, scales, crop, projection=None):
  """The official InferenceTask.execute_on_img, written as its numpy/cv2 loops."""
  raw_h, raw_w = image.shape[:2]
  image = image.astype(np.float32)
  total = None
  for scale in scales:
    short = round(scale * base_size)
    if raw_h > raw_w:
      new_h, new_w = round(short / raw_w * raw_h), short
    else:
      new_h, new_w = short, round(short / raw_h * raw_w)
    img = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    pad_h, pad_w = max(crop - new_h, 0), max(crop - new_w, 0)
    ph, pw = int(pad_h / 2), int(pad_w / 2)
    img = cv2.copyMakeBorder(
      img, ph, pad_h - ph, pw, pad_w - pw, cv2.BORDER_CONSTANT, value=MEAN.tolist()
    )
    h, w = img.shape[:2]
    stride = int(np.ceil(crop * (2 / 3)))
    grid_h = int(np.ceil(float(h - crop) / stride) + 1)
    grid_w = int(np.ceil(float(w - crop) / stride) + 1)
    pred, count = None, np.zeros((h, w), np.float32)
    for ih in range(grid_h):
      for iw in range(grid_w):
        s_h = ih * stride
        e_h = min(s_h + crop, h)
        s_h = e_h - crop
        s_w = iw * stride
        e_w = min(s_w + crop, w)
        s_w = e_w - crop
        x = (img[s_h:e_h, s_w:e_w] - MEAN) / STD
        batch = np.stack([x, x[:, ::-1]])
        logits = np.asarray(model.apply(variables, jnp.asarray(batch)), np.float64)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        if projection is not None:
          p = p @ projection
        p = ((p[0] + p[1][:, ::-1]) / 2).astype(np.float32)
        if pred is None:
          pred = np.zeros((h, w, p.shape[-1]), np.float32)
        pred[s_h:e_h, s_w:e_w] += p
        count[s_h:e_h, s_w:e_w] += 1
    pred /= count[..., None]
    pred = pred[ph : ph + new_h, pw : pw + new_w]
    pred = cv2.resize(pred, (raw_w, raw_h), interpolation=cv2.INTER_LINEAR)
    total = pred if total is None else total + pred
  return total / len(scales)


@pytest.mark.parametrize(
  "h,w,base,scale,expected",
  [
    (1080, 1920, 360, 1.0, (360, 640)),
    (1920, 1080, 360, 1.0, (640, 360)),  # portrait: width is the short side
    (100, 100, 473, 0.5, (236, 236)),  # 236.5 rounds half to even
    (480, 729, 480, 1.0, (480, 729)),
    (400, 583, 500, 1.0, (500, 729)),  # 728.75 -> 729
    (720, 960, 360, 1.75, (630, 840)),
  ],
)
def test_scaled_size_uses_python_round(h, w, base, scale, expected):
  assert inference.scaled_size(h, w, base, scale) == expected


@pytest.mark.parametrize(
  "size,crop,expected",
  [
    (713, 713, (0,)),
    (1080, 713, (0, 367)),  # stride 476, the last window is moved back to the border
    (1920, 713, (0, 476, 952, 1207)),
    (1189, 713, (0, 476)),  # exactly one stride more than the crop
    (1190, 713, (0, 476, 477)),
    (640, 473, (0, 167)),  # stride ceil(473 * 2/3) = 316
    (100, 65, (0, 35)),  # stride 44
  ],
)
def test_window_starts_by_hand(size, crop, expected):
  assert inference.window_starts(size, crop) == expected


@pytest.mark.parametrize(
  "h,w,crop",
  [
    (360, 640, 713),
    (713, 1268, 713),
    (900, 1600, 593),
    (1080, 1920, 473),
    (65, 200, 65),
    (31, 47, 65),
  ],
)
def test_window_layout_follows_official_loops(h, w, crop):
  layout = inference.window_layout(h, w, crop)
  pad_h, pad_w = max(crop - h, 0), max(crop - w, 0)
  assert (layout.pad_top, layout.pad_left) == (int(pad_h / 2), int(pad_w / 2))
  ph, pw = h + pad_h, w + pad_w
  stride = int(np.ceil(crop * (2 / 3)))
  expected = []
  for ih in range(int(np.ceil(float(ph - crop) / stride) + 1)):
    for iw in range(int(np.ceil(float(pw - crop) / stride) + 1)):
      expected.append((min(ih * stride + crop, ph) - crop, min(iw * stride + crop, pw) - crop))
  assert list(layout.starts) == expected
  counts = inference.window_counts(layout)
  assert counts.min() >= 1  # every pixel of the padded canvas is covered


def test_window_starts_rejects_too_small_canvas():
  with pytest.raises(ValueError, match="smaller than the crop"):
    inference.window_starts(64, 65)


@pytest.mark.parametrize(
  "in_hw,out_hw",
  [((37, 53), (17, 23)), ((20, 30), (61, 47)), ((50, 50), (49, 51)), ((90, 160), (135, 240))],
)
def test_probability_resize_matches_cv2_inter_linear(in_hw, out_hw):
  rng = np.random.default_rng(0)
  probs = rng.random(in_hw + (19,)).astype(np.float32)
  expected = cv2.resize(probs, out_hw[::-1], interpolation=cv2.INTER_LINEAR)
  got = resize_bilinear(jnp.asarray(probs)[None], out_hw, align_corners=False)[0]
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)  # cv2: fp32 coords


def test_pointwise_model_padding_is_removed_exactly():
  """A 1x1 model: any shift of the pad or window placement would show in the output."""
  model, variables = _model(kernel=1)
  image = _image(41, 70, seed=1)  # smaller than the crop: padded
  predictor = inference.Predictor(model, variables, base_size=41, crop=65, batch_size=3)
  probs, labels = predictor.probs(image)
  x = (image.astype(np.float32) - MEAN) / STD
  expected = jax.nn.softmax(model.apply(variables, jnp.asarray(x)[None])[0], axis=-1)
  np.testing.assert_allclose(np.asarray(probs), np.asarray(expected), atol=1e-6)
  np.testing.assert_array_equal(np.asarray(labels), np.argmax(np.asarray(expected), -1))


@pytest.mark.parametrize(
  "h,w,base,scales,crop,batch",
  [
    (48, 80, 48, (1.0,), 33, 2),  # several windows, a padded tail batch
    (80, 52, 40, (1.0,), 33, 8),  # portrait; all windows in one batch
    (45, 60, 40, inference.MULTI_SCALE, 33, 3),  # shrink and grow; pad at small scales
  ],
)
def test_predictor_equals_official_procedure(h, w, base, scales, crop, batch):
  model, variables = _model()
  image = _image(h, w, seed=2)
  predictor = inference.Predictor(
    model, variables, base_size=base, scales=scales, crop=crop, batch_size=batch
  )
  probs, labels = predictor.probs(image)
  expected = official_probs(model, variables, image, base, scales, crop)
  assert probs.shape == (h, w, 5) and labels.dtype == jnp.uint8
  np.testing.assert_allclose(np.asarray(probs), expected, atol=2e-5)
  agree = np.mean(np.asarray(labels) == np.argmax(expected, -1))
  assert agree > 0.999


def test_projection_sums_probabilities_per_crop_before_averaging():
  model, variables = _model(num_classes=6)
  projection = np.zeros((6, 3), np.float32)
  projection[[0, 1], 0] = projection[[2], 1] = projection[[3, 4], 2] = 1  # class 5 unmapped
  image = _image(50, 70, seed=3)
  predictor = inference.Predictor(model, variables, base_size=50, crop=33, projection=projection)
  probs, _ = predictor.probs(image)
  expected = official_probs(model, variables, image, 50, (1.0,), 33, projection)
  np.testing.assert_allclose(np.asarray(probs), expected, atol=2e-5)


def test_bf16_predictions_mostly_agree_with_fp32():
  model, variables = _model()
  image = _image(40, 56, seed=4)
  fp32 = inference.Predictor(model, variables, base_size=40, crop=33)(image)
  bf16 = inference.Predictor(model, variables, base_size=40, crop=33, dtype=jnp.bfloat16)(image)
  assert np.mean(np.asarray(fp32) == np.asarray(bf16)) > 0.95


def test_scales_from_name():
  assert inference.scales_from_name("ss") == (1.0,)
  assert inference.scales_from_name("ms") == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
  with pytest.raises(ValueError, match="'ss' or 'ms'"):
    inference.scales_from_name("xs")


def test_stride_is_ceil_two_thirds():
  for crop in (473, 593, 713):
    starts = inference.window_starts(10 * crop, crop)
    assert starts[1] == math.ceil(crop * 2 / 3)


def test_net_process_equals_golden_flip_averaged_probabilities(golden_small):
  model, variables = golden_small
  image = np.load(shared_path("golden", "input_65x65_rgb_uint8.npy"))
  expected = np.load(shared_path("golden", "hrnet_small_netprocess_probs_65x65.npy"))
  x = (image.astype(np.float32) - MEAN) / STD
  with jax.default_matmul_precision("highest"):  # no TF32 on GPU
    probs = jax.jit(inference.model_net_process(model))(variables, jnp.asarray(x)[None], None)
    # The whole procedure on a 65x65 image with a 65 crop is that single crop.
    predictor = inference.Predictor(model, variables, base_size=65, crop=65)
    full, labels = predictor.probs(image)
  got = np.asarray(probs[0]).transpose(2, 0, 1)
  np.testing.assert_allclose(got, expected, atol=5e-5, rtol=0)  # measured 1.3e-5
  np.testing.assert_allclose(np.asarray(full).transpose(2, 0, 1), expected, atol=5e-5, rtol=0)
  assert np.mean(np.asarray(labels) == expected.argmax(0)) > 0.999


def test_labels_past_255_are_uint16_and_unpredictable_classes_never_win():
  """300 classes with class 280 far ahead: the label map holds 280 as uint16 (no wrap), or never
  280 when it is not predictable. Projected, every other class's probability underflows to 0:
  the argmax still picks a test class that some output feeds, never an unfed one."""
  model, variables = _model(kernel=1, num_classes=300)
  conv = variables["params"]["Conv_0"]
  variables = {"params": {"Conv_0": {**conv, "bias": conv["bias"].at[280].add(200.0)}}}
  image = _image(20, 30, seed=4)

  def predict(**kwargs):
    predictor = inference.Predictor(model, variables, base_size=20, crop=33, **kwargs)
    return np.asarray(predictor(image))

  labels = predict()
  assert labels.dtype == np.uint16 and (labels == 280).all()
  labels = predict(predictable=np.arange(300) != 280)
  assert labels.dtype == np.uint16 and not (labels == 280).any()
  projection = np.zeros((300, 3), np.float32)
  projection[:280, 2] = 1  # test classes 0 and 1 have no source; class 2 gets 0 (underflow)
  labels = predict(projection=projection)
  assert labels.dtype == np.uint8 and (labels == 2).all()


@pytest.mark.parametrize("num_classes", [5, 194, 300])
def test_predicted_labels_equal_argmax_with_ties_to_the_first_class(num_classes):
  """Random probabilities with many exact ties, some zero rows and values near 1e-30: the label
  is jnp.argmax of the probabilities, with unpredictable classes scoring -1."""
  rng = np.random.default_rng(num_classes)
  probs = rng.integers(0, 4, (6, 50, num_classes)).astype(np.float32) / 3  # ties everywhere
  probs[0] = rng.random((50, num_classes), np.float32)
  probs[1] = 0
  probs[2] = rng.random((50, num_classes), np.float32) * 1e-30
  probs[3, :, 1] = np.nextafter(probs[3, :, 0], 0)  # one ulp below class 0
  predictable = rng.random(num_classes) < 0.6
  for keep in (None, predictable):
    scores = probs if keep is None else np.where(keep, probs, -1.0)
    got = np.asarray(jax.jit(inference.predicted_labels)(jnp.asarray(probs), keep))
    assert got.dtype == (np.uint8 if num_classes <= 256 else np.uint16)
    np.testing.assert_array_equal(got, scores.argmax(-1))
