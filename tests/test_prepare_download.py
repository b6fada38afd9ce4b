"""The download step against a local HTTP server that serves small archives built here."""

import dataclasses
import hashlib
import http.server
import io
import re
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from mseg_jax.input_pipeline import catalog
from mseg_jax.prepare import download, sources
from mseg_jax.prepare.common import PrepareError


class _Handler(http.server.BaseHTTPRequestHandler):
  """Serves `server.files` (path -> bytes) with Range support; `server.cut` ends a body early."""

  def do_GET(self):
    self.server.requests.append((self.path, self.headers.get("Range")))
    body = self.server.files.get(self.path)
    if body is None:
      self.send_error(404)
      return
    start = 0
    if self.headers.get("Range"):
      start = int(re.fullmatch(r"bytes=(\d+)-", self.headers["Range"])[1])
      if start >= len(body):
        self.send_response(416)
        self.send_header("Content-Range", f"bytes */{len(body)}")
        self.end_headers()
        return
      self.send_response(206)
      self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
    else:
      self.send_response(200)
    self.send_header("Content-Length", str(len(body) - start))
    self.end_headers()
    self.wfile.write(body[start : self.server.cut.pop(self.path, None)])

  def log_message(self, *args):
    pass


@pytest.fixture
def server():
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  httpd.files, httpd.cut, httpd.requests = {}, {}, []
  httpd.mirror = f"http://127.0.0.1:{httpd.server_address[1]}"
  thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
  thread.start()
  yield httpd
  httpd.shutdown()
  httpd.server_close()


def _zip(files: dict[str, bytes]) -> bytes:
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
    for name, data in files.items():
      zf.writestr(name, data)
  return buf.getvalue()


def _tgz(files: dict[str, bytes]) -> bytes:
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz") as tf:
    for name, data in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tf.addfile(info, io.BytesIO(data))
  return buf.getvalue()


def _archive(name: str) -> tuple[sources.Dataset, sources.Archive]:
  for dataset in sources.DATASETS:
    for archive in dataset.archives:
      if archive.name == name:
        return dataset, archive
  raise KeyError(name)


def _serve(server, name: str, body: bytes) -> str:
  path = download.mirror_url(_archive(name)[1].url, server.mirror)[len(server.mirror) :]
  server.files[path] = body
  return path


def _tree(root: Path) -> dict[str, tuple[int, bytes]]:
  return {
    p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
    for p in root.rglob("*")
    if p.is_file()
  }


SUN = {
  "image/train/img-000001.jpg": b"train jpg",
  "image/test/img-000015.jpg": b"test jpg",
  "label37/train/00000001.png": b"train png",
  "label37/test/00000015.png": b"test png",
  "depth/train/00000001.png": b"depth",
}
CAMVID_IMAGES = {f"701_StillsRaw_full/0001TP_{i:06d}.png": bytes([i]) * 5000 for i in range(8)}
CAMVID_LABELS = {f"0001TP_{i:06d}_L.png": bytes([i]) * 10 for i in range(8)}
CITYSCAPES_GT = {
  "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png": b"a",
  "gtFine/train/aachen/aachen_000000_000019_gtFine_polygons.json": b"{}",
  "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png": b"b",
  "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_polygons.json": b"{}",
  "README": b"readme",
  "license.txt": b"license",
}
CITYSCAPES_IMAGES = {
  "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png": b"c",
  "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png": b"d",
  "README": b"readme",
  "license.txt": b"license",
}


def test_fresh_download_extracts_sunrgbd_as_mseg_api_does(tmp_path, server, monkeypatch):
  monkeypatch.setenv(download.MIRROR_ENV, server.mirror)
  _serve(server, "sun_rgbd.tgz", _tgz(SUN))
  download.run(tmp_path, ["sunrgbd-37"], workers=1)
  root = catalog.dataset_root(tmp_path, "sunrgbd-37")
  assert _tree(root).keys() == {
    "image/train/img-000001.jpg",
    "image/test/img-000015.jpg",
    "label38/train/00000001.png",  # label37 renamed: the archive's labels hold 38 ids
    "label38/test/00000015.png",
    ".sun_rgbd.tgz.done",
  }
  assert (root / "label38/test/00000015.png").read_bytes() == b"test png"
  assert [p.name for p in root.iterdir() if p.name.startswith(".")] == [".sun_rgbd.tgz.done"]


