"""Labels/s of the remap step on 1920x1080 labels, and an estimate for the whole of MSeg.

Writes synthetic street scenes (mseg_jax.input_pipeline.synthetic) as 1080p raw labels of three
kinds to a temporary folder: grey ids (cityscapes-34 -> 19), RGB colours (mapillary-public66 ->
65) and COCO panoptic PNG + JSON (-> coco-panoptic-201). Times `remap.run_job` on them with one
worker and with all workers (outputs deleted before each run), then scales the per-megapixel
cost of each kind to MSeg's train+val labels (counts from data_preparation.md §3; mean label
sizes are estimates, marked ~) on `--cores` cores, assuming linear scaling from one worker.
Disk and PNG-decoder speed dominate; a slow disk will not scale linearly.

  python benchmarks/bench_prepare.py [--labels 12] [--cores 16]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from mseg_jax.input_pipeline import catalog, synthetic
from mseg_jax.prepare import formats, remap
from mseg_jax.prepare.common import default_workers

HEIGHT, WIDTH = 1080, 1920
JOBS = {
  "grey": remap.Job("cityscapes-34", "cityscapes-19", "lut"),
  "rgb": remap.Job("mapillary-public66", "mapillary-public65", "rgb"),
  "panoptic": remap.Job("coco-panoptic-inst-201", "coco-panoptic-201", "panoptic"),
}
# (job, kind whose cost it has, train+val labels, mean megapixels per label; ~ = estimate)
MSEG = (
  ("ade20k-151 -> ade20k-150", "grey", 22210, "~0.3"),
  ("check bdd", "grey", 8000, "0.92"),
  ("camvid-32 -> camvid-11", "rgb", 468, "0.69"),
  ("cityscapes-34 -> cityscapes-19", "grey", 3475, "2.1"),
  ("coco-panoptic-inst-201 -> 201", "panoptic", 123287, "~0.27"),
  ("coco-panoptic-201 -> 133", "grey", 123287, "~0.27"),
  ("idd polygons -> idd-40 (as grey)", "grey", 7974, "~2.0"),
  ("idd-40 -> idd-39", "grey", 7974, "~2.0"),
  ("kitti-34 -> kitti-19", "grey", 200, "0.47"),
  ("mapillary-public66 -> 65", "rgb", 20000, "~9"),
  ("pascal .mat -> 460 (as grey)", "grey", 10103, "~0.19"),
  ("pascal-context-460 -> 60", "grey", 10103, "~0.19"),
  ("scannet-41 -> scannet-20", "grey", 24902, "~1.25"),
  ("sunrgbd-38 -> sunrgbd-37", "grey", 5760, "0.39"),
  ("check voc2012", "grey", 12031, "~0.19"),
  ("wilddash-34 -> wilddash-19", "grey", 70, "2.1"),
)


def _lists(root: Path, job: remap.Job, rows: list[tuple[str, str, str]]) -> None:
  for name, column in ((job.src, 1), (job.dst, 2)):
    path = catalog.list_path(root, name, "train")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{row[0]} {row[column]}\n" for row in rows))
    catalog.list_path(root, name, "val").write_text("")


def write_labels(root: Path, count: int) -> None:
  """`count` 1080p raw labels of each kind, with lists, under `root`."""
  city = synthetic.universal_to_dataset_lut("cityscapes-34")
  vistas = synthetic.universal_to_dataset_lut("mapillary-public65")
  colors = formats.label_colors("mapillary-public66")[:, ::-1]  # BGR
  annotations, rows = [], {kind: [] for kind in JOBS}
  for i in range(count):
    _, universal = synthetic.render(False, np.random.default_rng(i), HEIGHT, WIDTH)
    for kind, job in JOBS.items():
      data = catalog.dataset_root(root, job.src)
      image = f"img/{i:03d}.jpg"
      if not (data / image).exists():
        (data / "img").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(data / image), np.zeros((HEIGHT, WIDTH, 3), np.uint8))
      if kind == "grey":
        raw, out = f"raw/{i:03d}.png", f"out/{i:03d}.png"
        label = city[universal]
      elif kind == "rgb":
        raw, out = f"raw/{i:03d}.png", f"out/{i:03d}.png"
        label = colors[vistas[universal].clip(0, 65)]
      else:  # one segment per universal class present, a few classes of COCO's 201
        raw, out = f"annotations/panoptic_train2017/{i:03d}.png", f"sem/{i:03d}.png"
        present = np.unique(universal)
        seg_ids = np.random.default_rng(i).choice(1 << 24, len(present), replace=False)
        ids = seg_ids[np.searchsorted(present, universal)]
        label = np.stack([ids >> 16, ids >> 8 & 255, ids & 255], -1).astype(np.uint8)  # BGR
        annotations.append(
          {
            "file_name": f"{i:03d}.png",
            "segments_info": [
              {"id": int(s), "category_id": 1 + k % 80} for k, s in enumerate(seg_ids)
            ],
          }
        )
      (data / raw).parent.mkdir(parents=True, exist_ok=True)
      cv2.imwrite(str(data / raw), label)
      rows[kind].append((image, raw, out))
  for kind, job in JOBS.items():
    _lists(root, job, rows[kind])
  coco = catalog.dataset_root(root, JOBS["panoptic"].src)
  (coco / "annotations/panoptic_train2017.json").write_text(
    json.dumps({"annotations": annotations})
  )


def measure(root: Path, job: remap.Job, count: int, workers: int) -> float:
  """Labels/s of one run of `job` with nothing written yet."""
  for path in catalog.dataset_root(root, job.dst).glob("*/*.png"):
    if path.parent.name in ("out", "sem"):
      path.unlink()
  start = time.perf_counter()
  remap.run_job(root, job, images=None, workers=workers)
  return count / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--labels", type=int, default=12, help="labels of each kind")
  parser.add_argument("--cores", type=int, default=16, help="cores of the estimate")
  args = parser.parse_args()
  workers = default_workers()
  print(f"{workers} cores here, OpenCV {cv2.__version__}, {WIDTH}x{HEIGHT} labels")
  seconds_per_mpx = {}
  with tempfile.TemporaryDirectory() as tmp:
    write_labels(Path(tmp), args.labels)
    print(f"| kind | job | labels/s, 1 worker | labels/s, {workers} workers |")
    print("|---|---|---|---|")
    for kind, job in JOBS.items():
      one = measure(Path(tmp), job, args.labels, 1)
      every = measure(Path(tmp), job, args.labels, workers)
      seconds_per_mpx[kind] = 1 / (one * HEIGHT * WIDTH / 1e6)
      print(f"| {kind} | {job.src} -> {job.dst} | {one:.1f} | {every:.1f} |")
  print(f"\nestimate for MSeg on {args.cores} cores (linear from 1 worker):")
  print("| job | labels | Mpx/label | minutes |")
  print("|---|---|---|---|")
  total = 0.0
  for name, kind, labels, mpx in MSEG:
    minutes = labels * float(mpx.lstrip("~")) * seconds_per_mpx[kind] / args.cores / 60
    total += minutes
    print(f"| {name} | {labels} | {mpx} | {minutes:.1f} |")
  print(f"| total | {sum(m[2] for m in MSEG)} | | {total:.0f} |")


if __name__ == "__main__":
  main()
