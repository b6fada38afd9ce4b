"""The relabel step: MSeg's MTurk records turn remapped labels into the `-relabeled` ones."""

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import shared_path

from mseg_jax import taxonomy as tx
from mseg_jax.input_pipeline import catalog
from mseg_jax.input_pipeline import verify as verify_cli
from mseg_jax.prepare import relabel, segments
from mseg_jax.prepare.common import PrepareError

TEST_DATA = ("reference", "mseg-api", "tests", "test_data")
SECTION_KINDS = {
  "A.1": "coco",
  "A.2": "ade20k",
  "A.3": "cityscapes",
  "A.4": "bdd",
  "A.5": "idd",
  "A.6": "sunrgbd",
  "A.7": "mapillary",
}
NEVER_APPLIED = {  # data_preparation.md §5.7
  "cocop_cocop_keyboard/" + name
  for name in (
    "cocop_train_cocop_keyboard_to_None_of_these.txt",
    "cocop_train_cocop_keyboard_to_freestanding-keyboard.txt",
    "cocop_train_cocop_keyboard_to_laptop-keyboard.txt",
    "cocop_val_cocop_keyboard_to_freestanding-keyboard.txt",
    "cocop_val_cocop_keyboard_to_laptop-keyboard.txt",
  )
} | {
  f"cocop_waterother/cocop_val_cocop_waterother_to_{name}.txt"
  for name in ("fountain", "river_lake", "sea", "swimmingpool", "waterother")
}


def appendix_a() -> list[tuple[str, str, str, str, str, int]]:
  """(kind, split, orig, new, file, segments) rows of the spec's Appendix A, in order."""
  doc = shared_path("docs", "data_preparation.md").read_text(encoding="utf-8")
  appendix = doc[doc.index("## Appendix A.") : doc.index("## Appendix B.")]
  rows = []
  for section in appendix.split("\n### ")[1:]:
    for line in section.splitlines():
      m = re.fullmatch(r"\| \d+ \| (train|val) \| (\S+) → (\S+) \| (\S+) \| (\d+) \|", line)
      if m:
        rows.append((SECTION_KINDS[section[:3]], *m.groups()[:4], int(m[5])))
  return rows


# --- package data --------------------------------------------------------------------------


def test_records_are_appendix_a_in_order():
  expected = appendix_a()
  assert len(expected) == 381
  got = [
    (r.kind, r.split, r.orig_class, r.relabeled_class, r.file, len(r.segments))
    for r in relabel.records()
  ]
  assert got == expected


def test_segment_lists_are_mseg_api_relabeled_data_line_for_line():
  folder = shared_path("reference", "mseg-api", "mseg", "relabeled_data")
  shipped = {r.file: r.segments for r in relabel.records()}
  for file, names in shipped.items():
    lines = (folder / file).read_text(encoding="utf-8").split("\n")
    assert names == tuple(line for line in lines if line), file
  on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*.txt")}
  assert len(on_disk) == 391
  assert on_disk - shipped.keys() == NEVER_APPLIED
  assert sum(len(n) for n in shipped.values()) == 226_413


def test_record_classes_are_classes_of_each_relabeled_taxonomy():
  for dataset, run in relabel.RUNS.items():
    names = set(tx.class_names(dataset)) | {"unlabeled"}
    for record in relabel.records():
      if record.kind == run.kind:
        assert {record.orig_class, record.relabeled_class} <= names, (dataset, record.file)


