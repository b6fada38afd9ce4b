"""Colour label maps, overlays on the image, and a legend of the classes present."""

from collections.abc import Sequence

import cv2
import numpy as np

from mseg_jax import taxonomy

_ROW = 22  # legend row height in pixels
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
  """uint8/uint16 labels (H, W) -> RGB (H, W, 3) with `palette` (n, 3); ids >= n are black."""
  table = np.zeros((max(256, len(palette), int(labels.max(initial=0)) + 1), 3), np.uint8)
  table[: len(palette)] = palette
  return table[labels]


def blend(
  image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
  """The colour label map alpha-blended over the RGB image; ignored pixels keep the image."""
  colors = colorize(labels, palette).astype(np.float32)
  out = image.astype(np.float32)
  mask = (labels < len(palette))[..., None]
  out = np.where(mask, (1 - alpha) * out + alpha * colors, out)
  return np.round(out).clip(0, 255).astype(np.uint8)


def classes_present(labels: np.ndarray, num_classes: int) -> list[int]:
  """Class ids in `labels`, largest area first."""
  counts = np.bincount(labels.ravel(), minlength=256)[:num_classes]
  ids = np.flatnonzero(counts)
  return ids[np.argsort(-counts[ids], kind="stable")].tolist()


def _panel_width(texts: Sequence[str]) -> int:
  return max([cv2.getTextSize(t, _FONT, 0.5, 1)[0][0] for t in texts] + [60]) + 40


def legend(
  class_ids: Sequence[int],
  class_names: Sequence[str],
  palette: np.ndarray,
  height: int,
  fixed_size: bool = False,
) -> np.ndarray:
  """A white RGB panel with a swatch and the name of each class: at least `height` rows tall
  and as wide as the entries, or (`fixed_size`, for video frames) exactly `height` tall, as wide
  as the longest class name, keeping the entries that fit."""
  if fixed_size:
    class_ids = list(class_ids)[: max((height - 8) // _ROW, 0)]
    width = _panel_width([f"{i} {n}" for i, n in enumerate(class_names)])
  texts = [f"{i} {class_names[i]}" for i in class_ids]
  if not fixed_size:
    width = _panel_width(texts)
    height = max(height, _ROW * len(texts) + 8)
  panel = np.full((height, width, 3), 255, np.uint8)
  for row, (i, text) in enumerate(zip(class_ids, texts, strict=True)):
    y = 4 + row * _ROW
    color = tuple(int(c) for c in palette[i])
    cv2.rectangle(panel, (6, y + 2), (24, y + _ROW - 4), color, thickness=-1)
    cv2.rectangle(panel, (6, y + 2), (24, y + _ROW - 4), (0, 0, 0), thickness=1)
    cv2.putText(panel, text, (32, y + _ROW - 7), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
  return panel


def overlay_with_legend(
  image: np.ndarray,
  labels: np.ndarray,
  class_names: Sequence[str],
  alpha: float = 0.5,
  palette: np.ndarray | None = None,
  fixed_size: bool = False,
) -> np.ndarray:
  """RGB overlay of `labels` on `image` with, to its right, a legend of the classes present
  (largest first). `fixed_size` keeps the output size independent of the content (video)."""
  if image.shape[:2] != labels.shape:
    raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
  if palette is None:
    palette = taxonomy.palette(len(class_names))
  blended = blend(image, labels, palette, alpha)
  panel = legend(
    classes_present(labels, len(class_names)), class_names, palette, image.shape[0], fixed_size
  )
  canvas = np.full((panel.shape[0], image.shape[1] + panel.shape[1], 3), 255, np.uint8)
  canvas[: image.shape[0], : image.shape[1]] = blended
  canvas[:, image.shape[1] :] = panel
  return canvas
