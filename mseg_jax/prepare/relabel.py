"""Step `relabel`: MSeg's MTurk relabels, which make the `-relabeled` label PNGs (spec §5).

For each `-relabeled` taxonomy and split (train, val), every label of the source taxonomy's
list (line-aligned with the `-relabeled` list) is remapped into the `-relabeled` taxonomy;
then every record segment of that image is rebuilt as a mask, checked and set to its new
class, in record order. The result is written once, atomically, at the `-relabeled` list's
label path, so an existing output is complete: a killed run resumes where it stopped and a
second run changes nothing.

The 381 update records of mseg-api's `dataset_update_records.py` and their segment lists
(`mseg/relabeled_data`, CC BY 4.0) ship in `data/relabeled/` (see its README).
"""

import collections
import dataclasses
import functools
import gzip
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mseg_jax import taxonomy
from mseg_jax.input_pipeline import catalog, sources
from mseg_jax.prepare import segments
from mseg_jax.prepare.common import PrepareError, read_png, run_parallel, write_label_png

DATA_DIR = Path(__file__).parent / "data" / "relabeled"
RECORDS_FILE = DATA_DIR / "records.tsv"
SEGMENTS_FILE = DATA_DIR / "segments.txt.gz"
SPLITS = ("train", "val")
UNLABELED = "unlabeled"


class Run(NamedTuple):
  """How one `-relabeled` taxonomy is made: from `source`, with the records of `kind`."""

  source: str
  kind: str
  strict: bool  # every mask pixel must hold the record's original class


RUNS: dict[str, Run] = {
  "ade20k-150-relabeled": Run("ade20k-150", "ade20k", strict=False),
  "bdd-relabeled": Run("bdd", "bdd", strict=True),
  "cityscapes-19-relabeled": Run("cityscapes-19", "cityscapes", strict=False),
  "cityscapes-34-relabeled": Run("cityscapes-34", "cityscapes", strict=False),
  "coco-panoptic-133-relabeled": Run("coco-panoptic-133", "coco", strict=True),
  "idd-39-relabeled": Run("idd-39", "idd", strict=False),
  "mapillary-public65-relabeled": Run("mapillary-public65", "mapillary", strict=True),
  "sunrgbd-37-relabeled": Run("sunrgbd-37", "sunrgbd", strict=True),
}
# mseg-api's verify_all_relabeled_segments leaves out the polygon datasets: their masks overlap.
VERIFIED_KINDS = ("ade20k", "bdd", "coco", "mapillary", "sunrgbd")


class Record(NamedTuple):
  """One update record: the segments of `file` go from `orig_class` to `relabeled_class`."""

  kind: str
  split: str
  orig_class: str
  relabeled_class: str
  file: str  # relative to mseg-api's mseg/relabeled_data/
  segments: tuple[str, ...]


@functools.cache
def records() -> tuple[Record, ...]:
  """The 381 records in mseg-api's order, with their segment names in file order."""
  lists: dict[str, list[str]] = {}
  with gzip.open(SEGMENTS_FILE, "rt", encoding="utf-8") as f:
    for line in f.read().splitlines():
      if line.startswith("# "):
        current = lists.setdefault(line[2:], [])
      elif line:
        current.append(line)
  rows = [line.split("\t") for line in RECORDS_FILE.read_text(encoding="utf-8").splitlines()[1:]]
  return tuple(Record(*row, tuple(lists[row[4]])) for row in rows)


class Edit(NamedTuple):
  """One segment of one image: mask `seg_id`, check it holds `orig`, set it to `new`."""

  file: str
  line: int
  name: str
  seg_id: int
  orig: int
  new: int

  def where(self, image: Path) -> str:
    return f"relabeled_data/{self.file}:{self.line}: segment {self.name} of {image}"


@dataclasses.dataclass(frozen=True)
class Job:
  """One image of a run: everything a worker needs to write or check its relabeled label."""

  source: Path
  output: Path
  lut: np.ndarray
  num_source_classes: int
  kind: str
  strict: bool
  edits: tuple[Edit, ...] = ()
  mask_file: Path | None = None  # instance PNG, panoptic PNG, polygon JSON or ADE20K _seg.png
  segment_ids: frozenset[int] | None = None  # COCO: the ids the panoptic JSON lists


