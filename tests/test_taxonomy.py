"""The taxonomy layer: MSeg's universal taxonomy, dataset taxonomies, LUTs and projections."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import shared_path

from mseg_jax import taxonomy as tx
from mseg_jax.taxonomy import __main__ as cli
from mseg_jax.taxonomy import importer

MSEG_API = ("reference", "mseg-api")
TEST_COLUMNS = (
  "kitti-19",
  "voc2012",
  "scannet-20",
  "camvid-11",
  "wilddash-19",
  "pascal-context-60",
)
NOT_DATASETS = (
  "Parent Category",
  "universal",
  "WordNet 3.1 Synset",
  "Defn (Most of the meanings are derived from WordNet 3.1)",
  "Modification of WordNet Node",
  "nyudepthv2-37",
  "scannet-37",
  "test-nyudepthv2-37",
)


# --- An independent replica of mseg-api's rules, read straight from the staged files. ---------


def genfromtxt_names(mseg_api: Path, dataset: str) -> list[str]:
  """names_utils.read_str_list: np.genfromtxt(delimiter="\\n", dtype=str)."""
  path = mseg_api / "mseg" / "dataset_lists" / dataset / f"{dataset}_names.txt"
  return [str(n) for n in np.atleast_1d(np.genfromtxt(path, delimiter="\n", dtype=str))]


def parse_entry(entry: str) -> list[str]:
  """taxonomy_converter.parse_entry."""
  assert entry.strip() == entry
  if entry == "":
    return []
  if entry.startswith("{"):
    return [c.strip() for c in entry[1:-1].split(",")]
  return [entry]


@pytest.fixture(scope="module")
def mseg_api() -> Path:
  return shared_path(*MSEG_API)


@pytest.fixture(scope="module")
def master(mseg_api):
  """MSeg_master.tsv as a list of dicts (the rows pandas' iterrows gives)."""
  path = mseg_api / "mseg" / "class_remapping_files" / "MSeg_master.tsv"
  with open(path, newline="") as f:
    return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="module")
def reference(mseg_api, master):
  """uname2uid, train id->uid dicts, test (uid, test id) pairs, as TaxonomyConverter builds."""
  uname2uid = {}
  for i, row in enumerate(master):
    name = row["universal"].strip()
    uname2uid[name] = 255 if name == "unlabeled" else i
  columns = [c for c in master[0] if c not in NOT_DATASETS]
  names = {d: genfromtxt_names(mseg_api, d) for d in columns}
  d2u, u2d = {}, {}
  for d in columns:
    if d in TEST_COLUMNS:
      u2d[d] = [
        (uname2uid[row["universal"].strip()], names[d].index(row[d]))
        for row in master
        if row[d] != ""
      ]
    else:
      d2u[d] = {
        names[d].index(c): uname2uid[row["universal"].strip()]
        for row in master
        for c in parse_entry(row[d])
      }
      d2u[d][255] = 255
  return {"uname2uid": uname2uid, "names": names, "d2u": d2u, "u2d": u2d}


def test_universal_classes_follow_the_tsv_rows(reference):
  expected = [n for n, i in sorted(reference["uname2uid"].items(), key=lambda x: x[1]) if i < 255]
  assert tx.universal_names() == expected
  assert tx.NUM_UNIVERSAL == len(expected) == 194
  assert tx.class_names("universal") == expected


def test_every_names_file_is_read_as_mseg_api_reads_it(mseg_api):
  folders = sorted(p.name for p in (mseg_api / "mseg" / "dataset_lists").iterdir())
  assert tx.dataset_names() == folders
  assert len(folders) == 33
  for d in folders:
    assert tx.class_names(d) == genfromtxt_names(mseg_api, d), d
  bdd_semseg = (mseg_api / "mseg/dataset_lists/bdd/bddsemseg_names.txt").read_text()
  assert tx.class_names("bdd") == bdd_semseg.strip().splitlines()


def test_to_universal_luts_follow_mseg_api_rules(reference):
  assert set(tx.TRAIN_DATASETS) == set(reference["d2u"])
  for d, id2uid in reference["d2u"].items():
    lut = tx.to_universal_lut(d)
    assert lut.dtype == np.uint8 and lut.shape == (256,), d
    expected = np.full(256, 255, np.uint8)  # unmapped -> 255 (mseg-api: 0)
    for i, u in id2uid.items():
      expected[i] = u
    np.testing.assert_array_equal(lut, expected, err_msg=d)
    # With the shipped TSV every class has a row (the `unlabeled` row counts).
    assert set(id2uid) == set(range(len(reference["names"][d]))) | {255}, d


