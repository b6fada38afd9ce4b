"""Spec: `prepare lists` writes mseg-api's list files (data_preparation.md §3, §4)."""

import collections
import json
from pathlib import Path

import pytest
from conftest import shared_path

from mseg_jax.input_pipeline import catalog
from mseg_jax.prepare import lists
from mseg_jax.prepare.common import PrepareError


@pytest.fixture(scope="module")
def reference() -> dict[tuple[str, str], list[str]]:
  """(taxonomy, split) -> the non-blank lines of every list file in mseg-api's snapshot."""
  folder = shared_path("reference", "mseg-api", "mseg", "dataset_lists")
  return {
    (path.parents[1].name, path.stem): [line for line in path.read_text().split("\n") if line]
    for path in folder.glob("*/list/*.txt")
  }


def _images(lines: list[str]) -> list[str]:
  return [line.split()[0] for line in lines]


def test_every_mseg_api_list_line_follows_its_family_rule(reference):
  assert len(reference) == 88  # every list file but the four COCO train lists
  for (taxonomy, split), want in reference.items():
    assert lists.list_lines(taxonomy, split, _images(want)) == want, (taxonomy, split)


def test_families_cover_every_mseg_api_list_with_its_line_count(reference):
  covered = {
    (taxonomy, split)
    for family in lists.FAMILIES.values()
    for taxonomy in family.folders
    for split in family.official
    if family.has_list(taxonomy, split)
  }
  coco_train = {(t, "train") for t in lists.FAMILIES["coco-panoptic"].folders}  # not in snapshot
  assert covered == set(reference) | coco_train
  assert set(lists.TAXONOMIES) == {taxonomy for taxonomy, _ in covered}
  for (taxonomy, split), lines in reference.items():
    assert len(lines) == lists.FAMILIES[lists.family_of(taxonomy)].official[split]


@pytest.mark.parametrize(
  "dataset, split",
  [
    (path.name.split(".")[0], path.name.split(".")[1])
    for path in sorted(lists.DATA.glob("*.txt.gz"))
  ],
)
def test_shipped_splits_are_the_image_column_of_every_list_of_the_family(reference, dataset, split):
  shipped = lists.shipped(dataset, split)
  assert len(shipped) == lists.FAMILIES[dataset].official[split]
  for taxonomy in lists.FAMILIES[dataset].folders:
    assert shipped == _images(reference[taxonomy, split]), taxonomy


def test_package_data_holds_only_the_splits_that_cannot_be_derived():
  shipped = {path.name.removesuffix(".txt.gz") for path in lists.DATA.glob("*.txt.gz")}
  assert shipped == {
    "camvid.train",
    "camvid.val",
    "camvid.test",
    "kitti.val",
    "pascal-context.train",
    "pascal-context.val",
    "scannet.train",
    "scannet.val",
    "scannet.test",
    "sunrgbd.val",
    "voc2012.val",
    "voc2012.train_small",
  }
  assert sum(path.stat().st_size for path in lists.DATA.iterdir()) < 200_000


def _touch(root: Path, relpaths) -> None:
  for rel in relpaths:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).touch()


