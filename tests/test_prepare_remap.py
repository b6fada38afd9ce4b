"""Spec: the remap step turns every raw label format into its MSeg semseg taxonomy
(data_preparation.md §2, §3), on mseg-api's real samples and on small synthetic files.

Expected ids come from mseg-api's own files in shared/reference (names, TSVs, colours, COCO
categories), never from the package's tables.
"""

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from conftest import shared_path
from PIL import Image

from mseg_jax import taxonomy
from mseg_jax.input_pipeline import catalog
from mseg_jax.prepare import formats, remap
from mseg_jax.prepare.common import PrepareError

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- mseg-api's files, read here


def _api(*parts: str) -> Path:
  return shared_path("reference", "mseg-api", *parts)


def _lines(path: Path) -> list[str]:
  return [
    line.rstrip("\r") for line in path.read_text(encoding="utf-8").split("\n") if line.strip()
  ]


def _names(name: str) -> list[str]:
  return _lines(_api("mseg", "dataset_lists", name, f"{name}_names.txt"))


def _tsv_lut(src: str, dst: str, ignore: bool = True) -> dict[int, int]:
  """Source id (0..K-1 and 255) -> destination id, spec §2 steps 1-4, from the TSV."""
  rows = _lines(_api("mseg", "class_remapping_files", f"{src}_to_{dst}.tsv"))[1:]
  to_dst_name = dict(row.split("\t") for row in rows)
  dst_id = {name: i for i, name in enumerate(_names(dst))}
  if ignore:
    dst_id["unlabeled"] = 255
  src_name = dict(enumerate(_names(src))) | {255: "unlabeled"}
  return {i: dst_id[to_dst_name[name]] for i, name in src_name.items()}


def _colors(name: str) -> np.ndarray:
  path = _api("mseg", "dataset_lists", name, f"{name}_colors.txt")
  return np.array([[int(v) for v in line.split()] for line in _lines(path)], np.uint8)


# ---------------------------------------------------------------- a data root on disk


def _put(path: Path, array: np.ndarray) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  assert cv2.imwrite(str(path), array)
  return path


def _image(root: Path, rel: str, hw: tuple[int, int]) -> str:
  _put(root / rel, np.zeros((*hw, 3), np.uint8))
  return rel


def _lists(data_root: Path, name: str, lines: dict[str, list[str]]) -> None:
  for split in remap.SPLITS:
    path = catalog.list_path(data_root, name, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines.get(split, [])))


def _root(data_root: Path, name: str) -> Path:
  return catalog.dataset_root(data_root, name)


def _read(path: Path) -> np.ndarray:
  label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
  assert label is not None, path
  return label


def _files(data_root: Path) -> dict[Path, tuple[int, bytes]]:
  return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in data_root.rglob("*") if p.is_file()}


def _grey_dataset(data_root: Path, src: str, dst: str, labels: list[np.ndarray]) -> list[Path]:
  """Cityscapes-style files: one image + raw label per array; returns the output paths."""
  src_root, dst_root = _root(data_root, src), _root(data_root, dst)
  src_lines, dst_lines, outputs = [], [], []
  for i, label in enumerate(labels):
    split = remap.SPLITS[i % 2]
    image = _image(src_root, f"img/{split}/{i:03d}.png", label.shape)
    _put(src_root / f"raw/{split}/{i:03d}.png", label)
    src_lines.append(f"{image} raw/{split}/{i:03d}.png")
    dst_lines.append(f"{image} out/{split}/{i:03d}.png")
    outputs.append(dst_root / f"out/{split}/{i:03d}.png")
  for name, lines in ((src, src_lines), (dst, dst_lines)):
    _lists(data_root, name, {s: [x for x in lines if f"/{s}/" in x] for s in remap.SPLITS})
  return outputs


def _every_id(k: int, hw: tuple[int, int] = (12, 20), dtype=np.uint8) -> np.ndarray:
  """A random label holding every id 0..k-1 and 255."""
  ids = np.append(np.arange(k), 255).astype(dtype)
  flat = RNG.choice(ids, hw[0] * hw[1])
  flat[: len(ids)] = ids
  return RNG.permutation(flat).reshape(hw).astype(dtype)


