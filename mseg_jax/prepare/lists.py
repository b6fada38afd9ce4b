"""The list files: per taxonomy and split, the lines of mseg-api's `mseg/dataset_lists`.

A line is `rgb_relpath label_relpath` relative to the taxonomy's data root; IDD, KITTI and
WildDash test lines hold the image only (data_preparation.md §3, §4). The taxonomies of one raw
dataset (a family: cityscapes-34, -19, -19-relabeled, -34-relabeled) list the same images in the
same order, so line i of any two of their lists describes one image, as the remap and relabel
steps need. A label path is the image path rewritten by the family's rule with the taxonomy's
folder. Images come from the raw data where a split can be derived (a sorted folder listing,
COCO's panoptic JSON, a head of another split); the splits that cannot (CamVid, KITTI val,
PASCAL Context, ScanNet, SUN RGB-D val, VOC 2012 val and train_small) ship in `data/lists/`.

Asking for one taxonomy writes the lists of its whole family. A list always describes a whole
split, so `--images` does not limit this step. A list whose text is unchanged is not rewritten.
"""

import dataclasses
import gzip
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from mseg_jax.input_pipeline import catalog
from mseg_jax.prepare.common import PrepareError, atomic_write_bytes

DATA = Path(__file__).parent / "data" / "lists"


@dataclasses.dataclass(frozen=True)
class Family:
  """The taxonomies over one raw dataset: where each split's images come from, label paths."""

  splits: Callable[[Path], dict[str, list[str]]]  # dataset root -> split -> image relpaths
  image: str  # regex of the image path of a labelled line
  label: str  # its label path: `image`'s groups, `{}` = the taxonomy's folder
  folders: dict[str, str]  # taxonomy -> label folder
  official: dict[str, int]  # split -> lines in mseg-api (for a note when they differ)
  only: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # split -> taxonomies

  def has_list(self, taxonomy: str, split: str) -> bool:
    """Whether mseg-api has this split for this taxonomy (COCO's val_small is not in all four)."""
    return taxonomy in self.only.get(split, self.folders)


def _missing(path: Path) -> PrepareError:
  return PrepareError(
    f"{path}: not found; download and extract the dataset first (prepare download)"
  )


def _folder(path: Path) -> Path:
  if not path.is_dir():
    raise _missing(path)
  return path


def _listing(root: Path, folder: str, name: str, nested: bool = False) -> list[str]:
  """Sorted relpaths of the files in root/folder (in its subfolders if nested) named like `name`."""
  files = _folder(root / folder).glob("*/*" if nested else "*")
  found = sorted(
    p.relative_to(root).as_posix() for p in files if re.fullmatch(name, p.name) and p.is_file()
  )
  if not found:
    raise PrepareError(f"{root / folder}: no files named like {name!r}")
  return found


def shipped(dataset: str, split: str) -> list[str]:
  """The image paths of a split shipped in data/lists/, in mseg-api's order."""
  return gzip.decompress((DATA / f"{dataset}.{split}.txt.gz").read_bytes()).decode().splitlines()


def _ade20k(root: Path) -> dict[str, list[str]]:
  return {
    "train": _listing(root, "images/training", r".+\.jpg"),
    "val": _listing(root, "images/validation", r".+\.jpg"),
  }


def _bdd(root: Path) -> dict[str, list[str]]:
  return {s: _listing(root, f"seg/images/{s}", r".+\.jpg") for s in ("train", "val")}


def _camvid(root: Path) -> dict[str, list[str]]:
  _folder(root / "701_StillsRaw_full")
  return {s: shipped("camvid", s) for s in ("train", "val", "test")}


def _cityscapes(root: Path) -> dict[str, list[str]]:
  train, val = (
    _listing(root, f"leftImg8bit/{s}", r".+_leftImg8bit\.png", True) for s in ("train", "val")
  )
  return {"train": train, "val": val, "fine_val": val[:50], "fine_val_small": val[:50]}


def _coco_images(root: Path, split: str) -> list[str]:
  """`images/<split>2017/<stem>.jpg` for every annotation of panoptic_<split>2017.json, sorted."""
  path = root / "annotations" / f"panoptic_{split}2017.json"
  if not path.is_file():
    raise _missing(path)
  try:
    names = [a["file_name"] for a in json.loads(path.read_bytes())["annotations"]]
  except (ValueError, KeyError, TypeError) as e:
    raise PrepareError(f"{path}: not a COCO panoptic annotation file ({e!r})") from e
  bad = [n for n in names if not isinstance(n, str) or not re.fullmatch(r"\d+\.png", n)]
  if bad or len(set(names)) != len(names) or not names:
    problem = f"odd file_name {bad[0]!r}" if bad else "repeated or no file_name"
    raise PrepareError(f"{path}: {problem}")
  return sorted(f"images/{split}2017/{n[:-4]}.jpg" for n in names)


def _coco(root: Path) -> dict[str, list[str]]:
  val = _coco_images(root, "val")
  return {"train": _coco_images(root, "train"), "val": val, "val_small": val[:300]}