def test_coco_annotations_unpack_their_inner_zips_and_images_go_under_images(tmp_path, server):
  inner = {
    split: _zip({f"panoptic_{split}2017/000000000139.png": split.encode()})
    for split in ("train", "val")
  }
  _serve(
    server,
    "panoptic_annotations_trainval2017.zip",
    _zip(
      {
        "annotations/panoptic_train2017.json": b"{}",
        "annotations/panoptic_val2017.json": b"{}",
        "annotations/panoptic_train2017.zip": inner["train"],
        "annotations/panoptic_val2017.zip": inner["val"],
      }
    ),
  )
  _serve(server, "train2017.zip", _zip({"train2017/000000000009.jpg": b"t"}))
  _serve(server, "val2017.zip", _zip({"val2017/000000000139.jpg": b"v"}))
  download.run(tmp_path, ["coco-panoptic-133"], workers=1, mirror=server.mirror)
  files = {k for k in _tree(catalog.dataset_root(tmp_path, "coco-panoptic-133")) if k[0] != "."}
  assert files == {
    "annotations/panoptic_train2017.json",
    "annotations/panoptic_val2017.json",
    "annotations/panoptic_train2017/000000000139.png",
    "annotations/panoptic_val2017/000000000139.png",
    "images/train2017/000000000009.jpg",
    "images/val2017/000000000139.jpg",
  }


def test_interrupted_transfer_keeps_part_and_next_run_resumes_with_range(tmp_path, server):
  body = _zip(CAMVID_IMAGES)
  path = _serve(server, "701_StillsRaw_full.zip", body)
  _serve(server, "LabeledApproved_full.zip", _zip(CAMVID_LABELS))
  half = len(body) // 2
  server.cut[path] = half
  root = catalog.dataset_root(tmp_path, "camvid-11")
  with pytest.raises(PrepareError, match=r"701_StillsRaw_full\.zip.*stopped at .* run again"):
    download.run(tmp_path, ["camvid-11"], workers=1, mirror=server.mirror)
  part = root / "701_StillsRaw_full.zip.part"
  assert part.read_bytes() == body[:half]
  assert not (root / "701_StillsRaw_full").exists()

  download.run(tmp_path, ["camvid-11"], workers=1, mirror=server.mirror)
  assert [r for r in server.requests if r[0] == path] == [(path, None), (path, f"bytes={half}-")]
  assert not part.exists()
  for name, data in CAMVID_IMAGES.items():
    assert (root / name).read_bytes() == data
  for name, data in CAMVID_LABELS.items():
    assert (root / "Labels32-RGB" / name).read_bytes() == data  # a zip of bare files


def test_part_that_is_already_whole_is_finished_without_a_new_body(tmp_path, server):
  body = _tgz(SUN)
  path = _serve(server, "sun_rgbd.tgz", body)
  root = catalog.dataset_root(tmp_path, "sunrgbd-37")
  root.mkdir(parents=True)
  (root / "sun_rgbd.tgz.part").write_bytes(body)  # killed between the last byte and the rename
  download.run(tmp_path, ["sunrgbd-37"], workers=1, mirror=server.mirror)
  assert server.requests == [(path, f"bytes={len(body)}-")]  # answered 416, bytes */len
  assert (root / "label38/train/00000001.png").read_bytes() == b"train png"


def test_second_run_sends_no_request_and_extracts_nothing(tmp_path, server):
  _serve(server, "sun_rgbd.tgz", _tgz(SUN))
  download.run(tmp_path, ["sunrgbd-38"], workers=1, mirror=server.mirror)
  before, requests = _tree(tmp_path), len(server.requests)
  download.run(tmp_path, ["sunrgbd-38", "sunrgbd-37-relabeled"], workers=1, mirror=server.mirror)
  assert len(server.requests) == requests
  assert _tree(tmp_path) == before


def test_tree_already_extracted_by_hand_needs_no_archive(tmp_path, server):
  root = catalog.dataset_root(tmp_path, "sunrgbd-37")
  for name, data in SUN.items():
    (root / name.replace("label37", "label38")).parent.mkdir(parents=True, exist_ok=True)
    (root / name.replace("label37", "label38")).write_bytes(data)
  before = _tree(tmp_path)
  download.run(tmp_path, ["sunrgbd-37"], workers=1, mirror=server.mirror)
  assert server.requests == []
  assert _tree(tmp_path) == before


