"""Multi-dataset training batches: a fixed share of crops from each dataset in every step.

As in the official run (one dataset per GPU, `batch_size / 7` crops each), the global batch is
the concatenation of `shares[i]` crops of dataset i, in order. Each dataset has its own grain
pipeline (shuffled, repeated, decoded, augmented, seeded from (seed, i)); row j of dataset i's
share in step t is element `t * shares[i] + j` of that pipeline. The per-row streams are zipped
into one MapDataset, so a step is a pure function of its index: batches do not depend on the
number of worker processes or threads, and the iterator state (one index) resumes exactly.

Labels stay in each dataset's own ids; the train step maps them to universal ids on device
with `taxonomy.remap_labels(labels, taxonomy.stacked_luts(datasets), batch["dataset"])`.
"""

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import cv2
import grain
import numpy as np
from absl import flags

from mseg_jax import taxonomy
from mseg_jax.input_pipeline import catalog, sources, transforms


def _dataset_seed(seed: int, index: int) -> int:
  return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


@dataclasses.dataclass(frozen=True)
class _Tag(grain.transforms.Map):
  """Adds the dataset index to an example."""

  index: int

  def map(self, element: dict) -> dict:
    return {**element, "dataset": np.int32(self.index)}


def _stack(examples: tuple[dict, ...]) -> dict[str, np.ndarray]:
  return {key: np.stack([e[key] for e in examples]) for key in ("image", "label", "dataset")}


def _init_worker(worker_index: int, worker_count: int) -> None:
  del worker_index, worker_count
  cv2.setNumThreads(1)  # parallelism comes from the worker processes


def dataset_examples(
  name: str,
  index: int,
  *,
  data_root: str | Path,
  crop_size: int | tuple[int, int],
  short_size: int,
  seed: int,
  roots: dict[str, str] | None = None,
  lists_dir: str | Path | None = None,
  split: str = "train",
  scale_range: tuple[float, float] = (0.5, 2.0),
  rotate_range: tuple[float, float] = (-10.0, 10.0),
) -> grain.MapDataset:
  """Infinite augmented examples {"image", "label", "dataset"} of dataset `name` (index `index`);
  `scale_range` and `rotate_range` (degrees) bound the random scale and rotation."""
  source = sources.ListSource(
    catalog.list_path(data_root, name, split, roots, lists_dir),
    catalog.dataset_root(data_root, name, roots),
  )
  ds = grain.MapDataset.source(source).seed(_dataset_seed(seed, index)).shuffle().repeat()
  ds = ds.map(sources.Decode(num_classes=len(taxonomy.class_names(name))))
  ds = grain.experimental.apply_transformations(
    ds, transforms.train_transforms(short_size, crop_size, scale_range, rotate_range)
  )
  return ds.map(_Tag(index))


def local_rows(
  shares: Sequence[int], process_index: int, process_count: int
) -> list[tuple[int, int]]:
  """Per dataset, the [lo, hi) rows of its share that process `process_index` yields.

  Process p holds rows [floor(p*G/P), floor((p+1)*G/P)) of the global batch G: any G >= P.
  """
  total = sum(shares)
  if total < process_count:
    raise ValueError(
      f"the global batch ({' + '.join(map(str, shares))} = {total}) has fewer crops than the "
      f"{process_count} processes"
    )
  lo, hi = process_index * total // process_count, (process_index + 1) * total // process_count
  rows, offset = [], 0
  for share in shares:
    rows.append((max(lo - offset, 0), max(min(hi - offset, share), 0)))
    offset += share
  return rows


def train_dataset(
  datasets: Sequence[str],
  shares: Sequence[int],
  *,
  data_root: str | Path,
  roots: dict[str, str] | None = None,
  crop_size: int | tuple[int, int],
  short_size: int,
  seed: int,
  num_workers: int = 0,
  num_threads: int = 2,
  process_index: int = 0,
  process_count: int = 1,
  split: str = "train",
  lists_dir: str | Path | None = None,
  scale_range: tuple[float, float] = (0.5, 2.0),
  rotate_range: tuple[float, float] = (-10.0, 10.0),
) -> grain.IterDataset:
  """Infinite host batches {"image": uint8 (B, h, w, 3), "label": uint8 (B, h, w) in each
  dataset's own ids, "dataset": int32 (B,) index into `datasets`}.

  Process p yields rows [floor(p*G/P), floor((p+1)*G/P)) of the global batch G = sum(shares)
  (use `jax.process_index()` / `jax.process_count()`); the train loop pads them to its slots.
  `num_workers` > 0 computes batches in that many processes (grain `mp_prefetch`),
  `num_threads` threads each (or in-process).
  """
  if len(datasets) != len(shares) or not datasets:
    raise ValueError(f"need one share per dataset, got {list(datasets)} and {list(shares)}")
  if any(int(s) != s or s < 1 for s in shares):
    raise ValueError(f"shares must be positive integers, got {list(shares)}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  streams = []
  for index, (name, share, (lo, hi)) in enumerate(
    zip(datasets, shares, local_rows(shares, process_index, process_count), strict=True)
  ):
    if lo == hi:
      continue
    examples = dataset_examples(
      name,
      index,
      data_root=data_root,
      crop_size=crop_size,
      short_size=short_size,
      seed=seed,
      roots=roots,
      lists_dir=lists_dir,
      split=split,
      scale_range=scale_range,
      rotate_range=rotate_range,
    )
    streams += [examples[row::share] for row in range(lo, hi)]
  steps = min(len(s) for s in streams)
  ds = grain.experimental.ZipMapDataset([s[:steps] for s in streams]).map(_stack)
  ds = ds.to_iter_dataset(
    grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(num_threads, 1))
  )
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():  # grain workers read absl flags; outside absl.app.run
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=1),
      worker_init_fn=_init_worker,
    )
  return ds