# --- segment names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "kind, name, split, expected",
  [
    ("ade20k", "ADE_val_00000318_248.png", "val", ("validation", "ADE_val_00000318", 248)),
    ("ade20k", "ADE_train_00016125_113.png", "train", ("training", "ADE_train_00016125", 113)),
    ("coco", "000000024880_7237508.png", "train", ("train2017", "000000024880", 7237508)),
    ("coco", "000000000139_6068135.png", "val", ("val2017", "000000000139", 6068135)),
    ("bdd", "0f4e8f1e-6ba53d52_11.jpg", "train", ("train", "0f4e8f1e-6ba53d52", 11)),
    ("bdd", "ab309345-00000000_12.jpg", "val", ("val", "ab309345-00000000", 12)),
    (
      "cityscapes",
      "seqfrankfurt_frankfurt_000000_013942_leftImg8bit_28.jpg",
      "val",
      ("frankfurt", "frankfurt_000000_013942_leftImg8bit", 28),
    ),
    (
      "cityscapes",
      "seqmonchengladbach_monchengladbach_000000_023856_leftImg8bit_35.jpg",
      "train",
      ("monchengladbach", "monchengladbach_000000_023856_leftImg8bit", 35),
    ),
    ("idd", "seq173_316862_leftImg8bit_34.jpg", "train", ("173", "316862_leftImg8bit", 34)),
    ("idd", "seq0_005506_leftImg8bit_15.jpg", "val", ("0", "005506_leftImg8bit", 15)),
    ("sunrgbd", "img-002177_11.jpg", "train", ("train", "img-002177", 11)),
    ("sunrgbd", "img-002164_11.jpg", "val", ("test", "img-002164", 11)),
    (
      "mapillary",
      "mapillary_czkO_9In4u30opBy5H1uLg_259.jpg",
      "train",
      ("labels", "czkO_9In4u30opBy5H1uLg", 259),
    ),
    # keys that start with "_" or hold "__" and "-"
    (
      "mapillary",
      "mapillary__ofWfpXFBEDA7-4P3hKrBA_7936.jpg",
      "val",
      ("labels", "_ofWfpXFBEDA7-4P3hKrBA", 7936),
    ),
    (
      "mapillary",
      "mapillary_I7__-RGl_f9Bhvxf-R3i1Q_7936.jpg",
      "train",
      ("labels", "I7__-RGl_f9Bhvxf-R3i1Q", 7936),
    ),
  ],
)
def test_parse_reads_each_datasets_segment_name(kind, name, split, expected):
  assert segments.parse(kind, name, split) == expected


def test_every_shipped_segment_name_parses_to_a_distinct_segment():
  seen = set()
  for record in relabel.records():
    for name in record.segments:
      segment = segments.parse(record.kind, name, record.split)
      stem = name.rsplit(".", 1)[0]
      assert stem.endswith(f"_{segment.seg_id}") and segment.stem in stem, name
      key = (record.kind, record.split, segment)
      assert key not in seen, name
      seen.add(key)
  assert len(seen) == 226_413


@pytest.mark.parametrize(
  "kind, name",
  [("coco", "000000024880.png"), ("bdd", "0f4e8f1e-6ba53d52_x.jpg"), ("idd", "173_316862_34.jpg")],
)
def test_parse_rejects_a_name_without_segment_id_or_folder(kind, name):
  with pytest.raises(ValueError, match=re.escape(name)):
    segments.parse(kind, name, "train")


# --- masks -----------------------------------------------------------------------------------


def test_polygon_mask_fills_with_outline_like_mseg_api():
  square = segments.polygon_mask([(0, 0), (2, 0), (2, 2), (0, 2)], 4, 4)
  np.testing.assert_array_equal(square, np.pad(np.ones((3, 3), bool), ((0, 1), (0, 1))))
  rect = segments.polygon_mask([[1, 1], [3, 1], [3, 4], [1, 4]], 6, 6)
  expected = np.zeros((6, 6), bool)
  expected[1:5, 1:4] = True
  np.testing.assert_array_equal(rect, expected)
  line = segments.polygon_mask([(1, 2), (4, 2), (2, 2)], 4, 6)
  assert np.flatnonzero(line.any(1)).tolist() == [2] and line[2, 1:5].all()


def test_ade20k_instance_ids_resize_with_opencv_floor_nearest(tmp_path):
  b = np.array([[5, 4], [5, 5]], np.uint8)
  path = tmp_path / "x_seg.png"
  cv2.imwrite(str(path), np.stack([b, np.zeros_like(b), np.full_like(b, 9)], -1))  # BGR
  ids = segments.ade20k_instance_ids(path, (4, 4))
  expected = np.full((4, 4), 5)
  expected[:2, 2:] = 4
  np.testing.assert_array_equal(ids, expected)


def test_ade20k_sample_segment_30_has_40609_pixels(shared):
  seg = shared.joinpath(*TEST_DATA, "ADE20K_test_data", "ADE20K_2016_07_26", "images", "training")
  ids = segments.ade20k_instance_ids(
    seg / "a" / "aiport_terminal" / "ADE_train_00000001_seg.png", (512, 683)
  )
  assert int((ids == 30).sum()) == 40_609


# --- a data root -----------------------------------------------------------------------------


def write_lists(data_root: Path, name: str, split: str, pairs: list[tuple[str, str]]) -> None:
  path = catalog.list_path(data_root, name, split)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(f"{rgb} {label}\n" for rgb, label in pairs))


