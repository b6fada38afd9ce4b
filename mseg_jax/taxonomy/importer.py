"""The mseg-api importer: reads mseg-api's taxonomy files and builds our taxonomy.json.

Used by tools/import_mseg_taxonomy.py; the runtime (`mseg_jax.taxonomy`) only reads its output.

The rules are those of mseg-api (`mseg/taxonomy/taxonomy_converter.py`,
`naive_taxonomy_converter.py`, `label_preparation/remap_dataset.py`, `utils/names_utils.py`):

* `<name>_names.txt`: line index = label id; comments after `#`, surrounding spaces/CR/LF and
  blank lines are dropped (numpy.genfromtxt with delimiter "\\n").
* `MSeg_master.tsv`: tab-separated, any line ending, no quoting, no NA parsing ("None" is a
  name). The `universal` column names the universal class of each row; universal ids follow the
  row order, and the `unlabeled` row (last, if present) is the ignore class 255. A
  training-dataset cell is blank, one class name (spaces allowed) or a brace list `{a, b}`;
  every class in it maps to the row's universal class (the `unlabeled` row: to 255). A
  test-dataset cell is blank or the single test class that the row's universal class is summed
  into. Documentation columns and the dataset columns no mseg-api code reads (nyudepthv2-37,
  scannet-37, test-nyudepthv2-37: no names files) are skipped.
* `<src>_to_<dst>.tsv`: columns named for the two datasets, one row per source class; a target
  `unlabeled` means 255. Id 255 of the source (when it is not a real class) follows the
  `unlabeled` row, or stays 255.

Unlike mseg-api, unmapped ids become 255 (not 0), and a malformed TSV raises TaxonomyError
naming the file, row, column and class instead of silently overwriting.
"""

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from mseg_jax.taxonomy import FORMAT, IGNORE

UNLABELED = "unlabeled"

# mseg-api's dataset groups (mseg/taxonomy/taxonomy_converter.py @ 2bd00ae).
MSEG_UNRELABELED_TRAIN = (
  "ade20k-150",
  "bdd",
  "cityscapes-19",
  "coco-panoptic-133",
  "idd-39",
  "mapillary-public65",
  "sunrgbd-37",
)
MSEG_RELABELED_TRAIN = (
  "ade20k-150-relabeled",
  "bdd-relabeled",
  "cityscapes-19-relabeled",
  "cityscapes-34-relabeled",
  "coco-panoptic-133-relabeled",
  "idd-39-relabeled",
  "mapillary-public65-relabeled",
  "sunrgbd-37-relabeled",
)
MSEG_TEST = ("camvid-11", "kitti-19", "pascal-context-60", "scannet-20", "voc2012", "wilddash-19")

UNIVERSAL_COLUMN = "universal"
# Columns that hold documentation, and dataset columns that no mseg-api code reads (they have no
# names file). Both are skipped.
DOC_COLUMNS = (
  "Parent Category",
  "WordNet 3.1 Synset",
  "Defn (Most of the meanings are derived from WordNet 3.1)",
  "Modification of WordNet Node",
)
UNUSED_COLUMNS = ("nyudepthv2-37", "scannet-37", "test-nyudepthv2-37")


class TaxonomyError(ValueError):
  """A taxonomy file is malformed or inconsistent with the names files."""


def read_names(path: str | Path) -> list[str]:
  """Class names of a `<name>_names.txt` file; list index = label id."""
  path = Path(path)
  names = []
  text = path.read_text(encoding="utf-8").replace("\r\n", "\n").replace("\r", "\n")
  for line in text.split("\n"):
    name = line.split("#", 1)[0].strip(" \r\n")
    if name:
      names.append(name)
  if not names:
    raise TaxonomyError(f"{path}: no class names")
  return names


def load_all_names(mseg_api: str | Path) -> dict[str, list[str]]:
  """{dataset: class names} for every `dataset_lists/<d>/<d>_names.txt` (33 in mseg-api)."""
  root = Path(mseg_api) / "mseg" / "dataset_lists"
  if not root.is_dir():
    raise TaxonomyError(f"{root} is not a directory (expected an mseg-api checkout)")
  names = {}
  for folder in sorted(p for p in root.iterdir() if p.is_dir()):
    path = folder / f"{folder.name}_names.txt"
    if path.is_file():
      names[folder.name] = read_names(path)
  return names


