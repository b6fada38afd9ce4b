"""Spec: the official MSeg training augmentations, each against a hand-computed case."""

import cv2
import grain
import numpy as np
import pytest

from mseg_jax.input_pipeline import transforms as T
from mseg_jax.normalization import MEAN, STD


def _pair(h, w):
  image = np.arange(h * w * 3, dtype=np.uint32).reshape(h, w, 3).astype(np.uint8)
  label = (np.arange(h * w).reshape(h, w) % 7).astype(np.uint8)
  return image, label


def test_pad_colour_is_the_rounded_imagenet_mean():
  assert T.PAD_COLOUR == (124, 116, 104)
  assert np.abs(np.asarray(T.PAD_COLOUR) - MEAN).max() <= 0.5
  assert np.abs((np.asarray(T.PAD_COLOUR) - MEAN) / STD).max() < 0.01  # ~0 once normalized


@pytest.mark.parametrize(
  "hw, size, expected",
  [
    ((4, 10), 3, (3, 7)),  # landscape: h short, w = int(10 * 3/4) = int(7.5) = 7 (truncation)
    ((10, 4), 3, (7, 3)),  # portrait: w short, h = int(10 * 3/4) = 7
    ((5, 5), 2, (2, 2)),  # square takes the "h is short" branch
    ((1080, 1920), 1080, (1080, 1920)),  # always resizes, here to the same size
    ((360, 480), 1080, (1080, 1440)),  # up
    ((375, 500), 473, (473, 630)),  # int(500 * 473/375) = int(630.67) = 630, not 631
  ],
)
def test_resize_short_sizes(hw, size, expected):
  image, label = _pair(*hw)
  out_image, out_label = T.resize_short(image, label, size)
  assert out_image.shape == expected + (3,)
  assert out_label.shape == expected
  assert set(np.unique(out_label)) <= set(np.unique(label))  # nearest: no new ids


def test_resize_short_without_label_and_as_grain_map():
  image, _ = _pair(6, 8)
  assert T.resize_short(image, None, 3)[1] is None
  out = T.ResizeShort(3).map({"image": image})
  assert out["image"].shape == (3, 4, 3) and "label" not in out
  assert T.eval_transforms(3) == [T.ResizeShort(3)]


@pytest.mark.parametrize(
  "factor, expected_w",
  [
    (0.25, 2),  # 10 * 0.25 = 2.5 -> 2 (cv2 rounds half to even)
    (0.35, 4),  # 3.5 -> 4
    (0.45, 4),  # 4.5 -> 4
    (1.26, 13),  # 12.6 -> 13
    (2.0, 20),
  ],
)
def test_scale_rounds_the_size_like_cv2(factor, expected_w):
  image, label = _pair(10, 10)
  out_image, out_label = T.scale(image, label, factor)
  assert out_image.shape == (expected_w, expected_w, 3)
  assert out_label.shape == (expected_w, expected_w)


def test_rotate_by_90_degrees_is_counterclockwise_about_w2_h2_with_label_border_255():
  label = np.arange(16, dtype=np.uint8).reshape(4, 4)
  image = np.zeros((4, 4, 3), np.uint8)
  _, out = T.rotate(image, label, 90.0)
  # Centre (2, 2) is not the pixel-grid centre (1.5, 1.5): np.rot90 shifted down one row.
  expected = np.array([[255, 255, 255, 255], [3, 7, 11, 15], [2, 6, 10, 14], [1, 5, 9, 13]])
  np.testing.assert_array_equal(out, expected)


def test_rotate_fills_image_corners_with_mean_colour_and_label_corners_with_255():
  image = np.full((20, 30, 3), 200, np.uint8)
  label = np.zeros((20, 30), np.uint8)
  out_image, out_label = T.rotate(image, label, 10.0)
  assert tuple(out_image[0, 0]) == T.PAD_COLOUR and tuple(out_image[-1, -1]) == T.PAD_COLOUR
  assert out_label[0, 0] == 255 and out_label[-1, -1] == 255
  assert out_label[10, 15] == 0 and tuple(out_image[10, 15]) == (200, 200, 200)


