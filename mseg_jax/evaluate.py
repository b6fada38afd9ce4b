"""Evaluates a model on dataset val splits with the official MSeg test-time procedure.

  python -m mseg_jax.evaluate --checkpoint DIR --datasets camvid-11,kitti-19 --data-root ROOT \
      [--base-size 360 720 1080] [--scales ss|ms] [--regime zero_shot|oracle|training|naive] \
      [--relabeled] [--lists-dir mseg-api/mseg/dataset_lists] [--roots NAME=PATH,...] \
      [--index-start I --index-step N]
  python -m mseg_jax.evaluate --predictions DIR --datasets camvid-11 --data-root ROOT  # no model
  python -m mseg_jax.evaluate --merge --output-dir OUT

Regimes: see mseg_jax/regimes.py. The model's taxonomy (recorded in its checkpoint) must be the
regime's: universal for zero_shot and training, naive for naive, the dataset's own for oracle.
`--predictions DIR` scores label maps saved as DIR/<stem>.png (in the evaluation taxonomy, as
--save-predictions writes them; the official `has_prediction` path) instead of running a model,
in one process. `--relabeled` (training regime, for a model trained on relabeled data;
--datasets names the unrelabeled datasets) also reads the labels of the same lines of
`<dataset>-relabeled`'s list and scores with the official reward/penalty rule
(`metrics.relabeled_reward_penalty`).
List files are `<lists dir>/<dataset>/list/val.txt`, where --lists-dir defaults to
`<data root>/dataset_lists` (written by `python -m mseg_jax.prepare lists`); point it at
mseg-api's `mseg/dataset_lists` to read those in place.

The images are spread over every device of every process (image i on device i % n; start each
process with --coordinator-address/--num-processes/--process-id, or --distributed where the
cluster is auto-detected) and their confusion matrices summed: the same numbers as on one device.
`--index-start I --index-step N` (official names; N = 0: to the end) evaluates images
[I, I + N) of each list as one job of several; `--merge` sums the jobs' confusion matrices.

Per dataset and base size, OUT/<dataset>/<base size>/<ss|ms>/ (<ss|ms>_relabeled with
--relabeled) gets results.json, results.txt (the official line format), classes.md,
confusion.npy (rows: ground truth, columns: prediction, last column: no class) and, with
--save-predictions, gray/<stem>.png (the raw prediction; overlay/ with --save-overlays;
confidence/ and probabilities/ with --save-probabilities, see `confidence.py`). An interrupted
run (Ctrl-C or SIGTERM) resumes from the partial*.npz there. A job's share goes to
part_<start>-<stop>/ there until merged. OUT/results.{json,md,tex} hold every result found under
OUT: the paper-layout table (best of base sizes; harmonic, arithmetic and geometric means), one
row per evaluation, and per-class IoU tables. The primary process writes the result files.
"""

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import json
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from mseg_jax import confidence, inference, metrics, models, regimes, taxonomy, visualize
from mseg_jax.input_pipeline import catalog, sources
from mseg_jax.taxonomy import outputs

SAVE_EVERY_S = 60.0  # how often the partial confusion matrix is written


@dataclasses.dataclass(frozen=True)
class Spec:
  """One evaluation: the dataset, the regime and the test-time procedure.

  Its `key` (with the model's fingerprint and the number of images) is stored with the results:
  a finished or interrupted evaluation is reused only for an equal key.
  """

  dataset: str
  regime: str = "zero_shot"
  relabeled: bool = False  # training regime: score with `metrics.relabeled_reward_penalty`
  base_size: int = 360
  scales: tuple[float, ...] = inference.SINGLE_SCALE
  crop: int = 713
  dtype: str = "float32"
  limit: int | None = None  # only the first `limit` images
  # One job's share of the list (official names): images [index_start, index_start + index_step),
  # index_step 0: to the end.
  index_start: int = 0
  index_step: int = 0
  model: str = ""  # row label in the tables

  def share(self, list_images: int) -> tuple[int, int]:
    """(start, stop): the images of a list of `list_images` this job evaluates."""
    if self.index_start < 0 or self.index_step < 0:
      raise ValueError(
        f"index_start={self.index_start} and index_step={self.index_step} must be >= 0"
      )
    if self.index_start >= list_images:
      raise ValueError(
        f"index_start={self.index_start} is past the end of the {self.dataset} list "
        f"({list_images} images)"
      )
    step = self.index_step or list_images
    return self.index_start, min(self.index_start + step, list_images)

  def key(self, share: tuple[int, int], list_images: int, model_fingerprint: str) -> dict:
    """The JSON-able resume key (`limit` is in `list_images`)."""
    return {
      "dataset": self.dataset,
      "regime": self.regime,
      "relabeled": bool(self.relabeled),
      "base_size": int(self.base_size),
      "scales": [float(s) for s in self.scales],
      "crop": int(self.crop),
      "split": "val",
      "list_images": list_images,
      "images": list(share),
      "num_images": share[1] - share[0],
      "model": self.model,
      "model_fingerprint": model_fingerprint,
      "dtype": jnp.dtype(self.dtype).name,
    }


