"""A small synthetic MSeg composite in the on-disk layout of `catalog`, for tests and demos.

Street scenes (sky, building, road, sidewalk, vegetation, fence, pole, sign, car, person) for
cityscapes-19, mapillary-public65 and camvid-11, indoor scenes (wall, floor, ceiling, window,
door, painting, cabinet, bed, table, lamp, person) for ade20k-150. Scenes are drawn in universal
classes and written in each dataset's OWN ids through the inverse of its universal mapping
(the training LUT, or the test projection for camvid-11). Each universal class has one texture
(colour + pattern) in every dataset, so a model trained on the three training datasets can
segment camvid-11 zero-shot.

  python -m mseg_jax.input_pipeline.synthetic --output-dir /tmp/mseg_synth
"""

import argparse
import functools
from pathlib import Path

import cv2
import numpy as np
import tqdm

from mseg_jax import taxonomy
from mseg_jax.input_pipeline import catalog

SYNTHETIC_TRAIN_DATASETS = ("cityscapes-19", "ade20k-150", "mapillary-public65")
SYNTHETIC_TEST_DATASETS = ("camvid-11",)
_INDOOR_DATASETS = ("ade20k-150",)

# Universal class -> (RGB colour, pattern, pattern period in pixels at 128 px image height).
_TEXTURES = {
  "sky": ((110, 170, 235), "vgradient", 0),
  "building": ((150, 95, 75), "grid", 10),
  "road": ((70, 70, 78), "speckle", 0),
  "sidewalk_pavement": ((185, 175, 150), "checker", 8),
  "vegetation": ((45, 135, 40), "blotch", 6),
  "fence": ((140, 90, 165), "vstripes", 4),
  "pole": ((235, 235, 235), "flat", 0),
  "traffic_sign": ((250, 40, 220), "flat", 0),
  "car": ((205, 35, 40), "hstripes", 6),
  "person": ((245, 185, 50), "dstripes", 5),
  "wall": ((205, 195, 150), "flat", 0),
  "floor": ((135, 85, 40), "hstripes", 5),
  "ceiling": ((160, 160, 185), "vgradient", 0),
  "window": ((100, 225, 225), "grid", 14),
  "door": ((250, 150, 195), "vstripes", 9),
  "painting": ((25, 25, 120), "blotch", 4),
  "cabinet": ((160, 160, 55), "checker", 6),
  "bed": ((65, 85, 205), "checker", 10),
  "table": ((95, 50, 20), "vstripes", 3),
  "lamp": ((255, 250, 120), "flat", 0),
}