def _idd(root: Path) -> dict[str, list[str]]:
  return {
    s: _listing(root, f"leftImg8bit/{s}", r".+_leftImg8bit\.png", True)
    for s in ("train", "val", "test")
  }


def _without(files: list[str], val: list[str], where: Path) -> list[str]:
  """`files` less MSeg's `val`, which must all be among them (else the raw data is not MSeg's)."""
  val = set(val)
  absent = sorted(val - set(files))
  if absent:
    raise PrepareError(
      f"{where}: lacks {len(absent)} of the {len(val)} files of MSeg's val split, e.g. {absent[0]}"
    )
  return [f for f in files if f not in val]


def _kitti(root: Path) -> dict[str, list[str]]:
  val = shipped("kitti", "val")
  labelled = _listing(root, "training/image_2", r"\d{6}_10\.png")
  return {
    "train": _without(labelled, val, root),
    "val": val,
    "test": _listing(root, "testing/image_2", r"\d{6}_10\.png"),
  }


def _mapillary(root: Path) -> dict[str, list[str]]:
  return {
    "train": _listing(root, "training/images", r".+\.jpg"),
    "val": _listing(root, "validation/images", r".+\.jpg"),
  }


def _pascal_context(root: Path) -> dict[str, list[str]]:
  _folder(root / "JPEGImages")
  train, val = shipped("pascal-context", "train"), shipped("pascal-context", "val")
  return {"train": train, "val": val, "trainval": sorted(set(train) | set(val))}


def _scannet(root: Path) -> dict[str, list[str]]:
  _folder(root)
  val = shipped("scannet", "val")
  return {
    "train": shipped("scannet", "train"),
    "val": val,
    "val_small": val[:421],
    "test": shipped("scannet", "test"),
  }


def _sunrgbd(root: Path) -> dict[str, list[str]]:
  _folder(root / "image/test")
  return {
    "train": _listing(root, "image/train", r"img-\d{6}\.jpg"),
    "val": shipped("sunrgbd", "val"),
  }


def _voc2012(root: Path) -> dict[str, list[str]]:
  _folder(root / "JPEGImages")
  labels = _listing(root, "SegmentationClassAug", r".+\.png")
  val = shipped("voc2012", "val")
  val_labels = [f"SegmentationClassAug/{Path(p).stem}.png" for p in val]
  train = [f"JPEGImages/{Path(p).stem}.jpg" for p in _without(labels, val_labels, root)]
  return {"train": train, "val": val, "train_small": shipped("voc2012", "train_small")}


def _wilddash(root: Path) -> dict[str, list[str]]:
  val = _listing(root, "wd_val_01", r"[a-z]{2}\d{4}_\d{6}\.png")
  return {
    "train": val * 16,
    "val": val,
    "test": _listing(root, "wd_both_01", r"[a-z]{2}\d{4}_\d{6}\.png"),
  }


