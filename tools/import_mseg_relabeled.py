"""Builds mseg_jax/prepare/data/relabeled/segments.txt.gz from mseg-api's relabeled_data.

  python tools/import_mseg_relabeled.py --mseg-api ../shared/reference/mseg-api

The records (records.tsv, mseg-api's dataset_update_records.py in order) are kept by hand;
this writes, for each record's file in that order, a `# <file>` line and the file's segment
names in file order (blank lines dropped). Files that no record applies are left out.
"""

import argparse
import gzip
import sys
from pathlib import Path

from mseg_jax.prepare import relabel


def segments_text(relabeled_data: Path, files: list[str]) -> str:
  lines = []
  for file in files:
    path = relabeled_data / file
    if not path.is_file():
      raise FileNotFoundError(f"{path}: segment list of a record not found")
    lines.append(f"# {file}")
    lines.extend(name for name in path.read_text(encoding="utf-8").splitlines() if name)
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--mseg-api", required=True, help="mseg-api checkout (mseg/ inside)")
  parser.add_argument("--output", default=str(relabel.SEGMENTS_FILE))
  args = parser.parse_args(argv)
  rows = relabel.RECORDS_FILE.read_text(encoding="utf-8").splitlines()[1:]
  files = [row.split("\t")[4] for row in rows]
  text = segments_text(Path(args.mseg_api) / "mseg" / "relabeled_data", files)
  Path(args.output).write_bytes(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))
  print(f"{args.output}: {len(files)} records, {text.count(chr(10)) - len(files)} segments")
  return 0


if __name__ == "__main__":
  sys.exit(main())
