"""Raw label formats -> label ids (data_preparation.md §2, §3), as vectorized numpy.

Grey ids through a pairwise table, RGB colour codes, COCO panoptic PNG + JSON segments, IDD
polygon JSON and PASCAL Context `.mat` files. Every function takes the file it works on, for
its error messages; anything that is not a valid id of the raw taxonomy is a PrepareError.
"""

import functools
import json
import struct
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import scipy.io
from PIL import Image, ImageDraw

from mseg_jax import taxonomy
from mseg_jax.prepare.common import PrepareError, read_png

IGNORE = 255
COLORS_FILE = Path(__file__).parent / "data" / "label_colors.json"
_NO_COLOR = 255  # colour table entry for colours of no class (every RGB taxonomy has < 255)
_NOT_LISTED = 0xFFFF  # segment table entry for panoptic ids not in the image's JSON entry
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (C4 DHT, C8 JPG, CC DAC are not frames)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_size(path: Path) -> tuple[int, int]:
  """(height, width) of a PNG or JPEG from its header, without decoding it."""
  path = Path(path)
  try:
    with open(path, "rb") as f:
      head = f.read(24)
      if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return height, width
      if head[:2] == b"\xff\xd8":
        return _jpeg_size(f, path)
  except FileNotFoundError:
    raise PrepareError(f"{path}: image file not found") from None
  image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
  if image is None:
    raise PrepareError(f"{path}: unreadable or corrupt image")
  return image.shape[:2]


def _jpeg_size(f, path: Path) -> tuple[int, int]:
  f.seek(2)
  while True:
    byte = f.read(1)
    if byte != b"\xff":
      raise PrepareError(f"{path}: corrupt JPEG header")
    marker = f.read(1)
    while marker == b"\xff":  # fill bytes
      marker = f.read(1)
    if not marker:
      raise PrepareError(f"{path}: JPEG without a frame header")
    if 0xD0 <= marker[0] <= 0xD8 or marker[0] == 0x01:  # markers without a length
      continue
    (length,) = struct.unpack(">H", f.read(2))
    if marker[0] in _JPEG_SOF:
      height, width = struct.unpack(">xHH", f.read(5))
      return height, width
    f.seek(length - 2, 1)


def check_size(label_hw: tuple[int, int], image: Path, label: Path) -> None:
  """A PrepareError naming `label` when its size is not the image's."""
  image_hw = image_size(image)
  if tuple(label_hw) != tuple(image_hw):
    raise PrepareError(
      f"{label}: label size {label_hw[1]}x{label_hw[0]} differs from its image {image} "
      f"({image_hw[1]}x{image_hw[0]}, width x height)"
    )


def _bad_ids_message(values: np.ndarray, valid: str) -> str:
  ids, counts = np.unique(values, return_counts=True)
  shown = ", ".join(
    f"{i} ({c} px)" for i, c in zip(ids[:8].tolist(), counts[:8].tolist(), strict=True)
  )
  more = f" and {len(ids) - 8} more" if len(ids) > 8 else ""
  return f"{counts.sum()} pixels hold ids that are not {valid}: {shown}{more}"


def check_ids(label: np.ndarray, dataset: str, path: Path) -> None:
  """A PrepareError naming `path` unless every value is a class id of `dataset` (or 255 when
  255 is not a class: it is mseg-api's unlabeled key)."""
  k = len(taxonomy.class_names(dataset))
  if k > IGNORE:
    if int(label.max()) < k:
      return
    bad = label >= k
    valid = f"class ids 0..{k - 1} of {dataset}"
  else:
    if label.dtype == np.uint8 and int(np.add(label, 1, dtype=np.uint8).max()) <= k:
      return  # 255 + 1 wraps to 0: one add and one max clear a valid label
    if label.dtype != np.uint8 and int(label.max()) < k:
      return
    bad = (label >= k) & (label != IGNORE)
    valid = f"class ids 0..{k - 1} of {dataset} or 255"
  if bad.any():
    raise PrepareError(f"{path}: {_bad_ids_message(label[bad], valid)}")


def apply_lut(label: np.ndarray, lut: np.ndarray) -> np.ndarray:
  """`lut[label]` as uint8; `label` holds only valid ids (see check_ids)."""
  if label.dtype == np.uint8 and lut.shape == (256,):
    return cv2.LUT(label, lut)
  return np.take(lut, label)