def _official_tree(data_root: Path, reference) -> None:
  """Empty files with mseg-api's names: every image the derivable splits are listed from."""
  root = lambda name: catalog.dataset_root(data_root, name)  # noqa: E731
  for split in ("train", "val"):
    _touch(root("cityscapes-19"), _images(reference["cityscapes-19", split]))
  kitti = (
    reference["kitti-19", "train"] + reference["kitti-19", "val"] + reference["kitti-19", "test"]
  )
  _touch(root("kitti-19"), _images(kitti))
  wilddash = reference["wilddash-34", "val"] + reference["wilddash-34", "test"]
  _touch(root("wilddash-34"), [p for line in wilddash for p in line.split()])  # + labelIds
  voc = reference["voc2012", "train"] + reference["voc2012", "val"]
  _touch(root("voc2012"), [line.split()[1] for line in voc])
  (root("voc2012") / "JPEGImages").mkdir()
  _touch(root("sunrgbd-37"), _images(reference["sunrgbd-37", "train"]))
  (root("sunrgbd-37") / "image" / "test").mkdir()
  (root("camvid-11") / "701_StillsRaw_full").mkdir(parents=True)
  (root("pascal-context-60") / "JPEGImages").mkdir(parents=True)
  root("scannet-20").mkdir(parents=True)
  coco = root("coco-panoptic-133") / "annotations"
  coco.mkdir(parents=True)
  for split, names in (
    ("val", [Path(p).stem for p in _images(reference["coco-panoptic-133", "val"])][::-1]),
    ("train", ["000000000025", "000000000009"]),
  ):
    annotations = [{"file_name": f"{n}.png", "segments_info": []} for n in names]
    (coco / f"panoptic_{split}2017.json").write_text(json.dumps({"annotations": annotations}))


FROM_TREE = (
  "cityscapes-19",
  "kitti-19",
  "wilddash-19",
  "voc2012",
  "sunrgbd-37",
  "camvid-11",
  "pascal-context-60",
  "scannet-20",
  "coco-panoptic-133",
)


def test_lists_of_a_tree_with_the_official_file_names_are_mseg_api_lists(
  reference, tmp_path, capsys
):
  _official_tree(tmp_path, reference)
  lists.run(tmp_path, FROM_TREE)
  written = {
    (path.parents[1].name, path.stem): path.read_text()
    for path in (tmp_path / catalog.LISTS_FOLDER).glob("*/list/*.txt")
  }
  families = {lists.family_of(name) for name in FROM_TREE}
  assert {lists.family_of(t) for t, _ in written} == families  # whole families, nothing else
  for (taxonomy, split), text in written.items():
    assert text.endswith("\n") and "\n\n" not in text and "\r" not in text
    got = text.splitlines()
    if (taxonomy, split) in reference:  # the same lines, in the same order but kitti's
      assert collections.Counter(got) == collections.Counter(reference[taxonomy, split])
      unsorted = taxonomy.startswith("kitti") and split != "val"  # derived, hence sorted
      assert got == reference[taxonomy, split] or unsorted, (taxonomy, split)
  assert written["coco-panoptic-inst-201", "train"].splitlines() == [
    "images/train2017/000000000009.jpg annotations/panoptic_train2017/000000000009.png",
    "images/train2017/000000000025.jpg annotations/panoptic_train2017/000000000025.png",
  ]
  out = capsys.readouterr().out
  assert "cityscapes: train 2975, val 500, fine_val 50, fine_val_small 50;" in out
  assert "coco-panoptic: train 2, val 5000, val_small 300 (mseg-api: train 118287)" in out


def test_lists_of_one_family_are_line_aligned(tmp_path):
  """Line i of every list of a family names the same image (remap pairs lines by index)."""
  root = catalog.dataset_root(tmp_path, "wilddash-19")
  _touch(root, [f"wd_val_01/{n}.png" for n in ("zz0001_100000", "au0000_100000")])
  _touch(root, ["wd_val_01/au0000_100000_labelIds.png", "wd_both_01/cn0000_100000.png"])
  lists.run(tmp_path, ["wilddash-19"])
  path = lambda name, split: catalog.list_path(tmp_path, name, split)  # noqa: E731
  assert path("wilddash-19", "val").read_text() == (
    "wd_val_01/au0000_100000.png wd_val_19class/au0000_100000_labelIds.png\n"
    "wd_val_01/zz0001_100000.png wd_val_19class/zz0001_100000_labelIds.png\n"
  )
  for split, count in (("train", 32), ("val", 2), ("test", 1)):
    columns = [
      [line.split()[0] for line in path(name, split).read_text().splitlines()]
      for name in ("wilddash-19", "wilddash-34")
    ]
    assert columns[0] == columns[1] and len(columns[0]) == count
  assert path("wilddash-34", "test").read_text() == "wd_both_01/cn0000_100000.png\n"


