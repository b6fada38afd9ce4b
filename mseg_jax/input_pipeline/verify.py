"""Checks whole datasets up front: every list line, image and label, with a summary table.

  python -m mseg_jax.input_pipeline.verify --data-root R --datasets cityscapes-19,camvid-11

For each dataset and split it reads the list file (`catalog.list_path`: by default
<data-root>/dataset_lists/<name>/list/<split>.txt, where `python -m mseg_jax.prepare lists`
writes them) and every image and label (missing or unreadable files, image/label size
mismatches, label values that are neither a class of the dataset nor 255), shows a progress
bar, prints the errors (file:line: path: problem) and a table (images, labels, sizes, ids seen),
and exits with status 1 if anything is wrong.
"""

import argparse
import concurrent.futures
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import tqdm

from mseg_jax import taxonomy
from mseg_jax.input_pipeline import catalog, sources
from mseg_jax.prepare import relabel


@dataclasses.dataclass
class SplitReport:
  """What `verify_split` found in one list file."""

  dataset: str
  split: str
  list_file: Path
  num_classes: int
  samples: int = 0
  labelled: int = 0
  errors: list[str] = dataclasses.field(default_factory=list)
  min_hw: tuple[int, int] | None = None
  max_hw: tuple[int, int] | None = None
  pixels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(256, np.int64))

  def add(self, image: np.ndarray, label: np.ndarray | None) -> None:
    hw = image.shape[:2]
    self.min_hw = hw if self.min_hw is None else min(self.min_hw, hw, key=lambda s: s[0] * s[1])
    self.max_hw = hw if self.max_hw is None else max(self.max_hw, hw, key=lambda s: s[0] * s[1])
    if label is not None:
      self.labelled += 1
      self.pixels += np.bincount(label.ravel(), minlength=256)


def _check(record: dict, num_classes: int):
  try:
    example = sources.decode_record(record, num_classes)
  except sources.InputError as e:
    return str(e), None
  return None, example


def verify_split(
  data_root: str | Path,
  name: str,
  split: str,
  roots: dict[str, str] | None = None,
  lists_dir: str | Path | None = None,
  num_threads: int = 4,
) -> SplitReport:
  """Reads every sample of one split; errors are collected, not raised."""
  num_classes = len(taxonomy.class_names(name))
  list_file = catalog.list_path(data_root, name, split, roots, lists_dir)
  report = SplitReport(name, split, list_file, num_classes)
  try:
    source = sources.ListSource(
      list_file, catalog.dataset_root(data_root, name, roots), require_labels=False
    )
  except sources.InputError as e:
    report.errors.append(str(e))
    return report
  report.samples = len(source)
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:  # cv2 releases the GIL
    results = pool.map(_check, (source[i] for i in range(len(source))), [num_classes] * len(source))
    for error, example in tqdm.tqdm(results, total=len(source), desc=f"{name} {split}", unit="img"):
      if error is not None:
        report.errors.append(error)
      else:
        report.add(example["image"], example.get("label"))
  return report


def _size(hw: tuple[int, int] | None) -> str:
  return "-" if hw is None else f"{hw[0]}x{hw[1]}"


def _ids(pixels: np.ndarray, num_classes: int) -> str:
  seen = np.flatnonzero(pixels[:num_classes])
  return f"{seen[0]}..{seen[-1]}" if seen.size else "-"


def summary_table(reports: list[SplitReport]) -> str:
  """A markdown table: samples, errors, image sizes, classes seen, ignore fraction, id range."""
  lines = [
    "| dataset | split | samples | labelled | errors | smallest HxW | largest HxW "
    "| classes seen | ignore px | ids |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in reports:
    total = int(r.pixels.sum())
    seen = int(np.count_nonzero(r.pixels[: r.num_classes]))
    ignore = f"{100.0 * r.pixels[sources.IGNORE] / total:.1f}%" if total else "-"
    lines.append(
      f"| {r.dataset} | {r.split} | {r.samples} | {r.labelled} | {len(r.errors)} "
      f"| {_size(r.min_hw)} | {_size(r.max_hw)} | {seen}/{r.num_classes} | {ignore} "
      f"| {_ids(r.pixels, r.num_classes)} |"
    )
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description="Check MSeg datasets on disk before training.")
  parser.add_argument("--data-root", required=True, help="parent of mseg_dataset/ (MSEG_DST_DIR)")
  parser.add_argument("--datasets", required=True, help="comma-separated dataset names")
  parser.add_argument(
    "--splits",
    default=None,
    help="comma-separated splits (default: val for the test datasets, train,val for the others)",
  )
  parser.add_argument(
    "--roots",
    type=catalog.parse_roots,
    default=None,
    help="per-dataset root overrides: name=path[,name=path...]",
  )
  parser.add_argument(
    "--lists-dir",
    default=None,
    help="read lists from <lists-dir>/<name>/list/ (default: <data-root>/dataset_lists)",
  )
  parser.add_argument(
    "--relabeled",
    action="store_true",
    help="also check -relabeled labels against the MTurk records (verify_all_relabeled_segments)",
  )
  parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--max-errors", type=int, default=20, help="errors printed per split")
  args = parser.parse_args(argv)
  names = args.datasets.split(",")
  unknown = sorted(set(names) - set(taxonomy.dataset_names()))
  if unknown:
    parser.error(f"unknown datasets {unknown}; known: {', '.join(taxonomy.dataset_names())}")

  reports = []
  for name in names:
    if args.splits:
      splits = args.splits.split(",")
    else:
      splits = ["val"] if name in taxonomy.TEST_DATASETS else ["train", "val"]
    for split in splits:
      reports.append(
        verify_split(args.data_root, name, split, args.roots, args.lists_dir, args.threads)
      )
  for r in reports:
    for error in r.errors[: args.max_errors]:
      print(f"ERROR {error}")
    if len(r.errors) > args.max_errors:
      print(f"... and {len(r.errors) - args.max_errors} more errors in {r.list_file}")
  print(summary_table(reports))
  num_errors = sum(len(r.errors) for r in reports)
  if args.relabeled:
    relabel_errors = relabel.verify(
      args.data_root, names, workers=args.threads, lists_dir=args.lists_dir
    )
    for error in relabel_errors:
      print(f"ERROR {error}")
    num_errors += len(relabel_errors)
  print(f"{num_errors} errors" if num_errors else "all samples OK")
  return 1 if num_errors else 0


if __name__ == "__main__":
  sys.exit(main())
