"""The download step: fetch and extract each raw dataset's archives (spec §1.1, §3 **Get**).

For every dataset the taxonomies ask for, each archive of `sources.DATASETS` in turn:
1. skipped if its marker `<folder>/.<archive>.done` exists, or if what it extracts to is
   already in place (every `expects` glob matches: a tree extracted by hand needs no archive);
2. else `<folder>/<archive>` is used if present (downloaded earlier or put there by hand);
   else it is fetched with urllib into `<archive>.part`, resuming a partial file with an HTTP
   Range request, checked (length the server announced; size and sha256 where the table knows
   them) and renamed; archives behind a login (url None) are listed with instructions instead;
3. extracted (zip, tar, tar.gz) into the temp folder `<folder>/.<archive>.tmp`, where members
   with absolute paths or `..` are refused, inner zips are unpacked, mseg-api's moves and
   deletions are done and the layout is checked; only then is it moved into place, the marker
   written and the archive deleted unless mseg-api keeps it (BDD, Mapillary, ScanNet).

A corrupt archive, an unexpected layout or a cut transfer stops the run with a PrepareError
naming the file (a cut transfer keeps its `.part` for the next run). Archives to fetch by hand
(behind a login and not in place, or whose URL does not answer, e.g. ADE20K_2016_07_26.zip, see
mseg-api issue #20) do not stop the other datasets: what to fetch, from where and where to put
it is printed, and the run fails at the end.

Mirror: `run(mirror=...)` or the environment variable MSEG_JAX_DOWNLOAD_MIRROR, of the form
`scheme://host[:port][/prefix]`, replaces the scheme and host of every URL (path and query are
kept), e.g. `http://127.0.0.1:8000` serves `/places/ADEchallenge/ADEChallengeData2016.zip`.

`workers` is ignored: archives are fetched and extracted one at a time, as mseg-api does.
"""

import gzip
import hashlib
import http.client
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import tqdm

from mseg_jax.input_pipeline import catalog
from mseg_jax.prepare import sources
from mseg_jax.prepare.common import PrepareError, atomic_write_bytes

MIRROR_ENV = "MSEG_JAX_DOWNLOAD_MIRROR"
CHUNK = 1 << 20
TIMEOUT_S = 60
_CORRUPT = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


class Unavailable(PrepareError):
  """An archive to fetch by hand: behind a login and not in place, or its URL does not answer."""


def run(
  data_root: Path, datasets: Sequence[str], *, workers: int, mirror: str | None = None
) -> None:
  """Downloads and extracts what the taxonomies `datasets` need under `data_root`."""
  del workers  # one archive at a time
  mirror = mirror or os.environ.get(MIRROR_ENV) or None
  unknown = sorted(set(datasets) - set(catalog.DEFAULT_ROOTS))
  if unknown:
    known = ", ".join(sorted(catalog.DEFAULT_ROOTS))
    raise PrepareError(f"unknown datasets {', '.join(unknown)}; known: {known}")
  summary, missing = [], []
  for dataset in sources.DATASETS:
    if not set(datasets) & set(dataset.taxonomies):
      continue
    folder = Path(data_root) / sources.DATA_FOLDER / dataset.folder
    for archive in dataset.archives:
      try:
        status = prepare_archive(folder, archive, mirror)
      except Unavailable as e:
        missing.append((dataset, archive, folder / archive.name, e))
        status = "missing (login)" if archive.url is None else "unavailable"
      summary.append((dataset.name, archive.name, status))
  print("download:")
  for name, archive_name, status in summary:
    print(f"  {name:18} {archive_name:40} {status}")
  if missing:
    print(instructions(missing))
    paths = ", ".join(str(m[2]) for m in missing)
    raise PrepareError(f"archives to fetch by hand: {paths} (instructions above)")


def instructions(
  missing: Sequence[tuple[sources.Dataset, sources.Archive, Path, Exception]],
) -> str:
  """What to fetch by hand, from where, and where to put it."""
  lines = ["Fetch these archives by hand (the others are done) and put them where shown:"]
  for dataset, archive, path, error in missing:
    size = f" ({archive.stated_size})" if archive.stated_size else ""
    lines.append(f"- {dataset.name}: {archive.name}{size}")
    if archive.url is None:
      lines.append(f"    get it:    {dataset.login}; then {archive.page}")
    else:
      lines.append(f"    failed:    {error}")
    lines.append(f"    put it at: {path}")
    if dataset.note:
      lines.append(f"    note:      {dataset.note}")
  return "\n".join(lines)


