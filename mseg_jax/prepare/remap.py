"""The remap step: every raw label format to its MSeg semseg taxonomy (data_preparation.md §2, §3).

Each job reads the train and val lists of a source and a destination taxonomy; line i of both
describes the same image (same RGB path, checked). It reads the source label, checks its size
against the RGB image (from the image header) and that every value is a source id, converts it
and writes the destination label PNG atomically. Outputs that exist are skipped, so a killed run
continues where it stopped. BDD and VOC 2012 are stored in their semseg taxonomy already: their
labels are only checked.

Against mseg-api: ids outside the source taxonomy and RGB colours of no class are errors (it
maps them to 0); COCO dumps 201 then 201 -> 133, IDD rasterizes its polygons to idd-40 and
PASCAL Context dumps its `.mat` files to uint16 pascal-context-460 PNGs inside this step.
"""

import dataclasses
import functools
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from mseg_jax import taxonomy
from mseg_jax.input_pipeline import catalog, sources
from mseg_jax.prepare import formats
from mseg_jax.prepare.common import PrepareError, run_parallel, write_label_png

SPLITS = ("train", "val")  # mseg-api never remaps test lists
RELABELED = "-relabeled"


@dataclasses.dataclass(frozen=True)
class Job:
  """Labels of `src`'s list -> labels of `dst`'s list, by `kind`:

  lut: grey ids through taxonomy.pairwise_lut; rgb: colours -> ids, then the lut;
  panoptic: COCO panoptic PNG + JSON -> category ids; polygons: `<x>_polygons.json` beside
  the output -> ids; mat: `trainval/<stem>.mat` -> uint16 ids; check: nothing is written.
  """

  src: str
  dst: str
  kind: str


# In dependency order: a job's src is made by an earlier job when it is another's dst.
JOBS = (
  Job("ade20k-151", "ade20k-150", "lut"),
  Job("bdd", "bdd", "check"),
  Job("camvid-32", "camvid-11", "rgb"),
  Job("cityscapes-34", "cityscapes-19", "lut"),
  Job("coco-panoptic-inst-201", "coco-panoptic-201", "panoptic"),
  Job("coco-panoptic-201", "coco-panoptic-133", "lut"),
  Job("idd-40", "idd-40", "polygons"),
  Job("idd-40", "idd-39", "lut"),
  Job("kitti-34", "kitti-19", "lut"),
  Job("mapillary-public66", "mapillary-public65", "rgb"),
  Job("pascal-context-460", "pascal-context-460", "mat"),
  Job("pascal-context-460", "pascal-context-60", "lut"),
  Job("scannet-41", "scannet-20", "lut"),
  Job("sunrgbd-38", "sunrgbd-37", "lut"),
  Job("voc2012", "voc2012", "check"),
  Job("wilddash-34", "wilddash-19", "lut"),
)


def jobs_for(datasets: Sequence[str]) -> list[Job]:
  """The jobs that make `datasets` (a `-relabeled` name needs its base), with their inputs."""
  wanted, todo = set(), [name.removesuffix(RELABELED) for name in datasets]
  while todo:
    name = todo.pop()
    for job in JOBS:
      if job.dst == name and job not in wanted:
        wanted.add(job)
        if job.src != job.dst:
          todo.append(job.src)
  return [job for job in JOBS if job in wanted]


class Task(NamedTuple):
  """One label to convert (or check): its image, its input file and its output (or None)."""

  job: Job
  image: Path
  source: Path
  output: Path | None
  segments: np.ndarray | None = None  # panoptic: (segment id, category id) rows


@dataclasses.dataclass
class Stats:
  """Pixels per output id (256 bins; more for uint16 outputs) and counted oddities."""

  pixels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(256, np.int64))
  notes: Counter = dataclasses.field(default_factory=Counter)

  def add(self, other: "Stats") -> None:
    if len(other.pixels) > len(self.pixels):
      self.pixels = np.pad(self.pixels, (0, len(other.pixels) - len(self.pixels)))
    self.pixels[: len(other.pixels)] += other.pixels
    self.notes.update(other.notes)


@functools.cache
def _lut(src: str, dst: str) -> np.ndarray:
  return taxonomy.pairwise_lut(src, dst)