def test_projection_matrices_follow_mseg_api_rules(reference):
  assert set(tx.TEST_DATASETS) == set(reference["u2d"])
  for d, pairs in reference["u2d"].items():
    expected = np.zeros((194, len(reference["names"][d])), np.float32)
    for u, k in pairs:
      expected[u, k] = 1
    matrix = tx.projection_matrix(d)
    assert matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix, expected, err_msg=d)


def test_pairwise_luts_follow_remap_dataset_rules(mseg_api, reference):
  files = sorted((mseg_api / "mseg" / "class_remapping_files").glob("*_to_*.tsv"))
  assert len(files) == 19
  assert sorted(f"{s}_to_{d}.tsv" for s, d in tx.pairwise_pairs()) == [f.name for f in files]
  for path in files:
    src, dst = path.stem.split("_to_")
    with open(path, newline="") as f:
      name_map = {r[src]: r[dst] for r in csv.DictReader(f, delimiter="\t")}
    src_names, dst_names = (genfromtxt_names(mseg_api, d) for d in (src, dst))
    # remap_dataset.py: old id -> old name (255 -> unlabeled) -> new name -> new id
    # (unlabeled -> 255). pascal-context-460 is remapped with include_ignore_idx_cls off, and
    # its id 255 is a real class.
    old_id_to_name = dict(enumerate(src_names))
    if len(src_names) <= 255:
      old_id_to_name[255] = "unlabeled"
    new_name_to_id = {n: i for i, n in enumerate(dst_names)} | {"unlabeled": 255}
    lut = tx.pairwise_lut(src, dst)
    assert lut.dtype == np.uint8 and lut.shape == (max(256, len(src_names)),)
    for i, name in old_id_to_name.items():
      assert lut[i] == new_name_to_id[name_map[name]], (path.name, i, name)


def test_known_facts():
  ids = {n: tx.universal_id(n) for n in ("road", "sky", "person", "car")}
  assert ids == {"road": 98, "sky": 142, "person": 125, "car": 176}
  pc60 = tx.projection_sources("pascal-context-60")
  assert pc60["flower"] == [] and pc60["wood"] == []
  wood = tx.class_id("pascal-context-60", "wood")
  assert not tx.projection_matrix("pascal-context-60")[:, wood].any()
  assert len(tx.projection_sources("voc2012")["background"]) == 167
  assert len(pc60["background"]) == 94
  assert tx.projection_sources("camvid-11")["Bicyclist"] == ["bicyclist", "bicycle"]
  assert set(tx.projection_sources("kitti-19")["rider"]) == {
    "rider_other",
    "bicyclist",
    "motorcyclist",
  }
  dropped = {d: int((tx.projection_matrix(d).sum(1) == 0).sum()) for d in tx.TEST_DATASETS}
  assert dropped == {
    "camvid-11": 182,
    "kitti-19": 172,
    "wilddash-19": 171,
    "scannet-20": 157,
    "voc2012": 0,
    "pascal-context-60": 0,
  }
  assert tx.UNRELABELED_TRAIN_DATASETS == (
    "ade20k-150",
    "bdd",
    "cityscapes-19",
    "coco-panoptic-133",
    "idd-39",
    "mapillary-public65",
    "sunrgbd-37",
  )
  assert len(tx.RELABELED_TRAIN_DATASETS) == 8
  assert tx.TEST_DATASETS == tuple(sorted(TEST_COLUMNS))  # mseg-api lists them sorted
  assert tx.class_id("pascal-context-60", "background") == 1
  assert tx.class_id("voc2012", "background") == 0


def test_mseg_api_unit_cases():
  """The lookups mseg-api's own tests check."""
  mapillary = tx.to_universal_lut("mapillary-public65")
  assert mapillary[tx.class_id("mapillary-public65", "Motorcyclist")] == tx.universal_id(
    "motorcyclist"
  )
  assert mapillary[tx.class_id("mapillary-public65", "Bird")] == tx.universal_id("bird")
  assert mapillary[255] == 255
  ade = tx.to_universal_lut("ade20k-150")
  assert ade[tx.class_id("ade20k-150", "minibike")] == tx.universal_id("motorcycle")
  for name in ("computer", "signboard", "plant"):  # the `unlabeled` row
    assert ade[tx.class_id("ade20k-150", name)] == 255


