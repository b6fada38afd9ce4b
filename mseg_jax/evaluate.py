"""Evaluates a model on dataset val splits with the official MSeg test-time procedure.

  python -m mseg_jax.evaluate --checkpoint DIR --dataset camvid-11,kitti-19 --data-root ROOT \
      [--base-size 360 720 1080] [--scales ss|ms] [--regime zero_shot|oracle|training] \
      [--relabeled] [--lists-dir mseg-api/mseg/dataset_lists]

Regimes (mseg_semantic/tool/test_*_tax.py): `zero_shot` — a universal model on a test dataset,
probabilities summed into the test taxonomy; `oracle` — a model trained on the dataset's own
taxonomy; `training` — a universal model on a training dataset, the ground truth mapped to
universal ids and the universal classes the dataset cannot contain left out of the mean.
`--relabeled` (training regime, for a model trained on relabeled data; --dataset names the
unrelabeled dataset) also reads the labels of the same lines of `<dataset>-relabeled`'s list and
scores with the official reward/penalty rule (`metrics.relabeled_reward_penalty`).
List files are `<dataset root>/list/val.txt`, or `<lists dir>/<dataset>/list/val.txt` with
--lists-dir (mseg-api's per-taxonomy lists read in place).

Per dataset and base size, OUT/<dataset>/<base size>/<ss|ms>/ (<ss|ms>_relabeled with
--relabeled) gets results.json, classes.md, confusion.npy (rows: ground truth, columns:
prediction, last column: no class) and, with --save-predictions, gray/<stem>.png (the raw
prediction; overlay/ with --save-overlays); an interrupted run resumes from partial.npz there.
OUT/results.{json,md} hold every result found under OUT: the paper-layout table (best of base
sizes, harmonic mean), one row per evaluation, and per-class IoU tables.
"""

import argparse
import collections
import concurrent.futures
import hashlib
import json
import time
from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from mseg_jax import inference, metrics, models, taxonomy, visualize
from mseg_jax.input_pipeline import catalog, sources

REGIMES = ("zero_shot", "oracle", "training")
SAVE_EVERY_S = 60.0  # how often the partial confusion matrix is written


def excluded_universal_ids(dataset: str) -> list[int]:
  """Universal ids the unrelabeled version of a training dataset never maps to (left out of the
  mean, as test_universal_tax.py does)."""
  unrelabeled = dataset.removesuffix("-relabeled")
  lut = taxonomy.to_universal_lut(unrelabeled)
  mapped = set(lut[lut != taxonomy.IGNORE].tolist())
  return [u for u in range(taxonomy.NUM_UNIVERSAL) if u not in mapped]


def regime_setup(regime: str, dataset: str, num_model_classes: int) -> dict:
  """Evaluation taxonomy, output projection, ground-truth LUT and excluded ids of a regime."""
  if regime == "zero_shot":
    if dataset not in taxonomy.TEST_DATASETS:
      raise ValueError(
        f"zero_shot evaluates the test datasets {taxonomy.TEST_DATASETS}, not "
        f"{dataset!r} (use --regime training for a training dataset)"
      )
    if num_model_classes != taxonomy.NUM_UNIVERSAL:
      raise ValueError(
        f"zero_shot needs a universal model ({taxonomy.NUM_UNIVERSAL} classes); "
        f"this one has {num_model_classes} (use --regime oracle)"
      )
    return {
      "class_names": taxonomy.class_names(dataset),
      "projection": taxonomy.projection_matrix(dataset),
      "lut": None,
      "excluded": [],
    }
  if regime == "oracle":
    names = taxonomy.class_names(dataset)
    if num_model_classes != len(names):
      raise ValueError(
        f"oracle needs a model trained on {dataset} ({len(names)} classes); "
        f"this one has {num_model_classes}"
      )
    return {"class_names": names, "projection": None, "lut": None, "excluded": []}
  if regime == "training":
    if dataset not in taxonomy.TRAIN_DATASETS:
      raise ValueError(
        f"the training regime needs one of {taxonomy.TRAIN_DATASETS}, not {dataset!r}"
      )
    if num_model_classes != taxonomy.NUM_UNIVERSAL:
      raise ValueError(
        f"the training regime needs a universal model "
        f"({taxonomy.NUM_UNIVERSAL} classes); this one has {num_model_classes}"
      )
    return {
      "class_names": taxonomy.universal_names(),
      "projection": None,
      "lut": taxonomy.to_universal_lut(dataset),
      "excluded": excluded_universal_ids(dataset),
    }
  raise ValueError(f"unknown regime {regime!r}; choose from {', '.join(REGIMES)}")


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


def _save_prediction(
  save_dir: Path,
  stem: str,
  image: np.ndarray,
  pred: np.ndarray,
  names: list[str],
  gray: bool,
  overlay: bool,
) -> None:
  if gray:
    cv2.imwrite(str(save_dir / "gray" / f"{stem}.png"), pred)
  if overlay:
    canvas = visualize.overlay_with_legend(image, pred, names)
    cv2.imwrite(str(save_dir / "overlay" / f"{stem}.jpg"), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))


