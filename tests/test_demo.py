"""The demo writes grey label maps and overlays for an image, a directory and a short video."""

import cv2
import numpy as np
import pytest
from conftest import write_tiny_checkpoint

from mseg_jax import demo, taxonomy
from mseg_jax.input_pipeline import catalog, sources, synthetic
from mseg_jax.taxonomy import outputs

FAST = ["--base-size", "64", "--crop", "65", "--scales", "ss", "--batch-size", "2"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  root = synthetic.write_synthetic(
    tmp_path_factory.mktemp("data"), num_train=1, num_val=1, num_test=3, size=(96, 128)
  )
  records = sources.read_list(
    catalog.list_path(root, "camvid-11", "val"), catalog.dataset_root(root, "camvid-11")
  )
  return [path for path, _ in records]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  return str(write_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny"))


def _gray(path, shape, num_classes, dtype=np.uint8):
  labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
  assert labels.dtype == dtype and labels.shape == shape and labels.max() < num_classes
  return labels


def test_image_in_universal_taxonomy_with_default_multi_scale(images, checkpoint, tmp_path):
  demo.main(
    [
      "--checkpoint",
      checkpoint,
      "--input",
      str(images[0]),
      "--output-dir",
      str(tmp_path),
      "--base-size",
      "48",
      "--crop",
      "65",
    ]
  )
  _gray(tmp_path / "gray" / f"{images[0].stem}.png", (96, 128), 194)
  overlay = cv2.imread(str(tmp_path / "overlay" / f"{images[0].stem}.jpg"))
  assert overlay.shape[0] >= 96 and overlay.shape[1] > 128  # the legend is beside the image


def test_directory_in_a_test_taxonomy(images, checkpoint, tmp_path):
  demo.main(
    [
      "--checkpoint",
      checkpoint,
      "--input",
      str(images[0].parent),
      "--output-dir",
      str(tmp_path),
      "--taxonomy",
      "camvid-11",
      *FAST,
    ]
  )
  for path in images:
    _gray(tmp_path / "gray" / f"{path.stem}.png", (96, 128), 11)
  assert len(list((tmp_path / "overlay").glob("*.jpg"))) == len(images)


def test_video_gives_grey_frames_and_an_overlay_mp4(images, checkpoint, tmp_path):
  video = tmp_path / "clip.mp4"
  writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (128, 96))
  for path in images:
    writer.write(cv2.imread(str(path)))
  writer.release()
  out = tmp_path / "out"
  demo.main(["--checkpoint", checkpoint, "--input", str(video), "--output-dir", str(out), *FAST])
  for i in range(len(images)):
    _gray(out / "gray" / f"clip_{i:06d}.png", (96, 128), taxonomy.NUM_UNIVERSAL)
  capture = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
  frames = 0
  while capture.read()[0]:
    frames += 1
  assert frames == len(images)


@pytest.mark.parametrize(
  "name,content,message",
  [
    ("broken.png", b"not a png", "unreadable image"),
    ("broken.mp4", b"not a video", "unreadable video"),
    ("notes.txt", b"text", "not an image"),
    ("missing.jpg", None, "input not found"),
  ],
)
def test_unreadable_input_is_a_clear_error(checkpoint, tmp_path, name, content, message):
  path = tmp_path / name
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(SystemExit, match=f"{path}.*{message}"):
    demo.main(
      [
        "--checkpoint",
        checkpoint,
        "--input",
        str(path),
        "--output-dir",
        str(tmp_path / "out"),
        *FAST,
      ]
    )


def test_training_projection_picks_one_dataset_class_per_universal_class():
  """Each universal class feeds one class that maps to it: the one named like it, else the
  lowest id; the others sharing it are listed as never predicted."""
  for dataset in taxonomy.TRAIN_DATASETS:
    lut, names = taxonomy.to_universal_lut(dataset), taxonomy.class_names(dataset)
    matrix = outputs.training_projection(dataset)
    for u in range(taxonomy.NUM_UNIVERSAL):
      sources = [d for d in range(len(names)) if lut[d] == u]
      fed = np.flatnonzero(matrix[u]).tolist()
      assert len(fed) == (1 if sources else 0), (dataset, u)
      if not sources:
        continue
      same = [d for d in sources if names[d].lower() == taxonomy.universal_names()[u]]
      assert fed == [same[0] if same else min(sources)], (dataset, names[fed[0]])
  collisions = outputs.training_collisions("mapillary-public65")
  assert collisions["road"][0] == "Road" and "Bike Lane" in collisions["road"][1]
  assert collisions["terrain"] == ("Terrain", ["Sand"])
  assert outputs.training_collisions("ade20k-150")["river_lake"] == ("lake", ["river"])
  assert outputs.training_collisions("cityscapes-19") == {}


def test_class_subset_keeps_named_classes_and_makes_the_rest_other():
  names = taxonomy.universal_names()
  lut, kept = outputs.subset_lut(names, ["person", "car", "road"])
  assert kept == ["person", "car", "road", "other"]
  labels = np.array([taxonomy.universal_id(n) for n in ("road", "sky", "person", "car")])
  assert lut[labels].tolist() == [2, 3, 0, 1]
  with pytest.raises(ValueError, match="unknown classes \\['persn'\\]"):
    outputs.subset_lut(names, ["persn"])


def test_training_taxonomy_output_with_classes_and_probabilities(images, checkpoint, tmp_path):
  common = ["--checkpoint", checkpoint, "--input", str(images[0]), *FAST]
  full = tmp_path / "full"
  demo.main([*common, "--output-dir", str(full), "--save-probabilities", "full"])
  stem = images[0].stem
  universal = _gray(full / "gray" / f"{stem}.png", (96, 128), 194)
  probs = np.load(full / "probabilities" / f"{stem}.npz")["probabilities"]
  assert probs.dtype == np.float16 and probs.shape == (96, 128, 194)
  probs = probs.astype(np.float32)
  picked = np.take_along_axis(probs, universal[..., None].astype(int), -1)[..., 0]
  np.testing.assert_allclose(picked, probs.max(-1), atol=1e-3)  # float16 rounding
  confidence = cv2.imread(str(full / "confidence" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
  assert confidence.dtype == np.uint8
  np.testing.assert_allclose(confidence, 255 * probs.max(-1), atol=1)

  ids, counts = np.unique(universal, return_counts=True)
  assert len(ids) >= 3  # kept classes and others occur
  keep = ids[np.argsort(counts)[::-1][:2]].tolist()
  names = [taxonomy.universal_names()[u] for u in keep]
  subset = tmp_path / "subset"
  classes = ",".join(names)
  demo.main([*common, "--output-dir", str(subset), "--classes", classes, "--save-probabilities"])
  expected = np.where(universal == keep[0], 0, np.where(universal == keep[1], 1, 2))
  np.testing.assert_array_equal(_gray(subset / "gray" / f"{stem}.png", (96, 128), 3), expected)
  np.testing.assert_array_equal(
    cv2.imread(str(subset / "confidence" / f"{stem}.png"), cv2.IMREAD_UNCHANGED), confidence
  )

  cs = tmp_path / "cs"
  demo.main([*common, "--output-dir", str(cs), "--taxonomy", "cityscapes-19"])
  projected = _gray(cs / "gray" / f"{stem}.png", (96, 128), 19)
  lut = taxonomy.to_universal_lut("cityscapes-19")
  reachable = np.isin(universal, lut[:19])  # there the universal argmax survives the projection
  assert reachable.any()
  np.testing.assert_array_equal(lut[projected][reachable], universal[reachable])


@pytest.fixture(scope="module")
def naive_checkpoint(tmp_path_factory):
  directory = tmp_path_factory.mktemp("model") / "naive"
  return str(write_tiny_checkpoint(directory, taxonomy.NAIVE_NUM_LOGITS, favoured=()))


def test_naive_model_in_the_naive_taxonomy_writes_ids_past_255(images, naive_checkpoint, tmp_path):
  demo.main(
    [
      "--checkpoint",
      naive_checkpoint,
      "--input",
      str(images[0].parent),
      "--output-dir",
      str(tmp_path),
      "--taxonomy",
      "naive",
      *FAST,
    ]
  )
  ids = set()
  for path in images:
    gray = _gray(tmp_path / "gray" / f"{path.stem}.png", (96, 128), 316, np.uint16)
    ids |= set(np.unique(gray).tolist())
  assert max(ids) > 255 and 255 not in ids  # logit 255 is no class


def test_naive_model_in_a_test_taxonomy_never_predicts_an_unfed_class(
  images, naive_checkpoint, tmp_path
):
  args = ["--checkpoint", naive_checkpoint, "--input", str(images[0].parent)]
  demo.main([*args, "--output-dir", str(tmp_path), "--taxonomy", "camvid-11", *FAST])
  unfed = np.flatnonzero(~taxonomy.naive_projection_matrix("camvid-11").any(axis=0))
  assert len(unfed) == 3
  for path in images:
    gray = _gray(tmp_path / "gray" / f"{path.stem}.png", (96, 128), 11)
    assert not np.isin(gray, unfed).any()
  with pytest.raises(SystemExit):  # a naive model has no universal outputs
    demo.main([*args, "--output-dir", str(tmp_path / "u"), "--taxonomy", "universal", *FAST])