def test_blur_is_the_5x5_binomial_kernel_cv2_uses_for_sigma_0():
  image = np.zeros((9, 9, 3), np.uint8)
  image[4, 4] = 255
  k = np.array([1, 4, 6, 4, 1]) / 16
  expected = np.zeros((9, 9))
  expected[2:7, 2:7] = 255 * np.outer(k, k)
  for c in range(3):
    np.testing.assert_allclose(T.blur(image)[..., c], expected, atol=1)


def test_hflip_of_a_known_array():
  image = np.array([[[1] * 3, [2] * 3, [3] * 3], [[4] * 3, [5] * 3, [6] * 3]], np.uint8)
  label = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
  out_image, out_label = T.hflip(image, label)
  np.testing.assert_array_equal(out_label, [[3, 2, 1], [6, 5, 4]])
  np.testing.assert_array_equal(out_image[..., 0], [[3, 2, 1], [6, 5, 4]])


def test_pad_splits_top_bottom_and_left_right_as_the_official_crop():
  image = np.full((3, 4, 3), 7, np.uint8)
  label = np.full((3, 4), 1, np.uint8)
  out_image, out_label = T.pad_to(image, label, 6, 7)  # pad_h = 3: 1 top, 2 bottom; same w
  assert out_label.shape == (6, 7) and out_image.shape == (6, 7, 3)
  expected = np.full((6, 7), 255)
  expected[1:4, 1:5] = 1
  np.testing.assert_array_equal(out_label, expected)
  assert (out_image[expected == 255] == T.PAD_COLOUR).all()
  assert (out_image[1:4, 1:5] == 7).all()
  same_image, same_label = T.pad_to(image, label, 2, 2)  # never crops
  assert same_image is image and same_label is label


def test_rand_crop_pads_then_draws_offsets_in_the_inclusive_range():
  image, _ = _pair(5, 6)
  label = np.arange(30, dtype=np.uint8).reshape(5, 6)  # unique ids locate the crop
  offsets = set()
  for seed in range(60):
    out = T.RandCrop(4, 4).random_map({"image": image, "label": label}, np.random.default_rng(seed))
    top, left = divmod(int(out["label"][0, 0]), 6)
    np.testing.assert_array_equal(out["label"], label[top : top + 4, left : left + 4])
    np.testing.assert_array_equal(out["image"], image[top : top + 4, left : left + 4])
    offsets.add((top, left))
  assert offsets == {(t, w) for t in range(2) for w in range(3)}  # 0..h-crop, 0..w-crop
  small = T.RandCrop(8, 8).random_map({"image": image, "label": label}, np.random.default_rng(0))
  expected = np.full((8, 8), 255)
  expected[1:6, 1:7] = label  # pad_h = 3: 1 top, 2 bottom; pad_w = 2: 1 left, 1 right
  np.testing.assert_array_equal(small["label"], expected)
  assert (small["image"][expected == 255] == T.PAD_COLOUR).all()


@pytest.mark.parametrize(
  "transform", [T.RandRotate(p=0.5), T.RandGaussianBlur(p=0.5), T.RandHorizontalFlip(p=0.5)]
)
def test_random_transforms_apply_with_probability_one_half(transform):
  image, label = _pair(12, 16)
  example = {"image": image, "label": label}
  changed = 0
  for seed in range(200):
    out = transform.random_map(example, np.random.default_rng(seed))
    changed += not np.array_equal(out["image"], image)
    np.testing.assert_array_equal(  # deterministic for a seed
      out["image"], transform.random_map(example, np.random.default_rng(seed))["image"]
    )
  assert 70 < changed < 130


