"""Inspect the taxonomies.

python -m mseg_jax.taxonomy datasets              # every taxonomy, its size and role
python -m mseg_jax.taxonomy classes cityscapes-19 # ids, names and where each class goes
python -m mseg_jax.taxonomy projection camvid-11  # universal classes summed per test class
"""

import argparse
import sys
from collections.abc import Sequence

from mseg_jax import taxonomy as tx


def table(header: Sequence[str], rows: list[Sequence]) -> str:
  """Left-aligned columns separated by two spaces, with a dashed rule under the header."""
  cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def _role(dataset: str) -> str:
  if dataset in tx.UNRELABELED_TRAIN_DATASETS:
    return "train"
  if dataset in tx.RELABELED_TRAIN_DATASETS:
    return "train (relabeled)"
  if dataset in tx.TRAIN_DATASETS:
    return "train column, unused by MSeg"
  if dataset in tx.TEST_DATASETS:
    return "test"
  return "raw"


def datasets() -> str:
  rows = [("universal", tx.NUM_UNIVERSAL, "universal", "")]
  for d in tx.dataset_names():
    targets = []
    if d in tx.TRAIN_DATASETS:
      targets.append("universal")
    targets += [dst for src, dst in tx.pairwise_pairs() if src == d]
    if d in tx.TEST_DATASETS:
      targets.append("(projected from universal)")
    rows.append((d, len(tx.class_names(d)), _role(d), ", ".join(targets)))
  return table(("taxonomy", "classes", "role", "maps to"), rows)


def classes(dataset: str) -> str:
  names = tx.class_names(dataset)
  if dataset == "universal":
    feeds = [[] for _ in names]
    for d in tx.TEST_DATASETS:
      for test_class, sources in tx.projection_sources(d).items():
        for u in sources:
          feeds[tx.universal_id(u)].append(f"{d}:{test_class}")
    rows = [(i, n, ", ".join(f)) for i, (n, f) in enumerate(zip(names, feeds, strict=True))]
    return table(("id", "universal class", "test classes it feeds"), rows)
  if dataset in tx.TRAIN_DATASETS:
    lut, universal = tx.to_universal_lut(dataset), tx.universal_names()
    rows = [
      (i, n, lut[i], universal[lut[i]] if lut[i] != tx.IGNORE else "(ignored)")
      for i, n in enumerate(names)
    ]
    return table(("id", f"{dataset} class", "universal id", "universal class"), rows)
  if dataset in tx.TEST_DATASETS:
    sources = tx.projection_sources(dataset)
    rows = [(i, n, ", ".join(sources[n]) or "(none: never predicted)") for i, n in enumerate(names)]
    return table(("id", f"{dataset} class", "universal classes"), rows)
  pairs = [dst for src, dst in tx.pairwise_pairs() if src == dataset]
  luts = [(dst, tx.pairwise_lut(dataset, dst), tx.class_names(dst)) for dst in pairs]
  rows = [
    (i, n, *[t[lut[i]] if lut[i] != tx.IGNORE else "(ignored)" for _, lut, t in luts])
    for i, n in enumerate(names)
  ]
  return table(("id", f"{dataset} class", *[f"-> {dst}" for dst in pairs]), rows)


def projection(test_dataset: str) -> str:
  sources = tx.projection_sources(test_dataset)
  width = max(len(n) for n in sources)
  lines = [
    f"{test_dataset}  {n.ljust(width)} <- {', '.join(s) or '(none: never predicted)'}"
    for n, s in sources.items()
  ]
  dropped = tx.NUM_UNIVERSAL - sum(len(s) for s in sources.values())
  lines.append(
    f"({dropped} of {tx.NUM_UNIVERSAL} universal classes feed no {test_dataset} class;"
    " their probability is dropped)"
  )
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m mseg_jax.taxonomy",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sub = parser.add_subparsers(dest="command", required=True)
  sub.add_parser("datasets", help="list the taxonomies")
  p = sub.add_parser("classes", help="a taxonomy's classes and their mapping")
  p.add_argument("dataset", help="a name from `datasets`, or universal")
  p = sub.add_parser("projection", help="universal classes feeding each test class")
  p.add_argument("dataset", help="one of " + ", ".join(tx.TEST_DATASETS))
  args = parser.parse_args(argv)
  try:
    if args.command == "datasets":
      print(datasets())
    elif args.command == "classes":
      print(classes(args.dataset))
    else:
      print(projection(args.dataset))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
