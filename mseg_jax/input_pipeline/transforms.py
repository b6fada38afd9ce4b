"""The official MSeg training augmentations (mseg-semantic `utils/transform.py`), grain style.

Order and parameters as in the official `train.py`: ResizeShort(short_size), RandScale
[0.5, 2.0], RandRotate [-10, 10] deg with p=0.5, Gaussian blur 5x5 with p=0.5, horizontal
flip with p=0.5, random Crop with centred padding. Elements are dicts {"image": uint8 (H, W, 3)
RGB, "label": uint8 (H, W)}; each random transform draws from the per-element
`np.random.Generator` grain gives it, so a pipeline is deterministic for a seed.

Two deliberate differences from the official code, to cut host work and transfer bytes ~4x:
- Images stay uint8. The official code converts to float32 before the cv2 ops; uint8 cv2 ops
  round to integers at each step (each of resize, rotation and blur stays within 1 grey level
  of the float32 op).
- Normalization is not a host transform: the host hands uint8 crops to the device, where the
  train step applies `mseg_jax.normalization.normalize` (ImageNet mean/std, 0..255 RGB). The
  border and pad colour is therefore the rounded mean `PAD_COLOUR` = (124, 116, 104) rather
  than (123.675, 116.28, 103.53): after normalization it is below 0.01 instead of exactly 0.
"""

import dataclasses

import cv2
import grain
import numpy as np

from mseg_jax.normalization import MEAN
from mseg_jax.taxonomy import IGNORE

PAD_COLOUR = tuple(int(v) for v in np.rint(MEAN))  # (124, 116, 104)

Example = dict[str, np.ndarray]