def _no_temp_files(data_root: Path) -> None:
  assert not [p for p in data_root.rglob("*") if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- mseg-api's real samples


def test_ade20k_annotations_become_ade20k_150_by_class_name(tmp_path):
  sample = _api("tests", "test_data", "ADE20K_test_data", "ADEChallengeData2016")
  root = _root(tmp_path, "ade20k-151")
  shutil.copytree(sample, root)
  for name, folder in (("ade20k-151", "annotations"), ("ade20k-150", "annotations_semseg150")):
    _lists(
      tmp_path,
      name,
      {
        split: [f"images/{sub}/ADE_{s}_00000001.jpg {folder}/{sub}/ADE_{s}_00000001.png"]
        for split, sub, s in (("train", "training", "train"), ("val", "validation", "val"))
      },
    )
  remap.run(tmp_path, ["ade20k-150"], images=None, workers=1)
  names151, names150 = _names("ade20k-151"), _names("ade20k-150")
  for sub, s in (("training", "train"), ("validation", "val")):
    raw = _read(root / f"annotations/{sub}/ADE_{s}_00000001.png")
    out = _read(root / f"annotations_semseg150/{sub}/ADE_{s}_00000001.png")
    assert out.dtype == np.uint8 and out.shape == raw.shape
    assert (out[raw == 0] == 255).all()
    labelled = raw != 0
    assert out[labelled].max() < 150
    assert (np.array(names150)[out[labelled]] == np.array(names151)[raw[labelled]]).all()
    if s == "train":  # not "id - 1": wall (1) is 144 and building (2) is 28 in ade20k-150
      assert names151[1] == names150[144] == "wall" and (out[raw == 1] == 144).all()


def _coco_root(tmp_path: Path) -> Path:
  sample = _api("tests", "test_data", "COCOPanoptic_test_data")
  root = _root(tmp_path, "coco-panoptic-inst-201")
  shutil.copytree(sample / "annotations", root / "annotations")
  lines = {
    name: {} for name in ("coco-panoptic-inst-201", "coco-panoptic-201", "coco-panoptic-133")
  }
  for split, stem in (("train", "000000000009"), ("val", "000000000139")):
    png = root / f"annotations/panoptic_{split}2017/{stem}.png"
    image = _image(root, f"images/{split}2017/{stem}.jpg", _read(png).shape[:2])
    for name, folder in zip(
      lines,
      (f"annotations/panoptic_{split}2017", "semantic_annotations201", "semantic_annotations133"),
      strict=True,
    ):
      sub = "" if name == "coco-panoptic-inst-201" else f"/{split}2017"
      lines[name][split] = [f"{image} {folder}{sub}/{stem}.png"]
  for name, by_split in lines.items():
    _lists(tmp_path, name, by_split)
  return root


def test_coco_panoptic_samples_become_201_and_133_by_category_name(tmp_path):
  root = _coco_root(tmp_path)
  remap.run(tmp_path, ["coco-panoptic-133-relabeled"], images=None, workers=1)
  categories = json.loads(_api("tests", "test_data", "coco_panoptic_categories.json").read_text())
  category_name = {c["id"]: c["name"] for c in categories}
  names133 = _names("coco-panoptic-133")
  for split, stem in (("train", "000000000009"), ("val", "000000000139")):
    bgr = _read(root / f"annotations/panoptic_{split}2017/{stem}.png").astype(np.int64)
    ids = bgr[..., 2] + 256 * bgr[..., 1] + 65536 * bgr[..., 0]
    entry = json.loads((root / f"annotations/panoptic_{split}2017.json").read_text())
    (entry,) = entry["annotations"]
    out201 = _read(root / f"semantic_annotations201/{split}2017/{stem}.png")
    out133 = _read(root / f"semantic_annotations133/{split}2017/{stem}.png")
    expected = np.full(ids.shape, 255)
    for segment in entry["segments_info"]:
      assert (ids == segment["id"]).any()
      expected[ids == segment["id"]] = segment["category_id"]
    np.testing.assert_array_equal(out201, expected)
    assert (out201[ids == 0] == 255).all()
    labelled = out201 != 255
    assert (out133[~labelled] == 255).all()
    got = np.array(names133)[out133[labelled]]
    want = np.array([category_name[c] for c in out201[labelled].tolist()])
    assert (got == want).all()


def test_sunrgbd_38_ids_become_the_shipped_37_class_labels(tmp_path):
  sample = _api("tests", "test_data", "SUNRGBD_test_data")
  root = _root(tmp_path, "sunrgbd-38")
  shutil.copytree(sample / "image", root / "image")
  lines = {"sunrgbd-38": {}, "sunrgbd-37": {}}
  shipped = {}
  for split, folder in (("train", "train"), ("val", "test")):  # MSeg's val is SUN's test
    label37 = _read(sample / f"semseg-label37/{folder}/00000001.png")
    shipped[folder] = label37
    # the raw archive's ids: 0 unlabeled, class k of sunrgbd-37 is k + 1
    _put(root / f"label38/{folder}/00000001.png", np.where(label37 == 255, 0, label37 + 1))
    for name, sub in (("sunrgbd-38", "label38"), ("sunrgbd-37", "semseg-label37")):
      lines[name][split] = [f"image/{folder}/img-000001.jpg {sub}/{folder}/00000001.png"]
  for name, by_split in lines.items():
    _lists(tmp_path, name, by_split)
  remap.run(tmp_path, ["sunrgbd-37"], images=None, workers=1)
  for folder, label37 in shipped.items():
    np.testing.assert_array_equal(_read(root / f"semseg-label37/{folder}/00000001.png"), label37)
  ceiling = _names("sunrgbd-37").index("ceiling")
  # mseg-api's test: class ceiling of test img-000001 covers 37,819 of 730x530 pixels
  assert (_read(root / "semseg-label37/test/00000001.png") == ceiling).sum() == 37819


def test_camvid_colour_labels_become_camvid_11_by_class_name(tmp_path):
  """The sample holds a CamVid image and a camvid-11 map; painted in camvid-32's colours
  (same class names), plus Void and two classes camvid-11 drops, it must come back."""
  sample = _api("tests", "test_data", "Camvid_test_data")
  root = _root(tmp_path, "camvid-32")
  names32, names11, colors32 = _names("camvid-32"), _names("camvid-11"), _colors("camvid-32")
  ids11 = _read(sample / "preds/0016E5_08159.png")
  rgb = colors32[[names32.index(n) for n in names11]][ids11]
  expected = ids11.copy()
  for row, name in ((0, "Void"), (1, "Child"), (2, "LaneMkgsDriv")):
    rgb[row] = colors32[names32.index(name)]
    expected[row] = 255
  (root / "701_StillsRaw_full").mkdir(parents=True)
  shutil.copy(sample / "images/0016E5_08159.png", root / "701_StillsRaw_full/0016E5_08159.png")
  _put(root / "Labels32-RGB/0016E5_08159_L.png", rgb[..., ::-1])
  _lists(
    tmp_path,
    "camvid-32",
    {"val": ["701_StillsRaw_full/0016E5_08159.png Labels32-RGB/0016E5_08159_L.png"]},
  )
  _lists(
    tmp_path,
    "camvid-11",
    {"val": ["701_StillsRaw_full/0016E5_08159.png semseg11/0016E5_08159_L.png"]},
  )
  remap.run(tmp_path, ["camvid-11"], images=None, workers=1)
  np.testing.assert_array_equal(_read(root / "semseg11/0016E5_08159_L.png"), expected)


# ---------------------------------------------------------------- synthetic raw files


@pytest.mark.parametrize(
  "src, dst, dtype",
  [
    ("cityscapes-34", "cityscapes-19", np.uint8),
    ("kitti-34", "kitti-19", np.uint8),
    ("wilddash-34", "wilddash-19", np.uint8),
    ("scannet-41", "scannet-20", np.uint16),  # 16-bit PNGs are read as stored
    ("ade20k-151", "ade20k-150", np.uint8),
  ],
)
def test_grey_labels_go_through_the_pairwise_tsv(tmp_path, src, dst, dtype):
  k = len(_names(src))
  labels = [_every_id(k, dtype=dtype) for _ in range(3)]
  outputs = _grey_dataset(tmp_path, src, dst, labels)
  remap.run(tmp_path, [dst], images=None, workers=1)
  lut = _tsv_lut(src, dst)
  for label, output in zip(labels, outputs, strict=True):
    out = _read(output)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.vectorize(lut.get)(label))