def write_png(path: Path, array: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  assert cv2.imwrite(str(path), array)


def read(path: Path) -> np.ndarray:
  return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def setup_run(data_root: Path, dataset: str, split: str, lines: list[tuple[str, str, str]]) -> None:
  """Writes the line-aligned source and -relabeled lists of one split."""
  write_lists(data_root, relabel.RUNS[dataset].source, split, [(r, s) for r, s, _ in lines])
  write_lists(data_root, dataset, split, [(r, d) for r, _, d in lines])
  other = "val" if split == "train" else "train"
  for name in (relabel.RUNS[dataset].source, dataset):
    if not catalog.list_path(data_root, name, other).exists():
      write_lists(data_root, name, other, [])


def use_records(monkeypatch, *rows) -> None:
  """Replaces the shipped records by (kind, split, orig, new, file, segment names) rows."""
  records = tuple(relabel.Record(*row[:5], tuple(row[5])) for row in rows)
  monkeypatch.setattr(relabel, "records", lambda: records)


def relabeled_id(dataset: str, name: str) -> int:
  return 255 if name == "unlabeled" else tx.class_id(dataset, name)


# --- real samples ----------------------------------------------------------------------------


def relabel_sunrgbd_sample(shared: Path, tmp_path: Path) -> Path:
  """Relabels the SUN RGB-D sample (train and test img-000001); returns the dataset root."""
  sample = shared.joinpath(*TEST_DATA, "SUNRGBD_test_data")
  root = catalog.dataset_root(tmp_path, "sunrgbd-37")
  shutil.copytree(sample, root)
  for split, folder in (("train", "train"), ("val", "test")):
    setup_run(
      tmp_path,
      "sunrgbd-37-relabeled",
      split,
      [
        (
          f"image/{folder}/img-000001.jpg",
          f"semseg-label37/{folder}/00000001.png",
          f"semseg-relabeled37/{folder}/00000001.png",
        )
      ],
    )
  relabel.run(tmp_path, ["sunrgbd-37-relabeled"], images=None, workers=1)
  return root


def test_sunrgbd_sample_relabels_chairs_and_lamps_as_the_records_say(shared, tmp_path):
  root = relabel_sunrgbd_sample(shared, tmp_path)
  dataset, lut = "sunrgbd-37-relabeled", tx.pairwise_lut("sunrgbd-37", "sunrgbd-37-relabeled")
  lamp = relabeled_id(dataset, "lamp")
  source = read(root / "semseg-label37" / "test" / "00000001.png")
  assert int((source == 21).sum()) == 37_819  # spec §6: ceiling of test img-000001
  expected = lut[source]
  expected[source == 34] = lamp  # test lamp -> lamp (light_other otherwise)
  np.testing.assert_array_equal(read(root / "semseg-relabeled37/test/00000001.png"), expected)

  source = read(root / "semseg-label37" / "train" / "00000001.png")
  expected = lut[source]
  expected[source == 4] = 255  # train chair -> None_of_these
  expected[source == 34] = lamp
  assert (source == 4).any() and (source == 34).any()
  np.testing.assert_array_equal(read(root / "semseg-relabeled37/train/00000001.png"), expected)
  assert relabel.verify(tmp_path, [dataset]) == []


COCO_SAMPLE_RECORDS = {  # segment -> new class: every record line naming these images
  ("val", "000000000139"): {
    2633066: "chair_other",
    2831194: "chair_other",
    3103374: "chair_other",
    3165572: "chair_other",
    3496593: "chair_other",
    5274512: "cabinet",
    6391959: "rug_floormat",
    3032951: "table",
    7238567: "table",
    6068135: "lamp",
  },
  ("train", "000000000009"): {8922372: "table"},
}


def coco_133_label(panoptic: np.ndarray, segments_info: list[dict]) -> np.ndarray:
  """The remap step's coco-panoptic-133 label: category ids (201) -> 133, void = 255."""
  label201 = np.full(panoptic.shape, 255, np.uint8)
  for seg in segments_info:
    label201[panoptic == seg["id"]] = seg["category_id"]
  return tx.pairwise_lut("coco-panoptic-201", "coco-panoptic-133")[label201]


def test_coco_samples_keep_strict_checks_and_turn_the_light_into_a_lamp(shared, tmp_path):
  sample = shared.joinpath(*TEST_DATA, "COCOPanoptic_test_data")
  root = catalog.dataset_root(tmp_path, "coco-panoptic-133")
  shutil.copytree(sample, root)
  dataset = "coco-panoptic-133-relabeled"
  lut = tx.pairwise_lut("coco-panoptic-133", dataset)
  expected = {}
  for (split, stem), changes in COCO_SAMPLE_RECORDS.items():
    folder = f"{split}2017"
    (annotation,) = json.loads((root / f"annotations/panoptic_{folder}.json").read_text())[
      "annotations"
    ]
    rgb = read(root / f"annotations/panoptic_{folder}/{stem}.png")[..., ::-1].astype(np.int64)
    panoptic = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    write_png(
      root / f"semantic_annotations133/{folder}/{stem}.png",
      coco_133_label(panoptic, annotation["segments_info"]),
    )
    setup_run(
      tmp_path,
      dataset,
      split,
      [
        (
          f"images/{folder}/{stem}.jpg",
          f"semantic_annotations133/{folder}/{stem}.png",
          f"semantic_relabeled133/{folder}/{stem}.png",
        )
      ],
    )
    for record in relabel.records():  # the spec's table names exactly these segments
      if record.kind == "coco" and record.split == split:
        found = {int(n[len(stem) + 1 : -4]) for n in record.segments if n.startswith(stem + "_")}
        assert {changes[s] for s in found} <= {record.relabeled_class}
        changes = {s: c for s, c in changes.items() if s not in found}
    assert changes == {}
    expected[split, stem] = lut[read(root / f"semantic_annotations133/{folder}/{stem}.png")]
    for seg_id, name in COCO_SAMPLE_RECORDS[split, stem].items():
      expected[split, stem][panoptic == seg_id] = relabeled_id(dataset, name)

  relabel.run(tmp_path, [dataset], images=None, workers=1)
  for (split, stem), label in expected.items():
    np.testing.assert_array_equal(
      read(root / f"semantic_relabeled133/{split}2017/{stem}.png"), label
    )
  lamp = read(root / "semantic_relabeled133/val2017/000000000139.png") == relabeled_id(
    dataset, "lamp"
  )
  assert lamp.any()
  assert relabel.verify(tmp_path, [dataset]) == []


def test_ade20k_instance_record_overwrites_the_resized_instance_mask(shared, tmp_path, monkeypatch):
  sample = shared.joinpath(*TEST_DATA, "ADE20K_test_data")
  shutil.copytree(sample / "ADE20K_2016_07_26", catalog.dataset_root(tmp_path, "ade20k-151-inst"))
  root = catalog.dataset_root(tmp_path, "ade20k-150")
  raw = read(sample / "ADEChallengeData2016/annotations/training/ADE_train_00000001.png")
  write_png(
    root / "annotations_semseg150/training/ADE_train_00000001.png",
    tx.pairwise_lut("ade20k-151", "ade20k-150")[raw],
  )
  dataset = "ade20k-150-relabeled"
  setup_run(
    tmp_path,
    dataset,
    "train",
    [
      (
        "images/training/ADE_train_00000001.jpg",
        "annotations_semseg150/training/ADE_train_00000001.png",
        "annotations_semseg150_relabeled/training/ADE_train_00000001.png",
      )
    ],
  )
  use_records(
    monkeypatch, ("ade20k", "train", "person", "bicyclist", "a.txt", ["ADE_train_00000001_30.png"])
  )
  relabel.run(tmp_path, [dataset], images=None, workers=1)

  seg = read(
    sample / "ADE20K_2016_07_26/images/training/a/aiport_terminal/ADE_train_00000001_seg.png"
  )
  b = seg[..., 0]  # B of BGR; nearest resize by the spec's floor rule, src = floor(dst * H / h)
  rows = np.arange(raw.shape[0]) * b.shape[0] // raw.shape[0]
  cols = np.arange(raw.shape[1]) * b.shape[1] // raw.shape[1]
  mask = b[rows[:, None], cols[None, :]] == 30
  assert int(mask.sum()) == 40_609
  expected = tx.pairwise_lut("ade20k-150", dataset)[
    read(root / "annotations_semseg150/training/ADE_train_00000001.png")
  ]
  expected[mask] = tx.class_id(dataset, "bicyclist")
  np.testing.assert_array_equal(
    read(root / "annotations_semseg150_relabeled/training/ADE_train_00000001.png"), expected
  )
  assert relabel.verify(tmp_path, [dataset]) == []


# --- synthetic datasets ----------------------------------------------------------------------


def polygons_json(path: Path, h: int, w: int, objects: list[dict]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"imgHeight": h, "imgWidth": w, "objects": objects}))