def test_real_ade20k_annotation_remaps_by_class_name(mseg_api):
  path = (
    mseg_api / "tests/test_data/ADE20K_test_data/ADEChallengeData2016/annotations/"
    "training/ADE_train_00000001.png"
  )
  raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
  assert raw.dtype == np.uint8 and raw.ndim == 2
  semseg = np.asarray(tx.remap_labels(raw, tx.pairwise_lut("ade20k-151", "ade20k-150")))
  universal = np.asarray(tx.remap_labels(semseg, tx.to_universal_lut("ade20k-150")))
  raw_names, u_names = tx.class_names("ade20k-151"), tx.universal_names()
  expected = {  # raw ADE20K class -> MSeg universal class (None = ignored)
    "unlabeled": None,
    "wall": "wall",
    "floor": "floor",
    "tree": "vegetation",
    "ceiling": "ceiling",
    "person": "person",
    "plant": None,
    "seat": "seat",
    "fence": "fence",
    "column": "column",
    "signboard": None,
    "streetlight": "streetlight",
    "escalator": "escalator",
    "fountain": "fountain",
    "pot": "potted_plant",
    "ashcan": "trash_can",
    "flag": "flag",
  }
  present = {raw_names[i] for i in np.unique(raw)}
  assert present == set(expected)
  for raw_name, u_name in expected.items():
    mask = raw == raw_names.index(raw_name)
    values = np.unique(universal[mask])
    assert values.tolist() == [255 if u_name is None else u_names.index(u_name)], raw_name
  assert np.unique(semseg[raw == 0]).tolist() == [255]
  assert tx.class_names("ade20k-150")[semseg[raw == 1][0]] == "wall"


def test_shipped_data_equals_the_tool_output(mseg_api):
  built = importer.build_taxonomy(mseg_api)
  shipped_text = tx.DATA_FILE.read_text(encoding="utf-8")
  assert json.loads(shipped_text) == built
  assert shipped_text == importer.dumps(built)


def test_tool_writes_taxonomy_json(mseg_api, tmp_path, capsys):
  import importlib.util

  spec = importlib.util.spec_from_file_location(
    "import_mseg_taxonomy", Path(__file__).parents[1] / "tools" / "import_mseg_taxonomy.py"
  )
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  assert tool.main(["--mseg-api", str(mseg_api), "--output-dir", str(tmp_path)]) == 0
  assert (tmp_path / "taxonomy.json").read_text() == tx.DATA_FILE.read_text()
  assert "194 universal classes" in capsys.readouterr().out
  bad = tmp_path / "bad.tsv"
  bad.write_text("universal\tnot-a-dataset\nroad\troad\n")
  assert (
    tool.main(["--mseg-api", str(mseg_api), "--tsv", str(bad), "--output-dir", str(tmp_path)]) == 1
  )
  assert "unknown dataset 'not-a-dataset'" in capsys.readouterr().err


# --- The importer on small synthetic mseg-api trees. -------------------------------------------


def write_tree(root: Path, names: dict[str, list[str]], master: str, eol: str = "\r\n") -> Path:
  for d, classes in names.items():
    folder = root / "mseg" / "dataset_lists" / d
    folder.mkdir(parents=True)
    (folder / f"{d}_names.txt").write_text("\n".join(classes) + "\n")
  files = root / "mseg" / "class_remapping_files"
  files.mkdir(parents=True)
  tsv = files / "MSeg_master.tsv"
  tsv.write_bytes(eol.join(master.strip("\n").split("\n")).encode())
  return tsv


NAMES = {"a": ["road", "traffic sign", "None", "junk"], "t": ["Road", "Sign"]}
MASTER = """\
universal\ta\tParent Category\tscannet-37\tt
road\troad\tground\t{table}\tRoad
sign\t{traffic sign,  None}\t\t\tSign
pole\t\t\t\tSign
unlabeled\tjunk\t\t\t
"""


def test_importer_parses_mseg_cells(tmp_path):
  write_tree(tmp_path, NAMES, MASTER)
  data = importer.build_taxonomy(
    tmp_path, unrelabeled_train=("a",), relabeled_train=(), test=("t",)
  )
  assert data["universal"] == ["road", "sign", "pole"]
  # brace list with a name with a space and the string "None"; `unlabeled` row -> 255.
  assert data["to_universal"] == {"a": [0, 1, 1, 255]}
  assert data["from_universal"] == {"t": [0, 1, 1]}
  assert data["source"]["skipped_columns"] == ["Parent Category", "scannet-37"]
  assert data["naive"] == ["road", "traffic sign", "none", "junk"]