def prepare_archive(folder: Path, archive: sources.Archive, mirror: str | None = None) -> str:
  """Gets and extracts one archive into `folder` unless done; returns what it did."""
  marker = folder / f".{archive.name}.done"
  if marker.exists():
    return "done before"
  if layout_in_place(folder, archive):
    return "found in place"
  path = folder / archive.name
  status = "extracted"
  if not path.exists():
    if archive.url is None:
      raise Unavailable(f"{path}: missing; it needs a login")
    fetch(mirror_url(archive.url, mirror), path, archive)
    status = "downloaded, extracted"
  else:
    check_file(path, archive)
  extract(path, folder, archive)
  atomic_write_bytes(marker, b"")
  if not archive.keep:
    path.unlink()
  return status


def layout_in_place(folder: Path, archive: sources.Archive) -> bool:
  """Whether every `expects` glob of the archive matches something in `folder`."""
  return not _missing_globs(folder, archive.expects)


def mirror_url(url: str, mirror: str | None) -> str:
  """`url` with its scheme and host replaced by `mirror`'s (whose path is a prefix)."""
  if not mirror:
    return url
  parts = urllib.parse.urlsplit(url)
  base = urllib.parse.urlsplit(mirror)
  return urllib.parse.urlunsplit(
    (base.scheme, base.netloc, base.path.rstrip("/") + parts.path, parts.query, "")
  )


def fetch(url: str, path: Path, archive: sources.Archive) -> None:
  """Downloads `url` to `path` through `<path>.part`, resuming it with a Range request."""
  part = path.with_name(path.name + ".part")
  offset = part.stat().st_size if part.exists() else 0
  headers = {"Range": f"bytes={offset}-"} if offset else {}
  path.parent.mkdir(parents=True, exist_ok=True)
  try:
    response = urllib.request.urlopen(
      urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S
    )
  except urllib.error.HTTPError as e:
    if e.code == 416 and offset and _content_range(e.headers.get("Content-Range"))[1] == offset:
      _finish(part, path, archive)  # the .part was already whole
      return
    if e.code == 416:
      part.unlink()
      raise PrepareError(
        f"{url}: the server refused to resume {part}; removed it, run again"
      ) from e
    raise Unavailable(f"{url}: HTTP {e.code} {e.reason}") from e
  except (urllib.error.URLError, OSError) as e:
    raise Unavailable(f"{url}: {getattr(e, 'reason', e)}") from e
  with response:
    if offset and response.status == 206:
      start, total = _content_range(response.headers.get("Content-Range"))
      if start != offset:
        raise PrepareError(f"{url}: asked to resume at byte {offset}, the server sent {start}")
    else:
      offset, length = 0, response.headers.get("Content-Length")
      total = int(length) if length is not None else None
    if archive.size is not None and total is not None and total != archive.size:
      raise PrepareError(f"{url}: the server offers {total} bytes, expected {archive.size}")
    bar = tqdm.tqdm(
      total=total, initial=offset, desc=path.name, unit="B", unit_scale=True, unit_divisor=1024
    )
    with bar, open(part, "ab" if offset else "wb") as f:
      try:
        while chunk := response.read(CHUNK):
          f.write(chunk)
          bar.update(len(chunk))
      except (OSError, http.client.HTTPException) as e:
        f.flush()
        raise PrepareError(_cut(url, part, total, e)) from e
  if total is not None and part.stat().st_size != total:
    raise PrepareError(_cut(url, part, total, "connection closed"))
  _finish(part, path, archive)


def _finish(part: Path, path: Path, archive: sources.Archive) -> None:
  """Checks a complete `.part` and renames it to `path`; a wrong file is removed."""
  try:
    check_file(part, archive)
  except PrepareError as e:
    part.unlink()
    raise PrepareError(f"{e}; removed it, run again to download it again") from e
  os.replace(part, path)


def _cut(url: str, part: Path, total: int | None, why: object) -> str:
  return (
    f"{url}: the transfer stopped at {part.stat().st_size} of {total} bytes ({why}); "
    f"{part} is kept, run again to resume it"
  )


def _content_range(value: str | None) -> tuple[int | None, int | None]:
  """(first byte, total) of a `Content-Range: bytes a-b/n` or `bytes */n` header."""
  match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (value or "").strip())
  if not match:
    return None, None
  start, total = match.groups()
  return (int(start) if start else None), (int(total) if total != "*" else None)