def box(x0: int, y0: int, x1: int, y1: int) -> list[list[int]]:
  return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


@pytest.mark.parametrize("dataset", ["cityscapes-19-relabeled", "cityscapes-34-relabeled"])
def test_cityscapes_polygons_overwrite_in_record_order_without_strict_check(
  tmp_path, monkeypatch, dataset
):
  source = relabel.RUNS[dataset].source
  stem = "aachen_000001_000019"
  root = catalog.dataset_root(tmp_path, dataset)
  folder = {"cityscapes-19": "gtFine_19cls", "cityscapes-34": "gtFine"}[source]
  out_folder = {
    "cityscapes-19": "gtFine_19cls_relabeled",
    "cityscapes-34": "gtFine_34cls_relabeled",
  }[source]
  label = np.full((12, 16), tx.class_id(source, "road"), np.uint8)
  label[2:8, 3:9] = tx.class_id(source, "rider")
  write_png(root / f"{folder}/train/aachen/{stem}_gtFine_labelIds.png", label)
  polygons_json(
    root / f"gtFine/train/aachen/{stem}_gtFine_polygons.json",
    12,
    16,
    [
      {"label": "road", "polygon": box(0, 0, 15, 11)},
      {"label": "rider", "polygon": box(3, 2, 8, 7)},
      {"label": "rider", "polygon": box(6, 5, 11, 9)},
    ],
  )
  rgb = f"leftImg8bit/train/aachen/{stem}_leftImg8bit.png"
  out = f"{out_folder}/train/aachen/{stem}_gtFine_labelIds.png"
  setup_run(
    tmp_path, dataset, "train", [(rgb, f"{folder}/train/aachen/{stem}_gtFine_labelIds.png", out)]
  )
  name = f"seqaachen_{stem}_leftImg8bit_{{}}.jpg"
  use_records(
    monkeypatch,
    ("cityscapes", "train", "rider_other", "motorcyclist", "a.txt", [name.format(1)]),
    ("cityscapes", "train", "rider_other", "person", "b.txt", [name.format(2)]),
  )
  relabel.run(tmp_path, [dataset], images=None, workers=1)

  expected = tx.pairwise_lut(source, dataset)[label]
  assert expected[2, 3] == tx.class_id(dataset, "bicyclist")  # the TSV default for riders
  expected[2:8, 3:9] = tx.class_id(dataset, "motorcyclist")
  expected[5:10, 6:12] = tx.class_id(dataset, "person")  # later record wins, road overwritten
  np.testing.assert_array_equal(read(tmp_path / catalog.DEFAULT_ROOTS[dataset] / out), expected)


