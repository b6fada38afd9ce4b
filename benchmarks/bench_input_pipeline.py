"""Images/s of the full training augmentation pipeline: 1920x1080 JPEGs -> 713x713 crops.

Writes a synthetic cityscapes-19 dataset of 1920x1080 street scenes (JPEG images, PNG labels)
to a temporary folder, then times `batching.train_dataset` (decode, label check, ResizeShort
1080, RandScale, RandRotate, blur, flip, crop) with 0 workers (in-process, 1 thread, 1 cv2
thread) and with 1 and 2 worker processes (1 thread each).

  python benchmarks/bench_input_pipeline.py [--images 16] [--batches 10] [--workers 0,1,2]
    [--step-rate 150]   # images/s an accelerator step consumes: prints the cores it needs
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from absl import flags

from mseg_jax.input_pipeline import batching, catalog, sources, synthetic
from mseg_jax.input_pipeline import transforms as T

DATASET = "cityscapes-19"


def write_dataset(root: Path, count: int) -> None:
  inverse = synthetic.universal_to_dataset_lut(DATASET)
  data = catalog.dataset_root(root, DATASET)
  (data / "img").mkdir(parents=True)
  (data / "lab").mkdir()
  lines = []
  for i in range(count):
    image, universal = synthetic.render(False, np.random.default_rng(i), 1080, 1920)
    cv2.imwrite(
      str(data / f"img/{i}.jpg"),
      cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
      [cv2.IMWRITE_JPEG_QUALITY, 90],
    )
    cv2.imwrite(str(data / f"lab/{i}.png"), inverse[universal])
    lines.append(f"img/{i}.jpg lab/{i}.png\n")
  catalog.list_path(root, DATASET, "train").parent.mkdir(parents=True)
  catalog.list_path(root, DATASET, "train").write_text("".join(lines))


def _ms(fn, repeats: int = 5) -> float:
  fn()
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return 1000 * (time.perf_counter() - start) / repeats


def stage_times(root: Path) -> None:
  """Milliseconds per stage for one 1920x1080 sample, one thread; scale 1.25 = E[s]."""
  data = catalog.dataset_root(root, DATASET)
  image, label = sources.load_image(data / "img/0.jpg"), sources.load_label(data / "lab/0.png")
  big_image, big_label = T.scale(*T.resize_short(image, label, 1080), 1.25)
  stages = {
    "decode JPEG": lambda: sources.load_image(data / "img/0.jpg"),
    "decode label PNG": lambda: sources.load_label(data / "lab/0.png"),
    "label value check": lambda: sources.invalid_label_values(label, 19),
    "ResizeShort 1080": lambda: T.resize_short(image, label, 1080),
    "scale x1.25": lambda: T.scale(image, label, 1.25),
    "rotate (p=0.5)": lambda: T.rotate(big_image, big_label, 7.0),
    "blur (p=0.5)": lambda: T.blur(big_image),
    "flip (p=0.5)": lambda: T.hflip(big_image, big_label),
    "crop 713": lambda: T.RandCrop(713, 713).random_map(
      {"image": big_image, "label": big_label}, np.random.default_rng(0)
    ),
  }
  print("| stage (1 thread, after x1.25) | ms |")
  print("|---|---|")
  for name, fn in stages.items():
    print(f"| {name} | {_ms(fn):.1f} |")


def measure(root: Path, workers: int, batch: int, batches: int) -> tuple[float, float]:
  """(seconds to the first batch, images/s over the next `batches` batches)."""
  ds = batching.train_dataset(
    [DATASET],
    [batch],
    data_root=root,
    crop_size=713,
    short_size=1080,
    seed=0,
    num_workers=workers,
    num_threads=1,
  )
  start = time.perf_counter()
  iterator = iter(ds)
  first = next(iterator)
  assert first["image"].shape == (batch, 713, 713, 3)
  warm = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  rate = batch * batches / (time.perf_counter() - warm)
  if hasattr(iterator, "close"):
    iterator.close()
  return warm - start, rate


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", type=int, default=16)
  parser.add_argument("--batch", type=int, default=5)
  parser.add_argument("--batches", type=int, default=8)
  parser.add_argument("--workers", default="0,1,2")
  parser.add_argument(
    "--step-rate",
    type=float,
    default=None,
    help="images/s a training step consumes (prints the cores it needs)",
  )
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()
  cv2.setNumThreads(1)  # 0 workers = one core; workers set the same (batching._init_worker)
  cores = os.cpu_count()
  print(f"{cores} CPU cores, OpenCV {cv2.__version__}, {cv2.getNumThreads()} cv2 threads")
  with tempfile.TemporaryDirectory() as tmp:
    write_dataset(Path(tmp), args.images)
    stage_times(Path(tmp))
    per_core = []
    print("| workers | cores busy | first batch (s) | images/s | images/s per core |")
    print("|---|---|---|---|---|")
    for workers in (int(w) for w in args.workers.split(",")):
      first, rate = measure(Path(tmp), workers, args.batch, args.batches)
      busy = min(max(workers, 1), cores)
      per_core.append(rate / busy)
      print(f"| {workers} | {busy} | {first:.1f} | {rate:.1f} | {rate / busy:.1f} |")
  if args.step_rate:
    best = max(per_core)
    print(
      f"a step consuming {args.step_rate:.0f} images/s needs "
      f"{args.step_rate / best:.1f} cores at {best:.1f} images/s per core"
    )


if __name__ == "__main__":
  main()