FAMILIES: dict[str, Family] = {
  "ade20k": Family(
    _ade20k,
    r"images/(.+)\.jpg",
    r"{}/\1.png",
    {
      "ade20k-151": "annotations",
      "ade20k-150": "annotations_semseg150",
      "ade20k-150-relabeled": "annotations_semseg150_relabeled",
    },
    {"train": 20210, "val": 2000},
  ),
  "bdd": Family(
    _bdd,
    r"seg/images/(train|val)/(.+)\.jpg",
    r"{}/labels/\1/\2_train_id.png",
    {"bdd": "seg", "bdd-relabeled": "seg_relabeled"},
    {"train": 7000, "val": 1000},
  ),
  "camvid": Family(
    _camvid,
    r"701_StillsRaw_full/(.+)\.png",
    r"{}/\1_L.png",
    {"camvid-32": "Labels32-RGB", "camvid-11": "semseg11"},
    {"train": 367, "val": 101, "test": 233},
  ),
  "cityscapes": Family(
    _cityscapes,
    r"leftImg8bit/(train|val)/(.+)_leftImg8bit\.png",
    r"{}/\1/\2_gtFine_labelIds.png",
    {
      "cityscapes-34": "gtFine",
      "cityscapes-19": "gtFine_19cls",
      "cityscapes-19-relabeled": "gtFine_19cls_relabeled",
      "cityscapes-34-relabeled": "gtFine_34cls_relabeled",
    },
    {"train": 2975, "val": 500, "fine_val": 50, "fine_val_small": 50},
  ),
  "coco-panoptic": Family(
    _coco,
    r"images/((?:train|val)2017)/(.+)\.jpg",
    r"{}\1/\2.png",
    {
      "coco-panoptic-inst-201": "annotations/panoptic_",
      "coco-panoptic-201": "semantic_annotations201/",
      "coco-panoptic-133": "semantic_annotations133/",
      "coco-panoptic-133-relabeled": "semantic_relabeled133/",
    },
    {"train": 118287, "val": 5000, "val_small": 300},
    only={"val_small": ("coco-panoptic-133", "coco-panoptic-133-relabeled")},
  ),
  "idd": Family(
    _idd,
    r"leftImg8bit/(train|val)/(.+)_leftImg8bit\.png",
    r"{}/\1/\2_gtFine_labelids.png",
    {"idd-40": "gtFine", "idd-39": "gtFine39", "idd-39-relabeled": "gtFine39_relabeled"},
    {"train": 6993, "val": 981, "test": 2029},
  ),
  "kitti": Family(
    _kitti,
    r"training/image_2/(.+)",
    r"training/{}/\1",
    {"kitti-34": "semantic", "kitti-19": "label19"},
    {"train": 150, "val": 50, "test": 200},
  ),
  "mapillary": Family(
    _mapillary,
    r"(training|validation)/images/(.+)\.jpg",
    r"\1{}/labels/\2.png",
    {
      "mapillary-public66": "",
      "mapillary-public65": "_semseg65",
      "mapillary-public65-relabeled": "_semseg65_relabeled",
    },
    {"train": 18000, "val": 2000},
  ),
  "pascal-context": Family(
    _pascal_context,
    r"JPEGImages/(.+)\.jpg",
    r"{}/\1.png",
    {"pascal-context-460": "Segmentation_GT_460cls", "pascal-context-60": "Segmentation_GT_60cls"},
    {"train": 4999, "val": 5105, "trainval": 10103},
  ),
  "scannet": Family(
    _scannet,
    r"(scene\d{4}_\d{2})/color/(\d+)\.jpg",
    r"\1/{}/\2.png",
    {"scannet-41": "label", "scannet-20": "label20"},
    {"train": 19466, "val": 5436, "val_small": 421, "test": 2135},
  ),
  "sunrgbd": Family(
    _sunrgbd,
    r"image/(train|test)/img-(\d{6})\.jpg",
    r"{}/\1/00\2.png",
    {
      "sunrgbd-38": "label38",
      "sunrgbd-37": "semseg-label37",
      "sunrgbd-37-relabeled": "semseg-relabeled37",
    },
    {"train": 5285, "val": 475},
  ),
  "voc2012": Family(
    _voc2012,
    r"JPEGImages/(.+)\.jpg",
    r"{}/\1.png",
    {"voc2012": "SegmentationClassAug"},
    {"train": 10582, "val": 1449, "train_small": 1464},
  ),
  "wilddash": Family(
    _wilddash,
    r"wd_val_01/(.+)\.png",
    r"{}/\1_labelIds.png",
    {"wilddash-34": "wd_val_01", "wilddash-19": "wd_val_19class"},
    {"train": 1120, "val": 70, "test": 226},
  ),
}
TAXONOMIES = tuple(sorted(t for f in FAMILIES.values() for t in f.folders))


def family_of(taxonomy: str) -> str:
  """The family (raw dataset) a taxonomy with lists belongs to."""
  for name, family in FAMILIES.items():
    if taxonomy in family.folders:
      return name
  raise KeyError(f"no lists for {taxonomy!r}; known: {', '.join(TAXONOMIES)}")


def list_lines(taxonomy: str, split: str, images: Sequence[str]) -> list[str]:
  """The lines of `taxonomy`'s `split` list for these image relpaths, in their order.

  An image that does not fit the family's image rule is an error, except in a test split,
  where it stands alone on its line (test images without labels).
  """
  family = FAMILIES[family_of(taxonomy)]
  rule = re.compile(rf"\A(?:{family.image})\Z")
  label = family.label.format(family.folders[taxonomy])
  lines = []
  for image in images:
    label_path, found = rule.subn(label, image)  # sub caches the parsed template, expand not
    if found:
      lines.append(f"{image} {label_path}")
    elif split == "test":
      lines.append(image)
    else:
      raise PrepareError(f"{taxonomy} {split}: image {image!r} does not fit {family.image!r}")
  return lines


def _write(path: Path, text: str) -> bool:
  """Writes `text` to `path` unless it already holds it; True if written."""
  data = text.encode()
  if path.is_file() and path.read_bytes() == data:
    return False
  atomic_write_bytes(path, data)
  return True


def run(data_root: Path, datasets: Sequence[str], *, images: set[str] | None = None) -> None:
  """Writes every list of the families of `datasets` under <data_root>/dataset_lists."""
  names = [n for n, f in FAMILIES.items() if any(t in f.folders for t in datasets)]
  if images:
    print("lists: --images ignored, a list describes a whole split")
  summary = []
  for name in names:
    family = FAMILIES[name]
    root = catalog.dataset_root(data_root, next(iter(family.folders)))
    splits = family.splits(root)
    written = 0
    for taxonomy in family.folders:
      for split, split_images in splits.items():
        if family.has_list(taxonomy, split):
          text = "".join(f"{line}\n" for line in list_lines(taxonomy, split, split_images))
          written += _write(catalog.list_path(data_root, taxonomy, split), text)
    counts = ", ".join(f"{s} {len(i)}" for s, i in splits.items())
    differ = [
      f"{s} {family.official[s]}" for s, i in splits.items() if len(i) != family.official[s]
    ]
    note = f" (mseg-api: {', '.join(differ)})" if differ else ""
    summary.append(f"  {name}: {counts}{note}; {written} list files written")
  print(f"lists under {Path(data_root) / catalog.LISTS_FOLDER}:")
  print("\n".join(summary))