class Result(NamedTuple):
  segments: int
  pixels_changed: int
  invalid_pixels: int


@dataclasses.dataclass
class Summary:
  """What a run did: images written or already there, segments applied and skipped."""

  dataset: str
  written: int = 0
  done_before: int = 0
  segments: int = 0
  pixels_changed: int = 0
  invalid_pixels: int = 0
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def __str__(self) -> str:
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
    return (
      f"{self.dataset}: {self.written} labels written, {self.done_before} already done; "
      f"{self.segments} segments applied, {self.pixels_changed} px changed; "
      f"segments skipped: {skipped}; source px with no valid id (now 255): {self.invalid_pixels}"
    )


def _class_id(dataset: str, name: str, where: str) -> int:
  if name == UNLABELED:
    return taxonomy.IGNORE
  try:
    return taxonomy.class_id(dataset, name)
  except ValueError:
    raise PrepareError(f"{where}: {name!r} is not a class of {dataset}") from None


def _edits_by_image(dataset: str, split: str) -> dict[tuple[str, str], list[Edit]]:
  """{(parent, stem): edits in record order} for the records of `dataset`'s run and `split`."""
  run = RUNS[dataset]
  by_image: dict[tuple[str, str], list[Edit]] = collections.defaultdict(list)
  seen: dict[segments.Segment, str] = {}
  for index, record in enumerate(records(), start=2):
    if record.kind != run.kind or record.split != split:
      continue
    where = f"{RECORDS_FILE}:{index}"
    orig = _class_id(dataset, record.orig_class, where)
    new = _class_id(dataset, record.relabeled_class, where)
    for line, name in enumerate(record.segments, start=1):
      try:
        segment = segments.parse(run.kind, name, split)
      except ValueError as e:
        raise PrepareError(f"relabeled_data/{record.file}:{line}: {e}") from None
      if segment in seen:
        raise PrepareError(
          f"relabeled_data/{record.file}:{line}: segment {name} is also in {seen[segment]}"
        )
      seen[segment] = f"relabeled_data/{record.file}:{line}"
      by_image[segment.parent, segment.stem].append(
        Edit(record.file, line, name, segment.seg_id, orig, new)
      )
  return by_image


def _read_list_pair(
  data_root: Path, dataset: str, split: str, lists_dir: Path | None
) -> list[tuple[Path, Path, Path]]:
  """(rgb, source label, relabeled label) per line of the line-aligned pair of lists."""
  run = RUNS[dataset]
  files = [
    catalog.list_path(data_root, d, split, lists_dir=lists_dir) for d in (run.source, dataset)
  ]
  try:
    src, dst = (
      sources.read_list(f, catalog.dataset_root(data_root, d))
      for f, d in zip(files, (run.source, dataset), strict=True)
    )
  except sources.InputError as e:
    raise PrepareError(str(e)) from None
  if len(src) != len(dst):
    raise PrepareError(f"{files[0]} has {len(src)} lines but {files[1]} has {len(dst)}")
  pairs = []
  for i, ((rgb, src_label), (dst_rgb, dst_label)) in enumerate(zip(src, dst, strict=True)):
    if rgb != dst_rgb or src_label is None or dst_label is None:
      raise PrepareError(
        f"{files[0]} and {files[1]}, entry {i + 1}: not the same image with a label in both "
        f"({rgb} {src_label} / {dst_rgb} {dst_label})"
      )
    pairs.append((rgb, src_label, dst_label))
  return pairs


def _ade20k_index(data_root: Path) -> dict[str, Path]:
  """{stem without `_seg`: path} of every `*_seg.png` of the full ADE20K 2016 release."""
  images = catalog.dataset_root(data_root, "ade20k-151-inst") / "images"
  if not images.is_dir():
    raise PrepareError(f"{images}: ADE20K_2016_07_26 instance release not found")
  return {p.name.removesuffix("_seg.png"): p for p in images.rglob("*_seg.png")}


