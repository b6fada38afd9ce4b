"""Evaluates a model on dataset val splits with the official MSeg test-time procedure.

  python -m mseg_jax.evaluate --checkpoint DIR --datasets camvid-11,kitti-19 --data-root ROOT \
      [--base-size 360 720 1080] [--scales ss|ms] [--regime zero_shot|oracle|training|naive] \
      [--relabeled] [--lists-dir mseg-api/mseg/dataset_lists] [--roots NAME=PATH,...]
  python -m mseg_jax.evaluate --predictions DIR --datasets camvid-11 --data-root ROOT  # no model

Regimes: see mseg_jax/regimes.py. The model's taxonomy (recorded in its checkpoint) must be the
regime's: universal for zero_shot and training, naive for naive, the dataset's own for oracle.
`--predictions DIR` scores label maps saved as DIR/<stem>.png (in the evaluation taxonomy, as
--save-predictions writes them; the official `has_prediction` path) instead of running a model.
`--relabeled` (training regime, for a model trained on relabeled data; --datasets names the
unrelabeled datasets) also reads the labels of the same lines of `<dataset>-relabeled`'s list
and scores with the official reward/penalty rule (`metrics.relabeled_reward_penalty`).
List files are `<lists dir>/<dataset>/list/val.txt`, where --lists-dir defaults to
`<data root>/dataset_lists` (written by `python -m mseg_jax.prepare lists`); point it at
mseg-api's `mseg/dataset_lists` to read those in place.

Per dataset and base size, OUT/<dataset>/<base size>/<ss|ms>/ (<ss|ms>_relabeled with
--relabeled) gets results.json, results.txt (the official line format), classes.md,
confusion.npy (rows: ground truth, columns: prediction, last column: no class) and, with
--save-predictions, gray/<stem>.png (the raw prediction; overlay/ with --save-overlays;
confidence/ and probabilities/ with --save-probabilities, see `confidence.py`). An interrupted
run (Ctrl-C or SIGTERM) resumes from partial.npz there. OUT/results.{json,md,tex} hold every
result found under OUT: the paper-layout table (best of base sizes; harmonic, arithmetic and
geometric means), one row per evaluation, and per-class IoU tables.
"""

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

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
  model: str = ""  # row label in the tables

  def key(self, num_images: int, model_fingerprint: str) -> dict:
    """The JSON-able resume key (`limit` is in `num_images`)."""
    return {
      "dataset": self.dataset,
      "regime": self.regime,
      "relabeled": bool(self.relabeled),
      "base_size": int(self.base_size),
      "scales": [float(s) for s in self.scales],
      "crop": int(self.crop),
      "split": "val",
      "num_images": num_images,
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


class Progress:
  """The saved state of an evaluation in `save_dir` (None: nothing is saved or resumed).

  partial.npz holds the images done and their confusion matrix; results.json, results.txt,
  classes.md and confusion.npy the finished evaluation. Both are used only for the same `key`.
  """

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

  def resume(self) -> tuple[int, np.ndarray | None]:
    """(images done, their confusion matrix) of an interrupted evaluation with this key."""
    path = None if self.save_dir is None else self.save_dir / "partial.npz"
    if path is None or not path.is_file():
      return 0, None
    state = np.load(path)
    if json.loads(str(state["settings"])) != self.key:
      return 0, None
    return int(state["done"]), state["confusion"]

  def save(self, done: int, confusion: np.ndarray) -> None:
    if self.save_dir is None:
      return
    tmp = self.save_dir / "partial.tmp.npz"
    np.savez(tmp, confusion=confusion, done=done, settings=json.dumps(self.key))
    tmp.replace(self.save_dir / "partial.npz")

  def finish(self, result: dict, confusion: np.ndarray) -> None:
    if self.save_dir is None:
      return
    np.save(self.save_dir / "confusion.npy", confusion)
    (self.save_dir / "classes.md").write_text(metrics.class_iou_table(result))
    (self.save_dir / "results.txt").write_text(metrics.results_txt(result))
    (self.save_dir / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (self.save_dir / "partial.npz").unlink(missing_ok=True)


class Evaluator:
  """mIoU etc. of a model on a dataset's val split (`spec`), with the official procedure.

  The constructor checks the regime and the model's taxonomy (`model_taxonomy`, None: unknown),
  reads and pairs the list files and picks the scoring rule; `run` predicts and scores.
  `lists_dir` reads the lists from `<lists_dir>/<dataset>/list/` (catalog.list_path). With
  `predictions_dir` (model and variables None) the label maps saved there as <stem>.png are
  scored instead of a model's.
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
    model_taxonomy: str | None = None,
    predictions_dir: str | Path | None = None,
  ):
    self.spec = spec
    self.predictions_dir = None if predictions_dir is None else Path(predictions_dir).absolute()
    if self.predictions_dir is None:
      check_model_taxonomy(spec.regime, spec.dataset, model_taxonomy)
      num_model_classes = model.config.num_classes
    else:
      if not self.predictions_dir.is_dir():
        raise FileNotFoundError(f"{self.predictions_dir}: no such predictions folder")
      num_model_classes = outputs.num_outputs(model_taxonomy_for(spec.regime, spec.dataset))
    self.regime = regimes.make_regime(spec.regime, spec.dataset, num_model_classes)
    if spec.relabeled and spec.regime != "training":
      raise ValueError(f"relabeled evaluation is part of the training regime, not {spec.regime!r}")
    self.score = scoring_rule(self.regime, spec.dataset, spec.relabeled)
    records = paired_records(data_root, spec.dataset, spec.relabeled, roots, lists_dir)
    self.records = records[: spec.limit]
    fingerprint = (
      _fingerprint(variables)
      if self.predictions_dir is None
      else _folder_fingerprint(self.predictions_dir)
    )
    self.key = spec.key(len(self.records), fingerprint)
    # Label ids a (relabeled) label may hold.
    self.label_classes = len(taxonomy.class_names(spec.dataset))
    if spec.relabeled:
      self.relabeled_classes = len(taxonomy.class_names(relabeled_name(spec.dataset)))
    self.predictor = None
    if self.predictions_dir is None:
      self.predictor = inference.Predictor(
        model,
        variables,
        base_size=spec.base_size,
        scales=spec.scales,
        crop=spec.crop,
        projection=self.regime.projection,
        predictable=self.regime.predictable,
        batch_size=batch_size,
        dtype=jnp.dtype(spec.dtype),
      )

  def _load(
    self, record: Record
  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    image, label = sources.load_image(record.image), sources.load_label(record.label)
    sources.check_pair(image, label, record.label, self.label_classes)
    label_relabeled = None
    if record.relabeled_label is not None:
      label_relabeled = sources.load_label(record.relabeled_label)
      sources.check_pair(image, label_relabeled, record.relabeled_label, self.relabeled_classes)
    saved = None
    if self.predictions_dir is not None:
      path = self.predictions_dir / f"{prediction_stem(record.image, self.spec.dataset)}.png"
      saved = load_prediction(path, label.shape, len(self.regime.class_names))
    return image, label, label_relabeled, saved

  def predictions(self, start: int = 0) -> Iterator[tuple]:
    """(record, image, prediction, (prediction, target) to count, probabilities or None) from
    image `start` on; the images (and saved predictions) are read ahead in a thread."""
    records = self.records[start:]
    loaded = _prefetched(self._load, records)
    for record, (image, label, label_relabeled, saved) in zip(records, loaded, strict=True):
      if saved is None:
        probs, pred = self.predictor.probs(image)
      else:
        probs, pred = None, jnp.asarray(saved)
      yield record, image, pred, self.score(pred, label, label_relabeled), probs

  def run(
    self,
    save_dir=None,
    *,
    save_predictions: bool = False,
    save_overlays: bool = False,
    save_probabilities: str | None = None,
  ) -> dict:
    """The results (JSON-able dict); with `save_dir` saved there and resumable (`Progress`).

    `save_predictions` writes gray/<stem>.png (the raw prediction in the evaluation taxonomy),
    `save_overlays` overlay/<stem>.jpg, `save_probabilities` ("max" or "full")
    `confidence.write_probabilities`' files.
    """
    if (save_predictions or save_overlays or save_probabilities) and save_dir is None:
      raise ValueError("save_predictions / save_overlays / save_probabilities need a save_dir")
    if save_probabilities and self.predictor is None:
      raise ValueError("saved predictions have no probabilities to save")
    progress = Progress(save_dir, self.key)
    finished = progress.finished()
    if finished is not None:
      return finished
    for sub, wanted in (("gray", save_predictions), ("overlay", save_overlays)):
      if wanted:
        (progress.save_dir / sub).mkdir(exist_ok=True)
    done, initial = progress.resume()
    names = list(self.regime.class_names)
    accumulator = metrics.ConfusionAccumulator(len(names), initial)
    last_save = time.monotonic()
    bar = tqdm.tqdm(
      total=len(self.records),
      initial=done,
      desc=f"{self.spec.dataset} {self.spec.base_size}",
      unit="img",
      dynamic_ncols=True,
    )
    try:
      for record, image, pred, counted, probs in self.predictions(done):
        accumulator.update(*counted)
        done += 1
        stem = prediction_stem(record.image, self.spec.dataset)
        if save_probabilities:
          confidence.write_probabilities(progress.save_dir, stem, probs, save_probabilities)
        if save_predictions or save_overlays:
          pred = np.asarray(pred)
          if save_predictions:
            cv2.imwrite(str(progress.save_dir / "gray" / f"{stem}.png"), pred)
          if save_overlays:
            canvas = visualize.overlay_with_legend(image, pred, names)
            path = progress.save_dir / "overlay" / f"{stem}.jpg"
            cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        bar.update()
        if time.monotonic() - last_save > SAVE_EVERY_S:
          progress.save(done, accumulator.result())
          last_save = time.monotonic()
    except KeyboardInterrupt:
      progress.save(done, accumulator.result())
      raise
    finally:
      bar.close()
    confusion = accumulator.result()
    result = dict(
      self.key,
      class_names=names,
      excluded_ids=list(self.regime.excluded),
      **metrics.scores(confusion, self.regime.excluded),
    )
    progress.finish(result, confusion)
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
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--checkpoint", help="model dir (models.save_checkpoint)")
  source.add_argument(
    "--predictions",
    metavar="DIR",
    help="score the label maps saved as DIR/<stem>.png (one dataset and base size; needs "
    "--out-dir) instead of running a model",
  )
  parser.add_argument("--datasets", required=True, help="comma-separated dataset names")
  parser.add_argument("--data-root", required=True, help="root of the mseg_dataset folders")
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
  parser.add_argument("--out-dir", help="default: <checkpoint>/eval")
  parser.add_argument(
    "--batch-size",
    type=int,
    default=None,
    help="windows per network call (default 8 on GPU/TPU, 2 on CPU)",
  )
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--limit", type=int, help="evaluate only the first N images")
  parser.add_argument("--save-predictions", action="store_true", help="gray/<stem>.png")
  parser.add_argument("--save-overlays", action="store_true", help="overlay/<stem>.jpg")
  parser.add_argument(
    "--save-probabilities",
    nargs="?",
    const="max",
    choices=confidence.MODES,
    help="confidence/<stem>.png: the max probability x 255; 'full' adds "
    "probabilities/<stem>.npz (float16 (H, W, K))",
  )
  parser.add_argument(
    "--model-name",
    help="row label in the tables (default: the name the checkpoint records, e.g. the training "
    "run's; with --predictions the folder's name)",
  )
  args = parser.parse_args(argv)

  datasets = args.datasets.split(",")
  if args.predictions is not None:
    if not args.out_dir:
      parser.error("--predictions needs --out-dir")
    if len(datasets) != 1 or len(args.base_size) != 1:
      parser.error("--predictions scores one dataset at one base size")
    if args.save_probabilities:
      parser.error("--predictions has no probabilities to save")
    model = variables = model_taxonomy = None
    name = args.model_name or Path(args.predictions).absolute().name
  else:
    model, variables = models.load_checkpoint(args.checkpoint)
    info = models.checkpoint_info(args.checkpoint)
    model_taxonomy, name = info.taxonomy, args.model_name or info.name
    if model_taxonomy is None:
      print(
        f"note: {args.checkpoint} records no taxonomy and its class count is ambiguous; "
        "checking the class count only"
      )
  out_dir = Path(args.out_dir) if args.out_dir else Path(args.checkpoint) / "eval"
  batch_size = args.batch_size or (2 if jax.default_backend() == "cpu" else 8)
  run_name = args.scales + ("_relabeled" if args.relabeled else "")
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
          try:
            result = evaluator.run(
              out_dir / dataset / str(base_size) / run_name,
              save_predictions=args.save_predictions,
              save_overlays=args.save_overlays,
              save_probabilities=args.save_probabilities,
            )
          except sources.InputError as e:
            sys.exit(f"mseg_jax.evaluate: error: {e}")
          print(
            f"{dataset} base {base_size} {run_name}: mIoU {100 * result['miou']:.2f} "
            f"(present classes {100 * result['miou_present']:.2f}), "
            f"pixel acc {100 * result['pixel_acc']:.2f}"
          )
  except Terminated:
    print(f"SIGTERM: progress saved under {out_dir}; run the same command to resume")
    sys.exit(128 + signal.SIGTERM)
  print(write_report(collect(out_dir), out_dir).split("\n## Per-class")[0])


if __name__ == "__main__":
  main()
