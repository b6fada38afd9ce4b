"""MTurk segment names and the binary masks they stand for (data_preparation.md §5.2, §5.3).

A relabeled segment is named after the thumbnail the crowd workers saw, e.g.
`seqfrankfurt_frankfurt_000000_013942_leftImg8bit_28.jpg`. `parse` turns a name into the
image it belongs to (the label folder's name and the RGB file stem, as a list line gives them)
and a segment id, whose meaning depends on the dataset: an instance id (ADE20K, COCO,
Mapillary), a polygon object (Cityscapes, IDD) or a whole class (BDD, SUN RGB-D).
"""

import json
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image, ImageDraw

from mseg_jax.prepare.common import PrepareError, read_png

KINDS = ("ade20k", "bdd", "cityscapes", "coco", "idd", "mapillary", "sunrgbd")
ADE20K_MIN_PIXELS = 10  # mseg-api's MIN_REQ_PX: smaller ADE20K instance masks are an error


class Segment(NamedTuple):
  """Where a segment lives: `parent` = name of the label's folder, `stem` = RGB file stem."""

  parent: str
  stem: str
  seg_id: int


def parse(kind: str, name: str, split: str) -> Segment:
  """The image and segment id a segment file name of dataset `kind` and record `split` names."""
  tokens = name.rsplit(".", 1)[0].split("_")
  if len(tokens) < 2 or not tokens[-1].isdigit():
    raise ValueError(f"segment name {name!r} does not end in _<segment id>.<ext>")
  seg_id = int(tokens[-1])
  if kind == "ade20k":
    return Segment("training" if split == "train" else "validation", "_".join(tokens[:-1]), seg_id)
  if kind == "coco":
    return Segment(f"{split}2017", "_".join(tokens[:-1]), seg_id)
  if kind == "bdd":
    return Segment(split, tokens[0], seg_id)
  if kind == "sunrgbd":
    return Segment("train" if split == "train" else "test", tokens[0], seg_id)
  if kind == "mapillary":
    return Segment("labels", "_".join(tokens[1:-1]), seg_id)
  if kind in ("cityscapes", "idd"):
    if len(tokens) < 3 or not tokens[0].startswith("seq"):
      raise ValueError(f"{kind} segment name {name!r} does not start with seq<folder>_")
    return Segment(tokens[0][3:], "_".join(tokens[1:-1]), seg_id)
  raise ValueError(f"unknown dataset kind {kind!r}; choose from {', '.join(KINDS)}")


def panoptic_ids(path: Path) -> np.ndarray:
  """int32 segment ids R + 256 G + 65536 B of a COCO panoptic PNG."""
  bgr = read_png(path, cv2.IMREAD_COLOR).astype(np.int32)
  return bgr[..., 2] + 256 * bgr[..., 1] + 65536 * bgr[..., 0]


def ade20k_instance_ids(path: Path, shape: tuple[int, int]) -> np.ndarray:
  """The B channel (instance ids) of a full-release `_seg.png`, nearest-resized to `shape`."""
  b = read_png(path, cv2.IMREAD_COLOR)[..., 0]  # OpenCV reads BGR
  if b.shape != shape:
    b = cv2.resize(b, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
  return b


def read_polygons(path: Path) -> dict:
  """A Cityscapes/IDD `_gtFine_polygons.json`."""
  try:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    data["imgHeight"], data["imgWidth"], data["objects"]  # noqa: B018
  except FileNotFoundError:
    raise PrepareError(f"{path}: polygon file not found") from None
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise PrepareError(f"{path}: not a polygon JSON ({e!r})") from None
  return data


def polygon_object(polygons: dict, seg_id: int) -> dict | None:
  """The object whose `id` (or, without ids, 0-based index) is `seg_id`; None if none is."""
  for index, obj in enumerate(polygons["objects"]):
    if obj.get("id", index) == seg_id:
      return obj
  return None


def polygon_mask(polygon, height: int, width: int) -> np.ndarray:
  """bool (height, width): the polygon filled with its outline, as mseg-api rasterises it.

  Pillow's fill + outline; a polygon whose vertices all share one y is drawn as a 1-px line.
  """
  xy = [tuple(v) for v in polygon]
  canvas = Image.new("L", (width, height), 0)
  draw = ImageDraw.Draw(canvas)
  if len({y for _, y in xy}) == 1:
    draw.line(xy, fill=1)
  else:
    draw.polygon(xy, fill=1, outline=1)
  return np.asarray(canvas, dtype=bool)