def test_idd_polygon_segment_ids_are_object_ids_when_present(tmp_path, monkeypatch):
  dataset, root = "idd-39-relabeled", catalog.dataset_root(tmp_path, "idd-39")
  label = np.full((10, 10), 255, np.uint8)
  write_png(root / "gtFine39/val/173/316862_gtFine_labelids.png", label)
  polygons_json(
    root / "gtFine/val/173/316862_gtFine_polygons.json",
    10,
    10,
    [
      {"id": 34, "label": "rider", "polygon": box(1, 1, 3, 3)},
      {"id": 7, "label": "rider", "polygon": box(5, 5, 8, 8)},
    ],
  )
  setup_run(
    tmp_path,
    dataset,
    "val",
    [
      (
        "leftImg8bit/val/173/316862_leftImg8bit.png",
        "gtFine39/val/173/316862_gtFine_labelids.png",
        "gtFine39_relabeled/val/173/316862_gtFine_labelids.png",
      )
    ],
  )
  use_records(
    monkeypatch,
    ("idd", "val", "rider_other", "bicyclist", "a.txt", ["seq173_316862_leftImg8bit_7.jpg"]),
  )
  relabel.run(tmp_path, [dataset], images=None, workers=1)
  expected = label.copy()
  expected[5:9, 5:9] = tx.class_id(dataset, "bicyclist")
  np.testing.assert_array_equal(
    read(root / "gtFine39_relabeled/val/173/316862_gtFine_labelids.png"), expected
  )