def test_wilddash_train_repeats_val_and_each_label_is_written_once(tmp_path, capsys):
  root = _root(tmp_path, "wilddash-34")
  image = _image(root, "wd_val_01/au0000_100000.png", (5, 7))
  _put(root / "wd_val_01/au0000_100000_labelIds.png", _every_id(34, (5, 7)))
  for name, label in (("wilddash-34", "wd_val_01"), ("wilddash-19", "wd_val_19class")):
    line = f"{image} {label}/au0000_100000_labelIds.png"
    _lists(tmp_path, name, {"train": [line] * 16, "val": [line]})
  remap.run(tmp_path, ["wilddash-19"], images=None, workers=2)
  assert "1 labels (list lines: train 16, val 1): 1 written" in capsys.readouterr().out
  lut = _tsv_lut("wilddash-34", "wilddash-19")
  out = _read(root / "wd_val_19class/au0000_100000_labelIds.png")
  np.testing.assert_array_equal(
    out, np.vectorize(lut.get)(_read(root / "wd_val_01/au0000_100000_labelIds.png"))
  )


def test_mapillary_colours_become_mapillary_65_also_from_a_palette_png(tmp_path):
  root = _root(tmp_path, "mapillary-public66")
  colors = _colors("mapillary-public66")
  ids = [_every_id(66, (8, 12))[..., None].clip(0, 65)[..., 0] for _ in range(2)]
  lines = {"mapillary-public66": {}, "mapillary-public65": {}}
  for split, folder, label in zip(remap.SPLITS, ("training", "validation"), ids, strict=True):
    image = _image(root, f"{folder}/images/k-{split}_1.jpg", label.shape)
    if split == "train":
      _put(root / f"{folder}/labels/k-{split}_1.png", colors[label][..., ::-1])
    else:  # Vistas ships 8-bit palette PNGs
      palette = Image.fromarray(label, "P")
      palette.putpalette(colors.ravel().tolist())
      (root / f"{folder}/labels").mkdir(parents=True)
      palette.save(root / f"{folder}/labels/k-{split}_1.png")
    lines["mapillary-public66"][split] = [f"{image} {folder}/labels/k-{split}_1.png"]
    lines["mapillary-public65"][split] = [f"{image} {folder}_semseg65/labels/k-{split}_1.png"]
  for name, by_split in lines.items():
    _lists(tmp_path, name, by_split)
  remap.run(tmp_path, ["mapillary-public65-relabeled"], images=None, workers=1)
  lut = _tsv_lut("mapillary-public66", "mapillary-public65")
  assert lut[65] == 255 and all(lut[i] == i for i in range(65))
  for split, folder, label in zip(remap.SPLITS, ("training", "validation"), ids, strict=True):
    out = _read(root / f"{folder}_semseg65/labels/k-{split}_1.png")
    np.testing.assert_array_equal(out, np.vectorize(lut.get)(label))