def check_file(path: Path, archive: sources.Archive) -> None:
  """The archive's size and sha256 where the table knows them."""
  size = path.stat().st_size
  if archive.size is not None and size != archive.size:
    raise PrepareError(f"{path}: {size} bytes, expected {archive.size}")
  if archive.sha256 is not None:
    digest = hashlib.sha256()
    with (
      open(path, "rb") as f,
      tqdm.tqdm(
        total=size, desc=f"sha256 {path.name}", unit="B", unit_scale=True, unit_divisor=1024
      ) as bar,
    ):
      while chunk := f.read(CHUNK):
        digest.update(chunk)
        bar.update(len(chunk))
    if digest.hexdigest() != archive.sha256.lower():
      raise PrepareError(f"{path}: sha256 {digest.hexdigest()}, expected {archive.sha256}")


def extract(path: Path, folder: Path, archive: sources.Archive) -> None:
  """Extracts `path` into `folder` as the table says; nothing is left behind on failure."""
  tmp = folder / f".{archive.name}.tmp"
  shutil.rmtree(tmp, ignore_errors=True)  # the leftovers of a killed run
  try:
    unpack(path, tmp / archive.into, str(path))
    for inner in archive.unzip:
      unpack(tmp / inner, (tmp / inner).parent, f"{path}: {inner}")
      (tmp / inner).unlink()
    for src, dst in archive.moves:
      if not (tmp / src).exists():
        raise PrepareError(f"{path}: {src} is not in the archive ({_holds(tmp)})")
      (tmp / dst).parent.mkdir(parents=True, exist_ok=True)
      os.replace(tmp / src, tmp / dst)
    for name in archive.remove:
      if (tmp / name).is_dir():
        shutil.rmtree(tmp / name)
      else:
        (tmp / name).unlink(missing_ok=True)
    missing = _missing_globs(tmp, archive.expects)
    if missing:
      raise PrepareError(
        f"{path}: unexpected layout, expected {', '.join(missing)} under {folder} ({_holds(tmp)})"
      )
    _merge(tmp, folder)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def unpack(path: Path, dest: Path, name: str) -> None:
  """Extracts a zip, tar or tar.gz into `dest`, refusing members that would land outside it."""
  if not path.is_file():
    raise PrepareError(f"{name}: not found")
  if not path.name.endswith((".zip", ".tar", ".tar.gz", ".tgz")):
    raise PrepareError(f"{name}: not a .zip, .tar, .tar.gz or .tgz archive")
  dest.mkdir(parents=True, exist_ok=True)
  size = path.stat().st_size
  try:
    desc = f"extract {path.name}"
    with (
      open(path, "rb") as raw,
      tqdm.tqdm.wrapattr(raw, "read", total=size, desc=desc, unit="B") as f,
    ):
      if path.name.endswith(".zip"):
        with zipfile.ZipFile(f) as zf:
          for info in zf.infolist():
            _check_member(name, info.filename)
            zf.extract(info, dest)
      else:
        with tarfile.open(fileobj=f, mode="r|*") as tf:
          for member in tf:
            _check_member(name, member.name)
            tf.extract(member, dest, filter="data")
  except tarfile.FilterError as e:  # links out of `dest`, devices, ...
    raise PrepareError(f"{name}: unsafe member refused ({e})") from e
  except _CORRUPT as e:
    raise PrepareError(f"{name}: corrupt or truncated archive ({e}); replace it, run again") from e


def _check_member(name: str, member: str) -> None:
  parts = PurePosixPath(member.replace("\\", "/"))
  if parts.is_absolute() or ".." in parts.parts or re.match(r"[A-Za-z]:", member):
    raise PrepareError(f"{name}: member {member!r} would be written outside the target folder")


def _missing_globs(root: Path, patterns: Sequence[str]) -> list[str]:
  return [p for p in patterns if next(iter(root.glob(p)), None) is None]


def _holds(tmp: Path) -> str:
  found = [*tmp.glob("*"), *tmp.glob("*/*")]
  entries = sorted(p.relative_to(tmp).as_posix() for p in found) or ["nothing"]
  return f"it holds {', '.join(entries[:10])}" + (", ..." if len(entries) > 10 else "")


def _merge(src: Path, dst: Path) -> None:
  """Moves the tree `src` into `dst`, merging folders and replacing files (so reruns agree)."""
  dst.mkdir(parents=True, exist_ok=True)
  for child in src.iterdir():
    target = dst / child.name
    if child.is_dir() and target.is_dir():
      _merge(child, target)
      continue
    if target.is_dir():
      shutil.rmtree(target)
    os.replace(child, target)