def resize_short(image: np.ndarray, label: np.ndarray | None, size: int):
  """Resizes so that the short side is `size`, the long side `int(long * size / short)`.

  Always resizes (up or down); h == w takes the "h is short" branch. Image bilinear, label
  nearest; `label` may be None.
  """
  h, w = image.shape[:2]
  if h <= w:
    new_h, new_w = size, int(w * (size / float(h)))
  else:
    new_h, new_w = int(h * (size / float(w))), size
  image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
  if label is not None:
    label = cv2.resize(label, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
  return image, label


def scale(image: np.ndarray, label: np.ndarray, factor: float):
  """cv2.resize by `factor` on both axes; cv2 rounds the size half to even (round(w * factor))."""
  image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
  label = cv2.resize(label, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
  return image, label


def rotate(image: np.ndarray, label: np.ndarray, angle: float):
  """Rotates by `angle` degrees (counter-clockwise) about (w/2, h/2) into the same size.

  Image bilinear with border PAD_COLOUR, label nearest with border 255.
  """
  h, w = label.shape
  matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1)
  image = cv2.warpAffine(
    image,
    matrix,
    (w, h),
    flags=cv2.INTER_LINEAR,
    borderMode=cv2.BORDER_CONSTANT,
    borderValue=PAD_COLOUR,
  )
  label = cv2.warpAffine(
    label,
    matrix,
    (w, h),
    flags=cv2.INTER_NEAREST,
    borderMode=cv2.BORDER_CONSTANT,
    borderValue=IGNORE,
  )
  return image, label


def blur(image: np.ndarray) -> np.ndarray:
  """cv2.GaussianBlur with a 5x5 kernel and sigma derived from it (1.1)."""
  return cv2.GaussianBlur(image, (5, 5), 0)


def hflip(image: np.ndarray, label: np.ndarray):
  """Mirrors left-right (cv2.flip: faster than copying a numpy [:, ::-1] view, BENCHMARKS.md)."""
  return cv2.flip(image, 1), cv2.flip(label, 1)


def pad_to(image: np.ndarray, label: np.ndarray, crop_h: int, crop_w: int):
  """Pads up to (crop_h, crop_w) where smaller: top = pad_h // 2, bottom the rest (same for
  left/right); image with PAD_COLOUR, label with 255."""
  h, w = label.shape
  pad_h, pad_w = max(crop_h - h, 0), max(crop_w - w, 0)
  if pad_h == 0 and pad_w == 0:
    return image, label
  top, left = pad_h // 2, pad_w // 2
  borders = (top, pad_h - top, left, pad_w - left)
  image = cv2.copyMakeBorder(image, *borders, cv2.BORDER_CONSTANT, value=PAD_COLOUR)
  label = cv2.copyMakeBorder(label, *borders, cv2.BORDER_CONSTANT, value=IGNORE)
  return image, label


@dataclasses.dataclass(frozen=True)
class ResizeShort(grain.transforms.Map):
  """Short side to `size` (see `resize_short`); the val/test transform and the first train one."""

  size: int

  def map(self, element: Example) -> Example:
    out = dict(element)
    out["image"], label = resize_short(element["image"], element.get("label"), self.size)
    if label is not None:
      out["label"] = label
    return out


@dataclasses.dataclass(frozen=True)
class RandScale(grain.transforms.RandomMap):
  """Scales by s = min + (max - min) * u, u ~ U[0, 1), aspect ratio 1."""

  min_scale: float = 0.5
  max_scale: float = 2.0

  def random_map(self, element: Example, rng: np.random.Generator) -> Example:
    factor = self.min_scale + (self.max_scale - self.min_scale) * rng.random()
    image, label = scale(element["image"], element["label"], factor)
    return {"image": image, "label": label}


@dataclasses.dataclass(frozen=True)
class RandRotate(grain.transforms.RandomMap):
  """With probability p rotates by an angle ~ U[min_angle, max_angle) degrees."""

  min_angle: float = -10.0
  max_angle: float = 10.0
  p: float = 0.5

  def random_map(self, element: Example, rng: np.random.Generator) -> Example:
    if rng.random() >= self.p:
      return element
    angle = self.min_angle + (self.max_angle - self.min_angle) * rng.random()
    image, label = rotate(element["image"], element["label"], angle)
    return {"image": image, "label": label}


@dataclasses.dataclass(frozen=True)
class RandGaussianBlur(grain.transforms.RandomMap):
  """With probability p blurs the image (5x5 Gaussian); the label is unchanged."""

  p: float = 0.5

  def random_map(self, element: Example, rng: np.random.Generator) -> Example:
    if rng.random() >= self.p:
      return element
    return {"image": blur(element["image"]), "label": element["label"]}


@dataclasses.dataclass(frozen=True)
class RandHorizontalFlip(grain.transforms.RandomMap):
  """With probability p mirrors image and label left-right."""

  p: float = 0.5

  def random_map(self, element: Example, rng: np.random.Generator) -> Example:
    if rng.random() >= self.p:
      return element
    image, label = hflip(element["image"], element["label"])
    return {"image": image, "label": label}


@dataclasses.dataclass(frozen=True)
class RandCrop(grain.transforms.RandomMap):
  """Pads where smaller (`pad_to`), then crops (crop_h, crop_w) at offsets uniform in
  [0, h - crop_h] x [0, w - crop_w] (inclusive)."""

  crop_h: int
  crop_w: int

  def random_map(self, element: Example, rng: np.random.Generator) -> Example:
    image, label = pad_to(element["image"], element["label"], self.crop_h, self.crop_w)
    h, w = label.shape
    top = int(rng.integers(0, h - self.crop_h + 1))
    left = int(rng.integers(0, w - self.crop_w + 1))
    window = np.s_[top : top + self.crop_h, left : left + self.crop_w]
    return {
      "image": np.ascontiguousarray(image[window]),
      "label": np.ascontiguousarray(label[window]),
    }


def train_transforms(
  short_size: int,
  crop_size: int | tuple[int, int],
  scale_range: tuple[float, float] = (0.5, 2.0),
  rotate_range: tuple[float, float] = (-10.0, 10.0),
) -> list:
  """The official training augmentations, in order (normalization runs on device)."""
  crop_h, crop_w = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
  return [
    ResizeShort(short_size),
    RandScale(*scale_range),
    RandRotate(*rotate_range, p=0.5),
    RandGaussianBlur(p=0.5),
    RandHorizontalFlip(p=0.5),
    RandCrop(crop_h, crop_w),
  ]


def eval_transforms(short_size: int) -> list:
  """Val/test mode: the short-side resize only (windows, flips and scales are inference's)."""
  return [ResizeShort(short_size)]
