"""Relabel throughput on 1080p labels (images/s, one worker and all), and the full-MSeg estimate.

python benchmarks/bench_relabel.py [--images 48] [--workers N]

Builds a synthetic COCO Panoptic val split in a temp folder: half its images carry the real
records of the first val images that have records (their segments as horizontal bands of a
1920x1080 panoptic PNG, the label holding each record's original class, so the strict check
runs), half have no record (remap only). Times `relabel.relabel_image` on each half, then
estimates the whole relabel step from the image counts of data_preparation.md §5.1, as if
every label were 1080p (most are smaller: COCO 640x480, ADE20K ~683x512; Mapillary larger).
"""

import argparse
import collections
import json
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from mseg_jax import taxonomy as tx
from mseg_jax.input_pipeline import catalog
from mseg_jax.prepare import common, relabel, segments

H, W = 1080, 1920
DATASET = "coco-panoptic-133-relabeled"
# train + val labels of each relabel run, and how many of them have records (spec §3, §5.1).
FULL_MSEG = {
  "ade20k-150": (22_210, 9_385),
  "bdd": (8_000, 2_950),
  "cityscapes-19": (3_475, 1_278),
  "cityscapes-34": (3_475, 1_278),
  "coco-panoptic-133": (118_287 + 5_000, 54_547 + 2_235),
  "idd-39": (7_974, 6_834),
  "mapillary-public65": (20_000, 822),
  "sunrgbd-37": (5_760, 3_949),
}


def write_list(data_root: Path, name: str, lines: list[str]) -> None:
  path = catalog.list_path(data_root, name, "val")
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(lines))
  catalog.list_path(data_root, name, "train").write_text("")


def build(data_root: Path, num_images: int) -> tuple[set[str], set[str]]:
  """The synthetic split; returns (stems with records, stems without)."""
  root = catalog.dataset_root(data_root, DATASET)
  lut = tx.pairwise_lut("coco-panoptic-133", DATASET)
  source_id = {int(lut[i]): i for i in range(len(tx.class_names("coco-panoptic-133")))}
  by_image = collections.defaultdict(list)
  for record in relabel.records():
    if record.kind == "coco" and record.split == "val":
      orig = tx.class_id(DATASET, record.orig_class)
      for name in record.segments:
        by_image[segments.parse("coco", name, "val").stem].append((name, orig))
  touched = sorted(by_image)[: num_images // 2]
  plain = [f"{900_000_000_000 + i:012d}" for i in range(num_images - len(touched))]
  annotations, sources, relabeled = [], [], []
  for stem in touched + plain:
    segs = [(segments.parse("coco", n, "val").seg_id, orig) for n, orig in by_image.get(stem, [])]
    bands = np.linspace(0, H, len(segs) + 2).astype(int)
    ids = np.full((H, W), 1, np.int64)
    label = np.broadcast_to(np.arange(W, dtype=np.uint8) // 64, (H, W)).copy()  # stuff stripes
    for (seg_id, orig), y0, y1 in zip(segs, bands[1:-1], bands[2:], strict=True):
      ids[y0:y1], label[y0:y1] = seg_id, source_id[orig]
    panoptic = np.stack([ids // 65536, ids // 256 % 256, ids % 256], -1).astype(np.uint8)  # BGR
    common.atomic_write_bytes(
      root / f"annotations/panoptic_val2017/{stem}.png", cv2.imencode(".png", panoptic)[1]
    )
    common.write_label_png(root / f"semantic_annotations133/val2017/{stem}.png", label)
    annotations.append(
      {"file_name": f"{stem}.png", "segments_info": [{"id": s} for s, _ in segs] + [{"id": 1}]}
    )
    sources.append(f"images/val2017/{stem}.jpg semantic_annotations133/val2017/{stem}.png\n")
    relabeled.append(f"images/val2017/{stem}.jpg semantic_relabeled133/val2017/{stem}.png\n")
  (root / "annotations/panoptic_val2017.json").write_text(json.dumps({"annotations": annotations}))
  write_list(data_root, "coco-panoptic-133", sources)
  write_list(data_root, DATASET, relabeled)
  return set(touched), set(plain)


def images_per_second(data_root: Path, images: set[str], workers: int) -> tuple[float, int]:
  """(images/s, segments applied) of relabeling `images` (planning not timed)."""
  shutil.rmtree(catalog.dataset_root(data_root, DATASET) / "semantic_relabeled133", True)
  jobs, _, _ = relabel.plan(data_root, DATASET, "val", images=images)
  start = time.perf_counter()
  results = list(common.run_parallel(relabel.relabel_image, jobs, workers=workers, desc="relabel"))
  seconds = time.perf_counter() - start
  assert len(results) == len(images)
  return len(images) / seconds, sum(r.segments for r in results)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", type=int, default=48, help="half with records, half without")
  parser.add_argument("--workers", type=int, default=common.default_workers())
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    data_root = Path(tmp)
    touched, plain = build(data_root, args.images)
    rates = {}
    for workers in sorted({1, args.workers}):
      for kind, images in (("with records", touched), ("remap only", plain)):
        rate, applied = images_per_second(data_root, images, workers)
        rates[workers, kind] = rate
        print(
          f"{W}x{H} COCO labels, {kind} ({applied} segments in {len(images)} images), "
          f"{workers} worker(s): {rate:.1f} images/s"
        )
  for workers in sorted({1, args.workers}):
    seconds = sum(
      (total - touched) / rates[workers, "remap only"] + touched / rates[workers, "with records"]
      for total, touched in FULL_MSEG.values()
    )
    print(
      f"full MSeg relabel step ({sum(t for t, _ in FULL_MSEG.values())} labels, "
      f"{sum(n for _, n in FULL_MSEG.values())} with records) at these 1080p rates, "
      f"{workers} worker(s): {seconds / 3600:.1f} h"
    )


if __name__ == "__main__":
  main()