def _coco_segment_ids(root: Path, split: str, stems: set[str]) -> dict[str, frozenset[int]]:
  """{image stem: segment ids of its `segments_info`} from the panoptic JSON of `split`."""
  path = root / "annotations" / f"panoptic_{split}2017.json"
  try:
    annotations = json.loads(path.read_text(encoding="utf-8"))["annotations"]
    ids = {
      Path(a["file_name"]).stem: frozenset(int(s["id"]) for s in a["segments_info"])
      for a in annotations
      if Path(a["file_name"]).stem in stems
    }
  except FileNotFoundError:
    raise PrepareError(f"{path}: panoptic JSON not found") from None
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise PrepareError(f"{path}: not a COCO panoptic JSON ({e!r})") from None
  missing = sorted(stems - ids.keys())
  if missing:
    raise PrepareError(f"{path}: no annotation for {len(missing)} images, e.g. {missing[0]}")
  return ids


def _mask_files(
  data_root: Path, dataset: str, split: str, stems: list[tuple[str, str]]
) -> list[Path | None]:
  """Where the masks of each (parent, stem) image come from (None: from the source label)."""
  kind, root = RUNS[dataset].kind, catalog.dataset_root(data_root, dataset)
  if kind in ("bdd", "sunrgbd"):
    return [None] * len(stems)
  if kind == "ade20k":
    index = _ade20k_index(data_root) if stems else {}
    missing = [stem for _, stem in stems if stem not in index]
    if missing:
      raise PrepareError(
        f"{catalog.dataset_root(data_root, 'ade20k-151-inst')}: no {missing[0]}_seg.png "
        f"(and {len(missing) - 1} more images with records)"
      )
    return [index[stem] for _, stem in stems]
  if kind == "coco":
    return [root / "annotations" / f"panoptic_{split}2017" / f"{stem}.png" for _, stem in stems]
  if kind == "mapillary":
    folder = "training" if split == "train" else "validation"
    return [root / folder / "instances" / f"{stem}.png" for _, stem in stems]
  return [  # cityscapes, idd: the polygons next to the raw labels
    root / "gtFine" / split / parent / f"{stem.removesuffix('_leftImg8bit')}_gtFine_polygons.json"
    for parent, stem in stems
  ]


def plan(
  data_root: str | Path,
  dataset: str,
  split: str,
  *,
  images: set[str] | None = None,
  resume: bool = True,
  lists_dir: str | Path | None = None,
) -> tuple[list[Job], collections.Counter, int]:
  """The jobs of one split of a run, the segments skipped (by reason) and outputs already done.

  `resume`: leave out images whose output exists (they are complete, see the module doc).
  """
  data_root, run = Path(data_root), RUNS[dataset]
  skipped: collections.Counter = collections.Counter()
  by_image = _edits_by_image(dataset, split)
  lut = taxonomy.pairwise_lut(run.source, dataset)
  num_source_classes = len(taxonomy.class_names(run.source))
  todo, keys, done_before, seen = [], [], 0, set()
  for rgb, source, output in _read_list_pair(data_root, dataset, split, lists_dir):
    key = (output.parent.name, rgb.stem)
    if output in seen:
      raise PrepareError(f"{output}: listed twice in the {dataset} {split} list")
    seen.add(output)
    edits = by_image.pop(key, [])
    if images is not None and rgb.stem not in images:
      skipped["not in --images"] += len(edits)
    elif resume and output.exists():
      done_before += 1
      skipped["in labels already done"] += len(edits)
    else:
      todo.append((source, output, tuple(edits)))
      keys.append(key)
  for (_, stem), edits in by_image.items():  # images the list does not hold
    outside = images is not None and stem not in images
    skipped["not in --images" if outside else "image not in list"] += len(edits)
  with_edits = [i for i, (_, _, edits) in enumerate(todo) if edits]
  mask_files = dict(
    zip(
      with_edits,
      _mask_files(data_root, dataset, split, [keys[i] for i in with_edits]),
      strict=True,
    )
  )
  segment_ids = {}
  if run.kind == "coco" and with_edits:
    segment_ids = _coco_segment_ids(
      catalog.dataset_root(data_root, dataset), split, {keys[i][1] for i in with_edits}
    )
  jobs = [
    Job(
      source,
      output,
      lut,
      num_source_classes,
      run.kind,
      run.strict,
      edits,
      mask_files.get(i),
      segment_ids.get(keys[i][1]),
    )
    for i, (source, output, edits) in enumerate(todo)
  ]
  return jobs, skipped, done_before