def test_idd_polygons_are_drawn_in_order_then_mapped_to_idd_39(tmp_path, capsys):
  root = _root(tmp_path, "idd-40")
  h, w = 40, 60

  def box(label, x0, y0, x1, y1, **extra):
    return {"label": label, "polygon": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], **extra}

  objects = [
    box("road", 0, 20, 59, 39),
    box("car", 10, 25, 30, 35),  # drawn over the road
    box("cargroup", 40, 25, 50, 35),  # an unknown "<x>group" is drawn as <x>
    box("sky", 0, 0, 59, 18, deleted=1),  # deleted: not drawn
    {"label": "person", "polygon": [[0, 0], [59, 0]]},  # < 3 vertices: not drawn
    box("spaceship", 30, 2, 40, 8),  # unknown: skipped and reported
  ]
  image = _image(root, "leftImg8bit/train/7/000001_leftImg8bit.png", (h, w))
  json_path = root / "gtFine/train/7/000001_gtFine_polygons.json"
  json_path.parent.mkdir(parents=True)
  json_path.write_text(json.dumps({"imgHeight": h, "imgWidth": w, "objects": objects}))
  _lists(tmp_path, "idd-40", {"train": [f"{image} gtFine/train/7/000001_gtFine_labelids.png"]})
  _lists(tmp_path, "idd-39", {"train": [f"{image} gtFine39/train/7/000001_gtFine_labelids.png"]})
  remap.run(tmp_path, ["idd-39"], images=None, workers=1)
  assert "unknown label 'spaceship': 1" in capsys.readouterr().out
  names40, names39 = _names("idd-40"), _names("idd-39")
  out40 = _read(root / "gtFine/train/7/000001_gtFine_labelids.png")
  assert out40.shape == (h, w)
  inside = {  # well inside each shape, away from the edges Pillow may round either way
    "unlabeled": [out40[2:16, 2:28], out40[3:7, 32:38], out40[:1, 1:58]],
    "road": [out40[22:38, 34:38]],
    "car": [out40[27:33, 12:28], out40[27:33, 42:48]],
  }
  for name, areas in inside.items():
    assert all((area == names40.index(name)).all() for area in areas), name
  out39 = _read(root / "gtFine39/train/7/000001_gtFine_labelids.png")
  lut = _tsv_lut("idd-40", "idd-39")
  np.testing.assert_array_equal(out39, np.vectorize(lut.get)(out40))
  assert (out39[2:16, 2:28] == 255).all() and (out39[27:33, 12:28] == names39.index("car")).all()