def bdd_root(tmp_path: Path, stems: list[str], split: str = "train") -> Path:
  """BDD labels with person (11) in the left half and rider (12) in a corner."""
  root = catalog.dataset_root(tmp_path, "bdd")
  rng = np.random.default_rng(0)
  lines = []
  for stem in stems:
    label = rng.integers(0, 11, (16, 20), dtype=np.uint8)
    label[:, :6] = 11
    label[:3, -3:] = 12
    write_png(root / f"seg/labels/{split}/{stem}_train_id.png", label)
    lines.append(
      (
        f"seg/images/{split}/{stem}.jpg",
        f"seg/labels/{split}/{stem}_train_id.png",
        f"seg_relabeled/labels/{split}/{stem}_train_id.png",
      )
    )
  setup_run(tmp_path, "bdd-relabeled", split, lines)
  return root


def test_bdd_whole_class_records_relabel_every_pixel_of_the_class(tmp_path, monkeypatch):
  root = bdd_root(tmp_path, ["0f4e8f1e-6ba53d52", "ab309345-00000000"])
  use_records(
    monkeypatch,
    ("bdd", "train", "person", "bicyclist", "a.txt", ["0f4e8f1e-6ba53d52_11.jpg"]),
    ("bdd", "train", "rider_other", "unlabeled", "b.txt", ["0f4e8f1e-6ba53d52_12.jpg"]),
  )
  relabel.run(tmp_path, ["bdd-relabeled", "cityscapes-19"], images=None, workers=1)
  lut = tx.pairwise_lut("bdd", "bdd-relabeled")
  for stem, changed in (("0f4e8f1e-6ba53d52", True), ("ab309345-00000000", False)):
    source = read(root / f"seg/labels/train/{stem}_train_id.png")
    expected = lut[source]
    if changed:
      expected[source == 11] = tx.class_id("bdd-relabeled", "bicyclist")
      expected[source == 12] = 255
    np.testing.assert_array_equal(
      read(root / f"seg_relabeled/labels/train/{stem}_train_id.png"), expected
    )


def mapillary_root(tmp_path: Path, key: str) -> tuple[Path, np.ndarray, np.ndarray]:
  """A Mapillary label: ground animal 256 at the top left, water 7936 at the bottom."""
  source = "mapillary-public65"
  root = catalog.dataset_root(tmp_path, source)
  label = np.full((20, 30), tx.class_id(source, "Road"), np.uint8)
  instances = np.zeros((20, 30), np.uint16)
  label[2:6, 2:8], instances[2:6, 2:8] = tx.class_id(source, "Ground Animal"), 256
  label[12:, :], instances[12:, :] = tx.class_id(source, "Water"), 7936
  write_png(root / f"training_semseg65/labels/{key}.png", label)
  write_png(root / f"training/instances/{key}.png", instances)
  setup_run(
    tmp_path,
    "mapillary-public65-relabeled",
    "train",
    [
      (
        f"training/images/{key}.jpg",
        f"training_semseg65/labels/{key}.png",
        f"training_semseg65_relabeled/labels/{key}.png",
      )
    ],
  )
  return root, label, instances


def test_mapillary_instance_records_relabel_their_instance(tmp_path, monkeypatch):
  key = "_ofWfpX_BEDA7-4P3hKrBA"
  dataset = "mapillary-public65-relabeled"
  root, label, instances = mapillary_root(tmp_path, key)
  use_records(
    monkeypatch,
    ("mapillary", "train", "water_other", "sea", "w.txt", [f"mapillary_{key}_7936.jpg"]),
    ("mapillary", "train", "dog", "horse", "d.txt", [f"mapillary_{key}_256.jpg"]),
  )
  relabel.run(tmp_path, [dataset], images=None, workers=1)
  expected = tx.pairwise_lut("mapillary-public65", dataset)[label]
  expected[instances == 256] = tx.class_id(dataset, "horse")
  expected[instances == 7936] = tx.class_id(dataset, "sea")
  np.testing.assert_array_equal(
    read(root / f"training_semseg65_relabeled/labels/{key}.png"), expected
  )