def _read_source(path: Path) -> np.ndarray:
  label = read_png(path)
  if label.ndim != 2 or label.dtype != np.uint8:
    raise PrepareError(
      f"{path}: expected a single-channel uint8 label, got {label.dtype}{label.shape}"
    )
  return label


def _mask_builder(job: Job, source: np.ndarray) -> Callable[[Edit], np.ndarray]:
  """seg id -> bool mask at the label's size, from the job's mask file (or the source label)."""
  shape = source.shape
  if job.kind in ("bdd", "sunrgbd"):  # segment id = a class of the source label
    return lambda edit: source == edit.seg_id
  if job.kind == "ade20k":
    ids = segments.ade20k_instance_ids(job.mask_file, shape)
    return lambda edit: ids == edit.seg_id
  if job.kind in ("cityscapes", "idd"):
    polygons = segments.read_polygons(job.mask_file)
    if (polygons["imgHeight"], polygons["imgWidth"]) != shape:
      raise PrepareError(
        f"{job.mask_file}: polygons are for {polygons['imgWidth']}x{polygons['imgHeight']}, "
        f"the label {job.source} is {shape[1]}x{shape[0]}"
      )

    def polygon(edit: Edit) -> np.ndarray:
      obj = segments.polygon_object(polygons, edit.seg_id)
      if obj is None:
        raise PrepareError(f"{edit.where(job.source)}: {job.mask_file} has no object {edit.seg_id}")
      return segments.polygon_mask(obj["polygon"], *shape)

    return polygon
  ids = segments.panoptic_ids(job.mask_file) if job.kind == "coco" else read_png(job.mask_file)
  if ids.shape != shape:
    raise PrepareError(f"{job.mask_file}: size {ids.shape} differs from {job.source}'s {shape}")
  if job.kind == "mapillary":
    return lambda edit: ids == edit.seg_id

  def panoptic(edit: Edit) -> np.ndarray:
    if edit.seg_id not in job.segment_ids:
      raise PrepareError(
        f"{edit.where(job.source)}: id {edit.seg_id} is not in the segments_info of "
        f"{job.mask_file.name}"
      )
    return ids == edit.seg_id

  return panoptic


def _counts(values: np.ndarray) -> dict[int, int]:
  """{label id: pixels} of uint8 `values`."""
  counts = np.bincount(values, minlength=256)
  ids = np.flatnonzero(counts)
  return dict(zip(ids.tolist(), counts[ids].tolist(), strict=True))


def _mask(job: Job, build: Callable[[Edit], np.ndarray], edit: Edit) -> np.ndarray:
  mask = build(edit)
  size = int(np.count_nonzero(mask))
  if size == 0:
    raise PrepareError(
      f"{edit.where(job.source)}: segment {edit.seg_id} not found "
      f"(empty mask in {job.mask_file or job.source})"
    )
  if job.kind == "ade20k" and size < segments.ADE20K_MIN_PIXELS:
    raise PrepareError(
      f"{edit.where(job.source)}: mask has {size} px, fewer than {segments.ADE20K_MIN_PIXELS}"
    )
  return mask


def relabel_label(job: Job, source: np.ndarray) -> np.ndarray:
  """The relabeled label of one image: its source remapped, then each edit applied in order."""
  label = job.lut[source]
  if not job.edits:
    return label
  build = _mask_builder(job, source)
  for edit in job.edits:
    mask = _mask(job, build, edit)
    if job.strict:
      held = _counts(label[mask])
      if held.keys() != {edit.orig}:
        raise PrepareError(
          f"{edit.where(job.source)}: strict check failed: the {int(mask.sum())} mask px hold "
          f"{held} (id: px), expected only the original class id {edit.orig}"
        )
    label[mask] = edit.new
  return label