@pytest.mark.parametrize("field", ["size", "sha256"])
def test_download_with_wrong_size_or_checksum_is_rejected_and_removed(
  tmp_path, server, monkeypatch, field
):
  body = _tgz(SUN)
  _serve(server, "sun_rgbd.tgz", body)
  wrong = {"size": len(body) + 1, "sha256": hashlib.sha256(b"other").hexdigest()}[field]
  dataset, archive = _archive("sun_rgbd.tgz")
  archive = dataclasses.replace(archive, **{field: wrong})
  monkeypatch.setattr(sources, "DATASETS", (dataclasses.replace(dataset, archives=(archive,)),))
  with pytest.raises(PrepareError, match=rf"{len(body)} bytes, expected|sha256 .*expected {wrong}"):
    download.run(tmp_path, ["sunrgbd-37"], workers=1, mirror=server.mirror)
  root = catalog.dataset_root(tmp_path, "sunrgbd-37")
  assert not root.exists() or list(root.iterdir()) == []


def test_matching_checksum_is_accepted(tmp_path, server, monkeypatch):
  body = _tgz(SUN)
  _serve(server, "sun_rgbd.tgz", body)
  dataset, archive = _archive("sun_rgbd.tgz")
  archive = dataclasses.replace(archive, size=len(body), sha256=hashlib.sha256(body).hexdigest())
  monkeypatch.setattr(sources, "DATASETS", (dataclasses.replace(dataset, archives=(archive,)),))
  download.run(tmp_path, ["sunrgbd-37"], workers=1, mirror=server.mirror)
  assert (catalog.dataset_root(tmp_path, "sunrgbd-37") / "label38/train/00000001.png").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_archive_is_rejected_and_nothing_half_extracted(tmp_path, server, damage):
  body = _tgz({**SUN, "image/train/big.jpg": bytes(range(256)) * 4000})
  body = body[: len(body) // 2] if damage == "truncated" else b"not an archive" * 100
  _serve(server, "sun_rgbd.tgz", body)
  with pytest.raises(PrepareError, match=r"sun_rgbd\.tgz: corrupt or truncated archive"):
    download.run(tmp_path, ["sunrgbd-37"], workers=1, mirror=server.mirror)
  root = catalog.dataset_root(tmp_path, "sunrgbd-37")
  assert [p.name for p in root.iterdir()] == ["sun_rgbd.tgz"]


def test_corrupt_zip_is_rejected_and_nothing_half_extracted(tmp_path, server):
  body = bytearray(_zip(CAMVID_IMAGES))
  first = zipfile.ZipFile(io.BytesIO(body)).infolist()[0]
  start = first.header_offset + 30 + len(first.filename)  # the first member's deflated data
  body[start : start + 4] = bytes(255 - b for b in body[start : start + 4])
  _serve(server, "701_StillsRaw_full.zip", bytes(body))
  with pytest.raises(PrepareError, match=r"701_StillsRaw_full\.zip: corrupt or truncated"):
    download.run(tmp_path, ["camvid-11"], workers=1, mirror=server.mirror)
  root = catalog.dataset_root(tmp_path, "camvid-11")
  assert [p.name for p in root.iterdir()] == ["701_StillsRaw_full.zip"]


@pytest.mark.parametrize("member", ["../escape.png", "/abs/escape.png"])
def test_member_outside_the_target_folder_is_refused(tmp_path, server, member):
  _serve(server, "701_StillsRaw_full.zip", _zip({**CAMVID_IMAGES, member: b"x"}))
  with pytest.raises(PrepareError, match=r"would be written outside the target folder"):
    download.run(tmp_path, ["camvid-11"], workers=1, mirror=server.mirror)
  assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["701_StillsRaw_full.zip"]


def test_tar_link_pointing_outside_the_target_folder_is_refused(tmp_path, server):
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz") as tf:
    link = tarfile.TarInfo("image/train/img-000002.jpg")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../../outside.jpg"
    tf.addfile(link)
  _serve(server, "sun_rgbd.tgz", buf.getvalue())
  with pytest.raises(PrepareError, match=r"sun_rgbd\.tgz: unsafe member refused"):
    download.run(tmp_path, ["sunrgbd-37"], workers=1, mirror=server.mirror)
  root = catalog.dataset_root(tmp_path, "sunrgbd-37")
  assert [p.name for p in root.iterdir()] == ["sun_rgbd.tgz"]


def test_unexpected_layout_names_the_missing_folder(tmp_path, server):
  images = {"ADEChallengeData2016/images/training/ADE_train_00000001.jpg": b"i"}
  _serve(server, "ADEChallengeData2016.zip", _zip(images))
  with pytest.raises(PrepareError, match=r"expected ADEChallengeData2016/images/validation/\*"):
    download.run(tmp_path, ["ade20k-150"], workers=1, mirror=server.mirror)
  assert not (tmp_path / "mseg_dataset/ADE20K/ADEChallengeData2016").exists()


def test_unreachable_url_is_reported_after_the_other_datasets_are_done(tmp_path, server, capsys):
  _serve(server, "sun_rgbd.tgz", _tgz(SUN))
  with pytest.raises(PrepareError, match=r"fetch by hand: .*ADE20K_2016_07_26\.zip"):
    download.run(tmp_path, ["ade20k-151-inst", "sunrgbd-37"], workers=1, mirror=server.mirror)
  out = capsys.readouterr().out
  assert "/vision/datasets/ADE20K/ADE20K_2016_07_26.zip: HTTP 404" in out
  assert f"put it at: {catalog.dataset_root(tmp_path, 'ade20k-151-inst').parent}" in out
  assert (catalog.dataset_root(tmp_path, "sunrgbd-37") / ".sun_rgbd.tgz.done").exists()


def test_login_dataset_missing_prints_instructions_and_fails(tmp_path, server, capsys):
  root = catalog.dataset_root(tmp_path, "cityscapes-19")
  with pytest.raises(PrepareError, match=re.escape(str(root / "gtFine_trainvaltest.zip"))):
    download.run(tmp_path, ["cityscapes-19"], workers=1, mirror=server.mirror)
  out = capsys.readouterr().out
  assert "https://www.cityscapes-dataset.com/file-handling/?packageID=3" in out
  assert f"put it at: {root / 'leftImg8bit_trainvaltest.zip'}" in out
  assert server.requests == []


def test_login_dataset_present_is_checked_and_extracted(tmp_path, server):
  root = catalog.dataset_root(tmp_path, "cityscapes-19")
  root.mkdir(parents=True)
  (root / "gtFine_trainvaltest.zip").write_bytes(_zip(CITYSCAPES_GT))
  (root / "leftImg8bit_trainvaltest.zip").write_bytes(_zip(CITYSCAPES_IMAGES))
  download.run(tmp_path, ["cityscapes-19"], workers=1, mirror=server.mirror)
  files = {k for k in _tree(root) if not k.startswith(".")}
  assert files == {k for k in CITYSCAPES_GT | CITYSCAPES_IMAGES if "/" in k} | {
    "README",  # mseg-api deletes gtFine's copies only; leftImg8bit's stay
    "license.txt",
  }
  assert server.requests == []


def test_login_archive_that_is_not_an_archive_is_rejected(tmp_path):
  root = catalog.dataset_root(tmp_path, "wilddash-19")
  root.mkdir(parents=True)
  (root / "wd_both_01.zip").write_bytes(b"<html>login page</html>")
  (root / "wd_val_01.zip").write_bytes(_zip({"wd_val_01/a_labelIds.png": b"x"}))
  with pytest.raises(PrepareError, match=r"wd_both_01\.zip: corrupt or truncated archive"):
    download.run(tmp_path, ["wilddash-19"], workers=1)


def test_mirror_replaces_scheme_and_host_and_keeps_path_and_query():
  url = "https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip?dl=1"
  assert (
    download.mirror_url(url, "http://127.0.0.1:8000/m/")
    == "http://127.0.0.1:8000/m/s/oeu149j8qtbs1x0/SegmentationClassAug.zip?dl=1"
  )
  assert download.mirror_url(url, None) == url


def test_table_covers_every_catalog_taxonomy_in_its_folder():
  served = {t for d in sources.DATASETS for t in d.taxonomies}
  assert served == set(catalog.DEFAULT_ROOTS)
  for dataset in sources.DATASETS:
    for name in dataset.taxonomies:
      root = catalog.DEFAULT_ROOTS[name] + "/"
      assert root.startswith(f"{sources.DATA_FOLDER}/{dataset.folder}/"), (name, dataset.folder)


def test_table_is_honest_about_login_and_unknown_sizes():
  archives = [(d, a) for d in sources.DATASETS for a in d.archives]
  assert len({d.folder for d, _ in archives}) == 13
  for dataset, archive in archives:
    assert archive.url is None or archive.url.startswith(("http://", "https://")), archive.name
    assert archive.url is not None or (archive.page and dataset.login), archive.name
    assert archive.size is None and archive.sha256 is None  # no official script states them
    assert archive.expects, archive.name
