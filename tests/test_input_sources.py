"""Spec: datasets on disk (catalog, list files, decoding) and every bad-input error."""

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import shared_path

from mseg_jax import taxonomy
from mseg_jax.input_pipeline import batching, catalog, sources, verify

NAME = "cityscapes-19"  # 19 classes: valid ids 0..18 and 255


def test_catalog_has_every_taxonomy_under_mseg_dataset():
  assert set(taxonomy.dataset_names()) <= set(catalog.DEFAULT_ROOTS)
  assert catalog.dataset_root("/d", "ade20k-150") == Path(
    "/d/mseg_dataset/ADE20K/ADEChallengeData2016"
  )
  # relabeled taxonomies share the images of the unrelabeled one
  assert catalog.dataset_root("/d", "cityscapes-19-relabeled") == catalog.dataset_root(
    "/d", "cityscapes-34"
  )
  assert catalog.list_path("/d", "camvid-11", "val") == Path(
    "/d/dataset_lists/camvid-11/list/val.txt"
  )


def test_taxonomies_that_share_a_root_never_share_a_list_file():
  """A relabeled run can never read the unrelabeled lists (data_preparation.md 1.3, 7.14)."""
  by_root = {}
  for name in catalog.DEFAULT_ROOTS:
    by_root.setdefault(catalog.dataset_root("/d", name), []).append(name)
  assert len(by_root[catalog.dataset_root("/d", "cityscapes-19")]) == 4  # 34, 19, both relabeled
  for names in by_root.values():
    for split in ("train", "val"):
      assert len({catalog.list_path("/d", n, split) for n in names}) == len(names), names
  for name in ("ade20k-150", "cityscapes-19", "coco-panoptic-133", "sunrgbd-37"):
    relabeled = f"{name}-relabeled"
    assert catalog.dataset_root("/d", name) == catalog.dataset_root("/d", relabeled)
    assert catalog.list_path("/d", name, "val") != catalog.list_path("/d", relabeled, "val")


def test_catalog_overrides_and_mseg_api_lists():
  roots = {"camvid-11": "elsewhere/camvid", "kitti-19": "/abs/kitti"}
  assert catalog.dataset_root("/d", "camvid-11", roots) == Path("/d/elsewhere/camvid")
  assert catalog.dataset_root("/d", "kitti-19", roots) == Path("/abs/kitti")
  assert catalog.list_path("/d", "kitti-19", "test", roots) == Path(
    "/d/dataset_lists/kitti-19/list/test.txt"
  )
  assert catalog.list_path("/d", "kitti-19", "val", lists_dir="/api/mseg/dataset_lists") == Path(
    "/api/mseg/dataset_lists/kitti-19/list/val.txt"
  )
  with pytest.raises(KeyError, match="unknown dataset 'nope'"):
    catalog.dataset_root("/d", "nope")


def _write(root: Path, rel: str, array: np.ndarray) -> str:
  (root / rel).parent.mkdir(parents=True, exist_ok=True)
  assert cv2.imwrite(str(root / rel), array)
  return rel


@pytest.fixture
def root(tmp_path) -> Path:
  """A 2-sample dataset; image 0 is pure red to check the BGR -> RGB decode."""
  image = np.zeros((6, 8, 3), np.uint8)
  image[..., 2] = 255  # red in BGR order
  label = np.zeros((6, 8), np.uint8)
  label[0, 0], label[1, 1] = 18, 255
  lines = [
    f"{_write(tmp_path, f'img/{i}.png', image)} {_write(tmp_path, f'lab/{i}.png', label)}"
    for i in range(2)
  ]
  _list(tmp_path).parent.mkdir(parents=True)
  _list(tmp_path).write_text("\n".join(lines) + "\n\n")
  return tmp_path


def _list(root: Path, split: str = "train") -> Path:
  return catalog.list_path(root, NAME, split)


def _source(root: Path) -> sources.ListSource:
  return sources.ListSource(_list(root), root)


def test_read_list_and_decode_a_valid_sample(root):
  _list(root, "test").write_text("img/0.png\r\nimg/1.png\r\n")
  assert sources.read_list(_list(root, "test"), root) == [
    (root / "img/0.png", None),
    (root / "img/1.png", None),
  ]
  assert sources.read_list(_list(root), root)[1] == (
    root / "img/1.png",
    root / "lab/1.png",
  )
  source = _source(root)
  assert len(source) == 2 and source[1]["where"] == f"{_list(root)}:2"
  example = sources.Decode(num_classes=19).map(source[0])
  assert example["image"].dtype == np.uint8 and example["image"].shape == (6, 8, 3)
  assert tuple(example["image"][0, 0]) == (255, 0, 0)  # RGB
  assert example["label"].dtype == np.uint8 and example["label"].shape == (6, 8)