def _read_lut_source(task: Task) -> np.ndarray:
  """The source ids of a `lut` or `rgb` task, checked."""
  src = task.job.src
  if task.job.kind == "rgb":
    return formats.colors_to_ids(formats.read_color_png(task.source), src, task.source)
  label = formats.read_grey_label(task.source)
  formats.check_ids(label, src, task.source)
  return label


def _histogram(label: np.ndarray) -> np.ndarray:
  """int64 pixels per id (256 bins, more for larger uint16 ids)."""
  bins = max(256, int(label.max()) + 1) if label.dtype == np.uint16 else 256
  if label.size < 1 << 24:  # float32 counts are exact: OpenCV's is 2x faster than bincount
    return cv2.calcHist([label], [0], None, [bins], [0, bins]).ravel().astype(np.int64)
  return np.bincount(label.ravel(), minlength=bins)


def convert(task: Task) -> Stats:
  """Converts (or checks) one label; a PrepareError names the bad file."""
  job, stats = task.job, Stats()
  if job.kind in ("lut", "rgb", "check"):
    label = _read_lut_source(task)
    formats.check_size(label.shape, task.image, task.source)
    if job.kind != "check":
      label = formats.apply_lut(label, _lut(job.src, job.dst))
  elif job.kind == "panoptic":
    bgr = formats.read_color_png(task.source)
    formats.check_size(bgr.shape[:2], task.image, task.source)
    label, unlisted = formats.panoptic_to_semantic(bgr, task.segments, task.source)
    stats.notes["pixels of segment ids not in the JSON (-> 255)"] += unlisted
  elif job.kind == "polygons":
    label, unknown = formats.rasterize_polygons(
      formats.read_polygons(task.source), job.dst, task.source
    )
    formats.check_size(label.shape, task.image, task.source)
    stats.notes.update({f"objects skipped, unknown label {k!r}": n for k, n in unknown.items()})
  elif job.kind == "mat":
    label = formats.read_mat_label(task.source, job.dst)
    formats.check_size(label.shape, task.image, task.source)
  else:
    raise ValueError(f"unknown job kind {job.kind!r}")
  stats.pixels = _histogram(label)
  if task.output is not None:
    write_label_png(task.output, label)
  return stats


def _read_list(data_root: Path, name: str, split: str) -> tuple[Path, list[tuple[Path, Path]]]:
  list_file = catalog.list_path(data_root, name, split)
  try:
    pairs = sources.read_list(list_file, catalog.dataset_root(data_root, name))
  except sources.InputError as e:
    raise PrepareError(f"{e} (the lists step writes it)") from None
  for i, (_, label) in enumerate(pairs):
    if label is None:
      raise PrepareError(f"{list_file}: line {i + 1} has no label path")
  return list_file, pairs


def _source_of(job: Job, output: Path, root: Path) -> Path:
  """The input file of a `polygons` or `mat` task, found from its output path."""
  if job.kind == "mat":
    return root / "trainval" / f"{output.stem}.mat"
  suffix = "_labelids.png"
  if not output.name.endswith(suffix):
    raise PrepareError(f"{output}: an {job.dst} label name must end with {suffix}")
  return output.with_name(output.name.removesuffix(suffix) + "_polygons.json")


def _tasks(data_root: Path, job: Job, images: set[str] | None) -> tuple[list[Task], Counter]:
  """The job's tasks, one per output (a file listed again, in a split or in both, is done
  once), and the list lines they come from per split."""
  tasks, lines = {}, Counter()
  for split in SPLITS:
    src_list, src_pairs = _read_list(data_root, job.src, split)
    dst_list, dst_pairs = _read_list(data_root, job.dst, split)
    if len(src_pairs) != len(dst_pairs):
      raise PrepareError(
        f"{src_list} ({len(src_pairs)} lines) and {dst_list} ({len(dst_pairs)} lines) must "
        "list the same images line by line"
      )
    for i, ((image, source), (dst_image, output)) in enumerate(
      zip(src_pairs, dst_pairs, strict=True)
    ):
      if image != dst_image:
        raise PrepareError(
          f"{dst_list}: line {i + 1} names image {dst_image}, but {src_list} line {i + 1} "
          f"names {image}; the lists must be line-aligned"
        )
      if images is not None and image.stem not in images:
        continue
      lines[split] += 1
      if job.kind in ("polygons", "mat"):
        source = _source_of(job, output, catalog.dataset_root(data_root, job.dst))
      key = source if job.kind == "check" else output
      task = Task(job, image, source, None if job.kind == "check" else output)
      if tasks.setdefault(key, task) != task:
        raise PrepareError(f"{dst_list}: {key} is listed again with different inputs")
  return list(tasks.values()), lines