def _invalid_pixels(label: np.ndarray, num_classes: int) -> int:
  """Pixels whose value is neither a class id (< num_classes) nor 255."""
  if int(np.add(label, 1, dtype=np.uint8).max()) <= num_classes:
    return 0
  counts = np.bincount(label.ravel(), minlength=256)
  return int(counts[num_classes : taxonomy.IGNORE].sum())


def relabel_image(job: Job) -> Result:
  """Reads, relabels and writes one image (atomically); the worker function of `run`."""
  source = _read_source(job.source)
  label = relabel_label(job, source)
  changed = int(np.count_nonzero(label != job.lut[source])) if job.edits else 0
  write_label_png(job.output, label)
  return Result(len(job.edits), changed, _invalid_pixels(source, job.num_source_classes))


def check_image(job: Job) -> list[str]:
  """Errors where a written relabeled label disagrees with the records of its image."""
  errors = []
  try:
    label = read_png(job.output)
    source = _read_source(job.source) if job.kind in ("bdd", "sunrgbd") else label
    build = _mask_builder(job, source)
    for edit in job.edits:
      held = _counts(label[_mask(job, build, edit)])
      if held.keys() != {edit.new}:
        errors.append(f"{edit.where(job.output)}: mask px hold {held}, expected only {edit.new}")
  except PrepareError as e:
    errors.append(str(e))
  return errors


def _runs(datasets: Sequence[str]) -> list[str]:
  return [name for name in RUNS if name in datasets]


def relabel_dataset(
  data_root: str | Path, dataset: str, *, images: set[str] | None = None, workers: int = 1
) -> Summary:
  """Writes every train/val label of one `-relabeled` taxonomy that is not there yet."""
  summary = Summary(dataset)
  plans = {split: plan(data_root, dataset, split, images=images) for split in SPLITS}
  for split, (jobs, skipped, done_before) in plans.items():  # all records checked: now pixels
    summary.skipped.update(skipped)
    summary.done_before += done_before
    for result in run_parallel(
      relabel_image, jobs, workers=workers, desc=f"relabel {dataset} {split}", unit="img"
    ):
      summary.written += 1
      summary.segments += result.segments
      summary.pixels_changed += result.pixels_changed
      summary.invalid_pixels += result.invalid_pixels
  return summary


def run(data_root: Path, datasets: Sequence[str], *, images: set[str] | None, workers: int) -> None:
  """The `relabel` step for the `-relabeled` taxonomies among `datasets`."""
  summaries = [
    relabel_dataset(data_root, name, images=images, workers=workers) for name in _runs(datasets)
  ]
  if summaries:
    print("relabel summary:\n" + "\n".join(f"  {summary}" for summary in summaries))
  else:
    print("relabel: nothing to do for " + ", ".join(datasets))


def verify(
  data_root: str | Path,
  datasets: Sequence[str],
  *,
  images: set[str] | None = None,
  workers: int = 1,
  lists_dir: str | Path | None = None,
) -> list[str]:
  """Checks written `-relabeled` labels against the records, as mseg-api's
  `verify_all_relabeled_segments` does: every pixel of every record mask holds the new class.
  Cityscapes and IDD are left out (their polygon masks overlap). Returns the errors found.
  """
  errors = []
  for dataset in _runs(datasets):
    if RUNS[dataset].kind not in VERIFIED_KINDS:
      continue
    for split in SPLITS:
      jobs, _, _ = plan(data_root, dataset, split, images=images, resume=False, lists_dir=lists_dir)
      jobs = [job for job in jobs if job.edits]
      for found in run_parallel(
        check_image, jobs, workers=workers, desc=f"verify {dataset} {split}", unit="img"
      ):
        errors.extend(found)
  return errors