def _texture(name: str, ys: np.ndarray, xs: np.ndarray, height: int) -> np.ndarray:
  """float32 (n, 3) colours of class `name` at pixels (ys, xs)."""
  colour, pattern, period = _TEXTURES[name]
  colour = np.asarray(colour, np.float32)
  scale = height / 128.0
  p = max(period * scale, 1.0)
  if pattern == "vgradient":
    shade = 1.0 - 0.3 * ys / height
  elif pattern == "grid":
    shade = np.where(((ys // p) % 2 == 1) & ((xs // p) % 2 == 1), 0.6, 1.0)
  elif pattern == "checker":
    shade = np.where(((ys // p) + (xs // p)) % 2 == 0, 0.8, 1.1)
  elif pattern == "hstripes":
    shade = np.where((ys // p) % 2 == 0, 0.75, 1.1)
  elif pattern == "vstripes":
    shade = np.where((xs // p) % 2 == 0, 0.7, 1.1)
  elif pattern == "dstripes":
    shade = np.where(((xs + ys) // p) % 2 == 0, 0.75, 1.1)
  elif pattern == "blotch":
    shade = 0.85 + 0.25 * np.sin(xs / p * 2.1) * np.sin(ys / p * 1.7)
  elif pattern == "speckle":
    shade = np.where(((xs * 7 + ys * 13) % 11) == 0, 1.6, 1.0)
  else:
    shade = np.ones_like(ys, np.float32)
  return colour[None, :] * np.asarray(shade, np.float32)[:, None]


def paint(universal_label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """uint8 RGB image of a universal label map: class textures, brightness jitter, noise."""
  names = taxonomy.universal_names()
  height = universal_label.shape[0]
  image = np.zeros(universal_label.shape + (3,), np.float32)
  for u in np.unique(universal_label):
    ys, xs = np.nonzero(universal_label == u)
    image[ys, xs] = _texture(names[u], ys, xs, height)
  image *= rng.uniform(0.85, 1.15)
  image += rng.normal(0.0, 6.0, image.shape).astype(np.float32)
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


@functools.cache
def _uid(name: str) -> int:
  return taxonomy.universal_id(name)


def _street(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  lab = np.full((h, w), _uid("sky"), np.uint8)
  horizon = int(h * rng.uniform(0.38, 0.52))
  x = int(rng.integers(-w // 10, w // 20))
  while x < w:  # a row of buildings standing on the horizon
    bw = int(rng.integers(w // 8, w // 3))
    top = int(rng.integers(int(0.05 * h), max(int(0.05 * h) + 1, horizon - h // 8)))
    lab[top : horizon + 2, max(x, 0) : x + bw] = _uid("building")
    x += bw + int(rng.integers(0, w // 10))
  for _ in range(rng.integers(1, 4)):  # trees in front of the buildings
    cx, cy = int(rng.integers(0, w)), horizon - int(rng.integers(h // 20, h // 6))
    axes = (int(rng.integers(w // 20, w // 8)), int(rng.integers(h // 12, h // 5)))
    cv2.ellipse(lab, (cx, cy), axes, 0, 0, 360, _uid("vegetation"), -1)
  lab[horizon:] = _uid("sidewalk_pavement")
  vx = int(w * rng.uniform(0.35, 0.65))
  road = np.array(
    [
      [vx - w // 30, horizon],
      [vx + w // 30, horizon],
      [int(w * rng.uniform(0.9, 1.3)), h],
      [int(w * rng.uniform(-0.3, 0.1)), h],
    ]
  )
  cv2.fillPoly(lab, [road.astype(np.int32)], _uid("road"))
  if rng.random() < 0.6:
    fx = int(rng.integers(0, w // 2))
    lab[horizon - h // 14 : horizon + 1, fx : fx + int(rng.integers(w // 6, w // 2))] = _uid(
      "fence"
    )
  for _ in range(rng.integers(1, 3)):  # poles with signs
    px, base = int(rng.integers(0, w)), int(rng.integers(horizon + h // 20, h))
    top = int(rng.integers(h // 10, horizon))
    pw = max(2, w // 60)
    lab[top:base, px : px + pw] = _uid("pole")
    if rng.random() < 0.7:
      s = max(4, h // 14)
      lab[top : top + s, px - s // 2 : px + pw + s // 2] = _uid("traffic_sign")
  for _ in range(rng.integers(1, 4)):  # cars on the road, larger when nearer
    cy = int(rng.integers(horizon + h // 12, h))
    size = (cy - horizon) / (h - horizon)
    cw, ch = int(w * (0.1 + 0.3 * size)), int(h * (0.05 + 0.2 * size))
    cx = int(vx + rng.uniform(-0.5, 0.5) * w * size)
    cv2.rectangle(lab, (cx - cw // 2, cy - ch), (cx + cw // 2, cy), _uid("car"), -1)
  for _ in range(rng.integers(0, 3)):  # pedestrians on the sidewalk
    fy = int(rng.integers(horizon + h // 10, h))
    ph = int(h * (0.12 + 0.3 * (fy - horizon) / (h - horizon)))
    px = int(rng.choice([rng.integers(0, max(1, w // 4)), rng.integers(3 * w // 4, w)]))
    cv2.rectangle(lab, (px - ph // 8, fy - ph * 4 // 5), (px + ph // 8, fy), _uid("person"), -1)
    cv2.circle(lab, (px, fy - ph * 4 // 5 - ph // 10), max(1, ph // 9), _uid("person"), -1)
  return lab


def _indoor(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  lab = np.full((h, w), _uid("wall"), np.uint8)
  ceil, floor = int(h * rng.uniform(0.1, 0.25)), int(h * rng.uniform(0.6, 0.75))
  lab[:ceil] = _uid("ceiling")
  lab[floor:] = _uid("floor")
  wx = int(rng.integers(0, w // 2))
  cv2.rectangle(
    lab,
    (wx, ceil + h // 12),
    (wx + int(rng.integers(w // 6, w // 3)), floor - h // 6),
    _uid("window"),
    -1,
  )
  dx = int(rng.integers(w // 2, w - w // 8))
  lab[int(floor - h * rng.uniform(0.35, 0.5)) : floor, dx : dx + w // 8] = _uid("door")
  if rng.random() < 0.7:
    px, py = int(rng.integers(0, w - w // 6)), int(rng.integers(ceil + 2, floor - h // 5))
    lab[py : py + h // 10, px : px + w // 7] = _uid("painting")
  if rng.random() < 0.6:
    cx = int(rng.integers(0, w - w // 5))
    lab[floor - h // 4 : floor + h // 20, cx : cx + w // 5] = _uid("cabinet")
  if rng.random() < 0.7:
    bx, by = int(rng.integers(-w // 10, w // 2)), int(rng.integers(floor + h // 20, h - h // 10))
    lab[by - h // 8 : by + h // 6, max(bx, 0) : bx + int(w * rng.uniform(0.3, 0.5))] = _uid("bed")
  if rng.random() < 0.7:
    tx, ty = int(rng.integers(0, w - w // 4)), int(rng.integers(floor, h - h // 8))
    tw = int(rng.integers(w // 6, w // 4))
    lab[ty - h // 30 : ty, tx : tx + tw] = _uid("table")
    lab[ty : ty + h // 10, tx : tx + max(2, w // 60)] = _uid("table")
    lab[ty : ty + h // 10, tx + tw - max(2, w // 60) : tx + tw] = _uid("table")
    if rng.random() < 0.6:
      cv2.ellipse(
        lab,
        (tx + tw // 2, ty - h // 30 - h // 20),
        (w // 40 + 1, h // 20),
        0,
        0,
        360,
        _uid("lamp"),
        -1,
      )
  if rng.random() < 0.4:
    px, fy = int(rng.integers(w // 8, w - w // 8)), int(rng.integers(floor + h // 10, h))
    ph = int(h * rng.uniform(0.35, 0.55))
    cv2.rectangle(lab, (px - ph // 8, fy - ph * 4 // 5), (px + ph // 8, fy), _uid("person"), -1)
    cv2.circle(lab, (px, fy - ph * 4 // 5 - ph // 10), max(1, ph // 9), _uid("person"), -1)
  return lab


def render(
  indoor: bool, rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 RGB image, uint8 universal label) of one random street or indoor scene."""
  label = (_indoor if indoor else _street)(rng, height, width)
  return paint(label, rng), label


def _normalized(name: str) -> str:
  return name.lower().replace("_", " ")


def universal_to_dataset_lut(dataset: str) -> np.ndarray:
  """uint8 (256,): universal id -> a class of `dataset` that maps to it (255 where none does).

  Training taxonomies invert their universal LUT, test taxonomies their projection. Where
  several classes map to one universal class, the one named like it wins, else the lowest id.
  """
  names = taxonomy.class_names(dataset)
  if dataset in taxonomy.TEST_DATASETS:
    matrix = taxonomy.projection_matrix(dataset)
    owners = {u: [int(np.argmax(matrix[u]))] for u in range(len(matrix)) if matrix[u].any()}
  else:
    lut = taxonomy.to_universal_lut(dataset)
    owners = {}
    for c in range(len(names)):
      if lut[c] != taxonomy.IGNORE:
        owners.setdefault(int(lut[c]), []).append(c)
  universal = taxonomy.universal_names()
  inverse = np.full(256, taxonomy.IGNORE, np.uint8)
  for u, classes in owners.items():
    target = _normalized(universal[u])
    exact = [c for c in classes if _normalized(names[c]) == target]
    inside = [c for c in classes if _normalized(names[c]) in target]
    inverse[u] = (exact or inside or classes)[0]
  return inverse


def write_synthetic(
  out_dir: str | Path,
  seed: int = 0,
  num_train: int = 24,
  num_val: int = 8,
  num_test: int = 16,
  size: tuple[int, int] = (128, 160),
) -> Path:
  """Writes the composite under out_dir (use it as --data-root) and returns out_dir.

  Training datasets get train lists (num_train) and val lists (num_val), test datasets val lists
  (num_test), at `catalog.list_path`. Images are PNG (lossless), labels single-channel uint8
  PNG, both `size` = (height, width). Deterministic for a seed.
  """
  out_dir = Path(out_dir)
  plan = [(d, "train", num_train) for d in SYNTHETIC_TRAIN_DATASETS]
  plan += [(d, "val", num_val) for d in SYNTHETIC_TRAIN_DATASETS]
  plan += [(d, "val", num_test) for d in SYNTHETIC_TEST_DATASETS]
  all_names = SYNTHETIC_TRAIN_DATASETS + SYNTHETIC_TEST_DATASETS
  inverses = {d: universal_to_dataset_lut(d) for d in all_names}
  bar = tqdm.tqdm(total=sum(n for _, _, n in plan), desc="synthetic", unit="img")
  for dataset, split, count in plan:
    root = catalog.dataset_root(out_dir, dataset)
    lines = []
    for i in range(count):
      rng = np.random.default_rng([seed, all_names.index(dataset), int(split == "val"), i])
      image, universal = render(dataset in _INDOOR_DATASETS, rng, *size)
      rgb = f"images/{split}/{dataset}_{i:04d}.png"
      label = f"semseg_{dataset}/{split}/{dataset}_{i:04d}.png"
      for rel, array in (
        (rgb, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)),
        (label, inverses[dataset][universal]),
      ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), array, [cv2.IMWRITE_PNG_COMPRESSION, 1])
      lines.append(f"{rgb} {label}\n")
      bar.update()
    path = catalog.list_path(out_dir, dataset, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
  bar.close()
  return out_dir


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--output-dir", required=True, help="output folder (then use it as --data-root)"
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--num-train", type=int, default=24)
  parser.add_argument("--num-val", type=int, default=8)
  parser.add_argument("--num-test", type=int, default=16)
  parser.add_argument("--height", type=int, default=128)
  parser.add_argument("--width", type=int, default=160)
  args = parser.parse_args(argv)
  size = (args.height, args.width)
  out = write_synthetic(
    args.output_dir, args.seed, args.num_train, args.num_val, args.num_test, size
  )
  print(f"wrote {', '.join(SYNTHETIC_TRAIN_DATASETS + SYNTHETIC_TEST_DATASETS)} under {out}")


if __name__ == "__main__":
  main()