class Record(NamedTuple):
  """An image and its labels: `relabeled_label` (the same line of `<dataset>-relabeled`'s list)
  only for a relabeled evaluation."""

  image: Path
  label: Path
  relabeled_label: Path | None = None


def relabeled_name(dataset: str) -> str:
  """`<dataset>-relabeled`, checked to be a relabeled training taxonomy."""
  name = f"{dataset}-relabeled"
  if name not in taxonomy.RELABELED_TRAIN_DATASETS:
    raise ValueError(
      f"relabeled evaluation takes the unrelabeled name of a training dataset "
      f"with a relabeled version ({', '.join(taxonomy.RELABELED_TRAIN_DATASETS)} "
      f"without '-relabeled'), not {dataset!r}"
    )
  return name


def read_records(
  data_root, dataset: str, roots=None, lists_dir=None
) -> tuple[Path, list[tuple[Path, Path]]]:
  """The val list file of `dataset` and its (image, label) paths."""
  list_file = catalog.list_path(data_root, dataset, "val", roots, lists_dir)
  records = sources.read_list(list_file, catalog.dataset_root(data_root, dataset, roots))
  if not records:
    raise ValueError(f"{list_file}: no images to evaluate")
  for image_path, label_path in records:
    if label_path is None:
      raise ValueError(f"{list_file}: {image_path} has no label path; evaluation needs labels")
  return list_file, records


def paired_records(
  data_root, dataset: str, relabeled: bool, roots=None, lists_dir=None
) -> list[Record]:
  """`dataset`'s val records; with `relabeled`, line i of `<dataset>-relabeled`'s list paired
  with line i of `dataset`'s (the same image, checked)."""
  list_file, records = read_records(data_root, dataset, roots, lists_dir)
  if not relabeled:
    return [Record(image, label) for image, label in records]
  relabeled_file, relabeled_records = read_records(
    data_root, relabeled_name(dataset), roots, lists_dir
  )
  if len(relabeled_records) != len(records):
    raise ValueError(
      f"{relabeled_file} has {len(relabeled_records)} lines, {list_file} "
      f"{len(records)}; line i of both must be the same image"
    )
  paired = []
  for (image, label), (relabeled_image, relabeled_label) in zip(
    records, relabeled_records, strict=True
  ):
    if image.name != relabeled_image.name:
      raise ValueError(
        f"{relabeled_file}: {relabeled_image.name} is not {image.name}, "
        f"the image of the same line of {list_file}"
      )
    paired.append(Record(image, label, relabeled_label))
  return paired


Scoring = Callable[[jax.Array, np.ndarray, np.ndarray | None], tuple[jax.Array, jax.Array]]


def scoring_rule(regime: regimes.Regime, dataset: str, relabeled: bool) -> Scoring:
  """(prediction, label, relabeled label) -> the (prediction, target) pair to count."""
  if relabeled:
    lut = jnp.asarray(regime.label_lut)
    relabeled_lut = jnp.asarray(taxonomy.to_universal_lut(relabeled_name(dataset)))

    def reward_penalty(pred, label, label_relabeled):
      target = taxonomy.remap_labels(jnp.asarray(label), lut)
      target_relabeled = taxonomy.remap_labels(jnp.asarray(label_relabeled), relabeled_lut)
      return metrics.relabeled_reward_penalty(pred, target, target_relabeled)

    return reward_penalty
  if regime.label_lut is None:
    return lambda pred, label, _: (pred, jnp.asarray(label))
  lut = jnp.asarray(regime.label_lut)
  return lambda pred, label, _: (pred, taxonomy.remap_labels(jnp.asarray(label), lut))


def model_taxonomy_for(regime: str, dataset: str) -> str:
  """The taxonomy a model must predict in for `regime` on `dataset`."""
  return {"zero_shot": "universal", "training": "universal", "naive": "naive"}.get(regime, dataset)


def check_model_taxonomy(regime: str, dataset: str, model_taxonomy: str | None) -> None:
  """Refuses a model whose recorded taxonomy is not the one `regime` on `dataset` needs (an
  older checkpoint without one, None, is checked by its class count only)."""
  needed = model_taxonomy_for(regime, dataset)
  if model_taxonomy is not None and model_taxonomy != needed:
    raise ValueError(
      f"the {regime} regime on {dataset} needs a model of the {needed} taxonomy; "
      f"this model's checkpoint records {model_taxonomy}"
    )