def test_strict_check_failure_names_the_list_line_image_and_counts(tmp_path, monkeypatch):
  key = "czkO_9In4u30opBy5H1uLg"
  root, label, instances = mapillary_root(tmp_path, key)
  instances[2:6, 8:10] = 256  # the instance now also covers 8 road pixels
  write_png(root / f"training/instances/{key}.png", instances)
  use_records(
    monkeypatch,
    (
      "mapillary",
      "train",
      "dog",
      "horse",
      "mapillarypublic_groundanimal/d.txt",
      ["x_1.jpg", f"mapillary_{key}_256.jpg"],
    ),
  )
  dog = tx.class_id("mapillary-public65-relabeled", "dog")
  road = tx.class_id("mapillary-public65-relabeled", "road")
  message = (
    rf"relabeled_data/mapillarypublic_groundanimal/d\.txt:2: .*{key}\.png.*strict"
    rf".*\{{(?=.*{dog}: 24)(?=.*{road}: 8)"
  )
  with pytest.raises(PrepareError, match=message):  # raised in a worker process
    relabel.run(tmp_path, ["mapillary-public65-relabeled"], images=None, workers=2)
  assert not (root / f"training_semseg65_relabeled/labels/{key}.png").exists()


def test_record_whose_segment_does_not_exist_is_an_error(tmp_path, monkeypatch):
  bdd_root(tmp_path, ["0f4e8f1e-6ba53d52"])
  use_records(
    monkeypatch,
    (
      "bdd",
      "train",
      "person",
      "bicyclist",
      "bdd_person/a.txt",
      ["0f4e8f1e-6ba53d52_11.jpg", "0f4e8f1e-6ba53d52_17.jpg"],
    ),
  )
  with pytest.raises(
    PrepareError, match=r"bdd_person/a\.txt:2: segment 0f4e8f1e-6ba53d52_17\.jpg .*not found"
  ):
    relabel.run(tmp_path, ["bdd-relabeled"], images=None, workers=1)


def test_coco_segment_missing_from_segments_info_is_an_error(shared, tmp_path, monkeypatch):
  root = catalog.dataset_root(tmp_path, "coco-panoptic-133")
  shutil.copytree(shared.joinpath(*TEST_DATA, "COCOPanoptic_test_data"), root)
  write_png(
    root / "semantic_annotations133/train2017/000000000009.png", np.zeros((480, 640), np.uint8)
  )
  setup_run(
    tmp_path,
    "coco-panoptic-133-relabeled",
    "train",
    [
      (
        "images/train2017/000000000009.jpg",
        "semantic_annotations133/train2017/000000000009.png",
        "semantic_relabeled133/train2017/000000000009.png",
      )
    ],
  )
  use_records(monkeypatch, ("coco", "train", "table", "desk", "t.txt", ["000000000009_1234.png"]))
  with pytest.raises(PrepareError, match=r"t\.txt:1: .*1234 is not in the segments_info"):
    relabel.run(tmp_path, ["coco-panoptic-133-relabeled"], images=None, workers=1)


def test_record_class_outside_the_relabeled_taxonomy_is_an_error(tmp_path, monkeypatch):
  bdd_root(tmp_path, ["0f4e8f1e-6ba53d52"])
  use_records(
    monkeypatch, ("bdd", "train", "person", "cyclist", "a.txt", ["0f4e8f1e-6ba53d52_11.jpg"])
  )
  with pytest.raises(PrepareError, match="'cyclist' is not a class of bdd-relabeled"):
    relabel.run(tmp_path, ["bdd-relabeled"], images=None, workers=1)


def test_summary_counts_applied_and_skipped_segments(tmp_path, monkeypatch, capsys):
  stems = ["0f4e8f1e-6ba53d52", "ab309345-00000000", "c0f5b0d0-6e438a33"]
  root = bdd_root(tmp_path, stems)
  use_records(
    monkeypatch,
    (
      "bdd",
      "train",
      "person",
      "bicyclist",
      "a.txt",
      [f"{stems[0]}_11.jpg", f"{stems[1]}_11.jpg", "99999999-00000000_11.jpg"],
    ),
  )
  relabel.run(
    tmp_path, ["bdd-relabeled"], images={stems[0], stems[2], "99999999-00000000"}, workers=1
  )
  out = capsys.readouterr().out
  person = int((read(root / f"seg/labels/train/{stems[0]}_train_id.png") == 11).sum())
  assert "bdd-relabeled: 2 labels written, 0 already done; 1 segments applied" in out
  assert f"{person} px changed" in out
  assert "1 image not in list, 1 not in --images" in out
  assert not (root / f"seg_relabeled/labels/train/{stems[1]}_train_id.png").exists()


