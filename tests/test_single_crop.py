"""Batched single-crop inference follows the official batched_inference_task.py."""

import cv2
import jax.numpy as jnp
import numpy as np
import pytest
from test_inference import _image, _model

from mseg_jax import single_crop
from mseg_jax.normalization import MEAN, STD


def test_max_base_size_is_the_official_example():
  assert single_crop.max_base_size(1200, 1920, 473) == 295  # test_universal_demo_batched.py
  assert single_crop.max_base_size(1920, 1200, 473) == 295


@pytest.mark.parametrize(
  "h,w,crop,expected",
  [
    (1080, 1920, 713, (401, 712)),  # int(1920 * 401 / 1080) = int(712.9) truncates
    (1920, 1080, 713, (712, 401)),
    (1200, 1920, 473, (295, 472)),
    (100, 100, 65, (65, 65)),
  ],
)
def test_resized_size_fits_the_crop_with_truncating_resize_short(h, w, crop, expected):
  assert single_crop.resized_size(h, w, crop) == expected


def _align_corners_resize(probs: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """F.interpolate(bilinear, align_corners=True) of (h, w, K) in float64, written out."""
  h, w = probs.shape[:2]
  ys = np.arange(out_h) * ((h - 1) / (out_h - 1))
  xs = np.arange(out_w) * ((w - 1) / (out_w - 1))
  y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
  y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
  fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
  top = probs[y0][:, x0] * (1 - fx) + probs[y0][:, x1] * fx
  bottom = probs[y1][:, x0] * (1 - fx) + probs[y1][:, x1] * fx
  return top * (1 - fy) + bottom * fy


def official_labels(model, variables, frames, crop, projection=None):
  """BatchedInferenceTask.execute_on_batch after its loader, as numpy loops."""
  n, raw_h, raw_w = frames.shape[:3]
  size = int(np.floor(min(raw_h, raw_w) * crop / max(raw_h, raw_w)))
  labels = []
  for frame in frames:
    if raw_h <= raw_w:  # ResizeShort(size): truncating
      new_h, new_w = size, int(raw_w * (size / float(raw_h)))
    else:
      new_h, new_w = int(raw_h * (size / float(raw_w))), size
    img = cv2.resize(frame.astype(np.float32), (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    pad_h, pad_w = max(crop - new_h, 0), max(crop - new_w, 0)
    ph, pw = int(pad_h / 2), int(pad_w / 2)
    padded = np.zeros((crop, crop, 3), np.float32)  # zero pad after normalization
    padded[ph : crop - (pad_h - ph), pw : crop - (pad_w - pw)] = (img - MEAN) / STD
    batch = np.stack([padded, padded[:, ::-1]])
    logits = np.asarray(model.apply(variables, jnp.asarray(batch)), np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    if projection is not None:
      p = p @ projection
    p = (p[0] + p[1][:, ::-1]) / 2
    p = p[ph : ph + new_h, pw : pw + new_w]
    labels.append(_align_corners_resize(p, raw_h, raw_w).argmax(-1))
  return np.stack(labels)


@pytest.mark.parametrize("h,w", [(40, 72), (75, 44), (20, 30)])
def test_single_crop_labels_equal_official_batched_inference(h, w):
  model, variables = _model()
  frames = np.stack([_image(h, w, seed=s) for s in range(3)])
  labels = single_crop.SingleCropPredictor(model, variables, crop=33)(frames)
  expected = official_labels(model, variables, frames, 33)
  assert labels.shape == (3, h, w) and labels.dtype == jnp.uint8
  assert np.mean(np.asarray(labels) == expected) > 0.999


def test_single_crop_projection_and_unfed_classes():
  model, variables = _model(num_classes=6)
  projection = np.zeros((6, 3), np.float32)
  projection[[0, 1], 0] = projection[[2], 1] = projection[[3, 4], 2] = 1
  frames = np.stack([_image(30, 50, seed=s) for s in range(2)])
  labels = single_crop.SingleCropPredictor(model, variables, crop=33, projection=projection)(frames)
  expected = official_labels(model, variables, frames, 33, projection)
  assert np.mean(np.asarray(labels) == expected) > 0.999


def test_single_crop_rejects_a_single_image():
  model, variables = _model()
  with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
    single_crop.SingleCropPredictor(model, variables, crop=33)(_image(20, 30))


def test_demo_single_crop_mode_writes_the_batched_labels(tmp_path):
  from conftest import write_tiny_checkpoint

  from mseg_jax import demo, models

  checkpoint = write_tiny_checkpoint(tmp_path / "model")
  frames = [_image(40, 72, seed=s) for s in range(3)] + [_image(30, 30, seed=3)]
  (tmp_path / "in").mkdir()
  for i, frame in enumerate(frames):
    cv2.imwrite(str(tmp_path / "in" / f"{i}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  out = tmp_path / "out"
  demo.main(
    ["--checkpoint", str(checkpoint), "--input", str(tmp_path / "in"), "--output-dir", str(out)]
    + ["--crop", "33", "--single-crop", "2"]
  )
  model, variables = models.load_checkpoint(checkpoint)
  predictor = single_crop.SingleCropPredictor(model, variables, crop=33)
  chunks = [frames[0:2], frames[2:3], frames[3:4]]  # 2 per call; a new call at a new size
  expected = [labels for chunk in chunks for labels in np.asarray(predictor(np.stack(chunk)))]
  for i, labels in enumerate(expected):
    np.testing.assert_array_equal(cv2.imread(str(out / "gray" / f"{i}.png"), -1), labels)
