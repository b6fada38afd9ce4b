"""Where each MSeg dataset lives on disk, as mseg-api's `mseg/utils/dataset_config.py` says.

`--data-root` plays the part of mseg-api's `MSEG_DST_DIR`: every dataset's data root is
`<data_root>/<DEFAULT_ROOTS[name]>` unless `roots` overrides it. Taxonomies that share images
(cityscapes-19 / cityscapes-19-relabeled / cityscapes-34, ...) share a root; their list files
point at different label folders.

List files hold `rgb_relpath label_relpath` lines relative to the dataset root. They live at
`<lists_dir>/<name>/list/<split>.txt`, one folder per taxonomy as in mseg-api's
`mseg/dataset_lists`, so taxonomies that share a root never read the same list. `lists_dir`
defaults to `<data_root>/dataset_lists`, where `python -m mseg_jax.prepare lists` writes them.
"""

import argparse
from pathlib import Path

LISTS_FOLDER = "dataset_lists"

DEFAULT_ROOTS: dict[str, str] = {
  "ade20k-151-inst": "mseg_dataset/ADE20K/ADE20K_2016_07_26",
  "ade20k-151": "mseg_dataset/ADE20K/ADEChallengeData2016",
  "ade20k-150": "mseg_dataset/ADE20K/ADEChallengeData2016",
  "ade20k-150-relabeled": "mseg_dataset/ADE20K/ADEChallengeData2016",
  "bdd": "mseg_dataset/BDD/bdd100k",
  "bdd-relabeled": "mseg_dataset/BDD/bdd100k",
  "camvid-32": "mseg_dataset/Camvid",
  "camvid-11": "mseg_dataset/Camvid",
  "cityscapes-34": "mseg_dataset/Cityscapes",
  "cityscapes-19": "mseg_dataset/Cityscapes",
  "cityscapes-19-relabeled": "mseg_dataset/Cityscapes",
  "cityscapes-34-relabeled": "mseg_dataset/Cityscapes",
  "coco-panoptic-inst-201": "mseg_dataset/COCOPanoptic",
  "coco-panoptic-201": "mseg_dataset/COCOPanoptic",
  "coco-panoptic-133": "mseg_dataset/COCOPanoptic",
  "coco-panoptic-133-relabeled": "mseg_dataset/COCOPanoptic",
  "idd-40": "mseg_dataset/IDD/IDD_Segmentation",
  "idd-39": "mseg_dataset/IDD/IDD_Segmentation",
  "idd-39-relabeled": "mseg_dataset/IDD/IDD_Segmentation",
  "kitti-34": "mseg_dataset/KITTI",
  "kitti-19": "mseg_dataset/KITTI",
  "mapillary-public66": "mseg_dataset/MapillaryVistasPublic",
  "mapillary-public65": "mseg_dataset/MapillaryVistasPublic",
  "mapillary-public65-relabeled": "mseg_dataset/MapillaryVistasPublic",
  "pascal-context-460": "mseg_dataset/PASCAL_Context",
  "pascal-context-60": "mseg_dataset/PASCAL_Context",
  "scannet-41": "mseg_dataset/ScanNet/scannet_frames_25k",
  "scannet-20": "mseg_dataset/ScanNet/scannet_frames_25k",
  "sunrgbd-38": "mseg_dataset/SUNRGBD",
  "sunrgbd-37": "mseg_dataset/SUNRGBD",
  "sunrgbd-37-relabeled": "mseg_dataset/SUNRGBD",
  "voc2012": "mseg_dataset/PASCAL_VOC_2012",
  "wilddash-34": "mseg_dataset/WildDash",
  "wilddash-19": "mseg_dataset/WildDash",
}


def dataset_root(data_root: str | Path, name: str, roots: dict[str, str] | None = None) -> Path:
  """The data root of dataset `name`; `roots` overrides it (absolute or relative to data_root)."""
  if roots and name in roots:
    return Path(data_root) / roots[name]  # an absolute override replaces data_root
  if name not in DEFAULT_ROOTS:
    raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DEFAULT_ROOTS))}")
  return Path(data_root) / DEFAULT_ROOTS[name]


def list_path(
  data_root: str | Path,
  name: str,
  split: str,
  roots: dict[str, str] | None = None,
  lists_dir: str | Path | None = None,
) -> Path:
  """`<lists_dir>/<name>/list/<split>.txt`; `lists_dir` defaults to `<data_root>/dataset_lists`."""
  if name not in DEFAULT_ROOTS and not (roots and name in roots):
    raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DEFAULT_ROOTS))}")
  lists_dir = Path(data_root) / LISTS_FOLDER if lists_dir is None else Path(lists_dir)
  return lists_dir / name / "list" / f"{split}.txt"


def parse_roots(text: str) -> dict[str, str]:
  """`--roots name=path[,name=path...]` (every CLI) -> {name: path}."""
  pairs = [item.split("=", 1) for item in text.split(",") if item]
  if any(len(p) != 2 for p in pairs):
    raise argparse.ArgumentTypeError(f"--roots wants name=path[,name=path...], got {text!r}")
  return dict(pairs)