def test_invalid_source_ids_become_ignore_and_are_counted(tmp_path, monkeypatch):
  root = bdd_root(tmp_path, ["0f4e8f1e-6ba53d52"])
  label = read(root / "seg/labels/train/0f4e8f1e-6ba53d52_train_id.png")
  label[0, :5] = 40
  write_png(root / "seg/labels/train/0f4e8f1e-6ba53d52_train_id.png", label)
  use_records(monkeypatch)
  summary = relabel.relabel_dataset(tmp_path, "bdd-relabeled")
  assert summary.invalid_pixels == 5
  assert (
    read(root / "seg_relabeled/labels/train/0f4e8f1e-6ba53d52_train_id.png")[0, :5] == 255
  ).all()


def test_misaligned_lists_are_an_error(tmp_path, monkeypatch):
  bdd_root(tmp_path, ["0f4e8f1e-6ba53d52", "ab309345-00000000"])
  path = catalog.list_path(tmp_path, "bdd-relabeled", "train")
  path.write_text("\n".join(reversed(path.read_text().splitlines())))
  use_records(monkeypatch)
  with pytest.raises(PrepareError, match="entry 1: not the same image"):
    relabel.run(tmp_path, ["bdd-relabeled"], images=None, workers=1)


# --- resume and verify -----------------------------------------------------------------------


def test_killed_run_resumes_to_the_same_files_as_a_straight_run(tmp_path, monkeypatch):
  stems = [f"{i:08x}-0000000{i}" for i in range(6)]
  rows = [
    ("bdd", "train", "person", "bicyclist", "a.txt", [f"{s}_11.jpg" for s in stems[::2]]),
    ("bdd", "train", "rider_other", "unlabeled", "b.txt", [f"{s}_12.jpg" for s in stems[1::2]]),
  ]
  use_records(monkeypatch, *rows)
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  for data_root in (straight, killed):
    bdd_root(data_root, stems)
  relabel.run(straight, ["bdd-relabeled"], images=None, workers=1)

  writes = []
  original = relabel.write_label_png

  def write_then_die(path, label):
    if len(writes) == 3:
      raise KeyboardInterrupt
    writes.append(path)
    original(path, label)

  monkeypatch.setattr(relabel, "write_label_png", write_then_die)
  with pytest.raises(KeyboardInterrupt):
    relabel.run(killed, ["bdd-relabeled"], images=None, workers=1)
  monkeypatch.setattr(relabel, "write_label_png", original)
  out = catalog.dataset_root(killed, "bdd") / "seg_relabeled/labels/train"
  assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in writes)
  summary = relabel.relabel_dataset(killed, "bdd-relabeled")
  assert (summary.written, summary.done_before) == (3, 3)
  for stem in stems:
    name = f"seg_relabeled/labels/train/{stem}_train_id.png"
    assert (catalog.dataset_root(killed, "bdd") / name).read_bytes() == (
      catalog.dataset_root(straight, "bdd") / name
    ).read_bytes()
  again = relabel.relabel_dataset(killed, "bdd-relabeled")
  assert (again.written, again.done_before) == (0, 6)


def test_verify_reports_a_label_that_disagrees_with_a_record(tmp_path, monkeypatch):
  root = bdd_root(tmp_path, ["0f4e8f1e-6ba53d52"])
  use_records(
    monkeypatch,
    ("bdd", "train", "person", "bicyclist", "bdd_person/a.txt", ["0f4e8f1e-6ba53d52_11.jpg"]),
  )
  relabel.run(tmp_path, ["bdd-relabeled"], images=None, workers=1)
  assert relabel.verify(tmp_path, ["bdd-relabeled"]) == []
  out = root / "seg_relabeled/labels/train/0f4e8f1e-6ba53d52_train_id.png"
  label = read(out)
  label[0, 0] = 3
  write_png(out, label)
  (error,) = relabel.verify(tmp_path, ["bdd-relabeled"])
  assert "bdd_person/a.txt:1" in error and str(out) in error and "3: 1" in error


def test_verify_cli_relabeled_flag_checks_the_records(shared, tmp_path, monkeypatch, capsys):
  root = relabel_sunrgbd_sample(shared, tmp_path)
  args = ["--data-root", str(tmp_path), "--datasets", "sunrgbd-37-relabeled", "--relabeled"]
  args += ["--threads", "1"]
  assert verify_cli.main(args) == 0
  out = root / "semseg-relabeled37/train/00000001.png"
  label = read(out)
  label[read(root / "semseg-label37/train/00000001.png") == 34] = 0
  write_png(out, label)
  assert verify_cli.main(args) == 1
  assert "sunrgbd_lamp/sunrgbd_train_sunrgbd_lamp_to_lamp.txt:1" in capsys.readouterr().out