def _with_segments(tasks: list[Task]) -> list[Task]:
  """Panoptic tasks with their JSON segments; every PNG must have an entry and exist."""
  by_json: dict[Path, list[Task]] = {}
  for task in tasks:
    by_json.setdefault(task.source.parent.with_suffix(".json"), []).append(task)
  done = []
  for json_path, group in by_json.items():
    if not json_path.is_file():
      raise PrepareError(f"{json_path}: panoptic JSON not found")
    try:
      entries = json.loads(json_path.read_text(encoding="utf-8"))["annotations"]
      entries = {entry["file_name"]: entry for entry in entries}
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
      raise PrepareError(f"{json_path}: not a COCO panoptic JSON ({e!r})") from None
    for task in group:
      entry = entries.get(task.source.name)
      if entry is None:
        raise PrepareError(f"{json_path}: no annotation entry for {task.source}")
      if not task.source.is_file():
        raise PrepareError(f"{task.source}: panoptic PNG named by {json_path} not found")
      done.append(task._replace(segments=formats.panoptic_segments(entry, json_path)))
  return done


def _describe(job: Job) -> str:
  if job.kind == "check":
    return f"check {job.src}"
  if job.kind in ("polygons", "mat"):
    return f"{job.kind} -> {job.dst}"
  return f"{job.src} -> {job.dst}"


def _summary(job: Job, tasks: int, lines: Counter, written: int, stats: Stats) -> str:
  per_split = ", ".join(f"{split} {lines[split]}" for split in SPLITS)
  line = f"{_describe(job)}: {tasks} labels (list lines: {per_split})"
  if job.kind == "check":
    line += ": all checked"
  else:
    line += f": {written} written, {tasks - written} already there"
  pixels = int(stats.pixels.sum())
  if pixels:
    names = taxonomy.class_names(job.dst)
    classes = [(i, n) for i, n in enumerate(names) if n != "unlabeled"]  # COCO's unused ids
    absent = [n for i, n in classes if stats.pixels[i] == 0]
    line += f"\n  {pixels:,} px read"
    if len(names) <= formats.IGNORE:  # else 255 is a class id
      line += f", {100 * stats.pixels[formats.IGNORE] / pixels:.2f}% 255"
    line += f"; {len(classes) - len(absent)}/{len(classes)} classes present"
    if absent:
      line += f" (none of: {', '.join(absent[:12])}{' ...' if len(absent) > 12 else ''})"
  for note, n in sorted(stats.notes.items()):
    if n:
      line += f"\n  {note}: {n:,}"
  return line


def run_job(data_root: Path, job: Job, *, images: set[str] | None, workers: int) -> str:
  """Runs one job over train and val; returns its summary."""
  tasks, lines = _tasks(data_root, job, images)
  todo = [t for t in tasks if t.output is None or not t.output.exists()]
  if job.kind == "panoptic":
    todo = _with_segments(todo)
  stats = Stats()
  for result in run_parallel(convert, todo, workers=workers, desc=_describe(job), unit="label"):
    stats.add(result)
  written = 0 if job.kind == "check" else len(todo)
  return _summary(job, len(tasks), lines, written, stats)


def run(data_root: Path, datasets: Sequence[str], *, images: set[str] | None, workers: int) -> None:
  """Remaps (or checks) the raw labels that `datasets` need, train and val lists."""
  summaries = [
    run_job(Path(data_root), job, images=images, workers=workers) for job in jobs_for(datasets)
  ]
  if summaries:
    print("remap summary:\n" + "\n".join(summaries))
  else:
    print("remap: nothing to do for " + ", ".join(datasets))