def read_grey_label(path: Path) -> np.ndarray:
  """A single-channel uint8 or uint16 label PNG as stored."""
  label = read_png(path, what="label file")
  if label.ndim != 2 or label.dtype not in (np.uint8, np.uint16):
    raise PrepareError(
      f"{path}: expected a single-channel 8- or 16-bit label, got {label.dtype} {label.shape}"
    )
  return label


def read_color_png(path: Path) -> np.ndarray:
  """An RGB-coded label (RGB, palette or RGBA PNG) as uint8 (H, W, 3) BGR."""
  return read_png(path, cv2.IMREAD_COLOR, what="label file")


def _rgb_keys(bgr: np.ndarray) -> np.ndarray:
  """uint32 (H, W) key R + 256 G + 65536 B (= COCO's panoptic segment id) per pixel."""
  # as little-endian uint32, an RGBA pixel is R | G << 8 | B << 16 | A << 24
  rgba = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA)
  keys = rgba.view(np.uint32)[..., 0]
  np.bitwise_and(keys, 0xFFFFFF, out=keys)
  return keys


@functools.cache
def _colors_data() -> dict[str, list[list[int]]]:
  return json.loads(COLORS_FILE.read_text(encoding="utf-8"))["colors"]


def label_colors(dataset: str) -> np.ndarray:
  """uint8 (K, 3) RGB colour of each class of an RGB-coded taxonomy (row = class id)."""
  colors = _colors_data()
  if dataset not in colors:
    raise KeyError(f"no label colours for {dataset!r}; known: {', '.join(colors)}")
  return np.asarray(colors[dataset], np.uint8)


@functools.cache
def _color_table(dataset: str) -> np.ndarray:
  """uint8 (2**24,) packed RGB key -> class id, _NO_COLOR for colours of no class."""
  colors = label_colors(dataset).astype(np.uint32)
  keys = colors[:, 0] | colors[:, 1] << 8 | colors[:, 2] << 16
  if len(np.unique(keys)) != len(keys):
    raise PrepareError(f"{COLORS_FILE}: {dataset} has a colour used by two classes")
  table = np.full(1 << 24, _NO_COLOR, np.uint8)
  table[keys] = np.arange(len(keys), dtype=np.uint8)
  return table


def colors_to_ids(bgr: np.ndarray, dataset: str, path: Path) -> np.ndarray:
  """uint8 (H, W) class ids of an RGB-coded label: exact match on all three channels; a pixel
  of any other colour is a PrepareError naming `path` (mseg-api would make it class 0)."""
  keys = _rgb_keys(bgr)
  ids = np.take(_color_table(dataset), keys)
  unmatched = ids == _NO_COLOR
  if unmatched.any():
    rgb, counts = np.unique(keys[unmatched], return_counts=True)
    shown = ", ".join(
      f"({k & 255},{k >> 8 & 255},{k >> 16}) {c} px"
      for k, c in zip(rgb[:5].tolist(), counts[:5].tolist(), strict=True)
    )
    raise PrepareError(
      f"{path}: {counts.sum()} pixels have a colour of no {dataset} class (RGB): {shown}"
      + (f" and {len(rgb) - 5} more colours" if len(rgb) > 5 else "")
    )
  return ids


def panoptic_segments(annotation: dict, json_path: Path) -> np.ndarray:
  """int64 (n, 2) (segment id, category id) of one JSON `annotations` entry, checked."""
  try:
    segments = np.array(
      [(s["id"], s["category_id"]) for s in annotation["segments_info"]], np.int64
    ).reshape(-1, 2)
  except (KeyError, TypeError) as e:
    raise PrepareError(
      f"{json_path}: entry {annotation.get('file_name')!r} has a malformed segments_info ({e!r})"
    ) from None
  names = taxonomy.class_names("coco-panoptic-201")
  for seg_id, category in segments.tolist():
    if not 0 < category < len(names) or names[category] == "unlabeled":
      raise PrepareError(
        f"{json_path}: {annotation['file_name']} segment {seg_id} has category_id {category}, "
        "not a COCO panoptic category"
      )
    if not 0 < seg_id < 1 << 24:
      raise PrepareError(f"{json_path}: {annotation['file_name']} has segment id {seg_id}")
  if len(segments) >= _NOT_LISTED:
    raise PrepareError(f"{json_path}: {annotation['file_name']} has {len(segments)} segments")
  if len(np.unique(segments[:, 0])) != len(segments):
    raise PrepareError(f"{json_path}: {annotation['file_name']} lists a segment id twice")
  return segments