def test_blur_leaves_the_label_and_flip_mirrors_both():
  image, label = _pair(12, 16)
  for seed in range(10):
    rng = np.random.default_rng(seed)
    assert (
      T.RandGaussianBlur(p=1.0).random_map({"image": image, "label": label}, rng)["label"] is label
    )
    out = T.RandHorizontalFlip(p=1.0).random_map({"image": image, "label": label}, rng)
    np.testing.assert_array_equal(out["label"], label[:, ::-1])
    np.testing.assert_array_equal(out["image"], image[:, ::-1])


def test_rand_scale_factor_range():
  image, label = _pair(100, 100)
  sizes = [
    T.RandScale(0.5, 2.0)
    .random_map({"image": image, "label": label}, np.random.default_rng(s))["label"]
    .shape[0]
    for s in range(100)
  ]
  assert 50 <= min(sizes) < 70 and 180 < max(sizes) <= 200


def test_rand_rotate_angle_range():
  label = np.zeros((201, 201), np.uint8)
  label[100, :] = 1  # a horizontal line through the centre
  angles = []
  for seed in range(30):
    out = T.RandRotate(-10, 10, p=1.0).random_map(
      {"image": np.zeros((201, 201, 3), np.uint8), "label": label}, np.random.default_rng(seed)
    )["label"]
    ys, xs = np.nonzero(out == 1)
    angles.append(np.degrees(np.arctan(-np.polyfit(xs, ys, 1)[0])))  # y points down
  assert max(np.abs(angles)) <= 10.2
  assert min(angles) < -5 and max(angles) > 5


def test_train_transforms_are_the_official_order_and_parameters():
  assert T.train_transforms(1080, 713) == [
    T.ResizeShort(1080),
    T.RandScale(0.5, 2.0),
    T.RandRotate(-10.0, 10.0, p=0.5),
    T.RandGaussianBlur(p=0.5),
    T.RandHorizontalFlip(p=0.5),
    T.RandCrop(713, 713),
  ]


def test_train_pipeline_is_deterministic_for_a_seed_and_keeps_uint8():
  image, label = _pair(30, 40)

  def run(seed):
    ds = grain.MapDataset.source([{"image": image, "label": label}] * 4).seed(seed)
    ds = grain.experimental.apply_transformations(ds, T.train_transforms(24, 20))
    return list(ds)

  first, again, other = run(0), run(0), run(1)
  for a, b in zip(first, again, strict=True):
    assert a["image"].dtype == np.uint8 and a["label"].dtype == np.uint8
    assert a["image"].shape == (20, 20, 3) and a["label"].shape == (20, 20)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(first, other, strict=True))
  assert not np.array_equal(first[0]["image"], first[1]["image"])  # per-element rngs


def test_uint8_ops_stay_within_one_grey_level_of_the_official_float32_ops():
  rng = np.random.default_rng(0)
  image = cv2.GaussianBlur(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), (3, 3), 0)
  official = image.astype(np.float32)  # the official code runs cv2 on float32 0..255
  label = np.zeros((60, 80), np.uint8)

  def close(ours, theirs):
    assert ours.dtype == np.uint8 and ours.shape == theirs.shape
    assert np.abs(ours.astype(np.float32) - theirs).max() < 1.0

  close(T.resize_short(image, label, 47)[0], T.resize_short(official, label, 47)[0])
  close(T.scale(image, label, 1.37)[0], T.scale(official, label, 1.37)[0])
  close(T.scale(image, label, 0.61)[0], T.scale(official, label, 0.61)[0])
  close(T.blur(image), T.blur(official))
  matrix = cv2.getRotationMatrix2D((40, 30), 7.3, 1)
  theirs = cv2.warpAffine(
    official,
    matrix,
    (80, 60),
    flags=cv2.INTER_LINEAR,
    borderMode=cv2.BORDER_CONSTANT,
    borderValue=MEAN.tolist(),
  )
  close(T.rotate(image, label, 7.3)[0], theirs)  # the border: 124 vs 123.675 etc.