def test_importer_accepts_lf_and_short_rows(tmp_path):
  master = MASTER.replace("unlabeled\tjunk\t\t\t", "unlabeled\tjunk")
  write_tree(tmp_path, NAMES, master, eol="\n")
  data = importer.build_taxonomy(
    tmp_path, unrelabeled_train=("a",), relabeled_train=(), test=("t",)
  )
  assert data["to_universal"]["a"] == [0, 1, 1, 255]


@pytest.mark.parametrize(
  "master, message",
  [
    (
      MASTER.replace("\troad\tground", "\troads\tground"),
      r"row 0 \(line 2, universal 'road'\), column 2 'a': class 'roads' is not in a_names.txt",
    ),
    (
      MASTER.replace("pole\t\t", "pole\tjunk\t"),
      r"row 3 \(line 5, universal 'unlabeled'\), column 2 'a': class 'junk' is mapped twice "
      r"\(also in row 2, universal 'pole'\)",
    ),
    (
      MASTER.replace("sign\t{traffic sign,  None}", "sign\t{traffic sign, road}"),
      r"row 1 \(line 3, universal 'sign'\), column 2 'a': class 'road' is mapped twice",
    ),
    (
      MASTER.replace("\tt\n", "\tfoo-7\n"),
      r"line 1 \(header\), column 5 'foo-7': unknown dataset 'foo-7'",
    ),
    (
      MASTER.replace("Sign\npole", "Signs\npole"),
      r"row 1 \(line 3, universal 'sign'\), column 5 't': class 'Signs' is not in t_names.txt",
    ),
    (
      MASTER.replace("\troad\tground", "\troad \tground"),
      r"row 0 \(line 2, universal 'road'\), column 2 'a': cell 'road ' has surrounding whitespace",
    ),
    (
      MASTER.replace("pole\t", "road\t"),
      r"row 2 \(line 4\), column 'universal': universal class "
      r"'road' repeats row 0",
    ),
    (
      MASTER.replace("pole\t\t\t\tSign\n", "") + "pole\t\t\t\tSign\n",
      r"row 2 \(line 4\), column 'universal': the 'unlabeled' row must be the last row",
    ),
  ],
)
def test_importer_rejects_malformed_tsv(tmp_path, master, message):
  tsv = write_tree(tmp_path, NAMES, master)
  with pytest.raises(importer.TaxonomyError, match=message) as e:
    importer.build_taxonomy(tmp_path, unrelabeled_train=("a",), relabeled_train=(), test=("t",))
  assert str(tsv) in str(e.value)


def test_importer_reads_pairwise_tsvs(tmp_path):
  names = NAMES | {"a-raw": ["unlabeled", "road", "sign", "junk"]}
  write_tree(tmp_path, names, MASTER)
  pair = tmp_path / "mseg/class_remapping_files/a-raw_to_a.tsv"
  pair.write_text(
    "a-raw\ta\r\nunlabeled\tunlabeled\r\nroad\troad\r\nsign\ttraffic sign\r\n"
    "junk\tunlabeled\r\nunlabeled\tunlabeled\r\n"
  )
  data = importer.build_taxonomy(
    tmp_path, unrelabeled_train=("a",), relabeled_train=(), test=("t",)
  )
  expected = [255, 0, 1, 255] + [255] * 252
  assert data["pairwise"] == {"a-raw>a": expected}
  pair.write_text("a-raw\ta\nunlabeled\tunlabeled\nroad\troad\nsign\tsign\njunk\tunlabeled\n")
  with pytest.raises(importer.TaxonomyError, match=r"line 4, column 'a': class 'sign' is not"):
    importer.build_taxonomy(tmp_path, unrelabeled_train=("a",), relabeled_train=(), test=("t",))
  pair.write_text("a-raw\ta\nroad\troad\nsign\ttraffic sign\n")
  with pytest.raises(importer.TaxonomyError, match=r"no row for a-raw class\(es\) \['unlab"):
    importer.build_taxonomy(tmp_path, unrelabeled_train=("a",), relabeled_train=(), test=("t",))