def _corrupt(root: Path, case: str) -> str:
  """Breaks sample 1 (line 2) as `case` says; returns the bad path."""
  if case == "missing image":
    (root / "img/1.png").unlink()
    return "img/1.png"
  if case == "missing label":
    (root / "lab/1.png").unlink()
    return "lab/1.png"
  if case == "unreadable image":
    (root / "img/1.png").write_bytes(b"not a png")
    return "img/1.png"
  if case == "colour label":
    _write(root, "lab/1.png", np.zeros((6, 8, 3), np.uint8))
    return "lab/1.png"
  if case == "size mismatch":
    _write(root, "lab/1.png", np.zeros((6, 9), np.uint8))
    return "lab/1.png"
  if case == "bad label value":
    label = np.zeros((6, 8), np.uint8)
    label[2, 3] = 19  # cityscapes-19 has ids 0..18
    _write(root, "lab/1.png", label)
    return "lab/1.png"
  raise AssertionError(case)


BAD_CASES = {
  "missing image": "image file not found",
  "missing label": "label file not found",
  "unreadable image": "unreadable image",
  "colour label": "single-channel uint8",
  "size mismatch": r"label size 9x6 differs from the image's 8x6",
  "bad label value": r"label values \[19\] are neither class ids 0..18 nor 255",
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_each_bad_input_names_list_file_line_and_path(root, case):
  bad = _corrupt(root, case)
  source = _source(root)
  sources.Decode(num_classes=19).map(source[0])  # line 1 is fine
  with pytest.raises(sources.InputError) as error:
    sources.Decode(num_classes=19).map(source[1])
  message = str(error.value)
  assert message.startswith(f"{_list(root)}:2: {root / bad}: ")
  assert re.search(BAD_CASES[case], message)


def test_bad_input_surfaces_from_the_training_pipeline(root):
  _corrupt(root, "bad label value")
  ds = batching.train_dataset(
    [NAME],
    [2],
    data_root=root,
    roots={NAME: str(root)},
    crop_size=4,
    short_size=6,
    seed=0,
    num_threads=0,
  )
  with pytest.raises(sources.InputError, match=r"train.txt:2: .*lab/1.png: label values \[19\]"):
    next(iter(ds))


def test_bad_list_files(tmp_path):
  with pytest.raises(sources.InputError, match="list file not found"):
    sources.read_list(tmp_path / "nope.txt", tmp_path)
  (tmp_path / "a.txt").write_text("x.png y.png\nx.png y.png z.png\n")
  with pytest.raises(sources.InputError, match=r"a.txt:2: expected 'rgb_relpath \["):
    sources.read_list(tmp_path / "a.txt", tmp_path)
  (tmp_path / "b.txt").write_text("x.png y.png\nx.png\n")
  with pytest.raises(sources.InputError, match="b.txt:2: line has no label path"):
    sources.ListSource(tmp_path / "b.txt", tmp_path)
  (tmp_path / "c.txt").write_text("\n")
  with pytest.raises(sources.InputError, match="c.txt: list file has no samples"):
    sources.ListSource(tmp_path / "c.txt", tmp_path)


def test_invalid_label_values():
  label = np.array([[0, 18, 255]], np.uint8)
  assert sources.invalid_label_values(label, 19).size == 0
  np.testing.assert_array_equal(
    sources.invalid_label_values(np.array([[0, 19, 254, 255, 19]], np.uint8), 19), [19, 254]
  )


def test_verify_cli_reports_clean_and_broken_datasets(root, capsys):
  roots = f"{NAME}={root}"
  assert (
    verify.main(
      ["--data-root", str(root), "--datasets", NAME, "--splits", "train", "--roots", roots]
    )
    == 0
  )
  out = capsys.readouterr().out
  assert f"| {NAME} | train | 2 | 2 | 0 | 6x8 | 6x8 | 2/19 | 2.1% | 0..18 |" in out
  assert "all samples OK" in out

  _corrupt(root, "size mismatch")
  assert (
    verify.main(
      ["--data-root", str(root), "--datasets", NAME, "--splits", "train,val", "--roots", roots]
    )
    == 1
  )
  out = capsys.readouterr().out
  assert f"ERROR {_list(root)}:2: {root / 'lab/1.png'}: label size" in out
  assert f"ERROR {_list(root, 'val')}: list file not found" in out
  assert f"| {NAME} | train | 2 | 1 | 1 |" in out and "2 errors" in out
  with pytest.raises(SystemExit):
    verify.main(["--data-root", str(root), "--datasets", "cityscapes-20"])
  assert "unknown datasets ['cityscapes-20']; known: ade20k-150," in capsys.readouterr().err


@pytest.mark.parametrize(
  "name, count",
  [
    ("camvid-11", 101),
    ("kitti-19", 50),
    ("wilddash-19", 70),
    ("voc2012", 1449),
    ("pascal-context-60", 5105),
    ("scannet-20", 5436),
  ],
)
def test_reads_mseg_api_val_lists_in_place(name, count):
  lists_dir = shared_path("reference", "mseg-api", "mseg", "dataset_lists")
  path = catalog.list_path("/data", name, "val", lists_dir=lists_dir)
  records = sources.read_list(path, catalog.dataset_root("/data", name))
  assert len(records) == count  # mseg_reference.md 1.3
  assert all(label is not None for _, label in records)
  assert records[0][0].is_relative_to(Path("/data") / catalog.DEFAULT_ROOTS[name])
