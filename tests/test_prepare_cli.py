"""Spec: `python -m mseg_jax.prepare` from raw files to a tree that verify accepts and train reads.

The raw tree holds three datasets in their official names and raw formats: Cityscapes labelIds
PNGs (cityscapes-34 ids), ADE20K challenge annotations (ade20k-151 ids) and CamVid RGB-coded
labels (camvid-32 colours) for every image of the shipped CamVid split. Download finds each
dataset extracted in place and fetches nothing.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mseg_jax import taxonomy
from mseg_jax.input_pipeline import catalog, sources
from mseg_jax.prepare import __main__ as cli
from mseg_jax.prepare import formats, lists

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("cityscapes-19", "ade20k-150", "camvid-11")
HW = (40, 56)


def _write(path: Path, array: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  assert cv2.imwrite(str(path), array)


def _image(rng: np.random.Generator) -> np.ndarray:
  return rng.integers(0, 256, (*HW, 3), dtype=np.uint8)


def _ids(rng: np.random.Generator, ids: list[int]) -> np.ndarray:
  """A label of horizontal bands of the given ids, in a random order."""
  rows = np.repeat(rng.permutation(ids), -(-HW[0] // len(ids)))[: HW[0]]
  return np.repeat(rows[:, None], HW[1], axis=1).astype(np.uint8)


def _raw_tree(data_root: Path) -> None:
  rng = np.random.default_rng(0)
  city = catalog.dataset_root(data_root, "cityscapes-34")
  names = taxonomy.class_names("cityscapes-34")
  ids = [names.index(n) for n in ("unlabeled", "road", "building", "sky", "car", "person")]
  for split, town, count in (("train", "aachen", 4), ("val", "frankfurt", 2)):
    for i in range(count):
      stem = f"{town}_000000_{i:06d}"
      _write(city / f"leftImg8bit/{split}/{town}/{stem}_leftImg8bit.png", _image(rng))
      _write(city / f"gtFine/{split}/{town}/{stem}_gtFine_labelIds.png", _ids(rng, ids))
      polygons = {"imgHeight": HW[0], "imgWidth": HW[1], "objects": []}
      (city / f"gtFine/{split}/{town}/{stem}_gtFine_polygons.json").write_text(json.dumps(polygons))
  ade = catalog.dataset_root(data_root, "ade20k-151")
  for split, folder, count in (("train", "training", 4), ("val", "validation", 2)):
    for i in range(1, count + 1):
      stem = f"ADE_{split}_{i:08d}"
      _write(ade / f"images/{folder}/{stem}.jpg", _image(rng))
      _write(ade / f"annotations/{folder}/{stem}.png", _ids(rng, [0, 1, 4, 13, 150]))
  camvid = catalog.dataset_root(data_root, "camvid-32")
  colors = formats.label_colors("camvid-32")[:, ::-1]  # BGR for OpenCV
  for split in ("train", "val", "test"):
    for image in lists.shipped("camvid", split):
      _write(camvid / image, _image(rng))
      label = colors[_ids(rng, [4, 17, 21, 26, 30])]
      _write(camvid / f"Labels32-RGB/{Path(image).stem}_L.png", label)


def _python(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  proc = subprocess.run(
    [sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


def _files(root: Path) -> dict[Path, int]:
  return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_all_then_verify_then_train_on_a_raw_tree(tmp_path):
  data_root = tmp_path / "data"
  _raw_tree(data_root)
  prepare = ["mseg_jax.prepare", "all", "--data-root", str(data_root), "--workers", "2"]
  _python(*prepare, "--datasets", ",".join(DATASETS))
  pairs = {
    (name, split): sources.read_list(
      catalog.list_path(data_root, name, split), catalog.dataset_root(data_root, name)
    )
    for name, split in (("cityscapes-19", "train"), ("ade20k-150", "val"), ("camvid-11", "val"))
  }
  assert [len(p) for p in pairs.values()] == [4, 2, 101]
  assert all(label.is_file() for p in pairs.values() for _, label in p)
  label = sources.load_label(pairs["cityscapes-19", "train"][0][1])  # 34 -> 19 ids
  kept = ("road", "building", "sky", "car", "person")
  assert set(np.unique(label)) == {taxonomy.class_id("cityscapes-19", n) for n in kept} | {255}

  before = _files(data_root)
  again = _python(*prepare, "--datasets", ",".join(DATASETS))
  assert _files(data_root) == before  # a second run changes nothing
  assert "0 list files written" in again.stdout

  verify = _python(
    "mseg_jax.input_pipeline.verify",
    "--data-root",
    str(data_root),
    "--datasets",
    ",".join(DATASETS),
  )
  assert (
    "all samples OK" in verify.stdout and "| camvid-11 | val | 101 | 101 | 0 |" in verify.stdout
  )

  workdir = tmp_path / "train"
  _python(
    "mseg_jax.train",
    "--config=configs/demo.py",
    f"--workdir={workdir}",
    f"--config.data.data_root={data_root}",
    "--config.data.synthetic=False",
    "--config.data.datasets=('cityscapes-19','ade20k-150')",
    "--config.model.arch.stage1_planes=8",
    "--config.model.arch.stage_widths=((4, 8), (4, 8, 16), (4, 8, 16, 32))",
    "--config.data.crop_size=33",
    "--config.batch_size=2",
    "--config.total_steps=2",
    "--config.log_every=1",
    "--config.eval.datasets=()",
  )
  metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics] == [1, 2] and all(np.isfinite(m["loss"]) for m in metrics)


def test_unknown_datasets_are_an_error_listing_the_known_ones(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["lists", "--data-root", str(tmp_path), "--datasets", "cityscapes-19,citiscapes"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "unknown datasets citiscapes; known: ade20k-150, ade20k-150-relabeled," in err
  assert "wilddash-34" in err


def test_a_prepare_error_is_one_line_on_stderr_and_exit_status_1(tmp_path, capsys):
  assert cli.main(["lists", "--data-root", str(tmp_path), "--datasets", "bdd"]) == 1
  err = capsys.readouterr().err
  folder = catalog.dataset_root(tmp_path, "bdd") / "seg" / "images" / "train"
  assert (
    err
    == f"error: {folder}: not found; download and extract the dataset first (prepare download)\n"
  )