def parse_cell(cell: str) -> list[str]:
  """Class names in a training-dataset cell: [] (blank), [name] or a `{a, b}` brace list."""
  if cell == "":
    return []
  if cell.startswith("{"):
    if not cell.endswith("}"):
      raise ValueError(f"brace list {cell!r} does not end with '}}'")
    return [c.strip() for c in cell[1:-1].split(",")]
  return [cell]


def read_tsv(path: str | Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
  """(header, [(line number, cells)]) of a tab-separated file; blank lines are skipped."""
  path = Path(path)
  text = path.read_text(encoding="utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
  lines = text.split("\n")
  header = lines[0].split("\t")
  if len(set(header)) != len(header):
    dup = sorted({h for h in header if header.count(h) > 1})
    raise TaxonomyError(f"{path}: line 1 (header) repeats column(s) {dup}")
  rows = []
  for line_no, line in enumerate(lines[1:], start=2):
    if not line.strip():
      continue
    cells = line.split("\t")
    if len(cells) > len(header):
      raise TaxonomyError(
        f"{path}: line {line_no} has {len(cells)} cells but the header has {len(header)}"
      )
    rows.append((line_no, cells + [""] * (len(header) - len(cells))))
  return header, rows


def _ids_of(names: Sequence[str], cls: str) -> list[int]:
  return [i for i, n in enumerate(names) if n == cls]


@dataclasses.dataclass(frozen=True)
class _Master:
  """A master TSV's cells, addressed by row and dataset column, for error messages."""

  path: Path
  header: list[str]
  rows: list[tuple[int, list[str]]]

  def universal(self, row: int) -> str:
    return self.rows[row][1][self.header.index(UNIVERSAL_COLUMN)].strip()

  def where(self, row: int, dataset: str) -> str:
    return (
      f"{self.path}: row {row} (line {self.rows[row][0]}, universal {self.universal(row)!r}), "
      f"column {self.header.index(dataset) + 1} {dataset!r}"
    )

  def cells(self, dataset: str) -> Iterator[tuple[int, str]]:
    """(row, cell) of every non-blank cell of a dataset column."""
    for row, (_, cells) in enumerate(self.rows):
      cell = cells[self.header.index(dataset)]
      if cell.strip() != cell:
        raise TaxonomyError(f"{self.where(row, dataset)}: cell {cell!r} has surrounding whitespace")
      if cell:
        yield row, cell

  def ids(self, row: int, dataset: str, cls: str, names: Sequence[str]) -> list[int]:
    ids = _ids_of(names, cls)
    if not ids:
      where = self.where(row, dataset)
      raise TaxonomyError(f"{where}: class {cls!r} is not in {dataset}_names.txt")
    return ids


def _dataset_columns(
  master: _Master, names: Mapping[str, Sequence[str]], test_datasets: Sequence[str]
) -> tuple[list[str], list[str], list[str]]:
  """(training columns, test columns, skipped columns) of the header."""
  skipped, datasets = [], []
  for col, name in enumerate(master.header, start=1):
    if name == UNIVERSAL_COLUMN:
      continue
    if name in DOC_COLUMNS or name in UNUSED_COLUMNS:
      skipped.append(name)
    elif name not in names:
      raise TaxonomyError(
        f"{master.path}: line 1 (header), column {col} {name!r}: unknown dataset {name!r} "
        f"(no dataset_lists/{name}/{name}_names.txt)"
      )
    else:
      datasets.append(name)
  missing = [d for d in test_datasets if d not in datasets]
  if missing:
    raise TaxonomyError(f"{master.path}: no column for test dataset(s) {missing}")
  return [d for d in datasets if d not in test_datasets], list(test_datasets), skipped


def _universal_ids(master: _Master) -> tuple[list[str], list[int]]:
  """(universal class names, universal id of each row): ids follow the rows; the `unlabeled`
  row, which must be last, is IGNORE."""
  universal, uid_of_row, seen = [], [], {}
  for row in range(len(master.rows)):
    uname = master.universal(row)
    at = f"{master.path}: row {row} (line {master.rows[row][0]}), column {UNIVERSAL_COLUMN!r}"
    if not uname:
      raise TaxonomyError(f"{at}: blank universal class name")
    if uname in seen:
      raise TaxonomyError(f"{at}: universal class {uname!r} repeats row {seen[uname]}")
    seen[uname] = row
    if uname == UNLABELED:
      if row != len(master.rows) - 1:  # mseg-api's universal id is the row index
        raise TaxonomyError(f"{at}: the {UNLABELED!r} row must be the last row")
      uid_of_row.append(IGNORE)
    else:
      uid_of_row.append(len(universal))
      universal.append(uname)
  if len(universal) >= IGNORE:
    raise TaxonomyError(
      f"{master.path}: {len(universal)} universal classes; at most 254 fit in uint8"
    )
  return universal, uid_of_row


def _to_universal(
  master: _Master, dataset: str, names: Sequence[str], uid_of_row: list[int]
) -> list[int]:
  """Universal id (or IGNORE) per class id of a training column; a class maps at most once."""
  lut, mapped_at = [IGNORE] * len(names), {}
  for row, cell in master.cells(dataset):
    try:
      classes = parse_cell(cell)
    except ValueError as e:
      raise TaxonomyError(f"{master.where(row, dataset)}: {e}") from None
    for cls in classes:
      for i in master.ids(row, dataset, cls, names):
        if i in mapped_at:
          raise TaxonomyError(
            f"{master.where(row, dataset)}: class {cls!r} is mapped twice (also in row "
            f"{mapped_at[i]}, universal {master.universal(mapped_at[i])!r})"
          )
        mapped_at[i] = row
        lut[i] = uid_of_row[row]
  return lut


def _from_universal(
  master: _Master, dataset: str, names: Sequence[str], uid_of_row: list[int], num_universal: int
) -> list[int]:
  """Test class id (or -1) per universal id of a test column."""
  proj = [-1] * num_universal
  for row, cls in master.cells(dataset):
    ids = master.ids(row, dataset, cls, names)
    if uid_of_row[row] == IGNORE:
      raise TaxonomyError(
        f"{master.where(row, dataset)}: the {UNLABELED!r} row cannot feed test class {cls!r}"
      )
    proj[uid_of_row[row]] = ids[0]
  return proj


def parse_master_tsv(
  path: str | Path,
  names: Mapping[str, Sequence[str]],
  test_datasets: Sequence[str] = MSEG_TEST,
) -> dict:
  """Parses an MSeg_master.tsv-style file against the datasets' class names.

  Returns {"universal": [names], "train_datasets": [...], "test_datasets": [...],
  "to_universal": {train: [universal id or 255 per class id]},
  "from_universal": {test: [test id or -1 per universal id]}, "skipped_columns": [...]}.
  Columns other than `universal`, DOC_COLUMNS and UNUSED_COLUMNS are datasets; those in
  `test_datasets` are test columns, the others training columns.
  """
  path = Path(path)
  header, rows = read_tsv(path)
  if UNIVERSAL_COLUMN not in header:
    raise TaxonomyError(f"{path}: line 1 (header) has no {UNIVERSAL_COLUMN!r} column")
  master = _Master(path, header, rows)
  trains, tests, skipped = _dataset_columns(master, names, test_datasets)
  universal, uid_of_row = _universal_ids(master)
  return {
    "universal": universal,
    "train_datasets": trains,
    "test_datasets": tests,
    "to_universal": {d: _to_universal(master, d, names[d], uid_of_row) for d in trains},
    "from_universal": {
      d: _from_universal(master, d, names[d], uid_of_row, len(universal)) for d in tests
    },
    "skipped_columns": skipped,
  }


def parse_pairwise_tsv(
  path: str | Path, names: Mapping[str, Sequence[str]]
) -> tuple[str, str, list[int]]:
  """(src, dst, lut) of a `<src>_to_<dst>.tsv`; lut maps every src id (and 255) to a dst id.

  The LUT has max(256, #src classes) entries. Id 255 follows the TSV's `unlabeled` row unless
  255 is a real source class (pascal-context-460). Every source class needs a row.
  """
  path = Path(path)
  header, rows = read_tsv(path)
  if len(header) != 2:
    raise TaxonomyError(f"{path}: line 1 (header) must name 2 datasets, got {header}")
  src, dst = header
  if path.name != f"{src}_to_{dst}.tsv":
    raise TaxonomyError(f"{path}: header names {src!r} -> {dst!r}; the file name disagrees")
  for col, d in enumerate(header, start=1):
    if d not in names:
      raise TaxonomyError(f"{path}: line 1 (header), column {col}: unknown dataset {d!r}")
  src_names, dst_names = names[src], names[dst]
  lut = [IGNORE] * max(256, len(src_names))
  seen = {}
  for line_no, (s, t) in rows:
    where = f"{path}: line {line_no}"
    for col, cls in ((src, s), (dst, t)):
      if cls.strip() != cls or not cls:
        raise TaxonomyError(f"{where}, column {col!r}: bad cell {cls!r}")
    if s in seen and seen[s][1] != t:
      raise TaxonomyError(
        f"{where}, column {src!r}: class {s!r} mapped to {t!r} and, on line "
        f"{seen[s][0]}, to {seen[s][1]!r}"
      )
    seen[s] = (line_no, t)
    if t == UNLABELED:
      target = IGNORE
    elif t in dst_names:
      target = dst_names.index(t)
    else:
      raise TaxonomyError(f"{where}, column {dst!r}: class {t!r} is not in {dst}_names.txt")
    ids = _ids_of(src_names, s)
    if s == UNLABELED and len(src_names) <= IGNORE:
      ids.append(IGNORE)
    if not ids:
      raise TaxonomyError(f"{where}, column {src!r}: class {s!r} is not in {src}_names.txt")
    for i in ids:
      lut[i] = target
  missing = [n for n in src_names if n not in seen]
  if missing:
    raise TaxonomyError(f"{path}: no row for {src} class(es) {missing}")
  return src, dst, lut


def naive_taxonomy(names: Mapping[str, Sequence[str]], datasets: Sequence[str]) -> list[str]:
  """Union of the lower-cased class names of `datasets`, in first-seen order (mseg-api's naive)."""
  out = []
  for d in datasets:
    for n in names[d]:
      if n.lower() not in out:
        out.append(n.lower())
  return out


def build_taxonomy(
  mseg_api: str | Path,
  tsv: str | Path | None = None,
  unrelabeled_train: Sequence[str] = MSEG_UNRELABELED_TRAIN,
  relabeled_train: Sequence[str] = MSEG_RELABELED_TRAIN,
  test: Sequence[str] = MSEG_TEST,
) -> dict:
  """Our taxonomy (a JSON-able dict) from an mseg-api checkout and a master TSV."""
  mseg_api = Path(mseg_api)
  files = mseg_api / "mseg" / "class_remapping_files"
  tsv = Path(tsv) if tsv is not None else files / "MSeg_master.tsv"
  names = load_all_names(mseg_api)
  master = parse_master_tsv(tsv, names, test)
  for group in (unrelabeled_train, relabeled_train):
    missing = [d for d in group if d not in master["train_datasets"]]
    if missing:
      raise TaxonomyError(f"{tsv}: no training column for {missing}")
  pairwise = {}
  for path in sorted(files.glob("*_to_*.tsv")):
    src, dst, lut = parse_pairwise_tsv(path, names)
    pairwise[f"{src}>{dst}"] = lut
  return {
    "format": FORMAT,
    "source": {
      "tsv": tsv.name,
      "tsv_sha256": hashlib.sha256(tsv.read_bytes()).hexdigest(),
      "skipped_columns": master["skipped_columns"],
    },
    "ignore": IGNORE,
    "universal": master["universal"],
    "unrelabeled_train_datasets": list(unrelabeled_train),
    "relabeled_train_datasets": list(relabeled_train),
    "train_datasets": master["train_datasets"],
    "test_datasets": master["test_datasets"],
    "classes": names,
    "to_universal": master["to_universal"],
    "from_universal": master["from_universal"],
    "pairwise": pairwise,
    "naive": naive_taxonomy(names, unrelabeled_train),
  }


def dumps(data: dict) -> str:
  """JSON text with one line per top-level key or per entry of a top-level dict."""
  lines = []
  for i, (key, value) in enumerate(data.items()):
    comma = "," if i < len(data) - 1 else ""
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
      inner = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in value.items()]
      lines.append(f"{json.dumps(key)}: {{\n" + ",\n".join(inner) + f"\n}}{comma}")
    else:
      lines.append(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{comma}")
  return "{\n" + "\n".join(lines) + "\n}\n"


def write_taxonomy(data: dict, out_dir: str | Path) -> Path:
  out = Path(out_dir) / "taxonomy.json"
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(dumps(data), encoding="utf-8")
  return out
