"""Spec: the synthetic composite (catalog layout, real taxonomies, determinism, CLI)."""

import hashlib

import numpy as np
import pytest

from mseg_jax import taxonomy
from mseg_jax.input_pipeline import catalog, sources, synthetic

ALL = synthetic.SYNTHETIC_TRAIN_DATASETS + synthetic.SYNTHETIC_TEST_DATASETS
SIZE = (48, 64)


def _write(out, seed=0):
  return synthetic.write_synthetic(out, seed=seed, num_train=4, num_val=2, num_test=3, size=SIZE)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return _write(tmp_path_factory.mktemp("synth"))


def _samples(data_root, name, split):
  path = catalog.list_path(data_root, name, split)
  return [
    (sources.load_image(i), sources.load_label(lab))
    for i, lab in sources.read_list(path, catalog.dataset_root(data_root, name))
  ]


def test_layout_is_the_catalog_layout(data_root):
  assert synthetic.SYNTHETIC_TRAIN_DATASETS == ("cityscapes-19", "ade20k-150", "mapillary-public65")
  assert synthetic.SYNTHETIC_TEST_DATASETS == ("camvid-11",)
  expected = {(d, "train"): 4 for d in synthetic.SYNTHETIC_TRAIN_DATASETS}
  expected |= {(d, "val"): 2 for d in synthetic.SYNTHETIC_TRAIN_DATASETS}
  expected |= {("camvid-11", "val"): 3}
  for (name, split), count in expected.items():
    samples = _samples(data_root, name, split)
    assert len(samples) == count
    for image, label in samples:
      assert image.shape == SIZE + (3,) and label.shape == SIZE
      sources.check_pair(
        image, label, catalog.list_path(data_root, name, split), len(taxonomy.class_names(name))
      )
  assert not catalog.list_path(data_root, "camvid-11", "train").exists()


def _universal(name, label):
  if name in taxonomy.TEST_DATASETS:  # a test class -> its universal classes: take the first
    owner = {
      k: int(np.flatnonzero(col)[0])
      for k, col in enumerate(taxonomy.projection_matrix(name).T)
      if col.any()
    }
    return np.vectorize(lambda v: owner.get(v, 255))(label)
  return taxonomy.to_universal_lut(name)[label]


def _mean_colours(data_root, name, split):
  """{universal class name: mean RGB of its pixels} over a split."""
  sums, counts = {}, {}
  for image, label in _samples(data_root, name, split):
    for u in np.unique(_universal(name, label)):
      if u == 255:
        continue
      mask = _universal(name, label) == u
      key = taxonomy.universal_names()[u]
      sums[key] = sums.get(key, 0) + image[mask].astype(np.float64).sum(0)
      counts[key] = counts.get(key, 0) + mask.sum()
  return {k: sums[k] / counts[k] for k in sums}


def test_labels_use_each_dataset_real_ids(data_root):
  street = {"sky", "building", "road", "sidewalk_pavement", "car"}
  for name, split in [
    ("cityscapes-19", "train"),
    ("mapillary-public65", "train"),
    ("camvid-11", "val"),
  ]:
    colours = _mean_colours(data_root, name, split)
    assert street <= set(colours), name
    sky, road = colours["sky"], colours["road"]
    assert sky[2] > sky[0] + 60  # blue
    assert road.max() < 100 and np.ptp(road) < 20  # dark grey
  names = taxonomy.class_names("cityscapes-19")
  sky_id = names.index("sky")
  for _, label in _samples(data_root, "cityscapes-19", "train"):
    assert label[0, 0] == sky_id or label[0, 0] == names.index("vegetation")
  indoor = _mean_colours(data_root, "ade20k-150", "train")
  assert {"wall", "floor", "ceiling"} <= set(indoor)


def test_a_universal_class_looks_the_same_in_every_dataset(data_root):
  city = _mean_colours(data_root, "cityscapes-19", "train")
  for name, split in [("mapillary-public65", "train"), ("camvid-11", "val")]:
    other = _mean_colours(data_root, name, split)
    for cls in ("sky", "road", "building"):
      assert np.abs(city[cls] - other[cls]).max() < 25, (name, cls)


def test_inverse_mapping_round_trips():
  for name in synthetic.SYNTHETIC_TRAIN_DATASETS:
    inverse, lut = synthetic.universal_to_dataset_lut(name), taxonomy.to_universal_lut(name)
    mapped = np.flatnonzero(inverse != 255)
    assert mapped.size > 0
    np.testing.assert_array_equal(lut[inverse[mapped]], mapped)
  inverse = synthetic.universal_to_dataset_lut("camvid-11")
  matrix = taxonomy.projection_matrix("camvid-11")
  for u in range(taxonomy.NUM_UNIVERSAL):
    assert (inverse[u] == 255) == (not matrix[u].any())
    assert inverse[u] == 255 or matrix[u, inverse[u]] == 1
  mapillary = taxonomy.class_names("mapillary-public65")  # named like the universal class
  assert (
    mapillary[
      synthetic.universal_to_dataset_lut("mapillary-public65")[taxonomy.universal_id("road")]
    ]
    == "Road"
  )


def _digest(root):
  h = hashlib.sha256()
  for path in sorted(p for p in root.rglob("*") if p.is_file()):
    h.update(str(path.relative_to(root)).encode() + path.read_bytes())
  return h.hexdigest()


def test_deterministic_for_a_seed(data_root, tmp_path):
  assert _digest(_write(tmp_path / "again")) == _digest(data_root)
  assert _digest(_write(tmp_path / "other", seed=1)) != _digest(data_root)


def test_cli(tmp_path, capsys):
  synthetic.main(
    [
      "--output-dir",
      str(tmp_path),
      "--num-train",
      "1",
      "--num-val",
      "1",
      "--num-test",
      "1",
      "--height",
      "32",
      "--width",
      "40",
    ]
  )
  assert "camvid-11" in capsys.readouterr().out
  image, label = _samples(tmp_path, "camvid-11", "val")[0]
  assert image.shape == (32, 40, 3) and label.shape == (32, 40)