def load_prediction(path: Path, shape: tuple[int, ...], num_classes: int) -> np.ndarray:
  """A saved label map, checked: single channel, the label's size, ids below `num_classes`."""
  pred = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
  if pred is None:
    raise sources.InputError(f"{path}: prediction missing or unreadable")
  if pred.ndim != 2 or pred.shape != shape[:2]:
    raise sources.InputError(
      f"{path}: prediction of shape {pred.shape}; expected a single-channel {shape[:2]} map"
    )
  if pred.max() >= num_classes:
    raise sources.InputError(
      f"{path}: prediction holds id {pred.max()}; the evaluation taxonomy has {num_classes} classes"
    )
  return pred


def prediction_stem(image_path: Path, dataset: str) -> str:
  """The official file stem of a prediction (ScanNet: the last 3 folders joined with '_')."""
  if dataset.startswith("scannet"):
    return "_".join(image_path.parts[-4:-1] + (image_path.stem,))
  return image_path.stem


def _prefetched(fn, items, depth: int = 4):
  """fn(item) for each item, computed `depth` ahead in a thread."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    queue = collections.deque()
    for item in items:
      queue.append(pool.submit(fn, item))
      if len(queue) > depth:
        yield queue.popleft().result()
    while queue:
      yield queue.popleft().result()


def _fingerprint(variables) -> str:
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(variables):
    digest.update(np.asarray(leaf).ravel()[:1024].tobytes())
    digest.update(np.float64(np.sum(np.asarray(leaf, np.float64))).tobytes())
  return digest.hexdigest()[:16]


def _folder_fingerprint(directory: Path) -> str:
  """Of the PNGs in `directory`: names, sizes and modification times (a changed file is new)."""
  digest = hashlib.sha256(str(directory).encode())
  for path in sorted(directory.glob("*.png")):
    stat = path.stat()
    digest.update(f"{path.name} {stat.st_size} {stat.st_mtime_ns}\n".encode())
  return "predictions " + digest.hexdigest()[:16]


class Terminated(KeyboardInterrupt):
  """SIGTERM during an evaluation: handled as Ctrl-C (progress saved), exits with 143."""


@contextlib.contextmanager
def sigterm_interrupts():
  """Within it, SIGTERM raises `Terminated` (entered off the main thread, it changes nothing)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def handler(signum, frame):
    raise Terminated(f"signal {signum}")

  previous = signal.signal(signal.SIGTERM, handler)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def _all_processes(flag: bool) -> bool:
  """Whether `flag` holds on every process."""
  if jax.process_count() == 1:
    return flag
  return bool(np.all(multihost_utils.process_allgather(np.asarray(flag))))


