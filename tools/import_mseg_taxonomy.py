"""Builds mseg_jax/taxonomy/data/taxonomy.json from mseg-api's taxonomy files.

  python tools/import_mseg_taxonomy.py --mseg-api ../shared/reference/mseg-api \
      --output-dir mseg_jax/taxonomy/data
  # a custom universal taxonomy (same columns/cell syntax as MSeg_master.tsv):
  python tools/import_mseg_taxonomy.py --mseg-api DIR --tsv my_master.tsv --output-dir my_taxonomy
  # then use it with MSEG_JAX_TAXONOMY=my_taxonomy/taxonomy.json
"""

import argparse
import sys

from mseg_jax.taxonomy import importer


def _names(text: str) -> tuple[str, ...]:
  return tuple(n for n in text.split(",") if n)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--mseg-api", required=True, help="mseg-api checkout (mseg/ inside)")
  parser.add_argument("--tsv", help="master TSV (default: mseg-api's MSeg_master.tsv)")
  parser.add_argument("--output-dir", required=True, help="output folder for taxonomy.json")
  parser.add_argument(
    "--unrelabeled-train",
    type=_names,
    default=importer.MSEG_UNRELABELED_TRAIN,
    help="comma-separated",
  )
  parser.add_argument(
    "--relabeled-train",
    type=_names,
    default=importer.MSEG_RELABELED_TRAIN,
    help="comma-separated",
  )
  parser.add_argument(
    "--test",
    type=_names,
    default=importer.MSEG_TEST,
    help="comma-separated test-dataset columns",
  )
  args = parser.parse_args(argv)
  try:
    data = importer.build_taxonomy(
      args.mseg_api, args.tsv, args.unrelabeled_train, args.relabeled_train, args.test
    )
  except importer.TaxonomyError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  out = importer.write_taxonomy(data, args.output_dir)
  print(
    f"{len(data['universal'])} universal classes, {len(data['classes'])} dataset taxonomies, "
    f"{len(data['pairwise'])} pairwise remaps, {len(data['naive'])} naive classes -> {out}"
  )
  for d, lut in data["to_universal"].items():
    unmapped = [n for n, u in zip(data["classes"][d], lut, strict=True) if u == importer.IGNORE]
    if unmapped:
      print(f"  {d}: {len(unmapped)} class(es) -> {importer.IGNORE}: {', '.join(unmapped)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