def test_pascal_context_mat_becomes_uint16_460_then_60_without_ignore(tmp_path):
  root = _root(tmp_path, "pascal-context-460")
  label = _every_id(460, (24, 20), np.uint16)  # 255 is a class here ("money")
  (root / "trainval").mkdir(parents=True)
  scipy.io.savemat(root / "trainval/2008_000002.mat", {"LabelMap": label})
  image = _image(root, "JPEGImages/2008_000002.jpg", label.shape)
  _lists(
    tmp_path, "pascal-context-460", {"val": [f"{image} Segmentation_GT_460cls/2008_000002.png"]}
  )
  _lists(tmp_path, "pascal-context-60", {"val": [f"{image} Segmentation_GT_60cls/2008_000002.png"]})
  remap.run(tmp_path, ["pascal-context-60"], images=None, workers=1)
  out460 = _read(root / "Segmentation_GT_460cls/2008_000002.png")
  assert out460.dtype == np.uint16
  np.testing.assert_array_equal(out460, label)
  lut = _tsv_lut("pascal-context-460", "pascal-context-60", ignore=False)
  out60 = _read(root / "Segmentation_GT_60cls/2008_000002.png")
  np.testing.assert_array_equal(out60, np.vectorize(lut.get)(label))
  background = _names("pascal-context-60").index("background")
  assert background == 1 and (out60[label == 0] == 1).all() and 255 not in out60


@pytest.mark.parametrize("name, folder", [("bdd", "seg/labels/train"), ("voc2012", "SegClassAug")])
def test_bdd_and_voc_labels_are_checked_and_left_alone(tmp_path, name, folder):
  root = _root(tmp_path, name)
  k = len(_names(name))
  image = _image(root, "images/a.jpg", (6, 9))
  _put(root / f"{folder}/a.png", _every_id(k, (6, 9)))
  _lists(tmp_path, name, {"train": [f"{image} {folder}/a.png"]})
  before = _files(tmp_path)
  remap.run(tmp_path, [f"{name}-relabeled" if name == "bdd" else name], images=None, workers=1)
  assert _files(tmp_path) == before
  _put(root / f"{folder}/a.png", np.full((6, 9), k, np.uint8))
  with pytest.raises(PrepareError, match=re.escape(f"{root / folder / 'a.png'}: 54 pixels")):
    remap.run(tmp_path, [name], images=None, workers=1)


def test_images_option_limits_the_work_to_those_rgb_stems(tmp_path):
  outputs = _grey_dataset(tmp_path, "cityscapes-34", "cityscapes-19", [_every_id(34)] * 4)
  remap.run(tmp_path, ["cityscapes-19"], images={"001", "002"}, workers=1)
  assert [p.exists() for p in outputs] == [False, True, True, False]


# ---------------------------------------------------------------- bad input