def test_custom_taxonomy_is_used_through_the_environment(tmp_path):
  write_tree(tmp_path / "api", NAMES, MASTER)
  data = importer.build_taxonomy(
    tmp_path / "api", unrelabeled_train=("a",), relabeled_train=(), test=("t",)
  )
  path = importer.write_taxonomy(data, tmp_path / "custom")
  env = dict(os.environ, MSEG_JAX_TAXONOMY=str(path), JAX_PLATFORMS="cpu")
  run = subprocess.run(
    [sys.executable, "-m", "mseg_jax.taxonomy", "projection", "t"],
    env=env,
    capture_output=True,
    text=True,
    check=True,
  )
  assert run.stdout.splitlines()[:2] == ["t  Road <- road", "t  Sign <- sign, pole"]


# --- Jitted ops. --------------------------------------------------------------------------------


def test_remap_labels_single_and_stacked():
  rng = np.random.default_rng(0)
  datasets = ["cityscapes-19", "ade20k-150", "mapillary-public65"]
  stacked = tx.stacked_luts(datasets)
  assert stacked.shape == (3, 256) and stacked.dtype == np.uint8
  labels = rng.integers(0, 256, (4, 9, 7), dtype=np.uint8)
  labels[:, 0, 0] = 255
  index = np.array([2, 0, 1, 0])
  out = np.asarray(tx.remap_labels(labels, stacked, index))
  assert out.dtype == np.uint8 and out.shape == labels.shape
  for n, d in enumerate(index):
    np.testing.assert_array_equal(out[n], tx.to_universal_lut(datasets[d])[labels[n]])
  np.testing.assert_array_equal(np.asarray(tx.remap_labels(labels, stacked[1])), stacked[1][labels])
  assert (out[:, 0, 0] == 255).all()
  # ids outside the table (int labels) become 255; a 19-class dataset's ids >= 19 too.
  wide = np.array([[0, 18, 19, 254, 255, 256, 1000, -1]], np.int32)
  got = np.asarray(tx.remap_labels(wide, stacked[0]))
  assert got.tolist() == [[98, 175, 255, 255, 255, 255, 255, 255]]
  # pascal-context-460 ids are uint16 and 255 is a real class there.
  pc = tx.pairwise_lut("pascal-context-460", "pascal-context-60")
  raw = np.array([0, 2, 255, 459, 460], np.uint16)
  pc60 = tx.class_names("pascal-context-60")
  got = [pc60[i] if i != 255 else None for i in np.asarray(tx.remap_labels(raw, pc)).tolist()]
  assert got == ["background", "aeroplane", "background", "background", None]
  assert tx.class_names("pascal-context-460")[255] == "money"  # a class, not the ignore id
  with pytest.raises(ValueError, match="needs dataset_index"):
    tx.remap_labels(labels, stacked)


def test_project_probs_sums_probabilities():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 5, 6, 194)).astype(np.float32)
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  for d in ("camvid-11", "voc2012"):
    matrix = tx.projection_matrix(d)
    out = np.asarray(tx.project_probs(probs, matrix))
    assert out.shape == (2, 5, 6, matrix.shape[1])
    np.testing.assert_allclose(out, probs @ matrix, rtol=1e-6, atol=1e-7)
  # voc2012 receives every universal class, so its probabilities still sum to 1.
  np.testing.assert_allclose(
    np.asarray(tx.project_probs(probs, tx.projection_matrix("voc2012"))).sum(-1), 1, rtol=1e-5
  )
  # bicyclist + bicycle are summed into camvid Bicyclist and beat person; sky stays Sky; dog
  # (no camvid class) is dropped.
  p = np.zeros((1, 1, 2, 194), np.float32)
  p[0, 0, 0, [tx.universal_id(n) for n in ("bicyclist", "bicycle", "person")]] = 0.3
  p[0, 0, 0, tx.universal_id("dog")] = 0.1
  p[0, 0, 1, tx.universal_id("sky")] = 1
  out = np.asarray(tx.project_probs(p, tx.projection_matrix("camvid-11")))[0, 0]
  camvid = tx.class_names("camvid-11")
  assert [camvid[k] for k in out.argmax(-1)] == ["Bicyclist", "Sky"]
  np.testing.assert_allclose(out[0, camvid.index("Bicyclist")], 0.6)
  np.testing.assert_allclose(out[0, camvid.index("Pedestrian")], 0.3)
  np.testing.assert_allclose(out[0].sum(), 0.9)