def evaluate_dataset(
  model,
  variables,
  dataset: str,
  data_root,
  *,
  roots=None,
  base_size: int = 360,
  scales=(1.0,),
  crop: int = 713,
  regime: str = "zero_shot",
  batch_size: int = 8,
  save_dir=None,
  dtype=jnp.float32,
  limit: int | None = None,
  save_predictions: bool = False,
  save_overlays: bool = False,
  model_name: str = "",
  lists_dir=None,
  relabeled: bool = False,
) -> dict:
  """mIoU etc. of `model` on `dataset`'s list/val.txt (JSON-able dict).

  `lists_dir` reads the list from `<lists_dir>/<dataset>/list/val.txt` (catalog.list_path).
  `relabeled` (training regime; `dataset` is the unrelabeled name) scores a model trained on
  relabeled data: line i of `<dataset>-relabeled`'s val list gives image i's relabeled label,
  and `metrics.relabeled_reward_penalty` rewrites the prediction before it is counted.

  With `save_dir`, results.json, classes.md and confusion.npy are written there, a partial
  confusion matrix is saved periodically and a rerun resumes from it (a finished evaluation
  with the same settings is loaded instead of recomputed); `save_predictions` writes
  gray/<stem>.png (evaluation taxonomy), `save_overlays` overlay/<stem>.jpg.
  """
  if (save_predictions or save_overlays) and save_dir is None:
    raise ValueError("save_predictions / save_overlays need a save_dir")
  setup = regime_setup(regime, dataset, model.config.num_classes)
  names = setup["class_names"]
  own_classes = len(taxonomy.class_names(dataset))
  list_file, records = read_records(data_root, dataset, roots, lists_dir)
  relabeled_labels = [None] * len(records)
  if relabeled:
    if regime != "training":
      raise ValueError(f"relabeled evaluation is part of the training regime, not {regime!r}")
    relabeled_dataset = relabeled_name(dataset)
    relabeled_classes = len(taxonomy.class_names(relabeled_dataset))
    relabeled_lut = jnp.asarray(taxonomy.to_universal_lut(relabeled_dataset))
    relabeled_file, relabeled_records = read_records(data_root, relabeled_dataset, roots, lists_dir)
    if len(relabeled_records) != len(records):
      raise ValueError(
        f"{relabeled_file} has {len(relabeled_records)} lines, {list_file} "
        f"{len(records)}; line i of both must be the same image"
      )
    for (image_path, _), (relabeled_image, _) in zip(records, relabeled_records, strict=True):
      if image_path.name != relabeled_image.name:
        raise ValueError(
          f"{relabeled_file}: {relabeled_image.name} is not {image_path.name}, "
          f"the image of the same line of {list_file}"
        )
    relabeled_labels = [label_path for _, label_path in relabeled_records]
  if limit is not None:
    records, relabeled_labels = records[:limit], relabeled_labels[:limit]
  settings = {
    "dataset": dataset,
    "regime": regime,
    "relabeled": bool(relabeled),
    "base_size": int(base_size),
    "scales": [float(s) for s in scales],
    "crop": int(crop),
    "split": "val",
    "num_images": len(records),
    "model": model_name,
    "model_fingerprint": _fingerprint(variables),
    "dtype": jnp.dtype(dtype).name,
  }

  save_dir = None if save_dir is None else Path(save_dir)
  done, initial = 0, None
  if save_dir is not None:
    save_dir.mkdir(parents=True, exist_ok=True)
    results_file = save_dir / "results.json"
    if results_file.is_file():
      previous = json.loads(results_file.read_text())
      if all(previous.get(k) == v for k, v in settings.items()):
        return previous
    partial = save_dir / "partial.npz"
    if partial.is_file():
      state = np.load(partial)
      if json.loads(str(state["settings"])) == settings:
        done, initial = int(state["done"]), state["confusion"]
    for sub, wanted in (("gray", save_predictions), ("overlay", save_overlays)):
      if wanted:
        (save_dir / sub).mkdir(exist_ok=True)

  predictor = inference.Predictor(
    model,
    variables,
    base_size=base_size,
    scales=scales,
    crop=crop,
    projection=setup["projection"],
    batch_size=batch_size,
    dtype=dtype,
  )
  accumulator = metrics.ConfusionAccumulator(len(names), initial)
  lut = None if setup["lut"] is None else jnp.asarray(setup["lut"])

  def load(record):
    (image_path, label_path), relabeled_path = record
    image, label = sources.load_image(image_path), sources.load_label(label_path)
    sources.check_pair(image, label, label_path, own_classes)
    label_relabeled = None
    if relabeled_path is not None:
      label_relabeled = sources.load_label(relabeled_path)
      sources.check_pair(image, label_relabeled, relabeled_path, relabeled_classes)
    return image_path, image, label, label_relabeled

  def save_partial(count: int) -> None:
    tmp = save_dir / "partial.tmp.npz"
    np.savez(tmp, confusion=accumulator.result(), done=count, settings=json.dumps(settings))
    tmp.replace(save_dir / "partial.npz")

  last_save, processed = time.monotonic(), done
  bar = tqdm.tqdm(
    total=len(records), initial=done, desc=f"{dataset} {base_size}", unit="img", dynamic_ncols=True
  )
  try:
    pairs = list(zip(records, relabeled_labels, strict=True))[done:]
    for image_path, image, label, label_relabeled in _prefetched(load, pairs):
      pred = predictor(image)
      target = jnp.asarray(label)
      if lut is not None:
        target = taxonomy.remap_labels(target, lut)
      if label_relabeled is None:
        accumulator.update(pred, target)
      else:
        target_relabeled = taxonomy.remap_labels(jnp.asarray(label_relabeled), relabeled_lut)
        accumulator.update(*metrics.relabeled_reward_penalty(pred, target, target_relabeled))
      processed += 1
      if save_predictions or save_overlays:
        _save_prediction(
          save_dir,
          prediction_stem(image_path, dataset),
          image,
          np.asarray(pred),
          names,
          save_predictions,
          save_overlays,
        )
      bar.update()
      if save_dir is not None and time.monotonic() - last_save > SAVE_EVERY_S:
        save_partial(processed)
        last_save = time.monotonic()
  except KeyboardInterrupt:
    if save_dir is not None:
      save_partial(processed)
    raise
  finally:
    bar.close()

  confusion = accumulator.result()
  result = dict(
    settings,
    class_names=names,
    excluded_ids=setup["excluded"],
    **metrics.scores(confusion, setup["excluded"]),
  )
  if save_dir is not None:
    np.save(save_dir / "confusion.npy", confusion)
    (save_dir / "classes.md").write_text(metrics.class_iou_table(result))
    (save_dir / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (save_dir / "partial.npz").unlink(missing_ok=True)
  return result


def collect(out_dir: Path) -> list[dict]:
  """Every results.json under out_dir/<dataset>/<base size>/<ss|ms>/."""
  return [json.loads(p.read_text()) for p in sorted(out_dir.glob("*/*/*/results.json"))]


def write_report(results: list[dict], out_dir: Path) -> str:
  """results.json ({"paper": paper-layout rows, "results": every evaluation}) and results.md
  (paper table, one row per evaluation, per-class IoU tables); returns the markdown."""
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
  return text


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True, help="model dir (models.save_checkpoint)")
  parser.add_argument("--dataset", required=True, help="comma-separated dataset names")
  parser.add_argument("--data-root", required=True, help="root of the mseg_dataset folders")
  parser.add_argument(
    "--root",
    action="append",
    default=[],
    metavar="NAME=PATH",
    help="dataset root override (absolute or relative to --data-root)",
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
  parser.add_argument("--regime", choices=REGIMES, default="zero_shot")
  parser.add_argument(
    "--relabeled",
    action="store_true",
    help="training regime, model trained on relabeled data: score against "
    "<dataset>-relabeled's labels with the official reward/penalty rule "
    "(--dataset names the unrelabeled datasets)",
  )
  parser.add_argument(
    "--lists-dir",
    help="read <lists dir>/<dataset>/list/val.txt (mseg-api's "
    "mseg/dataset_lists) instead of <dataset root>/list/val.txt",
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
  parser.add_argument("--model-name", help="row label in the tables (default: checkpoint name)")
  args = parser.parse_args(argv)

  roots = dict(r.split("=", 1) for r in args.root) or None
  checkpoint = Path(args.checkpoint)
  out_dir = Path(args.out_dir) if args.out_dir else checkpoint / "eval"
  batch_size = args.batch_size or (2 if jax.default_backend() == "cpu" else 8)
  model_name = args.model_name or checkpoint.absolute().name
  model, variables = models.load_checkpoint(checkpoint)
  run_name = args.scales + ("_relabeled" if args.relabeled else "")
  for dataset in args.dataset.split(","):
    for base_size in args.base_size:
      result = evaluate_dataset(
        model,
        variables,
        dataset,
        args.data_root,
        roots=roots,
        base_size=base_size,
        scales=inference.scales_from_name(args.scales),
        crop=args.crop,
        regime=args.regime,
        batch_size=batch_size,
        save_dir=out_dir / dataset / str(base_size) / run_name,
        dtype=jnp.dtype(args.dtype),
        limit=args.limit,
        save_predictions=args.save_predictions,
        save_overlays=args.save_overlays,
        model_name=model_name,
        lists_dir=args.lists_dir,
        relabeled=args.relabeled,
      )
      print(
        f"{dataset} base {base_size} {run_name}: mIoU {100 * result['miou']:.2f} "
        f"(present classes {100 * result['miou_present']:.2f}), "
        f"pixel acc {100 * result['pixel_acc']:.2f}"
      )
  print(write_report(collect(out_dir), out_dir).split("\n## Per-class")[0])


if __name__ == "__main__":
  main()
