"""Where each raw dataset comes from and what its archives leave on disk (spec §1.1, §3).

A plain table, as mseg-api's `download_scripts/mseg_download_*.sh` / `mseg_extract_*.sh` do it.
Every dataset lives in `<data_root>/mseg_dataset/<folder>`; each archive is fetched (or put there
by hand) as `<folder>/<name>` and extracted into `<folder>/<into>`. After extraction, in this
order: the inner zips in `unzip` are extracted beside themselves and deleted, `moves` are done,
`remove` paths are deleted; then every glob in `expects` must match. Paths are relative to the
dataset folder. `url` is None behind a login (`page` says where to get it). No official script
states a byte size or a checksum, so `size` and `sha256` are None throughout; `stated_size` is
the size quoted by the spec, for messages only.
"""

import dataclasses

DATA_FOLDER = "mseg_dataset"


@dataclasses.dataclass(frozen=True)
class Archive:
  """One archive of a dataset and what extracting it must leave (see the module docstring)."""

  name: str
  url: str | None
  expects: tuple[str, ...]
  page: str | None = None
  into: str = ""
  stated_size: str | None = None
  size: int | None = None
  sha256: str | None = None
  unzip: tuple[str, ...] = ()
  moves: tuple[tuple[str, str], ...] = ()
  remove: tuple[str, ...] = ()
  keep: bool = False


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A raw dataset folder, the taxonomies that need it, and its archives in extraction order."""

  name: str
  folder: str
  taxonomies: tuple[str, ...]
  archives: tuple[Archive, ...]
  login: str | None = None
  note: str | None = None


def _split_glob(root: str, splits: tuple[str, ...], pattern: str) -> tuple[str, ...]:
  return tuple(f"{root}/{split}/{pattern}" for split in splits)


DATASETS: tuple[Dataset, ...] = (
  Dataset(
    "ADE20K",
    "ADE20K",
    ("ade20k-151", "ade20k-150", "ade20k-150-relabeled"),
    (
      Archive(
        "ADEChallengeData2016.zip",
        "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
        _split_glob("ADEChallengeData2016/images", ("training", "validation"), "*.jpg")
        + _split_glob("ADEChallengeData2016/annotations", ("training", "validation"), "*.png"),
        stated_size="923 MB",
      ),
    ),
  ),
  Dataset(
    "ADE20K instances",
    "ADE20K",
    ("ade20k-151-inst", "ade20k-150-relabeled"),
    (
      Archive(
        "ADE20K_2016_07_26.zip",
        "https://groups.csail.mit.edu/vision/datasets/ADE20K/ADE20K_2016_07_26.zip",
        _split_glob("ADE20K_2016_07_26/images", ("training", "validation"), "*/*/ADE_*_seg.png"),
        stated_size="3.8 GB",
      ),
    ),
    note="needed only to relabel ade20k-150; mseg-api issue #20 reports the URL down, and "
    "newer ADE20K releases are not a drop-in replacement",
  ),
  Dataset(
    "BDD100K",
    "BDD",
    ("bdd", "bdd-relabeled"),
    (
      Archive(
        "bdd100k_seg.zip",
        None,
        _split_glob("bdd100k/seg/images", ("train", "val"), "*.jpg")
        + _split_glob("bdd100k/seg/labels", ("train", "val"), "*_train_id.png"),
        page='its "Segmentation" download',
        stated_size="1.3 GB",
        keep=True,
      ),
    ),
    login="register at bdd-data.berkeley.edu (approval immediate; browser only)",
    note="the site now offers it as the legacy bdd100k_seg_2018.zip (mseg-api issue #26); "
    "save that as bdd100k_seg.zip. The newer BDD 10K release holds other images",
  ),
  Dataset(
    "CamVid",
    "Camvid",
    ("camvid-32", "camvid-11"),
    (
      Archive(
        "701_StillsRaw_full.zip",
        "http://web4.cs.ucl.ac.uk/staff/g.brostow/MotionSegRecData/files/701_StillsRaw_full.zip",
        ("701_StillsRaw_full/*.png",),
      ),
      Archive(
        "LabeledApproved_full.zip",
        "http://web4.cs.ucl.ac.uk/staff/g.brostow/MotionSegRecData/data/LabeledApproved_full.zip",
        ("Labels32-RGB/*_L.png",),
        into="Labels32-RGB",
      ),
    ),
  ),
  Dataset(
    "Cityscapes",
    "Cityscapes",
    ("cityscapes-34", "cityscapes-19", "cityscapes-19-relabeled", "cityscapes-34-relabeled"),
    (
      Archive(
        "gtFine_trainvaltest.zip",
        None,
        _split_glob("gtFine", ("train", "val"), "*/*_gtFine_labelIds.png")
        + _split_glob("gtFine", ("train", "val"), "*/*_gtFine_polygons.json"),
        page="https://www.cityscapes-dataset.com/file-handling/?packageID=1",
        stated_size="241 MB",
        remove=("README", "license.txt"),
      ),
      Archive(
        "leftImg8bit_trainvaltest.zip",
        None,
        _split_glob("leftImg8bit", ("train", "val"), "*/*_leftImg8bit.png"),
        page="https://www.cityscapes-dataset.com/file-handling/?packageID=3",
        stated_size="11 GB",
      ),
    ),
    login="register and log in at https://www.cityscapes-dataset.com/login/",
  ),
  Dataset(
    "COCO Panoptic",
    "COCOPanoptic",
    (
      "coco-panoptic-inst-201",
      "coco-panoptic-201",
      "coco-panoptic-133",
      "coco-panoptic-133-relabeled",
    ),
    (
      Archive(
        "panoptic_annotations_trainval2017.zip",
        "http://images.cocodataset.org/annotations/panoptic_annotations_trainval2017.zip",
        (
          "annotations/panoptic_train2017.json",
          "annotations/panoptic_val2017.json",
          "annotations/panoptic_train2017/*.png",
          "annotations/panoptic_val2017/*.png",
        ),
        unzip=("annotations/panoptic_train2017.zip", "annotations/panoptic_val2017.zip"),
      ),
      Archive(
        "train2017.zip",
        "http://images.cocodataset.org/zips/train2017.zip",
        ("images/train2017/*.jpg",),
        into="images",
        stated_size="19 GB",
      ),
      Archive(
        "val2017.zip",
        "http://images.cocodataset.org/zips/val2017.zip",
        ("images/val2017/*.jpg",),
        into="images",
      ),
    ),
  ),
  Dataset(
    "IDD",
    "IDD",
    ("idd-40", "idd-39", "idd-39-relabeled"),
    (
      Archive(
        "idd-segmentation.tar.gz",
        None,
        _split_glob("IDD_Segmentation/leftImg8bit", ("train", "val"), "*/*_leftImg8bit.png")
        + _split_glob("IDD_Segmentation/gtFine", ("train", "val"), "*/*_gtFine_polygons.json"),
        page='"IDD - Segmentation (IDD 20k Part I)"',
        stated_size="18.5 GB",
      ),
    ),
    login="register at idd.insaan.iiit.ac.in (usually immediate)",
    note="Part II is not used",
  ),
  Dataset(
    "KITTI",
    "KITTI",
    ("kitti-34", "kitti-19"),
    (
      Archive(
        "data_semantics.zip",
        None,
        ("training/image_2/*.png", "training/semantic/*.png", "testing/image_2/*.png"),
        page="the URL in the cvlibs.net registration email (KITTI semantic segmentation)",
      ),
    ),
    login="register at cvlibs.net for the KITTI semantic segmentation benchmark",
  ),
  Dataset(
    "Mapillary Vistas",
    "MapillaryVistasPublic",
    ("mapillary-public66", "mapillary-public65", "mapillary-public65-relabeled"),
    (
      Archive(
        "mapillary-vistas-dataset_public_v1.1.zip",
        None,
        (
          "training/images/*.jpg",
          "training/labels/*.png",
          "training/instances/*.png",
          "validation/images/*.jpg",
          "validation/labels/*.png",
          "validation/instances/*.png",
        ),
        page="the URL in the approval email (mapillary.com/dataset/vistas, Research edition)",
        keep=True,
      ),
    ),
    login="request access at mapillary.com/dataset/vistas (approval takes days)",
    note="v1.1 is no longer distributed; v1.2 is fine (mseg-api issue #27) if saved under this "
    "name with the same layout; v2.0 labels use another class set",
  ),
  Dataset(
    "PASCAL Context",
    "PASCAL_Context",
    ("pascal-context-460", "pascal-context-60"),
    (
      Archive(
        "VOCtrainval_03-May-2010.tar",
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar",
        ("JPEGImages/*.jpg",),
        moves=(("VOCdevkit/VOC2010/JPEGImages", "JPEGImages"),),
        remove=("VOCdevkit",),
      ),
      Archive(
        "trainval.tar.gz",
        "https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz",
        ("trainval/*.mat",),
      ),
    ),
    note="trainval/*.mat become PNGs in the remap step",
  ),
  Dataset(
    "PASCAL VOC 2012",
    "PASCAL_VOC_2012",
    ("voc2012",),
    (
      Archive(
        "SegmentationClassAug.zip",
        "https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip?dl=1",
        ("SegmentationClassAug/*.png",),
      ),
      Archive(
        "VOCtrainval_11-May-2012.tar",
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        ("JPEGImages/*.jpg",),
        stated_size="1.9 GB",
        moves=(("VOCdevkit/VOC2012/JPEGImages", "JPEGImages"),),
        remove=("VOCdevkit",),
      ),
    ),
  ),
  Dataset(
    "ScanNet",
    "ScanNet",
    ("scannet-41", "scannet-20"),
    (
      Archive(
        "scannet_frames_25k.zip",
        None,
        ("scannet_frames_25k/scene*/color/*.jpg", "scannet_frames_25k/scene*/label/*.png"),
        page='BASE_URL + "v2/tasks/scannet_frames_25k.zip", BASE_URL from the '
        "download-scannet.py the ScanNet authors send",
        stated_size="5.6 GB",
        keep=True,
      ),
    ),
    login="email the signed ScanNet Terms of Use to the ScanNet authors",
  ),
  Dataset(
    "SUN RGB-D",
    "SUNRGBD",
    ("sunrgbd-38", "sunrgbd-37", "sunrgbd-37-relabeled"),
    (
      Archive(
        "sun_rgbd.tgz",
        "http://cvgl.stanford.edu/data2/sun_rgbd.tgz",
        _split_glob("image", ("train", "test"), "img-*.jpg")
        + _split_glob("label38", ("train", "test"), "*.png"),
        moves=(("label37", "label38"),),  # the archive's labels hold 38 ids (incl. unlabeled)
        remove=("depth",),
      ),
    ),
  ),
  Dataset(
    "WildDash v1",
    "WildDash",
    ("wilddash-34", "wilddash-19"),
    (
      Archive(
        "wd_both_01.zip",
        None,
        ("wd_both_01/*.png",),
        page="wilddash.cc downloads, after login",
        remove=("anonymized", "authors.txt", "license.txt", "readme.txt"),
      ),
      Archive(
        "wd_val_01.zip",
        None,
        ("wd_val_01/*_labelIds.png",),
        page="https://wilddash.cc/download/wd_val_01.zip, after login",
        stated_size="122 MB",
      ),
    ),
    login="register and log in at https://wilddash.cc/accounts/login",
    note="fetch wd_both_01.zip, not the wd_bench_01.zip of mseg-api's script (mseg-api issue #8)",
  ),
)