def _gather(done: np.ndarray, confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Every process's done mask (processes, n) and the sum of their int64 confusion matrices."""
  if jax.process_count() == 1:
    return done[None], confusion
  # int64 needs jax_enable_x64: gathered as two int32 halves of 31 bits.
  halves = np.stack([confusion >> 31, confusion & (2**31 - 1)]).astype(np.int32)
  masks, halves = multihost_utils.process_allgather((done, halves))
  halves = halves.astype(np.int64).sum(axis=0)
  return masks, (halves[0] << 31) + halves[1]


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


class Progress:
  """The saved state of an evaluation in `save_dir` (None: nothing is saved or resumed).

  Each process keeps the images it has done (a mask over the list) and their confusion matrix in
  its own partial file (process 0: partial.npz, process p: partial.<p>.npz). A resumed run skips
  the images of every partial file and each process carries its own file on, so the files never
  overlap, whatever the number of processes or devices. results.json, classes.md and
  confusion.npy (and results.txt, the official format) hold the finished evaluation, written by
  the primary process. All are used only for the same `key`.
  """

  _PARTIAL = re.compile(r"partial(?:\.(\d+))?\.npz")

  def __init__(self, save_dir: str | Path | None, key: dict):
    self.save_dir = None if save_dir is None else Path(save_dir)
    self.key = key
    if self.save_dir is not None:
      self.save_dir.mkdir(parents=True, exist_ok=True)

  def finished(self) -> dict | None:
    """The results of a finished evaluation with this key."""
    path = None if self.save_dir is None else self.save_dir / "results.json"
    if path is None or not path.is_file():
      return None
    previous = json.loads(path.read_text())
    return previous if all(previous.get(k) == v for k, v in self.key.items()) else None

  def _partial_files(self) -> dict[int, Path]:
    if self.save_dir is None:
      return {}
    found = {}
    for path in self.save_dir.iterdir():
      if match := self._PARTIAL.fullmatch(path.name):
        found[int(match[1] or 0)] = path
    return found

  def resume(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{process: (done mask, confusion matrix)} of the partial files with this key."""
    states = {}
    for process, path in sorted(self._partial_files().items()):
      state = np.load(path)
      if json.loads(str(state["settings"])) != self.key:
        continue
      done = state["done"]
      if done.shape != (self.key["num_images"],) or done.dtype != bool:
        raise ValueError(f"{path}: done is not a mask over {self.key['num_images']} images")
      for other, (other_done, _) in states.items():
        if np.any(done & other_done):
          raise ValueError(f"{path} and the partial file of process {other} share images")
      states[process] = (done, state["confusion"])
    return states

  def save(self, done: np.ndarray, confusion: np.ndarray) -> None:
    """This process's partial file."""
    if self.save_dir is None:
      return
    process = jax.process_index()
    name = "partial.npz" if process == 0 else f"partial.{process}.npz"
    tmp = self.save_dir / f"tmp.{name}"
    np.savez(tmp, confusion=confusion, done=done, settings=json.dumps(self.key))
    tmp.replace(self.save_dir / name)

  def finish(self, result: dict, confusion: np.ndarray) -> None:
    """The primary process writes the results and removes the partial files; the others wait."""
    if self.save_dir is None:
      return
    if jax.process_index() == 0:
      np.save(self.save_dir / "confusion.npy", confusion)
      (self.save_dir / "classes.md").write_text(metrics.class_iou_table(result))
      (self.save_dir / "results.txt").write_text(metrics.results_txt(result))
      (self.save_dir / "results.json").write_text(json.dumps(result, indent=1) + "\n")
      for path in self._partial_files().values():
        path.unlink(missing_ok=True)
    _barrier("evaluation results written")
    for path in self._partial_files().values():  # a process's own file on an unshared disk
      path.unlink(missing_ok=True)


def make_result(key: dict, class_names, excluded_ids, confusion: np.ndarray) -> dict:
  """The JSON-able results of an evaluation: its key, the class names and the metrics."""
  return dict(
    key,
    class_names=list(class_names),
    excluded_ids=list(excluded_ids),
    **metrics.scores(confusion, excluded_ids),
  )


def _put(results: queue.Queue, item, stop: threading.Event) -> None:
  while not stop.is_set():
    try:
      results.put(item, timeout=0.1)
      return
    except queue.Full:
      pass


class SavedPredictions(NamedTuple):
  """Stands in for an Evaluator's Predictor: the label maps saved as <stem>.png in `directory`."""

  directory: Path
  device: jax.Device


class Evaluator:
  """mIoU etc. of a model on a dataset's val split (`spec`), with the official procedure.

  The constructor checks the regime, reads and pairs the list files, picks the scoring rule and
  makes a Predictor per local device of `devices` (default: every device of every process);
  `run` predicts and scores, image i of the list on device i % len(devices), each device fed by
  its own thread, and sums the confusion matrices over devices and processes. `lists_dir` reads
  the lists from `<lists_dir>/<dataset>/list/` (catalog.list_path). The model's recorded taxonomy
  (`model_taxonomy`; None: unknown) must be the regime's. With `predictions_dir` (model and
  variables None; one process) the label maps saved there as <stem>.png are scored instead.
  """

  def __init__(
    self,
    model,
    variables,
    spec: Spec,
    data_root,
    *,
    roots=None,
    lists_dir=None,
    batch_size: int = 8,
    devices: Sequence[jax.Device] | None = None,
    model_taxonomy: str | None = None,
    predictions_dir: str | Path | None = None,
  ):
    self.spec = spec
    predictions_dir = None if predictions_dir is None else Path(predictions_dir).absolute()
    if predictions_dir is None:
      check_model_taxonomy(spec.regime, spec.dataset, model_taxonomy)
      num_model_classes = model.config.num_classes
    else:
      if not predictions_dir.is_dir():
        raise FileNotFoundError(f"{predictions_dir}: no such predictions folder")
      if jax.process_count() > 1:
        raise ValueError("saved predictions are scored in one process")
      num_model_classes = outputs.num_outputs(model_taxonomy_for(spec.regime, spec.dataset))
    self.regime = regimes.make_regime(spec.regime, spec.dataset, num_model_classes)
    if spec.relabeled and spec.regime != "training":
      raise ValueError(f"relabeled evaluation is part of the training regime, not {spec.regime!r}")
    self.score = scoring_rule(self.regime, spec.dataset, spec.relabeled)
    records = paired_records(data_root, spec.dataset, spec.relabeled, roots, lists_dir)
    records = records[: spec.limit]
    self.list_images = len(records)
    self.share = spec.share(len(records))
    self.records = records[self.share[0] : self.share[1]]
    self.is_share = self.share != (0, len(records))  # one job's share of the list
    fingerprint = (
      _fingerprint(variables) if predictions_dir is None else _folder_fingerprint(predictions_dir)
    )
    self.key = spec.key(self.share, len(records), fingerprint)
    # Label ids a (relabeled) label may hold.
    self.label_classes = len(taxonomy.class_names(spec.dataset))
    if spec.relabeled:
      self.relabeled_classes = len(taxonomy.class_names(relabeled_name(spec.dataset)))
    if predictions_dir is not None:
      self.devices = (jax.local_devices()[0],)
      self.predictors = [SavedPredictions(predictions_dir, self.devices[0])]
      return
    self.devices = tuple(devices or jax.devices())
    self.predictors = []
    for device in self.devices:
      if device.process_index == jax.process_index():
        # The first Predictor folds the BN; the others copy its variables to their device.
        if self.predictors:
          model, variables = self.predictors[0].model, self.predictors[0].variables
        self.predictors.append(
          inference.Predictor(
            model,
            variables,
            base_size=spec.base_size,
            scales=spec.scales,
            crop=spec.crop,
            projection=self.regime.projection,
            predictable=self.regime.predictable,
            batch_size=batch_size,
            dtype=jnp.dtype(spec.dtype),
            device=device,
          )
        )

  def save_dir(self, out_dir) -> Path:
    """Where `evaluate` writes this evaluation under `out_dir`: <dataset>/<base size>/<ss|ms>
    (+ "_relabeled"), and a job's share of the list in part_<start>-<stop>/ there (`merge`)."""
    name = ("ss" if self.spec.scales == inference.SINGLE_SCALE else "ms") + (
      "_relabeled" if self.spec.relabeled else ""
    )
    path = Path(out_dir) / self.spec.dataset / str(self.spec.base_size) / name
    if self.is_share:
      path = path / f"part_{self.share[0]}-{self.share[1]}"
    return path

  def _load(
    self, record: Record, saved_in: Path | None = None
  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(image, label, relabeled label or None, the prediction saved in `saved_in` or None)."""
    image, label = sources.load_image(record.image), sources.load_label(record.label)
    sources.check_pair(image, label, record.label, self.label_classes)
    label_relabeled = None
    if record.relabeled_label is not None:
      label_relabeled = sources.load_label(record.relabeled_label)
      sources.check_pair(image, label_relabeled, record.relabeled_label, self.relabeled_classes)
    saved = None
    if saved_in is not None:
      path = saved_in / f"{prediction_stem(record.image, self.spec.dataset)}.png"
      saved = load_prediction(path, label.shape, len(self.regime.class_names))
    return image, label, label_relabeled, saved

  def _work(
    self, predictor, indices, results: queue.Queue, stop: threading.Event, write_probs
  ) -> None:
    """One device's thread: (index, image, prediction, confusion matrix) of each of `indices`
    into `results` (then None, or the exception that stopped it); `write_probs(index, probs)`
    if given."""
    k = len(self.regime.class_names)
    saved_in = predictor.directory if isinstance(predictor, SavedPredictions) else None
    load = functools.partial(self._load, saved_in=saved_in)
    try:
      with (
        jax.default_device(predictor.device),
        contextlib.closing(_prefetched(load, [self.records[i] for i in indices])) as loaded,
      ):
        for i, (image, label, label_relabeled, saved) in zip(indices, loaded, strict=True):
          if stop.is_set():
            return
          if saved is not None:
            pred = jnp.asarray(saved)
          elif write_probs is not None:
            probs, pred = predictor.probs(image)
            write_probs(i, probs)
          else:
            pred = predictor(image)
          confusion = metrics.confusion_matrix(*self.score(pred, label, label_relabeled), k)
          _put(results, (i, image, pred, confusion), stop)
      _put(results, None, stop)
    except BaseException as error:  # noqa: BLE001 (raised again in the main thread)
      _put(results, error, stop)

  def predictions(
    self, todo: Sequence[Sequence[int]], write_probs=None
  ) -> Iterator[tuple[int, np.ndarray, jax.Array, np.ndarray]]:
    """(index, image, prediction, int64 confusion matrix) of the images todo[j] on local device j,
    as they finish; the images are read ahead in threads. `write_probs(index, probabilities)`
    runs in the device's thread."""
    results = queue.Queue(maxsize=2 * len(todo))
    stop = threading.Event()
    threads = [
      threading.Thread(
        target=self._work, args=(predictor, indices, results, stop, write_probs), daemon=True
      )
      for predictor, indices in zip(self.predictors, todo, strict=True)
    ]
    for thread in threads:
      thread.start()
    try:
      running = len(threads)
      while running:
        item = results.get()
        if item is None:
          running -= 1
        elif isinstance(item, BaseException):
          raise item
        else:
          i, image, pred, confusion = item
          yield i, image, pred, np.asarray(confusion, np.int64)
    finally:
      stop.set()
      for thread in threads:
        thread.join()

  def run(
    self,
    save_dir=None,
    *,
    save_predictions: bool = False,
    save_overlays: bool = False,
    save_probabilities: str | None = None,
  ) -> dict:
    """The results (JSON-able dict) on every process; with `save_dir` saved there and resumable
    (`Progress`).

    `save_predictions` writes gray/<stem>.png (the raw prediction in the evaluation taxonomy),
    `save_overlays` overlay/<stem>.jpg, `save_probabilities` ("max" or "full")
    `confidence.write_probabilities`' files, each by the process that predicted the image.
    """
    if (save_predictions or save_overlays or save_probabilities) and save_dir is None:
      raise ValueError("save_predictions / save_overlays / save_probabilities need a save_dir")
    if save_probabilities and isinstance(self.predictors[0], SavedPredictions):
      raise ValueError("saved predictions have no probabilities to save")
    progress = Progress(save_dir, self.key)
    finished = progress.finished()
    if _all_processes(finished is not None):
      return finished
    for sub, wanted in (("gray", save_predictions), ("overlay", save_overlays)):
      if wanted:
        (progress.save_dir / sub).mkdir(exist_ok=True)
    names = list(self.regime.class_names)
    n = len(self.records)
    states = progress.resume()
    done, confusion = states.pop(
      jax.process_index(), (np.zeros(n, bool), np.zeros((len(names), len(names) + 1), np.int64))
    )
    skip = np.logical_or.reduce([done] + [d for d, _ in states.values()])
    slot = {p.device: j for j, p in enumerate(self.predictors)}
    todo = [[] for _ in self.predictors]
    for i in np.flatnonzero(~skip):
      device = self.devices[i % len(self.devices)]
      if device in slot:
        todo[slot[device]].append(int(i))
    last_save = time.monotonic()
    process = "" if jax.process_count() == 1 else f" [process {jax.process_index()}]"
    bar = tqdm.tqdm(
      total=int(done.sum()) + sum(map(len, todo)),
      initial=int(done.sum()),
      desc=f"{self.spec.dataset} {self.spec.base_size}{process}",
      unit="img",
      dynamic_ncols=True,
    )
    write_probs = None
    if save_probabilities:

      def write_probs(i, probs):
        stem = prediction_stem(self.records[i].image, self.spec.dataset)
        confidence.write_probabilities(progress.save_dir, stem, probs, save_probabilities)

    try:
      for i, image, pred, counted in self.predictions(todo, write_probs):
        confusion += counted
        done[i] = True
        if save_predictions or save_overlays:
          stem = prediction_stem(self.records[i].image, self.spec.dataset)
          pred = np.asarray(pred)
          if save_predictions:
            cv2.imwrite(str(progress.save_dir / "gray" / f"{stem}.png"), pred)
          if save_overlays:
            canvas = visualize.overlay_with_legend(image, pred, names)
            path = progress.save_dir / "overlay" / f"{stem}.jpg"
            cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        bar.update()
        if time.monotonic() - last_save > SAVE_EVERY_S:
          progress.save(done, confusion)
          last_save = time.monotonic()
    except KeyboardInterrupt:
      progress.save(done, confusion)
      raise
    finally:
      bar.close()
    masks, confusion = _gather(done, confusion)
    # Files of processes this run lacks (an earlier run had more): counted once, by the primary.
    absent = [s for p, s in states.items() if p >= jax.process_count()]
    if jax.process_index() == 0:
      masks = np.concatenate([masks] + [d[None] for d, _ in absent])
      confusion = confusion + sum(c for _, c in absent)
    wrong = np.flatnonzero(masks.sum(axis=0) != 1) if jax.process_index() == 0 else ()
    if not _all_processes(len(wrong) == 0):
      raise RuntimeError(
        f"{self.spec.dataset}: images {list(wrong[:10])} (as the primary process counts) were "
        f"not counted once; partial files in {progress.save_dir} on another host's disk?"
      )
    result = make_result(self.key, names, self.regime.excluded, confusion)
    progress.finish(result, confusion)
    return result


def merge(run_dir: str | Path) -> dict:
  """Sums the confusion matrices of the jobs' shares of a list (part_<start>-<stop>/ in `run_dir`,
  from --index-start/--index-step) into run_dir's results (as one run over the whole list);
  checks that the shares are the same evaluation and cover the list once."""
  run_dir = Path(run_dir)
  paths = sorted(run_dir.glob("part_*/results.json"))
  if not paths:
    raise FileNotFoundError(f"{run_dir}: no part_*/results.json to merge")
  parts = sorted(
    ((json.loads(p.read_text()), p.parent) for p in paths), key=lambda part: part[0]["images"]
  )
  confusion = sum(np.load(part_dir / "confusion.npy") for _, part_dir in parts)
  first = parts[0][0]
  varying = set(metrics.scores(confusion)) | {"images", "num_images"}
  same = {k: v for k, v in first.items() if k not in varying}
  stop = 0
  for result, part_dir in parts:
    if {k: v for k, v in result.items() if k not in varying} != same:
      raise ValueError(f"{part_dir} is not the evaluation of {parts[0][1]} (other settings)")
    start = result["images"][0]
    if start > stop:
      raise ValueError(f"{run_dir}: images {stop} to {start} of {first['list_images']} are missing")
    if start < stop:
      raise ValueError(f"{run_dir}: images {start} to {stop} are in two parts ({part_dir})")
    stop = result["images"][1]
  if stop != first["list_images"]:
    raise ValueError(f"{run_dir}: images {stop} to {first['list_images']} are missing")
  key = {k: v for k, v in same.items() if k not in ("class_names", "excluded_ids")}
  key |= {"images": [0, stop], "num_images": stop}
  result = make_result(key, first["class_names"], first["excluded_ids"], confusion)
  Progress(run_dir, key).finish(result, confusion)
  return result


def collect(out_dir: Path) -> list[dict]:
  """Every results.json under out_dir/<dataset>/<base size>/<ss|ms>/."""
  return [json.loads(p.read_text()) for p in sorted(out_dir.glob("*/*/*/results.json"))]


def write_report(results: list[dict], out_dir: Path) -> str:
  """results.json ({"paper": paper-layout rows, "results": every evaluation}), results.md
  (paper table, one row per evaluation, per-class IoU tables) and results.tex (the paper table
  in LaTeX); returns the markdown."""
  text = (
    "## mIoU (x100), paper layout, best of base sizes\n\n"
    + metrics.markdown_table(results)
    + "\n## Per evaluation\n\nmIoU is the official mean over all classes (absent = 0); "
    "'present classes' averages only the classes in the ground truth or prediction.\n\n"
    + metrics.dataset_table(results)
    + "\n## Per-class IoU\n\n"
    + "\n".join(metrics.class_iou_table(r) for r in results)
  )
  summary = {"paper": metrics.paper_rows(results), "results": results}
  (out_dir / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
  (out_dir / "results.md").write_text(text)
  (out_dir / "results.tex").write_text(metrics.latex_table(results))
  return text


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  source = parser.add_mutually_exclusive_group()
  source.add_argument("--checkpoint", help="model dir (models.save_checkpoint)")
  source.add_argument(
    "--predictions",
    metavar="DIR",
    help="score the label maps saved as DIR/<stem>.png (one dataset and base size; needs "
    "--output-dir) instead of running a model",
  )
  parser.add_argument("--datasets", help="comma-separated dataset names")
  parser.add_argument("--data-root", help="root of the mseg_dataset folders")
  parser.add_argument(
    "--roots",
    type=catalog.parse_roots,
    default=None,
    help="per-dataset root overrides: name=path[,name=path...] (absolute or relative to "
    "--data-root)",
  )
  parser.add_argument(
    "--base-size",
    type=int,
    nargs="+",
    default=[360],
    help="one or more of 360 720 1080 (the table takes the best)",
  )
  parser.add_argument("--scales", choices=("ss", "ms"), default="ss")
  parser.add_argument("--crop", type=int, default=713)
  parser.add_argument("--regime", choices=regimes.REGIMES, default="zero_shot")
  parser.add_argument(
    "--relabeled",
    action="store_true",
    help="training regime, model trained on relabeled data: score against "
    "<dataset>-relabeled's labels with the official reward/penalty rule "
    "(--datasets names the unrelabeled datasets)",
  )
  parser.add_argument(
    "--lists-dir",
    help="read <lists dir>/<dataset>/list/val.txt (default: <data root>/dataset_lists; "
    "or mseg-api's mseg/dataset_lists)",
  )
  parser.add_argument("--output-dir", help="default: <checkpoint>/eval")
  parser.add_argument(
    "--batch-size",
    type=int,
    default=None,
    help="windows per network call (default 8 on GPU/TPU, 1 on CPU: faster there)",
  )
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--limit", type=int, help="evaluate only the first N images")
  parser.add_argument(
    "--index-start", type=int, default=0, help="this job evaluates images from this one on"
  )
  parser.add_argument(
    "--index-step",
    type=int,
    default=0,
    help="this job evaluates this many images (0: to the end of the list); merge with --merge",
  )
  parser.add_argument(
    "--merge",
    action="store_true",
    help="sum the confusion matrices of the --index-start/--index-step jobs under --output-dir "
    "into their evaluations' results and write the tables (needs only --output-dir)",
  )
  parser.add_argument("--save-predictions", action="store_true", help="gray/<stem>.png")
  parser.add_argument("--save-overlays", action="store_true", help="overlay/<stem>.jpg")
  confidence.add_argument(parser)
  parser.add_argument(
    "--model-name",
    help="row label in the tables (default: the name the checkpoint records, e.g. the training "
    "run's; with --predictions the folder's name)",
  )
  parser.add_argument(
    "--distributed",
    action="store_true",
    help="one of several processes: jax.distributed.initialize (cluster auto-detected, "
    "or the three options below)",
  )
  parser.add_argument("--coordinator-address", help="HOST:PORT of process 0")
  parser.add_argument("--num-processes", type=int)
  parser.add_argument("--process-id", type=int)
  args = parser.parse_args(argv)

  if args.merge:
    if not args.output_dir:
      parser.error("--merge needs --output-dir")
    out_dir = Path(args.output_dir)
    for run_dir in sorted({p.parent for p in out_dir.glob("*/*/*/part_*")}):
      result = merge(run_dir)
      print(f"{run_dir.relative_to(out_dir)}: merged, mIoU {100 * result['miou']:.2f}")
    print(write_report(collect(out_dir), out_dir).split("\n## Per-class")[0])
    return
  required = {"--checkpoint or --predictions": args.checkpoint or args.predictions}
  required |= {"--datasets": args.datasets, "--data-root": args.data_root}
  if missing := [flag for flag, value in required.items() if value is None]:
    parser.error(f"the following arguments are required: {', '.join(missing)}")
  datasets = args.datasets.split(",")
  if args.predictions is not None:
    if not args.output_dir:
      parser.error("--predictions needs --output-dir")
    if len(datasets) != 1 or len(args.base_size) != 1:
      parser.error("--predictions scores one dataset at one base size")
    if args.save_probabilities:
      parser.error("--predictions has no probabilities to save")
  if args.distributed or args.coordinator_address:
    jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  primary = jax.process_index() == 0
  if args.predictions is not None:
    model = variables = model_taxonomy = None
    name = args.model_name or Path(args.predictions).absolute().name
  else:
    model, variables = models.load_checkpoint(args.checkpoint)
    info = models.checkpoint_info(args.checkpoint)
    model_taxonomy, name = info.taxonomy, args.model_name or info.name
    if model_taxonomy is None and primary:
      print(
        f"note: {args.checkpoint} records no taxonomy and its class count is ambiguous; "
        "checking the class count only"
      )
  out_dir = Path(args.output_dir) if args.output_dir else Path(args.checkpoint) / "eval"
  batch_size = args.batch_size or (1 if jax.default_backend() == "cpu" else 8)
  run_name = args.scales + ("_relabeled" if args.relabeled else "")
  shares = False
  try:
    with sigterm_interrupts():
      for dataset in datasets:
        for base_size in args.base_size:
          spec = Spec(
            dataset,
            regime=args.regime,
            relabeled=args.relabeled,
            base_size=base_size,
            scales=inference.scales_from_name(args.scales),
            crop=args.crop,
            dtype=args.dtype,
            limit=args.limit,
            index_start=args.index_start,
            index_step=args.index_step,
            model=name,
          )
          try:
            evaluator = Evaluator(
              model,
              variables,
              spec,
              args.data_root,
              roots=args.roots,
              lists_dir=args.lists_dir,
              batch_size=batch_size,
              model_taxonomy=model_taxonomy,
              predictions_dir=args.predictions,
            )
          except (ValueError, FileNotFoundError) as e:
            parser.error(str(e))
          save_dir = evaluator.save_dir(out_dir)
          shares |= evaluator.is_share
          try:
            result = evaluator.run(
              save_dir,
              save_predictions=args.save_predictions,
              save_overlays=args.save_overlays,
              save_probabilities=args.save_probabilities,
            )
          except sources.InputError as e:
            sys.exit(f"mseg_jax.evaluate: error: {e}")
          if primary:
            share = f" images {evaluator.share}" if evaluator.is_share else ""
            print(
              f"{dataset} base {base_size} {run_name}{share}: mIoU {100 * result['miou']:.2f} "
              f"(present classes {100 * result['miou_present']:.2f}), "
              f"pixel acc {100 * result['pixel_acc']:.2f}"
            )
  except Terminated:
    print(f"SIGTERM: progress saved under {out_dir}; run the same command to resume")
    sys.exit(128 + signal.SIGTERM)
  if not primary:
    return
  if shares:
    print(
      "One job's share; when all are done: "
      f"python -m mseg_jax.evaluate --merge --output-dir {out_dir}"
    )
  else:
    print(write_report(collect(out_dir), out_dir).split("\n## Per-class")[0])


if __name__ == "__main__":
  main()