def _bad_raw_id(tmp_path):
  label = _every_id(34)
  label[0, :3] = 34
  (output,) = _grey_dataset(tmp_path, "cityscapes-34", "cityscapes-19", [label])
  return ["cityscapes-19"], output, r"raw/train/000.png: 3 pixels hold ids that are not .* 34 \(3"


def _size_mismatch(tmp_path):
  (output,) = _grey_dataset(tmp_path, "kitti-34", "kitti-19", [_every_id(34)])
  root = _root(tmp_path, "kitti-34")
  _put(root / "img/train/000.png", np.zeros((12, 21, 3), np.uint8))
  return ["kitti-19"], output, r"raw/train/000.png: label size 20x12 differs from .* \(21x12"


def _missing_coco_png(tmp_path):
  root = _coco_root(tmp_path)
  (root / "annotations/panoptic_val2017/000000000139.png").unlink()
  output = _root(tmp_path, "coco-panoptic-201") / "semantic_annotations201/val2017/000000000139.png"
  return ["coco-panoptic-201"], output, r"000000000139.png: panoptic PNG named by .*val2017.json"


def _empty_coco_segment(tmp_path):
  root = _coco_root(tmp_path)
  path = root / "annotations/panoptic_train2017.json"
  data = json.loads(path.read_text())
  data["annotations"][0]["segments_info"].append({"id": 77, "category_id": 1, "iscrowd": 0})
  path.write_text(json.dumps(data))
  output = (
    _root(tmp_path, "coco-panoptic-201") / "semantic_annotations201/train2017/000000000009.png"
  )
  return ["coco-panoptic-201"], output, r"000000000009.png: segments \[77\] .* have no pixels"


def _unmatched_colour(tmp_path):
  root = _root(tmp_path, "camvid-32")
  rgb = np.repeat(_colors("camvid-32")[:1], 20, axis=0).reshape(4, 5, 3)
  rgb[1, 1] = rgb[2, 2] = (1, 2, 3)
  image = _image(root, "701_StillsRaw_full/a.png", (4, 5))
  _put(root / "Labels32-RGB/a_L.png", rgb[..., ::-1])
  _lists(tmp_path, "camvid-32", {"val": [f"{image} Labels32-RGB/a_L.png"]})
  _lists(tmp_path, "camvid-11", {"val": [f"{image} semseg11/a_L.png"]})
  output = _root(tmp_path, "camvid-11") / "semseg11/a_L.png"
  return ["camvid-11"], output, r"a_L.png: 2 pixels have a colour of no camvid-32 class .*\(1,2,3\)"


@pytest.mark.parametrize(
  "make", [_bad_raw_id, _size_mismatch, _missing_coco_png, _empty_coco_segment, _unmatched_colour]
)
def test_bad_input_names_the_file_and_writes_nothing(tmp_path, make):
  datasets, output, message = make(tmp_path)
  with pytest.raises(PrepareError, match=message):
    remap.run(tmp_path, datasets, images=None, workers=1)
  assert not output.exists()
  _no_temp_files(tmp_path)


def test_lists_that_are_not_line_aligned_are_an_error(tmp_path):
  _grey_dataset(tmp_path, "cityscapes-34", "cityscapes-19", [_every_id(34)] * 4)
  path = catalog.list_path(tmp_path, "cityscapes-19", "train")
  path.write_text("".join(reversed(path.read_text().splitlines(keepends=True))))
  with pytest.raises(PrepareError, match="line 1 names image .*the lists must be line-aligned"):
    remap.run(tmp_path, ["cityscapes-19"], images=None, workers=1)


def test_a_missing_list_names_the_list_file(tmp_path):
  with pytest.raises(
    PrepareError, match=re.escape(str(catalog.list_path(tmp_path, "kitti-34", "train")))
  ):
    remap.run(tmp_path, ["kitti-19"], images=None, workers=1)


# ---------------------------------------------------------------- resume


def test_running_twice_changes_nothing(tmp_path):
  _grey_dataset(tmp_path, "cityscapes-34", "cityscapes-19", [_every_id(34) for _ in range(3)])
  remap.run(tmp_path, ["cityscapes-19"], images=None, workers=1)
  first = _files(tmp_path)
  remap.run(tmp_path, ["cityscapes-19"], images=None, workers=1)
  assert _files(tmp_path) == first