def test_a_second_run_rewrites_nothing_and_new_images_update_the_lists(tmp_path, capsys):
  root = catalog.dataset_root(tmp_path, "ade20k-150")
  _touch(root, ["images/training/ADE_train_00000002.jpg", "images/validation/ADE_val_00000001.jpg"])
  lists.run(tmp_path, ["ade20k-150-relabeled"], images={"ADE_train_00000002"})
  assert "--images ignored" in capsys.readouterr().out
  files = sorted((tmp_path / catalog.LISTS_FOLDER).glob("*/list/*.txt"))
  assert len(files) == 6  # ade20k-151, -150, -150-relabeled x train, val
  stamps = [f.stat().st_mtime_ns for f in files]
  lists.run(tmp_path, ["ade20k-150"])
  assert "0 list files written" in capsys.readouterr().out
  assert [f.stat().st_mtime_ns for f in files] == stamps
  _touch(root, ["images/training/ADE_train_00000001.jpg"])
  lists.run(tmp_path, ["ade20k-151"])
  assert "3 list files written" in capsys.readouterr().out
  assert catalog.list_path(tmp_path, "ade20k-150-relabeled", "train").read_text() == (
    "images/training/ADE_train_00000001.jpg "
    "annotations_semseg150_relabeled/training/ADE_train_00000001.png\n"
    "images/training/ADE_train_00000002.jpg "
    "annotations_semseg150_relabeled/training/ADE_train_00000002.png\n"
  )
  assert not list(tmp_path.rglob("*.tmp"))


def test_missing_or_odd_raw_data_is_an_error_naming_the_file(tmp_path):
  root = catalog.dataset_root(tmp_path, "cityscapes-19")
  with pytest.raises(PrepareError, match=f"{root / 'leftImg8bit' / 'train'}: not found"):
    lists.run(tmp_path, ["cityscapes-19"])
  (root / "leftImg8bit" / "train" / "aachen").mkdir(parents=True)
  with pytest.raises(PrepareError, match="leftImg8bit/train: no files named like"):
    lists.run(tmp_path, ["cityscapes-19"])

  kitti = catalog.dataset_root(tmp_path, "kitti-19")
  missing = lists.shipped("kitti", "val")[0]
  _touch(kitti, [f"training/image_2/{i:06d}_10.png" for i in range(200)])
  (kitti / missing).unlink()
  _touch(kitti, ["testing/image_2/000000_10.png"])
  with pytest.raises(
    PrepareError, match=f"{kitti}: lacks 1 of the 50 files of MSeg's val split, e.g. {missing}"
  ):
    lists.run(tmp_path, ["kitti-34"])

  coco = catalog.dataset_root(tmp_path, "coco-panoptic-133") / "annotations"
  _touch(coco, ["panoptic_val2017.json", "panoptic_train2017.json"])
  with pytest.raises(PrepareError, match="panoptic_val2017.json: not a COCO panoptic"):
    lists.run(tmp_path, ["coco-panoptic-133"])
  (coco / "panoptic_val2017.json").write_text('{"annotations": [{"file_name": "x.jpg"}]}')
  with pytest.raises(PrepareError, match="panoptic_val2017.json: odd file_name 'x.jpg'"):
    lists.run(tmp_path, ["coco-panoptic-133"])
  assert not (tmp_path / catalog.LISTS_FOLDER).exists()


def test_an_image_off_the_rule_is_an_error_except_image_only_test_lines():
  with pytest.raises(PrepareError, match=r"cityscapes-19 val: image 'leftImg8bit/test/a.png'"):
    lists.list_lines("cityscapes-19", "val", ["leftImg8bit/test/a.png"])
  assert lists.list_lines("idd-39", "test", ["leftImg8bit/test/1/2_leftImg8bit.png"]) == [
    "leftImg8bit/test/1/2_leftImg8bit.png"
  ]
  with pytest.raises(KeyError, match="no lists for 'ade20k-151-inst'"):
    lists.family_of("ade20k-151-inst")
