"""Segments an image, a directory of images or a video with the official test-time procedure.

  python -m mseg_jax.demo --checkpoint DIR --input IMAGE|DIR|VIDEO --output-dir OUT \
      [--taxonomy universal|naive|<dataset>] [--classes person,car,road] \
      [--save-probabilities [full]] [--base-size 360] [--scales ms] [--crop 713]

The taxonomy is the model's own (universal, naive for a naive-merge model, or a dataset's), or
a test dataset's for a universal or naive-merge model (regimes.output_regime). Writes
OUT/gray/<stem>.png (label maps in that taxonomy, lossless: uint8, or uint16 past 256 classes
as in the naive taxonomy) and OUT/overlay/<stem>.jpg (colour overlay with a legend of the
classes present). A video gives
OUT/gray/<stem>_<frame>.png per frame and OUT/<stem>_overlay.mp4. Defaults are the official
demo's (base size 360, multi-scale, crop 713) and the model's own taxonomy (recorded in its
checkpoint; universal for the released models). `--single-crop N` is the official batched demo
(`universal_demo_batched.py`): one crop per frame, N frames per call.

A universal model also predicts in a test dataset's classes (the zero-shot projection: the
probabilities of the universal classes that make up a test class are summed) and in a training
dataset's (`outputs.training_projection`: each universal class feeds the dataset class that maps
to it; where several do, only the one named like the universal class, else the lowest id, is
ever predicted; the demo lists these). `--classes` keeps the named classes of the output
taxonomy (ids 0.. in the given order) and turns every other predicted class into "other" (the
last id) after the argmax, so kept pixels are the ones the full taxonomy predicts.
`--save-probabilities` writes confidence/ (and probabilities/ with 'full', see `confidence.py`)
in the output taxonomy, before --classes.
"""

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from mseg_jax import confidence, inference, models, regimes, single_crop, taxonomy, visualize
from mseg_jax.input_pipeline import sources
from mseg_jax.taxonomy import outputs

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


class DemoInputError(ValueError):
  """An input that is missing, of an unknown kind, or unreadable."""


def list_images(directory: Path) -> list[Path]:
  """Image files under `directory` (recursive, sorted)."""
  images = sorted(
    p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
  )
  if not images:
    raise DemoInputError(f"{directory}: no images ({', '.join(IMAGE_SUFFIXES)}) in directory")
  return images


def video_frames(path: Path) -> Iterator[np.ndarray]:
  """RGB uint8 frames of a video."""
  capture = cv2.VideoCapture(str(path))
  if not capture.isOpened():
    raise DemoInputError(f"{path}: unreadable video")
  count = 0
  try:
    while True:
      ok, frame = capture.read()
      if not ok:
        break
      count += 1
      yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
  finally:
    capture.release()
  if count == 0:
    raise DemoInputError(f"{path}: unreadable video (no frames decoded)")


def demo_regime(output: str, model_taxonomy: str | None, num_classes: int) -> regimes.Regime:
  """How a model in `model_taxonomy` (None: unknown, an older checkpoint) predicts in `output`:
  as it is, or a universal model through a test or training dataset projection."""
  if model_taxonomy is not None and output != model_taxonomy:
    if model_taxonomy == outputs.UNIVERSAL and output in taxonomy.TRAIN_DATASETS:
      names = tuple(taxonomy.class_names(output))
      return regimes.Regime("projection", names, projection=outputs.training_projection(output))
    if model_taxonomy not in (outputs.UNIVERSAL, outputs.NAIVE):
      raise ValueError(
        f"the model predicts in the {model_taxonomy} taxonomy (its checkpoint records it), "
        f"not in {output}; use --taxonomy {model_taxonomy}"
      )
  return regimes.output_regime(output, num_classes)


def _write(
  out_dir: Path, stem: str, image: np.ndarray, labels: np.ndarray, names: list[str]
) -> None:
  """OUT/gray/<stem>.png (the label map) and OUT/overlay/<stem>.jpg (overlay with a legend)."""
  cv2.imwrite(str(out_dir / "gray" / f"{stem}.png"), labels)
  overlay = visualize.overlay_with_legend(image, labels, names)
  cv2.imwrite(str(out_dir / "overlay" / f"{stem}.jpg"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))