def test_a_run_stopped_by_a_bad_file_then_restarted_matches_a_straight_run(tmp_path):
  labels = [_every_id(34) for _ in range(6)]
  straight, broken = tmp_path / "straight", tmp_path / "broken"
  outputs = _grey_dataset(straight, "cityscapes-34", "cityscapes-19", labels)
  remap.run(straight, ["cityscapes-19"], images=None, workers=2)
  bad = [x.copy() for x in labels]
  bad[3][0, 0] = 200
  _grey_dataset(broken, "cityscapes-34", "cityscapes-19", bad)
  with pytest.raises(PrepareError, match="raw/val/003.png: 1 pixels"):
    remap.run(broken, ["cityscapes-19"], images=None, workers=2)
  _no_temp_files(broken)
  _put(_root(broken, "cityscapes-34") / "raw/val/003.png", labels[3])  # the fixed file
  remap.run(broken, ["cityscapes-19"], images=None, workers=2)
  for output in outputs:
    assert (broken / output.relative_to(straight)).read_bytes() == output.read_bytes()


# ---------------------------------------------------------------- the pieces


def test_jobs_for_follows_each_taxonomy_back_to_its_raw_labels():
  kinds = lambda names: [(j.src, j.dst, j.kind) for j in remap.jobs_for(names)]  # noqa: E731
  assert kinds(["coco-panoptic-133-relabeled"]) == [
    ("coco-panoptic-inst-201", "coco-panoptic-201", "panoptic"),
    ("coco-panoptic-201", "coco-panoptic-133", "lut"),
  ]
  assert kinds(["idd-39"]) == [("idd-40", "idd-40", "polygons"), ("idd-40", "idd-39", "lut")]
  assert kinds(["cityscapes-34-relabeled", "coco-panoptic-inst-201", "voc2012"]) == [
    ("voc2012", "voc2012", "check")
  ]
  every = {j.dst for j in remap.jobs_for(taxonomy.dataset_names())}
  assert every >= {n for n in taxonomy.TEST_DATASETS} | {"ade20k-150", "bdd", "sunrgbd-37"}


def test_panoptic_ids_are_r_plus_256g_plus_65536b_and_unlisted_ids_become_255():
  ids = np.array([[0, 5, 5], [70000, 9, 16777215]])
  bgr = np.stack([ids >> 16, ids >> 8 & 255, ids & 255], -1).astype(np.uint8)
  entry = {
    "file_name": "p.png",
    "segments_info": [
      {"id": 5, "category_id": 1, "iscrowd": 1},  # crowd segments are labelled like any other
      {"id": 70000, "category_id": 200, "iscrowd": 0},  # 70000 needs G and B
      {"id": 16777215, "category_id": 7, "iscrowd": 0},
    ],
  }
  segments = formats.panoptic_segments(entry, Path("p.json"))
  label, unlisted = formats.panoptic_to_semantic(bgr, segments, Path("p.png"))
  np.testing.assert_array_equal(label, [[255, 1, 1], [200, 255, 7]])
  assert unlisted == 1  # id 9; id 0 is void
  # the next image's segments do not see this one's
  label, unlisted = formats.panoptic_to_semantic(bgr, segments[:1], Path("p.png"))
  np.testing.assert_array_equal(label, [[255, 1, 1], [255, 255, 255]])
  assert unlisted == 3


def test_label_colours_are_mseg_apis_in_class_order():
  for name in ("camvid-32", "mapillary-public66"):
    np.testing.assert_array_equal(formats.label_colors(name), _colors(name))
    assert len(formats.label_colors(name)) == len(taxonomy.class_names(name)) == len(_names(name))


@pytest.mark.parametrize(
  "suffix, params", [(".png", []), (".jpg", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])]
)
def test_image_size_reads_the_header(tmp_path, suffix, params):
  path = tmp_path / f"a{suffix}"
  assert cv2.imwrite(str(path), RNG.integers(0, 255, (37, 53, 3), dtype=np.uint8), params)
  assert formats.image_size(path) == (37, 53)
  jpeg = _api("tests", "test_data", "SUNRGBD_test_data", "image", "test", "img-000001.jpg")
  assert formats.image_size(jpeg) == cv2.imread(str(jpeg)).shape[:2]