# --- Naive taxonomy, palette, lookups, CLI. -------------------------------------------------------


def test_naive_taxonomy_matches_naive_taxonomy_converter():
  expected = []
  for d in tx.UNRELABELED_TRAIN_DATASETS:
    expected += [n.lower() for n in tx.class_names(d) if n.lower() not in expected]
  assert tx.naive_names() == expected and len(expected) == 315
  assert tx.NAIVE_NUM_LOGITS == 316
  logit_names = expected[:255] + [None] + expected[255:]  # get_naive_taxonomy_classnames
  for d in tx.UNRELABELED_TRAIN_DATASETS:
    lut = tx.naive_lut(d)
    assert lut[255] == 255
    assert [logit_names[i] for i in lut[: len(tx.class_names(d))]] == [
      n.lower() for n in tx.class_names(d)
    ]
  matrix = tx.naive_projection_matrix("camvid-11")
  assert matrix.shape == (316, 11) and not matrix[255].any()
  for u, k in zip(*np.nonzero(matrix), strict=True):
    assert logit_names[u] == tx.class_names("camvid-11")[k].lower()
  assert {tx.class_names("camvid-11")[k] for k in np.nonzero(matrix)[1]} >= {"Road", "Sky"}


def test_palette_is_the_voc_colormap_without_black():
  colors = tx.palette(300)
  assert colors.shape == (300, 3) and colors.dtype == np.uint8
  assert len({tuple(c) for c in colors}) == 300
  assert not (colors == 0).all(1).any()
  # VOC devkit colours 1..4: (128,0,0) (0,128,0) (128,128,0) (0,0,128); 255 + 1 = 256 -> (0,0,32)
  assert colors[:4].tolist() == [[128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
  assert colors[255].tolist() == [0, 0, 32]
  np.testing.assert_array_equal(tx.palette(), colors[:194])


def test_lookups_reject_unknown_names():
  with pytest.raises(ValueError, match="unknown dataset 'nope'"):
    tx.class_names("nope")
  with pytest.raises(ValueError, match="unknown training dataset 'camvid-11'"):
    tx.to_universal_lut("camvid-11")
  with pytest.raises(ValueError, match="unknown test dataset 'bdd'"):
    tx.projection_matrix("bdd")
  with pytest.raises(ValueError, match="has no class 'Road'"):
    tx.class_id("cityscapes-19", "Road")
  with pytest.raises(ValueError, match="unknown pairwise remap"):
    tx.pairwise_lut("cityscapes-19", "cityscapes-34")


def test_cli(capsys):
  assert cli.main(["projection", "camvid-11"]) == 0
  out = capsys.readouterr().out
  assert re.search(r"^camvid-11\s+Bicyclist\s+<- bicyclist, bicycle$", out, re.M)
  assert "182 of 194 universal classes feed no camvid-11 class" in out
  assert cli.main(["datasets"]) == 0
  rows = capsys.readouterr().out.splitlines()[2:]
  assert len(rows) == 34 and rows[0].split()[:2] == ["universal", "194"]
  assert cli.main(["classes", "cityscapes-19"]) == 0
  assert re.search(r"^0\s+road\s+98\s+road$", capsys.readouterr().out, re.M)
  assert cli.main(["classes", "kitti-34"]) == 0
  assert re.search(r"^0\s+unlabeled\s+\(ignored\)$", capsys.readouterr().out, re.M)
  assert cli.main(["classes", "nope"]) == 2
  assert "unknown dataset 'nope'" in capsys.readouterr().err


def test_naive_logits_are_named_and_remapped_past_255_without_wrapping():
  names = tx.class_names("naive")
  assert len(names) == tx.NAIVE_NUM_LOGITS and names[255] == tx.NAIVE_UNUSED
  assert names[:255] + names[256:] == tx.naive_names()
  luts = np.stack([tx.naive_lut(d) for d in tx.UNRELABELED_TRAIN_DATASETS])
  labels = np.broadcast_to(np.arange(256, dtype=np.uint8), (7, 1, 256))
  out = np.asarray(tx.remap_labels(labels, luts, np.arange(7)))
  assert out.dtype == np.uint16 and out.max() > 255
  np.testing.assert_array_equal(out[:, 0], luts)
  assert tx.label_dtype(256) == np.uint8 and tx.label_dtype(316) == np.uint16