def _predict(predictor, image, out_dir: Path, stem: str, lut, save_probabilities) -> np.ndarray:
  """The label map of `image` (through `lut` if given); writes the probabilities if asked."""
  probs, labels = predictor.probs(image)
  if save_probabilities:
    confidence.write_probabilities(out_dir, stem, probs, save_probabilities)
  labels = np.asarray(labels)
  return labels if lut is None else lut[labels]


def run(
  predictor: inference.Predictor,
  input_path: str | Path,
  out_dir: str | Path,
  class_names: list[str],
  *,
  lut: np.ndarray | None = None,
  save_probabilities: str | None = None,
) -> list[Path]:
  """Segments `input_path` (image, directory or video) into `out_dir`; returns the grey maps.

  `lut` maps the predicted ids to `class_names` (`outputs.subset_lut`); `save_probabilities`
  ("max" or "full") writes `confidence.write_probabilities`' files.
  """
  input_path, out_dir = Path(input_path), Path(out_dir)
  if not input_path.exists():
    raise DemoInputError(f"{input_path}: input not found")
  (out_dir / "gray").mkdir(parents=True, exist_ok=True)
  written = []
  if input_path.is_dir() or input_path.suffix.lower() in IMAGE_SUFFIXES:
    (out_dir / "overlay").mkdir(exist_ok=True)
    if input_path.is_dir():
      images = list_images(input_path)
      stems = ["_".join(p.relative_to(input_path).with_suffix("").parts) for p in images]
    else:
      images, stems = [input_path], [input_path.stem]
    for path, stem in tqdm.tqdm(
      list(zip(images, stems, strict=True)), desc="demo", unit="img", disable=len(images) < 2
    ):
      image = sources.load_image(path)
      labels = _predict(predictor, image, out_dir, stem, lut, save_probabilities)
      _write(out_dir, stem, image, labels, class_names)
      written.append(out_dir / "gray" / f"{stem}.png")
    return written
  if input_path.suffix.lower() not in VIDEO_SUFFIXES:
    raise DemoInputError(
      f"{input_path}: not an image ({', '.join(IMAGE_SUFFIXES)}), a video "
      f"({', '.join(VIDEO_SUFFIXES)}) or a directory"
    )
  capture = cv2.VideoCapture(str(input_path))
  fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
  total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
  capture.release()
  writer = None
  video_out = out_dir / f"{input_path.stem}_overlay.mp4"
  try:
    for i, frame in enumerate(
      tqdm.tqdm(video_frames(input_path), total=total, desc="demo", unit="frame")
    ):
      stem = f"{input_path.stem}_{i:06d}"
      labels = _predict(predictor, frame, out_dir, stem, lut, save_probabilities)
      cv2.imwrite(str(out_dir / "gray" / f"{stem}.png"), labels)
      written.append(out_dir / "gray" / f"{stem}.png")
      overlay = visualize.overlay_with_legend(frame, labels, class_names, fixed_size=True)
      if writer is None:
        writer = cv2.VideoWriter(
          str(video_out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (overlay.shape[1], overlay.shape[0])
        )
      writer.write(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
  finally:
    if writer is not None:
      writer.release()
  return written


def _chunks(items: Iterator, size: int) -> Iterator[list]:
  """Consecutive lists of up to `size` items whose first element's shape is the same."""
  chunk = []
  for item in items:
    if chunk and (len(chunk) == size or item[0].shape != chunk[0][0].shape):
      yield chunk
      chunk = []
    chunk.append(item)
  if chunk:
    yield chunk


def run_single_crop(
  predictor: single_crop.SingleCropPredictor,
  input_path: str | Path,
  out_dir: str | Path,
  class_names: list[str],
  frames_per_call: int,
) -> list[Path]:
  """`run` in the official batched single-crop mode: `frames_per_call` frames (of one size) per
  network call; writes OUT/gray and OUT/overlay per image or frame (no video file)."""
  input_path, out_dir = Path(input_path), Path(out_dir)
  if not input_path.exists():
    raise DemoInputError(f"{input_path}: input not found")
  if input_path.is_dir():
    paths = list_images(input_path)
    stems = ["_".join(p.relative_to(input_path).with_suffix("").parts) for p in paths]
    items = ((sources.load_image(p), stem) for p, stem in zip(paths, stems, strict=True))
    total = len(paths)
  elif input_path.suffix.lower() in VIDEO_SUFFIXES:
    items = ((f, f"{input_path.stem}_{i:06d}") for i, f in enumerate(video_frames(input_path)))
    total = None
  else:
    items, total = iter([(sources.load_image(input_path), input_path.stem)]), 1
  for sub in ("gray", "overlay"):
    (out_dir / sub).mkdir(parents=True, exist_ok=True)
  written = []
  with tqdm.tqdm(total=total, desc="demo (single crop)", unit="img") as bar:
    for chunk in _chunks(items, frames_per_call):
      labels = np.asarray(predictor(np.stack([image for image, _ in chunk])))
      for (image, stem), label in zip(chunk, labels, strict=True):
        _write(out_dir, stem, image, label, class_names)
        written.append(out_dir / "gray" / f"{stem}.png")
      bar.update(len(chunk))
  return written


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True, help="model dir (models.save_checkpoint)")
  parser.add_argument("--input", required=True, help="an image, a directory or a video")
  parser.add_argument("--output-dir", required=True)
  parser.add_argument(
    "--taxonomy",
    help="'universal', 'naive' or a dataset whose classes to predict (e.g. camvid-11, "
    "cityscapes-19); default: the model's own",
  )
  parser.add_argument(
    "--classes",
    help="comma-separated classes of that taxonomy to keep; every other class becomes 'other'",
  )
  confidence.add_argument(parser)
  parser.add_argument("--base-size", type=int, default=360)
  parser.add_argument("--scales", choices=("ss", "ms"), default="ms")
  parser.add_argument("--crop", type=int, default=713)
  parser.add_argument(
    "--batch-size",
    type=int,
    default=None,
    help="windows per network call (default 8 on GPU/TPU, 1 on CPU: faster there)",
  )
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument(
    "--single-crop",
    type=int,
    default=0,
    metavar="N",
    help="the official batched mode (universal_demo_batched): each frame resized to fit one "
    "crop, N frames per network call; ignores --base-size and --scales",
  )
  args = parser.parse_args(argv)

  model, variables = models.load_checkpoint(args.checkpoint)
  model_taxonomy = models.checkpoint_info(args.checkpoint).taxonomy
  output = args.taxonomy or model_taxonomy
  if output is None:
    parser.error(
      f"{args.checkpoint} records no taxonomy and its class count is ambiguous: name --taxonomy"
    )
  try:
    regime = demo_regime(output, model_taxonomy, model.config.num_classes)
    names, lut = list(regime.class_names), None
    if args.classes:
      lut, names = outputs.subset_lut(names, args.classes.split(","))
  except ValueError as e:
    parser.error(str(e))
  if regime.name == "projection":
    for universal, (kept, never) in outputs.training_collisions(output).items():
      print(f"note: universal {universal} -> {output} {kept!r}; never predicted: {never}")
  if args.single_crop:
    if args.classes or args.save_probabilities:
      parser.error("--single-crop writes label maps only: drop --classes/--save-probabilities")
    batched = single_crop.SingleCropPredictor(
      model,
      variables,
      crop=args.crop,
      projection=regime.projection,
      predictable=regime.predictable,
      dtype=jnp.dtype(args.dtype),
    )
    try:
      written = run_single_crop(batched, args.input, args.output_dir, names, args.single_crop)
    except (DemoInputError, sources.InputError) as e:
      sys.exit(f"mseg_jax.demo: error: {e}")
    print(f"wrote {len(written)} label maps to {Path(args.output_dir) / 'gray'}")
    return
  predictor = inference.Predictor(
    model,
    variables,
    base_size=args.base_size,
    scales=inference.scales_from_name(args.scales),
    crop=args.crop,
    projection=regime.projection,
    predictable=regime.predictable,
    batch_size=args.batch_size or (1 if jax.default_backend() == "cpu" else 8),
    dtype=jnp.dtype(args.dtype),
  )
  try:
    written = run(
      predictor,
      args.input,
      args.output_dir,
      names,
      lut=lut,
      save_probabilities=args.save_probabilities,
    )
  except (DemoInputError, sources.InputError) as e:
    sys.exit(f"mseg_jax.demo: error: {e}")
  print(f"wrote {len(written)} label maps to {Path(args.output_dir) / 'gray'}")


if __name__ == "__main__":
  main()