@functools.cache
def _segment_table() -> np.ndarray:
  """uint16 (2**24,) panoptic id -> row of the image's segments, _NOT_LISTED elsewhere; one
  table per process, its rows cleared again after each image."""
  return np.full(1 << 24, _NOT_LISTED, np.uint16)


def panoptic_to_semantic(
  bgr: np.ndarray, segments: np.ndarray, path: Path
) -> tuple[np.ndarray, int]:
  """uint8 (H, W) COCO category ids from a panoptic PNG and its (segment id, category) rows,
  and the number of pixels whose id is neither 0 (void) nor listed; both become 255.

  As mseg-api's dump: crowd segments get their category; a listed segment with no pixels is a
  PrepareError naming `path`.
  """
  ids, n = _rgb_keys(bgr), len(segments)
  table = _segment_table()
  table[segments[:, 0]] = np.arange(n)
  try:
    rows = np.take(table, ids)
  finally:
    table[segments[:, 0]] = _NOT_LISTED
  categories = np.full(1 << 16, IGNORE, np.uint8)
  categories[:n] = segments[:, 1]
  if n:  # float32 counts: a count > 0 stays > 0
    present = cv2.calcHist([rows], [0], None, [n], [0, n]).ravel() > 0
    if not present.all():
      missing = segments[~present, 0].tolist()
      raise PrepareError(f"{path}: segments {missing} of its JSON entry have no pixels")
  unlisted = int(np.count_nonzero(rows == _NOT_LISTED)) - int(np.count_nonzero(ids == 0))
  return np.take(categories, rows), unlisted


def rasterize_polygons(polygons: dict, dataset: str, path: Path) -> tuple[np.ndarray, Counter[str]]:
  """uint8 (imgHeight, imgWidth) label of a Cityscapes-style polygon JSON, as mseg-api's IDD
  dump draws it: background `unlabeled`, objects in file order (later ones on top), filled with
  Pillow and no outline; deleted objects and ones with < 3 vertices skipped; an unknown
  `<x>group` label drawn as `<x>`. Also returns the labels of objects skipped as unknown."""
  names = taxonomy.class_names(dataset)
  ids = {name: i for i, name in reversed(list(enumerate(names)))}  # first id of each name
  try:
    size = (int(polygons["imgWidth"]), int(polygons["imgHeight"]))
    objects = polygons["objects"]
    canvas = Image.new("L", size, ids["unlabeled"])
    draw = ImageDraw.Draw(canvas)
    unknown = Counter()
    for obj in objects:
      name, points = str(obj["label"]), [(p[0], p[1]) for p in obj["polygon"]]
      if obj.get("deleted") or len(points) < 3:
        continue
      if name not in ids and name.endswith("group"):
        name = name[: -len("group")]
      if name not in ids:
        unknown[str(obj["label"])] += 1
        continue
      draw.polygon(points, fill=ids[name])
  except (KeyError, TypeError, IndexError, ValueError) as e:
    raise PrepareError(f"{path}: malformed polygon JSON ({e!r})") from None
  return np.asarray(canvas, np.uint8), unknown


def read_polygons(path: Path) -> dict:
  path = Path(path)
  if not path.is_file():
    raise PrepareError(f"{path}: polygon file not found")
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise PrepareError(f"{path}: not a JSON file ({e})") from None


def read_mat_label(path: Path, dataset: str) -> np.ndarray:
  """uint16 (H, W) field `LabelMap` of a PASCAL Context `.mat` file, checked against `dataset`."""
  path = Path(path)
  if not path.is_file():
    raise PrepareError(f"{path}: .mat label file not found")
  try:
    label = scipy.io.loadmat(str(path))["LabelMap"]
  except KeyError:
    raise PrepareError(f"{path}: no LabelMap in the .mat file") from None
  except Exception as e:  # scipy raises several types for a corrupt file
    raise PrepareError(f"{path}: unreadable .mat file ({e})") from None
  if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
    raise PrepareError(f"{path}: LabelMap must be a 2-D integer array, got {label.dtype}")
  if label.size and int(label.min()) < 0:
    raise PrepareError(f"{path}: {_bad_ids_message(label[label < 0], 'non-negative')}")
  if label.size and int(label.max()) > np.iinfo(np.uint16).max:
    raise PrepareError(f"{path}: LabelMap values exceed uint16")
  label = label.astype(np.uint16)
  check_ids(label, dataset, path)
  return label
