"""python -m mseg_jax.prepare {download,lists,remap,relabel,all} --data-root D [options].

`--datasets` takes MSeg taxonomy names (default: all); each step does what they need (remap for
coco-panoptic-133 converts inst-201 -> 201 -> 133, relabel acts on the `-relabeled` names).
`--images STEM,...` limits remap and relabel to those images (lists always hold whole splits).
`all` runs download, lists, remap, relabel. Every step resumes: what exists is skipped.
"""

import argparse
import importlib
import sys
from pathlib import Path

from mseg_jax.prepare import common, lists

STEPS = ("download", "lists", "remap", "relabel")


def _names(text: str) -> list[str]:
  return [name for name in text.split(",") if name]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m mseg_jax.prepare",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("step", choices=(*STEPS, "all"))
  parser.add_argument("--data-root", type=Path, required=True, help="mseg-api's MSEG_DST_DIR")
  parser.add_argument(
    "--datasets", type=_names, default=list(lists.TAXONOMIES), help="comma-separated taxonomies"
  )
  parser.add_argument("--images", type=_names, default=None, help="comma-separated RGB stems")
  parser.add_argument("--workers", type=int, default=common.default_workers(), help="processes")
  args = parser.parse_args(argv)
  unknown = sorted(set(args.datasets) - set(lists.TAXONOMIES))
  if unknown:
    parser.error(f"unknown datasets {', '.join(unknown)}; known: {', '.join(lists.TAXONOMIES)}")
  images = set(args.images) if args.images else None
  options = {
    "download": dict(workers=args.workers),
    "lists": dict(images=images),
    "remap": dict(images=images, workers=args.workers),
    "relabel": dict(images=images, workers=args.workers),
  }
  try:
    for step in STEPS if args.step == "all" else (args.step,):
      module = importlib.import_module(f"mseg_jax.prepare.{step}")
      module.run(args.data_root, args.datasets, **options[step])
  except common.PrepareError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
